"""Hydra schemas for every config group, registered in one place, and the checks run after composing.

Hydra checks types and unknown keys while it composes (``loader.num_worker=2`` and
``loader.num_workers=abc`` fail there, naming the key). Value rules (``num_workers >= 0``,
``prefetch_factor`` only with workers, ...) live in the settings dataclasses themselves, so plain
Python users get them too; :func:`validate_config` applies them straight after composition and
qualifies the key with its group (``loader.num_workers``).
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from omegaconf import MISSING, DictConfig, OmegaConf

from chute.errors import ConfigError
from chute.imbalance import ImbalanceSettings
from chute.loader import LoaderSettings
from chute.transforms.settings import TransformSettings

PRECISIONS = (
    "auto", "64", "32", "16", "bf16", "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
)  # fmt: skip


@dataclass
class TrainerConfig:
    """The ``lightning.Trainer`` arguments chute exposes (``precision: auto`` is resolved by chute)."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    max_epochs: int | None = 10
    min_epochs: int | None = None
    max_steps: int = -1
    max_time: str | None = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    deterministic: Any = None
    benchmark: bool | None = None
    fast_dev_run: Any = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    use_distributed_sampler: bool = True
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    overfit_batches: Any = 0.0  # a share or a count of batches trained on again every epoch (debugging)
    profiler: str | None = None  # "simple", "advanced" or "pytorch": where each step's time goes

    def __post_init__(self) -> None:
        """The value rules of the fields Hydra cannot type (``Any``) and the counts' ranges, checked
        here so that a bad value is named now, not by a ``TypeError`` deep in Lightning after the
        data was prepared (``trainer.limit_train_batches=abc``, ``trainer.devices=0``)."""
        _check_devices(self.devices)
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                    "overfit_batches"):  # fmt: skip
            _check_share_or_count(key, getattr(self, key), "a share of the batches (0.0-1.0) or a count (>= 0)")
        interval = self.val_check_interval
        if not (interval is None or isinstance(interval, (str, dict)) or interval != 0):  # str, dict: a time
            raise ConfigError("val_check_interval", interval, "must be > 0 (a share of an epoch, batches or a time)")
        if not isinstance(interval, (str, dict)):
            _check_share_or_count(
                "val_check_interval", interval, "a share of an epoch (0.0-1.0), a count of batches or a time"
            )
        fast = self.fast_dev_run
        if not (isinstance(fast, bool) or (isinstance(fast, int) and fast >= 0)):
            raise ConfigError("fast_dev_run", fast, "must be true, false or a number of batches (>= 0)")
        if self.deterministic not in (None, True, False, "warn"):
            raise ConfigError("deterministic", self.deterministic, "must be true, false, 'warn' or null")
        minimum = {
            "num_nodes": 1,
            "max_steps": -1,
            "accumulate_grad_batches": 1,
            "reload_dataloaders_every_n_epochs": 0,
        }
        optional = {"max_epochs": -1, "min_epochs": 0, "check_val_every_n_epoch": 1, "num_sanity_val_steps": -1,
                    "log_every_n_steps": 0}  # fmt: skip
        for key, low in [*minimum.items(), *optional.items()]:
            value = getattr(self, key)
            if (value is not None or key in minimum) and not value >= low:
                raise ConfigError(key, value, f"must be >= {low}" + (" or null" if key in optional else ""))


def _check_devices(devices: Any) -> None:
    """Lightning's ``devices``: ``auto``, a count (``-1``: all), a list of indices or a string of them."""
    if devices == "auto":
        return
    if isinstance(devices, str):
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        if parts and all(p.lstrip("-").isdigit() for p in parts):
            devices = int(parts[0]) if len(parts) == 1 and "," not in devices else [int(p) for p in parts]
    count = isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1)
    indices = isinstance(devices, list) and bool(devices) and all(type(d) is int and d >= 0 for d in devices)
    if count or indices:
        return
    raise ConfigError(
        "devices", devices, "must be 'auto', a count of devices (>= 1; -1: all) or a list of device indices"
    )


