"""Inputs a careful user tries next (issue 26, "go past the list"): read right, or named.

Each row of ``docs/inputs.md`` that concerns images and tables is a case here. Images go through
``ImageFolderDataModule`` (the decoder picked by content, not by name); tables through
``TabularDataModule``. Outcomes: every sample read, or a ``DataError`` naming the file.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chute.datamodules import ImageFolderDataModule, TabularDataModule
from chute.errors import DataError
from tests.helpers import assert_mentions


def _photo(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8))


def _saved(fmt: str, mode: str = "RGB") -> Callable[[Path], None]:
    return lambda path: _photo(9).convert(mode).save(path, format=fmt)


def _animated(path: Path) -> None:
    frames = [_photo(s).convert("P") for s in range(3)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])


def _cut_png(path: Path) -> None:
    data = io.BytesIO()
    _photo().save(data, format="PNG")
    path.write_bytes(data.getvalue()[:60])


READ = {
    "x.webp": _saved("WEBP"),
    "x.bmp": _saved("BMP"),
    "palette.gif": _saved("GIF", "P"),
    "animated.gif": _animated,  # the first frame
    "x.tiff": _saved("TIFF"),
    "alpha.png": _saved("PNG", "RGBA"),
    "gray_alpha.png": _saved("PNG", "LA"),
    "palette.png": _saved("PNG", "P"),
    "sixteen_bit.png": _saved("PNG", "I;16"),
    "float.tiff": _saved("TIFF", "F"),
    "one_bit.png": _saved("PNG", "1"),
    "cmyk.jpg": _saved("JPEG", "CMYK"),
    "png_named.jpg": _saved("PNG"),  # the name says JPEG, the bytes PNG
    "space ü.png": _saved("PNG"),
    "UPPER.PNG": _saved("PNG"),
}
NAMED = {
    "empty.png": lambda path: path.write_bytes(b""),
    "cut_short.png": _cut_png,
    "text.jpg": lambda path: path.write_bytes(b"hello world"),
}


def _tree(tmp_path: Path, name: str, write: Callable[[Path], None]) -> Path:
    for c in "ab":
        for i in range(4):
            path = tmp_path / "train" / c / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _photo(i).save(path)
    write(tmp_path / "train" / "a" / name)
    return tmp_path


def _read_all(root: Path, backend: str) -> int:
    dm = ImageFolderDataModule(
        root, transforms={"image_size": 16}, val_fraction=0.25,
        loader={"batch_size": 4, "num_workers": 2 if backend == "threads" else 0, "backend": backend},
    )  # fmt: skip
    dm.setup("fit")
    return sum(len(batch[1]) for loader in (dm.train_dataloader(), dm.val_dataloader()) for batch in loader)


@pytest.mark.parametrize("backend", ["torch", "threads"])
@pytest.mark.parametrize("name", list(READ))
def test_an_image_of_another_kind_is_read(tmp_path: Path, name: str, backend: str) -> None:
    assert _read_all(_tree(tmp_path, name, READ[name]), backend) == 9


@pytest.mark.parametrize("backend", ["torch", "threads"])
@pytest.mark.parametrize("name", list(NAMED))
def test_a_file_that_is_no_image_is_named(tmp_path: Path, name: str, backend: str) -> None:
    root = _tree(tmp_path, name, NAMED[name])
    with pytest.raises(DataError) as err:
        _read_all(root, backend)
    assert_mentions(str(err.value), str(root / "train" / "a" / name))


ROWS = [(i * 0.5, i % 7, "xy"[i % 2]) for i in range(40)]


def _table(tmp_path: Path, text: str | bytes, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _fit(path: Path) -> TabularDataModule:
    dm = TabularDataModule(path, target="label", val_fraction=0.25)
    dm.setup("fit")
    return dm


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    text = "label,a,b\n" + "".join(f"{c},{a},{b}\n" for a, b, c in ROWS)
    assert _fit(_table(tmp_path, b"\xef\xbb\xbf" + text.encode())).class_names == ("x", "y")


def test_windows_line_ends_read_the_same(tmp_path: Path) -> None:
    text = "a,b,label\r\n" + "".join(f"{a},{b},{c}\r\n" for a, b, c in ROWS)
    assert _fit(_table(tmp_path, text)).class_names == ("x", "y")


def test_a_header_without_rows_and_an_empty_file_are_named(tmp_path: Path) -> None:
    for text, says in (("a,b,label\n", "no data rows"), ("", "empty")):
        path = _table(tmp_path, text)
        with pytest.raises(DataError) as err:
            _fit(path)
        assert_mentions(str(err.value), str(path), says)


def test_an_infinite_cell_is_named_with_its_row(tmp_path: Path) -> None:
    text = "a,b,label\n" + "".join(f"{'inf' if i == 3 else i},{i},{'xy'[i % 2]}\n" for i in range(40))
    path = _table(tmp_path, text)
    with pytest.raises(DataError) as err:
        _fit(path)
    assert_mentions(str(err.value), str(path), "row 4", "inf")


def test_a_quoted_field_may_hold_a_line_break(tmp_path: Path) -> None:
    text = "a,b,label\n" + "".join(f'{i},{i},"{"xy"[i % 2]}"\n' for i in range(39)) + '1,2,"x\ny"\n'
    assert _fit(_table(tmp_path, text)).class_names == ("x", "x\ny", "y")


def test_names_with_spaces_are_shown_as_they_are(tmp_path: Path) -> None:
    """``' label '`` is not ``label``: the error lists the names with their spaces visible."""
    text = "a, b , label \n" + "".join(f"{a},{b},{c}\n" for a, b, c in ROWS)
    path = _table(tmp_path, text)
    with pytest.raises(DataError) as err:
        _fit(path)
    assert_mentions(str(err.value), "'label'", "' label '")


def _jsonl(tmp_path: Path, data: bytes) -> Path:
    root = tmp_path / "seq"
    root.mkdir()
    (root / "train.jsonl").write_bytes(data)
    return root


LINES = "".join(f'{{"tokens": [{i % 5 + 1}, {i % 3 + 1}], "label": {i % 2}}}\n' for i in range(40))


@pytest.mark.parametrize(
    "data",
    [b"\xef\xbb\xbf" + LINES.encode(), LINES.replace("\n", "\r\n").encode()],
    ids=["utf8-byte-order-mark", "windows-line-ends"],
)
def test_a_jsonl_file_with_a_byte_order_mark_or_windows_line_ends_is_read(tmp_path: Path, data: bytes) -> None:
    from chute.datamodules import SequenceDataModule

    dm = SequenceDataModule(_jsonl(tmp_path, data), val_fraction=0.25)
    dm.setup("fit")
    assert sum(len(b["targets"]) for loader in (dm.train_dataloader(), dm.val_dataloader()) for b in loader) == 40


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-32"])
def test_a_jsonl_file_in_utf16_or_32_is_named(tmp_path: Path, codec: str) -> None:
    from chute.datamodules import SequenceDataModule

    root = _jsonl(tmp_path, LINES.encode(codec))
    with pytest.raises(DataError) as err:
        SequenceDataModule(root, val_fraction=0.25).setup("fit")
    assert_mentions(str(err.value), str(root / "train.jsonl"), codec[:6].upper(), "UTF-8")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_line_that_is_not_utf8_is_one_bad_line(tmp_path: Path, workers: int) -> None:
    """Named with its shard and line (was a UnicodeDecodeError ending the epoch), skipped and counted
    under on_error=skip."""
    from chute.datamodules import StreamingDataModule
    from tests.test_bad_samples import _shards

    root = _shards(tmp_path / "shards")
    shard = root / "train-00001.jsonl"
    lines = shard.read_bytes().splitlines(keepends=True)
    lines[4] = b'{"tensor": [1.0], "label": "\xff\xfe"}\n'
    shard.write_bytes(b"".join(lines))
    loader = {"batch_size": 8, "num_workers": workers}
    dm = StreamingDataModule(root, loader=loader)
    dm.setup("fit")
    with pytest.raises(DataError) as err:
        list(dm.train_dataloader())
    assert_mentions(str(err.value), str(shard), "line 5", "not UTF-8", "on_error=skip")
    dm = StreamingDataModule(root, loader=loader, on_error="skip", max_bad_fraction=0.05)
    dm.setup("fit")
    assert sum(len(batch[1]) for batch in dm.train_dataloader()) == 59
    assert dm.bad_samples["train"]["skipped"] == 1


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_text("x"), "is a file, not a folder"),
        (lambda p: p.mkdir(), "No '"),
        (lambda p: (p.mkdir(), (p / "chute.json").write_bytes(b"\xff\xfe{")), "Cannot read"),
        (lambda p: (p.mkdir(), (p / "chute.json").write_text("{not json")), "Cannot read"),
        (lambda p: (p.mkdir(), (p / "chute.json").write_text("[]")), "not a chute LitData description"),
    ],
    ids=["a-file", "an-empty-folder", "not-utf8", "not-json", "not-a-description"],
)
def test_a_litdata_folder_that_is_not_one_is_named(tmp_path: Path, make: Callable[[Path], object], says: str) -> None:
    from chute.integrations import LitDataModule

    where = tmp_path / "lit"
    make(where)
    dm = LitDataModule(where, loader={"batch_size": 4})
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert_mentions(str(err.value), str(where), says)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_integers_past_two_to_the_53_are_features_like_any_number(tmp_path: Path, kind: str) -> None:
    """Nearest float, as every feature becomes (was Arrow's raw "Integer value ... not in range")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    big = [2**63 + 4096 * i for i in range(40)]
    table = pa.table({"big": pa.array(big, pa.uint64()), "label": ["xy"[i % 2] for i in range(40)]})
    path = tmp_path / f"t.{kind}"
    if kind == "parquet":
        pq.write_table(table, path)
    else:
        path.write_text(
            "big,label\n" + "".join(f"{b},{c}\n" for b, c in zip(big, table["label"].to_pylist(), strict=True))
        )
    dm = _fit(path)
    features = torch.cat([batch[0] for batch in dm.train_dataloader()])
    assert torch.isfinite(features).all()
    assert features.std() > 0.5  # standardized: the values stay distinct enough to train on
