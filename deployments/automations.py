"""Example automation: every alert a study raises becomes a notification (a JSON POST to a webhook).

    export PREFECT_API_URL=http://127.0.0.1:4200/api      # the server the flows report to
    python deployments/automations.py --webhook https://chat.example/hooks/abc
    backtest alerts-automation --webhook https://chat.example/hooks/abc   # the same, from the CLI

The study flow emits ``backtest.alert.cpu-high``, ``...memory-high``, ``...cache-hit-rate-low``,
``...chunk-slow`` and ``...chunk-retried`` events on its flow run, each once per run and condition
(thresholds: the flow's ``alerts`` parameter). The automation below matches ``backtest.alert.*`` on any flow
run and sends one notification per event through a webhook notification block; swap the block for Slack,
Teams, e-mail or PagerDuty (any Prefect notification block) without changing the trigger.

The automation is defined in flows/automations.py, so the CLI and this script create the same one:

    Automation(
        name="backtest alerts",
        trigger=EventTrigger(expect={"backtest.alert.*"}, match={"prefect.resource.id": "prefect.flow-run.*"},
                             posture="Reactive", threshold=1),
        actions=[SendNotification(block_document_id=<webhook block>, subject=..., body=...)],
    )
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in a checkout

from flows.automations import create_alert_automation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--webhook", help="URL that receives each alert as a JSON POST")
    parser.add_argument("--name", default="backtest alerts", help="name of the automation")
    args = parser.parse_args(argv)
    automation = create_alert_automation(name=args.name, webhook_url=args.webhook)
    print(f"automation {automation.name!r} created: {automation.id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
