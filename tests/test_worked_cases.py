"""The worked cases in examples/: their faulty runs are stuck, and the trials the README shows run.

Stuck is checked against ground truth: a network whose output ignores its input can do no better
than predicting the class frequencies p, whose cross-entropy is the entropy H(p).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from landscope import io
from landscope.cli import app
from landscope.errors import BadInputError
from landscope.escape import escape

EXAMPLE = Path(__file__).parents[1] / "examples" / "worked_cases.py"
spec = importlib.util.spec_from_file_location("worked_cases", EXAMPLE)
cases = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cases)


def label_entropy(y: torch.Tensor) -> float:
    p = torch.bincount(y).double() / len(y)
    return float(-(p * p.log()).sum())


@pytest.fixture(scope="module")
def faulty_runs():
    """Each case after 60 steps of its plain-SGD run (one thread), with its curve."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {name: cases.train_faulty(name, steps=60) for name in cases.CASES}
    finally:
        torch.set_num_threads(threads)


def test_plateau_is_the_relative_change_between_the_last_two_windows():
    assert cases.plateau([2.0] * 3 + [1.0] * 3, window=3) == pytest.approx(0.5)
    assert cases.plateau([9.0] + [4.0] * 4, window=2) == 0.0
    with pytest.raises(BadInputError, match="no two windows of 3"):
        cases.plateau([1.0] * 5, window=3)


@pytest.mark.parametrize("name", ["stuck_cnn", "sigmoid_mlp"])
def test_faulty_run_is_stuck_at_the_loss_of_ignoring_the_input(faulty_runs, name):
    net, curve = faulty_runs[name]
    X, y = cases.CASES[name].data()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(net(X), y).item()
    assert cases.plateau(curve, window=30) < cases.STUCK
    assert loss == pytest.approx(label_entropy(y), rel=5e-3)
    assert label_entropy(y) == pytest.approx(math.log(10), rel=1e-3)


@pytest.mark.slow
def test_adam_gets_the_stuck_cnn_out_and_the_baseline_stays(faulty_runs, one_thread):
    net, _ = faulty_runs["stuck_cnn"]
    X, y = cases.digit_images()
    trial = escape(net, nn.functional.cross_entropy, (X[:512], y[:512]),
                   candidates=["baseline", "adam"], optimizer="gd", lr=0.01, evaluations=40,
                   seeds=1, batch_size=64, curvature_products=2)
    loss = {row["candidate"]: row["train_loss_mean"] for row in trial.summary}
    assert loss["baseline"] == pytest.approx(trial.start["loss"], rel=5e-3)
    assert loss["adam"] < 0.5 * loss["baseline"]


def test_the_readme_command_runs_from_a_saved_checkpoint(faulty_runs, one_thread, tmp_path):
    checkpoint = io.save_state_dict(faulty_runs["sigmoid_mlp"][0], tmp_path / "sigmoid_mlp.pt")
    result = CliRunner().invoke(app, [
        "escape", "--model", f"{EXAMPLE}:sigmoid_mlp", "--checkpoint", str(checkpoint),
        "--data", "digits", "--optimizer", "gd", "--lr", "0.1", "--candidates",
        "baseline,adam", "--evaluations", "10", "--seeds", "1", "--curvature-products", "2",
        "--out", str(tmp_path / "trial")])
    assert result.exit_code == 0, result.output
    for name in ("escape.json", "escape-summary.csv", "escape-runs.csv", "escape-curves.png"):
        assert (tmp_path / "trial" / name).is_file()
    document = json.loads((tmp_path / "trial" / "escape.json").read_text())
    assert document["start"]["loss"] == pytest.approx(label_entropy(cases.digit_images()[1]),
                                                      rel=5e-3)
