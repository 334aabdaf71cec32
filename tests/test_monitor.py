"""The Monitor: every recorded number against a manual computation, and it only observes."""

from __future__ import annotations

import doctest
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import Snapshot, TiedDictLM, dict_batches, token_loss
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import landscope.monitor.callbacks as callbacks_module
import landscope.monitor.curvature as curvature_module
import landscope.monitor.makeup as makeup_module
import landscope.monitor.monitor as monitor_module
import landscope.monitor.record as record_module
import landscope.monitor.signals as signals_module
import landscope.monitor.stats as stats_module
from landscope.errors import BadInputError
from landscope.monitor import Monitor, read_record
from landscope.monitor.callbacks import HuggingFaceHooks, LightningHooks
from landscope.monitor.curvature import measure, stability
from landscope.monitor.stats import dead_fraction, row_spread, saturation

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=48, features=6, classes=3, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, features, generator=gen, dtype=dtype),
            torch.randint(0, classes, (n,), generator=gen))


def _net(seed=0, activation=nn.ReLU, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), activation(), nn.Linear(5, 4), nn.Sigmoid(),
                         nn.Linear(4, 3)).to(dtype)


def _train(model, optimizer, X, y, steps, monitor=None, batch=16, seed=0, inspect=None):
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = (torch.arange(len(X)) if batch is None
                 else torch.randint(0, len(X), (batch,), generator=gen))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(X[index]), y[index])
        loss.backward()
        if inspect is not None:
            inspect(step)
        optimizer.step()
        if monitor is not None:
            monitor.step(loss)


# ---------------------------------------------------------------------- first-order numbers
def test_gradient_weight_update_and_cosine_columns_match_a_manual_computation(tmp_path):
    X, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    layers = {"0": model[0], "2": model[2], "4": model[4]}
    seen = []

    def inspect(step):  # gradients and weights exactly as the optimiser is about to use them
        seen.append({name: (torch.cat([p.grad.reshape(-1) for p in m.parameters()]).clone(),
                            torch.cat([p.detach().reshape(-1) for p in m.parameters()]).clone())
                     for name, m in layers.items()})

    with Monitor(model, opt, tmp_path, every=1, check_every=4) as monitor:
        _train(model, opt, X, y, 6, monitor, inspect=inspect)
    after = {name: torch.cat([p.detach().reshape(-1) for p in m.parameters()])
             for name, m in layers.items()}
    record = read_record(tmp_path)
    assert record["step"].tolist() == list(range(6))
    for step in range(6):
        state = seen[step]
        following = seen[step + 1] if step + 1 < 6 else {n: (None, after[n]) for n in layers}
        for name in layers:
            grad, weight = state[name]
            update = following[name][1] - weight
            assert record[f"grad_norm:{name}"][step] == pytest.approx(grad.norm().item(), rel=1e-9)
            assert record[f"weight_norm:{name}"][step] == pytest.approx(weight.norm().item(),
                                                                        rel=1e-9)
            assert record[f"update_ratio:{name}"][step] == pytest.approx(
                (update.norm() / weight.norm()).item(), rel=1e-8)
        flat = torch.cat([state[n][0] for n in layers])
        assert record["grad_norm"][step] == pytest.approx(flat.norm().item(), rel=1e-9)
        if step == 0:
            assert math.isnan(record["grad_cos"][0])
        else:
            prev = torch.cat([seen[step - 1][n][0] for n in layers])
            cos = torch.dot(flat, prev) / (flat.norm() * prev.norm())
            assert record["grad_cos"][step] == pytest.approx(cos.item(), rel=1e-9)
    assert record["lr"].tolist() == [0.3] * 6
    assert record["non_finite"].tolist() == [0.0] * 6


def test_activation_statistics_match_a_hand_count():
    X, y = _data()
    model = _net()
    with torch.no_grad():
        model[0].bias[:2] = -100.0  # units 0 and 1 of the ReLU can never fire: dead
        model[2].weight.mul_(40.0)  # drives the sigmoid into its tails
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    captured = {}
    model[1].register_forward_hook(lambda m, a, out: captured.__setitem__("relu", out.detach()))
    model[3].register_forward_hook(lambda m, a, out: captured.__setitem__("sig", out.detach()))
    with Monitor(model, opt) as monitor:
        _train(model, opt, X, y, 1, monitor)
    record = monitor.record
    relu, sig = captured["relu"], captured["sig"]
    dead_by_hand = sum(bool((relu[:, j] == 0).all()) for j in range(relu.shape[1])) / 5
    assert dead_by_hand >= 0.4
    assert record["dead:1"][0] == pytest.approx(dead_by_hand)
    derivative = sig * (1 - sig) / 0.25
    assert record["saturation:3"][0] == pytest.approx((derivative < 0.01).double().mean().item())
    assert [s["name"] for s in record.meta["sites"]] == ["1", "3"]


def test_dead_units_are_channels_of_feature_maps_and_features_of_sequences():
    maps = torch.ones(2, 3, 4, 4)
    maps[:, 1] = 0.0  # channel 1 is zero everywhere: dead
    maps[0, 2, 0, 0] = 0.0  # channel 2 is zero somewhere only: alive
    assert dead_fraction(maps) == pytest.approx(1 / 3)
    seq = torch.ones(2, 5, 4)
    seq[..., 3] = 0.0  # feature 3 of every token of every sequence
    assert dead_fraction(seq) == pytest.approx(1 / 4)


def test_saturation_of_tanh_and_row_spread_by_hand():
    y = torch.tensor([0.0, 0.9, 0.996, -0.999])
    assert saturation(y, nn.Tanh()) == pytest.approx(0.5)  # 1 − y² < 0.01 twice
    W = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    by_hand = (W - W.mean(0)).norm() / W.norm()
    assert row_spread(W) == pytest.approx(by_hand.item())
    assert row_spread(torch.zeros(5, 2)) == 0.0
    assert row_spread(torch.full((3, 2), 0.7)) == 0.0


