"""Indexing class-folder trees (``root/<class>/<file>``): the files of each class in one NumPy buffer
(:class:`FolderIndex`), found by a walk that follows links once and never into the tree again, the
train/val/test folders, and the seeded stratified hold-out."""

from __future__ import annotations

import collections
import logging
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chute.errors import ConfigError, DataError
from chute.images import IMG_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderIndex:
    """The files of one split: relative paths and integer labels, held in numpy arrays.

    Paths are stored as one fixed-width bytes array rather than a list of ``str``: DataLoader
    workers fork the parent, and touching the refcount of millions of Python strings would copy
    every page of the list into every worker (PyTorch issue #13246).
    """

    root: str
    paths: np.ndarray  # dtype "S<n>", paths relative to root, UTF-8
    targets: np.ndarray  # int64
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[index]))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=len(self.class_names)).astype(np.int64)

    def subset(self, indices: np.ndarray) -> FolderIndex:
        return FolderIndex(self.root, self.paths[indices], self.targets[indices], self.class_names)


def scan_folder(
    root: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    what: str = "images",
) -> FolderIndex:
    """Index ``root/<class>/**/<file>`` (classes sorted by name, files sorted by path).

    Args:
        root: Folder holding one sub-folder per class.
        class_names: Classes expected (e.g. the training split's); a differing set raises.
        extensions: File name endings that count (lower case), e.g. ``chute.images.IMG_EXTENSIONS``.
        what: What the files are, for messages (``images``, ``videos``).

    Raises:
        DataError: ``root`` is missing or holds no class folders, a class folder holds no files,
            or the classes differ from ``class_names``.
    """
    root = os.fspath(root)
    kind = what.capitalize()[:-1] if what.endswith("s") else what.capitalize()  # "Image", "Video"
    if not os.path.isdir(root):
        raise DataError(f"{kind} folder '{root}' does not exist or is not a directory.")
    with os.scandir(root) as listing:
        entries = list(listing)
    found = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    files = [e.name for e in entries if e.is_file()]
    loose = [name for name in files if not name.startswith(".")]  # files beside the class folders: in none
    if not found:
        matching = [name for name in files if name.lower().endswith(extensions)]
        hint = f" It holds {len(matching)} loose {what}; move them into one folder per class." if matching else ""
        raise DataError(f"{kind} folder '{root}' has no class folders: expected '{root}/<class>/<{what[:-1]}>'.{hint}")
    if loose:  # said, not read
        log.warning(
            "'%s': %d file(s) lie beside the class folders, in none of them, and were left out (first: %s); "
            "move each into its class's folder.", root, len(loose), sorted(loose)[0],
        )  # fmt: skip
    folders = dict(zip(found, found, strict=True))  # class name -> its folder's name on disk
    if class_names is not None and list(class_names) != found:
        folders = _same_classes(root, list(class_names), found)
    paths: list[str] = []
    targets: list[int] = []
    walk = _Walk(root, extensions)
    for label, folder in enumerate(folders.values()):
        files = walk.files(os.path.join(root, folder))
        if not files:
            raise DataError(
                f"Class folder '{os.path.join(root, folder)}' contains no {what} "
                f"(looked for {', '.join(extensions)}). Add some or remove the folder."
            )
        paths.extend(os.path.join(folder, f) for f in files)
        targets.extend([label] * len(files))
    walk.check()
    walk.report(root, what)
    # os.fsencode: the file system's own bytes, also for a name that is not valid UTF-8 (Python keeps
    # such bytes as surrogates; os.fsdecode in ``path`` turns them back, so the file still opens).
    encoded = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
    return FolderIndex(root, encoded, np.asarray(targets, dtype=np.int64), tuple(folders))


