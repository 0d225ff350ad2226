"""Bad samples (issue 6.4) for sequences: ``on_error: raise | skip`` over the lines of JSONL files.

Every kind of line the reader or the range checks reject is written into a real file in ``tmp_path``
between good lines. ``raise`` must name the file, the line and the reason and point at
``data.on_error=skip``; ``skip`` must drop the line before the split, the vocabulary and the class
count see it, so the module ends up exactly as it would over the file without that line.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chute.app import build_datamodule
from chute.config import compose_config, validate_config
from chute.datamodules import SequenceDataModule
from chute.errors import ConfigError, DataError
from tests.helpers import assert_mentions

N_GOOD = 40  # fewer than BadSamples' min_seen of 100: one bad line is tolerated, two are over 1%
AT = 5  # the bad line goes after this many good ones (so it is line AT + 1)


def _good(kind: str, n: int = N_GOOD) -> list[dict[str, Any]]:
    if kind == "tokens":
        return [{"tokens": [1 + (i * 7) % 9] * (1 + i % 5), "label": i % 3} for i in range(n)]
    return [{"text": "abcdef"[i % 6] * (1 + i % 4) + "xyz"[i % 3], "label": i % 3} for i in range(n)]


def _write(path: Path, lines: list[Any]) -> Path:
    """One line per item: a record (as JSON), a ``str`` or ``bytes`` written as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = [x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode() for x in lines]
    path.write_bytes(b"".join(line + b"\n" for line in encoded))
    return path


def _with_bad(root: Path, kind: str, bad: list[tuple[int, Any]], name: str = "train.jsonl") -> str:
    """``root/name``: the good lines of ``kind`` with ``bad`` lines inserted (each after ``at`` good ones)."""
    lines: list[Any] = list(_good(kind))
    for at, line in sorted(bad, key=lambda b: b[0], reverse=True):
        lines.insert(at, line)
    return str(_write(root / name, lines))


