"""Reading on Ray (``loader.backend=ray``, ``RayImagesDataModule``) against a real local Ray instance.

The contract suite runs the ``ray_images`` kind through real Trainers (one process and DDP); these
check what is particular to Ray: the same batches as chute's worker processes, bad files named or
counted across the cluster boundary, the settings Ray has no use for refused by name, and a cluster
of two nodes reading for a Trainer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from chute.datamodules import ImageFolderDataModule, RayImagesDataModule, TabularDataModule
from chute.errors import ConfigError, DataError
from chute.loader import LoaderSettings
from tests.contract_kinds import BATCH, _image_ids, _row_ids, write_images, write_table
from tests.helpers import write_image

ray = pytest.importorskip("ray")


def _passes(dm: Any, ids: Any, epochs: int = 2) -> dict[str, Any]:
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader()
    seen: dict[str, Any] = {}
    for epoch in range(epochs):
        train.set_epoch(epoch)
        seen[f"train{epoch}"] = [ids(b).tolist() for b in train]
    seen["val"] = [ids(b).tolist() for b in dm.val_dataloader()]
    seen["pixels"] = next(iter(dm.val_dataloader()))[0]
    return seen


def _images(cls: type, root: Path, **kwargs: Any) -> Any:
    from chute.transforms import create_transforms

    t = create_transforms(image_size=8, crop_pct=1.0, scale=[0.5, 1.0], hflip=0.5)  # random crops and flips
    return cls(root, image_mode="L", train_transform=t.train, val_transform=t.val, mean=[0.0], std=[1.0],
               channels_last=False, seed=7, **kwargs)  # fmt: skip


@pytest.mark.parametrize("engine", ["tasks", "data"])
def test_ray_reads_the_batches_worker_processes_read(tmp_path: Path, ray_local: None, engine: str) -> None:
    """Same files, seed and settings: Ray tasks and DataLoader workers give the same batches, pixel
    for pixel (random crops and flips are keyed by (seed, epoch, index), not by who reads)."""
    root = write_images(tmp_path)
    loader = {"batch_size": BATCH, "num_workers": 2, "persistent_workers": False}
    workers = _passes(_images(ImageFolderDataModule, root, loader=loader), _image_ids)
    on_ray = _passes(_images(RayImagesDataModule, root, loader=loader, engine=engine), _image_ids)
    assert torch.equal(workers.pop("pixels"), on_ray.pop("pixels"))
    assert workers == on_ray
    assert workers["train0"] != workers["train1"]


@pytest.mark.slow  # the orders are the core's (tests/test_imbalance.py); here: Ray reads what they draw
@pytest.mark.parametrize("strategy", ["weighted_sampler", "balanced_batches"])
def test_an_imbalance_strategy_draws_the_same_batches_on_ray(tmp_path: Path, ray_local: None, strategy: str) -> None:
    """The imbalance strategies are chute's orders, so Ray reads the batches they draw: the same as
    worker processes read, with the Ray Data engine too."""
    root = write_images(tmp_path)
    loader = {"batch_size": BATCH, "num_workers": 2, "persistent_workers": False}
    imbalance = {"strategy": strategy, **({"classes_per_batch": 2} if strategy == "balanced_batches" else {})}
    workers = _passes(_images(ImageFolderDataModule, root, loader=loader, imbalance=imbalance), _image_ids)
    for engine in ("tasks", "data"):
        dm = _images(RayImagesDataModule, root, loader=loader, imbalance=imbalance, engine=engine)
        on_ray = _passes(dm, _image_ids)
        assert torch.equal(workers["pixels"], on_ray.pop("pixels"))
        assert {k: v for k, v in workers.items() if k != "pixels"} == on_ray


@pytest.mark.parametrize("backend", ["ray", pytest.param("ray_data", marks=pytest.mark.slow)])
def test_any_map_style_kind_reads_on_ray_with_the_loader_backend(tmp_path: Path, ray_local: None, backend: str) -> None:
    table = str(write_table(tmp_path))

    def make(**loader: Any) -> TabularDataModule:
        settings = {"batch_size": BATCH, **loader}
        return TabularDataModule(
            table, target="label", numeric=["id"], standardize=False, val_path=table, loader=settings
        )

    plain = _passes(make(num_workers=0), _row_ids)
    on_ray = _passes(make(backend=backend, num_workers="auto"), _row_ids)
    assert torch.equal(plain.pop("pixels"), on_ray.pop("pixels"))
    assert plain == on_ray


def _with_a_bad_file(tmp_path: Path) -> Path:
    root = write_images(tmp_path)
    bad = root / "val" / "c0" / "999.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    write_image(root / "val" / "c1" / "998.png", size=(8, 8), mode="L")
    return bad


@pytest.mark.parametrize("engine", ["tasks", pytest.param("data", marks=pytest.mark.slow)])
def test_a_bad_file_read_on_the_cluster_is_named_here(tmp_path: Path, ray_local: None, engine: str) -> None:
    bad = _with_a_bad_file(tmp_path)
    dm = _images(RayImagesDataModule, bad.parents[2], loader={"batch_size": BATCH, "num_workers": 2}, engine=engine)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"999\.png") as caught:
        list(dm.val_dataloader())
    assert type(caught.value) is DataError  # unwrapped from Ray's task error
    # Predicting, a skipped file would shift the predictions: the Ray loaders record no batch indices
    skipping = _images(RayImagesDataModule, bad.parents[2], loader={"batch_size": BATCH, "num_workers": 2},
                       engine=engine, on_error="skip", max_bad_fraction=0.5)  # fmt: skip
    skipping.setup("predict")
    refused = r"^on_error='skip': the loader.backend=ray(_data)? loader records no indices"
    with pytest.raises(ConfigError, match=refused):
        skipping.predict_dataloader()


@pytest.mark.slow
def test_bad_files_skipped_on_the_cluster_are_counted_here(tmp_path: Path, ray_local: None) -> None:
    bad = _with_a_bad_file(tmp_path)
    dm = _images(
        RayImagesDataModule, bad.parents[2], loader={"batch_size": BATCH, "num_workers": 2}, on_error="skip",
        max_bad_fraction=0.5,
    )  # fmt: skip
    dm.setup("fit")
    ids = sorted(i for batch in dm.val_dataloader() for i in batch[1].tolist())
    assert len(ids) == 24  # 23 + the good extra file; the bad one left out of evaluation
    counts = dm.bad_samples["val"]
    assert (counts["seen"], counts["skipped"]) == (25, 1)
    assert any("999.png" in name for name in counts["first"])


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"backend": "ray", "num_workers": 0}, "num_workers"),
        ({"backend": "ray", "num_workers": 2, "persistent_workers": True}, "persistent_workers"),
        ({"backend": "ray", "num_workers": 2, "timeout": 5}, "timeout"),
        ({"backend": "ray", "num_workers": 2, "multiprocessing_context": "spawn"}, "multiprocessing_context"),
        ({"backend": "ray_data", "num_workers": 0}, "num_workers"),
        ({"backend": "ray_data", "num_workers": 2, "persistent_workers": True}, "persistent_workers"),
        ({"backend": "rays", "num_workers": 2}, "backend"),
    ],
)
def test_settings_ray_has_no_use_for_are_refused_by_name(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        LoaderSettings(**settings)


def test_the_ray_kind_refuses_a_cache_and_the_threads_backend(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cache"):
        RayImagesDataModule(tmp_path, cache="memory", cache_size=8)
    with pytest.raises(ConfigError, match=r"loader\.backend"):
        RayImagesDataModule(tmp_path, loader={"backend": "threads", "num_workers": 1})
    with pytest.raises(ConfigError, match="engine"):
        RayImagesDataModule(tmp_path, engine="spark")
    assert RayImagesDataModule(tmp_path, engine="data").loader_settings.backend == "ray_data"
    assert "cache" not in RayImagesDataModule.init_parameters()  # nor does the schema offer it
    assert RayImagesDataModule(tmp_path).loader_settings.num_workers == "auto"  # Ray sizes the pool


def test_without_ray_installed_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from chute.integrations import ray_tasks

    monkeypatch.setitem(sys.modules, "ray.data", None)  # Ray without its [data] extra
    with pytest.raises(ConfigError, match=r"Ray Data.*chute\[ray\]"):
        ray_tasks.import_ray_data()
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"chute\[ray\]"):
        ray_tasks.import_ray()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["tasks", "data"])
def test_two_ray_nodes_read_for_a_trainer(tmp_path: Path, engine: str) -> None:
    """A cluster of a head with no CPUs and two worker nodes (``ray.cluster_utils.Cluster``): every
    batch is read on the worker nodes, by Ray tasks or a Ray Data pipeline, and a Trainer sees each
    sample once per epoch."""
    import lightning as L
    from ray.cluster_utils import Cluster

    from tests.contract_kinds import SAMPLES, TRAIN_IMAGES, Recorder, _image

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        loader = {"batch_size": BATCH, "num_workers": 2}
        # no random crop: ids intact
        dm = _image(tmp_path, loader, RayImagesDataModule, address=cluster.address, engine=engine)
        model = Recorder(_image_ids)
        trainer = L.Trainer(
            max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, datamodule=dm)
        for epoch in (0, 1):
            trained = sorted(i for e, ids in model.seen["train"] if e == epoch for i in ids)
            assert trained == list(range(TRAIN_IMAGES))
            assert sorted(i for e, ids in model.seen["val"] if e == epoch for i in ids) == list(range(SAMPLES))
        assert len(ray.nodes()) == 3
    finally:
        ray.shutdown()
        cluster.shutdown()