def test_recording_every_k_steps_keeps_consecutive_cosines():
    X, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []

    def inspect(step):
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())

    with Monitor(model, opt, every=3) as monitor:
        _train(model, opt, X, y, 7, monitor, inspect=inspect)
    record = monitor.record
    measured = ~np.isnan(record["grad_norm"])
    assert measured.tolist() == [True, False, False, True, False, False, True]
    assert np.isfinite(record["loss"]).all()
    for step in (3, 6):
        cos = torch.dot(grads[step], grads[step - 1]) / (grads[step].norm()
                                                         * grads[step - 1].norm())
        assert record["grad_cos"][step] == pytest.approx(cos.item(), rel=1e-9)


def test_non_finite_losses_are_flagged_and_missing_ones_are_not():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt) as monitor:
        for loss in (1.0, None, float("nan"), float("inf")):
            monitor.step(loss)
        monitor.log(val_loss=0.5)
    record = monitor.record
    assert record["non_finite"][[0, 2, 3]].tolist() == [0.0, 1.0, 1.0]
    assert math.isnan(record["non_finite"][1]) and math.isnan(record["loss"][1])
    assert record["val_loss"][3] == 0.5


# ---------------------------------------------------------------------- curvature
def _dense_hessian(model, X, y):
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def loss(theta):
        pieces = dict(zip(names, [t.view(s) for t, s in zip(theta.split(sizes), shapes,
                                                             strict=True)], strict=True))
        out = torch.func.functional_call(model, pieces, (X,))
        return nn.functional.cross_entropy(out, y)

    theta = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.func.hessian(loss)(theta), names


def test_curvature_matches_dense_eigh_and_the_noise_scale_a_manual_computation():
    X, y = _data(n=40)
    model = _net(activation=nn.Tanh).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = measure(model, nn.functional.cross_entropy, (X, y), opt, smallest=True,
                     max_products=200, noise_chunks=4)
    H, _ = _dense_hessian(model, X, y)
    eig = torch.linalg.eigvalsh(H)
    assert result["lambda_max"] == pytest.approx(eig[-1].item(), rel=1e-6)
    assert result["lambda_min"] == pytest.approx(eig[0].item(), abs=1e-6 * eig.abs().max().item())
    assert result["sharpness"] == result["lambda_max"]
    assert result["stability_threshold"] == pytest.approx(2 * 1.9 / 0.1)
    chunks = []
    for i in range(4):
        model.zero_grad()
        nn.functional.cross_entropy(model(X[10 * i:10 * i + 10]), y[10 * i:10 * i + 10]).backward()
        chunks.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    model.zero_grad(set_to_none=True)
    G = torch.stack(chunks)
    s2 = ((G - G.mean(0)) ** 2).sum() / 3
    expected = 10 * s2 / (G.mean(0).pow(2).sum() - s2 / 4)
    if expected > 0:
        assert result["noise_scale"] == pytest.approx(expected.item(), rel=1e-8)
    else:
        assert result["noise_scale"] == math.inf


def test_adam_sharpness_is_the_preconditioned_eigenvalue():
    X, y = _data(n=40)
    model = _net(activation=nn.Tanh).eval()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    _train(model, opt, X, y, 5)
    result = measure(model, nn.functional.cross_entropy, (X, y), opt, smallest=False,
                     max_products=200)
    H, names = _dense_hessian(model, X, y)
    params = dict(model.named_parameters())
    P = torch.cat([(opt.state[params[n]]["exp_avg_sq"] / (1 - 0.99 ** 5)).sqrt().reshape(-1)
                   + 1e-8 for n in names])
    D = P.rsqrt()
    expected = torch.linalg.eigvalsh(D[:, None] * H * D[None, :])[-1]
    assert result["sharpness"] == pytest.approx(expected.item(), rel=1e-5)  # tol 1e-3: O(tol²)
    assert result["stability_threshold"] == pytest.approx(2 * 1.8 / (0.2 * 0.01))


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_sharpness_is_the_preconditioned_eigenvalue(centered):
    """P = √v + ε (centred: √(v − m²) + ε, no bias correction): λ_max(P^-½ H P^-½) densely."""
    X, y = _data(n=40)
    model = _net(activation=nn.Tanh).eval()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, momentum=0.5,
                              centered=centered)
    _train(model, opt, X, y, 5)
    result = measure(model, nn.functional.cross_entropy, (X, y), opt, smallest=False,
                     max_products=200)
    H, names = _dense_hessian(model, X, y)
    params = dict(model.named_parameters())
    states = [opt.state[params[n]] for n in names]
    v = torch.cat([(s["square_avg"] - (s["grad_avg"] ** 2 if centered else 0)).reshape(-1)
                   for s in states])
    D = (v.sqrt() + 1e-8).rsqrt()
    expected = torch.linalg.eigvalsh(D[:, None] * H * D[None, :])[-1]
    assert result["sharpness"] == pytest.approx(expected.item(), rel=1e-5)
    assert result["stability_threshold"] == pytest.approx(2 * 1.5 / 0.01)