def _check_share_or_count(key: str, value: Any, what: str) -> None:
    """A Lightning ``limit_*``-style value: ``None``, a float share in [0, 1] or an int count >= 0."""
    if value is None or (isinstance(value, float) and 0.0 <= value <= 1.0):
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return
    raise ConfigError(key, value, f"must be {what}")


@dataclass
class PathsConfig:
    data_dir: str = "${oc.env:CHUTE_DATA_DIR,${hydra:runtime.cwd}/data}"
    # Optional: Hydra fills it when a job runs; `--cfg job --resolve` prints the config before that (null).
    output_dir: Optional[str] = "${hydra:runtime.output_dir}"  # noqa: UP045


@dataclass
class TrainConfig:
    """The root config: one field per config group, plus run-level settings."""

    seed: Optional[int] = 0  # noqa: UP045  (null: drawn at start and logged)
    paths: PathsConfig = field(default_factory=PathsConfig)
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    transforms: TransformSettings = field(default_factory=TransformSettings)
    imbalance: ImbalanceSettings = field(default_factory=ImbalanceSettings)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: Any = MISSING
    model: Any = MISSING
    callbacks: dict[str, Any] = field(default_factory=dict)
    optimized_metric: str = "val/acc"
    optimized_mode: str = "max"
    test_after_fit: bool = False
    ckpt_path: Optional[str] = None  # noqa: UP045  (resume from a checkpoint file, or "last")


@dataclass(frozen=True)
class Validated:
    """Settings objects built (and checked) from a composed config."""

    loader: LoaderSettings
    transforms: TransformSettings
    imbalance: ImbalanceSettings
    trainer: TrainerConfig


def validate_config(cfg: DictConfig) -> Validated:
    """Build the settings objects of ``cfg``, raising :class:`ConfigError` naming ``group.key``."""
    # `???`: a value the option needs from the user. Not the model's (the data fills num_classes and
    # the like when the model is built), nor Hydra's own node.
    missing = sorted(key for group in cfg if group not in ("hydra", "model") for key in _missing_keys(cfg, str(group)))
    if missing:
        raise ConfigError(
            missing[0], _Unset(), f"has no value and this option needs one: add {missing[0]}=<value> to the command"
        )
    built: dict[str, Any] = {}
    groups = (
        ("loader", LoaderSettings), ("transforms", TransformSettings), ("imbalance", ImbalanceSettings),
        ("trainer", TrainerConfig),
    )  # fmt: skip
    for group, cls in groups:
        values = OmegaConf.to_container(cfg[group], resolve=True)
        assert isinstance(values, dict)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in values if str(k) not in known)
        if unknown:  # e.g. +trainer.profiler=simple: say so, not a TypeError from the constructor
            raise ConfigError(
                f"{group}.{unknown[0]}", values[unknown[0]], f"is not a {group} setting chute knows; "
                f"they are: {', '.join(sorted(known))}",
            )  # fmt: skip
        try:
            built[group] = cls(**{str(k): v for k, v in values.items()})
        except ConfigError as err:
            raise err.with_prefix(group) from None
    if cfg.optimized_mode not in ("min", "max"):
        raise ConfigError("optimized_mode", cfg.optimized_mode, "must be 'min' or 'max'")
    precision = str(built["trainer"].precision)
    if precision not in PRECISIONS:
        raise ConfigError("trainer.precision", precision, f"must be one of {list(PRECISIONS)}")
    return Validated(**built)


def _missing_keys(cfg: DictConfig, group: str) -> set[str]:
    """The ``???`` keys under ``cfg[group]`` (full keys); none where it cannot tell (an interpolation to
    a missing value, which omegaconf reports itself when the value is used)."""
    try:
        node = cfg.get(group)
        return set(OmegaConf.missing_keys(node)) if isinstance(node, DictConfig) else set()
    except Exception:  # omegaconf's resolution errors
        return set()


