"""Every Prefect setting this project sets, in one place: for the servers it starts (the ephemeral server of
``backtest run``, ``backtest server up``, the tests' server), for the processes that run flows, and for the
tools it calls (``prefect deploy``). Importing nothing at the top, so that ``backtest``'s start-up and the
test session's configuration (which must run before Prefect is imported) stay light.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

#: no internet here, and no reason to report usage anywhere: telemetry only makes noise and delay
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}

#: The task-run recorder writes task-run events in batches, at least once a second, instead of one SQLite
#: transaction per event (Prefect's default batch is 1). That halves the server's CPU for a flow run, on the
#: cores the chunks compute on, and takes away a stall: a flow run created while the recorder commits event
#: after event can fail once with "database is locked", and Prefect's client retries it 2 s later.
#: Task runs show in the UI at most a second later (docs/benchmarks.md has the measurements).
SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}

#: logs still go to the Prefect API (and the UI); the terminal shows the progress bar instead
QUIET_CONSOLE = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}

#: the ephemeral server's first start in a new PREFECT_HOME migrates its database, which on a busy 2-core
#: machine can exceed Prefect's 20 s default
EPHEMERAL_ENV = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}

#: a process that runs a flow itself, with an ephemeral server inheriting its environment
LOCAL_RUN_ENV = {**TELEMETRY_OFF, **QUIET_CONSOLE, **SERVER_ENV, **EPHEMERAL_ENV}


def prepare_environment(verbose: bool = False, env: MutableMapping[str, str] = os.environ) -> None:
    """Settings Prefect reads at import: set before the first ``import prefect`` (users' values win)."""
    for key, value in LOCAL_RUN_ENV.items():
        if verbose and key in QUIET_CONSOLE:
            continue
        env.setdefault(key, value)


@contextmanager
def local_run_settings() -> Iterator[None]:
    """Prefect settings for a flow run started in this process (``backtest run``/``demo``, the benchmark).

    Flow-run heartbeats are off unless configured. A synchronous flow ends by joining its heartbeat thread,
    which sleeps in whole seconds: every run took up to a second longer, much of a warm run. Heartbeats serve
    a server-side automation that marks runs crashed when they stop; this project creates none, and a run in
    this process reports its own crash on the terminal. A frequency set in the environment or the Prefect
    profile is kept, and the runs of deployments use their worker's settings.
    """
    from prefect.context import SettingsContext, get_settings_context

    context = get_settings_context()
    settings = context.settings
    if "heartbeat_frequency" in settings.flows.model_fields_set:
        yield
        return
    # a copy of the two models, not Prefect's temporary_settings: that rebuilds every setting from the
    # environment and the profile (0.16 s a run, measured)
    flows = settings.flows.model_copy(update={"heartbeat_frequency": None})
    with SettingsContext(profile=context.profile, settings=settings.model_copy(update={"flows": flows})):
        yield
