"""The doctor's rules: each reads a monitored run's record and returns a Finding or None.

What is hard: thresholds must be scale-free, or they misfire on the next model. So each rule
compares a number with another number from the same run, never with an absolute unit:

- progress of the loss over the final window, relative to the excess loss (see signals); a rise
  of its 10-step moving median, or a single step's loss ≥ ``spike``× the start's (both excess);
- the descent ratio r = ‖g‖²/(2·λ_max·(L − L_low)) on the held batch: the share of the excess loss
  one safe gradient step (length 1/λ_max) would remove. r ≥ ``critical_ratio``: still sliding;
  below it θ is near a critical point (the test of ``landscope.probe``, made coarse for training);
- λ_min relative to ρ = max|λ|; sharpness relative to the optimiser's stability limit (too
  large) and η_eff·sharpness/2, the effective learning rate as a share of 2/sharpness (too small:
  a momentum method's limit is far above the rates at which it moves fast); at so slow a rate a
  loss flat within its noise (the final window's standard deviation) is still too slow;
- per-parameter gradient RMS ‖g_layer‖/√n_layer of each layer relative to the last layer's;
- cos(g_t, g_{t−1}): persistently negative while the loss stalls or crawls (falling, progress below
  ``slow_progress``) means the steps bounce between the walls of a valley;
  ≤ ``edge_cos`` (an almost exact reversal, g_{t+1} ≈ (1 − ηλ)g_t with ηλ ≈ 2) while the loss
  falls or stalls is gradient descent at the edge of stability: the rate is as large as it can
  be, unless the sharpness measured where the run stopped is below ``edge_share`` of the
  limit: at the edge GD holds its sharpness at 2/η, while SGD just inside the limit in a
  valley (1.8/λ_max: 0.89 of it) or a saddle far inside it can reverse its gradients too;
- a narrow valley also without visible bouncing (mini-batch noise can hide it): a loss that
  stalls or crawls far from its end (≥ ``slow_excess`` of the initial excess) while the rate
  already stands at ≥ ``valley_share`` of the limit the sharpness sets (η_eff·sharpness/2): the
  rate cannot rise, and the other directions are far flatter;
- the start's scale: the geometric mean over layers of ‖θ_layer‖/√units at the first step (about
  0.6 for PyTorch's default initialisation, whatever the width), ≤ ``origin_gain`` next to the
  origin, a saddle of every network; ≥ ``large_gain`` each layer amplifies its input (above He's
  √2), and a blow-up within ``early_steps`` of such a start is the initialisation's, not the rate's;
- update-to-weight ratios ‖Δθ‖/‖θ‖ (used for the learning rate only when no curvature was measured),
  saturation and dead fractions, row spread: already fractions.

Findings whose signal has a first step say so (``Finding.onset``: the first step a site's
fraction passed its threshold, the first step the rate's evidence was seen), for the ranking's
onset order.

A growing gradient counts as exploding only if the steps it causes are wild (‖Δθ‖/‖θ‖ ≥
``wild_update``): near a saddle the gradient also grows a thousandfold, from 1e-12, harmlessly.

The verdict comes from the record alone. Each rule has a unit test at the edge of its threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from landscope.doctor.findings import Finding
from landscope.monitor.record import Record
from landscope.monitor.signals import (
    CurveThresholds,
    initial_loss,
    moving_median,
    window_status,
)

RAISE_TO = 0.05
"""The share η_eff·λ/2 of the stability limit a too-small rate is told to rise to: a tenth of
half of it, room for the sharpness to grow tenfold once the run learns (a stalled network's λ_max
is far below a training one's; at half the limit, raised rates killed or blew up two of six MLPs
of the fault suite)."""


@dataclass(frozen=True)
class Thresholds:
    """Where each rule fires (see the module docstring for what each number compares)."""

    curve: CurveThresholds = field(default_factory=CurveThresholds)
    critical_ratio: float = 1e-2
    negative_curvature: float = 1e-2
    poor_fraction: float = 0.5
    flat_sharpness: float = 1e-2
    vanishing_ratio: float = 1e-3
    exploding_ratio: float = 1e3
    growth: float = 1e3
    wild_update: float = 0.5
    diverge_rise: float = 0.5
    edge_margin: float = 1.0
    small_update: float = 1e-4
    small_sharpness: float = 1e-2
    persistent_cos: float = 0.1
    symmetric_spread: float = 1e-4
    origin_gain: float = 1e-2
    large_gain: float = 2.0
    early_steps: int = 5
    spike: float = 5.0
    edge_cos: float = -0.95
    edge_share: float = 0.95
    valley_share: float = 0.5
    saturated: float = 0.5
    dead: float = 0.5
    overfit_rise: float = 0.1
    min_val_points: int = 5


@dataclass(frozen=True)
class CurvatureNumbers:
    """One curvature measurement of a run (a row of its record), with the descent ratio.

    descent_ratio: r = ‖g‖²/(2ρ(L − L_low)) on the held batch, ρ = max|λ| (inf when ρ or the
    excess is 0). stability_limit: the optimiser's limit for the sharpness; the rest as recorded.
    """

    step: int
    held_loss: float
    held_grad_norm: float
    lambda_max: float
    lambda_max_residual: float
    lambda_min: float
    lambda_min_residual: float
    descent_ratio: float
    sharpness: float
    batch_sharpness: float
    stability_limit: float
    lr: float
    effective_lr: float
    noise_scale: float

    @property
    def rho(self) -> float:
        """ρ = max(|λ_max|, |λ_min|)."""
        return max(abs(self.lambda_max), abs(self.lambda_min))

    def to_dict(self) -> dict:
        return asdict(self)


def run_rules(run: Run) -> list[Finding]:
    """Every rule over the run; the findings that hold, unranked."""
    return [f for rule in RULES if (f := rule(run)) is not None]


class Run:
    """A record with the quantities most rules share: final window, loss status, curvature."""

    def __init__(self, record: Record, th: Thresholds):
        self.record, self.th = record, th
        settings = record.meta.get("settings", {})
        self.lower = settings.get("lower_bound") or 0.0
        self.steps, self.loss = record.steps, record["loss"]
        self.initial = initial_loss(self.loss)
        broken = np.flatnonzero(record["non_finite"] == 1)
        self.broken_at = int(self.steps[broken[0]]) if broken.size else None
        usable = self.steps < (self.broken_at if broken.size else math.inf)
        end = self.steps[usable][-1] if usable.any() else -math.inf
        self.final = usable & (self.steps > end - settings.get("window", 100))
        self.status, self.progress = window_status(self.loss[self.final], self.initial,
                                                   self.lower, th.curve)
        rows = np.flatnonzero(np.isfinite(record["lambda_max"]) & usable)
        self.latest = int(rows[-1]) if rows.size else None  # the latest curvature measurement
        self.curvature = self._stall_curvature()

    def _stall_curvature(self) -> int | None:
        """The latest curvature row, if in the final window or if the loss has stalled since:
        the measurement that describes where the run stopped."""
        i = self.latest
        if i is None or self.final[i]:
            return i
        since = window_status(self.loss[i:], self.initial, self.lower, self.th.curve)
        return i if since[0] == "stalled" else None

    def median(self, column: str | np.ndarray, mask: np.ndarray | None = None) -> float:
        values = self.record[column] if isinstance(column, str) else column
        values = values[self.final if mask is None else mask]
        values = values[~np.isnan(values)]
        return float(np.median(values)) if values.size else math.nan

    def early(self, column: str, points: int = 5) -> float:
        values = self.record[column]
        values = values[np.isfinite(values)][:points]
        return float(np.median(values)) if values.size else math.nan

    def start_gain(self) -> float:
        """Geometric mean over the layers with units of ‖θ_layer‖/√units at the first step."""
        gains = [self.record[f"weight_norm:{layer['name']}"][0] / math.sqrt(layer["units"])
                 for layer in self.record.meta.get("layers", []) if layer.get("units", 0) >= 1]
        gains = [g for g in gains if np.isfinite(g)]
        if not gains:
            return math.nan
        return 0.0 if min(gains) == 0 else float(np.exp(np.mean(np.log(gains))))

    def sharpness_share(self) -> float:
        """Sharpness over the stability limit where the run stopped (NaN: not measured)."""
        if self.curvature is None:
            return math.nan
        r = self.record
        return float(r["sharpness"][self.curvature] / r["stability_threshold"][self.curvature])

    def effective_rate(self, i: int) -> float:
        """η_eff at row i (the learning rate in records from before effective_lr)."""
        rate = self.record["effective_lr"][i]
        return float(self.record["lr"][i] if math.isnan(rate) else rate)

    def rate_share(self, i: int) -> float:
        """η_eff·sharpness/2 at curvature row i: the step as a share of the 2/sharpness limit."""
        return self.effective_rate(i) * float(self.record["sharpness"][i]) / 2

    def window_steps(self) -> list[int]:
        steps = self.steps[self.final]
        return [int(steps[0]), int(steps[-1])] if steps.size else []

    def excess_share(self) -> float:
        """Final excess loss as a share of the initial excess loss."""
        return (self.median("loss") - self.lower) / max(self.initial - self.lower, 1e-300)

    def curvature_numbers(self, i: int | None = None) -> CurvatureNumbers:
        """λ_max, λ_min, descent ratio r, sharpness and limit at row i (default: the stall's)."""
        i, r = self.curvature if i is None else i, self.record
        lam_max, lam_min = r["lambda_max"][i], r["lambda_min"][i]
        rho = max(abs(lam_max), abs(lam_min)) if np.isfinite(lam_min) else abs(lam_max)
        excess = r["held_loss"][i] - self.lower
        ratio = r["held_grad_norm"][i] ** 2 / (2 * rho * excess) if rho > 0 and excess > 0 \
            else math.inf
        return CurvatureNumbers(
            step=int(self.steps[i]), held_loss=r["held_loss"][i],
            held_grad_norm=r["held_grad_norm"][i], lambda_max=lam_max,
            lambda_max_residual=r["lambda_max_residual"][i], lambda_min=lam_min,
            lambda_min_residual=r["lambda_min_residual"][i], descent_ratio=ratio,
            sharpness=r["sharpness"][i], batch_sharpness=r["batch_sharpness"][i],
            stability_limit=r["stability_threshold"][i], lr=r["lr"][i],
            effective_lr=r["effective_lr"][i], noise_scale=r["noise_scale"][i])


# ---------------------------------------------------------------------- the loss curve
def narrow_valley(run: Run) -> Finding | None:
    th = run.th
    cos, limit = run.median("grad_cos"), th.curve.oscillation_cos
    crawling = run.status == "falling" and run.progress < th.curve.slow_progress
    if not (run.status == "stalled" or crawling):
        return None
    numbers = run.curvature_numbers() if run.curvature is not None else None
    used = run.rate_share(run.curvature) if numbers else math.nan
    bouncing = bool(cos <= limit)
    capped = bool(used >= th.valley_share and run.excess_share() >= th.curve.slow_excess)
    if not (bouncing or capped):
        return None
    if numbers and numbers.descent_ratio < th.critical_ratio:
        return None  # near a critical point: the bouncing is noise, not a slide
    evidence = {"progress": run.progress, "median_grad_cos": cos,
                "oscillation_cos": limit, "grad_norm": run.median("grad_norm"),
                "grad_norm_early": run.early("grad_norm"),
                **(numbers.to_dict() if numbers else {})}
    if numbers:
        evidence.update(critical_ratio=th.critical_ratio, rate_share=used,
                        valley_share=th.valley_share, excess_share=run.excess_share())
    why = []
    if bouncing:
        why.append(f"consecutive gradients point in opposite directions (median cos {cos:.2f})")
    if capped:
        why.append(f"the rate already stands at {used:.0%} of the 2/λ_max limit the sharpest "
                   f"direction sets, with {run.excess_share():.0%} of the initial excess loss "
                   "left")
    return Finding(name="narrow_valley", severity="warning",
                   summary=f"the loss {'crawls' if crawling else 'stalled'} (progress "
                   f"{run.progress:.1%} over the final window) while " + " and ".join(why)
                   + f"; the gradient norm stays at {evidence['grad_norm']:.3g}",
                   evidence=evidence, steps=run.window_steps(),
                   strength=max(cos / limit if bouncing else 0.0,
                                used / th.valley_share if capped else 0.0))


def saddle(run: Run) -> Finding | None:
    if run.status != "stalled" or run.curvature is None:
        return None
    th, numbers = run.th, run.curvature_numbers()
    rho = numbers.rho
    if not (numbers.lambda_min <= -th.negative_curvature * rho
            and numbers.descent_ratio <= th.critical_ratio):
        return None
    gain = run.start_gain()
    origin = bool(gain <= th.origin_gain)  # started next to the origin: the saddle came first
    return Finding(name="saddle", severity="warning",  # at the origin: not to start there
                   summary=f"a gradient step would gain only {numbers.descent_ratio:.2g} of the "
                   f"excess loss, but λ_min = {numbers.lambda_min:.3g} < 0 "
                   f"({abs(numbers.lambda_min) / rho:.0%} of ρ = {rho:.3g})"
                   + (f"; the run started next to the origin (weight scale {gain:.2g})"
                      if origin else ""),
                   evidence={**numbers.to_dict(), "rho": rho,
                             "negative_curvature": th.negative_curvature,
                             "critical_ratio": th.critical_ratio, "progress": run.progress,
                             "start_gain": gain, "origin_gain": th.origin_gain},
                   steps=[numbers.step],
                   strength=abs(numbers.lambda_min) / (th.negative_curvature * rho),
                   produces=("vanishing_gradients",) if origin else (),
                   first=("reinit",) if origin else ())


def poor_minimum(run: Run) -> Finding | None:
    th, share = run.th, run.excess_share()
    if run.status != "stalled" or not share >= th.poor_fraction:
        return None
    evidence = {"progress": run.progress, "excess_share": share,
                "poor_fraction": th.poor_fraction, "initial_loss": run.initial,
                "loss": run.median("loss")}
    if run.curvature is None:
        early, late = run.early("grad_norm"), run.median("grad_norm")
        if not late <= 0.1 * early:
            return None
        evidence.update(grad_norm_early=early, grad_norm=late,
                        note="no curvature measured (give the Monitor a held batch)")
        what = f"the gradient norm fell from {early:.3g} to {late:.3g}"
    else:
        numbers = run.curvature_numbers()
        if numbers.descent_ratio > th.critical_ratio or (
                numbers.lambda_min <= -th.negative_curvature * numbers.rho):
            return None
        flat = bool(numbers.lr * numbers.lambda_max < th.flat_sharpness)
        evidence.update(numbers.to_dict(), flat=flat, flat_sharpness=th.flat_sharpness)
        what = (f"{'a flat region' if flat else 'a minimum'}: descent ratio "
                f"{numbers.descent_ratio:.2g}, λ_min = {numbers.lambda_min:.3g}, "
                f"η·λ_max = {numbers.lr * numbers.lambda_max:.3g}")
    return Finding(name="poor_minimum", severity="warning",
                   summary=f"the loss stalled at {share:.0%} of its initial excess; {what}",
                   evidence=evidence, steps=run.window_steps(), strength=share / th.poor_fraction)


def lr_too_large(run: Run) -> Finding | None:
    th, evidence, steps = run.th, {}, []
    smooth = moving_median(run.loss, 10)
    floor = np.fmin.accumulate(np.where(np.isnan(smooth), np.inf, smooth))  # lowest so far
    rise = smooth[1:] - floor[:-1]
    scale = max(run.initial - run.lower, 1e-300)
    over = np.flatnonzero(rise >= th.diverge_rise * scale)
    strength = 1.0
    if over.size:
        i = over[0] + 1
        evidence.update(divergence_step=int(run.steps[i]), loss_there=smooth[i],
                        lowest_before=floor[i - 1], rise_in_initial_losses=rise[i - 1] / scale,
                        diverge_rise=th.diverge_rise, peak_loss=float(np.nanmax(smooth)),
                        update_ratio_there=run.record["update_ratio"][i])
        steps.append(int(run.steps[i]))
        strength = rise[i - 1] / scale / th.diverge_rise
    start = np.median(run.loss[np.isfinite(run.loss)][:10]) - run.lower  # a spike too short
    spikes = np.flatnonzero(run.loss - run.lower >= th.spike * start)  # to move the median
    # where the run ended, above the floor (NaN if it diverged): a spike or a wild step counts
    # unless the run got below half of where it was before it (then it was noise)
    settled = np.nanmedian(run.loss[run.final]) - run.lower
    if spikes.size and start > 0:
        k = spikes[0]
        before = np.nanmedian(run.loss[max(0, k - 10):k]) - run.lower if k else start
        if not settled < th.poor_fraction * before:
            evidence.update(spike_step=int(run.steps[k]), spike_loss=run.loss[k],
                            start_loss=start + run.lower, spike=th.spike)
            steps.append(int(run.steps[k]))
            strength = max(strength, (run.loss[k] - run.lower) / start / th.spike)
    update = run.record["update_ratio"]
    wild = np.flatnonzero(update >= th.wild_update)
    # a first step longer than half the weights is normal from a small start that the loss
    # then falls from; one the run never recovers from (from the origin, every step is "wild")
    first = run.loss[np.isfinite(run.loss)][:1] - run.lower
    if (wild.size and run.start_gain() > th.origin_gain and first.size
            and not settled < th.poor_fraction * first[0]):
        w = wild[0]
        evidence.update(wild_update_step=int(run.steps[w]), wild_update_ratio=update[w],
                        wild_update=th.wild_update)
        steps.append(int(run.steps[w]))
        strength = max(strength, update[w] / th.wild_update)
    blew_up = bool(over.size or "spike_step" in evidence or "wild_update_step" in evidence)
    cos = run.median("grad_cos")
    bouncing = bool(not blew_up and run.status in ("falling", "stalled") and cos <= th.edge_cos
                    and not run.sharpness_share() < th.edge_share)
    if bouncing:  # each step overshoots the sharpest direction, ηλ ≈ 2, falling loss or not
        evidence.update(median_grad_cos=cos, edge_cos=th.edge_cos, progress=run.progress)
        steps += run.window_steps()[:1]
        strength = cos / th.edge_cos
    sharpness, batch = run.record["sharpness"], run.record["batch_sharpness"]
    with np.errstate(divide="ignore", invalid="ignore"):  # mini-batch SGD's edge: its batch
        ratio = np.fmax(sharpness, batch) / run.record["stability_threshold"]  # sharpness
    edge = np.flatnonzero(ratio >= th.edge_margin)
    if not blew_up:  # no blow-up: only where the loss has stopped falling (at the edge of
        where = run.final.copy()  # stability a falling loss is GD's own way of making progress)
        if run.curvature is not None:
            where[run.curvature] = True
        edge = edge[where[edge]] if run.status in ("stalled", "rising") or bouncing else edge[:0]
    if edge.size:
        j = edge[np.argmax(ratio[edge])]
        evidence.update(sharpness=sharpness[j], batch_sharpness=batch[j],
                        stability_limit=run.record["stability_threshold"][j],
                        sharpness_over_limit=ratio[j], sharpness_step=int(run.steps[j]))
        steps.append(int(run.steps[j]))
        strength = max(strength, ratio[j] / th.edge_margin)
    if not evidence:
        return None
    if over.size:
        what = (f"the loss rose from {evidence['lowest_before']:.3g} to "
                f"{evidence['loss_there']:.3g} at step {evidence['divergence_step']}")
    if "wild_update_step" in evidence:
        what = (what + "; " if over.size else "") + (
            f"one step changed the weights by {evidence['wild_update_ratio']:.2g} of their norm "
            f"at step {evidence['wild_update_step']} (≥ {th.wild_update:g})")
    if "spike_step" in evidence:
        what = (what + "; " if over.size or "wild_update_step" in evidence else "") + (
            f"the loss jumped to {evidence['spike_loss']:.3g} at step {evidence['spike_step']}, "
            f"≥ {th.spike:g}× its start {evidence['start_loss']:.3g}")
    if bouncing:
        what = (f"the loss {'still falls' if run.status == 'falling' else 'has stalled'} "
                f"(progress {run.progress:.1%} over the final window) while "
                f"consecutive gradients reverse (median cos {cos:.2f} ≤ {th.edge_cos:g}): each "
                "step overshoots the sharpest direction (ηλ_max ≈ 2, the edge of stability)")
    elif not blew_up:
        what = (f"the loss has stopped falling ({run.status}, progress {run.progress:.1%} over "
                "the final window)")
    if edge.size:
        gauge = ("the batch sharpness (a mini-batch's curvature along its own gradient) "
                 f"{batch[j]:.4g}" if batch[j] > sharpness[j] or np.isnan(sharpness[j])
                 else f"the sharpness {sharpness[j]:.4g}")
        what += (f"; {gauge} is {evidence['sharpness_over_limit']:.5g}× the optimiser's "
                 f"stability limit {evidence['stability_limit']:.4g}")
    return Finding(name="lr_too_large", severity="critical" if blew_up else "warning",
                   summary=what, evidence=evidence, steps=sorted(steps), strength=strength,
                   onset=min(steps, default=None))


def lr_too_small(run: Run) -> Finding | None:
    th, share = run.th, run.excess_share()
    ratios = {name: run.median(col) for name, col in run.record.per_layer("update_ratio").items()}
    largest = max((v for v in ratios.values() if np.isfinite(v)), default=math.nan)
    cos = run.median("grad_cos")
    window = run.loss[run.final]
    noise = float(np.nanstd(window)) / max(run.initial - run.lower, 1e-300)
    if not (run.status in ("falling", "stalled") and -noise < run.progress < th.curve.slow_progress
            and share >= th.poor_fraction and cos >= th.persistent_cos):
        return None
    if run.progress <= 0 and run.latest is None:
        return None  # a flat loss is a slow rate's only with the curvature test below
    evidence = {"largest_update_ratio": largest, "small_update": th.small_update,
                "median_grad_cos": cos, "excess_share": share, "progress": run.progress,
                "lr": run.median("lr")}
    if run.latest is not None:  # the scale-free test: η_eff·sharpness/2 (see the docstring)
        numbers = run.curvature_numbers(run.latest)
        used, rate = run.rate_share(run.latest), run.effective_rate(run.latest)
        if not used <= th.small_sharpness:
            return None
        raise_factor = RAISE_TO / used  # to η_eff·λ/2 = RAISE_TO
        evidence.update(numbers.to_dict(), rate_share=used, small_sharpness=th.small_sharpness,
                        loss_noise=noise, raise_factor=raise_factor)
        what = (f"a step removes {2 * used:.2g} of the error along the sharpest direction "
                f"(η_eff·λ = {rate:.3g} × {numbers.sharpness:.3g}): the learning rate is "
                f"{used:.2g} of the 2/λ the local curvature allows; {raise_factor:.3g}× it "
                f"would be {RAISE_TO:g} of it")
        strength = th.small_sharpness / max(used, 1e-300)
        # steps this short stop anywhere: a stall read as a saddle or a minimum is the rate's,
        # unless the run started at the origin (then the saddle came first)
        stops = ("saddle", "poor_minimum") if not run.start_gain() <= th.origin_gain else ()
    else:
        if not largest <= th.small_update:
            return None
        what = f"no layer's weights change by more than {largest:.2g} of their norm per step"
        strength, stops = th.small_update / max(largest, 1e-300), ()
    return Finding(name="lr_too_small", severity="warning",
                   summary=f"the loss is still at {share:.0%} of its initial excess and "
                   + ("creeping down" if run.progress > 0 else "flat within its noise")
                   + f" in a steady direction (median cos {cos:.2f}); {what}",
                   evidence=evidence, steps=run.window_steps(), strength=strength,
                   produces=stops)


def overfitting(run: Run) -> Finding | None:
    th, val = run.th, run.record["val_loss"]
    points = np.flatnonzero(np.isfinite(val))
    if points.size < th.min_val_points:
        return None
    best = points[np.argmin(val[points])]
    late = float(np.median(val[points[-3:]]))
    smooth = moving_median(run.loss, 10)
    if not (best < points[-3] and late >= (1 + th.overfit_rise) * val[best]
            and smooth[-1] < smooth[best]):
        return None
    return Finding(name="overfitting", severity="warning",
                   summary=f"the validation loss was lowest ({val[best]:.3g}) at step "
                   f"{int(run.steps[best])} and is now {late:.3g} "
                   f"(+{late / val[best] - 1:.0%}), while the training loss fell from "
                   f"{smooth[best]:.3g} to {smooth[-1]:.3g}",
                   evidence={"best_step": int(run.steps[best]), "best_val_loss": val[best],
                             "val_loss": late, "train_loss_at_best": smooth[best],
                             "train_loss": smooth[-1], "overfit_rise": th.overfit_rise},
                   steps=[int(run.steps[best]), int(run.steps[points[-1]])],
                   strength=(late / val[best] - 1) / th.overfit_rise)


# ---------------------------------------------------------------------- the network
def vanishing_gradients(run: Run) -> Finding | None:
    layers = run.record.meta.get("layers", [])
    if len(layers) < 2:
        return None
    rms = np.array([run.median(f"grad_norm:{layer['name']}") / math.sqrt(layer["numel"])
                    for layer in layers])
    updates = np.array([run.median(f"update_ratio:{layer['name']}") for layer in layers])
    if not rms[-1] > 0:
        return None
    ratios = rms[:-1] / rms[-1]
    worst = int(np.nanargmin(ratios)) if np.isfinite(ratios).any() else None
    if worst is None or not ratios[worst] <= run.th.vanishing_ratio:
        return None
    frozen = not updates[worst] / updates[-1] > run.th.vanishing_ratio  # NaN: nothing moved
    name = layers[worst]["name"]
    last = layers[-1]["name"]
    share = ("no gradient at all" if ratios[worst] == 0 else
             f"{ratios[worst]:.2g}× the gradient (per parameter) of the last layer ({last})")
    return Finding(name="vanishing_gradients", severity="critical" if frozen else "warning",
                   summary=f"layer {name} receives {share}"
                   + ("; its weights barely move" if frozen else
                      "; the optimiser rescales its steps, but the signal is tiny"),
                   evidence={"layer": name, "gradient_ratio": ratios[worst],
                             "update_ratio_ratio": updates[worst] / updates[-1],
                             "vanishing_ratio": run.th.vanishing_ratio,
                             "grad_rms": dict(zip([layer["name"] for layer in layers],
                                                  rms.tolist(), strict=True))},
                   steps=run.window_steps(),
                   strength=run.th.vanishing_ratio / max(ratios[worst], 1e-300))


def exploding_gradients(run: Run) -> Finding | None:
    th, evidence, steps = run.th, {}, []
    grads = run.record["grad_norm"]
    early = run.early("grad_norm")
    finite = np.flatnonzero(np.isfinite(grads))
    if finite.size and early > 0:
        peak = finite[np.argmax(grads[finite])]
        update = run.record["update_ratio"][peak]
        if grads[peak] >= th.growth * early and update >= th.wild_update:
            evidence.update(grad_norm_early=early, grad_norm_peak=grads[peak],
                            peak_step=int(run.steps[peak]), growth=grads[peak] / early,
                            update_ratio_at_peak=update, wild_update=th.wild_update)
            steps.append(int(run.steps[peak]))
    layers = run.record.meta.get("layers", [])
    if len(layers) >= 2:
        rms = np.array([run.median(f"grad_norm:{layer['name']}") / math.sqrt(layer["numel"])
                        for layer in layers])
        ratio = np.nanmax(rms[:-1] / rms[-1]) if rms[-1] > 0 else math.nan
        if ratio >= th.exploding_ratio:
            evidence.update(depth_ratio=ratio, exploding_ratio=th.exploding_ratio)
    if run.broken_at is not None:
        evidence["non_finite_step"] = run.broken_at
        steps.append(run.broken_at)
    if not evidence:
        return None
    gain, first = run.start_gain(), int(run.steps[0])
    from_start = bool(gain >= th.large_gain and steps and min(steps) < first + th.early_steps)
    if from_start:  # the weights overflow before any rate could act: sharpness past the limit is
        evidence.update(start_gain=gain, large_gain=th.large_gain,  # their doing too
                        early_steps=th.early_steps)
    parts = []
    if "non_finite_step" in evidence:
        parts.append(f"the loss or gradient became non-finite at step {run.broken_at}")
    if "growth" in evidence:
        parts.append(f"the gradient norm grew {evidence['growth']:.2g}× from {early:.3g}")
    if "depth_ratio" in evidence:
        parts.append(f"per parameter, early layers get {evidence['depth_ratio']:.2g}× the "
                     "gradient of the last")
    strength = max(evidence.get("growth", 0) / th.growth,
                   evidence.get("depth_ratio", 0) / th.exploding_ratio, 1.0)
    if from_start:
        parts.append(f"within {th.early_steps} steps of a start whose layers amplify their input "
                     f"(weight scale {gain:.2g} ≥ {th.large_gain:.2g}): the initialisation")
    return Finding(name="exploding_gradients", severity="critical", summary="; ".join(parts),
                   evidence=evidence, steps=sorted(steps), strength=strength,
                   produces=("lr_too_large",) if from_start else (),
                   first=("reinit",) if from_start else ())


def symmetric_init(run: Run) -> Finding | None:
    th, found = run.th, {}
    for layer in run.record.meta.get("layers", []):
        spread = run.record[f"row_spread:{layer['name']}"]
        spread = spread[~np.isnan(spread)]
        if layer.get("units", 0) >= 2 and spread.size and spread[-1] <= th.symmetric_spread:
            found[layer["name"]] = float(spread[-1])
    if not found:
        return None
    return Finding(name="symmetric_init", severity="critical",
                   summary=f"every unit of layer(s) {', '.join(found)} has the same incoming "
                   f"weights (row spread {max(found.values()):.2g}) at the end of the run",
                   evidence={"row_spread": found, "symmetric_spread": th.symmetric_spread},
                   steps=[int(run.steps[-1])], strength=1.0)


def saturation(run: Run) -> Finding | None:
    return _activation(run, "saturation", run.th.saturated, "of the outputs are saturated")


def dead_relus(run: Run) -> Finding | None:
    return _activation(run, "dead", run.th.dead, "of the units are dead")


def _activation(run: Run, kind: str, threshold: float, words: str) -> Finding | None:
    columns = run.record.per_site(kind)
    found = {site: run.median(values) for site, values in columns.items()}
    found = {site: value for site, value in found.items() if value >= threshold}
    if not found:
        return None
    worst = max(found, key=found.get)
    name = "saturation" if kind == "saturation" else "dead_relus"
    onset = min(int(run.steps[np.argmax(columns[site] >= threshold)]) for site in found)
    gain = run.start_gain()
    inputs = name == "saturation" and gain < run.th.large_gain  # weights at a normal scale:
    return Finding(name=name, severity="warning",  # the inputs drive them into their tails
                   summary=f"at site {worst}, {found[worst]:.0%} {words} (median over the final "
                   f"window; first past {threshold:.0%} at step {onset})"
                   + (f"; the weights started at a normal scale ({gain:.2g}): the inputs drive "
                      "the units into their tails" if inputs else ""),
                   evidence={"sites": found, "threshold": threshold, "onset_step": onset,
                             "start_gain": gain, "large_gain": run.th.large_gain},
                   steps=run.window_steps(), strength=found[worst] / threshold, onset=onset,
                   first=("normalisation",) if inputs else ())


RULES = (exploding_gradients, lr_too_large, symmetric_init, vanishing_gradients, saturation,
         dead_relus, narrow_valley, saddle, poor_minimum, lr_too_small, overfitting)