def _least_squares(n, features=3, seed=2):
    """A linear model (weight and bias) under the mean squared error, whose mini-batch
    gradients and Hessians are known in closed form."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, features, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    return nn.Linear(features, 1).double().eval(), X, y


def _batch_sharpness_by_hand(model, X, y, size, chunks):
    """E_B[g_Bᵀ H_B g_B / ‖g_B‖²] over the first chunks of ``size`` samples: with X̃ = [X, 1] and
    r = X̃θ − y on a chunk, g_B = 2X̃ᵀr/b and H_B = 2X̃ᵀX̃/b."""
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    ratios = []
    for i in range(chunks):
        Xb = torch.cat([X[i * size:(i + 1) * size],
                        torch.ones(size, 1, dtype=torch.float64)], dim=1)
        g = 2 * Xb.T @ (Xb @ theta - y[i * size:(i + 1) * size, 0]) / size
        H = 2 * Xb.T @ Xb / size
        ratios.append((g @ H @ g / (g @ g)).item())
    return sum(ratios) / len(ratios)


@pytest.mark.parametrize("n, size, chunks", [(40, 8, 5), (100, 10, 8)])  # 10 fit, 8 at most
@pytest.mark.parametrize("options", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}])
def test_batch_sharpness_is_the_mean_curvature_along_each_mini_batch_gradient(n, size, chunks,
                                                                            options):
    model, X, y = _least_squares(n)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, **options)
    result = measure(model, nn.functional.mse_loss, (X, y), opt, smallest=False,
                     max_products=50, batch_size=size)
    expected = _batch_sharpness_by_hand(model, X, y, size, chunks)
    assert result["batch_sharpness"] == pytest.approx(expected, rel=1e-10)
    assert result["batch_chunks"] == chunks
    full = torch.cat([X, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    assert result["sharpness"] == pytest.approx(
        torch.linalg.eigvalsh(2 * full.T @ full / n)[-1].item(), rel=1e-8)  # still full-batch
    assert result["stability_threshold"] == stability(opt, dict(model.named_parameters()),
                                                      ["weight", "bias"]).threshold


@pytest.mark.parametrize("make, size", [
    (lambda p: torch.optim.SGD(p, lr=0.1), None),  # the training batch size unknown
    (lambda p: torch.optim.SGD(p, lr=0.1), 40),  # trained on batches as large as the held one
    (lambda p: torch.optim.Adam(p, lr=0.1), 8),  # not SGD: its sharpness is the preconditioned
])
def test_batch_sharpness_is_measured_under_mini_batch_sgd_only(make, size):
    model, X, y = _least_squares(40)
    result = measure(model, nn.functional.mse_loss, (X, y), make(model.parameters()),
                     smallest=False, max_products=50, batch_size=size)
    assert math.isnan(result["batch_sharpness"]) and result["batch_chunks"] == 0
    assert math.isfinite(result["lambda_max"])


def test_a_held_mapping_batch_measures_what_the_same_tuple_batch_does():
    """A dict batch (the model gets ``input=X`` as a keyword, ``labels`` is the target) is the
    same held batch as (X, y): the same curvature, stability limit, batch sharpness and noise
    scale."""
    X, y = _data(n=40)
    model = _net(activation=nn.Tanh).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    options = {"smallest": True, "max_products": 200, "noise_chunks": 4, "batch_size": 10}
    tuple_ = measure(model, nn.functional.cross_entropy, (X, y), opt, **options)
    mapping = measure(model, nn.functional.cross_entropy, {"input": X, "labels": y}, opt,
                      **options)
    for name in curvature_module.COLUMNS:
        if name != "curvature_products":
            assert mapping[name] == pytest.approx(tuple_[name], rel=1e-10), name
    assert math.isfinite(mapping["noise_scale"]) or mapping["noise_scale"] == math.inf
    assert curvature_module.held_size({"input": X, "labels": y}) == 40


@pytest.mark.parametrize("options", [
    {"momentum": 0.0}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.8, "dampening": 0.8},
])
def test_stability_limits_separate_convergence_from_divergence_on_a_quadratic(options):
    """Gradient steps on L = λw²/2 with λ 5% below / above the limit: shrink / grow."""
    w = nn.Parameter(torch.ones(1, dtype=torch.float64))
    limit = stability(torch.optim.SGD([w], lr=0.1, **options), {"w": w}, ["w"]).threshold
    ends = []
    for lam in (0.95 * limit, 1.05 * limit):
        v = nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = torch.optim.SGD([v], lr=0.1, **options)
        for _ in range(600):
            opt.zero_grad()
            (0.5 * lam * v**2).sum().backward()
            opt.step()
        ends.append(abs(v.item()))
    assert ends[0] < 1e-3 and ends[1] > 1e3


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1, dampening=0.5),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.8),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=0.1), lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0),
    lambda p: torch.optim.RMSprop(p, lr=0.1, momentum=0.5),
])
def test_effective_lr_is_the_steady_step_under_a_constant_gradient(make):
    """Under a constant gradient g every optimiser settles into steps −η_eff·P⁻¹g."""
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt = make([w])
    for _ in range(2000):  # RMSprop's average of g² (no bias correction) needs them
        before = w.detach().clone()
        opt.zero_grad()
        (g @ w).backward()
        opt.step()
    stab = stability(opt, {"w": w}, ["w"])
    P = torch.ones(3, dtype=torch.float64) if stab.preconditioner is None else stab.preconditioner
    assert torch.allclose(w.detach() - before, -stab.effective_lr * g / P, rtol=1e-6)


def test_adam_limit_is_that_of_heavy_ball_with_dampening():
    """With a frozen preconditioner Adam is SGD(momentum=β₁, dampening=β₁) on P⁻¹H."""
    w = nn.Parameter(torch.ones(1))
    adam = stability(torch.optim.Adam([w], lr=0.1, betas=(0.9, 0.999)), {"w": w}, ["w"])
    sgd = stability(torch.optim.SGD([w], lr=0.1, momentum=0.9, dampening=0.9), {"w": w}, ["w"])
    assert adam.threshold == pytest.approx(sgd.threshold)
    assert adam.preconditioner is None  # no state before the first step
    assert stability(torch.optim.LBFGS([w]), {"w": w}, ["w"]).threshold is None


@pytest.mark.slow
def test_curvature_is_spent_on_a_stall_or_a_slow_fall_only_and_within_the_budget():
    X, y = _data()
    held = (X[:32], y[:32])
    frozen = _net()
    opt = torch.optim.SGD(frozen.parameters(), lr=0.0)  # the loss cannot fall: a stall
    with Monitor(frozen, opt, loss_fn=nn.functional.cross_entropy, held=held, window=20,
                 check_every=10, budget=math.inf) as monitor:
        _train(frozen, opt, X, y, 60, monitor, batch=None)
    events = monitor.record.meta["events"]
    assert [(e["step"], e["reason"]) for e in events] == [(19, "stalled"), (39, "stalled"),
                                                          (59, "stalled")]  # the cool-down
    assert np.isfinite(monitor.record["lambda_min"]).sum() == 3
    with Monitor(frozen, opt, loss_fn=nn.functional.cross_entropy, held=held, window=20,
                 check_every=10, budget=0.0) as monitor:
        _train(frozen, opt, X, y, 60, monitor, batch=None)
    assert monitor.record.meta["events"] == []  # no budget: not even the first
    learning = _net()
    opt = torch.optim.SGD(learning.parameters(), lr=0.5, momentum=0.9)
    separable = X[:, :3].argmax(1)  # a task the network learns steadily: the loss keeps falling
    with Monitor(learning, opt, loss_fn=nn.functional.cross_entropy, held=(X, separable),
                 window=20, check_every=10, budget=math.inf) as monitor:
        _train(learning, opt, X, separable, 40, monitor, batch=None)
    assert monitor.record.meta["events"] == []
    creeping = _net()
    opt = torch.optim.SGD(creeping.parameters(), lr=0.05)  # a few % a window, then less
    with Monitor(creeping, opt, loss_fn=nn.functional.cross_entropy, held=(X, separable),
                 window=20, check_every=10, budget=math.inf) as monitor:
        _train(creeping, opt, X, separable, 60, monitor, batch=None)
    record, events = monitor.record, monitor.record.meta["events"]
    assert [(e["step"], e["reason"]) for e in events] == [
        (19, "slow"), (39, "slow"), (59, "stalled")]
    th = signals_module.CurveThresholds()
    assert all(th.plateau_rtol <= e["progress"] < th.slow_progress for e in events[:2])
    rows = np.isfinite(record["lambda_max"])
    assert rows.sum() == 3 and np.isfinite(record["lambda_min"][rows]).tolist() == [
        False, False, True]  # λ_min only where the loss stalled
    assert record["effective_lr"][rows].tolist() == [0.05] * 3


class _CountedClock:
    """A clock that moves only when counted work happens: gradient passes and Hessian-vector
    products on the Objectives curvature builds (cost per sample), and what the test adds."""

    def __init__(self, monkeypatch, gradient=1e-3, product=2e-3):
        self.now, self.products = 0.0, 0
        clock = self

        class Counted(curvature_module.Objective):
            def value_and_grad(self, theta=None):
                out = super().value_and_grad(theta)
                clock.now += gradient * self.sample_count()
                return out

            def hvp(self, v, theta=None):
                out = super().hvp(v, theta)
                columns = out.shape[1] if out.dim() == 2 else 1
                clock.now += product * self.sample_count() * columns
                clock.products += columns
                return out

        fake_time = SimpleNamespace(perf_counter=lambda: clock.now)
        monkeypatch.setattr(curvature_module, "Objective", Counted)
        monkeypatch.setattr(curvature_module, "time", fake_time)
        monkeypatch.setattr(monitor_module, "time", fake_time)


@pytest.mark.parametrize("seconds, products, measured", [
    (2.0, True, True),  # λ_max, λ_min and the preconditioned sharpness, each capped
    (0.5, True, False),  # it starts, but 5 products left (2 per run) are too few
    (0.05, False, False),  # below 3 gradients' time: it stops after the gradient
])
def test_a_measurement_keeps_its_time_budget_under_a_counted_clock(monkeypatch, seconds,
                                                                    products, measured):
    """32 held samples: a gradient costs 0.032, a product 0.064 (counted, not measured)."""
    X, y = _data(n=32)
    model = _net(activation=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)  # a second (preconditioned) run
    _train(model, opt, X, y, 3)
    free = measure(model, nn.functional.cross_entropy, (X, y), opt, smallest=True,
                   max_products=200)
    clock = _CountedClock(monkeypatch)
    result = measure(model, nn.functional.cross_entropy, (X, y), opt, smallest=True,
                     max_products=200, seconds=seconds)
    assert result["seconds"] == pytest.approx(clock.now)
    assert result["seconds"] <= seconds + 1e-12
    assert result["gradient_seconds"] == pytest.approx(0.032)
    assert result["held_loss"] == pytest.approx(free["held_loss"], rel=1e-12)
    if products:
        assert result["fixed_seconds"] == pytest.approx(0.032 + 0.064)  # + the graph's product
        assert result["seconds_per_product"] == pytest.approx(0.064)
        assert 2 <= clock.products <= 2 + (seconds - 0.032 - 2 * 0.064) / 0.064 + 1e-9
        assert clock.products <= result["curvature_products"]  # which counts engine trials too
    else:
        assert clock.products == 0 == result["curvature_products"]
    assert clock.products < free["curvature_products"]  # the budget binds
    assert math.isfinite(result["lambda_max"]) == measured
    assert math.isfinite(result["sharpness"]) == measured
    if measured:
        assert result["lambda_max_residual"] >= 0 and result["note"] == "" or "noise" in \
            result["note"]
    else:
        assert "not measured" in result["note"]


@pytest.mark.parametrize("seconds, chunks, eigenvalue", [
    (2.0, 4, True),  # every chunk and the eigenvalue fit
    (0.81, 4, False),  # the chunks come first; the 0.55 s left buy 8 products, below 10
    (0.17, 0, False),  # setup (0.16 s) leaves 0.01 s, below a chunk's 0.024: skipped, noted
])
def test_the_batch_sharpness_keeps_to_the_time_budget_under_a_counted_clock(monkeypatch, seconds,
                                                                          chunks, eigenvalue):
    """32 held samples in chunks of 8: a gradient costs 0.032, a product 0.064, a chunk 0.024."""
    X, y = _data(n=32)
    model = _net(activation=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    options = {"smallest": False, "max_products": 200, "batch_size": 8}
    free = measure(model, nn.functional.cross_entropy, (X, y), opt, **options)
    clock = _CountedClock(monkeypatch)
    result = measure(model, nn.functional.cross_entropy, (X, y), opt, seconds=seconds, **options)
    assert result["seconds"] == pytest.approx(clock.now) and clock.now <= seconds + 1e-12
    assert result["batch_chunks"] == chunks
    assert math.isfinite(result["lambda_max"]) == eigenvalue
    if chunks:
        assert result["batch_sharpness"] == pytest.approx(free["batch_sharpness"], rel=1e-12)
    else:
        assert math.isnan(result["batch_sharpness"])
        assert "no time left for the batch sharpness" in result["note"]


@pytest.mark.slow
def test_the_first_curvature_measurement_is_within_the_budget_too(monkeypatch):
    """Each training step costs 1 on the counted clock; curvature's time, the first measurement
    included, stays within budget × training time at every measurement (the Monitor's own
    bookkeeping costs nothing on this clock)."""
    X, y = _data()
    held = (X[:32], y[:32])
    clock = _CountedClock(monkeypatch, gradient=0.02, product=0.01)  # a product: 0.32 steps
    frozen = _net()
    opt = torch.optim.SGD(frozen.parameters(), lr=0.0)  # a stall at every window

    def tick(step):
        clock.now += 1.0

    budget, spent = 0.05, []
    with Monitor(frozen, opt, loss_fn=nn.functional.cross_entropy, held=held, window=100,
                 check_every=100, budget=budget) as monitor:
        _train(frozen, opt, X, y, 1000, monitor, batch=None, inspect=tick)
    events = monitor.record.meta["events"]
    # before the first: a step's time (1) × 32/48 samples × 13 passes = 8.7 > 5 at step 99
    assert events[0]["step"] == 199
    for event in events:
        spent.append(event["seconds"])
        assert sum(spent) <= budget * (event["step"] + 1) + 1e-9
    # later ones get what the earlier left: fewer products once the budget is spent up to it
    assert min(e["products"] for e in events) < events[0]["products"]
    assert events[0]["products"] < 100  # capped below max_products by the time left
    assert np.isfinite(monitor.record["lambda_max"][[e["step"] for e in events]]).all()


def test_the_monitor_records_the_batch_sharpness_of_its_training_batches(tmp_path):
    """SGD on batches of 8 (a model without activation modules: the batch size comes from its
    input), a stalled loss (lr 0): the record's batch sharpness is the closed form's."""
    model, X, y = _least_squares(40)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    with Monitor(model, opt, tmp_path, loss_fn=nn.functional.mse_loss, held=(X, y), window=20,
                 check_every=10, budget=math.inf) as monitor:
        for step in range(40):
            index = torch.arange(8 * step, 8 * step + 8) % 40
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(X[index]), y[index])
            loss.backward()
            opt.step()
            monitor.step(loss)
    record = read_record(tmp_path)
    events = record.meta["events"]
    assert record.meta["batch_size"] == 8 and [e["batch_chunks"] for e in events] == [5, 5]
    rows = [e["step"] for e in events]
    expected = _batch_sharpness_by_hand(model, X, y, 8, 5)
    assert record["batch_sharpness"][rows] == pytest.approx([expected] * 2, rel=1e-9)  # %.10g
    assert np.isnan(np.delete(record["batch_sharpness"], rows)).all()


def test_a_record_made_before_the_batch_sharpness_reads_it_as_nan(tmp_path):
    """Older records lack the column: the header lists the columns, so they still read."""
    model, X, y = _least_squares(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model, opt, tmp_path, every=1) as monitor:
        for _ in range(3):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(X), y)
            loss.backward()
            opt.step()
            monitor.step(loss)
    header = json.loads((tmp_path / "monitor.json").read_text())
    keep = [i for i, name in enumerate(header["columns"]) if name != "batch_sharpness"]
    header["columns"] = [header["columns"][i] for i in keep]
    (tmp_path / "monitor.json").write_text(json.dumps(header))
    lines = (tmp_path / "monitor.csv").read_text().splitlines()
    (tmp_path / "monitor.csv").write_text("".join(
        ",".join(line.split(",")[i] for i in keep) + "\n" for line in lines))
    record = read_record(tmp_path)
    assert "batch_sharpness" not in record.columns and len(record) == 3
    assert np.isnan(record["batch_sharpness"]).all()
    assert record["loss"].tolist() == monitor.record["loss"].tolist()


# ---------------------------------------------------------------------- it only observes
def test_training_is_bit_identical_with_and_without_the_monitor(tmp_path):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                             nn.Linear(8, 3)).double()

    X, y = _data()
    results = []
    for monitored in (False, True):
        torch.manual_seed(123)  # dropout draws from the global RNG
        model = net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # tiny steps: the loss stalls
        monitor = (Monitor(model, opt, tmp_path, loss_fn=nn.functional.cross_entropy,
                           held=(X, y), window=10, check_every=5, budget=math.inf)
                   if monitored else None)
        _train(model, opt, X, y, 30, monitor)
        if monitor is not None:
            monitor.close()
            assert monitor.record.meta["events"], "curvature must have run for this test"
        results.append((model.state_dict(), torch.get_rng_state(), model.training,
                        [m.training for m in model.modules()]))
    (plain, rng_a, mode_a, modes_a), (watched, rng_b, mode_b, modes_b) = results
    assert plain.keys() == watched.keys()
    assert all(torch.equal(plain[k], watched[k]) for k in plain)  # parameters and BN buffers
    assert torch.equal(rng_a, rng_b) and mode_a == mode_b and modes_a == modes_b


class _TiedLM(nn.Module):
    """Embedding → Linear → tanh → output head whose weight IS the embedding's (as GPT-2)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.mix = nn.Linear(4, 4)
        self.act = nn.Tanh()
        self.head = nn.Linear(4, 10)
        self.head.weight = self.emb.weight
        self.double()

    def forward(self, ids):
        return self.head(self.act(self.mix(self.emb(ids))))


