"""The anytime probe: a verdict in seconds that sharpens, on the data sizes users have.

A full probe spends hundreds of Hessian-vector products, each over all the data (a ResNet-20
over 2,000 images: about 30 s a product on two cores). The anytime probe answers in stages,
each a complete, honest answer on what it has read:

1. ``subsample``: K disjoint subsets of m samples. Loss, ‖∇L‖, λ_max and λ_min with 95 %
   intervals for their full-data values (:mod:`landscope.sampling`); a verdict only where the
   intervals settle it, otherwise "undecided at this sample size" with the samples that would.
2. ``extremes``: the k extreme eigenpairs on all the data, warm-started from stage 1's vectors;
   intervals are now the solver's residual bounds.
3. ``density``: today's :func:`landscope.probe` on all the data, reusing stage 2's eigenpairs:
   the sign fractions, the trace, the higher-order test. Its answer is the exact answer.

A time budget is kept by planning each stage from the measured time of a product (a stage that
cannot finish is capped or skipped, and the result says what stayed uncertain); Ctrl-C ends the
current stage and returns the best answer so far, marked partial.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from scipy import stats

from landscope._checks import integer
from landscope.critical import (
    Probe,
    default_rel_tol,
    probe,
    used_coordinates,
)
from landscope.errors import BadInputError
from landscope.objective import Objective
from landscope.plan import PRODUCT_PER_GRADIENT, CostPlan, estimate, scaled
from landscope.sampling import (
    Interval,
    draw_subsets,
    exact_interval,
    intervals,
    read_subsets,
    samples_needed,
)
from landscope.spectrum import EXACT_MAX_N, spectrum

STAGES = ("subsample", "extremes", "density")
SUBSETS = 5
"""Independent subsets of the first stage (Student t with 4 degrees of freedom: 2.78)."""
SUBSET_TOL = 1e-3
"""Residual tolerance of the first stage's eigenpairs (relative to ρ); the residual is added to
the interval. Not looser: the bottom end sits beside the bulk near zero, far below ρ in size, and
at 1e-2 a ResNet's subsets accepted λ_min ≈ −0.01 after 6 products (residual 1.3 < 1e-2·ρ) where
the subset's true λ_min was −15.6, which 1e-3 finds in 16-21 products."""
SUBSET_PRODUCTS = 60
"""Most products per subset in the first stage (both ends together)."""
SUBSET_PLANNED = 30
"""Products per subset the plan expects (at SUBSET_TOL most subsets need 15-30)."""
MIN_SUBSET_PRODUCTS = 8
"""Fewest: under a tight budget the first stage's solves are cut down to this."""
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
UNDECIDED = "undecided"


@dataclass(frozen=True)
class Stage:
    """One completed (or cut) stage: what it read, what it cost, what it concluded."""

    name: str
    data: str
    seconds: float
    products: int
    complete: bool
    verdict: str
    statement: str
    estimates: dict[str, Interval]
    samples_needed: float | None = None
    samples: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "data": self.data, "samples": self.samples,
                "seconds": self.seconds,
                "products": self.products, "complete": self.complete, "verdict": self.verdict,
                "statement": self.statement, "samples_needed": self.samples_needed,
                "estimates": {k: v.to_dict() for k, v in self.estimates.items()}}


@dataclass(frozen=True)
class AnytimeProbe:
    """The best verdict reached, the stages that reached it, and what stayed uncertain.

    verdict: one of :data:`landscope.KINDS` or ``"undecided"``. statement: the verdict in words
    with its confidence. estimates: every estimated quantity (value, 95 % interval, evidence,
    whether subsampled) from the most complete stage. probe: the full-data :class:`Probe` when
    stage 3 ran. partial: the work stopped early (time budget or Ctrl-C).
    """

    verdict: str
    statement: str
    estimates: dict[str, Interval]
    stages: list[Stage]
    uncertain: list[str]
    partial: bool
    probe: Probe | None = field(default=None, repr=False)
    plan: dict = field(default_factory=dict)
    samples_needed: float | None = None

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "statement": self.statement,
                "estimates": {k: v.to_dict() for k, v in self.estimates.items()},
                "stages": [s.to_dict() for s in self.stages], "uncertain": self.uncertain,
                "partial": self.partial, "samples_needed": self.samples_needed,
                "plan": self.plan, "probe": None if self.probe is None else self.probe.to_dict()}


class _OutOfTime(Exception):
    """The budget ran out inside a solver (raised from its progress callback)."""


