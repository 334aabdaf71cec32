"""The network's rules: vanishing and exploding gradients (per-parameter gradient RMS of each
layer against the last layer's; a gradient growing with wild steps), a symmetric start (units with
identical incoming weights), saturated and dead activations."""

from __future__ import annotations

import math

import numpy as np

from landscope.doctor.findings import Finding
from landscope.doctor.rules.run import Run


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

