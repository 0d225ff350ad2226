"""Train with chute: ``python train.py [key=value ...]``, or a sweep with ``-m``. See README.md."""

import sys

import hydra
from omegaconf import DictConfig

# Light imports only up to the config check: composing and checking a config needs neither torch
# nor Lightning, so a mistyped setting is reported in about a second instead of after the imports.
from chute.config import register_configs, validate_config
from chute.errors import ConfigError, DataError, original_message

register_configs()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Return the best validation metric, so Hydra sweeper plugins can optimize it."""
    try:
        validate_config(cfg)
        from chute.app import InterruptedRunError, run  # torch, torchvision and Lightning load here

        try:
            return run(cfg)
        except InterruptedRunError as err:
            print(f"chute: {err}", file=sys.stderr)
            sys.exit(143)  # 128 + SIGTERM, as a shell reports a process the signal ended
    except ConfigError as err:
        sys.exit(f"chute: invalid config: {err}")
    except DataError as err:  # one line naming the file, row or column, as config errors do
        sys.exit(f"chute: bad data: {original_message(err)}")  # a worker's, without torch's wrapping


if __name__ == "__main__":
    main()
