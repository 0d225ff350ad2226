"""A Hydra + Lightning app that knows nothing of chute: its own configs, model and training loop.

chute reaches it only through Hydra: the installed chute's search-path plugin adds the
``data=chute_*`` options, and its ``chute.data`` resolver gives the model its class count. Used by
``tests/test_foreign_app.py``; run by hand as ``python tests/foreign_app/app.py data=chute_digits``.
"""

from __future__ import annotations

from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


class Classifier(L.LightningModule):
    """Flatten, one hidden layer, ``num_classes`` outputs; the input size is found on the first batch."""

    def __init__(self, num_classes: int, hidden: int = 64, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.LazyLinear(hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_acc", (self.net(batch[0]).argmax(dim=1) == batch[1]).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    trainer = L.Trainer(**cfg.trainer)
    trainer.fit(model, datamodule=datamodule)
    accuracy = float(trainer.callback_metrics["val_acc"])
    print(f"foreign-app data={type(datamodule).__name__} num_classes={cfg.model.num_classes} val_acc={accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
