"""The cross-sectional study through the command line and the flow: chunked scores, blocks, the cache."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from typer.testing import CliRunner

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.ranking.portfolio import Construction
from backtest.ranking.study import run_cross_sectional
from cli.app import app

runner = CliRunner()
ARGS = [
    "--strategy",
    "momentum_rank",
    "--param",
    "lookback=21,63",
    "--param",
    "skip=0,5",
    "--param",
    "top=3,6",
    "--train-years",
    "2",
    "--validate-years",
    "1",
    "--test-years",
    "1",
    "--fees-bps",
    "10",
    "--chunk-size",
    "8",
    "--no-report",
    "--no-persist",
]


def test_a_ranking_strategy_runs_a_cross_sectional_study_chunked_as_in_memory(store, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--store", str(store.root), "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    assert "Completed" in result.output and "luck: 8 trials" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "cross_sectional" and summary["figures"]["kind"] == "cross_sectional"
    assert summary["counts"]["combinations"] == 8 and summary["cache"]["hits"] == 0
    for name in ("selections", "portfolio", "holdings", "grid_scores", "trials", "cscv"):
        assert len(pd.read_parquet(out / f"{name}.parquet")) > 0, name

    # three chunks of scores and two blocks of portfolios give the numbers of the whole market in memory
    config = StudyConfig(
        strategy="momentum_rank",
        grid=ParamGrid.from_mapping({"lookback": [21, 63], "skip": [0, 5], "top": [3, 6]}),
        folds=FoldSpec(2, 1, 1),
        fees_bps=10,
    )
    whole = run_cross_sectional(config, Construction(), store.load(store.symbols()))
    port = pd.read_parquet(out / "portfolio.parquet")
    np.testing.assert_array_equal(port["ret"].to_numpy(), whole.portfolio["ret"].to_numpy())
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "holdings.parquet"), whole.holdings, check_dtype=False
    )
    sel = pd.read_parquet(out / "selections.parquet")
    assert sel["combo"].tolist() == whole.selections["combo"].tolist()

    again = runner.invoke(app, ["run", "--store", str(store.root), "--out", str(out), *ARGS])
    assert again.exit_code == 0, again.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cache"]["misses"] == 0 and summary["cache"]["hits"] == summary["counts"]["chunks"]

    # a lost score file (a failed chunk, say) is the only thing recomputed
    files = sorted((store.root / "cache" / "ranking").glob("scores-*.npy"))
    assert len(files) == 3
    files[1].unlink()
    third = runner.invoke(app, ["run", "--store", str(store.root), "--out", str(out), *ARGS])
    assert third.exit_code == 0, third.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cache"]["misses"] == 1
    np.testing.assert_array_equal(pd.read_parquet(out / "portfolio.parquet")["ret"], port["ret"])


def test_portfolio_options_are_checked_before_any_work(store, tmp_path):
    base = ["run", "--store", str(store.root), "--out", str(tmp_path / "o")]
    both = runner.invoke(app, [*base, "--strategy", "momentum_rank", "--top", "5", "--quantile", "0.1"])
    assert both.exit_code == 1 and "not both" in both.output
    timing = runner.invoke(app, [*base, "--top", "5"])
    assert timing.exit_code == 1 and "ranking strategies only" in timing.output
    side = runner.invoke(app, [*base, "--strategy", "momentum_rank", "--param", "side=long,sideways"])
    assert side.exit_code == 1 and "unknown side 'sideways'" in side.output
    universe = tmp_path / "u.csv"
    universe.write_text("symbol,start\nA,2001-01-01\n")
    bad = runner.invoke(app, [*base, "--strategy", "momentum_rank", "--universe", str(universe), *ARGS[2:]])
    assert bad.exit_code == 1 and "missing end" in bad.output


def test_a_ranking_run_is_profiled_reported_and_persisted(store, tmp_path):
    """As a user runs it: the report (with each fold and the holdings), the profile of its score and block
    tasks, the run in the database, and the progress of every task."""
    from backtest.db.results import read_holdings, read_run
    from backtest.observe.report import RANKING_PLOT_TITLES

    out = tmp_path / "out"
    db = f"sqlite:///{store.root.resolve() / 'backtest.db'}"  # beside the store: where a run's results go
    args = [a for a in ARGS if a not in ("--no-report", "--no-persist")]
    result = runner.invoke(app, ["run", "--store", str(store.root), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    assert "no timings" not in result.output
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["counts"]
    assert counts["chunks"] == counts["score_chunks"] + counts["blocks"] and counts["blocks"] >= 1
    # the progress bar counts every task, the blocks included
    assert f"{counts['chunks']}/{counts['chunks']} chunks" in result.output
    profile = summary["profile"]
    assert set(profile["phases"]) == {"load", "scores", "portfolios"}
    assert profile["phases"]["scores"]["wall"] > 0 and profile["phases"]["portfolios"]["wall"] > 0
    page = (out / "report.html").read_text()
    assert summary["report"] == str(out / "report.html") and "<h2>Folds</h2>" in page
    drawn = {p.stem for p in (out / "report").iterdir() if p.suffix in (".png", ".svg")}
    assert drawn == set(RANKING_PLOT_TITLES)
    run = read_run(db, summary["flow_run_id"])
    assert run.state == "Completed" and run.summary["kind"] == "cross_sectional"
    assert len(read_holdings(db, run.id)) == len(pd.read_parquet(out / "holdings.parquet"))
    # the artifacts a user sees on the flow run in the UI, the progress at 100 % over every task
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(summary["flow_run_id"])])
            )
        )
    by_key = {a.key: a for a in found}
    assert {"study-progress", "study-summary", "study-report"} <= set(by_key)
    assert by_key["study-progress"].data == 100.0
    assert f"{counts['chunks']}/{counts['chunks']} chunks" in by_key["study-progress"].description
    assert "# Cross-sectional study: momentum_rank" in by_key["study-summary"].data


_FAIL_ON: dict[str, str] = {}  # symbol -> marker file: while it exists, scoring a chunk with it fails


def _flaky_rank(prices, lookback: int = 21):
    """Momentum, failing for a chunk that holds the symbol named in ``_FAIL_ON`` while its marker exists."""
    import os

    for symbol, marker in _FAIL_ON.items():
        if symbol in prices.symbols and os.path.exists(marker):
            raise RuntimeError(f"{symbol}: marker present")
    close = prices.close
    out = np.full(close.shape, np.nan, dtype=np.float32)
    out[:, lookback:] = close[:, lookback:] / close[:, :-lookback] - 1.0
    return out


def test_a_failed_score_chunk_fails_the_run_and_a_re_run_recomputes_only_it(store, tmp_path):
    from backtest.ranking import ranking_strategy

    ranking_strategy(
        _flaky_rank, name="flaky_rank", grid={"lookback": [21, 63]}, integer_params=("lookback",)
    )
    marker = tmp_path / "fail"
    marker.write_text("")
    symbols = store.symbols()
    _FAIL_ON.clear()
    _FAIL_ON[symbols[10]] = str(marker)  # in the second of three chunks of 8
    out = tmp_path / "out"
    args = [
        "run",
        "--store",
        str(store.root),
        "--out",
        str(out),
        "--strategy",
        "flaky_rank",
        "--top",
        "5",
        *ARGS[8:],
    ]
    failed = runner.invoke(app, args)
    assert failed.exit_code == 1, failed.output
    summary = json.loads((out / "summary.json").read_text())
    assert [c["chunk"] for c in summary["failed_chunks"]] == ["chunk-0001"]
    assert "marker present" in summary["failed_chunks"][0]["error"]
    assert (summary["cache"]["hits"], summary["cache"]["failed"]) == (0, 1)
    assert not (out / "portfolio.parquet").exists()  # no block runs without every chunk's scores

    marker.unlink()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    summary = json.loads((out / "summary.json").read_text())
    blocks = summary["counts"]["blocks"]
    # the two chunks scored before are hits; the failed one and the blocks (never formed) are computed
    assert (summary["cache"]["hits"], summary["cache"]["misses"]) == (2, 1 + blocks)
    assert len(pd.read_parquet(out / "portfolio.parquet")) > 0
