from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from chute import LoaderSettings
from chute.datamodules import ImageFolderDataModule
from chute.models import (
    BACKBONES,
    ClipClassifier,
    ImageClassifier,
    MultiTaskModel,
    SequenceClassifier,
    TabularModel,
    create_backbone,
)
from chute.transforms import create_transforms


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("channels", [1, 3])
def test_backbones_map_images_to_logits(name: str, channels: int) -> None:
    net = create_backbone(name, in_channels=channels, num_classes=7)
    assert net(torch.zeros(2, channels, 12, 12)).shape == (2, 7)


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"backbone='vit'.*resnet18.*small_cnn"):
        create_backbone("vit", 3, 2)


def test_soft_targets_are_accepted() -> None:
    model = ImageClassifier(num_classes=3, in_channels=1)
    logits = torch.randn(4, 3)
    hard = torch.tensor([0, 1, 2, 0])
    soft = torch.nn.functional.one_hot(hard, 3).float()
    torch.testing.assert_close(model._loss(logits, soft), model._loss(logits, hard))


def test_checkpoint_reloads_with_weights_only(digits_root: Path, tmp_path: Path) -> None:
    """Hyperparameters and DataModule state are plain values: checkpoints load without unpickling code."""
    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, loader=LoaderSettings(batch_size=32)
    )
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
        default_root_dir=tmp_path, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(ImageClassifier(num_classes=10, in_channels=1), datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["num_classes"] == 10
    assert ckpt["ImageFolderDataModule"]["class_names"] == [str(i) for i in range(10)]
    restored = ImageClassifier.load_from_checkpoint(path, weights_only=True)
    assert restored.hparams["in_channels"] == 1
    fresh = ImageFolderDataModule(digits_root, image_mode="L")
    fresh.load_state_dict(ckpt["ImageFolderDataModule"])
    assert fresh.mean == dm.mean


class OnDevice(torch.Tensor):
    """A CPU tensor that stands for one on a GPU: every operation that copies its values to the host
    (which on a GPU waits for the device to finish its queue) is counted in ``HOST_READS``, under
    the training batch then current. Results of operations on it are ``OnDevice`` too (PyTorch's
    ``__torch_function__``), so the batch's labels, the logits and the loss all are."""

    READS = frozenset(
        [getattr(torch.Tensor, n) for n in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu")]
        + [torch.bincount, torch.unique, torch.nonzero, torch.Tensor.nonzero, torch.Tensor.unique]
    )  # fmt: skip
    batch: tuple[int, int] | None = None
    HOST_READS: dict[tuple[int, int], int] = {}

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        is_read = func in cls.READS  # (moves with .to(device) are to the trainer's device: the CPU in this test)
        if is_read and cls.batch is not None:
            cls.HOST_READS[cls.batch] = cls.HOST_READS.get(cls.batch, 0) + 1
        result = super().__torch_function__(func, types, args, kwargs)
        if is_read and isinstance(result, torch.Tensor):
            return result.as_subclass(torch.Tensor)  # a host copy: reading it costs nothing
        return result

    def __deepcopy__(self, memo: dict[int, Any]) -> OnDevice:  # ModelCheckpoint copies the metrics
        return self.as_subclass(torch.Tensor).clone().as_subclass(OnDevice)


class OnDeviceBatches(ImageFolderDataModule):
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets = super().on_after_batch_transfer(batch, dataloader_idx)
        return images.as_subclass(OnDevice), targets.as_subclass(OnDevice)


class AtBatch(L.Callback):
    """Tells ``OnDevice`` which training batch is running (from its start to the next's, or to the
    validation or the epoch's end)."""

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        OnDevice.batch = (trainer.current_epoch, batch_idx)
        OnDevice.HOST_READS[OnDevice.batch] = 0

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        OnDevice.batch = None

    def on_validation_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        OnDevice.batch = (-1 - trainer.current_epoch, args[1])  # validation batches: negative epochs
        OnDevice.HOST_READS[OnDevice.batch] = 0

    def on_validation_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        OnDevice.batch = None

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        OnDevice.batch = None


# The monitor's advice depends on how busy the machine is (seen once in CI: 11% under load); its
# reads, not its timing, are what this test is about.
@pytest.mark.filterwarnings("ignore:Training waits for data")
def test_training_reads_nothing_back_to_the_host_between_logging_steps(digits_root: Path, tmp_path: Path) -> None:
    """No wait for the device at every step: the classifier, chute's per-batch callbacks and the
    progress bar read the batch's tensors (and the logits and loss made from them) back to the host
    only on Lightning's logging steps and at each epoch's end.

    The old code read the loss back after every batch (``train/loss`` logged with ``prog_bar``,
    which Lightning turns into a number after every batch) and copied every first-epoch batch's
    labels to the host (``ClassHistogram``); every validation batch, three times (a NaN check of
    the loss, and ``torch.bincount`` in the macro scores)."""
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from chute.callbacks import ClassHistogram, LatestCheckpoint, RandomState, StallMonitor, Throughput

    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = OnDeviceBatches(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val,
        loader=LoaderSettings(batch_size=16, num_workers=1, backend="threads"),
    )  # fmt: skip
    histogram = ClassHistogram(str(tmp_path))
    callbacks = [AtBatch(), histogram, StallMonitor(), Throughput(), RandomState(), RichProgressBar()]
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=12, limit_val_batches=2, log_every_n_steps=5, default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path), callbacks=[*callbacks, LatestCheckpoint(dirpath=tmp_path / "checkpoints")],
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    OnDevice.HOST_READS.clear()
    try:
        trainer.fit(ImageClassifier(num_classes=10, in_channels=1), datamodule=dm)
    finally:
        OnDevice.batch = None

    logged = {(e, i) for e in range(2) for i in range(12) if (12 * e + i + 1) % 5 == 0}  # Lightning's logging steps
    training = {b: n for b, n in OnDevice.HOST_READS.items() if b[0] >= 0}
    assert len(training) == 24
    # The bar's loss is read with the logger's, and at each epoch's last batch.
    assert {b for b, n in training.items() if n} == logged | {(0, 11), (1, 11)}, training
    validation = {b: n for b, n in OnDevice.HOST_READS.items() if b[0] < 0}
    assert validation == {(-1, 0): 0, (-1, 1): 0, (-2, 0): 0, (-2, 1): 0}  # (old: 3 a batch, then 2)
    assert trainer.progress_bar_metrics["loss"] == pytest.approx(float(trainer.callback_metrics["train/loss"]), abs=1)
    assert histogram.received is not None
    assert histogram.received.sum() == 12 * 16


def test_the_evaluation_loss_reads_nothing_back_per_batch_and_a_non_finite_batch_shows() -> None:
    """``val/loss`` accumulates on the device (the default ``MeanMetric`` asked the device whether
    a batch held NaN at every step, and then dropped that batch from the mean with a warning)."""
    from chute.models.eval_loss import EvalLoss

    mean = EvalLoss().means["val"]
    OnDevice.batch, OnDevice.HOST_READS = (0, 0), {}
    try:
        for loss, size in ((1.0, 4), (3.0, 12)):
            mean.update(torch.tensor(loss).as_subclass(OnDevice), weight=size)
        assert OnDevice.HOST_READS.get((0, 0), 0) == 0
        assert mean.compute().item() == 2.5  # weighted by batch size
        mean.update(torch.tensor(float("nan")).as_subclass(OnDevice), weight=4)
        assert OnDevice.HOST_READS.get((0, 0), 0) == 1  # (the .item() above)
    finally:
        OnDevice.batch = None
    assert torch.isnan(mean.compute())


@pytest.mark.parametrize("kind", ["recall", "f1"])
def test_the_macro_scores_match_torchmetrics_and_read_nothing_back_per_batch(kind: str) -> None:
    """The same values as torchmetrics' macro accuracy and F1 (whose counting, ``torch.bincount``,
    reads the data's maximum back to the host at every step on a GPU), with classes absent from a
    split and from the predictions."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    from chute.models.metrics import MacroScore

    generator = torch.Generator().manual_seed(0)
    ours = MacroScore(7, kind)  # type: ignore[arg-type]
    theirs = MulticlassAccuracy(7, average="macro") if kind == "recall" else MulticlassF1Score(7, average="macro")
    OnDevice.batch, OnDevice.HOST_READS = (0, 0), {}
    try:
        for size in (5, 17, 1, 30):
            logits = torch.randn(size, 7, generator=generator)
            logits[:, 6] -= 100  # class 6 never predicted
            targets = torch.randint(0, 5, (size,), generator=generator)  # classes 5 and 6 never present
            ours.update(logits.as_subclass(OnDevice), targets.as_subclass(OnDevice))
            theirs.update(logits, targets)
        assert OnDevice.HOST_READS.get((0, 0), 0) == 0
    finally:
        OnDevice.batch = None
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), abs=1e-6)


def test_the_bars_loss_is_the_batch_loss_under_gradient_accumulation(digits_root: Path, tmp_path: Path) -> None:
    """Lightning's ``outputs["loss"]`` is divided by ``accumulate_grad_batches``; the bar showed that."""
    from lightning.pytorch.callbacks import RichProgressBar

    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, loader=LoaderSettings(batch_size=16)
    )
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=7, limit_val_batches=1, accumulate_grad_batches=3, log_every_n_steps=1,
        logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[RichProgressBar()],
        default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(ImageClassifier(num_classes=10, in_channels=1), datamodule=dm)
    assert trainer.progress_bar_metrics["loss"] == pytest.approx(float(trainer.callback_metrics["train/loss"]))


