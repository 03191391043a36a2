"""End to end on a real Prefect server: prefect.yaml deployed, a process worker, runs made as the UI makes them.

Order matters only for cost: the worker and the server are shared by the session.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from backtest.data.ingest import ingest_folder
from backtest.data.store import Store
from cli import server as cli_server
from cli.app import app
from flows.params import StudyParams
from tests.deploy.conftest import POOL, REPO_ROOT
from tests.deploy.runs import artifacts_of, retry_like_the_ui, start_run, task_runs_of, wait_final
from tests.flows.test_study_flow import assert_same_tables, core_tables, tables

pytestmark = pytest.mark.e2e  # deployments run by a real worker: the e2e group of .ci/run

SMALL = {
    "grid": {"fast": [5, 20], "slow": [60, 120]},
    "train_years": 3,
    "validate_years": 1,
    "test_years": 1,
    "fees_bps": 5,
    "chunk_size": 8,
    "workers": 2,
}


def expected_deployments() -> dict[str, dict]:
    """prefect.yaml's deployments whose flow file is in this checkout, by FLOW/NAME."""
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    flow_names = {
        "flows/study.py": "three-phase-study",
        "flows/ingest.py": "ingest-prices",
        "flows/db_maintenance.py": "db-maintenance",
    }
    found = {}
    for d in config["deployments"]:
        path = d["entrypoint"].partition(":")[0]
        if (REPO_ROOT / path).is_file():
            found[f"{flow_names[path]}/{d['name']}"] = d
    return found


def test_deploy_creates_the_pool_and_the_scheduled_deployments(deployed, api_url):
    expected = expected_deployments()
    assert {"three-phase-study/nightly", "ingest-prices/daily"} <= set(expected)
    rows = {r.name: r for r in cli_server.list_deployments(api_url)}
    assert set(rows) == set(expected), deployed
    with cli_server.api_client(api_url) as client:
        assert client.read_work_pool(POOL).type == "process"
        for name, spec in expected.items():
            d = client.read_deployment_by_name(name)
            assert d.work_pool_name == POOL
            got = [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules]
            assert got == [(s["cron"], s["timezone"], True) for s in spec["schedules"]], name
            assert d.job_variables == {"working_dir": "."}
            assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "."}}]
        study = client.read_deployment_by_name("three-phase-study/nightly")
    # the nightly study: weekdays, the design's 100-combination default grid, and a store relative to the project
    assert study.schedules[0].schedule.cron.endswith("* * 1-5")
    params = study.parameters["params"]
    assert params["store"] == "data/store"
    assert len(params["grid"]["fast"]) * len(params["grid"]["slow"]) == 100
    # the UI's form: every field of the study's parameters has a description and a default (a nested model's
    # default is made of its own fields' defaults)
    definitions = study.parameter_openapi_schema["definitions"]
    schema = definitions["StudyParams"]["properties"]
    assert {"strategy", "grid", "train_years", "fees_bps", "runner", "store"} <= set(schema)
    # and a cross-sectional study's portfolio options, the choices as menus
    assert {"top", "quantile", "side", "weighting", "max_weight", "rebalance", "universe"} <= set(schema)
    assert schema["side"]["enum"] == ["long", "long_short"]

    def has_default(field: dict) -> bool:
        if "$ref" in field:
            nested = definitions[field["$ref"].rsplit("/", 1)[-1]]["properties"]
            return all(has_default(f) for f in nested.values())
        return "default" in field

    assert [k for k, v in schema.items() if "description" not in v or not has_default(v)] == []
    # nothing machine-specific in the file the deployments come from
    text = (REPO_ROOT / "prefect.yaml").read_text()
    assert str(REPO_ROOT) not in text and "/home/" not in text and "/root" not in text


@pytest.mark.parametrize(
    ("change", "field"),
    [({"fees_bps": -1}, "fees_bps"), ({"train_years": "five"}, "train_years"), ({"top_k": 0}, "top_k")],
)
def test_the_server_refuses_parameters_of_the_wrong_type_or_range(deployed, api_url, tmp_path, change, field):
    with pytest.raises(httpx.HTTPStatusError) as caught:
        start_run(api_url, "three-phase-study/nightly", {"params": {"store": str(tmp_path), **change}})
    assert caught.value.response.status_code == 409
    assert field in caught.value.response.json()["detail"]


