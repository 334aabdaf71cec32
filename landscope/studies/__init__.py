"""Studies: reproducible runs that draw a published figure's counterpart and check a number.

A study is a function ``run(scale, seed) -> StudyResult``: the numbers behind its figure
(``figures``), the quantitative checks against a closed form or the paper (``checks``), and a
``draw(result)`` that turns those numbers into a matplotlib figure without recomputing them.
Every study has a ``small`` scale that runs in CI and a ``full`` scale for the documented figure.
``STUDIES`` maps each name to its :class:`Study`; a new study is a module of this package that
registers itself with :func:`register` (every module here is imported at the bottom of this one).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from landscope import _checks as checks
from landscope.errors import BadInputError

SCALES = ("small", "full")


@dataclass
class Check:
    """One quantitative check: what was measured, what it should be, and whether it is."""

    name: str
    measured: str
    expected: str
    passed: bool


@dataclass
class StudyResult:
    """A study's run: its settings, the numbers its figure shows, and its checks."""

    name: str
    scale: str
    seed: int
    settings: dict
    figures: dict
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict:
        return {"study": self.name, "scale": self.scale, "seed": self.seed,
                "settings": self.settings, "figures": self.figures,
                "checks": [asdict(check) for check in self.checks], "passed": self.passed,
                "seconds": self.seconds}


@dataclass(frozen=True)
class Study:
    """A registered study: its name, what it reproduces, how to run it and how to draw it."""

    name: str
    summary: str
    run: Callable[[str, int], StudyResult]
    draw: Callable[[StudyResult], object]


STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    STUDIES[study.name] = study
    return study


def get(name: str) -> Study:
    """The study called ``name``; an unknown name is refused with the known ones."""
    return STUDIES[checks.choice("name", name, STUDIES)]


def run(name: str, scale: str = "small", seed: int = 0) -> StudyResult:
    """Run the study called ``name`` at ``scale`` ("small" or "full") from ``seed``."""
    study = get(name)
    return study.run(checks.choice("scale", scale, SCALES), seed)


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p̂ = k/m:
    (p̂ + z²/2m ± z·√(p̂(1−p̂)/m + z²/4m²)) / (1 + z²/m); z = 1.96 for 95 %."""
    if trials < 1:
        raise BadInputError(f"trials={trials}; a proportion needs at least one trial")
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    scale = 1 + z * z / trials
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def _import_all() -> None:
    """Import every study module of this package: each registers itself on import."""
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{module.name}")


_import_all()
