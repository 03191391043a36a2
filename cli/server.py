"""``backtest server up|down``, ``backtest deploy`` and ``backtest trigger``: a local Prefect server for the
project, its deployments from prefect.yaml, and runs of them with parameters, as the UI's form makes them.

The server belongs to one project folder: its PREFECT_HOME (database, logs) is ``<project>/data/prefect``, its
PID, port and URL are in ``server.json`` there, so ``down`` stops exactly the process ``up`` started.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.errors import cli_errors, fail
from cli.localserver import (
    HOST,
    ServerError,
    ServerInfo,
    alive,
    ensure_server,
    free_port,
    is_healthy,
    last_used,
    port_is_free,
    port_is_in_use,
    read_info,
    server_dir,
    state_file,
    stop,
    touch,
    usable,
)
from flows.settings import TELEMETRY_OFF

__all__ = ["HOST", "ServerError", "ServerInfo", "free_port", "port_is_free", "port_is_in_use", "server_dir"]

DEFAULT_PORT = 4200
DEFAULT_POOL = "backtest-process"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

server_app = typer.Typer(
    name="server", help="A local Prefect server (UI and API) for this project.", no_args_is_help=True
)

ProjectOption = Annotated[
    Path, typer.Option("--project", help="Project folder (prefect.yaml, data/). Default: this folder.")
]


def start_server(
    project: Path, port: int = DEFAULT_PORT, timeout: float = 90.0, idle_minutes: float = 0.0
) -> ServerInfo:
    """The project's server (``cli.localserver``), started now on ``port`` (0: any free port) unless a usable
    one runs; waits until it answers."""
    started = ensure_server(project, port=port, idle_minutes=idle_minutes)
    try:
        return started.wait(timeout)
    except ServerError:
        if started.new:
            stop(started.info)
            state_file(project).unlink(missing_ok=True)
        raise


def stop_server(info: ServerInfo, timeout: float = 20.0) -> None:
    stop(info, timeout)


@server_app.command("up")
@cli_errors
def up(
    project: ProjectOption = Path("."),
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")
    ] = DEFAULT_PORT,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds to wait for the server.")
    ] = 90.0,
    idle_minutes: Annotated[
        float,
        typer.Option(
            "--idle-minutes",
            min=0.0,
            help="Stop after this many minutes unused (0: never; keep 0 while workers run deployments).",
        ),
    ] = 0.0,
) -> None:
    """Start a Prefect server on 127.0.0.1 for this project (analytics off, PREFECT_HOME in data/prefect)."""
    info = read_info(project)
    if usable(info, project) is None and info is not None and is_healthy(info.api_url):
        touch(project)
        typer.echo(f"a Prefect server of this project is already running (pid {info.pid})")
    else:
        typer.echo(f"starting a Prefect server on {HOST} (log: {server_dir(project) / 'server.log'}) ...")
        try:
            info = start_server(project, port, timeout, idle_minutes)
        except ServerError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"Prefect UI:  {info.url}")
    typer.echo(
        "`backtest run` and `backtest deploy` in this folder use it; point the Prefect CLI and workers at it with:"
    )
    typer.echo(f"export PREFECT_API_URL={info.api_url}")


@server_app.command("down")
@cli_errors
def down(project: ProjectOption = Path(".")) -> None:
    """Stop the Prefect server of this project (started by `backtest server up` or by a command)."""
    info = read_info(project)
    if info is None:
        raise fail(
            f"no Prefect server was started for {project.resolve()} (nothing in {state_file(project)})"
        )
    if not alive(info.pid):
        state_file(project).unlink(missing_ok=True)
        raise fail(f"the Prefect server of {project.resolve()} (pid {info.pid}) is not running any more")
    stop_server(info)
    state_file(project).unlink(missing_ok=True)
    typer.echo(f"stopped the Prefect server at {info.url} (pid {info.pid})")


@server_app.command("status")
@cli_errors
def status(project: ProjectOption = Path(".")) -> None:
    """Say whether this project's Prefect server runs, where, since when, and when it stops on its own."""
    info = read_info(project)
    why = usable(info, project)
    if info is None or (why is not None and not alive(info.pid)):
        state_file(project).unlink(missing_ok=True)
        typer.echo(f"no Prefect server runs for {project.resolve()}: the next `backtest run` starts one")
        raise typer.Exit(3)
    healthy = is_healthy(info.api_url)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started_at)) if info.started_at else "?"
    typer.echo(
        f"Prefect server {info.url} (pid {info.pid}, Prefect {info.prefect or '?'}): "
        f"{'answering' if healthy else 'not answering'}, started {since}"
    )
    if why is not None:
        typer.echo(f"not usable by this command: {why}")
    if info.idle_minutes > 0:
        used = last_used(Path(info.home), info.started_at)
        left = max(0.0, info.idle_minutes - (time.time() - used) / 60.0)
        typer.echo(f"stops after {info.idle_minutes:g} minutes unused: in {left:.0f} minutes unless used")
    else:
        typer.echo("runs until `backtest server down`")
    typer.echo(f"home {info.home}, log {info.log}")


