"""Config files an installed chute adds to any Hydra app's search path (``hydra_plugins.chute_searchpath``)."""
