"""Gradient descent at the edge of stability (Cohen et al. 2021, Fig. 1).

Full-batch GD θ ← θ − η∇L(θ) is stable on a quadratic only while the sharpness λ_max(∇²L) < 2/η.
On a neural network the sharpness first rises (progressive sharpening), reaches 2/η and then
hovers there while the loss keeps falling, non-monotonically. Here: a tanh MLP 64-32-32-10 on
the digits, L = ½‖f(x) − onehot(y)‖² averaged over samples (the paper's squared loss), λ_max by
Lanczos warm-started from the previous measurement every ``every`` steps.

The check: the median sharpness over the last third of the steps lies within ±10 % of 2/η, and
the first measurement lies below 0.6 · 2/η (it had to rise).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from landscope import default
from landscope.objective import Objective
from landscope.spectrum import spectrum
from landscope.studies import Check, Study, StudyResult, register

SETTINGS = {"small": {"samples": 1000, "steps": 1500, "every": 10, "learning_rates": [0.3]},
            "full": {"samples": 1797, "steps": 4000, "every": 10,
                     "learning_rates": [0.25, 0.35]}}
SIZES = (64, 32, 32, 10)
TOLERANCE = 0.10
"""How close to 2/η the late median sharpness must be, relative to 2/η."""
START_BELOW = 0.6
"""How far below 2/η the first sharpness must be, as a fraction of 2/η."""
LANCZOS_EIG_RTOL = 1e-3
"""Relative residual of each λ_max: far below the ±10 % the check allows."""


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½‖f(x) − onehot(y)‖² averaged over the samples."""
    onehot = torch.nn.functional.one_hot(target, output.shape[1]).to(output.dtype)
    return 0.5 * ((output - onehot) ** 2).sum(1).mean()


def descend(obj: Objective, lr: float, steps: int, every: int) -> dict:
    """Full-batch GD from θ₀: the loss at every step and λ_max every ``every`` steps."""
    theta, warm = obj.theta0.clone(), None
    losses, measured, sharpness = [], [], []
    for step in range(steps + 1):
        loss, gradient = obj.value_and_grad(theta)
        losses.append(float(loss))
        if step % every == 0:
            warm = spectrum(obj, k=1, which="largest", theta=theta, warm=warm, exact=False,
                            eig_rtol=LANCZOS_EIG_RTOL)
            measured.append(step)
            sharpness.append(float(warm.largest.values[0]))
        theta = theta - lr * gradient
    return {"lr": lr, "limit": 2 / lr, "loss": losses, "sharpness_steps": measured,
            "sharpness": sharpness}


def run(scale: str, seed: int) -> StudyResult:
    settings = SETTINGS[scale]
    started = time.perf_counter()
    X, y = default.digits()
    X, y = X[:settings["samples"]], y[:settings["samples"]]
    with torch.random.fork_rng():  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        net = default.mlp(SIZES)
    obj = Objective.from_model(net, squared_error, (X, y))
    runs = [descend(obj, lr, settings["steps"], settings["every"])
            for lr in settings["learning_rates"]]
    result = StudyResult("edge-of-stability", scale, seed,
                         {**settings, "sizes": list(SIZES), "loss": squared_error.__doc__,
                          "tolerance": TOLERANCE, "start_below": START_BELOW}, {"runs": runs})
    result.checks = [check for r in runs for check in checks(r, settings["steps"])]
    result.seconds = time.perf_counter() - started
    return result


def checks(descent: dict, steps: int) -> list[Check]:
    """The late median sharpness within ±TOLERANCE of 2/η; the first below START_BELOW · 2/η."""
    limit = descent["limit"]
    measured = np.array(descent["sharpness_steps"])
    late = np.median(np.array(descent["sharpness"])[measured >= 2 * steps / 3])
    first = descent["sharpness"][0]
    return [Check(f"η={descent['lr']:g}: median λ_max over the last third ≈ 2/η",
                  f"{late:.4g} ({late / limit - 1:+.1%})",
                  f"{limit:.3g} ± {TOLERANCE:.0%}", bool(abs(late / limit - 1) <= TOLERANCE)),
            Check(f"η={descent['lr']:g}: λ_max at the start well below 2/η",
                  f"{first:.3g} ({first / limit:.0%} of 2/η)",
                  f"< {START_BELOW:.0%} of 2/η", first < START_BELOW * limit)]


def draw_figure(result: StudyResult):
    """Training loss (log) and sharpness against the step, 2/η dashed, one colour per η."""
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.0), sharex=True)
    for descent, colour in zip(result.figures["runs"], plt.rcParams["axes.prop_cycle"],
                               strict=False):
        colour = colour["color"]
        top.semilogy(descent["loss"], color=colour, label=f"η = {descent['lr']:g}")
        bottom.plot(descent["sharpness_steps"], descent["sharpness"], color=colour)
        bottom.axhline(descent["limit"], color=colour, linestyle="--",
                       label=f"2/η = {descent['limit']:.3g}")
    top.set_ylabel("training loss")
    top.legend(fontsize=8)
    bottom.set_ylabel("sharpness λ_max")
    bottom.set_xlabel("step of full-batch gradient descent")
    bottom.legend(fontsize=8)
    top.set_title(f"edge of stability · tanh MLP {'-'.join(map(str, SIZES))} · "
                  f"{result.settings['samples']} digits · squared loss", fontsize=9)
    fig.tight_layout()
    return fig


register(Study("edge-of-stability", "full-batch GD: the sharpness rises to 2/η and hovers there "
               "(Cohen et al. 2021, Fig. 1)", run, draw_figure))
