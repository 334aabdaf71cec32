"""Surfaces: closed forms, the plain loop, resume, storage, fidelity, BatchNorm, subsets, budget."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from helpers import classification_data, make_cnn, make_mlp
from torch import nn

from landscope import BadInputError, Objective
from landscope import directions as D
from landscope._deprecated import LandscopeDeprecationWarning
from landscope.adaptive import adaptive_surface
from landscope.pointwise import Replica, SubsetLoss, bn_buffers, bn_value
from landscope.surface import Fidelity, SeedSpread, Surface, project, seed_spread, surface

E1 = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
E2 = torch.tensor([-0.2, 1.0, 0.3], dtype=torch.float64)


def _quadratic_saddle():
    return Objective.from_function(lambda x: x[0]**2 - x[1]**2 + 0.5 * x[0] * x[1] + x[2],
                                   [0.3, -0.2, 0.1])


def _closed_form(a, b):
    x = np.array([0.3, -0.2, 0.1])[:, None, None] + a * E1.numpy()[:, None, None] \
        + b * E2.numpy()[:, None, None]
    return x[0]**2 - x[1]**2 + 0.5 * x[0] * x[1] + x[2]


def test_analytic_surfaces_equal_their_closed_forms():
    obj = _quadratic_saddle()
    s = surface(obj, [E1, E2], span=((-1, 2), (-0.5, 0.5)), resolution=(13, 7))
    A, B = np.meshgrid(*s.axes, indexing="ij")
    np.testing.assert_allclose(s.values, _closed_form(A, B), rtol=1e-13, atol=1e-13)
    line = surface(obj, E1, span=1.5, resolution=31)
    np.testing.assert_allclose(line.values, _closed_form(line.axes[0], 0.0)[0], rtol=1e-13,
                               atol=1e-13)
    assert line.axes[0][15] == 0.0 and line.values[15] == obj.value().item()
    assert line.summary()["centre_value"] == obj.value().item()
    assert line.summary()["argmin"] == [line.axes[0][int(np.argmin(line.values))]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_equals_a_plain_loop_exactly_and_a_plain_model_loop_closely(dtype):
    model = make_mlp(nn.ReLU, sizes=(4, 8, 3), dtype=dtype)
    X, y = classification_data(dtype=dtype)
    obj = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
    frame = D.random(obj, 2, seed=1)
    s = surface(obj, frame, span=0.7, resolution=5)
    c, (d1, d2) = obj.theta0, frame.vectors
    loop = np.array([[obj.value(c + a * d1 + b * d2).item() for b in s.axes[1]]
                     for a in s.axes[0]])
    assert np.array_equal(s.values, loop)
    probe = copy.deepcopy(model)  # the way a user would do it by hand, in place
    for i, a in enumerate(s.axes[0]):
        for j, b in enumerate(s.axes[1]):
            torch.nn.utils.vector_to_parameters(c + a * d1 + b * d2, probe.parameters())
            with torch.no_grad():
                expected = nn.functional.cross_entropy(probe(X), y).item()
            assert s.values[i, j] == pytest.approx(expected, rel=1e-6 if dtype == torch.float32
                                                   else 1e-14)


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [getattr(m, "momentum", None) for m in model.modules()])


def test_the_callers_model_and_rng_are_never_changed():
    model = make_cnn()
    model.conv.train()  # mixed modes and a frozen parameter, as a user might leave them
    model.fc.bias.requires_grad_(False)
    X, y = classification_data(n=40, features=16)
    before, rng = _state(model), torch.get_rng_state()
    obj = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
    frame = D.random(obj, 2, seed=0)
    surface(obj, frame, resolution=3, bn="recompute", trajectory=[obj.theta0, obj.theta0 * 0.5])
    adaptive_surface(obj, frame, resolution=9, samples=0.5)
    after = _state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]
    assert torch.equal(rng, torch.get_rng_state())
    assert all(not hasattr(m, "_forward_pre_hooks") or not m._forward_pre_hooks
               for m in model.modules())


def test_interrupted_grid_resumes_to_the_uninterrupted_one(tmp_path):
    model = make_mlp()
    X, y = classification_data()
    obj = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
    frame = D.random(obj, 2, seed=4)
    full = surface(obj, frame, resolution=6)
    path = tmp_path / "grid.npz"

    def interrupt(done, total):
        if done == 14:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        surface(obj, frame, resolution=6, checkpoint=path, progress=interrupt)
    partial = Surface.load(path)
    assert np.isfinite(partial.values).sum() == 14 and not partial.complete
    calls = []
    resumed = surface(obj, frame, resolution=6, checkpoint=path,
                      progress=lambda done, total: calls.append(total))
    assert set(calls) == {36 - 14} and len(calls) == 22  # only the missing points were evaluated
    assert np.array_equal(resumed.values, full.values)
    again = surface(obj, frame, resolution=6, checkpoint=path, progress=lambda *a: calls.append(a))
    assert len(calls) == 22 and np.array_equal(again.values, full.values)  # nothing recomputed
    with pytest.raises(BadInputError, match="other settings"):
        surface(obj, frame, resolution=7, checkpoint=path)


def test_save_and_load_round_trip_without_pickles(tmp_path):
    obj = _quadratic_saddle()
    s = surface(obj, D.frame(E1, E2), resolution=5,
                trajectory=torch.randn(4, 3, dtype=torch.float64))
    spread = SeedSpread((1, 2), 5, 1.0, (0.5, 0.25), 0.125, 0.375)
    s.fidelity = Fidelity(seed_spread=spread, taylor={"step": 0.5})
    loaded = Surface.load(s.save(tmp_path / "s.npz"))
    assert np.array_equal(loaded.values, s.values) and np.array_equal(loaded.directions,
                                                                       s.directions)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.axes, s.axes, strict=True))
    assert np.array_equal(loaded.projection.coords, s.projection.coords)
    assert loaded.projection.explained == s.projection.explained
    assert loaded.fidelity == s.fidelity and loaded.fidelity.seed_spread == spread
    assert loaded.meta["centre_sha256"] == s.meta["centre_sha256"]
    assert loaded.meta["frame"]["directions"][0]["kind"] == "custom"
    with np.load(tmp_path / "s.npz", allow_pickle=False) as raw:
        assert all(raw[key].dtype != object for key in raw.files)
        assert json.loads(str(raw["meta"]))["fidelity"] == {  # the keys of 0.1
            "seed_spread": {"seeds": [1, 2], "steps": 5, "span": 1.0, "ranges": [0.5, 0.25],
                            "relative_spread_median": 0.125, "relative_spread_max": 0.375},
            "taylor": {"step": 0.5}}
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a landscope surface"):
        Surface.load(tmp_path / "bad.npz")


def test_second_difference_along_v_min_at_a_network_saddle_is_lambda_min():
    torch.manual_seed(0)  # a deep linear network at the origin: a saddle with ± curvature
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 1, bias=False)).double()
    for p in model.parameters():
        nn.init.zeros_(p)
    X, y = classification_data(n=30, features=3)
    Y = (y.double() - 1)[:, None]
    obj = Objective.from_model(model, nn.functional.mse_loss, (X, Y))
    frame = D.hessian(obj)
    lam_min = frame.directions[1].info["eigenvalue"]
    assert lam_min < 0 < frame.directions[0].info["eigenvalue"]
    h = 1e-3
    s = surface(obj, frame, span=h, resolution=3)
    second = (s.values[1, 2] - 2 * s.values[1, 1] + s.values[1, 0]) / h**2
    assert second == pytest.approx(lam_min, rel=1e-5)  # L along v is a quartic: error O(h²)
    first = (s.values[2, 1] - 2 * s.values[1, 1] + s.values[0, 1]) / h**2
    assert first == pytest.approx(frame.directions[0].info["eigenvalue"], rel=1e-5)


def test_projection_fidelity_of_a_trajectory_partly_off_the_plane():
    obj = Objective.from_function(lambda x: (x**2).sum(), torch.zeros(3))
    frame = D.frame(torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 1.0, 0]))  # not orthogonal
    path = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 2.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    p = project(obj, frame, path)
    np.testing.assert_allclose(p.coords, [[1, 1], [-2, 3], [0, 0]], atol=1e-14)
    np.testing.assert_allclose(p.distance, [0, 2, 1], atol=1e-14)
    assert p.explained == pytest.approx((5 + 10) / (5 + 14 + 1))
    with pytest.raises(BadInputError, match="have 4 parameters; this objective has n = 3"):
        project(obj, frame, torch.zeros(2, 4))


@pytest.mark.parametrize("kwargs, message", [
    ({"frame": [torch.ones(4), E2]}, r"direction 1 has shape \(4,\)"),
    ({"frame": [E1, torch.zeros(3)]}, "direction 2 is zero"),
    ({"span": 0.0}, "span .* is empty"),
    ({"span": float("nan")}, "not finite"),
    ({"span": (1.0, -1.0)}, "is empty"),
    ({"resolution": 1}, "at least 2 points"),
    ({"resolution": (5, 5, 5)}, "one value or one per direction"),
    ({"bn": "train"}, "use one of eval, recompute"),
    ({"bn": "recompute"}, "Objective built with Objective.from_model"),
    ({"trajectory": torch.zeros(3, 5)}, "have 5 parameters"),
    ({"centre": torch.zeros(2)}, r"centre has shape \(2,\)"),
])
def test_bad_input_gives_clear_errors(kwargs, message):
    obj = _quadratic_saddle()
    kwargs = {"frame": [E1, E2], "resolution": 3, **kwargs}
    with pytest.raises(BadInputError, match=message):
        surface(obj, kwargs.pop("frame"), **kwargs)


def _bn_reference(model, X, y, theta, obj):
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for name, view in obj.unflatten(theta).items():
            probe.get_parameter(name).copy_(view)
    probe.bn.reset_running_stats()
    probe.bn.momentum = None
    probe.train()
    with torch.no_grad():
        probe(X)
        probe.eval()
        return nn.functional.cross_entropy(probe(X), y).item(), probe.bn


def test_recomputed_batchnorm_statistics_match_a_fresh_train_pass():
    model = make_cnn()
    X, y = classification_data(n=24, features=16)
    one = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
    chunked = Objective.from_model(model, nn.functional.cross_entropy, (X, y), batch_size=7)
    theta = one.theta0 + 0.3 * D.random(one, 1, seed=2).directions[0].vector
    expected, bn = _bn_reference(model, X, y, theta, one)
    assert bn_value(one, theta) == pytest.approx(expected, rel=1e-12)
    pooled = bn_buffers(chunked, theta)  # pooled exactly over 4 uneven batches
    torch.testing.assert_close(pooled["bn.running_mean"], bn.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pooled["bn.running_var"], bn.running_var, rtol=1e-12, atol=1e-14)
    s = surface(one, D.frame(theta - one.theta0), span=(0.0, 1.0), resolution=2, bn="recompute")
    assert s.values[1] == pytest.approx(expected, rel=1e-12)
    assert s.values[1] != pytest.approx(surface(one, D.frame(theta - one.theta0),
                                                span=(0.0, 1.0), resolution=2).values[1], rel=1e-6)


def test_subset_loss_and_its_standard_error_by_hand():
    model = make_mlp()
    X, y = classification_data(n=200)
    obj = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
    subset = SubsetLoss(obj, seed=5)
    assert subset.per_sample and subset.t95 == 1.96
    order = torch.randperm(200, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        output = model(X[order[:80]])
    losses = nn.functional.cross_entropy(output, y[order[:80]], reduction="none")
    value, stderr = subset.value(obj.theta0, 80)
    assert value == pytest.approx(losses.mean().item(), rel=1e-12)
    assert stderr == pytest.approx(losses.std().item() / 80**0.5 * (1 - 80 / 200)**0.5,
                                   rel=1e-10)
    assert subset.value(obj.theta0, 200) == (obj.value().item(), 0.0)
    with torch.no_grad():  # the subset's loss is a configured copy: the Objective's is its own
        assert obj.value().item() == pytest.approx(
            nn.functional.cross_entropy(model(X), y).item(), rel=1e-12)

    def not_per_sample(out, target):  # a batch statistic: no per-sample split exists
        return nn.functional.cross_entropy(out, target) + out.var()

    chunked = SubsetLoss(Objective.from_model(model, not_per_sample, (X, y)), seed=5, chunks=8)
    assert not chunked.per_sample and chunked.t95 == 2.365
    value, stderr = chunked.value(obj.theta0, 80)
    assert value == pytest.approx(not_per_sample(output, y[order[:80]]).item(), rel=1e-12)
    means = torch.stack([not_per_sample(o, t) for o, t in
                         zip(output.split(10), y[order[:80]].split(10), strict=True)])
    assert stderr == pytest.approx(means.std().item() / 8**0.5 * (1 - 80 / 200)**0.5, rel=1e-10)
    with pytest.raises(BadInputError, match="mode='eval'"):
        SubsetLoss(Objective.from_model(model, nn.functional.cross_entropy, (X, y),
                                        mode="train"))


def test_adaptive_view_matches_the_full_grid_within_its_stated_error():
    obj = Objective.from_function(
        lambda x: torch.sin(3 * x[0]) * torch.cos(2 * x[1]) + x[0]**2, torch.zeros(2))
    frame = D.frame(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    full = surface(obj, frame, span=1.5, resolution=41)
    cheap = adaptive_surface(obj, frame, span=1.5, resolution=41, error_rtol=0.01)
    assert cheap.meta["cost_ratio"] <= 0.25
    assert np.all(np.abs(cheap.values - full.values) <= cheap.error)
    assert np.array_equal(cheap.values[cheap.evaluated], full.values[cheap.evaluated])
    assert cheap.error.max() < 0.05 * np.ptp(full.values)


def test_budgeted_view_computes_the_centre_and_shows_the_true_lowest_point():
    # A well of width ~0.05 at the centre: invisible to a coarse grid laid out from a corner
    # (nodes at ±0.2, ±0.6, ±1), so the centre was interpolated as 2 where the truth is 1.
    obj = Objective.from_function(lambda x: 2.0 - torch.exp(-(x**2).sum() / 0.002),
                                  torch.zeros(2, dtype=torch.float64))
    frame = D.frame(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    cheap = adaptive_surface(obj, frame, resolution=41, error_rtol=0.01)
    assert cheap.evaluated[20, 20] and cheap.error[20, 20] == 0
    summary = cheap.summary()
    assert summary["centre_value"] == pytest.approx(1.0, abs=1e-12)
    assert summary["min"] == pytest.approx(1.0, abs=1e-12) and summary["argmin"] == [0.0, 0.0]
    full = surface(obj, frame, resolution=41)
    assert np.array_equal(cheap.values[cheap.evaluated], full.values[cheap.evaluated])
    assert summary["argmin"] == full.summary()["argmin"]
    off = adaptive_surface(obj, frame, span=(-0.3, 1.0), resolution=9)  # no grid point at 0
    assert off.values.shape == (9, 9) and np.isfinite(off.error).all()


def test_adaptive_view_with_data_subsets_on_a_network():
    model = make_mlp(sizes=(4, 16, 3))
    X, y = classification_data(n=400)
    obj = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
    frame = D.random(obj, 2, seed=0)
    full = surface(obj, frame, resolution=17)
    cheap = adaptive_surface(obj, frame, resolution=17, samples=0.25, budget=0.5)
    assert cheap.meta["cost_ratio"] <= 0.5 and cheap.meta["samples"] == 100
    inside = np.abs(cheap.values - full.values) <= cheap.error
    assert inside.mean() >= 0.95, inside.mean()


def test_seed_spread_reports_each_seeds_picture():
    obj = _quadratic_saddle()
    report = seed_spread(obj, seeds=(1, 2, 3), resolution=5, norm="none")
    ranges = [np.ptp(surface(obj, D.random(obj, 2, seed=s, norm="none"), resolution=5).values)
              for s in (1, 2, 3)]
    np.testing.assert_allclose(report.ranges, ranges, rtol=1e-14)
    assert report.relative_spread_median > 0
    assert report.to_dict()["steps"] == 5  # the file key of 0.1
    same = seed_spread(obj, seeds=(4, 4), resolution=5, norm="none")
    assert same.relative_spread_max == 0.0


class _Unclonable(nn.Module):
    """A network holding an open file: it cannot be deep-copied."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3).double()
        self.log = open(__file__)  # noqa: SIM115 - closed by the test

    def forward(self, x):
        return self.fc(x)


