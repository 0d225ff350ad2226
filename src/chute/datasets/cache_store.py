"""How a cache of a dataset's deterministic stage is stored: one array per field, in shared memory or
as raw files memory-mapped read-only under a JSON manifest written last (fingerprint, shapes,
dtypes, sizes), built once and published atomically; colour images channels-last."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from chute.errors import DataError
from chute.loader.buffers import batch_buffer
from chute.paths import inside

MANIFEST = "cache.json"


_VERSION = 4  # 2: the manifest lists missing samples; 3: images turned by their EXIF orientation; 4: channels-last


def fingerprint(files: Iterable[str | bytes], config: Any) -> str:
    """SHA-256 over each file's path, size and modification time, and ``repr(config)``.

    Changing, adding or removing a source file, or changing the deterministic config, changes it.
    """
    digest = hashlib.sha256()
    for file in files:
        path = os.fsdecode(file)
        try:
            stat = os.stat(path)
        except OSError as err:  # e.g. a dangling symlink: reading it later is a bad sample, named and counted
            digest.update(os.fsencode(path) + f"\0unreadable {err.errno}\n".encode())
            continue
        digest.update(os.fsencode(path) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(repr(config).encode())
    return digest.hexdigest()


def _leaves(sample: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(name, value)`` per leaf of a (nested) tuple/list/dict sample, names like ``0`` or ``targets.a``."""
    if isinstance(sample, dict):
        return [leaf for k, v in sample.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    if isinstance(sample, tuple | list):
        return [leaf for i, v in enumerate(sample) for leaf in _leaves(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), sample)]


def _channels_last(array: np.ndarray) -> bool:
    """Whether a field of this (first) sample is a colour image, stored ``(H, W, C)`` (see the module)."""
    return array.ndim == 3 and array.dtype == np.uint8 and array.shape[0] in (3, 4)


def _stored(array: np.ndarray, channels_last: bool) -> np.ndarray:
    return array.transpose(1, 2, 0) if channels_last else array


def as_read(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A stored sample ``(H, W, C)`` or batch ``(N, H, W, C)`` as ``(C, H, W)`` / ``(N, C, H, W)`` views."""
    if not channels_last:
        return tensor
    return tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)


def gather(array: np.ndarray, index: np.ndarray) -> torch.Tensor:
    """``array[index]`` as a tensor: images into a reused batch buffer (in a worker, shared memory
    the main process reads without a copy), small fields (labels) as NumPy gathers them.

    NumPy's own gather allocates each batch afresh (tens of MB, which it asks the kernel to back
    with huge pages): 11 ms a batch of 64 photos at 256 px on the 2-core machine, against ~1 ms
    into a buffer already mapped."""
    if array.ndim < 2 or array[0].nbytes < 4096:
        return torch.from_numpy(np.asarray(array[index]))
    if len(index) and (index.min() < 0 or index.max() >= len(array)):
        raise IndexError(f"sample index out of range 0..{len(array) - 1}: {index.min()}..{index.max()}")
    out = batch_buffer((len(index), *array.shape[1:]), torch.from_numpy(np.empty(0, array.dtype)).dtype)
    # mode="clip" (the indices are checked above): with "raise", NumPy gathers through a temporary
    # buffer when given ``out`` (2.9 ms a batch against 0.9 here).
    np.take(array, index, axis=0, out=out.numpy(), mode="clip")
    return out


def rebuild(template: Any, values: Iterable[Any]) -> Any:
    """``template``'s nesting (dicts, tuples, lists) with its leaves, in order, taken from ``values``."""
    return _fill_in(template, iter(values))


def _fill_in(node: Any, leaves: Iterator[Any]) -> Any:
    # A module-level function: a nested recursive one would be a reference cycle holding ``leaves``
    # (the batch's tensors) until the garbage collector ran, keeping every gathered batch buffer busy.
    if isinstance(node, dict):
        return {k: _fill_in(v, leaves) for k, v in node.items()}
    if isinstance(node, tuple | list):
        return type(node)(_fill_in(v, leaves) for v in node)
    return next(leaves)


def _as_array(value: Any, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray | np.generic | int | float | bool):
        return np.asarray(value)
    raise DataError(
        f"{where}: cannot cache a {type(value).__name__}; the deterministic stage must yield tensors/numbers."
    )


def scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _first(source: Any, n: int) -> tuple[list[str], list[np.ndarray], list[bool], Any, int]:
    """Field names, arrays (as the source gives them), which of them are stored channels-last, and
    template of the first sample the source does not leave out, and its index."""
    for i in range(n):
        sample = source[i]
        if sample is not None:
            break
    else:
        raise DataError(f"Cannot cache a dataset whose {n} samples were all left out (unreadable).")
    leaves = _leaves(sample)
    names = [name or "sample" for name, _ in leaves]
    firsts = [_as_array(v, f"sample {i}, field {n!r}") for n, (_, v) in zip(names, leaves, strict=True)]
    return names, firsts, [_channels_last(f) for f in firsts], sample, i


