"""Shards: each sample once per epoch over any layout and world size, the same batches for any worker
count; safe, checked reading."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from chute.bad_samples import BadSamples
from chute.collate import collate_nested
from chute.datasets import ShardIndex, ShardStream, partition, write_shards
from chute.datasets.shard_format import decode_sample, encode_sample, write_index
from chute.datasets.shards import ShardLines
from chute.errors import DataError
from tests.helpers import assert_mentions

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


def ids(batches: list[Any]) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def turns(stream: ShardStream, workers: int) -> list[Any]:
    """What a DataLoader with ``workers`` workers delivers: one batch from each worker in turn, passing
    over workers that are done (each worker simulated in this process)."""
    per_worker = []
    for worker in range(workers):
        info = SimpleNamespace(id=worker, num_workers=workers)
        with mock.patch("chute.datasets.shards.get_worker_info", return_value=info):
            per_worker.append(list(stream))
    rounds = max(map(len, per_worker))
    return [batches[k] for k in range(rounds) for batches in per_worker if k < len(batches)]


@settings(max_examples=40, deadline=None)
@given(counts=layouts, world=st.integers(min_value=1, max_value=4), epoch=st.integers(min_value=0, max_value=3))
def test_stream_reads_each_sample_exactly_once_per_epoch(counts: list[int], world: int, epoch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), counts)
        seen = []
        for rank in range(world):
            stream = ShardStream(shards, 4, collate_nested, buffer_size=3, seed=1, rank=rank, world_size=world)
            stream.set_epoch(epoch)
            batches = list(stream)
            assert len(batches) == len(stream)
            seen += [i for batch in ids(batches) for i in batch]
        assert sorted(seen) == list(range(sum(counts)))


def by_position(stream: ShardStream, first: int = 0) -> list[Any]:
    """The rank's batches ``first..`` read one at a time by line position, as Ray tasks read them
    (``chute.integrations.ray_streams``), each from a fresh reader; left-out batches dropped."""
    rank, world = stream.rank or 0, stream.world_size or 1
    plan = stream.line_plan(rank, world)
    batches = (stream.planned_batch(plan, g, ShardLines(stream.shards)) for g in range(first, len(stream)))
    return [b for b in batches if b is not None]


@settings(max_examples=40, deadline=None)
@given(
    counts=layouts,
    world=st.integers(min_value=1, max_value=4),
    workers=st.integers(min_value=2, max_value=5),
    consumed=st.integers(min_value=0, max_value=9),
    buffer=st.sampled_from([0, 4, 50]),
    drop_last=st.booleans(),
    even_ranks=st.booleans(),
)
def test_workers_taking_turns_and_reads_by_position_give_the_batches_of_one_worker(
    counts: list[int], world: int, workers: int, consumed: int, buffer: int, drop_last: bool, even_ranks: bool
) -> None:
    """DataLoader workers taking turns, and batches read one at a time by line position (the line
    plan comes from the index alone: the buffer's draws do not depend on the lines), both give the
    batches one worker makes: any layout, rank, epoch and resume point."""
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), counts)
        for rank in range(world):
            stream = ShardStream(shards, 3, collate_nested, buffer_size=buffer, seed=2, drop_last=drop_last,
                                 rank=rank, world_size=world, even_ranks=even_ranks)  # fmt: skip
            stream.set_epoch(1)
            alone = ids(list(stream))
            assert len(alone) == len(stream)
            assert ids(turns(stream, workers)) == alone  # the same batches, in the same order
            assert ids(by_position(stream)) == alone
            assert ids(by_position(stream, consumed)) == alone[consumed:]
            stream.resume(1, consumed)
            assert ids(turns(stream, workers)) == alone[consumed:]


@pytest.mark.parametrize("even_ranks", [False, True])
def test_bad_and_missing_lines_read_by_position_are_named_counted_and_left_out_alike(
    tmp_path: Path, even_ranks: bool
) -> None:
    shards = make_shards(tmp_path, [10, 10])
    corrupt(shards[0][0], range(5, 9))  # samples 4-7: with no buffer, all of batch 1
    corrupt(shards[1][0], range(2, 3))  # sample 11

    def stream(on_error: str = "skip") -> ShardStream:
        bad = BadSamples(on_error, max_fraction=0.5, what="line")  # type: ignore[arg-type]
        return ShardStream(shards, 4, collate_nested, buffer_size=0, on_error=bad, rank=0, world_size=1,
                           even_ranks=even_ranks)  # fmt: skip

    streamed, positioned = stream(), stream()
    assert ids(by_position(positioned)) == ids(list(streamed))
    assert positioned.bad_samples.counts == streamed.bad_samples.counts == (20, 5)
    with pytest.raises(DataError, match=r"s000.*line 5 is not JSON"):
        by_position(stream("raise"))
    whole = Path(shards[1][0]).read_text().splitlines(keepends=True)
    Path(shards[1][0]).write_text("".join(whole[:7]))  # cut: its index says 10 lines
    with pytest.raises(DataError, match=r"s001.*has 7 lines but its index says 10"):
        by_position(stream())


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 2), (3, 1)])
def test_real_dataloader_workers_and_ranks_see_each_sample_once(tmp_path: Path, world: int, workers: int) -> None:
    shards = make_shards(tmp_path, [7, 0, 13, 5, 1])
    seen = []
    for rank in range(world):
        stream = ShardStream(shards, 3, collate_nested, buffer_size=4, seed=5, rank=rank, world_size=world)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        batches = list(loader)
        assert len(batches) == len(loader) == len(stream)  # the length progress bars use is exact
        assert ids(batches) == ids(list(stream))  # the workers' turns give the main process's batches
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


@pytest.mark.parametrize("workers", [0, 2])
def test_lines_added_after_the_index_are_an_error_not_left_unread(tmp_path: Path, workers: int) -> None:
    """20 lines appended to a shard of 6: they were never read, and nothing said so. Blank lines at
    the end (an editor's) are not lines."""
    shards = make_shards(tmp_path, [6, 4])
    path = Path(shards[0][0])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines) + "\n\n")
    assert len(list(DataLoader(ShardStream(shards, 2, collate_nested), batch_size=None, num_workers=workers))) == 5
    positioned = ids(by_position(ShardStream(shards, 2, collate_nested, buffer_size=0)))
    assert [i for batch in positioned for i in batch] == list(range(10))
    path.write_text("".join(lines + lines[:3]))
    with pytest.raises(DataError, match=r"s000.*has more lines than the 6 its index says"):
        list(ShardStream(shards, 2, collate_nested))
    with pytest.raises(DataError, match=r"s000.*has more lines than the 6 its index says"):
        by_position(ShardStream(shards, 2, collate_nested, buffer_size=0))


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