#: a cross-sectional study from the momentum deployment, its grid made small, a choice given by name as the
#: UI's form takes it
RANKING = {
    "strategy": "momentum_rank",
    "grid": {"lookback": [21, 63], "skip": [0, 5], "top": [3, 6], "side": ["long", "long_short"]},
    "train_years": 2,
    "validate_years": 1,
    "test_years": 1,
    "fees_bps": 5,
    "chunk_size": 8,
    "workers": 2,
}

#: one run, to show a refusal fails the run before any task: every reason is checked without a server in
#: test_params.py, and each run here is another Python process importing Prefect on the worker (costly)
BAD = {"unknown strategy": {"strategy": "no_such_strategy"}}


@dataclass(frozen=True)
class Launched:
    """Flow runs started together at the beginning of the module, so the worker runs them side by side."""

    ok: UUID
    ok_store: Store
    ok_out: Path
    ok_params: dict
    failing: UUID
    failing_store: Store
    failing_out: Path
    failing_params: dict
    bad: dict[str, UUID]
    bad_store: Store
    maintenance: UUID
    ranking: UUID
    ranking_store: Store
    ranking_out: Path
    ranking_params: dict


@pytest.fixture(scope="module")
def launched(worker, api_url, synthetic_csv, flaky, tmp_path_factory) -> Launched:
    """What a user does in the UI's Run form: the study with its parameters filled in, several times."""
    folder = tmp_path_factory.mktemp("runs")
    stores = {}
    for name in ("ok", "failing", "bad", "ranking"):
        stores[name] = Store(folder / name / "store")
        ingest_folder(synthetic_csv, stores[name], workers=1, durable=False)
    flaky.marker.write_text(stores["failing"].symbols()[17])  # a symbol of chunk 2 of 3
    ok_params = {"store": str(stores["ok"].root), "out": str(folder / "ok" / "out"), **SMALL}
    failing_params = {
        "store": str(stores["failing"].root),
        "out": str(folder / "failing" / "out"),
        "strategy": flaky.name,
        **SMALL,
    }
    ranking_params = {"store": str(stores["ranking"].root), "out": str(folder / "ranking" / "out"), **RANKING}
    deployment = "three-phase-study/nightly"
    db = f"sqlite:///{folder / 'maintenance.db'}"
    created = CliRunner().invoke(app, ["db", "upgrade", "--db", db])
    assert created.exit_code == 0, created.output
    return Launched(
        ok=start_run(api_url, deployment, {"params": ok_params}),
        ok_store=stores["ok"],
        ok_out=folder / "ok" / "out",
        ok_params=ok_params,
        failing=start_run(api_url, deployment, {"params": failing_params}),
        failing_store=stores["failing"],
        failing_out=folder / "failing" / "out",
        failing_params=failing_params,
        bad={
            text: start_run(api_url, deployment, {"params": {"store": str(stores["bad"].root), **change}})
            for text, change in BAD.items()
        },
        bad_store=stores["bad"],
        maintenance=start_run(api_url, "db-maintenance/weekly", {"db": db}),
        ranking=start_run(api_url, "three-phase-study/momentum", {"params": ranking_params}),
        ranking_store=stores["ranking"],
        ranking_out=folder / "ranking" / "out",
        ranking_params=ranking_params,
    )


def test_bad_study_parameters_fail_the_run_before_any_work(launched, api_url):
    for text, run_id in launched.bad.items():
        state = wait_final(api_url, run_id)
        assert state.is_failed(), (text, state)
        assert text in state.message and "invalid parameters" in state.message
        assert task_runs_of(api_url, run_id) == []  # refused before the first task
    assert not (launched.bad_store.root / "cache").exists()


def test_a_run_from_the_deployment_completes_with_artifacts_and_results(launched, api_url):
    state = wait_final(api_url, launched.ok)
    assert state.is_completed(), state.message
    out = launched.ok_out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flow_run_id"] == str(launched.ok)
    assert summary["counts"] == {**summary["counts"], "symbols": 24, "chunks": 3, "combinations": 4}
    assert summary["cache"]["misses"] == 3 and summary["cache"]["failed"] == 0
    assert_same_tables(tables(out), core_tables(launched.ok_store, StudyParams(**launched.ok_params)))
    found = artifacts_of(api_url, launched.ok)
    assert {"study-progress", "study-chunks", "study-summary"} <= set(found)
    assert found["study-progress"].data == 100.0
    assert "# Three-phase study: sma_crossover" in found["study-summary"].data
    chunks = json.loads(found["study-chunks"].data)
    assert [row["chunk"] for row in chunks] == ["chunk-0000", "chunk-0001", "chunk-0002"]


