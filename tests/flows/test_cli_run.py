import json

import pandas as pd
from typer.testing import CliRunner

from cli.app import app

runner = CliRunner()


def test_run_on_real_data_end_to_end_then_from_cache(sp500_dir, tmp_path):
    store = tmp_path / "store"
    assert runner.invoke(app, ["ingest", str(sp500_dir), "--store", str(store)]).exit_code == 0
    args = [
        "run",
        "--store",
        str(store),
        "--out",
        str(tmp_path / "out"),
        "--param",
        "fast=5,20",
        "--param",
        "slow=50:150:50",
        "--train-years",
        "2",
        "--validate-years",
        "1",
        "--test-years",
        "1",
        "--fees-bps",
        "5",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Completed" in result.output and "sharpe" in result.output
    assert "luck: 6 trials, PBO" in result.output and "deflated Sharpe" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["symbols"] == 505 and summary["counts"]["combinations"] == 6
    assert summary["counts"]["folds"] == 2 and summary["cache"]["hits"] == 0
    assert summary["config"]["grid"] == {"fast": [5.0, 20.0], "slow": [50.0, 100.0, 150.0]}
    for name in ("selections", "oos_returns", "oos_metrics", "portfolio", "grid_scores", "trials", "cscv"):
        assert len(pd.read_parquet(tmp_path / "out" / f"{name}.parquet")) > 0
    luck = summary["figures"]["overfitting"]
    assert luck["trials"] == 6 and 0.0 <= luck["pbo"] <= 1.0 and 0.0 <= luck["spa_pvalue"] <= 1.0
    oos = pd.read_parquet(tmp_path / "out" / "oos_returns.parquet")
    assert oos["date"].min() == pd.Timestamp("2016-02-08")  # the first test window starts after 2 + 1 years

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cache"]["misses"] == 0 and summary["cache"]["hits"] == summary["counts"]["chunks"]


def test_run_refuses_bad_input_with_one_clear_line(tmp_path):
    missing = runner.invoke(app, ["run", "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 1 and "is not a price store" in missing.output
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "catalog.parquet").write_bytes(b"")
    bad = runner.invoke(
        app, ["run", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--param", "fast=x"]
    )
    assert bad.exit_code == 1 and "values must be numbers" in bad.output
    bad = runner.invoke(
        app, ["run", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--strategy", "nope"]
    )
    assert bad.exit_code == 1 and "unknown strategy 'nope'" in bad.output
    base = ["run", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
    odd = runner.invoke(app, [*base, "--pbo-blocks", "7"])
    assert odd.exit_code == 1 and "pbo_blocks" in odd.output and "multiple of 2" in odd.output
    assert runner.invoke(app, [*base, "--pbo-blocks", "22"]).exit_code == 2  # outside 2..20: a usage error
    assert "Traceback" not in bad.output


def test_demo_runs_and_reuses_what_exists(tmp_path):
    args = ["demo", "--folder", str(tmp_path / "demo"), "--symbols", "12", "--years", "7"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "synthetic market: 12 symbols" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "reusing" in second.output and "12 unchanged" in second.output
    summary = json.loads((tmp_path / "demo" / "results" / "summary.json").read_text())
    assert summary["cache"]["misses"] == 0


def test_run_without_report_or_database_then_the_report_later(store, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--store", str(store.root), "--out", str(out), "--train-years", "3", "--chunk-size", "8"]
    args += ["--param", "fast=5,20", "--param", "slow=60", "--no-report", "--no-persist"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "Completed" and summary["report"] is None and "db" not in summary
    assert (out / "profile.json").exists() and (out / "selections.parquet").exists()
    assert not (out / "report.html").exists() and not (out / "report").exists()
    assert not (store.root / "backtest.db").exists()  # nothing written into the default database
    later = runner.invoke(app, ["report", str(out)])
    assert later.exit_code == 0, later.output
    assert (out / "report.html").exists() and any((out / "report").glob("*.png"))
