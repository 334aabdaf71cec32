"""The zoo's ground truth: every listed critical point is critical, of the kind the probe assigns,
with the listed value; the lists are complete; global minima are global; bad input is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import landscope as ls
from landscope import functions as zoo
from landscope._deprecated import LandscopeDeprecationWarning
from landscope.race import as_objective

VARIANTS = [(name, {}) for name in zoo.NAMES] + [
    ("deep_linear", {"depth": 3}),
    ("quadratic_saddle", {"n": 4, "index": 0}),
    ("quadratic_saddle", {"n": 4, "index": 4}),
    ("ill_conditioned", {"kappa": 1e4, "n": 5}),
    ("rastrigin", {"n": 1}),
]
COMPLETE_2D = ["bowl", "saddle", "xy_saddle", "x2_2xy_y3", "double_well", "sin_sin",
               "rosenbrock", "himmelblau", "six_hump_camel", "beale", "sine_valley"]


def _grad(fn, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=lambda v: str(v))
def test_listed_points_are_critical_of_the_probed_kind(name, params):
    fn = zoo.get(name, **params)
    assert fn.critical_points, name
    points = torch.stack([p.tensor() for p in fn.critical_points])
    g = _grad(fn, points)
    values = fn(points)
    for p, gi, value in zip(fn.critical_points, g, values, strict=True):
        assert gi.norm() <= 1e-12 * (1 + points.abs().max()) * 100, (name, p)
        assert value.item() == pytest.approx(p.value, abs=1e-12), (name, p)
        verdict = ls.probe(as_objective(fn, p.tensor()))
        assert verdict.kind == p.kind, (name, p.location, verdict.reason)
        if not p.isolated and p.kind == "local_min":  # a set of minima: flat along the set
            assert verdict.strict is False and verdict.flat_directions > 0, verdict.reason


@pytest.mark.parametrize("name", COMPLETE_2D)
def test_newton_from_a_grid_finds_exactly_the_listed_points(name):
    fn = zoo.get(name)
    low, high = fn.bounds()
    axes = [torch.linspace(lo, hi, 31, dtype=torch.float64) for lo, hi in zip(low, high,
                                                                               strict=True)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    out = zoo.locate(fn, grid)
    inside = out.located & ((out.points >= low - 1e-9) & (out.points <= high + 1e-9)).all(1)
    assert bool(inside.any())
    assert (out.listed[inside] >= 0).all(), out.points[inside & (out.listed < 0)][:3]
    assert set(out.listed[inside].tolist()) == set(range(len(fn.critical_points)))


def test_rastrigin_has_21_critical_values_per_coordinate():
    x = np.linspace(-5.12, 5.12, 200_000)  # an even count: no grid point falls on a root
    derivative = 2 * x + 20 * np.pi * np.sin(2 * np.pi * x)
    assert int((np.diff(np.sign(derivative)) != 0).sum()) == 21
    fn = zoo.get("rastrigin")
    kinds = [p.kind for p in fn.critical_points]
    assert (kinds.count("local_min"), kinds.count("local_max"), kinds.count("saddle")) == (
        121, 100, 220)


@pytest.mark.parametrize(("name", "counts"), [
    ("himmelblau", (4, 1, 4)), ("six_hump_camel", (6, 2, 7)), ("sin_sin", (2, 2, 9)),
    ("beale", (1, 0, 2))])
def test_kind_counts_match_the_literature(name, counts):
    kinds = [p.kind for p in zoo.get(name).critical_points]
    assert (kinds.count("local_min"), kinds.count("local_max"), kinds.count("saddle")) == counts


@pytest.mark.parametrize("name", zoo.NAMES)
def test_global_minimum_is_a_lower_bound_or_f_is_unbounded(name):
    fn = zoo.get(name)
    generator = torch.Generator().manual_seed(0)
    if fn.global_min is None:
        far = torch.randn(4096, fn.dim, generator=generator, dtype=torch.float64)
        assert fn(1e3 * far / far.norm(dim=1, keepdim=True)).min() < -1e3
        return
    box = fn.sample(20_000, generator)
    assert fn(box).min() >= fn.global_min - 1e-12
    assert fn.minimisers, "the global minimum is listed"
    assert all(fn(m.tensor()).item() == pytest.approx(fn.global_min, abs=1e-12)
               for m in fn.minimisers)


def test_functions_take_batches_of_any_shape():
    for name in zoo.NAMES:
        fn = zoo.get(name)
        x = fn.sample(6, torch.Generator().manual_seed(1))
        one_by_one = torch.stack([fn(p) for p in x])
        assert fn(x.reshape(2, 3, fn.dim)).shape == (2, 3)
        torch.testing.assert_close(fn(x), one_by_one, rtol=1e-14, atol=1e-14)


def test_quadratics_have_the_chosen_spectrum():
    fn = zoo.get("ill_conditioned", kappa=1e3, n=4)
    H = torch.func.hessian(fn.f)(torch.zeros(4, dtype=torch.float64))
    eigenvalues = torch.linalg.eigvalsh(H)
    torch.testing.assert_close(eigenvalues, torch.logspace(0, 3, 4, dtype=torch.float64))
    assert not torch.allclose(H, torch.diag(torch.diagonal(H)))  # rotated, not axis-aligned
    saddle = zoo.get("quadratic_saddle", n=7, index=3)
    H = torch.func.hessian(saddle.f)(torch.zeros(7, dtype=torch.float64))
    assert int((torch.linalg.eigvalsh(H) < 0).sum()) == 3


def test_deep_linear_sets_are_identified_through_the_product():
    fn = zoo.get("deep_linear")
    best = fn.minimisers[0]
    w = best.tensor()
    W1, W2 = w[:6].reshape(2, 3), w[6:].reshape(3, 2)
    C = torch.tensor([[2.0, 1.0], [0.5, 3.0]], dtype=torch.float64)
    moved = torch.cat([(C @ W1).flatten(), (W2 @ torch.linalg.inv(C)).flatten()])
    assert fn(moved).item() == pytest.approx(0.5)  # ½ s₃² with s = (3, 2, 1)
    assert _grad(fn, moved).norm() < 1e-12
    index, distance = fn.nearest(moved[None])
    assert fn.critical_points[int(index)] is best and distance.item() < 1e-12
    values = sorted({round(p.value, 12) for p in fn.critical_points})
    assert values == [0.5, 2.0, 2.5, 4.5, 5.0, 6.5, 7.0]  # ½ Σ_{j∉J} s_j² over the sets J


def test_ackley_cone_point_has_the_zero_subgradient():
    fn = zoo.get("ackley")
    zero = torch.zeros(2, dtype=torch.float64)
    assert fn(zero).item() == pytest.approx(0.0, abs=1e-15)
    assert torch.equal(_grad(fn, zero), torch.zeros(2, dtype=torch.float64))


def test_locate_names_the_nearby_critical_point():
    fn = zoo.get("himmelblau")
    out = zoo.locate(fn, torch.tensor([[2.9, 2.1], [0.1, 2.8], [-0.3, -0.9]],
                                      dtype=torch.float64))
    kinds = [fn.critical_points[i].kind for i in out.listed.tolist()]
    assert kinds == ["local_min", "saddle", "local_max"]
    far = zoo.locate(fn, torch.tensor([[1.5, 0.5]], dtype=torch.float64), radius=1e-3)
    assert not bool(far.located[0]) and int(far.listed[0]) == -1


def test_bad_input_names_the_valid_choices():
    with pytest.raises(ls.BadInputError, match="six_hump_camel"):
        zoo.get("camel6")
    with pytest.raises(ls.BadInputError, match="takes: n"):
        zoo.get("rastrigin", dim=3)
    with pytest.raises(ls.BadInputError, match="index"):
        zoo.get("quadratic_saddle", n=3, index=4)
    with pytest.raises(ls.BadInputError, match="shape"):
        zoo.get("bowl")(torch.zeros(3))
    with pytest.raises(ls.BadInputError, match="n=0; use a whole number ≥ 1"):
        zoo.get("rastrigin", n=0)
    assert math.isclose(zoo.get("six_hump_camel").global_min, -1.0316284534898774)


def test_the_old_keywords_of_locate_and_sample_warn_and_give_the_same_result():
    fn = zoo.get("himmelblau")
    with pytest.warns(LandscopeDeprecationWarning, match="points="):
        old = fn.sample(count=3, generator=torch.Generator().manual_seed(2))
    new = fn.sample(points=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(old, new) and new.shape == (3, 2)
    near = torch.tensor([[3.0 + 1e-3, 2.0]], dtype=torch.float64)
    for match_atol in (1e-6, -1.0):  # a negative distance matches nothing
        with pytest.warns(LandscopeDeprecationWarning, match="match_atol="):
            old = zoo.locate(fn, near, match_tol=match_atol)
        assert old.listed.tolist() == zoo.locate(fn, near, match_atol=match_atol).listed.tolist()
    assert zoo.locate(fn, near, match_atol=-1.0).listed.tolist() == [-1]
    assert fn.critical_points[int(zoo.locate(fn, near).listed)].value == 0.0  # (3, 2)