def _fill(
    source: Any,
    first: Any,
    start: int,
    names: list[str],
    outs: Sequence[np.ndarray],
    progress: bool,
    layouts: Sequence[bool],
) -> list[int]:
    """Write every sample into ``outs`` from ``start`` (whose sample is ``first``); the indices left out."""
    n = len(outs[0])
    missing = list(range(start))  # before the first sample: all left out
    for i in tqdm(range(start, n), desc="Building cache", unit="sample", disable=not progress, leave=False):
        sample = first if i == start else source[i]
        if sample is None:
            missing.append(i)
            continue
        leaves = _leaves(sample)
        if len(leaves) != len(outs):
            raise DataError(f"Sample {i} has {len(leaves)} fields, sample {start} has {len(outs)}: cannot cache it.")
        for name, (_, value), out, last in zip(names, leaves, outs, layouts, strict=True):
            array = _as_array(value, f"sample {i}, field {name!r}")
            stored = _stored(array, last and array.ndim == 3)
            if stored.shape != out.shape[1:]:
                expected = (out.shape[3], *out.shape[1:3]) if last else out.shape[1:]
                raise DataError(
                    f"Sample {i}, field {name!r} has shape {array.shape}, sample {start} has {expected}: the "
                    "cached (deterministic) stage must give fixed shapes, e.g. resize and crop to one size."
                )
            out[i] = stored
    return missing


def build_memory(source: Any, n: int, progress: bool) -> tuple[list[str], list[np.ndarray], Any, list[int], list[bool]]:
    names, firsts, layouts, template, start = _first(source, n)
    # torch shared memory: forked or spawned workers map the same pages instead of copying them.
    tensors = [
        torch.from_numpy(np.empty((n, *_stored(f, last).shape), dtype=f.dtype)).share_memory_()
        for f, last in zip(firsts, layouts, strict=True)
    ]
    outs = [t.numpy() for t in tensors]
    missing = _fill(source, template, start, names, outs, progress, layouts)
    return names, outs, template, missing, layouts


def is_shared(array: np.ndarray) -> bool:
    base = array.base
    return isinstance(base, torch.Tensor) and base.is_shared()


def _manifest_path(cache_dir: str) -> Path:
    return Path(cache_dir) / MANIFEST


def load_disk(
    cache_dir: str, key: str, n: int
) -> tuple[list[str], list[np.ndarray], Any, list[int], list[bool]] | None:
    """The cached arrays, or ``None`` (with the reason logged) when the cache is missing, stale or damaged.

    Raises:
        DataError: The manifest names a file outside ``cache_dir`` or a dtype holding Python objects
            (never written by chute: the manifest was edited or forged); nothing is read then.
    """
    checked = _checked(cache_dir, key, n)
    if isinstance(checked, str):
        if checked:
            rank_zero_info(f"Cache '{cache_dir}': {checked}, rebuilding.")
        return None
    manifest, files = checked
    # Copy-on-write: read like "r", but torch can view it without a read-only warning (nothing
    # writes to it). Mapped only once every field has passed the checks above.
    arrays: list[np.ndarray] = [np.memmap(path, dtype=dtype, mode="c", shape=shape) for path, dtype, shape in files]
    template = rebuild(_template_from(manifest["template"]), range(len(arrays)))
    missing = [int(i) for i in manifest.get("missing", []) if 0 <= int(i) < n]
    if missing:
        rank_zero_info(f"Cache '{cache_dir}': {len(missing)} unreadable samples were left out when it was built.")
    layouts = [f.get("layout") == "hwc" and len(f["shape"]) == 3 for f in manifest["fields"]]
    return [f["name"] for f in manifest["fields"]], arrays, template, missing, layouts


