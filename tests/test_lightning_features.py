"""Lightning features that reach a DataModule's loaders, through a real Trainer: evaluating or
restoring a checkpoint, ``overfit_batches``, the batch-size finder, a prediction writer's indices."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.tuner import Tuner
from torch import nn

from chute.datamodules import ImageFolderDataModule, TabularDataModule
from chute.loader.distributed import rank_span
from tests.helpers import SigtermInValidation, two_rank_records

ROWS = 40
# A checkpoint evaluated or resumed by a Trainer without the callback that saved it: Lightning's reminder.
pytestmark = pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`:UserWarning")


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """40 training rows whose column ``row`` is the row's number (the model's input: one identity per row)."""
    path = tmp_path / "t.csv"
    path.write_text("row,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(ROWS)))
    return path


class Rows(L.LightningModule):
    """Records the rows of every training batch, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 2)
        self.seen: dict[int, list[int]] = {}
        self.sizes: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch[0], batch[1]
        self.seen.setdefault(self.current_epoch, []).extend(_rows(inputs))
        self.sizes.append(len(labels))
        return nn.functional.cross_entropy(self.layer(inputs), labels)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", nn.functional.cross_entropy(self.layer(batch[0]), batch[1]))

    test_step = validation_step

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _rows(inputs: torch.Tensor) -> list[int]:
    """The row numbers of a batch of the table (the one feature, standardized over 0..39)."""
    values = torch.arange(ROWS, dtype=torch.float64)
    standard = (values - values.mean()) / values.std(correction=0)
    return [int(torch.argmin((standard - float(x)).abs())) for x in inputs[:, 0]]


def trainer(**kwargs: Any) -> L.Trainer:
    return L.Trainer(
        **{"max_epochs": 2, "accelerator": "cpu", "logger": False, "enable_progress_bar": False,
           "enable_model_summary": False, "enable_checkpointing": False, **kwargs}
    )  # fmt: skip


def tabular(path: Path, **kwargs: Any) -> TabularDataModule:
    return TabularDataModule(path, target="label", numeric=["row"], val_path=path, seed=3, batch_size=8, **kwargs)


@pytest.mark.parametrize("evaluate", ["validate", "test", "load_from_checkpoint"])
def test_evaluating_a_checkpoint_leaves_a_later_fresh_fit_its_whole_epochs(
    table: Path, tmp_path: Path, evaluate: str
) -> None:
    """Lightning loads a DataModule's state when it evaluates a checkpoint, and so does
    ``load_from_checkpoint``; the checkpoint's training position (here epoch 0 after 3 of its 5
    steps) then made the next training loader of that epoch start there: a fresh fit skipped them."""
    dm = tabular(table)
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=1)
    trainer(callbacks=[saving], enable_checkpointing=True, limit_val_batches=0, max_steps=3).fit(Rows(), datamodule=dm)
    ckpt = str(tmp_path / "ckpt" / "epoch=0-step=3.ckpt")
    if evaluate == "load_from_checkpoint":
        dm = TabularDataModule.load_from_checkpoint(ckpt)
    else:
        getattr(trainer(), evaluate)(Rows(), datamodule=dm, ckpt_path=ckpt)
    model, fresh = Rows(), trainer(limit_val_batches=0)
    fresh.fit(model, datamodule=dm)
    assert fresh.global_step == 10
    assert {epoch: sorted(rows) for epoch, rows in model.seen.items()} == {0: list(range(ROWS)), 1: list(range(ROWS))}


def test_a_fit_from_the_checkpoint_still_resumes_after_its_position(table: Path, tmp_path: Path) -> None:
    whole = Rows()
    trainer(limit_val_batches=0).fit(whole, datamodule=tabular(table))
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7, save_top_k=-1)
    trainer(callbacks=[saving], enable_checkpointing=True, limit_val_batches=0, max_steps=7).fit(
        Rows(), datamodule=tabular(table)
    )
    dm = tabular(table)
    trainer().validate(Rows(), datamodule=dm, ckpt_path=str(tmp_path / "ckpt" / "epoch=1-step=7.ckpt"))
    resumed = Rows()
    trainer(limit_val_batches=0).fit(resumed, datamodule=dm, ckpt_path=str(tmp_path / "ckpt" / "epoch=1-step=7.ckpt"))
    assert resumed.seen == {1: whole.seen[1][2 * 8 :]}  # the last 3 batches of epoch 1, as the whole run had them


