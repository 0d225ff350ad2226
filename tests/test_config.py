"""Every config option composes and instantiates; bad values fail naming the key."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from chute import ConfigError, DataError, LoaderSettings, fastpaths
from chute.app import build_datamodule, build_model, resolve_precision
from chute.config import compose_config, validate_config
from chute.datamodules import ChuteDataModule, TabularDataModule
from chute.transforms import create_transforms
from tests.conftest import REPO

CONF = REPO / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make_config(*overrides: str, data_dir: Path | None = None, output_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``python train.py *overrides`` would, outside a Hydra run."""
    extra = [f"paths.data_dir={data_dir}"] if data_dir else []
    return compose_config(*extra, *overrides, output_dir=str(output_dir) if output_dir else None)


def test_default_config_composes() -> None:
    cfg = make_config()
    v = validate_config(cfg)
    assert cfg.data._target_ == "chute.datamodules.ImageFolderDataModule"
    assert isinstance(v.loader, LoaderSettings)
    assert cfg.trainer.precision == "auto"


# What each kind of DataModule tells its model (model_kwargs), by the kind of model option.
DATA_HINTS = {
    "image": {"num_classes": 4, "in_channels": 1},
    "video": {"num_classes": 4, "in_channels": 3, "frames_per_clip": 8},
    "table": {"num_features": 5, "num_classes": 4, "task": "classification"},
    "multitask": {"num_features": 5, "heads": {"y": {"type": "classification", "num_classes": 4}}},
    "sequence": {"vocab_size": 10, "num_classes": 4, "pad_id": 0},
}
MODEL_KINDS = {"clip_r2plus1d": "video", "mlp": "table", "multitask_mlp": "multitask", "sequence_conv": "sequence",
               "sequence_gru": "sequence"}  # fmt: skip


def data_overrides(name: str, make_tree: Callable[..., Path]) -> list[str]:
    """Overrides that make data option ``name`` runnable in a test (options needing user data get some)."""
    if name == "image_folder":
        return [f"data={name}", f"data.root={make_tree()}"]
    if name == "video":  # a small set of the bundled videos, written in seconds
        return [
            f"data={name}",
            "data.prepare.num_videos=24",
            "+data.prepare.seconds=[1,2]",
            "data.root=${paths.data_dir}/motion24",
            "data.prepare.only_at=null",  # written at this other path too
        ]
    return [f"data={name}"]


def test_data_of_one_class_is_named_before_a_classifier_is_built(make_tree, digits_root: Path) -> None:
    """A tree of one class folder: torchmetrics' "Expected argument `num_classes` to be an integer
    larger than 1" inside Hydra's "Error in call to target". (The DataModule itself takes one class:
    in a user's own model it may be what they want.)"""
    cfg = make_config("data=image_folder", f"data.root={make_tree(counts={'cat': 4})}", data_dir=digits_root.parent)
    dm = build_datamodule(cfg, validate_config(cfg))
    dm.setup("fit")
    assert dm.class_names == ("cat",)
    with pytest.raises(DataError, match=r"has 1 class in its training split, and model\._target_=.* needs at least"):
        build_model(cfg, dm.model_kwargs)


