"""The fault suite: its cases inject the fault they name, its scorer counts like a confusion
matrix, and a small suite runs end to end (what the doctor finds there is the benchmark's to
report, not this test's to fix)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from landscope._deprecated import LandscopeDeprecationWarning
from landscope.doctor import faults as fault_suite
from landscope.doctor.faults import (
    FAULTS,
    HEALTHY,
    Case,
    FaultRun,
    cases,
    run_suite,
    score,
)
from landscope.doctor.recipes import ARCHITECTURES
from landscope.errors import BadInputError
from landscope.monitor import read_record


def _result(fault: str, *findings: str) -> FaultRun:
    return FaultRun(Case(fault, "mlp"), tuple(findings))


def test_score_counts_like_a_confusion_matrix():
    results = [
        _result("vanishing", "vanishing_gradients", "saddle"),  # detected
        _result("vanishing", "saddle"),                          # missed: wrong primary
        _result("dead_relus", "vanishing_gradients", "dead_relus"),  # missed: ranked second
        _result("lr_too_small"),                                 # missed: nothing found
        _result("healthy"),                                      # quiet
        _result("healthy", "poor_minimum"),                      # a false alarm
        _result("healthy"),                                      # quiet
    ]
    s = score(results)
    assert s.confusion == {("vanishing_gradients", "vanishing_gradients"): 1,
                           ("vanishing_gradients", "saddle"): 1,
                           ("dead_relus", "vanishing_gradients"): 1,
                           ("lr_too_small", HEALTHY): 1,
                           (HEALTHY, HEALTHY): 2, (HEALTHY, "poor_minimum"): 1}
    assert (s.faulty, s.detected, s.healthy, s.alarms) == (4, 1, 3, 1)
    assert s.detection_rate == 0.25 and s.false_alarm_rate == pytest.approx(1 / 3)
    assert math.isnan(score([]).detection_rate) and math.isnan(score([]).false_alarm_rate)


def test_the_old_name_of_a_fault_run_warns_and_is_the_new_class():
    with pytest.warns(LandscopeDeprecationWarning, match="FaultRun"):
        assert fault_suite.Result is FaultRun


def test_cases_cross_faults_architectures_seeds_and_reject_unknown_names():
    suite = cases(["vanishing", HEALTHY], ["mlp", "cnn"], seeds=(0, 1))
    assert len(suite) == 8 and len(set(suite)) == 8
    assert {c.expect for c in suite} == {"vanishing_gradients", HEALTHY}
    with pytest.raises(BadInputError, match="vanishin'"):
        cases(["vanishin"])
    with pytest.raises(BadInputError, match="rnn"):
        cases(architectures=["rnn"])


def _grad_rms(setup) -> list[float]:
    """Per-parameter gradient RMS of each weight at the initial point, input side first."""
    X, y = setup.data
    setup.model.zero_grad()
    setup.loss_fn(setup.model(X[:256]), y[:256]).backward()
    return [(p.grad.norm() / math.sqrt(p.numel())).item()
            for p in setup.model.parameters() if p.dim() >= 2]


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_each_fault_is_what_it_claims(architecture, one_thread):
    torch.manual_seed(0)
    arch = ARCHITECTURES[architecture]
    vanishing = _grad_rms(FAULTS["vanishing"].recipe.setup(arch))
    assert vanishing[0] < 1e-3 * vanishing[-1]  # sigmoids starve the first layer
    healthy = FAULTS[HEALTHY].recipe.setup(arch)
    exploding = _grad_rms(FAULTS["exploding"].recipe.setup(arch))
    symmetric = FAULTS["symmetric"].recipe.setup(arch)
    assert max(exploding) > 1e3 * max(_grad_rms(healthy))
    assert all(p.abs().max() == 0 for p in symmetric.model.parameters())
    for fault, factor in (("lr_too_large", 100), ("lr_too_small", 1e-3)):
        lr = FAULTS[fault].recipe.setup(arch).optimizer.param_groups[0]["lr"]
        assert lr == pytest.approx(factor * healthy.optimizer.param_groups[0]["lr"])
    for fault, kind, share in (("saturation", nn.Tanh, lambda out: out.abs() > 0.99),
                               ("dead_relus", nn.ReLU, lambda out: out == 0)):
        setup = FAULTS[fault].recipe.setup(arch)
        outputs = _outputs(setup.model, kind, setup.data[0][:256])
        assert min(share(out).float().mean().item() for out in outputs) > 0.5, fault


def _outputs(model: nn.Module, kind: type[nn.Module], X: torch.Tensor) -> list[torch.Tensor]:
    """The output of every ``kind`` module of ``model`` on ``X``."""
    outputs: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, kind):
            module.register_forward_hook(lambda m, i, out: outputs.append(out))
    model(X)
    return outputs


@pytest.mark.slow
def test_a_small_suite_runs_and_scores(one_thread, tmp_path):
    faults = ["vanishing", "saturation", "symmetric", "dead_relus", "saddle", "exploding",
              "lr_too_large", "lr_too_small", HEALTHY]
    suite = cases(faults, ["mlp"], seeds=(0,))
    reports = []
    results = run_suite(iter(suite), tmp_path, progress=lambda *report: reports.append(report))
    assert [r.case for r in results] == suite
    assert reports == [(i + 1, len(suite), case.name) for i, case in enumerate(suite)]
    s = score(results)
    assert (s.faulty, s.healthy) == (8, 1)
    assert sum(s.confusion.values()) == 9
    assert s.detected == sum(r.primary == r.expect for r in results[:8])
    # a cause seen directly ranks first: dead units and a start at the origin before the
    # vanishing gradients they leave, weights that overflow at step 0 before the rate; a spike
    # of a few steps is the rate's; a loss flat within its noise at a tiny rate is too slow
    assert {r.case.fault: r.primary for r in results} == {f: FAULTS[f].expect for f in faults}
    healthy = read_record(tmp_path / suite[-1].name)["loss"]
    assert np.median(healthy[-20:]) < 0.5 * healthy[0]  # the control really learns
    symmetric = read_record(tmp_path / suite[2].name)
    assert np.nanmax(symmetric["row_spread:0"]) == 0  # zero weights stay identical rows
