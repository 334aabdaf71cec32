"""The anytime probe's budget: the cost plan, the stages it schedules, and the clock that keeps
the time budget from measured product costs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from landscope.objective import Objective
from landscope.plan import PRODUCT_PER_GRADIENT, CostPlan, estimate, scaled
from landscope.progress import Progress

STAGES = ("subsample", "extremes", "density")
SUBSETS = 5
"""Independent subsets of the first stage (Student t with 4 degrees of freedom: 2.78)."""
SUBSET_PLANNED = 30
"""Products per subset the plan expects (at SUBSET_EIG_RTOL most subsets need 15-30)."""
FIRST_STAGE_SHARE = 0.25
"""Share of a time budget the first stage may spend; the rest goes to the full data."""
MAX_SAMPLES = 512
"""Default samples per subset when no budget chooses them."""
MIN_SAMPLES = 8
"""Fewest samples per subset a budget may choose."""
CALIBRATION_SAMPLES = 64
"""Samples of the smaller of the two gradients the cost plan times (the larger: four times as
many)."""
EXTREME_PRODUCTS, EXTREME_PRODUCTS_PER_PAIR = 40, 20
"""Planning figure for the second stage: 40 + 20·k products (both ends, k pairs each)."""


class OutOfTime(Exception):
    """The budget ran out inside a solver (raised from its progress callback)."""


class Clock:
    """The time budget, the measured cost of a product per data size, and the progress feed:
    ``progress(done, total, note)``, products done of those the stage planned, the note naming the
    stage and its ETA ("stage 2/3 extremes · ETA 12 s")."""

    def __init__(self, budget: float | None, progress: Progress | None,
                 agree: Callable[[float], float] = float):
        self.start = time.perf_counter()
        self.agree = agree  # every rank reads the slowest rank's clock, so all decide alike
        self.budget = math.inf if budget is None else budget
        self.progress = progress
        self.costs: dict[int, float] = {}
        self.plan: CostPlan | None = None
        self.stage, self.stage_index = "", 0
        self.planned = self.done = self.samples = 0

    @property
    def elapsed(self) -> float:
        return self.agree(time.perf_counter() - self.start)

    @property
    def left(self) -> float:
        return self.budget - self.elapsed

    def product_seconds(self, samples: int) -> float | None:
        """Seconds of one product over ``samples`` samples: measured at that size, else the
        lesser of the plan's (fixed + per-sample) figure and the cheapest measured cost per
        sample times ``samples`` (None before anything is known). Erring low tries a stage
        rather than skipping it; the stage is then capped by its own measured cost."""
        if samples in self.costs:
            return self.costs[samples]
        guesses = [samples * min(t / s for s, t in self.costs.items())] if self.costs else []
        if self.plan is not None:
            guesses.append(self.plan.product_time(samples))
        return min(guesses, default=None)

    def products_within(self, seconds: float, samples: int) -> int | None:
        """Products over ``samples`` samples that fit in ``seconds`` (None: unlimited)."""
        one = self.product_seconds(samples)
        if math.isinf(seconds) or one is None:
            return None
        return max(0, int(seconds / one)) if one > 0 else None

    def learn(self, products: float, seconds: float, samples: int) -> None:
        """Record the cost of a product over ``samples`` samples from ``products`` done in
        ``seconds``."""
        seconds = self.agree(seconds)
        if products > 0 and seconds > 0:
            self.costs[samples] = seconds / products

    def begin(self, name: str, planned: int, samples: int) -> None:
        self.stage, self.planned, self.done, self.samples = name, planned, 0, samples
        self.stage_index = STAGES.index(name) + 1
        self._report()

    def callback(self, offset: int = 0) -> Progress:
        """The progress callback for a solver inside the stage: its products, after ``offset``
        done before it, count towards the stage's plan (its own total and note are not shown)."""
        def report(done: int, total: int | None = None, note: str = "") -> None:
            self.done = offset + done
            self._report()
            if self.left < -0.1 * self.budget:
                raise OutOfTime
        return report

    def _report(self) -> None:
        if self.progress is not None:
            eta = self.eta()
            note = f"stage {self.stage_index}/{len(STAGES)} {self.stage}" + (
                "" if eta is None else f" · ETA {eta:.0f} s")
            self.progress(self.done, max(self.planned, self.done), note)

    def eta(self) -> float | None:
        """Seconds left in the stage at the measured cost of a product (None: not known)."""
        one = self.product_seconds(self.samples)
        if one is None or self.planned <= self.done:
            return None
        return one * (self.planned - self.done)


def cost_plan(obj: Objective, theta: torch.Tensor | None = None) -> CostPlan:
    """The cost plan from gradients timed on :data:`CALIBRATION_SAMPLES` samples and on four
    times as many (subsets: the plan must be cheap next to the work it plans), which separates
    a product's fixed cost from its cost per sample (:func:`landscope.plan.scaled`)."""
    total = sample_count(obj)
    if obj.model_loss is None or total <= CALIBRATION_SAMPLES or \
            obj.model_loss.mode != "eval" or obj.ranks > 1:
        return _warm_estimate(obj, theta)
    small = _warm_estimate(obj.subset(torch.arange(CALIBRATION_SAMPLES)), theta)
    large_size = min(total, 4 * CALIBRATION_SAMPLES)
    return scaled(small, _warm_estimate(obj.subset(torch.arange(large_size)), theta))


