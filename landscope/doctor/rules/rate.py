"""The learning rate's rules: too large (the loss diverges or spikes, a step changes the weights
wildly, the gradients reverse at the edge of stability, or the sharpness or batch sharpness stands
past the optimiser's stability limit) and too small (η_eff·sharpness/2, the step as a share of the
2/sharpness limit, at most ``small_sharpness`` while the loss crawls; without curvature, tiny
update-to-weight ratios)."""

from __future__ import annotations

import math

import numpy as np

from landscope.doctor.findings import Finding
from landscope.doctor.rules.run import Run
from landscope.monitor.signals import moving_median

RAISE_TO = 0.05
"""The share η_eff·λ/2 of the stability limit a too-small rate is told to rise to: a tenth of
half of it, room for the sharpness to grow tenfold once the run learns (a stalled network's λ_max
is far below a training one's; at half the limit, raised rates killed or blew up two of six MLPs
of the fault suite)."""


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

