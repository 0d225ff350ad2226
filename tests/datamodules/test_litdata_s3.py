"""LitDataModule from an object-store URL: chunks streamed from a local S3-compatible server (moto), offline.

The dataset is written by ``scripts/to_litdata.py`` and uploaded as the script's docstring says
(``aws s3 sync OUT s3://bucket/prefix``); LitDataModule then reads ``s3://bucket/prefix`` with the
endpoint and credentials in ``storage_options``, as a user pointing it at MinIO or Ceph would. LitData
fetches ``chute.json`` and ``index.json`` with boto3 and the chunks with obstore, both built from those
options. No request leaves 127.0.0.1: the credentials are fake, shared AWS config files and the EC2
metadata service are switched off, and the endpoint the environment names is a closed local port, so a
client built without ``storage_options`` fails instead of reaching AWS.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from chute.app import run
from chute.datamodules import TabularDataModule
from chute.datasets import SklearnTable
from chute.errors import ConfigError, DataError
from chute.integrations import LitDataCopy, LitDataModule
from tests.conftest import REPO
from tests.helpers import assert_mentions, fit_recording
from tests.test_config import make_config
from tests.test_train import FAST

pytest.importorskip("litdata")
moto_server = pytest.importorskip("moto.server")

BUCKET, PREFIX = "chute-test", "datasets/breast-cancer"
URL = f"s3://{BUCKET}/{PREFIX}"
_FAKE = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An environment whose S3 clients can reach nothing but the endpoints the tests name."""
    from litdata.streaming import downloader

    nowhere = tmp_path_factory.mktemp("no-aws-config") / "absent"
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        mp.setenv("AWS_CONFIG_FILE", str(nowhere))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # closed: only storage_options name the server
        # LitData 0.2.76 builds obstore's S3Store with fixed client options that lack allow_http, so
        # chunk GETs from any http:// endpoint fail with "BadScheme" (obstore ignores AWS_ALLOW_HTTP
        # once client options are given); see test_http_endpoint_needs_litdata_to_allow_http.
        mp.setitem(downloader._OBSTORE_CLIENT_OPTIONS, "allow_http", True)
        yield


@pytest.fixture(scope="module")
def endpoint(offline: None) -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)  # moto's server logs every request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug.setLevel(level)


def _convert(out: Path, data_dir: Path) -> dict[str, int]:
    spec = importlib.util.spec_from_file_location("to_litdata", REPO / "scripts" / "to_litdata.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts: dict[str, int] = module.convert(["data=tabular", f"paths.data_dir={data_dir}"], out, chunk_size=40)
    return counts


@pytest.fixture(scope="module")
def local_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The breast-cancer table (data=tabular) as LitData chunks of 40 rows: 12 train chunks, 3 val."""
    tmp = tmp_path_factory.mktemp("litdata-s3")
    out = tmp / "chunks"
    assert _convert(out, tmp / "data") == {"train": 456, "val": 113}
    return out


@pytest.fixture(scope="module")
def options(endpoint: str, local_chunks: Path) -> dict[str, str]:
    """``local_chunks`` uploaded to ``URL``; returns the ``storage_options`` that reach it."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_FAKE)
    client.create_bucket(Bucket=BUCKET)
    files = sorted(p for p in local_chunks.rglob("*") if p.is_file())
    for path in files:
        client.upload_file(str(path), BUCKET, f"{PREFIX}/{path.relative_to(local_chunks).as_posix()}")
    assert len(client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]) == len(files)
    return {"endpoint_url": endpoint, **_FAKE}


def _rows(batches: Any) -> torch.Tensor:
    return torch.cat([batch[0] for batch in batches])


def _local_rows(local_chunks: Path, split: str) -> torch.Tensor:
    dm = LitDataModule(local_chunks, loader={"batch_size": 64})
    dm.setup("fit")
    return _rows(dm.dataloader(split, train=False))


