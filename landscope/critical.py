"""Where did training stop? ``probe`` classifies the point θ an Objective sits at.

The first test is first-order: is θ a critical point at all? The gradient alone is not scale-free,
so landscope compares what one safe gradient step would still gain with what there is to gain.
With ρ = max|λ(H)|, the descent lemma promises L(θ − g/ρ) ≤ L(θ) − ‖g‖²/(2ρ); θ counts as critical
when that promised decrease is at most ``descent_rtol`` times the excess loss E = L − L_low (L_low
the known lower bound, or 0). Otherwise the verdict is ``not_critical`` (still sliding, e.g. along a
narrow valley) and the ratio says how far from critical. A gradient below the rounding floor
10·eps·ρ·‖θ‖ (the size of rounding errors in terms of magnitude ρ‖θ‖) counts as zero whatever the
ratio, so that a loss fitted to exactly 0 is not called "still sliding" on rounding noise.

The second test is second-order: with zero tolerance τ = ``rel_tol``·ρ (a rounding-level
threshold), eigenvalues ≤ −τ count as negative, > τ as positive, the rest as zero. Both signs:
saddle. One sign and no zero eigenvalue: local minimum or maximum. Zero eigenvalues and no contrary
sign: the higher-order test of :mod:`landscope.degenerate` settles it where it can, else
``degenerate`` with the reason.

The sign fractions (index = fraction negative, minimum ratio = fraction positive) are reported
with a wider band, |λ| ≤ ``flat_band``·ρ counting as flat (default 1% of ρ). At the end of training
most eigenvalues form a bulk just around zero; their signs at a rounding-level tolerance are noise,
and no affordable density estimate resolves them (stochastic Lanczos quadrature resolves about
ρ / steps), so a fraction read at τ would carry an error bar as wide as the bulk. Both tolerances
are recorded in every result.

On the iterative path a negative Ritz value vᵀHv < −τ (v a unit vector) certifies negative
curvature on its own; "no negative eigenvalue" rests on Lanczos having converged at the bottom end,
whose residuals are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from landscope.degenerate import null_direction_test
from landscope.errors import BadInputError
from landscope.linalg import dense_eigh
from landscope.objective import Objective
from landscope.spectrum import (
    EXACT_MAX_N,
    Density,
    FractionEstimate,
    Spectrum,
    dense_spectrum,
    density,
    spectrum,
)

KINDS = ("local_min", "saddle", "local_max", "degenerate", "not_critical")


def default_rel_tol(dtype: torch.dtype) -> float:
    """Zero tolerance for eigenvalues relative to ρ = max|λ|: 1e-6 (float64), 1e-4 (float32)."""
    return 1e-6 if dtype == torch.float64 else 1e-4


def default_global_tol(dtype: torch.dtype) -> float:
    """How close to its lower bound the loss must be to call a minimum global."""
    return 1e-10 if dtype == torch.float64 else 1e-6


@dataclass(frozen=True)
class Probe:
    """The kind of point θ is, with the numbers that show it.

    kind: one of KINDS. reason: one sentence saying why. index: fraction of negative eigenvalues.
    minimum_ratio: fraction of positive eigenvalues (#positive / n). condition_number: ρ / λ_min
    at a positive-definite point (the ratio that slows gradient descent); on the exact path at
    other points, max|λ| / min|λ| over the eigenvalues beyond the zero tolerance; else None.
    """

    kind: str
    reason: str
    loss: float
    grad_norm: float
    lambda_max: float
    lambda_min: float
    fractions: dict[str, FractionEstimate]
    condition_number: float | None
    is_global_min: bool
    tolerances: dict
    stationarity: dict
    evidence: dict
    info: dict
    spectrum: Spectrum = field(repr=False)
    density: Density = field(repr=False)

    @property
    def index(self) -> float:
        return self.fractions["negative"].value

    @property
    def minimum_ratio(self) -> float:
        return self.fractions["positive"].value

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "reason": self.reason,
            "is_global_min": self.is_global_min,
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "index": self.index,
            "minimum_ratio": self.minimum_ratio,
            "fractions": {name: f.to_dict() for name, f in self.fractions.items()},
            "condition_number": self.condition_number,
            "tolerances": self.tolerances,
            "stationarity": self.stationarity,
            "spectrum": self.spectrum.to_dict(),
            "density": self.density.to_dict(),
            "evidence": self.evidence,
            "objective": self.info,
        }


def probe(
    obj: Objective,
    theta: torch.Tensor | None = None,
    *,
    k: int = 5,
    rel_tol: float | None = None,
    flat_band: float = 1e-2,
    descent_rtol: float = 1e-6,
    global_tol: float | None = None,
    eig_tol: float | None = None,
    probes: int = 8,
    steps: int = 60,
    exact: bool | None = None,
    seed: int = 0,
    progress=None,
) -> Probe:
    """Classify θ (default: the Objective's own point) and gather the evidence.

    Parameters
    ----------
    k: eigenpairs computed at each end of the spectrum.
    rel_tol: zero tolerance for eigenvalues relative to ρ = max|λ| (default by dtype), used to
        classify.
    flat_band: eigenvalues with |λ| ≤ flat_band·ρ count as flat in the reported fractions.
    descent_rtol: θ is critical when ‖g‖²/(2ρ) ≤ descent_rtol · (L − L_low).
    global_tol: a minimum is global when L − L_low ≤ global_tol (needs a known lower bound).
    eig_tol: residual tolerance of the iterative eigen-solver (see :func:`spectrum`).
    probes, steps: of the stochastic Lanczos quadrature that estimates the sign fractions.
    exact: force or forbid the dense path (default: dense when n ≤ EXACT_MAX_N).

    Examples
    --------
    >>> p = probe(Objective.from_function(lambda x: x[0]**2 + x[1]**3, [0.0, 0.0]))
    >>> p.kind
    'saddle'
    """
    if k < 1:
        raise BadInputError(f"k={k}; probe needs at least one eigenpair at each end")
    theta = obj.point(theta)
    before = dict(obj.counts)
    exact = obj.n <= EXACT_MAX_N if exact is None else exact
    rel_tol = default_rel_tol(obj.dtype) if rel_tol is None else rel_tol
    if exact:
        H = obj.hessian(theta, max_n=max(obj.n, EXACT_MAX_N))
        values, vectors = dense_eigh(H)
        spec = dense_spectrum(H, values, vectors, k, k, obj.dtype)
        dens = Density("exact", obj.n, eigenvalues=values, products=obj.n)
    else:
        spec = spectrum(obj, k, "both", theta=theta, tol=eig_tol, seed=seed, progress=progress)
        dens = density(obj, probes, steps, theta=theta, exact=False, seed=seed, progress=progress)
        values = vectors = None
    # after the products: the pass that kept their graph also gave L and ∇L at θ
    loss_t, g = obj.value_and_grad(theta)
    loss, grad_norm = loss_t.item(), g.norm().item()
    lam_max, lam_min = spec.largest.values[0].item(), spec.smallest.values[0].item()
    rho = max(abs(lam_max), abs(lam_min))
    zero_tol = rel_tol * rho if rho > 0 else torch.finfo(obj.dtype).tiny
    flat_tol = flat_band * rho if rho > 0 else zero_tol
    fractions = dens.fractions(flat_tol)
    grad_floor = 10 * torch.finfo(obj.dtype).eps * rho * theta.norm().item()
    stationarity = _stationarity(loss, grad_norm, rho, obj.lower_bound, descent_rtol, grad_floor)
    verdict = _Verdict(obj, theta, values, vectors, spec, fractions, zero_tol, seed)
    if not stationarity["critical"]:
        kind, reason, null_test = "not_critical", stationarity["explanation"], None
    else:
        kind, reason, null_test = verdict.classify()
    global_tol = default_global_tol(obj.dtype) if global_tol is None else global_tol
    is_global = (kind == "local_min" and obj.lower_bound is not None
                 and loss - obj.lower_bound <= global_tol)
    if is_global:
        reason += f"; the loss is within {global_tol:g} of its lower bound {obj.lower_bound:g}"
    evidence = {
        "path": "exact" if exact else "iterative",
        "spectrum": spec.evidence,
        "density": dens.to_dict(),
        "null_direction_test": null_test.to_dict() if null_test else None,
        "counts": {key: obj.counts[key] - before[key] for key in obj.counts},
    }
    tolerances = {"rel_tol": rel_tol, "zero_tol": zero_tol, "flat_band": flat_band,
                  "flat_tol": flat_tol, "descent_rtol": descent_rtol,
                  "global_tol": global_tol, "eig_tol": spec.evidence.get("tol")}
    return Probe(kind, reason, loss, grad_norm, lam_max, lam_min, fractions,
                 _condition_number(values, lam_max, lam_min, zero_tol), is_global, tolerances,
                 stationarity, evidence, dict(obj.info), spec, dens)


class _Verdict:
    """The second-order decision, and the higher-order test where it is inconclusive."""

    def __init__(self, obj, theta, values, vectors, spec, fractions, zero_tol, seed):
        self.obj, self.theta, self.values, self.vectors = obj, theta, values, vectors
        self.spec, self.fractions, self.zero_tol, self.seed = spec, fractions, zero_tol, seed

    def classify(self):
        lam_max = self.spec.largest.values[0].item()
        lam_min = self.spec.smallest.values[0].item()
        has_neg, has_pos = lam_min <= -self.zero_tol, lam_max > self.zero_tol
        if has_neg and has_pos:
            share = self.fractions["negative"]
            return "saddle", (
                f"saddle point: λ_min = {lam_min:.4g} < 0 < λ_max = {lam_max:.4g}; "
                f"{100 * share.value:.3g}% of the eigenvalues lie below the flat band"), None
        if self.values is not None:
            near_zero = int((self.values.abs() <= self.zero_tol).sum())
        else:
            near_zero = int((self.spec.smallest.values.abs() <= self.zero_tol).sum()
                            + (self.spec.largest.values.abs() <= self.zero_tol).sum())
        if near_zero == 0:
            if has_pos:
                return "local_min", f"local minimum: every eigenvalue is positive, λ_min = " \
                                    f"{lam_min:.4g} > {self.zero_tol:.2g}", None
            return "local_max", f"local maximum: every eigenvalue is negative, λ_max = " \
                                f"{lam_max:.4g} < {-self.zero_tol:.2g}", None
        return self._higher_order(has_neg, has_pos, near_zero)

    def _higher_order(self, has_neg, has_pos, near_zero):
        null, rng, rng_values = self._null_and_range()
        rho = max(abs(self.spec.largest.values[0].item()), abs(self.spec.smallest.values[0].item()))
        test = null_direction_test(self.obj, self.theta, null, rng, rng_values, curvature=rho,
                                   seed=self.seed)
        where = (f"{near_zero} eigenvalue(s) within {self.zero_tol:.2g} of zero; higher-order "
                 f"test along {test.directions} null direction(s)")
        if test.witness is not None:
            w = test.witness
            where += f" (e.g. at distance {w['t']:.2g} the loss changes by {w['phi']:.3g})"
        lowers = test.descent or has_neg
        raises = test.ascent or has_pos
        if test.descent and not has_neg:
            return "saddle", f"saddle point (higher order): {where}: a direction lowers the " \
                             "loss arbitrarily close to θ", test
        if test.ascent and has_neg and not has_pos:
            return "saddle", f"saddle point (higher order): {where}: a direction raises the " \
                             "loss although the Hessian is negative semi-definite", test
        complete = self.values is not None and test.flat_directions == 0
        if complete and test.ascent_everywhere and not lowers:
            return "local_min", f"local minimum (higher order): {where}: the loss rises in " \
                                "every probed direction", test
        if complete and not raises and test.descent and not test.ascent:
            return "local_max", f"local maximum (higher order): {where}: the loss falls in " \
                                "every probed direction", test
        why = (f"{test.flat_directions} direction(s) flat to working precision"
               if test.flat_directions else "the sampled directions do not settle it")
        if self.values is None:
            why += "; only the null directions found by Lanczos were probed"
        return "degenerate", f"degenerate critical point: {where}; {why}", test

    def _null_and_range(self):
        if self.values is not None:
            is_null = self.values.abs() <= self.zero_tol
            vectors = self.vectors.to(self.obj.device, self.obj.dtype)
            return (vectors[:, is_null], vectors[:, ~is_null],
                    self.values[~is_null].to(self.obj.device, self.obj.dtype))
        pairs = [self.spec.smallest, self.spec.largest]
        vectors = torch.cat([p.vectors for p in pairs], 1)
        values = torch.cat([p.values for p in pairs])
        is_null = values.abs() <= self.zero_tol
        return vectors[:, is_null], None, None


def _stationarity(loss, grad_norm, rho, lower_bound, descent_rtol, grad_floor) -> dict:
    excess = abs(loss - lower_bound) if lower_bound is not None else abs(loss)
    decrease = _quotient(grad_norm**2, 2 * rho)  # the descent lemma's promise for a 1/ρ step
    ratio = _quotient(decrease, excess)
    critical = ratio <= descent_rtol or grad_norm <= grad_floor
    of = "the excess over the lower bound" if lower_bound is not None else "|L|"
    explanation = (
        f"not a critical point: ‖∇L‖ = {grad_norm:.3g}; one gradient step of size 1/ρ "
        f"(ρ = {rho:.3g}) would lower the loss by ≈ {decrease:.3g}, a fraction {ratio:.3g} of "
        f"{of}, above the tolerance {descent_rtol:g}: training is still sliding"
    )
    return {"critical": critical, "grad_norm": grad_norm, "predicted_decrease": decrease,
            "descent_ratio": ratio, "excess_loss": excess, "grad_noise_floor": grad_floor,
            "newton_distance_lower_bound": grad_norm / rho if rho > 0 else None,
            "explanation": explanation}


def _quotient(a: float, b: float) -> float:
    """a / b for a, b ≥ 0, with 0/0 = 0 (nothing to gain) and a/0 = inf."""
    if a == 0:
        return 0.0
    return a / b if b > 0 else float("inf")


def _condition_number(values, lam_max, lam_min, zero_tol):
    if lam_min > zero_tol:
        return lam_max / lam_min
    if values is None:
        return None
    beyond = values.abs()[values.abs() > zero_tol]
    return (beyond.max() / beyond.min()).item() if beyond.numel() else None
