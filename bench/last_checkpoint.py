"""What writing ``checkpoints/last.ckpt`` (``trainer.checkpoint.every_n_epochs``, what ``resume=`` continues from)
costs a run: the default run (a small MLP on digits, 30 epochs) and a tiny one (wine), tracked into a temporary sqlite
store, in alternating triples: no file (``every_n_epochs=0``), the defaults (every epoch, but at most once every
``min_interval_s=30`` seconds: these short runs write none, and keep an in-memory snapshot at each epoch end instead,
which an interrupt writes), and a file at every epoch (``min_interval_s=0``).

Prints one JSON object per case: the median ``perf_fit_s`` of each setting, the ratios to no file, and the median
time of one write (``LastCheckpoint.save``) and of one snapshot (``LastCheckpoint.snapshot``), timed inside the runs.

    python bench/last_checkpoint.py              # about two minutes on 2 cores
    python bench/last_checkpoint.py --pairs 5
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CASES = {"default_digits": ["task=digits"], "tiny_wine": ["task=wine"]}
SETTINGS = {"no_file": ["trainer.checkpoint.every_n_epochs=0"], "defaults": [],
            "every_epoch": ["trainer.checkpoint.min_interval_s=0"]}
COMMON = ["trainer.num_threads=1", "trainer.enable_progress_bar=false", "logger.log_model=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="alternating rounds of the three settings")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    import rmlab.last_checkpoint as last_checkpoint
    from rmlab.paths import CONFIG_DIR
    from rmlab.run import train

    timings: dict[str, list[float]] = {"save": [], "snapshot": []}

    def timed(name):
        method = getattr(last_checkpoint.LastCheckpoint, name)

        def run(self, trainer):
            started = time.perf_counter()
            method(self, trainer)
            timings[name].append(time.perf_counter() - started)

        setattr(last_checkpoint.LastCheckpoint, name, run)

    timed("save")
    timed("snapshot")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for name, overrides in CASES.items():
            fit: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
            for times in timings.values():
                times.clear()
            for _ in range(args.pairs):
                for setting, values in SETTINGS.items():
                    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
                        cfg = compose("config", overrides=[*overrides, *COMMON, *values,
                                                           f"experiment=bench_{name}"])
                    fit[setting].append(train(cfg)["perf_fit_s"])
            medians = {setting: statistics.median(times) for setting, times in fit.items()}
            print(json.dumps({"case": name, "epochs": 30, **{f"fit_s_{k}": round(v, 3) for k, v in medians.items()},
                              **{f"ratio_{k}": round(v / medians["no_file"], 3) for k, v in medians.items()
                                 if k != "no_file"},
                              "write_ms_median": round(1000 * statistics.median(timings["save"]), 2),
                              "snapshot_ms_median": round(1000 * statistics.median(timings["snapshot"]), 2)}),
                  flush=True)


if __name__ == "__main__":
    main()
