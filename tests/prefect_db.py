"""A Prefect database migrated once per test run, copied into every Prefect server the tests start.

A server on a new database first runs Prefect's migrations: 23 of the 35 s a fresh `prefect server start`
took on a 2-core test machine (12 s on an already migrated file). The test run starts several servers (the
in-process test server, `backtest server up`, the fault tests' restartable server); each gets its own copy of
one migrated file, so each is as new and as separate as before, without migrating again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: the file name a server uses under its PREFECT_HOME when no database URL is set
DEFAULT_DB_NAME = "prefect.db"


def migrate_template(folder: Path) -> Path | None:
    """A migrated, otherwise empty SQLite database in ``folder``; None (each server migrates its own) when
    the migration fails, so that a broken template never fails a test a fresh database would pass."""
    path = folder / "template.db"
    env = {
        **os.environ,
        "PREFECT_HOME": str(folder),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{path}",
    }
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 or not path.exists():
        print(f"no migrated Prefect database template (each server migrates its own): {done.stderr[-2000:]}")
        return None
    return path


def seed(template: Path | None, destination: Path) -> None:
    """Copy the template to ``destination`` unless there is no template or a database is already there."""
    if template is None or destination.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, destination)
