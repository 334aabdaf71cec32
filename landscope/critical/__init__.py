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

The second test is second-order: with zero tolerance τ = ``zero_rtol``·ρ, eigenvalues ≤ −τ count
as negative, > τ as positive, the rest as zero. Both signs: saddle. One sign and no zero
eigenvalue: strict local minimum or maximum. Zero eigenvalues and no contrary sign: the
higher-order test of :mod:`landscope.degenerate` reads the loss along the null directions. A
direction where it falls beside one where it rises (or beside a Hessian eigenvalue of the other
sign) makes a saddle; falling everywhere a maximum (−x⁴); rising everywhere a strict minimum
(x² + y⁴); flat to working precision along some directions and rising in all others a non-strict
minimum, with the dimension of the flat directions (x² in R², the valleys of minima that
symmetries give networks). ``degenerate`` is left for points the tests cannot settle, and the
reason says what was tried.

Parameters the loss does not depend on (``info["unused_parameters"]``) are left out: their exact
zero eigenvalues are not the landscape's, so neither the fractions nor the verdict count them.

The sign fractions (index = fraction negative, minimum ratio = fraction positive) are reported
with a wider band, |λ| ≤ ``flat_rtol``·ρ counting as flat (default 1% of ρ). At the end of training
most eigenvalues form a bulk just around zero; their signs at a rounding-level tolerance are noise,
and no affordable density estimate resolves them (stochastic Lanczos quadrature resolves about
ρ / lanczos_steps), so a fraction read at τ would carry an error bar as wide as the bulk. Both
tolerances are recorded in every result, and a negative λ_min inside the band is named in the
reason.

On the iterative path a negative Ritz value vᵀHv < −τ (v a unit vector) certifies negative
curvature on its own; "no negative eigenvalue" rests on Lanczos having converged at the bottom end,
whose residuals are reported.

