"""What a probe found: the ``Probe`` record, the ``Tolerances`` it used, their default values, and
the note that explains an index of 0 beside a negative λ_min."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from landscope._deprecated import warn_renamed
from landscope.critical.first_order import Stationarity
from landscope.spectrum import Density, FractionEstimate, Spectrum


def default_zero_rtol(dtype: torch.dtype) -> float:
    """Zero tolerance for eigenvalues relative to ρ = max|λ|: 1e-6 (float64), 1e-4 (float32)."""
    return 1e-6 if dtype == torch.float64 else 1e-4


def default_global_atol(dtype: torch.dtype) -> float:
    """How close to its lower bound the loss must be to call a minimum global."""
    return 1e-10 if dtype == torch.float64 else 1e-6


FILE_KEYS = {"zero_rtol": "rel_tol", "zero_atol": "zero_tol", "flat_rtol": "flat_band",
             "flat_atol": "flat_tol", "step_rtol": "step_rtol", "step_rtol_applied": "step_tol",
             "global_atol": "global_tol", "eig_rtol": "eig_tol"}
"""Each tolerance's key in result files (the keys of 0.1, kept so that old files still read)."""


@dataclass(frozen=True)
class Tolerances:
    """The tolerances a probe used, each named by what it compares (ρ = max|λ|).

    zero_rtol, zero_atol: |λ| ≤ zero_atol = zero_rtol·ρ counts as zero in the verdict.
    flat_rtol, flat_atol: |λ| ≤ flat_atol = flat_rtol·ρ counts as flat in the reported fractions.
    step_rtol: the first-order test's tolerance asked for; step_rtol_applied: max(step_rtol,
    10·eps), the one ‖g‖/(ρ‖θ‖) was compared with. global_atol: a minimum is global when
    L − L_low ≤ global_atol. eig_rtol: the iterative eigen-solver's residual tolerance relative
    to ρ (None on the dense path).

    >>> t = Tolerances(1e-6, 2e-6, 1e-2, 2e-2, 1e-6, 1e-6, 1e-10, None)
    >>> t.zero_atol, t.to_dict()["zero_tol"]
    (2e-06, 2e-06)
    """

    zero_rtol: float
    zero_atol: float
    flat_rtol: float
    flat_atol: float
    step_rtol: float
    step_rtol_applied: float
    global_atol: float
    eig_rtol: float | None

    def to_dict(self) -> dict:
        """The tolerances under their result-file keys (:data:`FILE_KEYS`)."""
        return {FILE_KEYS[name]: value for name, value in asdict(self).items()}

    def __getitem__(self, key: str) -> float | None:
        """The reading of 0.1, when ``Probe.tolerances`` was a dict keyed as the result file:
        still served, with a warning naming the attribute."""
        names = {old: new for new, old in FILE_KEYS.items()}
        if key not in names:
            raise KeyError(key)
        warn_renamed(f"Probe.tolerances[{key!r}]", f"Probe.tolerances.{names[key]}", stacklevel=3)
        return getattr(self, names[key])


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
    zero tolerance; else None. tolerances: the :class:`Tolerances` used.
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
    tolerances: Tolerances
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
            "tolerances": self.tolerances.to_dict(),
            "stationarity": self.stationarity.to_dict(),
            "spectrum": self.spectrum.to_dict(),
            "density": self.density.to_dict(),
            "evidence": self.evidence,
            "objective": self.info,
        }


def index_note(lam_min: float, index: float, tolerances: Tolerances) -> str:
    """Why the index is 0 beside a negative λ_min: it lies inside the flat band."""
    if not (lam_min < 0 and index == 0):
        return ""
    where = f"inside the ±{100 * tolerances.flat_rtol:g} % flat band (|λ| ≤ " \
            f"{tolerances.flat_atol:.2g})"
    if lam_min >= -tolerances.zero_atol:
        where = f"within the zero tolerance {tolerances.zero_atol:.2g}, and {where}"
    return f"index 0: λ_min = {lam_min:.2g} lies {where}"
