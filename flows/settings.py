"""Settings of the Prefect servers this project starts: the ephemeral server of ``backtest run``, ``backtest
server up`` and the tests' server. A module of its own, importing nothing, so that ``backtest``'s start-up and
the test session's configuration (which must run before Prefect is imported) stay light.

The task-run recorder writes task-run events in batches, at least once a second, instead of one SQLite
transaction per event (Prefect's default batch is 1). Measured on 2 cores: the server's CPU for a flow run of
16 tasks 0.65-0.71 s -> 0.32-0.35 s, on the cores the chunks compute on. It also takes away a stall: a flow run
created while the recorder commits event after event often fails once with "database is locked" (the server's
read-then-insert cannot be upgraded to a write), and Prefect's client retries it 2 s later; 6 of 8 flow runs
started back to back took 1.9-2.7 s instead of 0.3 s, none with batching. Task runs show in the UI at most a
second later.
"""

SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}
