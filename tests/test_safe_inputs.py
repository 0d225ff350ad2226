"""Safe inputs: file names read from manifests stay inside their folder; no cache or state file is unpickled."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from chute import LoaderSettings
from chute.app import run
from chute.datamodules import StreamingDataModule, TabularDataModule
from chute.datasets import CachedDataset, ShardedCopy, ShardIndex, SklearnTable, write_shards
from chute.datasets.shard_format import write_index
from chute.errors import DataError
from chute.models import TabularModel
from chute.paths import inside
from tests.conftest import REPO
from tests.datasets.test_cache import Source
from tests.helpers import assert_mentions
from tests.test_config import make_config
from tests.test_train import FAST

# -- Shard indexes --------------------------------------------------------------------------------


@pytest.fixture
def shard_root(tmp_path: Path) -> Path:
    """A shard folder with one real shard, next to a file outside it that an index must not reach."""
    root = tmp_path / "shards"
    write_shards(({"x": torch.tensor(i)} for i in range(3)), root, "train", 10)
    (tmp_path / "outside.jsonl").write_text('{"tensor": 1, "dtype": "int64"}\n')
    return root


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_shard_index_entries_cannot_leave_the_folder(shard_root: Path, kind: str) -> None:
    outside = shard_root.parent / "outside.jsonl"
    entry = {"dotdot": "../outside.jsonl", "absolute": str(outside), "symlink": "link.jsonl"}[kind]
    if kind == "symlink":
        (shard_root / "link.jsonl").symlink_to(outside)
    write_index(shard_root, {"train": [{"file": "train-00000.jsonl", "count": 3}, {"file": entry, "count": 1}]})
    with pytest.raises(DataError) as err:
        ShardIndex.read(shard_root)
    assert_mentions(str(err.value), str(shard_root / "index.json"), entry, str(shard_root), "train")


def test_shard_index_may_name_links_that_stay_inside(shard_root: Path) -> None:
    (shard_root / "alias.jsonl").symlink_to(shard_root / "train-00000.jsonl")
    write_index(shard_root, {"train": [{"file": "alias.jsonl", "count": 3}]})
    assert ShardIndex.read(shard_root).shards("train") == ((str((shard_root / "train-00000.jsonl").resolve()), 3),)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"collate": "subprocess.run"}, "subprocess.run"),  # would be imported and called on string samples
        ({"collate": "chute.app.run"}, "chute.app.run"),
        ({"model_kwargs": {"num_classes": {"_target_": "os.system", "command": "true"}}}, "_target_"),
        ({"model_kwargs": {"name": "${oc.env:HOME}"}}, "${oc.env:HOME}"),  # Hydra would resolve it
    ],
)
def test_shard_index_settings_cannot_name_code(shard_root: Path, extra: dict[str, Any], named: str) -> None:
    write_index(shard_root, {"train": [{"file": "train-00000.jsonl", "count": 3}]}, **extra)
    with pytest.raises(DataError) as err:
        ShardIndex.read(shard_root)
    assert_mentions(str(err.value), str(shard_root / "index.json"), named)


def test_shard_index_accepts_chutes_own_collate_and_plain_kwargs(shard_root: Path) -> None:
    extra = {"collate": "chute.datasets.sequence.collate_sequences", "model_kwargs": {"num_classes": 2, "x": [1]}}
    write_index(shard_root, {"train": [{"file": "train-00000.jsonl", "count": 3}]}, **extra)
    assert ShardIndex.read(shard_root).extra == extra


@pytest.mark.parametrize("relative", ["", ".", "a/../..", "x\0y", 3])
def test_inside_refuses_what_is_not_a_file_in_the_folder(tmp_path: Path, relative: object) -> None:
    with pytest.raises(DataError, match="a manifest may only name files inside"):
        inside(tmp_path, relative, "Manifest 'm.json'")


# -- Disk caches ----------------------------------------------------------------------------------


def _edit_manifest(cache_dir: Path, field: int, **changes: Any) -> None:
    path = cache_dir / "cache.json"
    manifest = json.loads(path.read_text())
    manifest["fields"][field].update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_cache_manifest_files_cannot_leave_the_folder(tmp_path: Path, kind: str, monkeypatch) -> None:
    cache_dir = tmp_path / "cache"
    CachedDataset(Source(), store="disk", cache_dir=cache_dir, key="k")  # type: ignore[arg-type]
    outside = tmp_path / "x.bin"
    outside.write_bytes((cache_dir / "field0.bin").read_bytes())  # the right size: only the check stops it
    entry = "../x.bin" if kind == "dotdot" else str(outside)
    _edit_manifest(cache_dir, 0, file=entry)
    mapped: list[Any] = []
    monkeypatch.setattr(np, "memmap", lambda *a, **k: mapped.append(a))
    source = Source()
    with pytest.raises(DataError) as err:
        CachedDataset(source, store="disk", cache_dir=cache_dir, key="k")  # type: ignore[arg-type]
    assert_mentions(str(err.value), str(cache_dir / "cache.json"), entry, str(cache_dir), "'0'")
    assert mapped == []  # nothing read
    assert source.reads == 0  # nothing rebuilt over it


@pytest.mark.parametrize("text", ["[1, 2]", '{"version": 1}', "not json"])
def test_a_manifest_that_is_not_one_is_rebuilt(tmp_path: Path, text: str) -> None:
    cache_dir = tmp_path / "cache"
    CachedDataset(Source(), store="disk", cache_dir=cache_dir, key="k")  # type: ignore[arg-type]
    (cache_dir / "cache.json").write_text(text)
    source = Source()
    CachedDataset(source, store="disk", cache_dir=cache_dir, key="k")  # type: ignore[arg-type]
    assert source.reads > 0  # rebuilt from the source, not an AttributeError or KeyError
    assert json.loads((cache_dir / "cache.json").read_text())["key"] == "k"


class _Tripwire:
    """Unpickling this makes a folder: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.marker),)


