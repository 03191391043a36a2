"""Running the study flow from the command line: environment, live progress, and the printed summary."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from backtest.engine.metrics import HEADLINE_METRICS
from flows.settings import local_run_settings


class Api:
    """Where a command's flow run talks to Prefect: the project's local server (started in the background
    when none runs: ``cli.localserver``), the user's ``PREFECT_API_URL``, or Prefect's ephemeral server.

    Made before the command's other start-up work, so that a server starting meanwhile does not keep the
    command waiting in sequence; ``ready`` waits for it, warming the study's kernels while it does."""

    def __init__(self, console: Console, ephemeral: bool = False, project: Path = Path(".")) -> None:
        from cli.localserver import ServerError, ensure_server, use_local_server

        self.console, self.project = console, project
        self.started = None
        self._warm: threading.Thread | None = None
        if not use_local_server(ephemeral):
            return
        try:
            self.started = ensure_server(project)
        except ServerError as exc:
            raise ApiError(str(exc)) from None
        os.environ["PREFECT_API_URL"] = self.started.info.api_url  # before Prefect reads its settings
        if self.started.new:
            info = self.started.info
            why = (
                f" (the recorded one is not usable: {self.started.replaced})" if self.started.replaced else ""
            )
            stops = (
                f"stops after {info.idle_minutes:g} minutes unused"
                if info.idle_minutes
                else "runs until stopped"
            )
            console.print(
                f"starting this project's Prefect server at {info.url}{why}: it {stops} "
                "(`backtest server status`, `backtest server down`)",
                highlight=False,
            )

    def warm(self, strategy: str) -> None:
        """Load (or on a new machine compile) the study's kernels while the new server starts."""
        if self.started is None or self._warm is not None:
            return
        from backtest.engine.warmup import warm_up

        def run() -> None:
            with contextlib.suppress(Exception):  # a failure here is the study's to meet and report
                warm_up(strategy)

        self._warm = threading.Thread(target=run, name="warm-kernels", daemon=True)
        self._warm.start()

    def ready(self) -> None:
        """Until the server answers (nothing to wait for with the ephemeral or the user's server), and the
        kernels' warm-up has ended: on a new machine it compiles them, work the study would do anyway, and
        its first tasks would only wait for it on numba's compile lock."""
        from cli.localserver import ServerError

        if self.started is None:
            return
        try:
            self.started.wait()
        except ServerError as exc:
            raise ApiError(str(exc)) from None
        if self._warm is not None and self.started.new:
            self._warm.join()

    def done(self) -> None:
        from cli.localserver import touch

        if self.started is not None:
            touch(self.project)  # the server's idle time starts now


class ApiError(Exception):
    """The command's Prefect server could not be started or reached."""


def run_study_cli(params: Any, console: Console, api: Api) -> int:
    """Run the flow in this process with a progress bar; print the summary; return the exit code.

    ``api`` was made first thing by the command: the flow's imports and the kernels' warm-up happen here while
    a new server starts, then the run waits for it."""
    try:
        api.warm(params.strategy)
        import flows.study  # noqa: F401 - its imports (seconds) while the server starts

        api.ready()
    except ApiError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    try:
        return _run(params, console)
    finally:
        api.done()


