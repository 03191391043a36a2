"""A Prefect database migrated once per test run, copied into every Prefect server the tests start.

A server on a new database first runs Prefect's migrations: most of what a fresh `prefect server start`
takes. The test run starts several servers (the in-process test server, `backtest server up`, the fault
tests' restartable server); each gets its own copy of one migrated file, so each is as new and as separate
as before, without migrating again. The migration starts in the background when the run is configured,
beside pytest's collection.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: the file name a server uses under its PREFECT_HOME when no database URL is set
DEFAULT_DB_NAME = "prefect.db"


class TemplateMigration:
    """``prefect server database upgrade`` of an empty SQLite file in a folder of its own, running."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="backtest-tests-prefect-db-"))
        self.path = self.folder / "template.db"
        self.log = self.folder / "migration.log"
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.folder),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.path}",
        }
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def result(self, timeout: float = 300.0) -> Path | None:
        """The migrated file; None (each server then migrates its own) when the migration failed, so that a
        broken template never fails a test that a fresh database would pass."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if code != 0 or not self.path.exists():
            tail = self.log.read_text(errors="replace")[-2000:]
            print(f"no migrated Prefect database template (each server migrates its own): {tail}")
            return None
        return self.path

    def close(self) -> None:
        """Stop the migration if it is still running (no test needed it) and remove its folder."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def seed(template: Path | None, destination: Path) -> None:
    """Copy the template to ``destination`` unless there is no template or a database is already there."""
    if template is None or destination.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, destination)