def _remote(
    options: dict[str, str], cache: Path, workers: int = 0, batch_size: int = 32, seed: int = 3, **kwargs: Any
) -> Any:
    return LitDataModule(
        URL, cache_dir=str(cache), storage_options=options, loader={"batch_size": batch_size, "num_workers": workers},
        seed=seed, **kwargs,
    )  # fmt: skip


# LitData's item loader drops the file handle of a chunk two ranks share without closing it
# (item_loader.py, _close_open_chunk sets _open_handle = None); CPython closes it, with a ResourceWarning.
_SHARED_CHUNK_HANDLE = pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*chunk-[0-9-]+\\.bin:pytest.PytestUnraisableExceptionWarning"
)


# Two workers cost ~5 s per worker after the test: LitData's persistent workers never see the loader's
# shutdown, so torch's join times out on each (the same with a local input_dir).
@pytest.mark.parametrize(
    ("workers", "world_size"),
    [(0, 1), pytest.param(0, 2, marks=_SHARED_CHUNK_HANDLE), pytest.param(2, 2, marks=pytest.mark.slow)],
)
def test_train_epoch_streams_every_sample_once(
    options: dict[str, str], local_chunks: Path, tmp_path: Path, workers: int, world_size: int
) -> None:
    dm = _remote(options, tmp_path / "cache", workers)
    dm.setup("fit")
    assert dm.model_kwargs == {"num_features": 30, "num_classes": 2, "task": "classification"}
    loaders = [dm.dataloader("train", train=True, rank=rank, world_size=world_size) for rank in range(world_size)]
    ranks = [list(loader) for loader in loaders]
    rows = torch.cat([_rows(batches) for batches in ranks])
    assert len(rows) == dm.num_samples("train") == 456
    # Each row once (the table has no duplicate rows), and the rows the local folder holds.
    assert torch.equal(torch.unique(rows, dim=0), torch.unique(_local_rows(local_chunks, "train"), dim=0))
    assert [len(batches) for batches in ranks] == [len(loader) for loader in loaders]  # equal steps per rank
    # The chunks came over the wire into cache_dir (a local input_dir is read in place, uncached).
    assert len(list((tmp_path / "cache" / "train").rglob("chunk-*.bin"))) == 12
    del loaders
    gc.collect()  # LitData's readers go here, under this test's warning filters


def test_val_reads_every_sample_once(options: dict[str, str], local_chunks: Path, tmp_path: Path) -> None:
    dm = _remote(options, tmp_path / "cache")
    dm.setup("validate")
    rows = _rows(dm.val_dataloader())
    assert len(rows) == dm.num_samples("val") == 113
    assert torch.equal(rows, _local_rows(local_chunks, "val"))  # each row once, in the split's order


def _interrupt_and_resume(options: dict[str, str], tmp_path: Path, workers: int, cache: str) -> None:
    """Epoch 2 cut after 5 batches, resumed from the loader's state: the batches of the uninterrupted run."""

    def loader(name: str) -> Any:
        dm = _remote(options, tmp_path / name, workers, batch_size=16, seed=5)
        dm.setup("fit")
        return dm.dataloader("train", train=True, rank=0, world_size=1)

    reference = loader("reference")
    list(reference)  # epoch 1; epoch 2 is interrupted below
    uninterrupted = [b[0] for b in reference]

    first = loader("run")
    list(first)
    iterator = iter(first)
    consumed = [next(iterator)[0] for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))  # plain values, as a checkpoint holds them
    del iterator
    shutil.rmtree(tmp_path / "run")  # the resumed process finds no chunks cached

    resumed = loader(cache)
    resumed.load_state_dict(state)
    rest = [b[0] for b in resumed]
    assert len(consumed) + len(rest) == len(uninterrupted)
    assert all(torch.equal(a, b) for a, b in zip(consumed + rest, uninterrupted, strict=True))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_mid_epoch_state_resumes_the_uninterrupted_epoch(options: dict[str, str], tmp_path: Path, workers: int) -> None:
    _interrupt_and_resume(options, tmp_path, workers, cache="run")


def test_resume_with_another_cache_dir(options: dict[str, str], tmp_path: Path) -> None:
    # A requeued job on another node, or the default cache under a per-job TMPDIR.
    _interrupt_and_resume(options, tmp_path, workers=0, cache="elsewhere")


