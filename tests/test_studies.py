"""The studies against closed forms and the paper's claim, and the `landscope study` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from landscope import studies
from landscope.cli import app
from landscope.errors import BadInputError
from landscope.studies import edge_of_stability, random_hessian

pytestmark = pytest.mark.slow  # each study runs at its small scale

runner = CliRunner()


@pytest.fixture(scope="module")
def hessians():
    return studies.run("random-hessian", "small", seed=0)


@pytest.fixture(scope="module")
def stability():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread fixture, for the module's shared run
    try:
        return studies.run("edge-of-stability", "small", seed=0)
    finally:
        torch.set_num_threads(threads)


def test_wilson_interval_matches_its_closed_form():
    # k = 0: the upper bound is z²/(m + z²)
    assert studies.wilson(0, 100)[0] == 0.0
    assert studies.wilson(0, 100)[1] == pytest.approx(1.959964**2 / (100 + 1.959964**2))
    # symmetric about 1/2 for k = m/2, and covers about ±1.96·√(pq/m) for large m
    low, high = studies.wilson(5000, 10000)
    assert (low + high) / 2 == pytest.approx(0.5)
    assert high - low == pytest.approx(2 * 1.96 * 0.005, rel=1e-3)


def test_goe_two_by_two_closed_form_by_quadrature():
    # P(s > r), s ~ N(0, 1), r Rayleigh: ∫ r e^{−r²/2} Φ̄(r) dr
    from scipy import integrate, stats

    value, _ = integrate.quad(lambda r: r * math.exp(-r * r / 2) * stats.norm.sf(r), 0, np.inf)
    assert value == pytest.approx(random_hessian.GOE_N2, abs=1e-10)
    assert math.isclose(random_hessian.GOE_N2, 0.1464466, abs_tol=1e-7)


def test_ensembles_draw_symmetric_matrices_with_the_stated_spectra():
    rng = np.random.default_rng(1)
    goe = random_hessian.draw("goe", 4, 20000, rng)
    assert np.allclose(goe, goe.transpose(0, 2, 1))
    assert goe[:, 0, 0].var() == pytest.approx(1.0, rel=0.05)      # diagonal N(0, 1)
    assert goe[:, 0, 1].var() == pytest.approx(0.5, rel=0.05)      # off-diagonal N(0, 1/2)
    signs = random_hessian.draw("independent_signs", 4, 20000, rng)
    assert np.allclose(signs, signs.transpose(0, 2, 1))
    positive = (np.linalg.eigvalsh(signs) > 0).sum(1)                # Binomial(4, 1/2)
    assert np.bincount(positive, minlength=5) / 20000 == pytest.approx(
        [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16], abs=0.012)


def test_random_hessian_small_scale_matches_ground_truth(hessians):
    assert hessians.passed, hessians.checks
    goe, signs = hessians.figures["goe"], hessians.figures["independent_signs"]
    low, high = goe["interval"][0]
    assert low <= 0.5 <= high
    low, high = goe["interval"][1]
    assert low <= 0.5 - 1 / (2 * math.sqrt(2)) <= high
    # the independent-sign ensemble follows 0.5ⁿ to within about four standard errors
    trials = hessians.settings["trials"]
    for n, fraction in zip(hessians.figures["n"], signs["fraction"], strict=True):
        assert abs(fraction - 0.5**n) < 4 * math.sqrt(0.5**n * (1 - 0.5**n) / trials)
    # the GOE falls faster: below 0.5ⁿ from n = 3 on, by more than ten times at n = 5
    assert all(f < 0.5**n for n, f in zip(hessians.figures["n"][2:], goe["fraction"][2:],
                                          strict=True))
    assert goe["interval"][4][1] < 0.5**5 / 10


def test_edge_of_stability_sharpness_rises_to_two_over_eta(stability):
    assert stability.passed, stability.checks
    (descent,) = stability.figures["runs"]
    limit = 2 / descent["lr"]
    steps = np.array(descent["sharpness_steps"])
    sharpness = np.array(descent["sharpness"])
    assert sharpness[0] < 0.6 * limit
    late = sharpness[steps >= 2 * stability.settings["steps"] / 3]
    assert np.median(late) == pytest.approx(limit, rel=0.10)
    assert np.all(np.abs(late / limit - 1) < 0.15)  # it hovers, it does not just pass through
    assert descent["loss"][-1] < 0.1 * descent["loss"][0]


def test_edge_of_stability_sharpness_is_the_dense_hessians_largest_eigenvalue(one_thread):
    import torch

    from landscope import default
    from landscope.objective import Objective

    X, y = default.digits(torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = default.mlp((64, 6, 10)).double()
    obj = Objective.from_model(net, edge_of_stability.squared_error, (X[:200], y[:200]))
    descent = edge_of_stability.descend(obj, lr=0.1, steps=4, every=4)
    theta = obj.theta0.clone()
    for _ in range(4):
        theta = theta - 0.1 * obj.grad(theta)
    dense = np.linalg.eigvalsh(obj.hessian(theta).numpy())[-1]
    assert descent["sharpness"][-1] == pytest.approx(dense, rel=1e-3)


def test_unknown_study_and_scale_are_refused():
    with pytest.raises(BadInputError, match="random-hessian"):
        studies.get("saddle-count")
    with pytest.raises(BadInputError, match="small, full"):
        studies.run("random-hessian", "medium")


def test_cli_runs_a_study_and_writes_its_files(tmp_path, monkeypatch):
    monkeypatch.setitem(random_hessian.SETTINGS, "small", {"n_max": 3, "trials": 20000})
    result = runner.invoke(app, ["study", "random-hessian", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "pass" in result.output
    document = json.loads((tmp_path / "study-random-hessian.json").read_text())
    assert document["passed"] is True and document["figures"]["n"] == [1, 2, 3]
    assert (tmp_path / "study-random-hessian.png").stat().st_size > 0


def test_cli_lists_and_refuses_unknown_names(tmp_path):
    listed = runner.invoke(app, ["study", "--list"])
    assert listed.exit_code == 0
    assert "random-hessian" in listed.output and "edge-of-stability" in listed.output
    unknown = runner.invoke(app, ["study", "nope", "--out", str(tmp_path)])
    assert unknown.exit_code == 2
    assert "random-hessian" in unknown.output and "edge-of-stability" in unknown.output
    assert runner.invoke(app, ["study", "random-hessian", "--scale", "huge",
                               "--out", str(tmp_path)]).exit_code == 2


def test_cli_exits_1_when_a_check_fails(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    def failing(scale, seed):
        return studies.StudyResult("fails", scale, seed, {}, {},
                                   [studies.Check("1 = 2", "1", "2", False)])

    monkeypatch.setitem(studies.STUDIES, "fails",
                        studies.Study("fails", "a check that fails", failing,
                                      lambda result: plt.figure()))
    result = runner.invoke(app, ["study", "fails", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "FAIL" in result.output and json.loads(
        (tmp_path / "study-fails.json").read_text())["passed"] is False
    assert runner.invoke(app, ["study", "--out", str(tmp_path)]).exit_code == 2


@pytest.fixture(scope="module")
def deep_linear_run():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread fixture, for the module's shared run
    try:
        return studies.run("deep-linear", "small", seed=0)
    finally:
        torch.set_num_threads(threads)


def test_deep_linear_small_scale_finds_only_global_minima_and_saddles(deep_linear_run):
    assert deep_linear_run.passed, deep_linear_run.checks
    points, best = deep_linear_run.figures["points"], deep_linear_run.figures["global_min"]
    minima = [p["loss"] for p in points if p["kind"] == "local_min"]
    assert minima and all(loss == pytest.approx(best, rel=1e-6) for loss in minima)
    assert any(p["kind"] == "saddle" for p in points)
    assert not any(p["kind"] == "local_max" for p in points)
    # the closed form is the best loss any run reaches, and none goes below it
    assert min(p["loss"] for p in points) == pytest.approx(best, rel=1e-8)


def test_deep_linear_closed_form_is_reached_by_the_top_eigenvectors(one_thread):
    import torch

    from landscope.studies import deep_linear

    X, Y = deep_linear.regression(30, seed=3)
    best, values = deep_linear.critical_values(X, Y)
    n = X.shape[1]
    solution = (Y @ X.T / n) @ torch.linalg.inv(X @ X.T / n)  # least squares Σ_YX Σ_XX⁻¹
    _, vectors = torch.linalg.eigh(solution @ (X @ X.T / n) @ solution.T)  # M = Σ_YX Σ_XX⁻¹ Σ_XY
    top = vectors[:, -2:]  # the bottleneck width k = 2
    first = torch.cat([top.T @ solution, torch.zeros(1, X.shape[0], dtype=X.dtype)])
    middle = torch.cat([torch.eye(2, dtype=X.dtype), torch.zeros(2, 1, dtype=X.dtype)], 1)
    theta = torch.cat([first.reshape(-1), middle.reshape(-1), top.reshape(-1)])
    theta.requires_grad_(True)
    loss = deep_linear.squared_loss(X, Y)(theta)
    (gradient,) = torch.autograd.grad(loss, theta)
    assert loss.item() == pytest.approx(best, rel=1e-12)
    assert float(gradient.norm()) < 1e-10  # the projected solution is a critical point
    assert values[0] == pytest.approx(best) and values[-1] == pytest.approx(
        0.5 * float((Y ** 2).sum()) / n)  # S = ∅: the product W = 0
    # no rank-2 product does better: L-BFGS on W = AB from a random start
    with torch.random.fork_rng():
        torch.manual_seed(0)
        A = torch.randn(3, 2, dtype=X.dtype, requires_grad=True)
        B = torch.randn(2, 4, dtype=X.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([A, B], max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = 0.5 * ((A @ B @ X - Y) ** 2).sum() / n
        value.backward()
        return value
    optimiser.step(closure)
    assert closure().item() == pytest.approx(best, rel=1e-8)
