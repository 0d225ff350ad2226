"""TabularModel: per-sample weights scale the loss; regression and classification heads."""

from __future__ import annotations

import pytest
import torch

from chute.models import TabularModel


def _loss(model: TabularModel, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no trainer attached
    return model._step(batch, "val", 0)


def test_zero_weight_rows_do_not_count() -> None:
    torch.manual_seed(0)
    model = TabularModel(num_features=3, num_classes=2).eval()
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    weights = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    weighted = _loss(model, (x, y, weights))
    torch.testing.assert_close(weighted, _loss(model, (x[:3], y[:3])))


def test_regression_outputs_one_value_per_row() -> None:
    model = TabularModel(num_features=4, task="regression").eval()
    assert model(torch.zeros(5, 4)).shape == (5,)
    loss = _loss(model, (torch.zeros(5, 4), torch.ones(5)))
    assert loss.ndim == 0


def test_epoch_metrics_logged_once_a_run_are_the_whole_splits(tmp_path) -> None:
    """``train/acc`` and ``val/acc`` are logged once per loop epoch (each ``self.log`` costs ~0.4 ms a
    step) and are still the whole epoch's: ``val/acc`` is the final model's over the split."""
    import lightning as L
    from torchmetrics.classification import MulticlassAccuracy

    from chute.datamodules import TabularDataModule
    from chute.datasets import SklearnTable

    logged: list[str] = []

    class Counted(TabularModel):
        def log(self, name: str, value, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            if name.endswith("/acc"):
                logged.append(name)
            super().log(name, value, *args, **kwargs)

    path = SklearnTable("breast_cancer")(tmp_path / "cancer.csv")
    dm = TabularDataModule(str(path), target="diagnosis", loader={"batch_size": 32})
    dm.setup("fit")
    model = Counted(**dm.model_kwargs)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert sorted(logged) == ["train/acc", "train/acc", "val/acc", "val/acc"]
    model.eval()
    acc = MulticlassAccuracy(2, average="micro")
    with torch.no_grad():
        for batch in dm.val_dataloader():
            acc.update(model(batch[0]), batch[1])
    assert float(trainer.callback_metrics["val/acc"]) == float(acc.compute())


def _cancer(tmp_path):  # type: ignore[no-untyped-def]
    from chute.datamodules import TabularDataModule
    from chute.datasets import SklearnTable

    path = SklearnTable("breast_cancer")(tmp_path / "cancer.csv")
    dm = TabularDataModule(str(path), target="diagnosis", loader={"batch_size": 32}, seed=0)
    dm.setup("fit")
    return dm


def _trainer(tmp_path, **kwargs):  # type: ignore[no-untyped-def]
    import lightning as L

    quiet = dict.fromkeys(("logger", "enable_checkpointing", "enable_model_summary", "enable_progress_bar"), False)
    return L.Trainer(accelerator="cpu", default_root_dir=tmp_path, num_sanity_val_steps=0, **{**quiet, **kwargs})


def test_fit_after_validate_on_the_same_model(tmp_path) -> None:
    """``validate`` resets the evaluation metrics inside inference mode; ``fit``'s validation (outside it)
    could then not update them: "Inplace update to inference tensor outside InferenceMode"."""
    dm = _cancer(tmp_path)
    model = TabularModel(**dm.model_kwargs)
    before = _trainer(tmp_path).validate(model, datamodule=dm, verbose=False)[0]
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    assert set(before) == {"val/acc", "val/loss"}


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # the saving callback is not needed again
def test_a_run_cut_short_then_resumed_onto_the_same_model_logs_what_a_fresh_one_does(tmp_path) -> None:
    """The cut-short run's updates stay in the model's metrics; the resumed epoch's ``train/acc`` was not
    logged at all (never at a first update again), and EarlyStopping on it failed."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from tests.helpers import CutAt, CutError

    dm = _cancer(tmp_path)
    L.seed_everything(0)
    model = TabularModel(**dm.model_kwargs)
    saves = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    cut = _trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[saves, CutAt(18)])
    with pytest.raises(CutError):
        cut.fit(model, datamodule=dm)
    checkpoint = str(tmp_path / "ckpt" / "step=17.ckpt")  # epoch 1, mid-way (15 batches an epoch)
    resumed = {}
    for name, target in [("same", model), ("fresh", TabularModel(**dm.model_kwargs))]:
        stop = EarlyStopping(monitor="train/acc", mode="max", patience=5, check_on_train_epoch_end=True)
        trainer = _trainer(tmp_path, max_epochs=2, callbacks=[stop])
        L.seed_everything(1)  # the same dropout draws for both
        trainer.fit(target, datamodule=dm, ckpt_path=checkpoint)
        resumed[name] = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert "train/acc" in resumed["same"]
    assert resumed["same"] == resumed["fresh"]


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # the saving callback is not needed again
def test_an_epoch_resumed_mid_way_logs_the_uninterrupted_epochs_train_metrics(tmp_path) -> None:
    """The checkpoint holds the training metrics' counts so far, so the resumed epoch's ``train/acc`` is
    that of the whole epoch, as in the run that was never cut (it counted the batches after the resume
    only). A model loaded with ``load_from_checkpoint`` and fitted afresh starts its metrics empty."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from chute.models.metrics import TRAIN_METRICS_KEY
    from tests.helpers import CutAt, CutError

    dm = _cancer(tmp_path)

    def model() -> TabularModel:
        L.seed_everything(0)
        return TabularModel(**dm.model_kwargs, dropout=0.0)  # nothing random in a step

    whole = _trainer(tmp_path, max_epochs=2)
    whole.fit(model(), datamodule=dm)
    saves = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    cut = _trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[saves, CutAt(18)])
    with pytest.raises(CutError):
        cut.fit(model(), datamodule=dm)
    checkpoint = tmp_path / "ckpt" / "step=17.ckpt"  # epoch 1, 2 of its 15 batches trained
    saved = torch.load(checkpoint, weights_only=True)[TRAIN_METRICS_KEY]
    assert saved["epoch"] == 1
    assert saved["metrics"][0]["update_count"] == 2
    resumed = _trainer(tmp_path, max_epochs=2)
    resumed.fit(model(), datamodule=dm, ckpt_path=str(checkpoint))
    assert float(resumed.callback_metrics["train/acc"]) == float(whole.callback_metrics["train/acc"])
    assert float(resumed.callback_metrics["val/acc"]) == float(whole.callback_metrics["val/acc"])

    # the same checkpoint's weights, fitted as a new run: its epochs count from empty metrics
    loaded = TabularModel.load_from_checkpoint(checkpoint, weights_only=True)
    assert all(m.update_count == 0 for m in loaded.epoch_metrics("train"))
    fresh = _trainer(tmp_path, max_epochs=1)
    fresh.fit(loaded, datamodule=dm)
    assert 0.0 <= float(fresh.callback_metrics["train/acc"]) <= 1.0


@pytest.mark.slow
def test_under_ddp_an_epoch_resumed_mid_way_logs_the_uninterrupted_epochs_train_metrics(tmp_path) -> None:
    """2 ranks: each checkpoint holds the counts summed over both ranks (every rank joins the sum when
    the checkpoint is written); the resumed fit gives them to rank 0 and starts rank 1 empty, so the
    epoch's ``train/acc``, synced over the ranks, is the uninterrupted run's (0.9604 against 0.9649
    before: the batches after the resume only)."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    records = {}
    for mode in ("whole", "cut", "resume"):
        proc = subprocess.run(
            [sys.executable, str(REPO / "tests" / "ddp_resume_metrics.py"), str(tmp_path), mode],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        records[mode] = [json.loads((tmp_path / f"{mode}-rank{r}.json").read_text()) for r in (0, 1)]
    assert (tmp_path / "ckpt" / "step=10.ckpt").exists()
    saved = torch.load(tmp_path / "ckpt" / "step=10.ckpt", weights_only=True)["chute_train_metric_states"]
    assert (saved["epoch"], saved["metrics"][0]["update_count"]) == (1, 4)  # 2 steps on each of 2 ranks
    for rank in (0, 1):
        whole, resumed = records["whole"][rank]["metrics"], records["resume"][rank]["metrics"]
        assert resumed["train/acc"] == whole["train/acc"]
        assert resumed["val/acc"] == whole["val/acc"]


def test_a_training_metric_without_states_of_its_own_is_left_out_of_the_checkpoint() -> None:
    """A wrapper keeps its states in its inner metrics (``MinMaxMetric``): nothing to sum; under DDP the
    sum's device was read off its first state and every checkpoint save raised StopIteration."""
    from torchmetrics.classification import MulticlassAccuracy
    from torchmetrics.wrappers import MinMaxMetric

    from chute.models.metrics import _summed_states

    assert _summed_states(MinMaxMetric(MulticlassAccuracy(3))) is None
    saved = _summed_states(MulticlassAccuracy(3))
    assert saved is not None
    assert saved["update_count"] == 0
