"""The sharded JSONL format: a folder of <split>-NNNNN.jsonl files and an index.json listing each
shard's file and sample count, written from any map-style dataset (:func:`write_shards`) and read
back exactly (tensors keep their dtype; nothing is unpickled; extra index entries are plain values
only)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
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
        encoded = {"tensor": sample.tolist(), "dtype": str(sample.dtype).removeprefix("torch.")}
        if sample.numel() == 0:  # nested lists cannot say (0, 4): an image without boxes
            encoded["shape"] = list(sample.shape)
        return encoded
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
            tensor = torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
            return tensor.reshape(value["shape"]) if "shape" in value else tensor
        if "dict" in value:
            return {k: decode_sample(v) for k, v in value["dict"].items()}
        if "tuple" in value:
            return tuple(decode_sample(v) for v in value["tuple"])
        if "list" in value:
            return [decode_sample(v) for v in value["list"]]
        raise ValueError(f"unknown encoded value with keys {sorted(value)}")
    return value


# -- What a split's samples look like ------------------------------------------------------------
#
# The writer records each shard's layout in its index entry ("sample"): nested dicts, tuples and
# lists down to tensors (dtype and shape; a dimension that differs between samples is null) and
# scalars (the Python types seen). The reader checks every line against its split's layout, so a
# row with 3 features where the copy's have 30 is a bad line named by shard and line, not padded
# into a batch by a collate function that pads variable-length fields. Plain JSON, compared only.

Layout = dict[str, Any]

_ANY: Layout = {"any": True}  # samples differ in structure here: not checked below this point


def sample_layout(sample: Any) -> Layout:
    """The layout of one sample as :func:`decode_sample` gives it back (tensors, containers and
    JSON's scalars; the writer takes it of each sample read back from the text it wrote)."""
    if isinstance(sample, torch.Tensor):
        return {"tensor": list(sample.shape), "dtype": str(sample.dtype).removeprefix("torch.")}
    if isinstance(sample, dict):
        return {"dict": {str(k): sample_layout(v) for k, v in sample.items()}}
    if isinstance(sample, tuple | list):
        return {"tuple" if isinstance(sample, tuple) else "list": [sample_layout(v) for v in sample]}
    return {"scalar": [_scalar_type(sample)]}


def merge_layouts(a: Layout, b: Layout) -> Layout:
    """One layout that both samples fit: dimensions and dtypes that differ become null, scalar types
    join, and a difference in structure stops the description there."""
    if a == b:
        return a
    if "tensor" in a and "tensor" in b and len(a["tensor"]) == len(b["tensor"]):
        dims = [x if x == y else None for x, y in zip(a["tensor"], b["tensor"], strict=True)]
        return {"tensor": dims, "dtype": a["dtype"] if a["dtype"] == b["dtype"] else None}
    if "scalar" in a and "scalar" in b:
        return {"scalar": sorted(set(a["scalar"]) | set(b["scalar"]))}
    if "dict" in a and "dict" in b and list(a["dict"]) == list(b["dict"]):
        return {"dict": {k: merge_layouts(v, b["dict"][k]) for k, v in a["dict"].items()}}
    for kind in ("tuple", "list"):
        if kind in a and kind in b and len(a[kind]) == len(b[kind]):
            return {kind: [merge_layouts(x, y) for x, y in zip(a[kind], b[kind], strict=True)]}
    return _ANY


def check_layout(sample: Any, layout: Layout, where: str = "sample") -> None:
    """Raise ``ValueError`` naming the field where a decoded ``sample`` differs from ``layout``."""
    if "any" in layout:
        return
    if "tensor" in layout:
        if not isinstance(sample, torch.Tensor):
            raise ValueError(f"{where} is {_kind(sample)} where the split's samples have a tensor")
        dims = layout["tensor"]
        if sample.dim() != len(dims) or any(d is not None and d != n for d, n in zip(dims, sample.shape, strict=True)):
            raise ValueError(
                f"{where} has shape {_shape(list(sample.shape))} where the split's samples have {_shape(dims)}"
            )
        dtype = str(sample.dtype).removeprefix("torch.")
        if layout["dtype"] is not None and dtype != layout["dtype"]:
            raise ValueError(f"{where} is {dtype} where the split's samples are {layout['dtype']}")
    elif "dict" in layout:
        if not isinstance(sample, dict):
            raise ValueError(f"{where} is {_kind(sample)} where the split's samples have a dict")
        if list(sample) != list(layout["dict"]):
            raise ValueError(f"{where} has keys {list(sample)} where the split's samples have {list(layout['dict'])}")
        for key, value in sample.items():
            check_layout(value, layout["dict"][key], f"{where}[{key!r}]")
    elif "tuple" in layout or "list" in layout:
        kind, fields = ("tuple", layout["tuple"]) if "tuple" in layout else ("list", layout["list"])
        if type(sample) is not (tuple if kind == "tuple" else list):
            raise ValueError(f"{where} is {_kind(sample)} where the split's samples have a {kind}")
        if len(sample) != len(fields):
            raise ValueError(f"{where} has {len(sample)} elements where the split's samples have {len(fields)}")
        for i, (value, field) in enumerate(zip(sample, fields, strict=True)):
            check_layout(value, field, f"{where}[{i}]")
    elif _scalar_type(sample) not in layout["scalar"]:
        raise ValueError(f"{where} is {_kind(sample)} where the split's samples have {' or '.join(layout['scalar'])}")


def _scalar_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool | int | float | str):
        return type(value).__name__
    raise TypeError(f"Cannot store a {type(value).__name__} in a shard; use tensors, arrays, numbers or strings.")


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "a tensor"
    if isinstance(value, dict | tuple | list):
        return f"a {type(value).__name__}"
    return "null" if value is None else f"{type(value).__name__} {value!r:.40}"


