"""``python -m rmlab`` and the ``rmlab`` command: the Hydra entry point, nothing else."""

import sys

import hydra
from omegaconf import DictConfig

from rmlab.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, float] | None:
    """Run one job. Returns its metrics (what a sweeper optimises, e.g. ``val/best_reward``).

    A single run exits with status 2 on a config error and 1 on a failed run, printing one line. Inside a multirun a
    failed job returns None instead (its run is already marked FAILED), so the sweep goes on with the other jobs.
    """
    # Imported here so that --help and --cfg answer without loading torch.
    from rmlab.credentials import redact
    from rmlab.errors import ConfigError, RmlabError
    from rmlab.provenance import job_context
    from rmlab.run import train

    multirun = job_context()["multirun"]
    try:
        results = train(cfg)
    except Exception as err:
        if type(err).__name__ == "TrialPruned":  # the Optuna sweeper counts it as PRUNED
            raise
        if multirun:
            print(f"rmlab: job failed: {type(err).__name__}: {redact(str(err))}", file=sys.stderr)
            return None
        if isinstance(err, ConfigError):
            print(f"rmlab: error: {redact(str(err))}", file=sys.stderr)
            sys.exit(2)
        if isinstance(err, RmlabError):
            print(f"rmlab: run failed: {redact(str(err))}", file=sys.stderr)
            sys.exit(1)
        raise
    return {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}


if __name__ == "__main__":
    main()