def _warm_estimate(obj: Objective, theta) -> CostPlan:
    estimate(obj, theta)          # a first pass pays for allocations and warm-up: not timed
    return estimate(obj, theta)   # (the cached point is moved by one ulp, so this one computes)


@dataclass(frozen=True)
class StagePlan:
    """What a stage will read and its estimated products and seconds."""

    name: str
    data: str
    samples: int
    products: int
    seconds: float

    def to_dict(self) -> dict:
        return {"name": self.name, "data": self.data, "samples": self.samples,
                "products": self.products, "seconds": self.seconds}


def schedule(obj: Objective, plan: CostPlan, *, samples: int | None, subsets: int, k: int,
             probes: int, lanczos_steps: int, density: bool, time_budget: float | None
             ) -> list[StagePlan]:
    """The stages and their estimated cost; without ``samples`` the subset size is the largest
    (up to :data:`MAX_SAMPLES` and the data) whose stage takes at most a quarter of the budget.
    No subsample stage for a function, for data too small to split, in train mode with
    fewer batches than subsets (train mode draws whole batches), or for data split over
    several ranks (all the data is affordable there: the ranks were started for it)."""
    out = []
    total = sample_count(obj)
    first = subsets * (SUBSET_PLANNED + 2 * (subsets - 1))
    loss = obj.model_loss
    if loss is not None and total >= 2 * subsets and obj.ranks == 1 and (
            loss.mode == "eval" or len(loss.batches.sizes) >= subsets):
        if samples is None:
            samples = min(MAX_SAMPLES, total // subsets)
            if time_budget is not None:
                share = FIRST_STAGE_SHARE * time_budget / first - plan.fixed_product_seconds
                fit = share / plan.seconds_per_sample_product if share > 0 else 0
                samples = max(MIN_SAMPLES, min(samples, int(fit)))
        out.append(StagePlan("subsample", f"{subsets} subsets of {samples:,} of {total:,} "
                             "samples", samples, first, plan.product_time(samples, first)))
    full = max(total, 1)
    where = f"all {full:,} samples" if total > 1 else "the function"
    extremes = EXTREME_PRODUCTS + EXTREME_PRODUCTS_PER_PAIR * k
    out.append(StagePlan("extremes", where, full, extremes, plan.product_time(full, extremes)))
    if density:
        last = probes * lanczos_steps + 2 * k
        out.append(StagePlan("density", where, full, last, plan.product_time(full, last)))
    return out


def basis_size(plan: CostPlan, wanted: int, samples: int, dense: bool) -> int | None:
    """The Lanczos basis for the full data: the solver's default (None), or the largest that
    fits in the free memory; below wanted + 2 vectors (or a dense Hessian that does not fit)
    the plan refuses, naming the fix."""
    if dense:
        plan.check(samples=samples, dense=True)
        return None
    default = max(40, 3 * wanted + 20)   # the default of landscope.linalg.extreme_eigenpairs
    if plan.available_bytes is None or plan.fits(default, samples=samples):
        return None                      # the solver's own choice
    room = plan.available_bytes - plan.peak_bytes(0, samples) + plan.parameter_bytes
    largest = int(room // plan.parameter_bytes - 1) // 2   # 2m + 1 vectors for a basis of m
    plan.check(max(wanted + 2, min(largest, default)), samples=samples)
    return max(wanted + 2, min(largest, default))


def pairs_that_fit(obj, theta, clock: Clock, samples: int, dense: bool, k: int) -> int:
    """Eigenpairs per end the full-data stage can afford in the time left: k when its planned
    products fit, else 1 (one pair per end converges in far fewer products), or 0 when not even
    that does or the full-data gradient alone would not fit. Times that gradient, which the
    stage needs anyway (it stays cached): a product costs PRODUCT_PER_GRADIENT of it."""
    guess = clock.product_seconds(samples)
    if guess is not None and guess / PRODUCT_PER_GRADIENT > clock.left:
        return 0
    gradients, start = obj.counts["gradients"], time.perf_counter()
    obj.value_and_grad(theta)
    seconds = obj.agree(time.perf_counter() - start)
    if obj.counts["gradients"] > gradients:
        clock.costs[samples] = PRODUCT_PER_GRADIENT * seconds
    budget = clock.products_within(clock.left, samples)
    if budget is None:
        return k
    if dense:
        return k if budget >= obj.n else 0
    planned = EXTREME_PRODUCTS + EXTREME_PRODUCTS_PER_PAIR * k
    return k if budget >= planned else 1 if budget >= 8 else 0


def sample_count(obj: Objective) -> int:
    """Samples in the Objective's data (1 for an analytic function; every rank's shard)."""
    return obj.sample_count()
