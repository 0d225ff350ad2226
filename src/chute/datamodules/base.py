"""What every chute DataModule shares: loader settings, seeding and the device-side batch hook."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from chute.autotune import autotune
from chute.collate import Collate, passthrough, resolve_collate
from chute.errors import ConfigError
from chute.imbalance import ImbalanceSettings, as_imbalance_settings, build_sampler, class_weights
from chute.loader import LoaderSettings, build_dataloader, derive_seed
from chute.samplers import BatchIndexSampler, DistributedDraw, IndexSampler
from chute.threaded import ThreadedLoader


class ChuteDataModule(L.LightningDataModule):
    """Base class: builds every DataLoader from one :class:`LoaderSettings` and applies
    ``batch_transform`` to the inputs after they reach the device.

    Subclasses build datasets in ``setup`` and set ``self.batch_transform`` (e.g. a
    :class:`~chute.transforms.NormalizeBatch`), which ``on_after_batch_transfer`` applies to the
    first element of tuple batches or the ``"inputs"`` entry of dict batches. Lightning calls that
    hook in any project, so models receive ready batches; a LightningModule that overrides the
    same hook is ignored by Lightning in favour of the DataModule's.

    Subclasses also report what a model needs to know about the data in :attr:`model_kwargs`
    (``num_classes``, ``in_channels``, ``num_features``, ...), which the train app passes to the model.

    Args:
        loader: DataLoader settings (a :class:`LoaderSettings`, a mapping of its fields, or ``None``
            for defaults).
        seed: Seed for splits, shuffling and worker seeding.
        prepare: Optional callable ``prepare(root)`` that writes the data if missing, run by
            ``prepare_data`` (e.g. :class:`~chute.datasets.DigitsFolder`).
        collate_fn: Collate function, or the dotted path of one, replacing the DataModule's default.
        imbalance: Class-imbalance strategy (:class:`~chute.imbalance.ImbalanceSettings` or a mapping
            of its fields); checked at ``setup`` against the training split's classes.
    """

    def __init__(
        self,
        loader: LoaderSettings | Mapping[str, Any] | None = None,
        seed: int = 0,
        prepare: Callable[[str], Any] | None = None,
        collate_fn: Collate | str | None = None,
        imbalance: ImbalanceSettings | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.loader_settings = as_loader_settings(loader)
        self.imbalance = as_imbalance_settings(imbalance)
        self.seed = int(seed)
        self.prepare = prepare
        self.collate_fn = collate_fn
        resolve_collate(collate_fn, passthrough)  # fail on a bad path now, not in a worker
        self.batch_transform: Callable[[Any], Any] | None = None
        self.tuned_loader: LoaderSettings | None = None  # what num_workers=auto chose
        self.autotune_report: list[dict[str, Any]] = []
        # Applied after ``batch_transform`` to training batches only (device-side augmentation):
        # to the inputs, then to ``(inputs, targets)`` pairs (MixUp/CutMix make soft targets).
        self.train_batch_transform: Callable[[Any], Any] | None = None
        self.train_pair_transform: Callable[[Any, Any], tuple[Any, Any]] | None = None
        self._position = (0, 0)  # (epoch, training batches consumed in it)
        self._resume_at: tuple[int, int] | None = None  # from a checkpoint, applied to the next train loader

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """What a model needs to know about this data, e.g. ``{"num_classes": 10, "in_channels": 1}``."""
        return {}

    # -- Class imbalance ---------------------------------------------------------------------------

    def _class_labels(self) -> tuple[np.ndarray, int, tuple[str, ...]] | None:
        """Training labels, number of classes and class names; ``None`` without class targets."""
        return None

    def _check_imbalance(self) -> None:
        """Fail at setup, before any training step, if the strategy cannot work on this data."""
        if self.imbalance.strategy == "none":
            return
        classes = self._class_labels()
        if classes is None:
            raise ConfigError(
                "imbalance.strategy", self.imbalance.strategy,
                f"needs class targets; {type(self).__name__} here has none (e.g. a regression target)",
            )  # fmt: skip
        labels, num_classes, names = classes
        try:
            if self.imbalance.samples:
                self._train_sampler()
            else:
                class_weights(np.bincount(labels, minlength=num_classes), self.imbalance, names)
        except ConfigError as err:
            raise err.with_prefix("imbalance") from None

    def _train_sampler(self) -> tuple[DistributedDraw | None, bool]:
        """The imbalance strategy's training sampler (``None`` for none) and whether it yields batches."""
        classes = self._class_labels() if self.imbalance.samples else None
        if classes is None:
            return None, False
        labels, num_classes, names = classes
        rank, world = self._world()
        return build_sampler(
            self.imbalance, labels, num_classes, self.loader_settings.batch_size,
            seed=derive_seed(self.seed, 9), class_names=names, rank=rank, world_size=world,
        )  # fmt: skip

    def _world(self) -> tuple[int | None, int | None]:
        """``(global rank, world size)`` from the attached trainer; ``None`` leaves it to torch.distributed."""
        if self.trainer is None:
            return None, None
        return self.trainer.global_rank, self.trainer.world_size

    def _index_sampler(self, num_samples: int, train: bool = True) -> IndexSampler:
        """Training without an imbalance strategy: a (seed, epoch) permutation that every rank draws
        alike and splits, resumable mid-epoch. Evaluation: ``0..n-1`` split across ranks without
        padding, so each sample is evaluated exactly once (:class:`~chute.samplers.IndexSampler`)."""
        rank, world = self._world()
        return IndexSampler(
            num_samples, shuffle=train and self.loader_settings.shuffle, seed=derive_seed(self.seed, 0), rank=rank,
            world_size=world, pad=train,
        )  # fmt: skip

    @property
    def class_weights(self) -> list[float]:
        """Per-class loss weights from the training split's counts (the imbalance ``weighting``)."""
        classes = self._class_labels()
        if classes is None:
            raise AttributeError("class_weights: this data has no class targets")
        labels, num_classes, names = classes
        weights = class_weights(np.bincount(labels, minlength=num_classes), self.imbalance, names)
        return [round(float(w), 6) for w in weights]

    @property
    def loss_kwargs(self) -> dict[str, Any]:
        """What the model's loss needs from the imbalance strategy: ``class_weights`` for ``loss_weights``."""
        return {"class_weights": self.class_weights} if self.imbalance.strategy == "loss_weights" else {}

    def _collate(self, default: Collate) -> Collate:
        return resolve_collate(self.collate_fn, default)

    def _save_plain_hparams(self, **values: Any) -> None:
        """``save_hyperparameters`` with plain values only (plus seed, loader settings and collate).

        Checkpoints then load with ``torch.load(..., weights_only=True)``: no paths, dataclasses
        or transform objects to unpickle. ``None`` values (defaults: "infer from the data") are left
        out, because Lightning refuses a DataModule hparam that differs from the model's, and the
        model gets the inferred value (e.g. ``vocab_size``).
        """
        collate = self.collate_fn if isinstance(self.collate_fn, str | None) else _qualname(self.collate_fn)
        values = {
            **values,
            "seed": self.seed,
            "loader": dataclasses.asdict(self.loader_settings),
            "collate_fn": collate,
        }
        self.save_hyperparameters({k: v for k, v in values.items() if v is not None})

    def _dataloader(
        self,
        dataset: Dataset[Any],
        *,
        train: bool,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        sampler: Sampler[Any] | None = None,
        batch_sampler: Sampler[Any] | None = None,
        dataset_batches: bool = False,
    ) -> DataLoader[Any]:
        rank = self._world()[0]
        if train and not dataset_batches:
            if sampler is None and batch_sampler is None:  # order from (seed, epoch), resumable
                sampler = self._index_sampler(len(dataset))  # type: ignore[arg-type]
            if batch_sampler is not None:
                self._resume(batch_sampler, 1)
            else:
                self._resume(sampler, self.loader_settings.batch_size)
        if callable(getattr(dataset, "set_epoch", None)):  # e.g. augmentations keyed by (seed, epoch, index)
            for drawn in (sampler, batch_sampler):
                if drawn is not None and hasattr(drawn, "epoch_listener"):
                    drawn.epoch_listener = dataset.set_epoch  # type: ignore[attr-defined]
        resumed_stream = None
        if train and dataset_batches and self._resume_at is not None and callable(getattr(dataset, "resume", None)):
            resumed_stream, self._resume_at = self._resume_at, None
            self._position = resumed_stream
            dataset.resume(*resumed_stream)  # type: ignore[attr-defined]

        def build(settings: LoaderSettings, probe: bool = False) -> Any:
            # Probes get copies of stateful samplers, so tuning leaves the real epoch count alone.
            s, b = (copy.deepcopy(sampler), copy.deepcopy(batch_sampler)) if probe else (sampler, batch_sampler)
            if settings.backend == "threads":
                return self._threaded(dataset, settings, train, collate_fn, s, b, dataset_batches)
            return build_dataloader(
                dataset, settings, train=train, seed=self.seed, collate_fn=collate_fn, sampler=s, batch_sampler=b,
                rank=rank, dataset_batches=dataset_batches,
            )  # fmt: skip

        settings = self.loader_settings
        if settings.auto:
            if self.tuned_loader is None:  # tuned once, on the first loader built (training, under Lightning)
                self.tuned_loader, self.autotune_report = autotune(
                    lambda s: build(s, probe=True), settings, threads=not dataset_batches
                )
            settings = self.tuned_loader
        loader = build(settings)
        if resumed_stream is not None and callable(getattr(loader, "set_epoch", None)):
            loader.set_epoch(resumed_stream[0])  # the stream's pass counter starts at the saved epoch
        return loader

    def _threaded(
        self,
        dataset: Dataset[Any],
        settings: LoaderSettings,
        train: bool,
        collate_fn: Callable[[Any], Any] | None,
        sampler: Sampler[Any] | None,
        batch_sampler: Sampler[Any] | None,
        dataset_batches: bool,
    ) -> ThreadedLoader:
        if dataset_batches:
            raise ConfigError("loader.backend", "threads", f"{type(self).__name__} streams batches itself; use torch")
        size = settings.batch_size_for(train)
        batches: Any = batch_sampler
        if batches is None and sampler is not None:
            batches = _Batched(sampler, size, settings.drop_last and train)
        if batches is None:
            batches = BatchIndexSampler(
                len(dataset),  # type: ignore[arg-type]
                size, shuffle=train and settings.shuffle, drop_last=train and settings.drop_last,
                seed=derive_seed(self.seed, 0 if train else 1), pad=train,
            )  # fmt: skip
        device = getattr(getattr(self.trainer, "strategy", None), "root_device", None)
        return ThreadedLoader(
            dataset, batches, collate_fn, prefetch=settings.prefetch_factor or 2, threads=settings.num_workers,
            pin_memory=settings.resolved_pin_memory, timeout=settings.timeout,
            device=device if device is not None and device.type == "cuda" and settings.resolved_pin_memory else None,
        )  # fmt: skip

    # -- Loaders: one per split, built by the subclass's ``_split_loader`` -------------------------

    def train_dataloader(self) -> DataLoader[Any]:
        return self._split_loader("train", train=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._split_loader("val", train=False)

    def test_dataloader(self) -> DataLoader[Any]:
        return self._split_loader("test", train=False)

    def predict_dataloader(self) -> DataLoader[Any]:
        return self._split_loader("test", train=False)

    def _split_loader(self, split: str, train: bool) -> DataLoader[Any]:
        """The loader of ``split`` (``train``, ``val`` or ``test``); ``train`` selects training behaviour."""
        raise NotImplementedError

    def _not_set_up(self) -> RuntimeError:
        """The error for using split data before ``setup``."""
        return RuntimeError(
            f"{type(self).__name__} is not set up: call prepare_data() and setup() first "
            "(Lightning's Trainer does both)."
        )

    def _prepare_root(self, root: str) -> None:
        if self.prepare is not None:
            self.prepare(root)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = _apply_to_inputs(self.batch_transform, batch)
        if self.trainer is None or not self.trainer.training:
            return batch
        self._count_training_batch()
        batch = _apply_to_inputs(self.train_batch_transform, batch)
        if self.train_pair_transform is not None and isinstance(batch, (tuple, list)) and len(batch) >= 2:
            inputs, targets = self.train_pair_transform(batch[0], batch[1])
            batch = type(batch)([inputs, targets, *batch[2:]])
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The seed and where training stands in its epoch (saved in every Lightning checkpoint)."""
        return {"seed": self.seed, "train_position": self._train_resume_point()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict.get("seed", self.seed))
        position = state_dict.get("train_position")
        if position is not None:
            self._resume_at = (int(position["epoch"]), int(position["batches"]))

    # -- Mid-epoch resume ------------------------------------------------------------------------
    # The training batches consumed in the current epoch are counted as they reach the device (not
    # as the loader yields them: Lightning fetches one batch ahead and workers prefetch more), saved
    # with the checkpoint, and on resume the training sampler skips exactly those: the two parts of
    # an interrupted epoch together see the samples of one uninterrupted epoch, in the same order.

    def _count_training_batch(self) -> None:
        epoch = int(getattr(self.trainer, "current_epoch", 0))
        done_epoch, done = self._position
        self._position = (epoch, done + 1 if done_epoch == epoch else 1)

    def _train_resume_point(self) -> dict[str, int]:
        epoch, batches = self._position
        total = getattr(self.trainer, "num_training_batches", None) if self.trainer is not None else None
        if isinstance(total, int) and batches >= total:  # the epoch is complete: resume at the next one
            epoch, batches = epoch + 1, 0
        return {"epoch": epoch, "batches": batches}

    def _resume(self, sampler: Any, items_per_batch: int) -> None:
        """Point a fresh training sampler at the saved position (once, after ``load_state_dict``)."""
        resume = self._resume_at
        if resume is None or not isinstance(sampler, DistributedDraw):
            return
        epoch, batches = resume
        self._resume_at = None
        self._position = (epoch, batches)
        sampler.load_state_dict({"epoch": epoch, "yielded": batches * items_per_batch, "seed": sampler.seed})


class _Batched:
    """Group an index sampler's indices into batches; ``set_epoch`` reaches the index sampler."""

    def __init__(self, sampler: Sampler[Any], batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Any:
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch


def _apply_to_inputs(transform: Callable[[Any], Any] | None, batch: Any) -> Any:
    """``transform`` on the inputs: element 0 of a tuple batch, ``"inputs"`` of a dict, or the batch."""
    if transform is None:
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return type(batch)([transform(batch[0]), *batch[1:]])
    if isinstance(batch, dict) and "inputs" in batch:
        return {**batch, "inputs": transform(batch["inputs"])}
    return transform(batch)


def as_loader_settings(loader: LoaderSettings | Mapping[str, Any] | None) -> LoaderSettings:
    """Accept settings as an object, a mapping of its fields (e.g. a Hydra node) or ``None``."""
    if loader is None:
        return LoaderSettings()
    if isinstance(loader, LoaderSettings):
        return loader
    if isinstance(loader, Mapping):
        return LoaderSettings(**{str(k): v for k, v in loader.items() if k != "_target_"})
    raise TypeError(f"loader must be LoaderSettings, a mapping or None, not {type(loader).__name__}")


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
