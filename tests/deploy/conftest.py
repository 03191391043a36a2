"""One real Prefect server for the deployment tests, started with `backtest server up` and stopped with
`backtest server down` when this folder's tests are done; the deployments of prefect.yaml on it; a process
worker; a small market.

Nothing here uses the in-process test harness of tests/flows: subprocesses get the server's URL in their
environment, and this process talks to it through ``cli_server.api_client`` (a settings context).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from cli import server as cli_server
from cli.app import app
from flows.settings import TELEMETRY_OFF
from tests import prefect_db

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL = cli_server.DEFAULT_POOL

FLAKY = """
import fcntl
import os

from backtest.engine.strategies import sma_crossover

MARKER = {marker!r}
LOG = {log!r}


def flaky(prices, fast=10, slow=50):
    \"\"\"SMA crossover that logs each chunk it sees and fails the chunk of FAIL_SYMBOL while MARKER exists.\"\"\"
    with open(LOG, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(prices.symbols[0] + "\\n")
    if os.path.exists(MARKER) and open(MARKER).read().strip() in prices.symbols:
        raise RuntimeError("marker present: this chunk fails")
    return sma_crossover(prices, fast=fast, slow=slow)
"""


@dataclass(frozen=True)
class FlakyStrategy:
    """A user strategy module on its own path, importable by the worker's flow-run processes."""

    folder: Path
    marker: Path
    log: Path
    name: str = "flaky_strategies:flaky"

    def calls(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


def _invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture(scope="package")
def server(tmp_path_factory, prefect_db_template) -> Iterator[cli_server.ServerInfo]:
    project = tmp_path_factory.mktemp("server-project")
    prefect_db.seed(prefect_db_template, cli_server.server_dir(project) / prefect_db.DEFAULT_DB_NAME)
    t0 = time.monotonic()
    result = _invoke("server", "up", "--project", str(project), "--port", "0", "--timeout", "120")
    assert result.exit_code == 0, result.output
    info = cli_server.read_info(project)
    assert info is not None and f"export PREFECT_API_URL={info.api_url}" in result.output
    print(f"prefect server up in {time.monotonic() - t0:.1f} s at {info.url}")
    yield info
    result = _invoke("server", "down", "--project", str(project))
    assert result.exit_code == 0, result.output
    assert not cli_server.port_is_in_use(info.port), "the server still listens after `backtest server down`"
    assert cli_server.read_info(project) is None


@pytest.fixture(scope="package")
def api_url(server) -> str:
    return server.api_url


@pytest.fixture(scope="package")
def client_env(api_url, tmp_path_factory) -> dict[str, str]:
    """Environment of a Prefect client process (CLI, worker, serve) of the test server."""
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("client-home")),
        **TELEMETRY_OFF,
    }


@pytest.fixture(scope="package")
def deployed(api_url, client_env) -> str:
    """`backtest deploy` from the repository: the work pool and prefect.yaml's deployments."""
    result = _invoke("deploy", "--project", str(REPO_ROOT), env={"PREFECT_API_URL": api_url})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="package")
def flaky(tmp_path_factory) -> FlakyStrategy:
    folder = tmp_path_factory.mktemp("user-strategies")
    marker, log = folder / "fail.marker", folder / "calls.log"
    (folder / "flaky_strategies.py").write_text(
        textwrap.dedent(FLAKY.format(marker=str(marker), log=str(log)))
    )
    return FlakyStrategy(folder=folder, marker=marker, log=log)


@contextlib.contextmanager
def background(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A long-running Prefect process of this test, stopped by its own process group id at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        # A flow run reported final may still be closing its process; stopping a runner then makes Prefect
        # force the run to Cancelled ("Runner is shutting down"). Let those processes end first.
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.wait_procs(psutil.Process(proc.pid).children(recursive=True), timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_until(condition, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what} did not happen within {timeout:.0f} s\n{tail}")


@pytest.fixture(scope="package")
def worker(deployed, api_url, client_env, flaky, tmp_path_factory) -> Iterator[Path]:
    """`prefect worker start --pool backtest-process` in the project folder, as the README says."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {
        **client_env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(flaky.folder), os.environ.get("PYTHONPATH")) if p),
    }
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
    with background(cmd, REPO_ROOT, env, log) as proc:

        def online() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            with cli_server.api_client(api_url) as client:
                return bool(client.read_workers_for_work_pool(POOL))

        wait_until(online, 60, "the worker coming online", log)
        yield log