def _checked(
    cache_dir: str, key: str, n: int
) -> tuple[dict[str, Any], list[tuple[Path, np.dtype[Any], tuple[int, ...]]]] | str:
    """The manifest and ``(path, dtype, shape)`` of every field's file if the cache in ``cache_dir`` is
    complete and built for ``key`` and ``n`` samples; else why not (``""``: there is none).

    Raises:
        DataError: The manifest names a file outside ``cache_dir`` or a dtype holding Python objects.
    """
    try:
        manifest = json.loads(_manifest_path(cache_dir).read_text())
    except FileNotFoundError:
        return ""
    except ValueError:
        return "unreadable manifest"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("fields"), list):
        return "unreadable manifest"
    if manifest.get("version") != _VERSION or manifest.get("key") != key or manifest.get("length") != n:
        return "built for other source files or settings"
    where = f"Cache manifest '{_manifest_path(cache_dir)}'"
    files: list[tuple[Path, np.dtype[Any], tuple[int, ...]]] = []
    for field in manifest["fields"]:
        # The manifest is data, not trusted: its file names stay inside the cache folder, and no dtype
        # with Python objects, which a memory map would read as raw pointers (worse than unpickling).
        path = Path(inside(cache_dir, field["file"], f"{where}, field {field.get('name')!r}"))
        dtype, shape = np.dtype(field["dtype"]), (n, *field["shape"])
        if dtype.hasobject:
            raise DataError(
                f"{where}, field {field.get('name')!r} has dtype {dtype} (Python objects): a cache holds plain "
                "numeric arrays only and nothing in it is unpickled. Delete the folder; the source must yield "
                "tensors or numbers."
            )
        expected = int(np.prod(shape)) * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            return f"'{field['file']}' is missing or truncated"
        files.append((path, dtype, shape))
    return manifest, files


def _template_from(spec: Any) -> Any:
    if isinstance(spec, dict) and "dict" in spec:
        return {k: _template_from(v) for k, v in spec["dict"].items()}
    if isinstance(spec, dict) and "tuple" in spec:
        return tuple(_template_from(v) for v in spec["tuple"])
    if isinstance(spec, dict) and "list" in spec:
        return [_template_from(v) for v in spec["list"]]
    return None


def _template_spec(sample: Any) -> Any:
    if isinstance(sample, dict):
        return {"dict": {str(k): _template_spec(v) for k, v in sample.items()}}
    if isinstance(sample, tuple):
        return {"tuple": [_template_spec(v) for v in sample]}
    if isinstance(sample, list):
        return {"list": [_template_spec(v) for v in sample]}
    return None


def build_disk(source: Any, n: int, cache_dir: str, key: str, progress: bool) -> None:
    """Write the arrays to a temporary sibling folder, manifest last, and swap it into place."""
    target = Path(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        names, firsts, layouts, template, start = _first(source, n)
        outs = [
            np.memmap(tmp / f"field{j}.bin", dtype=f.dtype, mode="w+", shape=(n, *_stored(f, last).shape))
            for j, (f, last) in enumerate(zip(firsts, layouts, strict=True))
        ]
        missing = _fill(source, template, start, names, outs, progress, layouts)
        fields = []
        for j, (name, out, last) in enumerate(zip(names, outs, layouts, strict=True)):
            out.flush()  # raw bytes, no header: the expected size is exactly n * item bytes
            fields.append(
                {
                    "name": name, "file": f"field{j}.bin", "dtype": out.dtype.str, "shape": list(out.shape[1:]),
                    "layout": "hwc" if last else "as-given",
                }
            )  # fmt: skip
        del outs
        manifest = {
            "version": _VERSION,
            "key": key,
            "length": n,
            "fields": fields,
            "template": _template_spec(template),
            "missing": missing,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        publish(tmp, target, key, n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(built: Path, target: Path, key: str, n: int) -> None:
    """Make the complete folder ``built`` the cache at ``target``, safe against other builders.

    Nodes that share storage may build the same cache at once (Lightning runs ``prepare_data`` once
    per node, and a lock may not hold across nodes). So a cache already published for this ``key``
    is never replaced: the later builder drops its own copy and reads that one. A stale cache (other
    files or settings) is renamed aside first, never deleted in place, so a process still reading
    it keeps its mapped files; a builder that loses the race to rename into place drops its copy.
    """
    if _current(target, key, n):
        return  # another builder published it while this one built
    if target.exists() and not _current(target, key, n):  # asked again: another may have just published
        aside = target.parent / f".{target.name}.stale-{os.getpid()}-{time.monotonic_ns()}"
        try:
            target.rename(aside)
        except FileNotFoundError:  # another builder moved it first
            pass
        else:
            shutil.rmtree(aside, ignore_errors=True)  # open memory maps of its files stay valid
    try:
        built.rename(target)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _current(target, key, n):
            raise
        # another builder renamed its complete cache into place first: keep that one


def _current(target: Path, key: str, n: int) -> bool:
    """Whether ``target`` holds a complete cache for ``key``: its manifest (written last) says so and
    every field's file has its full size (a damaged or forged cache is replaced, as :func:`load_disk`
    would)."""
    try:
        return not isinstance(_checked(str(target), key, n), str)
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return False


@contextlib.contextmanager
def build_lock(cache_dir: str) -> Iterator[None]:
    """Hold an exclusive lock beside ``cache_dir`` while checking and building it, so processes that
    share a lock (one machine; NFS with locking) build it once and the others wait and read it.
    Where locks do not work (``ENOLCK``, some shared filesystems) it goes on unlocked:
    :func:`publish` keeps concurrent builders safe without it."""
    target = Path(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