# kind of file, the bad line, what the message says, extra DataModule arguments
CASES: dict[str, tuple[str, Any, str, dict[str, Any]]] = {
    "not_utf8": ("tokens", b'{"tokens": [1], "label": 0, "note": "\xff"}', "not UTF-8 text (byte 0xff", {}),
    "not_json": ("tokens", '{"tokens": [1, 2], "label": 0', "not JSON (Expecting", {}),
    "not_an_object": ("tokens", "[1, 2, 3]", "expected a JSON object, got list", {}),
    "no_sequence_field": ("tokens", '{"words": [1, 2], "label": 0}', "needs a 'tokens' (list of ids) or 'text'", {}),
    "other_kind": ("tokens", '{"text": "abc", "label": 0}', "has 'text' but earlier lines have 'tokens'", {}),
    "no_label": ("tokens", '{"tokens": [1, 2]}', "'label' must be a non-negative integer class index, got None", {}),
    "label_string": ("tokens", '{"tokens": [99], "label": "yes"}', "class index, got 'yes'", {}),
    "label_bool": ("tokens", '{"tokens": [1], "label": true}', "class index, got True", {}),
    "label_float": ("tokens", '{"tokens": [1], "label": 1.0}', "class index, got 1.0", {}),
    "label_negative": ("tokens", '{"tokens": [1], "label": -1}', "class index, got -1", {}),
    "tokens_empty": ("tokens", '{"tokens": [], "label": 9}', "'tokens' must be a non-empty list", {}),
    "tokens_not_a_list": ("tokens", '{"tokens": "1 2", "label": 0}', "'tokens' must be a non-empty list", {}),
    "token_negative": ("tokens", '{"tokens": [1, -2], "label": 0}', "list of non-negative integers", {}),
    "token_float": ("tokens", '{"tokens": [1, 2.5], "label": 0}', "list of non-negative integers", {}),
    "token_bool": ("tokens", '{"tokens": [true], "label": 0}', "list of non-negative integers", {}),
    "token_over_int64": ("tokens", '{"tokens": [1, 18446744073709551616], "label": 0}', "at most 2**63 - 1", {}),
    "label_over_int64": ("tokens", '{"tokens": [1], "label": 18446744073709551616}', "class index, got 1844", {}),
    "token_over_vocab_size": (
        "tokens", '{"tokens": [3, 12], "label": 7}', "token id 12 is outside the vocabulary (vocab_size=10)",
        {"vocab_size": 10},
    ),
    "text_empty": ("text", '{"text": "", "label": 0}', "'text' must be a non-empty string", {}),
    "text_not_a_string": ("text", '{"text": ["a"], "label": 0}', "'text' must be a non-empty string", {}),
    "other_kind_in_text": ("text", '{"tokens": [1], "label": 0}', "has 'tokens' but earlier lines have 'text'", {}),
    "text_label_negative": ("text", '{"text": "QQQ", "label": -1}', "class index, got -1", {}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_raise_names_the_file_the_line_and_the_reason(tmp_path: Path, case: str) -> None:
    kind, line, reason, kwargs = CASES[case]
    path = _with_bad(tmp_path, kind, [(AT, line)])
    with pytest.raises(DataError) as err:
        SequenceDataModule(tmp_path, **kwargs).setup("fit")
    assert_mentions(str(err.value), f"'{path}', line {AT + 1}: ", reason, "data.on_error=skip")


def _same_data(dm: SequenceDataModule, reference: SequenceDataModule) -> None:
    assert (dm.vocab_size, dm.num_classes) == (reference.vocab_size, reference.num_classes)
    assert (dm.vocab and dm.vocab.chars) == (reference.vocab and reference.vocab.chars)
    for split in ("train", "val", "test"):
        ours, theirs = dm.dataset(split).packed, reference.dataset(split).packed
        for name in ("flat", "offsets", "labels"):
            np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name), err_msg=f"{split}.{name}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_drops_the_line_before_split_vocabulary_and_classes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    kind, line, reason, kwargs = CASES[case]
    path = _with_bad(tmp_path / "bad", kind, [(AT, line)])
    _with_bad(tmp_path / "clean", kind, [])
    dm = SequenceDataModule(tmp_path / "bad", on_error="skip", **kwargs)
    with caplog.at_level(logging.WARNING, logger="chute.bad_samples"):
        dm.setup("fit")
    reference = SequenceDataModule(tmp_path / "clean", **kwargs)
    reference.setup("fit")
    # No val file: the held-out split is drawn from the kept lines, so it matches the clean file's.
    _same_data(dm, reference)
    assert dm.bad_samples == {"train": {"seen": N_GOOD + 1, "skipped": 1, "first": [f"'{path}', line {AT + 1}"]}}
    messages = [r.getMessage() for r in caplog.records]
    (skipping,) = [m for m in messages if m.startswith("Skipping a bad line")]
    assert_mentions(skipping, f"'{path}', line {AT + 1}: ", reason)
    assert "on_error=skip to drop" not in skipping  # the hint is for the error that stops a run
    (summary,) = [m for m in messages if m.startswith("Skipped")]
    assert_mentions(summary, f"Skipped 1 of {N_GOOD + 1} lines in '{path}'", f"'{path}', line {AT + 1}")


def test_skip_counts_each_file_and_reports_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = _with_bad(tmp_path, "tokens", [(3, "{oops"), (30, '{"tokens": []}')])
    val = _with_bad(tmp_path, "tokens", [(0, "[]")], name="val.jsonl")
    test = _with_bad(tmp_path, "tokens", [], name="test.jsonl")
    dm = SequenceDataModule(tmp_path, on_error="skip", max_bad_fraction=0.05)
    with caplog.at_level(logging.WARNING, logger="chute.bad_samples"):
        dm.setup("fit")
        dm.setup("test")  # set up already: nothing is read or logged again
    assert dm.bad_samples == {
        "train": {"seen": N_GOOD + 2, "skipped": 2, "first": [f"'{train}', line 4", f"'{train}', line 32"]},
        "val": {"seen": N_GOOD + 1, "skipped": 1, "first": [f"'{val}', line 1"]},
        "test": {"seen": N_GOOD, "skipped": 0, "first": []},
    }
    assert [len(dm.dataset(split)) for split in ("train", "val", "test")] == [N_GOOD] * 3
    summaries = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped"))
    assert len(summaries) == 2  # train and val, once each; test skipped nothing
    assert_mentions(summaries[0], f"Skipped 1 of {N_GOOD + 1} lines in '{val}'")
    assert_mentions(summaries[1], f"Skipped 2 of {N_GOOD + 2} lines in '{train}'")
    assert test not in " ".join(summaries)
    assert pickle.loads(pickle.dumps(dm)).bad_samples["train"]["skipped"] == 2


def test_val_ids_and_labels_outside_training_raise_or_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", [{"tokens": [1, 2], "label": 0}, {"tokens": [3], "label": 1}])
    val = _write(tmp_path / "val.jsonl", [{"tokens": [1], "label": 0}, {"tokens": [2], "label": 5}])
    with pytest.raises(DataError) as err:
        SequenceDataModule(tmp_path).setup("fit")
    assert_mentions(str(err.value), f"'{val}', line 2: label 5 is outside the training classes 0..1", "on_error=skip")
    _write(
        val,
        [
            {"tokens": [1], "label": 0},
            {"tokens": [7], "label": 1},
            {"tokens": [2], "label": 5},
            {"tokens": [3], "label": 1},
        ],
    )
    with pytest.raises(DataError) as err:
        SequenceDataModule(tmp_path).setup("fit")
    assert_mentions(str(err.value), f"'{val}', line 2: token id 7", "vocab_size=4", "data.on_error=skip")
    with pytest.raises(DataError) as err:  # two bad lines of four: over 1% even of 100
        SequenceDataModule(tmp_path, on_error="skip").setup("fit")
    assert_mentions(str(err.value), "2 of 4 lines", "max_bad_fraction=0.01", f"'{val}', line 2", f"'{val}', line 3")
    dm = SequenceDataModule(tmp_path, on_error="skip", max_bad_fraction=0.02)
    dm.setup("fit")
    assert dm.dataset("val").packed.labels.tolist() == [0, 1]
    assert dm.dataset("val").packed.flat.tolist() == [1, 3]
    assert dm.dataset("test").packed.flat.tolist() == [1, 3]  # no test file: the val split, checked once
    assert dm.bad_samples["val"] == {"seen": 4, "skipped": 2, "first": [f"'{val}', line 2", f"'{val}', line 3"]}


def test_a_checkpoints_classes_check_the_training_file(tmp_path: Path) -> None:
    first = tmp_path / "a"
    _with_bad(first, "tokens", [])
    dm = SequenceDataModule(first)
    dm.setup("fit")
    path = _with_bad(tmp_path / "b", "tokens", [(AT, {"tokens": [1], "label": 3})])  # 3 classes were saved
    resumed = SequenceDataModule(tmp_path / "b")
    resumed.load_state_dict(dm.state_dict())
    with pytest.raises(DataError) as err:
        resumed.setup("fit")
    assert_mentions(str(err.value), f"'{path}', line {AT + 1}: label 3 is outside the training classes 0..2")
    skipping = SequenceDataModule(tmp_path / "b", on_error="skip")
    skipping.load_state_dict(dm.state_dict())
    skipping.setup("fit")
    _same_data(skipping, dm)


def test_skip_raises_past_the_bad_fraction_as_the_table_modules_do(tmp_path: Path) -> None:
    # Measured over max(lines, 100): one bad line in a small file is tolerated, two are over 1%.
    path = _with_bad(tmp_path, "tokens", [(3, "{"), (9, "[]")])
    with pytest.raises(DataError) as err:
        SequenceDataModule(tmp_path, on_error="skip").setup("fit")
    assert_mentions(
        str(err.value), f"2 of {N_GOOD + 2} lines", "max_bad_fraction=0.01", f"'{path}', line 4", f"'{path}', line 11",
        "data.on_error=raise",
    )  # fmt: skip
    dm = SequenceDataModule(tmp_path, on_error="skip", max_bad_fraction=0.02)
    dm.setup("fit")
    assert dm.bad_samples["train"]["skipped"] == 2


def test_a_file_of_only_bad_lines(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", ["{", "", "[]"])
    with pytest.raises(DataError, match=r"has no records \(on_error=skip dropped all 2 lines\)"):
        SequenceDataModule(tmp_path, on_error="skip", max_bad_fraction=1.0).setup("fit")


def test_settings_are_checked_and_saved(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_error='drop'"):
        SequenceDataModule(tmp_path, on_error="drop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"max_bad_fraction=1\.5"):
        SequenceDataModule(tmp_path, max_bad_fraction=1.5)
    dm = SequenceDataModule(tmp_path)
    assert (dm.hparams["on_error"], dm.hparams["max_bad_fraction"]) == ("raise", 0.01)


def test_hydra_config_keys(tmp_path: Path) -> None:
    path = _with_bad(tmp_path / "data", "tokens", [(AT, "{oops")])
    overrides = ["data=sequence", f"data.root={tmp_path / 'data'}", "data.prepare=null"]
    cfg = compose_config(*overrides, "data.on_error=skip", "data.max_bad_fraction=0.02", output_dir=str(tmp_path))
    dm = build_datamodule(cfg, validate_config(cfg))
    assert isinstance(dm, SequenceDataModule)
    assert (dm.on_error, dm.max_bad_fraction) == ("skip", 0.02)
    dm.setup("fit")
    assert dm.bad_samples["train"]["first"] == [f"'{path}', line {AT + 1}"]
    cfg = compose_config(*overrides, "data.on_error=drop", output_dir=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        build_datamodule(cfg, validate_config(cfg))
    assert err.value.key == "data.on_error"


def test_a_file_whose_every_line_is_bad_says_so(tmp_path: Path) -> None:
    """It said "4 of 300 lines read so far were bad (1.3%)": the whole file had been read, and the
    count stopped at the first bad lines past the limit."""
    line = json.dumps({"tokens": [1, 2], "label": "x"}) + "\n"
    (tmp_path / "train.jsonl").write_text(line * 300)
    (tmp_path / "val.jsonl").write_text(json.dumps({"tokens": [1, 2], "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"^300 of 300 lines read so far were bad \(100\.0%\)"):
        SequenceDataModule(tmp_path, on_error="skip").setup("fit")
