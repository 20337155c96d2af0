"""A throw-away PostgreSQL and MLflow tracking server on loopback, for the server tests and ``bench/load.py``.

PostgreSQL comes from Debian's packages (installed with apt-get when missing: CI runs as root on a clean machine);
it refuses to run as root, so as root the cluster runs as the package's ``postgres`` user. Everything lives in one
temporary folder and every process is stopped by its own pid.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """Folder of Debian's PostgreSQL programs (initdb, pg_ctl), newest version first; None if not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


def ensure_postgres() -> Path:
    """PostgreSQL's program folder, installing Debian's ``postgresql`` package first if it is missing (root only)."""
    found = postgres_bin()
    if found is not None:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("PostgreSQL is not installed and cannot be installed here (needs root and apt-get): "
                           "apt-get install postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"], check=True,
                   env=env, timeout=900)
    found = postgres_bin()
    if found is None:
        raise RuntimeError("apt-get installed postgresql but no pg_ctl was found under /usr/lib/postgresql")
    return found


def wait_for(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


class Postgres:
    """A PostgreSQL cluster in ``root`` on 127.0.0.1, with a password-protected user ``rmlab``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.bin = ensure_postgres()
        self.root = root
        self.port = port or free_port()
        self.user, self.password = "rmlab", secrets.token_hex(8)
        self.data = root / "pgdata"
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kwargs)

    def start(self) -> "Postgres":
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pgpass"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            shutil.chown(self.root, "postgres")
            shutil.chown(pwfile, "postgres")
            os.chmod(self.root, 0o700)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions")
        pwfile.unlink()
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
                  "-t", "60", "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                  "-c max_connections=200 -c fsync=off", "start")
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its SQLAlchemy URI (psycopg 3 driver)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over ``backend_uri``, artifacts proxied into ``root/artifacts``."""

    def __init__(self, backend_uri: str, root: Path, port: int | None = None, workers: int = 2) -> None:
        self.backend_uri, self.root, self.workers = backend_uri, root, workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"mlflow-server-{self.port}.log", "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # MLflow's job runner (seven huey worker processes, for its GenAI features) is not needed to track runs.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        # Its own session: stop() ends the server and the workers it forked, and nothing else.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
             "--artifacts-destination", (self.root / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(lambda: self.healthy() or self.proc.poll() is not None, "mlflow server", timeout)
        if self.proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({self.proc.returncode}); see {log.name}")
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def scratch_dir(prefix: str) -> Path:
    """A short, world-traversable temp folder (pytest's tmp_path is private to root, and postgres must reach it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path