def test_tied_embedding_and_head_are_one_layer_and_curvature_matches_dense_eigh(tmp_path):
    gen = torch.Generator().manual_seed(0)
    ids, targets = torch.randint(0, 10, (40,), generator=gen), torch.randint(0, 10, (40,),
                                                                           generator=gen)
    model = _TiedLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # frozen: stalls, so curvature runs
    before = list(model.named_parameters(remove_duplicate=False))
    with Monitor(model, opt, tmp_path, loss_fn=nn.functional.cross_entropy,
                 held=(ids[:32], targets[:32]), every=1, window=20, check_every=10,
                 budget=math.inf) as monitor:
        _train(model, opt, ids, targets, 20, monitor, batch=None)
    record = read_record(tmp_path)
    assert [(layer["name"], layer["params"]) for layer in record.meta["layers"]] == [
        ("emb", ["emb.weight"]), ("mix", ["mix.weight", "mix.bias"]), ("head", ["head.bias"])]
    assert record.meta["n_parameters"] == 40 + 20 + 10  # the tied matrix once
    model.zero_grad()
    nn.functional.cross_entropy(model(ids), targets).backward()
    assert record["grad_norm:emb"][0] == pytest.approx(model.emb.weight.grad.norm().item())
    # ground truth, written out by hand: one matrix E serves as embedding and head
    E, W, b, c = (p.detach() for p in (model.emb.weight, model.mix.weight, model.mix.bias,
                                      model.head.bias))
    sizes = [E.numel(), W.numel(), b.numel(), c.numel()]

    def loss(theta):
        e, w, bb, cc = theta.split(sizes)
        e = e.view(10, 4)
        hidden = torch.tanh(e[ids[:32]] @ w.view(4, 4).T + bb)
        return nn.functional.cross_entropy(hidden @ e.T + cc, targets[:32])

    theta = torch.cat([E.reshape(-1), W.reshape(-1), b, c])
    eig = torch.linalg.eigvalsh(torch.func.hessian(loss)(theta))
    event = record.meta["events"][0]
    assert event["reason"] == "stalled"
    assert record["lambda_max"][event["step"]] == pytest.approx(eig[-1].item(), rel=1e-6)
    assert record["lambda_min"][event["step"]] == pytest.approx(
        eig[0].item(), abs=1e-3 * eig.abs().max().item())
    after = list(model.named_parameters(remove_duplicate=False))
    assert [(n, id(p)) for n, p in before] == [(n, id(p)) for n, p in after]
    assert model.head.weight is model.emb.weight


