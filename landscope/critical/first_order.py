"""The first-order test: is θ a critical point? The descent lemma's safe step s = ‖g‖/ρ against
‖θ‖ (ρ = max|λ(H)|): critical when s ≤ step_rtol·‖θ‖, never below the rounding floor 10·eps."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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


def stationarity(grad_norm: float, rho: float, theta_norm: float, loss: float,
                 lower_bound: float | None, step_rtol: float, eps: float) -> Stationarity:
    """The test at θ from ‖g‖, ρ, ‖θ‖ and L (and L's lower bound, when known).

    >>> stationarity(1e-9, 2.0, 1.0, 0.5, None, 1e-6, 2.2e-16).critical
    True
    """
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
