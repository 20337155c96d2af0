"""rmlab against a hand-written PyTorch loop: same model, data, batch size, epochs, optimizer and seed.

Prints one JSON object per line:
- one per case (``overhead_bound``: the default run, a small MLP on digits; ``few_seconds``: the same for 200 epochs;
  ``compute_bound``: a wide MLP on a larger synthetic task), medians over ``--pairs`` alternating pairs, each with two
  ratios (rmlab samples/s over the raw loop's):
  - ``fit_ratio``: rmlab's ``perf_fit_s`` (its whole fit: training, per-epoch validation, logging) against the raw
    loop's training plus the same per-epoch validation;
  - ``run_ratio``: rmlab from the creation of its MLflow run to the end of ``Tracker.finish`` (params, config and
    command uploaded, fit, test, best checkpoint written, the final flush of every metric, the run closed) against
    the raw loop from its first step to its results written (the same training and validation, the test split
    evaluated, the weights saved with ``torch.save`` and the per-epoch numbers written as JSON).
  rmlab runs through its configs and ``rmlab.run.train`` (what ``python -m rmlab`` calls) with MLflow tracking on,
  into a temporary sqlite store;
- ``startup``: wall time of a whole default run (``python -m rmlab``), the time from the command to its first
  training step, of ``python -m rmlab --help``, and of a command with a config error until its one-line error;
- ``sweep_tiny`` / ``sweep_small`` / ``sweep_groups``: a 12-job sweep in one ``python -m rmlab -m`` command, of tiny
  runs (wine, 5 epochs), of default runs (seeds), and of default runs over three losses (config groups) x seeds: wall
  time per job (the sweep's start-up included, and after it), against one
  standalone run's wall time and against the pure training time (fit) of a job; and ``added_job_s``, what one more
  job costs: the wall time of a 36-job sweep minus the 12-job one, over the 24 jobs it adds (everything a job brings
  counted: the composition of its config, which the sweeper does for every job before the first one starts, its
  run, its share of the summary). ``added_job_over_fit`` is the sweep-job ratio.

    python bench/benchmark.py                    # everything (about 10 minutes on 2 cores)
    python bench/benchmark.py --only cases --pairs 5
    python bench/benchmark.py --only sweep
    python bench/benchmark.py --only sweep --threads 1   # on a machine shared with other work (also --only cases)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rmlab.composed import compose  # noqa: E402  (this checkout's rmlab)

CASES = {
    "overhead_bound": ["task=digits", "model=mlp"],
    "few_seconds": ["task=digits", "model=mlp", "trainer.max_epochs=200"],
    "compute_bound": ["task=synthetic_classification", "task.n_samples=20000", "task.n_features=256",
                      "task.n_informative=64", "task.n_classes=10", "task.batch_size=256",
                      "model.hidden_sizes=[1024,1024,1024]", "trainer.max_epochs=3"],
}


def raw_loop(cfg, out_dir: Path) -> tuple[float, float]:
    """The hand-written loop: data as tensors, index slices, Adam, per-epoch validation accuracy; then the test split
    evaluated, the weights saved and the numbers written. Returns (training samples/s over the fit, samples/s from
    the first step to the results written)."""
    import torch

    from rmlab.build import build_components
    from rmlab.optim import build_optimizer
    from rmlab.run import seed_all

    seed_all(cfg.seed)
    parts = build_components(cfg)
    splits = parts.task.load()
    x, y = splits["train"].x, splits["train"].y
    xv, yv = splits["val"].x, splits["val"].y
    model, loss_fn, batch = parts.model, parts.loss, parts.task.batch_size
    optimizer = build_optimizer(model.parameters(), dict(cfg.optimizer), cfg.trainer.max_epochs)["optimizer"]
    generator = torch.Generator().manual_seed(cfg.seed)
    history = []
    started = time.perf_counter()
    for _ in range(cfg.trainer.max_epochs):
        model.train()
        perm = torch.randperm(len(x), generator=generator)
        xs, ys = x[perm], y[perm]
        for i in range(0, len(xs), batch):
            loss = loss_fn(model(xs[i:i + batch]), ys[i:i + batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            history.append((model(xv).argmax(1) == yv).float().mean().item())
    fitted = time.perf_counter()
    with torch.no_grad():
        test = (model(splits["test"].x).argmax(1) == splits["test"].y).float().mean().item()
    torch.save(model.state_dict(), out_dir / "raw.pt")
    (out_dir / "raw.json").write_text(json.dumps({"val/accuracy": history, "test/accuracy": test}))
    ended = time.perf_counter()
    samples = len(x) * cfg.trainer.max_epochs
    return samples / (fitted - started), samples / (ended - started)


def rmlab_run(cfg) -> tuple[float, float]:
    """(samples/s over rmlab's fit, samples/s from its MLflow run's creation to the run closed)."""
    from rmlab.run import train
    from rmlab.tracking import Tracker

    marks: dict[str, float] = {}
    start, finish = Tracker.start, Tracker.finish

    def timed_start(self, *args, **kwargs):
        marks["created"] = time.perf_counter()  # before the run is created: its creation counts
        return start(self, *args, **kwargs)

    def timed_finish(self, *args, **kwargs):
        try:
            return finish(self, *args, **kwargs)
        finally:
            marks["closed"] = time.perf_counter()

    Tracker.start, Tracker.finish = timed_start, timed_finish
    try:
        results = train(cfg)
    finally:
        Tracker.start, Tracker.finish = start, finish
    samples = results["perf_train_samples_per_s"] * results["perf_fit_s"]
    return results["perf_train_samples_per_s"], samples / (marks["closed"] - marks["created"])


def bench_cases(pairs: int, only_case: str | None, threads: int | None = None) -> None:
    import logging

    logging.disable(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="rmlab-bench-"))
    os.chdir(workdir)
    if threads is not None:  # the raw loop's threads; rmlab's come from trainer.num_threads, the same number
        import torch

        torch.set_num_threads(threads)
    for case, overrides in CASES.items():
        if only_case and case != only_case:
            continue
        cfg = compose([*overrides, "trainer.enable_progress_bar=false",
                       f"logger.tracking_uri=sqlite:///{workdir}/mlflow.db",
                       *([f"trainer.num_threads={threads}"] if threads is not None else [])])
        rmlab_run(cfg)  # warm-up: creates the store and the experiment, first-call costs
        raw_fit, raw_run, our_fit, our_run = [], [], [], []
        for _ in range(pairs):
            fit, run = raw_loop(cfg, workdir)
            raw_fit.append(fit)
            raw_run.append(run)
            fit, run = rmlab_run(cfg)
            our_fit.append(fit)
            our_run.append(run)
        med = statistics.median
        print(json.dumps({"case": case, "raw_samples_per_s": round(med(raw_fit)),
                          "rmlab_samples_per_s": round(med(our_fit)), "fit_ratio": round(med(our_fit) / med(raw_fit), 3),
                          "raw_run_samples_per_s": round(med(raw_run)), "rmlab_run_samples_per_s": round(med(our_run)),
                          "run_ratio": round(med(our_run) / med(raw_run), 3), "pairs": pairs, "threads": threads}),
              flush=True)


def cli_env() -> dict[str, str]:
    """The environment of a timed command: this checkout's rmlab first (not an installed one), no MLflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_cli(args, cwd):
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "rmlab", *args], cwd=cwd, capture_output=True, text=True,
                          env=cli_env())
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return started, time.time() - started


