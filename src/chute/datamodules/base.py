"""``ChuteDataModule``: what every chute DataModule gets by construction.

The declared interface (what ``train.py``, callbacks and tests may rely on), the order of every
loader (training draw, imbalance strategy, per-sample evaluation split) handed to
:func:`chute.loader.build_loader`, the bad-sample policy, the resumable position, plain
hyperparameters and the device-side batch hook. Over 300 lines because it is the one class every
DataModule inherits; its sections are marked. The loader machinery lives in :mod:`chute.loader`,
what the loader runs of the batch hook in :mod:`chute.datamodules.hooks`, and the plain
hyperparameters in :mod:`chute.datamodules.hparams`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import Dataset, IterableDataset, default_collate, default_convert

from chute.autotune import autotune
from chute.bad_samples import BadSamples, OnError
from chute.collate import Collate, passthrough, resolve_collate
from chute.datamodules.hooks import InLoader, LoaderHook, apply_to_inputs
from chute.datamodules.hparams import plain_values, qualname
from chute.errors import ConfigError, DataError
from chute.imbalance import ImbalanceSettings, as_imbalance_settings, class_weights
from chute.loader import (
    Batched,
    Loader,
    LoaderSettings,
    Stream,
    as_loader_settings,
    build_loader,
    default_order,
    derive_seed,
)
from chute.loader.draws import build_sampler
from chute.loader.orders import DistributedDraw


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
        on_error: A sample that cannot be read: ``raise`` names it (file, line or row) and stops;
            ``skip`` leaves it out, counts it (:attr:`bad_samples`) and logs the first ones. The
            policy of every DataModule: bad samples are dropped where the data is indexed when that
            is possible (table rows, JSONL lines at setup), otherwise where they are read (images,
            shard lines); no batch without samples ever reaches the model.
        max_bad_fraction: With ``skip``, raise once more than this share of a split's samples were
            bad (below 100 samples read, more than ``max_bad_fraction * 100``).
    """

    # Constructor arguments left out of the DataModule's Hydra schema (objects the app passes in).
    schema_exclude: tuple[str, ...] = ()
    # The dotted path of the function that collates this DataModule's samples one by one, recorded
    # in copies of its data (shards, LitData chunks); ``None``: nested stacking and padding.
    sample_collate: str | None = None

    def __init__(
        self,
        loader: LoaderSettings | Mapping[str, Any] | None = None,
        seed: int = 0,
        prepare: Callable[[str], Any] | None = None,
        collate_fn: Collate | str | None = None,
        imbalance: ImbalanceSettings | Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
        max_bad_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        BadSamples(on_error, max_bad_fraction)  # check both now, naming the key
        self.on_error: OnError = on_error
        self.max_bad_fraction = float(max_bad_fraction)
        self._bad: dict[str, BadSamples] = {}  # one policy (and count) per split or file
        self.loader_settings = as_loader_settings(loader)
        self.imbalance = as_imbalance_settings(imbalance)
        self.seed = int(seed)
        self.prepare = prepare
        self.collate_fn = collate_fn
        resolve_collate(collate_fn, passthrough)  # fail on a bad path now, not in a worker
        self.batch_transform: Callable[[Any], Any] | None = None
        # Applied to the whole batch before ``batch_transform`` wherever the hook runs: turns what the
        # loader delivers into the inputs (e.g. the GPU decode route's encoded images into images).
        self.batch_decode: Callable[[Any], Any] | None = None
        self.tuned_loader: LoaderSettings | None = None  # what num_workers=auto chose
        self.autotune_report: list[dict[str, Any]] = []
        # Applied after ``batch_transform`` to training batches only (device-side augmentation):
        # to the inputs, then to ``(inputs, targets)`` pairs (MixUp/CutMix make soft targets).
        self.train_batch_transform: Callable[[Any], Any] | None = None
        self.train_pair_transform: Callable[[Any, Any], tuple[Any, Any]] | None = None
        # Where the batch hook runs for loaders built under a CPU trainer (see _dataloader): per split
        # kind (training or not), whether batch_transform / train_batch_transform already ran in the loader.
        self._in_loader: dict[bool, InLoader] = {}  # per training/evaluation: hook stages the loader runs
        self._train_loader: Any = None  # the last training loader built (its position is saved)
        self._loader_state: dict[str, Any] | None = None  # from a checkpoint, for the next training loader

    # -- The declared interface: what train.py, callbacks and tests may rely on -------------------
    # model_kwargs, loss_kwargs, class_names, class_weights, bad_samples, preview_batch,
    # normalization, sample_collate, tuned_loader / autotune_report, and the Lightning hooks.
    # Subclasses override these, never add other members that callers must probe for.

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """What a model needs to know about this data, e.g. ``{"num_classes": 10, "in_channels": 1}``."""
        return {}

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names, index = label. Raises ``AttributeError`` for data without class targets."""
        classes = self._class_labels()
        if classes is None:
            raise AttributeError(f"class_names: {type(self).__name__} here has no class targets")
        return classes[2]

    @property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        """Per-channel ``(mean, std)`` the device hook normalizes images with; ``None`` for other data."""
        return None

    def preview_batch(self, split: str, n: int = 32) -> tuple[Any, Any] | None:
        """``n`` samples of ``split`` after its pipeline, as ``(images, labels)`` for a preview grid;
        ``None`` for data that is not images."""
        return None

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
            seed=derive_seed(self.seed, Stream.IMBALANCE), class_names=names, rank=rank, world_size=world,
        )  # fmt: skip

    def _world(self) -> tuple[int | None, int | None]:
        """``(global rank, world size)`` from the attached trainer; ``None`` leaves it to torch.distributed."""
        if self.trainer is None:
            return None, None
        return self.trainer.global_rank, self.trainer.world_size

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
        """``save_hyperparameters`` of the calling ``__init__``'s arguments, plain values only.

        Checkpoints then load with ``torch.load(..., weights_only=True)``: paths become strings,
        loader settings a dict, a collate function its dotted path; callables and objects (a
        ``prepare`` writer, transforms) are left out. ``None`` values (defaults: "infer from the
        data") are left out too, because Lightning refuses a DataModule hparam that differs from
        the model's, and the model gets the inferred value (e.g. ``vocab_size``). ``values``
        override what the call received (e.g. a normalized form).
        """
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        received: dict[str, Any] = {}
        if caller is not None:
            code = caller.f_code
            names = code.co_varnames[1 : code.co_argcount + code.co_kwonlyargcount]
            received = {name: caller.f_locals[name] for name in names if name in caller.f_locals}
        received.update(values)
        collate = self.collate_fn if isinstance(self.collate_fn, str | None) else qualname(self.collate_fn)
        received.update(seed=self.seed, loader=dataclasses.asdict(self.loader_settings), collate_fn=collate)
        received.update(on_error=self.on_error, max_bad_fraction=self.max_bad_fraction)
        received["imbalance"] = dataclasses.asdict(self.imbalance)
        self.save_hyperparameters(plain_values(received))

    # -- Bad samples: one policy for every DataModule --------------------------------------------

    def _bad_policy(self, key: str, what: str, fresh: bool = False) -> BadSamples:
        """The policy (and shared count) of split or file ``key``; ``fresh`` starts its count anew
        (a file read again at a second ``setup``)."""
        if fresh or key not in self._bad:
            self._bad[key] = BadSamples(self.on_error, self.max_bad_fraction, what=what)
        return self._bad[key]

    @property
    def bad_samples(self) -> dict[str, dict[str, Any]]:
        """Per split (or file) read: samples read (``seen``), ``skipped`` bad ones and the ``first``
        of them (``on_error="skip"``), summed over DataLoader workers, for this process's rank."""
        return {key: bad.summary() for key, bad in self._bad.items()}

    def teardown(self, stage: str | None = None) -> None:
        """Log each split's skipped samples (``on_error="skip"``) not reported yet."""
        for key, bad in self._bad.items():
            bad.report(f"the {key} split of {type(self).__name__}")

    def _dataloader(
        self,
        dataset: Dataset[Any],
        *,
        train: bool,
        collate_fn: Callable[[Any], Any] | None = None,
        batches: Any = None,
        eval_order: Any = None,
        stream: bool = False,
    ) -> Loader:
        """The loader of one split, built by :func:`~chute.loader.build_loader`; every DataModule's path.

        The order of batches is decided here, once for every DataModule:

        - ``batches``: a DataModule's own sampler of index batches (e.g. length buckets), if given;
        - training: else the
          imbalance strategy's sampler, else a ``(seed, epoch)`` permutation; every rank draws alike
          and takes its share, with at most ``world - 1`` repeats so ranks take equal steps;
        - evaluation: :class:`~chute.loader.orders.EvalBatches` over ``eval_order`` (default
          ``0..n-1``): each sample exactly once, rank shares within one sample;
        - ``stream``: the dataset yields whole batches itself.

        The training loader's position (its ``state_dict``) is what a checkpoint resumes from.
        """
        settings = self.loader_settings
        order: Any = None
        if not stream:
            order = self._order(len(dataset), train, batches, eval_order)  # type: ignore[arg-type]
            if callable(getattr(dataset, "set_epoch", None)):  # augmentations keyed by (seed, epoch, index)
                draw = getattr(order, "sampler", order)
                draw.epoch_listener = dataset.set_epoch  # type: ignore[attr-defined]
        device = getattr(getattr(self.trainer, "strategy", None), "root_device", None)
        trainer = self.trainer
        collate_fn = self._hook_in_loader(collate_fn, train, device, stream)

        def build(chosen: LoaderSettings, probe: bool = False) -> Loader:
            # Probes get copies of the order, so tuning leaves the real epoch and position alone.
            to_device = device if device is not None and device.type == "cuda" and chosen.resolved_pin_memory else None
            return build_loader(
                dataset, chosen, train=train, seed=self.seed, batches=copy.deepcopy(order) if probe else order,
                collate_fn=collate_fn, rank=self._world()[0], device=to_device,
                epoch_of=(lambda: trainer.current_epoch) if trainer is not None and not probe else None,
                after_copy=self._hook_after_copy(train, chosen, to_device, stream, record=not probe),
            )  # fmt: skip

        if settings.auto:
            if self.tuned_loader is None:  # tuned once, on the first loader built (training, under Lightning)
                self.tuned_loader, self.autotune_report = autotune(
                    lambda s: build(s, probe=True), settings, threads=not stream
                )
            settings = self.tuned_loader
        if stream and settings.backend == "threads":
            raise ConfigError("loader.backend", "threads", f"{type(self).__name__} streams batches itself; use torch")
        if self.remakes_loaders and settings.persistent_workers is None:
            settings = dataclasses.replace(settings, persistent_workers=False)  # workers end with their loader
        loader = build(settings)
        return self._training_loader(loader) if train else loader

    @property
    def remakes_loaders(self) -> bool:
        """Whether a Trainer makes this DataModule's loaders again each epoch (data that changes between
        epochs); their worker processes then are not kept (``persistent_workers`` left unset)."""
        return False

    #: Run the batch hook inside the loader when the trainer computes on the CPU (see ``_hook_in_loader``).
    hook_in_loader: bool = True

    def _hook_in_loader(self, collate_fn: Callable[[Any], Any] | None, train: bool, device: Any, stream: bool) -> Any:
        """On a CPU trainer, move the batch hook's work into the loader, where it runs in parallel.

        With a GPU the hook (``uint8`` -> normalized float, device-side augmentation) runs on the
        device after the copy: a quarter of the bytes to move, one kernel per batch. With no GPU it
        would run serially in the training process between steps, so here it joins the collate
        step in the loader's workers or threads instead: ``batch_transform`` and
        ``train_batch_transform`` (chute's random batch transforms draw from the batch's own
        generator there, :func:`chute.loader.batch_generator`, so their draws do not depend on the
        backend). The pair transform (MixUp/CutMix) stays in the hook.
        """
        on_cpu = self.hook_in_loader and device is not None and device.type == "cpu"
        if not on_cpu or not self._has_hook(train):
            self._in_loader[train] = InLoader()
            return collate_fn
        augment = self.train_batch_transform if train else None
        self._in_loader[train] = InLoader(self._normalizes, augment is not None)
        plain = default_convert if stream else default_collate  # what build_loader uses without one
        return LoaderHook(collate_fn or plain, self.batch_transform, augment, self.batch_decode)

    @property
    def _normalizes(self) -> bool:
        """Whether the hook's first stage (``batch_decode``, then ``batch_transform``) does anything."""
        return self.batch_transform is not None or self.batch_decode is not None

    def _has_hook(self, train: bool) -> bool:
        return self._normalizes or (train and self.train_batch_transform is not None)

    def _hook_after_copy(
        self, train: bool, chosen: LoaderSettings, device: Any, stream: bool, record: bool
    ) -> LoaderHook | None:
        """On a GPU trainer with loader threads or worker processes, the batch hook's work for the
        loader to run on the device right after its side-stream copy: in each loader thread
        (``ThreadedLoader(after_copy=...)``), or in the one thread that feeds worker processes'
        batches to the device (:class:`~chute.loader.threaded.DeviceFeed`).

        Between training steps the hook costs the training thread its CPU-side work (drawing crop
        boxes, launching a handful of kernels: ~0.2-2 ms a batch, a large share of a small model's
        step; the GPU decode route's nvJPEG call and crops: several ms); in the loader it overlaps
        the step, and chute's random batch transforms draw from the batch's own generator there, as
        they do on a CPU trainer. ``record`` says this loader is the real one (not an autotune
        probe), whose choice the hook then follows.
        """
        augment = self.train_batch_transform if train else None
        moves = (
            self.hook_in_loader and device is not None and not stream and chosen.num_workers > 0
            and self._has_hook(train)
        )  # fmt: skip
        # The random batch transforms draw from the batch's generator, keyed where the batch was read
        # (chute.loader.batch_generator): in a loader thread, the thread that runs this hook; a worker
        # process's key does not reach the feeding thread, so with workers they stay in the trainer's hook.
        if chosen.backend != "threads":
            augment = None
        if record and device is not None:  # a CPU trainer's choice is _hook_in_loader's
            self._in_loader[train] = InLoader(self._normalizes, augment is not None) if moves else InLoader()
        return LoaderHook(None, self.batch_transform, augment, self.batch_decode) if moves else None

    def _training_loader(self, loader: Any) -> Any:
        """Make ``loader`` the training loader whose position checkpoints save; give it the saved one."""
        if self._loader_state is not None:  # from a checkpoint (see state_dict)
            loader.load_state_dict(self._loader_state)
            self._loader_state = None
        self._train_loader = loader
        return loader

    def _order(self, size: int, train: bool, batches: Any, eval_order: Any) -> Any:
        """The sampler of index batches a map-style loader follows (see :meth:`_dataloader`)."""
        if batches is not None:
            return batches
        settings = self.loader_settings
        if train:  # an imbalance strategy's draw, cut into batches unless it draws whole batches
            sampler, batched = self._train_sampler()
            if sampler is not None:
                return sampler if batched else Batched(sampler, settings.batch_size, settings.drop_last)
        rank, world = self._world()
        return default_order(
            size, settings, train=train, seed=self.seed, eval_order=eval_order, rank=rank, world_size=world
        )

    # -- Loaders: one per split, built by the subclass's ``_split_loader`` -------------------------

    def train_dataloader(self) -> Loader:
        return self._not_empty(self._split_loader("train", train=True), "train")

    def val_dataloader(self) -> Loader:
        return self._not_empty(self._split_loader("val", train=False), "val")

    def test_dataloader(self) -> Loader:
        return self._not_empty(self._split_loader("test", train=False), "test")

    def predict_dataloader(self) -> Loader:
        return self._not_empty(self._split_loader("test", train=False), "test")

    def _not_empty(self, loader: Any, split: str) -> Any:
        """``loader``, unless its split has no samples: then an error naming the split and what to change
        (an empty split would otherwise fail later, far from its cause, or evaluate nothing)."""
        dataset = loader.dataset
        if not isinstance(dataset, IterableDataset) and len(dataset) == 0:
            raise DataError(f"{type(self).__name__}: the {split} split has no samples. {self._empty_split_hint(split)}")
        return loader

    def _empty_split_hint(self, split: str) -> str:
        """What makes ``split`` non-empty (subclasses name their own settings)."""
        if split == "train":
            return "Check that the training data has samples (and that on_error=skip did not drop them all)."
        return (
            f"Give the {split} split samples of its own, or hold out a larger share of the training data "
            "(val_fraction) so that every class keeps at least one sample there."
        )

    def _split_loader(self, split: str, train: bool) -> Loader:
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
        training = self.trainer is not None and self.trainer.training
        normalized, augmented = self._in_loader.get(training, InLoader())  # already done in the loader
        if not normalized:
            if self.batch_decode is not None:
                batch = self.batch_decode(batch)
            batch = apply_to_inputs(self.batch_transform, batch)
        if not training:
            return batch
        if not augmented:
            batch = apply_to_inputs(self.train_batch_transform, batch)
        if self.train_pair_transform is not None and isinstance(batch, (tuple, list)) and len(batch) >= 2:
            inputs, targets = self.train_pair_transform(batch[0], batch[1])
            batch = type(batch)([inputs, targets, *batch[2:]])
        return batch

    # -- Mid-epoch resume ------------------------------------------------------------------------
    # The training loader's own state_dict (epoch, batches handed out) is the position. Lightning
    # saves it in every checkpoint's loop state; it is also kept here, in the DataModule's state,
    # because Lightning does not restore loop-held loader states when the model's
    # configure_optimizers asks for trainer.estimated_stepping_batches (Lightning issue #20550),
    # which every shipped model's schedule does. Restoring the same state twice is harmless.

    def state_dict(self) -> dict[str, Any]:
        """The seed and the training loader's position (saved in every Lightning checkpoint)."""
        loader = self._train_loader.state_dict() if self._train_loader is not None else self._loader_state
        return {"seed": self.seed, "train_loader": loader}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_train_loader"] = None  # live loaders (worker processes, iterators) do not pickle
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict.get("seed", self.seed))
        self._loader_state = state_dict.get("train_loader")
