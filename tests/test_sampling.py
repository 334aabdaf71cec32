"""Sampling error bars: intervals for full-data values from independent data subsets, checked
against the full-data truth on operators with known spectra and on small networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import landscope as ls
from landscope.errors import BadInputError
from landscope.sampling import (
    draw_subsets,
    intervals,
    read_subsets,
    samples_needed,
)

pytestmark = pytest.mark.usefixtures("one_thread")
D = torch.float64


class Quadratic(nn.Module):
    """Per-sample loss ½ θᵀA_iθ + b_iᵀθ: the full-data Hessian is the mean of the A_i."""

    def __init__(self, n: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(n, dtype=D))

    def forward(self, A, b):
        return 0.5 * torch.einsum("i,sij,j->s", self.theta, A, self.theta) + b @ self.theta


def population(n=24, N=3000, noise=1.0, seed=0):
    """N samples whose Hessians scatter around a mean with a known spectrum (−2 … 3)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    mean = Q @ torch.diag(torch.linspace(-2, 3, n, dtype=D)) @ Q.T
    E = torch.randn(N, n, n, generator=g, dtype=D) * noise
    A = mean + (E + E.transpose(1, 2)) / 2
    b = torch.randn(N, n, generator=g, dtype=D) * 0.3
    model = Quadratic(n)
    with torch.no_grad():
        model.theta.copy_(torch.randn(n, generator=g, dtype=D) * 0.5)
    batches = [(A[i:i + 500], b[i:i + 500], torch.zeros(len(A[i:i + 500])))
               for i in range(0, N, 500)]
    return ls.Objective.from_model(model, lambda out, _: out.mean(), batches, engine="loop")



@pytest.fixture(scope="module")
def quadratic():
    torch.set_num_threads(1)
    obj = population()
    H = obj.hessian()
    values = np.linalg.eigvalsh(H.numpy())
    loss, g = obj.value_and_grad()
    return obj, {"lambda_max": values[-1], "lambda_min": values[0], "loss": loss.item(),
                 "grad_norm": g.norm().item(), "trace": values.sum()}


def _estimate(obj, samples, seed, subsets=5, max_products=None):
    total = sum(b.size for b in obj.model_loss.batches)
    parts = [obj.subset(ix) for ix in draw_subsets(total, samples, subsets, seed)]
    return intervals(read_subsets(parts, obj.theta0, total=total, eig_rtol=1e-6, seed=seed,
                                  max_products=max_products))


@pytest.mark.slow
def test_intervals_cover_the_full_data_values_of_a_known_spectrum(quadratic):
    obj, truth = quadratic
    hits = {name: 0 for name in truth}
    runs = 24
    for seed in range(runs):
        est = _estimate(obj, 60, seed)
        for name, value in truth.items():
            hits[name] += est[name].low <= value <= est[name].high
    # 95 % intervals; fewer than 90 % hits over 24 seeded draws would show undercoverage
    assert all(h >= 0.9 * runs for h in hits.values()), hits


def test_a_bootstrap_style_interval_centred_on_subset_extremes_would_miss(quadratic):
    """The reason for held-out Rayleigh quotients: subset λ_max is biased upward (Jensen), so
    an interval from the spread of in-sample extremes alone misses the truth."""
    obj, truth = quadratic
    total = sum(b.size for b in obj.model_loss.batches)
    parts = [obj.subset(ix) for ix in draw_subsets(total, 60, 5, 0)]
    r = read_subsets(parts, obj.theta0, total=total, eig_rtol=1e-6)
    values = r.top[0]
    assert values.min().item() > truth["lambda_max"]          # every subset overshoots
    naive_low = values.mean() - 2.776 * values.std() / 5 ** 0.5   # t-interval of the extremes
    assert naive_low.item() > truth["lambda_max"]
    est = intervals(r)["lambda_max"]
    assert est.low <= truth["lambda_max"] <= est.high