def resolve_api_url(project: Path) -> str:
    """PREFECT_API_URL when set, else the project's server from `backtest server up`; it must answer."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        info = read_info(project)
        if info is None:
            raise ServerError(
                "no Prefect server: start one with `backtest server up` (or set PREFECT_API_URL to a server)"
            )
        url = info.api_url
    if not is_healthy(url):
        raise ServerError(f"the Prefect server at {url} does not answer: start it with `backtest server up`")
    return url


@contextlib.contextmanager
def api_client(api_url: str) -> Iterator[Any]:
    """A synchronous Prefect client for ``api_url``, whatever this process's own settings say."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def ensure_work_pool(api_url: str, name: str) -> bool:
    """Create a process work pool with the process worker's job template; False when it already existed."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    with api_client(api_url) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        except ObjectAlreadyExists:
            return False
    return True


def project_deployments(project: Path) -> list[dict[str, Any]]:
    """The deployments of the project's prefect.yaml (YAML anchors resolved), each checked for its entrypoint."""
    import yaml

    try:
        config = yaml.safe_load((project / "prefect.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ServerError(f"cannot read {project / 'prefect.yaml'}: {exc}") from None
    deployments = config.get("deployments") or []
    if not deployments:
        raise ServerError(f"{project / 'prefect.yaml'} defines no deployments")
    return deployments


def choose_deployments(project: Path, names: list[str] | None = None) -> list[str]:
    """The deployments of prefect.yaml to deploy: the named ones, all must exist; else all whose flow exists."""
    deployments = {d["name"]: d for d in project_deployments(project)}
    unknown = [n for n in names or [] if n not in deployments]
    if unknown:
        raise ServerError(
            f"no deployment {', '.join(map(repr, unknown))} in prefect.yaml; it has: {', '.join(deployments)}"
        )
    missing = {
        name: str(d.get("entrypoint", ""))
        for name, d in deployments.items()
        if not (project / str(d.get("entrypoint", "")).partition(":")[0]).is_file()
    }
    for name in names or []:
        if name in missing:
            raise ServerError(
                f"deployment {name!r}: its entrypoint {missing[name]!r} is not a file in {project}"
            )
    # all of them: a deployment whose flow is not in this checkout is left out, and said so
    for name, entry in missing.items():
        typer.echo(f"warning: skipping deployment {name!r}: its entrypoint {entry!r} is not a file", err=True)
    chosen = names or [n for n in deployments if n not in missing]
    if not chosen:
        raise ServerError("no deployment of prefect.yaml has its entrypoint in this project")
    return chosen


def deploy_project(project: Path, api_url: str, chosen: list[str]) -> None:
    """``prefect --no-prompt deploy`` from the project folder: it reads prefect.yaml as the Prefect docs say."""
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy"]
    cmd += [arg for name in chosen for arg in ("--name", name)]
    env = {**os.environ, **TELEMETRY_OFF, "PREFECT_API_URL": api_url}
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log = server_dir(project) / "deploy.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr)
        lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        raise ServerError(
            f"`prefect deploy` failed: {lines[-1] if lines else 'no output'} (full output: {log})"
        )


@dataclass(frozen=True)
class DeploymentRow:
    name: str
    work_pool: str | None
    schedules: tuple[str, ...]


def list_deployments(api_url: str) -> list[DeploymentRow]:
    with api_client(api_url) as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    rows = []
    for d in deployments:
        schedules = tuple(
            f"{getattr(s.schedule, 'cron', None) or s.schedule} ({getattr(s.schedule, 'timezone', '')})"
            + ("" if s.active else " inactive")
            for s in d.schedules
        )
        rows.append(DeploymentRow(f"{flows.get(d.flow_id, '?')}/{d.name}", d.work_pool_name, schedules))
    return sorted(rows, key=lambda r: r.name)


def deploy(
    project: ProjectOption = Path("."),
    pool: Annotated[
        str, typer.Option("--pool", help="Process work pool (as in prefect.yaml).")
    ] = DEFAULT_POOL,
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Only this deployment (repeatable). Default: all.")
    ] = None,
) -> None:
    """Create the work pool and the deployments of prefect.yaml on the server (PREFECT_API_URL or `server up`)."""
    if not (project / "prefect.yaml").is_file():
        raise fail(
            f"no prefect.yaml in {project.resolve()}: run this in the project folder or give --project"
        )
    try:
        chosen = choose_deployments(project, name)  # prefect.yaml is checked before the server is touched
        api_url = resolve_api_url(project)
        created = ensure_work_pool(api_url, pool)
        deploy_project(project, api_url, chosen)
        rows = list_deployments(api_url)
    except ServerError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"work pool {pool}: {'created' if created else 'exists'}")
    for row in rows:
        typer.echo(f"deployment {row.name} on {row.work_pool}: {', '.join(row.schedules) or 'no schedule'}")
    typer.echo(f"start a worker in {project.resolve()}: prefect worker start --pool {pool}")


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``a.b=value``: a dotted key and a JSON value (a bare word that is not JSON stays a string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ServerError(f"bad --set {text!r}: write name=value, e.g. params.fees_bps=5")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip().split("."), value


def merged_parameters(defaults: Mapping[str, Any], assignments: list[str]) -> dict[str, Any]:
    """The deployment's parameters with each assignment applied at its dotted path (nested dicts merge)."""
    merged: dict[str, Any] = json.loads(json.dumps(dict(defaults)))
    for text in assignments:
        path, value = parse_assignment(text)
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return merged


def _http_detail(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response is None:
        return str(exc)
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return detail if isinstance(detail, str) else json.dumps(detail)


def trigger_run(api_url: str, name: str, assignments: list[str]) -> tuple[str, str]:
    """Create a flow run of deployment ``FLOW/DEPLOYMENT`` as the UI's Run form does; (run id, run name)."""
    import httpx
    from prefect.exceptions import ObjectNotFound

    if "/" not in name:
        raise ServerError(
            f"name deployments as FLOW/DEPLOYMENT, e.g. three-phase-study/nightly (got {name!r})"
        )
    with api_client(api_url) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            known = ", ".join(r.name for r in list_deployments(api_url)) or "none (run `backtest deploy`)"
            raise ServerError(f"no deployment {name!r} on {api_url}; deployments: {known}") from None
        parameters = merged_parameters(deployment.parameters, assignments)
        try:
            run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        except httpx.HTTPStatusError as exc:
            raise ServerError(f"the server refused the parameters: {_http_detail(exc)}") from None
    return str(run.id), run.name


def wait_for_run(api_url: str, run_id: str, timeout: float) -> tuple[str, str]:
    """Poll until the run is final; (state type, message)."""
    from uuid import UUID

    deadline = time.monotonic() + timeout
    with api_client(api_url) as client:
        while True:
            state = client.read_flow_run(UUID(run_id)).state
            if state is not None and state.type.value in FINAL_STATES:
                return state.type.value, state.message or ""
            if time.monotonic() > deadline:
                current = state.name if state else "no state"
                raise ServerError(f"flow run {run_id} is still {current} after {timeout:.0f} s")
            time.sleep(1.0)


def trigger(
    name: Annotated[
        str, typer.Argument(help="Deployment as FLOW/DEPLOYMENT, e.g. three-phase-study/nightly.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Parameter at a dotted path = JSON value, e.g. params.fees_bps=5 (repeat)."
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Wait for the run; exit 1 unless Completed.")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait with --watch.")] = 3600.0,
    project: ProjectOption = Path("."),
) -> None:
    """Run a deployment now with changed parameters, as the UI's Run form does (a worker must be running)."""
    try:
        api_url = resolve_api_url(project)
        run_id, run_name = trigger_run(api_url, name, set_ or [])
    except ServerError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"flow run {run_name} ({run_id}): {api_url.removesuffix('/api')}/runs/flow-run/{run_id}")
    if not watch:
        return
    try:
        state, message = wait_for_run(api_url, run_id, timeout)
    except ServerError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{state.capitalize()}: {message}".rstrip(": "))
    if state != "COMPLETED":
        raise typer.Exit(1)