def stream_of(root: Path, counts: list[int], **kwargs: Any) -> ShardStream:
    return ShardStream(make_shards(root, counts), 4, collate_nested, buffer_size=5, seed=3, **kwargs)


@pytest.mark.parametrize(("counts", "world", "workers"), [([7, 3, 7], 2, 0), ([7, 3, 3], 3, 2)])
def test_even_ranks_take_the_same_steps_and_still_cover_the_epoch(
    tmp_path: Path, counts: list[int], world: int, workers: int
) -> None:
    shards = make_shards(tmp_path, counts)  # ranks of 8 and 9 samples (2 and 3 batches of 4), or 4, 4 and 5 (1, 1, 2)
    per_rank = []
    for rank in range(world):
        stream = ShardStream(shards, 4, collate_nested, buffer_size=5, seed=3, rank=rank, world_size=world,
                             even_ranks=True)  # fmt: skip
        batches = ids(list(DataLoader(stream, batch_size=None, num_workers=workers)))
        assert len(batches) == len(stream)
        own = stream.rank_batches(rank, world)
        assert batches[own:] == [batches[0]] * (len(batches) - own)  # a shorter rank repeats its first batch
        per_rank.append(batches)
    assert len({len(batches) for batches in per_rank}) == 1  # every rank the same number of batches
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert set(seen) == set(range(sum(counts)))  # every sample at least once; the extra are repeated batches
    assert len(seen) > sum(counts)