def _fit(options: dict[str, str], root: Path, ckpt: str | None = None, every: int = 0, max_steps: int = -1) -> Any:
    return fit_recording(_remote(options, root / "cache", seed=1), root, ckpt, every, max_steps)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_lightning_checkpoint_resumes_mid_epoch(options: dict[str, str], tmp_path: Path) -> None:
    uninterrupted = _fit(options, tmp_path / "full")
    stop = len(uninterrupted) // 2 + 4  # mid-way through epoch 2 (15 batches of 32 per epoch)
    interrupted = _fit(options, tmp_path / "cut", every=stop, max_steps=stop + 1)[:stop]
    ckpt = next((tmp_path / "cut").glob(f"*step={stop}.ckpt"))
    shutil.rmtree(tmp_path / "cut" / "cache")  # the resumed run downloads again
    resumed = _fit(options, tmp_path / "cut", ckpt=str(ckpt), every=stop)
    assert interrupted + resumed == uninterrupted


def test_app_trains_from_the_url(options: dict[str, str], tmp_path: Path) -> None:
    storage = ",".join(f"{key}:'{value}'" for key, value in options.items())
    overrides = [
        "data=litdata", f"data.input_dir={URL}", "data.prepare=null", f"data.cache_dir={tmp_path / 'cache'}",
        f"data.storage_options={{{storage}}}", "loader.batch_size=32", *FAST, "callbacks.preview=null",
    ]  # fmt: skip
    run_dir = tmp_path / "run"
    run(make_config(*overrides, output_dir=run_dir))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert metrics["train_samples"] > 0
    assert 0.0 <= metrics["metrics"]["val/acc"] <= 1.0


def test_storage_options_override_composes() -> None:
    cfg = make_config("data=litdata", "data.storage_options={endpoint_url:'http://127.0.0.1:9000'}")
    assert cfg.data.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}


