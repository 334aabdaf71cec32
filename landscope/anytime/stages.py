"""The anytime probe's stages: data subsets with 95 % intervals, the extremes on all the data, the
density; and the decision each stage's intervals allow."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from scipy import stats

from landscope._deprecated import old_names
from landscope.anytime.budget import (
    EXTREME_PRODUCTS,
    EXTREME_PRODUCTS_PER_PAIR,
    FIRST_STAGE_SHARE,
    OutOfTime,
    sample_count,
)
from landscope.critical import Probe
from landscope.objective import Objective
from landscope.plan import PRODUCT_PER_GRADIENT
from landscope.sampling import (
    Interval,
    draw_subsets,
    exact_interval,
    intervals,
    read_subsets,
    samples_needed,
)
from landscope.spectrum import spectrum

SUBSET_EIG_RTOL = 1e-3
"""Residual tolerance of the first stage's eigenpairs (relative to ρ); the residual is added to
the interval. Not looser: the bottom end sits beside the bulk near zero, far below ρ in size, and
at 1e-2 a ResNet's subsets accepted λ_min ≈ −0.01 after 6 products (residual 1.3 < 1e-2·ρ) where
the subset's true λ_min was −15.6, which 1e-3 finds in 16-21 products."""
SUBSET_PRODUCTS = 60
"""Most products per subset in the first stage (both ends together)."""
MIN_SUBSET_PRODUCTS = 8
"""Fewest: under a tight budget the first stage's solves are cut down to this."""
UNDECIDED = "undecided"

__getattr__ = old_names(__name__, {"SUBSET_TOL": "SUBSET_EIG_RTOL"})


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


def larger_subsets(obj, theta, total, last, subsets, seed, coords, clock, decide, warm):
    """The subsample stage again on larger subsets (what the last one said would settle it, at
    least twice its size), warm-started from its vectors, if its measured cost scaled to the new
    size fits the time left."""
    if last is None or last.name != "subsample":
        raise OutOfTime
    m = last.samples
    larger = min(total // subsets, max(2 * m, int(min(last.samples_needed or 0, total))))
    if larger <= m or last.seconds * larger / m > clock.left:
        raise OutOfTime
    return subsample_stage(obj, theta, total, larger, subsets, seed, coords, clock, decide,
                           warm)


def subset_objectives(obj: Objective, theta: torch.Tensor, samples: int, subsets: int,
                      seed: int) -> list[Objective]:
    """``subsets`` disjoint seeded subsets of ``samples`` samples each (in train mode, whole
    batches holding about as many: BatchNorm mixes a batch's samples), as Objectives. The
    first settles the product engine (one product); the others use it without a trial."""
    total = sample_count(obj)
    units = "batches" if obj.model_loss.mode == "train" else "samples"
    if units == "batches":
        batches = len(obj.model_loss.batches.sizes)
        chosen = draw_subsets(batches, max(1, min(batches // subsets,
                                                  round(samples * batches / total))),
                              subsets, seed)
    else:
        chosen = draw_subsets(total, samples, subsets, seed)
    parts = [obj.subset(chosen[0], units=units)]
    parts[0].hvp(torch.zeros_like(theta), theta)
    engine = parts[0].info["hvp_engine"]
    return parts + [obj.subset(ix, units=units, engine=engine) for ix in chosen[1:]]


def subsample_stage(obj, theta, total, samples, subsets, seed, coords, clock, decide,
                    warm=None):
    start = time.perf_counter()
    parts = subset_objectives(obj, theta, samples, subsets, seed)
    clock.begin("subsample", subsets * (SUBSET_PRODUCTS + 2 * (subsets - 1)), samples)
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
        share = (allowance - spent) / (subsets - k) - 2 * (subsets - 1) * per_product
        return max(MIN_SUBSET_PRODUCTS, min(SUBSET_PRODUCTS, int(share / per_product)))

    readings = read_subsets(parts, theta, total=total, eig_rtol=SUBSET_EIG_RTOL,
                            max_products=cap, seed=seed, coords=coords, warm=warm,
                            progress=clock.callback())
    samples = readings.samples
    work = sum(p.counts["hvp"] + p.counts["gradients"] / PRODUCT_PER_GRADIENT for p in parts)
    clock.learn(work, time.perf_counter() - started, samples)
    est = intervals(readings)
    verdict, statement, needed = decide(est, f"{subsets} subsets of {samples:,} samples",
                                        samples)
    stage = Stage("subsample", f"{subsets} subsets of {samples:,} of {total:,} samples",
                  time.perf_counter() - start, readings.products, True, verdict, statement, est,
                  needed, samples)
    warm = torch.cat([readings.top[2], readings.bottom[2]], 1)
    return stage, warm


def extremes_stage(obj, theta, k, seed, coords, warm, budget, clock, decide, samples, basis,
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
    eig_rtol = spec.evidence.get("tol") or 0.0

    def end(pairs, sign):   # each extreme is judged by its own residual
        residual = pairs.residuals[0].item()
        return _ritz(pairs.values[0].item(), residual, sign, where, residual <= eig_rtol * rho)

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


def density_stage(final: Probe, seconds: float, products: int, samples: int) -> Stage:
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
    est["trace"] = trace_interval(final.density)
    return Stage("density", where, seconds, products, True, final.kind, final.reason, est,
                 samples=samples)


class Decision:
    """Verdicts from intervals: a claim only when the whole interval supports it; what stays
    undecided says how many samples per subset would settle it (``available``: the most the
    data allows)."""

    def __init__(self, theta_norm: float, zero_rtol: float, step_rtol: float, eps: float,
                 available: int):
        self.theta_norm, self.zero_rtol, self.available = theta_norm, zero_rtol, available
        self.step_tol = max(step_rtol, 10 * eps)

    def __call__(self, est: dict[str, Interval], where: str, samples: int):
        """(verdict, statement, samples per subset that would settle what is undecided)."""
        g, top, bottom = est["grad_norm"], est["lambda_max"], est["lambda_min"]
        rho_high = max(abs(top.high), abs(bottom.low), abs(top.low), abs(bottom.high))
        rho_low = max(top.low, -bottom.high, 0.0)
        zero = self.zero_rtol * max(rho_low, 1e-300)
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
                                    + curvature), largest_needed(needs)
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
            largest_needed(needs)

    def _more(self, needed: float | None) -> str:
        if needed is None:
            return ""
        if math.isinf(needed):
            return ", and no sample size is predicted to settle it (it sits on the threshold)"
        if needed > self.available:
            return (f"; about {needed:,.0f} samples per subset would settle it, more than the "
                    "data holds: the full-data stages decide")
        return f"; about {needed:,.0f} samples per subset would settle it"


def largest_needed(needs: dict) -> float | None:
    return max((x for x in needs.values() if x is not None), default=None)


def trace_interval(dens) -> Interval:
    """tr H from the density: exact, or n·vᵀHv over SLQ's unit Rademacher probes (Hutchinson),
    whose first quadrature moment Σ w_j x_j is vᵀHv."""
    if dens.eigenvalues is not None:
        return exact_interval(dens.eigenvalues.sum().item(), 0.0, "exact eigenvalues")
    q = dens.quadrature
    forms = q.n * (q.weights * q.nodes).sum(1)
    probes = forms.numel()
    se = forms.std(unbiased=True).item() / math.sqrt(probes) if probes > 1 else math.inf
    t = float(stats.t.ppf(0.975, max(probes - 1, 1)))
    mean = forms.mean().item()
    return Interval(mean, mean - t * se, mean + t * se, f"Hutchinson over the {probes} SLQ "
                    "probes on all samples (probe error only)", subsampled=False)
