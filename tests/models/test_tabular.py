"""TabularModel: per-sample weights scale the loss; regression and classification heads."""

from __future__ import annotations

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
