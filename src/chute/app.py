"""The training app behind ``train.py``: composed config in, trained model and ``metrics.json`` out."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import inspect
import json
import logging
import math
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, OmegaConf

import chute
from chute import fastpaths
from chute.callbacks import StallMonitor, Throughput
from chute.callbacks.latest import INSIDE_A_WINDOW
from chute.config import Validated, validate_config
from chute.datamodules import ChuteDataModule
from chute.datamodules.base import LOADER_SHORTCUTS, agree_with_shortcuts
from chute.errors import ConfigError, DataError
from chute.loader import LoaderSettings
from chute.loggers import TensorBoardLogger

log = logging.getLogger(__name__)


def resolve_precision(precision: str, accelerator: str) -> str:
    """What ``trainer.precision`` means here; anything but ``auto`` passes through.

    ``auto``: ``16-mixed`` on CUDA (and MPS); on the CPU ``bf16-mixed`` where the hardware computes
    bfloat16 natively (:func:`chute.fastpaths.cpu_has_native_bf16`), else ``32-true``, because
    emulated bf16 is many times slower than float32. The choice and its reason are logged.
    """
    if precision != "auto":
        return precision
    on_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    on_mps = accelerator in ("auto", "mps") and torch.backends.mps.is_available()
    if on_cuda or on_mps:
        chosen, why = "16-mixed", f"float16 autocast on {'CUDA' if on_cuda else 'MPS'}"
    elif fastpaths.cpu_has_native_bf16():
        chosen, why = "bf16-mixed", "this CPU computes bfloat16 natively (AVX512-BF16/AMX)"
    else:
        chosen, why = "32-true", "this CPU has no native bfloat16 (emulated bf16 is several times slower)"
    log.info("trainer.precision=auto: %s (%s)", chosen, why)
    return chosen


def run(cfg: DictConfig) -> float:
    """Train (and optionally test) as ``cfg`` says; return the best value of ``cfg.optimized_metric``."""
    with _one_job_per_ddp_launch():
        return _run(cfg)


def run_seed() -> int:
    """The seed of a run whose config says ``seed: null``: drawn at random, but the same in every
    process of one job. A DDP rank Lightning launches inherits ``PL_GLOBAL_SEED`` from the first; the
    processes of an outside launcher (torchrun, srun) each start here, and share their job's id
    (``TORCHELASTIC_RUN_ID``, ``SLURM_JOB_ID``), from which the seed is derived. (Lightning itself
    answers ``seed_everything(None)`` with 0 on every run.)"""
    if os.environ.get("PL_GLOBAL_SEED") and "LOCAL_RANK" in os.environ:  # a rank Lightning launched
        return int(os.environ["PL_GLOBAL_SEED"])  # (not a later job of a multirun in this process)
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID") or ""
        if job and job != "none":
            return int.from_bytes(hashlib.sha256(job.encode()).digest()[:4], "little") % 2**31
        log.warning("seed=null under a launcher with no job id to share: using seed 0 in every process")
        return 0
    return int.from_bytes(os.urandom(4), "little") % 2**31


#: Warnings this app's user cannot act on, with where each comes from: Lightning's own use of an
#: API that torch 2.10 deprecated, and the model summary's note that it sizes a bf16-mixed model in
#: 32 bits (``trainer.precision=auto`` picks bf16-mixed on CPUs that compute it natively).
_NOT_ACTIONABLE = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"Precision bf16-mixed is not supported by the model summary", UserWarning),
)


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's "💡 Tip" record, printed at every fit whose loggers do not include its
    cloud platform's: an advertisement, not advice on the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_QUIET = _NoAdvertisement()


def _run(cfg: DictConfig) -> float:
    started = time.perf_counter()
    _log_to_run_file()
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _QUIET not in rank_zero_logger.filters:
        rank_zero_logger.addFilter(_QUIET)
    for message, category in _NOT_ACTIONABLE:
        warnings.filterwarnings("ignore", message=message, category=category)
    settings = validate_config(cfg)
    fastpaths.say_if_missing()
    # seed: null (lightning-hydra-template's default) draws one; Lightning keeps it in PL_GLOBAL_SEED,
    # which the DDP ranks it launches later inherit, so every rank uses the same one.
    seed = L.seed_everything(cfg.seed if cfg.seed is not None else run_seed(), workers=False, verbose=False)
    if cfg.seed is None:
        cfg.seed = seed  # every ${seed} in the config resolves to it from here on
        log.info("seed=null: using seed %d (set seed=%d to repeat this run)", seed, seed)
    run_dir = str(cfg.paths.output_dir)

    datamodule = build_datamodule(cfg, settings)
    # The model's shape depends on the data: index it now (Lightning calls both hooks again, cheaply).
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg, {**datamodule.model_kwargs, **datamodule.loss_kwargs})

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None) or Throughput()
    if throughput not in callbacks:
        callbacks.append(throughput)
    # None is "Lightning's default", except where it is a setting of its own (validation by steps only)
    trainer_kwargs = {
        k: v for k, v in dataclasses.asdict(settings.trainer).items() if v is not None or k in _NONE_IS_A_SETTING
    }
    trainer_kwargs["precision"] = resolve_precision(str(settings.trainer.precision), settings.trainer.accelerator)
    _warn_slow_precision(trainer_kwargs["precision"], settings.trainer.accelerator)
    try:
        trainer = L.Trainer(
            **trainer_kwargs,
            callbacks=callbacks,
            # No hp_metric placeholder (-1): the hyperparameters are logged with the run's real metrics.
            logger=TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", default_hp_metric=False),
            default_root_dir=run_dir,
        )
    except (MisconfigurationException, TypeError, ValueError) as err:  # a setting this machine cannot take
        raise _trainer_error(err, trainer_kwargs) from None
    # Lightning stops cleanly on SIGTERM by raising a SystemExit with status 0; the run reports it below.
    resumed = _resume_path(cfg.ckpt_path, trainer)
    saved_step = _check_checkpoint_fits(resumed, model) if resumed is not None else None
    with contextlib.suppress(SIGTERMException):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=resumed)
        except ValueError as err:  # the one setting Lightning checks only once the epoch's length is known
            if "`val_check_interval`" not in str(err):
                raise
            raise ConfigError(
                "trainer.val_check_interval", settings.trainer.val_check_interval,
                f"Lightning refuses it: {str(err).strip()} (here: trainer.check_val_every_n_epoch=null)",
            ) from None  # fmt: skip
    if trainer.global_step == saved_step and (kept := _finished_run(run_dir, cfg.optimized_metric)) is not None:
        return kept  # restarted after it had finished: nothing trained, its report stands
    fit_metrics = _floats(trainer.callback_metrics)
    if cfg.test_after_fit and not trainer.received_sigterm:
        # The best checkpoint when one was saved (fast_dev_run saves none): else the weights as they are.
        saved = _checkpoint(trainer)
        trainer.test(model, datamodule=datamodule, ckpt_path=(saved.best_model_path if saved else "") or None)

    checkpoint = _checkpoint(trainer)
    best = checkpoint.best_model_score if checkpoint is not None else None
    result = float(best) if best is not None else fit_metrics.get(cfg.optimized_metric, float("nan"))
    summary = {
        "metrics": {**fit_metrics, **_floats(trainer.callback_metrics)},
        f"best_{cfg.optimized_metric}": result,
        **throughput.summary(),
        **{k: v for c in callbacks if isinstance(c, StallMonitor) for k, v in c.summary().items()},
        "wall_time_s": round(time.perf_counter() - started, 2),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "resumed_from": resumed,
        "stopped_by_sigterm": bool(trainer.received_sigterm),
        "precision": trainer_kwargs["precision"],
        "accelerator": type(trainer.accelerator).__name__,
        "num_workers": (datamodule.tuned_loader or datamodule.loader_settings).num_workers,
        "loader_autotune": datamodule.autotune_report,
        "imbalance": settings.imbalance.strategy,
        "batch_size": datamodule.loader_settings.batch_size,  # the data.* shortcuts included
        "seed": int(cfg.seed),
        "run_dir": run_dir,
        "checkpoints": {"best": checkpoint.best_model_path if checkpoint else None, "last": _last_path(trainer)},
        "versions": _versions(),
    }
    _report(summary, run_dir, cfg.optimized_metric)
    if trainer.received_sigterm:  # Lightning stops cleanly on SIGTERM; the run still did not finish
        raise InterruptedRunError(f"stopped by SIGTERM at epoch {trainer.current_epoch}, step {trainer.global_step}")
    return result


def _warn_slow_precision(precision: str, accelerator: str) -> None:
    """fp16 on a CPU is emulated: it runs, many times slower than fp32, so say so once."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and precision in ("16", "16-mixed", "16-true"):
        log.warning(
            "trainer.precision=%s on the CPU runs float16 in software, far slower than float32; "
            "use trainer.precision=32-true (or auto) unless you are checking fp16 numerics.",
            precision,
        )


