"""Where did training stop? ``probe`` classifies the point θ an Objective sits at.

Definitions: θ* is a local minimum when L ≥ L(θ*) in a neighbourhood, strict when L > L(θ*) off
θ*; likewise a maximum; a saddle is a critical point that is neither.

The first test is first-order: is θ a critical point at all? With ρ = max|λ(H)|, the descent
lemma's safe step θ − g/ρ has length s = ‖g‖/ρ, a lower bound on the distance to the stationary
point of the local quadratic model (‖H⁻¹g‖ ≥ ‖g‖/ρ). θ counts as critical when
s ≤ ``step_rtol``·‖θ‖ (at θ = 0, s ≤ ``step_rtol``), never below the rounding floor 10·eps;
otherwise the verdict is ``not_critical`` (still sliding, e.g. along a narrow valley). The ratio
is invariant: L → aL + b (a > 0) maps g → ag, ρ → aρ; θ → cθ maps g → g/c, ρ → ρ/c², ‖θ‖ → c‖θ‖; so
‖g‖/(ρ‖θ‖) is unchanged by both, with or without a known lower bound of L.

The second test is second-order: with zero tolerance τ = ``rel_tol``·ρ, eigenvalues ≤ −τ count as
negative, > τ as positive, the rest as zero. Both signs: saddle. One sign and no zero eigenvalue:
strict local minimum or maximum. Zero eigenvalues and no contrary sign: the higher-order test of
:mod:`landscope.degenerate` reads the loss along the null directions. A direction where it falls
beside one where it rises (or beside a Hessian eigenvalue of the other sign) makes a saddle;
falling everywhere a maximum (−x⁴); rising everywhere a strict minimum (x² + y⁴); flat to working
precision along some directions and rising in all others a non-strict minimum, with the dimension
of the flat directions (x² in R², the valleys of minima that symmetries give networks).
``degenerate`` is left for points the tests cannot settle, and the reason says what was tried.

Parameters the loss does not depend on (``info["unused_parameters"]``) are left out: their exact
zero eigenvalues are not the landscape's, so neither the fractions nor the verdict count them.

The sign fractions (index = fraction negative, minimum ratio = fraction positive) are reported
with a wider band, |λ| ≤ ``flat_band``·ρ counting as flat (default 1% of ρ). At the end of training
most eigenvalues form a bulk just around zero; their signs at a rounding-level tolerance are noise,
and no affordable density estimate resolves them (stochastic Lanczos quadrature resolves about
ρ / steps), so a fraction read at τ would carry an error bar as wide as the bulk. Both tolerances
are recorded in every result, and a negative λ_min inside the band is named in the reason.

On the iterative path a negative Ritz value vᵀHv < −τ (v a unit vector) certifies negative
curvature on its own; "no negative eigenvalue" rests on Lanczos having converged at the bottom end,
whose residuals are reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from landscope._checks import integer
from landscope.degenerate import NullTest, null_direction_test
from landscope.kinds import KINDS as KINDS  # the verdicts' vocabulary, also landscope.KINDS
from landscope.linalg import dense_eigh
from landscope.objective import Objective
from landscope.spectrum import (
    EXACT_MAX_N,
    Density,
    FractionEstimate,
    Spectrum,
    dense_spectrum,
    density,
    embed,
    restricted_hessian,
    spectrum,
)


def default_rel_tol(dtype: torch.dtype) -> float:
    """Zero tolerance for eigenvalues relative to ρ = max|λ|: 1e-6 (float64), 1e-4 (float32)."""
    return 1e-6 if dtype == torch.float64 else 1e-4


def default_global_tol(dtype: torch.dtype) -> float:
    """How close to its lower bound the loss must be to call a minimum global."""
    return 1e-10 if dtype == torch.float64 else 1e-6


@dataclass(frozen=True)
class Stationarity:
    """The first-order test: is θ a critical point?

    step: s = ‖g‖/ρ, the length of the descent lemma's safe step. relative_step: s/‖θ‖ (s itself
    at θ = 0). step_tol: the tolerance on it (never below 10·eps); critical: relative_step ≤
    step_tol. predicted_decrease: ‖g‖²/(2ρ), what that step would gain; descent_ratio: that gain
    over the excess L − L_low (None without a known lower bound). explanation: why θ is not
    critical, in one sentence (used as the reason when it is not).
    """

    critical: bool
    grad_norm: float
    step: float
    theta_norm: float
    relative_step: float
    step_tol: float
    predicted_decrease: float
    descent_ratio: float | None
    explanation: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Probe:
    """The kind of point θ is, with the numbers that show it.

    kind: one of KINDS. reason: one sentence saying why. strict: for a local minimum or maximum,
    whether it is strict (False: the loss is flat to working precision along ``flat_directions``
    directions); None for other kinds. n_unused: parameters the loss does not depend on, left out
    of the spectrum, the fractions and the verdict. index: fraction of negative eigenvalues.
    minimum_ratio: fraction of positive eigenvalues (#positive / #used parameters).
    condition_number: ρ / λ_min at a positive-definite point (the ratio that slows gradient
    descent); on the exact path at other points, max|λ| / min|λ| over the eigenvalues beyond the
    zero tolerance; else None.
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
    strict: bool | None
    flat_directions: int | None
    n_unused: int
    tolerances: dict
    stationarity: Stationarity
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
            "strict": self.strict,
            "flat_directions": self.flat_directions,
            "is_global_min": self.is_global_min,
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "index": self.index,
            "minimum_ratio": self.minimum_ratio,
            "n_unused": self.n_unused,
            "fractions": {name: f.to_dict() for name, f in self.fractions.items()},
            "condition_number": self.condition_number,
            "tolerances": self.tolerances,
            "stationarity": self.stationarity.to_dict(),
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
    step_rtol: float = 1e-6,
    global_tol: float | None = None,
    eig_tol: float | None = None,
    probes: int = 8,
    steps: int = 60,
    exact: bool | None = None,
    seed: int = 0,
    extremes: Spectrum | None = None,
    progress=None,
) -> Probe:
    """Classify θ (default: the Objective's own point) and gather the evidence.

    Parameters
    ----------
    k: eigenpairs computed at each end of the spectrum.
    rel_tol: zero tolerance for eigenvalues relative to ρ = max|λ| (default by dtype), used to
        classify.
    flat_band: eigenvalues with |λ| ≤ flat_band·ρ count as flat in the reported fractions.
    step_rtol: θ is critical when ‖g‖/ρ ≤ step_rtol·‖θ‖ (never below 10·eps).
    global_tol: a minimum is global when L − L_low ≤ global_tol (needs a known lower bound).
    eig_tol: residual tolerance of the iterative eigen-solver (see :func:`spectrum`).
    probes, steps: of the stochastic Lanczos quadrature that estimates the sign fractions.
    exact: force or forbid the dense path (default: dense when n ≤ EXACT_MAX_N).
    extremes: eigenpairs of both ends already computed at θ on the iterative path (the anytime
        probe's second stage), used instead of computing them again.

    Examples
    --------
    >>> p = probe(Objective.from_function(lambda x: x[0]**2 + x[1]**3, [0.0, 0.0]))
    >>> p.kind
    'saddle'
    >>> p = probe(Objective.from_function(lambda x: x[0]**2 + 0 * x[1], [0.0, 0.5]))
    >>> p.kind, p.strict, p.flat_directions
    ('local_min', False, 1)
    """
    integer("k", k)  # at least one eigenpair at each end
    integer("probes", probes)  # checked on every path: the dense one does not read them
    integer("steps", steps)
    theta = obj.point(theta)
    before = dict(obj.counts)
    exact = obj.n <= EXACT_MAX_N if exact is None else exact
    rel_tol = default_rel_tol(obj.dtype) if rel_tol is None else rel_tol
    coords, n_unused = used_coordinates(obj)
    if exact:
        H = restricted_hessian(obj, theta, coords)
        values, vectors = dense_eigh(H)
        spec = dense_spectrum(H, values, vectors, k, k, obj.dtype, coords, obj.n)
        dens = Density("exact", values.numel(), eigenvalues=values, products=obj.n)
        vectors = embed(vectors, coords, obj.n)
    else:
        spec = extremes or spectrum(obj, k, "both", theta=theta, tol=eig_tol, coords=coords,
                                    seed=seed, progress=progress)
        dens = density(obj, probes, steps, theta=theta, exact=False, coords=coords, seed=seed,
                       progress=progress)
        values = vectors = None
    # after the products: the pass that kept their graph also gave L and ∇L at θ
    loss_t, g = obj.value_and_grad(theta)
    loss, grad_norm = loss_t.item(), g.norm().item()
    lam_max, lam_min = spec.largest.values[0].item(), spec.smallest.values[0].item()
    rho = max(abs(lam_max), abs(lam_min))
    zero_tol = rel_tol * rho if rho > 0 else torch.finfo(obj.dtype).tiny
    flat_tol = flat_band * rho if rho > 0 else zero_tol
    fractions = dens.fractions(flat_tol)
    used = theta if coords is None else theta[coords]
    stationarity = _stationarity(grad_norm, rho, used.norm().item(), loss, obj.lower_bound,
                                 step_rtol, torch.finfo(obj.dtype).eps)
    if stationarity.critical:
        decision = _Verdict(obj=obj, theta=theta, values=values, vectors=vectors, spec=spec,
                            fractions=fractions, zero_tol=zero_tol, seed=seed).classify()
    else:
        decision = _Decision("not_critical", stationarity.explanation)
    reason = decision.reason
    global_tol = default_global_tol(obj.dtype) if global_tol is None else global_tol
    is_global = (decision.kind == "local_min" and obj.lower_bound is not None
                 and loss - obj.lower_bound <= global_tol)
    if is_global:
        reason += f"; the loss is within {global_tol:g} of its lower bound {obj.lower_bound:g}"
    tolerances = {"rel_tol": rel_tol, "zero_tol": zero_tol, "flat_band": flat_band,
                  "flat_tol": flat_tol, "step_rtol": step_rtol,
                  "step_tol": stationarity.step_tol, "global_tol": global_tol,
                  "eig_tol": spec.evidence.get("tol")}
    note = index_note(lam_min, fractions["negative"].value, tolerances)
    if note:
        reason += f"; {note}"
    if n_unused:
        reason += f"; {n_unused} parameter(s) the loss does not depend on are left out"
    evidence = {
        "path": "exact" if exact else "iterative",
        "spectrum": spec.evidence,
        "density": dens.to_dict(),
        "null_direction_test": decision.null_test.to_dict() if decision.null_test else None,
        "counts": {key: obj.counts[key] - before[key] for key in obj.counts},
    }
    return Probe(kind=decision.kind, reason=reason, loss=loss, grad_norm=grad_norm,
                 lambda_max=lam_max, lambda_min=lam_min, fractions=fractions,
                 condition_number=_condition_number(values, lam_max, lam_min, zero_tol),
                 is_global_min=is_global, strict=decision.strict,
                 flat_directions=decision.flat_directions, n_unused=n_unused,
                 tolerances=tolerances, stationarity=stationarity, evidence=evidence,
                 info=dict(obj.info), spectrum=spec, density=dens)


