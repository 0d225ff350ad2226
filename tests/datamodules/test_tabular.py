"""TabularDataModule: column spec, train-only fitting, batched fetch, and errors that name file/row/column."""

from __future__ import annotations

import gzip
import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from chute.datamodules import TabularDataModule
from chute.datasets import SklearnTable, TabularDataset, write_table
from chute.errors import ConfigError, DataError
from tests.datamodules.contract import check_datamodule
from tests.helpers import assert_mentions


def write_csv(path: Path, text: str) -> str:
    path.write_text(text.strip() + "\n")
    return str(path)


@pytest.fixture(scope="module")
def cancer_csv(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(SklearnTable("breast_cancer")(tmp_path_factory.mktemp("cancer") / "breast_cancer.csv"))


def small_table(n: int = 40, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "x": rng.normal(5.0, 2.0, n),
            "count": rng.integers(0, 10, n),
            "color": rng.choice(["red", "green", "blue"], n),
            "note": ["free text"] * n,
            "w": rng.uniform(0.5, 2.0, n),
            "label": rng.choice(["no", "yes"], n),
        }
    )


def test_contract_on_bundled_breast_cancer(cancer_csv: str) -> None:
    def make() -> TabularDataModule:
        return TabularDataModule(cancer_csv, target="diagnosis", loader={"batch_size": 32})

    dm = check_datamodule(make, batch_size=32, cpu_dtype=torch.float32)
    assert dm.num_features == 30
    assert dm.class_names == ("benign", "malignant")
    assert dm.class_counts.sum() == len(dm.dataset("train")) == 569 - len(dm.dataset("val"))
    assert dm.model_kwargs == {"num_features": 30, "num_classes": 2, "task": "classification"}


