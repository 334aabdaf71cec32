"""High-loss critical points of a neural network are saddles, low-loss ones minima (Dauphin et al.
2014, "Identifying and attacking the saddle point problem", Fig. 1).

Bray & Dean's argument for Gaussian random fields, which Dauphin et al. found in small networks:
at a critical point the index α (fraction of negative Hessian eigenvalues) rises with the loss ε,
so the critical points far above the lowest loss are saddles, not poor minima. In terms of
the "minimum ratio" = #positive eigenvalues / #eigenvalues (1 at a minimum, between 0
and 1 at a saddle): where training stalls at a high loss the Hessian still has negative
eigenvalues, and minima are rare among critical points.

The landscape: a tanh network f(x) = w₂ᵀ tanh(W₁x + b₁) + b₂ with 2 inputs and 3 hidden units
(13 parameters) fitted by L(θ) = ½ mean (f(xᵢ) − yᵢ)² to a teacher with 6 hidden units plus noise,
the targets standardised so that the constant fit θ = 0 is a critical point at L = ½. Starts lie
on L-BFGS training paths from random initialisations of several scales (Dauphin et al. ran Newton
from points on training paths): early points lie high, late ones near minima. Newton-MR, which
converges to critical points of any index, runs from each start and the probe certifies its end.

Counted: end points certified local_min, saddle or local_max, merged into distinct critical points
when loss (to 6 significant digits), kind and index agree (several starts reach the same point).
End points that are not critical, gradient-flat or degenerate are reported, not counted. The
index and the minimum ratio are read from the exact spectrum (13 eigenvalues) at the probe's zero
tolerance τ = zero_rtol·ρ, the tolerance its verdict uses, so that a saddle's small negative
eigenvalues count; the probe's wider 1 % flat band is meant for the bulk of large networks.
A saturated tanh unit (|W₁x + b₁| large on every sample) gives exactly flat directions (its input
weights; its output weight merges with b₂), so many minima are non-strict and their minimum ratio
is below 1: "ratio 1 at a minimum" holds at strict minima only, and what marks a
minimum is index 0 (``strict`` is recorded). Saturation also leaves plateau minima up to L = ½.

The checks, each able to fail on a landscape where the claim is false:

- the index rises with the loss: Spearman's rank correlation between loss and index over the
  distinct critical points is positive, one-sided p < 0.05 (a rank test: no assumption on how α
  depends on ε; 0.05 is the conventional level, and the full scale's p is far below it);
- the lowest-loss critical point is a minimum (the bottom end only: plateau minima of saturated
  units reach up to L = ½, so the top end is left to the rank tests);
- the minimum ratio falls as the loss rises: Spearman's correlation negative, one-sided p < 0.05;
- minima are rarer among the distinct critical points above the median loss than below it: the
  95 % Wilson intervals of the two shares of minima do not overlap (each half's points come from
  independent starts; disjoint intervals are a conservative test of a difference);
- at least one minimum and three saddles are found.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import scipy.optimize
import scipy.stats
import torch

from landscope.finders import find_critical_points
from landscope.objective import Objective
from landscope.studies import Check, Study, StudyResult, register, wilson

SETTINGS = {"small": {"inits": 3, "samples": 20}, "full": {"inits": 20, "samples": 20}}
"""``inits``: random initialisations per scale, each giving one training path."""
INPUTS, HIDDEN, TEACHER_HIDDEN = 2, 3, 6
NOISE = 0.5
"""Standard deviation of the noise added to the teacher's outputs (before standardising)."""
INIT_SCALES = (0.5, 1.0, 2.0)
"""Standard deviations of the entries of θ at the start of a training path."""
SNAPSHOTS = (0, 5, 20, 100, 1000)
"""L-BFGS iterations after which a path's point becomes a start: from high loss to a minimum."""
FINDER = {"max_iter": 50, "minres_maxiter": 40}
"""Newton-MR's iteration caps: what they cut off is certified not critical and left out."""
ALPHA = 0.05
"""Level of the one-sided rank-correlation tests."""
CERTIFIED = ("local_min", "saddle", "local_max")
UNCOUNTED = ("degenerate", "gradient_flat", "not_critical")


