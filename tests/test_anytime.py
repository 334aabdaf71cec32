"""The anytime probe: stages that sharpen, a kept time budget, Ctrl-C, and a last stage equal
to today's probe."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest
import torch
from helpers import Snapshot
from torch import nn

import landscope as ls
from landscope import plan as plan_module
from landscope.anytime import anytime_probe, cost_plan, schedule
from landscope.errors import BadInputError

pytestmark = pytest.mark.usefixtures("one_thread")
D = torch.float64


def trained_mlp(samples=1200, width=12, steps=120, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, 3)).double()
    X = torch.randn(samples, 6, dtype=D)
    y = (X[:, :3] + 0.5 * torch.randn(samples, 3, dtype=D)).argmax(1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return net, X, y


@pytest.fixture(scope="module")
def mlp_objective():
    torch.set_num_threads(1)
    net, X, y = trained_mlp()
    return net, ls.Objective.from_model(net, nn.functional.cross_entropy, (X, y),
                                        batch_size=300)


@pytest.mark.slow
def test_stages_sharpen_and_the_last_is_todays_probe(mlp_objective):
    net, obj = mlp_objective
    snap = Snapshot(net)
    seen = []
    result = anytime_probe(obj, samples=100, on_stage=seen.append)
    snap.check()
    assert [s.name for s in result.stages] == ["subsample", "extremes", "density"]
    assert seen == result.stages and not result.partial
    today = ls.probe(obj)
    assert result.verdict == today.kind and result.probe.kind == today.kind
    assert result.probe.lambda_max == pytest.approx(today.lambda_max, rel=1e-8)
    assert result.probe.lambda_min == pytest.approx(today.lambda_min, rel=1e-6, abs=1e-10)
    assert result.probe.fractions["negative"].value == today.fractions["negative"].value
    first = result.stages[0].estimates
    for name, value in (("lambda_max", today.lambda_max), ("lambda_min", today.lambda_min),
                        ("loss", today.loss), ("grad_norm", today.grad_norm)):
        assert first[name].subsampled
        assert first[name].low <= value <= first[name].high, name
    final = result.estimates
    assert not any(iv.subsampled for iv in final.values())
    assert {"trace", "negative_fraction", "zero_fraction", "positive_fraction"} <= set(final)
    H = obj.hessian()
    assert final["trace"].value == pytest.approx(torch.trace(H).item(), rel=1e-8)
    json_ready = result.to_dict()
    assert json_ready["estimates"]["lambda_max"]["confidence"] == 0.95
    assert json_ready["stages"][0]["estimates"]["lambda_min"]["subsampled"] is True


def test_a_saddle_is_called_on_subsamples_at_95_percent():
    """A deep linear network at θ = 0: every gradient is exactly zero and the Hessian has the
    cross-covariance's singular values with both signs, so the first stage settles it."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).double()
    for p in net.parameters():
        nn.init.zeros_(p)
    X = torch.randn(600, 4, dtype=D)
    Y = X[:, :2] @ torch.tensor([[2.0, 0.5], [-1.0, 1.5]], dtype=D) + 0.1 * torch.randn(600, 2,
                                                                                         dtype=D)
    obj = ls.Objective.from_model(net, nn.functional.mse_loss, (X, Y))
    result = anytime_probe(obj, samples=60, density=False)
    first = result.stages[0]
    assert first.verdict == "saddle", first.statement
    assert "λ_min < 0 at 95 % confidence over 5 subsets of 60 samples" in first.statement
    assert result.verdict == "saddle" == ls.probe(obj).kind


def test_undecided_says_how_many_samples_would_settle_it():
    net, X, y = trained_mlp(samples=400, steps=400)
    obj = ls.Objective.from_model(net, nn.functional.cross_entropy, (X, y))
    result = anytime_probe(obj, samples=20, density=False)
    first = result.stages[0]
    if first.verdict == "undecided":
        assert "samples per subset would settle it" in first.statement
        assert first.samples_needed is not None and first.samples_needed > 20
    else:   # settled already: then every interval it used excluded its threshold
        assert first.samples_needed is None


@pytest.mark.slow
def test_a_time_budget_is_kept_and_says_what_stayed_uncertain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(),
                        nn.Linear(256, 10))
    X, y = torch.randn(4000, 20), torch.randint(0, 10, (4000,))
    obj = ls.Objective.from_model(net, nn.functional.cross_entropy, (X, y), batch_size=1000)
    budget = 4.0
    start = time.perf_counter()
    result = anytime_probe(obj, time_budget=budget)
    elapsed = time.perf_counter() - start
    assert elapsed <= 1.2 * budget, elapsed
    assert result.partial and result.stages
    assert result.uncertain
    assert result.plan["time_budget"] == budget


