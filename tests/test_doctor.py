"""The doctor's rules, each on synthetic records just past and just short of its threshold."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import landscope.doctor.doctor as doctor_module
import landscope.render.doctor as report_module
from landscope.cli import app
from landscope.doctor import Thresholds, diagnose
from landscope.doctor.findings import EXPLAINS, Finding, _closure, rank
from landscope.doctor.knowledge import IN_USE, TEXT
from landscope.doctor.rules import RAISE_TO
from landscope.errors import BadInputError
from landscope.monitor import Monitor
from landscope.monitor.record import Record
from landscope.monitor.signals import window_status
from landscope.render.doctor import loss_line, report_text

TH = Thresholds()


pytestmark = pytest.mark.usefixtures("one_thread")


N = 200
STEPS = np.arange(N, dtype=float)
LAYERS = [{"name": "a", "numel": 100, "units": 4}, {"name": "b", "numel": 25, "units": 5}]


def _record(loss=None, layers=(), sites=(), **columns) -> Record:
    data = {"step": STEPS, "loss": _stalled() if loss is None else loss,
            "non_finite": np.zeros(N), "lr": np.full(N, 0.1)}
    data.update({k.replace("__", ":"): np.broadcast_to(np.asarray(v, dtype=float), N).copy()
                 for k, v in columns.items()})
    meta = {"settings": {"window": 100, "lower_bound": 0.0}, "layers": list(layers),
            "sites": list(sites)}
    return Record(meta, data)


def _stalled(level=1.5, start=2.0):
    """2.0 for 10 steps, down to ``level`` by step 90, then flat: the final window stalls."""
    return np.concatenate([np.full(10, start), np.linspace(start, level, 80), np.full(110, level)])


def _falling():
    return 2.0 * np.exp(-STEPS / 40)


def _curvature(step=150, **values) -> dict:
    """Curvature columns: NaN everywhere except one measurement at ``step``."""
    out = {}
    for name in ("held_loss", "held_grad_norm", "lambda_max", "lambda_min", "sharpness",
                 "stability_threshold", "effective_lr", "lambda_max_residual",
                 "lambda_min_residual", "noise_scale"):
        column = np.full(N, np.nan)
        if name in values:
            column[step] = values[name]
        out[name] = column
    return out


def _grad_for_ratio(ratio, rho=1.0, loss=1.5):
    """The held gradient norm whose descent ratio ‖g‖²/(2ρE) is ``ratio``."""
    return math.sqrt(ratio * 2 * rho * loss)


def _names(record):
    return diagnose(record).names()


# ---------------------------------------------------------------------- the loss curve
def test_window_status_reads_falling_stalled_and_rising():
    assert window_status(np.linspace(2, 1, 50), 2.0)[0] == "falling"
    assert window_status(np.full(50, 1.0), 2.0)[0] == "stalled"
    assert window_status(np.r_[np.full(25, 1.0), np.full(25, 1.25)], 2.0)[0] == "rising"
    assert window_status(np.r_[np.full(25, 1.0), np.full(25, 1.15)], 2.0)[0] == "stalled"
    assert window_status(np.full(5, 1.0), 2.0)[0] == "too_short"


def test_a_falling_loss_is_healthy():
    assert diagnose(_record(_falling(), grad_norm=1.0, grad_cos=0.0)).healthy


@pytest.mark.parametrize("cos, fires", [(1.05 * TH.curve.oscillation_cos, True),
                                        (0.95 * TH.curve.oscillation_cos, False)])
def test_narrow_valley_at_its_oscillation_threshold(cos, fires):
    assert ("narrow_valley" in _names(_record(grad_cos=cos, grad_norm=3.0))) is fires


@pytest.mark.parametrize("progress, cos, fires", [
    (0.95 * TH.curve.slow_progress, 1.05 * TH.curve.oscillation_cos, True),
    (1.05 * TH.curve.slow_progress, 1.05 * TH.curve.oscillation_cos, False),
    (0.95 * TH.curve.slow_progress, 0.95 * TH.curve.oscillation_cos, False)])
def test_narrow_valley_while_the_loss_crawls(progress, cos, fires):
    """A loss still falling, but by less than slow_progress a window, with bouncing gradients."""
    start, first = 2.0, 1.5  # the final window's halves: progress = (first - second) / first
    loss = np.r_[np.linspace(start, first, 100), np.full(50, first),
                 np.full(50, first * (1 - progress))]
    assert ("narrow_valley" in _names(_record(loss, grad_cos=cos, grad_norm=3.0))) is fires


@pytest.mark.parametrize("ratio, fires", [(1.05 * TH.critical_ratio, True),
                                          (0.95 * TH.critical_ratio, False)])
def test_narrow_valley_needs_a_sliding_point_when_curvature_was_measured(ratio, fires):
    curv = _curvature(held_loss=1.5, held_grad_norm=_grad_for_ratio(ratio), lambda_max=1.0,
                      lambda_min=-0.001, sharpness=1.0, stability_threshold=20.0)
    record = _record(grad_cos=-0.9, grad_norm=3.0, **curv)
    assert ("narrow_valley" in _names(record)) is fires


@pytest.mark.parametrize("rate_share, level, fires", [
    (1.02 * TH.valley_share, 1.5, True),
    (0.98 * TH.valley_share, 1.5, False),  # the rate could still rise
    (1.02 * TH.valley_share, 0.9, False),  # 45% of the excess left: near its end
])
def test_narrow_valley_when_the_rate_is_capped_by_the_sharpest_direction(rate_share, level,
                                                                         fires):
    """No visible bouncing (cos 0), but each step already takes a good share of 2/λ_max while
    the loss stalls far from its end: the flat directions are what is slow."""
    sharpness = 2 * rate_share / 0.1
    curv = _curvature(held_loss=level, held_grad_norm=_grad_for_ratio(0.1, sharpness, level),
                      lambda_max=sharpness, lambda_min=0.0, sharpness=sharpness,
                      stability_threshold=20.0, effective_lr=0.1)
    found = {f.name: f for f in diagnose(_record(_stalled(level), grad_cos=0.0, grad_norm=3.0,
                                                 **curv)).findings}
    assert ("narrow_valley" in found) is fires
    if fires:
        assert found["narrow_valley"].evidence["rate_share"] == pytest.approx(rate_share)


@pytest.mark.parametrize("share, fires", [(1.05, True), (0.95, False)])
def test_saddle_at_its_negative_curvature_threshold(share, fires):
    lam_min = -share * TH.negative_curvature
    curv = _curvature(held_loss=1.5, held_grad_norm=1e-5, lambda_max=1.0, lambda_min=lam_min,
                      sharpness=1.0, stability_threshold=20.0)
    assert ("saddle" in _names(_record(grad_cos=0.0, grad_norm=1e-5, **curv))) is fires


@pytest.mark.parametrize("ratio, fires", [(0.95 * TH.critical_ratio, True),
                                          (1.05 * TH.critical_ratio, False)])
def test_saddle_needs_a_near_critical_point(ratio, fires):
    curv = _curvature(held_loss=1.5, held_grad_norm=_grad_for_ratio(ratio), lambda_max=1.0,
                      lambda_min=-0.5, sharpness=1.0, stability_threshold=20.0)
    assert ("saddle" in _names(_record(grad_cos=0.0, **curv))) is fires


def test_saddle_uses_an_earlier_measurement_if_the_loss_stalled_since():
    curv = _curvature(step=60, held_loss=1.6, held_grad_norm=1e-6, lambda_max=1.0,
                      lambda_min=-1.0, sharpness=1.0, stability_threshold=20.0)
    assert diagnose(_record(np.full(N, 2.0), **curv)).primary.name == "saddle"
    assert "saddle" not in _names(_record(np.r_[np.full(60, 2.0), 2.0 * np.exp(
        -np.arange(140) / 30)], **curv))  # it escaped after the measurement


@pytest.mark.parametrize("share, fires", [(1.05, True), (0.95, False)])
def test_poor_minimum_at_its_loss_threshold(share, fires):
    level = share * TH.poor_fraction * 2.0
    curv = _curvature(held_loss=level, held_grad_norm=1e-5, lambda_max=1e-3, lambda_min=1e-4,
                      sharpness=1e-3, stability_threshold=20.0)
    diagnosis = diagnose(_record(_stalled(level), grad_cos=0.0, **curv))
    assert ("poor_minimum" in diagnosis.names()) is fires
    if fires:
        assert diagnosis.primary.evidence["flat"] is True  # η·λ_max = 1e-4: a flat region


@pytest.mark.parametrize("decay, fires", [(0.095, True), (0.105, False)])
def test_poor_minimum_without_curvature_needs_a_decayed_gradient(decay, fires):
    grads = np.r_[np.ones(10), np.full(N - 10, decay)]
    assert ("poor_minimum" in _names(_record(grad_norm=grads, grad_cos=0.0))) is fires


@pytest.mark.parametrize("rise, fires", [(1.05, True), (0.95, False)])
def test_divergence_at_its_rise_threshold(rise, fires):
    bottom, initial = 0.5, 2.0
    loss = np.r_[np.full(10, initial), np.linspace(initial, bottom, 60), np.full(60, bottom),
                 np.full(70, bottom + rise * TH.diverge_rise * initial)]
    diagnosis = diagnose(_record(loss))
    assert ("lr_too_large" in diagnosis.names()) is fires
    if fires:
        assert diagnosis.primary.severity == "critical"
        assert 130 <= diagnosis.primary.evidence["divergence_step"] <= 140  # smoothed over 10


@pytest.mark.parametrize("over, fires", [(1.02, True), (0.98, False)])
def test_sharpness_above_the_stability_limit(over, fires):
    curv = _curvature(held_loss=1.5, held_grad_norm=1.0, lambda_max=over * 20.0, lambda_min=0.0,
                      sharpness=over * 20.0, stability_threshold=20.0)
    found = {f.name: f for f in diagnose(_record(grad_cos=0.0, **curv)).findings}
    assert ("lr_too_large" in found) is fires
    if fires:
        assert found["lr_too_large"].severity == "warning"


@pytest.mark.parametrize("over, fires", [(1.02, True), (0.98, False)])
def test_mini_batch_sgd_is_at_its_edge_through_the_batch_sharpness(over, fires):
    """Under mini-batch SGD λ_max stays below 2/η while the batch sharpness reaches it
    (Andreyev & Beneventano): the larger of the two gauges is read, and named."""
    curv = _curvature(held_loss=1.5, held_grad_norm=1.0, lambda_max=10.0, lambda_min=0.0,
                      sharpness=10.0, stability_threshold=20.0)
    curv["batch_sharpness"] = np.where(np.isnan(curv["sharpness"]), np.nan, over * 20.0)
    found = {f.name: f for f in diagnose(_record(grad_cos=0.0, **curv)).findings}
    assert ("lr_too_large" in found) is fires
    if fires:
        evidence = found["lr_too_large"].evidence
        assert evidence["sharpness_over_limit"] == pytest.approx(over)
        assert evidence["batch_sharpness"] == over * 20.0 and evidence["sharpness"] == 10.0
        assert "batch sharpness" in found["lr_too_large"].summary


@pytest.mark.parametrize("loss, fires", [(_stalled(), True), (_falling(), False),
                                         (np.r_[np.full(100, 2.0), np.full(100, 1.5)], False)])
def test_sharpness_past_the_limit_counts_only_where_the_loss_stopped_falling(loss, fires):
    """At the edge of stability a falling loss is gradient descent making progress; a
    measurement that the loss has since fallen from is not where the run stopped."""
    curv = _curvature(step=50 if loss[60] == 2.0 else 150, held_loss=1.5, held_grad_norm=1.0,
                      lambda_max=25.0, lambda_min=0.0, sharpness=25.0, stability_threshold=20.0)
    assert ("lr_too_large" in _names(_record(loss, grad_cos=-0.9, **curv))) is fires


@pytest.mark.parametrize("cos, fires", [(1.02 * TH.edge_cos, True), (0.98 * TH.edge_cos, False)])
def test_a_falling_loss_whose_gradients_reverse_is_at_the_edge_of_stability(cos, fires):
    """Full-batch GD past 2/λ: the loss falls while g_{t+1} ≈ −g_t; a warning, not a blow-up."""
    found = {f.name: f for f in diagnose(_record(_falling(), grad_cos=cos, grad_norm=1.0)).findings}
    assert ("lr_too_large" in found) is fires
    if fires:
        assert found["lr_too_large"].severity == "warning"
        assert found["lr_too_large"].evidence["median_grad_cos"] == pytest.approx(cos)


@pytest.mark.parametrize("share, fires", [(1.02 * TH.edge_share, True),
                                          (0.98 * TH.edge_share, False)])
def test_a_stalled_loss_whose_gradients_reverse_is_at_the_edge_only_with_its_sharpness(share,
                                                                                       fires):
    """GD at the edge holds λ_max at 2/η even where it learns nothing: g_{t+1} ≈ −g_t with the
    sharpness at the limit; a reversal with the sharpness well inside it is not the rate's."""
    curv = _curvature(held_loss=1.5, held_grad_norm=1.0, lambda_max=share * 20.0, lambda_min=0.0,
                      sharpness=share * 20.0, stability_threshold=20.0)
    found = {f.name: f for f in diagnose(_record(grad_cos=-0.99, grad_norm=1.0, **curv)).findings}
    assert ("lr_too_large" in found) is fires
    if fires:
        assert found["lr_too_large"].severity == "warning"
        assert found["lr_too_large"].evidence["median_grad_cos"] == pytest.approx(-0.99)
    else:
        assert "narrow_valley" in found  # the valley's bouncing, at a rate inside the limit