def test_the_bars_loss_is_logged_at_most_twice_a_second_and_at_each_epochs_end(
    digits_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """Each ``self.log`` costs Lightning 0.4-0.7 ms between steps: the bar's number follows the
    logging steps no more often than a reader can follow it."""
    from lightning.pytorch.callbacks import RichProgressBar

    from chute.models import classifier

    clock = itertools.count()
    monkeypatch.setattr(classifier, "monotonic", lambda: 0.2 * next(clock))  # 0.2 s a batch
    logged: list[int] = []

    class Counted(ImageClassifier):
        def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            if name == "loss":
                logged.append(self.trainer.fit_loop.epoch_loop.batch_idx)
            super().log(name, value, *args, **kwargs)

    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, loader=LoaderSettings(batch_size=16)
    )
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=8, limit_val_batches=1, log_every_n_steps=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[RichProgressBar()],
        default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Counted(num_classes=10, in_channels=1), datamodule=dm)
    # Logging steps every batch, 0.2 s apart: the bar's loss at least 0.5 s after its last one
    # (batches 0, 3, 6; then 2 and 5 of epoch 1, counting from 1.4 s), and at each epoch's last batch.
    assert logged == [0, 3, 6, 7, 2, 5, 7]
    assert trainer.progress_bar_metrics["loss"] == pytest.approx(float(trainer.callback_metrics["train/loss"]))