@pytest.mark.parametrize(("workers", "backend"), [(0, "torch"), (2, "torch"), (2, "threads")])
def test_overfit_batches_trains_on_the_same_first_batches_every_epoch(table: Path, workers: int, backend: str) -> None:
    """``Trainer(overfit_batches=2)`` re-made the loaders around a SequentialSampler of single
    indices: AttributeError 'SequentialSampler' object has no attribute 'set_epoch' (worker
    processes, no workers), "needs to subclass torch.utils.data.DataLoader" (threads)."""
    dm = tabular(table, num_workers=workers, loader={"backend": backend})
    model = Rows()
    trainer(max_epochs=3, overfit_batches=2).fit(model, datamodule=dm)
    assert model.sizes == [8] * 6
    assert model.seen[0] == model.seen[1] == model.seen[2]
    assert len(set(model.seen[0])) == 16
    assert set(model.seen[0]) != set(range(16))  # epoch 0's shuffled draw, not the first rows in file order


@pytest.mark.filterwarnings("ignore:You requested to overfit but enabled")
@pytest.mark.parametrize("workers", [0, 2])
def test_overfit_batches_replays_a_streams_first_batches(tmp_path: Path, workers: int) -> None:
    """A stream has no sampler to swap: it replays its epoch 0 (Lightning re-makes the loader from the
    same arguments, after saying it turns shuffling off). It trained on new batches every epoch."""
    from chute.datamodules import StreamingDataModule
    from chute.datasets.shard_format import write_index, write_shards

    samples = [(torch.tensor([float(i)]), i % 2) for i in range(ROWS)]
    write_index(tmp_path, {name: write_shards(samples, tmp_path, name, 10) for name in ("train", "val")})
    dm = StreamingDataModule(tmp_path, loader={"batch_size": 8, "num_workers": workers}, seed=3)
    model = Streamed()
    trainer(max_epochs=3, overfit_batches=2).fit(model, datamodule=dm)
    assert model.seen[0] == model.seen[1] == model.seen[2]
    assert len(model.seen[0]) == 16


class Streamed(Rows):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen.setdefault(self.current_epoch, []).extend(int(x) for x in batch[0][:, 0])
        return nn.functional.cross_entropy(self.layer(batch[0]), batch[1])


@pytest.mark.parametrize("workers", [0, "auto"])
def test_the_batch_size_finder_tries_each_size_and_the_datamodule_keeps_the_one_found(
    table: Path, tmp_path: Path, workers: int | str
) -> None:
    """``Tuner.scale_batch_size`` looks for a ``batch_size`` attribute: there was none ("Field
    batch_size not found"), and one set by hand was never read, so every trial ran at the original
    size and the "found" size was never tried."""
    dm = tabular(table, num_workers=workers)
    model = Rows()
    tuner = Tuner(trainer(max_epochs=1, default_root_dir=tmp_path))
    # init_val is the DataModule's own size: Lightning builds the first trial's loader before it sets
    # init_val (the same with a plain DataLoader), so another init_val is not what the first trial runs.
    found = tuner.scale_batch_size(model, datamodule=dm, init_val=8, max_trials=3, steps_per_trial=1)
    assert model.sizes == [8, 16, 32]
    assert found == dm.batch_size == 32
    assert dm.hparams["loader"]["batch_size"] == 32  # what a checkpoint saves
    assert dm.hparams_initial["loader"]["batch_size"] == 32  # what the loggers record
    loader = dm.train_dataloader()
    assert next(iter(loader))[0].shape[0] == 32


class SigtermAtBatch(L.Callback):
    """Sends this process SIGTERM after training batch ``batch`` of epoch ``epoch`` (a scheduler's notice)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if (trainer.current_epoch, args[-1]) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("batch", [1, 2])  # the end of an accumulation window of 2; inside one
def test_a_sigterm_with_gradient_accumulation_resumes_with_every_batch_in_the_weights(
    table: Path, tmp_path: Path, batch: int
) -> None:
    """5 batches an epoch, accumulated in twos: last.ckpt saved after batch 2 of epoch 1 (its gradient
    held, not yet applied) resumed at batch 3, and batch 2 never reached the weights. The stop now
    waits for the window's end; every batch is trained on once, and the weights are the
    uninterrupted run's."""
    from chute.callbacks import LatestCheckpoint

    def run(*callbacks: L.Callback, ckpt: str | None = None) -> Rows:
        torch.manual_seed(0)
        model = Rows()
        fit = trainer(
            accumulate_grad_batches=2, limit_val_batches=0, callbacks=list(callbacks),
            enable_checkpointing=bool(callbacks), default_root_dir=tmp_path / "root",
        )  # fmt: skip
        fit.fit(model, datamodule=tabular(table), ckpt_path=ckpt)
        return model

    whole = run()
    with pytest.raises(SystemExit):
        run(SigtermAtBatch(1, batch), LatestCheckpoint(tmp_path))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    # 3 steps in epoch 0; epoch 1's windows [0, 1] and [2, 3] then batch 4: stopped at a window's end
    assert saved["global_step"] == (4 if batch == 1 else 5)
    resumed = run(LatestCheckpoint(tmp_path), ckpt=str(tmp_path / "last.ckpt"))
    left = 2 if batch == 1 else 4
    assert resumed.seen == {1: whole.seen[1][left * 8 :]}
    assert torch.equal(resumed.layer.weight, whole.layer.weight)