@pytest.mark.parametrize("ratio, fires", [(0.95, True), (1.05, False)])
@pytest.mark.parametrize("effective_lr, limit", [(0.1, 20.0), (1.0, 38.0), (None, 20.0)])
def test_lr_too_small_at_its_sharpness_threshold(ratio, fires, effective_lr, limit):
    """η_eff·sharpness/2 against the threshold: plain SGD at 0.1 (limit 2/η = 20), heavy ball
    at 0.1 with μ = 0.9 (η_eff = 1, limit 38: far below it, yet moving fast), and a record from
    before effective_lr (the learning rate stands in)."""
    creeping = np.linspace(2.0, 1.95, N)
    sharpness = ratio * TH.small_sharpness * 2 / (effective_lr or 0.1)
    curv = _curvature(held_loss=1.96, held_grad_norm=1.0, lambda_max=1.0, lambda_min=-0.1,
                      sharpness=sharpness, stability_threshold=limit,
                      **({} if effective_lr is None else {"effective_lr": effective_lr}))
    record = _record(creeping, LAYERS, grad_cos=0.5, grad_norm=1.0, update_ratio__a=1e-2,
                     update_ratio__b=1e-2, **curv)
    found = {f.name: f for f in diagnose(record).findings}
    assert ("lr_too_small" in found) is fires
    if fires:  # raised by the factor, η_eff·sharpness/2 becomes RAISE_TO
        factor = found["lr_too_small"].evidence["raise_factor"]
        assert factor * (effective_lr or 0.1) * sharpness / 2 == pytest.approx(RAISE_TO)


