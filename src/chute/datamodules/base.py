"""``ChuteDataModule``: what every chute DataModule gets by construction.

The declared interface (what ``train.py``, callbacks and tests may rely on), the common settings
(:class:`CommonArgs`, a null seed drawn at setup), the public hooks a DataModule writes and calls,
the bad-sample policy, the resumable position and the device-side batch hook. Over 400 lines
because it is the one class every DataModule inherits and its public hooks are documented where
they are defined (Lightning's hooks are too); its sections are marked. How a split's loader is
assembled lives in :mod:`chute.datamodules.loading`, the loader machinery in :mod:`chute.loader`,
where the batch hook runs in :mod:`chute.datamodules.hooks`, and the constructor arguments and
plain hyperparameters in :mod:`chute.datamodules.hparams`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import functools
import inspect
import os
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypedDict

import lightning as L
import numpy as np
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset, IterableDataset

from chute.bad_samples import BadSamples, OnError
from chute.collate import Collate, passthrough, resolve_collate
from chute.datamodules.hooks import InLoader, run_hook
from chute.datamodules.hparams import caller_arguments, init_parameters, plain_values, qualname
from chute.datamodules.loading import imbalance_sampler, split_loader
from chute.datasets.database import sqlite_file
from chute.errors import ConfigError, DataError, UnknownArgumentError, check_bool
from chute.imbalance import ImbalanceSettings, as_imbalance_settings, class_weights
from chute.loader import (
    Loader,
    LoaderSettings,
    as_loader_settings,
)
from chute.loader.distributed import from_rank_zero

#: The loader settings a DataModule also takes as arguments of its own (``data.batch_size``).
LOADER_SHORTCUTS = ("batch_size", "num_workers", "pin_memory")
# True while a DataModule is built only to read facts off it (chute.resolvers: the class count a model
# config asks for): a seed drawn then is not the run's, so it is not logged as the one to repeat it with.
SIZING_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("chute_sizing_only", default=False)


class CommonArgs(TypedDict, total=False):
    """The settings every DataModule takes, documented on :class:`ChuteDataModule`.

    A DataModule's constructor lists its own arguments and ends with ``**common: Unpack[CommonArgs]``,
    which it hands to ``super().__init__``: users still pass them by name (``seed=1``), type checkers
    and IDEs still see each one, the Hydra schema lists them (:meth:`ChuteDataModule.init_parameters`),
    and a new setting is added here once.
    """

    loader: LoaderSettings | Mapping[str, Any] | None
    batch_size: int | None
    num_workers: int | Literal["auto"] | None
    pin_memory: bool | None
    seed: int | None
    prepare: Callable[[str], Any] | None
    collate_fn: Collate | str | None
    imbalance: ImbalanceSettings | Mapping[str, Any] | None
    on_error: OnError
    max_bad_fraction: float


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

    A subclass writes (besides Lightning's ``prepare_data`` and ``setup``):

    - ``__init__(self, <its own arguments>, **common: Unpack[CommonArgs])`` handing ``**common`` to
      ``super().__init__`` and ending with :meth:`save_plain_hyperparameters`;
    - :meth:`split_dataloader`, usually one call of :meth:`build_dataloader`;
    - optionally :attr:`model_kwargs`, :meth:`class_labels` (enables the imbalance strategies),
      :meth:`empty_split_hint`, :attr:`remakes_loaders`, and ``state_dict``/``load_state_dict`` for
      what ``setup`` fitted (calling ``super()``).

    and calls :meth:`run_prepare`, :meth:`bad_policy`, :meth:`collate_or`, :meth:`check_imbalance`,
    :meth:`rank_and_world` and :meth:`not_set_up_error`. Everything else is the base's.

    Args:
        loader: DataLoader settings (a :class:`LoaderSettings`, a mapping of its fields, or ``None``
            for defaults).
        batch_size, num_workers, pin_memory: Shortcuts for ``loader.batch_size``, ``loader.num_workers``
            and ``loader.pin_memory``, where other Hydra apps set them
            (``data.batch_size`` in a search; lightning-hydra-template's debug configs set
            ``data.pin_memory``). A shortcut and the same key in a ``loader`` mapping must agree.
        seed: Seed for splits, shuffling and worker seeding; ``None`` draws one at ``setup`` (see
            :attr:`seed`).
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
    #: Common settings (:class:`CommonArgs`) this kind cannot honour, with why: a value other than the
    #: default is refused naming the key, and the Hydra schema leaves the key out.
    unsupported: ClassVar[Mapping[str, str]] = {}
    # The dotted path of the function that collates this DataModule's samples one by one, recorded
    # in copies of its data (shards, LitData chunks); ``None``: nested stacking and padding.
    sample_collate: str | None = None

    #: Attributes that name the data, read by ``setup``: set again after it (to another value), the
    #: splits would stay the old data's, silently; refused instead (:meth:`__setattr__`).
    fixed_after_setup: ClassVar[tuple[str, ...]] = ("root", "path")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("num_workers", "pin_memory") and "loader_settings" in self.__dict__ and value is not None:
            # ``dm.num_workers = 2`` as ``dm.batch_size`` is set: the next loaders take it (it was an
            # attribute of its own, which nothing read). Before the base's __init__, or None (as the
            # constructor's shortcut: not given), it stays just an attribute (a subclass's own).
            self._set_loader_setting(name, value)
        if name in self.fixed_after_setup and self.__dict__.get("_seed_fixed") and name in self.__dict__:
            current = self.__dict__[name]
            if (os.fspath(value) if isinstance(value, (str, os.PathLike)) else value) == current:
                return  # the same data (a Path for its string): kept as it was
            raise ConfigError(
                name, value,
                f"{type(self).__name__} was already set up with {name}={current!r} (its splits are that data's); "
                "make a new DataModule for other data",
            )  # fmt: skip
        super().__setattr__(name, value)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """Refuse a keyword argument the DataModule does not take, naming it, the class and the closest
        argument (Python's own error named ``ChuteDataModule.__init__``, where the common ones end up)."""
        try:
            params = cls.init_parameters()
            known = set(params) | set(getattr(cls, "unsupported", {}))
            if _takes_any_keyword(cls):
                known |= set(kwargs)
        except Exception:  # a signature this cannot read (a subclass of a user's): Python's check stands
            params, known = {}, set(kwargs)
        for key, value in kwargs.items():
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"did you mean {close[0]}?" if close else f"it takes {', '.join(sorted(known))}"
                raise UnknownArgumentError(key, value, f"is not an argument of {cls.__name__}: {hint}")
        # An argument typed bool refuses anything else: "false" is truthy, so channels_last="false"
        # turned channels-last on.
        switches = switch_arguments(params)
        for key, value in kwargs.items():
            if key in switches:
                check_bool(key, value, optional=switches[key])
        return super().__new__(cls)

    def __init__(
        self,
        loader: LoaderSettings | Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        num_workers: int | Literal["auto"] | None = None,
        pin_memory: bool | None = None,
        seed: int | None = 0,
        prepare: Callable[[str], Any] | None = None,
        collate_fn: Collate | str | None = None,
        imbalance: ImbalanceSettings | Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
        max_bad_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        self._refuse_unsupported(
            {"imbalance": as_imbalance_settings(imbalance) != as_imbalance_settings(None),
             "on_error": on_error != "raise", "max_bad_fraction": max_bad_fraction != 0.01},
            {"imbalance": imbalance, "on_error": on_error, "max_bad_fraction": max_bad_fraction},
        )  # fmt: skip
        BadSamples(on_error, max_bad_fraction)  # check both now, naming the key
        self.on_error: OnError = on_error
        self.max_bad_fraction = float(max_bad_fraction)
        self._bad: dict[str, BadSamples] = {}  # one policy (and count) per split or file
        self.loader_settings = as_loader_settings(loader)
        shortcuts: dict[str, Any] = dict(zip(LOADER_SHORTCUTS, (batch_size, num_workers, pin_memory), strict=True))
        if given := {key: value for key, value in shortcuts.items() if value is not None}:
            agree_with_shortcuts(given, loader)
            self.loader_settings = dataclasses.replace(self.loader_settings, **given)  # checked again there
        self.imbalance = as_imbalance_settings(imbalance)
        self._seed_fixed = False  # splits were cut with the seed: it is fixed from here on (the seed setter)
        self.seed = seed  # None: drawn at setup (see the seed property)
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
        # Where the batch hook runs for loaders built under a CPU trainer (see build_dataloader): per split
        # kind (training or not), whether batch_transform / train_batch_transform already ran in the loader.
        self._in_loader: dict[bool, InLoader] = {}  # per training/evaluation: hook stages the loader runs
        self._train_loader: Any = None  # the last training loader built (its position is saved)
        self._loader_state: dict[str, Any] | None = None  # from a checkpoint, for the next training loader
        self._resuming_from: str | None = None  # the checkpoint of the fit that loaded it (_fit_checkpoint)
        self._said = False  # on_after_batch_transfer's warning without a trainer, given once

    @property
    def seed(self) -> int:
        """The run's seed: splits, orders, augmentations and worker seeds derive from it.

        Given as ``None`` (a Hydra app whose ``seed`` is null, as lightning-hydra-template's is by
        default: "do not seed"), a seed is drawn when ``setup`` first runs, on rank 0 and shared with
        every rank (the ranks must draw the same orders), logged, and saved in checkpoints, so a
        resumed run continues with it.
        """
        if self._seed is None:
            self._draw_seed()
        assert self._seed is not None
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        if getattr(self, "_seed_fixed", False) and _checked_seed(value) != self._seed:
            # What setup made from the seed (held-out splits, encodings fitted on the training split)
            # would stay, while checkpoints saved the new seed: a resumed or evaluated run would cut
            # other splits than the ones trained on.
            raise ConfigError(
                "seed", value,
                f"{type(self).__name__} has cut its splits with seed={self._seed} already (setup, or a disk "
                "cache built by prepare_data); set the seed before that, or make a new DataModule",
            )  # fmt: skip
        self._set_seed(value)

    def _set_seed(self, value: int | None) -> None:
        """The seed, set as a checkpoint gives it (:meth:`load_state_dict`: subclasses whose setup
        made something from the seed make it again)."""
        self._seed = _checked_seed(value)

    @property
    def batch_size(self) -> int:
        """The training batch size (``loader_settings.batch_size``).

        Settable, for Lightning's batch-size finder (``Tuner(trainer).scale_batch_size(model,
        datamodule=dm)``), which sets it between trials and asks for new loaders: they, what
        ``num_workers=auto`` chose, and the hyperparameters a checkpoint saves all take the new size.
        """
        return self.loader_settings.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._set_loader_setting("batch_size", value)

    def _set_loader_setting(self, key: str, value: Any) -> None:
        """A loader setting changed after construction: the loaders built from now on, what
        ``num_workers=auto`` chose (tuned again when the worker count itself changes) and the
        hyperparameters (checkpoints; loggers) take it. An attribute of its own, as it was before,
        was never read."""
        self.loader_settings = dataclasses.replace(self.loader_settings, **{key: value})  # checked there
        if self.tuned_loader is not None:
            keep = key != "num_workers" and self.loader_settings.auto
            self.tuned_loader = dataclasses.replace(self.tuned_loader, **{key: value}) if keep else None
        for hparams in (self.hparams, getattr(self, "_hparams_initial", None) or {}):
            saved = hparams.get("loader")
            if isinstance(saved, dict):
                saved[key] = getattr(self.loader_settings, key)

    def _draw_seed(self) -> None:
        if self._seed is None:
            self._seed = int(from_rank_zero(lambda: int.from_bytes(os.urandom(4), "little") % 2**31))
            if not SIZING_ONLY.get():
                rank_zero_info(
                    f"{type(self).__name__}: seed is null, so this run drew seed={self._seed} "
                    "(set it to repeat the run)."
                )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every ``setup`` first settles a null seed: ``setup`` runs on every rank at the same point, so
        the draw (a collective under DDP) is matched, before the DataModule's own code can ask for it."""
        super().__init_subclass__(**kwargs)
        setup = cls.__dict__.get("setup")
        if setup is not None and not getattr(setup, "settles_seed", False):

            @functools.wraps(setup)
            def setup_after_seed(self: ChuteDataModule, stage: str | None = None) -> None:
                self._draw_seed()
                setup(self, stage)
                self._seed_fixed = True

            setup_after_seed.settles_seed = True  # type: ignore[attr-defined]
            cls.setup = setup_after_seed  # type: ignore[method-assign,assignment]

    def _refuse_unsupported(self, changed: Mapping[str, bool], values: Mapping[str, Any]) -> None:
        # The common settings are checked here; a parent's own argument named in ``unsupported`` is
        # refused by the subclass that names it (it passes the rest on), and left out of the schema.
        for key, why in self.unsupported.items():
            if changed.get(key, False):
                raise ConfigError(key, values.get(key), f"{type(self).__name__} {why}")

    @classmethod
    def init_parameters(cls) -> dict[str, tuple[inspect.Parameter, Any]]:
        """Every argument the constructor takes, by name, with its type: its own, then the common
        ones it takes as ``**common`` (:class:`CommonArgs`), less :attr:`unsupported`. What the Hydra
        schema lists and what the train app may pass."""
        return init_parameters(cls, ChuteDataModule)

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
        classes = self.class_labels()
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

    def class_labels(self) -> tuple[np.ndarray, int, tuple[str, ...]] | None:
        """Training labels, number of classes and class names; ``None`` without class targets."""
        return None

    def check_imbalance(self) -> None:
        """Fail at setup, before any training step, if the strategy cannot work on this data."""
        if self.imbalance.strategy == "none":
            return
        classes = self.class_labels()
        if classes is None:
            raise ConfigError(
                "imbalance.strategy", self.imbalance.strategy,
                f"needs class targets; {type(self).__name__} here has none (e.g. a regression target)",
            )  # fmt: skip
        labels, num_classes, names = classes
        try:
            if self.imbalance.samples:
                imbalance_sampler(self)
            else:
                class_weights(np.bincount(labels, minlength=num_classes), self.imbalance, names)
        except ConfigError as err:
            raise err.with_prefix("imbalance") from None

    def rank_and_world(self) -> tuple[int | None, int | None]:
        """``(global rank, world size)`` from the attached trainer; ``None`` leaves it to torch.distributed."""
        if self.trainer is None:
            return None, None
        return self.trainer.global_rank, self.trainer.world_size

    @property
    def class_weights(self) -> list[float]:
        """Per-class loss weights from the training split's counts (the imbalance ``weighting``)."""
        classes = self.class_labels()
        if classes is None:
            raise AttributeError("class_weights: this data has no class targets")
        labels, num_classes, names = classes
        weights = class_weights(np.bincount(labels, minlength=num_classes), self.imbalance, names)
        return [round(float(w), 6) for w in weights]

    @property
    def loss_kwargs(self) -> dict[str, Any]:
        """What the model's loss needs from the imbalance strategy: ``class_weights`` for ``loss_weights``."""
        return {"class_weights": self.class_weights} if self.imbalance.strategy == "loss_weights" else {}

    def collate_or(self, default: Collate) -> Collate:
        """The user's ``collate_fn`` (a function or dotted path) if one was given, else ``default``."""
        return resolve_collate(self.collate_fn, default)

    def save_plain_hyperparameters(self, **values: Any) -> None:
        """``save_hyperparameters`` of the calling ``__init__``'s arguments, plain values only.

        Checkpoints then load with ``torch.load(..., weights_only=True)``: paths become strings,
        loader settings a dict, a collate function its dotted path; callables and objects (a
        ``prepare`` writer, transforms) are left out. ``None`` values (defaults: "infer from the
        data") are left out too, because Lightning refuses a DataModule hparam that differs from
        the model's, and the model gets the inferred value (e.g. ``vocab_size``). ``values``
        override what the call received (e.g. a normalized form).
        """
        received = {**caller_arguments(), **values}
        collate = self.collate_fn if isinstance(self.collate_fn, str | None) else qualname(self.collate_fn)
        # the seed as given: a null seed is drawn at setup, on rank 0, and kept in the DataModule's state
        received.update(seed=self._seed, loader=dataclasses.asdict(self.loader_settings), collate_fn=collate)
        received.update(on_error=self.on_error, max_bad_fraction=self.max_bad_fraction)
        received["imbalance"] = dataclasses.asdict(self.imbalance)
        self.save_hyperparameters(plain_values(received))

    # -- Bad samples: one policy for every DataModule --------------------------------------------

    def bad_policy(self, key: str, what: str, fresh: bool = False, per_pass: int = 0) -> BadSamples:
        """The policy (and shared count) of split or file ``key``; ``fresh`` starts its count anew
        (a file read again at a second ``setup``). ``per_pass``: the split's samples, read again each
        epoch (this rank reads its share), so that later passes are judged as whole passes."""
        if fresh or key not in self._bad:
            self._bad[key] = BadSamples(self.on_error, self.max_bad_fraction, what=what)
        if per_pass > 0:
            _, world = self.rank_and_world()
            self._bad[key].per_pass = max(1, per_pass // (world or 1))
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

    def build_dataloader(
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
        return split_loader(
            self, dataset, train=train, collate_fn=collate_fn, batches=batches, eval_order=eval_order, stream=stream
        )

    @property
    def remakes_loaders(self) -> bool:
        """Whether a Trainer makes this DataModule's loaders again each epoch (data that changes between
        epochs); their worker processes then are not kept (``persistent_workers`` left unset)."""
        return False

    #: Run the batch hook inside the loader where that is faster (see :mod:`chute.datamodules.hooks`).
    hook_in_loader: bool = True

    def _training_loader(self, loader: Any) -> Any:
        """Make ``loader`` the training loader whose position checkpoints save; give it the saved one
        if this is the fit that resumes from it (:meth:`load_state_dict`)."""
        if self._loader_state is not None and self._resuming_from == self._fit_checkpoint():
            loader.load_state_dict(self._loader_state)
        elif self._loader_state is not None and self._loader_state.get("batches"):
            rank_zero_info(
                f"{type(self).__name__}: this fit starts at epoch {self._loader_state.get('epoch')}'s first batch, "
                "not where the loaded state stopped: a position is resumed by fit(ckpt_path=...)."
            )
        self._loader_state = self._resuming_from = None
        self._train_loader = loader
        return loader

    def _fit_checkpoint(self) -> str | None:
        """The checkpoint the attached trainer's fit resumes from; ``None`` without a trainer (a loader
        the user builds), ``""`` for a trainer doing anything else (evaluating, a fit from scratch)."""
        trainer = self.trainer
        if trainer is None:
            return None
        fitting = trainer.state.fn == TrainerFn.FITTING and trainer.ckpt_path is not None
        return str(trainer.ckpt_path) if fitting else ""

    # -- Loaders: one per split, built by the subclass's ``split_dataloader`` -------------------------

    def train_dataloader(self) -> Loader:
        return self._not_empty(self.split_dataloader("train", train=True), "train")

    def val_dataloader(self) -> Loader:
        return self._not_empty(self.split_dataloader("val", train=False), "val")

    def test_dataloader(self) -> Loader:
        return self._not_empty(self.split_dataloader("test", train=False), "test")

    def predict_dataloader(self) -> Loader:
        return self._not_empty(self.split_dataloader("test", train=False), "test")

    def _not_empty(self, loader: Any, split: str) -> Any:
        """``loader``, unless its split has no samples: then an error naming the split and what to change
        (an empty split would otherwise fail later, far from its cause, or evaluate nothing)."""
        dataset = loader.dataset
        if not isinstance(dataset, IterableDataset) and len(dataset) == 0:
            raise DataError(f"{type(self).__name__}: the {split} split has no samples. {self.empty_split_hint(split)}")
        return loader

    def empty_split_hint(self, split: str) -> str:
        """What makes ``split`` non-empty (subclasses name their own settings)."""
        if split == "train":
            return "Check that the training data has samples (and that on_error=skip did not drop them all)."
        return (
            f"Give the {split} split samples of its own, or hold out a larger share of the training data "
            "(val_fraction) so that every class keeps at least one sample there."
        )

    def split_dataloader(self, split: str, train: bool) -> Loader:
        """The loader of ``split`` (``train``, ``val`` or ``test``); ``train`` selects training behaviour."""
        raise NotImplementedError

    def not_set_up_error(self) -> RuntimeError:
        """The error for using split data before ``setup``."""
        return RuntimeError(
            f"{type(self).__name__} is not set up: call prepare_data() and setup() first "
            "(Lightning's Trainer does both)."
        )

    def run_prepare(self, location: str, key: str = "root", *, on_disk: str | None = None) -> None:
        """``prepare(location)`` if the user gave a ``prepare`` writer (for ``prepare_data``).

        A writer with ``only_at`` (the shipped configs' example data) writes only there: a config
        pointed at other data (``data=tabular data.path=/my/table.csv``) reads what is there, and a
        path that does not exist is an error naming it, not the example data written in its place and
        trained on. ``key`` names ``location`` in messages; ``on_disk``: the file a URL stands for.
        """
        if self.prepare is None:
            return
        only_at = getattr(self.prepare, "only_at", None)
        if only_at is None or _place(location) == _place(str(only_at)):
            self.prepare(location)
            return
        path = on_disk if on_disk is not None else location
        if path and "://" not in path and not os.path.exists(path):
            raise DataError(
                f"'{path}' does not exist ({key}={location!r}). The config's example data "
                f"({type(self.prepare).__name__}) is written only at its own path, '{only_at}': point "
                f"data.{key} at your data, or set data.prepare.only_at=null to write the example there too."
            )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The batch hook's stages the loader did not run (:func:`~chute.datamodules.hooks.run_hook`),
        for a training batch when the attached trainer is training. Without a trainer (the DataModule
        used outside Lightning, or its loaders returned by a LightningModule) it cannot tell: it
        treats the batch as an evaluation one, and says so once if that leaves out training-only
        stages (augmentation on the device, MixUp/CutMix); :meth:`batch_hook` takes ``train``."""
        if self.trainer is None and (self.train_batch_transform or self.train_pair_transform) and not self._said:
            self._said = True
            warnings.warn(
                f"{type(self).__name__}.on_after_batch_transfer without a trainer attached treats every batch as an "
                "evaluation batch, so training batches miss their augmentation on the device: call "
                "dm.batch_hook(batch, train=True) on them (and train=False on the others).",
                stacklevel=2,
            )
        return run_hook(self, batch, self.trainer is not None and self.trainer.training)

    def batch_hook(self, batch: Any, train: bool) -> Any:
        """The batch hook on a batch already on its device, as :meth:`on_after_batch_transfer` runs it
        under Lightning, with the split said: ``train=True`` adds the training-only stages (random
        crops and flips on the device, MixUp/CutMix). For loaders used without a trainer attached."""
        return run_hook(self, batch, train)

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
        """The checkpoint's seed, and its training position for the next training loader, if that loader
        is the one of the fit resuming from this checkpoint (``fit(ckpt_path=...)``), or of a DataModule
        whose state the user loaded without a trainer. Lightning loads the state for ``validate``,
        ``test`` and ``predict`` from a checkpoint too, and ``load_from_checkpoint`` does: a fresh
        ``fit`` afterwards starts at its first batch (it started where the checkpoint stopped)."""
        self._set_seed(state_dict.get("seed", self._seed))
        self._resuming_from = self._fit_checkpoint()
        # Loaded by a trainer doing anything but resuming a fit: no training loader of its takes it.
        self._loader_state = None if self._resuming_from == "" else state_dict.get("train_loader")


def _place(location: str) -> str:
    """``location`` compared as a place: a path (or a SQLite URL's file) resolved, another URL as written."""
    if sqlite_file(location):
        location = sqlite_file(location)
    elif "://" in location:
        return location
    return os.path.realpath(os.path.expanduser(location))


def _takes_any_keyword(cls: type) -> bool:
    """Whether a class of the user's between ``cls`` and :class:`ChuteDataModule` takes ``**kwargs``
    and may use keys of its own from them (``kwargs.pop("foo")``): its arguments cannot be listed."""
    for klass in cls.__mro__:
        if klass is ChuteDataModule:
            return False
        init = klass.__dict__.get("__init__")
        if init is None or klass.__module__.startswith("chute."):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            return True
    return False


def agree_with_shortcuts(shortcuts: Mapping[str, Any], loader: LoaderSettings | Mapping[str, Any] | None) -> None:
    """Refuse a shortcut (``batch_size=64``) and a ``loader`` mapping that set one key two ways.

    The data options for other Hydra apps set the shortcuts (``batch_size: 64``), so a user's
    ``+data.loader.batch_size=16`` was overruled by them, silently. A :class:`LoaderSettings` object
    sets the keys where it differs from the defaults.
    """
    if isinstance(loader, LoaderSettings):
        defaults = LoaderSettings()
        loader = {key: getattr(loader, key) for key in shortcuts if getattr(loader, key) != getattr(defaults, key)}
    if not isinstance(loader, Mapping):
        return
    for key, value in shortcuts.items():
        if key in loader and loader[key] is not None and loader[key] != value:
            raise ConfigError(
                f"loader.{key}",
                loader[key],
                f"disagrees with {key}={value!r} (its shortcut, which the chute_* data options set): set {key} alone",
            )


def _checked_seed(value: Any) -> int | None:
    """``value`` as a seed: an integer, or ``None`` (drawn at setup); anything else is refused."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise ConfigError("seed", value, "must be an integer, or null to draw one for this run")
    return None if value is None else int(value)


def switch_arguments(params: Mapping[str, tuple[inspect.Parameter, Any]]) -> dict[str, bool]:
    """The arguments among ``params`` (:meth:`ChuteDataModule.init_parameters`) typed ``bool`` or
    ``bool | None``, each with whether ``None`` is allowed."""
    found = {}
    for name, (_, hint) in params.items():
        options = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
        if bool in options and options <= {bool, type(None)}:
            found[name] = type(None) in options
    return found