def test_ctrl_c_returns_the_best_answer_so_far(mlp_objective):
    _, obj = mlp_objective

    def interrupt(done, total, note=""):
        if " extremes" in note:
            raise KeyboardInterrupt

    result = anytime_probe(obj, samples=100, progress=interrupt)
    assert result.partial
    assert [s.name for s in result.stages] == ["subsample"]
    assert result.estimates["lambda_max"].subsampled
    assert result.to_dict()["partial"] is True


def test_progress_reports_stage_products_and_eta(mlp_objective):
    _, obj = mlp_objective
    calls = []
    anytime_probe(obj, samples=100, density=False,
                  progress=lambda done, total, note="": calls.append((done, total, note)))
    notes = [re.fullmatch(r"stage (\d)/3 (\w+)( · ETA (\d+) s)?", note) for *_, note in calls]
    assert all(notes), calls                              # of three stages
    assert {m[2] for m in notes} == {"subsample", "extremes"}
    assert all(done <= total for done, total, _ in calls)
    assert any(m[4] is not None for m in notes)           # an ETA


@pytest.mark.slow
def test_train_mode_subsets_whole_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()
    X, y = torch.randn(600, 5, dtype=D), torch.randint(0, 3, (600,))
    obj = ls.Objective.from_model(net, nn.functional.cross_entropy, (X, y), batch_size=30,
                                  mode="train")
    snap = Snapshot(net)
    result = anytime_probe(obj, samples=60, density=False)
    snap.check()
    assert "5 subsets of 60" in result.stages[0].data
    full = ls.spectrum(obj, 1, "both")
    est = result.stages[0].estimates
    assert est["lambda_max"].low <= full.largest.values[0].item() <= est["lambda_max"].high


def test_an_analytic_function_goes_straight_to_the_exact_stages():
    obj = ls.Objective.from_function(lambda x: x[0] ** 2 - x[1] ** 2, [0.0, 0.0])
    result = anytime_probe(obj)
    assert [s.name for s in result.stages] == ["extremes", "density"]
    assert result.verdict == "saddle"


def test_old_keywords_warn_and_give_the_same_result():
    from landscope import anytime
    from landscope._deprecated import LandscopeDeprecationWarning

    obj = ls.Objective.from_function(lambda x: x[0] ** 2 - 1e-3 * x[1] ** 2, [0.0, 0.0])
    with pytest.warns(LandscopeDeprecationWarning) as caught:
        old = anytime_probe(obj, steps=5, rel_tol=1e-2)
    assert {str(w.message).split(" is")[0] for w in caught} == {
        "anytime_probe(steps=…)", "anytime_probe(rel_tol=…)"}
    new = anytime_probe(obj, lanczos_steps=5, zero_rtol=1e-2)
    assert old.probe.tolerances == new.probe.tolerances and new.probe.tolerances.zero_rtol == 1e-2
    assert old.verdict == new.verdict == "saddle"   # λ = −2e-3 is zero at 1 % of ρ: higher order
    assert old.probe.stationarity == new.probe.stationarity
    with pytest.warns(LandscopeDeprecationWarning, match="SUBSET_EIG_RTOL"):
        assert anytime.SUBSET_TOL == anytime.SUBSET_EIG_RTOL


def test_bad_input_is_refused_before_any_work(mlp_objective, monkeypatch):
    _, obj = mlp_objective
    with pytest.raises(BadInputError, match="time_budget=0"):
        anytime_probe(obj, time_budget=0)
    with pytest.raises(BadInputError, match=r"samples=500 × subsets=5 = 2500 > 1200"):
        anytime_probe(obj, samples=500)
    monkeypatch.setattr(plan_module, "available_bytes", lambda device: 10_000)
    before = obj.counts["hvp"]
    with pytest.raises(BadInputError, match="only .* free"):
        anytime_probe(obj)
    assert obj.counts["hvp"] == before


