"""Every scenario is a real training run that the doctor diagnoses as intended from its record;
its remedied twin passes; the healthy control raises no alarm."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import landscope.doctor.scenarios as scenarios_module
from landscope.cli import app
from landscope.doctor import diagnose
from landscope.doctor.scenarios import SCENARIOS, run_scenario
from landscope.errors import BadInputError
from landscope.monitor import read_record

FAILING = [name for name, s in SCENARIOS.items() if s.expect is not None]
REMEDIED = [name for name, s in SCENARIOS.items() if s.remedy is not None]


@pytest.mark.parametrize("name", FAILING)
def test_each_scenario_is_diagnosed_as_intended(name, tmp_path):
    diagnosis = diagnose(run_scenario(name, tmp_path))
    assert diagnosis.primary is not None, f"{name}: nothing found"
    assert diagnosis.primary.name == SCENARIOS[name].expect, diagnosis.names()
    assert diagnosis.primary.explained_by is None and diagnosis.primary.evidence


@pytest.mark.parametrize("name", REMEDIED)
def test_each_remedied_run_passes(name, tmp_path):
    diagnosis = diagnose(run_scenario(name, tmp_path, remedy=True))
    assert diagnosis.healthy, [f.summary for f in diagnosis.findings]
    assert json.loads((tmp_path / "scenario.json").read_text())["remedied"] is True


def test_the_healthy_control_raises_no_alarm(tmp_path):
    diagnosis = diagnose(run_scenario("healthy", tmp_path))
    assert diagnosis.healthy, [f.summary for f in diagnosis.findings]
    record = read_record(tmp_path)
    assert np.isfinite(record["val_loss"]).sum() == 30  # validated every 10 steps


def test_scenarios_leave_the_callers_rng_and_threads_alone(tmp_path):
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    run_scenario("zero_init", tmp_path, remedy=True)
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)


def test_scenario_errors():
    with pytest.raises(BadInputError, match="scenario=.*; use one of"):
        run_scenario("nope", "unused")
    with pytest.raises(BadInputError, match="no remedy"):
        run_scenario("healthy", "unused", remedy=True)


@pytest.mark.slow
def test_cli_runs_a_scenario_and_its_remedy(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["doctor", "--scenario", "zero_init", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Symmetric initialisation" in result.output
    assert (tmp_path / "doctor-zero_init" / "doctor.json").is_file()
    result = runner.invoke(app, ["doctor", "--scenario", "zero_init", "--remedy", "--out",
                                 str(tmp_path)])
    assert result.exit_code == 0 and "healthy: no problem found" in result.output


def test_docstring_examples_run():
    assert doctest.testmod(scenarios_module).failed == 0
