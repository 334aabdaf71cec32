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
The rules live by what they diagnose: the learning rate (``rate``), where the loss curve stopped
or turned (``curve``), the network's gradients and activations (``network``); ``run`` holds the
record as they read it (:class:`Run`) and their :class:`Thresholds`. :data:`RULES` is their
order, which the ranking's ties keep.
"""

from __future__ import annotations

from landscope.doctor.findings import Finding
from landscope.doctor.rules.curve import narrow_valley, overfitting, poor_minimum, saddle
from landscope.doctor.rules.network import (
    dead_relus,
    exploding_gradients,
    saturation,
    symmetric_init,
    vanishing_gradients,
)
from landscope.doctor.rules.rate import RAISE_TO, lr_too_large, lr_too_small
from landscope.doctor.rules.run import CurvatureNumbers, Run, Thresholds

__all__ = ["RAISE_TO", "RULES", "CurvatureNumbers", "Run", "Thresholds", "run_rules"]

RULES = (exploding_gradients, lr_too_large, symmetric_init, vanishing_gradients, saturation,
         dead_relus, narrow_valley, saddle, poor_minimum, lr_too_small, overfitting)


def run_rules(run: Run) -> list[Finding]:
    """Every rule over the run; the findings that hold, unranked."""
    return [f for rule in RULES if (f := rule(run)) is not None]
