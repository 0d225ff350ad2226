"""The dataset indices of the batches an evaluation loader delivered, where Lightning looks for them.

A ``BasePredictionWriter`` gets each prediction's ``batch_indices`` from the loader's ``batch_sampler``,
and only if it is Lightning's ``_IndexBatchSamplerWrapper``, whose ``seen_batch_indices[k]`` Lightning
takes to be the indices of the k-th batch. Its own wrapper records a batch when the DataLoader draws
it from the sampler; chute's loaders draw whole batches ahead (worker prefetch, loader threads) and
never hand over a batch whose samples were all left out, so :class:`DeliveredIndices` records a batch
when the loader hands it out instead (:class:`~chute.loader.build.Passes`). A batch that lost samples
to ``on_error="skip"`` is recorded with the indices of those it kept, which the dataset's
:class:`~chute.bad_samples.LeftOut` record says. The wrapper is private to
Lightning: where it has moved, :func:`delivered_indices` gives ``None`` and loaders record nothing (a
prediction writer then gets empty ``batch_indices``, as with any loader Lightning cannot follow).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chute.errors import DataError

if TYPE_CHECKING:
    from lightning.pytorch.overrides.distributed import _IndexBatchSamplerWrapper as _Recorded

    from chute.bad_samples import LeftOut
else:
    try:
        from lightning.pytorch.overrides.distributed import _IndexBatchSamplerWrapper as _Recorded
    except ImportError:  # moved in a later Lightning: no indices, loading unchanged
        _Recorded = object


class DeliveredIndices(_Recorded):
    """What a chute evaluation loader offers as ``batch_sampler``: the indices of each batch it delivered.

    ``seen_batch_indices[k]`` is the list of dataset indices of the k-th batch of the current pass (on
    this rank: its share under DDP), in the order the loader handed the batches out. A batch that held
    fewer samples than its indices (a DataModule that leaves unreadable samples out of evaluation
    batches, ``on_error="skip"``) gets the indices of the samples it kept, where the dataset marks
    those it left out (:class:`~chute.bad_samples.LeftOut`: the image folder and video datasets), and
    ``[]`` where it does not or the marks do not add up to the batch's rows: an empty list is better
    than indices that do not line up with the predictions. The rows are counted as the batch leaves
    the loader: on the GPU decode route, a JPEG the device then fails to decode in a batch hook that
    runs after the loader (``num_workers=0`` on a GPU, or ``hook_in_loader=False``) is left out after
    its index was recorded (an image folder's predict does not take that route with
    ``on_error="skip"``, so its predictions never meet this).

    Iterating it (as Lightning's own wrapper is iterated) yields the order's batches; chute's loaders
    draw through :meth:`drawing` instead. ``DeliveredIndices(order, batch_size, drop_last)`` is also how
    Lightning re-makes it when it re-makes a predict DataLoader around it.

    Args:
        order: The loader's order (:class:`~chute.loader.orders.Order` of index batches).
        batch_size, drop_last: Read by Lightning (the evaluation loader's, by default the order's).
    """

    def __init__(self, order: Any, batch_size: int | None = None, drop_last: bool = False) -> None:
        # Not Lightning's __init__, which copies the wrapped sampler's attributes onto itself.
        self.seen_batch_indices: list[list[int]] = []
        self._batch_sampler = order
        self._iterator: Iterator[list[int]] | None = None
        self.batch_size = batch_size if batch_size is not None else getattr(order, "batch_size", None)
        self.drop_last = drop_last
        self._drawn: collections.deque[list[int]] = collections.deque()  # drawn, not yet delivered
        #: Batches of the current pass recorded as ``[]`` although they held samples (their indices unknown).
        self.unnamed = 0

    @property
    def order(self) -> Any:
        return self._batch_sampler

    def drawing(self) -> _Drawing:
        """The order, as the loader draws from it: each batch drawn is noted until it is delivered."""
        return _Drawing(self)

    def begin(self) -> None:
        """A new pass: nothing seen, nothing drawn (what an abandoned pass drew is never delivered)."""
        self.seen_batch_indices = []
        self._drawn.clear()
        self.unnamed = 0

    def delivered(self, batch: Any, rows: int | None, left_out: LeftOut | None = None) -> None:
        """The next batch drawn left the loader with ``rows`` samples (``None``: not known); ``rows=0``:
        it was not handed out (no samples), so Lightning never counts it. ``left_out``: the dataset's
        record of the samples it left out of this pass, asked when ``rows`` is short of the indices."""
        indices = self._drawn.popleft() if self._drawn else []
        if rows == 0:
            return
        if rows is not None and rows != len(indices):
            indices = left_out.kept(indices) if left_out is not None else []
            if len(indices) != rows:
                indices = []
                self.unnamed += 1
        self.seen_batch_indices.append(indices)

    def delivered_indices(self) -> list[int]:
        """The dataset indices of every sample the current pass delivered, in order (the order of a
        ``trainer.predict``'s concatenated predictions on this rank); a :class:`~chute.errors.DataError`
        if a batch's indices were not known (:attr:`unnamed`)."""
        if self.unnamed:
            raise DataError(
                f"{self.unnamed} of the {len(self.seen_batch_indices)} batches delivered lost samples that their "
                "dataset did not mark as left out (chute.bad_samples.LeftOut): their indices are not known"
            )
        return [i for batch in self.seen_batch_indices for i in batch]


class _Drawing:
    """The order of a :class:`DeliveredIndices`, noting each batch as the loader draws it (in the
    loader's thread, or in its threads one at a time: deque appends are thread-safe)."""

    def __init__(self, delivered: DeliveredIndices) -> None:
        self.delivered = delivered

    def __len__(self) -> int:
        return len(self.delivered.order)

    def __iter__(self) -> Iterator[Any]:
        drawn = self.delivered._drawn
        for batch in self.delivered.order:
            drawn.append(_as_list(batch))
            yield batch


def _as_list(batch: Any) -> list[int]:
    if isinstance(batch, (np.ndarray, torch.Tensor)):
        return [int(i) for i in batch.tolist()]
    return [int(i) for i in batch]


def delivered_indices(order: Any) -> DeliveredIndices | None:
    """A recorder over ``order``, or ``None`` where Lightning's wrapper cannot be imported."""
    return DeliveredIndices(order) if _Recorded is not object else None


def recorder_in(batch_sampler: Any) -> DeliveredIndices | None:
    """The :class:`DeliveredIndices` in ``batch_sampler``: itself, or inside the wrappers Lightning puts
    around it when it re-makes a predict DataLoader (``_IndexBatchSamplerWrapper(DeliveredIndices(...))``)."""
    for _ in range(3):
        if isinstance(batch_sampler, DeliveredIndices):
            return batch_sampler
        batch_sampler = getattr(batch_sampler, "_batch_sampler", None)
    return None
