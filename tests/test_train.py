"""``train.py`` end to end, as a user runs it (subprocesses, limited batches)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chute import fastpaths
from tests.conftest import REPO

FAST = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


def train(*overrides: str, data_dir: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHUTE_DATA_DIR": str(data_dir), "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_default_experiment_writes_everything(tmp_path: Path, digits_root: Path) -> None:
    run_dir = tmp_path / "run"
    with_summary = [o for o in FAST if not o.startswith("trainer.enable_model_summary")]
    proc = train(*with_summary, f"hydra.run.dir={run_dir}", data_dir=digits_root.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # warnings the user cannot act on (Lightning's own deprecated torch call, the summary's bf16 note)
    assert "LeafSpec" not in proc.stdout + proc.stderr
    assert "not supported by the model summary" not in proc.stdout + proc.stderr
    assert "Tip:" not in proc.stdout + proc.stderr  # Lightning's advertisement for its cloud logger

    summary = [line for line in proc.stdout.splitlines() if line.startswith("chute |")]
    assert len(summary) == 1
    assert "val/acc" in summary[0]
    assert "samples/s" in summary[0]
    assert "run" in summary[0]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("metrics", "best_val/acc", "train_samples_per_s", "wall_time_s", "precision", "checkpoints"):
        assert key in metrics, key
    assert 0.0 <= metrics["metrics"]["val/acc"] <= 1.0
    cpu = "bf16-mixed" if fastpaths.cpu_has_native_bf16() else "32-true"
    assert metrics["precision"] == ("16-mixed" if torch.cuda.is_available() else cpu)
    assert metrics["epochs"] == 2
    assert Path(metrics["checkpoints"]["best"]).is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "preview_train.png").is_file()
    assert (run_dir / "preview_val.png").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "learning_curves.png").is_file()
    assert (run_dir / "class_histogram.png").is_file()
    log = (run_dir / "train.log").read_text()  # the run's whole log, not only chute's own lines
    assert "trainer.precision=auto" in log
    assert "`Trainer.fit` stopped" in log  # Lightning's
    assert summary[0] in log

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert any(tag.startswith("lr-") for tag in scalars), scalars  # the learning rate
    assert "hp_metric" not in scalars  # no -1 placeholder


def test_bad_value_fails_before_training_naming_the_key(tmp_path: Path) -> None:
    proc = train("loader.num_workers=-1", f"hydra.run.dir={tmp_path}", data_dir=tmp_path)
    assert proc.returncode == 1
    assert "chute: invalid config: loader.num_workers=-1: must be an integer >= 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_augmentation_the_batch_crop_leaves_out_fails_naming_both_keys(tmp_path: Path, digits_root: Path) -> None:
    """The default experiment augments cached batches (data.device_augment): a rotation asked for is refused."""
    proc = train("transforms.rotation=15", f"hydra.run.dir={tmp_path}", data_dir=digits_root.parent)
    assert proc.returncode == 1
    assert "chute: invalid config: data.device_augment=True: " in proc.stderr
    assert "transforms.rotation=15.0 would not be applied: set it to false" in proc.stderr


def test_misspelled_key_fails_at_compose(tmp_path: Path) -> None:
    proc = train("loader.num_worker=2", f"hydra.run.dir={tmp_path}", data_dir=tmp_path)
    assert proc.returncode == 1
    assert "num_worker" in proc.stderr
    assert "LoaderSettings" in proc.stderr


def test_bad_data_fails_with_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_table.csv"
    proc = train("data=tabular", f"data.path={missing}", "data.prepare=null", f"hydra.run.dir={tmp_path / 'run'}",
                 data_dir=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert "chute: bad data: " in proc.stderr
    assert str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_stops_the_run_with_a_message_and_a_failing_status(tmp_path: Path, digits_root: Path) -> None:
    """A scheduler's SIGTERM: Lightning stops cleanly, metrics are written, the exit status says it stopped."""
    run_dir = tmp_path / "run"
    proc = train(
        *FAST, "+callbacks.sigterm._target_=tests.helpers.SigtermAt", "+callbacks.sigterm.step=2",
        "callbacks.preview=null", f"hydra.run.dir={run_dir}", data_dir=digits_root.parent,
    )  # fmt: skip
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "chute: stopped by SIGTERM" in proc.stderr
    assert (run_dir / "metrics.json").is_file()


