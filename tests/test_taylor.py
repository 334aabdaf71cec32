"""Taylor models: their orders as t → 0, exactness on quadratics, the optimal gradient step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import classification_data, make_mlp, reference_hessian
from torch import nn

from landscope import BadInputError, Objective
from landscope import directions as D
from landscope._deprecated import LandscopeDeprecationWarning
from landscope.taylor import taylor


def _wavy():
    return Objective.from_function(
        lambda x: torch.sin(x[0]) * torch.exp(0.5 * x[1]) + x[2]**4 + x[0] * x[2],
        [0.4, -0.3, 0.7])


def test_taylor_models_agree_to_the_orders_they_claim():
    obj = _wavy()
    d = torch.tensor([0.6, -1.0, 0.8], dtype=torch.float64)
    p = taylor(obj, d, span=(-0.04, 0.04), resolution=9)  # t = ±0.01, ±0.02, ..., with 0 exactly
    t, first_gap, second_gap = p.t, np.abs(p.real - p.first), np.abs(p.real - p.second)
    assert p.real[4] == p.first[4] == p.second[4] == p.value
    for small, big in ((5, 6), (3, 2)):  # t and 2t on each side
        assert first_gap[big] / first_gap[small] == pytest.approx(4, rel=0.05)  # O(t²)
        assert second_gap[big] / second_gap[small] == pytest.approx(8, rel=0.1)  # O(t³)
    assert first_gap[5] / t[5]**2 == pytest.approx(0.5 * p.curvature, rel=0.02)
    g = obj.grad()
    H = obj.hessian()
    assert p.slope == pytest.approx(float(g @ d), rel=1e-14)
    assert p.curvature == pytest.approx(float(d @ H @ d), rel=1e-12)


def test_on_a_quadratic_the_second_order_model_and_the_step_are_exact():
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    obj = Objective.from_function(lambda x: 0.5 * x @ A @ x + b @ x, [1.0, 1.0])
    p = taylor(obj, resolution=11)  # default direction: −∇L, t is a learning rate
    g = A @ torch.tensor([1.0, 1.0], dtype=torch.float64) + b
    assert p.step == pytest.approx(float(g @ g / (g @ A @ g)), rel=1e-14)
    assert p.predicted_decrease == pytest.approx(float((g @ g) ** 2 / (2 * g @ A @ g)), rel=1e-14)
    assert p.real_decrease == pytest.approx(p.predicted_decrease, rel=1e-12)
    np.testing.assert_allclose(p.real, p.second, rtol=1e-12, atol=1e-12)
    assert p.t[0] == pytest.approx(-p.step) and p.t[-1] == pytest.approx(2 * p.step)
    assert p.direction["kind"] == "gradient"


def test_gradient_step_on_a_network_against_the_dense_hessian():
    model = make_mlp()
    X, y = classification_data()
    obj = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
    H = reference_hessian(model, nn.functional.cross_entropy, X, y, obj)
    g = obj.grad()
    p = taylor(obj, resolution=5)
    assert p.slope == pytest.approx(-float(g @ g), rel=1e-12)
    assert p.curvature == pytest.approx(float(g @ H @ g), rel=1e-10)
    assert p.step == pytest.approx(float(g @ g / (g @ H @ g)), rel=1e-10)
    expected = obj.value().item() - obj.value(obj.theta0 - p.step * g).item()
    assert p.real_decrease == pytest.approx(expected, rel=1e-12)
    assert p.real_decrease > 0


def test_negative_curvature_has_no_step_and_planes_are_refused():
    obj = Objective.from_function(lambda x: x[0]**2 - x[1]**2 + x[1], [0.0, 0.0])
    p = taylor(obj, torch.tensor([0.0, 1.0], dtype=torch.float64), resolution=5)
    assert p.curvature == pytest.approx(-2.0) and p.step is None and p.real_decrease is None
    assert list(p.t) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    with pytest.raises(BadInputError, match="one direction; got a plane"):
        taylor(obj, D.frame(torch.ones(2), torch.tensor([1.0, -1.0])))
    with pytest.raises(BadInputError, match=r"shape \(3,\)"):
        taylor(obj, torch.ones(3))


def test_old_steps_keyword_warns_and_gives_the_same_profile():
    obj = _wavy()
    with pytest.warns(LandscopeDeprecationWarning, match=r"steps=…\) is renamed resolution="):
        old = taylor(obj, steps=5)
    new = taylor(obj, resolution=5)
    assert np.array_equal(old.t, new.t) and np.array_equal(old.real, new.real)
