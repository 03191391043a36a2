"""``backtest report OUT`` (rebuild a run's report from its saved results) and ``backtest alerts-automation``
(create the example automation that turns the run's alert events into a notification)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.errors import fail


def report(
    out: Annotated[Path, typer.Argument(help="Output folder of a run (holds summary.json).")],
) -> None:
    """Rebuild report.html and its plots from the results saved in OUT (nothing is re-run)."""
    if not (out / "summary.json").is_file():
        raise fail(f"{out} is not the output folder of a run (no summary.json)")
    from backtest.observe.report import build_report

    try:
        files = build_report(out)
    except (OSError, ValueError, KeyError) as exc:
        raise fail(f"cannot build the report from {out}: {type(exc).__name__}: {exc}") from None
    typer.echo(f"report {files.html} ({len(files.plots)} plots)")
    for name, why in files.skipped.items():
        typer.echo(f"  {name} plot not drawn: {why}")


def alerts_automation(
    webhook: Annotated[
        str | None,
        typer.Option(help="Also POST every alert to this URL (creates a webhook block for it)."),
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the automation.")] = "backtest alerts",
) -> None:
    """Create (or replace) on the Prefect server (PREFECT_API_URL) the automation that turns every
    ``backtest.alert.*`` event into a notification."""
    from flows.settings import prepare_environment

    prepare_environment()
    from flows.automations import create_alert_automation

    try:
        automation = create_alert_automation(name=name, webhook_url=webhook)
    except Exception as exc:  # the server is down, the URL is refused: one clear line
        raise fail(f"could not create the automation: {type(exc).__name__}: {exc}") from None
    typer.echo(
        f"automation {automation.name!r} ({automation.id}) is {'enabled' if automation.enabled else 'off'}"
    )
