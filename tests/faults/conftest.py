"""Fault-injection fixtures: a real Prefect server in a temporary home, a tiny market, and CLI subprocesses.

Everything here runs for real: flows run as `backtest run` subprocesses against a `prefect server start`
on a free loopback port, so a test can SIGKILL the flow, its workers or the server and watch what happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from backtest.data.ingest import ingest_folder
from backtest.data.store import Store
from backtest.data.synthetic import generate_universe
from backtest.engine.planning import resolve_universe
from backtest.engine.study import run_study
from flows.settings import TELEMETRY_OFF
from tests import prefect_db

REPO = Path(__file__).resolve().parents[2]
TABLES = ("selections", "oos_returns", "oos_metrics", "portfolio", "grid_scores")
GRID_ARGS = ("--param", "fast=5,20", "--param", "slow=60,120")
STUDY_ARGS = (
    *GRID_ARGS,
    "--train-years",
    "3",
    "--validate-years",
    "1",
    "--test-years",
    "1",
    "--fees-bps",
    "5",
)

#: A user strategy steered by files in $FAULT_DIR, so a test can slow a chunk down or kill the process
#: computing it without changing the strategy's code (and so its cache keys).
CONTROLLED = """
import os
import signal
import time

from backtest.engine.strategies import sma_crossover


def controlled(prices, fast=10, slow=50):
    control = os.environ.get("FAULT_DIR", "")
    if control:
        delay = os.path.join(control, "delay")
        if os.path.exists(delay):
            time.sleep(float(open(delay).read()))
        kill = os.path.join(control, "kill-" + prices.symbols[0])
        try:
            os.unlink(kill)  # only once: whoever retries this chunk computes it normally
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return sma_crossover(prices, fast=fast, slow=slow)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class PrefectServer:
    """`prefect server start` on 127.0.0.1 in its own home; restartable on the same port and database."""

    home: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        return {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.url,
            **TELEMETRY_OFF,
        }

    def start(self, timeout: float = 90.0) -> None:
        env = {**os.environ, **self.env()}
        env.pop("PREFECT_API_URL")
        self.starts += 1
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches uvicorn's children too
            )
        deadline = time.monotonic() + timeout
        while not _healthy(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prefect server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory, prefect_db_template) -> Iterator[PrefectServer]:
    if shutil.which("prefect") is None and not (Path(sys.executable).parent / "prefect").exists():
        pytest.skip("the prefect command is not installed")
    home = tmp_path_factory.mktemp("prefect-home")
    prefect_db.seed(prefect_db_template, home / prefect_db.DEFAULT_DB_NAME)
    server = PrefectServer(home=home, port=free_port(), log=home / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def market_csv(tmp_path_factory) -> Path:
    """16 synthetic symbols x 7 years, generated once (read-only for tests)."""
    folder = tmp_path_factory.mktemp("market")
    generate_universe(folder, 16, 7, seed=11, workers=1)
    return folder


@pytest.fixture(scope="session")
def strategy_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("strategies")
    (folder / "fault_strategies.py").write_text(textwrap.dedent(CONTROLLED))
    return folder


@pytest.fixture
def store(market_csv, tmp_path) -> Store:
    s = Store(tmp_path / "store")
    ingest_folder(market_csv, s, workers=1, durable=False)
    return s


@dataclass
class Cli:
    """Runs `backtest ...` in a subprocess against the test's Prefect server."""

    server: PrefectServer
    strategy_dir: Path
    control: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.server.env(),
            "FAULT_DIR": str(self.control),
            "PYTHONPATH": os.pathsep.join([str(self.strategy_dir), str(REPO)]),
        }

    def command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-c", "from cli.app import app; app()", *args]

    def start(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self.command(args),
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(self, args: Sequence[str], timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(args), env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def cli(prefect_server, strategy_dir, tmp_path) -> Iterator[Cli]:
    control = tmp_path / "control"
    control.mkdir()
    runner = Cli(prefect_server, strategy_dir, control)
    try:
        yield runner
    finally:
        runner.kill_all()


def run_args(store: Store, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--store",
        str(store.root),
        "--out",
        str(out),
        "--strategy",
        "fault_strategies:controlled",
        *STUDY_ARGS,
        *extra,
    ]


def tables(out: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES}


def clean_tables(
    store: Store, strategy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, pd.DataFrame]:
    """The same study computed by the core alone in this process: no Prefect, no cache, no faults."""
    from backtest.config import FoldSpec, ParamGrid, StudyConfig

    monkeypatch.syspath_prepend(str(strategy_dir))
    monkeypatch.delenv("FAULT_DIR", raising=False)
    config = StudyConfig(
        strategy="fault_strategies:controlled",
        grid=ParamGrid.from_mapping({"fast": [5, 20], "slow": [60, 120]}),
        folds=FoldSpec(3, 1, 1),
        fees_bps=5,
    )
    universe = resolve_universe(store.catalog())
    r = run_study(
        config, universe.symbols, store.load, universe.first, universe.last, chunk_size=1000, workers=1
    )
    return {
        "selections": r.selections,
        "oos_returns": r.oos_returns,
        "oos_metrics": r.symbol_metrics,
        "portfolio": r.portfolio,
        "grid_scores": r.grid_scores,
    }


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(
            a[name].reset_index(drop=True), b[name].reset_index(drop=True), check_categorical=False
        )


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def result_files(store: Store) -> list[Path]:
    folder = store.root / "cache" / "records"
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


@dataclass
class InProcess:
    """Runs the study flow in this process against the test's Prefect server (no start-up cost per run)."""

    control: Path

    def params(self, store: Store, out: Path, **kw: object):
        from flows.params import StudyParams

        base: dict[str, object] = {
            "store": str(store.root),
            "out": str(out),
            "strategy": "fault_strategies:controlled",
            "grid": {"fast": [5, 20], "slow": [60, 120]},
            "train_years": 3,
            "validate_years": 1,
            "test_years": 1,
            "fees_bps": 5,
        }
        return StudyParams(**{**base, **kw})

    def run(self, store: Store, out: Path, **kw: object):
        from flows.study import three_phase_study

        return three_phase_study(self.params(store, out, **kw), return_state=True)


@pytest.fixture
def in_process(
    prefect_test_server, prefect_server, strategy_dir, tmp_path, monkeypatch
) -> Iterator[InProcess]:
    """The flow runs against ``prefect_server``. Prefect's own background threads (its log and event workers)
    do not see a temporary settings context: they use the process's default server, the session's test
    server (``prefect_test_server``), as in a full run. Without one, a run of these tests alone made them start
    an ephemeral server of their own, at exit too, which outlived pytest."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    monkeypatch.setenv("FAULT_DIR", str(control))
    # worker processes (process pool, Dask) find the strategy module through the environment
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(strategy_dir), str(REPO)]))
    monkeypatch.syspath_prepend(str(strategy_dir))
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.url}):
        yield InProcess(control)
