"""The race: optimisers × functions × seeded starts, scored against known answers.

What is hard is being fair. Every optimiser gets the same starts (drawn from the seed, per
function), the same step budget and the same tuning budget: ``tune`` learning rates
lr₀ · 10^linspace(−1, 1, tune) around its stated default lr₀, chosen on ``tune_starts`` other starts
by success rate, then median steps, then median final value. Optional zero-mean gradient noise
mimics mini-batches. Every random number comes from the seed, so a race is bit-reproducible.
Each run is scored against the function's ground truth by :mod:`landscope.race.score`.

Under ``torch.distributed`` (a process group of more than one rank) the ranks share the race's
independent pieces of work, each seeded on its own (:func:`~landscope.race.derive_seed`):
every (function, optimiser) pair (its tuning, descent and scoring) and every strategy row. Rank r
does every w-th piece; every rank gathers all of them and assembles the result in the order of one
process, so the result and its files are those of one process.
"""

from __future__ import annotations

import inspect
import math
import statistics
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from landscope import _checks as checks
from landscope import distributed, io, optim
from landscope import functions as zoo
from landscope._deprecated import old_names, renamed
from landscope.errors import BadInputError
from landscope.progress import Progress
from landscope.race.engine import Descent, derive_seed, descend
from landscope.race.score import RUN_FIELDS, SUMMARY_FIELDS, rate_and_steps, score, summarise
from landscope.race.strategies import STRATEGIES, search

DEFAULT_FUNCTIONS = ("saddle", "six_hump_camel", "rosenbrock")
DEFAULT_OPTIMIZERS = optim.NAMES
START_MODES = ("auto", "uniform", "saddle")


