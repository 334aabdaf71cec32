"""Findings and the diagnosis that ranks them.

What is hard: one cause shows several symptoms (an all-zero initialisation also leaves a saddle, a
too-large learning rate also makes the gradients overflow, and the blow-up then saturates or kills
units, which starves the first layers of gradient). The primary finding must be the cause, so the
ranking follows a causality table, not the size of the symptoms: ``CAUSES`` lists what each
finding directly produces, ``EXPLAINS`` its transitive closure (a diverging run explains the
vanishing gradients its dead ReLUs cause). A finding that a present finding explains comes after
it and names it (``explained_by``: the root of the chain), unless the cause is the less severe
(a suspicion never demotes a certainty) and only inferred. A cause that is observed directly
(``OBSERVED``: a measured fraction of dead or saturated units, negative curvature at a stall, equal
rows) outranks its consequences whatever the severities, and its chain takes the severity of the
worst finding it explains: dead ReLUs that starve the first layers come before the critical
vanishing gradients. A finding's own evidence can show what it produced in this run
(``Finding.produces``: a start next to the origin came before the vanishing gradients, weights
that overflow at step 0 before the learning rate could act); such an observed edge counts like an
observed cause and overrides the table's opposite edge. Onset order (``Finding.onset``, the
first step a finding's signal was seen, where its rule knows one): a cause cannot start after
its effect, so a table edge c → f is dropped where f was seen before c (by more than
``ONSET_SLACK`` steps); and an observed root
seen before every other finding with an onset ranks first, whatever the severities (tanh units
saturated from step 0 come before a blow-up at step 280). Otherwise ranking is by severity, then
by how far past its threshold a finding is (``strength``, the ratio to the threshold).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from landscope.doctor.knowledge import TEXT

SEVERITIES = ("critical", "warning")

CAUSES: dict[str, set[str]] = {
    "symmetric_init": {"saddle", "poor_minimum", "vanishing_gradients", "dead_relus",
                       "lr_too_small", "narrow_valley"},
    "lr_too_large": {"exploding_gradients", "dead_relus", "saturation", "vanishing_gradients",
                     "saddle", "poor_minimum", "narrow_valley"},
    "exploding_gradients": {"dead_relus", "saturation", "vanishing_gradients"},
    "saturation": {"vanishing_gradients"},
    "vanishing_gradients": {"saddle", "poor_minimum", "lr_too_small"},
    "dead_relus": {"vanishing_gradients", "poor_minimum"},
    "saddle": {"lr_too_small"},
    "poor_minimum": {"lr_too_small"},
}
"""cause → the findings it directly produces (a blow-up leaves a stall at a poor level too; a
rate past the stability limit bounces between the walls of the valley it cannot descend). Where a
run's evidence shows the reverse order (a start at the origin, a saddle of the network, then
vanishing gradients), the finding says so in ``Finding.produces``, which overrides the table."""

OBSERVED = {"dead_relus", "saturation", "saddle", "symmetric_init"}
"""Findings that measure their mechanism itself, not a symptom of it: as causes they outrank."""


ONSET_SLACK = 10
"""Steps by which onsets must differ to order two findings: the loss rules read a 10-step moving
median, which lags a rise, and activations are recorded every few steps."""


def _closure(direct: dict[str, set[str]]) -> dict[str, set[str]]:
    """Everything each cause produces through chains of ``direct`` (which must have no cycle)."""
    out: dict[str, set[str]] = {}

    def reach(name: str, path: tuple[str, ...]) -> set[str]:
        if name in path:
            raise ValueError(f"the causality table has a cycle: {' → '.join(path + (name,))}")
        if name not in out:
            out[name] = set().union(*({e} | reach(e, path + (name,))
                                      for e in direct.get(name, ())))
        return out[name]

    for name in direct:
        reach(name, ())
    return {name: out[name] for name in direct}


EXPLAINS = _closure(CAUSES)
"""cause → every finding it accounts for when both are present."""


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One thing wrong with a run, with the numbers that show it (built by keyword).

    name: a key of ``knowledge.TEXT``. severity: "critical" or "warning". summary: one sentence
    with the decisive numbers. evidence: the numbers, thresholds included. steps: where they were
    seen. strength: how far past its threshold (≥ 1). explained_by: a ranked-higher cause, if any.
    produces: findings this run's evidence shows it caused (overriding ``CAUSES``; see ``rank``).
    onset: the first step its signal was seen (None: its rule reads only the final window).
    first: the keys of the remedies this run's evidence points to, put before the others (an
    exploding *start* is the initialisation's to fix before the rate's).
    in_use: {remedy text: what the run already uses} for the remedies left out as moot.
    """

    name: str
    severity: str
    summary: str
    evidence: dict
    steps: list[int]
    strength: float = 1.0
    explained_by: str | None = None
    produces: tuple[str, ...] = ()
    onset: int | None = None
    first: tuple[str, ...] = ()
    in_use: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return TEXT[self.name]["title"]

    @property
    def explanation(self) -> str:
        return TEXT[self.name]["explanation"]

    @property
    def remedies(self) -> list[str]:
        """The remedies, those in ``first`` first, then the others most effective first, less
        those the run already uses."""
        listed = TEXT[self.name]["remedies"]
        rank = {key: i for i, key in enumerate(self.first)}
        ordered = sorted(listed, key=lambda r: rank.get(r.key, len(rank)))  # stable
        return [r.text for r in ordered if r.text not in self.in_use]

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "severity": self.severity,
                "summary": self.summary, "evidence": self.evidence, "steps": self.steps,
                "strength": self.strength, "explained_by": self.explained_by,
                "produces": list(self.produces), "onset": self.onset,
                "explanation": self.explanation, "remedies": self.remedies,
                "already_in_use": self.in_use}


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
    """Order by severity, then causes before what they explain, then strength; mark each
    explained finding with the root cause of its chain (see the module docstring)."""
    order = sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), -f.strength))

    def produced(f: Finding) -> set[str]:
        """What f's own evidence shows it caused, with everything that explains in turn."""
        return set().union(*({p} | EXPLAINS.get(p, set()) for p in f.produces))

    def before(f: Finding, g: Finding) -> bool:
        """f was seen more than ``ONSET_SLACK`` steps before g (both onsets known)."""
        return f.onset is not None and g.onset is not None and f.onset + ONSET_SLACK < g.onset

    def causes(f: Finding) -> list[Finding]:
        return [c for c in order if c is not f and f.name in produced(c) or (
            f.name in EXPLAINS.get(c.name, ()) and c.name not in produced(f)
            and not before(f, c)
            and (c.name in OBSERVED
                 or SEVERITIES.index(c.severity) <= SEVERITIES.index(f.severity)))]

    marked = []
    for f in order:
        found = causes(f)
        roots = [c for c in found if not causes(c)]
        marked.append(replace(f, explained_by=(roots or found)[0].name if found else None))

    def severity(f: Finding) -> int:
        """A root's: the worst of its chain's; an explained finding's: its own."""
        chain = [g for g in marked if g.explained_by == f.name] if f.explained_by is None else []
        return min(SEVERITIES.index(g.severity) for g in [f, *chain])

    def first_observed(f: Finding) -> bool:
        """An observed root seen before every other finding with an onset (and one has)."""
        timed = [g for g in marked if g is not f and g.onset is not None]
        return bool(f.explained_by is None and f.name in OBSERVED and timed
                    and all(before(f, g) for g in timed))

    return sorted(marked, key=lambda f: (not first_observed(f), severity(f),
                                         f.explained_by is not None, -f.strength))