@pytest.fixture
def pickled_cache(tmp_path: Path) -> tuple[Path, Path]:
    """A disk cache whose label field is replaced by a pickled object array (``.npy``); and the tripwire."""
    cache_dir, marker = tmp_path / "cache", tmp_path / "unpickled"
    CachedDataset(Source(), store="disk", cache_dir=cache_dir, key="k")  # type: ignore[arg-type]
    objects = np.empty(6, dtype=object)
    objects[:] = [_Tripwire(marker) for _ in range(6)]
    np.save(cache_dir / "field1.npy", objects, allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(cache_dir / "field1.npy")  # what the default does with it
    return cache_dir, marker


def test_cache_with_an_object_dtype_is_refused(pickled_cache: tuple[Path, Path]) -> None:
    cache_dir, marker = pickled_cache
    _edit_manifest(cache_dir, 1, file="field1.npy", dtype="|O")
    with pytest.raises(DataError) as err:
        CachedDataset(Source(), store="disk", cache_dir=cache_dir, key="k")  # type: ignore[arg-type]
    assert_mentions(str(err.value), str(cache_dir / "cache.json"), "'1'", "object")
    assert not marker.exists()


def test_cache_pointing_at_a_pickle_under_a_plain_dtype_is_rebuilt_not_unpickled(
    pickled_cache: tuple[Path, Path],
) -> None:
    cache_dir, marker = pickled_cache
    _edit_manifest(cache_dir, 1, file="field1.npy")  # int64 claimed: the .npy has the wrong size
    source = Source()
    cached = CachedDataset(source, store="disk", cache_dir=cache_dir, key="k")  # type: ignore[arg-type]
    assert source.reads == 6
    assert cached[4][1] == 4
    assert not marker.exists()


# -- Checkpoints and the source itself ----------------------------------------------------------


def test_checkpoints_of_a_streaming_fit_load_weights_only(tmp_path: Path, monkeypatch) -> None:
    """A fit over shards (index settings + DataModule state) writes checkpoints that need no unpickling.

    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` makes Lightning's own ``torch.load`` weights-only too, when it
    restores the checkpoint (model, loops and DataModule state) for ``validate``.
    """
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    source = TabularDataModule(tmp_path / "wine.csv", target="cultivar", prepare=SklearnTable("wine"))
    dm = StreamingDataModule(
        tmp_path / "shards", prepare=ShardedCopy(source, samples_per_shard=50), loader=LoaderSettings(batch_size=32)
    )
    dm.prepare_data()
    dm.setup("fit")
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
        default_root_dir=tmp_path, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(TabularModel(**dm.model_kwargs, hidden=[8]), datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["datamodule_hyper_parameters"]["root"] == str(tmp_path / "shards")
    assert "StreamingDataModule" in ckpt
    assert ckpt["hyper_parameters"]["num_classes"] == 3
    trainer.validate(TabularModel(**dm.model_kwargs, hidden=[8]), datamodule=dm, ckpt_path=path)


def test_checkpoints_of_the_train_app_load_weights_only(digits_root: Path, tmp_path: Path) -> None:
    overrides = ["data=streaming", "trainer.max_epochs=1", *FAST[1:], "callbacks.preview=null"]
    run(make_config(*overrides, data_dir=digits_root.parent, output_dir=tmp_path))
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        assert "state_dict" in torch.load(path, weights_only=True)


_PICKLERS = ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib")


def _can_unpickle(call: ast.Call) -> bool:
    """Whether ``call`` can unpickle: pickle-family loads, ``torch.load`` without ``weights_only=True``,
    ``np.load`` with ``allow_pickle`` other than ``False``, pandas' ``read_pickle``, unsafe YAML loads."""
    name = ast.unparse(call.func)
    kwargs = {k.arg: k.value for k in call.keywords}

    def is_const(key: str, value: object) -> bool:
        node = kwargs.get(key)
        return isinstance(node, ast.Constant) and node.value is value

    if name.split(".")[0] in _PICKLERS and "load" in name:
        return True
    if name.endswith(("read_pickle", "yaml.load", "yaml.unsafe_load", "yaml.full_load")):
        return True
    if name.endswith("torch.load"):
        return not is_const("weights_only", True)
    if name in ("np.load", "numpy.load"):
        return "allow_pickle" in kwargs and not is_const("allow_pickle", False)
    return False


def _unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, call)`` for every call in ``tree`` that can unpickle."""
    return [
        (node.lineno, ast.unparse(node))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _can_unpickle(node)
    ]


def test_scanner_catches_unsafe_loads() -> None:
    code = "pickle.loads(b)\ntorch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
    safe = "torch.load(p, weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\nyaml.safe_load(s)\n"
    assert [line for line, _ in _unsafe_loads(ast.parse(code + safe))] == [1, 2, 3, 4]


def test_source_never_unpickles() -> None:
    """A cheap guard against regressions: no call in ``src/chute`` that could unpickle a file."""
    found = []
    for path in sorted((REPO / "src" / "chute").rglob("*.py")):
        text = path.read_text()
        found += [f"{path.relative_to(REPO)}:{line}: {call}" for line, call in _unsafe_loads(ast.parse(text))]
        found += [f"{path.relative_to(REPO)}: allow_pickle=True" for _ in range(text.count("allow_pickle=True"))]
    assert not found, "calls that can unpickle:\n" + "\n".join(found)