The parts: ``first_order`` (the stationarity test), ``second_order`` (the verdict from the signs
of the eigenvalues, and the higher-order test where they do not settle it), ``record`` (the
``Probe`` and its ``Tolerances``); ``probe`` itself, here, gathers the evidence (eigenpairs at both
ends, the spectral density, L and ∇L) and runs the tests in order.
"""

from __future__ import annotations

import torch

from landscope._checks import integer
from landscope._deprecated import old_names, renamed
from landscope.critical.first_order import Stationarity, stationarity
from landscope.critical.record import (
    Probe,
    Tolerances,
    default_global_atol,
    default_zero_rtol,
    index_note,
)
from landscope.critical.second_order import Decision, Verdict, condition_number
from landscope.kinds import KINDS as KINDS  # the verdicts' vocabulary, also landscope.KINDS
from landscope.linalg import dense_eigh
from landscope.objective import Objective
from landscope.progress import Progress
from landscope.restricted import EXACT_MAX_N, embed, restricted_hessian
from landscope.spectrum import Density, Spectrum, dense_spectrum, density, spectrum

__all__ = ["KINDS", "Probe", "Stationarity", "Tolerances", "default_global_atol",
           "default_zero_rtol", "index_note", "probe", "used_coordinates"]

__getattr__ = old_names(__name__, {"default_rel_tol": "default_zero_rtol",
                                   "default_global_tol": "default_global_atol"})


@renamed(rel_tol="zero_rtol", flat_band="flat_rtol", global_tol="global_atol",
         eig_tol="eig_rtol", steps="lanczos_steps")
def probe(
    obj: Objective,
    theta: torch.Tensor | None = None,
    *,
    k: int = 5,
    zero_rtol: float | None = None,
    flat_rtol: float = 1e-2,
    step_rtol: float = 1e-6,
    global_atol: float | None = None,
    eig_rtol: float | None = None,
    probes: int = 8,
    lanczos_steps: int = 60,
    exact: bool | None = None,
    seed: int = 0,
    extremes: Spectrum | None = None,
    progress: Progress | None = None,
) -> Probe:
    """Classify θ (default: the Objective's own point) and gather the evidence.

    Parameters
    ----------
    k: eigenpairs computed at each end of the spectrum.
    zero_rtol: eigenvalues with |λ| ≤ zero_rtol·ρ (ρ = max|λ|) count as zero in the verdict
        (default by dtype: :func:`default_zero_rtol`).
    flat_rtol: eigenvalues with |λ| ≤ flat_rtol·ρ count as flat in the reported fractions.
    step_rtol: θ is critical when ‖g‖/ρ ≤ step_rtol·‖θ‖ (never below 10·eps).
    global_atol: a minimum is global when L − L_low ≤ global_atol (needs a known lower bound;
        default by dtype: :func:`default_global_atol`).
    eig_rtol: residual tolerance of the iterative eigen-solver, relative to ρ (see
        :func:`landscope.spectrum`).
    probes, lanczos_steps: random probe vectors and Lanczos steps per probe of the stochastic
        Lanczos quadrature that estimates the sign fractions.
    exact: force or forbid the dense path (default: dense when n ≤ EXACT_MAX_N).
    extremes: eigenpairs of both ends already computed at θ on the iterative path (the anytime
        probe's second stage), used instead of computing them again.
    progress: ``progress(done, total, note)`` in Hessian-vector products, passed to the
        eigen-solver and then to the density (each counts its own).

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
    integer("lanczos_steps", lanczos_steps)
    theta = obj.point(theta)
    before = dict(obj.counts)
    exact = obj.n <= EXACT_MAX_N if exact is None else exact
    zero_rtol = default_zero_rtol(obj.dtype) if zero_rtol is None else zero_rtol
    coords, n_unused = used_coordinates(obj)
    if exact:
        H = restricted_hessian(obj, theta, coords)
        values, vectors = dense_eigh(H)
        spec = dense_spectrum(H, values, vectors, k, k, obj.dtype, coords, obj.n)
        dens = Density("exact", values.numel(), eigenvalues=values, products=obj.n)
        vectors = embed(vectors, coords, obj.n)
    else:
        spec = extremes or spectrum(obj, k, "both", theta=theta, eig_rtol=eig_rtol,
                                    coords=coords, seed=seed, progress=progress)
        dens = density(obj, probes, lanczos_steps, theta=theta, exact=False, coords=coords,
                       seed=seed, progress=progress)
        values = vectors = None
    # after the products: the pass that kept their graph also gave L and ∇L at θ
    loss_t, g = obj.value_and_grad(theta)
    loss, grad_norm = loss_t.item(), g.norm().item()
    lam_max, lam_min = spec.largest.values[0].item(), spec.smallest.values[0].item()
    rho = max(abs(lam_max), abs(lam_min))
    zero_atol = zero_rtol * rho if rho > 0 else torch.finfo(obj.dtype).tiny
    flat_atol = flat_rtol * rho if rho > 0 else zero_atol
    fractions = dens.fractions(flat_atol)
    used = theta if coords is None else theta[coords]
    first_order = stationarity(grad_norm, rho, used.norm().item(), loss, obj.lower_bound,
                               step_rtol, torch.finfo(obj.dtype).eps)
    if first_order.critical:
        decision = Verdict(obj=obj, theta=theta, values=values, vectors=vectors, spec=spec,
                           fractions=fractions, zero_atol=zero_atol, seed=seed).classify()
    else:
        decision = Decision("not_critical", first_order.explanation)
    reason = decision.reason
    global_atol = default_global_atol(obj.dtype) if global_atol is None else global_atol
    is_global = (decision.kind == "local_min" and obj.lower_bound is not None
                 and loss - obj.lower_bound <= global_atol)
    if is_global:
        reason += f"; the loss is within {global_atol:g} of its lower bound {obj.lower_bound:g}"
    tolerances = Tolerances(zero_rtol=zero_rtol, zero_atol=zero_atol, flat_rtol=flat_rtol,
                            flat_atol=flat_atol, step_rtol=step_rtol,
                            step_rtol_applied=first_order.step_tol, global_atol=global_atol,
                            eig_rtol=spec.evidence.get("tol"))
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
                 condition_number=condition_number(values, lam_max, lam_min, zero_atol),
                 is_global_min=is_global, strict=decision.strict,
                 flat_directions=decision.flat_directions, n_unused=n_unused,
                 tolerances=tolerances, stationarity=first_order, evidence=evidence,
                 info=dict(obj.info), spectrum=spec, density=dens)


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