def test_a_value_an_option_needs_is_named_by_the_check() -> None:
    """``data=image_folder`` without ``data.root``: omegaconf's MissingMandatoryValue traceback from
    inside the DataModule's instantiation, after the imports (~6 s)."""
    with pytest.raises(ConfigError, match=r"^data\.root=\?\?\?: has no value .* add data\.root=<value>"):
        validate_config(make_config("data=image_folder"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=chute_tabular"], "ImageClassifier: takes images (in_channels), but data._target_=chute.datamodules."
         "TabularDataModule gives table rows (num_features=30): pick a model for table rows, chute's model=mlp"),
        (["data=tabular", "model=multitask_mlp"], "MultiTaskModel: takes rows with several targets (heads), but"),
        (["data=multitask", "model=mlp"], "gives rows with several targets (num_features=12): pick a model for rows "
         "with several targets, chute's model=multitask_mlp"),
        (["data=digits", "model=clip_r2plus1d"], "ClipClassifier: takes video clips (frames_per_clip), but data."
         "_target_=chute.datamodules.ImageFolderDataModule gives images (in_channels=1)"),
        (["data=sequence", "model=mlp"], "gives token sequences (vocab_size=16): pick a model for token sequences"),
    ],
)  # fmt: skip
def test_a_model_for_another_kind_of_data_is_refused_naming_both(
    overrides: list[str], message: str, digits_root: Path
) -> None:
    """A table given to chute's image model failed inside conv2d at the first batch ("Expected 3D
    (unbatched) or 4D (batched) input"), video clips in an image model with "too many values to
    unpack"; the model's and the data's kinds of input are compared before the model is built."""
    cfg = make_config(*overrides, data_dir=digits_root.parent)
    dm = build_datamodule(cfg, validate_config(cfg))
    dm.prepare_data()
    dm.setup("fit")
    with pytest.raises(ConfigError, match=r"^model\._target_=chute\.models\.") as err:
        build_model(cfg, dm.model_kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_instantiates_with_its_model(name: str, digits_root: Path, make_tree) -> None:
    cfg = make_config(*data_overrides(name, make_tree), data_dir=digits_root.parent)
    dm = build_datamodule(cfg, validate_config(cfg))
    assert isinstance(dm, ChuteDataModule)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(cfg, dm.model_kwargs)
    assert isinstance(model, L.LightningModule)
    batch = dm.batch_hook(next(iter(dm.train_dataloader())), train=True)
    with torch.no_grad():
        inputs = batch if isinstance(batch, dict) and "mask" in batch else _inputs(batch)
        out = model(inputs)
    out = next(iter(out.values())) if isinstance(out, dict) else out
    assert out.shape[0] == len(_inputs(batch))


def _inputs(batch: Any) -> Any:
    return batch["inputs"] if isinstance(batch, dict) else batch[0]


_LOCATIONS = ("root", "path", "url", "input_dir")  # what the data options call where their data is


def _location(data: DictConfig) -> str:
    (key,) = [k for k in _LOCATIONS if k in data]
    return key


@pytest.mark.parametrize("name", [n for n in options("data") if make_config(f"data={n}").data.get("prepare")])
def test_an_option_writes_its_example_data_only_at_its_own_path(name: str, tmp_path: Path) -> None:
    """``data=tabular data.path=/my/table.csv`` with a typo (or a file not there yet) wrote the
    bundled example at that path and trained on it, silently; now it is an error naming the path,
    and nothing is written. The example is written at the option's default path only."""
    cfg = make_config(f"data={name}", data_dir=tmp_path / "data")
    key = _location(cfg.data)
    assert cfg.data.prepare.only_at == cfg.data[key]  # the example's own path is the option's default
    missing = tmp_path / "mine" / "table.csv"
    cfg.data[key] = f"sqlite:///{missing}" if key == "url" else str(missing)
    dm = build_datamodule(cfg, validate_config(cfg))
    with pytest.raises(DataError, match=rf"'{missing}' does not exist .*: point data\.{key} at your data"):
        dm.prepare_data()
    assert not (tmp_path / "mine").exists()
    assert not (tmp_path / "data").exists()


def test_an_example_option_pointed_at_your_own_folder_reads_it(make_tree: Callable[..., Path]) -> None:
    """``data=digits data.root=/my/photos``: the digits writer refused a folder it did not write
    ("exists and was not written by chute"); the folder is now read as it is."""
    root = make_tree(counts={"cat": 3, "dog": 2})
    cfg = make_config("data=digits", f"data.root={root}", "data.image_mode=RGB")
    dm = build_datamodule(cfg, validate_config(cfg))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names == ("cat", "dog")
    assert not (root / ".chute-dataset.json").exists()


@pytest.mark.parametrize("name", ["chute_digits", "chute_tabular"])
def test_the_foreign_options_write_their_example_only_at_their_own_path(name: str) -> None:
    data = OmegaConf.load(REPO / "src" / "chute" / "hydra_conf" / "data" / f"{name}.yaml")
    assert data.prepare.only_at == data[_location(data)]


@pytest.mark.parametrize(
    ("data", "loader", "transforms"),
    [
        (d, lo, t)
        for d in options("data")
        for lo in options("loader")
        for t in options("transforms")
        if not lo.endswith("_schema") and not t.endswith("_schema")
    ],
)
def test_data_composes_with_every_loader_and_transforms_option(
    data: str, loader: str, transforms: str, digits_root: Path, make_tree
) -> None:
    cfg = make_config(*data_overrides(data, make_tree), f"loader={loader}", f"transforms={transforms}")
    settings = validate_config(cfg)
    if data == "video" and transforms == "albumentations":  # one draw per clip: chute's own clip transform only
        with pytest.raises(ConfigError, match=r"transforms\.backend='albumentations': is not supported for video"):
            build_datamodule(cfg, settings)
        return
    assert build_datamodule(cfg, settings).loader_settings == settings.loader


@pytest.mark.parametrize("name", options("model"))
def test_every_model_option_instantiates(name: str) -> None:
    cfg = make_config(f"model={name}")
    model = build_model(cfg, DATA_HINTS[MODEL_KINDS.get(name, "image")])
    assert isinstance(model, L.LightningModule)


@pytest.mark.parametrize("name", options("transforms"))
def test_every_transforms_option_builds(name: str) -> None:
    v = validate_config(make_config(f"transforms={name}"))
    assert v.transforms.backend == name
    assert create_transforms(v.transforms).train is not None


@pytest.mark.parametrize("group", ["loader", "trainer", "callbacks", "imbalance", "experiment"])
def test_every_option_of_other_groups(group: str) -> None:
    for name in options(group):
        cfg = make_config(f"{group}={name}")
        validate_config(cfg)
        if group == "callbacks":
            assert all(isinstance(instantiate(c), L.Callback) for c in cfg.callbacks.values())


def test_overrides_reach_settings() -> None:
    v = validate_config(make_config("loader.num_workers=8", "loader.prefetch_factor=4", "transforms.image_size=20"))
    assert v.loader.num_workers == 8
    assert v.loader.prefetch_factor == 4
    assert v.transforms.image_size == 20


def test_an_unknown_setting_is_named_not_a_type_error() -> None:
    with pytest.raises(ConfigError, match=r"^trainer\.detect_anomaly=True: is not a trainer setting chute knows"):
        validate_config(make_config("+trainer.detect_anomaly=true"))
    with pytest.raises(ConfigError, match=r"^loader\.workers=2: is not a loader setting"):
        validate_config(make_config("+loader.workers=2"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loader.num_workers=-1", "loader.num_workers=-1"),
        ("loader.num_workers=abc", "loader.num_workers='abc'"),  # an int or "auto", so checked by value
        ("imbalance.strategy=smote", "imbalance.strategy='smote'"),
        ("loader.num_workers=0 loader.prefetch_factor=4", "loader.prefetch_factor=4"),  # no workers to prefetch
        ("loader.persistent_workers=true", "loader.persistent_workers=True"),
        ("transforms.backend=kornia", "transforms.backend='kornia'"),
        ("transforms.hflip=1.5", "transforms.hflip=1.5"),
        ("trainer.precision=float8", "trainer.precision='float8'"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    cfg = make_config(*override.split())
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loader.num_worker=2", "num_worker"),  # misspelled key
        ("loader.batch_size=abc", "loader.batch_size"),  # wrong type
        ("transforms.image_size=big", "transforms.image_size"),
        ("trainer.max_epoch=3", "max_epoch"),
        ("data.val_fractoin=0.1", "val_fractoin"),
        ("data.val_fraction=lots", "data.val_fraction"),
        ("model.lr=fast", "model.lr"),
    ],
)
def test_schema_rejects_at_compose_time(override: str, message: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        make_config(override)
    text = str(info.value) + str(info.value.__cause__ or "")
    assert message in text


def test_precision_auto() -> None:
    cpu = "bf16-mixed" if fastpaths.cpu_has_native_bf16() else "32-true"
    assert resolve_precision("auto", "cpu") == cpu
    assert resolve_precision("32-true", "auto") == "32-true"
    import torch

    assert resolve_precision("auto", "auto") == ("16-mixed" if torch.cuda.is_available() else cpu)


def test_saved_config_round_trips() -> None:
    cfg = make_config("loader.num_workers=3")
    text = OmegaConf.to_yaml(cfg.loader)
    assert "num_workers: 3" in text


def test_schemas_are_not_offered_as_options() -> None:
    """A mistyped option lists what a user can pick, not the internal schema entries."""
    with pytest.raises(ConfigCompositionException) as info:
        make_config("data=imagefolder")
    options_listed = str(info.value).split("Available options in 'data':", 1)[1].split("Config search path", 1)[0]
    assert options_listed.split() == [
        "chute_digits",  # the pure DataModule configs every Hydra app gets from chute's plugin
        "chute_images",
        "chute_tabular",
        "digits",
        "image_folder",
        "litdata",
        "multitask",
        "ray_images",
        "sequence",
        "sql",
        "streaming",
        "tabular",
        "video",
    ]


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_is_checked_by_its_schema(name: str) -> None:
    with pytest.raises(ConfigCompositionException, match=r"data\.seed=abc") as info:
        make_config(f"data={name}", "data.seed=abc")
    assert "could not be converted to Integer" in str(info.value.__cause__)


def test_seed_null_draws_one_and_every_reference_gets_it(digits_root: Path, tmp_path: Path) -> None:
    from chute.app import run
    from tests.test_train import FAST

    cfg = make_config(*FAST, "seed=null", "callbacks.preview=null", data_dir=digits_root.parent, output_dir=tmp_path)
    run(cfg)
    import json

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert isinstance(metrics["seed"], int)
    assert cfg.data.seed == metrics["seed"]


def test_seed_null_is_random_per_run_and_shared_by_the_processes_of_one_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's ``seed_everything(None)`` gives 0 on every run; chute draws one, the same in every
    process of one job."""
    from chute.app import run_seed

    for name in ("PL_GLOBAL_SEED", "LOCAL_RANK", "RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    draws = {run_seed() for _ in range(4)}
    assert len(draws) > 1  # four draws of 2**31 values
    monkeypatch.setenv("PL_GLOBAL_SEED", "1234")
    assert run_seed() != 1234  # a multirun's earlier job in this process: not reused
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run_seed() == 1234  # a rank Lightning launched
    monkeypatch.delenv("PL_GLOBAL_SEED")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-42")
    shared = run_seed()
    monkeypatch.setenv("RANK", "0")
    assert run_seed() == shared  # torchrun's processes agree
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-43")
    assert run_seed() != shared


def test_fp16_on_the_cpu_is_said(caplog: pytest.LogCaptureFixture) -> None:
    from chute.app import _warn_slow_precision

    with caplog.at_level("WARNING"):
        _warn_slow_precision("16-mixed", "cpu")
        _warn_slow_precision("32-true", "cpu")
    assert len(caplog.records) == 1
    assert "32-true" in caplog.records[0].getMessage()


def test_the_generated_schemas_match_the_classes() -> None:
    """``chute/_schemas.py`` is what ``python -m chute.config`` writes from today's constructors."""
    import chute._schemas
    from chute.config import schema_source

    written = Path(chute._schemas.__file__).read_text()
    assert written == schema_source(), "a constructor changed: run `python -m chute.config` to write chute/_schemas.py"


@pytest.mark.parametrize(("override", "value"), [("data.num_workers=2", 2), ("data.num_workers=auto", "auto")])
def test_the_data_shortcuts_keep_their_types_on_the_command_line(override: str, value: object, tmp_path: Path) -> None:
    """``data.num_workers=2`` reaches the DataModule as the integer 2 (a str-typed schema field made it '2')."""
    cfg = compose_config("data=tabular", override, "data.batch_size=16")
    assert cfg.data.num_workers == value
    assert type(cfg.data.num_workers) is type(value)
    dm = TabularDataModule(
        tmp_path / "t.csv", target="y", num_workers=cfg.data.num_workers, batch_size=cfg.data.batch_size
    )
    assert (dm.loader_settings.num_workers, dm.loader_settings.batch_size) == (value, 16)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.devices=0", r"^trainer\.devices=0: must be 'auto', a count of devices"),
        ("trainer.devices=[]", r"^trainer\.devices=\[\]: must be"),
        ("trainer.limit_train_batches=abc", r"^trainer\.limit_train_batches='abc': must be a share of the batches"),
        ("trainer.limit_val_batches=1.5", r"^trainer\.limit_val_batches=1\.5: must be"),
        ("trainer.val_check_interval=-1", r"^trainer\.val_check_interval=-1: must be a share of an epoch"),
        ("trainer.val_check_interval=0", r"^trainer\.val_check_interval=0: must be > 0"),
        ("trainer.devices='[0,1]'", r"^trainer\.devices='\[0,1\]': must be"),  # Lightning refuses the string
        ("trainer.fast_dev_run=-1", r"^trainer\.fast_dev_run=-1: must be true, false or a number"),
        ("trainer.deterministic=yes", r"^trainer\.deterministic='yes': must be true, false, 'warn'"),
        ("trainer.max_epochs=-2", r"^trainer\.max_epochs=-2: must be >= -1 or null"),
        ("trainer.num_nodes=0", r"^trainer\.num_nodes=0: must be >= 1"),
        ("trainer.accumulate_grad_batches=0", r"^trainer\.accumulate_grad_batches=0: must be >= 1"),
    ],
)
def test_trainer_values_are_checked_when_the_config_is(override: str, message: str) -> None:
    """Named at once, not by a TypeError deep in Lightning after the data was prepared."""
    with pytest.raises(ConfigError, match=message):
        validate_config(make_config(override))


@pytest.mark.parametrize(
    "override",
    ["trainer.devices=2", "trainer.devices=-1", "trainer.devices='0,1'", "trainer.devices=[0,1]",
     "trainer.limit_train_batches=0.25", "trainer.limit_val_batches=3", "trainer.fast_dev_run=5",
     "trainer.val_check_interval=0.5", "trainer.deterministic=warn", "trainer.max_epochs=-1",
     "trainer.val_check_interval='00:00:10:00'", "trainer.log_every_n_steps=0", "trainer.devices='0,'"],
)  # fmt: skip
def test_trainer_values_lightning_takes_pass(override: str) -> None:
    """And Lightning takes them (``devices`` on the CPU: counts only)."""
    import warnings

    settings = validate_config(make_config(override, "trainer.accelerator=cpu")).trainer
    kwargs = {k: v for k, v in dataclasses.asdict(settings).items() if v is not None}
    kwargs["precision"] = resolve_precision(str(settings.precision), "cpu")  # chute resolves `auto`
    if not isinstance(kwargs["devices"], int) or kwargs["devices"] < 0:
        kwargs["devices"] = 1  # lists and strings of indices name devices a CPU trainer does not take
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about this machine is not under test
        L.Trainer(**kwargs, logger=False, enable_checkpointing=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.image_mode=X", r"^data\.image_mode='X': must be 'RGB'"),  # the DataModule's own check
        ("data.prepare.val_fraction=abc", r"^data\.prepare\.val_fraction='abc': must be between 0 and 1"),
        ("+data.prepare.imbalance_ratio=0.5", r"^data\.prepare\.imbalance_ratio=0\.5: must be >= 1"),
    ],
)
def test_a_constructors_check_names_the_whole_key(override: str, message: str) -> None:
    """A check in a DataModule or a nested writer (``data.prepare``) printed Hydra's 'Error in call to
    target' with the ValueError (or a TypeError), naming ``data`` at most."""
    cfg = make_config(override)
    with pytest.raises(ConfigError, match=message):
        build_datamodule(cfg, validate_config(cfg))