def test_a_module_used_twice_leaves_the_model_and_its_training_unchanged():
    """nn.Sequential(l, tanh, l): the same Parameters (by identity, all four names), an
    optimizer made before still moves the layer, and training is bit-identical."""
    X, y = _data(n=32, features=3, classes=3)
    results = []
    for monitored in (False, True):
        torch.manual_seed(0)
        layer = nn.Linear(3, 3).double()
        model = nn.Sequential(layer, nn.Tanh(), layer)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        names = [(n, p) for n, p in model.named_parameters(remove_duplicate=False)]
        monitor = (Monitor(model, opt, loss_fn=nn.functional.cross_entropy, held=(X, y),
                           every=1, window=10, check_every=5, budget=math.inf)
                   if monitored else None)
        _train(model, opt, X, y, 30, monitor, batch=8)
        if monitor is not None:
            monitor.close()
            events = monitor.record.meta["events"]
            assert events and all(math.isfinite(monitor.record["lambda_max"][e["step"]])
                                  for e in events)
        after = list(model.named_parameters(remove_duplicate=False))
        assert len(after) == 4 and [n for n, _ in after] == [n for n, _ in names]
        assert all(p is q and isinstance(q, nn.Parameter)
                   for (_, p), (_, q) in zip(names, after, strict=True))
        assert model[0].weight is layer.weight and model[2].weight is layer.weight
        assert opt.param_groups[0]["params"][0] is layer.weight
        start = layer.weight.detach().clone()
        _train(model, opt, X, y, 1)  # the optimizer made before still moves the layer
        assert not torch.equal(layer.weight.detach(), start)
        results.append(layer.weight.detach().clone())
    assert torch.equal(results[0], results[1])


