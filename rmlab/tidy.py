"""``python -m rmlab.tidy``: close the runs whose process is gone.

A run left RUNNING by a process that was killed (``kill -9``, out of memory, a lost node) is never closed by it. Every
run rmlab opens records its process (``rmlab.processes``: host, pid, start time), so a run RUNNING on this host whose
process no longer exists can be closed FAILED with the reason in its ``error`` tag. Every tracked ``python -m rmlab``
command does this for its store when it starts (``close_orphans``); this command does it on demand, lists what it
cannot check (runs of other hosts, runs that recorded no process), and closes given runs by id:

    python -m rmlab.tidy                                  # the store of this folder (or $MLFLOW_TRACKING_URI)
    python -m rmlab.tidy --tracking-uri sqlite:////data/mlflow.db --dry-run
    python -m rmlab.tidy --close RUN_ID [RUN_ID ...] --status KILLED   # a run of another host, once you know it died

Imports neither torch nor Lightning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from rmlab import processes
from rmlab.errors import StoreError

ORPHAN_REASON = "its process ({host}:{pid}) ended without closing the run (closed by {by})"


def _running_runs(client: Any, host: str | None = None) -> list:
    """Every RUNNING run of the store (recorded on ``host`` if given)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    query = "attributes.status = 'RUNNING'" + (f" and tags.`{processes.HOST_TAG}` = '{host}'" if host else "")
    runs, token = [], None
    while True:
        page = client.search_runs(ids, filter_string=query, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    return runs


def orphans(client: Any) -> list:
    """RUNNING runs recorded on this host whose process is gone."""
    return [run for run in _running_runs(client, processes.host())
            if processes.recorded_alive(run.data.tags) is False]


def close_orphans(client: Any, by: str = "a later rmlab command") -> list[str]:
    """Close the orphans of this host FAILED (see the module docstring); returns their run ids."""
    closed = []
    for run in orphans(client):
        tags = run.data.tags
        client.set_tag(run.info.run_id, "error", ORPHAN_REASON.format(
            host=tags.get(processes.HOST_TAG), pid=tags.get(processes.PID_TAG), by=by))
        client.set_terminated(run.info.run_id, status="FAILED")
        closed.append(run.info.run_id)
    return closed


def _describe(run: Any) -> str:
    tags = run.data.tags
    where = f"{tags.get(processes.HOST_TAG)}:{tags.get(processes.PID_TAG)}" if processes.HOST_TAG in tags else "?"
    return f"{run.info.run_id} ({run.info.run_name}, process {where})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmlab.tidy", description=(
        "Close MLflow runs left RUNNING by a process that no longer exists (FAILED, with the reason in the `error` "
        "tag). Runs of other hosts are listed, not touched: close them with --close once you know they died."))
    parser.add_argument("--tracking-uri", default=None,
                        help="the store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be closed, close nothing")
    parser.add_argument("--close", nargs="+", metavar="RUN_ID", default=[],
                        help="close these runs, whatever their process (use for runs of other hosts)")
    parser.add_argument("--status", choices=("FAILED", "KILLED"), default="FAILED",
                        help="the status --close gives (default FAILED)")
    args = parser.parse_args(argv)

    from rmlab.store import open_client, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(args.tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        print(f"rmlab.tidy: error: no MLflow store at {uri}", file=sys.stderr)
        return 2
    try:
        client = open_client(uri)
    except StoreError as err:
        print(f"rmlab.tidy: error: {err}", file=sys.stderr)
        return 2
    if args.close:
        for run_id in args.close:
            try:
                run = client.get_run(run_id)
            except Exception as err:
                print(f"rmlab.tidy: error: no run {run_id}: {type(err).__name__}", file=sys.stderr)
                return 2
            if args.dry_run:
                print(f"would close {args.status}: {_describe(run)}")
                continue
            client.set_tag(run_id, "error", f"closed {args.status} by rmlab.tidy --close")
            client.set_terminated(run_id, status=args.status)
            print(f"closed {args.status}: {_describe(run)}")
        return 0
    here = processes.host()
    gone, alive, unknown = [], [], []
    for run in _running_runs(client):
        state = processes.recorded_alive(run.data.tags)
        (gone if state is False else alive if state else unknown).append(run)
    for run in gone:
        if args.dry_run:
            print(f"would close FAILED (process gone): {_describe(run)}")
            continue
        client.set_tag(run.info.run_id, "error", ORPHAN_REASON.format(
            host=run.data.tags.get(processes.HOST_TAG), pid=run.data.tags.get(processes.PID_TAG), by="rmlab.tidy"))
        client.set_terminated(run.info.run_id, status="FAILED")
        print(f"closed FAILED (process gone): {_describe(run)}")
    for run in alive:
        print(f"left RUNNING (process alive): {_describe(run)}")
    for run in unknown:
        print(f"left RUNNING (cannot check from {here}: another host, or no process recorded): {_describe(run)}")
    print(f"{len(gone)} closed, {len(alive)} running, {len(unknown)} not checked" if not args.dry_run else
          f"{len(gone)} would be closed, {len(alive)} running, {len(unknown)} not checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
