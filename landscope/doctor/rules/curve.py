"""Where the loss curve stopped or turned: a narrow valley (the steps bounce between its walls,
or the rate is capped by the sharpest direction while the loss crawls), a saddle (λ_min < 0 where
a gradient step gains almost nothing), a poor minimum (stalled far above the floor) and
overfitting (the validation loss turns up while the training loss falls)."""

from __future__ import annotations

import math

import numpy as np

from landscope.doctor.findings import Finding
from landscope.doctor.rules.run import Run
from landscope.monitor.signals import moving_median


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

