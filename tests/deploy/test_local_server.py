"""The project's background Prefect server (cli.localserver), started and used for real: a command starts it,
the next reuses it, two at once start one, an idle one stops itself, a stale or foreign record is replaced, a
user's PREFECT_API_URL and the opt-out keep it out of the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import localserver as ls
from cli.app import app
from tests import prefect_db


@pytest.fixture
def project(tmp_path, monkeypatch, prefect_db_template) -> Path:
    """A project folder whose server starts from the session's migrated database; no server may outlive the
    test."""
    monkeypatch.delenv(ls.EPHEMERAL_ENV, raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv(ls.IDLE_ENV, raising=False)
    folder = tmp_path / "project"
    prefect_db.seed(prefect_db_template, ls.server_dir(folder) / prefect_db.DEFAULT_DB_NAME)
    yield folder
    info = ls.read_info(folder)
    if info is not None:
        ls.stop(info)


@pytest.mark.e2e
def test_a_new_home_keeps_a_migrated_template_and_the_next_home_starts_from_it(tmp_path, monkeypatch):
    """The machine's first server migrates its database and keeps a copy; a later project's server starts
    from that copy instead of migrating again."""
    monkeypatch.delenv(ls.EPHEMERAL_ENV, raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    template = tmp_path / "cache" / "prefect.db"
    monkeypatch.setenv(ls.TEMPLATE_ENV, str(template))
    first, second = tmp_path / "one", tmp_path / "two"
    try:
        t0 = time.monotonic()
        ls.ensure_server(first, idle_minutes=5).wait()
        migrating = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while not template.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert template.exists()
        t0 = time.monotonic()
        started = ls.ensure_server(second, idle_minutes=5)
        assert (ls.server_dir(second) / ls.DB).exists()  # seeded before the server started
        started.wait()
        seeded = time.monotonic() - t0
        assert seeded < migrating, (seeded, migrating)
    finally:
        for project in (first, second):
            info = ls.read_info(project)
            if info is not None:
                ls.stop(info)


def test_whether_a_command_uses_the_projects_server(monkeypatch):
    monkeypatch.delenv(ls.EPHEMERAL_ENV, raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert ls.use_local_server() and not ls.use_local_server(ephemeral=True)
    monkeypatch.setenv(ls.EPHEMERAL_ENV, "1")
    assert not ls.use_local_server()
    monkeypatch.delenv(ls.EPHEMERAL_ENV)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")  # the user's own server wins
    assert not ls.use_local_server()
    monkeypatch.setenv(ls.IDLE_ENV, "soon")
    with pytest.raises(ls.ServerError, match="not a number of minutes"):
        ls.idle_minutes_from_env()
    monkeypatch.setenv(ls.TEMPLATE_ENV, "off")
    assert ls.template_path() is None
    monkeypatch.delenv(ls.TEMPLATE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert ls.template_path() == Path(f"/somewhere/backtest/prefect-{ls.prefect_version()}.db")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://x/y")
    assert ls.template_path() is None  # only Prefect's own SQLite database


def test_a_record_is_used_only_for_a_live_server_of_this_home_and_version(tmp_path):
    project = tmp_path / "p"
    me = ls.ServerInfo(os.getpid(), ls.HOST, 1, str(ls.server_dir(project)), "log", ls.prefect_version())
    assert "gone" in ls.usable(ls.ServerInfo(2**22 + 7, ls.HOST, 1, me.home, "log"), project)
    # this test's own process is no Prefect server: a recycled process id is not trusted either
    assert "gone" in ls.usable(me, project)


@pytest.mark.e2e
def test_the_first_command_starts_it_the_next_reuses_it_and_down_stops_it(project):
    started = ls.ensure_server(project, idle_minutes=5)
    assert started.new and started.replaced is None
    info = started.wait()
    assert ls.is_healthy(info.api_url) and ls.read_info(project) == info
    assert info.prefect == ls.prefect_version() and info.idle_minutes == 5
    used = (ls.server_dir(project) / ls.USED).stat().st_mtime
    time.sleep(0.05)
    again = ls.ensure_server(project)
    assert not again.new and again.info.pid == info.pid
    assert (ls.server_dir(project) / ls.USED).stat().st_mtime > used  # a use restarts the idle time
    status = CliRunner().invoke(app, ["server", "status", "--project", str(project)])
    assert status.exit_code == 0 and info.url in status.output and "answering" in status.output
    assert "stops after 5 minutes unused" in status.output
    down = CliRunner().invoke(app, ["server", "down", "--project", str(project)])
    assert down.exit_code == 0, down.output
    assert not ls.alive(info.pid) and not ls.port_is_in_use(info.port) and ls.read_info(project) is None
    gone = CliRunner().invoke(app, ["server", "status", "--project", str(project)])
    assert gone.exit_code == 3 and "no Prefect server runs" in gone.output


@pytest.mark.e2e
def test_two_commands_at_once_start_one_server(project):
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from cli import localserver as ls\n"
        "s = ls.ensure_server(Path(sys.argv[1]), idle_minutes=5)\n"
        "info = s.wait()\n"
        "print(json.dumps({'pid': info.pid, 'new': s.new}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (ls.EPHEMERAL_ENV, "PREFECT_API_URL")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(project)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    found = [json.loads(p.communicate(timeout=180)[0]) for p in procs]
    assert found[0]["pid"] == found[1]["pid"]
    assert sorted(f["new"] for f in found) == [False, True]
    supervisors = subprocess.run(["pgrep", "-f", f"{ls._SUPERVISOR} --home {ls.server_dir(project)}"],
                                 capture_output=True, text=True)  # fmt: skip
    assert len(supervisors.stdout.split()) == 1


@pytest.mark.e2e
def test_an_idle_server_stops_itself_and_forgets_its_record(project):
    info = ls.ensure_server(project, idle_minutes=3 / 60).wait()  # 3 s
    deadline = time.monotonic() + 60
    while ls.alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ls.alive(info.pid) and ls.read_info(project) is None
    assert not ls.port_is_in_use(info.port)
    assert "idle for" in Path(info.log).read_text()


@pytest.mark.e2e
def test_a_stale_or_foreign_record_is_replaced(project):
    ls.server_dir(project).mkdir(parents=True, exist_ok=True)
    dead = ls.ServerInfo(2**22 + 11, ls.HOST, ls.free_port(), str(ls.server_dir(project)), "log", "3.0.0")
    ls.write_info(project, dead)
    started = ls.ensure_server(project, idle_minutes=5)
    assert started.new and "is gone" in (started.replaced or "")
    first = started.wait()
    # a live server recorded as another Prefect version's is stopped, not used
    ls.write_info(project, ls.ServerInfo(**{**first.__dict__, "prefect": "0.0.1"}))
    replaced = ls.ensure_server(project, idle_minutes=5)
    assert replaced.new and "runs Prefect 0.0.1" in (replaced.replaced or "")
    assert not ls.alive(first.pid)
    assert ls.is_healthy(replaced.wait().api_url)


@pytest.mark.e2e
def test_backtest_run_uses_the_projects_server_or_the_users_or_its_own(project, store, monkeypatch):
    """Through the command as a user runs it, in the project folder: the first run starts the server, the
    second finds it; ``--ephemeral`` and a user's PREFECT_API_URL leave the project's server alone."""
    monkeypatch.chdir(project)
    env = {k: v for k, v in os.environ.items() if k not in (ls.EPHEMERAL_ENV, "PREFECT_API_URL")}
    args = [sys.executable, "-c", "from cli.app import app; app()", "run", "--store", str(store.root)]
    args += [
        "--param",
        "fast=5,10",
        "--param",
        "slow=40",
        "--train-years",
        "2",
        "--no-report",
        "--no-persist",
    ]

    def run(out: str, *extra: str, environ: dict[str, str] = env) -> str:
        done = subprocess.run([*args, "--out", out, *extra], env=environ, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads((project / out / "summary.json").read_text())["state"] == "Completed"
        return done.stdout

    first = run("one")
    info = ls.read_info(project)
    assert "starting this project's Prefect server" in first and info is not None and ls.alive(info.pid)
    second = run("two")
    assert "starting" not in second and ls.read_info(project).pid == info.pid
    ls.stop(info)
    ls.state_file(project).unlink(missing_ok=True)
    run("three", "--ephemeral")
    assert ls.read_info(project) is None  # nothing started for the project
    run("four", environ={**env, ls.EPHEMERAL_ENV: "1"})
    assert ls.read_info(project) is None