class _Clock:
    """The time budget, the measured cost of a product per data size, and the progress feed."""

    def __init__(self, budget: float | None, progress: Callable | None,
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

    def callback(self, offset: int = 0) -> Callable[[int, float], None]:
        def report(products: int, _residual: float) -> None:
            self.done = offset + products
            self._report()
            if self.left < -0.1 * self.budget:
                raise _OutOfTime
        return report

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.stage, self.stage_index, len(STAGES), self.done, self.planned,
                          self.elapsed, self.eta())

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
             probes: int, steps: int, density: bool, time_budget: float | None
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
        last = probes * steps + 2 * k
        out.append(StagePlan("density", where, full, last, plan.product_time(full, last)))
    return out


def anytime_probe(
    obj: Objective,
    theta: torch.Tensor | None = None,
    *,
    time_budget: float | None = None,
    samples: int | None = None,
    subsets: int = SUBSETS,
    seed: int = 0,
    k: int = 5,
    probes: int = 8,
    steps: int = 60,
    density: bool = True,
    exact: bool | None = None,
    rel_tol: float | None = None,
    step_rtol: float = 1e-6,
    plan: CostPlan | None = None,
    progress: Callable | None = None,
    on_stage: Callable[[Stage], None] | None = None,
) -> AnytimeProbe:
    """Classify θ in stages, each sharper than the last (see the module's text).

    Parameters
    ----------
    time_budget: seconds for the whole probe (default: none, every stage runs to the end).
    samples: samples per subset in the first stage (default: chosen from the budget, at most
        :data:`MAX_SAMPLES`, and so that the subsets fit in the data). subsets: how many.
    seed: of the subsets and of every random start vector.
    k, probes, steps, exact, rel_tol, step_rtol: as in :func:`landscope.probe` (``exact`` for
        the full-data stages); ``density=False`` stops after stage 2.
    plan: the :func:`cost_plan` (default: made here, from gradients timed on two subset sizes);
        what would not fit in memory is refused before any work, with the fix.
    progress: ``progress(stage, index, stages, products, planned, elapsed, eta)``.
    on_stage: called with each :class:`Stage` as it completes (the CLI prints it).
    """
    if time_budget is not None and not time_budget > 0:
        raise BadInputError(f"time_budget={time_budget}; give a positive number of seconds "
                            "(or None for no budget)")
    for name, count in (("k", k), ("probes", probes), ("steps", steps)):
        integer(name, count)  # before any stage: a bad one would fail only at the last
    theta = obj.point(theta)
    total = sample_count(obj)
    clock = _Clock(time_budget, progress, agree=obj.agree)
    plan = plan or cost_plan(obj, theta)
    clock.plan = plan
    stages_planned = schedule(obj, plan, samples=samples, subsets=subsets, k=k, probes=probes,
                              steps=steps, density=density, time_budget=time_budget)
    dense = obj.n <= EXACT_MAX_N if exact is None else exact
    basis = _basis_size(plan, 2 * k, total, dense)   # refuses what would not fit, with the fix
    rel_tol = default_rel_tol(obj.dtype) if rel_tol is None else rel_tol
    coords, _ = used_coordinates(obj)
    used = theta if coords is None else theta[coords]
    decide = _Decision(used.norm().item(), rel_tol, step_rtol, torch.finfo(obj.dtype).eps,
                       total // subsets)
    stages: list[Stage] = []
    partial, final, warm = False, None, None

    def finish(stage: Stage) -> None:
        stages.append(stage)
        if on_stage is not None:
            on_stage(stage)

    try:
        stage = None
        if stages_planned[0].name == "subsample":
            stage, warm = _subsample_stage(obj, theta, total, stages_planned[0].samples,
                                           subsets, seed, coords, clock, decide)
            finish(stage)
        full_samples = max(total, 1)
        pairs = _pairs_that_fit(obj, theta, clock, full_samples, dense, k)
        while pairs == 0:   # the full data does not fit the time left: larger subsets instead
            stage, warm = _larger_subsets(obj, theta, total, stage, subsets, seed, coords, clock,
                                          decide, warm)
            finish(stage)
            pairs = _pairs_that_fit(obj, theta, clock, full_samples, dense, k)
        budget = clock.products_within(clock.left, full_samples)
        stage, spec = _extremes_stage(obj, theta, pairs, seed, coords, warm, budget, clock,
                                      decide, full_samples, basis, exact)
        finish(stage)
        if density:
            needed = probes * steps + 2 * k
            budget = clock.products_within(clock.left, full_samples)
            if budget is not None and budget < needed:
                raise _OutOfTime
            clock.begin("density", needed, full_samples)
            start = time.perf_counter()
            before = obj.counts["hvp"]
            final = probe(obj, theta, k=k, rel_tol=rel_tol, step_rtol=step_rtol, probes=probes,
                          steps=steps, exact=exact, seed=seed,
                          extremes=spec if pairs == k else None,
                          progress=clock.callback())
            finish(_density_stage(final, time.perf_counter() - start,
                                  obj.counts["hvp"] - before, full_samples))
    except (KeyboardInterrupt, _OutOfTime):
        partial = True
    return _result(stages, final, partial, density, time_budget, clock, plan, stages_planned)


def _basis_size(plan: CostPlan, wanted: int, samples: int, dense: bool) -> int | None:
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


def _pairs_that_fit(obj, theta, clock: _Clock, samples: int, dense: bool, k: int) -> int:
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


def _larger_subsets(obj, theta, total, last, count, seed, coords, clock, decide, warm):
    """The subsample stage again on larger subsets (what the last one said would settle it, at
    least twice its size), warm-started from its vectors, if its measured cost scaled to the new
    size fits the time left."""
    if last is None or last.name != "subsample":
        raise _OutOfTime
    m = last.samples
    larger = min(total // count, max(2 * m, int(min(last.samples_needed or 0, total))))
    if larger <= m or last.seconds * larger / m > clock.left:
        raise _OutOfTime
    return _subsample_stage(obj, theta, total, larger, count, seed, coords, clock, decide, warm)


def sample_count(obj: Objective) -> int:
    """Samples in the Objective's data (1 for an analytic function; every rank's shard)."""
    return obj.sample_count()


def subset_objectives(obj: Objective, theta: torch.Tensor, samples: int, count: int,
                      seed: int) -> list[Objective]:
    """``count`` disjoint seeded subsets of ``samples`` samples each (in train mode, whole
    batches holding about as many: BatchNorm mixes a batch's samples), as Objectives. The
    first settles the product engine (one product); the others use it without a trial."""
    total = sample_count(obj)
    units = "batches" if obj.model_loss.mode == "train" else "samples"
    if units == "batches":
        batches = len(obj.model_loss.batches.sizes)
        chosen = draw_subsets(batches, max(1, min(batches // count,
                                                  round(samples * batches / total))), count, seed)
    else:
        chosen = draw_subsets(total, samples, count, seed)
    parts = [obj.subset(chosen[0], units=units)]
    parts[0].hvp(torch.zeros_like(theta), theta)
    engine = parts[0].info["hvp_engine"]
    return parts + [obj.subset(ix, units=units, engine=engine) for ix in chosen[1:]]


def _subsample_stage(obj, theta, total, samples, count, seed, coords, clock, decide,
                     warm=None):
    start = time.perf_counter()
    parts = subset_objectives(obj, theta, samples, count, seed)
    clock.begin("subsample", count * (SUBSET_PRODUCTS + 2 * (count - 1)), samples)
    started = time.perf_counter()
    allowance = FIRST_STAGE_SHARE * clock.budget

    def cap(k: int) -> int:
        """The subset's products: what is left of the stage's share of the budget, split, at
        the cost per product measured on the subsets done (the plan's before the first)."""
        spent = time.perf_counter() - started
        done = sum(p.counts["hvp"] for p in parts[:k])
        per_product = spent / done if done else clock.product_seconds(samples)
        if math.isinf(allowance) or not per_product:
            return SUBSET_PRODUCTS
        share = (allowance - spent) / (count - k) - 2 * (count - 1) * per_product
        return max(MIN_SUBSET_PRODUCTS, min(SUBSET_PRODUCTS, int(share / per_product)))

    readings = read_subsets(parts, theta, total=total, tol=SUBSET_TOL,
                            max_products=cap, seed=seed, coords=coords, warm=warm,
                            progress=clock.callback())
    samples = readings.samples
    work = sum(p.counts["hvp"] + p.counts["gradients"] / PRODUCT_PER_GRADIENT for p in parts)
    clock.learn(work, time.perf_counter() - started, samples)
    est = intervals(readings)
    verdict, statement, needed = decide(est, f"{count} subsets of {samples:,} samples", samples)
    stage = Stage("subsample", f"{count} subsets of {samples:,} of {total:,} samples",
                  time.perf_counter() - start, readings.products, True, verdict, statement, est,
                  needed, samples)
    warm = torch.cat([readings.top[2], readings.bottom[2]], 1)
    return stage, warm


def _extremes_stage(obj, theta, k, seed, coords, warm, budget, clock, decide, samples, basis,
                    exact):
    """Both ends on all the data; under a budget, rounds capped by the time left, each warm
    started from the last, until converged or out of time."""
    start = time.perf_counter()
    clock.begin("extremes", budget or EXTREME_PRODUCTS + EXTREME_PRODUCTS_PER_PAIR * k, samples)
    before = obj.counts["hvp"]
    while True:
        products, started = obj.counts["hvp"], time.perf_counter()
        spec = spectrum(obj, k, "both", theta=theta, coords=coords, seed=seed,
                        max_products=budget, warm=warm, basis_size=basis,
                        exact=True if exact else None,   # as probe() calls it
                        progress=clock.callback(offset=products - before))
        clock.learn(obj.counts["hvp"] - products, time.perf_counter() - started, samples)
        converged = bool(spec.evidence.get("converged", True))
        budget = clock.products_within(clock.left, samples)
        if converged or budget is None or budget < 4 * k + 4:
            break
        warm = torch.cat([spec.largest.vectors, spec.smallest.vectors], 1)
    loss, grad = obj.value_and_grad(theta)
    top, bottom = spec.largest, spec.smallest
    where = f"all {samples:,} samples"
    rho = max(abs(top.values[0].item()), abs(bottom.values[0].item()))
    tol = spec.evidence.get("tol") or 0.0

    def end(pairs, sign):   # each extreme is judged by its own residual
        residual = pairs.residuals[0].item()
        return _ritz(pairs.values[0].item(), residual, sign, where, residual <= tol * rho)

    est = {"loss": exact_interval(loss.item(), 0.0, f"{where}, exact"),
           "grad_norm": exact_interval(grad.norm().item(), 0.0, f"{where}, exact"),
           "lambda_max": end(top, +1), "lambda_min": end(bottom, -1)}
    verdict, statement, _ = decide(est, where, samples)
    stage = Stage("extremes", where, time.perf_counter() - start, obj.counts["hvp"] - before,
                  converged, verdict, statement, est, samples=samples)
    return stage, spec


def _ritz(value: float, residual: float, sign: int, where: str, converged: bool) -> Interval:
    """A Ritz value v^T H v is on the inner side of the extreme eigenvalue; its residual r bounds
    how far beyond it the eigenvalue can lie (when the solver converged on that end)."""
    state = "converged" if converged else "NOT converged: the outer side is a guess"
    low, high = (value, value + residual) if sign > 0 else (value - residual, value)
    return Interval(value, low, high, f"{where}, Lanczos Ritz value with residual "
                                      f"{residual:.2g} ({state})", subsampled=False)


def _density_stage(final: Probe, seconds: float, products: int, samples: int) -> Stage:
    where = f"all {samples:,} samples"
    est = {"loss": exact_interval(final.loss, 0.0, f"{where}, exact"),
           "grad_norm": exact_interval(final.grad_norm, 0.0, f"{where}, exact"),
           "lambda_max": _ritz(final.lambda_max, final.spectrum.largest.residuals[0].item(), +1,
                               where, True),
           "lambda_min": _ritz(final.lambda_min, final.spectrum.smallest.residuals[0].item(), -1,
                               where, True)}
    for name, fraction in final.fractions.items():
        low, high = fraction.interval
        est[f"{name}_fraction"] = Interval(fraction.value, low, high,
                                           f"{final.density.method} on all samples: bracket ± 2 "
                                           "probe standard errors", subsampled=False)
    est["trace"] = _trace(final.density)
    return Stage("density", where, seconds, products, True, final.kind, final.reason, est,
                 samples=samples)


class _Decision:
    """Verdicts from intervals: a claim only when the whole interval supports it; what stays
    undecided says how many samples per subset would settle it (``available``: the most the
    data allows)."""

    def __init__(self, theta_norm: float, rel_tol: float, step_rtol: float, eps: float,
                 available: int):
        self.theta_norm, self.rel_tol, self.available = theta_norm, rel_tol, available
        self.step_tol = max(step_rtol, 10 * eps)

    def __call__(self, est: dict[str, Interval], where: str, samples: int):
        """(verdict, statement, samples per subset that would settle what is undecided)."""
        g, top, bottom = est["grad_norm"], est["lambda_max"], est["lambda_min"]
        rho_high = max(abs(top.high), abs(bottom.low), abs(top.low), abs(bottom.high))
        rho_low = max(top.low, -bottom.high, 0.0)
        zero = self.rel_tol * max(rho_low, 1e-300)
        sliding = g.low > self.step_tol * self.theta_norm * rho_high
        critical = rho_low > 0 and g.high <= self.step_tol * self.theta_norm * rho_low
        negative, positive = bottom.high < -zero, top.low > zero
        all_positive, all_negative = bottom.low > zero, top.high < -zero
        conf = f"at 95 % confidence over {where}" if bottom.subsampled else f"on {where}"
        needs = {}
        if negative:
            curvature = (f"λ_min < 0 {conf} (λ_min ∈ [{bottom.low:.3g}, {bottom.high:.3g}]): "
                         "negative curvature is left")
        elif all_positive:
            curvature = f"λ_min > 0 {conf}"
        else:
            needs["lambda_min"] = samples_needed(bottom, -zero, samples) \
                if bottom.subsampled else None
            curvature = (f"the sign of λ_min is undecided (λ_min ∈ [{bottom.low:.3g}, "
                         f"{bottom.high:.3g}]){self._more(needs['lambda_min'])}")
        if sliding:
            return "not_critical", (f"not a critical point {conf}: ‖∇L‖ ≥ {g.low:.3g}, a 1/ρ "
                                    f"gradient step moves θ by more than {self.step_tol:.2g}·‖θ‖; "
                                    + curvature), _largest(needs)
        if critical and negative and positive:
            return "saddle", f"saddle {conf}: critical, and {curvature}", None
        if critical and all_positive:
            return "local_min", f"local minimum {conf}: critical, and {curvature}", None
        if critical and all_negative:
            return "local_max", f"local maximum {conf}: every eigenvalue < 0", None
        if critical:
            reason = ("θ is critical, but eigenvalues within the zero tolerance need the "
                      "higher-order test on all the data")
        else:
            needs["grad_norm"] = samples_needed(g, self.step_tol * self.theta_norm * rho_high,
                                                samples) if g.subsampled else None
            reason = (f"whether θ is critical is undecided (‖∇L‖ ∈ [{g.low:.3g}, {g.high:.3g}])"
                      + self._more(needs["grad_norm"]))
        return UNDECIDED, f"undecided at this sample size: {reason}; {curvature}", \
            _largest(needs)

    def _more(self, needed: float | None) -> str:
        if needed is None:
            return ""
        if math.isinf(needed):
            return ", and no sample size is predicted to settle it (it sits on the threshold)"
        if needed > self.available:
            return (f"; about {needed:,.0f} samples per subset would settle it, more than the "
                    "data holds: the full-data stages decide")
        return f"; about {needed:,.0f} samples per subset would settle it"


def _largest(needs: dict) -> float | None:
    return max((x for x in needs.values() if x is not None), default=None)


def _result(stages, final, partial, density, budget, clock, plan, planned) -> AnytimeProbe:
    if not stages:
        return AnytimeProbe(UNDECIDED, "no stage completed "
                            + ("(interrupted)" if budget is None else
                               f"within the budget ({budget:g} s); give more time or fewer "
                               "samples"), {}, [], [], True,
                            plan=_plan_record(plan, planned, budget, clock))
    last = stages[-1]
    estimates = {}
    for stage in stages:   # each quantity from the latest stage that estimated it
        estimates.update(stage.estimates)
    uncertain = [f"{name}: {iv.low:.3g} to {iv.high:.3g} (subsampled)"
                 for name, iv in estimates.items() if iv.subsampled]
    if final is None and density:
        uncertain.append("sign fractions: the density stage did not run")
    if not last.complete:
        uncertain.append(f"{last.name}: the solver did not converge within the budget")
    return AnytimeProbe(last.verdict, last.statement, estimates, stages, uncertain, partial,
                        final, _plan_record(plan, planned, budget, clock), last.samples_needed)


def _plan_record(plan, planned, budget, clock) -> dict:
    return {"cost": plan.to_dict(), "stages": [p.to_dict() for p in planned],
            "time_budget": budget, "seconds": clock.elapsed,
            "measured_product_seconds": {str(s): t for s, t in sorted(clock.costs.items())}}


def _trace(dens) -> Interval:
    """tr H from the density: exact, or n·vᵀHv over SLQ's unit Rademacher probes (Hutchinson),
    whose first quadrature moment Σ w_j x_j is vᵀHv."""
    if dens.eigenvalues is not None:
        return exact_interval(dens.eigenvalues.sum().item(), 0.0, "exact eigenvalues")
    q = dens.quadrature
    forms = q.n * (q.weights * q.nodes).sum(1)
    count = forms.numel()
    se = forms.std(unbiased=True).item() / math.sqrt(count) if count > 1 else math.inf
    t = float(stats.t.ppf(0.975, max(count - 1, 1)))
    mean = forms.mean().item()
    return Interval(mean, mean - t * se, mean + t * se, f"Hutchinson over the {count} SLQ "
                    "probes on all samples (probe error only)", subsampled=False)