def _same_classes(root: str, expected: list[str], found: list[str]) -> dict[str, str]:
    """The training split's class names mapped to this split's folders of the same names, where the
    names differ only in their Unicode form (``café`` composed on one disk, decomposed by a copy from
    macOS); any other difference is an error listing the classes missing and unexpected."""
    by_form = {unicodedata.normalize("NFC", name): name for name in found}
    if len(by_form) == len(found) and {unicodedata.normalize("NFC", name) for name in expected} == set(by_form):
        return {name: by_form[unicodedata.normalize("NFC", name)] for name in expected}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    raise DataError(
        f"Classes in '{root}' differ from the training split's: missing {missing}, unexpected {extra}. "
        "Every split needs the same class folders."
    )


class _Walk:
    """The files below a split's class folders, each reached by exactly one path.

    Links are followed (a class folder, or a folder inside one, may be a link to data stored
    elsewhere), but a link that would index a file twice is an error naming it: a link to a folder
    already walked or holding one (``zz -> .`` in a split folder would make a class ``zz`` of every
    image, each under a wrong label; ``cats/again -> ..`` would never end), two links to one file,
    or a link to a file that is also indexed where it lies. Only links cost a system call: a tree
    without any is walked as before.
    """

    def __init__(self, root: str, extensions: tuple[str, ...]) -> None:
        self.extensions = extensions
        self.passed: collections.Counter[str] = collections.Counter()  # files of other kinds, by extension
        self.walked: list[tuple[str, str]] = [(os.path.realpath(root), root)]  # (real folder, path to it)
        self.linked: dict[str, str] = {}  # real file -> the link that reached it

    def files(self, folder: str) -> list[str]:
        """Files below ``folder`` (recursively) with one of the extensions, as sorted relative paths."""
        if os.path.islink(folder):
            self._enter(folder)
        out = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            kept = []
            for name in sorted(dirnames):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    self._enter(path)
                kept.append(name)
            dirnames[:] = kept
            rel = os.path.relpath(dirpath, folder)
            for name in filenames:
                if self._counts(name):
                    path = os.path.join(dirpath, name)
                    if os.path.islink(path):
                        self._link(path)
                    out.append(name if rel == "." else os.path.join(rel, name))
                elif not name.startswith("."):
                    self.passed[os.path.splitext(name)[1].lower() or "(no extension)"] += 1
        return sorted(out)

    def report(self, root: str, what: str) -> None:
        """Log the files left out as not of the kind read (``.heic`` photos, ``.txt`` notes), once."""
        if self.passed:
            kinds = ", ".join(f"{ext} x{n}" for ext, n in self.passed.most_common(6))
            log.warning(
                "'%s': %d file(s) are not %s chute reads and were left out (%s); it reads %s.",
                root, sum(self.passed.values()), what, kinds, " ".join(self.extensions),
            )  # fmt: skip

    def _counts(self, name: str) -> bool:
        return name.lower().endswith(self.extensions) and not name.startswith(".")

    def _enter(self, link: str) -> None:
        real = os.path.realpath(link)
        for walked, path in self.walked:
            if real == walked or real.startswith(walked + os.sep) or walked.startswith(real + os.sep):
                raise DataError(
                    f"'{link}' is a link to '{real}', which overlaps '{path}', a folder indexed already: its "
                    "files would be indexed twice (under two labels, or without end). Remove the link, or "
                    "point it at data that is not in the tree."
                )
        self.walked.append((real, link))

    def _link(self, link: str) -> None:
        real = os.path.realpath(link)
        if real in self.linked:
            raise DataError(
                f"'{link}' and '{self.linked[real]}' are links to the same file '{real}': it would be "
                "indexed twice. Keep one."
            )
        self.linked[real] = link

    def check(self) -> None:
        """After the walk: no linked file lies in a folder that was walked (it is indexed there too)."""
        for real, link in self.linked.items():
            for walked, path in self.walked:
                parts = os.path.relpath(real, walked).split(os.sep)
                indexed = self._counts(parts[-1]) and not any(p.startswith(".") for p in parts)
                if real.startswith(walked + os.sep) and indexed:
                    shown = os.path.join(path, *parts)
                    raise DataError(
                        f"'{link}' is a link to '{real}', which is indexed as '{shown}' too: each file "
                        "must appear once. Remove the link."
                    )


