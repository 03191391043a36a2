"""`backtest server|deploy|trigger` on bad input: one clear line, exit code 1, no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import server as cli_server
from cli.app import app
from flows.settings import SERVER_ENV
from tests.deploy.conftest import REPO_ROOT


def run(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def refused(*args: str, env: dict[str, str] | None = None) -> str:
    result = run(*args, env=env)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture
def closed_port() -> int:
    return cli_server.free_port()


def test_server_down_without_a_server(tmp_path):
    assert "no Prefect server was started" in refused("server", "down", "--project", str(tmp_path))


def test_server_down_with_a_stale_pid_file(tmp_path):
    state = cli_server.state_file(tmp_path)
    state.parent.mkdir(parents=True)
    finished = subprocess.Popen(["true"])  # a process that has ended: its PID names no server
    finished.wait()
    state.write_text(
        json.dumps({"pid": finished.pid, "host": "127.0.0.1", "port": 1, "home": "h", "log": "l"})
    )
    assert "is not running any more" in refused("server", "down", "--project", str(tmp_path))
    assert not state.exists()


def test_server_up_on_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = refused("server", "up", "--project", str(tmp_path), "--port", str(port))
    assert f"port {port} on 127.0.0.1 is in use" in line and "--port 0" in line
    assert cli_server.read_info(tmp_path) is None


def test_server_up_twice_reuses_the_running_server(server):
    project = Path(server.home).parent.parent  # <project>/data/prefect
    result = run("server", "up", "--project", str(project))
    assert result.exit_code == 0, result.output
    assert "already running" in result.output and f"export PREFECT_API_URL={server.api_url}" in result.output


def test_server_up_starts_the_server_with_batched_task_run_writes(server):
    # flows.settings.SERVER_ENV: without it the recorder commits each task-run event on its own, and a flow run
    # created meanwhile can fail once with "database is locked" and wait 2 s for the client's retry
    environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    settings = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    for key, value in SERVER_ENV.items():
        assert settings.get(key) == os.environ.get(key, value), key


def test_deploy_and_trigger_without_a_running_server(tmp_path, closed_port):
    env = {"PREFECT_API_URL": f"http://127.0.0.1:{closed_port}/api"}
    line = refused("deploy", "--project", str(REPO_ROOT), env=env)
    assert "does not answer" in line and "backtest server up" in line
    line = refused("trigger", "three-phase-study/nightly", "--project", str(tmp_path), env=env)
    assert "does not answer" in line
    # no PREFECT_API_URL and no `server up` in this project
    line = refused(
        "trigger", "three-phase-study/nightly", "--project", str(tmp_path), env={"PREFECT_API_URL": ""}
    )
    assert "no Prefect server" in line


def test_deploy_refuses_a_folder_without_prefect_yaml_and_unknown_names(tmp_path, api_url):
    env = {"PREFECT_API_URL": api_url}
    assert "no prefect.yaml" in refused("deploy", "--project", str(tmp_path), env=env)
    line = refused("deploy", "--project", str(REPO_ROOT), "--name", "hourly", env=env)
    assert "no deployment 'hourly' in prefect.yaml" in line and "nightly" in line


def test_trigger_unknown_deployment_lists_the_known_ones(deployed, api_url):
    env = {"PREFECT_API_URL": api_url}
    line = refused("trigger", "three-phase-study/hourly", env=env)
    assert "no deployment 'three-phase-study/hourly'" in line and "three-phase-study/nightly" in line
    assert "FLOW/DEPLOYMENT" in refused("trigger", "nightly", env=env)


def test_trigger_with_a_parameter_of_the_wrong_type(deployed, api_url):
    env = {"PREFECT_API_URL": api_url}
    line = refused("trigger", "three-phase-study/nightly", "--set", "params.fees_bps=cheap", env=env)
    assert "refused the parameters" in line and "params.fees_bps" in line and "'cheap' is not of type" in line
    assert "bad --set" in refused("trigger", "three-phase-study/nightly", "--set", "fees_bps", env=env)


def test_merged_parameters_change_only_the_given_fields():
    defaults = {"params": {"store": "data/store", "grid": {"fast": [5], "slow": [60]}}, "x": 1}
    merged = cli_server.merged_parameters(
        defaults, ["params.fees_bps=5", 'params.grid={"fast": [10]}', "params.strategy=momentum", "y.z=true"]
    )
    assert merged == {
        "params": {"store": "data/store", "grid": {"fast": [10]}, "fees_bps": 5, "strategy": "momentum"},
        "x": 1,
        "y": {"z": True},
    }
    assert defaults["params"]["grid"] == {"fast": [5], "slow": [60]}  # the deployment's own are untouched


def test_deploy_names_a_deployment_whose_flow_file_is_missing(tmp_path, api_url):
    (tmp_path / "prefect.yaml").write_text(
        "deployments:\n  - name: gone\n    entrypoint: flows/gone.py:gone\n    work_pool: {name: p}\n"
    )
    env = {"PREFECT_API_URL": api_url}
    line = refused("deploy", "--project", str(tmp_path), "--name", "gone", env=env)
    assert "deployment 'gone': its entrypoint 'flows/gone.py:gone' is not a file" in line
    result = run("deploy", "--project", str(tmp_path), env=env)
    assert result.exit_code == 1
    assert "warning: skipping deployment 'gone'" in result.output
    assert "error: no deployment of prefect.yaml has its entrypoint in this project" in result.output