def index_note(lam_min: float, index: float, tolerances: dict) -> str:
    """Why the index is 0 beside a negative λ_min: it lies inside the flat band."""
    if not (lam_min < 0 and index == 0):
        return ""
    where = f"inside the ±{100 * tolerances['flat_band']:g} % flat band (|λ| ≤ " \
            f"{tolerances['flat_tol']:.2g})"
    if lam_min >= -tolerances["zero_tol"]:
        where = f"within the zero tolerance {tolerances['zero_tol']:.2g}, and {where}"
    return f"index 0: λ_min = {lam_min:.2g} lies {where}"


def used_coordinates(obj: Objective) -> tuple[torch.Tensor | None, int]:
    """(indices of θ the loss depends on, or None for all; how many it does not depend on)."""
    unused = set(obj.info.get("unused_parameters") or ())
    if not unused:
        return None, 0
    blocks = obj.unflatten(torch.arange(obj.n, device=obj.device))
    mask = torch.ones(obj.n, dtype=torch.bool, device=obj.device)
    for name, index in blocks.items():
        if name in unused:
            mask[index.reshape(-1)] = False
    return mask.nonzero().squeeze(1), int((~mask).sum())


class _Decision(NamedTuple):
    """A verdict on θ: its kind, why, and what the second- or higher-order test found.

    strict and flat_directions: for a local minimum or maximum only. null_test: the higher-order
    test along the null directions, when it ran.
    """

    kind: str
    reason: str
    strict: bool | None = None
    flat_directions: int | None = None
    null_test: NullTest | None = None