def test_a_ranking_study_from_the_momentum_deployment_completes_as_in_memory(launched, api_url):
    from backtest.db.results import read_holdings, read_run
    from backtest.ranking.study import run_cross_sectional

    state = wait_final(api_url, launched.ranking)
    assert state.is_completed(), state.message
    out, store = launched.ranking_out, launched.ranking_store
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "cross_sectional" and summary["counts"]["combinations"] == 16
    params = StudyParams(**launched.ranking_params)
    whole = run_cross_sectional(params.to_config(), params.construction(), store.load(store.symbols()))
    port = pd.read_parquet(out / "portfolio.parquet")
    np.testing.assert_array_equal(port["ret"].to_numpy(), whole.portfolio["ret"].to_numpy())
    assert pd.read_parquet(out / "selections.parquet")["combo"].tolist() == whole.selections["combo"].tolist()
    found = artifacts_of(api_url, launched.ranking)
    assert {"study-progress", "study-summary", "study-report"} <= set(found)
    assert found["study-progress"].data == 100.0
    assert "# Cross-sectional study: momentum_rank" in found["study-summary"].data
    assert (out / "report.html").exists() and "<h2>Folds</h2>" in (out / "report.html").read_text()
    db = f"sqlite:///{store.root.resolve() / 'backtest.db'}"
    run = read_run(db, str(launched.ranking))
    assert run.state == "Completed" and len(read_holdings(db, run.id)) == len(whole.holdings)


def test_the_weekly_maintenance_deployment_runs(launched, api_url):
    state = wait_final(api_url, launched.maintenance)
    assert state.is_completed(), state.message
    assert artifacts_of(api_url, launched.maintenance), "the maintenance report is published as artifacts"


def test_a_failed_chunk_fails_the_run_and_the_ui_retry_recomputes_only_it(launched, api_url, flaky):
    store, out, run_id = launched.failing_store, launched.failing_out, launched.failing
    symbols = store.symbols()
    state = wait_final(api_url, run_id)
    assert state.is_failed(), state.message
    assert "chunk-0002" in state.message and "1 of 3 chunks failed" in state.message
    summary = json.loads((out / "summary.json").read_text())
    assert [c["chunk"] for c in summary["failed_chunks"]] == ["chunk-0002"]
    assert "marker present" in summary["failed_chunks"][0]["error"]
    first_calls = flaky.calls()
    assert sorted(set(first_calls)) == sorted({symbols[0], symbols[8], symbols[16]})

    flaky.marker.unlink()
    retry_like_the_ui(api_url, run_id)
    state = wait_final(api_url, run_id)
    assert state.is_completed(), state.message
    again = flaky.calls()[len(first_calls) :]
    assert again and set(again) == {symbols[16]}, "only the failed chunk may run again"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flow_run_id"] == str(run_id) and summary["state"] == "Completed"
    assert summary["cache"]["failed"] == 0 and summary["cache"]["misses"] == 1
    # complete results: the same as the core computes in one go (the strategy module is importable here too)
    sys.path.insert(0, str(flaky.folder))
    try:
        expected = core_tables(store, StudyParams(**launched.failing_params))
    finally:
        sys.path.remove(str(flaky.folder))
        sys.modules.pop("flaky_strategies", None)
    assert_same_tables(tables(out), expected)


def test_the_ui_shows_the_finished_study_with_its_artifacts(launched, api_url, server, tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "deployments"))
    try:
        import ui_screenshot
    finally:
        sys.path.remove(str(REPO_ROOT / "deployments"))
    if ui_screenshot.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): no look at the UI")
    assert wait_final(api_url, launched.ok).is_completed()
    shot = ui_screenshot.capture(
        ui_screenshot.flow_run_url(server.url, str(launched.ok)), tmp_path / "run.png"
    )
    for shown in ("study-summary", "study-chunks", "study-progress", "three-phase-study", "Completed"):
        assert shown in shot.html, f"{shown} is not on the rendered page"
    check = ui_screenshot.check_png(shot.png)
    assert (check.width, check.height) == (ui_screenshot.WIDTH, ui_screenshot.HEIGHT)
    assert check.looks_like_a_page, check
    keep = os.environ.get("BACKTEST_UI_SCREENSHOT")
    if keep:  # CI or a developer can keep the picture to look at it
        shutil.copyfile(shot.png, keep)
