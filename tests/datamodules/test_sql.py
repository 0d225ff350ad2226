"""SqlDataModule against SQLite files and a real PostgreSQL server (started by the ``postgres_server`` fixture)."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from chute.datamodules import SqlDataModule, TabularDataModule
from chute.datasets.database import Database, redact
from chute.datasets.sql_ingest import ingest, load_table
from chute.datasets.sql_source import SqlSource, key_split
from chute.errors import ConfigError, DataError
from chute.loader import derive_seed

BACKENDS = ["sqlite", "postgresql"]


class Db:
    """One test's database: a SQLite file, or a fresh schema-less table namespace on the shared server."""

    def __init__(self, url: str, server: Any = None) -> None:
        self.url, self.server = url, server

    def table(self, data: pa.Table, name: str | None = None, key: str = "id") -> str:
        name = name or f"t_{uuid.uuid4().hex[:8]}"
        ingest(data, self.url, name, key=key)
        return name

    def execute(self, sql: str) -> None:
        database = Database(self.url)
        with database.connect() as connection, connection.cursor() as cursor:
            cursor.execute(sql)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        return Db(f"sqlite:///{tmp_path}/test.db")
    server = request.getfixturevalue("postgres_server")
    return Db(server.url, server)


def rows(n: int, start: int = 0, classes: int = 3) -> pa.Table:
    """``id``, a numeric feature that is the id, a category and a label: ids survive the encoding."""
    ids = np.arange(start, start + n)
    return pa.table({
        "id": ids, "x": ids.astype(np.float64), "color": [("red", "green", "blue")[i % 3] for i in ids],
        "label": [f"c{i % classes}" for i in ids],
    })  # fmt: skip


def make(db: Db, table: str, **kwargs: Any) -> SqlDataModule:
    args: dict[str, Any] = {"target": "label", "numeric": ["x"], "standardize": False, "loader": {"batch_size": 8}}
    args.update(kwargs)
    return SqlDataModule(db.url, table=table, **args)


def ids_of(batches: Any) -> list[int]:
    return [int(i) for features, _ in batches for i in features[:, 0].round().long()]


# -- Reading: the table DataModule's encoding, tables and queries -----------------------------------


def test_columns_are_encoded_by_the_same_code_as_the_table_datamodule(db: Db, tmp_path: Path) -> None:
    data = rows(60).append_column("size", pa.array([None if i % 7 == 0 else i * 0.5 for i in range(60)]))
    csv = tmp_path / "rows.csv"
    import pyarrow.csv as pacsv

    pacsv.write_csv(data, csv)
    name = db.table(data)
    common = {"target": "label", "numeric": ["x", "size"], "categorical": ["color"], "missing": "mean"}
    sql = SqlDataModule(db.url, table=name, val_table=name, **common)
    tab = TabularDataModule(str(csv), val_path=str(csv), **common)
    sql.setup("fit")
    tab.setup("fit")
    ours, theirs = sql.state_dict()["encoder"], tab.state_dict()["encoder"]
    assert ours["vocab"] == theirs["vocab"]
    for name in ("fill", "mean", "std"):
        assert ours[name] == pytest.approx(theirs[name])
    assert sql.feature_names == tab.feature_names
    assert sql.class_names == tab.class_names
    features, targets = sql.dataset("val").__getitems__(np.arange(60))
    assert torch.allclose(features, tab.dataset("val").features)
    assert torch.equal(targets, tab.dataset("val").targets)


def test_a_table_named_like_a_query_is_a_table(db: Db) -> None:
    name = db.table(rows(20), name=f"withdrawals_{uuid.uuid4().hex[:6]}")
    dm = make(db, name, val_table=name)
    dm.setup("fit")
    assert sorted(ids_of(dm.val_dataloader())) == list(range(20))


def test_a_select_query_is_a_source(db: Db) -> None:
    name = db.table(rows(40))
    dm = make(db, f"SELECT id, x, color, label FROM {name} WHERE x >= 10", val_table=f"SELECT * FROM {name}")
    dm.setup("fit")
    assert sorted(ids_of(dm.train_dataloader())) == list(range(10, 40))
    assert sorted(ids_of(dm.val_dataloader())) == list(range(40))


def test_without_numeric_columns_every_numeric_column_but_key_and_target_is_a_feature(db: Db) -> None:
    name = db.table(rows(30))
    dm = SqlDataModule(db.url, table=name, target="label", categorical=["color"], val_fraction=0.3)
    dm.setup("fit")
    assert dm.feature_names == ["x", "color=blue", "color=green", "color=red"]
    assert dm.model_kwargs == {"num_features": 4, "num_classes": 3, "task": "classification"}