def test_a_run_stopped_by_sigterm_mid_epoch_and_resumed_ends_as_one_that_was_not(
    tmp_path: Path, digits_root: Path
) -> None:
    """Three faults met here: the stopped run's last.ckpt was the previous save, not the step it
    stopped at; the resumed run's dropout drew from ``seed_everything`` again (other weights); and the
    resumed run, its epoch's throughput uncounted, took itself for finished and kept the stopped
    run's metrics.json."""
    import torch

    common = ["data=tabular", "trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
              "callbacks.preview=null", "trainer.enable_progress_bar=false", "ckpt_path=last"]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train(*common, f"hydra.run.dir={whole}", data_dir=digits_root.parent).returncode == 0
    stop = ["+callbacks.sigterm._target_=tests.helpers.SigtermAt", "+callbacks.sigterm.step=5"]
    proc = train(*common, *stop, f"hydra.run.dir={cut}", data_dir=digits_root.parent)
    assert proc.returncode == 143, proc.stderr[-3000:]

    def saved(run: Path) -> dict:
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)

    assert saved(cut)["global_step"] == 5  # the step it stopped at (epoch 1 of 2, one step in)
    proc = train(*common, f"hydra.run.dir={cut}", data_dir=digits_root.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "had finished" not in proc.stdout
    a, b = saved(whole), saved(cut)
    assert a["global_step"] == b["global_step"] == 8
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    reports = [json.loads((run / "metrics.json").read_text()) for run in (whole, cut)]
    assert reports[0]["metrics"]["val/acc"] == reports[1]["metrics"]["val/acc"]
    assert reports[0]["metrics"]["val/loss"] == reports[1]["metrics"]["val/loss"]


def test_multirun_sweep(tmp_path: Path, digits_root: Path) -> None:
    """`-m loader.num_workers=0,1,2 seed=1,2`: six runs, each with its own config, logs and metrics."""
    sweep = tmp_path / "sweep"
    proc = train(
        "-m",
        "loader.num_workers=0,1,2",
        "seed=1,2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.preview=null",
        f"hydra.sweep.dir={sweep}",
        data_dir=digits_root.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(runs) == 6
    seen = set()
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        seen.add((metrics["num_workers"], metrics["seed"]))
        assert (run / ".hydra" / "config.yaml").is_file()
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert seen == {(w, s) for w in (0, 1, 2) for s in (1, 2)}
    # The sweep ends with its answer: a table of the overrides that vary (not the ones all share) and a picture.
    table = (sweep / "summary.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| job"))
    assert header.split(" | ")[1:3] == ["loader.num_workers", "seed"]
    assert "trainer.max_epochs" not in table
    assert len([line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]) == 6
    assert (sweep / "summary.csv").read_text().count("\n") == 7
    assert (sweep / "summary.png").is_file()
    for run in runs:  # each job's log holds its own run, not the next jobs' (one process runs them all)
        assert (run / "train.log").read_text().count("`Trainer.fit` stopped") == 1


@pytest.mark.slow
def test_an_optuna_search_over_loader_and_training_knobs_runs_and_summarizes(tmp_path: Path, digits_root: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = train(
        "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer.max_epochs=1",
        "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "callbacks.preview=null", f"hydra.sweep.dir={sweep}",
        data_dir=digits_root.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep / "optimization_results.yaml").is_file()  # the sweeper's own answer
    assert len(list(sweep.glob("*/metrics.json"))) == 2
    assert "val/acc" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_default_experiment_reaches_target_accuracy(tmp_path: Path) -> None:
    """The README's promise: `python train.py` reaches >= 97% val accuracy (about a minute on 2 cores)."""
    proc = train(f"hydra.run.dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false", data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["metrics"]["val/acc"] >= 0.97


def test_the_plugins_pure_data_config_with_its_transforms_node_runs_in_chutes_own_app(
    tmp_path: Path, digits_root: Path
) -> None:
    """`data=chute_digits` (the YAML a foreign Hydra app composes, transforms given as a
    `create_transforms` node under `data.transforms`) trains in chute's train.py as it is."""
    run_dir = tmp_path / "run"
    proc = train(*FAST, "data=chute_digits", f"hydra.run.dir={run_dir}", data_dir=digits_root.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "chute.transforms.create_transforms" in config
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2


HEAVY = ("torch", "torchvision", "lightning")
_EXIT_AND_IMPORTS = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    print("exit:", exit.code)
print("heavy:", sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "override",
    ["loader.num_workers=-1", "transforms.hflip=2", "imbalance.strategy=sometimes", "trainer.precision=8"],
)
def test_a_config_mistake_is_reported_before_the_heavy_imports(override: str, tmp_path: Path) -> None:
    """Composing and checking a config imports neither torch nor Lightning (startup, issue 15)."""
    code = _EXIT_AND_IMPORTS.format(heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "train.py"), override, f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert f"exit: chute: invalid config: {override.split('=')[0]}=" in proc.stdout, proc.stdout + proc.stderr
    assert "heavy: []" in proc.stdout


def test_the_hydra_plugin_and_resolver_import_nothing_heavy() -> None:
    """Every Hydra app on a machine with chute installed imports the plugin: it must stay light."""
    code = (
        "import sys, hydra_plugins.chute_searchpath, chute, chute.config, chute.loader, chute.transforms; "
        "chute.config.register_configs(); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_help_lists_every_option_and_no_schema_group(tmp_path: Path) -> None:
    proc = train("--help", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    choose = proc.stdout.split("== Choose: group=option ==", 1)[1].split("== Config ==", 1)[0]
    assert "schema" not in choose
    plugin = REPO / "src" / "chute" / "hydra_conf"
    for group in (p for p in (REPO / "conf").iterdir() if p.is_dir() and p.name not in ("hydra",)):
        options = [f.stem for f in group.glob("*.yaml")] + [f.stem for f in (plugin / group.name).glob("*.yaml")]
        assert re.search(rf"^{group.name}\s", choose, re.M), group.name
        for option in options:
            assert re.search(rf"\b{option}\b", choose), (group.name, option)


def test_the_resolved_job_config_prints_before_any_run(tmp_path: Path) -> None:
    proc = train("--cfg", "job", "--resolve", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "output_dir: null" in proc.stdout  # Hydra sets it when a job runs
    assert "batch_size: 64" in proc.stdout


def test_the_data_shortcuts_reach_the_loader_and_the_report(tmp_path: Path, digits_root: Path) -> None:
    """``data.num_workers`` / ``data.batch_size`` (the settings other apps' searches set) win over
    ``loader.*`` and metrics.json reports what the loader used."""
    run_dir = tmp_path / "run"
    proc = train(
        *FAST, "data.num_workers=0", "data.batch_size=32", f"hydra.run.dir={run_dir}", data_dir=digits_root.parent
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["num_workers"], metrics["batch_size"]) == (0, 32)


def test_bad_data_read_in_a_worker_process_fails_with_the_same_one_line(tmp_path: Path) -> None:
    """torch re-raises a worker's DataError as a copy holding the worker's whole traceback; train.py
    prints the worker's own message, as with no workers."""
    from PIL import Image

    root = tmp_path / "photos"
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for k in range(6):
                Image.new("RGB", (20, 16), (40 * k, 90, 30)).save(root / split / label / f"{k}.png")
    (root / "train" / "b" / "notes.jpg").write_bytes(b"hello, not an image")
    lines = {}
    for workers in (0, 2):
        run = f"hydra.run.dir={tmp_path / f'run{workers}'}"
        proc = train("data=image_folder", f"data.root={root}", "model=small_cnn", "transforms.image_size=16",
                     "trainer.max_epochs=1", "loader.batch_size=4", f"loader.num_workers={workers}",
                     "loader.backend=torch", run, data_dir=tmp_path)  # fmt: skip
        # Both streams in every message: a run once ended with status 1 and an empty stderr under load,
        # not reproduced since; a SIGINT does exactly that (Lightning's "Detected KeyboardInterrupt"
        # on stdout, then sys.exit(1)), so the next occurrence must say which it was.
        told = f"stderr: {proc.stderr[-3000:]}\nstdout: {proc.stdout[-1500:]}"
        assert proc.returncode == 1, told
        lines[workers] = [line for line in proc.stderr.splitlines() if line.startswith("chute: bad data: ")]
        assert "Traceback" not in proc.stderr, told
        assert len(lines[workers]) == 1, told
    assert "notes.jpg" in lines[2][0]
    assert lines[2] == lines[0]
