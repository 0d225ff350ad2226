"""StallMonitor: measures the data wait per step, warns once naming the settings, reports totals."""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from chute.callbacks import StallMonitor


class SlowData(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(self.delay)
        return torch.zeros(3), torch.tensor(i % 2)


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(delay: float, monitor: StallMonitor) -> None:
    trainer = L.Trainer(
        max_epochs=1, callbacks=[monitor], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Tiny(), DataLoader(SlowData(delay), batch_size=2))


def test_slow_data_is_measured_and_warned_about_once() -> None:
    monitor = StallMonitor(threshold=0.1, warmup_steps=2)
    with pytest.warns(UserWarning, match="loader.num_workers") as record:
        fit(0.05, monitor)  # 0.1 s of waiting per batch: far above a step even on a busy machine
    assert sum("waits for data" in str(w.message) for w in record) == 1
    summary = monitor.summary()
    assert summary["data_wait_fraction"] > 0.5
    assert summary["measured_steps"] == 32 - 2


def test_fast_data_does_not_warn() -> None:
    monitor = StallMonitor(threshold=0.99, warmup_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        fit(0.0, monitor)
    assert 0 <= monitor.summary()["data_wait_fraction"] < 0.99


def test_the_advice_names_the_loader_settings_in_force_and_what_is_left() -> None:
    """A thread loader's advice names its backend and thread count (it has no worker processes, so
    the loader's own num_workers is 0); with the data cached, it does not advise caching."""
    from types import SimpleNamespace

    from chute import LoaderSettings
    from chute.callbacks.stall import _advice

    settings = LoaderSettings(backend="threads", num_workers=1)
    cached = SimpleNamespace(loader_settings=settings, cache="memory", device_augment=True)
    advice = _advice(SimpleNamespace(datamodule=cached, train_dataloader=SimpleNamespace(num_workers=0)))
    assert "loader.backend=threads, loader.num_workers=1" in advice
    assert "data.cache" not in advice
    decoding = SimpleNamespace(loader_settings=settings, cache="none", device_augment=False)
    assert "data.cache=memory|disk" in _advice(SimpleNamespace(datamodule=decoding))
    foreign = SimpleNamespace(datamodule=None, train_dataloader=SimpleNamespace(num_workers=3))
    assert "num_workers=3" in _advice(foreign)


def test_the_advice_names_the_route_that_helps_where_the_run_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU with JPEGs decoded by the CPU: decode on the GPU; loader threads on many cores:
    worker processes (they lose there, issue 25); what num_workers=auto chose is what is named."""
    from types import SimpleNamespace

    from chute import LoaderSettings
    from chute.callbacks.stall import _advice

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=SimpleNamespace(type="cuda")))
    threads = LoaderSettings(backend="threads", num_workers=8)
    dm = SimpleNamespace(loader_settings=LoaderSettings(num_workers="auto"), tuned_loader=threads, decode_route="cpu")
    advice = _advice(SimpleNamespace(datamodule=dm, **vars(gpu)))
    assert "data.decode=gpu" in advice
    assert "loader.backend=torch" in advice
    assert "loader.backend=threads, loader.num_workers=8" in advice
    assert "16 CPUs" in advice
    dm.decode_route = "gpu"
    assert "data.decode" not in _advice(SimpleNamespace(datamodule=dm, **vars(gpu)))
    on_cpu = _advice(SimpleNamespace(datamodule=dm))  # no GPU: no word of GPU decoding
    assert "data.decode" not in on_cpu


def _chute_loader(delay: float, backend: str, workers: int) -> Any:
    from chute import LoaderSettings
    from chute.loader import build_loader

    settings = LoaderSettings(batch_size=2, num_workers=workers, backend=backend, persistent_workers=False)
    return build_loader(SlowData(delay), settings, train=True, seed=0)


@pytest.mark.parametrize(("backend", "workers"), [("torch", 0), ("threads", 1)])
def test_a_chute_loader_keeps_the_time_its_consumer_waited_inside_it(backend: str, workers: int) -> None:
    """``waited_s`` counts the time inside ``next()``: 32 batches of 2 samples at 10 ms each are at
    least 0.64 s of waiting for a consumer that asks at once (the thread cannot read far ahead of
    it); a loader thread reads ahead while a consumer takes 50 ms per batch, which then hardly waits."""
    loader = _chute_loader(0.01, backend, workers)
    assert loader.waited_s == 0.0
    batches = sum(1 for _ in loader)
    assert batches == 32
    assert loader.waited_s >= 0.6
    first = loader.waited_s
    for _ in loader:  # a second pass adds to the same clock
        pass
    assert loader.waited_s >= first + 0.6
    if backend == "threads":
        before = loader.waited_s
        for _ in loader:
            time.sleep(0.05)
        assert loader.waited_s - before < 0.3


class SlowLoop(L.Callback):
    """Lightning's own work between steps, made slow: a start-of-step hook that runs before the monitor's."""

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        time.sleep(0.05)


def fit_chute(delay: float, monitor: StallMonitor, *callbacks: L.Callback) -> None:
    trainer = L.Trainer(
        max_epochs=1, callbacks=[*callbacks, monitor], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Tiny(), _chute_loader(delay, "torch", 0))


def test_the_loaders_part_of_the_wait_is_measured_and_named_in_the_warning() -> None:
    """Slow data: the wait is the loader's, and the advice is about the loader."""
    monitor = StallMonitor(threshold=0.1, warmup_steps=2)
    with pytest.warns(UserWarning, match="loader.num_workers"):
        fit_chute(0.05, monitor)
    summary = monitor.summary()  # relative to the wait: a busy machine lengthens the steps, not the split
    assert 0.8 * summary["data_wait_fraction"] <= summary["loader_wait_fraction"] <= summary["data_wait_fraction"]


def test_a_slow_loop_between_steps_is_not_blamed_on_the_loader() -> None:
    """Fast data, slow work between steps (not the loader's): the whole gap is over the threshold, the
    loader's part is not, and the warning says so instead of advising more workers."""
    monitor = StallMonitor(threshold=0.1, warmup_steps=2)
    with pytest.warns(UserWarning, match="training loop's own work") as record:
        fit_chute(0.0, monitor, SlowLoop())
    message = next(str(w.message) for w in record if "waits for data" in str(w.message))
    assert "loader.num_workers" not in message
    summary = monitor.summary()
    assert summary["loader_wait_fraction"] < summary["data_wait_fraction"] / 4


def test_a_loader_without_a_clock_reports_the_whole_wait_only() -> None:
    monitor = StallMonitor(threshold=0.99, warmup_steps=2)
    fit(0.0, monitor)  # a plain torch DataLoader
    assert "loader_wait_fraction" not in monitor.summary()


class HostOnlyDelay(Tiny):
    """After every other step the host waits 60 ms in the gap between steps, as it does for the
    device when Lightning logs (an ``.item()``), while the device runs nothing new: ``DEVICE_IDLE``
    counts only what the device would see of it (nothing)."""

    slept = 0.0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        time.sleep(0.03)  # the step's own work: 30 ms (the loop's work between steps, even loaded, a fraction of it)
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx % 2:
            begun = time.perf_counter()
            time.sleep(0.06)
            HostOnlyDelay.slept += time.perf_counter() - begun


class ScriptedTimeline:
    """A device timeline for the CPU: the host's clock less the host-only delays, so a mark made
    after one is as far from the last as the device's events would be."""

    def __init__(self) -> None:
        self.settled = 0

    def mark(self) -> float:
        return time.perf_counter() - HostOnlyDelay.slept

    def settle(self, mark: float) -> None:
        self.settled += 1

    def seconds(self, first: float, second: float) -> float:
        return second - first


def test_on_a_device_the_wait_is_read_off_the_devices_timeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host waiting for the device inside the gap (Lightning's logging drains the queue) was
    counted as waiting for data: a warning advising more workers, for a device that never idled."""
    from chute.callbacks import stall

    timeline = ScriptedTimeline()
    monkeypatch.setattr(stall, "timeline_for", lambda device: timeline)
    HostOnlyDelay.slept = 0.0
    monitor = StallMonitor(threshold=0.2, warmup_steps=2)
    trainer = L.Trainer(
        max_epochs=2, callbacks=[monitor], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "waits for data" warning
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(HostOnlyDelay(), DataLoader(SlowData(0.0), batch_size=4))
    summary = monitor.summary()
    # The host's clock counts the 60 ms of every other gap: after batches 1, 3, ..., 13 of each epoch's
    # 16 (the gaps before batches 2-14; the first two batches are warm-up, the 15th's is the epoch's end).
    # In seconds, not as a share of the steps: a loaded machine stretches the steps (seen: 0.4964 > 0.5).
    assert "host_wait_fraction" in summary
    assert monitor.wait_s >= 2 * 7 * 0.06
    assert summary["data_wait_fraction"] < 0.2  # the device's: it ran all the while it had work
    assert summary["measured_steps"] == 2 * (16 - 2)
    assert timeline.settled == 2  # one wait for the device per epoch, not per step


def test_the_advice_on_a_cpu_trainer_and_after_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on the CPU, more loader workers take cores from the model (on 2 cores a table's
    worker cut the wait from 30-55% to 16-20% of the step, and the step grew as much): the advice
    says so. After ``num_workers=auto`` it does not send the user to ``auto`` again: it names what
    auto measured fastest."""
    from types import SimpleNamespace

    import torch

    from chute import LoaderSettings
    from chute.callbacks.stall import _advice

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    given = SimpleNamespace(loader_settings=LoaderSettings(num_workers=0), tuned_loader=None)
    on_cpu = _advice(SimpleNamespace(datamodule=given))
    assert "raise loader.num_workers" in on_cpu
    assert "share the 2 CPUs with the model's 2 threads" in on_cpu
    assert "each batch is made in the training thread" in on_cpu
    assert "prefetch_factor" not in on_cpu  # no prefetching without workers (the setting is refused there)
    workers = SimpleNamespace(loader_settings=LoaderSettings(num_workers=1), tuned_loader=None)
    assert "loader.prefetch_factor" in _advice(SimpleNamespace(datamodule=workers))
    gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=SimpleNamespace(type="cuda")))
    assert "share the" not in _advice(SimpleNamespace(datamodule=given, **vars(gpu)))
    auto, chosen = LoaderSettings(num_workers="auto"), LoaderSettings(num_workers=0)
    tuned = SimpleNamespace(loader_settings=auto, tuned_loader=chosen)
    after_auto = _advice(SimpleNamespace(datamodule=tuned))
    assert "loader.backend=torch, loader.num_workers=0 is what loader.num_workers=auto measured fastest" in after_auto
    assert "raise loader.num_workers" not in after_auto