def test_the_schedule_picks_the_subset_size_from_the_budget(mlp_objective):
    _, obj = mlp_objective
    plan = dataclasses.replace(cost_plan(obj), fixed_product_seconds=0.002,
                               seconds_per_sample_product=1e-4)
    free = schedule(obj, plan, samples=None, subsets=5, k=5, probes=8, lanczos_steps=60,
                    density=True, time_budget=None)
    assert [s.name for s in free] == ["subsample", "extremes", "density"]
    assert free[0].samples == 240                          # 1200 / 5 subsets, ≤ 512
    products = free[0].products
    assert free[0].seconds == pytest.approx(products * (0.002 + 240e-4))
    budget = 8.0                                           # a quarter: 2 s for the first stage
    tight = schedule(obj, plan, samples=None, subsets=5, k=5, probes=8, lanczos_steps=60,
                     density=True, time_budget=budget)
    assert tight[0].samples == int((2.0 / products - 0.002) / 1e-4) < 240
    assert tight[0].seconds <= 2.0
    assert tight[1].seconds == pytest.approx(free[1].seconds)   # all the data either way


def test_a_plan_timed_at_two_sizes_separates_the_fixed_cost(mlp_objective):
    from landscope.plan import scaled
    _, obj = mlp_objective
    base = cost_plan(obj)
    small = dataclasses.replace(base, samples=64, product_seconds=0.01)
    large = dataclasses.replace(base, samples=256, product_seconds=0.016)
    both = scaled(small, large)
    assert both.seconds_per_sample_product == pytest.approx(0.006 / 192)
    assert both.fixed_product_seconds == pytest.approx(0.016 - 256 * 0.006 / 192)
    assert both.product_time(64) == pytest.approx(0.01)
    assert both.product_time(2000) < 2000 / 64 * 0.01        # not proportional to the small one


def test_the_lanczos_basis_shrinks_to_fit_the_free_memory(mlp_objective):
    from landscope.anytime.budget import basis_size
    _, obj = mlp_objective
    plan = cost_plan(obj)
    assert basis_size(plan, 10, 1200, dense=False) is None        # the solver's default fits
    room = plan.peak_bytes(0, 1200) + 40 * plan.parameter_bytes    # 20 basis vectors + products
    tight = dataclasses.replace(plan, available_bytes=room)
    assert basis_size(tight, 10, 1200, dense=False) == 20
    tighter = dataclasses.replace(plan, available_bytes=plan.peak_bytes(0, 1200))
    with pytest.raises(BadInputError, match="free"):
        basis_size(tighter, 10, 1200, dense=False)


@pytest.mark.slow
def test_first_stage_brackets_a_resnets_extremes():
    """A small ResNet (BatchNorm, skips) part-way through training: the first stage's intervals
    contain the full-data λ_max and λ_min (at a looser subset tolerance the bottom end was
    accepted inside the bulk, far above the true λ_min)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    import small_resnet

    net = small_resnet.model(epochs=1)
    X, y = small_resnet.data(samples=600, seed=1)
    obj = ls.Objective.from_model(net, nn.functional.cross_entropy, (X, y))
    snap = Snapshot(net)
    first = anytime_probe(obj, samples=60, density=False,
                          progress=_stop_after_first_stage).stages[0]
    snap.check()
    full = ls.spectrum(obj, 1, "both")
    for name, pairs in (("lambda_max", full.largest), ("lambda_min", full.smallest)):
        iv = first.estimates[name]
        assert iv.low <= pairs.values[0].item() <= iv.high, (name, iv, pairs.values)


def _stop_after_first_stage(done, total, note=""):
    if " subsample" not in note:
        raise KeyboardInterrupt


def test_subset_refuses_what_it_cannot_do_and_names_the_fix(mlp_objective):
    _, obj = mlp_objective
    with pytest.raises(BadInputError, match="units='rows'; use 'samples' or 'batches'"):
        obj.subset([0, 1], units="rows")
    f = ls.Objective.from_function(lambda x: (x**2).sum(), [1.0, 2.0])
    with pytest.raises(BadInputError, match="from_model"):
        f.subset([0])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    trained = ls.Objective.from_model(net, nn.functional.cross_entropy,
                                      (torch.randn(20, 5, dtype=D), torch.randint(0, 2, (20,))),
                                      batch_size=5, mode="train")
    with pytest.raises(BadInputError, match="units='batches'.*mode='eval'"):
        trained.subset([0, 1])
    assert trained.subset([0, 2], units="batches").value().item() > 0


def test_counting_the_samples_does_not_read_the_data_again():
    class Counted:
        passes = 0

        def __iter__(self):
            Counted.passes += 1
            gen = torch.Generator().manual_seed(0)
            for size in (4, 4, 3):
                yield torch.randn(size, 5, generator=gen), torch.randint(0, 2, (size,),
                                                                        generator=gen)

    from landscope.data import Batches
    batches = Batches(Counted())
    assert batches.sizes == [4, 4, 3] and Counted.passes == 1
    list(batches)
    assert batches.sizes == [4, 4, 3] and Counted.passes == 2   # the pass above, not a count
