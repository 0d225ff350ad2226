"""What a chute LitData folder is, for the reader and the writer alike.

``chute.json`` (read and checked by :func:`read_chunks_meta`), split names, local or object-store
paths, and the LitData serializers that may be read: raw bytes, never a pickle, so a dataset from an
untrusted bucket cannot run code."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chute.datasets.shard_format import check_extra
from chute.errors import DataError
from chute.integrations.litdata_retry import Outage

META = "chute.json"


FORMAT = "chute-litdata/1"


# LitData serializers that read raw bytes and never unpickle (see the module docstring).
SAFE_SERIALIZERS = frozenset({"int", "float", "bool", "str", "tensor", "no_header_tensor", "numpy", "no_header_numpy"})


_SPLIT = re.compile(r"[A-Za-z0-9_-]+")


_REMOTE = ("s3://", "gs://", "gcs://", "r2://", "azure://", "hf://")


def import_litdata() -> Any:
    try:
        import litdata
    except ImportError:
        raise ImportError(
            "LitDataModule and LitDataCopy need LitData: pip install 'chute[litdata]' (or pip install litdata)."
        ) from None
    return litdata


def is_remote(path: str) -> bool:
    """Whether ``path`` is an object-store URL (``s3://``, ``gs://``, ...) rather than a local folder."""
    return path.startswith(_REMOTE)


def read_chunks_meta(
    input_dir: str, cache_dir: str, storage_options: Mapping[str, Any] | None = None, outage: Outage | None = None
) -> dict[str, Any]:
    """Read and check ``chute.json`` of ``input_dir`` (downloaded into ``cache_dir`` for a URL, tried again
    within ``outage``'s budget while the store does not answer)."""
    path = join_path(input_dir, META)
    if is_remote(input_dir):
        import_litdata()
        from litdata.streaming.fs_provider import _get_fs_provider

        local = os.path.join(cache_dir, f"{hashlib.sha256(input_dir.encode()).hexdigest()[:16]}-{META}")
        os.makedirs(cache_dir, exist_ok=True)

        def download() -> None:
            _get_fs_provider(path, dict(storage_options or {})).download_file(path, local)

        try:
            outage.call(download) if outage is not None else download()
        except DataError:  # the store never answered: named by the outage
            raise
        except Exception as err:  # botocore, obstore, gcsfs ... each raise their own "not found"
            raise DataError(
                f"Cannot read '{path}' ({type(err).__name__}: {err}): convert a dataset with scripts/to_litdata.py "
                "and upload the whole output folder there, or check the URL and data.storage_options."
            ) from err
        path_to_read = local
    else:
        path_to_read = path
    if not is_remote(input_dir) and os.path.exists(input_dir) and not os.path.isdir(input_dir):
        raise DataError(
            f"'{input_dir}' is a file, not a folder: data.input_dir names the folder scripts/to_litdata.py wrote "
            f"({META} and one LitData dataset per split)."
        )
    try:
        meta = json.loads(Path(path_to_read).read_text())
    except FileNotFoundError:
        raise DataError(f"No '{path}': convert a dataset with scripts/to_litdata.py first.") from None
    except (ValueError, OSError) as err:  # not JSON, not UTF-8 (UnicodeDecodeError), unreadable
        raise DataError(f"Cannot read '{path}' as a chute LitData description: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"'{path}' is not a chute LitData description (expected format {FORMAT!r}).")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(n, int) and n >= 0 for n in splits.values()):
        raise DataError(f"'{path}': 'splits' must map split names to sample counts.")
    for name in splits:
        check_split(name, where=f"'{path}'")
    check_extra(path, meta)  # only chute's own collate functions, plain model_kwargs
    return meta


class _Refused:
    """Stands in for every LitData serializer that could unpickle, so reading one fails instead."""

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, data_format: Any) -> None:
        raise DataError(
            f"This LitData dataset stores leaves with the '{data_format}' serializer, which chute refuses to read "
            f"(it could unpickle code). Allowed: {sorted(SAFE_SERIALIZERS)}; rewrite it with scripts/to_litdata.py."
        )

    def serialize(self, item: Any) -> tuple[bytes, str | None]:
        raise TypeError(f"chute does not write LitData '{self.name}' leaves")

    def deserialize(self, data: bytes) -> Any:
        self.setup(self.name)

    def can_serialize(self, item: Any) -> bool:
        return False


class _CopiedTensor:
    """LitData's tensor serializer, reading into a fresh buffer.

    LitData hands the deserializer a view of the chunk's read-only memory map; a tensor over it would
    alias a file LitData unmaps when it evicts the chunk (and torch warns that it is not writable).
    The copy costs one ``memcpy`` per leaf.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._inner: Any = None

    def _serializer(self) -> Any:
        if self._inner is None:
            from litdata.streaming.serializers import _SERIALIZERS

            self._inner = copy.copy(_SERIALIZERS[self.name])
        return self._inner

    def setup(self, data_format: Any) -> None:
        self._serializer().setup(data_format)

    def serialize(self, item: Any) -> tuple[bytes, str | None]:
        return self._serializer().serialize(item)

    def deserialize(self, data: bytes) -> Any:
        return self._serializer().deserialize(bytearray(data))

    def can_serialize(self, item: Any) -> bool:
        return bool(self._serializer().can_serialize(item))


def refusing_serializers() -> dict[str, Any]:
    """LitData ``serializers`` for reading: the raw ones (tensors copied out of the memory map), and a
    refusal for every other kind."""
    from litdata.streaming.serializers import _SERIALIZERS

    serializers: dict[str, Any] = {name: _Refused(name) for name in _SERIALIZERS if name not in SAFE_SERIALIZERS}
    serializers.update({name: _CopiedTensor(name) for name in ("tensor", "no_header_tensor")})
    return serializers


def check_split(name: str, where: str = "split") -> None:
    if not isinstance(name, str) or not _SPLIT.fullmatch(name):
        raise DataError(f"{where}: split name {name!r} must be letters, digits, '_' or '-' (it names a sub-folder).")


def join_path(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if is_remote(root) else os.path.join(root, name)
