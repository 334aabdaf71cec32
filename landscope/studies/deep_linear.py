"""Deep linear networks have no poor local minima (Kawaguchi 2016, Theorem 2.3).

A bias-free linear network f(x) = W₃W₂W₁x on a regression (X, Y) with n samples has the loss
L = ½‖W₃W₂W₁X − Y‖²/n. Kawaguchi proved that every local minimum of L is global and every other
critical point a saddle (for depth ≥ 3 some saddles have no negative Hessian eigenvalue).

The global minimum in closed form: with Σ_XX = XXᵀ/n, Σ_YX = YXᵀ/n, Σ_YY = YYᵀ/n and
M = Σ_YX Σ_XX⁻¹ Σ_XY, L(W) = ½(tr Σ_YY − tr M) + ½‖(W − Σ_YX Σ_XX⁻¹) Σ_XX^½‖², and the product
W = W₃W₂W₁ has rank at most k = the narrowest width, so by Eckart–Young
L* = ½(tr Σ_YY − sum of the top k eigenvalues of M). Factors with the product
W = P_S Σ_YX Σ_XX⁻¹, P_S the projection on the eigenvectors of M in a set S of at most k, can be
chosen critical, with loss ½(tr Σ_YY − Σ_{i∈S} λᵢ(M)); with one hidden layer these are all the
critical values (Baldi & Hornik 1989). The figure marks them.

Critical points are found by Newton-MR and by gradient-norm minimisation from random starts, and
certified by the probe. The checks: the lowest loss reached equals L*; every end point certified a
local minimum has loss L*; every other certified critical point is a saddle; at least one of each
is found. End points that are not critical, gradient-flat or degenerate are counted and
reported, not failed.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter

import numpy as np
import torch

from landscope.finders import find_critical_points
from landscope.objective import Objective
from landscope.studies import Check, Study, StudyResult, register

SETTINGS = {"small": {"starts": 20, "samples": 40}, "full": {"starts": 200, "samples": 40}}
WIDTHS = (4, 3, 2, 3)
"""Input, two hidden widths, output: the hidden width 2 is a bottleneck below the output's 3."""
START_SCALE = 2.0
"""Standard deviation of each entry of a random start."""
FINDERS = {"newton_mr": {"max_iter": 20, "minres_maxiter": 48},
           "gradient_norm": {"max_iter": 50}}
"""Both finders from every start: Newton-MR reaches the minima, gradient-norm minimisation more
of the saddles; the iteration caps keep a run short, and what they cut off is not critical."""
RTOL = 1e-6
"""How close to L* a loss must be, relative to L*."""


