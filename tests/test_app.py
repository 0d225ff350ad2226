"""The train app in-process: what ``train.py`` runs after Hydra has composed the config."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from chute import ConfigError
from chute.app import run
from tests.test_config import data_overrides, make_config, options
from tests.test_train import FAST


@pytest.mark.parametrize("transforms", ["torchvision", "albumentations"])
def test_run_returns_the_best_metric(transforms: str, digits_root: Path, tmp_path: Path) -> None:
    cfg = make_config(
        *FAST, f"transforms={transforms}", "callbacks.preview=null", data_dir=digits_root.parent, output_dir=tmp_path
    )
    best = run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert isinstance(best, float)
    assert best == pytest.approx(metrics["best_val/acc"])
    assert best >= metrics["metrics"]["val/acc"] - 1e-6


def test_bad_data_value_names_the_key(digits_root: Path, tmp_path: Path) -> None:
    cfg = make_config("data.val_fraction=1.5", data_dir=digits_root.parent, output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.val_fraction=1\.5"):
        run(cfg)


def test_a_trainer_setting_lightning_refuses_here_names_the_key(digits_root: Path, tmp_path: Path) -> None:
    """``trainer.devices=[0,1]`` on a CPU: Lightning's TypeError with its traceback; now a config error."""
    cfg = make_config(
        "trainer.accelerator=cpu", "trainer.devices=[0,1]", *FAST, data_dir=digits_root.parent, output_dir=tmp_path
    )
    with pytest.raises(ConfigError, match=r"^trainer\.devices=\[0, 1\]: Lightning refuses it: `devices` selected"):
        run(cfg)


def test_validation_by_steps_alone_and_overfit_batches_reach_the_trainer(digits_root: Path, tmp_path: Path) -> None:
    """``trainer.check_val_every_n_epoch=null`` (validation every ``val_check_interval`` steps across
    epochs, as Lightning's own message advises) was dropped as "unset", and Lightning then refused
    an interval longer than an epoch; ``trainer.overfit_batches`` was not a setting."""
    quiet = ["trainer.max_epochs=2", "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false",
             "trainer.enable_progress_bar=false", "callbacks.preview=null"]  # fmt: skip
    steps = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "trainer.val_check_interval=4",
             "trainer.check_val_every_n_epoch=null"]  # fmt: skip
    cfg = make_config(*quiet, *steps, data_dir=digits_root.parent, output_dir=tmp_path / "steps")
    assert run(cfg) == pytest.approx(json.loads((tmp_path / "steps" / "metrics.json").read_text())["best_val/acc"])
    steps[-1] = "trainer.check_val_every_n_epoch=1"  # an interval longer than the epoch: named, no traceback
    cfg = make_config(*quiet, *steps, data_dir=digits_root.parent, output_dir=tmp_path / "epoch")
    with pytest.raises(ConfigError, match=r"^trainer\.val_check_interval=4: Lightning refuses it: `val_check_inter"):
        run(cfg)
    cfg = make_config(*quiet, "trainer.overfit_batches=2", data_dir=digits_root.parent, output_dir=tmp_path / "fit")
    run(cfg)
    assert json.loads((tmp_path / "fit" / "metrics.json").read_text())["train_samples"] == 2 * 2 * 64


ONE_EPOCH = ["trainer.max_epochs=1", *FAST[1:]]


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_trains_one_epoch(name: str, digits_root: Path, tmp_path: Path, make_tree) -> None:
    small = ["transforms.image_size=32"] if name == "image_folder" else []  # ResNet-18 at 224 px is slow on CPU
    overrides = [*data_overrides(name, make_tree), *ONE_EPOCH, *small]
    cfg = make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path)
    best = run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    assert metrics["train_samples"] > 0
    reported = metrics[f"best_{cfg.optimized_metric}"]  # null where the metric was never measured
    assert (reported is None and math.isnan(best)) or best == pytest.approx(reported)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")  # no validation: by design
def test_metrics_json_is_strict_json_when_no_metric_was_measured(digits_root: Path, tmp_path: Path) -> None:
    """``trainer.limit_val_batches=0``: the best val/acc is unknown; it was written as a bare ``NaN``,
    which strict JSON parsers (jq, JavaScript, ``json.loads(parse_constant=...)``) refuse."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    cfg = make_config(*ONE_EPOCH, "trainer.limit_val_batches=0", data_dir=digits_root.parent, output_dir=tmp_path)
    assert math.isnan(run(cfg))
    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["best_val/acc"] is None


# The Ray kind's smoke run starts a local Ray (~20 s on 2 cores); the one-epoch test above trains it whole.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "ray_images" else n for n in options("data")]
)
def test_every_data_option_passes_a_fast_dev_run(name: str, digits_root: Path, tmp_path: Path, make_tree) -> None:
    """The smoke run a user tries first: one batch of each loop (Lightning's fast_dev_run)."""
    small = ["transforms.image_size=32"] if name == "image_folder" else []
    quiet = ["trainer.enable_model_summary=false", "trainer.enable_progress_bar=false"]
    overrides = [*data_overrides(name, make_tree), "trainer.fast_dev_run=true", "test_after_fit=true", *quiet, *small]
    cfg = make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path)
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_samples"] > 0


@pytest.mark.parametrize("backend", ["ray", pytest.param("ray_data", marks=pytest.mark.slow)])
def test_a_shard_stream_trains_with_the_ray_backends_from_the_command_line(
    backend: str, digits_root: Path, tmp_path: Path
) -> None:
    """README's recipe (``data=streaming loader.backend=ray``), on a local Ray instance: every
    training sample read on Ray in the epoch."""
    pytest.importorskip("ray.data")
    overrides = ["data=streaming", f"loader.backend={backend}", "loader.num_workers=2", *ONE_EPOCH]
    cfg = make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path)
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    assert metrics["train_samples"] > 0


