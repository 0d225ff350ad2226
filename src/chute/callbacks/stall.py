"""``StallMonitor``: how much of each training step is spent waiting for data."""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L

from chute.collate import samples_in


class StallMonitor(L.Callback):
    """Per training step, time the wait for the next batch and the whole step.

    The wait runs from the end of one step to the start of the next: fetching from the DataLoader,
    the copy to the device and the DataModule's batch hook, and Lightning's own work between steps
    (the loop's bookkeeping, logging every ``log_every_n_steps``, other callbacks' start-of-step
    hooks). The monitor moves itself to the end of the trainer's callbacks, so other callbacks'
    end-of-step work (the progress bar, checkpoints) counts as step time. Logs
    ``perf/data_wait_fraction`` (share of step time spent waiting) and ``perf/step_samples_per_s``
    each epoch, keeps totals for ``metrics.json`` (:meth:`summary`), and warns once when waiting
    exceeds ``threshold`` of the step time, naming the settings that usually fix it.

    The loader's own part of that wait is set apart where the training loader keeps a clock (every
    chute loader does: ``waited_s``, the time its consumer spent inside ``next()``): logged as
    ``perf/loader_wait_fraction``. On a small model's few-millisecond steps Lightning's own work
    between steps is a few percent of the step by itself, so the two figures say whether a faster
    loader would help (measured, docs/benchmarks.md); the warning says which it is.

    On a CUDA device the wait is timed on the device's own timeline (:class:`DeviceTimeline`: an
    event at the end of each step and one at the start of the next, read once per epoch): the time
    the device had nothing of training's to run. The host's clock would count there the host
    waiting for the device (an ``.item()`` when Lightning logs, every ``log_every_n_steps``, drains
    the queue inside the gap) as waiting for data, and miss a device that idles while the host is
    busy elsewhere. The host's figure is kept as ``perf/host_wait_fraction``.

    Args:
        threshold: Wait fraction above which to warn.
        warmup_steps: Steps skipped at the start of each epoch (worker start-up, first batches).
    """

    def __init__(self, threshold: float = 0.10, warmup_steps: int = 5) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold={threshold}: a fraction in (0, 1)")
        self.threshold = threshold
        self.warmup_steps = warmup_steps
        self.wait_s = 0.0
        self.step_s = 0.0
        self.samples = 0
        self.steps = 0
        self.warned = False
        # The loader's own part of wait_s; None while no training loader keeps a clock (the class
        # docstring). A fit's loaders either all keep one or none do, so its denominator is step_s.
        self.loader_wait_s: float | None = None
        self._epoch_wait = self._epoch_step = 0.0
        self._epoch_loader_wait: float | None = None
        self._epoch_samples = 0
        self._last_end: float | None = None
        self._start: float | None = None
        self._clock_at_end: float | None = None  # the loader's clock (see the class docstring) then
        # On a CUDA device: the device's timeline (wait and step time measured there, see the class
        # docstring), this epoch's counted steps as (previous end, start, end) marks, and totals.
        self._timeline: DeviceTimeline | None = None
        self._marked_end: Any = None
        self._marked_start: Any = None
        self._marks: list[tuple[Any, Any, Any]] = []
        self.device_wait_s: float | None = None
        self.device_step_s: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
        if self in callbacks and callbacks[-1] is not self:
            # A new list: Lightning is iterating the old one to call this very hook.
            trainer.callbacks = [c for c in callbacks if c is not self] + [self]  # type: ignore[attr-defined]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timeline = timeline_for(pl_module.device)

    def _mark(self) -> Any:
        return self._timeline.mark() if self._timeline is not None else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = time.perf_counter()  # the first wait includes the epoch's first fetch
        self._marked_end = self._mark()
        self._marks = []
        self._clock_at_end = loader_clock(trainer)
        self._epoch_wait = self._epoch_step = 0.0
        self._epoch_loader_wait = None
        self._epoch_samples = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()
        self._marked_start = self._mark()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        end = time.perf_counter()
        marked_end, marked_before, marked_start = self._mark(), self._marked_end, self._marked_start
        self._marked_end = marked_end
        clock, before = loader_clock(trainer), self._clock_at_end
        self._clock_at_end = clock
        if self._last_end is None or self._start is None:
            self._last_end = end
            return
        wait, step = self._start - self._last_end, end - self._last_end
        self._last_end = end
        if batch_idx < self.warmup_steps:
            return
        size = samples_in(batch)
        self._epoch_wait += wait
        self._epoch_step += step
        self._epoch_samples += size
        self.wait_s += wait
        self.step_s += step
        self.samples += size
        self.steps += 1
        if self._timeline is not None and marked_before is not None and marked_start is not None:
            self._marks.append((marked_before, marked_start, marked_end))
        if clock is not None and before is not None:
            # Inside the gap, except where a training_step pulls batches itself: then it is capped.
            loader = min(max(clock - before, 0.0), wait)
            self._epoch_loader_wait = (self._epoch_loader_wait or 0.0) + loader
            self.loader_wait_s = (self.loader_wait_s or 0.0) + loader
        if self._timeline is None and self.steps >= 10:  # on a device: judged per epoch, on its timeline
            self._warn_if_waiting(trainer)

    def _warn_if_waiting(self, trainer: L.Trainer) -> None:
        wait, step = self.waits()
        if not self.warned and step > 0 and wait > self.threshold * step:
            self.warned = True
            share = None if self.loader_wait_s is None else self.loader_wait_s / self.step_s
            warnings.warn(
                f"Training waits for data {wait / step:.0%} of the time (over {self.threshold:.0%}): "
                + _advice(trainer, wait / step, share),
                stacklevel=3,
            )

    def waits(self) -> tuple[float, float]:
        """Seconds waited and seconds of steps so far: on the device's timeline where there is one."""
        if self.device_wait_s is not None and self.device_step_s is not None:
            return self.device_wait_s, self.device_step_s
        return self.wait_s, self.step_s

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # validation time is not a training-data wait
        self._marked_end = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = time.perf_counter()
        self._marked_end = self._mark()
        self._clock_at_end = loader_clock(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch_wait, epoch_step = self._epoch_wait, self._epoch_step
        if self._timeline is not None and self._marks:
            self._timeline.settle(self._marks[-1][2])  # once per epoch: every mark has been reached
            epoch_wait = sum(self._timeline.seconds(before, start) for before, start, _ in self._marks)
            epoch_step = sum(self._timeline.seconds(before, end) for before, _, end in self._marks)
            self.device_wait_s = (self.device_wait_s or 0.0) + epoch_wait
            self.device_step_s = (self.device_step_s or 0.0) + epoch_step
            self._marks = []
            if self._epoch_step > 0:
                pl_module.log("perf/host_wait_fraction", self._epoch_wait / self._epoch_step, on_epoch=True)
            self._warn_if_waiting(trainer)
        if epoch_step > 0:
            pl_module.log("perf/data_wait_fraction", epoch_wait / epoch_step, on_epoch=True)
        if self._epoch_step > 0:
            pl_module.log("perf/step_samples_per_s", self._epoch_samples / self._epoch_step, on_epoch=True)
        if self._epoch_step > 0 and self._epoch_loader_wait is not None:
            pl_module.log("perf/loader_wait_fraction", self._epoch_loader_wait / self._epoch_step, on_epoch=True)

    def summary(self) -> dict[str, float]:
        """Totals over the run (after each epoch's warm-up steps) for ``metrics.json``."""
        wait, step = self.waits()
        if self.step_s <= 0 or step <= 0:
            return {}
        out = {
            "data_wait_fraction": round(wait / step, 4),
            "data_wait_s": round(wait, 3),
            "step_samples_per_s": round(self.samples / self.step_s, 1),
            "measured_steps": float(self.steps),
        }
        if self.device_wait_s is not None:
            out["host_wait_fraction"] = round(self.wait_s / self.step_s, 4)
        if self.loader_wait_s is not None:
            out["loader_wait_fraction"] = round(self.loader_wait_s / self.step_s, 4)
            out["loader_wait_s"] = round(self.loader_wait_s, 3)
        return out


class DeviceTimeline:
    """Marks on a CUDA device's timeline: an event recorded on the current stream, which the device
    reaches when it has run everything queued before it. Reading two marks' distance needs both
    reached: :meth:`settle` waits for the last one (the monitor does, once per epoch)."""

    def mark(self) -> Any:
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def settle(self, mark: Any) -> None:
        mark.synchronize()

    def seconds(self, first: Any, second: Any) -> float:
        return float(first.elapsed_time(second)) / 1000.0


def timeline_for(device: Any) -> DeviceTimeline | None:
    """The timeline the monitor measures on for a model on ``device``: a CUDA device's own, else
    the host's (``None``)."""
    return DeviceTimeline() if getattr(device, "type", "cpu") == "cuda" else None


def loader_clock(trainer: L.Trainer) -> float | None:
    """Seconds the training loader(s) kept their consumer waiting so far (``waited_s``, which chute's
    loaders keep), summed over a collection of loaders; ``None`` if no training loader keeps one."""
    loaders = getattr(trainer, "train_dataloader", None)
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    clocks = [float(w) for loader in loaders if isinstance(w := getattr(loader, "waited_s", None), (int, float))]
    return sum(clocks) if clocks else None


def _advice(trainer: L.Trainer, wait: float | None = None, loader_wait: float | None = None) -> str:
    """The settings that usually shorten the wait, naming the ones in force (chute's DataModules) and
    the route that helps where this run is: on a GPU, decoding there; on many cores, processes.

    ``wait`` and ``loader_wait``: the shares of step time between steps and inside the loader. When
    the loader's is under half of the wait, the loader is not what holds training up, and the
    advice says what is."""
    import os

    if wait is not None and loader_wait is not None and loader_wait < wait / 2:
        return (
            f"the loader itself kept training waiting {loader_wait:.1%} of the time; the rest is the copy to "
            "the device, the batch hook and the training loop's own work between steps (logging, callbacks), "
            "which a faster loader does not shorten: fewer, larger steps (a larger loader.batch_size) or "
            "logging less often (trainer.log_every_n_steps) do."
        )
    datamodule = getattr(trainer, "datamodule", None)
    # what num_workers=auto chose, else the settings given
    settings = getattr(datamodule, "tuned_loader", None) or getattr(datamodule, "loader_settings", None)
    cpus = os.cpu_count() or 1
    if settings is None:  # another DataModule: what the loader itself says
        now = f"num_workers={getattr(trainer.train_dataloader, 'num_workers', '?')}"
        return f"raise loader.num_workers (now {now}; {cpus} CPUs here) or loader.prefetch_factor."
    tips = []
    device = getattr(getattr(trainer, "strategy", None), "root_device", None)
    on_gpu = getattr(device, "type", "cpu") == "cuda"
    if on_gpu and getattr(datamodule, "decode_route", None) == "cpu":
        tips.append("decode JPEGs on the GPU (data.decode=gpu; workers then only read the files)")
    if settings.backend == "threads" and cpus > 4:
        tips.append(
            f"use worker processes (loader.backend=torch): on {cpus} CPUs loader threads contend with the "
            "training thread for the interpreter"
        )
    now = f"loader.backend={settings.backend}, loader.num_workers={settings.num_workers}"
    if getattr(datamodule, "tuned_loader", None) is not None:
        tips.append(
            f"{now} is what loader.num_workers=auto measured fastest here (its table is in the log); the "
            "wait left is the work of making each batch"
        )
    else:
        # without workers the wait is the making of each batch, in the training thread: no prefetch depth
        in_thread = settings.backend == "torch" and settings.num_workers == 0
        tip = (
            f"raise loader.num_workers (now {now}"
            + (": each batch is made in the training thread, between its steps" if in_thread else "")
            + f"; {cpus} CPUs here, keep one for training; loader.num_workers=auto measures the options)"
            + ("" if in_thread else " or loader.prefetch_factor")
        )
        if not on_gpu:
            import torch

            # on 2 cores a stream's worker took its core from the model: the wait fell, the step grew
            tip += (
                f" (training on the CPU, loader workers share the {cpus} CPUs with the model's "
                f"{torch.get_num_threads()} threads: they help where a core is idle)"
            )
        tips.append(tip)
    cache = getattr(datamodule, "cache", None)
    if cache in (None, "none") and hasattr(datamodule, "device_augment"):  # an image DataModule decoding each pass
        tips.append("cache decoded data (data.cache=memory|disk with data.device_augment=true)")
    elif cache is not None:
        tips.append("with the data cached already, the rest is the training loop's own time between steps")
    return "; ".join(tips) + "."
