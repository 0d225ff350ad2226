"""chute: Lightning DataModules and Hydra configs that keep an accelerator fed."""

from chute.errors import ChuteError, ConfigError, DataError
from chute.loader import LoaderSettings

__version__ = "0.1.0"

__all__ = ["ChuteError", "ConfigError", "DataError", "LoaderSettings", "__version__"]