def _run(params: Any, console: Console) -> int:
    from flows.progress import Progress as StudyProgress
    from flows.progress import set_listener
    from flows.study import three_phase_study

    with Progress(
        TextColumn("[bold]backtest[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("planning...", total=None, rate="", eta="")

        def on_chunk(update: StudyProgress) -> None:
            rate, eta = update.symbols_per_second, update.eta_seconds
            progress.update(
                bar,
                completed=update.done,
                total=update.total,
                description=f"{update.chunk} {update.state.lower()}",
                rate=f"{rate:,.0f} symbols/s" if rate else "",
                eta=f"ETA {eta:,.0f} s" if eta is not None else "",
            )

        set_listener(on_chunk)
        try:
            with local_run_settings():
                state = three_phase_study(params, return_state=True)
        except Exception as exc:  # no flow run at all (e.g. the API server did not start): one clear line
            progress.stop()
            console.print(
                f"[red]error:[/] the flow could not run: {type(exc).__name__}: {exc}", highlight=False
            )
            return 1
        finally:
            set_listener(None)
    summary_path = Path(params.out) / "summary.json"
    summary = read_summary(summary_path.parent) if summary_path.exists() and not state.is_crashed() else None
    if summary is None or summary.get("flow_run_id") != str(state.state_details.flow_run_id):
        exc = state.result(raise_on_failure=False)
        message = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else state.message
        console.print(f"[red]error:[/] {message}")
        return 1
    print_summary(summary, console)
    if state.is_failed():
        console.print(f"[red]{state.message}[/]")
        console.print(
            "Re-run the same command: finished chunks come from the cache, only the failed ones run."
        )
        return 1
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.4f}"
    return str(value)


def print_summary(summary: dict[str, Any], console: Console) -> None:
    counts, cache = summary["counts"], summary["cache"]
    console.print(
        f"[bold]{summary['state']}[/] in {summary['wall_seconds']:.1f} s - flow run {summary['flow_run_id']}: "
        f"{counts['symbols']} symbols, {counts['chunks']} chunks, {counts['folds']} folds, "
        f"{counts['combinations']} combinations; cache {cache['hits']} hits, {cache['misses']} misses"
        + (f", {cache['failed']} failed" if cache.get("failed") else "")
    )
    for failed in summary.get("failed_chunks", []):
        console.print(f"  [red]{failed['chunk']}[/]: {failed['error']}")
    figures = summary.get("figures")
    if figures:
        table = Table(title=f"Out of sample {figures['oos_start']} to {figures['oos_end']}")
        table.add_column("metric")
        table.add_column("portfolio", justify="right")
        # a ranking study's benchmark is the equal-weight universe, rebalanced on its days
        ranking = figures.get("kind") == "cross_sectional"
        table.add_column("equal weight" if ranking else "buy and hold", justify="right")
        for key in HEADLINE_METRICS:
            table.add_row(key, _fmt(figures["portfolio"].get(key)), _fmt(figures["benchmark"].get(key)))
        console.print(table)
        console.print(
            f"selected combinations: mean score in sample {_fmt(figures['mean_in_sample_score'])}, "
            f"validation {_fmt(figures['mean_validation_score'])}, test {_fmt(figures['mean_test_score'])}"
        )
        luck = figures.get("overfitting")
        if luck:
            console.print(Text(luck_line(luck)))
    print_monitoring(summary, console)
    console.print(f"results in {summary['out']}")


def luck_line(luck: dict[str, Any]) -> str:
    """The statistics of luck in one line, then what they mean in words (from summary.json's figures)."""
    return (
        f"luck: {luck['trials']} trials, PBO {_fmt(luck.get('pbo'))}, deflated Sharpe {_fmt(luck.get('dsr'))} "
        f"(PSR {_fmt(luck.get('psr'))}), SPA p {_fmt(luck.get('spa_pvalue'))}, degradation slope "
        f"{_fmt(luck.get('degradation_slope'))} - {luck.get('verdict', '')}"
    )


def read_summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def print_monitoring(summary: dict[str, Any], console: Console) -> None:
    """Resources, bottleneck, alerts and recommendations of the run (from summary.json)."""
    if "peak_rss_bytes" not in summary:
        return
    from backtest.observe.profiling import describe_bottleneck

    peak = summary.get("peak_rss_bytes")
    eff, hit = summary.get("parallel_efficiency"), summary.get("cache_hit_rate")
    parts = [
        f"peak RSS {peak / 2**20:,.0f} MiB" if peak else "peak RSS n/a",
        f"parallel efficiency {eff:.0%}" if eff is not None else "parallel efficiency n/a (nothing computed)",
        f"cache hit rate {hit:.0%}" if hit is not None else "cache hit rate n/a",
        f"orchestration {summary.get('orchestration_overhead_seconds') or 0.0:.1f} s",
    ]
    console.print(", ".join(parts), highlight=False)
    console.print(Text(f"bottleneck: {describe_bottleneck(summary.get('bottleneck') or {})}"))
    for alert in summary.get("alerts", []):
        console.print(Text.assemble(("alert ", "yellow"), f"{alert['kind']}: {alert['message']}"))
    for advice in summary.get("recommendations", []):
        console.print(Text(f"advice: {advice}"))
    if summary.get("report"):
        console.print(f"report {summary['report']}")
