"""Serve the deployments of prefect.yaml from this process, without a work pool or worker (for a laptop).

    python deployments/serve.py                 # all deployments, with their schedules
    python deployments/serve.py --only nightly  # some of them

prefect.yaml stays the one source of truth: names, entrypoints, parameters, descriptions, tags and schedules
are read from it, so `backtest deploy` with a worker and this script offer the same deployments. Flows run in
the project folder, so relative paths such as ``data/store`` mean the same as under a worker.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ScheduleSpec:
    """One cron schedule of a deployment, as prefect.yaml writes it."""

    cron: str
    timezone: str | None = None
    active: bool = True


@dataclass(frozen=True)
class DeploymentSpec:
    """What a served deployment needs from a prefect.yaml entry (the work pool is the worker's business)."""

    name: str
    entrypoint: str
    description: str | None
    version: str | None
    tags: tuple[str, ...]
    parameters: dict[str, Any]
    schedules: tuple[ScheduleSpec, ...]


def read_specs(prefect_yaml: Path) -> list[DeploymentSpec]:
    """The deployments of a prefect.yaml; anchors are resolved by the YAML loader."""
    import yaml

    config = yaml.safe_load(prefect_yaml.read_text()) or {}
    specs = []
    for entry in config.get("deployments") or []:
        schedules = []
        for item in entry.get("schedules") or []:
            if "cron" not in item:
                raise ValueError(f"deployment {entry['name']}: only cron schedules are served, got {item}")
            schedules.append(ScheduleSpec(item["cron"], item.get("timezone"), bool(item.get("active", True))))
        specs.append(
            DeploymentSpec(
                name=entry["name"],
                entrypoint=entry["entrypoint"],
                description=entry.get("description"),
                version=None if entry.get("version") is None else str(entry["version"]),
                tags=tuple(entry.get("tags") or ()),
                parameters=dict(entry.get("parameters") or {}),
                schedules=tuple(schedules),
            )
        )
    return specs


def to_deployment(spec: DeploymentSpec) -> Any:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    flow = load_flow_from_entrypoint(spec.entrypoint)
    return flow.to_deployment(
        name=spec.name,
        description=spec.description,
        version=spec.version,
        tags=list(spec.tags),
        parameters=spec.parameters,
        schedules=[Cron(s.cron, timezone=s.timezone, active=s.active) for s in spec.schedules],
    )


def replace_worker_deployments(deployments: list[Any]) -> None:
    """Delete same-named deployments that `backtest deploy` made for a worker, so these are served instead.

    Serving over such a deployment keeps its work-pool storage settings and its runs crash looking for the
    code; a served deployment is what this script promises, so the worker's one goes (re-deploy to get it back).
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for d in deployments:
            name = f"{d.flow_name}/{d.name}"
            try:
                existing = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if existing.work_pool_name or existing.pull_steps:
                print(f"replacing the work-pool deployment {name} by a served one", file=sys.stderr)
                client.delete_deployment(existing.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="Serve only this deployment (repeatable).")
    parser.add_argument("--limit", type=int, default=None, help="At most this many flow runs at once.")
    args = parser.parse_args(argv)

    os.chdir(PROJECT)  # entrypoints and relative data paths are the project's
    sys.path.insert(0, str(PROJECT))
    specs = read_specs(PROJECT / "prefect.yaml")
    names = [s.name for s in specs]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        print(
            f"error: no deployment {', '.join(unknown)} in prefect.yaml; it has: {', '.join(names)}",
            file=sys.stderr,
        )
        return 2
    chosen = [s for s in specs if not args.only or s.name in args.only]
    missing = [s for s in chosen if not (PROJECT / s.entrypoint.partition(":")[0]).is_file()]
    if missing and args.only:
        print(
            f"error: {missing[0].entrypoint} of deployment {missing[0].name} is not a file", file=sys.stderr
        )
        return 2
    for s in missing:
        print(f"skipping deployment {s.name}: {s.entrypoint} is not a file in the project", file=sys.stderr)
    chosen = [s for s in chosen if s not in missing]
    if not chosen:
        print("error: nothing to serve", file=sys.stderr)
        return 2

    from prefect import serve

    deployments = [to_deployment(s) for s in chosen]
    replace_worker_deployments(deployments)
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