def test_fast_path_falls_back_to_the_objective_where_it_cannot_apply():
    X, y = classification_data()
    model = _Unclonable()
    try:
        obj = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
        with pytest.raises(BadInputError, match="cannot be deep-copied"):
            Replica(obj)
        frame = D.random(obj, 1, seed=0)
        s = surface(obj, frame, resolution=3)
        assert s.values[2] == obj.value(obj.theta0 + frame.vectors[0]).item()
    finally:
        model.log.close()
    dropout = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    obj = Objective.from_model(dropout, nn.functional.cross_entropy, (X, y), mode="train")
    frame = D.random(obj, 1, seed=0)
    s = surface(obj, frame, resolution=3)  # train mode: the Objective's fixed dropout masks
    assert s.values[0] == obj.value(obj.theta0 - frame.vectors[0]).item()


def test_interrupted_adaptive_view_resumes_to_the_same_picture(tmp_path):
    obj = Objective.from_function(lambda x: torch.sin(3 * x[0]) + x[0] * x[1]**2, torch.zeros(2))
    frame = D.frame(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    whole = adaptive_surface(obj, frame, resolution=33, error_rtol=0.005)
    seen = []

    def interrupt(done, total):
        seen.append(done)
        if len(seen) == 60:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        adaptive_surface(obj, frame, resolution=33, error_rtol=0.005,
                         checkpoint=tmp_path / "a.npz", progress=interrupt)
    resumed = adaptive_surface(obj, frame, resolution=33, error_rtol=0.005,
                               checkpoint=tmp_path / "a.npz")
    assert np.array_equal(resumed.values, whole.values)
    assert np.array_equal(resumed.error, whole.error)
    assert resumed.meta["points_evaluated"] == whole.meta["points_evaluated"]


def test_old_keywords_warn_and_give_the_same_surfaces():
    obj, frame = _quadratic_saddle(), D.frame(E1, E2)
    with pytest.warns(LandscopeDeprecationWarning, match=r"steps=…\) is renamed resolution="):
        old = surface(obj, frame, steps=5)
    assert np.array_equal(old.values, surface(obj, frame, resolution=5).values)
    for old_keyword, new_keyword in (("tol", "error_atol"), ("rel_tol", "error_rtol")):
        with pytest.warns(LandscopeDeprecationWarning) as caught:
            old = adaptive_surface(obj, frame, steps=9, **{old_keyword: 0.05})
        assert {str(w.message).split(" is renamed")[0] for w in caught} == {
            "adaptive_surface(steps=…)", f"adaptive_surface({old_keyword}=…)"}
        new = adaptive_surface(obj, frame, resolution=9, **{new_keyword: 0.05})
        assert np.array_equal(old.values, new.values) and np.array_equal(old.error, new.error)
    with pytest.warns(LandscopeDeprecationWarning) as caught:
        old = seed_spread(obj, seeds=(1, 2), steps=3, count=1, norm="none")
    assert sorted(str(w.message).split(" is renamed")[0] for w in caught) == [
        "seed_spread(count=…)", "seed_spread(steps=…)"]
    assert old == seed_spread(obj, seeds=(1, 2), resolution=3, dims=1, norm="none")


def test_progress_true_is_refused_naming_what_draws_a_bar():
    with pytest.raises(BadInputError, match="render.progress.bar"):
        surface(_quadratic_saddle(), D.frame(E1, E2), resolution=3, progress=True)
