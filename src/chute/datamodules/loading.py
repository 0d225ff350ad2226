"""How a DataModule's loaders are assembled: the order of each split (a DataModule's own, the
imbalance strategy's draw, or the default draw; evaluation in samples split across ranks), the
batch hook's placement, ``num_workers=auto``, and the loader :func:`chute.loader.build_loader`
makes. :meth:`~chute.datamodules.ChuteDataModule.build_dataloader` is its public face."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import Dataset, DistributedSampler, SequentialSampler

from chute.autotune import autotune
from chute.datamodules.hooks import hook_after_copy, hook_in_collate
from chute.errors import ConfigError
from chute.loader import Batched, Loader, LoaderSettings, Stream, build_loader, default_order, derive_seed
from chute.loader.draws import build_sampler
from chute.loader.orders import DistributedDraw, SnapshotOrder

if TYPE_CHECKING:
    from chute.datamodules.base import ChuteDataModule


def split_loader(
    dm: ChuteDataModule, dataset: Dataset[Any], *, train: bool, collate_fn: Callable[[Any], Any] | None,
    batches: Any, eval_order: Any, stream: bool,
) -> Loader:  # fmt: skip
    """The loader of one split (see :meth:`~chute.datamodules.ChuteDataModule.build_dataloader`)."""
    settings = dm.loader_settings
    order: Any = None
    if not stream:
        order = order_of(dm, len(dataset), train, batches, eval_order)  # type: ignore[arg-type]
    device = getattr(getattr(dm.trainer, "strategy", None), "root_device", None)
    trainer = dm.trainer
    overfit = overfitting(trainer)
    if overfit and order is not None:
        order = ReplayedSnapshot(order) if isinstance(order, SnapshotOrder) else Replayed(order)
    collate_fn = hook_in_collate(dm, collate_fn, train, device, stream)

    def build(chosen: LoaderSettings, probe: bool = False) -> Loader:
        # Probes get copies of the order, so tuning leaves the real epoch and position alone.
        to_device = device if device is not None and device.type == "cuda" and chosen.resolved_pin_memory else None
        return build_loader(
            dataset, chosen, train=train, seed=dm.seed, batches=copy.deepcopy(order) if probe else order,
            collate_fn=collate_fn, rank=dm.rank_and_world()[0], device=to_device,
            epoch_of=_epoch_of(trainer, overfit) if not probe else None,
            after_copy=hook_after_copy(dm, train, chosen, to_device, stream, record=not probe),
        )  # fmt: skip

    if dm.remakes_loaders and settings.persistent_workers is None:
        settings = dataclasses.replace(settings, persistent_workers=False)  # workers end with their loader
    if settings.auto and not settings.on_ray:  # Ray sizes its own pool to the cluster
        if dm.tuned_loader is None:  # tuned once, on the first loader built (training, under Lightning)
            dm.tuned_loader, dm.autotune_report = autotune(lambda s: build(s, probe=True), settings, threads=not stream)
        settings = dm.tuned_loader
    if stream and settings.backend == "threads":
        refusal = f"{type(dm).__name__} streams batches itself; use torch, ray or ray_data"
        raise ConfigError("loader.backend", settings.backend, refusal)
    loader = build(settings)
    return dm._training_loader(loader) if train else loader


def overfitting(trainer: L.Trainer | None) -> bool:
    """Whether ``trainer`` is fitting with ``overfit_batches``: the loaders it asks for replay their
    first epoch's first batches every epoch (:class:`Replayed`)."""
    if trainer is None or getattr(trainer, "overfit_batches", 0) <= 0:
        return False
    return bool(trainer.state.fn == TrainerFn.FITTING)


def _epoch_of(trainer: L.Trainer | None, overfit: bool) -> Callable[[], int] | None:
    """The trainer's epoch for each pass; under ``overfit_batches`` always epoch 0, whose first batches
    every epoch then trains on again (what overfitting a few batches means), shuffled or streamed."""
    if trainer is None:
        return None
    return _first_epoch if overfit else _TrainerEpoch(trainer)


def _first_epoch() -> int:
    return 0


class _TrainerEpoch:
    """``trainer.current_epoch``, asked at each pass; a class, not a closure, so that a DataModule
    whose trainer holds its loaders still pickles."""

    def __init__(self, trainer: L.Trainer) -> None:
        self.trainer = trainer

    def __call__(self) -> int:
        return self.trainer.current_epoch


class Replayed(SequentialSampler, DistributedSampler):
    """A loader's order under ``Trainer(overfit_batches=N)``, unchanged (its loader replays epoch 0,
    see :func:`_epoch_of`).

    A :class:`~torch.utils.data.SequentialSampler` by type only: Lightning then leaves the loader
    as it is instead of re-making it around a ``SequentialSampler`` of single indices, which a chute
    loader (an order of whole batches; or no DataLoader at all, with threads) cannot follow. And a
    ``DistributedSampler`` by type, as :class:`~chute.loader.Batched` is, so that DDP leaves it too.
    """

    def __init__(self, order: Any) -> None:  # neither base's __init__: only the types are wanted
        self.order = order

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def resume(self, epoch: int, batches: int) -> None:
        self.order.resume(epoch, batches)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.order)

    def __getattr__(self, name: str) -> Any:  # the order's other attributes (batch_size, ...)
        if name == "order" or name.startswith("__"):  # not set yet (a copy being made); copy protocol
            raise AttributeError(name)
        return getattr(self.order, name)


class ReplayedSnapshot(Replayed):
    """:class:`Replayed` over an order of changing data (SQL), whose positions record its snapshot:
    the methods are its own, since a protocol check does not see what ``__getattr__`` forwards
    (Python 3.12 on)."""

    def snapshot_state(self) -> Any:
        return self.order.snapshot_state()

    def restore_snapshot(self, epoch: int, state: Any) -> None:
        self.order.restore_snapshot(epoch, state)


def order_of(dm: ChuteDataModule, size: int, train: bool, batches: Any, eval_order: Any) -> Any:
    """The sampler of index batches a map-style loader follows (see ``build_dataloader``)."""
    if batches is not None:
        return batches
    settings = dm.loader_settings
    if train:  # an imbalance strategy's draw, cut into batches unless it draws whole batches
        sampler, batched = imbalance_sampler(dm)
        if sampler is not None:
            return sampler if batched else Batched(sampler, settings.batch_size, settings.drop_last)
    rank, world = dm.rank_and_world()
    return default_order(size, settings, train=train, seed=dm.seed, eval_order=eval_order, rank=rank, world_size=world)


def imbalance_sampler(dm: ChuteDataModule) -> tuple[DistributedDraw | None, bool]:
    """The imbalance strategy's training sampler (``None`` for none) and whether it yields batches."""
    classes = dm.class_labels() if dm.imbalance.samples else None
    if classes is None:
        return None, False
    labels, num_classes, names = classes
    rank, world = dm.rank_and_world()
    return build_sampler(
        dm.imbalance, labels, num_classes, dm.loader_settings.batch_size,
        seed=derive_seed(dm.seed, Stream.IMBALANCE), class_names=names, rank=rank, world_size=world,
    )  # fmt: skip