def test_validation_split_is_stratified_and_seeded(cancer_csv: str) -> None:
    def split(seed: int) -> tuple[np.ndarray, float]:
        dm = TabularDataModule(cancer_csv, target="diagnosis", val_fraction=0.25, seed=seed)
        dm.setup("fit")
        val = dm.dataset("val").targets.numpy()
        return dm.dataset("val").features.numpy(), float(val.mean())

    a, share = split(0)
    b, _ = split(0)
    c, _ = split(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert share == pytest.approx(212 / 569, abs=0.01)  # malignant share of the whole file


def test_statistics_and_vocabulary_come_from_the_training_split_only(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "x,color,label\n1,red,a\n3,red,b\n5,green,a\n7,green,b")
    val = write_csv(tmp_path / "val.csv", "x,color,label\n1000,red,a\n-1000,green,b")
    dm = TabularDataModule(train, val_path=val, target="label", categorical=["color"])
    dm.setup("fit")
    encoder = dm.encoder
    assert encoder is not None
    assert encoder.mean == [4.0]
    assert encoder.std == pytest.approx([np.std([1, 3, 5, 7])])
    assert encoder.vocab == {"color": ["green", "red"]}
    assert dm.feature_names == ["x", "color=green", "color=red"]
    features = dm.dataset("val").features
    assert features[0].tolist() == pytest.approx([(1000 - 4) / np.std([1, 3, 5, 7]), 0.0, 1.0])


def test_numeric_columns_are_inferred_and_other_columns_ignored(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_table(small_table(), path)
    dm = TabularDataModule(str(path), target="label", categorical=["color"], weight="w")
    dm.setup("fit")
    assert dm.feature_names[:2] == ["x", "count"]  # "note" (text) and "w" (weight) are not features
    assert not any(name.startswith("note") for name in dm.feature_names)
    _, targets, weights = next(iter(dm.train_dataloader()))
    assert weights.dtype == torch.float32
    assert len(weights) == len(targets)


def test_csv_and_parquet_give_the_same_batches(tmp_path: Path) -> None:
    table = small_table()
    write_table(table, tmp_path / "t.csv")
    pq.write_table(table, tmp_path / "t.parquet")
    batches = []
    for name in ("t.csv", "t.parquet"):
        dm = TabularDataModule(str(tmp_path / name), target="label", numeric=["x", "count"], categorical=["color"])
        dm.setup("fit")
        batches.append(next(iter(dm.val_dataloader())))
    torch.testing.assert_close(batches[0][0], batches[1][0])
    assert torch.equal(batches[0][1], batches[1][1])


def test_loader_fetches_whole_batches_through_getitems(cancer_csv: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = TabularDataset.__getitems__

    def spy(self: TabularDataset, indices: Any) -> Any:
        calls.append(len(indices))
        return original(self, indices)

    monkeypatch.setattr(TabularDataset, "__getitems__", spy)
    monkeypatch.setattr(TabularDataset, "__getitem__", lambda self, i: pytest.fail("per-row fetch"))
    dm = TabularDataModule(cancer_csv, target="diagnosis", loader={"batch_size": 100, "shuffle": False})
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert calls == [len(b[1]) for b in batches]
    assert sum(calls) == len(dm.dataset("train"))
    torch.testing.assert_close(batches[0][0], dm.dataset("train").features[:100])


def test_state_dict_reproduces_the_encoding_on_new_data(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "x,color,label\n1,red,a\n3,blue,b\n5,green,a\n9,red,b")
    other = write_csv(tmp_path / "other.csv", "x,color,label\n100,red,b\n200,red,a\n300,blue,a\n400,green,b")
    dm = TabularDataModule(train, val_path=train, target="label", categorical=["color"])
    dm.setup("fit")
    state = dm.state_dict()
    # Same encoder on a different training file: statistics must come from the checkpoint, not the file.
    restored = TabularDataModule(other, val_path=train, target="label", categorical=["color"])
    restored.load_state_dict(state)
    restored.setup("fit")
    torch.testing.assert_close(restored.dataset("val").features, dm.dataset("val").features)
    assert restored.state_dict() == state


def test_regression_targets_are_floats(tmp_path: Path) -> None:
    path = tmp_path / "diabetes.csv"
    SklearnTable("diabetes")(path)
    dm = TabularDataModule(str(path), target="progression", task="regression", categorical=["sex"])
    dm.setup("fit")
    _, targets = next(iter(dm.train_dataloader()))
    assert targets.dtype == torch.float32
    assert dm.num_classes == 0
    assert {"sex=1", "sex=2"} <= set(dm.feature_names)


@pytest.mark.parametrize("strategy", ["mean", "median", "constant"])
def test_missing_values_are_imputed_with_training_statistics(tmp_path: Path, strategy: str) -> None:
    path = write_csv(tmp_path / "t.csv", "x,c,label\n1,red,a\n,red,b\n3,,a\n8,blue,b")
    dm = TabularDataModule(
        path, val_path=path, target="label", categorical=["c"], missing=strategy, fill_value=-1, standardize=False
    )
    dm.setup("fit")
    fill = {"mean": 4.0, "median": 3.0, "constant": -1.0}[strategy]
    assert dm.dataset("val").features[1, 0].item() == fill
    assert "c=<missing>" in dm.feature_names


def test_a_missing_category_only_in_a_later_split_is_imputed_not_unknown(tmp_path: Path) -> None:
    """With imputation on, a category missing in the validation rows but never in training was
    "category None ... that the training split does not have", the advice to impute (followed)
    leading to that error. It is all zeros there, as the training split had no ``<missing>``."""
    train = write_csv(tmp_path / "t.csv", "x,c,label\n1,red,a\n2,red,b\n3,blue,a\n8,blue,b")
    val = write_csv(tmp_path / "v.csv", "x,c,label\n1,,a\n2,blue,b")
    with pytest.raises(DataError, match=r"Column 'c' has 1 missing values .*Set missing to"):
        TabularDataModule(train, val_path=str(val), target="label", categorical=["c"]).setup("fit")
    dm = TabularDataModule(train, val_path=str(val), target="label", categorical=["c"], missing="mean")
    dm.setup("fit")
    assert dm.feature_names == ["x", "c=blue", "c=red"]
    features, _ = dm.dataset("val").__getitems__([0, 1])
    assert features[:, 1:].tolist() == [[0.0, 0.0], [1.0, 0.0]]
    unseen = write_csv(tmp_path / "u.csv", "x,c,label\n1,green,a")  # an unknown category is still one
    with pytest.raises(DataError, match=r"Column 'c' has category 'green' .* the training split does not have"):
        TabularDataModule(train, val_path=str(unseen), target="label", categorical=["c"], missing="mean").setup("fit")


# -- Bad input: each error names what and where ----------------------------------------------------


def error_of(path: str, **kwargs: Any) -> str:
    dm = TabularDataModule(path, **{"target": "label", **kwargs})
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    return str(info.value)


def test_missing_column_is_named_with_the_columns_present(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "x,label\n1,a\n2,b\n3,a\n4,b")
    message = error_of(path, numeric=["x", "y"])
    assert_mentions(message, "'y'", "t.csv", "['x', 'label']")


def test_non_numeric_value_names_column_row_and_value(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "x,label\n1,a\n2,b\n3,a\nabc,b\n5,a")
    message = error_of(path, numeric=["x"], val_path=path)
    assert_mentions(message, "'x'", "'abc'", "row 4", "t.csv")


def test_unseen_category_at_validation_names_value_file_and_row(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "c,label\nred,a\nblue,b\nred,b")
    val = write_csv(tmp_path / "val.csv", "c,label\nred,a\npurple,b")
    message = error_of(train, numeric=[], categorical=["c"], val_path=val)
    assert_mentions(message, "'purple'", "val.csv", "row 2", "unknown_category")
    dm = TabularDataModule(
        train, target="label", numeric=[], categorical=["c"], val_path=val, unknown_category="ignore"
    )
    dm.setup("fit")
    assert dm.dataset("val").features[1].tolist() == [0.0, 0.0]


def test_empty_and_header_only_files_are_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_mentions(error_of(str(empty)), "empty.csv", "is empty")
    header = write_csv(tmp_path / "header.csv", "x,label")
    assert "no data rows" in error_of(header)


def test_missing_values_raise_by_default_naming_column_and_count(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "x,label\n1,a\n,b\n3,a\n,b\n5,a")
    message = error_of(path, val_path=path)
    assert_mentions(message, "'x'", "2 missing values", "row 2", "missing")


def test_missing_target_and_wrong_row_length_are_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "x,label\n1,a\n2,\n3,b")
    assert "Target column 'label' is missing" in error_of(path, val_path=path)
    ragged = write_csv(tmp_path / "ragged.csv", "x,label\n1,a\n2,b,7\n3,b")
    assert "ragged.csv" in error_of(ragged)


def test_negative_weights_are_rejected(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "x,w,label\n1,1,a\n2,-1,b\n3,1,a")
    assert "'w' is negative" in error_of(path, weight="w", val_path=path)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"task": "ranking"}, "task"),
        ({"missing": "drop"}, "missing"),
        ({"unknown_category": "keep"}, "unknown_category"),
        ({"numeric": ["label"]}, "target"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"collate_fn": "no.such.module.fn"}, "collate_fn"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        TabularDataModule("unused.csv", **{"target": "label", **kwargs})
    assert info.value.key == key


