"""File names read from files (shard indexes, cache manifests), resolved inside the folder that holds them.

A manifest names its files relative to its own folder. Whoever wrote the manifest must not be able
to make chute read anything else: an absolute name, a ``..`` or a symlink that leads out of the
folder is refused with a :class:`~chute.errors.DataError`, before anything is opened.
"""

from __future__ import annotations

import os

from chute.errors import DataError


def inside(root: str | os.PathLike[str], relative: object, where: str) -> str:
    """The real path of ``relative`` inside ``root``; a :class:`DataError` if it would leave ``root``.

    Both sides are resolved with ``os.path.realpath`` (symlinks followed, ``..`` collapsed), so a
    symlink inside ``root`` that points elsewhere is refused like ``../x`` is; one that points to
    another file inside ``root`` is fine.

    Args:
        root: The folder the manifest declares its files in (e.g. the shard folder).
        relative: The file name exactly as the manifest gives it.
        where: What named it, for the error, e.g. ``"Shard index '/data/index.json', split 'train'"``.

    Returns:
        The resolved path, inside the real path of ``root``.

    Raises:
        DataError: ``relative`` is not a non-empty string, is absolute, or resolves to ``root``
            itself or to a path outside it.

    Example:
        >>> inside("/data/shards", "train-00000.jsonl", "index") == os.path.realpath("/data/shards/train-00000.jsonl")
        True
        >>> inside("/data/shards", "../secret.jsonl", "Shard index '/data/shards/index.json'")
        Traceback (most recent call last):
        ...
        chute.errors.DataError: Shard index '/data/shards/index.json' names '../secret.jsonl', which resolves to ...
    """
    root = os.fspath(root)

    def refuse(why: str) -> DataError:
        return DataError(
            f"{where} names {relative!r}, which {why}: a manifest may only name files inside '{root}', relative "
            "to it (no absolute paths, and no '..' or symlinks leading out). Rewrite it with the tool that made it."
        )

    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise refuse("is not a file name")
    if os.path.isabs(relative):
        raise refuse("is an absolute path")
    real_root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(real_root, relative))
    try:
        contained = os.path.commonpath([path, real_root]) == real_root
    except ValueError:  # e.g. another drive on Windows
        contained = False
    if not contained:
        raise refuse(f"resolves to '{path}', outside the folder")
    if path == real_root:
        raise refuse("is the folder itself, not a file in it")
    return path