def test_the_data_options_own_loader_settings_reach_the_loader_in_chutes_app() -> None:
    """``data.loader`` (as other Hydra apps set it) was dropped for the ``loader`` group; the shortcuts
    win too, and a shortcut and ``data.loader`` that disagree are refused naming both."""

    def loader(*overrides: str) -> LoaderSettings:
        cfg = make_config(*overrides)
        return build_datamodule(cfg, validate_config(cfg)).loader_settings

    assert loader("data=tabular", "+data.loader.batch_size=16").batch_size == 16
    assert loader("data=tabular", "+data.batch_size=8").batch_size == 8
    assert loader("data=chute_digits").backend == "threads"  # the option's own `loader: {backend: threads}`
    with pytest.raises(ConfigError, match=r"^data\.loader\.batch_size=16: disagrees with batch_size=64"):
        loader("data=chute_tabular", "+data.loader.batch_size=16")
    with pytest.raises(ConfigError, match=r"^data\.loader\.nope=1: is not a loader setting"):
        loader("data=tabular", "+data.loader.nope=1")
    # A value refused by the loader settings names the key where it was set (was data.drop_last)
    with pytest.raises(ConfigError, match=r"^data\.loader\.drop_last='no': must be true or false"):
        loader("data=tabular", "+data.loader.drop_last=no")
    with pytest.raises(ConfigError, match=r"^data\.batch_size=0: must be an integer >= 1"):
        loader("data=tabular", "+data.batch_size=0")