@pytest.mark.parametrize("strategy", options("imbalance"))
def test_every_imbalance_option_trains_on_the_long_tailed_experiment(
    strategy: str, digits_root: Path, tmp_path: Path
) -> None:
    overrides = ["experiment=longtail", f"imbalance={strategy}", *ONE_EPOCH, "callbacks.preview=null"]
    cfg = make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path)
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["imbalance"] == strategy
    assert {"val/bal_acc", "val/macro_f1"} <= set(metrics["metrics"])
    assert (tmp_path / "class_histogram.png").is_file()


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resumed in place
@pytest.mark.parametrize("data", ["tabular", "digits"])  # a cosine schedule; a one-cycle one
def test_resuming_with_more_epochs_is_refused_naming_both_step_counts(
    data: str, digits_root: Path, tmp_path: Path
) -> None:
    """``ckpt_path=last trainer.max_epochs=2`` after a run of 1: the checkpoint's schedule replaced the
    run's, so one-cycle stopped at its end with PyTorch's "Tried to step 4 times" and cosine's learning
    rate climbed back up, silently. Now refused before a step is taken; the same settings resume."""

    def config(epochs: int) -> Any:
        overrides = [
            f"data={data}",
            f"trainer.max_epochs={epochs}",
            *FAST[1:],
            "callbacks.preview=null",
            "ckpt_path=last",
        ]
        return make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path)

    run(config(1))
    with pytest.raises(ConfigError, match=r"^ckpt_path='a checkpoint of a run of 3 steps': this run takes 6 steps"):
        run(config(2))
    run(config(1))  # resumed where it ended: nothing left to train
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == 3


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resumed in place
def test_resuming_a_model_the_data_shaped_otherwise_is_refused_naming_what_differs(
    digits_root: Path, tmp_path: Path
) -> None:
    """``ckpt_path=last`` after a run on grayscale images, now RGB: PyTorch's "size mismatch for
    net.0.weight" after the data was read. Now the weights' shapes and the hyperparameter behind them."""

    def config(mode: str) -> Any:
        overrides = ["data=digits", f"data.image_mode={mode}", *ONE_EPOCH, "callbacks.preview=null", "ckpt_path=last"]
        return make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path)

    run(config("L"))
    with pytest.raises(ConfigError) as err:
        run(config("RGB"))
    assert str(err.value).startswith(f"ckpt_path='{tmp_path / 'checkpoints' / 'last.ckpt'}': the checkpoint's model")
    assert "net.0.weight is (16, 1, 3, 3) there and (16, 3, 3, 3) here" in str(err.value)
    assert "hyperparameters differ in in_channels (1 there, 3 here)" in str(err.value)


def test_a_regression_table_trains_through_the_app(digits_root: Path, tmp_path: Path) -> None:
    """A regression target gives ``num_classes=0``: the one-class check must not take it for a class count."""
    overrides = ["data=tabular", "data.task=regression", "data.target=mean_radius", *ONE_EPOCH,
                 "callbacks.preview=null", "callbacks.class_histogram=null", "optimized_metric=val/loss",
                 "optimized_mode=min"]  # fmt: skip
    best = run(make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path))
    assert math.isfinite(best)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resumed in place
def test_last_ckpt_is_the_last_epoch_and_a_finished_run_restarted_keeps_its_report(
    digits_root: Path, tmp_path: Path
) -> None:
    """Lightning 2.6 writes ``save_last``'s copy only when the monitored metric improved, so
    ``last.ckpt`` was the best epoch's state and ``ckpt_path=last`` trained the later epochs again.
    Here the "best" is the highest validation loss (epoch 0): the last checkpoint must still be epoch
    2's. Restarting the finished run then trains nothing, and used to overwrite metrics.json with
    empty metrics."""
    import torch

    overrides = ["data=tabular", *FAST[1:], "trainer.max_epochs=3", "callbacks.preview=null", "ckpt_path=last",
                 "optimized_metric=val/loss", "optimized_mode=max"]  # fmt: skip
    cfg = make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path)
    best = run(cfg)
    report = (tmp_path / "metrics.json").read_text()
    assert json.loads(report)["checkpoints"]["best"].endswith("best-epoch00.ckpt")
    last = torch.load(json.loads(report)["checkpoints"]["last"], map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 9)
    assert run(make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path)) == best
    assert (tmp_path / "metrics.json").read_text() == report


def test_ckpt_path_last_is_the_newest_of_the_last_and_the_slurm_requeue_checkpoint(tmp_path: Path) -> None:
    import os
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from chute.app import _resume_path

    trainer: Any = SimpleNamespace(
        default_root_dir=str(tmp_path), callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"))]
    )
    assert _resume_path("last", trainer) is None  # nothing saved yet: a fresh start, not an error
    assert _resume_path(None, trainer) is None
    assert _resume_path("some.ckpt", trainer) == "some.ckpt"
    (tmp_path / "checkpoints").mkdir()
    last, requeue = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"")
    assert _resume_path("last", trainer) == str(last)
    requeue.write_bytes(b"")  # Lightning's SLURM plugin saved this one before the requeue, after last.ckpt
    os.utime(requeue, (last.stat().st_mtime + 5,) * 2)
    assert _resume_path("last", trainer) == str(requeue)
    # saved inside a gradient-accumulation window (SIGUSR1 comes at any batch): passed over
    torch.save({"global_step": 4, "chute_inside_accumulation_window": True}, requeue)
    os.utime(requeue, (last.stat().st_mtime + 5,) * 2)
    assert _resume_path("last", trainer) == str(last)
