"""A sequence task whose label depends on both content and length, written as JSONL, offline.

Each sequence holds token ids from two groups, "low" (``1 .. V/2``) and "high" (the rest). Its label
is one of four classes: ``2 * [long] + [more low tokens than high tokens]``, where short sequences
have ``min_length`` to 40% of the way to ``max_length`` tokens and long ones from 60% of the way on.
Telling long from short needs the true length: a model that pools over padding as if it were data
sees, in length-bucketed batches, almost no padding and so no length at all, while a model that
uses the mask (the lengths) can.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from chute.datasets.materialize import materialize


class LengthMajoritySequences:
    """Writes ``root/train.jsonl`` and ``root/val.jsonl`` of ``{"tokens": [...], "label": k}``, once.

    Args:
        num_train: Training sequences.
        num_val: Validation sequences.
        vocab_size: Token ids are ``1 .. vocab_size - 1`` (0 is left for padding).
        min_length: Shortest sequence.
        max_length: Longest sequence (lengths are uniform in between).
        seed: Seed of the generator.
        only_at: Write only when called with this location (the config's own default path); a
            DataModule pointed elsewhere reads the data found there and writes nothing
            (:meth:`~chute.datamodules.base.ChuteDataModule.run_prepare`). ``None``: write anywhere.

    Example:
        >>> import tempfile
        >>> root = LengthMajoritySequences(num_train=8, num_val=4)(tempfile.mkdtemp() + "/seq")
        >>> sorted(p.name for p in root.glob("*.jsonl"))
        ['train.jsonl', 'val.jsonl']
    """

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 1000,
        vocab_size: int = 16,
        min_length: int = 8,
        max_length: int = 96,
        seed: int = 0,
        *,
        only_at: str | None = None,
    ) -> None:
        if vocab_size < 4:
            raise ValueError(f"vocab_size={vocab_size}: needs at least 4 ids")
        if not min_length >= 2 or max_length < min_length + 10:
            raise ValueError(f"min_length={min_length}, max_length={max_length}: need 2 <= min and max >= min + 10")
        self.num_train, self.num_val, self.vocab_size = num_train, num_val, vocab_size
        self.min_length, self.max_length, self.seed = min_length, max_length, seed
        self.only_at = only_at

    @property
    def manifest(self) -> dict[str, object]:
        return {
            "source": "chute.datasets.LengthMajoritySequences", "num_train": self.num_train, "num_val": self.num_val,
            "vocab_size": self.vocab_size, "min_length": self.min_length, "max_length": self.max_length,
            "seed": self.seed,
        }  # fmt: skip

    @property
    def threshold(self) -> int:
        """Sequences longer than this are "long"."""
        return (self.min_length + self.max_length) // 2

    def __repr__(self) -> str:
        return f"LengthMajoritySequences({self.manifest})"

    def __call__(self, root: str | os.PathLike[str]) -> Path:
        return materialize(Path(root), self.manifest, self._write)

    def label(self, tokens: np.ndarray) -> int:
        low = int((tokens <= self.vocab_size // 2).sum())
        return 2 * int(len(tokens) > self.threshold) + int(low > len(tokens) - low)

    def _length(self, rng: np.random.Generator) -> int:
        gap = (self.max_length - self.min_length) // 5  # no lengths near the threshold: never a coin flip
        if rng.random() < 0.5:
            return int(rng.integers(self.min_length, self.threshold - gap + 1))
        return int(rng.integers(self.threshold + gap + 1, self.max_length + 1))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        length = self._length(rng)
        # A clear majority (20-40% or 60-80% low tokens, exactly) keeps the labels free of coin flips.
        share = rng.uniform(0.2, 0.4) if rng.random() < 0.5 else rng.uniform(0.6, 0.8)
        half = self.vocab_size // 2
        low = rng.permutation(np.arange(length) < round(share * length))
        return np.where(low, rng.integers(1, half + 1, length), rng.integers(half + 1, self.vocab_size, length))

    def _write(self, out: Path) -> None:
        rng = np.random.default_rng(self.seed)
        for split, count in (("train", self.num_train), ("val", self.num_val)):
            with open(out / f"{split}.jsonl", "w") as f:
                for _ in range(count):
                    tokens = self.sample(rng)
                    f.write(json.dumps({"tokens": tokens.tolist(), "label": self.label(tokens)}) + "\n")
