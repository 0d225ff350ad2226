"""Variable-length sequences: JSONL records packed into flat numpy arrays, padding collate, length bucketing.

Records are ``{"tokens": [3, 17, 5], "label": 1}`` (token ids) or ``{"text": "abc", "label": 1}``
(characters, mapped through a :class:`CharVocab` built on the training split only). All sequences
of a split live in one flat ``int64`` array plus an offsets array, so worker processes share them
without copy-on-write of millions of Python lists.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from chute.errors import DataError


@dataclass
class RawRecords:
    """What a JSONL file holds, before token ids are assigned: per record tokens or text, and a label."""

    source: str
    tokens: list[list[int]] | None
    texts: list[str] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def read_jsonl(path: str | os.PathLike[str], label_key: str = "label") -> RawRecords:
    """Read ``{"tokens": [...] | "text": "...", label_key: int}`` lines; errors name the file and line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Sequence file '{path}' does not exist.")
    tokens: list[list[int]] = []
    texts: list[str] = []
    labels: list[int] = []
    kind: str | None = None
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"'{path}', line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where} is not JSON ({err.msg} at column {err.colno}).") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}.")
            this = "tokens" if "tokens" in record else "text" if "text" in record else None
            if this is None:
                raise DataError(f"{where}: needs a 'tokens' (list of ids) or 'text' (string) field.")
            if kind is not None and this != kind:
                raise DataError(f"{where}: has '{this}' but earlier lines have '{kind}'; use one kind per file.")
            kind = this
            label = record.get(label_key)
            if isinstance(label, bool) or not isinstance(label, int):
                raise DataError(f"{where}: '{label_key}' must be an integer class index, got {label!r}.")
            labels.append(label)
            value = record[this]
            if this == "text":
                if not isinstance(value, str) or not value:
                    raise DataError(f"{where}: 'text' must be a non-empty string.")
                texts.append(value)
            else:
                if not isinstance(value, list) or not value or not all(_is_id(v) for v in value):
                    raise DataError(f"{where}: 'tokens' must be a non-empty list of non-negative integers.")
                tokens.append(value)
    if not labels:
        raise DataError(f"Sequence file '{path}' has no records.")
    return RawRecords(path, tokens if kind == "tokens" else None, texts if kind == "text" else None, np.array(labels))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
