"""The anytime probe itself: the stages run in order within the budget, and the best verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from landscope._checks import integer
from landscope._deprecated import renamed
from landscope.anytime.budget import (
    SUBSETS,
    Clock,
    OutOfTime,
    basis_size,
    cost_plan,
    pairs_that_fit,
    sample_count,
    schedule,
)
from landscope.anytime.stages import (
    UNDECIDED,
    Decision,
    Stage,
    density_stage,
    extremes_stage,
    larger_subsets,
    subsample_stage,
)
from landscope.critical import Probe, default_zero_rtol, probe, used_coordinates
from landscope.errors import BadInputError
from landscope.objective import Objective
from landscope.plan import CostPlan
from landscope.progress import Progress
from landscope.sampling import Interval
from landscope.spectrum import EXACT_MAX_N


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


@renamed(steps="lanczos_steps", rel_tol="zero_rtol")
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
    lanczos_steps: int = 60,
    density: bool = True,
    exact: bool | None = None,
    zero_rtol: float | None = None,
    step_rtol: float = 1e-6,
    plan: CostPlan | None = None,
    progress: Progress | None = None,
    on_stage: Callable[[Stage], None] | None = None,
) -> AnytimeProbe:
    """Classify θ in stages, each sharper than the last (see the module's text).

    Parameters
    ----------
    time_budget: seconds for the whole probe (default: none, every stage runs to the end).
    samples: samples per subset in the first stage (default: chosen from the budget, at most
        :data:`MAX_SAMPLES`, and so that the subsets fit in the data). subsets: how many.
    seed: of the subsets and of every random start vector.
    k, probes, lanczos_steps, exact, zero_rtol, step_rtol: as in :func:`landscope.probe`
        (``exact`` for the full-data stages); ``density=False`` stops after stage 2.
    plan: the :func:`cost_plan` (default: made here, from gradients timed on two subset sizes);
        what would not fit in memory is refused before any work, with the fix.
    progress: ``progress(done, total, note)``: Hessian-vector products done in the current
        stage of those it planned, the note naming the stage and its ETA ("stage 2/3 extremes ·
        ETA 12 s").
    on_stage: called with each :class:`Stage` as it completes (the CLI prints it).
    """
    if time_budget is not None and not time_budget > 0:
        raise BadInputError(f"time_budget={time_budget}; give a positive number of seconds "
                            "(or None for no budget)")
    for name, value in (("k", k), ("probes", probes), ("lanczos_steps", lanczos_steps)):
        integer(name, value)  # before any stage: a bad one would fail only at the last
    theta = obj.point(theta)
    total = sample_count(obj)
    clock = Clock(time_budget, progress, agree=obj.agree)
    plan = plan or cost_plan(obj, theta)
    clock.plan = plan
    stages_planned = schedule(obj, plan, samples=samples, subsets=subsets, k=k, probes=probes,
                              lanczos_steps=lanczos_steps, density=density,
                              time_budget=time_budget)
    dense = obj.n <= EXACT_MAX_N if exact is None else exact
    basis = basis_size(plan, 2 * k, total, dense)   # refuses what would not fit, with the fix
    zero_rtol = default_zero_rtol(obj.dtype) if zero_rtol is None else zero_rtol
    coords, _ = used_coordinates(obj)
    used = theta if coords is None else theta[coords]
    decide = Decision(used.norm().item(), zero_rtol, step_rtol, torch.finfo(obj.dtype).eps,
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
            stage, warm = subsample_stage(obj, theta, total, stages_planned[0].samples,
                                           subsets, seed, coords, clock, decide)
            finish(stage)
        full_samples = max(total, 1)
        pairs = pairs_that_fit(obj, theta, clock, full_samples, dense, k)
        while pairs == 0:   # the full data does not fit the time left: larger subsets instead
            stage, warm = larger_subsets(obj, theta, total, stage, subsets, seed, coords, clock,
                                          decide, warm)
            finish(stage)
            pairs = pairs_that_fit(obj, theta, clock, full_samples, dense, k)
        budget = clock.products_within(clock.left, full_samples)
        stage, spec = extremes_stage(obj, theta, pairs, seed, coords, warm, budget, clock,
                                      decide, full_samples, basis, exact)
        finish(stage)
        if density:
            needed = probes * lanczos_steps + 2 * k
            budget = clock.products_within(clock.left, full_samples)
            if budget is not None and budget < needed:
                raise OutOfTime
            clock.begin("density", needed, full_samples)
            start = time.perf_counter()
            before = obj.counts["hvp"]
            final = probe(obj, theta, k=k, zero_rtol=zero_rtol, step_rtol=step_rtol,
                          probes=probes, lanczos_steps=lanczos_steps, exact=exact, seed=seed,
                          extremes=spec if pairs == k else None,
                          progress=clock.callback())
            finish(density_stage(final, time.perf_counter() - start,
                                  obj.counts["hvp"] - before, full_samples))
    except (KeyboardInterrupt, OutOfTime):
        partial = True
    return _result(stages, final, partial, density, time_budget, clock, plan, stages_planned)


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
