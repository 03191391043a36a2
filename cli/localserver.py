"""The project's local Prefect server: started in the background by the first command that needs an API, then
reused by every later command until it has been idle for a while.

A Prefect server takes 10 s or more to start (more on a new PREFECT_HOME, whose database is migrated first),
which a command that starts Prefect's ephemeral server pays every time. This server outlives the command:

- It belongs to the project folder: PREFECT_HOME is ``<project>/data/prefect``; ``server.json`` there records
  the process, port, Prefect version and idle limit, and ``backtest server up|down|status`` manage the same
  server.
- ``ensure_server`` finds a healthy recorded server or starts one (a free port on 127.0.0.1) and returns at
  once: the caller does its own start-up work (imports, kernels) while the server starts, then waits for it.
  A lock on ``server.lock`` makes two commands started together start one server. A record whose process is
  gone, whose home is another folder's or whose Prefect version differs is not reused.
- The server runs under a small supervisor (``python -m cli.localserver``, the leader of its own session):
  it stops the server once nothing has used it for its idle limit (``touch`` marks a use; a flow run still
  running counts as one) and removes the record; ``server down`` stops both at once.
- A ``PREFECT_API_URL`` the user set always wins, and ``BACKTEST_EPHEMERAL=1`` (or ``--ephemeral``) keeps
  Prefect's ephemeral server (``use_local_server``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from flows.settings import SERVER_ENV, TELEMETRY_OFF

HOST = "127.0.0.1"
#: minutes of idleness after which a server started by a command stops (``BACKTEST_SERVER_IDLE_MINUTES``)
DEFAULT_IDLE_MINUTES = 30.0
IDLE_ENV = "BACKTEST_SERVER_IDLE_MINUTES"
EPHEMERAL_ENV = "BACKTEST_EPHEMERAL"
#: how long a command waits for a starting server (a new home's migrations on a busy machine included)
START_TIMEOUT = 120.0
RECORD = "server.json"
LOCK = "server.lock"
USED = "last-used"
LOG = "server.log"
DB = "prefect.db"  # Prefect's SQLite database in its home (when no other database is configured)
#: a copy of a freshly migrated database, per Prefect version, for every new home of this machine; ``off``
#: (or another path) in this variable
TEMPLATE_ENV = "BACKTEST_PREFECT_DB_TEMPLATE"
_DB_URL_ENVS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
_SUPERVISOR = "cli.localserver"


class ServerError(Exception):
    """A server problem to report as one line."""


@dataclass(frozen=True)
class ServerInfo:
    """What the record says: enough to find, use and stop that server again."""

    pid: int  # the supervisor's (the leader of the server's process group)
    host: str
    port: int
    home: str
    log: str
    prefect: str = ""  # the Prefect version that runs it
    idle_minutes: float = 0.0  # 0: it never stops on its own
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def server_dir(project: Path) -> Path:
    return project.resolve() / "data" / "prefect"


def state_file(project: Path) -> Path:
    return server_dir(project) / RECORD


def prefect_version() -> str:
    return metadata.version("prefect")


def use_local_server(ephemeral: bool = False) -> bool:
    """Whether a command should use (and if needed start) the project's server: not when the user named a
    server in ``PREFECT_API_URL``, nor when they asked for Prefect's ephemeral server."""
    if ephemeral or os.environ.get(EPHEMERAL_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return False
    return not os.environ.get("PREFECT_API_URL")


def idle_minutes_from_env(default: float = DEFAULT_IDLE_MINUTES) -> float:
    raw = os.environ.get(IDLE_ENV)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ServerError(f"{IDLE_ENV}={raw!r} is not a number of minutes (0: never stop)") from None
    if value < 0:
        raise ServerError(f"{IDLE_ENV}={raw!r}: give 0 (never stop) or a positive number of minutes")
    return value


def free_port(host: str = HOST) -> int:
    """A port nobody listens on now (the OS picks it); a race with another program is possible but rare."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_is_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def alive(pid: int) -> bool:
    """The process exists and is one of ours: a Prefect server or its supervisor (a recycled process id of
    another program is not ours to stop or to trust)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # exited, not yet reaped
        return False
    joined = b" ".join(cmdline)
    return _SUPERVISOR.encode() in joined or (b"prefect" in joined and b"server" in cmdline)


def read_info(project: Path) -> ServerInfo | None:
    path = state_file(project)
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(ServerInfo)}
        return ServerInfo(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def write_info(project: Path, info: ServerInfo) -> None:
    from backtest.atomic import write_json

    write_json(state_file(project), asdict(info))


def usable(info: ServerInfo | None, project: Path) -> str | None:
    """Why a recorded server cannot be used by this command (None: it can, once healthy)."""
    if info is None:
        return "no server recorded"
    if not alive(info.pid):
        return f"its process {info.pid} is gone"
    if Path(info.home).resolve() != server_dir(project):
        return f"it belongs to {info.home}"
    if info.prefect and info.prefect != prefect_version():
        return f"it runs Prefect {info.prefect}, this command Prefect {prefect_version()}"
    return None


def touch(project: Path) -> None:
    """Mark the project's server as used now (its idle time starts again)."""
    with contextlib.suppress(OSError):
        server_dir(project).mkdir(parents=True, exist_ok=True)
    touch_home(server_dir(project))


def touch_home(home: Path) -> None:
    with contextlib.suppress(OSError):
        (home / USED).touch()


@contextlib.contextmanager
def locked(project: Path, timeout: float = START_TIMEOUT) -> Iterator[None]:
    """The project's server lock: one command at a time decides whether to start a server."""
    folder = server_dir(project)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"another command holds {folder / LOCK} for more than {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Started:
    """A server found or started by ``ensure_server``: ``new`` when this command started it."""

    info: ServerInfo
    new: bool
    replaced: str | None = None  # why a recorded server was not reused

    def wait(self, timeout: float = START_TIMEOUT) -> ServerInfo:
        """Until the server answers; a server that exits or does not answer in time is an error."""
        deadline = time.monotonic() + timeout
        while True:
            if is_healthy(self.info.api_url, timeout=1.0):
                return self.info
            if not alive(self.info.pid):
                raise ServerError(
                    f"the Prefect server exited while starting:\n{log_tail(Path(self.info.log))}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the Prefect server did not answer within {timeout:.0f} s (log: {self.info.log})"
                )
            time.sleep(0.1)


def ensure_server(project: Path, *, port: int = 0, idle_minutes: float | None = None) -> Started:
    """The project's server: the recorded one when it can be used, else a new one started in the background.
    Returns at once; ``Started.wait`` waits until it answers. Marks the server as used."""
    idle = idle_minutes_from_env() if idle_minutes is None else idle_minutes
    with locked(project):
        info = read_info(project)
        why = usable(info, project)
        if why is None and info is not None:
            touch(project)
            return Started(info, new=False)
        if info is not None and alive(info.pid):
            stop(info)  # another version's or another home's server: not this command's to use
        state_file(project).unlink(missing_ok=True)
        new = spawn(project, port, idle)
        touch(project)
        return Started(new, new=True, replaced=why if info is not None else None)


def server_env(home: Path, port: int) -> dict[str, str]:
    """The environment of the server process: the batched task-run writes (``SERVER_ENV``, the user's own
    values win), no telemetry, its home, and the URL the UI must call."""
    env = {
        **SERVER_ENV,
        **os.environ,
        **TELEMETRY_OFF,
        "PREFECT_HOME": str(home),
        # the UI asks the server where its API is: without these it answers port 4200 whatever the port is
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://{HOST}:{port}/api",
    }
    env.pop("PREFECT_API_URL", None)  # the server is not a client of some other server
    return env


def spawn(project: Path, port: int, idle_minutes: float) -> ServerInfo:
    """Start the supervisor and its server in a session of their own (Ctrl-C in the command's terminal must
    not stop them); record them. Does not wait for the server."""
    if port == 0:
        port = free_port()
    elif not port_is_free(port):
        raise ServerError(
            f"port {port} on {HOST} is in use: choose another with --port N (or --port 0 for any free port)"
        )
    home = server_dir(project)
    home.mkdir(parents=True, exist_ok=True)
    seed_home(home)
    log = home / LOG
    args = [sys.executable, "-m", _SUPERVISOR, "--home", str(home), "--port", str(port)]
    args += ["--idle-minutes", str(idle_minutes), "--record", str(state_file(project))]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            cwd=home,
            env=server_env(home, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    info = ServerInfo(
        pid=proc.pid,
        host=HOST,
        port=port,
        home=str(home),
        log=str(log),
        prefect=prefect_version(),
        idle_minutes=idle_minutes,
        started_at=time.time(),
    )
    write_info(project, info)
    return info


def stop(info: ServerInfo, timeout: float = 20.0) -> None:
    """SIGTERM to the server's process group (the supervisor leads it), SIGKILL if it lingers."""
    if not alive(info.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.pid, os.WNOHANG)  # reap it when this process started it (tests)
        if not alive(info.pid) and not port_is_in_use(info.port, info.host):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGKILL)


def log_tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def last_used(home: Path, started_at: float) -> float:
    try:
        return max((home / USED).stat().st_mtime, started_at)
    except OSError:
        return started_at


def runs_in_flight(api_url: str) -> int | None:
    """Flow runs the server holds as pending, running or cancelling (None: it did not answer)."""
    import httpx

    body = {"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}}}
    try:
        response = httpx.post(f"{api_url}/flow_runs/count", json=body, timeout=5.0)
        response.raise_for_status()
        return int(response.json())
    except (httpx.HTTPError, ValueError):
        return None


# -- the migrated database of a new home ----------------------------------------------------------------------


def template_path() -> Path | None:
    """Where this machine keeps a freshly migrated database of this Prefect version (None: not used).

    A new home's first server start runs all of Prefect's migrations (about 12 s on 2 cores); the database
    they leave is the same for every project, so the first server of this machine keeps a copy and the
    servers of later projects start from it. Only for Prefect's own SQLite database in its home."""
    setting = os.environ.get(TEMPLATE_ENV, "").strip()
    if setting.lower() in {"off", "0", "no"} or any(os.environ.get(k) for k in _DB_URL_ENVS):
        return None
    if setting:
        return Path(setting)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "backtest" / f"prefect-{prefect_version()}.db"


def seed_home(home: Path) -> bool:
    """A new home's database copied from the machine's template; whether it was."""
    template = template_path()
    target = home / DB
    if template is None or target.exists() or not template.is_file():
        return False
    from backtest.atomic import atomic_path

    with contextlib.suppress(OSError), atomic_path(target) as tmp:
        shutil.copyfile(template, tmp)
    return target.exists()


def keep_template(home: Path) -> None:
    """A consistent copy of ``home``'s database (SQLite's online backup) as the machine's template."""
    import sqlite3

    template = template_path()
    if template is None or template.exists() or not (home / DB).is_file():
        return
    from backtest.atomic import atomic_path

    with contextlib.suppress(OSError, sqlite3.Error):
        template.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(template) as tmp:
            source, copy = sqlite3.connect(home / DB), sqlite3.connect(tmp)
            try:
                source.backup(copy)
            finally:
                copy.close()
                source.close()


# -- the supervisor ------------------------------------------------------------------------------------------


def supervise(home: Path, port: int, idle_minutes: float, record: Path) -> int:
    """Run ``prefect server start`` and watch it: stop it after ``idle_minutes`` without use (0: never) and
    when told to (SIGTERM), forget the record when it ends. Returns the exit code. A server that migrated a
    new home's database leaves a copy of it as the machine's template (``template_path``)."""
    migrates = not (home / DB).exists()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
        cwd=home,
        stdin=subprocess.DEVNULL,
    )
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    me = os.getpid()
    api_url = f"http://{HOST}:{port}/api"
    idle = idle_minutes * 60.0
    started = time.time()
    check = min(10.0, max(0.2, idle / 8.0)) if idle > 0 else 10.0
    reason = "stopped"
    while not stopping:
        if migrates and is_healthy(api_url, timeout=1.0):
            keep_template(home)
            migrates = False
        if server.poll() is not None:
            reason = f"the server exited with code {server.returncode}"
            break
        if idle > 0 and time.time() - last_used(home, started) > idle:
            in_flight = runs_in_flight(api_url)
            if in_flight == 0:
                reason = f"idle for {idle_minutes:g} minutes"
                break
            if in_flight:
                touch_home(home)  # a run going on is a use
        time.sleep(min(check, 0.5) if migrates else check)
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    _forget(record, me)
    print(f"backtest local server ({me}): {reason}", flush=True)
    return 0


def _forget(record: Path, pid: int) -> None:
    """Remove the record if it is still this supervisor's (a newer server may have replaced it)."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    if data.get("pid") == pid:
        record.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=_SUPERVISOR, description="Supervise the project's Prefect server.")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-minutes", type=float, default=DEFAULT_IDLE_MINUTES)
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args(argv)
    return supervise(args.home, args.port, args.idle_minutes, args.record)


if __name__ == "__main__":
    sys.exit(main())
