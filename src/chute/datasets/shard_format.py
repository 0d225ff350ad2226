"""The sharded JSONL format: a folder of <split>-NNNNN.jsonl files and an index.json listing each
shard's file and sample count, written from any map-style dataset (:func:`write_shards`) and read
back exactly (tensors keep their dtype; nothing is unpickled; extra index entries are plain values
only)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from chute.errors import DataError
from chute.paths import inside

INDEX = "index.json"


FORMAT = "chute-jsonl-shards/1"


def encode_sample(sample: Any) -> Any:
    """A JSON-ready copy of ``sample`` (nested dicts, tuples, lists, tensors, arrays, numbers, strings)."""
    if isinstance(sample, torch.Tensor):
        return {"tensor": sample.tolist(), "dtype": str(sample.dtype).removeprefix("torch.")}
    if isinstance(sample, np.ndarray):
        return encode_sample(torch.from_numpy(sample))
    if isinstance(sample, np.generic):
        return sample.item()
    if isinstance(sample, dict):
        return {"dict": {str(k): encode_sample(v) for k, v in sample.items()}}
    if isinstance(sample, tuple | list):
        return {"tuple" if isinstance(sample, tuple) else "list": [encode_sample(v) for v in sample]}
    if sample is None or isinstance(sample, bool | int | float | str):
        return sample
    raise TypeError(f"Cannot store a {type(sample).__name__} in a shard; use tensors, arrays, numbers or strings.")


def decode_sample(value: Any) -> Any:
    """The inverse of :func:`encode_sample`."""
    if isinstance(value, dict):
        if "tensor" in value:
            return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
        if "dict" in value:
            return {k: decode_sample(v) for k, v in value["dict"].items()}
        if "tuple" in value:
            return tuple(decode_sample(v) for v in value["tuple"])
        if "list" in value:
            return [decode_sample(v) for v in value["list"]]
        raise ValueError(f"unknown encoded value with keys {sorted(value)}")
    return value


def write_shards(
    samples: Iterable[Any],
    out: str | os.PathLike[str],
    split: str,
    samples_per_shard: int,
    total: int | None = None,
) -> list[dict[str, Any]]:
    """Write ``samples`` as ``out/<split>-NNNNN.jsonl`` shards; return their index entries."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard}: must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    handle = None
    try:
        for i, sample in enumerate(tqdm(samples, total=total, desc=f"Writing {split} shards", leave=False)):
            if i % samples_per_shard == 0:
                if handle is not None:
                    handle.close()
                name = f"{split}-{len(entries):05d}.jsonl"
                handle = open(out / name, "w")  # noqa: SIM115 (closed when the shard is full)
                entries.append({"file": name, "count": 0})
            assert handle is not None
            handle.write(json.dumps(encode_sample(sample), separators=(",", ":")) + "\n")
            entries[-1]["count"] += 1
    finally:
        if handle is not None:
            handle.close()
    return entries


def write_index(out: str | os.PathLike[str], splits: dict[str, list[dict[str, Any]]], **extra: Any) -> None:
    """Write ``index.json`` (last, so a folder with an index is complete)."""
    payload = {"format": FORMAT, "splits": splits, **extra}
    Path(out, INDEX).write_text(json.dumps(payload, indent=2))


@dataclass(frozen=True)
class ShardIndex:
    """What ``index.json`` says: per split, shard paths and sample counts, plus the writer's settings.

    :meth:`read` resolves every shard file inside ``root`` (an absolute name, ``..`` or a symlink
    leading out is a :class:`DataError`) and accepts only chute's own collate functions and plain
    ``model_kwargs``, so an index cannot make chute read other files or run other code.
    """

    root: str
    splits: dict[str, tuple[tuple[str, int], ...]]
    extra: dict[str, Any]

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> ShardIndex:
        root = os.fspath(root)
        path = os.path.join(root, INDEX)
        try:
            payload = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise DataError(f"No shard index '{path}': write shards with scripts/write_shards.py first.") from None
        except ValueError as err:
            raise DataError(f"Shard index '{path}' is not valid JSON: {err}") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise DataError(f"'{path}' is not a chute shard index (expected format {FORMAT!r}).")
        splits: dict[str, tuple[tuple[str, int], ...]] = {}
        for split, entries in payload["splits"].items():
            shards = []
            for entry in entries:
                file = inside(root, entry["file"], f"Shard index '{path}', split '{split}'")  # never read elsewhere
                count = int(entry["count"])
                if count < 0:
                    raise DataError(f"Shard index '{path}': negative count for '{entry['file']}'.")
                shards.append((file, count))
            splits[str(split)] = tuple(shards)
        extra = {k: v for k, v in payload.items() if k not in ("format", "splits")}
        check_extra(path, extra)
        return cls(root, splits, extra)

    def shards(self, split: str) -> tuple[tuple[str, int], ...]:
        if split not in self.splits:
            raise DataError(f"Shard index in '{self.root}' has no '{split}' split (has {sorted(self.splits)}).")
        return self.splits[split]


# An index's settings reach code too: ``collate`` is a dotted path that gets imported and called on
# samples, and ``model_kwargs`` go through Hydra's ``instantiate`` (which would build any nested
# ``_target_`` and resolve ``${...}``). So an index may only name chute's own collate functions and
# hold plain values.
_COLLATE = re.compile(r"chute(\.[A-Za-z_]\w*)*\.collate_\w+")


_HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})


def check_extra(path: str, extra: dict[str, Any]) -> None:
    collate = extra.get("collate")
    if collate is not None and not (isinstance(collate, str) and _COLLATE.fullmatch(collate)):
        raise DataError(
            f"Shard index '{path}': collate {collate!r} is not one of chute's collate functions "
            "('chute.<module>.collate_<name>'), and an index cannot name other code to import. Remove it "
            "from the index and pass your function as StreamingDataModule(collate_fn=...)."
        )
    _check_plain(path, "model_kwargs", extra.get("model_kwargs", {}))


def _check_plain(path: str, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _HYDRA_KEYS:
                raise DataError(f"Shard index '{path}': '{key}' holds {k!r}; an index holds plain values, not objects.")
            _check_plain(path, f"{key}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(path, f"{key}[{i}]", v)
    elif isinstance(value, str) and "${" in value:
        raise DataError(f"Shard index '{path}': '{key}' = {value!r} is an interpolation; an index holds plain values.")
