"""``python -m rmlab.replay FILE...``: store a run's unsent metrics once its tracking server is back, and close the run.

A run whose store went away and stayed away (longer than ``logger.retry_s``) ends with one line naming its
unsent-metrics file (``rmlab.spool``). This command stores the file's points into that run, sets the tags the run
recorded after training and the ``rmlab.metric_points`` tag, records the run's error (if it had one) and closes it with the status it would have had;
the file is then renamed ``*.replayed``, so replaying twice stores nothing twice. The store is ``--tracking-uri``, else
``$MLFLOW_TRACKING_URI``, else the one in the file (which holds no credentials: give a URI that needs them here).

Exit status: 0 when every file was replayed, 1 when a store did not answer or refused, 2 for a file that is not one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rmlab.credentials import MASK, redact
from rmlab.errors import StoreUnreachable

BATCH = 1000  # MLflow's limit of metrics per log_batch request


def replay(path: Path, tracking_uri: str | None = None) -> str:
    """Replay one file; returns a one-line report. Raises ValueError (a bad file) or the store's error."""
    from mlflow.entities import RunTag

    from rmlab import spool
    from rmlab.server import bound_http_retries, check_reachable, is_http
    from rmlab.tracking import MAX_TAG, POINTS_TAG, client_for

    header, metrics = spool.read(path)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or header["store"]
    if MASK in uri:
        raise ValueError(f"{path}: its store {uri} needed credentials, which rmlab never writes to disk: pass "
                         "--tracking-uri or set MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_USERNAME/PASSWORD)")
    if is_http(uri):
        bound_http_retries()
        check_reachable(uri)
    client = client_for(uri)
    run_id = header["run_id"]
    client.get_run(run_id)  # the right store? (an unknown run is an error here, before anything is written)
    total = header["points_sent_before"] + len(metrics)
    final_tags = [RunTag(k, str(v)[:MAX_TAG]) for k, v in (header.get("tags") or {}).items()]
    for start in range(0, max(len(metrics), 1), BATCH):
        last = start + BATCH >= len(metrics)
        client.log_batch(run_id, metrics=metrics[start:start + BATCH],
                         tags=[*final_tags, RunTag(POINTS_TAG, str(total))] if last else [], synchronous=True)
    closed = ""
    if header.get("error"):
        client.set_tag(run_id, "error", header["error"][:MAX_TAG])
    if header.get("status"):
        client.set_terminated(run_id, header["status"])
        closed = f"; run closed {header['status']}"
    path.rename(path.with_name(path.name + ".replayed"))
    skipped = header.get("not_stored") or []
    missing = f" (not stored while the server was away, and not replayable: {', '.join(skipped)})" if skipped else ""
    return f"rmlab: replayed {len(metrics)} metric points into run {run_id} at {redact(uri)}{closed}{missing}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmlab.replay", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="unsent-metrics files (unsent-metrics-<run id>.jsonl)")
    parser.add_argument("--tracking-uri", help="the store to replay into (default: $MLFLOW_TRACKING_URI, else the "
                                               "file's)")
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        try:
            print(replay(path, args.tracking_uri), flush=True)
        except StoreUnreachable as err:
            print(f"rmlab: error: {path}: {err}", file=sys.stderr, flush=True)
            status = max(status, 1)
        except (ValueError, OSError) as err:
            print(f"rmlab: error: {err}", file=sys.stderr, flush=True)
            status = max(status, 2)
        except Exception as err:  # the store did not answer, or refused the points
            print(f"rmlab: error: {path}: {redact(f'{type(err).__name__}: {err}').splitlines()[0]}", file=sys.stderr,
                  flush=True)
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