def test_lr_too_small_needs_a_slow_window():
    curv = _curvature(held_loss=1.96, held_grad_norm=1.0, lambda_max=1.0, lambda_min=-0.1,
                      sharpness=1e-3, stability_threshold=20.0, effective_lr=0.1)
    fast = np.r_[np.full(100, 2.0), np.linspace(2.0, 1.6, 100)]  # 10.5% of the excess a window
    slow = np.r_[np.full(100, 2.0), np.linspace(2.0, 1.64, 100)]  # 9.5%
    names = [_names(_record(loss, LAYERS, grad_cos=0.5, grad_norm=1.0, **curv))
             for loss in (fast, slow)]
    assert "lr_too_small" not in names[0] and "lr_too_small" in names[1]


@pytest.mark.parametrize("ratio, fires", [(0.95, True), (1.05, False)])
def test_lr_too_small_without_curvature_at_its_update_threshold(ratio, fires):
    creeping = np.linspace(2.0, 1.95, N)
    record = _record(creeping, LAYERS, grad_cos=0.5, grad_norm=1.0,
                     update_ratio__a=ratio * TH.small_update,
                     update_ratio__b=0.5 * TH.small_update)
    assert ("lr_too_small" in _names(record)) is fires


@pytest.mark.parametrize("rise, fires", [(1.1, True), (0.9, False)])
def test_overfitting_at_its_validation_threshold(rise, fires):
    val = np.full(N, np.nan)
    val[0:200:10] = np.r_[np.linspace(2.0, 1.0, 6), 1.0 + np.linspace(0.01, 1, 14)
                          * rise * TH.overfit_rise]
    assert ("overfitting" in _names(_record(_falling(), val_loss=val))) is fires


# ---------------------------------------------------------------------- the network
def _per_layer_rms(ratio):
    """Gradient norms of layers a (100 parameters) and b (25) with RMS(a)/RMS(b) = ratio."""
    return {"grad_norm__a": ratio * 10.0, "grad_norm__b": 5.0}


@pytest.mark.parametrize("ratio, fires", [(0.95, True), (1.05, False)])
def test_vanishing_gradients_at_their_depth_threshold(ratio, fires):
    record = _record(_falling(), LAYERS, **_per_layer_rms(ratio * TH.vanishing_ratio),
                     update_ratio__a=1e-9, update_ratio__b=1e-3)
    found = {f.name: f for f in diagnose(record).findings}
    assert ("vanishing_gradients" in found) is fires
    if fires:
        assert found["vanishing_gradients"].severity == "critical"  # and the updates vanish


