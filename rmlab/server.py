"""A remote tracking store (``mlflow server`` over HTTP): is it there, and how long may one request wait.

MLflow's HTTP client, left to its defaults, retries a request to a server that has gone away for about 16 minutes.
rmlab bounds each request (``bound_http_retries``, unless the user set MLflow's variables) and does its own, visible
and configurable retrying of the buffered metrics (``rmlab.tracking``); a server that is down before the run starts
is reported at once (``check_reachable``).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from rmlab.credentials import redact
from rmlab.errors import StoreUnreachable

# Per request: a refused connection fails in about 2 s; a server that accepts and never answers, in 3 x 20 s.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                 # MLflow prints a "View run at <server URL>" line when a run ends: the URL as given, password and
                 # all, and one more request per run. rmlab's result block names the run and the server instead.
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
PROBE_TIMEOUT_S = 5.0


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def bound_http_retries() -> None:
    """Give MLflow's HTTP requests a bounded retry budget; a variable the user set wins. urllib3's line per retry
    is silenced: rmlab says once that the server does not answer, and for how long it retries."""
    import logging

    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise StoreUnreachable unless the HTTP server at ``uri`` answers (any HTTP status counts as an answer)."""
    import requests

    parts = urlsplit(uri)
    # The probe carries no credentials: /health needs none, and any answer (even 401) shows the server is up.
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        requests.get(health, timeout=timeout)
    except requests.RequestException as err:
        raise StoreUnreachable(
            f"tracking server {redact(uri)} is not reachable ({reason(err)}). Start it, or point "
            "logger.tracking_uri or MLFLOW_TRACKING_URI at a running one") from None


def reason(err: BaseException) -> str:
    """A short cause for an HTTP failure: 'connection refused', 'timed out', else the exception's type."""
    text = str(err).lower()
    if "refused" in text:
        return "connection refused"
    if "timed out" in text or "timeout" in text:
        return "timed out"
    if "name or service not known" in text or "nodename nor servname" in text or "resolve" in text:
        return "unknown host"
    return type(err).__name__
