"""Parts of a sweep job's cost outside its training, each measured both ways in this process (medians, ms).

- ``compose``: Hydra composing a job of a 12-seed sweep of the default run (``load_sweep_config``) against
  ``rmlab.compose_template`` (a copy of the kept composition of the job's config groups, its values applied);
- ``trainer``: constructing the ``pytorch_lightning.Trainer`` of a default run, Lightning's own lookup of callback
  factories against the one ``rmlab.callback_factories`` keeps per process;
- ``full_collection``: one full pass of Python's garbage collector once torch, Lightning, MLflow and Hydra are
  imported, against the same pass with their objects frozen (``rmlab.collector.freeze_for_sweep``).

    python bench/sweep_job_parts.py          # about 30 seconds; one JSON line per part
"""

import gc
import json
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def median_ms(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def bench_compose() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rmlab.compose_template import Templates
    from rmlab.paths import CONFIG_DIR, expose_plugins

    expose_plugins()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        master = compose("config", overrides=["task=digits"], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        templates = Templates(loader, loader.load_sweep_config)
        seeds = iter(range(10**6))
        hydra_ms = median_ms(lambda: loader.load_sweep_config(master, ["task=digits", f"seed={next(seeds)}"]), 24)
        template_ms = median_ms(lambda: templates.compose(master, ["task=digits", f"seed={next(seeds)}"]), 24)
    print(json.dumps({"part": "compose", "hydra_ms": hydra_ms, "rmlab_ms": template_ms,
                      "ratio": round(hydra_ms / template_ms, 1)}), flush=True)


def bench_trainer() -> None:
    from lightning_fabric.utilities import registry

    from rmlab import callback_factories
    from rmlab.build import build_components
    from rmlab.data import TaskDataModule
    from rmlab.run import make_callbacks, make_trainer
    from rmlab.composed import compose

    cfg = compose(["task=digits", "trainer.enable_progress_bar=false"])
    data = TaskDataModule(build_components(cfg).task, seed=0, steps_per_chunk=32, limit_train_batches=None)
    out = Path(tempfile.mkdtemp(prefix="rmlab-bench-"))

    def build():
        make_trainer(cfg, make_callbacks(cfg, data), [], out)

    installed = callback_factories.install
    callback_factories.install = lambda: None  # Lightning's own lookup, at every Trainer
    registry.entry_points = metadata.entry_points
    try:
        build()
        lightning_ms = median_ms(build, 20)
    finally:
        callback_factories.install = installed
    build()
    kept_ms = median_ms(build, 20)
    print(json.dumps({"part": "trainer", "lightning_lookup_ms": lightning_ms, "kept_lookup_ms": kept_ms,
                      "installed_distributions": len(list(metadata.distributions()))}), flush=True)


def bench_full_collection() -> None:
    import hydra  # noqa: F401
    import mlflow  # noqa: F401
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401

    from rmlab import collector

    objects = len(gc.get_objects())
    walked_ms = median_ms(gc.collect, 5)
    collector.freeze_for_sweep()
    try:
        frozen_ms = median_ms(gc.collect, 5)
    finally:
        collector.release()
    print(json.dumps({"part": "full_collection", "objects": objects, "walked_ms": walked_ms,
                      "frozen_ms": frozen_ms}), flush=True)


if __name__ == "__main__":
    bench_compose()
    bench_trainer()
    bench_full_collection()