# -- Real-world inputs (issue 13.6): each refused naming file, row and column, or read right ---------


def _rows(n: int = 12) -> list[str]:
    return [f"{i},{i * 0.5},c{i % 2}" for i in range(n)]


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity"])
def test_an_infinite_feature_is_refused_naming_row_and_column(tmp_path: Path, cell: str) -> None:
    rows = _rows()
    rows[4] = f"4,{cell},c0"
    path = write_csv(tmp_path / "t.csv", "id,x,label\n" + "\n".join(rows))
    dm = TabularDataModule(path, target="label", numeric=["id", "x"], val_path=path)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    assert_mentions(str(info.value), "'x'", "row 5", "t.csv", "inf")


@pytest.mark.parametrize("numeric", [None, ["id", "x"]])
def test_a_text_cell_in_a_numeric_column_is_an_error_naming_the_row(tmp_path: Path, numeric: Any) -> None:
    """With numeric=None the column is not silently dropped from the features."""
    rows = _rows()
    rows[7] = "7,n/a?,c1"
    path = write_csv(tmp_path / "t.csv", "id,x,label\n" + "\n".join(rows))
    dm = TabularDataModule(path, target="label", numeric=numeric, val_path=path)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    assert_mentions(str(info.value), "'x'", "row 8", "n/a?")


def test_a_text_column_is_still_left_out_with_numeric_none(tmp_path: Path) -> None:
    rows = [f"{i},{i * 0.5},word{i},c{i % 2}" for i in range(12)]
    path = write_csv(tmp_path / "t.csv", "id,x,note,label\n" + "\n".join(rows))
    dm = TabularDataModule(path, target="label", val_path=path)
    dm.setup("fit")
    assert dm.feature_names == ["id", "x"]


