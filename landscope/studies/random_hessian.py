"""How often is a random symmetric matrix positive definite?

The coin-flip argument says each of n eigenvalues is positive with probability ½, independently,
so P(minimum) = 0.5ⁿ. Eigenvalues of a Gaussian matrix repel, and their signs are not
independent: for the GOE (A = (G + Gᵀ)/2, G with i.i.d. standard normal entries)
P(all λ > 0) ~ exp(−θn²) with θ = ln 3 / 4 (Dean & Majumdar 2006), far below 0.5ⁿ. A second
ensemble, Q diag(s·|g|) Qᵀ with Q Haar-orthogonal and independent signs s = ±1, is exactly the
argument's assumption and does follow 0.5ⁿ.

Closed forms checked: n = 1, P = ½; GOE at n = 2, P = ½ − 1/(2√2) (the eigenvalues are
(s ± r)/√2 with s ~ N(0, 1) and r Rayleigh, independent; P(s > r) = ∫ r e^{−r²/2} Φ̄(r) dr,
integrated by parts, is ½ − ∫₀^∞ φ(r) e^{−r²/2} dr = ½ − 1/(2√2)).
"""

from __future__ import annotations

import math
import time
from statistics import NormalDist

import numpy as np

from landscope.studies import Check, Study, StudyResult, register, wilson

SETTINGS = {"small": {"n_max": 6, "trials": 200_000},
            "full": {"n_max": 8, "trials": 2_000_000}}
CHUNK = 100_000
"""Matrices drawn and diagonalised at once (memory: CHUNK·n² numbers)."""
GOE_RATE = math.log(3) / 4
"""θ of the GOE's large deviation P(all λ > 0) ~ exp(−θn²) (Dean & Majumdar 2006)."""
GOE_N2 = 0.5 - 1 / (2 * math.sqrt(2))
"""P(a 2×2 GOE matrix is positive definite), derived in the module docstring."""
ENSEMBLES = ("goe", "independent_signs")


def draw(ensemble: str, n: int, matrices: int, rng: np.random.Generator) -> np.ndarray:
    """``matrices`` random symmetric n×n matrices of ``ensemble``, shape (matrices, n, n)."""
    G = rng.standard_normal((matrices, n, n))
    if ensemble == "goe":
        return (G + G.transpose(0, 2, 1)) / 2
    Q, R = np.linalg.qr(G)
    Q = Q * np.sign(np.diagonal(R, axis1=1, axis2=2))[:, None, :]  # Haar: fix the QR signs
    values = rng.choice([-1.0, 1.0], size=(matrices, n)) * np.abs(
        rng.standard_normal((matrices, n)))
    return (Q * values[:, None, :]) @ Q.transpose(0, 2, 1)


def positive_definite_count(ensemble: str, n: int, trials: int,
                            rng: np.random.Generator) -> int:
    """How many of ``trials`` matrices drawn from ``ensemble`` have all eigenvalues > 0."""
    count = 0
    for start in range(0, trials, CHUNK):
        matrices = draw(ensemble, n, min(CHUNK, trials - start), rng)
        count += int((np.linalg.eigvalsh(matrices)[:, 0] > 0).sum())
    return count


def run(scale: str, seed: int) -> StudyResult:
    settings = SETTINGS[scale]
    n_max, trials = settings["n_max"], settings["trials"]
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    sizes = list(range(1, n_max + 1))
    figures = {"n": sizes, "coin_flip": [0.5**n for n in sizes],
               "goe_large_deviation": [math.exp(-GOE_RATE * n * n) for n in sizes]}
    for ensemble in ENSEMBLES:
        counts = [positive_definite_count(ensemble, n, trials, rng) for n in sizes]
        figures[ensemble] = {"count": counts, "fraction": [c / trials for c in counts],
                             "interval": [wilson(c, trials) for c in counts]}
    result = StudyResult("random-hessian", scale, seed, {**settings, "chunk": CHUNK},
                         figures)
    result.checks = checks(figures, trials)
    result.seconds = time.perf_counter() - started
    return result


