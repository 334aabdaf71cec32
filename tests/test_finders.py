"""Critical-point finders against known critical points, and gradient-flat detection on a case
built to have gradient-flat points."""

from __future__ import annotations

import pytest
import torch

from landscope import functions
from landscope.critical import probe
from landscope.errors import BadInputError
from landscope.finders import (
    find_critical_points,
    gradient_flatness,
    gradient_norm_min,
    newton_mr,
)
from landscope.objective import Objective
from landscope.race import as_objective

FINDERS = [("newton_mr", {}), ("gradient_norm", {}), ("gradient_norm", {"solver": "trust-krylov"})]


def dense_hessian(f, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.hessian(f, x)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options"), FINDERS)
def test_every_end_point_is_a_known_critical_point_classified_right(method, options, one_thread):
    fn = functions.get("himmelblau")  # four minima, four saddles, one maximum
    axis = torch.linspace(-4.5, 4.5, 6, dtype=torch.float64)
    found = find_critical_points(as_objective(fn), torch.cartesian_prod(axis, axis), method=method,
                                 **options)
    listed, distance = fn.nearest(torch.stack([f.theta for f in found]))
    assert distance.max() < 1e-6
    for end, i in zip(found, listed.tolist(), strict=True):
        truth = fn.critical_points[i]
        eigenvalues = torch.linalg.eigvalsh(dense_hessian(fn.f, truth.tensor()))
        assert end.run.stop == "converged"
        assert end.kind == truth.kind
        assert end.index == pytest.approx(float((eigenvalues < 0).double().mean()))
        assert not end.gradient_flat.flat
    assert set(listed.tolist()) == set(range(len(fn.critical_points)))  # saddles and max too


def test_newton_mr_takes_one_exact_newton_step_on_a_quadratic_saddle(one_thread):
    obj = Objective.from_function(lambda x: (x[0] - 1) ** 2 - 3 * (x[1] - 2) ** 2, [4.0, -5.0])
    run = newton_mr(obj)
    assert run.stop == "converged" and run.iterations == 1
    assert torch.allclose(run.theta, torch.tensor([1.0, 2.0], dtype=torch.float64), atol=1e-12)
    assert probe(obj, run.theta).kind == "saddle"


def _tilted_valley(curvature_along_tilt: float):
    """L = (q₁·θ)² + 3(q₂·θ)² + q₃·θ + c(q₃·θ)², Q a rotation of R³. For c = 0, g = q₃ ≠ 0 and
    Hg = 0 on the line q₁·θ = q₂·θ = 0: every point there is gradient-flat, none is critical;
    for c > 0 the minimum is at q₃·θ = −1/(2c) on that line."""
    q = torch.linalg.qr(torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.3, 2.0], [0.2, -1.0, 1.0]],
                                     dtype=torch.float64)).Q

    def loss(theta):
        a, b, c = q.T @ theta
        return a ** 2 + 3 * b ** 2 + c + curvature_along_tilt * c ** 2
    return Objective.from_function(loss, torch.zeros(3)), q


@pytest.mark.parametrize(("method", "options"), FINDERS)
def test_gradient_flat_points_are_found_and_told_apart_from_critical_points(method, options,
                                                                           one_thread):
    obj, q = _tilted_valley(0.0)
    starts = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]], dtype=torch.float64)
    for end in find_critical_points(obj, starts, method=method, **options):
        assert end.run.stop == "stalled"
        assert end.probe.kind == "not_critical" and end.kind == "gradient_flat"
        assert end.run.grad_norm == pytest.approx(1.0)
        assert torch.allclose(q[:, :2].T @ end.theta, torch.zeros(2, dtype=torch.float64),
                              atol=1e-8)
        assert end.gradient_flat.flat and end.gradient_flat.ratio < 1e-8
        assert end.gradient_flat.rho == pytest.approx(6.0)
    obj, q = _tilted_valley(0.05)  # the same valley with a minimum: no gradient-flat point
    (end,) = find_critical_points(obj, starts[:1], method=method, **options)
    assert end.kind == "local_min" and not end.gradient_flat.flat
    assert float(q[:, 2] @ end.theta) == pytest.approx(-10.0)


def test_gradient_flatness_ratio_matches_the_dense_hessian(one_thread):
    fn = functions.get("himmelblau")
    obj, theta = as_objective(fn), torch.tensor([1.0, -0.5], dtype=torch.float64)
    certificate = probe(obj, theta)
    flatness = gradient_flatness(obj, certificate, theta)
    H, g = dense_hessian(fn.f, theta), obj.grad(theta)
    rho = torch.linalg.eigvalsh(H).abs().max()
    assert certificate.kind == "not_critical" and not flatness.flat
    assert flatness.ratio == pytest.approx(float((H @ g).norm() / (rho * g.norm())), rel=1e-10)


def test_bad_input_is_refused():
    obj = as_objective(functions.get("himmelblau"))
    with pytest.raises(BadInputError, match=r"starts has shape \(2, 3\).*\(S, 2\)"):
        find_critical_points(obj, torch.zeros(2, 3))
    with pytest.raises(BadInputError, match="method='newton'"):
        find_critical_points(obj, torch.zeros(1, 2), method="newton")
    with pytest.raises(BadInputError, match="grad_atol=-1"):
        newton_mr(obj, grad_atol=-1)
    with pytest.raises(BadInputError, match="solver='BFGS'"):
        find_critical_points(obj, torch.zeros(1, 2), method="gradient_norm", solver="BFGS")


def test_old_keywords_of_the_finders_warn_and_give_the_same_result(one_thread):
    from landscope._deprecated import LandscopeDeprecationWarning

    obj = Objective.from_function(lambda x: (x[0] - 1) ** 2 - 3 * (x[1] - 2) ** 2
                                  + 0.1 * (x[1] - 2) ** 3, [4.0, 1.0])
    for finder in (newton_mr, gradient_norm_min):
        with pytest.warns(LandscopeDeprecationWarning, match=r"\(tol=…\) is renamed grad_atol="):
            old = finder(obj, tol=1e-3)
        new = finder(obj, grad_atol=1e-3)
        assert torch.equal(old.theta, new.theta) and old.stop == new.stop == "converged"
    certificate = probe(obj, new.theta)
    with pytest.warns(LandscopeDeprecationWarning, match="hg_rtol="):
        old = gradient_flatness(obj, certificate, new.theta, tol=0.5)
    assert old == gradient_flatness(obj, certificate, new.theta, hg_rtol=0.5)
    with pytest.warns(LandscopeDeprecationWarning, match=r"flat_tol=…\) is renamed hg_rtol="):
        (old,) = find_critical_points(obj, obj.theta0, flat_tol=0.5)
    (new,) = find_critical_points(obj, obj.theta0, hg_rtol=0.5)
    assert old.gradient_flat == new.gradient_flat and old.kind == new.kind


def test_newton_mr_solves_least_squares_on_a_model_in_one_step(one_thread):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.3 * torch.randn(
        30, 1, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(3, 1).double()
    obj = Objective.from_model(model, torch.nn.functional.mse_loss, (X, y))
    (end,) = find_critical_points(obj, obj.theta0 + 1.0)
    design = torch.cat([X, torch.ones(30, 1, dtype=torch.float64)], 1)
    residual = design @ torch.linalg.lstsq(design, y).solution - y
    assert end.run.iterations == 1 and end.kind == "local_min" and end.index == 0
    assert end.run.loss == pytest.approx(float(residual.pow(2).mean()), rel=1e-10)
