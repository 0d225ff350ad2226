"""Batch buffers (issue 14): reused only once nobody holds the last batch made in them."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from chute.loader import LoaderSettings, buffers, build_loader
from chute.loader.buffers import batch_buffer


def test_a_buffer_is_reused_only_when_no_tensor_or_view_of_it_is_alive() -> None:
    first = batch_buffer((2, 3, 4), torch.float32)
    first.fill_(1.0)
    second = batch_buffer((2, 3, 4), torch.float32)
    assert second.data_ptr() != first.data_ptr()  # the first batch is still held
    address, view = first.data_ptr(), first[1:].permute(0, 2, 1)
    del first
    third = batch_buffer((2, 3, 4), torch.float32)
    assert third.data_ptr() != address  # a view of it is still held
    del view, third
    assert batch_buffer((2, 3, 4), torch.float32).data_ptr() == address  # nobody holds it: reused


def test_buffers_are_per_shape_and_dtype() -> None:
    a = batch_buffer((4, 4), torch.uint8)
    b = batch_buffer((4, 4), torch.float32)
    assert (a.dtype, b.dtype) == (torch.uint8, torch.float32)
    assert a.shape == b.shape == (4, 4)
    assert a.is_contiguous()
    assert b.is_contiguous()


def _in_worker(_: int) -> bool:
    return batch_buffer((8, 8), torch.float32).is_shared()


def test_in_a_worker_process_the_buffer_is_shared_memory() -> None:
    loader = torch.utils.data.DataLoader(range(2), batch_size=None, num_workers=1, collate_fn=_in_worker)
    assert list(loader) == [True, True]


# -- Worker processes started by chute's loader: the batch arena (issue 25) ----------------------


class _Batches(torch.utils.data.Dataset):
    """Batches written into batch buffers: each value says which sample it is, in three layouts and
    dtypes, with an intermediate buffer that is dropped in the worker (never sent)."""

    def __init__(self, size: int = 96) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        n = len(indices)
        scratch = batch_buffer((n, 64, 64), torch.uint8)  # a stage's output, not sent
        scratch.fill_(7)
        values = torch.tensor(indices, dtype=torch.float32)
        images = batch_buffer((n, 16, 16, 3), torch.float32)
        images.copy_(values.view(n, 1, 1, 1).expand_as(images))
        low = batch_buffer((n, 5), torch.bfloat16)
        low.copy_(values.view(n, 1).expand_as(low))
        # a channels-last view and a slice of a buffer travel as views of their slot
        return images.permute(0, 3, 1, 2), low[:, 1:4], torch.tensor(indices)


def _expected(batch: tuple[torch.Tensor, ...]) -> None:
    images, low, index = batch
    values = index.to(torch.float32)
    assert images.shape == (len(index), 3, 16, 16)
    assert images.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(images, values.view(-1, 1, 1, 1).expand_as(images))
    assert low.dtype == torch.bfloat16
    assert low.shape == (len(index), 3)
    torch.testing.assert_close(low.float(), values.view(-1, 1).expand(-1, 3))


def _loader(workers: int = 2, **settings: object) -> torch.utils.data.DataLoader:
    chosen = LoaderSettings(batch_size=8, num_workers=workers, **settings)  # type: ignore[arg-type]
    return build_loader(_Batches(), chosen, train=True, seed=0, collate_fn=_as_is)


def _as_is(batch: object) -> object:
    return batch


def _arena_rows(before: set[int]) -> np.ndarray:
    """The slot table of the one arena made since ``before`` (the arenas' tokens then)."""
    (token,) = set(buffers._ARENAS) - before
    return buffers._ARENAS[token].table.copy()


_SENT, _CAPACITY, _SENDS = 2, 1, 3


def test_worker_batches_arrive_from_reused_shared_slots() -> None:
    """Batches come back right, epoch after epoch, while each worker writes them into a handful of
    slots it reuses (the intermediate buffer too), instead of new shared memory each batch."""
    before = set(buffers._ARENAS)
    loader = _loader()
    for _ in range(3):
        for batch in loader:
            _expected(batch)
    rows = _arena_rows(before)
    made = rows[:, :, _CAPACITY] > 0
    assert made.sum(axis=1).max() <= 8  # a few slots per worker, not three per batch (18 batches each)
    assert rows[:, :, _SENDS][made].max() > 3  # reused
    del loader


def test_a_batch_still_held_is_never_written_again() -> None:
    """Holding every batch of two epochs (more than a worker's slots) leaves each unchanged: a held
    slot is not reused, and a worker out of slots falls back to torch's shared memory."""
    before = set(buffers._ARENAS)
    loader = _loader()
    held = [batch for _ in range(2) for batch in loader]
    assert len(held) == 24
    for batch in held:
        _expected(batch)
    assert (_arena_rows(before)[:, :, 2] == _SENT).sum() > 0
    del held
    assert (_arena_rows(before)[:, :, 2] == _SENT).sum() == 0  # each sent slot free again once dropped
    del loader


def test_the_arena_goes_with_the_workers() -> None:
    """Workers that end with each epoch take their arena with them (a new one for the next)."""
    before = set(buffers._ARENAS)
    loader = _loader(persistent_workers=False)
    for _ in range(2):
        for batch in loader:
            _expected(batch)
    del loader, batch
    gc.collect()
    assert set(buffers._ARENAS) <= before


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_spawned_workers_use_torchs_shared_memory(context: str) -> None:
    """Workers that are not forked cannot inherit the arena: batches travel as torch sends them."""
    before = set(buffers._ARENAS)
    loader = _loader(multiprocessing_context=context)
    batches = list(loader)
    assert len(batches) == 12
    for batch in batches:
        _expected(batch)
    assert set(buffers._ARENAS) <= before


def test_under_an_address_space_limit_workers_use_torchs_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arena reserves gigabytes of address space, which ``ulimit -v`` counts as if it were memory."""
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (8 << 30, resource.RLIM_INFINITY))
    assert buffers.BatchArena.for_workers(2, None) is None
    monkeypatch.undo()
    assert buffers.BatchArena.for_workers(2, None) is not None


class _Collects(torch.utils.data.Dataset):
    """Runs the garbage collector in the worker before each sample."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        gc.collect()
        return index


def _slot_state(arena: buffers.BatchArena, address: int) -> int:
    """The state of the arena slot that holds ``address``."""
    at = address - np.frombuffer(arena.map, dtype=np.uint8, count=1).ctypes.data - arena.base
    worker, at = divmod(at, arena.per_worker)
    row = arena.table[worker]
    (slot,) = [k for k in range(arena.slots) if row[k, 0] <= at < row[k, 0] + row[k, _CAPACITY]]
    return int(row[slot, 2])


def test_a_later_loaders_workers_may_collect_a_batch_of_an_earlier_one() -> None:
    """A batch from an arena, left in a reference cycle, is garbage that the next loader's workers
    inherit when they are forked, without the arena's memory (``MADV_DONTFORK``). Their garbage
    collector freeing it must not touch the arena: it read the slot table there and the workers died
    of a segmentation fault (seen in the suite as LitData's workers dying after a chute loader ran
    in the same process)."""
    before = set(buffers._ARENAS)
    loader = _loader()
    batch = next(iter(loader))
    (token,) = set(buffers._ARENAS) - before
    arena = buffers._ARENAS[token]
    address = batch[0].data_ptr()
    assert _slot_state(arena, address) == _SENT
    cycle: list[object] = [batch]
    cycle.append(cycle)
    gc.disable()  # the cycle stays garbage until a worker of the next loader collects it
    try:
        del batch, cycle
        later = torch.utils.data.DataLoader(_Collects(), batch_size=None, num_workers=2)
        assert sorted(int(index) for index in later) == [0, 1, 2, 3]
        assert _slot_state(arena, address) == _SENT  # their collection left the main process's slot alone
    finally:
        gc.enable()
    gc.collect()  # here, in the main process, the batch is freed and its slot with it
    assert _slot_state(arena, address) == 0
    del loader


# -- Small tensors travel inside the message ----------------------------------------------------


class _Small(torch.utils.data.Dataset):
    """Batches of small tensors of every layout and dtype a batch may hold, each value derived from
    the batch's first index (:func:`_small_batch`)."""

    def __len__(self) -> int:
        return 6

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return _small_batch(indices[0])


#: Fields of :func:`_small_batch` that hold their memory alone: sent as their bytes.
_BY_VALUE = ("rows", "channels_last", "gapped", "flags", "low", "complex", "scalar", "empty")


def _small_batch(first: int) -> dict[str, torch.Tensor]:
    from torchvision import tv_tensors

    base = torch.arange(first, first + 24, dtype=torch.float32)
    gapped = torch.empty_strided((4, 3), (6, 2))  # its own memory, with gaps: strides kept
    gapped.copy_(base[:12].view(4, 3))
    sequence = base.clone()
    return {
        # by value
        "rows": base.view(4, 6).clone(),
        "channels_last": base.repeat(4).view(2, 3, 4, 4).contiguous(memory_format=torch.channels_last),
        "gapped": gapped,
        "flags": base.view(4, 6) > first + 10,
        "low": base.to(torch.bfloat16),
        "complex": torch.complex(base, -base),
        "scalar": torch.tensor(first),
        "empty": torch.empty(0, 3),
        # torch's way: views (their base holds the memory too), three fields over one memory (they
        # must still share it when they arrive), a subclass, one over the limit
        "transposed": base.view(4, 6).t(),
        "slice": torch.arange(100, dtype=torch.int64)[first : first + 5],
        "expanded": torch.tensor([first, 1, 2]).expand(4, 3),
        "sequence": sequence,
        "inputs": sequence[:-1],
        "targets": sequence[1:],
        "image": tv_tensors.Image(torch.full((3, 2, 2), first, dtype=torch.uint8)),
        "large": torch.full((buffers.INLINE_BYTES // 4 + 1,), float(first)),
    }


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_small_tensors_arrive_as_written_without_shared_memory(context: str) -> None:
    """A table's batch crossed from a worker at ~1.7 ms, nearly all of it torch's shared-memory file
    and the socket round trip that hands its descriptor over, once per tensor. A small tensor that
    alone holds its memory now travels inside the message: same values, dtype and strides, a
    writable copy. Views, and tensors whose memory another field shares, go torch's way, so fields
    that shared memory in the worker still share it."""
    from torchvision import tv_tensors

    chosen = LoaderSettings(batch_size=1, num_workers=2, multiprocessing_context=context)
    loader = build_loader(_Small(), chosen, train=False, seed=0, collate_fn=_as_is)
    batches = list(loader)
    assert len(batches) == 6
    for batch in batches:
        expected = _small_batch(int(batch["scalar"]))
        assert batch.keys() == expected.keys()
        for key, tensor in batch.items():
            torch.testing.assert_close(tensor, expected[key], rtol=0, atol=0, msg=key)
            assert tensor.dtype == expected[key].dtype
            assert tensor.stride() == expected[key].stride(), key
        assert batch["channels_last"].is_contiguous(memory_format=torch.channels_last)
        assert type(batch["image"]) is tv_tensors.Image
        assert [key for key in _BY_VALUE if batch[key].is_shared()] == []
        assert [key for key in batch if key not in _BY_VALUE and not batch[key].is_shared()] == []
        batch["rows"] += 1  # writable
        batch["sequence"][3] = -1.0  # the views of it see the write, as in the worker
        assert float(batch["inputs"][3]) == -1.0
        assert float(batch["targets"][2]) == -1.0
    assert [int(batch["scalar"]) for batch in batches] == list(range(6))


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # torch's, rebuilding it
def test_a_sparse_tensor_in_a_batch_goes_torchs_way() -> None:
    """With the arena on, a sparse tensor made the feeder thread raise (it has no data pointer to
    look up): the batch was lost and the loader waited for it forever."""
    chosen = LoaderSettings(batch_size=1, num_workers=1, timeout=30)
    loader = build_loader(_Sparse(), chosen, train=False, seed=0, collate_fn=_as_is)
    batches = list(loader)
    assert [int(b.to_dense().sum()) for b in batches] == [0, 1, 2]


class _Sparse(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 3

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.sparse_coo_tensor([[0]], [float(indices[0])], (4,), check_invariants=True)
