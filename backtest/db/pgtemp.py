"""A throwaway PostgreSQL server on this machine (Debian's postgresql package), for tests and benchmarks.

The server runs from a temporary data folder on 127.0.0.1 and a free port, with password authentication
(so wrong credentials can be tested), and is stopped at the end. initdb and the server refuse to run as
root, so under root they run as the ``postgres`` user through ``runuser``. Tests that need it skip with the
reason when the binaries are missing or the server cannot start (``PgUnavailable`` says which).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: the password of the throwaway server's superuser (it listens on 127.0.0.1 only, and lives minutes)
PG_PASSWORD = "s3cret-test"


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str, password: str | None = None) -> str:
        return (
            f"postgresql+psycopg://{self.user}:{password or self.password}@{self.host}:{self.port}/{database}"
        )

    def create_database(self) -> str:
        import psycopg

        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url("postgres").replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgUnavailable(RuntimeError):
    """PostgreSQL cannot run here; the message says why (tests skip with it)."""


@contextlib.contextmanager
def temporary_postgres(*, durable: bool = False) -> Iterator[PgServer]:
    """A throwaway server in a temporary folder on 127.0.0.1 and a free port, stopped (by pg_ctl) on exit.

    ``durable=False`` turns fsync off, for tests; benchmarks keep the server's default durability.
    """
    bindir = _pg_bin()
    if bindir is None:
        raise PgUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PgUnavailable(
            "psycopg 3 is not installed: pip install 'prefect-walkforward-backtest[postgres]'"
        ) from None
    as_root = os.geteuid() == 0
    if as_root and shutil.which("runuser") is None:
        raise PgUnavailable(
            "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
        )
    root = Path(tempfile.mkdtemp(prefix="backtest-pg-"))
    prefix: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    data, log, pwfile = root / "data", root / "server.log", root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if as_root:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    port = _free_port()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, check=False)

    try:
        init = run(
            str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
            f"--pwfile={pwfile}", "--locale=C", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            raise PgUnavailable(f"initdb failed: {init.stderr.strip()[:300]}")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        if not durable:
            options += " -c fsync=off -c full_page_writes=off"
        start = run(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"
        )
        if start.returncode != 0:
            detail = log.read_text()[-300:] if log.exists() else start.stderr[-300:]
            raise PgUnavailable(f"PostgreSQL did not start: {detail.strip()}")
        try:
            yield PgServer("127.0.0.1", port, "postgres", PG_PASSWORD)
        finally:
            from backtest.db.engine import dispose_engines

            dispose_engines()
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