def test_vanishing_gradients_are_a_warning_when_the_optimiser_rescales_the_steps():
    record = _record(_falling(), LAYERS, **_per_layer_rms(1e-6), update_ratio__a=1e-3,
                     update_ratio__b=1e-3)
    assert diagnose(record).primary.severity == "warning"


@pytest.mark.parametrize("ratio, fires", [(1.05, True), (0.95, False)])
def test_exploding_gradients_at_their_depth_threshold(ratio, fires):
    record = _record(_falling(), LAYERS, **_per_layer_rms(ratio * TH.exploding_ratio))
    assert ("exploding_gradients" in _names(record)) is fires


@pytest.mark.parametrize("update, fires", [(1.05, True), (0.95, False)])
def test_gradient_growth_counts_only_with_wild_updates(update, fires):
    grads = np.r_[np.ones(100), np.full(100, 2 * TH.growth)]
    record = _record(_falling(), grad_norm=grads, update_ratio=update * TH.wild_update)
    assert ("exploding_gradients" in _names(record)) is fires


def _start_gain(gain) -> dict:
    """weight_norm columns of LAYERS whose ‖θ‖/√units is ``gain`` in every layer."""
    return {f"weight_norm__{layer['name']}": gain * math.sqrt(layer["units"]) for layer in LAYERS}


@pytest.mark.parametrize("gain, from_start", [(1.05 * TH.large_gain, True),
                                              (0.95 * TH.large_gain, False)])
def test_a_blow_up_at_the_start_of_amplifying_weights_is_the_initialisation(gain, from_start):
    loss = np.r_[2.0, 2.0, 1e3, 1e9, np.full(N - 4, np.nan)]
    record = _record(loss, LAYERS, **_start_gain(gain))
    record.columns["non_finite"][4:] = 1.0
    diagnosis = diagnose(record)
    assert {"exploding_gradients", "lr_too_large"} <= set(diagnosis.names())
    assert diagnosis.primary.name == ("exploding_gradients" if from_start else "lr_too_large")
    exploding = {f.name: f for f in diagnosis.findings}["exploding_gradients"]
    reinit = remedy_text("exploding_gradients", "reinit")
    assert (exploding.remedies[0] == reinit) is from_start  # the initialisation's to fix first
    assert sorted(exploding.remedies) == sorted(r.text for r in
                                                TEXT["exploding_gradients"]["remedies"])
    late = _record(np.r_[np.full(20, 2.0), 1e3, 1e9, np.full(N - 22, np.nan)], LAYERS,
                   **_start_gain(gain))
    late.columns["non_finite"][22:] = 1.0  # past the first steps: the rate's
    assert diagnose(late).primary.name == "lr_too_large"


@pytest.mark.parametrize("spike, fires", [(1.05, True), (0.95, False)])
def test_a_spike_the_run_never_recovers_from_is_a_too_large_rate(spike, fires):
    loss = _falling()
    start = np.median(loss[:10])
    loss[101:] = 0.9 * loss[90:100].mean()  # back near where it was, not below half of it:
    # a rate ×100 leaves an MLP's dead units at 2.39 after a spike from 2.42
    loss[100] = spike * TH.spike * start
    found = {f.name: f for f in diagnose(_record(loss)).findings}
    assert ("lr_too_large" in found) is fires
    if fires:
        assert found["lr_too_large"].severity == "critical"
        assert found["lr_too_large"].evidence["spike_step"] == 100


def test_a_spike_the_run_recovers_from_is_no_finding():
    """A healthy mini-batch run may jump once (a CNN on the digits: 2.2 → 16 at step 58) and
    then go on falling below where it was: that is noise, not a rate to lower."""
    loss = _falling()
    loss[100] = 2 * TH.spike * np.median(loss[:10])
    assert "lr_too_large" not in _names(_record(loss))


@pytest.mark.parametrize("ratio, gain, loss, fires", [
    (1.05, 0.6, "stalled", True), (0.95, 0.6, "stalled", False),
    (1.05, 0.5 * TH.origin_gain, "stalled", False), (1.05, 0.6, "falling", False)])
def test_a_step_that_moves_the_weights_by_half_their_norm_is_a_too_large_rate(ratio, gain,
                                                                               loss, fires):
    """A rate ×100 kills a CNN's ReLUs in its first step (‖Δθ‖/‖θ‖ 1.6-2.1; healthy runs
    below 0.09) and the loss never falls; from a small start a long first step is normal when the
    loss then falls (least squares, GD at 0.98·2/λ: 3.2); from the origin every step is long."""
    update = np.full(N, 1e-3)
    update[1] = ratio * TH.wild_update
    curve = _stalled() if loss == "stalled" else _falling()
    record = _record(curve, LAYERS, update_ratio=update, **_start_gain(gain))
    found = {f.name: f for f in diagnose(record).findings}
    assert ("lr_too_large" in found) is fires
    if fires:
        assert found["lr_too_large"].evidence["wild_update_step"] == 1
        assert found["lr_too_large"].onset == 1


@pytest.mark.parametrize("gain, origin", [(0.95 * TH.origin_gain, True),
                                          (1.05 * TH.origin_gain, False)])
def test_a_saddle_at_the_origin_produces_the_vanishing_gradients(gain, origin):
    curv = _curvature(held_loss=1.5, held_grad_norm=1e-5, lambda_max=1.0, lambda_min=-0.5,
                      sharpness=1.0, stability_threshold=20.0)
    record = _record(None, LAYERS, grad_cos=0.0, grad_norm=1e-5, **curv, **_start_gain(gain))
    found = {f.name: f for f in diagnose(record).findings}
    assert found["saddle"].produces == (("vanishing_gradients",) if origin else ())
    first = remedy_text("saddle", "reinit" if origin else "vmin_step")
    assert found["saddle"].remedies[0] == first  # at the origin: not to start there