@dataclass(frozen=True)
class _Verdict:
    """The second-order decision at a critical point, and the higher-order test where it is
    inconclusive. ``values``/``vectors``: the whole eigendecomposition on the exact path, None on
    the iterative one (then only ``spec``'s end pairs are known)."""

    obj: Objective
    theta: torch.Tensor
    values: torch.Tensor | None
    vectors: torch.Tensor | None
    spec: Spectrum
    fractions: dict[str, FractionEstimate]
    zero_tol: float
    seed: int

    def classify(self) -> _Decision:
        lam_max = self.spec.largest.values[0].item()
        lam_min = self.spec.smallest.values[0].item()
        has_neg, has_pos = lam_min <= -self.zero_tol, lam_max > self.zero_tol
        if has_neg and has_pos:
            share = self.fractions["negative"]
            return _Decision("saddle", f"saddle point: λ_min = {lam_min:.4g} < 0 < λ_max = "
                                       f"{lam_max:.4g}; {100 * share.value:.3g}% of the "
                                       "eigenvalues lie below the flat band")
        if self.values is not None:
            near_zero = int((self.values.abs() <= self.zero_tol).sum())
        else:
            near_zero = int((self.spec.smallest.values.abs() <= self.zero_tol).sum()
                            + (self.spec.largest.values.abs() <= self.zero_tol).sum())
        if near_zero == 0:
            if has_pos:
                return _Decision("local_min", "local minimum (strict): every eigenvalue is "
                                 f"positive, λ_min = {lam_min:.4g} > {self.zero_tol:.2g}",
                                 strict=True, flat_directions=0)
            return _Decision("local_max", "local maximum (strict): every eigenvalue is negative, "
                             f"λ_max = {lam_max:.4g} < {-self.zero_tol:.2g}",
                             strict=True, flat_directions=0)
        return self._higher_order(has_neg, has_pos, near_zero)

    def _higher_order(self, has_neg: bool, has_pos: bool, near_zero: int) -> _Decision:
        null, rng, rng_values = self._null_and_range()
        rho = max(abs(self.spec.largest.values[0].item()), abs(self.spec.smallest.values[0].item()))
        test = null_direction_test(self.obj, self.theta, null, rng, rng_values, curvature=rho,
                                   zero_tol=self.zero_tol, seed=self.seed)
        where = (f"{near_zero} eigenvalue(s) within {self.zero_tol:.2g} of zero; higher-order "
                 f"test along {test.summary()}")
        lowers, raises = has_neg or test.descent, has_pos or test.ascent
        if lowers and raises:
            w = test.witness
            change = "lowers" if w["phi"] < 0 else "raises"
            return _Decision("saddle", (
                f"saddle point (higher order): {where}; at distance {w['t']:.2g} a null direction "
                f"{change} the loss (less its leftover linear part) by {abs(w['phi']):.3g}, "
                f"while {'a negative' if has_neg else 'a positive' if has_pos else 'another'} "
                "direction does the opposite"), null_test=test)
        undecided = []
        if test.outcomes["unsettled"]:
            undecided.append(f"along {test.outcomes['unsettled']} direction(s) the relaxation of "
                             "the other directions left a gain that could reverse the sign")
        if self.values is None:
            undecided.append("only the null directions found by Lanczos were examined (the "
                             "exact path, exact=True, examines the whole null space)")
        elif not test.complete:
            undecided.append(f"only {test.basis_examined} of the {test.null_dim} null basis "
                             "vectors were examined")
        if undecided:
            return _Decision("degenerate", f"degenerate critical point, not settled: {where}; "
                             + "; ".join(undecided), null_test=test)
        kind, name = ("local_max", "maximum") if lowers else ("local_min", "minimum")
        moves = "falls" if lowers else "rises"
        if not test.outcomes["flat"]:
            return _Decision(kind, f"local {name} (strict, higher order): {where}: the loss "
                             f"{moves} in every examined direction, down to radius "
                             f"{test.settled_radius:.2g}", strict=True, flat_directions=0,
                             null_test=test)
        flat = test.flat_dimension
        rest = (f"and {moves} in all others" if lowers or raises
                else "and in every other direction examined: also a non-strict local maximum")
        return _Decision(kind, (f"local {name} (non-strict: {flat} flat direction(s)): {where}; "
                                f"along {flat} direction(s) the loss stays within rounding and "
                                f"½τt² (τ the zero tolerance) at every radius t from "
                                f"{test.flat_radius:.2g} down to {test.radii[-1]:.2g} {rest}"),
                         strict=False, flat_directions=flat, null_test=test)

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