class InterruptedRunError(RuntimeError):
    """The run was stopped by a signal (e.g. a scheduler's SIGTERM); checkpoints and metrics so far are written."""


# What Lightning's DDP launcher sets in the environment of the process it launches ranks from.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def _one_job_per_ddp_launch() -> Iterator[None]:
    """In a Hydra multirun job, make Lightning's DDP launcher start the other ranks for this job only.

    Lightning starts ranks > 0 by re-running the script with ``sys.argv`` plus ``hydra.run.dir=<run.dir>``
    (``_hydra_subprocess_cmd``). Under ``-m`` that argv is the whole sweep and ``run.dir`` is not the
    job's folder, so every child would run a sweep of its own. For the job's duration the argv becomes
    this job's overrides and ``run.dir`` its output folder; afterwards the process group is destroyed
    and the launcher's environment variables restored, or the next job would reuse the finished job's
    group (``LOCAL_RANK`` set: Lightning assumes an external launcher) and wait forever.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra: Any = HydraConfig.get()  # a DictConfig at run time
    argv, env, run_dir = list(sys.argv), {k: os.environ.get(k) for k in _LAUNCHER_ENV}, hydra.run.dir
    sys.argv = [argv[0], *hydra.overrides.task]
    with read_write(hydra), open_dict(hydra):
        hydra.run.dir = hydra.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra), open_dict(hydra):
            hydra.run.dir = run_dir
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_NONE_IS_A_SETTING = ("check_val_every_n_epoch",)


def _trainer_error(err: Exception, settings: dict[str, Any]) -> ConfigError:
    """Lightning refusing a ``trainer`` setting (``trainer.devices=[0,1]`` on a CPU) as a config error
    naming the setting its message names (else ``trainer``), instead of a traceback."""
    message = str(err)
    named = {key: found.start() for key in settings if (found := re.search(rf"\b{key}\b", message))}
    key = min(named, key=named.__getitem__) if named else ""
    value = settings[key] if key else {k: v for k, v in settings.items() if k in ("accelerator", "devices", "strategy")}
    return ConfigError(f"trainer.{key}" if key else "trainer", value, f"Lightning refuses it: {message}")


def build_datamodule(cfg: DictConfig, settings: Validated) -> ChuteDataModule:
    """Instantiate ``cfg.data`` with the validated loader settings (and transforms, for image and video data)."""
    # The DataModule's own settings win over the `loader` group: `data.loader` (as other Hydra apps
    # set it) and the shortcuts (`data.batch_size`, as searches set it), which must agree.
    shortcuts = {k: cfg.data.get(k) for k in LOADER_SHORTCUTS if cfg.data.get(k) is not None}
    given = OmegaConf.to_container(cfg.data.loader, resolve=True) if cfg.data.get("loader") is not None else {}
    assert isinstance(given, dict)
    own = {str(key): value for key, value in given.items()}
    try:
        agree_with_shortcuts(shortcuts, own)
        loader = dataclasses.replace(settings.loader, **{**own, **shortcuts})
    except ConfigError as err:  # a shortcut (data.batch_size) or a key of data.loader
        where = "data" if err.key in shortcuts or err.key.startswith("loader.") else "data.loader"
        raise err.with_prefix(where) from None
    except TypeError:
        unknown = sorted(set(own) - {f.name for f in dataclasses.fields(LoaderSettings)})
        if not unknown:
            raise
        raise ConfigError(f"data.loader.{unknown[0]}", own[unknown[0]], "is not a loader setting") from None
    data_kwargs: dict[str, Any] = {"loader": loader, **dict.fromkeys(shortcuts)}
    if _accepts(cfg.data, "imbalance"):
        data_kwargs["imbalance"] = settings.imbalance
    elif settings.imbalance.strategy != "none":
        raise ConfigError(
            "imbalance.strategy", settings.imbalance.strategy, f"{cfg.data._target_} has no class targets"
        )
    if _accepts(cfg.data, "train_transform") and cfg.data.get("transforms") is None:
        # image folders: the `transforms` group's settings (unless `data.transforms` sets them), which
        # the DataModule builds its pipelines from and keeps in its hyperparameters, so that one
        # restored from a checkpoint (to predict) has the run's pipelines, not the defaults
        data_kwargs["transforms"] = dataclasses.asdict(settings.transforms)
    elif _accepts(cfg.data, "transforms") and cfg.data.get("transforms") is None:
        data_kwargs["transforms"] = settings.transforms  # e.g. video: the settings, applied per clip
    datamodule = _instantiate(cfg, "data", **data_kwargs)
    if not isinstance(datamodule, ChuteDataModule):
        raise ConfigError("data._target_", cfg.data._target_, "must name a chute DataModule (ChuteDataModule subclass)")
    return datamodule


def build_model(cfg: DictConfig, data_hints: dict[str, Any]) -> L.LightningModule:
    """Instantiate ``cfg.model``, passing the data facts (``num_classes``, ...) its constructor accepts."""
    _check_model_takes_data(cfg, data_hints)
    classifying = data_hints.get("task", "classification") == "classification"  # regression tables: num_classes 0
    if classifying and data_hints.get("num_classes") == 1 and _accepts(cfg.model, "num_classes"):
        raise DataError(  # (torchmetrics' error inside Hydra's "Error in call to target", else)
            f"The data ({cfg.data._target_}) has 1 class in its training split, and model._target_="
            f"{cfg.model._target_} classifies: it needs at least two. Add the other classes' data (a table's "
            "numeric target: data.task=regression)."
        )
    hints = {k: v for k, v in data_hints.items() if _accepts(cfg.model, k)}  # the data decides shapes
    return _instantiate(cfg, "model", **hints)


# The facts that say what kind of input a DataModule gives, most specific first (a multi-task table
# gives num_features and heads, a video in_channels and frames_per_clip), with chute's models for it.
_INPUT_KINDS = {
    "heads": ("rows with several targets", "model=multitask_mlp"),
    "frames_per_clip": ("video clips", "model=clip_r2plus1d"),
    "in_channels": ("images", "model=small_cnn or model=resnet18 (model=chute_image_classifier in your own app)"),
    "num_features": ("table rows", "model=mlp (model=chute_tabular in your own app)"),
    "vocab_size": ("token sequences", "model=sequence_conv or model=sequence_gru"),
}


def _check_model_takes_data(cfg: DictConfig, data_hints: dict[str, Any]) -> None:
    """Refuse a model built for another kind of input than the data's: a table's rows given to an
    image model failed at the first batch inside conv2d, video clips in an image model with "too many
    values to unpack". The kind of each is its most specific fact in ``_INPUT_KINDS`` (for the model:
    among its constructor's arguments). Only chute's own models are judged: a user's may take
    ``in_channels`` for video clips, or ``**kwargs``."""
    if not str(cfg.model._target_).startswith("chute."):  # a user's model: its signature may mean otherwise
        return
    try:
        params = inspect.signature(get_object(str(cfg.model._target_))).parameters
    except (ImportError, ValueError, TypeError, AttributeError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    data_kind = next((fact for fact in _INPUT_KINDS if fact in data_hints), None)
    model_kind = next((fact for fact in _INPUT_KINDS if fact in params), None)
    if data_kind is None or model_kind is None or data_kind == model_kind:
        return
    kind, models = _INPUT_KINDS[data_kind]
    facts = ", ".join(f"{k}={data_hints[k]!r}" for k in _INPUT_KINDS if k in data_hints and k != "heads")
    raise ConfigError(
        "model._target_",
        _AsWritten(str(cfg.model._target_)),
        f"takes {_INPUT_KINDS[model_kind][0]} ({model_kind}), but data._target_={cfg.data._target_} gives {kind} "
        f"({facts or data_kind}): pick a model for {kind}, chute's {models}.",
    )


def _instantiate(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """``instantiate(cfg[group])``; a bad value surfaces as ``ConfigError`` naming ``group.key``.

    Arguments arrive as plain lists and dicts (``_convert_="all"``), not omegaconf containers: what
    a model saves with ``save_hyperparameters`` then loads with ``torch.load(weights_only=True)``.
    """
    try:
        return instantiate(cfg[group], _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        # Hydra names the node whose call failed: `data`, or a nested one such as `data.prepare`.
        where = found[1] if (found := re.search(r"\nfull_key: (\S+)\s*$", str(err))) else group
        if isinstance(cause, ConfigError):
            raise cause.with_prefix(where) from None
        if isinstance(cause, DataError):  # e.g. a file the constructor checks: its own message
            raise cause from None
        # The constructors' own checks say `key=value: reason` (ValueError): the same, with the key's path.
        if isinstance(cause, ValueError) and (said := re.fullmatch(r"(\w+)=(.+?): (.+)", str(cause), re.DOTALL)):
            raise ConfigError(f"{where}.{said[1]}", _AsWritten(said[2]), said[3]) from None
        raise


class _AsWritten(str):
    """A value a message already shows as written (its ``repr`` adds no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def _accepts(node: DictConfig, argument: str) -> bool:
    """Whether the callable ``node._target_`` names takes ``argument`` (or ``**kwargs``; a DataModule's
    ``**common`` takes only the common settings it supports)."""
    try:
        target = get_object(str(node._target_))
        if isinstance(target, type) and issubclass(target, ChuteDataModule):
            return argument in target.init_parameters()
        params = inspect.signature(target).parameters
    except (ImportError, ValueError, TypeError):
        return False
    return argument in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _resume_path(requested: str | None, trainer: L.Trainer) -> str | None:
    """The checkpoint ``ckpt_path`` names. ``last``: the newest of the run's last checkpoint and the one
    Lightning's SLURM plugin saves before a requeue (``hpc_ckpt_N.ckpt`` in the run folder, which
    Lightning's own ``last`` does not consider); none yet is a fresh start, so one command both starts
    a job and restarts it."""
    if requested != "last":
        return requested
    saving = dict.fromkeys(str(c.dirpath) for c in _checkpoints(trainer) if c.dirpath)  # every callback's folder
    folders = [str(trainer.default_root_dir), *saving]
    found = [
        path
        for folder in folders
        for pattern in ("last*.ckpt", "hpc_ckpt_*.ckpt")
        for path in glob.glob(os.path.join(folder, pattern))
    ]
    inside = [p for p in found if os.path.basename(p).startswith("hpc_ckpt_") and _inside_a_window(p)]
    for path in inside:
        log.info("ckpt_path=last: %s was saved inside a gradient-accumulation window: not resumed from", path)
    found = [p for p in found if p not in inside]
    if not found:
        log.info("ckpt_path=last: no checkpoint in %s yet, starting fresh", " or ".join(folders))
        return None
    return max(found, key=os.path.getmtime)


def _inside_a_window(path: str) -> bool:
    """Whether a checkpoint was saved inside a gradient-accumulation window (marked by
    :class:`~chute.callbacks.LatestCheckpoint`): Lightning's SLURM plugin saves one whenever SIGUSR1
    comes, and a resume from it would skip the batches whose gradients were only held."""
    try:
        return bool(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(INSIDE_A_WINDOW))
    except Exception:  # not readable here: Lightning names its problem if it is resumed from
        return False


def _check_checkpoint_fits(path: str, model: L.LightningModule) -> int | None:
    """Refuse to resume from a checkpoint whose weights have other shapes than this run's model
    (PyTorch's "size mismatch for net.0.weight" after the data was read), naming the hyperparameters
    that differ: mostly facts the data decided (``in_channels`` from ``data.image_mode``,
    ``num_classes``, ``num_features``). Read memory-mapped: shapes only. Returns the checkpoint's
    global step; a file that does not load here is left to Lightning, which names its own problem."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        weights, hparams = saved["state_dict"], dict(saved.get("hyper_parameters") or {})
        step = int(saved["global_step"])
    except Exception:  # not a checkpoint this check can read: Lightning reports it
        return None
    ours = model.state_dict()
    differ = [k for k in ours if k in weights and tuple(weights[k].shape) != tuple(ours[k].shape)]
    others = sorted(set(weights) ^ set(ours))
    if not differ and not others:
        return step
    if differ:
        key = differ[0]
        what = f"{key} is {tuple(weights[key].shape)} there and {tuple(ours[key].shape)} here"
        what += f" ({len(differ)} weights differ in shape)" if len(differ) > 1 else ""
    else:
        what = f"the layers differ ({len(others)} weights in one of them only, first {others[0]})"
    current = dict(model.hparams)
    changed = [k for k in sorted(set(hparams) | set(current)) if hparams.get(k) != current.get(k)]
    why = (
        "; its hyperparameters differ in "
        + ", ".join(f"{k} ({hparams.get(k)!r} there, {current.get(k)!r} here)" for k in changed[:4])
        if changed
        else ""
    )
    raise ConfigError(
        "ckpt_path",
        path,
        f"the checkpoint's model does not fit this run's: {what}{why}. Resume with the data and model settings "
        "of the run that saved it (the data decides in_channels, num_classes, num_features, vocab_size), or "
        "start a new run without ckpt_path.",
    )


def _checkpoints(trainer: L.Trainer) -> list[ModelCheckpoint]:
    return [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]  # type: ignore[attr-defined]


def _checkpoint(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The checkpoint callback that keeps the best by a metric (else the first)."""
    saving = _checkpoints(trainer)
    return next((c for c in saving if c.monitor is not None), saving[0] if saving else None)


def _last_path(trainer: L.Trainer) -> str | None:
    """The latest checkpoint file: the one a callback without a metric keeps (chute's ``last_checkpoint``),
    else a ``save_last`` copy."""
    for callback in _checkpoints(trainer):
        path = callback.best_model_path if callback.monitor is None else callback.last_model_path
        if path:
            return path
    return None


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items()}