class ScheduledRows(Rows):
    """Rows with a learning rate that changes at every step (a resume one step off shows in the weights)."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.8)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_sigterm_during_a_mid_epoch_validation_resumes_after_the_step_it_followed(
    table: Path, tmp_path: Path, workers: int
) -> None:
    """Validation every 2 of the 5 batches an epoch; a SIGTERM at the first batch of the one after
    epoch 1's batch 1: last.ckpt is that step, and the restart trains epoch 1 from batch 2 with the
    uninterrupted run's samples, learning rates and weights. Before, nothing was saved: the restart
    went back to the save after epoch 0's batch 3."""
    from chute.callbacks import LatestCheckpoint

    def run(*callbacks: L.Callback, ckpt: str | None = None) -> Rows:
        torch.manual_seed(0)
        model = ScheduledRows()
        fit = trainer(
            val_check_interval=2, limit_val_batches=2, num_sanity_val_steps=0, callbacks=list(callbacks),
            enable_checkpointing=bool(callbacks), default_root_dir=tmp_path / "root",
        )  # fmt: skip
        fit.fit(model, datamodule=tabular(table, num_workers=workers), ckpt_path=ckpt)
        return model

    whole = run()
    with pytest.raises(SystemExit):
        run(SigtermInValidation(step=7), LatestCheckpoint(tmp_path))
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 7
    resumed = run(LatestCheckpoint(tmp_path), ckpt=str(tmp_path / "last.ckpt"))
    assert resumed.seen == {1: whole.seen[1][16:]}
    assert torch.equal(resumed.layer.weight, whole.layer.weight)


_SIGNAL_THE_GROUP = """
import os, subprocess, sys
from pathlib import Path
import lightning as L
from chute.callbacks import LatestCheckpoint
from tests.test_lightning_features import ScheduledRows, tabular, trainer

class TermGroup(L.Callback):  # as a scheduler does: every process of the job, DataLoader workers too,
    # from another process (torch's workers take a SIGTERM from their parent as a quiet exit)
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.global_step == 7 and batch_idx == 0:
            subprocess.run(["kill", "-TERM", "--", f"-{os.getpgid(0)}"])

root = Path(sys.argv[1])
fit = trainer(
    val_check_interval=2, limit_val_batches=4, num_sanity_val_steps=0, default_root_dir=root,
    callbacks=[TermGroup(), LatestCheckpoint(root)], enable_checkpointing=True,
)
try:
    fit.fit(ScheduledRows(), datamodule=tabular(root / "t.csv", num_workers=2))
except BaseException as err:
    print("stopped by", type(err).__name__)
"""


def test_a_sigterm_to_every_process_during_a_validation_with_worker_processes_stops_cleanly(
    table: Path, tmp_path: Path
) -> None:
    """A scheduler's SIGTERM reaches the DataLoader's worker processes too, and they die of it; the
    fit still stops as a SIGTERM stop, with last.ckpt at the step the validation followed."""
    (tmp_path / "t.csv").write_text(table.read_text())
    result = subprocess.run(
        [sys.executable, "-c", _SIGNAL_THE_GROUP, str(tmp_path)], cwd=Path(__file__).resolve().parents[1],
        capture_output=True, text=True, timeout=300, start_new_session=True,
    )  # fmt: skip
    assert "stopped by SIGTERMException" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 7


class ImageMeans(L.LightningModule):
    """Predicts each image's mean: enough to tell which image a prediction is of."""

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return batch[0].flatten(1).double().mean(1)