def regression(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """X ~ N(0, 1) of shape (d_in, n) and Y = AX + noise, A and the noise Gaussian, in float64."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((WIDTHS[0], samples))
    Y = rng.standard_normal((WIDTHS[-1], WIDTHS[0])) @ X + 0.5 * rng.standard_normal(
        (WIDTHS[-1], samples))
    return torch.from_numpy(X), torch.from_numpy(Y)


def shapes() -> list[tuple[int, int]]:
    """(rows, columns) of W₁, W₂, W₃: layer l maps width l to width l + 1."""
    return [(out, into) for into, out in zip(WIDTHS[:-1], WIDTHS[1:], strict=True)]


def product(theta: torch.Tensor) -> torch.Tensor:
    """W₃W₂W₁ from the flat parameter vector θ = (vec W₁, vec W₂, vec W₃)."""
    W, at = None, 0
    for rows, columns in shapes():
        layer = theta[at:at + rows * columns].reshape(rows, columns)
        W = layer if W is None else layer @ W
        at += rows * columns
    return W


def squared_loss(X: torch.Tensor, Y: torch.Tensor):
    """L(θ) = ½‖W₃W₂W₁X − Y‖²/n."""
    def loss(theta):
        return 0.5 * ((product(theta) @ X - Y) ** 2).sum() / X.shape[1]
    return loss


def critical_values(X: torch.Tensor, Y: torch.Tensor) -> tuple[float, list[float]]:
    """(L*, the critical values of the projected products): ½(tr Σ_YY − Σ_{i∈S} λᵢ(M)) over sets
    S of at most k of the eigenvalues of M = Σ_YX Σ_XX⁻¹ Σ_XY, L* taking the top k."""
    n, k = X.shape[1], min(WIDTHS)
    xx, yx, yy = (X @ X.T / n).numpy(), (Y @ X.T / n).numpy(), (Y @ Y.T / n).numpy()
    eigenvalues = np.sort(np.linalg.eigvalsh(yx @ np.linalg.solve(xx, yx.T)))[::-1]
    values = sorted({float(0.5 * (np.trace(yy) - sum(subset))) for size in range(k + 1)
                     for subset in itertools.combinations(eigenvalues, size)})
    return float(0.5 * (np.trace(yy) - eigenvalues[:k].sum())), values


def run(scale: str, seed: int) -> StudyResult:
    settings = SETTINGS[scale]
    started = time.perf_counter()
    X, Y = regression(settings["samples"], seed)
    best, values = critical_values(X, Y)
    n_parameters = sum(rows * columns for rows, columns in shapes())
    generator = torch.Generator().manual_seed(seed)
    starts = START_SCALE * torch.randn(settings["starts"], n_parameters, generator=generator,
                                       dtype=torch.float64)
    obj = Objective.from_function(squared_loss(X, Y), starts[0], name="deep linear")
    points = [{"method": method, "loss": f.run.loss, "index": f.index, "kind": f.kind,
               "stop": f.run.stop, "strict": f.probe.strict}
              for method, options in FINDERS.items()
              for f in find_critical_points(obj, starts, method=method, **options)]
    result = StudyResult("deep-linear", scale, seed,
                         {**settings, "widths": list(WIDTHS), "start_scale": START_SCALE,
                          "loss": squared_loss.__doc__, "rtol": RTOL, "finders": FINDERS},
                         {"points": points, "global_min": best, "critical_values": values})
    result.checks = checks(points, best)
    result.seconds = time.perf_counter() - started
    return result


def checks(points: list[dict], best: float) -> list[Check]:
    """L* the lowest loss reached; local minima at L*; other critical points saddles."""
    kinds = Counter(p["kind"] for p in points)
    lowest = min(p["loss"] for p in points)
    minima = [p["loss"] for p in points if p["kind"] == "local_min"]
    poor = [loss for loss in minima if abs(loss - best) > RTOL * best]
    others = Counter(p["kind"] for p in points if p["kind"] in ("local_max", "saddle"))
    flat_saddles = sum(p["kind"] == "saddle" and p["index"] == 0 for p in points)
    uncertified = ", ".join(f"{kinds[kind]} {kind}" for kind in
                            ("degenerate", "gradient_flat", "not_critical") if kinds[kind])
    return [Check("the lowest loss reached is the closed-form L*",
                  f"{lowest:.10g} ({lowest / best - 1:+.1e})", f"{best:.10g} ± {RTOL:g} rel",
                  bool(abs(lowest - best) <= RTOL * best)),
            Check("every local minimum is global",
                  f"{len(minima) - len(poor)} of {len(minima)} local minima at L*",
                  "all", not poor),
            Check("every other critical point is a saddle",
                  f"{others['saddle']} saddles ({flat_saddles} without a negative eigenvalue "
                  f"beyond 1 % of ρ), {others['local_max']} maxima; not counted: "
                  f"{uncertified or 'none'}", "no maxima", others["local_max"] == 0),
            Check("a global minimum and a saddle are found",
                  f"{len(minima)} minima, {others['saddle']} saddles", "≥ 1 each",
                  bool(minima) and others["saddle"] > 0)]


def draw_figure(result: StudyResult):
    """Index against loss of every certified critical point, L* and the other critical values
    of the closed form marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for value in result.figures["critical_values"]:
        ax.axvline(value, color="0.85", linewidth=0.8, zorder=0)
    ax.axvline(result.figures["global_min"], color="k", linestyle="--", linewidth=1,
               label=f"L* = {result.figures['global_min']:.4g} (closed form)")
    for kind, marker in (("local_min", "o"), ("saddle", "^"), ("local_max", "v"),
                         ("degenerate", "s")):
        chosen = [p for p in result.figures["points"] if p["kind"] == kind]
        if chosen:
            ax.scatter([p["loss"] for p in chosen], [p["index"] for p in chosen], marker=marker,
                       alpha=0.6, label=f"{kind} ({len(chosen)})")
    ax.set_xlabel("loss at the critical point (grey: losses of the projected products)")
    ax.set_ylabel("index (fraction of negative eigenvalues)")
    ax.legend(fontsize=8)
    ax.set_title(f"deep linear network {'-'.join(map(str, WIDTHS))}: Newton-MR and gradient-norm "
                 f"minimisation\nfrom {result.settings['starts']} random starts, each end point "
                 "certified by probe", fontsize=9)
    fig.tight_layout()
    return fig


register(Study("deep-linear", "deep linear networks: every local minimum is global, every other "
               "critical point a saddle (Kawaguchi 2016)", run, draw_figure))