def regression(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """X ~ N(0, 1) of shape (n, 2); y = teacher(X) + noise, standardised (mean 0, variance 1),
    the teacher a tanh network with Gaussian weights, in float64."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((samples, INPUTS))
    y = np.tanh(X @ (1.5 * rng.standard_normal((INPUTS, TEACHER_HIDDEN)))) @ \
        rng.standard_normal(TEACHER_HIDDEN) + NOISE * rng.standard_normal(samples)
    return torch.from_numpy(X), torch.from_numpy((y - y.mean()) / y.std())


def n_parameters() -> int:
    return INPUTS * HIDDEN + 2 * HIDDEN + 1


def squared_loss(X: torch.Tensor, y: torch.Tensor):
    """L(θ) = ½ mean (w₂ᵀ tanh(W₁x + b₁) + b₂ − y)², θ = (vec W₁, b₁, w₂, b₂)."""
    def loss(theta):
        W1 = theta[:INPUTS * HIDDEN].reshape(INPUTS, HIDDEN)
        b1, w2 = theta[INPUTS * HIDDEN:].split(HIDDEN)[:2]
        return 0.5 * ((torch.tanh(X @ W1 + b1) @ w2 + theta[-1] - y) ** 2).mean()
    return loss


def training_path(loss, theta: torch.Tensor) -> list[torch.Tensor]:
    """The points of an L-BFGS run from θ after each number of iterations in SNAPSHOTS."""
    def value_and_grad(x):
        at = torch.from_numpy(x).requires_grad_(True)
        value = loss(at)
        value.backward()
        return value.item(), at.grad.numpy().copy()

    path = {0: theta.clone()}

    def keep(x):
        path[len(path)] = torch.from_numpy(x.copy())

    scipy.optimize.minimize(value_and_grad, theta.numpy(), jac=True, method="L-BFGS-B",
                            callback=keep, options={"maxiter": SNAPSHOTS[-1], "gtol": 0,
                                                    "ftol": 0})
    last = len(path) - 1  # an early stop repeats its last point
    return [path[min(k, last)] for k in SNAPSHOTS]


def spectrum_fractions(found) -> tuple[float, float]:
    """(index, minimum ratio): the fractions of the exact eigenvalues below −τ and above τ."""
    values, tau = found.probe.density.eigenvalues, found.probe.tolerances.zero_atol
    return float((values < -tau).double().mean()), float((values > tau).double().mean())


def run(scale: str, seed: int) -> StudyResult:
    settings = SETTINGS[scale]
    started = time.perf_counter()
    X, y = regression(settings["samples"], seed)
    loss = squared_loss(X, y)
    generator = torch.Generator().manual_seed(seed)
    starts, origins = [], []
    for init_scale in INIT_SCALES:
        for _ in range(settings["inits"]):
            theta = init_scale * torch.randn(n_parameters(), generator=generator,
                                             dtype=torch.float64)
            starts += training_path(loss, theta)
            origins += [(init_scale, k) for k in SNAPSHOTS]
    obj = Objective.from_function(loss, starts[0], name="tanh network 2-3-1")
    points = []
    for (init_scale, iterations), f in zip(
            origins, find_critical_points(obj, torch.stack(starts), method="newton_mr",
                                          **FINDER), strict=True):
        index, ratio = spectrum_fractions(f)
        points.append({"init_scale": init_scale, "lbfgs_iterations": iterations,
                       "loss": f.run.loss, "kind": f.kind, "index": index,
                       "minimum_ratio": ratio, "strict": f.probe.strict, "stop": f.run.stop})
    result = StudyResult("saddles", scale, seed,
                         {**settings, "inputs": INPUTS, "hidden": HIDDEN,
                          "teacher_hidden": TEACHER_HIDDEN, "noise": NOISE,
                          "init_scales": list(INIT_SCALES), "snapshots": list(SNAPSHOTS),
                          "finder": FINDER, "alpha": ALPHA, "loss": squared_loss.__doc__},
                         {"points": points, "distinct": distinct(points)})
    result.checks = checks(points)
    result.seconds = time.perf_counter() - started
    return result


def distinct(points: list[dict]) -> list[dict]:
    """The certified points, one per (loss to 6 significant digits, kind, index), by loss."""
    unique = {(float(f"{p['loss']:.6g}"), p["kind"], p["index"]): p for p in points
              if p["kind"] in CERTIFIED}
    return sorted(unique.values(), key=lambda p: p["loss"])


def checks(points: list[dict]) -> list[Check]:
    """The index rises and the minimum ratio falls with the loss; minima are rarer above the
    median loss; the lowest point is a minimum (see the module docstring)."""
    found = distinct(points)
    kinds = Counter(p["kind"] for p in found)
    loss = [p["loss"] for p in found]
    uncounted = Counter(p["kind"] for p in points if p["kind"] in UNCOUNTED)
    not_counted = ", ".join(f"{uncounted[k]} {k}" for k in UNCOUNTED if uncounted[k]) or "none"
    result = [Check("at least one minimum and three saddles",
                    f"{kinds['local_min']} minima, {kinds['saddle']} saddles, "
                    f"{kinds['local_max']} maxima distinct, from {len(points)} starts (not "
                    f"counted: {not_counted})", "≥ 1 minimum, ≥ 3 saddles",
                    kinds["local_min"] >= 1 and kinds["saddle"] >= 3)]
    if len(found) < 3:
        return result + [Check("the index rises with the loss", f"{len(found)} critical points",
                               "at least 3 to rank", False)]
    for name, key, sign in (("the index rises with the loss", "index", 1),
                            ("the minimum ratio falls as the loss rises", "minimum_ratio", -1)):
        rho, p = scipy.stats.spearmanr(loss, [q[key] for q in found],
                                       alternative="greater" if sign > 0 else "less")
        rho = 0.0 if np.isnan(rho) else float(rho)  # a constant column has no rank order
        p = 1.0 if np.isnan(p) else float(p)
        result.append(Check(name, f"Spearman ρ = {rho:+.3f}, one-sided p = {p:.2g}",
                            f"ρ {'>' if sign > 0 else '<'} 0, p < {ALPHA}",
                            sign * rho > 0 and p < ALPHA))
    lowest = found[0]
    result.append(Check("the lowest-loss critical point is a minimum",
                        f"L = {lowest['loss']:.4g}: {lowest['kind']} (index {lowest['index']:.3g})",
                        "local_min", lowest["kind"] == "local_min"))
    median = float(np.median(loss))
    halves = {"below": [p for p in found if p["loss"] <= median],
              "above": [p for p in found if p["loss"] > median]}
    shares = {half: (sum(p["kind"] == "local_min" for p in chosen), len(chosen))
              for half, chosen in halves.items()}
    intervals = {half: wilson(*share) if share[1] else (0.0, 1.0)
                 for half, share in shares.items()}
    result.append(Check(f"minima are rarer above the median loss {median:.3g} than below it",
                        "; ".join(f"{half}: {k} of {m} minima, 95 % Wilson "
                                  f"[{intervals[half][0]:.2f}, {intervals[half][1]:.2f}]"
                                  for half, (k, m) in shares.items()),
                        "above's upper bound < below's lower bound",
                        intervals["above"][1] < intervals["below"][0]))
    return result


def draw_figure(result: StudyResult):
    """Index and minimum ratio against loss at each distinct certified critical point (Dauphin
    et al. Fig. 1: index α against error ε), L = ½ of the constant fit marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True)
    found = result.figures["distinct"]
    for ax, key, label in ((axes[0], "index", "index α (fraction of negative eigenvalues)"),
                           (axes[1], "minimum_ratio",
                            "minimum ratio (fraction of positive eigenvalues)")):
        for kind, marker in (("local_min", "o"), ("saddle", "^"), ("local_max", "v")):
            chosen = [p for p in found if p["kind"] == kind]
            if chosen:
                ax.scatter([p["loss"] for p in chosen], [p[key] for p in chosen], marker=marker,
                           alpha=0.6, label=f"{kind} ({len(chosen)})")
        ax.axvline(0.5, color="0.6", linestyle=":", linewidth=1, label="constant fit, L = ½")
        ax.set_xlabel("loss ε at the critical point")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    measured = {check.name: check.measured for check in result.checks}
    fig.suptitle(f"tanh network {INPUTS}-{HIDDEN}-1 · Newton-MR from "
                 f"{len(result.figures['points'])} points on L-BFGS paths · index against loss: "
                 f"{measured.get('the index rises with the loss', '')}", fontsize=9)
    fig.tight_layout()
    return fig


register(Study("saddles", "small networks: the index of a critical point rises with its loss, "
               "high-loss critical points are saddles (Dauphin et al. 2014)", run, draw_figure))
