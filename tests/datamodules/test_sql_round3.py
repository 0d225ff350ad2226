"""SqlDataModule and the SQL inputs of issue 26: every digit of SQLite's untyped columns, column names
checked against the source before any read, one rule for BLOB columns, driver batches sized by width."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from chute.datamodules import SqlDataModule
from chute.datasets.database import Database
from chute.errors import ConfigError, DataError
from tests.conftest import REPO
from tests.datamodules import test_sql
from tests.datamodules.test_sql import Db, rows

db = test_sql.db  # the fixture: a SQLite file, or a table namespace on the session's PostgreSQL server

LOADERS = [{"num_workers": 0}, {"num_workers": 2}, {"backend": "threads", "num_workers": 2}]
LOADER_IDS = ["main", "workers", "threads"]


class Recorder(L.LightningModule):
    """Keeps the features of every training and validation batch it is given."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.layer = nn.Linear(num_features, num_classes)
        self.train_features: list[torch.Tensor] = []
        self.val_features: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        features, targets = batch
        self.train_features.append(features.clone())
        return nn.functional.cross_entropy(self.layer(features), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_features.append(batch[0].clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(dm: SqlDataModule) -> Recorder:
    """One epoch of a real CPU Trainer (with its validation pass); returns what the model was given."""
    dm.setup("fit")
    model = Recorder(dm.num_features, dm.num_classes)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return model


def first_val_batch(dm: SqlDataModule) -> Any:
    dm.setup("fit")
    return next(iter(dm.val_dataloader()))


def sqlite_file(tmp_path: Path, sql: str, values: list[tuple[Any, ...]]) -> str:
    """A SQLite file made with Python's ``sqlite3`` (values bound exactly, each keeping its own type); its URL."""
    path = tmp_path / "data.db"
    with sqlite3.connect(path) as connection:
        connection.execute(sql)
        table = sql.split()[2]
        connection.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(values[0]))})", values)
    return f"sqlite:///{path}"


# -- 1. SQLite: a column without a type, REAL values and one numeric TEXT cell -----------------------


@pytest.mark.parametrize("loader", LOADERS, ids=LOADER_IDS)
def test_an_untyped_sqlite_column_with_a_text_cell_arrives_with_every_digit(
    tmp_path: Path, loader: dict[str, Any]
) -> None:
    n = 40
    values = np.array([float(f"1.{k:07d}") for k in range(n)])  # 1 + k * 1e-7: equal to 7 digits
    cells = [f"1.{k:07d}" if k == 7 else float(values[k]) for k in range(n)]  # one valid TEXT cell
    url = sqlite_file(tmp_path, "CREATE TABLE mixed (id INTEGER PRIMARY KEY, x, label TEXT)",
                      [(k, cells[k], "ab"[k % 2]) for k in range(n)])  # fmt: skip
    dm = SqlDataModule(url, table="mixed", val_table="mixed", target="label", numeric=["x"],
                       loader={"batch_size": 8, **loader})  # fmt: skip
    model = fit(dm)
    assert dm.encoding is not None
    state = dm.encoding.encoder.state_dict()
    assert state["mean"][0] == pytest.approx(values.mean(), rel=0, abs=1e-15)
    assert state["std"][0] == pytest.approx(values.std(), rel=1e-9)  # 7 digits: off by up to 0.67 std
    expected = ((values - state["mean"][0]) / state["std"][0]).astype(np.float32)
    assert len(set(expected.tolist())) == n
    trained = torch.cat(model.train_features)[:, 0].numpy()
    assert sorted(trained.tolist()) == sorted(expected.tolist())  # every row once, each value exact
    assert torch.cat(model.val_features)[:, 0].numpy().tolist() == expected.tolist()  # key order