def test_a_failing_curvature_measurement_is_recorded_and_training_goes_on():
    def unsupported(output, target):  # the analysis' loss only: the loop computes its own
        raise NotImplementedError("derivative for aten::some_kernel is not implemented")

    X, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.warns(RuntimeWarning, match="curvature on the held batch failed.*some_kernel"), \
            Monitor(model, opt, loss_fn=unsupported, held=(X, y), window=20, check_every=10,
                    budget=math.inf) as monitor:
        _train(model, opt, X, y, 60, monitor, batch=None)
    record = monitor.record
    assert len(record) == 60 and np.isfinite(record["loss"]).all()
    (event,) = record.meta["events"]  # once: then curvature is off for the run
    assert event["step"] == 19 and "some_kernel is not implemented" in event["note"]
    assert event["products"] == 0


def test_log_after_the_flush_that_wrote_the_step_rewrites_its_row(tmp_path, monkeypatch):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scalars = []
    writer = SimpleNamespace(add_scalar=lambda *args: scalars.append(args), close=lambda: None)
    monkeypatch.setattr(record_module, "tensorboard_writer", lambda run_dir: writer)
    with Monitor(model, opt, tmp_path, check_every=4, tensorboard=True) as on_disk, \
            Monitor(model, opt, check_every=4) as in_memory:
        for monitor in (on_disk, in_memory):
            with pytest.raises(BadInputError, match="call step"):
                monitor.log(val_loss=1.0)
        for step in range(8):
            for monitor in (on_disk, in_memory):
                monitor.step(None if step == 3 else float(step))  # step 3: a loss known later
                if step == 3:  # t = 4 flushed steps 0..3
                    monitor.log(loss=float("nan"), val_loss=0.25)
                if step == 5:
                    monitor.log(val_loss=0.5)
    for record in (read_record(tmp_path), in_memory.record):
        assert record["val_loss"][[3, 5]].tolist() == [0.25, 0.5]
        assert np.isnan(record["loss"][3]) and record["non_finite"][3] == 1.0
        assert record["loss"][[0, 4, 7]].tolist() == [0.0, 4.0, 7.0]
        assert len(record) == 8
    lines = (tmp_path / "monitor.csv").read_text().splitlines()
    assert len(lines) == 9 and lines[4].startswith("3,nan,0.25,0.1,1,")
    late = [args for args in scalars if args[2] == 3]  # written at the flush, then the late ones
    assert ("lr", 0.1, 3) in late and ("val_loss", 0.25, 3) in late
    assert all(name != "loss" for name, _, _ in late)  # NaN is no scalar
    with pytest.raises(BadInputError, match="closed"):
        on_disk.log(val_loss=1.0)


