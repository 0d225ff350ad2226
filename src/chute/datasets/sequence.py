"""Variable-length sequences: JSONL records packed into flat numpy arrays, padding collate, length bucketing.

Records are ``{"tokens": [3, 17, 5], "label": 1}`` (token ids) or ``{"text": "abc", "label": 1}``
(characters, mapped through a :class:`CharVocab` built on the training split only). All sequences
of a split live in one flat ``int64`` array plus an offsets array, so worker processes share them
without copy-on-write of millions of Python lists.
"""

from __future__ import annotations

import codecs
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import torch
from torch.utils.data import Dataset

from chute.bad_samples import BadSamples
from chute.datasets.text_files import wide_encoding
from chute.errors import DataError


@dataclass
class RawRecords:
    """What a JSONL file holds, before token ids are assigned: per record tokens or text, a label, and its line."""

    source: str
    tokens: list[list[int]] | None
    texts: list[str] | None
    labels: np.ndarray
    lines: np.ndarray  # each record's line number in ``source`` (1-based), so messages name the line

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, keep: np.ndarray) -> RawRecords:
        """The records at positions ``keep``, with their line numbers."""
        return RawRecords(
            self.source,
            [self.tokens[i] for i in keep] if self.tokens is not None else None,
            [self.texts[i] for i in keep] if self.texts is not None else None,
            self.labels[keep],
            self.lines[keep],
        )

    def where(self, position: int) -> str:
        """``'file', line N`` of the record at ``position``, for messages."""
        return f"'{self.source}', line {int(self.lines[position])}"


def read_jsonl(
    path: str | os.PathLike[str], label_key: str = "label", bad_samples: BadSamples | None = None
) -> RawRecords:
    """Read ``{"tokens": [...] | "text": "...", label_key: int}`` lines; errors name the file, the line and why.

    A line that is not such a record (not UTF-8 or not JSON, not an object, neither ``tokens`` nor
    ``text``, the other kind than the file's first good record, a label that is not a non-negative integer,
    empty or non-integer tokens, empty text) raises a :class:`~chute.errors.DataError`, or with
    ``bad_samples`` skipping (``on_error="skip"``) is left out and counted once the whole file is read,
    so its ``max_fraction`` is measured over every record line of the file. Blank lines are ignored.
    The caller logs the summary (``bad_samples.report()``) once it has done its own checks too.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Sequence file '{path}' does not exist.")
    bad = bad_samples or BadSamples("raise", what="line")
    values: list[Any] = []
    labels: list[int] = []
    lines: list[int] = []
    rejected: list[tuple[str, str]] = []  # ("'file', line N", reason), counted once the file is read
    kind: str | None = None
    wide = wide_encoding(path)
    if wide is not None:
        raise DataError(f"Sequence file '{path}' looks like {wide} text; JSON Lines files are UTF-8: save it as UTF-8.")
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is one bad line, not an unreadable file
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # written by some Windows tools; not part of the JSON
            if not raw.strip():
                continue
            where = f"'{path}', line {line_no}"
            try:
                this, value, label = _parse(raw, label_key, kind)
            except ValueError as err:
                if not bad.skipping:
                    raise _line_error(where, str(err), skipping=False) from None
                rejected.append((where, str(err)))
                continue
            kind = this
            values.append(value)
            labels.append(label)
            lines.append(line_no)
    bad.seen(len(labels) + len(rejected))
    # judged together, past max_bad_fraction: raises
    bad.skip_all([(where, _line_error(where, reason, skipping=True)) for where, reason in rejected])
    if not labels:
        dropped = f" (on_error=skip dropped all {len(rejected)} lines)" if rejected else ""
        raise DataError(f"Sequence file '{path}' has no records{dropped}.")
    return RawRecords(
        path,
        values if kind == "tokens" else None,
        values if kind == "text" else None,
        np.array(labels, dtype=np.int64),
        np.array(lines, dtype=np.int64),
    )


def keep_in_range(
    records: RawRecords,
    vocab_size: int | None,
    num_classes: int | None,
    bad_samples: BadSamples,
    pad_id: int | None = None,
) -> RawRecords:
    """``records`` whose token ids are below ``vocab_size`` and other than ``pad_id``, and labels below
    ``num_classes`` (``None``: unchecked). The padding id is no token the model learned (its
    embedding stays zero), so a held-out line holding it is judged as one beyond the vocabulary.

    Any other record raises naming its file and line, or with ``bad_samples`` skipping is left out,
    counted (its line was already counted as seen by :func:`read_jsonl`) and logged. Text records
    have no ids to check: unseen characters map to :attr:`CharVocab.UNK`.
    """
    ok = np.ones(len(records), dtype=bool)
    if num_classes is not None:
        ok &= records.labels < num_classes
    if vocab_size is not None and records.tokens is not None:
        top = np.fromiter((max(t) for t in records.tokens), dtype=np.int64, count=len(records))
        ok &= top < vocab_size
    if pad_id is not None and records.tokens is not None:
        ok &= np.fromiter((pad_id not in t for t in records.tokens), dtype=bool, count=len(records))
    if ok.all():
        return records
    found = []
    for i in np.flatnonzero(~ok).tolist():
        label = int(records.labels[i])
        tokens = records.tokens[i] if records.tokens is not None else []
        if num_classes is not None and label >= num_classes:
            reason = f"label {label} is outside the training classes 0..{num_classes - 1}"
        elif vocab_size is not None and max(tokens) >= vocab_size:
            reason = (
                f"token id {max(tokens)} is outside the vocabulary (vocab_size={vocab_size}); "
                "set vocab_size to cover every id"
            )
        else:
            reason = f"token id {pad_id} is the padding id (pad_id={pad_id}), which the model never learns as a token"
        found.append((records.where(i), _line_error(records.where(i), reason, skipping=bad_samples.skipping)))
    bad_samples.skip_all(found)
    return records.take(np.flatnonzero(ok))


def _line_error(where: str, reason: str, skipping: bool) -> DataError:
    """The error for one bad line; when it stops the run, it says how to skip such lines instead."""
    hint = "" if skipping else " Fix the line, or set data.on_error=skip to drop such lines."
    return DataError(f"{where}: {reason}.{hint}")


def _parse(raw: bytes, label_key: str, kind: str | None) -> tuple[str, Any, int]:
    """``(kind, tokens or text, label)`` of one line; a ``ValueError`` says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    this = "tokens" if "tokens" in record else "text" if "text" in record else None
    if this is None:
        raise ValueError("needs a 'tokens' (list of ids) or 'text' (string) field")
    if kind is not None and this != kind:
        raise ValueError(f"has '{this}' but earlier lines have '{kind}'; use one kind per file")
    label = record.get(label_key)
    if not _is_id(label):
        raise ValueError(f"'{label_key}' must be a non-negative integer class index, got {label!r}")
    value = record[this]
    if this == "text" and (not isinstance(value, str) or not value):
        raise ValueError("'text' must be a non-empty string")
    if this == "tokens" and (not isinstance(value, list) or not value or not all(_is_id(v) for v in value)):
        raise ValueError("'tokens' must be a non-empty list of non-negative integers (at most 2**63 - 1)")
    return this, value, label