class _Unset:
    """A mandatory value not given (``???`` in the config), as a message shows it."""

    def __repr__(self) -> str:
        return "???"


def builds(target: type, name: str, exclude: tuple[str, ...] = ()) -> type:
    """A schema dataclass for ``target``'s constructor: ``_target_`` plus its typed arguments.

    Arguments of types OmegaConf cannot hold (callables, objects) become ``Any``; arguments in
    ``exclude`` are left out (the train app passes them at instantiation).
    """
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=f"{target.__module__}.{target.__name__}"))]
    for param, hint in _init_parameters(target):
        if param.name in exclude:
            continue
        default = param.default
        if default is inspect.Parameter.empty:
            spec = field(default=MISSING)
        elif isinstance(default, (list, tuple, dict)):
            spec = field(default_factory=_copier(default))
        else:
            spec = field(default=default)
        fields.append((param.name, _omegaconf_type(hint), spec))
    return dataclasses.make_dataclass(name, fields)


def _init_parameters(target: type) -> list[tuple[inspect.Parameter, Any]]:
    """``target``'s named constructor arguments and their types (a DataModule's include its ``**common``)."""
    described = getattr(target, "init_parameters", None)
    if described is not None:
        return list(described().values())
    hints = typing.get_type_hints(target.__init__)  # type: ignore[misc]
    params = list(inspect.signature(target.__init__).parameters.values())[1:]  # type: ignore[misc]
    return [(p, hints.get(p.name, Any)) for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _copier(default: list[Any] | tuple[Any, ...] | dict[str, Any]) -> Callable[[], Any]:
    return lambda: list(default) if isinstance(default, tuple) else copy.deepcopy(default)


def _omegaconf_type(tp: Any) -> Any:
    """Map a Python annotation to one OmegaConf can enforce, or ``Any``."""
    if tp in (int, float, bool, str):
        return tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        kinds = {type(a) for a in args}
        return kinds.pop() if len(kinds) == 1 else Any
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        optional = len(options) < len(args)
        if any(a is collections.abc.Callable or typing.get_origin(a) is collections.abc.Callable for a in options):
            return Any  # a callable or its dotted path: a string, or a node with _target_ (and _partial_)
        if optional and any(typing.get_origin(a) in (dict, collections.abc.Mapping) for a in options):
            return Any  # OmegaConf cannot merge a command-line dict into a typed dict node that is null
        if str in options:  # e.g. str | os.PathLike
            inner: Any = str
        elif len(options) == 1:
            inner = _omegaconf_type(options[0])
        else:
            return Any
        return Optional[inner] if optional and inner is not Any else inner  # noqa: UP045
    if origin in (list, tuple, collections.abc.Sequence) and args and args[0] in (int, float, bool, str):
        return list[args[0]]  # type: ignore[valid-type]
    if origin in (dict, collections.abc.Mapping):
        return dict[str, Any]
    return Any


def compose_config(*overrides: str, output_dir: str | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` as ``python train.py`` would, outside a Hydra run.

    For scripts and tests. ``${hydra:...}`` interpolations resolve (the run directory is
    ``output_dir``, default a new temporary folder).
    """
    import tempfile
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register_configs()
    GlobalHydra.instance().clear()
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = output_dir or tempfile.mkdtemp(prefix="chute-run-")
    HydraConfig.instance().set_config(cfg)
    return cfg


def register_configs() -> None:
    """Register every schema with Hydra's ConfigStore (idempotent), without importing torch.

    The data and model schemas come from :mod:`chute._schemas`, generated from the classes'
    constructors by :func:`schema_source` (``python -m chute.config`` writes it again).
    """
    from hydra.core.config_store import ConfigStore

    from chute import _schemas

    # Schemas live in groups of their own (``schema/<group>/<name>``), so ``data=...`` or ``model=...``
    # lists only the options a user can pick; a config file takes its schema in its defaults list
    # (``- /schema/data/tabular@data``, ``- /schema/model/tabular_model@_here_``).
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="schema/loader", name="loader", node=LoaderSettings)
    cs.store(group="schema/transforms", name="transforms", node=TransformSettings)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    cs.store(group="schema/imbalance", name="imbalance", node=ImbalanceSettings)
    for name, schema in _schemas.DATA.items():  # the loader composes from its own group
        cs.store(group="schema/data", name=name, node=schema)
    for name, schema in _schemas.MODELS.items():
        cs.store(group="schema/model", name=name, node=schema)


def schema_source() -> str:
    """The source of :mod:`chute._schemas`: one schema per registered DataModule and model.

    Made from :data:`chute.datamodules.DATAMODULES`, :data:`chute.integrations.INTEGRATIONS` and
    :data:`chute.models.MODELS` with :func:`builds` (a DataModule's ``schema_exclude`` arguments are
    left out; its ``loader``, a mapping, is kept untyped: ``LoaderSettings`` checks it when built).
    """
    from chute.datamodules import DATAMODULES
    from chute.integrations import INTEGRATIONS
    from chute.models import MODELS

    groups = {
        "DATA": {
            name: builds(dm, f"{dm.__name__}Config", exclude=dm.schema_exclude)
            for name, dm in {**DATAMODULES, **INTEGRATIONS}.items()
        },
        "MODELS": {name: builds(model, f"{model.__name__}Config") for name, model in MODELS.items()},
    }
    lines = [
        '"""Hydra schemas of the ``data`` and ``model`` groups, generated: do not edit.',
        "",
        "``python -m chute.config`` writes this file from the DataModules' and models' constructors",
        "(:func:`chute.config.schema_source`); ``tests/test_config.py`` fails when it is out of date. It",
        "lets Hydra compose and check a config without importing the classes (torch, Lightning).",
        '"""',
        "",
        "# ruff: noqa: UP045  (OmegaConf reads Optional[...] annotations)",
        "from dataclasses import dataclass, field",
        "from typing import Any, Optional",
        "",
        "from omegaconf import MISSING",
    ]
    for schemas in groups.values():
        for schema in schemas.values():
            lines += ["", "", "@dataclass", f"class {schema.__name__}:"]
            for f in dataclasses.fields(schema):
                if f.default_factory is not dataclasses.MISSING:
                    default = f"field(default_factory=lambda: {_value_source(f.default_factory())})"
                else:
                    default = "MISSING" if f.default == MISSING else _value_source(f.default)
                lines.append(f"    {f.name}: {_type_source(f.type)} = {default}")
    for group, schemas in groups.items():
        lines += ["", "", f"{group}: dict[str, type] = {{"]
        lines += [f'    "{name}": {schema.__name__},' for name, schema in schemas.items()]
        lines.append("}")
    return "\n".join(lines) + "\n"


def _value_source(value: Any) -> str:
    """A default value as source text, strings in double quotes as the formatter writes them."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return f"[{', '.join(_value_source(v) for v in value)}]"
    if isinstance(value, dict):
        return f"{{{', '.join(f'{_value_source(k)}: {_value_source(v)}' for k, v in value.items())}}}"
    return repr(value)


def _type_source(tp: Any) -> str:
    """``tp`` (one of :func:`_omegaconf_type`'s results) as source text."""
    if tp is Any:
        return "Any"
    if tp in (int, float, bool, str):
        return str(tp.__name__)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:  # Optional[X]
        (inner,) = (a for a in args if a is not type(None))
        return f"Optional[{_type_source(inner)}]"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_source(a) for a in args)}]"
    raise TypeError(f"no source form for the schema type {tp!r}")


if __name__ == "__main__":  # python -m chute.config: write chute/_schemas.py again
    from pathlib import Path

    target = Path(__file__).with_name("_schemas.py")
    target.write_text(schema_source())
    print(f"wrote {target}")
