"""Verdicts that follow the definitions where the Hessian is singular.

Local minimum: L ≥ L* in a neighbourhood; strict when L > L* off θ*. Ground truth: closed forms,
and the zero eigenvalues of the dense Hessian from torch.func.hessian.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_mlp
from torch import nn
from torch.nn.functional import mse_loss

from landscope import Objective, probe
from landscope.degenerate import null_direction_test


def _zero_eigenvalues(f, point, tol=1e-9) -> int:
    H = torch.func.hessian(f)(torch.tensor(point, dtype=torch.float64))
    return int((torch.linalg.eigvalsh(H).abs() <= tol).sum())


STRICTNESS = [
    # (name, f, point, kind, strict)
    ("x²+y² (strict)", lambda x: x[0] ** 2 + x[1] ** 2, [0.0, 0.0], "local_min", True),
    ("x²+y⁴ (strict, quartic)", lambda x: x[0] ** 2 + x[1] ** 4, [0.0, 0.0], "local_min", True),
    ("x⁴+y⁴", lambda x: x[0] ** 4 + x[1] ** 4, [0.0, 0.0], "local_min", True),
    ("x² in R² at (0, 0.5)", lambda x: x[0] ** 2 + 0 * x[1], [0.0, 0.5], "local_min", False),
    ("x² in R³", lambda x: x[0] ** 2 + 0 * x[1:].sum(), [0.0, 1.0, -2.0], "local_min", False),
    ("(x+y)² (a valley across the axes)", lambda x: (x[0] + x[1]) ** 2, [1.0, -1.0],
     "local_min", False),
    ("x²+1e-7y² (curvature below τ, g = 0)", lambda x: x[0] ** 2 + 1e-7 * x[1] ** 2,
     [0.0, 0.0], "local_min", True),
    ("−x⁴", lambda x: -x[0] ** 4, [0.0], "local_max", True),
    ("−(x²+y²)²", lambda x: -(x[0] ** 2 + x[1] ** 2) ** 2, [0.0, 0.0], "local_max", True),
    ("−x⁴−y²", lambda x: -x[0] ** 4 - x[1] ** 2, [0.0, 0.0], "local_max", True),
    ("−x² flat in y", lambda x: -x[0] ** 2 + 0 * x[1], [0.0, 2.0], "local_max", False),
]


@pytest.mark.parametrize("name, f, point, kind, strict", STRICTNESS,
                         ids=[c[0] for c in STRICTNESS])
def test_strict_and_non_strict_extrema(name, f, point, kind, strict):
    p = probe(Objective.from_function(f, point))
    assert p.kind == kind, p.reason
    assert p.strict is strict, p.reason
    # a non-strict extremum is flat along exactly the null space of H here
    assert p.flat_directions == (0 if strict else _zero_eigenvalues(f, point)), p.reason
    assert ("non-strict" in p.reason) is not strict
    assert p.to_dict()["strict"] is strict
    assert p.to_dict()["flat_directions"] == p.flat_directions


@pytest.mark.parametrize("f, point", [
    (lambda x: x[0] ** 2 + x[1] ** 3, [0.0, 0.0]),
    (lambda x: x[0] ** 3 - 3 * x[0] * x[1] ** 2, [0.0, 0.0]),
    (lambda x: (x[1] - x[0] ** 2) * (x[1] - 2 * x[0] ** 2), [0.0, 0.0]),
    (lambda x: x[0] ** 2 - 1e-7 * x[1] ** 2, [0.0, 0.0]),
], ids=["x²+y³", "monkey saddle", "Peano", "x²−1e-7y² (negative curvature below τ, g = 0)"])
def test_higher_order_saddles_stay_saddles(f, point):
    p = probe(Objective.from_function(f, point))
    assert p.kind == "saddle" and p.strict is None and p.flat_directions is None, p.reason
    witness = p.evidence["null_direction_test"]["witness"]
    assert witness["phi"] < 0
    # the certificate is a real point: f is lower there than at θ (θ is critical with g = 0)
    assert "arbitrarily close" not in p.reason


def test_radii_reach_working_precision_and_are_reported():
    # x²+y³ at 0: along y the loss changes by t³, beside x's 2t²·1e-6 zero tolerance
    p = probe(Objective.from_function(lambda x: x[0] ** 2 + x[1] ** 3, [0.0, 0.0]))
    test = p.evidence["null_direction_test"]
    radii = test["radii"]
    assert radii[0] == pytest.approx(0.1)
    ratios = torch.tensor(radii[1:]) / torch.tensor(radii[:-1])
    assert torch.allclose(ratios, torch.tensor(10 ** -0.5, dtype=ratios.dtype))
    # down to √eps (the loss is 0 at θ, so rounding of L(θ) sets no floor)
    eps = torch.finfo(torch.float64).eps
    assert radii[-1] >= eps ** 0.5 > radii[-1] * 10 ** -0.5
    # t³ stands out of ½τt² = 1e-6·t² down to t ≈ 1e-6: the reading is at a small radius
    assert test["settled_radius"] < 1e-5
    assert f"{radii[-1]:.2g}" in p.reason


def test_deep_linear_autoencoder_global_minimum_is_a_non_strict_minimum():
    # x ↦ W₂W₁x with W₁ = B Uᵀ, W₂ = U B⁻¹ reconstructs data lying in span(U) exactly: L = 0,
    # the lower bound. The minima form a manifold of dimension k² + k(d − r) = 4 + 2 (B ∈ GL(2)
    # and W₁'s action on the normal of the data plane), so the minimum cannot be strict.
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(3, 2, generator=gen, dtype=torch.float64))
    X = torch.randn(20, 2, generator=gen, dtype=torch.float64) @ U.T
    B = torch.tensor([[1.5, 0.3], [-0.4, 0.8]], dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 3, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(B @ U.T)
        model[1].weight.copy_(U @ torch.linalg.inv(B))
    obj = Objective.from_model(model, mse_loss, (X, X))
    p = probe(obj)
    assert p.loss < 1e-28
    assert p.kind == "local_min" and p.strict is False and p.is_global_min, p.reason
    eigenvalues = torch.linalg.eigvalsh(obj.hessian())
    assert int((eigenvalues.abs() <= 1e-10).sum()) == 6
    assert p.flat_directions == 6
    assert p.fractions["zero"].value == pytest.approx(6 / 12)


@pytest.mark.slow
def test_lbfgs_converged_network_is_not_called_a_saddle_by_its_leftover_gradient():
    # a tanh MLP fitted by L-BFGS: critical by the first-order test, yet its gradient is not 0.
    # The relaxation of the stiff directions alone lowers L by ½ gᵀΛ⁻¹g (here ≈ 1e-8), and ±u
    # along a null direction change L by ±t⟨g, u⟩: neither may count as a higher-order descent.
    model = make_mlp(nn.Tanh, sizes=(1, 6, 1), seed=0)
    X = torch.linspace(-2, 2, 20, dtype=torch.float64)[:, None]
    y = torch.sin(2 * X)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=300, tolerance_grad=1e-14,
                            tolerance_change=1e-16, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = mse_loss(model(X), y)
        loss.backward()
        return loss

    opt.step(closure)
    obj = Objective.from_model(model, mse_loss, (X, y))
    p = probe(obj)
    assert p.stationarity.critical and p.grad_norm > 0
    # ground truth: the Newton gain of the leftover gradient in the stiff directions is real
    values, vectors = torch.linalg.eigh(obj.hessian())
    stiff = values.abs() > p.tolerances.zero_atol
    g = obj.grad()
    gain = 0.5 * ((vectors[:, stiff].T @ g) ** 2 / values[stiff]).sum().item()
    assert gain > 1e-12
    assert p.kind != "saddle", p.reason
    assert p.evidence["null_direction_test"]["leftover_gradient"] == pytest.approx(p.grad_norm)


def test_leftover_gradient_alone_is_not_a_descent():
    # f = x² + 0·y tilted by a small gradient along y: L falls along −y, linearly, yet the tilt
    # is all there is; the loss less its linear part is flat along y
    tilt = 1e-9
    obj = Objective.from_function(lambda x: x[0] ** 2 + tilt * x[1], [0.0, 0.0])
    theta = obj.theta0
    null = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    stiff = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    test = null_direction_test(obj, theta, null, stiff, torch.tensor([2.0], dtype=torch.float64),
                               curvature=2.0, zero_atol=2e-6)
    assert test.outcomes == {"descent": 0, "ascent": 0, "flat": 2, "unsettled": 0}
    assert test.leftover_gradient == pytest.approx(tilt)
