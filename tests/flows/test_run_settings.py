"""Flow runs started in this process (the CLI, the benchmark) skip the heartbeat thread unless configured."""

from __future__ import annotations

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

from flows.runs import local_run_settings


def test_heartbeats_are_off_for_local_runs_by_default():
    assert "heartbeat_frequency" not in get_current_settings().flows.model_fields_set
    with local_run_settings():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency is not None  # restored afterwards


def test_a_configured_heartbeat_frequency_is_kept():
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}), local_run_settings():
        assert get_current_settings().flows.heartbeat_frequency == 60