def last_runs(cwd, n):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlflow.db")
    # Every experiment: the default one is named after the task.
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=n + 1)
    return [r for r in runs if r.data.tags.get("rmlab.role") != "parent"][:n]


def bench_startup() -> None:
    cwd = tempfile.mkdtemp(prefix="rmlab-bench-")
    run_cli(["trainer.max_epochs=1", "trainer.enable_progress_bar=false"], cwd)  # creates the store
    started, wall = run_cli(["trainer.enable_progress_bar=false"], cwd)
    first_step = float(last_runs(cwd, 1)[0].data.tags["rmlab.first_step_unix"]) - started
    help_started = time.time()
    subprocess.run([sys.executable, "-m", "rmlab", "--help"], capture_output=True, check=True, env=cli_env())
    help_s = time.time() - help_started
    print(json.dumps({"case": "startup", "default_run_wall_s": round(wall, 2),
                      "command_to_first_step_s": round(first_step, 2), "help_s": round(help_s, 2),
                      "config_error_s": round(config_error_s(cwd), 2)}), flush=True)


def config_error_s(cwd, tries: int = 5) -> float:
    """Median wall time of a command with a bad value (``optimizer.lr=-1``) until its one-line error, exit code 2."""
    times = []
    for _ in range(tries):
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "rmlab", "optimizer.lr=-1"], cwd=cwd, capture_output=True)
        times.append(time.time() - started)
        assert done.returncode == 2, done.stderr
    return statistics.median(times)


