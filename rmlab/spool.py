"""The unsent-metrics file: the metric points of a run whose store went away and stayed away, and how to close it.

``Tracker`` writes it (``write``) when it gives up on a store; ``python -m rmlab.replay FILE`` reads it (``read``),
stores the points into the run, sets the tags the run recorded after training (``tags``) and closes the run with the
status it would have had. One JSON header line, then one line per point: ``[key, value, timestamp_ms, step]``, with
the id of the logged model it is linked to as a fifth value where it is linked to one (the test metrics; the header
then says format ``/2``, which an older rmlab refuses in one line instead of misreading). The
header's ``not_stored`` lists the uploads the run skipped while the store was away (its MLflow model, its checkpoint):
replay cannot make them, the run's output folder still holds the checkpoint. The store's URI is written without its
credentials.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from rmlab.credentials import redact

FORMAT = "rmlab-unsent-metrics/1"
LINKED_FORMAT = "rmlab-unsent-metrics/2"  # a file with points linked to a logged model (a fifth value per line)


def default_path(run_id: str) -> Path:
    """``<the job's output folder>/unsent-metrics-<run id>.jsonl`` (the current folder outside a Hydra app)."""
    folder = Path.cwd()
    try:
        from hydra.core.hydra_config import HydraConfig

        folder = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside a Hydra app
        pass
    return folder / f"unsent-metrics-{run_id}.jsonl"


def write(path: Path, *, uri: str, run_id: str, experiment: str, status: str | None, error: str | None,
          sent: int, metrics: Iterable[Metric], tags: Mapping[str, str] | None = None,
          not_stored: Iterable[str] = ()) -> Path:
    """Write the file (atomically: a reader never sees half of it). ``status`` None: replay leaves the run open."""
    metrics = list(metrics)
    header = {"format": LINKED_FORMAT if any(m.model_id for m in metrics) else FORMAT, "store": redact(uri), "run_id": run_id, "experiment": experiment,
              "status": status, "error": redact(error) if error else None, "points_sent_before": sent,
              "points": len(metrics), "tags": {k: redact(str(v)) for k, v in (tags or {}).items()},
              "not_stored": list(not_stored)}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w") as f:
        f.write(json.dumps(header) + "\n")
        for m in metrics:
            point = [m.key, m.value, m.timestamp, m.step] + ([m.model_id] if m.model_id else [])
            f.write(json.dumps(point) + "\n")
    os.replace(partial, path)
    return path


def read(path: Path) -> tuple[dict[str, Any], list[Metric]]:
    """(header, points) of an unsent-metrics file; ValueError naming the line if it is not one."""
    with open(path) as f:
        lines = f.read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("format") not in (FORMAT, LINKED_FORMAT):
        raise ValueError(f"{path} is not an rmlab unsent-metrics file (its first line has no format {FORMAT!r} or "
                         f"{LINKED_FORMAT!r})")
    metrics = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            key, value, timestamp, step, *model = json.loads(line)
            if len(model) > 1:
                raise ValueError(f"{len(model) + 4} values")
            metrics.append(Metric(str(key), float(value), int(timestamp), int(step),
                                  model_id=str(model[0]) if model else None))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}, line {number}: not a metric point [key, value, timestamp, step(, model id)]: "
                             f"{err}") from None
    if len(metrics) != header.get("points"):
        raise ValueError(f"{path}: the header says {header.get('points')} points, the file holds {len(metrics)}")
    return header, metrics
