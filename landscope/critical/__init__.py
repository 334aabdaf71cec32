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
``Probe`` and its ``Tolerances``), ``classify`` (``probe``: the evidence gathered, the tests run
in order).
"""

from landscope._deprecated import old_names
from landscope.critical.classify import probe, used_coordinates
from landscope.critical.first_order import Stationarity
from landscope.critical.record import (
    Probe,
    Tolerances,
    default_global_atol,
    default_zero_rtol,
    index_note,
)
from landscope.kinds import KINDS as KINDS  # the verdicts' vocabulary, also landscope.KINDS

__all__ = ["KINDS", "Probe", "Stationarity", "Tolerances", "default_global_atol",
           "default_zero_rtol", "index_note", "probe", "used_coordinates"]

__getattr__ = old_names(__name__, {"default_rel_tol": "default_zero_rtol",
                                   "default_global_tol": "default_global_atol"})
