"""Sampling error bars: how far the curvature read on part of the data can be from the full-data
value, and how many samples would settle a verdict.

K disjoint subsets of m samples are drawn without replacement (seeded) from the N samples;
f = Km/N. Subset k has its loss L_k, gradient g_k and Hessian H_k, and E H_k = H, the full-data
Hessian. Each quantity gets a 95 % interval for its *full-data* value:

- loss: the mean of the L_k ± t·s/√K·√(1 − f) (Student t with K − 1 degrees of freedom; the
  finite-population factor √(1 − f) is 0 when the subsets are the whole data).
- ‖∇L‖: ‖ḡ‖² − (1 − f)·tr S/K (S the covariance of the g_k) is unbiased for ‖∇L‖² (the plain
  ‖ḡ‖ is biased upward by the gradient noise); its interval comes from the delete-one jackknife
  and is mapped through the square root.
- λ_max: a subsample's top eigenvalue is biased *upward* (λ_max is convex in H, so by Jensen
  E λ_max(H_k) ≥ λ_max(H)), which is why a bootstrap over batches, centred on the biased value,
  undercovers. Independent subsets give both sides instead. Upper side: the subsets' top Ritz
  values plus their residuals overestimate λ_max(H) in expectation. Lower side: for the top
  vector v_k of subset k, the other subsets j ≠ k read q_kj = v_kᵀH_jv_k without having chosen
  v_k, so they estimate v_kᵀHv_k ≤ λ_max(H) without bias (a held-out Rayleigh quotient). Each side
  gets its one-sided t-bound (the held-out side's standard error from the delete-one-subset
  jackknife: the subsets' held-out estimates share the subsets that read them); the interval
  joins them. When the subsets are the whole data both
  sides become exact inequalities (λ_max of an average ≤ the average of λ_max). λ_min mirrors it.
- the trace, linear in H and so unbiased on a subset: the mean of the subsets' Hutchinson
  estimates ± t·(their spread·√(1 − f) ⊕ their own probe error)/√K. The sign fractions are not
  estimated on subsets: sampling noise spreads the bulk of eigenvalues around zero, so a
  subset's fractions are biased (fewer flat, more of both signs) by an amount no spread over
  subsets reveals; they come from the full data only.

The verdict is stated only when the intervals settle it; otherwise the sample size that would,
assuming the half-widths fall like 1/√m, is estimated (:func:`samples_needed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from scipy import stats

from landscope._deprecated import renamed
from landscope.errors import BadInputError
from landscope.objective import Objective
from landscope.progress import Progress
from landscope.spectrum import spectrum, trace

CONFIDENCE = 0.95
TRACE_PROBES = 10
"""Rademacher probes of each subset's Hutchinson trace (one product of this many columns)."""


@dataclass(frozen=True)
class Interval:
    """An estimate of a full-data quantity with its 95 % interval and how it was obtained."""

    value: float
    low: float
    high: float
    evidence: str
    subsampled: bool = True

    @property
    def half_width(self) -> float:
        return 0.5 * (self.high - self.low)

    def to_dict(self) -> dict:
        return {"value": self.value, "interval": [self.low, self.high],
                "confidence": CONFIDENCE, "subsampled": self.subsampled,
                "evidence": self.evidence}


def exact_interval(value: float, error: float, evidence: str) -> Interval:
    """A full-data value whose only error is the solver's (a residual bound or a probe error)."""
    return Interval(value, value - error, value + error, evidence, subsampled=False)


@renamed(count="subsets")
def draw_subsets(total: int, samples: int, subsets: int, seed: int) -> list[torch.Tensor]:
    """``subsets`` disjoint sets of ``samples`` indices out of ``range(total)``, seeded.

    Examples
    --------
    >>> parts = draw_subsets(10, 3, 3, seed=0)
    >>> sorted(len(set(p.tolist())) for p in parts), len(set(torch.cat(parts).tolist()))
    ([3, 3, 3], 9)
    """
    if subsets < 2:
        raise BadInputError(f"subsets={subsets}; an interval needs at least 2 independent "
                            "subsets")
    if samples < 1 or samples * subsets > total:
        raise BadInputError(
            f"samples={samples} × subsets={subsets} = {samples * subsets} > {total}, the samples "
            f"in the data; use samples ≤ {total // subsets} (or fewer subsets)")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return [order[k * samples:(k + 1) * samples].sort().values for k in range(subsets)]


@dataclass
class SubsetReadings:
    """What each of K subsets said at θ, the raw material of the intervals.

    losses (K,), gradients (K, n); top / bottom: Ritz values θ_k, residuals r_k and vectors
    (n, K) of each subset's extreme eigenpair; held_top / held_bottom (K, K): entry (k, j) is
    v_kᵀ H_j v_k for j ≠ k (NaN on the diagonal); traces: each subset's Hutchinson estimate of
    tr H_k and its standard error. fraction: f = Km/N.
    """

    losses: torch.Tensor
    gradients: torch.Tensor
    top: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    bottom: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    held_top: torch.Tensor
    held_bottom: torch.Tensor
    traces: list[tuple[float, float]]
    fraction: float
    samples: int
    products: int
    converged: list[bool] = field(default_factory=list)

    @property
    def subsets(self) -> int:
        return self.losses.numel()


