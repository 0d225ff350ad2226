"""Shard streams read on Ray (``data=streaming`` with ``loader.backend=ray|ray_data``), against a real
local Ray instance.

The contract suite runs the stream kind on Ray through real Trainers (settings ``ray2``/``rd2``: one
process, the loader's state round trip, DDP and SIGKILL resume with -m slow); tests/datasets/
test_shards.py proves that reading by line position gives the stream's batches for any layout. These
check what is particular to the cluster: the batches worker processes make, for every rank of a world
whose ranks get different numbers of lines; bad and truncated shards named or counted across the
cluster boundary; a second loader reading while the first is left in mid-epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chute.collate import collate_nested
from chute.datamodules import StreamingDataModule
from chute.datasets import ShardStream
from chute.errors import ConfigError, DataError
from chute.loader import LoaderSettings, build_loader
from tests.contract_kinds import BATCH, _row_ids, _stream
from tests.datasets.test_shards import corrupt, make_shards

ray = pytest.importorskip("ray")


def _ids(loader: Any) -> list[list[int]]:
    return [batch["id"].tolist() for batch in loader]


def _loader(stream: ShardStream, **settings: Any) -> Any:
    return build_loader(stream, LoaderSettings(**settings), train=True, seed=0)


@pytest.mark.parametrize("backend", ["ray", pytest.param("ray_data", marks=pytest.mark.slow)])
def test_every_rank_reads_on_ray_the_batches_the_stream_makes(tmp_path: Path, ray_local: None, backend: str) -> None:
    """5 ranks over 23 lines in uneven shards (4, 5, 4, 5, 5 lines, batches of 2): the short ranks
    repeat a batch (even_ranks); Ray's batches are the stream's own (and so worker processes', which
    tests/datasets/test_shards.py proves for any worker count), epoch after epoch."""
    shards = make_shards(tmp_path, [7, 0, 13, 3])
    for rank in range(5):
        for even in (True, False):
            streams = [
                ShardStream(shards, 2, collate_nested, buffer_size=4, seed=3, rank=rank, world_size=5, even_ranks=even)
                for _ in range(2)
            ]
            here, on_ray = _loader(streams[0], num_workers=0), _loader(streams[1], backend=backend, num_workers=2)
            for epoch in (0, 1):
                here.set_epoch(epoch)
                on_ray.set_epoch(epoch)
                expected = _ids(here)
                assert _ids(on_ray) == expected, (rank, even, epoch)
                assert len(expected) == (3 if even else [2, 3, 2, 3, 3][rank])


@pytest.mark.slow  # the same deadlock through a Trainer: test_a_streaming_datamodule_trains_on_ray_with_...
def test_a_resumed_loader_reads_while_the_first_is_left_mid_epoch(tmp_path: Path, ray_local: None) -> None:
    """A pass left after two batches (an interrupted fit, validation in mid-epoch) holds no CPU of the
    cluster: a second loader on the same 2 CPUs reads the rest of the epoch."""
    shards = make_shards(tmp_path, [30, 30])
    whole = _ids(_loader(ShardStream(shards, 4, collate_nested, seed=1), backend="ray", num_workers=2))
    first = _loader(ShardStream(shards, 4, collate_nested, seed=1), backend="ray", num_workers=2)
    left = iter(first)
    head = [next(left)["id"].tolist() for _ in range(2)]
    rest = _loader(ShardStream(shards, 4, collate_nested, seed=1), backend="ray", num_workers=2)
    rest.load_state_dict(first.state_dict())
    assert head + _ids(rest) == whole
    del left


@pytest.mark.parametrize("backend", ["ray", pytest.param("ray_data", marks=pytest.mark.slow)])
def test_a_bad_line_read_on_the_cluster_is_named_or_counted_here(tmp_path: Path, ray_local: None, backend: str) -> None:
    shards = make_shards(tmp_path, [10, 10])
    corrupt(shards[1][0], range(3, 4))  # sample 12

    def stream(on_error: str) -> ShardStream:
        return ShardStream(shards, 4, collate_nested, buffer_size=5, seed=1, on_error=on_error)  # type: ignore[arg-type]

    with pytest.raises(DataError, match=r"s001-00000\.jsonl', line 3 is not JSON") as caught:
        _ids(_loader(stream("raise"), backend=backend, num_workers=2))
    assert type(caught.value) is DataError  # unwrapped from Ray's task error
    workers, on_ray = stream("skip"), stream("skip")
    assert _ids(_loader(on_ray, backend=backend, num_workers=2)) == _ids(_loader(workers, num_workers=2))
    assert on_ray.bad_samples.counts == workers.bad_samples.counts == (20, 1)  # counted on the cluster, added here


@pytest.mark.slow
def test_a_truncated_shard_is_named_from_the_cluster(tmp_path: Path, ray_local: None) -> None:
    shards = make_shards(tmp_path, [10, 10])
    Path(shards[0][0]).write_text("".join(Path(shards[0][0]).read_text().splitlines(keepends=True)[:6]))
    with pytest.raises(DataError, match=r"s000-00000\.jsonl' has 6 lines but its index says 10"):
        _ids(_loader(ShardStream(shards, 4, collate_nested, seed=1), backend="ray", num_workers=2))


def test_a_streaming_datamodule_trains_on_ray_with_validation_mid_epoch(tmp_path: Path, ray_local: None) -> None:
    """``data=streaming loader.backend=ray`` under a Trainer that validates twice an epoch: the training
    pass is left in mid-epoch while validation reads on the same 2 CPUs; every sample once per epoch."""
    import lightning as L

    from tests.contract_kinds import SAMPLES, Recorder

    dm = _stream(tmp_path, {"batch_size": BATCH, "backend": "ray", "num_workers": 2})
    model = Recorder(_row_ids)
    trainer = L.Trainer(
        max_epochs=2, val_check_interval=0.5, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    for epoch in (0, 1):
        assert sorted(i for e, ids in model.seen["train"] if e == epoch for i in ids) == list(range(SAMPLES))
    assert len(model.seen["val"]) == 4 * -(-SAMPLES // BATCH)  # 2 validations an epoch, each sample once


def test_the_threads_backend_is_still_refused_for_a_stream(tmp_path: Path) -> None:
    dm = StreamingDataModule(tmp_path, loader={"backend": "threads", "num_workers": 2})
    dm.index = object()  # type: ignore[assignment]  # what setup would read; the refusal comes first
    from chute.datamodules.loading import split_loader

    with pytest.raises(ConfigError, match=r"loader\.backend.*use torch, ray or ray_data"):
        split_loader(dm, object(), train=True, collate_fn=None, batches=None, eval_order=None, stream=True)  # type: ignore[arg-type]


@pytest.mark.slow
def test_two_ray_nodes_read_a_stream_for_a_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster of a head with no CPUs and two worker nodes (``ray.cluster_utils.Cluster``), found
    through ``RAY_ADDRESS`` as ``ray job submit`` sets it: the shards are read on the worker nodes, and
    a Trainer sees each sample once per epoch."""
    import lightning as L
    from ray.cluster_utils import Cluster

    from tests.contract_kinds import SAMPLES, Recorder

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        dm = _stream(tmp_path, {"batch_size": BATCH, "backend": "ray", "num_workers": 2})
        model = Recorder(_row_ids)
        trainer = L.Trainer(
            max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, datamodule=dm)
        for epoch in (0, 1):
            assert sorted(i for e, ids in model.seen["train"] if e == epoch for i in ids) == list(range(SAMPLES))
            assert sorted(i for e, ids in model.seen["val"] if e == epoch for i in ids) == list(range(SAMPLES))
        assert len(ray.nodes()) == 3
    finally:
        ray.shutdown()
        cluster.shutdown()
