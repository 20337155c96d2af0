"""``python -m rmlab.predict``: a trained run's model applied to a user's file, predictions written beside the inputs.

    python -m rmlab.predict run_id=<run id> input=new_rows.csv                 # -> new_rows.predictions.csv
    python -m rmlab.predict run_id=<run id> input=pairs.jsonl output=scored.jsonl
    python -m rmlab.predict model=models:/digits-mlp/3 input=rows.parquet

Keys: ``run_id`` (the model logged with that run, ``runs:/<run id>/model``) or ``model`` (any MLflow model URI, e.g.
a registered version), ``input`` (.csv, .parquet/.pq, .jsonl/.json: one JSON object per line), ``output`` (default:
``<input name>.predictions<same extension>`` beside the input), ``tracking_uri`` (default: as for a run:
$MLFLOW_TRACKING_URI, else ./mlflow.db). The output holds the input columns followed by the model's: ``prediction``
(and ``p_<class>``) for a classifier, ``prediction`` in the target's units for a regressor, ``score`` per item or
``chosen_score``, ``rejected_score``, ``p_chosen`` per pair for a reward model.

Every problem with the command line, the store, the run or the file is one line on stderr and exit code 2, before
anything is written.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rmlab.errors import ConfigError, DataError

KEYS = ("run_id", "model", "input", "output", "tracking_uri")
READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments into a dict; ConfigError for anything else, an unknown or repeated key."""
    args: dict[str, str] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"arguments are key=value, got {item!r}; keys: {', '.join(KEYS)}")
        if key not in KEYS:
            raise ConfigError(f"unknown key {key!r}; keys: {', '.join(KEYS)}")
        if key in args:
            raise ConfigError(f"{key} given twice")
        args[key] = value
    if ("run_id" in args) == ("model" in args):
        raise ConfigError("give exactly one of run_id=<run id> (the run's logged model) or model=<MLflow model URI>")
    if not args.get("input"):
        raise ConfigError("input=<file> is required: a .csv, .parquet or .jsonl file of raw inputs")
    return args


def output_path(source: Path, given: str | None) -> Path:
    """Where the predictions go: ``given``, else ``<input stem>.predictions<ext>`` beside the input."""
    default = source.with_name(f"{source.stem}.predictions{source.suffix}")
    path = Path(given).expanduser().absolute() if given else default
    if path.suffix.lower() not in READERS:
        raise ConfigError(f"output={given}: unknown file extension {path.suffix!r}; valid: {', '.join(READERS)}")
    if path == source:
        raise ConfigError(f"output={given} is the input file; give another output path")
    return path


def read_table(path: Path) -> Any:
    """The file as a DataFrame; DataError naming the file and the first problem (line/row) otherwise."""
    import pandas as pd

    if path.suffix.lower() not in READERS:
        raise DataError(f"{path}: unknown file extension {path.suffix!r}; valid: {', '.join(READERS)}")
    if not path.is_file():
        raise DataError(f"{path}: {'not a file' if path.exists() else 'file not found'}")
    fmt = READERS[path.suffix.lower()]
    if fmt == "jsonl":
        return pd.DataFrame(_jsonl_records(path))
    try:
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (ValueError, OSError, UnicodeDecodeError) as err:  # parser errors, pyarrow's ArrowInvalid, ...
        raise DataError(f"{path}: could not be read as {fmt}: {' '.join(str(err).split())}") from None
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no rows")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _jsonl_records(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: is not UTF-8 text: {err}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not valid JSON: {err.msg} at column {err.colno}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} must be a JSON object {{...}}, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: the file has no rows")
    return records


def write_table(frame: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = READERS[path.suffix.lower()]
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)


def load(uri: str, tracking_uri: str) -> Any:
    """The pyfunc model at ``uri``; ConfigError when the run, the model or the store cannot be found."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/")[0]
        try:
            MlflowClient(tracking_uri).get_run(run_id)
        except MlflowException:
            raise ConfigError(f"run {run_id} not found in {tracking_uri} (set tracking_uri= or $MLFLOW_TRACKING_URI "
                              "to the store it was logged to)") from None
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        hint = (" (the run was made with logger.log_model=false, or by an rmlab without model logging)"
                if uri.startswith("runs:/") else "")
        raise ConfigError(f"no MLflow model at {uri}{hint}: {str(err).splitlines()[0] if str(err) else err}") from None


def prepare(model: Any, frame: Any) -> Any:
    """Check the table with the model's own rules (an rmlab model names the column and row of a problem), then cast
    the numeric input columns to float: MLflow refuses int64 for a double column (it calls that unsafe)."""
    import pandas as pd
    from mlflow.types import DataType

    try:
        io = getattr(model.unwrap_python_model(), "io", None)
    except Exception:  # not a python model: MLflow's own schema check will speak
        io = None
    if io is not None:
        io.check(frame)
    schema = model.metadata.get_input_schema()
    frame = frame.copy()
    for column in schema.inputs if schema is not None else []:
        if getattr(column, "name", None) in frame.columns and column.type == DataType.double:
            frame[column.name] = pd.to_numeric(frame[column.name]).astype("float64")
    return frame


@contextmanager
def _store(uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URIs set to ``uri`` for the block, then restored (``main`` may be called
    inside another program)."""
    import mlflow

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)
        for key, value in env.items():  # setting a URI also exports it to the environment
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def predict(args: dict[str, str]) -> tuple[Path, int, str]:
    """Run the command; returns (output file, rows, model URI)."""
    import pandas as pd

    from rmlab.tracking import resolve_tracking_uri

    source = Path(args["input"]).expanduser().absolute()
    frame = read_table(source)
    out = output_path(source, args.get("output"))
    uri = f"runs:/{args['run_id']}/model" if "run_id" in args else args["model"]
    store = resolve_tracking_uri(args.get("tracking_uri"))
    with _store(store):  # runs:/ and models:/ URIs resolve against MLflow's global store
        model = load(uri, store)
    try:
        frame = prepare(model, frame)
    except DataError as err:
        raise DataError(f"{source}: {err}") from None
    predictions = model.predict(frame)
    clash = [c for c in predictions.columns if c in frame.columns]
    predictions = predictions.rename(columns={c: f"{c}_predicted" for c in clash})
    write_table(pd.concat([frame.reset_index(drop=True), predictions.reset_index(drop=True)], axis=1), out)
    return out, len(frame), uri


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        out, rows, uri = predict(args)
    except ConfigError as err:  # DataError included
        print(f"rmlab.predict: error: {err}", file=sys.stderr)
        return 2
    print(f"rmlab.predict: {rows} rows -> {out} (model {uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
