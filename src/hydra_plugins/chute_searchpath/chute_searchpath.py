"""Bring chute's DataModule configs and its ``chute.data`` resolver to any Hydra app.

Hydra imports every module under the ``hydra_plugins`` namespace when an app starts and asks each
search-path plugin to extend the config search path, the way its launcher and sweeper plugins
ship their configs. This one appends ``pkg://chute.hydra_conf``: a ``data`` group of pure
DataModule configs (``data=chute_digits``, ``data=chute_images``, ``data=chute_tabular``), which
join an app's own ``data`` options without touching its model or trainer, and a ``model`` group
of chute's models sized by the data (``model=chute_tabular``, ``model=chute_image_classifier``). Importing it also
registers the ``chute.data`` resolver (:mod:`chute.resolvers`), so a model config can read its
shape from the data: ``num_classes: ${chute.data:num_classes}``.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from chute.resolvers import register_resolvers

register_resolvers()


class ChuteSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="chute", path="pkg://chute.hydra_conf")