def test_a_field_of_megabytes_reads(tmp_path: Path) -> None:
    big = "y" * 3_000_000  # over pyarrow's 1 MB read block
    rows = [f'{i},{i * 0.5},"{big if i == 3 else "short"}",c{i % 2}' for i in range(12)]
    path = write_csv(tmp_path / "t.csv", "id,x,note,label\n" + "\n".join(rows))
    dm = TabularDataModule(path, target="label", numeric=["id", "x"], val_path=path)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 12


def test_a_latin1_file_reads_with_its_encoding_and_is_refused_without(tmp_path: Path) -> None:
    rows = [f"{i},{i * 0.5},{'Genève' if i % 2 else 'Zürich'}" for i in range(12)]
    path = tmp_path / "t.csv"
    path.write_bytes(("id,x,city\n" + "\n".join(rows) + "\n").encode("latin-1"))
    dm = TabularDataModule(str(path), target="city", numeric=["id", "x"], val_path=str(path), encoding="latin-1")
    dm.setup("fit")
    assert dm.class_names == ("Genève", "Zürich")
    wrong = TabularDataModule(str(path), target="city", numeric=["id", "x"], val_path=str(path))
    with pytest.raises(DataError) as info:
        wrong.setup("fit")
    assert_mentions(str(info.value), "'city'", "row 1", "not UTF-8", "data.encoding=latin-1")
    with pytest.raises(ConfigError, match="encoding"):
        TabularDataModule(str(path), target="city", encoding="no-such-codec")


def test_duplicate_column_names_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "id,x,x,label\n" + "\n".join(f"{i},1,2,c{i % 2}" for i in range(12)))
    dm = TabularDataModule(path, target="label", val_path=path)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    assert_mentions(str(info.value), "t.csv", "duplicate column names", "'x'")


@pytest.mark.parametrize("separate_val", [False, True])
@pytest.mark.parametrize("cell", ["", "nan", "NA", "null"])  # in a column of class ids: missing
def test_a_missing_label_gives_the_same_error_with_or_without_a_val_file(
    tmp_path: Path, separate_val: bool, cell: str
) -> None:
    rows = [f"{i},{i * 0.5},{i % 2}" for i in range(12)]
    rows[5] = f"5,2.5,{cell}"
    path = write_csv(tmp_path / "t.csv", "id,x,label\n" + "\n".join(rows))
    clean = write_csv(tmp_path / "v.csv", "id,x,label\n" + "\n".join(f"{i},{i * 0.5},{i % 2}" for i in range(12)))
    dm = TabularDataModule(path, target="label", numeric=["id", "x"], val_path=clean if separate_val else None)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    assert_mentions(str(info.value), "Target column 'label' is missing", "t.csv", "row 6")


def test_a_table_with_a_conventional_target_column_needs_only_its_path(tmp_path) -> None:
    """``TabularDataModule(path)``: the target is the column named target, label, class or y."""
    rng = np.random.default_rng(0)
    rows = 40
    csv = tmp_path / "t.csv"
    lines = ["a,b,Label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{'yes' if i % 2 else 'no'}" for i in range(rows)]
    csv.write_text("\n".join(lines) + "\n")
    dm = TabularDataModule(csv, loader={"batch_size": 8})
    dm.setup("fit")
    assert dm.target == "Label"
    assert dm.class_names == ("no", "yes")
    assert dm.num_features == 2
    features, targets = next(iter(dm.train_dataloader()))
    assert tuple(features.shape) == (8, 2)
    assert targets.dtype == torch.int64

    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": rng.normal(size=rows), "y": rng.integers(0, 3, rows)}), parquet)
    from_parquet = TabularDataModule(parquet)
    from_parquet.setup("fit")
    assert from_parquet.target == "y"
    assert from_parquet.num_features == 1

    other = tmp_path / "o.csv"
    other.write_text("a,b,outcome\n1,2,0\n3,4,1\n")
    with pytest.raises(ConfigError, match=r"target.*no column named target / label / class / y.*a, b, outcome"):
        TabularDataModule(other).setup("fit")


# -- Read the same way in every file (codes, headers, folders, Arrow's newer types) ------------------


