"""Flow runs started in this process (the CLI, the benchmark) skip the heartbeat thread unless configured; the
ephemeral server they start batches its task-run writes unless the user configured otherwise."""

from __future__ import annotations

import os

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

from flows.settings import SERVER_ENV, local_run_settings, prepare_environment


def test_heartbeats_are_off_for_local_runs_by_default():
    assert "heartbeat_frequency" not in get_current_settings().flows.model_fields_set
    with local_run_settings():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency is not None  # restored afterwards


def test_a_configured_heartbeat_frequency_is_kept():
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}), local_run_settings():
        assert get_current_settings().flows.heartbeat_frequency == 60


def test_the_ephemeral_server_batches_task_run_writes_unless_the_user_says_otherwise(monkeypatch):
    batch = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"
    flush = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"
    monkeypatch.delenv(flush, raising=False)
    monkeypatch.setenv(batch, "7")  # the user's own value
    prepare_environment()
    assert os.environ[batch] == "7" and os.environ[flush] == SERVER_ENV[flush]


def test_the_ephemeral_server_gets_time_for_its_first_start_unless_the_user_says_otherwise(monkeypatch):
    """A new PREFECT_HOME's first start migrates a database: longer than Prefect's 20 s on a busy machine."""
    timeout = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    monkeypatch.delenv(timeout, raising=False)
    prepare_environment()
    assert float(os.environ[timeout]) >= 120
    monkeypatch.setenv(timeout, "30")
    prepare_environment()
    assert os.environ[timeout] == "30"