class Written(BasePredictionWriter):
    """Keeps what a prediction writer is given: each batch's indices and predictions, and the epoch's indices."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.batches: list[tuple[list[int], list[float]]] = []
        self.epoch: list[list[int]] | None = None

    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, batch_indices: Any, *args: Any
    ) -> None:
        self.batches.append((list(batch_indices), prediction.tolist()))

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        self.epoch = [list(batch) for batch in batch_indices[0]]  # the one predict loader's


def digits(root: Path, predict_root: Any = None, on_error: str = "raise", **loader: Any) -> ImageFolderDataModule:
    """The digits at 16 pixels, normalized to [0, 1] only (an image's mean is its pixels' mean / 255)."""
    transforms = {"image_size": 16, "crop_pct": 1.0}
    return ImageFolderDataModule(
        root, seed=0, mean=[0.0] * 3, std=[1.0] * 3, transforms=transforms, loader={"batch_size": 32, **loader},
        predict_root=predict_root, on_error=on_error, max_bad_fraction=0.1,
    )  # fmt: skip


def with_bad_images(digits_root: Path, out: Path, count: int = 70) -> tuple[Path, list[str]]:
    """A folder to predict on: ``count`` digit images with four unreadable files among them (an
    empty file, text, a PNG cut short; two in one batch of 32, one in the second half); returns it
    and the bad files' paths."""
    images = sorted((digits_root / "val").glob("*/*.png"))[:count]
    for k, image in enumerate(images):
        (out / f"{k:03d}.png").parent.mkdir(parents=True, exist_ok=True)
        (out / f"{k:03d}.png").write_bytes(image.read_bytes())
    bad = [out / "010b.png", out / "031b.png", out / "033b.png", out / "050b.png"]
    bad[0].write_bytes(b"")
    bad[1].write_text("not an image\n")
    bad[2].write_bytes(images[0].read_bytes()[:40])
    bad[3].write_text("not an image either\n")
    return out, [str(path) for path in bad]


@pytest.mark.parametrize(("workers", "backend"), [(0, "torch"), (2, "torch"), (2, "threads")])
def test_a_prediction_writer_gets_the_dataset_index_of_every_prediction(
    digits_root: Path, workers: int, backend: str
) -> None:
    """Lightning reads ``batch_indices`` off the loader's ``batch_sampler`` (chute's loaders record the
    indices of each batch they hand out); each index is that of the image predicted, each image once."""
    dm = digits(digits_root, num_workers=workers, backend=backend)
    writer = Written()
    trainer(callbacks=[writer]).predict(ImageMeans(), datamodule=dm, return_predictions=False)
    indices = [i for batch, _ in writer.batches for i in batch]
    assert sorted(indices) == list(range(len(dm.predict_files)))
    assert writer.epoch == [batch for batch, _ in writer.batches]
    dataset = dm.dataset("test")  # what predict reads (the digits have no test split: the val split)
    for batch, means in writer.batches:
        assert means == pytest.approx([float(dataset[i][0].double().mean()) / 255 for i in batch])


@pytest.mark.parametrize(("workers", "backend"), [(0, "torch"), (2, "torch"), (2, "threads")])
def test_predicting_a_folder_with_unreadable_images_skips_them_and_names_each_prediction(
    digits_root: Path, tmp_path: Path, workers: int, backend: str
) -> None:
    """``on_error="skip"`` while predicting (refused before 2026-12-07): the unreadable images are
    counted and left out, every readable one is predicted once, and ``predicted_files`` lines up with
    the predictions ``trainer.predict`` returns, as the writer's ``batch_indices`` do."""
    folder, broken = with_bad_images(digits_root, tmp_path / "new")
    dm = digits(digits_root, predict_root=folder, on_error="skip", num_workers=workers, backend=backend)
    writer = Written()
    returned = trainer(callbacks=[writer]).predict(ImageMeans(), datamodule=dm)
    assert returned is not None
    means = [float(m) for batch in returned for m in batch]
    files = dm.predict_files
    assert dm.predicted_files == [path for path in files if path not in broken]
    dataset = dm.dataset("predict")
    assert means == pytest.approx([float(dataset[files.index(p)][0].double().mean()) / 255 for p in dm.predicted_files])
    assert [i for batch, _ in writer.batches for i in batch] == [files.index(p) for p in dm.predicted_files]
    assert dm.bad_samples["predict"]["skipped"] == len(broken)
    # a second predict with the same DataModule names its own predictions
    again = trainer().predict(ImageMeans(), datamodule=dm)
    assert again is not None
    assert [float(m) for batch in again for m in batch] == means
    assert dm.predicted_files == [path for path in files if path not in broken]