class Recorder(L.LightningModule):
    """Keeps the features and targets of every training and validation batch it is given."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.layer = nn.Linear(num_features, 1)
        self.seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"train": [], "val": []}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen["train"].append((batch[0].clone(), batch[1].clone()))
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.seen["val"].append((batch[0].clone(), batch[1].clone()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def rows(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        features, targets = zip(*self.seen[split], strict=True)
        return torch.cat(features), torch.cat(targets)


def fit(dm: TabularDataModule) -> Recorder:
    """One epoch of a real CPU Trainer with its validation pass; what the model was given."""
    dm.setup("fit")
    model = Recorder(dm.num_features)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return model


@pytest.mark.parametrize("num_workers", [0, 2])
def test_codes_that_look_like_numbers_are_the_same_text_in_every_file(tmp_path: Path, num_workers: int) -> None:
    """A validation file whose codes are all digits keeps them as written ('007' is not 7), as the
    training file where a text code made the column text; and the other way round."""
    train = write_csv(tmp_path / "t.csv", "x,code,label\n" + "\n".join(
        f"{i},{['02134', '10001', 'UNK'][i % 3]},{['007', 'A12', '010'][i % 3]}" for i in range(30)))  # fmt: skip
    val = write_csv(tmp_path / "v.csv", "x,code,label\n" + "\n".join(
        f"{i},{['02134', '10001'][i % 2]},{['007', '010'][i % 2]}" for i in range(10)))  # fmt: skip
    dm = TabularDataModule(train, val_path=val, target="label", numeric=["x"], categorical=["code"],
                           loader={"batch_size": 4, "num_workers": num_workers})  # fmt: skip
    model = fit(dm)
    assert dm.class_names == ("007", "010", "A12")  # numbers first, by value; then text
    assert dm.feature_names == ["x", "code=02134", "code=10001", "code=UNK"]
    features, targets = model.rows("val")
    assert targets.tolist() == [[0, 1][i % 2] for i in range(10)]
    assert features[:, 1:].tolist() == [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]][i % 2] for i in range(10)]

    # The training file all digits, the validation file's codes not: still the same texts.
    digits = write_csv(tmp_path / "d.csv", "x,code,label\n" + "\n".join(
        f"{i},{['02134', '10001'][i % 2]},{['007', '010'][i % 2]}" for i in range(30)))  # fmt: skip
    mixed = write_csv(tmp_path / "m.csv", "x,code,label\n" + "\n".join(
        f"{i},{['02134', 'UNK'][i % 2]},007" for i in range(10)))  # fmt: skip
    dm = TabularDataModule(digits, val_path=mixed, target="label", numeric=["x"], categorical=["code"],
                           unknown_category="ignore", loader={"batch_size": 4})  # fmt: skip
    features, targets = fit(dm).rows("val")
    assert targets.tolist() == [0] * 10
    assert features[:, 1:].tolist() == [[[1.0, 0.0], [0.0, 0.0]][i % 2] for i in range(10)]  # UNK: unseen


@pytest.mark.parametrize("num_workers", [0, 2])
def test_words_a_csv_reader_takes_for_missing_are_text_in_categories_and_labels(
    tmp_path: Path, num_workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    """``NA`` (Namibia), ``null``, ``N/A``, ``nan`` in a category or label column are what is written
    (pyarrow's CSV reader made them missing: merged with the empty cells into ``<missing>``, a label
    "missing at row 3", or all zeros against a Parquet training file that kept them). Only an empty
    cell is missing there; in a numeric column those words are still missing values."""
    codes = ["US", "NA", "DE", "", "null", "N/A", "nan"]
    text = "x,country,label\n" + "\n".join(
        f"{'NA' if i == 5 else i},{codes[i % 7]},{['NA', 'null'][i % 2]}" for i in range(28)
    )
    path = write_csv(tmp_path / "t.csv", text)
    dm = TabularDataModule(path, val_path=path, target="label", numeric=["x"], categorical=["country"],
                           missing="mean", loader={"batch_size": 7, "num_workers": num_workers})  # fmt: skip
    model = fit(dm)
    assert dm.class_names == ("NA", "null")
    assert dm.feature_names == ["x", "country=<missing>", *(f"country={c}" for c in sorted(set(codes) - {""}))]
    features, targets = model.rows("val")
    assert targets.tolist() == [i % 2 for i in range(28)]
    hot = [dm.feature_names[1:][row.argmax()].removeprefix("country=") for row in features[:, 1:]]
    assert hot == [codes[i % 7] or "<missing>" for i in range(28)]
    assert features[5, 0].item() == pytest.approx(0.0, abs=1e-6)  # numeric "NA": the mean (standardized: 0)
    said = [r.getMessage() for r in caplog.records if r.name == "chute.datasets.table_read"]
    assert "Column 'country' holds 'N/A', 'NA', 'nan', 'null', read as categories (text, as written)" in said[0]
    assert "Column 'label' holds 'NA', 'null', read as categories" in said[1]


def test_class_labels_that_are_numbers_written_as_text_sort_by_value(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "x,label\n" + "\n".join(f"{i},{[2, 10, 1, 7][i % 4]}" for i in range(40)))
    dm = TabularDataModule(path, target="label")
    dm.setup("fit")
    assert dm.class_names == ("1", "2", "7", "10")


def test_a_bad_row_is_handled_by_on_error_when_the_target_is_found_by_name(tmp_path: Path) -> None:
    """``TabularDataModule(path)`` reads the header to find the target; a bad row there is the rows'
    business: skipped with on_error=skip, named by its line otherwise (not "cannot read the header")."""
    lines = [f"{i},{i * 0.5},{'ab'[i % 2]}" for i in range(40)]
    lines[5] = "5,2.5,a,oops"
    path = write_csv(tmp_path / "t.csv", "x,z,label\n" + "\n".join(lines))
    dm = TabularDataModule(path, on_error="skip", max_bad_fraction=0.05, loader={"batch_size": 4})
    model = fit(dm)
    assert dm.target == "label"
    assert len(model.rows("train")[1]) + len(model.rows("val")[1]) == 39
    with pytest.raises(DataError, match=r"t\.csv', line 7: expected 3 fields .* found 4: '5,2.5,a,oops'"):
        TabularDataModule(path).setup("fit")


@pytest.mark.parametrize("kind", ["plain", "gzip", "long field"])
def test_a_bad_row_after_quoted_line_breaks_and_blank_lines_is_named_by_its_line_in_the_file(
    tmp_path: Path, kind: str
) -> None:
    """pyarrow numbers rows: a quoted value over three lines and a blank line put every later row's
    number short of the line an editor shows; the error and the skip report name the line (in a
    gzipped file too, and past a field longer than Python's csv module reads by default)."""
    lines = [f'{i},"note {i}",{"ab"[i % 2]}' for i in range(40)]
    lines[2] = '2,"first line\nsecond line\nthird",a'  # lines 4-6 of the file
    lines[4] = ""  # blank: not a row
    lines[20] = "20,x,a,oops"
    if kind == "long field":
        lines[10] = f'10,"{"y" * 200_000}",a'
    text = "x,note,label\n" + "\n".join(lines) + "\n"
    assert text.splitlines()[23] == "20,x,a,oops"  # line 24
    path = tmp_path / "t.csv"
    if kind == "gzip":
        path = tmp_path / "t.csv.gz"
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    name = re.escape(path.name)
    with pytest.raises(DataError, match=rf"{name}', line 24: expected 3 fields .* found 4: '20,x,a,oops'"):
        TabularDataModule(path, target="label", numeric=["x"]).setup("fit")
    dm = TabularDataModule(path, target="label", numeric=["x"], on_error="skip", max_bad_fraction=0.05)
    dm.setup("fit")
    assert dm.bad_samples["train"]["first"] == [f"'{path}', line 24"]


def test_a_header_that_is_not_utf8_is_named_with_the_encoding_setting(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(
        ("caf\xe9,x,label\n" + "\n".join(f"{i},{i},{'ab'[i % 2]}" for i in range(20)) + "\n").encode("latin-1")
    )
    for target in (None, "label"):
        with pytest.raises(DataError, match=r"header of '.*t\.csv' is not utf-8 text .*data\.encoding=latin-1"):
            TabularDataModule(path, target=target).setup("fit")
    dm = TabularDataModule(path, encoding="latin-1")
    dm.setup("fit")
    assert dm.feature_names == ["café", "x"]


def test_a_folder_of_parquet_files_reads_as_one_table(tmp_path: Path) -> None:
    """A partitioned dataset (Spark, Dask, ``write_to_dataset``) is one table, its partition column a column."""
    table = small_table(60).select(["x", "count", "color", "label"])
    folder = tmp_path / "table.parquet"
    pq.write_to_dataset(table, folder, partition_cols=["color"])
    dm = TabularDataModule(folder, numeric=["x", "count"], categorical=["color"], loader={"batch_size": 8})
    model = fit(dm)
    assert dm.target == "label"
    assert dm.feature_names == ["x", "count", "color=blue", "color=green", "color=red"]
    features = torch.cat([model.rows("train")[0], model.rows("val")[0]])
    assert len(features) == 60
    counts = dict(
        zip(*np.unique(table.column("color").to_numpy(zero_copy_only=False), return_counts=True), strict=True)
    )
    assert features[:, 2:].sum(0).tolist() == [counts["blue"], counts["green"], counts["red"]]

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"'.*empty' is a folder without \.parquet files"):
        TabularDataModule(tmp_path / "empty", target="label").setup("fit")


def test_a_parquet_text_column_of_arrow_view_type_reads_as_text(tmp_path: Path) -> None:
    table = small_table(40).select(["x", "color", "label"])
    plain, view = tmp_path / "plain.parquet", tmp_path / "view.parquet"
    pq.write_table(table, plain)
    pq.write_table(
        table.cast(pa.schema([("x", pa.float64()), ("color", pa.string_view()), ("label", pa.string_view())])), view
    )
    assert pq.read_schema(view).field("label").type == pa.string_view()
    batches = []
    for path in (plain, view):
        dm = TabularDataModule(path, categorical=["color"], loader={"batch_size": 8})
        dm.setup("fit")
        batches.append([b for batch in dm.val_dataloader() for b in batch])
    assert all(torch.equal(a, b) for a, b in zip(*batches, strict=True))


def test_a_semicolon_separated_csv_is_named_when_the_target_is_found_by_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "x;z;label\n" + "\n".join(f"{i};{i};{'ab'[i % 2]}" for i in range(10)))
    with pytest.raises(DataError, match=r"t\.csv' has one column, 'x;z;label'.*separated by ';'"):
        TabularDataModule(path).setup("fit")


