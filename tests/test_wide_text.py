"""CSV files in UTF-16 or UTF-32 read with the default encoding (issue 26): an error naming data.encoding."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from chute.datamodules import TabularDataModule
from chute.errors import DataError
from tests.helpers import assert_mentions

ROWS = "a,b,label\n" + "".join(f"{i * 0.5},{i % 7},{'xy'[i % 2]}\n" for i in range(60))


@pytest.mark.parametrize(
    ("codec", "named"),
    [
        ("utf-16", "utf-16"),
        ("utf-16-le", "utf-16"),
        ("utf-16-be", "utf-16"),
        ("utf-32", "utf-32"),
        ("utf-32-le", "utf-32"),
    ],
)
@pytest.mark.parametrize("zipped", [False, True])
def test_a_wide_encoding_read_as_utf8_names_the_setting(tmp_path: Path, codec: str, named: str, zipped: bool) -> None:
    """With and without a byte-order mark (``utf-16-le`` writes none), plain or gzipped."""
    path = tmp_path / ("t.csv.gz" if zipped else "t.csv")
    data = ROWS.encode(codec)
    path.write_bytes(gzip.compress(data) if zipped else data)
    dm = TabularDataModule(path, target="label")
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert_mentions(str(err.value), str(path), "data.encoding", f"data.encoding={named}")


@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
def test_the_named_setting_reads_it(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(ROWS.encode(codec))
    dm = TabularDataModule(path, target="label", encoding=codec, val_fraction=0.25)
    dm.setup("fit")
    assert dm.num_features == 2
    assert dm.class_names == ("x", "y")
    rows = sum(len(batch[1]) for loader in (dm.train_dataloader(), dm.val_dataloader()) for batch in loader)
    assert rows == 60


@pytest.mark.parametrize("codec", ["utf-8", "latin-1", "cp1252"])
def test_one_byte_text_is_not_taken_for_a_wide_encoding(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(ROWS.replace("xy", "éü").encode(codec))
    TabularDataModule(path, target="label", encoding=codec).setup("fit")


@pytest.mark.parametrize(("separator", "named"), [(";", "';'"), ("\t", "'\\t'"), ("|", "'|'")])
def test_a_csv_separated_otherwise_names_its_separator(tmp_path: Path, separator: str, named: str) -> None:
    """European spreadsheets write ';': the header then reads as one column; say why, not only "not in"."""
    path = tmp_path / "t.csv"
    path.write_text(ROWS.replace(",", separator))
    with pytest.raises(DataError) as err:
        TabularDataModule(path, target="label").setup("fit")
    assert_mentions(str(err.value), str(path), "'label'", f"separated by {named}", "comma-separated")
