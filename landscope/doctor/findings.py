"""Findings and the diagnosis that ranks them.

What is hard: one cause shows several symptoms (an all-zero initialisation also leaves a saddle, a
too-large learning rate also makes the gradients overflow). Ranking is by severity first; within a
severity, a finding that another present finding explains (``EXPLAINS``) comes after it and says
so; ties go to the finding furthest past its threshold (``strength``, the ratio to the threshold).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from landscope.doctor.knowledge import TEXT

SEVERITIES = ("critical", "warning")

EXPLAINS: dict[str, set[str]] = {
    "symmetric_init": {"saddle", "poor_minimum", "vanishing_gradients", "dead_relus",
                       "lr_too_small", "narrow_valley"},
    "lr_too_large": {"exploding_gradients", "dead_relus", "saturation"},
    "narrow_valley": {"lr_too_large"},
    "saturation": {"vanishing_gradients"},
    "vanishing_gradients": {"saddle", "poor_minimum", "lr_too_small"},
    "dead_relus": {"vanishing_gradients", "poor_minimum"},
    "saddle": {"lr_too_small"},
    "poor_minimum": {"lr_too_small"},
}
"""cause → the findings it accounts for when both are present."""


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a run, with the numbers that show it.

    name: a key of ``knowledge.TEXT``. severity: "critical" or "warning". summary: one sentence
    with the decisive numbers. evidence: the numbers, thresholds included. steps: where they were
    seen. strength: how far past its threshold (≥ 1). explained_by: a ranked-higher cause, if any.
    """

    name: str
    severity: str
    summary: str
    evidence: dict
    steps: list[int]
    strength: float = 1.0
    explained_by: str | None = None

    @property
    def title(self) -> str:
        return TEXT[self.name]["title"]

    @property
    def explanation(self) -> str:
        return TEXT[self.name]["explanation"]

    @property
    def remedies(self) -> list[str]:
        return TEXT[self.name]["remedies"]

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "severity": self.severity,
                "summary": self.summary, "evidence": self.evidence, "steps": self.steps,
                "strength": self.strength, "explained_by": self.explained_by,
                "explanation": self.explanation, "remedies": self.remedies}


@dataclass(frozen=True)
class Diagnosis:
    """The ranked findings about one run and a summary of the run.

    ``healthy`` is True when nothing was found; ``primary`` is the top-ranked finding (or None).
    """

    findings: list[Finding]
    summary: dict = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return not self.findings

    @property
    def primary(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def names(self) -> list[str]:
        return [f.name for f in self.findings]

    def to_dict(self) -> dict:
        return {"healthy": self.healthy, "summary": self.summary,
                "findings": [f.to_dict() for f in self.findings]}


def rank(findings: list[Finding]) -> list[Finding]:
    """Order by severity, then causes before what they explain, then strength."""
    present = {f.name for f in findings}
    marked = []
    for f in findings:
        cause = next((c for c in EXPLAINS if c in present and c != f.name
                      and f.name in EXPLAINS[c]
                      and SEVERITIES.index(_by_name(findings, c).severity)
                      <= SEVERITIES.index(f.severity)), None)
        marked.append(replace(f, explained_by=cause))
    return sorted(marked, key=lambda f: (SEVERITIES.index(f.severity),
                                         f.explained_by is not None, -f.strength))


def _by_name(findings: list[Finding], name: str) -> Finding:
    return next(f for f in findings if f.name == name)
