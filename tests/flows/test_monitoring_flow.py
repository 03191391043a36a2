"""A run leaves its monitoring on the flow run (artifacts, alert events an automation turns into a
notification) and report.html in its folder; its peak RSS agrees with GNU time's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from backtest.observe.alerts import AlertThresholds
from flows.automations import create_alert_automation
from flows.params import StudyParams
from flows.study import three_phase_study

GRID = {"fast": [5, 20], "slow": [60, 120]}
TIME = Path("/usr/bin/time")


class Receiver:
    """A webhook on 127.0.0.1 that keeps the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, text: str, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [b for b in self.bodies if text in b.get("body", "")]
            if hits:
                return hits
            time.sleep(0.25)
        return []


def test_run_leaves_artifacts_report_and_alert_notifications(store, tmp_path):
    receiver = Receiver()
    automation = create_alert_automation(name=f"test-alerts-{uuid.uuid4().hex[:8]}", webhook_url=receiver.url)
    try:
        out = tmp_path / "out"
        params = StudyParams(
            store=str(store.root),
            out=str(out),
            grid=GRID,
            train_years=3,
            chunk_size=6,
            workers=2,
            monitor_interval=0.2,
            alerts=AlertThresholds(memory_percent=0.0),  # any machine is above 0 %: must fire, once
        )
        state = three_phase_study(params, return_state=True)
        assert state.is_completed(), state.message
        summary = json.loads((out / "summary.json").read_text())
        run_id = summary["flow_run_id"]

        kinds = [a["kind"] for a in summary["alerts"]]
        assert kinds.count("memory-high") == 1 and "cpu-high" not in kinds
        assert summary["peak_rss_bytes"] > 100 * 2**20
        assert 0 < summary["parallel_efficiency"] <= 1.05
        assert summary["cache_hit_rate"] == 0.0 and summary["profile"]["warm_cache"] is False
        assert 0 <= summary["orchestration_overhead_seconds"] < summary["wall_seconds"]
        assert summary["bottleneck"]["where"] and "classification" in summary["bottleneck"]
        assert summary["report"] == str(out / "report.html")
        assert summary["profile"]["publish_seconds"] > 0  # the report's own cost is on record
        page = (out / "report.html").read_text()
        assert page.count("<img ") == 7 and all(
            (out / "report" / f"{n}.png").exists() for n in ("equity", "grid", "luck")
        )
        doc = json.loads((out / "profile.json").read_text())
        assert [c["status"] for c in doc["chunks"]] == ["computed"] * 4
        assert all(c["cpu_s"] > 0 and c["attempts"] == 1 for c in doc["chunks"])
        fetched = [c["fetch_s"] for c in doc["chunks"] if c["fetch_s"] is not None]
        # a chunk whose price file an earlier test made reads it (the store fixture is shared): not fetched
        assert all(f > 0 for f in fetched) and len(fetched) == summary["cache"]["prices_fetched"]
        assert all(c["load_s"] > 0 for c in doc["chunks"])
        assert (out / "resources.parquet").exists()

        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)]))
            )
        by_key = {a.key: a for a in artifacts}
        assert {
            "study-progress",
            "study-summary",
            "study-chunks",
            "study-report",
            "study-chunk-profile",
        } <= set(by_key)
        assert by_key["study-report"].type == "markdown"
        assert "## Recommendations" in by_key["study-report"].data
        assert "memory-high" in by_key["study-report"].data
        assert by_key["study-chunk-profile"].type == "table"
        rows = json.loads(by_key["study-chunk-profile"].data)
        assert len(rows) == 4 and {"cpu_s", "io_wait_s", "peak_rss_mib", "class"} <= set(rows[0])
        progress = by_key["study-progress"]
        assert progress.data == 100.0 and "4/4 chunks" in progress.description
        assert "symbols/s" in progress.description

        # the alert event is on the flow run: the automation matched it and sent the notification
        notes = receiver.wait_for(run_id, timeout=45)
        assert notes and "backtest.alert.memory-high" in notes[0]["body"], receiver.bodies
    finally:
        automation.delete()
        receiver.server.shutdown()


@pytest.mark.skipif(not TIME.exists(), reason="GNU time not installed (Debian package time)")
def test_peak_rss_agrees_with_gnu_time(store, tmp_path):
    from prefect.settings import get_current_settings

    out = tmp_path / "out"
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    cmd = [
        str(TIME),
        "-v",
        sys.executable,
        "-c",
        "from cli.app import app; app()",
        "run",
        "--store",
        str(store.root),
        "--out",
        str(out),
        "--param",
        "fast=5,10,20",
        "--param",
        "slow=60,90,120",
        "--train-years",
        "3",
        "--workers",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    summary = json.loads((out / "summary.json").read_text())
    ours = summary["profile"]["peak_flow_process_rss_bytes"]
    theirs = kib * 1024
    assert abs(ours - theirs) <= 0.2 * theirs, (
        f"monitor {ours / 2**20:.0f} MiB, time {theirs / 2**20:.0f} MiB"
    )
    # the whole tree is this process alone here (a server already up, thread workers)
    assert summary["peak_rss_bytes"] >= ours


def test_cli_creates_the_alert_automation_or_says_why_not():
    from prefect.automations import Automation
    from typer.testing import CliRunner

    from cli.app import app

    name = f"cli-alerts-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(
        app, ["alerts-automation", "--webhook", "http://127.0.0.1:9/hook", "--name", name]
    )
    assert result.exit_code == 0, result.output
    automation = Automation.read(name=name)
    try:
        assert automation.enabled and automation.trigger.expect == {"backtest.alert.*"}
        # again without --webhook: reuses the block saved under the automation's name, replaces the automation
        again = CliRunner().invoke(app, ["alerts-automation", "--name", name])
        assert again.exit_code == 0, again.output
        assert Automation.read(name=name).id != automation.id
    finally:
        Automation.read(name=name).delete()
    missing = CliRunner().invoke(app, ["alerts-automation", "--name", f"none-{uuid.uuid4().hex[:6]}"])
    assert missing.exit_code == 1 and missing.output.startswith("error: could not create the automation")
    assert "Traceback" not in missing.output
