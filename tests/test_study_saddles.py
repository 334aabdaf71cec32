"""The saddles study: the index of a tanh network's critical points rises with their loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscope import studies
from landscope.finders import find_critical_points
from landscope.objective import Objective
from landscope.studies import saddles


@pytest.fixture(scope="module")
def small_run():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread fixture, for the module's shared run
    try:
        return studies.run("saddles", "small", seed=0)
    finally:
        torch.set_num_threads(threads)


def point(loss: float, kind: str, index: float, minimum_ratio: float) -> dict:
    return {"loss": loss, "kind": kind, "index": index, "minimum_ratio": minimum_ratio}


@pytest.mark.slow
def test_small_scale_passes_its_checks(small_run):
    assert small_run.passed, small_run.checks
    found = small_run.figures["distinct"]
    # the fractions are the exact spectrum's at the verdict's tolerance: a minimum has no
    # negative eigenvalue, a maximum no positive one, and the two fractions add up to one at most
    for p in found:
        assert p["kind"] != "local_min" or p["index"] == 0
        assert p["kind"] != "local_max" or p["minimum_ratio"] == 0
        assert 0 <= p["index"] + p["minimum_ratio"] <= 1


@pytest.mark.slow
def test_small_scale_figure_is_drawn(small_run):
    from matplotlib import pyplot

    figure = saddles.draw_figure(small_run)
    assert len(figure.axes) == 2
    pyplot.close(figure)


@pytest.mark.slow
def test_constant_fit_is_a_saddle_of_closed_form_index(one_thread):
    # at θ = 0 the features tanh(0) vanish: ∂²L/∂b₂² = 1, and each hidden unit j couples
    # (W₁[:, j], b₁[j]) to w₂[j] through c = −mean([x; 1] y), giving eigenvalues ±‖c‖ and two
    # zeros; with 3 units: index 3/13, minimum ratio (1 + 3)/13, at L = ½ mean y² = ½
    X, y = saddles.regression(20, seed=3)
    assert float(y.mean()) == pytest.approx(0, abs=1e-12)
    assert float((y**2).mean()) == pytest.approx(1, rel=1e-12)
    zero = torch.zeros(saddles.n_parameters(), dtype=torch.float64)
    obj = Objective.from_function(saddles.squared_loss(X, y), zero)
    found = find_critical_points(obj, zero, **saddles.FINDER)[0]
    assert found.kind == "saddle" and found.run.loss == pytest.approx(0.5, rel=1e-12)
    n = saddles.n_parameters()
    assert saddles.spectrum_fractions(found) == (saddles.HIDDEN / n, (saddles.HIDDEN + 1) / n)


@pytest.mark.slow
def test_same_seed_same_figures(one_thread, monkeypatch):
    # one path of two points keeps the repeat short; the pipeline is the full one
    monkeypatch.setitem(saddles.SETTINGS, "small", {"inits": 1, "samples": 20})
    monkeypatch.setattr(saddles, "INIT_SCALES", (1.0,))
    monkeypatch.setattr(saddles, "SNAPSHOTS", (0, 20))
    first, second = (studies.run("saddles", "small", seed=5).figures for _ in range(2))
    assert first == second
    assert len(first["points"]) == 2
    assert not torch.equal(saddles.regression(20, 5)[1], saddles.regression(20, 6)[1])


def test_checks_fail_where_the_index_falls_with_the_loss():
    # low-loss saddles of large index, high-loss minima: the opposite of the claim
    rng = np.random.default_rng(0)
    losses = np.sort(rng.uniform(0.05, 0.5, 16))
    made_up = [point(loss, "saddle", 0.5 - loss / 2, 0.5 + loss / 2) for loss in losses[:8]]
    made_up += [point(loss, "local_min", 0.0, 0.9 + loss / 10) for loss in losses[8:]]
    results = {check.name.split(" the median")[0]: check.passed
               for check in saddles.checks(made_up)}
    assert results == {"at least one minimum and three saddles": True,
                       "the index rises with the loss": False,
                       "the minimum ratio falls as the loss rises": False,
                       "the lowest-loss critical point is a minimum": False,
                       "minima are rarer above": False}


def test_checks_pass_on_made_up_points_that_follow_the_claim():
    rng = np.random.default_rng(1)
    losses = np.sort(rng.uniform(0.05, 0.5, 16))
    made_up = [point(loss, "local_min", 0.0, 0.9) for loss in losses[:8]]
    made_up += [point(loss, "saddle", loss / 2, 0.8 - loss) for loss in losses[8:]]
    assert all(check.passed for check in saddles.checks(made_up))


def test_uncertified_end_points_are_reported_not_counted():
    made_up = [point(0.1, "local_min", 0.0, 0.9), point(0.2, "not_critical", 0.3, 0.5),
               point(0.2, "gradient_flat", 0.0, 0.5), point(0.4, "saddle", 0.2, 0.6),
               point(0.4, "saddle", 0.2, 0.6)]
    assert [p["kind"] for p in saddles.distinct(made_up)] == ["local_min", "saddle"]
    first = saddles.checks(made_up)[0]
    assert "1 not_critical" in first.measured and "1 gradient_flat" in first.measured
    assert not first.passed  # one saddle only, merged from two starts
