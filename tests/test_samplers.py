"""Batch samplers: every index once per epoch, seeded by (seed, epoch), a new order each epoch."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import Dataset

from chute.loader import LoaderSettings, build_loader
from chute.loader.orders import BatchIndexSampler, BucketBatchSampler


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last"), [(10, 3, False), (10, 3, True), (9, 3, False), (1, 4, False)]
)
def test_batch_index_sampler_covers_each_index_once(n: int, batch_size: int, drop_last: bool) -> None:
    sampler = BatchIndexSampler(n, batch_size, drop_last=drop_last, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    assert len(seen) == (n // batch_size * batch_size if drop_last else n)
    assert all(isinstance(i, int) for b in batches for i in b)


def test_set_epoch_changes_the_order_and_is_reproducible() -> None:
    def order(epoch: int, seed: int = 0) -> list[int]:
        sampler = BatchIndexSampler(50, 8, seed=seed)
        sampler.set_epoch(epoch)
        return [i for b in sampler for i in b]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != order(0, seed=1)


@pytest.mark.parametrize("make", [lambda: BatchIndexSampler(40, 8), lambda: BucketBatchSampler(np.arange(40), 8)])
def test_the_loader_says_the_epoch_and_a_plain_loop_gets_a_new_order_each_pass(make) -> None:
    sampler = make()
    first = [list(map(int, b)) for b in sampler]
    assert [list(map(int, b)) for b in sampler] == first  # an order keeps its epoch until told (as torch's)
    sampler.set_epoch(1)
    assert [list(map(int, b)) for b in sampler] != first

    class Epochs(Dataset[int]):
        told: list[int] = []

        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int) -> int:
            return i

        def set_epoch(self, epoch: int) -> None:
            self.told.append(epoch)

    dataset = Epochs()
    loader = build_loader(dataset, LoaderSettings(batch_size=8), train=True, seed=0, batches=make())
    passes = [[int(i) for b in loader for i in b] for _ in range(3)]  # no trainer: the loader counts passes
    assert passes[0] != passes[1] != passes[2]
    assert sorted(passes[2]) == list(range(40))
    assert dataset.told == [0, 1, 2]  # the loader tells the dataset the epoch of each pass, once


@pytest.mark.parametrize("make", [lambda: BatchIndexSampler(40, 8), lambda: BucketBatchSampler(np.arange(40), 8)])
def test_lightning_calls_set_epoch_on_the_loader_sampler(make) -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    from chute.loader import LoaderSettings, build_loader

    sampler = make()
    loader = build_loader(list(range(40)), LoaderSettings(), train=True, seed=0, batches=sampler)
    assert loader.sampler is sampler
    _set_sampler_epoch(loader, 3)
    assert sampler.epoch == 3


def test_a_pass_cut_short_still_advances_the_epoch() -> None:
    loader = build_loader(list(range(40)), LoaderSettings(batch_size=8), train=True, seed=0)
    first = next(iter(loader)).tolist()
    assert next(iter(loader)).tolist() != first
    assert loader.state_dict()["epoch"] == 1


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 3)])
def test_batched_draw_is_the_item_stream_cut_into_batches(drop_last: bool, rank: int, world: int) -> None:
    """``Batched`` slices the draw (no Python step per index) and resumes after whole batches."""
    from chute.loader import Batched
    from chute.loader.orders import IndexSampler

    items = list(IndexSampler(103, seed=4, rank=rank, world_size=world))
    batches = [items[i : i + 8] for i in range(0, len(items), 8)]
    batches = [b for b in batches if len(b) == 8] if drop_last else batches
    order = Batched(IndexSampler(103, seed=4, rank=rank, world_size=world), 8, drop_last)
    order.set_epoch(0)
    assert [b.tolist() for b in order] == batches
    assert len(order) == len(batches)
    order.resume(0, 3)
    order.set_epoch(0)
    assert [b.tolist() for b in order] == batches[3:]


def test_a_sampler_without_the_order_protocol_is_refused_naming_what_it_lacks() -> None:
    """A loader's order must say which epoch a pass is and where it resumes: a plain torch sampler
    would leave every resumed pass starting from the top, so it is refused, not quietly used."""
    from torch.utils.data import BatchSampler, SequentialSampler

    from chute.loader import LoaderSettings, build_loader
    from chute.loader.orders import Order

    data = list(range(10))
    plain = BatchSampler(SequentialSampler(data), batch_size=4, drop_last=False)
    assert not isinstance(plain, Order)
    with pytest.raises(TypeError, match=r"BatchSampler cannot drive a chute loader: it has no set_epoch, resume"):
        build_loader(data, LoaderSettings(batch_size=4), train=True, seed=0, batches=plain)  # type: ignore[arg-type]


@pytest.mark.parametrize("world", [2, 3, 4, 5])
def test_length_buckets_split_samples_not_batches_across_ranks(world: int) -> None:
    """Whole batches split over 4 ranks padded a short rank with whole batches (8 repeats of 23);
    split by samples, fewer than ``world`` repeat and every rank takes as many steps."""
    from chute.loader.orders import BucketBatchSampler

    lengths = np.arange(23) % 7 + 1
    shares = [list(BucketBatchSampler(lengths, 4, seed=3, rank=r, world_size=world)) for r in range(world)]
    seen = [i for share in shares for batch in share for i in batch]
    assert set(seen) == set(range(23))
    assert len(seen) - 23 <= world - 1
    assert len({len(share) for share in shares}) == 1
    alone = BucketBatchSampler(lengths, 4, seed=3, rank=0, world_size=1)
    assert list(alone) == [b.tolist() for b in alone.batches()]  # one process: the drawn batches as they are
