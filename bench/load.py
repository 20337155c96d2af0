"""Load: many parallel sweep jobs writing to one store, counted. Does every run and every metric point arrive?

For each store (a sqlite file; ``mlflow server`` on a sqlite file; ``mlflow server`` on PostgreSQL), twice on a fresh
store: one ``python -m rmlab -m`` sweep of ``--jobs`` short jobs on the joblib launcher with ``--workers`` workers
(logging every step, flushing metrics every 0.2 s, so that the store sees many small writes from both workers at
once). Then it counts, from the store: child runs stored, metric points sent (each run's ``rmlab.metric_points`` tag:
what its process sent) against points stored (each metric's full history), params per run, statuses, and "database
is locked" in the output. Prints one JSON line per sweep and a markdown table.

    python bench/load.py                      # 3 stores x 2 sweeps x 16 jobs (about 10 minutes on 2 cores)
    python bench/load.py --stores sqlite --jobs 4 --repeats 1

PostgreSQL comes from Debian's package (installed with apt-get if missing, as root); the servers listen on loopback.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers import MlflowServer, Postgres, scratch_dir  # noqa: E402

STORES = ("sqlite", "server-sqlite", "server-postgres")
JOB = ["task=wine", "trainer.max_epochs=30", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
       "logger.flush_every_s=0.2", "experiment=load"]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    clean["PYTHONPATH"] = os.pathsep.join([str(REPO), clean.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return clean


def sweep(uri: str, cwd: Path, jobs: int, workers: int) -> tuple[float, str, int]:
    """Run the sweep; (wall seconds, its output, its exit status)."""
    cmd = [sys.executable, "-m", "rmlab", "-m", *JOB, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}",
           f"seed={','.join(str(s) for s in range(jobs))}", f"logger.tracking_uri={uri}",
           f"hydra.sweep.dir={cwd / 'sweep'}"]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=3600)
    return time.perf_counter() - started, done.stdout + done.stderr, done.returncode


def count(uri: str) -> dict:
    """What the store holds for the sweep: its children, their statuses, params and metric points."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("load")
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    sent = stored = 0
    for run in children:
        sent += int(run.data.tags.get("rmlab.metric_points", 0))
        stored += sum(len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics)
    params = sorted({len(r.data.params) for r in children})
    parents = [r.info.status for r in runs if r.data.tags.get("rmlab.role") == "parent"]
    return {"children": len(children), "parent": ",".join(parents),
            "statuses": dict(collections.Counter(r.info.status for r in children)),
            "points_sent": sent, "points_stored": stored,
            "params_per_run": "-".join(str(p) for p in (params[0], params[-1]) if params) if len(params) > 1
            else str(params[0] if params else 0)}


def one(store: str, root: Path, postgres: Postgres | None, jobs: int, workers: int, index: int) -> dict:
    """One sweep on a fresh store of kind ``store``."""
    cwd = root / f"{store}-{index}"
    cwd.mkdir(parents=True)
    server = None
    try:
        if store == "sqlite":
            uri = f"sqlite:///{cwd / 'mlflow.db'}"
        else:
            backend = (postgres.create_database(f"load{index}") if store == "server-postgres"
                       else f"sqlite:///{cwd / 'server.db'}")
            server = MlflowServer(backend, cwd / "server", workers=2).start()
            uri = server.url
        wall, out, code = sweep(uri, cwd, jobs, workers)
        found = count(uri)
    finally:
        if server is not None:
            server.stop()
    return {"store": store, "sweep": index, "exit": code, "jobs": jobs, "wall_s": round(wall, 1), **found,
            "database_is_locked": out.count("database is locked"), "job_failed": out.count("rmlab: job failed")}


def table(rows: list[dict]) -> str:
    lines = ["| store | sweep | jobs launched | child runs stored | metric points sent / stored | params per run | "
             "child statuses | parent | wall time | \"database is locked\" |", "|---" * 10 + "|"]
    for r in rows:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(r["statuses"].items()))
        lines.append(f"| {r['store']} | {r['sweep']} | {r['jobs']} | {r['children']} | {r['points_sent']} / "
                     f"{r['points_stored']} | {r['params_per_run']} | {statuses} | {r['parent']} | {r['wall_s']:.0f} s | "
                     f"{r['database_is_locked']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per store, each on a fresh store")
    args = parser.parse_args()
    root = scratch_dir("rmlab-load-")
    postgres = Postgres(root / "pg").start() if "server-postgres" in args.stores else None
    rows = []
    try:
        for store in args.stores:
            for index in range(1, args.repeats + 1):
                rows.append(one(store, root, postgres, args.jobs, args.workers, index))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(table(rows))
    lost = [r for r in rows if r["children"] != r["jobs"] or r["points_sent"] != r["points_stored"] or r["exit"]]
    print(f"\n{len(rows) - len(lost)} of {len(rows)} sweeps lost nothing" + (f"; lost: {lost}" if lost else ""))


if __name__ == "__main__":
    main()