@renamed(tol="eig_rtol")
def read_subsets(objectives: Sequence[Objective], theta: torch.Tensor, *, total: int,
                 eig_rtol: float, max_products: int | Callable[[int], int] | None = None,
                 seed: int = 0, coords: torch.Tensor | None = None, warm=None,
                 trace_probes: int = TRACE_PROBES,
                 progress: Progress | None = None) -> SubsetReadings:
    """L_k, ∇L_k and both extreme eigenpairs of every subset objective at θ, then the held-out
    Rayleigh quotients: each subset's extreme vectors read on every other subset (one product of
    2(K − 1) columns per subset), and a Hutchinson trace of ``trace_probes`` Rademacher probes
    in one product per subset. ``max_products``: per subset, or ``max_products(k)`` decided
    when subset k starts (a time budget). ``eig_rtol``: the eigen-solver's residual tolerance,
    relative to the subset's ρ. ``progress``: ``progress(done, total, note)`` in Hessian-vector
    products, from each subset's eigen-solver (each counts its own)."""
    K = len(objectives)
    losses, gradients, tops, bottoms, converged, traces = [], [], [], [], [], []
    products = 0
    for k, sub in enumerate(objectives):
        before = sub.counts["hvp"]
        cap = max_products(k) if callable(max_products) else max_products
        spec = spectrum(sub, 1, "both", theta=theta, eig_rtol=eig_rtol, max_products=cap,
                        exact=None if cap is None else sub.n <= cap,
                        coords=coords, seed=seed + k, progress=progress, warm=warm)
        value, grad = sub.value_and_grad(theta)
        losses.append(value.item())
        gradients.append(grad)
        tops.append(spec.largest)
        bottoms.append(spec.smallest)
        converged.append(bool(spec.evidence.get("converged", True)))
        estimate = trace(sub, trace_probes, theta=theta, batch=trace_probes, exact=False,
                         seed=seed + k)
        traces.append((estimate.value, estimate.stderr))
        products += sub.counts["hvp"] - before
    V_top = torch.cat([p.vectors for p in tops], 1)
    V_bottom = torch.cat([p.vectors for p in bottoms], 1)
    held_top = torch.full((K, K), math.nan, dtype=torch.float64)
    held_bottom = held_top.clone()
    for j, sub in enumerate(objectives):
        others = [k for k in range(K) if k != j]
        V = torch.cat([V_top[:, others], V_bottom[:, others]], 1)
        before = sub.counts["hvp"]
        quotients = (V * sub.hvp(V, theta)).sum(0).double().cpu()
        products += sub.counts["hvp"] - before
        held_top[others, j] = quotients[:K - 1]
        held_bottom[others, j] = quotients[K - 1:]

    def pairs(found):
        return (torch.cat([p.values for p in found]).double().cpu(),
                torch.cat([p.residuals for p in found]).double().cpu(),
                torch.cat([p.vectors for p in found], 1))

    size = sum(objectives[0].model_loss.batches.sizes) \
        if objectives[0].model_loss is not None else 1
    return SubsetReadings(torch.tensor(losses, dtype=torch.float64),
                          torch.stack(gradients).double(), pairs(tops), pairs(bottoms),
                          held_top, held_bottom, traces, min(1.0, K * size / total), size,
                          products, converged)


def intervals(r: SubsetReadings) -> dict[str, Interval]:
    """95 % intervals for the full-data loss, ‖∇L‖, λ_max, λ_min and trace (see the module's
    text)."""
    K, shrink = r.subsets, math.sqrt(max(0.0, 1.0 - r.fraction))
    t = _t(K)
    where = f"{K} subsets of {r.samples} samples"
    mean, se = _mean_se(r.losses)
    loss = Interval(mean, mean - t * se * shrink, mean + t * se * shrink,
                    f"mean over {where} ± t·s/√K·√(1 − f), f = {r.fraction:.3g}")
    return {"loss": loss, "grad_norm": _grad_norm(r, t, where),
            "lambda_max": _extreme(r.top, r.held_top, r.fraction, t, +1, where),
            "lambda_min": _extreme(r.bottom, r.held_bottom, r.fraction, t, -1, where),
            "trace": combine(r.traces, r.fraction, where)}