def test_http_endpoint_needs_litdata_to_allow_http(
    options: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LitData 0.2.76 gives obstore's S3Store fixed client_options without allow_http
    (litdata/streaming/downloader.py, _build_obstore_s3_store), so chunks from an http:// endpoint
    fail; when this stops raising, LitData fixed it and the endpoint fixture's patch can go.

    Asserted with ``pytest.raises`` rather than as an expected failure: pytest's report of a failure
    parses the source of every frame while LitData's threads may still be formatting their own
    tracebacks, and CPython 3.11's AST builder keeps its recursion counter in state shared by all
    threads, which two parses at once can leave unbalanced (python/cpython#106905,
    pytest-dev/pytest#10763): one run of the suite ended in ``INTERNALERROR> SystemError: AST
    constructor recursion depth mismatch`` in that report."""
    from litdata.streaming import downloader

    monkeypatch.delitem(downloader._OBSTORE_CLIENT_OPTIONS, "allow_http")
    dm = _remote(options, tmp_path / "cache", retry_seconds=0)  # the error at once, not after the retries
    dm.setup("fit")
    with pytest.raises(DataError):
        next(iter(dm.train_dataloader()))


def test_a_url_without_a_converted_dataset_is_named(options: dict[str, str], tmp_path: Path) -> None:
    missing = f"s3://{BUCKET}/not-converted"
    dm = LitDataModule(missing, cache_dir=str(tmp_path / "cache"), storage_options=options)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert_mentions(str(err.value), f"{missing}/chute.json", "scripts/to_litdata.py", "data.storage_options")


class RestartingServer:
    """tests/s3_server.py serving ``folder`` at ``URL``: a server process the test stops (SIGKILL: every
    socket closes, clients are refused) and starts again on the same port with the same objects."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.process = folder, 0, None
        self.start()

    def start(self) -> None:
        args = [sys.executable, str(REPO / "tests" / "s3_server.py"), str(self.port), str(self.folder), BUCKET, PREFIX]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline())  # type: ignore[union-attr]

    def stop(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()  # type: ignore[union-attr]

    def restart_in(self, seconds: float) -> threading.Thread:
        thread = threading.Timer(seconds, self.start)
        thread.start()
        return thread

    @property
    def options(self) -> dict[str, str]:
        return {"endpoint_url": f"http://127.0.0.1:{self.port}", **_FAKE}


@pytest.fixture(scope="module")
def many_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The breast-cancer table in chunks of 4 rows (114 train chunks): most are still to download when
    the server goes away after the first batches."""
    tmp = tmp_path_factory.mktemp("litdata-many")
    source = TabularDataModule(str(tmp / "cancer.csv"), target="diagnosis", prepare=SklearnTable("breast_cancer"))
    return Path(LitDataCopy(source, chunk_size=4)(tmp / "chunks"))


@pytest.fixture
def server(offline: None, many_chunks: Path) -> Iterator[RestartingServer]:
    running = RestartingServer(many_chunks)
    yield running
    running.stop()


def _train_rows(loader: Any, server: RestartingServer | None = None, after: int = 2, down: float = 2.0) -> list[Any]:
    """Every batch's first column; ``server`` stops after ``after`` batches and starts ``down`` s later."""
    rows, restart = [], None
    for i, batch in enumerate(loader):
        rows.append(batch[0][:, 0].tolist())
        if server is not None and i + 1 == after:
            server.stop()
            restart = server.restart_in(down)
    if restart is not None:
        restart.join()
    return rows


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_server_restarting_mid_epoch_loses_and_repeats_nothing(
    server: RestartingServer, tmp_path: Path, workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    def loader(name: str) -> Any:
        dm = _remote(server.options, tmp_path / name, workers, batch_size=16, seed=5)
        dm.setup("fit")
        return dm.dataloader("train", train=True, rank=0, world_size=1)

    uninterrupted = _train_rows(loader("reference"))
    with caplog.at_level(logging.WARNING, logger="chute.integrations.litdata_retry"):
        interrupted = _train_rows(loader("run"), server)
    assert "trying again" in caplog.text  # the reads did fail while the server was down
    assert interrupted == uninterrupted  # every batch, in order: nothing lost, nothing read twice
    assert sum(map(len, interrupted)) == 456


@pytest.mark.slow  # ~18 s of retries; the retry rule itself: tests/test_litdata_retry.py
def test_a_server_that_stays_down_is_named_after_the_retries(server: RestartingServer, tmp_path: Path) -> None:
    dm = _remote(server.options, tmp_path / "cache", batch_size=16, retry_seconds=2)
    dm.setup("fit")
    evaluation = _remote(server.options, tmp_path / "val-cache", retry_seconds=1)
    evaluation.setup("validate")
    endpoint = server.options["endpoint_url"]
    batches = iter(dm.train_dataloader())
    next(batches)
    server.stop()
    with pytest.raises(DataError) as err:
        list(batches)
    assert_mentions(str(err.value), f"{URL}/train", f"the endpoint {endpoint}", "data.retry_seconds (now 2)")
    with pytest.raises(DataError, match=re.escape(f"{URL}/val from the endpoint {endpoint}")):  # evaluation too
        list(evaluation.val_dataloader())


def test_retry_seconds_must_be_seconds() -> None:
    for bad in (-1, float("nan")):
        with pytest.raises(ConfigError, match=r"data\.retry_seconds"):
            LitDataModule(URL, retry_seconds=bad)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
def test_fit_rides_out_a_server_restart_with_worker_processes(server: RestartingServer, tmp_path: Path) -> None:
    class RestartAt(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_step == 3:  # 24 of the 114 chunks read: most still to download
                server.stop()
                self.restart = server.restart_in(2.0)

    def fit(root: Path, callbacks: list[L.Callback]) -> Any:
        dm = _remote(server.options, root / "cache", workers=2, seed=1)
        return fit_recording(dm, root, callbacks=callbacks)

    uninterrupted = fit(tmp_path / "full", [])
    restart = RestartAt()
    interrupted = fit(tmp_path / "cut", [restart])
    restart.restart.join()
    assert interrupted == uninterrupted