def _shape(dims: list[int | None]) -> str:
    return "(" + ", ".join("any" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _valid_layout(value: Any) -> bool:
    """Whether an index's ``sample`` entry is a layout :func:`check_layout` can read."""
    if not isinstance(value, dict) or len(value) not in (1, 2):
        return False
    if value == _ANY:
        return True
    if "tensor" in value:
        dims, dtype = value["tensor"], value.get("dtype")
        return (
            isinstance(dims, list)
            and all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in dims)
            and (dtype is None or isinstance(dtype, str))
        )
    if len(value) != 1:
        return False
    ((kind, inner),) = value.items()
    if kind == "dict":
        return isinstance(inner, dict) and all(_valid_layout(v) for v in inner.values())
    if kind in ("tuple", "list"):
        return isinstance(inner, list) and all(_valid_layout(v) for v in inner)
    return kind == "scalar" and isinstance(inner, list) and all(isinstance(t, str) for t in inner)


def write_shards(
    samples: Iterable[Any],
    out: str | os.PathLike[str],
    split: str,
    samples_per_shard: int,
    total: int | None = None,
) -> list[dict[str, Any]]:
    """Write ``samples`` as ``out/<split>-NNNNN.jsonl`` shards; return their index entries (file,
    sample count and the layout of the shard's samples, :func:`sample_layout`)."""
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
                layout: Layout | None = None
            assert handle is not None
            text = json.dumps(encode_sample(sample), separators=(",", ":"))
            handle.write(text + "\n")
            entries[-1]["count"] += 1
            # of the sample as a reader gets it back: an empty (0, 4) tensor is stored as [] and read
            # as (0,), an IntEnum label as an int
            this = sample_layout(decode_sample(json.loads(text)))
            layout = this if layout is None else merge_layouts(layout, this)
            entries[-1]["sample"] = layout
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
    #: Per split, the layout its samples share (:func:`merge_layouts` of its shards' entries);
    #: ``None`` where an entry records none (an index written by hand or by an older chute).
    layouts: dict[str, Layout | None] = field(default_factory=dict)

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
        layouts: dict[str, Layout | None] = {}
        for split, entries in payload["splits"].items():
            shards = []
            layout: Layout | None = None
            unrecorded = False
            for entry in entries:
                file = inside(root, entry["file"], f"Shard index '{path}', split '{split}'")  # never read elsewhere
                count = int(entry["count"])
                if count < 0:
                    raise DataError(f"Shard index '{path}': negative count for '{entry['file']}'.")
                shards.append((file, count))
                if "sample" in entry and not _valid_layout(entry["sample"]):
                    raise DataError(
                        f"Shard index '{path}': the sample layout of '{entry['file']}' is not one chute writes; "
                        "write the shards again (or remove the entry's 'sample' key to read without the check)."
                    )
                if "sample" not in entry:
                    unrecorded = True
                elif count:
                    layout = entry["sample"] if layout is None else merge_layouts(layout, entry["sample"])
            splits[str(split)] = tuple(shards)
            layouts[str(split)] = None if unrecorded else layout  # one entry without: the split is not checked
        extra = {k: v for k, v in payload.items() if k not in ("format", "splits")}
        check_extra(path, extra)
        return cls(root, splits, extra, layouts)

    def shards(self, split: str) -> tuple[tuple[str, int], ...]:
        if split not in self.splits:
            raise DataError(f"Shard index in '{self.root}' has no '{split}' split (has {sorted(self.splits)}).")
        return self.splits[split]

    def layout(self, split: str) -> Layout | None:
        """The layout every sample of ``split`` has (``None``: not recorded, not checked)."""
        self.shards(split)
        return self.layouts.get(split)


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