SWEEP_CASES = {  # (every run's overrides, the sweep's own axis besides the seeds and its size)
    "sweep_tiny": (["task=wine", "trainer.max_epochs=5"], None, 1),  # about 20 ms of training: pure overhead
    "sweep_small": (["task=digits"], None, 1),  # the default run: about a third of a second of training
    # Three losses (config groups) x seeds: three compositions kept instead of one (rmlab.compose_template).
    "sweep_groups": (["task=digits"], "loss=cross_entropy,gce,sce", 3),
}


def bench_sweep(jobs: int = 12, threads: int | None = None) -> None:
    for case, (overrides, axis, size) in SWEEP_CASES.items():
        cwd = tempfile.mkdtemp(prefix="rmlab-bench-")
        args = [*overrides, "trainer.enable_progress_bar=false"]
        if threads is not None:
            args.append(f"trainer.num_threads={threads}")
        # Creates the store; with a seed no job of the sweeps has, so that every job trains (none is reused).
        run_cli([*args, "seed=100000"], cwd)
        _, standalone = run_cli([*args, "seed=100001"], cwd)
        sweep = [*args, *([axis] if axis else [])]

        def seeds(first: int, count: int) -> str:
            return "seed=" + ",".join(str(s) for s in range(first, first + count // size))

        started, sweep_wall = run_cli(["-m", *sweep, seeds(0, jobs)], cwd)
        runs = last_runs(cwd, jobs)
        fit = statistics.median(r.data.metrics["perf_fit_s"] for r in runs)
        # The sweep's one-off start-up (imports, store, parent run, and the composition of every job's config, which
        # the sweeper checks before the first job) ends when the first job's run opens.
        startup = min(r.info.start_time for r in runs) / 1000 - started
        # What one more job costs, everything included (its composition, its run, its share of the summary): a sweep
        # of three times as many jobs (new seeds) against this one.
        _, long_wall = run_cli(["-m", *sweep, seeds(jobs, 3 * jobs)], cwd)
        long_fit = statistics.median(r.data.metrics["perf_fit_s"] for r in last_runs(cwd, 3 * jobs))
        added = (long_wall - sweep_wall) / (2 * jobs)
        per_job = sweep_wall / jobs
        marginal = (sweep_wall - startup) / jobs
        print(json.dumps({"case": case, "jobs": jobs, "threads": threads, "sweep_wall_s": round(sweep_wall, 2),
                          "sweep_startup_s": round(startup, 2), "per_job_s": round(per_job, 3),
                          "per_job_after_startup_s": round(marginal, 3), "standalone_run_s": round(standalone, 2),
                          "job_fit_s": round(fit, 3), "per_job_over_fit": round(per_job / fit, 2),
                          "per_job_after_startup_over_fit": round(marginal / fit, 2),
                          "per_job_over_standalone": round(per_job / standalone, 3),
                          f"sweep_{3 * jobs}_jobs_wall_s": round(long_wall, 2), "added_job_s": round(added, 3),
                          "added_job_fit_s": round(long_fit, 3),
                          "added_job_over_fit": round(added / statistics.median([fit, long_fit]), 2)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="alternating raw/rmlab pairs per case (median)")
    parser.add_argument("--only", choices=["cases", "startup", "sweep"], help="run one part")
    parser.add_argument("--case", choices=list(CASES), help="with --only cases: one case")
    parser.add_argument("--threads", type=int, help="torch threads of the raw loop and trainer.num_threads of every "
                        "rmlab run (default: "
                        "torch's own; 1 on a machine shared with other work, where more threads than free cores "
                        "stretch a fit many times over)")
    args = parser.parse_args()
    if args.only in (None, "startup"):
        bench_startup()
    if args.only in (None, "sweep"):
        bench_sweep(threads=args.threads)
    if args.only in (None, "cases"):
        bench_cases(args.pairs, args.case, args.threads)


if __name__ == "__main__":
    main()
