"""The landscope command: real runs, result files, and exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from landscope.cli import app

FIXTURE = str(Path(__file__).parent / "fixtures" / "user_net.py")
runner = CliRunner()


def _probe(tmp_path, *args):
    return runner.invoke(app, ["probe", "--out", str(tmp_path), *args])


def test_user_model_probe_writes_a_versioned_result(tmp_path):
    result = _probe(tmp_path, "--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:loader",
                    "--dtype", "float64")
    assert result.exit_code == 0, result.output
    assert "NOT A CRITICAL POINT" in result.output  # an untrained network
    document = json.loads((tmp_path / "result.json").read_text())
    assert document["schema_version"] == 1 and document["kind"] == "probe"
    probe = document["probe"]
    assert probe["kind"] == "not_critical"
    assert probe["objective"]["dtype"] == "float64" and probe["objective"]["mode"] == "eval"
    assert probe["evidence"]["path"] == "exact"


def test_checkpoint_and_parameter_subset(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_net", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.model()
    with torch.no_grad():
        net[2].bias.add_(1.0)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    result = _probe(tmp_path, "--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:data",
                    "--checkpoint", str(tmp_path / "w.pt"), "--params", "2.*")
    assert result.exit_code == 0, result.output
    probe = json.loads((tmp_path / "result.json").read_text())["probe"]
    assert probe["objective"]["parameters"] == ["2.weight", "2.bias"]
    assert probe["objective"]["n"] == 21


@pytest.mark.parametrize("args, message", [
    (["--model", f"{FIXTURE}:model"], "--data is required"),
    (["--model", f"{FIXTURE}:nothing", "--data", "digits"], "has no attribute 'nothing'"),
    (["--model", f"{FIXTURE}:not_a_model", "--data", "digits"], "not a torch.nn.Module"),
    (["--model", "no_such_pkg.mod:f", "--data", "digits"], "cannot import"),
    (["--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:wrong_data"], "inputs (40, 3)"),
    (["--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:data", "--loss",
      f"{FIXTURE}:per_sample_loss"], "reduction='mean'"),
    (["--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:data", "--checkpoint",
      "missing.pt"], "does not exist"),
    (["--checkpoint", "w.pt"], "--checkpoint needs --model"),
])
def test_bad_usage_exits_2_with_a_clear_message(tmp_path, args, message):
    result = _probe(tmp_path, *args)
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ") or message in str(result.stderr)
    assert not (tmp_path / "result.json").exists()


def test_unknown_option_is_usage_error(tmp_path):
    assert _probe(tmp_path, "--frobnicate").exit_code == 2


def test_nan_loss_exits_1(tmp_path):
    fixture = tmp_path / "nan_net.py"
    fixture.write_text(
        "import torch\n"
        "def model():\n    return torch.nn.Linear(2, 2)\n"
        "def data():\n    X = torch.ones(4, 2); X[1] = float('nan')\n"
        "    return X, torch.zeros(4, dtype=torch.long)\n")
    result = _probe(tmp_path, "--model", f"{fixture}:model", "--data", f"{fixture}:data")
    assert result.exit_code == 1
    assert "nan" in (result.output + str(result.stderr)).lower()
    assert not (tmp_path / "result.json").exists()


def test_demo_trains_once_and_reuses_the_checkpoint(tmp_path):
    first = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert "trained the default MLP" in first.output
    second = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert second.exit_code == 0 and "reusing the trained default model" in second.output
    probe = json.loads((tmp_path / "result.json").read_text())["probe"]
    assert probe["evidence"]["path"] == "iterative"
    assert probe["spectrum"]["evidence"]["converged"]


def test_help_lists_every_option():
    result = runner.invoke(app, ["probe", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--checkpoint", "--data", "--loss", "--dtype", "--params",
                   "--out", "--mode", "--exact"):
        assert option in result.output