@pytest.mark.parametrize("loader", LOADERS, ids=LOADER_IDS)
def test_an_untyped_category_column_mixing_reals_and_text_reads_one_way(tmp_path: Path, loader: dict[str, Any]) -> None:
    """The categories fitted from the whole column (text: it holds 'n/a') are the texts the batches
    read, where the driver gives a batch without the text cell as numbers: 1.0 is '1' in both."""
    n = 40
    values = [(k, float(k), "n/a" if k == 1 else float(1 + k % 2), "ab"[k % 2]) for k in range(n)]
    url = sqlite_file(tmp_path, "CREATE TABLE m (id INTEGER PRIMARY KEY, x REAL, code, label TEXT)", values)
    dm = SqlDataModule(url, table="m", target="label", numeric=["x"], categorical=["code"],
                       loader={"batch_size": 8, **loader})  # fmt: skip
    model = fit(dm)
    assert dm.feature_names == ["x", "code=1", "code=2", "code=n/a"]
    codes = torch.cat(model.train_features + model.val_features)[:, 1:]
    assert len(codes) == n
    assert codes.sum(1).tolist() == [1.0] * n  # every row one known category (none all zeros)
    assert codes.sum(0).tolist() == [20.0, 19.0, 1.0]


# -- 2. Column names: checked against the source before any read -------------------------------------


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"target": "lable"}, r"target='lable': is not a column of the .*; the closest: 'label'"),
        ({"key": "idx"}, r"key='idx': is not a column of the .*; the closest: 'id'"),
        ({"numeric": ["x", "colour"]}, r"numeric='colour': is not a column .*; the closest: 'color'"),
        ({"categorical": ["Color"]}, r"categorical='Color': is not a column .*; the closest: 'color'"),
        ({"target": "lable", "numeric": None}, r"target='lable': .*the closest: 'label'"),
    ],
    ids=["target", "key", "numeric", "categorical", "inferred"],
)
def test_an_unknown_column_is_named_with_its_setting_and_the_closest_before_any_read(
    db: Db, setting: dict[str, Any], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = db.table(rows(30))
    read: list[str] = []
    arrow, exact = Database.arrow, Database.exact
    monkeypatch.setattr(Database, "arrow", lambda self, sql, what: read.append(sql) or arrow(self, sql, what))
    monkeypatch.setattr(Database, "exact", lambda self, sql, what: read.append(sql) or exact(self, sql, what))
    args: dict[str, Any] = {"target": "label", "numeric": ["x"], **setting}
    for table in (name, f"SELECT id, x, color, label FROM {name}"):
        with pytest.raises(ConfigError, match=match):
            SqlDataModule(db.url, table=table, **args).setup("fit")
    assert read == []  # SQLite would have read "lable" as the text 'lable' in every row


@pytest.mark.parametrize("loader", LOADERS, ids=LOADER_IDS)
def test_mixed_case_and_spaced_column_names_are_read_as_given(db: Db, loader: dict[str, Any]) -> None:
    ids = np.arange(40)
    colours = [("red", "blue")[i % 2] for i in ids]
    labels = [f"c{i % 3}" for i in ids]
    name = db.table(pa.table({"id": ids, "Body mass": ids * 1.0, "Colour name": colours, "Label": labels}))
    settings = {"target": "Label", "numeric": ["Body mass"], "categorical": ["Colour name"], "standardize": False}
    dm = SqlDataModule(db.url, table=name, val_fraction=0.25, loader={"batch_size": 8, **loader}, **settings)
    model = fit(dm)
    assert dm.feature_names == ["Body mass", "Colour name=blue", "Colour name=red"]
    assert dm.class_names == ("c0", "c1", "c2")
    trained = sorted(int(i) for i in torch.cat(model.train_features)[:, 0])
    validated = [int(i) for i in torch.cat(model.val_features)[:, 0]]
    assert sorted(trained + validated) == ids.tolist()  # each row once, split by the hold-out
    assert validated == sorted(validated)
    assert 0 < len(validated) < 20
    with pytest.raises(ConfigError, match=r"target='label': is not a column .*; the closest: 'Label'"):
        SqlDataModule(db.url, table=name, **{**settings, "target": "label"}).setup("fit")


# -- 3. BLOB columns: not features, whatever their bytes ---------------------------------------------


def blob_table(n: int = 30) -> pa.Table:
    """Rows with a binary BLOB (not UTF-8) and a BLOB of UTF-8 text beside a number and a label."""
    return (
        rows(n)
        .append_column("raw", pa.array([bytes([0xFF, 0xFE, i]) for i in range(n)], pa.binary()))
        .append_column("note", pa.array([f"héllo {i}".encode() for i in range(n)], pa.binary()))
    )


def test_blob_columns_are_left_out_of_inferred_features_and_said_once(db: Db, caplog: pytest.LogCaptureFixture) -> None:
    name = db.table(blob_table())
    dm = SqlDataModule(db.url, table=name, target="label", categorical=["color"], loader={"batch_size": 8})
    with caplog.at_level(logging.INFO):
        model = fit(dm)
    assert dm.feature_names == ["x", "color=blue", "color=green", "color=red"]
    told = [r.getMessage() for r in caplog.records if "BLOB" in r.getMessage()]
    assert len(told) == 1
    assert "['raw', 'note']" in told[0]
    assert "encoding" not in told[0]
    assert sum(len(f) for f in model.train_features) + sum(len(f) for f in model.val_features) == 30


@pytest.mark.parametrize("column", ["raw", "note"])  # binary bytes, UTF-8 bytes: the same rule
@pytest.mark.parametrize("setting", ["numeric", "categorical", "target", "val_table"])
def test_a_named_blob_column_is_an_error_naming_it_and_no_setting_the_module_lacks(
    db: Db, column: str, setting: str
) -> None:
    name = db.table(blob_table())
    args: dict[str, Any] = {"target": "label", "numeric": ["x"]}
    if setting == "val_table":  # a validation table whose number column x holds the BLOBs
        blobs = blob_table().drop_columns(["x"])
        args["val_table"] = db.table(blobs.rename_columns([{column: "x"}.get(c, c) for c in blobs.column_names]))
    elif setting == "target":
        args["target"] = column
    else:
        args[setting] = [column]
    dm = SqlDataModule(db.url, table=name, loader={"batch_size": 8}, **args)
    with pytest.raises(DataError, match=r"binary values \(SQLite BLOB, PostgreSQL bytea\)") as caught:
        first_val_batch(dm)  # val_table: setup passes (the training x holds numbers), the batch does not
    message = str(caught.value)
    assert repr(column if setting != "val_table" else "x") in message
    assert "encoding" not in message  # SqlDataModule has no data.encoding to set


# -- 4. Driver batches sized by the result's width ---------------------------------------------------


def wide_fit(url: str) -> None:
    """Under an address-space limit of what the imports mapped plus 3 GB: a Trainer fit on a 20-row,
    2,000-column table with each loader (run in a subprocess by the test below)."""
    import resource

    status = Path("/proc/self/status").read_text().splitlines()
    mapped = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) * 1024
    limit = mapped + (3 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for loader in LOADERS:
        dm = SqlDataModule(url, table="wide", target="label", val_table="wide", loader={"batch_size": 8, **loader})
        model = fit(dm)
        assert sum(len(f) for f in model.train_features) == 20
        print("read", dm.num_features, dm.database.batch_rows, flush=True)


def test_a_wide_table_is_read_under_a_memory_limit(tmp_path: Path) -> None:
    columns = ", ".join(f"f{i} REAL" for i in range(1998))  # with id and label: SQLite's limit of 2,000
    url = sqlite_file(tmp_path, f"CREATE TABLE wide (id INTEGER PRIMARY KEY, {columns}, label TEXT)",
                      [(k, *(float(k + i) for i in range(1998)), "ab"[k % 2]) for k in range(20)])  # fmt: skip
    code = f"from tests.datamodules.test_sql_round3 import wide_fit; wide_fit({url!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    # Before: the driver asked for 1,000,000-row batches of 2,000 columns (12-20 GB) and crashed (SIGSEGV).
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    read = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("read ")]
    assert read == [["1998", str((64 << 20) // (8 * 2001))]] * 3  # about 64 MB of 8-byte cells a batch
