"""The MLflow store a command writes to: which one, whether it can be written, and creating it once.

- Which: ``logger.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (the file that
  ``mlflow ui`` opens when started in the same directory), never the file store Lightning defaults to.
- Writable: a sqlite store whose folder cannot be written is reported at once, in one line (``StoreError``). Left to
  MLflow, it would retry opening the database for about two minutes before failing with a traceback.
- Created once: MLflow creates and migrates a fresh sqlite schema without any lock, so several processes opening a
  fresh store together crash, and can leave it half-migrated for good. Opening a sqlite store here holds an exclusive
  file lock beside it (``.mlflow.db.lock`` for ``mlflow.db``) until the schema is complete; the operating system
  releases the lock if the process dies, so it never goes stale.
- Experiments on a local sqlite store get an absolute artifact location beside the database (``mlartifacts/``).

Importing this module imports no MLflow (``rmlab.tidy`` and the sweep's launching process start fast).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from rmlab.errors import StoreError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

LOCK_TIMEOUT_S = 300.0
# MLflow 3 tells GenAI experiments from model-training ones by this tag (its UI then opens the right view where the
# experiment kind decides it).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # creating a schema takes seconds; a store locked this long is stuck, not busy


def resolve_tracking_uri(configured: str | None) -> str:
    """The store a run writes to: the configured URI, else $MLFLOW_TRACKING_URI, else ./mlflow.db (absolute)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative sqlite path would move with the working directory; pin it now.
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def slug(text: str) -> str:
    """A folder name for ``text``: letters, digits, ``_ . -``, never ``.`` or ``..`` (which would leave mlartifacts/)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "experiment"


def _unwritable(uri: str, place: Path, why: str) -> StoreError:
    return StoreError(f"cannot write the MLflow store {uri}: {place} {why}. Run from a folder you can write, or set "
                      "logger.tracking_uri (or MLFLOW_TRACKING_URI) to a store you can write")


def check_writable(uri: str) -> None:
    """Raise StoreError (one line) unless a sqlite store's file and folder can be written (or created)."""
    db = sqlite_path(uri)
    if db is None:
        return
    if db.exists():
        if not db.is_file():
            raise _unwritable(uri, db, "is not a file")
        if not os.access(db, os.R_OK | os.W_OK):
            raise _unwritable(uri, db, "is not writable (permission denied)")
        folder = db.parent
    else:
        folder = db.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise _unwritable(uri, folder, "is not a folder")
    # sqlite writes a journal beside the database, so the folder must be writable too.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _unwritable(uri, folder, "is not writable (permission denied)")


@lru_cache(maxsize=8)
def open_client(uri: str) -> MlflowClient:
    """An MLflow client on ``uri``, one per store and process (opening a sqlite store costs about 0.1 s, paid once per
    sweep instead of once per job). A sqlite store is checked, and created under the store's file lock. The store is
    also the model registry (``logger.register_as``): left to MLflow, the registry would follow the process's global
    tracking URI, which code around rmlab may have set elsewhere."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    check_writable(uri)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(uri, db.parent, f"cannot be created ({err.strerror})") from err
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(db.parent / f".{db.name}.lock"), timeout=LOCK_TIMEOUT_S):
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)  # creates (or migrates) the schema now, under the lock
    except Timeout as err:
        raise StoreError(f"the MLflow store {uri} has been locked by another process for {LOCK_TIMEOUT_S:.0f} s "
                         f"({err.lock_file}): is a command stuck?") from err
    except StoreError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise StoreError(f"cannot open the MLflow store {uri}: {type(err).__name__}: {first}") from err
    return client


def get_or_create_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The experiment's id, creating it (with an absolute artifact location on a local store) if needed."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    db = sqlite_path(uri)
    location = str(db.parent / "mlartifacts" / slug(name)) if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except Exception:
        # Another process created it between our lookup and our create.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