def test_hooks_are_removed_on_close_and_the_context_manager_closes():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def hooks():
        return (sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
                + len(opt._optimizer_step_pre_hooks))

    assert hooks() == 0
    with Monitor(model, opt, every=2) as monitor:
        assert hooks() == 4  # the optimiser pre-hook, two activation sites and the model's
        # input (the training batch size) for step 0
        _train(model, opt, *_data(), 1, monitor)
        assert hooks() == 1  # step 1 is not measured: the model runs without hooks
    assert hooks() == 0
    monitor.close()  # twice is fine
    with pytest.raises(BadInputError, match="closed"):
        monitor.step(1.0)


# ---------------------------------------------------------------------- the record
def test_record_round_trips_and_is_plain_csv(tmp_path):
    X, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, tmp_path, every=2, check_every=3) as on_disk, \
            Monitor(model, opt, every=2, check_every=3) as in_memory:  # two watch one run
        for step in range(7):
            _train(model, opt, X, y, 1, seed=step)
            on_disk.step(step + 0.5)
            in_memory.step(step + 0.5)
    disk, memory = read_record(tmp_path), in_memory.record
    assert disk["loss"].tolist() == [step + 0.5 for step in range(7)]
    assert list(disk.columns) == list(memory.columns) == disk.meta["columns"]
    for name in disk.columns:
        np.testing.assert_allclose(disk[name], memory[name], rtol=1e-9, equal_nan=True)
    lines = (tmp_path / "monitor.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss,val_loss,lr,non_finite,grad_norm,grad_cos")
    assert len(lines) == 8
    names = memory.meta["columns"]  # every value formatted (no row template), to ten digits
    plain = [",".join(names), *(",".join(f"{memory[name][i]:.10g}" for name in names)
                                for i in range(7))]
    assert (tmp_path / "monitor.csv").read_bytes() == "".join(f"{row}\n" for row in plain).encode()
    assert disk.meta["finished"] is True and disk.meta["steps"] == 7
    assert [layer["name"] for layer in disk.meta["layers"]] == ["0", "2", "4"]


def test_columns_are_filled_by_name_whatever_their_order(monkeypatch):
    """Base columns in another order plus a new one: every column holds the values it holds in
    the usual order (the curve read for curvature included), the new one is NaN."""
    X, y = _data()
    usual = record_module.EVERY_STEP, record_module.BASE_COLUMNS
    shuffled = ("step", "non_finite", "lr", "val_loss", "loss")
    records = []
    for every_step, base in (usual, (shuffled, (*shuffled, "update_ratio", "extra", "grad_cos",
                                                "grad_norm"))):
        monkeypatch.setattr(record_module, "EVERY_STEP", every_step)
        monkeypatch.setattr(record_module, "BASE_COLUMNS", base)
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: curvature at steps 9, 19
        with Monitor(model, opt, loss_fn=nn.functional.cross_entropy, held=(X, y), every=2,
                     check_every=5, window=10, budget=math.inf, max_products=10) as monitor:
            _train(model, opt, X, y, 20, monitor)
        records.append(monitor.record)
    usual_record, shuffled_record = records
    assert shuffled_record.meta["columns"][:5] == list(shuffled)
    assert np.isnan(shuffled_record.columns["extra"]).all()
    assert [(e["step"], e["reason"]) for e in usual_record.meta["events"]] == [
        (e["step"], e["reason"]) for e in shuffled_record.meta["events"]] == [(9, "slow"),
                                                                              (19, "stalled")]
    for name, values in usual_record.columns.items():
        if name in curvature_module.COLUMNS:  # eigenvalues from a timed engine choice: the rows
            assert np.isfinite(shuffled_record.columns[name]).tolist() == np.isfinite(
                values).tolist(), name
        else:
            np.testing.assert_array_equal(shuffled_record.columns[name], values, err_msg=name)
    np.testing.assert_allclose(shuffled_record["held_loss"], usual_record["held_loss"],
                               rtol=1e-12)


def test_a_new_monitor_replaces_the_record_in_its_directory(tmp_path):
    X, y = _data()
    for steps in (5, 3):
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with Monitor(model, opt, tmp_path) as monitor:
            _train(model, opt, X, y, steps, monitor)
    assert len(read_record(tmp_path)) == 3


@pytest.mark.parametrize("field, value, message", [
    ("schema_version", 99, "schema version 99"),
    ("record_format", 2, "record format 2"),
    ("kind", "probe", "not a monitor record"),
])
def test_records_of_another_schema_or_format_are_refused(tmp_path, field, value, message):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, tmp_path) as monitor:
        monitor.step(1.0)
    header = json.loads((tmp_path / "monitor.json").read_text())
    header[field] = value
    (tmp_path / "monitor.json").write_text(json.dumps(header))
    with pytest.raises(BadInputError, match=message):
        read_record(tmp_path)


def test_missing_or_mismatched_records_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="no monitor record"):
        read_record(tmp_path)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, tmp_path) as monitor:
        monitor.step(1.0)
    table = tmp_path / "monitor.csv"
    table.write_text(table.read_text().replace("grad_cos", "cosine"))
    with pytest.raises(BadInputError, match="differ"):
        read_record(tmp_path)