def test_train_acc_is_logged_once_an_epoch_and_is_the_epochs_accuracy(digits_root: Path, tmp_path: Path) -> None:
    """Lightning computes a logged Metric at the epoch's end from its own state, so one ``self.log`` an
    epoch (not one a step, 0.4 ms each) gives the accuracy over every training batch of the epoch."""
    logged: list[int] = []
    correct: list[list[float]] = []

    class Counted(ImageClassifier):
        def on_train_epoch_start(self) -> None:
            super().on_train_epoch_start()
            correct.append([0.0, 0.0])

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            update = self.train_acc.update

            def counted(logits: torch.Tensor, labels: torch.Tensor) -> None:  # what each step's update sees
                correct[-1][0] += float((logits.argmax(1) == labels).sum())
                correct[-1][1] += len(labels)
                update(logits, labels)

            self.train_acc.update = counted

        def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            if name == "train/acc":
                logged.append(self.trainer.current_epoch)
            super().log(name, value, *args, **kwargs)

    class Epochs(L.Callback):
        def __init__(self) -> None:
            self.acc: list[float] = []

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.acc.append(float(trainer.callback_metrics["train/acc"]))

    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, loader=LoaderSettings(batch_size=16)
    )
    epochs = Epochs()
    trainer = L.Trainer(
        max_epochs=3, limit_train_batches=6, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, callbacks=[epochs], default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Counted(num_classes=10, in_channels=1), datamodule=dm)
    assert logged == [0, 1, 2]
    assert epochs.acc == pytest.approx([hits / seen for hits, seen in correct], abs=1e-6)


