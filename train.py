"""Train with chute: ``python train.py [key=value ...]``, or a sweep with ``-m``. See README.md."""

import sys

import hydra
from omegaconf import DictConfig

from chute.app import InterruptedRunError, run
from chute.config import register_configs
from chute.errors import ConfigError, DataError

register_configs()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Return the best validation metric, so Hydra sweeper plugins can optimize it."""
    try:
        return run(cfg)
    except ConfigError as err:
        sys.exit(f"chute: invalid config: {err}")
    except DataError as err:  # one line naming the file, row or column, as config errors do
        sys.exit(f"chute: bad data: {err}")
    except InterruptedRunError as err:
        print(f"chute: {err}", file=sys.stderr)
        sys.exit(143)  # 128 + SIGTERM, as a shell reports a process the signal ended


if __name__ == "__main__":
    main()
