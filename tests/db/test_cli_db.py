"""The database commands through the CLI: the happy path, and bad input as one clear line with nothing written."""

from __future__ import annotations

import json
import socket

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from backtest.db import schema as s
from backtest.db.connect import forget_checks, open_db
from backtest.db.migrations import LATEST
from backtest.db.results import clear_result_cache
from cli.app import app

runner = CliRunner()


def one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_ingest_into_a_database_then_inspect_it(db_csv, tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    store = tmp_path / "store"
    first = runner.invoke(app, ["ingest", str(db_csv), "--store", str(store), "--db", url, "--workers", "1"])
    assert first.exit_code == 0, first.output
    assert "10 symbols written" in first.output
    again = runner.invoke(app, ["ingest", str(db_csv), "--store", str(store), "--db", url, "--workers", "1"])
    assert again.exit_code == 0 and "0 symbols written (0 rows), 10 unchanged" in again.output

    stats = runner.invoke(app, ["db", "stats", "--db", url, "--json"])
    assert stats.exit_code == 0, stats.output
    tables = {t["table"]: t["rows"] for t in json.loads(stats.output)["tables"]}
    assert tables["symbols"] == 10 and tables["prices"] > 10_000 and tables["runs"] == 0
    plans = runner.invoke(app, ["db", "query-plans", "--db", url])
    assert plans.exit_code == 0 and "SCAN" not in plans.output.replace("SCAN ", "")
    optimized = runner.invoke(app, ["db", "optimize", "--db", url, "--full"])
    assert optimized.exit_code == 0 and "ANALYZE" in optimized.output
    assert (
        runner.invoke(app, ["db", "upgrade", "--db", url]).output.strip()
        == f"schema version {LATEST}: up to date"
    )
    clear_result_cache()
    one_error_line(runner.invoke(app, ["results", "--db", url]), "no runs yet")


def test_optimize_vacuums_only_when_asked_to(tmp_path):
    url = f"sqlite:///{tmp_path / 'v.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--db", url]).exit_code == 0
    skipped = runner.invoke(app, ["db", "optimize", "--db", url, "--no-vacuum"])
    assert skipped.exit_code == 0 and skipped.output.rstrip().endswith("vacuum: skipped"), skipped.output
    forced = runner.invoke(app, ["db", "optimize", "--db", url, "--no-vacuum", "--force-vacuum"])
    assert forced.exit_code == 0 and forced.output.rstrip().endswith("vacuum: done"), forced.output


def test_upgrade_creates_a_new_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = runner.invoke(app, ["db", "upgrade", "--db", url, "--to", "1"])
    assert result.exit_code == 0 and result.output.strip() == "schema version 0 -> 1 (applied 1)"
    one_error_line(runner.invoke(app, ["db", "stats", "--db", url]), "schema version 1", "db upgrade")
    result = runner.invoke(app, ["db", "upgrade", "--db", url])
    assert result.exit_code == 0 and result.output.strip() == (
        f"schema version 1 -> {LATEST} (applied {', '.join(map(str, range(2, LATEST + 1)))})"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "needles"),
    [
        ("nonsense", ("malformed database URL",)),
        ("mysql://u:p@localhost/x", ("unsupported database 'mysql'",)),
        ("sqlite:///{tmp}/missing/dir/x.db", ("does not exist",)),
        ("postgresql+psycopg://u:hunter2@127.0.0.1:{port}/x", ("cannot connect to", "127.0.0.1")),
    ],
)
def test_bad_databases_stop_ingest_before_anything_is_written(db_csv, tmp_path, url, needles):
    url = url.format(tmp=tmp_path, port=_free_port())
    store = tmp_path / "store"
    result = runner.invoke(app, ["ingest", str(db_csv), "--store", str(store), "--db", url])
    one_error_line(result, *needles)
    assert "hunter2" not in result.output
    assert not store.exists()


def test_bad_databases_stop_run_and_reads(tmp_path):
    store = tmp_path / "s"
    for args, needle in (
        (
            ["run", "--store", str(store), "--out", str(tmp_path / "o"), "--db", "nonsense"],
            "malformed database URL",
        ),
        (["results", "--db", f"sqlite:///{tmp_path / 'none.db'}"], "no database at"),
        (["db", "stats", "--db", f"sqlite:///{tmp_path / 'none.db'}"], "no database at"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "none.db").exists() and not store.exists()


def test_a_newer_schema_is_refused_with_one_line(tmp_path):
    path = tmp_path / "future.db"
    url = f"sqlite:///{path}"
    with open_db(url, create=True).begin() as conn:
        conn.execute(
            sa.insert(s.schema_version).values(
                version=LATEST + 7, description="future", applied_at=sa.func.current_timestamp()
            )
        )
    forget_checks()
    before = path.read_bytes()
    for args in (["db", "stats"], ["db", "upgrade"], ["results"], ["db", "query-plans"]):
        one_error_line(runner.invoke(app, [*args, "--db", url]), f"schema version {LATEST + 7}", "newer")
    assert path.read_bytes() == before


def test_postgres_wrong_password_and_unknown_database(pg_server, db_csv, tmp_path):
    store = tmp_path / "store"
    wrong = pg_server.url("postgres", password="not-the-password")
    result = runner.invoke(app, ["ingest", str(db_csv), "--store", str(store), "--db", wrong])
    one_error_line(result, "cannot connect to", "password authentication failed")
    assert "not-the-password" not in result.output and not store.exists()
    missing = pg_server.url("no_such_db")
    one_error_line(runner.invoke(app, ["db", "stats", "--db", missing]), "cannot connect to", "no_such_db")


def test_ingest_into_postgres_through_the_cli(pg_url, db_csv, tmp_path):
    store = tmp_path / "store"
    result = runner.invoke(
        app, ["ingest", str(db_csv), "--store", str(store), "--db", pg_url, "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "10 symbols written" in result.output and "s3cret" not in result.output
    plans = runner.invoke(app, ["db", "query-plans", "--db", pg_url, "--json"])
    assert plans.exit_code == 0 and all(p["uses_index"] for p in json.loads(plans.output))


def test_results_are_read_back_by_run_and_symbol(chunk_results, tmp_path):
    from tests.db.persisting import persist

    url = f"sqlite:///{tmp_path / 'r.db'}"
    persist(url, [c for c, _ in chunk_results], flow_run_id="flow-xyz")
    clear_result_cache()
    latest = runner.invoke(app, ["results", "--db", url, "--json"])
    assert latest.exit_code == 0, latest.output
    data = json.loads(latest.output)
    assert data["run"]["flow_run_id"] == "flow-xyz"
    assert len(data["metrics"]) == sum(len(res.symbol_metrics) for _, res in chunk_results)
    symbol = chunk_results[0][1].symbol_metrics["symbol"].iloc[0]
    shown = runner.invoke(app, ["results", "--db", url, "--run", "flow-xyz", "--symbol", symbol])
    assert shown.exit_code == 0 and "Selections of" in shown.output and "fast=" in shown.output
    hostile = runner.invoke(app, ["results", "--db", url, "--symbol", "A'; DROP TABLE prices;--"])
    assert hostile.exit_code == 0 and "no results" in hostile.output
    stats = json.loads(runner.invoke(app, ["db", "stats", "--db", url, "--json"]).output)
    assert {t["table"] for t in stats["tables"]} >= {"prices", "selections", "runs"}
    one_error_line(runner.invoke(app, ["results", "--db", url, "--run", "42"]), "no run with id 42")
