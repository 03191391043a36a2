"""`backtest bench` at a tiny size through the CLI, and the checks that make its comparisons fair."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmarks.compare import (
    CompactCloses,
    agreement,
    core_total_returns,
    exact_ties,
    naive_total_returns,
    sma_combos,
    vectorbt_version,
)
from benchmarks.suite import RATIO_KEYS
from cli.app import app

runner = CliRunner()


@pytest.mark.e2e
def test_bench_at_a_tiny_size_records_every_ratio_and_regenerates_the_readme(
    prefect_test_server, tmp_path, monkeypatch
):
    for key in ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        monkeypatch.setenv(key, {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}.get(key, "false"))
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nhand-written text stays\n")
    results = tmp_path / "results"
    args = ["bench", "--symbols", "16", "--years", "8", "--slice-symbols", "8"]
    args += ["--data", str(tmp_path / "data"), "--results", str(results), "--readme", str(readme)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Ratios" in result.output and "Goals" in result.output

    (path,) = results.glob("bench-*.json")
    payload = json.loads(path.read_text())
    assert payload["machine"]["logical_cores"] >= 1 and payload["sizes"]["symbols"] == 16
    assert payload["problems"] == []
    has_vectorbt = vectorbt_version() is not None
    for key in RATIO_KEYS:
        value = payload["ratios"][key]
        if "vectorbt" in key and not has_vectorbt:
            assert value is None
            continue
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert payload["ratios"]["cache_hit_rate_warm"] == 1.0
    assert [r["symbols"] for r in payload["core"]["symbols_scaling"]] == [2, 4, 8, 16]
    assert [r["combinations"] for r in payload["core"]["grid_scaling"]] == [16, 64, 256]
    assert payload["slice"]["naive"]["check"]["ok"]
    if has_vectorbt:
        assert payload["slice"]["vectorbt"]["check"]["ok"]
        assert payload["slice"]["vectorbt"]["check"]["compared"] > 0
    names = {g["name"] for g in payload["goals"]}
    assert "warm / cold" in names and "W through Prefect, cold, s" in names

    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text stays\n")
    assert f"`{path.name}`" in text and "<!-- bench-results:end -->" in text
    assert (results / "scaling.png").stat().st_size > 0
    # --table regenerates the same section in place instead of appending another
    again = runner.invoke(app, ["bench", "--table", "--results", str(results), "--readme", str(readme)])
    assert again.exit_code == 0, again.output
    assert readme.read_text().count("<!-- bench-results:start") == 1


def test_exact_ties_are_found_in_whole_cents_and_other_differences_fail_the_check():
    # SMA(2) and SMA(4) are both 10.5 on the 4th bar: a tie only rounding decides
    closes = np.array([[10.0, 11.0, 10.0, 11.0, 12.0, 13.0], [10.0, 10.5, 11.25, 12.0, 11.0, 10.0]]).T
    data = CompactCloses(("TIE", "NOTIE"), closes, np.array([6, 6]))
    combos = np.array([[2.0, 4.0, 0.0]])
    assert exact_ties(data, combos)[:, 0].tolist() == [True, False]
    core = np.array([[0.5], [0.25]])
    other = core + np.array([[0.1], [0.0]])
    assert agreement("x", data.symbols, core, other, exact_ties(data, combos)).ok
    worse = core + np.array([[0.0], [2e-6]])
    check = agreement("x", data.symbols, core, worse, exact_ties(data, combos))
    assert not check.ok and check.worst == ("NOTIE", 0) and check.max_abs_diff == pytest.approx(2e-6)


def test_naive_pandas_and_the_core_kernel_agree_with_fees_on_ragged_histories():
    from backtest.data.synthetic import generate_panel

    panel = generate_panel(6, 8.0, seed=3)  # late listings, delistings and missing days
    combos = sma_combos(16)
    core = core_total_returns(panel, combos, 0.001)
    naive = naive_total_returns(panel, combos, 0.001, workers=2)
    ties = exact_ties(CompactCloses.from_panel(panel), combos)
    check = agreement("naive", panel.symbols, core, naive, ties)
    assert check.ok and check.compared > 0, check
    assert not np.allclose(core, core_total_returns(panel, combos, 0.0))  # fees matter


def test_flow_checks_catch_wrong_cache_behaviour_counts_and_figures():
    from benchmarks.suite import check_flow_run

    core = {
        "symbols": 16,
        "combinations": 100,
        "folds": 1,
        "symbols_with_results": 14,
        "portfolio_sharpe": 0.5,
        "portfolio_total_return": 0.2,
    }
    run = {
        "label": "flow warm",
        "state": "Completed",
        "summary": {
            "counts": {"symbols": 16, "combinations": 100, "folds": 1, "chunks": 2},
            "cache": {"hits": 2, "misses": 0, "failed": 0},
        },
        "figures": {"symbols_with_results": 14, "portfolio": {"sharpe": 0.5, "total_return": 0.2}},
    }
    assert check_flow_run(run, 2, 0, core) == []
    assert "cache 2 hits / 0 misses" in check_flow_run(run, 0, 2, core)[0]
    wrong = {
        **run,
        "figures": {"symbols_with_results": 14, "portfolio": {"sharpe": 0.51, "total_return": 0.2}},
    }
    assert "portfolio sharpe" in check_flow_run(wrong, 2, 0, core)[0]
    failed = {**run, "state": "Failed", "error": "ValueError: boom"}
    assert check_flow_run(failed, 2, 0, core) == ["flow warm: flow state Failed (ValueError: boom)"]


def test_bench_refuses_bad_input_with_one_clear_line(tmp_path):
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data folder should be")
    result = runner.invoke(app, ["bench", "--quick", "--data", str(not_a_folder), "--no-save"])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot use") and result.output.count("\n") == 1
    too_small = runner.invoke(app, ["bench", "--symbols", "3", "--no-save"])
    assert too_small.exit_code != 0 and "--symbols" in too_small.output


def test_rss_sampler_counts_a_child_started_while_it_runs():
    # the child list is looked up every children_every seconds, not every sample: a child started after
    # the sampler is still found, and its memory counted in the tree's peak (a 300 MB child, checked for
    # 190 MB: room for this process's own RSS to move between samples)
    import subprocess
    import sys
    import time

    from benchmarks.measure import RssSampler

    code = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(5)"
    with RssSampler(interval=0.01, children=True, children_every=0.1) as rss:
        time.sleep(0.05)
        child = subprocess.Popen([sys.executable, "-c", code])
        try:
            deadline = time.monotonic() + 20
            while rss.peak_tree - rss.peak_self < 190 * 2**20 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            child.kill()
            child.wait()
    assert rss.peak_tree - rss.peak_self >= 190 * 2**20
    with RssSampler(interval=0.01, children=False) as alone:
        time.sleep(0.03)
    assert alone.peak_tree == alone.peak_self
