"""The verdict at a critical point from the signs of the Hessian's eigenvalues (zero within
τ = zero_rtol·ρ), and, where zero eigenvalues leave it open, from the higher-order test along the
null directions (:mod:`landscope.degenerate`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from landscope.degenerate import NullTest, null_direction_test
from landscope.objective import Objective
from landscope.spectrum import FractionEstimate, Spectrum


class Decision(NamedTuple):
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
class Verdict:
    """The second-order decision at a critical point, and the higher-order test where it is
    inconclusive. ``values``/``vectors``: the whole eigendecomposition on the exact path, None on
    the iterative one (then only ``spec``'s end pairs are known). ``zero_atol``: τ, the
    eigenvalues with |λ| ≤ τ count as zero."""

    obj: Objective
    theta: torch.Tensor
    values: torch.Tensor | None
    vectors: torch.Tensor | None
    spec: Spectrum
    fractions: dict[str, FractionEstimate]
    zero_atol: float
    seed: int

    def classify(self) -> Decision:
        lam_max = self.spec.largest.values[0].item()
        lam_min = self.spec.smallest.values[0].item()
        has_neg, has_pos = lam_min <= -self.zero_atol, lam_max > self.zero_atol
        if has_neg and has_pos:
            share = self.fractions["negative"]
            return Decision("saddle", f"saddle point: λ_min = {lam_min:.4g} < 0 < λ_max = "
                                      f"{lam_max:.4g}; {100 * share.value:.3g}% of the "
                                      "eigenvalues lie below the flat band")
        if self.values is not None:
            near_zero = int((self.values.abs() <= self.zero_atol).sum())
        else:
            near_zero = int((self.spec.smallest.values.abs() <= self.zero_atol).sum()
                            + (self.spec.largest.values.abs() <= self.zero_atol).sum())
        if near_zero == 0:
            if has_pos:
                return Decision("local_min", "local minimum (strict): every eigenvalue is "
                                f"positive, λ_min = {lam_min:.4g} > {self.zero_atol:.2g}",
                                strict=True, flat_directions=0)
            return Decision("local_max", "local maximum (strict): every eigenvalue is negative, "
                            f"λ_max = {lam_max:.4g} < {-self.zero_atol:.2g}",
                            strict=True, flat_directions=0)
        return self._higher_order(has_neg, has_pos, near_zero)

    def _higher_order(self, has_neg: bool, has_pos: bool, near_zero: int) -> Decision:
        null, rng, rng_values = self._null_and_range()
        rho = max(abs(self.spec.largest.values[0].item()), abs(self.spec.smallest.values[0].item()))
        test = null_direction_test(self.obj, self.theta, null, rng, rng_values, curvature=rho,
                                   zero_atol=self.zero_atol, seed=self.seed)
        where = (f"{near_zero} eigenvalue(s) within {self.zero_atol:.2g} of zero; higher-order "
                 f"test along {test.summary()}")
        lowers, raises = has_neg or test.descent, has_pos or test.ascent
        if lowers and raises:
            w = test.witness
            change = "lowers" if w["phi"] < 0 else "raises"
            return Decision("saddle", (
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
            return Decision("degenerate", f"degenerate critical point, not settled: {where}; "
                            + "; ".join(undecided), null_test=test)
        kind, name = ("local_max", "maximum") if lowers else ("local_min", "minimum")
        moves = "falls" if lowers else "rises"
        if not test.outcomes["flat"]:
            return Decision(kind, f"local {name} (strict, higher order): {where}: the loss "
                            f"{moves} in every examined direction, down to radius "
                            f"{test.settled_radius:.2g}", strict=True, flat_directions=0,
                            null_test=test)
        flat = test.flat_dimension
        rest = (f"and {moves} in all others" if lowers or raises
                else "and in every other direction examined: also a non-strict local maximum")
        return Decision(kind, (f"local {name} (non-strict: {flat} flat direction(s)): {where}; "
                               f"along {flat} direction(s) the loss stays within rounding and "
                               f"½τt² (τ the zero tolerance) at every radius t from "
                               f"{test.flat_radius:.2g} down to {test.radii[-1]:.2g} {rest}"),
                        strict=False, flat_directions=flat, null_test=test)

    def _null_and_range(self):
        if self.values is not None:
            is_null = self.values.abs() <= self.zero_atol
            vectors = self.vectors.to(self.obj.device, self.obj.dtype)
            return (vectors[:, is_null], vectors[:, ~is_null],
                    self.values[~is_null].to(self.obj.device, self.obj.dtype))
        pairs = [self.spec.smallest, self.spec.largest]
        vectors = torch.cat([p.vectors for p in pairs], 1)
        values = torch.cat([p.values for p in pairs])
        is_null = values.abs() <= self.zero_atol
        return vectors[:, is_null], None, None


def condition_number(values: torch.Tensor | None, lam_max: float, lam_min: float,
                     zero_atol: float) -> float | None:
    """ρ / λ_min at a positive-definite point; else, with all the eigenvalues known,
    max|λ| / min|λ| over those beyond the zero tolerance; else None."""
    if lam_min > zero_atol:
        return lam_max / lam_min
    if values is None:
        return None
    beyond = values.abs()[values.abs() > zero_atol]
    return (beyond.max() / beyond.min()).item() if beyond.numel() else None