def remedy_text(finding: str, key: str) -> str:
    return next(r.text for r in TEXT[finding]["remedies"] if r.key == key)


@pytest.mark.parametrize("ratio, fires", [(0.95, True), (1.05, False)])
def test_lr_too_small_when_the_loss_is_flat_within_its_noise(ratio, fires):
    """A tiny rate leaves a mini-batch loss flat (progress ≤ 0 by noise): still too small when
    η_eff·sharpness/2 is under the threshold, and the stall is the rate's, not a saddle's."""
    noisy = 2.0 + 0.01 * np.random.default_rng(0).standard_normal(N)
    noisy[150:] += 0.002  # the final window a shade higher: progress < 0, within the noise
    sharpness = ratio * TH.small_sharpness * 2 / 0.1
    curv = _curvature(held_loss=2.0, held_grad_norm=1e-3, lambda_max=sharpness,
                      lambda_min=-0.5 * sharpness, sharpness=sharpness, stability_threshold=20.0,
                      effective_lr=0.1)
    record = _record(noisy, LAYERS, grad_cos=0.5, grad_norm=1.0, **curv, **_start_gain(0.6))
    diagnosis = diagnose(record)
    assert ("lr_too_small" in diagnosis.names()) is fires
    if fires:
        assert diagnosis.primary.name == "lr_too_small"
    assert "lr_too_small" not in _names(_record(noisy, LAYERS, grad_cos=0.5, grad_norm=1.0,
                                                update_ratio__a=1e-9, update_ratio__b=1e-9))


def test_non_finite_values_are_critical():
    record = _record(_falling())
    record.columns["non_finite"][120:] = 1.0
    record.columns["loss"][120:] = np.nan
    finding = diagnose(record).primary
    assert finding.name == "exploding_gradients" and finding.severity == "critical"
    assert finding.evidence["non_finite_step"] == 120


@pytest.mark.parametrize("spread, fires", [(0.95, True), (1.05, False)])
def test_symmetric_initialisation_at_its_spread_threshold(spread, fires):
    column = np.full(N, np.nan)
    column[-1] = spread * TH.symmetric_spread
    one_unit = [{"name": "c", "numel": 5, "units": 1}]
    record = _record(_falling(), LAYERS + one_unit, row_spread__a=column, row_spread__c=0.0)
    diagnosis = diagnose(record)
    assert ("symmetric_init" in diagnosis.names()) is fires
    if fires:
        assert list(diagnosis.primary.evidence["row_spread"]) == ["a"]  # one unit: no symmetry


@pytest.mark.parametrize("kind, name", [("saturation", "saturation"), ("dead", "dead_relus")])
@pytest.mark.parametrize("share, fires", [(1.02, True), (0.98, False)])
def test_activation_rules_at_their_thresholds(kind, name, share, fires):
    threshold = TH.saturated if kind == "saturation" else TH.dead
    record = _record(_falling(), sites=[{"name": "act", "kind": kind}],
                     **{f"{kind}__act": share * threshold})
    assert (name in _names(record)) is fires


@pytest.mark.parametrize("gain, first", [(0.95 * TH.large_gain, "normalisation"),
                                         (1.05 * TH.large_gain, "reinit")])
def test_saturation_from_normal_weights_is_the_inputs_to_fix_first(gain, first):
    """Tanh units saturated although every layer starts at a normal scale: the inputs drive
    them into their tails (un-centred pixels), so normalising comes before re-initialising."""
    record = _record(_falling(), LAYERS, sites=[{"name": "act", "kind": "saturation"}],
                     saturation__act=0.9, **_start_gain(gain))
    found = {f.name: f for f in diagnose(record).findings}["saturation"]
    assert found.remedies[0] == remedy_text("saturation", first)
    assert ("the inputs drive" in found.summary) is (first == "normalisation")


@pytest.mark.parametrize("onset", [0, 120])
def test_an_activation_finding_reports_when_its_fraction_first_passed_the_threshold(onset):
    column = np.where(onset <= STEPS, 0.9, 0.1)
    record = _record(_falling(), sites=[{"name": "act", "kind": "saturation"}],
                     saturation__act=column)
    found = {f.name: f for f in diagnose(record).findings}
    assert found["saturation"].onset == onset


# ---------------------------------------------------------------------- ranking and report
def finding(name, severity="critical", strength=1.0, **more):
    """A finding with no summary, evidence or steps: what ``rank`` orders by, and nothing else."""
    return Finding(name=name, severity=severity, summary="", evidence={}, steps=[],
                   strength=strength, **more)


def test_a_cause_ranks_before_what_it_explains_and_severity_first():
    ranked = rank([finding("saddle", "warning", 9.0), finding("symmetric_init", "critical"),
                   finding("overfitting", "warning", 2.0)])
    assert [f.name for f in ranked] == ["symmetric_init", "overfitting", "saddle"]
    assert ranked[2].explained_by == "symmetric_init" and ranked[1].explained_by is None
    ranked = rank([finding("exploding_gradients", "critical", 50.0),
                   finding("lr_too_large", "critical")])
    assert [f.name for f in ranked] == ["lr_too_large", "exploding_gradients"]
    ranked = rank([finding("narrow_valley", "warning", 9.0), finding("lr_too_large", "warning")])
    assert [(f.name, f.explained_by) for f in ranked] == [("lr_too_large", None),
                                                          ("narrow_valley", "lr_too_large")]
    ranked = rank([finding("lr_too_small", "warning"), finding("vanishing_gradients", "critical")])
    assert ranked[0].name == "vanishing_gradients" and ranked[0].explained_by is None