def test_a_rank_without_samples_repeats_another_ranks_batch(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, [1])  # rank 0 of 2 gets no line
    for rank in range(2):
        stream = ShardStream(shards, 4, collate_nested, rank=rank, world_size=2, even_ranks=True)
        assert len(stream) == 1
        assert ids(list(stream)) == [[0]]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_resume_yields_exactly_the_batches_after_the_consumed_ones(tmp_path: Path, workers: int) -> None:
    stream = stream_of(tmp_path, [9, 6, 11], even_ranks=True)  # 26 samples: 7 batches of 4
    stream.set_epoch(2)
    expected = ids(list(stream))  # the uninterrupted epoch, made in this process
    for consumed in (1, 2, 3, 5, len(expected) - 1):  # mid-round for every worker count
        stream.resume(2, consumed)
        rest = ids(list(DataLoader(stream, batch_size=None, num_workers=workers)))
        assert rest == expected[consumed:], consumed
    stream.set_epoch(3)  # the offset belonged to epoch 2 only
    assert len(list(DataLoader(stream, batch_size=None, num_workers=workers))) == len(expected)


def corrupt(path: str, lines: range, text: str = "{not json") -> None:
    rows = Path(path).read_text().splitlines()
    for line in lines:
        rows[line - 1] = text
    Path(path).write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("even_ranks", [False, True])
def test_a_bad_line_makes_only_its_batch_smaller_and_counts_once(tmp_path: Path, even_ranks: bool) -> None:
    shards = make_shards(tmp_path, [10, 10])
    corrupt(shards[0][0], range(4, 5))  # sample 3

    def stream() -> ShardStream:
        return ShardStream(shards, 4, collate_nested, buffer_size=6, seed=1, on_error="skip", rank=0, world_size=1,
                           even_ranks=even_ranks)  # fmt: skip

    alone = ids(list(stream()))
    assert sorted(i for batch in alone for i in batch) == [i for i in range(20) if i != 3]
    assert sorted(map(len, alone)) == [3, 4, 4, 4, 4]  # the boundaries stay where the index puts them
    for workers in (2, 3):
        fresh = stream()
        assert ids(turns(fresh, workers)) == alone
        assert fresh.bad_samples.counts == (20, 1)  # counted by the worker that owns its batch only


@pytest.mark.parametrize(
    ("even_ranks", "expected"), [(False, [[0, 1, 2, 3], [8, 9]]), (True, [[0, 1, 2, 3]] * 2 + [[8, 9]])]
)
def test_a_batch_of_bad_lines_is_left_out_or_repeats_the_first(
    tmp_path: Path, even_ranks: bool, expected: list[list[int]]
) -> None:
    shards = make_shards(tmp_path, [10])
    corrupt(shards[0][0], range(5, 9))  # all of batch 1
    bad = BadSamples("skip", max_fraction=0.5, what="line")
    stream = ShardStream(shards, 4, collate_nested, buffer_size=0, on_error=bad, rank=0, world_size=1,
                         even_ranks=even_ranks)  # fmt: skip
    assert ids(list(stream)) == expected
    assert bad.counts == (10, 4)
    assert ids(turns(stream, 2)) == expected


def test_rank_comes_from_the_launcher_when_no_process_group_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under srun, a stream built without a rank (and spawned workers, which have no process group)
    # takes its place from SLURM's variables, as every other chute sampler does.
    shards = make_shards(tmp_path, [10])
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    stream = ShardStream(shards, 5, collate_nested, shuffle_shards=False, buffer_size=0)
    assert ids(list(stream)) == [[5, 6, 7, 8, 9]]


# -- The layout the writer records, and the reader checks --------------------------------------


def _layout_of(root: Path, samples: list[Any], per_shard: int = 2) -> Any:
    write_index(root, {"train": write_shards(samples, root, "train", per_shard)})
    return ShardIndex.read(root).layout("train")


def test_the_index_records_which_dimensions_vary_and_which_are_fixed(tmp_path: Path) -> None:
    samples = [{"tokens": torch.arange(n), "image": torch.zeros(3, 4, 4), "label": n % 2} for n in (2, 5, 5, 7)]
    samples[3]["label"] = 1.5  # a float among ints: either is fine
    assert _layout_of(tmp_path, samples) == {
        "dict": {
            "tokens": {"tensor": [None], "dtype": "int64"},  # differs between the two shards
            "image": {"tensor": [3, 4, 4], "dtype": "float32"},
            "label": {"scalar": ["float", "int"]},
        }
    }


