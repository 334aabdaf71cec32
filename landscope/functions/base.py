"""What a zoo function is: a batched f: (..., n) → (...), its box, and its known critical points.

What is hard is not f but the ground truth beside it. Each function carries every critical point
in its box where that list is finite and known (closed forms, or Newton-polished literature values
whose completeness the tests re-check by Newton from a grid of starts), each with the kind that the
maths assigns in :data:`landscope.KINDS` and its value. Where minima are not isolated (symmetries,
as in a deep linear network), one representative stands for each critical set and ``invariant``
maps any point to what identifies its set, so that matching an end point to a listed point works.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from landscope._deprecated import renamed
from landscope.errors import BadInputError
from landscope.kinds import CriticalPoint


@dataclass(frozen=True, eq=False)
class TestFunction:
    """A test function of the zoo with its ground truth.

    Attributes
    ----------
    name, formula: how to call it, and the formula in one line.
    f: the function on a batch, ``(..., n) -> (...)``; ``fn(x)`` is the same.
    domain: the box ``((low, high), ...)`` of its pictures, its uniform starts and its lists.
    critical_points: the known critical points in the box.
    complete: True when ``critical_points`` holds every critical point in the box (up to
        ``invariant`` where critical points come in sets).
    global_min: the lowest value of f on all of Rⁿ (inside the box for every function here), or
        None when f is unbounded below.
    invariant: maps points ``(..., n)`` to coordinates that identify a critical set (default:
        the point itself).
    note: what else a user should know.

    Examples
    --------
    >>> from landscope import functions
    >>> fn = functions.get("himmelblau")
    >>> [p.kind for p in fn.critical_points].count("local_min")
    4
    >>> float(fn(torch.tensor([3.0, 2.0], dtype=torch.float64)))
    0.0
    """

    __test__ = False  # not a pytest test class, despite its name

    name: str
    formula: str
    f: Callable[[torch.Tensor], torch.Tensor]
    domain: tuple[tuple[float, float], ...]
    critical_points: tuple[CriticalPoint, ...]
    complete: bool
    global_min: float | None
    invariant: Callable[[torch.Tensor], torch.Tensor] | None = None
    note: str = ""
    params: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Number of coordinates n."""
        return len(self.domain)

    @property
    def minimisers(self) -> tuple[CriticalPoint, ...]:
        """The listed global minimisers."""
        if self.global_min is None:
            return ()
        return tuple(p for p in self.critical_points
                     if p.kind == "local_min" and math.isclose(p.value, self.global_min,
                                                               rel_tol=1e-9, abs_tol=1e-12))

    def __call__(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.shape[-1:] != (self.dim,):
            raise BadInputError(f"{self.name} takes points of {self.dim} coordinates (shape "
                                f"(..., {self.dim})); got shape {tuple(x.shape)}")
        return self.f(x)

    def bounds(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """The box as two tensors (low, high) of shape (n,)."""
        box = torch.tensor(self.domain, dtype=dtype)
        return box[:, 0], box[:, 1]

    @renamed(count="points")
    def sample(self, points: int, generator: torch.Generator) -> torch.Tensor:
        """That many points drawn uniformly from the box: shape (points, n), float64."""
        low, high = self.bounds()
        u = torch.rand(points, self.dim, generator=generator, dtype=torch.float64)
        return low + u * (high - low)

    def identify(self, x: torch.Tensor) -> torch.Tensor:
        """``invariant(x)``: coordinates that identify the critical set of x (x by default)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        return x if self.invariant is None else self.invariant(x)

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For points ``(S, n)``: the index of the nearest listed critical point and the distance
        to it, measured in ``invariant`` coordinates. Index −1 when nothing is listed."""
        x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, self.dim)
        if not self.critical_points:
            return (torch.full((len(x),), -1, dtype=torch.long),
                    torch.full((len(x),), math.inf, dtype=torch.float64))
        listed = self.identify(torch.stack([p.tensor() for p in self.critical_points]))
        distance = torch.cdist(self.identify(x).reshape(len(x), -1),
                               listed.reshape(len(listed), -1))
        best = distance.min(dim=1)
        return best.indices, best.values


def critical(location, kind: str, value: float, note: str = "", isolated: bool = True):
    """Shorthand used by the zoo's modules: ``CriticalPoint`` with a tuple of floats."""
    return CriticalPoint(tuple(float(v) for v in location), kind, float(value), note, isolated)