def test_an_observed_cause_outranks_its_critical_consequence():
    ranked = rank([finding("overfitting", "warning", 9.0), finding("dead_relus", "warning"),
                   finding("vanishing_gradients", "critical", 1e6)])
    assert [(f.name, f.explained_by) for f in ranked] == [
        ("dead_relus", None), ("vanishing_gradients", "dead_relus"), ("overfitting", None)]
    # the table: vanishing gradients leave a saddle; a start at the origin shows the reverse
    plain = rank([finding("saddle", "warning"), finding("vanishing_gradients", "critical")])
    assert [(f.name, f.explained_by) for f in plain] == [
        ("vanishing_gradients", None), ("saddle", "vanishing_gradients")]
    origin = rank([finding("saddle", "warning", produces=("vanishing_gradients",)),
                   finding("vanishing_gradients", "critical", 1e6)])
    assert [(f.name, f.explained_by) for f in origin] == [
        ("saddle", None), ("vanishing_gradients", "saddle")]
    # weights that overflow at the start: the rate's finding is their consequence
    init = rank([finding("lr_too_large", "critical", 9.0),
                 finding("exploding_gradients", "critical", produces=("lr_too_large",))])
    assert [(f.name, f.explained_by) for f in init] == [
        ("exploding_gradients", None), ("lr_too_large", "exploding_gradients")]


@pytest.mark.parametrize("saturated, blew_up, primary", [
    (0, 280, "saturation"),  # saturated from the start, the blow-up came late: not its cause
    (280, 0, "lr_too_large"),  # the blow-up saturated the units
    (5, 7, "lr_too_large"),  # within the slack of the loss's moving median: the table holds
    (None, 280, "lr_too_large"),  # no onset: the table and the severities decide
])
def test_onset_order_a_cause_cannot_start_after_its_effect(saturated, blew_up, primary):
    ranked = rank([finding("lr_too_large", "critical", 3.0, onset=blew_up),
                   finding("saturation", "warning", 1.5, onset=saturated),
                   finding("narrow_valley", "warning", 9.0)])
    assert ranked[0].name == primary and ranked[0].explained_by is None
    explained = {f.name: f.explained_by for f in ranked}
    assert explained["saturation"] == (None if primary == "saturation" else "lr_too_large")
    assert explained["narrow_valley"] == "lr_too_large"


def test_the_causality_table_is_closed_and_acyclic():
    assert {"dead_relus", "vanishing_gradients", "saturation"} <= EXPLAINS["lr_too_large"]
    for cause, effects in EXPLAINS.items():
        assert cause not in effects
        for effect in effects & EXPLAINS.keys():
            assert EXPLAINS[effect] <= effects  # what a consequence explains, its cause does too
    with pytest.raises(ValueError, match="cycle"):
        _closure({"a": {"b"}, "b": {"a"}})


def test_an_explained_finding_names_the_root_of_its_chain():
    ranked = rank([finding("vanishing_gradients", strength=1e6), finding("dead_relus", "warning"),
                   finding("lr_too_large")])
    assert [(f.name, f.explained_by) for f in ranked] == [
        ("lr_too_large", None), ("vanishing_gradients", "lr_too_large"),
        ("dead_relus", "lr_too_large")]