def test_an_epoch_metric_is_logged_on_its_first_update_and_on_a_loops_first_batch() -> None:
    """Once registered, Lightning computes a logged Metric at the epoch's end from its own state; a
    metric a cut-short run left un-reset (more than one update at the loop's first batch) is logged too."""
    from torchmetrics import MeanMetric

    from chute.models.metrics import log_epoch_metric

    calls: list[str] = []

    class Module:
        def log(self, name: str, value: Any, **kwargs: Any) -> None:
            assert kwargs["on_step"] is False
            assert kwargs["on_epoch"] is True
            calls.append(name)

    metric = MeanMetric()
    for batch_idx in range(3):
        metric.update(1.0)
        log_epoch_metric(Module(), f"fresh{batch_idx}", metric, batch_idx, batch_size=1)  # type: ignore[arg-type]
    metric.reset()
    for batch_idx in (5, 6):  # a mid-epoch resume: the first update is not batch 0
        metric.update(1.0)
        log_epoch_metric(Module(), f"resumed{batch_idx}", metric, batch_idx, batch_size=1)  # type: ignore[arg-type]
    for batch_idx in (0, 1):  # never reset (a run cut short), a new loop
        metric.update(1.0)
        log_epoch_metric(Module(), f"left{batch_idx}", metric, batch_idx, batch_size=1)  # type: ignore[arg-type]
    assert calls == ["fresh0", "resumed5", "left0"]


def test_evaluation_metrics_logged_once_a_run_are_the_whole_splits(digits_root: Path, tmp_path: Path) -> None:
    """``val/acc``, ``val/bal_acc`` and ``val/loss`` logged once per validation run are those of every
    validation batch: the same as the final model's, recomputed over the split."""
    from torchmetrics.classification import MulticlassAccuracy

    logged: list[str] = []

    class Counted(ImageClassifier):
        def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            if name.startswith("val/"):
                logged.append(name)
            super().log(name, value, *args, **kwargs)

    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, loader=LoaderSettings(batch_size=32)
    )
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=5, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, default_root_dir=tmp_path, num_sanity_val_steps=2,
    )  # fmt: skip
    model = Counted(num_classes=10, in_channels=1)
    trainer.fit(model, datamodule=dm)
    names = ["val/loss", "val/acc", "val/bal_acc", "val/macro_f1"]
    assert sorted(logged) == sorted(names * 3)  # the sanity check and two epochs, once each
    model.eval()
    acc, balanced = MulticlassAccuracy(10, average="micro"), MulticlassAccuracy(10, average="macro")
    total, count = 0.0, 0
    with torch.no_grad():
        for images, targets in dm.val_dataloader():
            logits = model(dm.on_after_batch_transfer((images, targets), 0)[0])
            acc.update(logits, targets)
            balanced.update(logits, targets)
            total += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
            count += len(targets)
    metrics = trainer.callback_metrics
    assert float(metrics["val/acc"]) == pytest.approx(float(acc.compute()), abs=1e-6)
    assert float(metrics["val/bal_acc"]) == pytest.approx(float(balanced.compute()), abs=1e-6)
    assert float(metrics["val/loss"]) == pytest.approx(total / count, rel=1e-4)


_MODELS = {
    "image": lambda: ImageClassifier(num_classes=3),
    "clip": lambda: ClipClassifier(num_classes=3, widths=(4, 8)),
    "tabular": lambda: TabularModel(num_features=3, num_classes=2),
    "regression": lambda: TabularModel(num_features=3, task="regression"),
    "sequence": lambda: SequenceClassifier(vocab_size=10, num_classes=3),
    "multitask": lambda: MultiTaskModel(
        4,
        {"kind": {"type": "classification", "num_classes": 3}, "size": {"type": "regression", "mean": 1.0, "std": 2.0}},
    ),
}


@pytest.mark.parametrize("kind", sorted(_MODELS))
def test_every_metric_of_a_model_is_reset_by_the_run_of_its_stage(kind: str) -> None:
    """``EpochMetrics`` resets a stage's metrics when its run starts (a cut-short run's updates, and
    states ``validate`` left as inference tensors): a metric no stage names would keep them."""
    from torchmetrics import Metric

    model = _MODELS[kind]()
    metrics = {id(m) for m in model.modules() if isinstance(m, Metric)}
    named = [id(m) for stage in ("train", "val", "test") for m in model.epoch_metrics(stage)]
    assert sorted(named) == sorted(metrics)  # each metric in exactly one stage
