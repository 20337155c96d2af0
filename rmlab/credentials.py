"""Credentials never leave the process: ``redact`` masks them in any text rmlab records or prints.

A store URI may carry a password (``http://user:password@host``, ``postgresql+psycopg://user:password@host/db``) or a
token in its query (``?password=...``, ``?token=...``). rmlab passes every param, tag, text artifact and message through
``redact`` on its way out, so a URI given on the command line shows up as ``http://user:***@host`` in MLflow, in the
logs and in the files it uploads. The process itself keeps the real URI to connect with.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

MASK = "***"
# scheme://user:password@ or scheme://token@ (the user info of a URI: everything before the host's @)
# (Hydra prints an override's colons escaped: http\://user\:password@host)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*\\?://)([^\s/]+)@")
# ?password=...  &token=...  (query parameters that hold a secret)
_QUERY = re.compile(r"([?&](?:password|passwd|pwd|token|access_token|secret|api_key|apikey)=)[^&\s#]*", re.I)
# Text artifacts worth scanning before upload (a checkpoint is not).
TEXT_SUFFIXES = {".yaml", ".yml", ".txt", ".md", ".csv", ".json", ".log", ".cfg", ".ini", ".toml"}


def redact(text: str) -> str:
    """``text`` with every URI password and secret query parameter replaced by ``***``."""
    if "@" not in text and "=" not in text:  # the common case, a param like "0.001", costs one scan
        return text
    return _QUERY.sub(rf"\g<1>{MASK}", _USERINFO.sub(_mask_userinfo, text))


def _mask_userinfo(match: re.Match) -> str:
    user, colon, _ = match.group(2).partition(":")
    # user:password keeps the user (it says who wrote); a lone token is all secret
    return f"{match.group(1)}{user}:{MASK}@" if colon else f"{match.group(1)}{MASK}@"


def redacted_file(path: Path) -> tuple[Path, bool]:
    """``path`` itself, or (for a text file that holds a credential) a redacted copy with the same name in a fresh
    temporary folder; the flag says whether it is a copy (the caller removes its folder)."""
    if path.suffix.lower() not in TEXT_SUFFIXES or not path.is_file():
        return path, False
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return path, False
    clean = redact(text)
    if clean == text:
        return path, False
    copy = Path(tempfile.mkdtemp(prefix="rmlab-redacted-")) / path.name
    copy.write_text(clean)
    return copy, True


def remove_copy(path: Path) -> None:
    shutil.rmtree(path.parent, ignore_errors=True)


class RedactFilter(logging.Filter):
    """A logging filter that masks credentials in every record (message and traceback) a handler writes. rmlab's
    logging configs (conf/hydra/job_logging/rmlab.yaml, conf/hydra/hydra_logging/rmlab.yaml) put it on the console
    and the log file, so Hydra's own lines (a launcher lists each job's overrides) are masked too."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
