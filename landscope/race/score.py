"""A race's runs scored against the function's ground truth.

Each run is scored by where it ended (its last point polished by Newton onto a critical point
within 1 % of the box's diagonal, see :func:`landscope.functions.locate`, whose kind the probe
assigns; "not_critical" when no critical point is that close), whether that is a global minimum
(to ``global_rtol``), the steps and evaluations (gradients plus Hessian-vector products) until
f − f* ≤ global_rtol·max(1, |f*|) (the records' ``steps_to_tol`` and ``evaluations_to_tol``: keys
kept for the files already written), and — from a start next to a saddle — the steps until it
escaped: farther from the saddle than it started and below the saddle's value. Functions without a
minimum (x² − y²) start next to their saddle by default: there, escaping is the goal.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

import torch

from landscope import functions as zoo
from landscope.critical import probe
from landscope.objective import Objective
from landscope.race.engine import Descent

SUMMARY_FIELDS = ("function", "optimizer", "goal", "lr", "runs", "success_rate", "median_steps",
                  "median_evaluations", "diverged", "unbounded", "best_of_starts", "ends")
RUN_FIELDS = ("function", "optimizer", "lr", "start", "x0", "final_x", "final_value", "status",
              "ended_at", "end_kind", "found_global", "escaped", "success", "steps_to_tol",
              "evaluations_to_tol", "escape_steps", "evaluations_to_escape")


def as_objective(fn: zoo.TestFunction, x0=None) -> Objective:
    """An :class:`~landscope.Objective` of the zoo function ``fn`` at ``x0`` (default: the centre
    of its box). Its lower bound is ``fn.global_min``, so the probe can call a minimum global.

    Examples
    --------
    >>> from landscope import probe
    >>> probe(as_objective(zoo.get("saddle"), [0.0, 0.0])).kind
    'saddle'
    """
    if x0 is None:
        low, high = fn.bounds()
        x0 = (low + high) / 2
    return Objective.from_function(fn.f, x0, lower_bound=fn.global_min, name=fn.name)


def score(fn, run: Descent, X0, saddle, global_rtol: float, classify: bool) -> list[dict]:
    """One record (RUN_FIELDS) per start of ``run``; ``classify`` probes the kind of each end."""
    S = X0.shape[0]
    final = run.points[-1]
    low, high = fn.bounds()
    ends = zoo.locate(fn, final, radius=0.01 * (high - low).norm().item())
    kinds = _kinds(fn, ends) if classify else ["?"] * S
    threshold = global_rtol * max(1.0, abs(fn.global_min or 0.0))
    gap = None if fn.global_min is None else run.values - fn.global_min
    escaped_at = _escapes(fn, run, saddle)
    records = []
    for s in range(S):
        hit = None if gap is None else _first(gap[:, s] <= threshold)
        found = None
        if fn.global_min is not None:
            end_value = fn.f(ends.points[s]).item() if bool(ends.located[s]) else math.inf
            found = bool(end_value - fn.global_min <= threshold and run.status[s] == "ran")
        escape = None if saddle is None else escaped_at[s]
        escaped = None if saddle is None else escape is not None
        records.append({
            "function": fn.name, "optimizer": run.optimizer, "lr": run.lr, "start": s,
            "x0": X0[s].tolist(), "final_x": final[s].tolist(),
            "final_value": run.values[-1, s].item(), "status": run.status[s],
            "ended_at": int(ends.listed[s]), "end_kind": kinds[s], "found_global": found,
            "escaped": escaped, "success": escaped if saddle is not None else found,
            "steps_to_tol": hit, "evaluations_to_tol": _at(run, hit, s),
            "escape_steps": escape, "evaluations_to_escape": _at(run, escape, s)})
    return records


def _kinds(fn, ends) -> list[str]:
    """The probe's kind at each located end (one probe per distinct point), else not_critical."""
    cache, kinds = {}, []
    for point, located in zip(ends.points, ends.located.tolist(), strict=True):
        if not located:
            kinds.append("not_critical")
            continue
        key = tuple(round(v, 7) for v in point.tolist())
        if key not in cache:
            cache[key] = probe(as_objective(fn, point)).kind
        kinds.append(cache[key])
    return kinds


def _escapes(fn, run, saddle) -> list[int | None]:
    if saddle is None:
        return [None] * run.values.shape[1]
    distance = (run.points - saddle).norm(dim=-1)
    away = (distance >= distance[0] * (1 - 1e-12)) & (run.values < fn.f(saddle).item())
    return [_first(away[:, s]) for s in range(away.shape[1])]


def _first(mask: torch.Tensor) -> int | None:
    hits = mask.nonzero()
    return int(hits[0, 0]) if len(hits) else None


def _at(run, step, s) -> int | None:
    return None if step is None else int(run.evaluations[step, s])


def rate_and_steps(records, saddle) -> tuple[float | None, float | None]:
    """The share of runs that reached their goal, and the median steps those runs needed."""
    outcomes = [r["success"] for r in records if r["success"] is not None]
    if not outcomes:  # no goal: f has no minimum and the runs did not start at a saddle
        return None, None
    key = "escape_steps" if saddle is not None else "steps_to_tol"
    needed = [r[key] for r in records if r["success"] and r[key] is not None]
    return sum(outcomes) / len(outcomes), statistics.median(needed) if needed else None


def summarise(fn, name, lr, records, saddle) -> dict:
    """One summary row (SUMMARY_FIELDS) from the records of one optimiser on one function."""
    rate, median_steps = rate_and_steps(records, saddle)
    key = "evaluations_to_escape" if saddle is not None else "evaluations_to_tol"
    evaluations = [r[key] for r in records if r["success"] and r[key] is not None]
    ends = Counter(r["end_kind"] for r in records)
    best = None
    if fn.global_min is not None:
        best = any(r["found_global"] for r in records)
    return {"function": fn.name, "optimizer": name,
            "goal": "escape the saddle" if saddle is not None else (
                "global minimum" if fn.global_min is not None else "—"),
            "lr": lr, "runs": len(records), "success_rate": rate, "median_steps": median_steps,
            "median_evaluations": statistics.median(evaluations) if evaluations else None,
            "diverged": sum(r["status"] == "diverged" for r in records),
            "unbounded": sum(r["status"] == "unbounded" for r in records),
            "best_of_starts": best,
            "ends": " · ".join(f"{kind} {count}" for kind, count in ends.most_common())}
