"""Fixtures shared by the test modules: the real-data folder and a writer of small CSV files."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.settings import SERVER_ENV, TELEMETRY_OFF
from tests import prefect_db

# Prefect reads its settings at import: give the test run its own home (never the user's), no telemetry.
PREFECT_HOME = os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="backtest-tests-prefect-home-")
os.environ.update(TELEMETRY_OFF)
# `backtest run` and `demo` in these tests talk to the session's test server (or an ephemeral one), never start
# the project's background server (cli.localserver) in the checkout; its own tests turn this off
os.environ["BACKTEST_EPHEMERAL"] = "1"
os.environ["BACKTEST_PREFECT_DB_TEMPLATE"] = (
    "off"  # never the user's own cache (the tests seed their servers)
)
# the test server is set up as the project's servers are (flows.settings.SERVER_ENV)
os.environ.update({k: os.environ.get(k, v) for k, v in SERVER_ENV.items()})

REPO_ROOT = Path(__file__).resolve().parent.parent
SP500_ENV = "BACKTEST_SP500_DIR"


#: the test folders whose tests start Prefect servers
SERVER_TEST_DIRS = tuple(REPO_ROOT / "tests" / name for name in ("bench", "deploy", "faults", "flows"))
_MIGRATION = pytest.StashKey[prefect_db.TemplateMigration]()


def _selects_server_tests(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if any(path == d or path in d.parents or d in path.parents for d in SERVER_TEST_DIRS):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    if not config.option.collectonly and _selects_server_tests(config):
        config.stash[_MIGRATION] = prefect_db.TemplateMigration()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _MIGRATION in config.stash:
        config.stash[_MIGRATION].close()
    shutil.rmtree(PREFECT_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_db_template(request: pytest.FixtureRequest) -> Path | None:
    """A migrated Prefect database that every server of this run starts from (tests/prefect_db.py)."""
    config = request.config
    if _MIGRATION not in config.stash:  # selected some other way (-k, a test id outside those folders)
        config.stash[_MIGRATION] = prefect_db.TemplateMigration()
    return config.stash[_MIGRATION].result()


@pytest.fixture(scope="session")
def prefect_test_server(prefect_db_template: Path | None):
    """One Prefect test server for every test that runs flows in-process (the flow tests and the benchmark
    test share it), on a copy of the migrated database."""
    import prefect.testing.utilities as harness

    def seeded_temporary_folder() -> str:  # where the harness puts its database, `prefect-test.db`
        folder = tempfile.mkdtemp()
        prefect_db.seed(prefect_db_template, Path(folder) / "prefect-test.db")
        return folder

    with contextlib.ExitStack() as running:
        # patched only while the harness starts; where the name is gone (another Prefect version), the harness
        # migrates a database of its own as before
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(harness, "mkdtemp", seeded_temporary_folder, raising=False)
            running.enter_context(harness.prefect_test_harness(server_startup_timeout=90))
        yield


@pytest.fixture(scope="session")
def sp500_dir() -> Path:
    """The real S&P 500 sample (505 ``<SYMBOL>_data.csv`` files), or a skip that says how to provide it.

    ``$BACKTEST_SP500_DIR`` wins; otherwise ``../shared/data/sp500_5yr`` beside the repository.
    """
    configured = os.environ.get(SP500_ENV)
    folder = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "sp500_5yr"
    if not folder.is_dir() or not any(folder.glob("*.csv")):
        pytest.skip(
            f"real S&P 500 data not found at {folder}; set {SP500_ENV} to a folder of <SYMBOL>_data.csv files"
        )
    return folder


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Write text (UTF-8, line endings kept as given) or bytes to ``tmp_path/src/<name>``."""
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)

    def write(name: str, content: str | bytes) -> Path:
        path = source / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    return write


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic symbols x 7 years (3 chunks of 8), generated once for the session (read-only for tests)."""
    from backtest.data.synthetic import generate_universe

    folder = tmp_path_factory.mktemp("synthetic")
    generate_universe(folder, 24, 7, seed=7, workers=1)
    return folder


@pytest.fixture
def store(synthetic_csv: Path, tmp_path: Path):
    """A fresh store of that market (and so a cold cache) per test."""
    from backtest.data.ingest import ingest_folder
    from backtest.data.store import Store

    s = Store(tmp_path / "store")
    ingest_folder(synthetic_csv, s, workers=1, durable=False)
    return s
