"""The Hessian at the end of training: a bulk near zero and about as many outliers as classes.

Sagun, Bottou & LeCun 2016 ("Eigenvalues of the Hessian in deep learning") and Sagun, Evci,
Güney, Dauphin & Bottou 2017 ("Empirical analysis of the Hessian of over-parametrized neural
networks"): at the end of training the spectrum of ∇²L is a bulk concentrated at zero, whose share
grows with the parameters, and a few outliers set by the data, about one per class; training
stops at a small but non-zero gradient, with negative eigenvalues left in the bulk.

Here: C Gaussian classes in R^d (means N(0, s²/2d · I), so two means lie about s apart, noise
N(0, I): the classes overlap and the loss has a non-zero floor), a ReLU MLP d-h-C, mean
cross-entropy, mini-batch SGD at a constant rate η, decayed linearly over the last ``DECAY`` of
the epochs (to η/(DECAY·epochs) in the last), all in float64; then the dense Hessian of the
full-data loss and every eigenvalue (numpy ``eigh``).

The outliers are counted by a gap rule: with λ₁ ≥ λ₂ ≥ … the eigenvalues, the bulk's edge is
where the ratio λ_k/λ_{k+1} of neighbours is largest among k ≤ ``MAX_OUTLIERS`` (λ_{k+1} above
round-off, ``ROUND_OFF``·λ₁); those k are outliers if that ratio is at least ``MIN_GAP``, else
there are none. A continuous bulk has neighbour ratios near 1 (≤ 1.1 at its edge here); a
separated group leaves a multiplicative gap. The rule does not know C, so it can count anything
from 0 to ``MAX_OUTLIERS``.

The checks: the outlier count is within C − 1 … C + 1; a share ≥ ``BULK_SHARE`` of the
eigenvalues has |λ| < ``EPSILON``·λ_max; the loss has levelled off (the last fifth of the epochs
made < ``PLATEAU`` of its total fall); the final full-batch gradient is below ``SMALL_GRADIENT``
times the largest one seen in training, and above ``ZERO_GRADIENT`` (not a critical point); there
are negative eigenvalues beyond round-off (< −10⁻⁶·λ_max), all inside the bulk (|λ_min| <
``EPSILON``·λ_max).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from landscope import default
from landscope.objective import Objective
from landscope.studies import Check, Study, StudyResult, register

SETTINGS = {"small": {"classes": 6, "dim": 20, "hidden": 60, "samples": 2000, "epochs": 100},
            "full": {"classes": 10, "dim": 20, "hidden": 200, "samples": 4000, "epochs": 100}}
SEPARATION = 3.0
"""Typical distance between two class means, in units of the noise's standard deviation."""
LEARNING_RATE = 0.1
BATCH = 32
DECAY = 0.4
"""Share of the epochs over which the learning rate falls linearly to 0."""
DENSE_MAX_N = 8192
"""The study's own dense bound: its full scale has 6,210 parameters (294 MiB in float64), above
the Objective's DENSE_LIMIT, and a larger setting should be refused rather than allocate n²."""
MAX_OUTLIERS = 50
"""Largest outlier count the gap rule considers."""
MIN_GAP = 1.5
"""Smallest neighbour ratio λ_k/λ_{k+1} that separates outliers from the bulk."""
EPSILON = 0.03
"""The bulk's half-width, relative to λ_max."""
BULK_SHARE = 0.90
"""Share of the eigenvalues that must lie within ±EPSILON·λ_max."""
PLATEAU = 0.05
"""Largest share of the loss's total fall that the last fifth of the epochs may make."""
SMALL_GRADIENT = 0.1
"""The final gradient norm must be below this times the largest seen in training."""
ZERO_GRADIENT = 1e-6
"""... and above this (a critical point found in float64 reaches 1e-10 or less)."""
ROUND_OFF = 1e-6
"""Eigenvalues below −ROUND_OFF·λ_max count as negative (eigh's error is ~1e-13·λ_max)."""


def mixture(classes: int, dim: int, samples: int, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, y): ``samples`` points, label y uniform over ``classes``, x = μ_y + N(0, I) in float64,
    the means μ_c ~ N(0, SEPARATION²/2d · I)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim)) * SEPARATION / np.sqrt(2 * dim)
    y = rng.integers(0, classes, samples)
    X = means[y] + rng.standard_normal((samples, dim))
    return torch.from_numpy(X), torch.from_numpy(y)


