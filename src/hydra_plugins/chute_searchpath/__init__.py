"""Hydra discovers this plugin in the ``hydra_plugins`` namespace of an installed chute."""