def checks(figures: dict, trials: int) -> list[Check]:
    """The closed forms at n = 1 and 2, the independent-sign ensemble against 0.5ⁿ at every n
    (Bonferroni: each interval at 1 − 0.05/N, so all N hold together with 95 %), and the GOE
    below 0.5ⁿ from n = 3 on (at n = 2 already 0.146 against 0.25)."""
    goe, signs = figures["goe"], figures["independent_signs"]
    sizes = figures["n"]

    def inside(value, interval):
        return interval[0] <= value <= interval[1]

    def shown(fraction, interval):
        return f"{fraction:.4g} [{interval[0]:.4g}, {interval[1]:.4g}]"

    found = [Check("GOE n=1: P = 1/2", shown(goe["fraction"][0], goe["interval"][0]), "0.5",
                   inside(0.5, goe["interval"][0]))]
    if len(sizes) > 1:
        found.append(Check("GOE n=2: P = 1/2 − 1/(2√2)",
                           shown(goe["fraction"][1], goe["interval"][1]), f"{GOE_N2:.4f}",
                           inside(GOE_N2, goe["interval"][1])))
    z = NormalDist().inv_cdf(1 - 0.05 / (2 * len(sizes)))
    joint = [wilson(count, trials, z) for count in signs["count"]]
    misses = [n for n, interval in zip(sizes, joint, strict=True)
              if not inside(0.5**n, interval)]
    found.append(Check(f"independent signs: P = 0.5ⁿ for n = 1..{sizes[-1]} (joint 95 %)",
                       "all inside" if not misses else f"outside at n = {misses}",
                       "0.5ⁿ inside every interval", not misses))
    above = [n for n, interval in zip(sizes, goe["interval"], strict=True)
             if n >= 3 and interval[1] >= 0.5**n]
    if sizes[-1] >= 3:
        last, high = sizes[-1], goe["interval"][-1][1]
        measured = (f"all below; at n={last}: ≤ {high:.3g} = {high / 0.5**last:.2g} × 0.5ⁿ"
                    if not above else f"not below at n = {above}")
        found.append(Check(f"GOE below 0.5ⁿ for n = 3..{last} (95 % upper bounds)", measured,
                           "upper bound < 0.5ⁿ", not above))
    return found


def draw_figure(result: StudyResult):
    """Fraction positive definite against n (log scale) for both ensembles, with 0.5ⁿ and the
    GOE's large-deviation rate exp(−n² ln3/4)."""
    import matplotlib.pyplot as plt

    figures = result.figures
    sizes = np.array(figures["n"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for ensemble, label, style in (("independent_signs", "Q diag(±|g|) Qᵀ, independent signs",
                                    dict(fmt="s", color="tab:blue")),
                                   ("goe", "GOE", dict(fmt="o-", color="tab:red"))):
        data = figures[ensemble]
        seen = np.array(data["count"]) > 0
        fraction = np.array(data["fraction"])
        interval = np.array(data["interval"])
        ax.errorbar(sizes[seen], fraction[seen],
                    yerr=[fraction[seen] - interval[seen, 0], interval[seen, 1] - fraction[seen]],
                    capsize=3, label=label, **style)
        if (~seen).any():  # none seen: the 95 % upper bound
            ax.plot(sizes[~seen], interval[~seen, 1], "v", color=style["color"],
                    label=f"{label}: none in {result.settings['trials']:,} (upper bound)")
    ax.semilogy(sizes, figures["coin_flip"], "k--", zorder=3,
                label="0.5ⁿ (independent coin flips)")
    ax.semilogy(sizes, figures["goe_large_deviation"], "k:",
                label="exp(−n² ln3/4): the GOE's leading rate, no prefactor")
    ax.set_xlabel("n (matrix size)")
    ax.set_ylabel("fraction positive definite")
    ax.set_title(f"random symmetric matrices · {result.settings['trials']:,} per n · "
                 "95 % Wilson intervals", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


register(Study("random-hessian", "fraction of random symmetric n×n matrices that are positive "
               "definite: GOE against 0.5ⁿ (Dean & Majumdar 2006)", run, draw_figure))
