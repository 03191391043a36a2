"""Runs of deployments through the API, as the UI's Run form and Retry button make them."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect.client.schemas.objects import State, StateType

from cli import server as cli_server

FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


def start_run(api_url: str, deployment: str, parameters: dict[str, Any]) -> UUID:
    """What the UI's form does: a flow run of the deployment with the form's parameters."""
    with cli_server.api_client(api_url) as client:
        d = client.read_deployment_by_name(deployment)
        return client.create_flow_run_from_deployment(d.id, parameters=parameters).id


def wait_final(api_url: str, run_id: UUID, timeout: float = 120.0) -> State:
    deadline = time.monotonic() + timeout
    with cli_server.api_client(api_url) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if state is not None and state.type in FINAL:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"flow run {run_id} still {state.name if state else None} after {timeout} s"
                )
            time.sleep(0.5)


def retry_like_the_ui(api_url: str, run_id: UUID) -> None:
    """The UI's Retry button: a forced Scheduled state named AwaitingRetry (prefect's UI source)."""
    with cli_server.api_client(api_url) as client:
        result = client.set_flow_run_state(
            run_id,
            State(type=StateType.SCHEDULED, name="AwaitingRetry", message="Retry from the UI"),
            force=True,
        )
    assert result.status.value == "ACCEPT", result


def artifacts_of(api_url: str, run_id: UUID) -> dict[str, Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with cli_server.api_client(api_url) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {a.key: a for a in found if a.key}


def task_runs_of(api_url: str, run_id: UUID) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with cli_server.api_client(api_url) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
