"""`deployments/serve.py`: the same deployments as prefect.yaml, served without a work pool.

Runs after test_end_to_end (file order): serving replaces the work-pool deployments of the same names.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from backtest.data.ingest import ingest_folder
from backtest.data.store import Store
from cli import server as cli_server
from tests.deploy.conftest import REPO_ROOT, background, wait_until
from tests.deploy.runs import artifacts_of, start_run, wait_final
from tests.deploy.test_end_to_end import SMALL, expected_deployments


@pytest.mark.e2e
def test_serve_offers_the_prefect_yaml_deployments_and_runs_them(
    api_url, client_env, synthetic_csv, tmp_path
):
    expected = expected_deployments()
    log = tmp_path / "serve.log"
    env = {**client_env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    # started elsewhere on purpose: the script finds the project and its relative paths by itself
    with background(
        [sys.executable, str(REPO_ROOT / "deployments" / "serve.py")], tmp_path, env, log
    ) as proc:

        def served() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            names = {r.name: r for r in cli_server.list_deployments(api_url)}
            return set(expected) <= set(names) and all(names[n].work_pool is None for n in expected)

        wait_until(served, 90, "serve.py registering its deployments", log)

        with cli_server.api_client(api_url) as client:
            for name, spec in expected.items():
                d = client.read_deployment_by_name(name)
                assert d.pull_steps in (None, [])
                got = [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules]
                assert got == [(s["cron"], s["timezone"], True) for s in spec["schedules"]], name
                assert d.parameters == spec.get("parameters", {})
                assert d.description == spec["description"].strip()

        # a fresh store for the study, and the ingest flow filling another one, side by side
        study_store = Store(tmp_path / "study-store")
        ingest_folder(synthetic_csv, study_store, workers=1, durable=False)
        ingest_store = tmp_path / "ingest-store"
        ingest_run = start_run(
            api_url,
            "ingest-prices/daily",
            {"source": str(synthetic_csv), "store": str(ingest_store), "workers": 1},
        )
        empty = tmp_path / "empty"
        empty.mkdir()
        empty_run = start_run(
            api_url, "ingest-prices/daily", {"source": str(empty), "store": str(tmp_path / "empty-store")}
        )
        out = tmp_path / "out"
        study_run = start_run(
            api_url,
            "three-phase-study/nightly",
            {"params": {"store": str(study_store.root), "out": str(out), **SMALL}},
        )
        ingest_state = wait_final(api_url, ingest_run)
        study_state = wait_final(api_url, study_run)
        empty_state = wait_final(api_url, empty_run)

    assert ingest_state.is_completed(), ingest_state.message
    assert "24 files: 24 added" in ingest_state.message
    assert len(Store(ingest_store).symbols()) == 24
    summary = artifacts_of(api_url, ingest_run)["ingest-summary"].data
    assert "| added | 24 |" in summary and "| failed | 0 |" in summary

    assert empty_state.is_failed() and f"no *.csv or *.txt files in {empty}" in empty_state.message

    assert study_state.is_completed(), study_state.message
    with cli_server.api_client(api_url) as client:  # stopping serve.py left the finished runs as they were
        assert client.read_flow_run(study_run).state.is_completed()
        assert client.read_flow_run(ingest_run).state.is_completed()
    result = json.loads((out / "summary.json").read_text())
    assert result["flow_run_id"] == str(study_run) and result["counts"]["chunks"] == 3
    assert {"study-summary", "study-chunks"} <= set(artifacts_of(api_url, study_run))


def test_serve_refuses_unknown_deployment_names(tmp_path):
    import subprocess

    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "deployments" / "serve.py"), "--only", "hourly"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "no deployment hourly in prefect.yaml" in done.stderr and "Traceback" not in done.stderr
    names = [d["name"] for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]]
    assert all(n in done.stderr for n in names)