def _train_small(model, optimizer, X, y, steps, *, batch=None, generator=None,
                 loss_fn=nn.functional.cross_entropy, every=5, window=100):
    """A seeded run under a Monitor (held batch: the first 256 samples, curvature unbudgeted so
    that what it finds does not depend on the machine's load); its record. Mini-batches of
    ``batch`` samples drawn with ``generator``, or the full batch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Monitor(model, optimizer, loss_fn=loss_fn, held=(X[:256], y[:256]), every=every,
                     window=window, budget=math.inf) as monitor:
            for _ in range(steps):
                index = (torch.randint(0, len(X), (batch,), generator=generator) if batch
                         else slice(None))
                optimizer.zero_grad()
                loss = loss_fn(model(X[index]), y[index])
                loss.backward()
                optimizer.step()
                monitor.step(loss)
    finally:
        torch.set_num_threads(threads)
    return monitor.record


def _relu_mlp(widths, seed=0):
    torch.manual_seed(seed)
    layers = []
    for fan_in, fan_out in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-2], widths[-1]))


@pytest.fixture(scope="module")
def diverged():
    """A 3-hidden-layer ReLU MLP, SGD lr 0.4 with momentum 0.9: the loss climbs from 1.4 to
    ~1e8, the ReLUs die and the first layers get no gradient."""
    generator = torch.Generator().manual_seed(0)
    X = 3 * torch.randn(512, 10, generator=generator)
    y = (X @ torch.randn(10, 4, generator=generator)).argmax(1)
    model = _relu_mlp((10, 32, 32, 32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9)
    return _train_small(model, optimizer, X, y, 300, batch=64, generator=generator)


def test_a_diverged_run_is_primarily_a_too_large_learning_rate(diverged):
    loss = diverged["loss"]
    assert np.nanmax(loss) >= 1e4 * loss[0]  # it diverged, by orders of magnitude
    diagnosis = diagnose(diverged)
    assert diagnosis.primary.name == "lr_too_large" and diagnosis.primary.severity == "critical"
    found = {f.name: f for f in diagnosis.findings}
    assert "vanishing_gradients" in found and "dead_relus" in found  # the symptoms are there
    for finding in diagnosis.findings[1:]:
        assert finding.explained_by == "lr_too_large", (finding.name, finding.explained_by)
    assert "a consequence of learning rate too large" in report_text(diagnosis, width=140)


def test_the_header_of_a_diverged_run_reads_the_first_and_peak_losses(diverged):
    loss = diverged["loss"]
    summary = diagnose(diverged).summary
    assert summary["first_loss"] == loss[0]  # the initial weights' loss, not an early average
    assert summary["peak_loss"] == np.nanmax(loss)
    assert summary["peak_step"] == int(diverged.steps[np.nanargmax(loss)])
    line = loss_line(summary)
    assert line.startswith(f"{loss[0]:.4g} → ") and f"peak {np.nanmax(loss):.3g}" in line


def _teacher_data(random_labels=False):
    """256 samples, 8 features, 3 classes: labels from a noisy linear teacher (or random)."""
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(256, 8, generator=generator, dtype=torch.float64)
    teacher = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    noise = 0.5 * torch.randn(256, 3, generator=generator, dtype=torch.float64)
    y = (X @ teacher + noise).argmax(1)
    return X, torch.randint(0, 3, (256,), generator=generator) if random_labels else y


def _tanh_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _sharpest(model, loss_fn, data) -> float:
    from landscope import Objective, spectrum
    return spectrum(Objective.from_model(model, loss_fn, data), k=1).largest.values[0].item()


@pytest.mark.parametrize("batch", [None, 32])
def test_a_far_too_small_learning_rate_is_found_while_the_loss_creeps_down(batch):
    """GD at η·λ_max/2 = 0.002 creeps down; the Monitor measures the slow windows and the
    doctor says the rate is too small. Ground truth: 50× the rate gets far lower in as many
    steps."""
    X, y = _teacher_data()
    lam = _sharpest(_tanh_mlp(), nn.functional.cross_entropy, (X, y))
    losses = []
    for lr in (0.004 / lam, 0.2 / lam):
        model = _tanh_mlp()
        record = _train_small(model, torch.optim.SGD(model.parameters(), lr=lr), X, y, 300,
                              batch=batch, generator=torch.Generator().manual_seed(0))
        losses.append(float(np.median(record["loss"][-20:])))
        if len(losses) == 1:
            creeping = diagnose(record)
            events = record.meta["events"]
    assert losses[1] < 0.5 * losses[0] < 0.5 * creeping.summary["first_loss"]
    assert {e["reason"] for e in events} == {"slow"}
    primary = creeping.primary
    assert primary.name == "lr_too_small" and creeping.names() == ["lr_too_small"]
    evidence = primary.evidence
    assert evidence["effective_lr"] == pytest.approx(0.004 / lam)
    assert evidence["rate_share"] == pytest.approx(evidence["lr"] * evidence["sharpness"] / 2)
    assert 0.001 < evidence["rate_share"] <= TH.small_sharpness


@pytest.mark.parametrize("optimizer", [
    lambda p, lam: torch.optim.SGD(p, lr=0.5 / lam),  # η·λ_max = 0.5
    lambda p, lam: torch.optim.SGD(p, lr=0.02 / lam, momentum=0.9),  # sharpness/limit ~0.006
    lambda p, lam: torch.optim.Adam(p, lr=1e-3),
])
def test_a_good_rate_on_a_slow_task_is_not_called_too_small(optimizer):
    """Random labels: the loss creeps down at any rate, so the Monitor measures the curvature,
    and the curvature shows the rate is not small (heavy ball: η_eff = η/(1−μ), not its far
    larger stability limit)."""
    X, y = _teacher_data(random_labels=True)
    model = _tanh_mlp()
    lam = _sharpest(model, nn.functional.cross_entropy, (X, y))
    record = _train_small(model, optimizer(model.parameters(), lam), X, y, 300)
    assert any(e["reason"] == "slow" for e in record.meta["events"])
    assert "lr_too_small" not in diagnose(record).names()


@pytest.mark.parametrize("over, past", [(1.0002, True), (0.98, False)])
def test_full_batch_gd_just_past_its_stability_limit_is_a_too_large_rate(over, past):
    """Linear least squares, GD at η = over·2/λ_max (λ_max exact: 2XᵀX/n): just past the limit
    the loss first falls, then bounces between the valley's walls and slowly climbs."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([3.0, 1, 1, 0.5, 0.5, 0.3], dtype=torch.float64)
    X = torch.randn(200, 6, generator=generator, dtype=torch.float64) * scales
    y = X @ torch.randn(6, 1, generator=generator, dtype=torch.float64)
    y = y + 0.1 * torch.randn(200, 1, generator=generator, dtype=torch.float64)
    Xb = torch.cat([X, torch.ones(200, 1, dtype=torch.float64)], 1)
    lam = torch.linalg.eigvalsh(2 * Xb.T @ Xb / 200)[-1].item()
    torch.manual_seed(0)
    model = nn.Linear(6, 1).double()
    record = _train_small(model, torch.optim.SGD(model.parameters(), lr=over * 2 / lam), X, y,
                          300, loss_fn=nn.functional.mse_loss)
    diagnosis = diagnose(record)
    if not past:
        assert diagnosis.healthy, diagnosis.names()
        return
    assert diagnosis.primary.name == "lr_too_large" and diagnosis.primary.explained_by is None
    evidence = diagnosis.primary.evidence
    assert evidence["sharpness"] == pytest.approx(lam, rel=1e-3)
    assert evidence["stability_limit"] == pytest.approx(lam / over, rel=1e-9)
    assert evidence["sharpness_over_limit"] >= 1
    found = {f.name: f for f in diagnosis.findings}
    assert found["narrow_valley"].explained_by == "lr_too_large"


@pytest.mark.parametrize("final, words", [(6463.0, "rose ×4,252"), (0.152, "fell 90.0%"),
                                          (1.52, "fell 0.0%")])
def test_the_loss_line_is_relative_to_the_first_loss(final, words):
    summary = {"first_loss": 1.52, "final_loss": final, "peak_loss": max(final, 1.52),
               "peak_step": 0, "final_status": "rising", "final_progress": -30327.0}
    line = loss_line(summary)
    assert words in line and line.endswith("final window rising")  # no window percentage