@pytest.mark.parametrize("build, message", [
    (lambda: (nn.ReLU(), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), {}),
     "no trainable parameters"),
    (lambda: (_net(), "sgd", {}), "torch.optim.Optimizer"),
    (lambda: ("net", None, {}), "nn.Module"),
    (lambda: (_net(), None, {"every": 0}), "every=0"),
    (lambda: (_net(), None, {"held": _data()}), "needs loss_fn"),
    (lambda: (_net(), None, {"held": torch.zeros(3), "loss_fn": nn.functional.mse_loss}),
     "two tensors"),
    (lambda: (_net(), None, {"held": {"input": torch.zeros(3, 6), "labels": torch.zeros(2)},
                             "loss_fn": nn.functional.mse_loss}), "same number of samples"),
])
def test_bad_input_is_refused_with_the_fix(build, message):
    model, opt, options = build()
    if opt is None and isinstance(model, nn.Module):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(BadInputError, match=message):
        Monitor(model, opt, **options)


def test_tensorboard_is_optional(tmp_path):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(RuntimeWarning, match="tensorboard package is not installed"):
            monitor = Monitor(model, opt, tmp_path, tensorboard=True)
    else:
        monitor = Monitor(model, opt, tmp_path, tensorboard=True)
    with monitor:
        _train(model, opt, *_data(), 3, monitor)
    assert len(read_record(tmp_path)) == 3


def test_tensorboard_scalars_are_the_measured_values():
    calls = []
    writer = SimpleNamespace(add_scalar=lambda *args: calls.append(args))
    rows = np.array([[0.0, 2.5, np.nan, 0.1], [1.0, 2.0, 1.5, np.nan]])
    record_module.write_scalars(writer, ["step", "loss", "grad_norm:0", "lr"], rows)
    assert calls == [("loss", 2.5, 0), ("lr", 0.1, 0), ("loss", 2.0, 1), ("grad_norm/0", 1.5, 1)]


# ---------------------------------------------------------------------- framework callbacks
def test_lightning_hooks_drive_a_monitor(tmp_path):
    X, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks = LightningHooks(tmp_path, every=1)
    trainer = SimpleNamespace(optimizers=[opt], callback_metrics={"val_loss": torch.tensor(0.7)})
    hooks.on_train_start(trainer, model)
    for step in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        hooks.on_train_batch_end(trainer, model, {"loss": loss}, None, step)
    hooks.on_validation_epoch_end(trainer, model)
    hooks.on_train_end(trainer, model)
    record = read_record(tmp_path)
    assert len(record) == 3 and np.isfinite(record["grad_norm"]).all()
    assert record["val_loss"][2] == pytest.approx(0.7)


def test_huggingface_hooks_attach_logged_losses(tmp_path):
    X, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks = HuggingFaceHooks(tmp_path, every=1)
    hooks.on_train_begin(None, None, None, model=model, optimizer=opt)
    for step in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # HF zeroes before on_step_end: the pre-hook saw them
        hooks.on_step_end(None, None, None)
        if step % 2 == 1:
            hooks.on_log(None, None, None, logs={"loss": 1.5 - step / 10})
    hooks.on_train_end(None, None, None)
    record = read_record(tmp_path)
    assert np.isfinite(record["grad_norm"]).all()
    assert np.isnan(record["loss"][[0, 2]]).all() and record["loss"][3] == pytest.approx(1.2)


def test_the_runs_make_up_is_in_the_header(tmp_path):
    """Activations counted by module, normalisation layers, residual blocks, and a scheduler
    made after the Monitor."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8),
                        nn.GroupNorm(2, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    monitor = Monitor(net, opt, tmp_path)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 10)
    opt.zero_grad()
    nn.functional.cross_entropy(net(torch.randn(8, 4)), torch.zeros(8, dtype=torch.long)).backward()
    opt.step()
    scheduler.step()
    monitor.step(1.0)
    monitor.close()
    assert read_record(tmp_path).meta["make_up"] == {
        "activations": {"ReLU": 2}, "normalisations": ["BatchNorm1d", "GroupNorm"],
        "residual": None, "scheduler": True}
    with Monitor(net, torch.optim.Adam(net.parameters())) as unscheduled:
        assert unscheduled.record.meta["make_up"]["scheduler"] is False
    assert makeup_module.make_up(Block())["residual"] is True


@pytest.mark.parametrize("module", [stats_module, signals_module, record_module,
                                    curvature_module, monitor_module, callbacks_module,
                                    makeup_module])
def test_docstring_examples_run(module):
    assert doctest.testmod(module).failed == 0


def test_batch_sharpness_on_a_tied_transformer_with_dict_batches_matches_autograd(one_thread):
    """Attention, the head tied to the embedding, a module used twice, {input_ids, labels}
    batches: each chunk's g_Bᵀ H_B g_B/‖g_B‖² from torch's own double backward (math attention
    kernel), and the model untouched."""
    model = TiedDictLM()
    batches = dict_batches()  # 4 batches of 3 sequences
    held = {key: torch.cat([b[key] for b in batches]) for key in ("input_ids", "labels")}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = Snapshot(model)
    result = measure(model, token_loss, held, opt, smallest=False, max_products=40, batch_size=3)
    snapshot.check()
    params = list(model.parameters())  # the tied matrix once
    ratios = []
    for batch in batches:
        with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no double backward
            grads = torch.autograd.grad(token_loss(model(batch["input_ids"]), batch["labels"]),
                                        params, create_graph=True)
            g = torch.cat([piece.reshape(-1) for piece in grads])
            hg = torch.cat([piece.reshape(-1) for piece in
                            torch.autograd.grad(g @ g.detach(), params)])
        ratios.append((g.detach() @ hg / (g.detach() @ g.detach())).item())
    assert result["batch_chunks"] == 4
    assert result["batch_sharpness"] == pytest.approx(sum(ratios) / 4, rel=1e-10)
