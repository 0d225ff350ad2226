"""``MultiTaskDataModule``: one table of features, several named targets (classification and regression)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from typing_extensions import Unpack

from chute.datamodules.base import CommonArgs
from chute.datamodules.table import TableDataModuleBase, Task, UnknownCategory
from chute.datasets.tabular import MissingStrategy, MultiTaskDataset
from chute.errors import ConfigError


class MultiTaskDataModule(TableDataModuleBase):
    """Rows of a CSV/Parquet table as dict batches with one target per task.

    Batches are ``{"inputs": float32 (B, F), "targets": {task: (B,)}}`` (plus ``"weights"`` with a
    weight column). Classification targets are class indices over the training split's classes;
    regression targets are floats in their own units, with the training mean and std handed to the
    model (``model_kwargs["heads"]``) so it can scale its losses. Features are encoded as in
    :class:`~chute.datamodules.TabularDataModule`, fitted on the training split only.

    Args:
        path: Training table (``.csv``, ``.tsv``, optionally ``.gz``, or ``.parquet``).
        tasks: ``{name: {"column": ..., "type": "classification" | "regression"}}``; ``column``
            defaults to the task's name.
        numeric, categorical, weight, val_path, test_path, predict_path, val_fraction, missing, fill_value,
        standardize, unknown_category, loader, seed, prepare, collate_fn, on_error, max_bad_fraction: As for
            :class:`~chute.datamodules.TabularDataModule`; the validation split is stratified by the
            first classification task.

    Example:
        >>> from chute.datasets import SklearnTable
        >>> import tempfile
        >>> dm = MultiTaskDataModule(
        ...     tempfile.mkdtemp() + "/wine.csv", prepare=SklearnTable("wine"),
        ...     tasks={"cultivar": {"type": "classification"}, "alcohol": {"type": "regression"}})
        >>> dm.prepare_data(); dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> tuple(batch["inputs"].shape), sorted(batch["targets"])
        ((64, 12), ['alcohol', 'cultivar'])
    """

    unsupported = {"imbalance": "has several targets, no one class target to balance (weight the tasks' losses)"}

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tasks: Mapping[str, Mapping[str, str]],
        numeric: Sequence[str] | None = None,
        categorical: Sequence[str] = (),
        weight: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.2,
        missing: MissingStrategy = "raise",
        fill_value: float = 0.0,
        standardize: bool = True,
        unknown_category: UnknownCategory = "raise",
        encoding: str = "utf-8",
        predict_path: str | None = None,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(
            path, tasks=_parse_tasks(tasks), numeric=numeric, categorical=categorical, weight=weight,
            val_path=val_path, test_path=test_path, val_fraction=val_fraction, missing=missing,
            fill_value=fill_value, standardize=standardize, unknown_category=unknown_category, encoding=encoding,
            predict_path=predict_path, **common,
        )  # fmt: skip
        self.save_plain_hyperparameters(tasks={n: {"column": c, "type": k} for n, (c, k) in self.tasks.items()})

    def make_dataset(
        self, features: np.ndarray, targets: dict[str, np.ndarray], weights: np.ndarray | None
    ) -> MultiTaskDataset:
        return MultiTaskDataset(features, targets, weights)

    def dataset(self, split: str) -> MultiTaskDataset:
        """The ``train``, ``val`` or ``test`` split (encoded)."""
        dataset = super().dataset(split)
        assert isinstance(dataset, MultiTaskDataset)
        return dataset

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        """Per task: ``type`` plus ``num_classes`` and ``class_names`` (classification) or the training
        ``mean`` and ``std`` of the target (regression)."""
        train = self.dataset("train")
        info: dict[str, dict[str, Any]] = {}
        for name, (_, kind) in self.tasks.items():
            if kind == "classification":
                names = self.task_classes[name]
                info[name] = {"type": kind, "num_classes": len(names), "class_names": list(names)}
            else:
                values = train.targets[name].double()
                std = float(values.std()) if len(values) > 1 else 1.0
                info[name] = {"type": kind, "mean": float(values.mean()), "std": std if std > 0 else 1.0}
        return info

    @property
    def model_kwargs(self) -> dict[str, Any]:
        tasks = {name: {k: v for k, v in info.items() if k != "class_names"} for name, info in self.task_info.items()}
        return {"num_features": self.num_features, "heads": tasks}


def _parse_tasks(tasks: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[str, Task]]:
    parsed: dict[str, tuple[str, Task]] = {}
    for name, spec in tasks.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"tasks.{name}", spec, "must be a mapping like {column: ..., type: classification}")
        unknown = set(spec) - {"column", "type"}
        if unknown:
            raise ConfigError(f"tasks.{name}", dict(spec), f"unknown keys {sorted(unknown)}; use 'column' and 'type'")
        kind = spec.get("type", "classification")
        if kind not in ("classification", "regression"):
            raise ConfigError(f"tasks.{name}.type", kind, "must be 'classification' or 'regression'")
        parsed[str(name)] = (str(spec.get("column", name)), kind)  # type: ignore[assignment]
    return parsed