def test_predicted_files_are_those_of_this_datamodules_last_predict(digits_root: Path, tmp_path: Path) -> None:
    """Taken when a predict with the DataModule ends: another DataModule's predict with the same
    Trainer, a fit with another Trainer, and loaders passed as ``dataloaders=`` leave them (they were
    read off the Trainer's last predict loader, and named another folder's images by this one's).
    ``predict_root`` set again is indexed anew (the first folder's images were predicted again)."""
    folder, broken = with_bad_images(digits_root, tmp_path / "new", count=20)
    dm = digits(digits_root, predict_root=folder, on_error="skip")
    refused = r"predicted_files: no trainer.predict\(model, datamodule=dm\) has ended since this DataModule made"
    dm.setup("predict")
    with pytest.raises(RuntimeError, match=refused):
        _ = dm.predicted_files  # before any predict
    predicting = trainer()
    predicting.predict(ImageMeans(), datamodule=dm)
    named = [path for path in dm.predict_files if path not in broken]
    assert dm.predicted_files == named
    other_folder = with_bad_images(digits_root, tmp_path / "other", count=5)[0]
    other = digits(digits_root, predict_root=other_folder, on_error="skip")
    predicting.predict(ImageMeans(), datamodule=other)
    kept = other.predicted_files
    assert len(kept) == 5
    third = digits(digits_root, predict_root=folder, on_error="skip")
    third.setup("predict")
    predicting.predict(ImageMeans(), dataloaders=third.predict_dataloader())
    assert other.predicted_files == kept  # the Trainer keeps `other`, whose teardown sees another loader
    trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(ImageMeansFit(), datamodule=dm)
    assert dm.predicted_files == named
    assert pickle.loads(pickle.dumps(dm)).predicted_files == named
    older = {k: v for k, v in dm.__getstate__().items() if k not in ("_predicted", "_predict_images", "_predict_root")}
    copy = object.__new__(type(dm))  # as a DataModule pickled before predicted_files loads
    copy.__setstate__({**older, "predict_root": str(folder)})
    assert copy.predict_root == str(folder)
    with pytest.raises(RuntimeError, match=refused):
        _ = copy.predicted_files
    trainer().predict(ImageMeans(), dataloaders=dm.predict_dataloader())  # not followed: forgotten
    with pytest.raises(RuntimeError, match=refused):
        _ = dm.predicted_files
    dm.predict_root = other_folder  # another folder, indexed anew
    assert dm.predict_files == other.predict_files
    trainer().predict(ImageMeans(), datamodule=dm)
    assert dm.predicted_files == other.predicted_files


class ImageMeansFit(ImageMeans):
    """``ImageMeans`` that can be fitted (one weight, a loss of the images' means)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (batch[0].flatten(1).float().mean(1) * self.weight).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.ddp
@pytest.mark.parametrize(
    ("workers", "backend", "bad"),
    [(2, "torch", True), pytest.param(2, "torch", False, marks=pytest.mark.slow),
     pytest.param(2, "threads", False, marks=pytest.mark.slow)],
)  # fmt: skip
def test_under_ddp_each_ranks_writer_gets_the_indices_of_its_own_share(
    digits_root: Path, tmp_path: Path, workers: int, backend: str, bad: bool
) -> None:
    """Each rank predicts its contiguous share of the split (chute's one split rule); its writer's indices
    are that share's dataset indices, and the ranks' together are every image once. ``predicted_files``
    names, on each rank, the images of the predictions ``trainer.predict`` returned there. With
    unreadable images among them (``on_error="skip"``, a folder of its own): every readable one once."""
    folder, broken = with_bad_images(digits_root, tmp_path / "new") if bad else (None, [])
    extra = [str(folder)] if folder is not None else []
    ranks = two_rank_records(
        "ddp_predict.py", str(tmp_path), str(digits_root), backend, str(workers), *extra, out=tmp_path
    )
    dm = digits(digits_root, predict_root=folder)
    dm.prepare_data()
    dm.setup("predict")
    dataset = dm.dataset("predict" if bad else "test")
    files, size = dm.predict_files, len(dm.predict_files)
    for rank, record in enumerate(ranks):
        indices = [i for batch, _ in record["batches"] for i in batch]
        share = range(*rank_span(size, 2, rank))
        assert indices == [i for i in share if files[i] not in broken]
        assert record["epoch"] == [batch for batch, _ in record["batches"]]
        for batch, means in record["batches"]:
            assert means == pytest.approx([float(dataset[i][0].double().mean()) / 255 for i in batch])
        assert record["files"] == [files[i] for i in indices]
        assert record["returned"] == [m for _, means in record["batches"] for m in means]
    for rank in (0, 1):  # each rank leaves some out
        assert not bad or any(files.index(path) in range(*rank_span(size, 2, rank)) for path in broken)