def test_batches_are_key_range_reads_never_a_query_per_row(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    name = db.table(rows(10_000))
    dm = make(db, name, val_table=name, loader={"batch_size": 4096})
    dm.setup("fit")
    queries: list[str] = []
    arrow = Database.arrow
    monkeypatch.setattr(Database, "arrow", lambda self, sql, what: queries.append(sql) or arrow(self, sql, what))
    loader = dm.train_dataloader()
    seen = ids_of(loader)
    assert sorted(seen) == sorted(dm._keys("train").tolist())
    reads = [q for q in queries if "chute_key" in q]
    assert len(reads) == len(loader) == 3  # one query per batch (plus the snapshot's key read)
    assert all(16 <= q.count("BETWEEN") <= 64 for q in reads[:2])  # 64 blocks of 64 keys (neighbours merge)


@pytest.mark.parametrize("index", ["memory", "stream"])
def test_the_fit_sample_of_a_large_table_is_read_in_bounded_queries(
    db: Db, index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = db.table(rows(60_000))
    queries: list[str] = []
    arrow = Database.arrow
    monkeypatch.setattr(Database, "arrow", lambda self, sql, what: queries.append(sql) or arrow(self, sql, what))
    dm = make(db, name, fit_rows=6_000, standardize=True, index=index)  # gaps of ~8 keys: thousands of runs
    dm.setup("fit")  # SQLite refused one query of them all: "Expression tree is too large (maximum depth 1000)"
    reads = [q for q in queries if "chute_key" in q]
    assert len(reads) > 1
    assert all(q.count("BETWEEN") <= 256 for q in reads)
    assert dm.encoding is not None
    state = dm.encoding.encoder.state_dict()
    assert abs(state["mean"][0] - 30_000) < 1_500  # the sample's mean of x (the key): about the table's
    assert abs(state["std"][0] - 60_000 / 12**0.5) < 1_500


# -- Exactly once, shuffled, reproducible, resumable ------------------------------------------------


INDEXES = [{"index": "memory"}, {"index": "stream", "shuffle_buffer": 48}]  # stream: ranges of 16 keys


@pytest.mark.parametrize("index", INDEXES, ids=["memory", "stream"])
@pytest.mark.parametrize("loader", [{"num_workers": 0}, {"num_workers": 2}, {"backend": "threads", "num_workers": 2}])
def test_every_row_once_an_epoch_in_a_seeded_order_whatever_loads_it(
    tmp_path: Path, loader: dict[str, Any], index: dict[str, Any]
) -> None:
    db = Db(f"sqlite:///{tmp_path}/test.db")
    name = db.table(rows(203))
    settings = {"batch_size": 16, **loader}
    dm = make(db, name, loader=settings, shuffle_block=2, **index)
    dm.setup("fit")
    train = dm._keys("train").tolist()
    loader_ = dm.train_dataloader()
    epochs = [ids_of(loader_), ids_of(loader_)]  # a plain loop: two passes, two epochs
    assert [sorted(e) for e in epochs] == [train, train]
    assert epochs[0] != epochs[1]
    assert len(loader_) == -(-len(train) // 16)
    again = make(db, name, loader={"batch_size": 16}, shuffle_block=2, **index)
    again.setup("fit")
    assert ids_of(again.train_dataloader()) == epochs[0]  # same seed, same order, any backend
    other = make(db, name, loader={"batch_size": 16}, shuffle_block=2, seed=1, **index)
    other.setup("fit")
    assert ids_of(other.train_dataloader()) != epochs[0]
    assert ids_of(dm.val_dataloader()) == dm._keys("val").tolist()  # evaluation: in key order


def test_ranks_take_contiguous_equal_shares_and_evaluation_counts_each_row_once(tmp_path: Path) -> None:
    from chute.loader.key_orders import KeyOrder

    keys = np.arange(100, 123)
    for world in (2, 3):
        train = [KeyOrder(lambda e, u: keys, train=True, shuffle=True, block=4, seed=0, rank=r, world_size=world)
                 for r in range(world)]  # fmt: skip
        shares = [o.rank_items() for o in train]
        assert len({len(s) for s in shares}) == 1
        together = np.concatenate(shares)
        assert set(together) <= set(keys)
        assert len(set(keys) - set(together)) < world
        evaluation = [KeyOrder(lambda e, u: keys, train=False, shuffle=True, block=4, seed=0, rank=r,
                               world_size=world).rank_items() for r in range(world)]  # fmt: skip
        assert np.concatenate(evaluation).tolist() == keys.tolist()  # each once, in key order, contiguous


def test_the_hold_out_is_decided_by_the_key_so_it_is_stable_as_rows_arrive(db: Db) -> None:
    name = db.table(rows(500))
    dm = make(db, name, val_fraction=0.25)
    dm.setup("fit")
    val_before, train_before = set(dm._keys("val").tolist()), set(dm._keys("train").tolist())
    assert not val_before & train_before
    assert len(val_before | train_before) == 500
    assert 0.18 < len(val_before) / 500 < 0.32
    ingest(rows(500, start=500), db.url, name, if_exists="append")
    val_after, train_after = set(dm._keys("val").tolist()), set(dm._keys("train").tolist())
    assert val_before <= val_after
    assert train_before <= train_after
    assert val_after == set(np.flatnonzero(key_split(np.arange(1000), 0.25, derive_seed(dm.seed, 1))).tolist())
    assert 0.18 < len(val_after - val_before) / 500 < 0.32


@pytest.mark.parametrize("index", INDEXES, ids=["memory", "stream"])
@pytest.mark.parametrize("snapshot", ["epoch", "once"])
def test_a_resumed_epoch_reads_its_snapshot_again_after_the_batches_trained(
    db: Db, snapshot: str, index: dict[str, Any]
) -> None:
    name = db.table(rows(100))
    dm = make(db, name, val_table=name, snapshot=snapshot, **index)
    dm.setup("fit")
    whole = [ids_of([b]) for b in dm.train_dataloader()]
    first = dm.train_dataloader()
    it = iter(first)
    head = [ids_of([next(it)]) for _ in range(3)]
    state = first.state_dict()
    assert state["snapshot"] == {"rows": 100, "last_key": 99}
    ingest(rows(30, start=100), db.url, name, if_exists="append")  # arrive while the run is down
    resumed = make(db, name, val_table=name, snapshot=snapshot, **index)
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    loader.load_state_dict(state)
    assert len(loader) == len(whole)
    assert head + [ids_of([b]) for b in loader] == whole
    later = sorted(ids_of(loader))
    assert later == (list(range(130)) if snapshot == "epoch" else list(range(100)))  # epoch: new rows join


# -- index=stream: key ranges and a shuffle buffer, never the key index -----------------------------


def test_the_stream_index_never_reads_the_key_index_and_encodes_as_the_memory_one(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = db.table(rows(3000))
    memory = make(db, name, categorical=["color"], standardize=True)
    memory.setup("fit")
    keys = SqlSource.keys

    def ranged_only(self: SqlSource, upto: int | None = None, since: int | None = None) -> np.ndarray:
        assert since is not None, "the whole key index was read"
        return keys(self, upto, since)

    monkeypatch.setattr(SqlSource, "keys", ranged_only)
    dm = make(db, name, categorical=["color"], standardize=True, index="stream", shuffle_buffer=1024,
              loader={"batch_size": 64})  # fmt: skip
    dm.setup("fit")  # fitted on a sample drawn in the scan: here every training row, as memory's fit
    assert dm.encoding is not None
    assert memory.encoding is not None
    assert dm.encoding.encoder.state_dict() == memory.encoding.encoder.state_dict()
    assert dm.class_names == memory.class_names
    dm = make(db, name, index="stream", shuffle_buffer=1024, loader={"batch_size": 64})  # features: the ids
    dm.setup("fit")
    loader = dm.train_dataloader()
    ranges = loader.sampler.ranges
    assert len(ranges) == -(-ranges.rows // 64)
    assert int(ranges.count.max()) == 64
    monkeypatch.setattr(SqlSource, "keys", keys)
    assert ranges.rows == len(memory._keys("train"))
    seen = ids_of(loader)
    assert sorted(seen) == memory._keys("train").tolist()
    assert ids_of(dm.val_dataloader()) == memory._keys("val").tolist()


def test_the_fit_sample_and_ranges_do_not_depend_on_how_the_scan_arrives() -> None:
    from chute.datasets.sql_source import _RangeScan

    keys = np.sort(np.random.default_rng(0).choice(10**9, 5000, replace=False))
    source = SqlSource(Database("sqlite:///unused.db"), "t")
    keep = lambda k: k % 3 != 0  # noqa: E731
    results = []
    for chunk in (5000, 977, 64):
        scan = _RangeScan(source, 100, keep, sample=700, seed=5).restart()
        for start in range(0, len(keys), chunk):
            scan.add(pa.record_batch([pa.array(keys[start : start + chunk])], names=["id"]))
        results.append(scan.result())
    kept = keys[keep(keys)]
    for r in results:
        assert r.rows == len(kept)
        assert r.last_key == int(keys[-1])
        assert np.array_equal(r.lo, kept[::100])
        assert np.array_equal(r.hi, np.append(kept[99::100], kept[-1]))
        assert np.array_equal(r.sample, results[0].sample)
        assert len(r.sample) == 700
        assert set(r.sample.tolist()) <= set(kept.tolist())
    repeated = _RangeScan(source, 100, None, 0, 0).restart()
    repeated.add(pa.record_batch([pa.array([1, 2, 3])], names=["id"]))
    with pytest.raises(DataError, match="key 3 appears more than once"):
        repeated.add(pa.record_batch([pa.array([3, 4])], names=["id"]))  # repeated across chunks


@pytest.mark.parametrize("world", [2, 3])
def test_stream_ranks_take_equal_steps_every_row_once_and_evaluation_counts_each_row_once(world: int) -> None:
    from chute.loader.key_orders import KeyRanges, KeyStream

    keys = np.arange(1000, 1203) * 7  # 203 rows in ranges of 16 (the last of 11)
    lo, hi = keys[::16], np.append(keys[15::16], keys[-1])
    ranges = KeyRanges(lo, hi, np.array([16] * 12 + [11]), int(keys[-1]), np.empty(0, np.int64))
    read = lambda a, b: keys[(keys >= a) & (keys <= b)]  # noqa: E731

    def stream(rank: int, train: bool, epoch: int = 0) -> KeyStream:
        order = KeyStream(lambda e, u: ranges, read, batch_size=10, drop_last=False, train=train, shuffle=True,
                          block=2, buffer=40, seed=3, rank=rank, world_size=world)  # fmt: skip
        order.set_epoch(epoch)
        return order

    train = [[b.tolist() for b in stream(r, True)] for r in range(world)]
    assert len({len(t) for t in train}) == 1  # equal steps
    assert all(len(stream(r, True)) == len(train[r]) for r in range(world))
    together = [k for t in train for b in t for k in b]
    assert len(together) == world * -(-203 // world)
    assert set(together) == set(keys.tolist())  # every row; a short share repeats its first key
    assert len(together) - len(set(together)) == len(together) - 203
    assert sorted(together[:20]) != together[:20]  # shuffled: not key order
    again = [[b.tolist() for b in stream(r, True)] for r in range(world)]
    assert again == train  # seeded
    assert [[b.tolist() for b in stream(r, True, epoch=1)] for r in range(world)] != train
    evaluation = [k for r in range(world) for b in stream(r, False) for k in b.tolist()]
    assert evaluation == keys.tolist()  # each once, in key order
    resumed = stream(0, True)
    resumed.resume(0, 3)
    assert [b.tolist() for b in resumed] == train[0][3:]
    plain = KeyStream(lambda e, u: ranges, read, batch_size=10, drop_last=False, train=True, shuffle=True,
                      block=2, buffer=40, seed=3, rank=0, world_size=world)  # fmt: skip
    assert [b.tolist() for b in plain] == train[0]  # a plain first pass is epoch 0
    assert [b.tolist() for b in plain] == train[0]  # and stays it: the loader (Passes) says the epoch
    plain.set_epoch(1)
    assert [b.tolist() for b in plain] == [b.tolist() for b in stream(0, True, epoch=1)]


def test_a_stream_rank_without_rows_of_its_own_still_takes_its_steps() -> None:
    from chute.loader.key_orders import KeyRanges, KeyStream

    keys = np.array([10, 11, 20, 21])  # two ranges; the first one's rows are deleted during the epoch
    ranges = KeyRanges(np.array([10, 20]), np.array([11, 21]), np.array([2, 2]), 21, np.empty(0, np.int64))
    read = lambda a, b: keys[(keys >= a) & (keys <= b) & (keys >= 20)]  # noqa: E731
    counted: list[int] = []
    lengths, steps = [], []
    for rank in range(3):
        order = KeyStream(lambda e, u: ranges, read, batch_size=1, drop_last=False, train=True, shuffle=False,
                          block=1, buffer=0, seed=0, rank=rank, world_size=3,
                          changed=lambda error, n: counted.append(n))  # fmt: skip
        order.set_epoch(0)
        lengths.append(len(order))
        steps.append(len(list(order)))
    assert lengths == steps == [2, 2, 2]  # equal steps: a rank with no rows left repeats the snapshot's first
    assert counted == [2]  # the range's two deleted rows, told once (by the rank reading its first row)


def test_a_stream_range_that_changed_during_the_epoch_is_named_or_counted(db: Db) -> None:
    name = db.table(rows(60))
    strict = make(db, name, val_table=name, index="stream", shuffle_buffer=160)  # ranges of 10 keys
    strict.setup("fit")
    loader = strict.val_dataloader()
    assert len(loader) == 8
    db.execute(f"DELETE FROM {name} WHERE id = 41")  # gone after the snapshot
    with pytest.raises(DataError, match=r"keys 40\.\.49 .* 10 rows when it began, 9 now \(rows were deleted\)"):
        list(loader)
    dm = make(db, name, val_table=name, index="stream", shuffle_buffer=160, on_error="skip", max_bad_fraction=0.5)
    dm.setup("fit")
    train = dm.train_dataloader()
    planned = len(train)
    db.execute(f"DELETE FROM {name} WHERE id IN (42, 43)")
    seen = ids_of(train)
    assert len(seen) == 59
    assert len(train) == planned
    assert set(seen) == set(range(60)) - {41, 42, 43}
    assert dm.bad_samples["train"]["skipped"] == 2
    evaluation = dm.val_dataloader()
    len(evaluation)  # the snapshot: 57 rows
    db.execute(f"DELETE FROM {name} WHERE id = 7")
    assert ids_of(evaluation) == [i for i in range(60) if i not in (7, 41, 42, 43)]  # each once, no stand-in
    assert dm.bad_samples["val"]["skipped"] == 1
    again = dm.val_dataloader()
    len(again)
    db.execute(f"INSERT INTO {name} (id, x, color, label) VALUES (7, 7.0, 'red', 'c1')")  # inside range 0..10
    db.execute(f"INSERT INTO {name} (id, x, color, label) VALUES (41, 41.0, 'red', 'c2')")  # between two ranges
    seen = ids_of(again)
    assert len(seen) == len(set(seen)) == 56  # positions are the snapshot's: one row is pushed out
    assert 7 in seen
    assert 41 not in seen  # in no range of the snapshot: it joins the next epoch
    assert dm.bad_samples["val"]["skipped"] == 2  # and counted, not lost silently


def test_stream_threads_read_key_ranges_as_batches_are_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Db(f"sqlite:///{tmp_path}/test.db")
    name = db.table(rows(20_000))
    reads: list[int] = []
    keys = SqlSource.keys

    def counted(self: SqlSource, upto: int | None = None, since: int | None = None) -> np.ndarray:
        out = keys(self, upto, since)
        if since is not None:
            reads.append(len(out))
        return out

    monkeypatch.setattr(SqlSource, "keys", counted)
    loader = {"batch_size": 64, "backend": "threads", "num_workers": 2}
    dm = make(db, name, val_table=name, index="stream", shuffle_buffer=1024, loader=loader)  # 313 ranges
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    next(batches)
    assert len(reads) < 40  # the buffer's 16 ranges and what is in flight, not the epoch's 313
    assert len(ids_of(batches)) == 20_000 - 64


def test_an_error_in_a_streamed_result_is_named_not_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Db(f"sqlite:///{tmp_path}/test.db")
    name = db.table(rows(200_000, classes=2))
    database = Database(db.url, retry_wait=0.05)
    overflow = f"SELECT CASE WHEN id > 150000 THEN abs(-9223372036854775807 - 1) ELSE id END FROM {name} ORDER BY id"

    class Count:
        rows = 0

        def add(self, batch: pa.RecordBatch) -> None:
            self.rows += batch.num_rows

    with caplog.at_level(logging.WARNING), pytest.raises(DataError, match="failed: integer overflow"):
        database.scan(overflow, "the keys", Count)  # the error comes after 150,000 rows
    with caplog.at_level(logging.WARNING), pytest.raises(DataError, match="integer overflow"):
        database.arrow(overflow, "the keys")
    assert "retrying" not in caplog.text  # the data is wrong, not the connection
    assert database.scan(f"SELECT id FROM {name}", "the keys", Count).rows == 200_000


def test_where_clauses_cover_far_apart_keys_without_overflow() -> None:
    from chute.datasets.sql_source import _where_clauses

    assert _where_clauses('"id"', np.array([-5 * 10**18, 5 * 10**18])) == [
        '"id" IN (-5000000000000000000, 5000000000000000000)'
    ]  # not BETWEEN the two: the whole table
    many = _where_clauses('"id"', np.arange(0, 20 * 1000, 20).repeat(2) + np.tile([0, 1], 1000))
    assert len(many) == 4  # 1,000 runs of two keys: 256 a query
    assert sum(c.count("BETWEEN") for c in many) == 1000


# -- Rows arriving while a real Trainer trains ------------------------------------------------------


class Recorder(L.LightningModule):
    """Records the keys each epoch trains on and when it starts and ends; an epoch ends only once the
    writer (``committed``: its log of ``time key`` lines) has committed rows while it ran, however
    the machine schedules the writer's process (a busy one may starve it for an epoch's ~0.3 s)."""

    def __init__(self, committed: Path) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 3)
        self.committed = committed
        self.seen: dict[int, list[int]] = {}
        self.started: dict[int, float] = {}
        self.ended: dict[int, float] = {}

    def on_train_epoch_start(self) -> None:
        self.started[self.current_epoch] = time.time()

    def on_train_epoch_end(self) -> None:
        after, deadline = self.started[self.current_epoch] + 0.2, time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            float(line.split()[0]) > after for line in self.committed.read_text().splitlines()
        ):
            time.sleep(0.02)
        self.ended[self.current_epoch] = time.time()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        features, targets = batch
        self.seen.setdefault(self.current_epoch, []).extend(features[:, 0].round().long().tolist())
        time.sleep(0.02)  # a step long enough for the writer to commit rows during the epoch
        return nn.functional.cross_entropy(self.layer(features[:, :1] * 0), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def write_rows(url: str, table: str, log: str, stop: Any) -> None:
    """The writer: commits 5 rows at a time (keys continuing the table's) and logs ``time key`` after each commit."""
    key = 200
    with open(log, "a") as out:
        while not stop.is_set():
            ingest(rows(5, start=key), url, table, if_exists="append")
            out.write(f"{time.time()} {key + 4}\n")
            out.flush()
            key += 5
            time.sleep(0.03)


@pytest.mark.parametrize(
    ("workers", "index"),
    [(0, "memory"), (0, "stream"), pytest.param(2, "memory", marks=pytest.mark.slow),
     pytest.param(2, "stream", marks=pytest.mark.slow)],
)  # fmt: skip
def test_rows_inserted_during_an_epoch_join_the_next_one(db: Db, workers: int, index: str, tmp_path: Path) -> None:
    import multiprocessing

    name = db.table(rows(200))
    # A process of its own, as a real writer is (forking DataLoader workers while a thread of this process
    # is inside the database driver could copy a held lock into them).
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    log = tmp_path / "committed.txt"
    writer = context.Process(target=write_rows, args=(db.url, name, str(log), stop), daemon=True)
    dm = make(db, name, val_table=name, loader={"batch_size": 16, "num_workers": workers}, index=index)
    model = Recorder(log)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    writer.start()
    try:
        while not log.exists():  # the writer is up
            time.sleep(0.05)
        trainer.fit(model, datamodule=dm)
    finally:
        stop.set()
        writer.join(timeout=30)
    committed = [(float(t), int(k)) for t, k in (line.split() for line in log.read_text().splitlines())]
    assert trainer.reload_dataloaders_every_n_epochs == 1
    sizes = []
    for epoch in range(3):
        seen = model.seen[epoch]
        assert len(seen) == len(set(seen)), f"epoch {epoch} repeated rows"
        assert sorted(seen) == list(range(max(seen) + 1)), f"epoch {epoch} is not a snapshot of committed rows"
        before = [k for t, k in committed if t < model.started[epoch] - 0.5]
        assert not before or max(seen) >= max(before), f"epoch {epoch} missed rows committed before it began"
        during = [k for t, k in committed if model.started[epoch] + 0.2 < t < model.ended[epoch]]
        assert during, f"the writer committed nothing while epoch {epoch} ran"
        assert max(seen) < min(during), f"epoch {epoch} read rows committed while it ran"
        sizes.append(len(seen))
    assert sizes[0] < sizes[1] < sizes[2]


# -- Failures --------------------------------------------------------------------------------------


def test_a_null_or_a_wrongly_typed_value_names_table_key_and_column(db: Db) -> None:
    data = rows(40)
    x = data.column("x").to_pylist()
    x[17] = None
    name = db.table(data.set_column(1, "x", pa.array(x)))
    dm = make(db, name, val_table=name)
    with pytest.raises(DataError, match=rf"'x'.*'{name}', key 17"):
        dm.setup("fit")
    dm = make(db, name, val_table=name, missing="mean")
    dm.setup("fit")  # imputed
    db.execute(f"UPDATE {name} SET label = NULL WHERE id = 23")
    with pytest.raises(DataError, match=rf"'label' is missing at '{name}', key 23"):
        list(dm.val_dataloader())


def test_text_in_a_number_column_of_sqlite_names_its_key(tmp_path: Path) -> None:
    db = Db(f"sqlite:///{tmp_path}/test.db")
    name = db.table(rows(3000))
    dm = make(db, name, val_table=name, loader={"batch_size": 4096})
    dm.setup("fit")
    db.execute(f"UPDATE {name} SET x = 'n/a' WHERE id = 2500")
    with pytest.raises(DataError, match=rf"'x' is numeric but holds 'n/a' at '{name}', key 2500"):
        list(dm.val_dataloader())
    skipping = make(db, name, val_table=name, loader={"batch_size": 4096}, on_error="skip")
    skipping.setup("fit")
    seen = ids_of(skipping.val_dataloader())
    assert seen == [i for i in range(3000) if i != 2500]  # the other rows exactly, not rounded through text
    assert skipping.bad_samples["val"]["skipped"] == 1


def test_rows_beside_a_bad_value_keep_their_exact_values_under_skip(tmp_path: Path) -> None:
    db = Db(f"sqlite:///{tmp_path}/test.db")
    data = rows(300)
    name = db.table(data.set_column(1, "x", pa.array(1_000_000.5 + np.arange(300))))
    dm = make(db, name, val_table=name, on_error="skip", loader={"batch_size": 512})
    dm.setup("fit")
    db.execute(f"UPDATE {name} SET x = 'n/a' WHERE id = 7")
    features, _ = next(iter(dm.val_dataloader()))
    expected = np.delete(1_000_000.5 + np.arange(300), 7).astype(np.float32)
    assert features[:, 0].numpy().tolist() == expected.tolist()  # not 7 digits (1.000018e+06) through text


def test_under_skip_a_blank_number_is_missing_as_when_it_is_encoded(tmp_path: Path) -> None:
    db = Db(f"sqlite:///{tmp_path}/test.db")
    name = db.table(rows(30))
    db.execute(f"UPDATE {name} SET x = '' WHERE id = 5")  # blank text: imputed, as Split.floats reads it
    db.execute(f"UPDATE {name} SET x = 'n/a' WHERE id = 6")  # not a number: left out
    dm = make(db, name, val_table=name, on_error="skip", missing="mean")
    dm.setup("fit")
    assert dm._fit_labels is not None
    assert len(dm._fit_labels) == 29  # all but 'n/a'


def test_a_bad_value_in_a_large_table_is_named_when_the_encoding_is_fitted(tmp_path: Path) -> None:
    db = Db(f"sqlite:///{tmp_path}/test.db")
    name = db.table(rows(70_000))
    db.execute(f"UPDATE {name} SET x = 'n/a' WHERE id = 69000")  # in the second chunk the fit reads
    with pytest.raises(DataError, match=rf"'x' is numeric but holds 'n/a' at '{name}', key 69000"):
        make(db, name, val_table=name).setup("fit")


def test_on_error_skip_leaves_bad_and_deleted_rows_out_and_counts_them(db: Db) -> None:
    name = db.table(rows(60))
    dm = make(db, name, val_table=name, on_error="skip", max_bad_fraction=0.5)
    dm.setup("fit")
    loader = dm.val_dataloader()
    len(loader)  # the snapshot is read
    db.execute(f"UPDATE {name} SET label = 'c9' WHERE id = 5")  # a class training did not see
    db.execute(f"DELETE FROM {name} WHERE id = 40")  # gone after the snapshot
    assert ids_of(loader) == [i for i in range(60) if i not in (5, 40)]
    summary = dm.bad_samples["val"]
    assert summary["skipped"] == 2
    assert any("key 40" in f for f in summary["first"])
    strict = make(db, name, val_table=name)
    strict.setup("fit")
    strict_loader = strict.val_dataloader()
    len(strict_loader)
    db.execute(f"DELETE FROM {name} WHERE id = 41")
    with pytest.raises(DataError, match=r"Row 41 of the table .* is gone"):
        list(strict_loader)


def test_a_dropped_connection_is_retried_and_a_lost_server_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("adbc_driver_postgresql")
    from tests.postgres import TemporaryPostgres, postgres_bin

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    with TemporaryPostgres() as server:
        url = server.url.replace("postgres@", "postgres:hunter2@")  # trusted locally: the password is unused
        ingest(rows(300), url, "readings")
        dm = make(Db(url), "readings", val_table="readings", retry_wait=0.05)
        dm.setup("fit")
        loader = dm.val_dataloader()
        batches = iter(loader)
        seen = ids_of([next(batches)])
        server.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'postgres' "
                       "AND pid <> pg_backend_pid() AND datname = 'chute'")  # fmt: skip
        with caplog.at_level(logging.WARNING):
            seen += ids_of(batches)
        assert seen == list(range(300))
        assert "retrying" in caplog.text
        server.stop()
        with pytest.raises(DataError) as caught:
            list(dm.val_dataloader())
    message = str(caught.value)
    assert "Lost the connection to postgresql://postgres:***@" in message
    assert "3 retries" in message
    assert "hunter2" not in message
    assert "hunter2" not in caplog.text
    assert "hunter2" not in str(dm.hparams)
    assert dm.hparams["url"].startswith("postgresql://postgres:***@")


def test_credentials_are_redacted_everywhere_a_url_is_shown() -> None:
    import pickle

    assert redact("postgresql://ana:s3cret@db:5432/lab") == "postgresql://ana:***@db:5432/lab"
    assert redact("sqlite:////abs/path.db") == "sqlite:////abs/path.db"
    assert "s3cret" not in redact("postgresql://ana@db/lab?sslpassword=s3cret")
    database = Database("postgresql://ana:s3cret@db/lab?password=s3cret")
    assert "s3cret" not in database.safe_url
    assert "s3cret" not in repr(database)
    assert "s3cret" not in repr(SqlSource(database, "readings"))
    with pytest.raises(ConfigError) as caught:  # a libpq key=value string is not a URL, and stays secret
        Database("host=db password=s3cret")
    assert "s3cret" not in str(caught.value)
    error = pickle.loads(pickle.dumps(caught.value))  # what rank 0 broadcasts to the other ranks
    assert type(error) is ConfigError
    assert str(error) == str(caught.value)
    assert "s3cret" not in database.scrub("failed for postgresql://ana:s3cret@db/lab?password=s3cret: s3cret")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "mysql://x/y"}, r"url='mysql://x/y': must start with sqlite:/// .* or postgresql://"),
        ({"table": "t; DROP TABLE t"}, r"table='t; DROP TABLE t': is not a plain table"),
        ({"key": "label"}, r"target='label': is also the key"),
        ({"snapshot": "never"}, r"snapshot='never'"),
        (
            {"imbalance": {"strategy": "weighted_sampler"}},
            r"imbalance.strategy='weighted_sampler': draws rows by label",
        ),
        ({"val_fraction": 1.5}, r"val_fraction=1.5"),
    ],
)
def test_configuration_mistakes_name_the_key(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    args = {"url": f"sqlite:///{tmp_path}/x.db", "table": "t", "target": "label", **kwargs}
    with pytest.raises(ConfigError, match=match):
        SqlDataModule(**args)


def test_data_mistakes_name_the_table_and_key(db: Db) -> None:
    name = db.table(rows(10))
    with pytest.raises(DataError, match=r"nope"):
        make(db, "nope").setup("fit")
    with pytest.raises(ConfigError, match=r"key='color': must be an integer column"):
        make(db, name, key="color").setup("fit")
    db.table(pa.table({"k": [1, 2, 2], "x": [1.0, 2.0, 3.0], "label": ["a", "b", "a"]}), name=f"{name}_dup")
    with pytest.raises(DataError, match=r"not unique: key 2 appears more than once"):
        make(db, f"{name}_dup", key="k").setup("fit")


# -- Loading files into tables ---------------------------------------------------------------------


def test_a_csv_or_parquet_file_loads_into_a_table_and_appends_continue_its_keys(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy
    import sys

    import pyarrow.parquet as pq

    from tests.conftest import REPO

    data = rows(25).drop_columns(["id"])
    pq.write_table(data, tmp_path / "rows.parquet")
    import pyarrow.csv as pacsv

    pacsv.write_csv(data, tmp_path / "rows.csv")
    name = f"t_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(sys, "argv", ["load_table.py", str(tmp_path / "rows.csv"), db.url, name])
    runpy.run_path(str(REPO / "scripts" / "load_table.py"), run_name="__main__")
    assert f"25 rows of '{tmp_path / 'rows.csv'}' written to table '{name}'" in capsys.readouterr().out
    assert load_table(str(tmp_path / "rows.parquet"), db.url, name, if_exists="append") == 25
    keys = SqlSource(Database(db.url), name).keys()
    assert keys.tolist() == list(range(1, 51))
    with pytest.raises(DataError, match=name):
        load_table(str(tmp_path / "rows.csv"), db.url, name)  # exists: if_exists=fail
    schema = "main" if db.server is None else "public"
    qualified = f"{schema}.{name}_q"
    assert load_table(str(tmp_path / "rows.parquet"), db.url, qualified) == 25
    assert SqlSource(Database(db.url), qualified).keys().tolist() == list(range(1, 26))


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
def test_overfit_batches_replays_the_first_batches_and_keeps_the_snapshot_in_the_position(tmp_path: Path) -> None:
    """Under ``overfit_batches`` the order is wrapped (Lightning must not re-make the loader); the
    wrapper is still an order of changing data, so the position records which rows the epoch read
    (a protocol check does not see methods forwarded by ``__getattr__`` from Python 3.12 on)."""
    from tests.helpers import RecordRows, overfit_rows

    db = Db(f"sqlite:///{tmp_path}/test.db")
    dm = make(db, db.table(rows(64)), val_table=None, seed=2)
    dm.setup("fit")
    seen = overfit_rows(dm, RecordRows(dm.model_kwargs["num_features"], 3))
    assert seen[0] == seen[1] == seen[2]
    assert len(seen[0]) == 16
    assert "snapshot" in dm.state_dict()["train_loader"]
