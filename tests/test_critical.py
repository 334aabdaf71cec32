"""probe() on points whose kind is known in closed form, and on small networks against eigh."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import classification_data, make_mlp
from torch import nn
from torch.nn.functional import cross_entropy, mse_loss

from landscope import KINDS, Objective, probe


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


CASES = [
    # (name, f, point, kind, index)
    ("bowl x²+y²", lambda x: x[0] ** 2 + x[1] ** 2, [0, 0], "local_min", 0.0),
    ("x²−y²", lambda x: x[0] ** 2 - x[1] ** 2, [0, 0], "saddle", 0.5),
    ("−x²−y²", lambda x: -x[0] ** 2 - x[1] ** 2, [0, 0], "local_max", 1.0),
    ("xy", lambda x: x[0] * x[1], [0, 0], "saddle", 0.5),
    ("x²+y³", lambda x: x[0] ** 2 + x[1] ** 3, [0, 0], "saddle", 0.0),
    ("x²+y⁴", lambda x: x[0] ** 2 + x[1] ** 4, [0, 0], "local_min", 0.0),
    ("monkey saddle", lambda x: x[0] ** 3 - 3 * x[0] * x[1] ** 2, [0, 0], "saddle", 0.0),
    # seed note 004's x²+2xy+y³: ∇ = (2x+2y, 2x+3y²) vanishes at (0,0) and (−2/3, 2/3)
    ("x²+2xy+y³ at 0", lambda x: x[0] ** 2 + 2 * x[0] * x[1] + x[1] ** 3, [0, 0], "saddle", 0.5),
    ("x²+2xy+y³ at (−2/3, 2/3)", lambda x: x[0] ** 2 + 2 * x[0] * x[1] + x[1] ** 3,
     [-2 / 3, 2 / 3], "local_min", 0.0),
    ("sin x·sin y at 0", lambda x: torch.sin(x[0]) * torch.sin(x[1]), [0, 0], "saddle", 0.5),
    ("sin x·sin y at (π/2, π/2)", lambda x: torch.sin(x[0]) * torch.sin(x[1]),
     [math.pi / 2, math.pi / 2], "local_max", 1.0),
    ("sin x·sin y at (π/2, −π/2)", lambda x: torch.sin(x[0]) * torch.sin(x[1]),
     [math.pi / 2, -math.pi / 2], "local_min", 0.0),
    ("Rosenbrock at (1, 1)", rosenbrock, [1, 1], "local_min", 0.0),
    ("Peano (y−x²)(y−2x²)", lambda x: (x[1] - x[0] ** 2) * (x[1] - 2 * x[0] ** 2), [0, 0],
     "saddle", 0.0),
    ("x⁴+y⁴", lambda x: x[0] ** 4 + x[1] ** 4, [0, 0], "local_min", 0.0),
    ("−x⁴−y²", lambda x: -x[0] ** 4 - x[1] ** 2, [0, 0], "local_max", 0.5),
    ("x² (flat in y)", lambda x: x[0] ** 2 + 0 * x[1], [0, 3], "degenerate", 0.0),
    ("quadratic saddle of index 2/5", lambda x: (x[:3] ** 2).sum() - (x[3:] ** 2).sum(),
     [0.0] * 5, "saddle", 0.4),
]


@pytest.mark.parametrize("name, f, point, kind, index", CASES, ids=[c[0] for c in CASES])
def test_known_critical_points(name, f, point, kind, index):
    p = probe(Objective.from_function(f, point))
    assert p.kind == kind, p.reason
    assert p.stationarity["critical"]
    assert p.index == pytest.approx(index)
    assert p.kind in KINDS


def test_second_order_fractions_and_condition_number():
    p = probe(Objective.from_function(lambda x: 3 * x[0] ** 2 + 0.5 * x[1] ** 2, [0, 0]))
    assert p.lambda_max == pytest.approx(6) and p.lambda_min == pytest.approx(1)
    assert p.condition_number == pytest.approx(6)
    assert p.minimum_ratio == 1.0 and p.fractions["zero"].value == 0.0


def test_degenerate_points_report_the_higher_order_evidence():
    p = probe(Objective.from_function(lambda x: x[0] ** 2 + x[1] ** 3, [0, 0]))
    test = p.evidence["null_direction_test"]
    assert test["descent"] and test["witness"]["phi"] < 0
    assert p.fractions["zero"].value == 0.5  # the y direction is null
    assert "higher order" in p.reason


def test_non_critical_point_reports_its_distance():
    f = lambda x: x[0] ** 2 + 2 * x[0] * x[1] + x[1] ** 3  # noqa: E731
    p = probe(Objective.from_function(f, [2 / 3, -2 / 3]))  # ∇f = (0, 8/3): not critical
    assert p.kind == "not_critical"
    assert p.grad_norm == pytest.approx(8 / 3)
    assert p.stationarity["descent_ratio"] > 1e-3
    assert "still sliding" in p.reason


def test_global_minimum_only_at_a_known_lower_bound():
    at_zero = probe(Objective.from_function(rosenbrock, [1, 1], lower_bound=0.0))
    assert at_zero.kind == "local_min" and at_zero.is_global_min
    no_bound = probe(Objective.from_function(rosenbrock, [1, 1]))
    assert not no_bound.is_global_min
    raised = probe(Objective.from_function(lambda x: rosenbrock(x) + 1, [1, 1], lower_bound=0))
    assert raised.kind == "local_min" and not raised.is_global_min


def test_interpolating_regression_is_a_global_minimum():
    # a linear model fitted exactly by least squares: MSE 0, the known lower bound of MSE
    X, _ = classification_data(n=3, features=4)
    model = nn.Linear(4, 1, bias=False).double()
    target = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, target).solution.T)
    p = probe(Objective.from_model(model, mse_loss, (X, target)))
    assert p.loss < 1e-20
    # 3 samples, 4 weights: one null direction along which the fit is exact: a valley floor
    assert p.kind == "degenerate" and p.fractions["zero"].value == 0.25


def test_network_exact_path_matches_numpy_eigh():
    model = make_mlp(nn.Tanh, sizes=(4, 6, 3), seed=2)
    X, y = classification_data(n=40)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    p = probe(obj, exact=True)
    H = obj.hessian().numpy()
    eig = np.linalg.eigvalsh(H)
    assert p.lambda_max == pytest.approx(eig[-1], rel=1e-10)
    assert p.lambda_min == pytest.approx(eig[0], rel=1e-10)
    tol = p.tolerances["flat_tol"]
    assert p.fractions["negative"].value == pytest.approx(np.mean(eig <= -tol))
    assert p.fractions["positive"].value == pytest.approx(np.mean(eig > tol))
    assert p.minimum_ratio + p.index + p.fractions["zero"].value == pytest.approx(1.0)


def test_network_iterative_path_agrees_with_exact():
    model = make_mlp(nn.Tanh, sizes=(8, 16, 16, 4), seed=4)
    X, y = classification_data(n=200, features=8, classes=4)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    exact = probe(obj, exact=True)
    iterative = probe(obj, exact=False, probes=16, steps=40)
    assert iterative.evidence["path"] == "iterative"
    assert iterative.spectrum.evidence["converged"]
    assert iterative.lambda_max == pytest.approx(exact.lambda_max, rel=1e-6)
    assert iterative.lambda_min == pytest.approx(exact.lambda_min, rel=1e-6)
    assert iterative.kind == exact.kind == "not_critical"  # an untrained network
    fresh = Objective.from_model(model, cross_entropy, (X, y))
    probe(fresh, exact=False, probes=4, steps=10)
    # one pass over the data, kept for every product (the chain engine's first-point trial spends
    # its own passes, that one included, and records them)
    trial = fresh.info.get("chain_trial")
    assert fresh.counts["passes"] == (trial["passes"] if trial else 1)
    for key in ("negative", "positive"):
        low, high = iterative.fractions[key].interval
        assert low <= exact.fractions[key].value <= high, key


def test_saddle_of_a_network_at_the_origin():
    # a deep linear network at θ = 0 is a critical point (every gradient term has a zero
    # factor); with two layers its Hessian has ± pairs: a saddle of index ≥ 1/4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        for p_ in model.parameters():
            p_.zero_()
    X, _ = classification_data(n=30, features=3)
    target = X[:, :2] @ torch.tensor([[1.0, 0.5], [-1.0, 2.0]], dtype=torch.float64)
    p = probe(Objective.from_model(model, mse_loss, (X, target)))
    assert p.grad_norm == 0.0
    assert p.kind == "saddle" and p.lambda_min < 0 < p.lambda_max