def test_intervals_narrow_with_more_samples(quadratic):
    obj, _ = quadratic
    small, large = _estimate(obj, 40, 1), _estimate(obj, 500, 1)
    for name in ("lambda_max", "lambda_min", "loss"):
        assert large[name].half_width < 0.6 * small[name].half_width, name


def test_subsets_that_cover_the_data_give_exact_loss_and_bounds():
    obj = population(n=8, N=100)
    H = obj.hessian()
    values = np.linalg.eigvalsh(H.numpy())
    est = _estimate(obj, 20, 0)    # 5 × 20 = all 100 samples: f = 1
    assert est["loss"].low == pytest.approx(obj.value().item(), rel=1e-12)
    assert est["loss"].high == pytest.approx(obj.value().item(), rel=1e-12)
    assert est["grad_norm"].value == pytest.approx(obj.grad().norm().item(), rel=1e-10)
    # λ_max of a mean ≤ the mean of λ_max; a Rayleigh quotient ≤ λ_max: exact inequalities
    assert est["lambda_max"].low <= values[-1] + 1e-10 <= est["lambda_max"].high + 2e-10
    assert est["lambda_min"].low - 1e-10 <= values[0] <= est["lambda_min"].high + 1e-10


@pytest.mark.slow
def test_small_network_intervals_contain_the_dense_truth():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    X = torch.randn(1500, 6, dtype=D)
    y = (X[:, :3] + 0.5 * torch.randn(1500, 3, dtype=D)).argmax(1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    obj = ls.Objective.from_model(net, nn.functional.cross_entropy, (X, y), batch_size=300)
    def loss(theta):
        return nn.functional.cross_entropy(
            torch.func.functional_call(net, obj.unflatten(theta), (X,)), y)

    values = np.linalg.eigvalsh(torch.autograd.functional.hessian(loss, obj.theta0).numpy())
    hits = 0
    for seed in range(8):   # Lanczos on the subsets (60 products), as the anytime probe runs
        est = _estimate(obj, 100, seed, max_products=60)
        hits += est["lambda_max"].low <= values[-1] <= est["lambda_max"].high
        hits += est["lambda_min"].low <= values[0] <= est["lambda_min"].high
    assert hits >= 15, hits


def test_draw_subsets_refuses_more_than_the_data_and_names_the_fix():
    with pytest.raises(BadInputError, match=r"samples=40 × subsets=5 = 200 > 100.*samples ≤ 20"):
        draw_subsets(100, 40, 5, 0)
    with pytest.raises(BadInputError, match="at least 2"):
        draw_subsets(100, 10, 1, 0)
    a, b = draw_subsets(1000, 50, 5, 7), draw_subsets(1000, 50, 5, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))   # reproducible


def test_old_keywords_of_the_subsets_warn_and_give_the_same_result(quadratic):
    from landscope._deprecated import LandscopeDeprecationWarning

    obj, _ = quadratic
    total = sum(b.size for b in obj.model_loss.batches)
    with pytest.warns(LandscopeDeprecationWarning, match=r"draw_subsets\(count=…\)"):
        old = draw_subsets(total, 10, count=2, seed=3)
    new = draw_subsets(total, 10, subsets=2, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(old, new, strict=True))
    parts = [obj.subset(ix) for ix in new]
    with pytest.warns(LandscopeDeprecationWarning, match=r"read_subsets\(tol=…\)"):
        before = read_subsets(parts, obj.theta0, total=total, tol=1e-3)
    after = read_subsets(parts, obj.theta0, total=total, eig_rtol=1e-3)
    assert torch.equal(before.top[0], after.top[0]) and torch.equal(before.losses, after.losses)


def test_samples_needed_follows_the_square_root_law():
    from landscope.sampling import Interval
    straddling = Interval(-1.0, -3.0, 1.0, "")       # centre −1, half-width 2
    assert samples_needed(straddling, 0.0, 100) == 400   # half-width must fall by 2×
    assert samples_needed(Interval(-2.0, -3.0, -1.0, ""), 0.0, 100) is None
    assert math.isinf(samples_needed(Interval(0.0, -1.0, 1.0, ""), 0.0, 100))