@dataclass(frozen=True)
class Race:
    """Everything a race measured.

    settings: the race's arguments. runs: one record per (function, optimiser, start) with the
    fields RUN_FIELDS. summary: one row per (function, optimiser or strategy), SUMMARY_FIELDS.
    descents: the full paths, keyed by (function, optimiser). functions: the TestFunctions raced.
    saddles: the saddle each function's starts were placed next to (or None).
    """

    settings: dict
    runs: list[dict]
    summary: list[dict]
    descents: dict[tuple[str, str], Descent]
    functions: dict[str, zoo.TestFunction]
    saddles: dict[str, tuple | None]

    def to_dict(self) -> dict:
        """Settings, summary and per-run records (no paths) for ``io.write_result``."""
        return {"settings": self.settings, "summary": self.summary, "runs": self.runs}

    def write_csv(self, directory: str | Path) -> tuple[Path, Path]:
        """``race-summary.csv`` and ``race-runs.csv`` in ``directory``; returns their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = directory / "race-summary.csv", directory / "race-runs.csv"
        return (io.write_csv(paths[0], self.summary, SUMMARY_FIELDS),
                io.write_csv(paths[1], self.runs, RUN_FIELDS))


@renamed(tol="global_rtol")
def race(functions=DEFAULT_FUNCTIONS, optimizers=DEFAULT_OPTIMIZERS, *, starts: int = 32,
         steps: int = 300, start: str = "auto", tune: int = 3, tune_starts: int = 8,
         noise: float = 0.0, global_rtol: float = 1e-6, strategies=STRATEGIES,
         strategy_runs: int = 8, seed: int = 0, progress: Progress | None = None) -> Race:
    """Race ``optimizers`` on ``functions`` from ``starts`` seeded starts each.

    Parameters
    ----------
    functions: zoo names or :class:`~landscope.functions.TestFunction` objects.
    optimizers: names (see ``landscope.optim.NAMES``, or torch.optim class names) or
        :class:`~landscope.optim.Recipe` objects for your own optimiser.
    start: "uniform" in the box, "saddle" (next to the first listed saddle: along its
        positive-curvature directions at half the box's smallest half-width, plus 1e-8 along
        the others), or "auto" (saddle for functions without a global minimum).
    tune: learning rates tried per optimiser and function (1: the stated defaults only).
    noise: standard deviation of Gaussian noise added to every gradient.
    global_rtol: f − f* ≤ global_rtol·max(1, |f*|) counts as having reached the global
        minimum.
    strategies, strategy_runs: global strategies (``landscope.race.STRATEGIES``), each run
        ``strategy_runs`` times with its own seed on functions with a global minimum; multi-start
        (Adam) gets the race's ``starts`` and ``steps``, annealing and the genetic algorithm
        scipy's defaults.
    progress: ``progress(done, total, note)`` (:class:`~landscope.progress.Progress`) before
        each piece of work and once at the end: ``done`` (function, optimiser or strategy)
        pairs of ``total`` (this process's share under a process group), ``note`` the pair now
        running, e.g. "saddle: adam".

    Examples
    --------
    >>> result = race(["saddle"], ["gd", "newton", "saddle_free_newton"], starts=4, steps=100,
    ...               tune=1, strategies=())
    >>> [(row["optimizer"], row["success_rate"]) for row in result.summary]
    [('gd', 0.0), ('newton', 0.0), ('saddle_free_newton', 1.0)]
    """
    fns = [zoo.get(f) for f in functions]
    recipes = [optim.recipe(o) for o in optimizers]
    for name, value in {"starts": starts, "steps": steps, "tune": tune, "tune_starts": tune_starts,
                        "strategy_runs": strategy_runs}.items():
        checks.integer(name, value)
    checks.choice("start", start, START_MODES)
    for strategy in strategies:
        checks.choice("strategies", strategy, STRATEGIES)
    # the settings are race.json's "settings": their keys stay those of files already written
    # ("tol" is global_rtol)
    settings = {"functions": [f.name for f in fns], "optimizers": [r.name for r in recipes],
                "starts": starts, "steps": steps, "start": start, "tune": tune,
                "tune_starts": tune_starts, "noise": noise, "tol": global_rtol,
                "strategies": list(strategies), "strategy_runs": strategy_runs, "seed": seed,
                "default_lr": {r.name: _base_lr(r) for r in recipes}}
    starts_of, saddles = {}, {}
    for fn in fns:
        X0, saddle = _starts(fn, start, starts, derive_seed(seed, fn.name, "starts"))
        X_tune, _ = _starts(fn, start, tune_starts, derive_seed(seed, fn.name, "tune"))
        starts_of[fn.name] = X0, X_tune, saddle
        saddles[fn.name] = None if saddle is None else saddle.tolist()

    def pair(fn, rec):
        X0, X_tune, saddle = starts_of[fn.name]
        lr = _tune(fn, rec, X_tune, saddle, steps, tune, noise, global_rtol, seed)
        run = descend(fn, rec, X0, steps=steps, lr=lr, noise=noise,
                      seed=derive_seed(seed, fn.name, rec.name))
        records = score(fn, run, X0, saddle, global_rtol, classify=True)
        return run, records, summarise(fn, rec.name, lr, records, saddle)

    def strategy(fn, method):
        budget = {"starts": starts, "steps": steps} if method == "multistart" else {}
        return None, [], _strategy_row(fn, method, strategy_runs, global_rtol, seed, budget)

    pieces = []  # (function, optimiser or strategy, work) in the order of the result
    for fn in fns:
        pieces += [(fn, rec.name, partial(pair, fn, rec)) for rec in recipes]
        if fn.global_min is not None:
            pieces += [(fn, method, partial(strategy, fn, method)) for method in strategies]
    runs, summary, descents = [], [], {}
    for (fn, name, _), (run, records, row) in zip(pieces, _shared(pieces, progress), strict=True):
        if run is not None:
            descents[fn.name, name] = run
        runs += records
        summary.append(row)
    return Race(settings, runs, summary, descents, {f.name: f for f in fns}, saddles)


def _shared(pieces, progress: Progress | None) -> list:
    """Each piece's result, in order (``progress`` counts this process's pieces). Under a
    process group rank r does every w-th piece and every rank gathers them all. The pieces are
    whole (function, optimiser) pairs rather than some of a pair's starts: a pair's starts run as
    the rows of one tensor with one noise stream and share one tuning, which every rank would
    repeat (about the cost of the descent itself); splitting the starts would change the noise
    each start sees and save little."""
    ranks, me = distributed.world(), distributed.rank()
    mine, share = {}, range(me, len(pieces), ranks)
    for done, index in enumerate(share):
        fn, name, work = pieces[index]
        if progress is not None:
            progress(done, len(share), f"{fn.name}: {name}")
        mine[index] = work()
    if progress is not None:
        progress(len(share), len(share))
    if ranks == 1:
        return [mine[index] for index in range(len(pieces))]
    everyone = [None] * ranks
    distributed.guarded(dist.all_gather_object, everyone, mine)
    done = {index: result for theirs in everyone for index, result in theirs.items()}
    return [done[index] for index in range(len(pieces))]


# ---------------------------------------------------------------------- starts and tuning
def _starts(fn, mode, starts, seed) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    listed = [p for p in fn.critical_points if p.kind == "saddle"]
    if mode == "auto":
        mode = "saddle" if fn.global_min is None and listed else "uniform"
    if mode == "uniform":
        return fn.sample(starts, generator), None
    if not listed:
        raise BadInputError(f"{fn.name} has no listed saddle to start next to; use "
                            "start='uniform'")
    saddle = listed[0].tensor()
    values, vectors = torch.linalg.eigh(torch.func.hessian(fn.f)(saddle))
    tiny = 1e-8 * max(1.0, values.abs().max().item())
    low, high = fn.bounds()
    offset = 0.25 * (high - low).min().item()
    up, rest = vectors[:, values > tiny], vectors[:, values <= tiny]
    return saddle + offset * _unit(up, starts, generator) + 1e-8 * _unit(rest, starts,
                                                                         generator), saddle


def _unit(basis, vectors, generator) -> torch.Tensor:
    """``vectors`` random unit vectors in the span of ``basis`` (zeros if it is empty)."""
    if basis.shape[1] == 0:
        return torch.zeros(vectors, basis.shape[0], dtype=torch.float64)
    v = torch.randn(vectors, basis.shape[1], generator=generator, dtype=torch.float64) @ basis.T
    return v / v.norm(dim=1, keepdim=True)


def _tune(fn, rec, X_tune, saddle, steps, tune, noise, global_rtol, seed) -> float | None:
    base = _base_lr(rec)
    if tune == 1 or base is None:
        return rec.lr
    best = None
    for lr in (base * 10 ** torch.linspace(-1, 1, tune, dtype=torch.float64)).tolist():
        run = descend(fn, rec, X_tune, steps=steps, lr=lr, noise=noise,
                      seed=derive_seed(seed, fn.name, rec.name, "tune"))
        records = score(fn, run, X_tune, saddle, global_rtol, classify=False)
        rate, steps_needed = rate_and_steps(records, saddle)
        finals = [r["final_value"] for r in records if r["status"] != "diverged"]
        key = (rate or 0.0, -(steps_needed if steps_needed is not None else math.inf),
               -(statistics.median(finals) if finals else math.inf))
        if best is None or key > best[0]:
            best = (key, lr)
    return best[1]


def _base_lr(rec) -> float | None:
    if rec.lr is not None:
        return rec.lr
    default = inspect.signature(rec.factory).parameters.get("lr")
    return default.default if default is not None and isinstance(default.default, float) else None


def _strategy_row(fn, method, runs, global_rtol, seed, budget) -> dict:
    threshold = global_rtol * max(1.0, abs(fn.global_min))
    reached = []
    for k in range(runs):
        result = search(method, fn, seed=derive_seed(seed, fn.name, method, k), **budget)
        hits = [row[0] for row in result.history if row[1] - fn.global_min <= threshold]
        reached.append(int(hits[0]) if hits else None)
    successes = [r for r in reached if r is not None]
    return {"function": fn.name, "optimizer": method, "goal": "global minimum", "lr": None,
            "runs": runs, "success_rate": len(successes) / runs, "median_steps": None,
            "median_evaluations": statistics.median(successes) if successes else None,
            "diverged": 0, "unbounded": 0, "best_of_starts": bool(successes), "ends": ""}


__getattr__ = old_names(__name__, {"RaceResult": "Race"})