class _TinyEncoder(nn.Module):
    """Token embedding, two Transformer layers (GELU modules, LayerNorm, residual) and a head."""

    def __init__(self, vocab=5000, width=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, activation=nn.GELU(),
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def test_remedies_already_in_use_are_never_prescribed():
    """A small encoder trained with AdamW: its sparse embedding gets ~1e-3 of the head's gradient
    per parameter (as BERT's does), read as vanishing at a looser threshold; none of Adam, batch
    normalisation, ReLU or residual connections is prescribed, and the report says why."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 5000, (512, 12), generator=generator)
    labels = (tokens % 2 == 0).sum(1).gt(6).long()
    torch.manual_seed(0)
    model = _TinyEncoder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    record = _train_small(model, optimizer, tokens, labels, 100, batch=32, generator=generator,
                          window=50)
    assert record.meta["make_up"] == {"activations": {"GELU": 2}, "normalisations": ["LayerNorm"],
                                      "residual": True, "scheduler": False}
    diagnosis = diagnose(record, Thresholds(vanishing_ratio=0.05))
    finding = {f.name: f for f in diagnosis.findings}["vanishing_gradients"]
    assert finding.evidence["layer"] == "embed"
    assert finding.remedies == ["Fewer layers."]
    assert set(finding.in_use.values()) == {"AdamW", "LayerNorm", "GELU ×2",
                                            "residual connections"}
    assert "already in use: " in report_text(diagnosis, width=140)
    older = Record({k: v for k, v in record.meta.items() if k != "make_up"}, record.columns)
    old_finding = diagnose(older, Thresholds(vanishing_ratio=0.05)).findings[0]
    assert len(old_finding.remedies) == 5 and not old_finding.in_use  # an older record: all kept


@pytest.mark.parametrize("optimizer, moot", [
    ({"name": "SGD", "momentum": 0.0, "weight_decay": 0.0}, set()),
    ({"name": "SGD", "momentum": 0.9, "weight_decay": 0.0}, {"momentum"}),
    ({"name": "NAdam", "betas": [0.9, 0.999], "weight_decay": 0.0}, {"momentum", "adaptive"}),
    ({"name": "RMSprop", "momentum": 0.0, "weight_decay": 1e-4}, {"adaptive", "weight_decay"}),
])
def test_what_the_optimiser_makes_moot(optimizer, moot):
    meta = {"optimizer": optimizer, "make_up": {"activations": {"Sigmoid": 3, "ReLU": 1}}}
    assert {key for key, test in IN_USE.items() if test(meta)} == moot  # mostly sigmoid: kept


def test_report_shows_findings_evidence_and_remedies():
    curv = _curvature(held_loss=1.5, held_grad_norm=1e-6, lambda_max=1.0, lambda_min=-0.5,
                      sharpness=1.0, stability_threshold=20.0)
    text = report_text(diagnose(_record(**curv)), "synthetic")
    assert "Stopped at a saddle point" in text and "negative-curvature step" in text
    assert "lambda_min -0.5" in text
    assert "healthy: no problem found" in report_text(diagnose(_record(_falling())))


def test_diagnose_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(BadInputError, match="no monitor record"):
        diagnose(tmp_path)
    with pytest.raises(BadInputError, match="holds no steps"):
        diagnose(Record({}, {"step": np.zeros(0)}))
    with pytest.raises(BadInputError, match="source=42; pass a run directory, a Monitor or a "
                                            "Record, not a int"):
        diagnose(42)


@pytest.mark.parametrize("run_dir", [True, False])
def test_diagnose_on_an_open_monitor_reads_every_step_so_far(tmp_path, run_dir):
    """Steps not yet flushed (fewer than check_every) are flushed first, on disk or in memory."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    y = X[:, :3].argmax(1)
    losses = []
    with Monitor(model, opt, tmp_path if run_dir else None, check_every=100) as monitor:
        for steps in (30, 45):
            while len(losses) < steps:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(X), y)
                loss.backward()
                opt.step()
                monitor.step(loss)
                losses.append(loss.item())
            summary = diagnose(monitor).summary
            assert summary["steps"] == steps
            assert summary["final_loss"] == pytest.approx(float(np.median(losses[-10:])),
                                                          rel=1e-9)
    np.testing.assert_allclose(monitor.record["loss"], losses, rtol=1e-9)  # CSV: 10 digits


# ---------------------------------------------------------------------- the command
runner = CliRunner()


def _recorded_run(path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    y = X[:, :3].argmax(1)
    with Monitor(model, opt, path) as monitor:
        for _ in range(60):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            loss.backward()
            opt.step()
            monitor.step(loss)
    return path


def test_cli_diagnoses_a_run_directory_and_writes_doctor_json(tmp_path):
    result = runner.invoke(app, ["doctor", str(_recorded_run(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "healthy: no problem found" in result.output
    document = json.loads((tmp_path / "doctor.json").read_text())
    assert document["kind"] == "doctor" and document["diagnosis"]["healthy"] is True


@pytest.mark.parametrize("args, message", [
    ([], "either a RUN_DIR or --scenario"),
    (["--remedy", "somewhere"], "--scenario runs only"),
    (["--scenario", "no_such_scenario"], "scenario='no_such_scenario'; use one of"),
    (["nowhere"], "no monitor record"),
])
def test_cli_bad_usage_exits_2(args, message):
    result = runner.invoke(app, ["doctor", *args])
    assert result.exit_code == 2 and message in result.output


def test_cli_refuses_a_record_of_another_schema_version(tmp_path):
    _recorded_run(tmp_path)
    header = json.loads((tmp_path / "monitor.json").read_text())
    header["schema_version"] = 0
    (tmp_path / "monitor.json").write_text(json.dumps(header))
    result = runner.invoke(app, ["doctor", str(tmp_path)])
    assert result.exit_code == 2 and "schema version 0" in result.output


def test_cli_lists_the_scenarios():
    result = runner.invoke(app, ["doctor", "--list-scenarios"])
    assert result.exit_code == 0 and "vanishing" in result.output and "saddle" in result.output


@pytest.mark.parametrize("module", [doctor_module, report_module])
def test_docstring_examples_run(module):
    assert doctest.testmod(module).failed == 0
