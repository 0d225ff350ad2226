from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from chute import ConfigError, LoaderSettings
from chute.bad_samples import LeftOut
from chute.errors import DataError
from chute.loader import build_loader, derive_seed


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_workers": -1}, "num_workers"),
        ({"num_workers": 1.5}, "num_workers"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"num_workers": 0, "prefetch_factor": 4}, "prefetch_factor"),
        ({"num_workers": 2, "prefetch_factor": 0}, "prefetch_factor"),
        ({"num_workers": 0, "persistent_workers": True}, "persistent_workers"),
        ({"num_workers": 2, "timeout": -1}, "timeout"),
        ({"num_workers": 0, "timeout": 5}, "timeout"),
        ({"multiprocessing_context": "threads"}, "multiprocessing_context"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}=") as info:
        LoaderSettings(**kwargs)
    assert info.value.key == key
    assert info.value.with_prefix("loader").key == f"loader.{key}"


def test_auto_values() -> None:
    s = LoaderSettings(num_workers=0)
    assert s.resolved_pin_memory == torch.cuda.is_available()
    assert s.resolved_persistent_workers is False
    assert LoaderSettings(num_workers=2).resolved_persistent_workers is True
    assert LoaderSettings(num_workers=2, persistent_workers=False).resolved_persistent_workers is False