def _extreme(pairs, held: torch.Tensor, fraction: float, t: float, sign: int,
             where: str) -> Interval:
    """λ_max (sign +1) or λ_min (sign −1): the in-sample side and the held-out side.

    The held-out estimates of the K subsets share the subsets that read them, so their errors
    move together (the top vectors of five subsets point nearly the same way) and their spread
    understates the error of their mean: its standard error comes from the delete-one-subset
    jackknife instead (plain spread and shrink: W5's λ_max covered 16 of 20 seeds)."""
    values, residuals, _ = pairs
    K, shrink = values.numel(), math.sqrt(max(0.0, 1.0 - fraction))
    in_sample = values + sign * residuals           # beyond the subsets' own extreme eigenvalue
    m_in, se_in = _mean_se(in_sample)
    m_out = _held_out(values, held, fraction)
    if fraction >= 1.0:   # the subsets are the data: each v_kᵀHv_k is exact, so is their mean
        se_out = 0.0
    elif K > 2:
        keep = [[k for k in range(K) if k != i] for i in range(K)]
        drops = torch.tensor([_held_out(values[ix], held[ix][:, ix], fraction * (K - 1) / K)
                              for ix in keep], dtype=torch.float64)
        se_out = math.sqrt((K - 1) / K * ((drops - drops.mean()) ** 2).sum().item())
    else:
        se_out = _mean_se(held[~held.isnan()])[1]
    outer = m_in + sign * t * se_in * shrink        # in expectation beyond the full-data value
    inner = m_out - sign * t * se_out               # a Rayleigh quotient: within it
    low, high = (inner, outer) if sign > 0 else (outer, inner)
    low, high = min(low, high), max(low, high)
    return Interval(0.5 * (m_in + m_out), low, high,
                    f"{where}: in-sample extremes {m_in:.4g} (± {se_in:.2g}) and held-out "
                    f"Rayleigh quotients {m_out:.4g} (± {se_out:.2g}, jackknife)")


def _held_out(values: torch.Tensor, held: torch.Tensor, fraction: float) -> float:
    """The mean over k of an estimate of v_kᵀHv_k: exact on the sampled data (the subset's own
    Ritz value v_kᵀH_kv_k and its readings on the other subsets), the unsampled rest (weight
    1 − f) estimated by the mean of those readings."""
    K = values.numel()
    readings = torch.nanmean(held, dim=1)
    return (fraction * (values + (K - 1) * readings) / K
            + (1 - fraction) * readings).mean().item()


def _grad_norm(r: SubsetReadings, t: float, where: str) -> Interval:
    """‖∇L‖ from the unbiased ‖∇L‖² = ‖ḡ‖² − (1 − f)·tr S/K, with a jackknife interval."""
    G = r.gradients
    K = G.shape[0]

    def squared(rows: torch.Tensor) -> float:
        k = rows.shape[0]
        mean = rows.mean(0)
        noise = ((rows - mean) ** 2).sum().item() / (k - 1) if k > 1 else 0.0
        return mean.square().sum().item() - (1 - r.fraction) * noise / k

    full = squared(G)
    if K > 2:
        leave = torch.tensor([squared(G[[j for j in range(K) if j != i]]) for i in range(K)],
                             dtype=torch.float64)
        se = math.sqrt((K - 1) / K * ((leave - leave.mean()) ** 2).sum().item())
    else:
        se = abs(full)
    se *= math.sqrt(max(0.0, 1.0 - r.fraction))
    low, high = full - t * se, full + t * se
    root = math.sqrt(max(full, 0.0))
    return Interval(root, math.sqrt(max(low, 0.0)), math.sqrt(max(high, 0.0)),
                    f"{where}: ‖ḡ‖² less the gradient noise (1 − f)·tr S/K, jackknife interval")


def combine(estimates: Sequence[tuple[float, float]], fraction: float, where: str) -> Interval:
    """An interval for a quantity linear in H (the trace) from per-subset (estimate, own
    standard error) pairs. The spread s over the subsets holds both the sampling and the probe
    error; only the sampling part shrinks with the finite-population factor, so the mean's
    standard error is √(s²(1 − f)/K + f·e²), e the mean's own probe error."""
    values = torch.tensor([e for e, _ in estimates], dtype=torch.float64)
    own = math.sqrt(sum(s * s for _, s in estimates)) / len(estimates)
    mean, se = _mean_se(values)
    spread = math.sqrt(se * se * max(0.0, 1.0 - fraction) + min(fraction, 1.0) * own * own)
    t = _t(len(estimates))
    return Interval(mean, mean - t * spread, mean + t * spread,
                    f"mean over {where} ± t·(spread over the subsets, probe error)")


def samples_needed(interval: Interval, threshold: float, samples: int) -> float | None:
    """Samples per subset at which the interval would clear ``threshold`` if its half-width
    falls like 1/√m (inf: its centre sits on the threshold); None when it clears it already."""
    if interval.low > threshold or interval.high < threshold:
        return None
    gap = abs(0.5 * (interval.low + interval.high) - threshold)
    return math.inf if gap == 0 else math.ceil(samples * (interval.half_width / gap) ** 2)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    K = values.numel()
    mean = values.mean().item()
    if K < 2:
        return mean, 0.0
    return mean, values.std(unbiased=True).item() / math.sqrt(K)


def _t(values: int) -> float:
    """Two-sided 95 % Student-t quantile for the mean of ``values`` values (values − 1 degrees of
    freedom)."""
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, values - 1))
