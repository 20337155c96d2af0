"""``python -m rmlab`` and the ``rmlab`` command: the Hydra entry point, nothing else."""

import sys

import hydra
from omegaconf import DictConfig

from rmlab.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    # Imported here so that --help and --cfg answer without loading torch.
    from rmlab.errors import ConfigError, RmlabError
    from rmlab.run import train

    try:
        results = train(cfg)
    except ConfigError as err:
        print(f"rmlab: error: {err}", file=sys.stderr)
        sys.exit(2)
    except RmlabError as err:
        print(f"rmlab: run failed: {err}", file=sys.stderr)
        sys.exit(1)
    return results.get("val/best_reward", results.get("test/reward"))


if __name__ == "__main__":
    main()
