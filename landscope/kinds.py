"""The kinds of critical point, and the record of a known one.

A critical point is a θ with ∇L(θ) = 0; its kind is what the second-order test (and, where the
Hessian is singular, the higher-order one) makes of it: one of :data:`KINDS`. The probe's verdicts
and the test-function zoo's ground truth share this vocabulary, so it lives here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from landscope import _checks as checks

KINDS = ("local_min", "saddle", "local_max", "degenerate", "not_critical")


@dataclass(frozen=True)
class CriticalPoint:
    """A point where ∇f = 0: its location, its kind (one of ``landscope.KINDS``), f there.

    ``isolated`` is False for a representative of a set of critical points (a symmetry orbit):
    there the Hessian is singular along the set, and a second-order test cannot see more.
    """

    location: tuple[float, ...]
    kind: str
    value: float
    note: str = ""
    isolated: bool = True

    def __post_init__(self):
        checks.choice("kind", self.kind, KINDS)

    def tensor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The location as a 1-D tensor."""
        return torch.tensor(self.location, dtype=dtype)
