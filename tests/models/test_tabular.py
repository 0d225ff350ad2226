"""TabularModel: per-sample weights scale the loss; regression and classification heads."""

from __future__ import annotations

import torch

from chute.models import TabularModel


def _loss(model: TabularModel, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no trainer attached
    return model._step(batch, "val")


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
