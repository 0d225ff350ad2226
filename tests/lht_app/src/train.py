"""The template's entry point, in shape: seed only when asked, instantiate data, model, callbacks and
trainer from the config, fit, test, and return the metric a sweep optimizes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the template's rootutils.setup_root


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("seed"):
        L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks: list[Any] = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks)
    if cfg.get("train"):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test"):
        trainer.test(model=model, datamodule=datamodule, ckpt_path="best")
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    print(
        "lht-app " + " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) + f" data={type(datamodule).__name__}"
    )
    return metrics.get(cfg.get("optimized_metric") or "val/acc")


if __name__ == "__main__":
    main()