class _Range(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> int:
        return i


def test_loader_gets_every_knob() -> None:
    s = LoaderSettings(
        batch_size=4, eval_batch_size=5, num_workers=1, prefetch_factor=3, pin_memory=False, drop_last=True, timeout=30
    )
    train = build_loader(_Range(), s, train=True, seed=0)
    assert (train.sampler.batch_size, train.num_workers, train.prefetch_factor, train.timeout) == (4, 1, 3, 30)
    assert train.sampler.drop_last
    assert train.persistent_workers
    assert not train.pin_memory
    assert [len(b) for b in train] == [4, 4]
    val = build_loader(_Range(), s, train=False, seed=0)
    assert val.sampler.batch_size == 5
    assert [b.tolist() for b in val] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_shuffle_order_follows_the_seed() -> None:
    s = LoaderSettings(batch_size=10)
    order = lambda seed: next(iter(build_loader(_Range(), s, train=True, seed=seed))).tolist()  # noqa: E731
    torch.manual_seed(123)  # global RNG use elsewhere must not change the order
    first = order(0)
    torch.rand(100)
    assert order(0) == first
    assert order(1) != first


class _Draws(Dataset):
    """Each sample records the random draws of the process that loaded it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else -1
        return torch.tensor(
            [i, wid, torch.randint(0, 2**30, ()).item(), np.random.randint(2**30), random.getrandbits(30)]
        )


def _epochs(seed: int, persistent: bool, n: int = 2) -> list[torch.Tensor]:
    s = LoaderSettings(batch_size=2, num_workers=2, shuffle=False, persistent_workers=persistent)
    loader = build_loader(_Draws(), s, train=True, seed=seed, rank=0)
    return [torch.cat(list(loader)) for _ in range(n)]


@pytest.mark.parametrize("persistent", [True, False])
def test_worker_seeding(persistent: bool) -> None:
    e1, e2 = _epochs(seed=0, persistent=persistent)
    for epoch in (e1, e2):
        by_worker = {int(w): epoch[epoch[:, 1] == w, 2:] for w in epoch[:, 1].unique()}
        assert len(by_worker) == 2
        # torch, numpy and python streams all differ between the two workers
        a, b = by_worker.values()
        assert (a != b).all()
    assert not torch.equal(e1[:, 2:], e2[:, 2:]), "augmentations must differ across epochs"
    again = _epochs(seed=0, persistent=persistent)
    assert torch.equal(torch.stack(again), torch.stack([e1, e2])), "a run is reproducible from its seed"
    other = _epochs(seed=1, persistent=persistent)
    assert not torch.equal(other[0][:, 2:], e1[:, 2:])


def test_ranks_get_different_streams() -> None:
    s = LoaderSettings(batch_size=8, num_workers=1, shuffle=False)
    draws = [next(iter(build_loader(_Draws(), s, train=True, seed=0, rank=r)))[:, 2:] for r in (0, 1)]
    assert not torch.equal(*draws)


def test_derive_seed_is_order_sensitive_and_32_bit() -> None:
    assert derive_seed(1, 2) != derive_seed(2, 1)
    assert 0 <= derive_seed(2**63, 5) < 2**32


class _Unreadable(Dataset):
    """Ten samples whose value is their index; 2, 6 and 7 are left out (``None``, as ``drop_bad`` leaves
    them), and with ``marks`` marked in a ``left_out`` record as chute's datasets mark them."""

    def __init__(self, marks: bool = False) -> None:
        self.left_out = LeftOut(10) if marks else None

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor | None:
        if i not in (2, 6, 7):
            return torch.tensor(i)
        if self.left_out is not None:
            self.left_out.mark(i)
        return None


def _present(samples: list[torch.Tensor | None]) -> torch.Tensor | None:
    kept = [s for s in samples if s is not None]
    return torch.stack(kept) if kept else None


@pytest.mark.parametrize(("workers", "backend"), [(0, "torch"), (2, "torch"), (2, "threads")])
def test_an_evaluation_loader_records_each_delivered_batchs_indices_and_none_it_cannot_know(
    workers: int, backend: str
) -> None:
    """The indices of each batch handed out, in order (Lightning's ``seen_batch_indices``); a batch that
    lost samples gets ``[]`` (which ones is not known where it is delivered) and one that lost all of
    them is not handed out, so later batches keep their place."""
    from lightning.pytorch.overrides.distributed import _IndexBatchSamplerWrapper

    s = LoaderSettings(batch_size=2, num_workers=workers, backend=backend)
    loader = build_loader(_Unreadable(), s, train=False, seed=0, collate_fn=_present)
    assert isinstance(loader.batch_sampler, _IndexBatchSamplerWrapper)
    for _ in range(2):  # each pass records anew
        batches = [batch.tolist() for batch in loader]
        assert batches == [[0, 1], [3], [4, 5], [8, 9]]
        assert loader.batch_sampler.seen_batch_indices == [[0, 1], [], [4, 5], [8, 9]]
        assert loader.batch_sampler.unnamed == 1  # so the pass's indices cannot be told in order
        with pytest.raises(DataError, match=r"^1 of the 4 batches delivered lost samples that their dataset did"):
            loader.batch_sampler.delivered_indices()
    assert build_loader(_Unreadable(), s, train=True, seed=0, collate_fn=_present).batch_sampler is None


@pytest.mark.parametrize(("workers", "backend"), [(0, "torch"), (2, "torch"), (2, "threads")])
def test_a_short_batch_is_recorded_with_the_indices_it_kept_where_the_dataset_marks_those_it_left_out(
    workers: int, backend: str
) -> None:
    """The marks are made in the worker processes or threads that read the samples and read in the main
    process; each pass counts only its own marks."""
    s = LoaderSettings(batch_size=3, num_workers=workers, backend=backend)
    loader = build_loader(_Unreadable(marks=True), s, train=False, seed=0, collate_fn=_present)
    for _ in range(2):
        assert [batch.tolist() for batch in loader] == [[0, 1], [3, 4, 5], [8], [9]]
        assert loader.batch_sampler.seen_batch_indices == [[0, 1], [3, 4, 5], [8], [9]]
        assert loader.batch_sampler.delivered_indices() == [0, 1, 3, 4, 5, 8, 9]


@pytest.mark.parametrize(("workers", "backend"), [(0, "torch"), (2, "torch"), (2, "threads")])
def test_a_caches_missing_samples_are_left_out_of_every_pass_and_its_short_batches_keep_their_indices(
    workers: int, backend: str
) -> None:
    """A cache records which samples its source could not read when it was built; its gathered evaluation
    batches leave them out, and the record names the rest (it gave ``[]``)."""
    from chute.datasets.cache import CachedDataset

    cached = CachedDataset([None if i in (2, 6, 7) else (torch.full((2,), i), i) for i in range(10)], progress=False)
    s = LoaderSettings(batch_size=3, num_workers=workers, backend=backend)
    loader = build_loader(cached, s, train=False, seed=0, collate_fn=lambda batch: batch)
    for _ in range(2):
        assert [labels.tolist() for _, labels in loader] == [[0, 1], [3, 4, 5], [8], [9]]
        assert loader.batch_sampler.seen_batch_indices == [[0, 1], [3, 4, 5], [8], [9]]


def test_a_batch_counts_the_rows_of_its_inputs_whatever_holds_them() -> None:
    """Tensors, NumPy arrays and the GPU decode route's encoded images (``batch_rows``) have rows; a batch
    of names does not say (``None``: its indices are recorded as drawn)."""
    from chute.loader.build import _rows

    class Encoded:
        batch_rows = 5

    assert _rows((torch.zeros(3, 2), torch.zeros(3))) == 3
    assert _rows({"inputs": np.zeros((4, 2)), "targets": np.zeros(4)}) == 4
    assert _rows((Encoded(), torch.zeros(5))) == 5
    assert _rows((["a", "b"], torch.zeros(2))) is None
    assert _rows(None) == 0


def test_left_out_marks_count_only_in_their_own_pass_and_a_stale_one_gives_no_indices() -> None:
    """A sample left out in one pass and read in the next is kept; a mark that does not add up to the
    batch's rows (one made for this pass by a worker still finishing the last) records ``[]``, not
    indices that do not line up with the batch."""
    from chute.loader.delivered import DeliveredIndices

    left = LeftOut(8)
    record = DeliveredIndices([[0, 1, 2, 3], [4, 5, 6, 7]])
    for marked, rows, expected in [((), 4, [0, 1, 2, 3]), ((1, 2), 2, [0, 3]), ((1,), 2, []), ((), 3, [])]:
        record.begin()
        left.begin()
        for i in marked:
            left.mark(i)
        drawn = iter(record.drawing())
        next(drawn)
        record.delivered(torch.zeros(rows), rows, left)
        assert record.seen_batch_indices == [expected]
    left.begin()
    assert left.kept(range(8)) == list(range(8))  # nothing marked in this pass
