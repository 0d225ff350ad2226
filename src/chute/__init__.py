"""chute: Lightning DataModules and Hydra configs that keep an accelerator fed.

Importing the package (or :mod:`chute.config`) does not import torch: the subpackages load their
heavy parts on first use, so a config can be checked within a second of starting.
"""

from chute.errors import ChuteError, ConfigError, DataError
from chute.loader.settings import LoaderSettings

__version__ = "0.1.0"

__all__ = ["ChuteError", "ConfigError", "DataError", "LoaderSettings", "__version__"]