def _versions() -> dict[str, str]:
    import torchvision

    return {
        "chute": chute.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "crop_decoder": "built" if fastpaths.jpegcrop is not None else fastpaths.MISSING,
    }


def _finished_run(run_dir: str, metric: str) -> float | None:
    """The best ``metric`` of the report a finished run left in ``run_dir`` (``None``: no report).

    ``ckpt_path=last`` restarts a job wherever it stopped; one that had finished trains nothing
    more, and writing its report again would replace the run's metrics, throughput and data wait
    with empty ones. So the report stays, and the run says so."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            report = json.load(f)
        best = report[f"best_{metric}"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if report.get("stopped_by_sigterm"):
        return None  # the report of a run stopped part-way: this one (stopped again at once) replaces it
    line = (
        f"chute | {os.path.relpath(run_dir)} had finished (epoch {report.get('epochs')}, step "
        f"{report.get('global_step')}): nothing left to train, its metrics.json stands (best {metric} {best})"
    )
    _say(line)  # every rank decides alike (the same file); rank 0 says so
    return float("nan") if best is None else float(best)


@rank_zero_only
def _say(line: str) -> None:
    """Print ``line`` and end the run's log with it."""
    print(line, flush=True)
    for handler in _log_files():
        handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line, (), None))


@rank_zero_only
def _report(summary: dict[str, Any], run_dir: str, metric: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(_json_safe(summary), f, indent=2)  # strict JSON: a metric never measured is null, not NaN
    last = summary["metrics"].get(metric, float("nan"))
    rate = summary.get("train_samples_per_s", float("nan"))
    line = (
        f"chute | {metric} {last:.4f} (best {summary[f'best_{metric}']:.4f}) | "
        f"train {rate:,.0f} samples/s | {summary['wall_time_s']:.1f} s | {os.path.relpath(run_dir)}"
    )
    _say(line)


def _log_files() -> list[logging.FileHandler]:
    """The file handlers Hydra's job logging gave the root logger (``<run dir>/train.log``)."""
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def _log_to_run_file() -> None:
    """Make ``train.log`` the run's whole log: Lightning's messages (imported before logging was set
    up, its loggers keep to their own console handler and do not reach the root logger, where
    Hydra's file handler is; imported after, they do, once) and warnings
    (the stall monitor's advice, say), which go through logging from here on, to the console and
    the file alike."""
    current = _log_files()
    package = logging.getLogger("lightning")
    if logging.getLogger("lightning.pytorch").propagate and logging.getLogger().handlers:
        # Lightning was imported after Hydra set up logging (train.py imports it only once the config
        # is checked), so its messages reach the root's console and train.log handlers; the console
        # handler Lightning puts on its package logger would print each of them a second time.
        for handler in [h for h in package.handlers if type(h) is logging.StreamHandler]:
            package.removeHandler(handler)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logger.propagate:
            continue
        for stale in [h for h in logger.handlers if isinstance(h, logging.FileHandler) and h not in current]:
            logger.removeHandler(stale)  # an earlier job's file, in a multirun (it would reopen on write)
        for handler in current:
            if handler not in logger.handlers:
                logger.addHandler(handler)
    logging.captureWarnings(True)


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float made ``None`` (JSON has no NaN; strict parsers and
    jq refuse Python's bare ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value
