"""OmegaConf resolvers that let a config read facts from chute's data: ``${chute.data:num_classes}``.

A model in another Hydra project (lightning-hydra-template's ``net.output_size``, say) needs the
class count, input channels or feature count that only the data knows. ``chute.data`` builds the
app's ``data`` node (the DataModule), runs ``prepare_data`` and ``setup("fit")`` once per process
and config, and returns a key of its ``model_kwargs`` (``num_classes``, ``in_channels``,
``image_size``, ``num_features``, ...)::

    model:
      net:
        _target_: my_project.models.SimpleDenseNet
        input_size: ${chute.data:num_features}
        output_size: ${chute.data:num_classes}

Registered when Hydra loads chute's search-path plugin (any Hydra app with chute installed), or by
:func:`register_resolvers`. A second argument names another node than ``data``:
``${chute.data:num_classes,datamodule}``. ``prepare_data`` runs in every process that resolves it:
under DDP, prepare the data once before the ranks start (they would otherwise write the same files).
"""

from __future__ import annotations

import threading
from typing import Any

from omegaconf import DictConfig, OmegaConf

_BUILT: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()


def data_fact(key: str, node: str = "data", *, _root_: DictConfig) -> Any:
    """``model_kwargs[key]`` of the DataModule that ``_root_[node]`` configures (built once per config)."""
    if node not in _root_:
        raise KeyError(f"${{chute.data:{key}}}: the config has no '{node}' node to build a DataModule from")
    text = OmegaConf.to_yaml(_root_[node], resolve=True)
    with _LOCK:
        if text not in _BUILT:
            from hydra.utils import instantiate

            from chute.datamodules.base import SIZING_ONLY

            datamodule = instantiate(_root_[node])
            sizing = SIZING_ONLY.set(True)  # a null seed drawn here is not the run's: not logged as it
            try:
                datamodule.prepare_data()  # (a disk cache cuts the splits here already)
                datamodule.setup("fit")
            finally:
                SIZING_ONLY.reset(sizing)
            _BUILT[text] = {**datamodule.model_kwargs, "_owner": type(datamodule).__name__}
        facts = _BUILT[text]
    if key not in facts or key == "_owner":
        offered = sorted(k for k in facts if k != "_owner")
        raise KeyError(
            f"${{chute.data:{key}}}: {facts['_owner']} (the '{node}' config) has no '{key}'; it offers {offered}. "
            "The model config asks for a fact of another kind of data: pick a model for this data "
            "(chute ships model=chute_image_classifier for images and model=chute_tabular for tables)."
        )
    return facts[key]


def register_resolvers() -> None:
    """Register ``chute.data`` with OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver("chute.data"):
        OmegaConf.register_new_resolver("chute.data", data_fact)
