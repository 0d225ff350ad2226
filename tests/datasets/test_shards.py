"""Shards: exactly once per epoch over any layout, world size and worker count; safe, checked reading."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from chute.collate import collate_nested
from chute.datasets import ShardIndex, ShardStream, partition, write_shards
from chute.datasets.shards import decode_sample, encode_sample, write_index
from chute.errors import DataError

layouts = st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=12)


@given(counts=layouts, consumers=st.integers(min_value=1, max_value=16))
def test_partition_covers_every_position_once_and_balances(counts: list[int], consumers: int) -> None:
    seen: list[tuple[int, int]] = []
    sizes = []
    for consumer in range(consumers):
        ranges = partition(counts, consumers, consumer)
        sizes.append(sum(stop - start for _, start, stop in ranges))
        seen += [(shard, line) for shard, start, stop in ranges for line in range(start, stop)]
    assert sorted(seen) == [(s, line) for s, n in enumerate(counts) for line in range(n)]
    assert max(sizes) - min(sizes) <= 1


def make_shards(root: Path, counts: list[int]) -> list[tuple[str, int]]:
    """Shards whose samples are their global ids, one shard per entry of ``counts``."""
    shards, next_id = [], 0
    for i, n in enumerate(counts):
        entries = write_shards(({"id": torch.tensor(next_id + j)} for j in range(n)), root, f"s{i:03d}", 10**6)
        next_id += n
        shards.append((str(root / entries[0]["file"]), n) if entries else (str(_empty(root, i)), 0))
    return shards


def _empty(root: Path, i: int) -> Path:
    path = root / f"empty-{i}.jsonl"
    path.write_text("")
    return path


def ids_read(stream: ShardStream, rank: int, world: int, worker: int, workers: int) -> list[int]:
    stream.rank, stream.world_size = rank, world
    samples = stream._read(stream.reader_ranges(rank, world, worker, workers))
    return [int(s["id"]) for s in samples]


@settings(max_examples=40, deadline=None)
@given(
    counts=layouts,
    world=st.integers(min_value=1, max_value=4),
    workers=st.integers(min_value=0, max_value=3),
    epoch=st.integers(min_value=0, max_value=3),
)
def test_stream_reads_each_sample_exactly_once_per_epoch(
    counts: list[int], world: int, workers: int, epoch: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stream = ShardStream(make_shards(Path(tmp), counts), batch_size=4, collate_fn=collate_nested, seed=1)
        stream.set_epoch(epoch)
        seen = [
            i
            for rank in range(world)
            for worker in range(max(workers, 1))
            for i in ids_read(stream, rank, world, worker, max(workers, 1))
        ]
        assert sorted(seen) == list(range(sum(counts)))


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 2), (3, 1)])
def test_real_dataloader_workers_and_ranks_see_each_sample_once(tmp_path: Path, world: int, workers: int) -> None:
    shards = make_shards(tmp_path, [7, 0, 13, 5, 1])
    seen = []
    for rank in range(world):
        stream = ShardStream(
            shards, 3, collate_nested, buffer_size=4, seed=5, rank=rank, world_size=world, num_workers=workers
        )
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        batches = list(loader)
        assert len(batches) == len(loader) == len(stream)  # the length progress bars use is exact
        seen += torch.cat([b["id"] for b in batches]).tolist()
    assert sorted(seen) == list(range(26))


def test_shuffle_differs_by_epoch_and_repeats_by_seed(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, [10, 10, 10])

    def order(epoch: int, seed: int = 0) -> list[int]:
        stream = ShardStream(shards, 30, collate_nested, buffer_size=8, seed=seed)
        stream.set_epoch(epoch)
        return next(iter(stream))["id"].tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != order(0, seed=1)
    assert sorted(order(1)) == list(range(30))


def test_samples_round_trip_with_dtypes() -> None:
    sample = {"x": torch.arange(6, dtype=torch.uint8).reshape(2, 3), "y": (torch.tensor(1.5), 3, "a"), "z": [None]}
    back = decode_sample(json.loads(json.dumps(encode_sample(sample))))
    assert back["x"].dtype == torch.uint8
    assert torch.equal(back["x"], sample["x"])
    assert back["y"][1:] == (3, "a")
    assert back["z"] == [None]


def test_truncated_shard_is_detected_not_silently_read(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, [6])
    path = Path(shards[0][0])
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))
    stream = ShardStream(shards, 2, collate_nested, buffer_size=0)
    with pytest.raises(DataError, match="has 4 lines but its index says 6"):
        list(stream)


def test_index_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    (tmp_path / "outside.jsonl").write_text("1\n")
    root = tmp_path / "shards"
    root.mkdir()
    write_index(root, {"train": [{"file": "../outside.jsonl", "count": 1}]})
    with pytest.raises(DataError, match="outside"):
        ShardIndex.read(root)


def test_missing_or_foreign_index_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="No shard index"):
        ShardIndex.read(tmp_path)
    (tmp_path / "index.json").write_text('{"splits": {}}')
    with pytest.raises(DataError, match="not a chute shard index"):
        ShardIndex.read(tmp_path)


def stream_of(root: Path, counts: list[int], **kwargs: object) -> ShardStream:
    return ShardStream(make_shards(root, counts), 4, collate_nested, buffer_size=5, seed=3, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("world", "workers"), [(2, 0), (3, 2)])
def test_even_ranks_take_the_same_steps_and_still_cover_the_epoch(tmp_path: Path, world: int, workers: int) -> None:
    counts = [7, 3, 5]  # 15 samples: ranks and readers get uneven shares
    per_rank = []
    for rank in range(world):
        stream = stream_of(tmp_path / f"r{rank}", counts, rank=rank, world_size=world, num_workers=workers,
                           even_ranks=True)  # fmt: skip
        batches = list(DataLoader(stream, batch_size=None, num_workers=workers))
        assert len(batches) == len(stream)
        per_rank.append([int(i) for b in batches for i in b["id"]])
    steps = {len(list(DataLoader(stream_of(tmp_path / f"s{r}", counts, rank=r, world_size=world, num_workers=workers,
                                           even_ranks=True), batch_size=None, num_workers=workers)))
             for r in range(world)}  # fmt: skip
    assert len(steps) == 1  # every rank the same number of batches
    seen = [i for r in per_rank for i in r]
    assert set(seen) == set(range(15))  # every sample at least once; the extra are repeated batches


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_skips_exactly_the_consumed_batches(tmp_path: Path, workers: int) -> None:
    counts = [9, 6, 11]
    full = stream_of(tmp_path / "a", counts, num_workers=workers, even_ranks=True)
    full.set_epoch(2)
    expected = [b["id"].tolist() for b in DataLoader(full, batch_size=None, num_workers=workers)]
    for consumed in (1, 3, len(expected) - 1):
        resumed = stream_of(tmp_path / f"b{consumed}", counts, num_workers=workers, even_ranks=True)
        resumed.resume(2, consumed)
        rest = [b["id"].tolist() for b in DataLoader(resumed, batch_size=None, num_workers=workers)]
        assert rest == expected[consumed:], consumed
        resumed.set_epoch(3)  # the offset belonged to epoch 2 only
        assert len(list(DataLoader(resumed, batch_size=None, num_workers=workers))) == len(expected)
