"""Shared test helpers: compose configs in-process, point every output (MLflow store, checkpoints) at tmp_path."""

import os
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from rmlab.composed import compose
from rmlab.paths import CONFIG_DIR

REPO = Path(__file__).resolve().parent.parent
# Tiny, fast settings for a real training run.
FAST = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2"]


def compose_config(*overrides: str, config_dir: Path = CONFIG_DIR) -> DictConfig:
    return compose(overrides, config_dir)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty directory with no MLflow URI inherited from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


PYTHON = sys.executable


def stop_group(process, timeout: float = 90) -> None:
    """End a server started with ``start_new_session=True`` and every process it spawned (mlflow's web workers):
    SIGTERM to its process group, then SIGKILL if it is still there after ``timeout`` (a loaded machine is slow to
    shut down)."""
    import signal
    import subprocess

    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
