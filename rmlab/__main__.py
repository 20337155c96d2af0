"""``python -m rmlab`` and the ``rmlab`` command: the Hydra entry point, nothing else."""

import hydra
from omegaconf import DictConfig

from rmlab.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def task(cfg: DictConfig) -> dict[str, float] | None:
    """Run one job; return its metrics (what a sweeper optimises, e.g. ``val/best_reward``). How its errors and
    interrupts end the command: ``rmlab.jobs.run_job`` and ``rmlab.exits``."""
    # Imported here so that --help and --cfg answer without loading torch.
    from rmlab.jobs import run_job
    from rmlab.run import train

    return run_job(cfg, train)


def main() -> None:
    from rmlab.exits import run_command

    run_command(task)


if __name__ == "__main__":
    main()