def scan_unlabeled(
    root: str | os.PathLike[str],
    class_names: Sequence[str],
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    what: str = "images",
) -> FolderIndex:
    """Index every file below ``root`` (any layout, sorted by path) with label ``-1``: data to
    predict on. ``class_names`` are the trained model's, kept for reference.

    Raises:
        DataError: ``root`` is missing or holds none of the files.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"Folder to predict on '{root}' does not exist or is not a directory.")
    real = os.path.realpath(root)  # a root that is itself a link is walked where it leads
    walk = _Walk(real, extensions)
    files = walk.files(real)
    walk.check()
    walk.report(root, what)
    if not files:
        raise DataError(f"Folder to predict on '{root}' holds no {what} (looked for {', '.join(extensions)}).")
    encoded = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
    return FolderIndex(root, encoded, np.full(len(files), -1, dtype=np.int64), tuple(class_names))


def discover_splits(
    root: str,
    split_dirs: dict[str, str],
    val_fraction: float,
    seed: int,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    what: str = "images",
    missing_hint: str = "",
) -> dict[str, FolderIndex | None]:
    """The ``train``, ``val`` and ``test`` splits of a class-folder tree, as every folder DataModule finds them.

    Layouts: ``root/<train_dir>/<class>/*`` with ``root/<val_dir>/...`` (and optionally
    ``root/<test_dir>/...``); or ``root/<class>/*`` (or ``<train_dir>`` alone) with ``val_fraction``,
    a share of each class held out with :func:`stratified_split` seeded by ``seed``. Without a test
    split, ``test`` is the ``val`` index itself (the same object). ``split_dirs`` maps split names
    to folder names; ``missing_hint`` ends the error for a missing root.

    Raises:
        DataError: the root or a class folder is missing or empty, or classes differ between splits.
        ConfigError: ``val_fraction`` is set while a validation folder exists.
    """
    if not os.path.isdir(root):
        raise DataError(f"Dataset root '{root}' does not exist or is not a directory.{missing_hint}")
    split_path = {k: os.path.join(root, d) for k, d in split_dirs.items()}
    layered = os.path.isdir(split_path["train"])
    train = scan_folder(split_path["train"] if layered else root, extensions=extensions, what=what)
    val: FolderIndex | None = None
    has_val_dir = layered and os.path.isdir(split_path["val"])
    if has_val_dir and val_fraction > 0:
        raise ConfigError(
            "val_fraction", val_fraction,
            f"'{split_path['val']}' already is a validation split; set val_fraction=0 to use it",
        )  # fmt: skip
    if has_val_dir:
        val = scan_folder(split_path["val"], class_names=train.class_names, extensions=extensions, what=what)
    elif val_fraction > 0:
        keep, held = stratified_split(train.targets, val_fraction, seed)
        train, val = train.subset(keep), train.subset(held)
    test = val
    if layered and os.path.isdir(split_path["test"]):
        test = scan_folder(split_path["test"], class_names=train.class_names, extensions=extensions, what=what)
    return {"train": train, "val": val, "test": test}


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, holdout) keeping each class's share; seeded, so reproducible.

    Every class keeps at least one training sample; a class with two or more samples gives at least
    one to the holdout set.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction={fraction}: must be between 0 and 1 (exclusive)")
    rng = np.random.default_rng(seed)
    train, holdout = [], []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        members = members[rng.permutation(len(members))]
        n_holdout = min(max(round(len(members) * fraction), 1), len(members) - 1) if len(members) > 1 else 0
        holdout.append(members[:n_holdout])
        train.append(members[n_holdout:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(holdout))