_X = '"x":{"tensor":[1,2,3],"dtype":"float32"}'  # the split's field x: 3 float32 values


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"dict":{"x":{"tensor":[1,2],"dtype":"float32"},"y":1}}', "(2,) where the split's samples have (3,)"),
        ('{"dict":{"x":{"tensor":[[1,2,3]],"dtype":"float32"},"y":1}}', "sample['x'] has shape (1, 3) where"),
        ('{"dict":{"x":{"tensor":[1,2,3],"dtype":"int64"},"y":1}}', "is int64 where the split's samples are float32"),
        ('{"dict":{' + _X + "}}", "sample has keys ['x'] where the split's samples have ['x', 'y']"),
        ('{"dict":{' + _X + ',"y":"cat"}}', "sample['y'] is str 'cat' where the split's samples have int"),
        ('{"dict":{"x":7,"y":1}}', "sample['x'] is int 7 where the split's samples have a tensor"),
        ('{"tuple":[1,2]}', "sample is a tuple where the split's samples have a dict"),
    ],
)
def test_a_line_unlike_its_splits_samples_is_named(tmp_path: Path, line: str, message: str) -> None:
    root = tmp_path / "shards"
    samples = [{"x": torch.full((3,), float(i)), "y": i} for i in range(6)]
    layout = _layout_of(root, samples)
    path = root / "train-00001.jsonl"
    path.write_text(path.read_text().splitlines()[0] + "\n" + line + "\n")
    shards = ShardIndex.read(root).shards("train")
    with pytest.raises(DataError) as err:
        list(ShardStream(shards, 2, collate_nested, layout=layout))
    assert_mentions(str(err.value), "train-00001.jsonl', line 2 is not a valid sample", message)
    with pytest.raises(DataError, match=r"train-00001.jsonl', line 2 is not a valid sample"):  # read by position
        by_position(ShardStream(shards, 2, collate_nested, buffer_size=0, layout=layout))


def test_variable_length_fields_stay_variable(tmp_path: Path) -> None:
    """A field whose length varies in the copy may take any length when read (the sequence copies)."""
    root = tmp_path / "shards"
    layout = _layout_of(root, [(torch.arange(n), n) for n in (1, 2, 3, 4)])
    path = root / "train-00000.jsonl"
    nine = '{"tuple":[{"tensor":[1,2,3,4,5,6,7,8,9],"dtype":"int64"},9]}'
    path.write_text(nine + "\n" + path.read_text().splitlines()[1] + "\n")
    batches = list(ShardStream(ShardIndex.read(root).shards("train"), 4, collate_nested, layout=layout, buffer_size=0))
    assert batches[0][0].shape == (4, 9)


def test_an_index_without_layouts_reads_unchecked_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    entries = write_shards([(torch.zeros(2), 0)] * 3, root, "train", 2)
    write_index(root, {"train": [entries[0], {"file": entries[1]["file"], "count": 1}]})  # one entry without
    assert ShardIndex.read(root).layout("train") is None
    for bad in ({"tensor": "2"}, {"tensor": [2], "dtype": 3}, {"dict": {"x": {"pickle": 1}}}, {"scalar": "int"}, []):
        write_index(root, {"train": [{**entries[0], "sample": bad}]})
        with pytest.raises(DataError, match=r"sample layout of 'train-00000.jsonl' is not one chute writes"):
            ShardIndex.read(root)


def test_empty_tensors_and_int_labels_of_other_types_come_back_as_written(tmp_path: Path) -> None:
    """An image without boxes, ``(0, 4)``, was stored as ``[]`` and read back as ``(0,)``, which the
    layout check then refused beside the ``(N, 4)`` of the others; an IntEnum label was recorded by
    its class name, so every line was refused."""
    import enum

    class Kind(enum.IntEnum):
        CAT = 0
        DOG = 1

    samples = [{"boxes": torch.zeros(n, 4), "label": Kind(n % 2)} for n in (2, 0, 3, 0)]
    layout = _layout_of(tmp_path, samples)
    assert layout == {"dict": {"boxes": {"tensor": [None, 4], "dtype": "float32"}, "label": {"scalar": ["int"]}}}
    shards = ShardIndex.read(tmp_path).shards("train")
    batches = list(ShardStream(shards, 4, collate_nested, layout=layout, buffer_size=0, shuffle_shards=False))
    assert batches[0]["boxes"].shape == (4, 3, 4)
    assert batches[0]["boxes_lengths"].tolist() == [2, 0, 3, 0]