def _stationarity(grad_norm, rho, theta_norm, loss, lower_bound, step_rtol, eps) -> Stationarity:
    step = _quotient(grad_norm, rho)  # the length of the descent lemma's 1/ρ step
    # at θ = 0 exactly there is no scale to be relative to: the step itself is compared
    relative = _quotient(step, theta_norm) if theta_norm > 0 else step
    tol = max(step_rtol, 10 * eps)  # never below rounding: exact fits are not "sliding"
    critical = relative <= tol
    decrease = _quotient(grad_norm**2, 2 * rho)
    ratio = _quotient(decrease, max(loss - lower_bound, 0.0)) if lower_bound is not None else None
    explanation = (
        f"not a critical point: ‖∇L‖ = {grad_norm:.3g}; a gradient step of the safe size 1/ρ "
        f"(ρ = {rho:.3g}) would move θ by {step:.3g}, {relative:.3g} of ‖θ‖ = {theta_norm:.3g}, "
        f"above the tolerance {tol:.2g}: training is still sliding"
    )
    if ratio is not None:
        explanation += (f" (that step would lower the loss by ≈ {decrease:.3g}, a fraction "
                        f"{ratio:.3g} of the excess over the lower bound)")
    return Stationarity(critical=critical, grad_norm=grad_norm, step=step, theta_norm=theta_norm,
                        relative_step=relative, step_tol=tol, predicted_decrease=decrease,
                        descent_ratio=ratio, explanation=explanation)


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
