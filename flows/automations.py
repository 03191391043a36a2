"""The automation that turns the study's alert events into notifications (deployments/automations.py is the
runnable example; ``backtest alerts-automation`` calls the same function).

Every alert of a run is a Prefect event named ``backtest.alert.<kind>`` whose resource is the flow run
(flows/monitoring.py). The automation's trigger matches those events, reactively, one notification per event;
its action sends a notification through a notification block (here a webhook that receives JSON, which chat
tools and incident systems accept).
"""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID

from backtest.observe.alerts import EVENT_PREFIX

#: the notification's body: a Jinja template over the event, rendered by the server
BODY = (
    "{{ event.event }} on flow run {{ event.resource.get('prefect.resource.name') }} "
    "({{ event.resource.id }}): {{ event.payload.get('message') }}"
)
SUBJECT = "backtest alert: {{ event.event }}"


def alert_trigger() -> Any:
    """Fire on every alert event of any study flow run."""
    from prefect.events.schemas.automations import EventTrigger, Posture

    return EventTrigger(
        expect={f"{EVENT_PREFIX}.*"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        posture=Posture.Reactive,
        threshold=1,
    )


def alert_automation(block_document_id: UUID, name: str = "backtest alerts") -> Any:
    """The automation (not yet created on a server): alert event -> notification through the block."""
    from prefect.automations import Automation, SendNotification

    return Automation(
        name=name,
        description="Notify on every alert a three-phase study raises (CPU, memory, cache, slow or retried chunk).",
        enabled=True,
        trigger=alert_trigger(),
        actions=[SendNotification(block_document_id=block_document_id, subject=SUBJECT, body=BODY)],
    )


def webhook_block(url: str, name: str) -> UUID:
    """Save (or overwrite) a webhook notification block POSTing ``{"subject", "body"}`` JSON to ``url``."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=name, url=url, method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}"}
    )
    block_id = block.save(name, overwrite=True)
    return block_id


def create_alert_automation(name: str = "backtest alerts", webhook_url: str | None = None) -> Any:
    """Create the automation on the server of PREFECT_API_URL, replacing one of the same name.

    Without ``webhook_url`` it notifies through the existing webhook block named after the automation
    (``backtest-alerts``), so a team sets the receiving URL once.
    """
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block_name = name.lower().replace(" ", "-")
    if webhook_url:
        block_id = webhook_block(webhook_url, block_name)
    else:
        block = CustomWebhookNotificationBlock.load(block_name)
        block_id = block._block_document_id
    with contextlib.suppress(ValueError):  # ValueError: none of that name yet
        Automation.read(name=name).delete()
    return alert_automation(block_id, name).create()