def full_batch(net: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(L, ‖∇L‖) of the mean cross-entropy over all of (X, y)."""
    loss = torch.nn.functional.cross_entropy(net(X), y)
    gradient = torch.autograd.grad(loss, list(net.parameters()))
    return float(loss.detach()), float(torch.cat([g.reshape(-1) for g in gradient]).norm())


def train(net: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int
          ) -> dict:
    """Mini-batch SGD on ``net`` in place (rate LEARNING_RATE, decayed linearly over the last
    DECAY of the epochs); the full-batch loss and gradient norm before and after each epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
    history = {"loss": [], "gradient_norm": []}

    def record():
        loss, norm = full_batch(net, X, y)
        history["loss"].append(loss)
        history["gradient_norm"].append(norm)

    record()
    for epoch in range(epochs):
        optimiser.param_groups[0]["lr"] = LEARNING_RATE * min(1.0, (epochs - epoch)
                                                              / (DECAY * epochs))
        for batch in torch.randperm(len(y), generator=generator).split(BATCH):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(X[batch]), y[batch]).backward()
            optimiser.step()
        record()
    return history


def eigenvalues(net: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Every eigenvalue of the full-data Hessian at ``net``'s parameters, descending."""
    obj = Objective.from_model(net, torch.nn.functional.cross_entropy, (X, y),
                               engine="chain")  # not chosen by timing: the same sums every run
    return np.linalg.eigvalsh(obj.hessian(max_n=DENSE_MAX_N).numpy())[::-1].copy()


def outliers(values: np.ndarray) -> tuple[int, float]:
    """(k, gap): the outlier count by the gap rule of the module docstring and the neighbour
    ratio λ_k/λ_{k+1} at the bulk's edge (the largest ratio seen when k = 0)."""
    top = np.sort(values)[::-1][:MAX_OUTLIERS + 1]
    above = top > ROUND_OFF * top[0]
    positive = int(np.argmax(~above)) if not above.all() else len(top)
    if positive < 2:
        return 0, 1.0
    ratios = top[:positive - 1] / top[1:positive]
    k = int(np.argmax(ratios))
    return (k + 1 if ratios[k] >= MIN_GAP else 0), float(ratios[k])


def run(scale: str, seed: int) -> StudyResult:
    settings = SETTINGS[scale]
    started = time.perf_counter()
    X, y = mixture(settings["classes"], settings["dim"], settings["samples"], seed)
    with torch.random.fork_rng():  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        net = default.mlp((settings["dim"], settings["hidden"], settings["classes"]),
                          torch.nn.ReLU).double()
    history = train(net, X, y, settings["epochs"], seed)
    values = eigenvalues(net, X, y)
    count, gap = outliers(values)
    figures = {"eigenvalues": values.tolist(), "outliers": count, "gap": gap,
               "classes": settings["classes"], **history}
    result = StudyResult("bulk", scale, seed,
                         {**settings, "parameters": len(values), "separation": SEPARATION,
                          "learning_rate": LEARNING_RATE, "batch": BATCH, "decay": DECAY,
                          "max_outliers": MAX_OUTLIERS, "min_gap": MIN_GAP, "epsilon": EPSILON,
                          "bulk_share": BULK_SHARE, "plateau": PLATEAU,
                          "small_gradient": SMALL_GRADIENT, "zero_gradient": ZERO_GRADIENT},
                         figures)
    result.checks = checks(values, settings["classes"], history["loss"],
                           history["gradient_norm"])
    result.seconds = time.perf_counter() - started
    return result


def checks(values: np.ndarray, classes: int, losses: list[float],
           gradient_norms: list[float]) -> list[Check]:
    """Outliers ≈ classes; the bulk within ±EPSILON·λ_max; the loss levelled off at a small,
    non-zero gradient; negative eigenvalues left, inside the bulk."""
    values = np.asarray(values)
    largest, smallest = float(values.max()), float(values.min())
    count, gap = outliers(values)
    near_zero = float(np.mean(np.abs(values) < EPSILON * largest))
    fifth = len(losses) - 1 - (len(losses) - 1) // 5
    late_fall = (losses[fifth] - losses[-1]) / (losses[0] - losses[-1])
    last, peak = gradient_norms[-1], max(gradient_norms)
    negative = int(np.sum(values < -ROUND_OFF * largest))
    return [Check("outliers above the bulk ≈ the number of classes C",
                  f"{count} (edge gap λ_k/λ_k+1 = {gap:.2f}; C = {classes})",
                  f"{classes - 1} … {classes + 1}", classes - 1 <= count <= classes + 1),
            Check(f"the bulk is near zero: |λ| < {EPSILON:g}·λ_max",
                  f"{near_zero:.1%} of {len(values)} "
                  f"({np.mean(np.abs(values) < 0.01 * largest):.1%} within 0.01·λ_max)",
                  f"≥ {BULK_SHARE:.0%}", near_zero >= BULK_SHARE),
            Check("the loss has levelled off",
                  f"last fifth of the epochs: {late_fall:.1%} of the fall, "
                  f"L = {losses[-1]:.4g}", f"< {PLATEAU:.0%}", late_fall < PLATEAU),
            Check("training stops at a small but non-zero gradient",
                  f"‖∇L‖ = {last:.3g} = {last / peak:.2g} × the largest in training",
                  f"< {SMALL_GRADIENT:g} ×, > {ZERO_GRADIENT:g}",
                  ZERO_GRADIENT < last < SMALL_GRADIENT * peak),
            Check("negative eigenvalues are left, small (inside the bulk)",
                  f"{negative} below −{ROUND_OFF:g}·λ_max; λ_min = {smallest:.3g} = "
                  f"{smallest / largest:.2g}·λ_max",
                  f"> 0, |λ_min| < {EPSILON:g}·λ_max",
                  bool(negative > 0 and abs(smallest) < EPSILON * largest))]


def draw_figure(result: StudyResult):
    """Left: histogram of the eigenvalues (log counts), outliers in red and numbered, the bulk's
    ±EPSILON·λ_max band shaded. Right: full-batch loss and gradient norm per epoch."""
    import matplotlib.pyplot as plt

    figures = result.figures
    values = np.array(figures["eigenvalues"])
    count = figures["outliers"]
    fig, (spectrum, training) = plt.subplots(1, 2, figsize=(11, 4.4),
                                             gridspec_kw={"width_ratios": [1.7, 1]})
    bins = np.linspace(values.min(), values.max(), 120)
    spectrum.hist(values[count:], bins=bins, color="tab:blue", label="bulk")
    if count:
        spectrum.hist(values[:count], bins=bins, color="tab:red",
                      label=f"{count} outliers (C = {figures['classes']})")
        for rank, value in enumerate(values[:count], 1):
            spectrum.annotate(f"λ{rank}", (value, 1), xytext=(0, 4 + 9 * (rank % 3)),
                              textcoords="offset points", ha="center", fontsize=7,
                              color="tab:red")
    band = result.settings["epsilon"] * values.max()
    spectrum.axvspan(-band, band, color="0.85", zorder=0,
                     label=f"|λ| < {result.settings['epsilon']:g}·λ_max")
    spectrum.set_yscale("log")
    spectrum.set_xlabel("eigenvalue of the Hessian at the end of training")
    spectrum.set_ylabel("count")
    spectrum.legend(fontsize=8)
    spectrum.set_title(f"{result.settings['parameters']} parameters · ReLU MLP "
                       f"{result.settings['dim']}-{result.settings['hidden']}-"
                       f"{figures['classes']} · {result.settings['samples']} samples, "
                       f"{figures['classes']} Gaussian classes", fontsize=9)
    epochs = np.arange(len(figures["loss"]))
    training.semilogy(epochs, figures["loss"], color="k", label="loss L")
    training.semilogy(epochs, figures["gradient_norm"], color="tab:orange", label="‖∇L‖")
    training.set_xlabel("epoch of SGD (full-batch values)")
    training.legend(fontsize=8)
    training.set_title(f"SGD, rate {result.settings['learning_rate']:g}, decayed linearly\nover "
                       f"the last {result.settings['decay']:.0%} of the epochs", fontsize=9)
    fig.tight_layout()
    return fig


register(Study("bulk", "the Hessian at the end of training: a bulk near zero plus about one "
               "outlier per class, a small non-zero gradient and negative eigenvalues left "
               "(Sagun et al. 2016, 2017)", run, draw_figure))