_MAX_ID = 2**63 - 1  # ids and labels are stored as int64


def _is_id(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_ID


class CharVocab:
    """Characters to ids, built from training texts only: 0 is padding, 1 stands for unseen characters.

    Example:
        >>> vocab = CharVocab.build(["abca", "cab"])
        >>> vocab.encode("abz").tolist(), len(vocab)
        ([2, 3, 1], 5)
    """

    PAD, UNK = 0, 1

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self.index = {c: i + 2 for i, c in enumerate(self.chars)}

    @classmethod
    def build(cls, texts: Sequence[str], min_count: int = 1) -> CharVocab:
        counts = Counter(c for text in texts for c in text)
        return cls(sorted(c for c, n in counts.items() if n >= min_count))

    def __len__(self) -> int:
        return len(self.chars) + 2

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index.get(c, self.UNK) for c in text], dtype=np.int64)


@dataclass
class PackedSequences:
    """Sequences as one flat id array plus offsets (sequence ``i`` is ``flat[offsets[i]:offsets[i+1]]``)."""

    flat: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    @classmethod
    def pack(cls, sequences: Sequence[np.ndarray | list[int]], labels: np.ndarray) -> PackedSequences:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if len(sequences) else np.zeros(0)
        return cls(flat.astype(np.int64), offsets, np.asarray(labels, dtype=np.int64))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.labels)


class SequenceDataset(Dataset[dict[str, Any]]):
    """``{"inputs": int64 ids (L,), "targets": label}`` per sequence, optionally cut to ``max_length``."""

    def __init__(self, packed: PackedSequences, max_length: int | None = None) -> None:
        self.packed = packed
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start, end = self.packed.offsets[index], self.packed.offsets[index + 1]
        if self.max_length is not None:
            end = min(end, start + self.max_length)
        return {
            "inputs": torch.from_numpy(self.packed.flat[start:end].copy()),
            "targets": int(self.packed.labels[index]),
        }

    @property
    def lengths(self) -> np.ndarray:
        lengths = self.packed.lengths
        return lengths if self.max_length is None else np.minimum(lengths, self.max_length)


def collate_sequences(batch: Sequence[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the batch's longest sequence: ``inputs (B, T)``, ``lengths (B,)``, ``mask (B, T)``, ``targets (B,)``.

    Example:
        >>> out = collate_sequences([{"inputs": torch.tensor([5, 6, 7]), "targets": 1},
        ...                          {"inputs": torch.tensor([8]), "targets": 0}])
        >>> out["inputs"].tolist(), out["lengths"].tolist(), out["mask"].tolist()
        ([[5, 6, 7], [8, 0, 0]], [3, 1], [[True, True, True], [True, False, False]])
    """
    lengths = torch.tensor([len(s["inputs"]) for s in batch], dtype=torch.int64)
    inputs = torch.full((len(batch), int(lengths.max())), pad_id, dtype=torch.int64)
    for i, sample in enumerate(batch):
        inputs[i, : lengths[i]] = sample["inputs"]
    mask = torch.arange(inputs.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    targets = torch.tensor([s["targets"] for s in batch], dtype=torch.int64)
    return {"inputs": inputs, "lengths": lengths, "mask": mask, "targets": targets}


def padding_waste(lengths: np.ndarray, batches: Sequence[Sequence[int] | np.ndarray]) -> float:
    """Pad tokens / real tokens when each batch pads to its longest sequence."""
    real = padded = 0
    for batch in batches:
        batch_lengths = lengths[np.asarray(batch)]
        real += int(batch_lengths.sum())
        padded += int(batch_lengths.max()) * len(batch_lengths)
    return (padded - real) / max(real, 1)
