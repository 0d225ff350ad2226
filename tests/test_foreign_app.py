"""chute from another Hydra project: a foreign app (tests/foreign_app, no chute import in its code)
composes chute's DataModule configs through the installed search-path plugin, sizes its model with
the ``chute.data`` resolver, and trains on images and on a table in one 2-point multirun."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent / "foreign_app"


def run_app(*overrides: str, tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOREIGN_DATA_DIR": str(data_dir), "FOREIGN_OUT": str(tmp_path / "out")}
    env.pop("PYTHONPATH", None)  # chute comes from the installation, as in a foreign project
    return subprocess.run(
        [sys.executable, str(APP / "app.py"), *overrides], cwd=APP, env=env, capture_output=True, text=True
    )


def test_the_foreign_app_code_does_not_import_chute() -> None:
    assert "chute" not in re.findall(r"^\s*(?:from|import)\s+(\w+)", (APP / "app.py").read_text(), re.M)


def test_a_foreign_hydra_app_trains_on_chute_images_and_tables_in_a_multirun(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc = run_app("-m", "data=chute_digits,chute_tabular", tmp_path=tmp_path, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = re.findall(r"foreign-app data=(\w+) num_classes=(\d+) val_acc=([0-9.]+)", proc.stdout)
    assert [(name, int(n)) for name, n, _ in lines] == [("ImageFolderDataModule", 10), ("TabularDataModule", 2)]
    assert all(float(acc) > 0.5 for _, _, acc in lines)  # one epoch learns something on both
    assert (data_dir / "digits").is_dir()
    assert (data_dir / "breast_cancer").is_dir()
    assert (tmp_path / "out" / "multirun" / "1").is_dir()


def test_chute_options_join_the_apps_own_group_and_name_their_keys(tmp_path: Path) -> None:
    proc = run_app("--info", "searchpath", tmp_path=tmp_path, data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pkg://chute.hydra_conf" in proc.stdout
    bad = run_app("data=chute_images", tmp_path=tmp_path, data_dir=tmp_path)  # root is required
    assert bad.returncode != 0
    assert "root" in bad.stderr


def test_the_readme_recipe_is_the_foreign_apps_config() -> None:
    readme = (APP.parents[1] / "README.md").read_text()
    block = readme.split("<!-- readme-test: foreign-app -->\n```yaml\n", 1)[1].split("```", 1)[0]
    assert block == (APP / "configs" / "train.yaml").read_text()


def test_chutes_schemas_check_chutes_own_data_options_in_a_foreign_app(tmp_path: Path) -> None:
    """A foreign app that puts chute's schema under its ``data`` node (``register_configs``, then
    ``/schema/data/image_folder@data`` in its defaults list) composes chute's shipped options and
    catches a misspelt key there. ``chute_digits`` failed: its ``loader:`` node was not in the schema."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigKeyError

    from chute.config import register_configs

    register_configs()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "app.yaml").write_text(
        "defaults:\n  - /schema/data/image_folder@data\n  - data: chute_digits\n  - _self_\n"
    )
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("app", overrides=["data.loader.backend=torch", "+data.loader.prefetch_factor=4"])
        assert cfg.data.loader == {"backend": "torch", "prefetch_factor": 4}
        assert cfg.data.image_mode == "L"
        with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
            compose("app", overrides=["data.batch_sze=8"])
    assert "batch_sze" in str(err.value) + str(err.value.__cause__)
