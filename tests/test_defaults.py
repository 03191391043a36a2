"""Each default of a study is written once (backtest.defaults): the CLI, the flow's parameters (the UI's form),
the core's configuration and prefect.yaml agree with it."""

from __future__ import annotations

from pathlib import Path

import typer.main
import yaml

from backtest import defaults as D
from backtest.config import FoldSpec, StudyConfig
from cli.app import app
from flows.params import StudyParams

REPO = Path(__file__).resolve().parent.parent


def run_options() -> dict[str, object]:
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    return {p.name: p.default for p in command.params}


def test_the_cli_the_form_and_the_core_share_their_defaults():
    cli, form = run_options(), StudyParams.model_fields
    config, folds = StudyConfig(), FoldSpec()
    shared = [name for name in cli if name in form and name not in {"store", "out"}]
    assert {"train_years", "fees_bps", "objective", "runner", "top_k", "strategy"} <= set(shared)
    for name in shared:
        assert cli[name] == form[name].default, name
        core = getattr(folds if hasattr(folds, name) else config, name, form[name].default)
        assert core == form[name].default, name
    assert form["train_years"].default == D.TRAIN_YEARS and config.objective == D.OBJECTIVE


def test_the_forms_bounds_are_the_cores():
    schema = StudyParams.model_json_schema()["properties"]
    assert schema["fees_bps"]["exclusiveMaximum"] == D.MAX_BPS
    assert schema["objective"]["enum"] == list(D.OBJECTIVES)
    assert schema["runner"]["enum"] == list(D.RUNNERS)


def test_prefect_yaml_states_no_default_again():
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    studies = [d for d in doc["deployments"] if d["entrypoint"] == "flows/study.py:three_phase_study"]
    assert {d["name"] for d in studies} >= {"nightly", "momentum"}
    fields = StudyParams.model_fields
    for study in studies:
        params = study["parameters"]["params"]
        StudyParams(**params)  # valid as the UI would submit it
        restated = [
            k for k, v in params.items() if k not in {"strategy", "grid", "store"} and v == fields[k].default
        ]
        assert restated == [], (
            f"{study['name']} in prefect.yaml repeats defaults of backtest/defaults.py: {restated}"
        )
