"""Write a dataset folder once, atomically, and reuse it while its settings are unchanged.

Every bundled-data writer (digits PNGs, sequence JSONL, shards) goes through :func:`materialize`: the
folder is built in a temporary sibling and renamed into place, with a marker file recording the
settings. A crashed or concurrent writer (one per DDP rank) never leaves half a dataset behind, and a
folder that chute did not write is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chute.errors import DataError

MARKER = ".chute-dataset.json"


def read_marker(root: Path) -> dict[str, Any] | None:
    """The settings a chute writer recorded in ``root``, or ``None``."""
    try:
        value = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def materialize(root: str | os.PathLike[str], manifest: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Make ``root`` hold what ``write(tmp_dir)`` writes for ``manifest``; no-op if it already does.

    Args:
        root: Target folder.
        manifest: JSON-serializable settings; a folder with a different manifest is rewritten.
        write: Fills the (empty, temporary) folder it is given.
    """
    root = Path(root)
    manifest = json.loads(json.dumps(manifest))  # compare as it will read back
    if read_marker(root) == manifest:
        return root
    if root.exists() and any(root.iterdir()) and read_marker(root) is None:
        raise DataError(f"'{root}' exists and was not written by chute; point the data path elsewhere or empty it.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(manifest, indent=2))
        if root.exists():  # a stale folder from other settings, written by us
            shutil.rmtree(root, ignore_errors=True)
        try:
            tmp.rename(root)
        except OSError:
            if read_marker(root) != manifest:  # not a concurrent writer's identical folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