def test_a_number_to_predict_read_as_classes_is_named_with_the_task_setting(tmp_path: Path) -> None:
    """The default task is classification: a price column gives one class per row, and the error of
    the empty validation split (and a warning before it) says to set task=regression."""
    path = write_csv(tmp_path / "t.csv", "x,target\n" + "\n".join(f"{i},{100 + i * 1.37:.2f}" for i in range(200)))
    dm = TabularDataModule(path)
    with pytest.warns(
        UserWarning, match=r"Target column 'target' has 200 classes in 200 training rows.*task=regression"
    ):
        dm.setup("fit")
    with pytest.raises(
        DataError, match=r"val split has no samples.*if it is a quantity to predict, set task=regression"
    ):
        dm.val_dataloader()
    regression = TabularDataModule(path, task="regression")
    regression.setup("fit")
    assert len(regression.dataset("val")) == 40
    integers = write_csv(tmp_path / "i.csv", "x,label\n" + "\n".join(f"{i},{i % 30}" for i in range(300)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 30 integer classes of 10 rows each: classes
        TabularDataModule(integers).setup("fit")


def test_the_target_column_named_exactly_wins_over_another_case(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "x,Label,label\n" + "\n".join(f"{i},{i % 5},{'ab'[i % 2]}" for i in range(20)))
    dm = TabularDataModule(path, numeric=["x"])
    dm.setup("fit")
    assert dm.target == "label"
    assert dm.class_names == ("a", "b")


# -- Predicting on rows without labels ----------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_reads_rows_without_the_target_encoded_as_training(tmp_path: Path, workers: int) -> None:
    """``predict_path``: a table without the target (columns in another order) is encoded with the
    training split's statistics and predicted row by row, in the file's order (predict read the
    labelled test split only)."""
    from chute.datasets import sklearn_table
    from chute.models import TabularModel

    table = sklearn_table("breast_cancer")
    write_table(table, tmp_path / "train.csv")
    rows = table.slice(0, 10).drop_columns(["diagnosis"])
    write_table(rows.select(list(reversed(rows.column_names))), tmp_path / "new.csv")
    dm = TabularDataModule(
        tmp_path / "train.csv", target="diagnosis", val_path=str(tmp_path / "train.csv"),
        predict_path=str(tmp_path / "new.csv"), loader={"batch_size": 4, "num_workers": workers},
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    model = TabularModel(num_features=30, num_classes=2)
    predictions = trainer.predict(model, datamodule=dm)
    assert predictions is not None
    assert torch.cat(predictions).shape == (10, 2)  # type: ignore[arg-type]
    assert dm.predict_rows is not None
    assert dm.predict_rows.tolist() == list(range(1, 11))
    features, targets = dm.dataset("predict").__getitems__(list(range(10)))
    trained, _ = dm.dataset("train").__getitems__(list(range(10)))  # the same rows, as training encodes them
    torch.testing.assert_close(features, trained)
    assert targets.tolist() == [-1] * 10


def test_predict_rows_missing_a_feature_column_are_named(tmp_path: Path) -> None:
    from chute.datasets import sklearn_table

    table = sklearn_table("breast_cancer")
    write_table(table, tmp_path / "train.csv")
    write_table(table.slice(0, 5).drop_columns(["mean_radius", "diagnosis"]), tmp_path / "new.csv")
    dm = TabularDataModule(tmp_path / "train.csv", target="diagnosis", predict_path=str(tmp_path / "later.csv"))
    dm.setup("fit")  # training does not need the rows to predict on yet
    dm.paths["predict"] = str(tmp_path / "new.csv")
    with pytest.raises(DataError, match=r"Column 'mean_radius' is not in '.*new\.csv'"):
        dm.predict_dataloader()


def test_a_text_regression_target_points_at_the_task_setting(tmp_path: Path) -> None:
    """The advice was "list 'label' under categorical", which then failed: a target cannot be a feature."""
    path = write_csv(tmp_path / "t.csv", "x,label\n" + "\n".join(f"{i},{'ab'[i % 2]}" for i in range(30)))
    with pytest.raises(DataError) as err:
        TabularDataModule(path, target="label", task="regression").setup("fit")
    assert_mentions(str(err.value), "'label'", "row 1", "set task=classification", "holds classes")
    assert "categorical" not in str(err.value)


def test_a_class_written_another_way_in_another_file_is_named_as_such(tmp_path: Path) -> None:
    """A Parquet training file's float labels are the classes '0' and '1'; a CSV validation file
    written by another program says 0.0: "a class the training split lacks", and nothing more."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [float(i) for i in range(30)], "label": [float(i % 2) for i in range(30)]}), train)
    val = write_csv(tmp_path / "v.csv", "x,label\n" + "\n".join(f"{i},{i % 2}.0" for i in range(10)))
    with pytest.raises(DataError) as err:
        TabularDataModule(train, val_path=val, target="label").setup("fit")
    assert_mentions(str(err.value), "'0.0', a class the training split lacks", "The training split has '0', the same")


def test_na_is_read_the_same_way_in_every_file_as_the_training_file_decided(tmp_path: Path) -> None:
    """Whether ``NA`` is missing or a category was decided per file: a training file of zip codes
    made it missing, a validation file where one code is text (``UNK``) made it the category ``NA``,
    which training never had (all zeros under unknown_category=ignore, silently)."""
    train = write_csv(tmp_path / "t.csv", "x,zip,label\n" + "\n".join(
        f"{i},{['02134', '10001', 'NA'][i % 3]},{i % 2}" for i in range(30)))  # fmt: skip
    val = write_csv(tmp_path / "v.csv", "x,zip,label\n" + "\n".join(
        f"{i},{['02134', 'NA', 'UNK'][i % 3]},{i % 2}" for i in range(9)))  # fmt: skip
    dm = TabularDataModule(train, val_path=val, target="label", numeric=["x"], categorical=["zip"], missing="mean",
                           unknown_category="ignore", loader={"batch_size": 9, "shuffle": False})  # fmt: skip
    dm.setup("fit")
    assert dm.feature_names == ["x", "zip=02134", "zip=10001", "zip=<missing>"]
    features = next(iter(dm.val_dataloader()))[0]
    assert features[:3, 1:].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]  # 02134, NA, UNK
