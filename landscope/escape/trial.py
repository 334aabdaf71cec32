"""The remedy trial: every candidate × seed from θ₀, resumable, ranked (:func:`escape`).
See :mod:`landscope.escape` for how the trial is kept fair."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from landscope import _checks as checks
from landscope import io, optim
from landscope._deprecated import renamed
from landscope.data import Batches
from landscope.errors import BadInputError
from landscope.escape.candidates import (
    DEFAULT_CANDIDATES,
    LEFT_OUT,
    Candidate,
    available,
    candidate,
)
from landscope.escape.runs import ENGINE, BatchOrder, Work, diagnose_start
from landscope.objective import Objective
from landscope.progress import Progress

SCHEMA_VERSION = 2


@dataclass
class Trial:
    """The outcome of :func:`escape`.

    settings: what was run (its ``key`` names the settings a resumed run must share).
    start: the loss, λ_min, λ_max and the v_min step at θ₀. runs: one record per (candidate,
    seed), RUN_FIELDS plus the loss curve. summary: one row per candidate, ranked by the mean
    final training loss (SUMMARY_FIELDS). skipped: candidates that could not run, and why.
    """

    settings: dict
    start: dict
    runs: list[dict]
    summary: list[dict]
    skipped: dict[str, str]

    def to_dict(self) -> dict:
        return {"settings": self.settings, "start": self.start, "summary": self.summary,
                "skipped": self.skipped, "runs": self.runs}

    def write_csv(self, directory: str | Path) -> tuple[Path, Path]:
        """``escape-summary.csv`` and ``escape-runs.csv`` in ``directory``."""
        directory = Path(directory)
        paths = directory / "escape-summary.csv", directory / "escape-runs.csv"
        return (io.write_csv(paths[0], self.summary, SUMMARY_FIELDS),
                io.write_csv(paths[1], self.runs, RUN_FIELDS))


RUN_FIELDS = ("candidate", "seed", "train_loss", "held_out_loss", "lambda_min",
              "negative_curvature_left", "evaluations", "steps", "diverged", "vmin_step",
              "seconds")
SUMMARY_FIELDS = ("rank", "candidate", "train_loss_mean", "train_loss_std", "held_out_mean",
                  "held_out_std", "negative_curvature_left", "diverged", "evaluations",
                  "seconds", "description")


@renamed(curvature_tol="curvature_rtol", steps="evaluations")
def escape(model: nn.Module, loss_fn, data, *, candidates=DEFAULT_CANDIDATES,
           optimizer: str | optim.Recipe = "momentum", lr: float | None = None,
           evaluations: int = 200, seeds: int = 3, seed: int = 0, batch_size: int | None = None,
           held_out=None, out: str | Path | None = None, curvature_products: int = 100,
           curvature_rtol: float = 1e-2, progress: Progress | None = None) -> Trial:
    """Run every candidate × seed from the model's current weights θ₀ and rank them.

    Parameters
    ----------
    model: the user's network at θ₀; never modified (each run trains a deep copy, in train mode).
    loss_fn: ``loss_fn(output, target)`` (the batch mean), or "model" (its own loss).
    data: the training data: ``(X, y)``, a DataLoader (``shuffle=False``) or a list of batches.
    candidates: names (see :func:`candidate`). optimizer, lr: the baseline ("the user's
        optimiser": a :func:`landscope.optim.make` name or a Recipe, e.g.
        :func:`recorded_baseline`; lr default: its stated rate).
    evaluations: the budget per run, in evaluations (see the module). seeds: runs per candidate.
    seed: the seed of everything random (data order, dropout, optimisers' noise).
    batch_size: training mini-batch size for ``(X, y)`` data (None: all samples in one batch);
        other data keeps its own batches.
    held_out: optional held-out data, evaluated at each run's end.
    out: directory for one file per finished run (resume) — None keeps nothing.
    curvature_products, curvature_rtol: the cap and relative tolerance of λ_min at each run's
        end (the diagnosis at θ₀ has spectrum's default tolerance and ``DIAGNOSIS_PRODUCTS`` ×
        the cap).
    progress: ``progress(done, total, note)`` (:class:`~landscope.progress.Progress`) after each
        run, read back or computed: ``done`` runs of ``total`` (candidates × seeds), ``note`` the
        run's label, e.g. "adam seed 2".
    """
    evaluations = checks.integer("evaluations", evaluations)
    seeds = checks.integer("seeds", seeds)
    if batch_size is not None:
        checks.integer("batch_size", batch_size)
    chosen = [candidate(n) for n in dict.fromkeys(candidates)]
    if not chosen:
        raise BadInputError("no candidates; name at least one (e.g. baseline, adam)")
    baseline = optim.recipe(optimizer)
    if baseline.name in LEFT_OUT:
        raise BadInputError(f"optimizer {baseline.name!r}: {LEFT_OUT[baseline.name]}")
    if baseline.row_aware and any(c.clip_norm for c in chosen):
        raise BadInputError(f"clip: {baseline.name} takes its gradients itself, so there is none "
                            "to clip; use a torch.optim baseline")
    skipped = {c.name: why for c in chosen if (why := available(c))}
    chosen = [c for c in chosen if c.name not in skipped]
    with torch.random.fork_rng(devices=_rng_devices(model)):
        obj = Objective.from_model(model, loss_fn, data, engine=ENGINE)
        schedule = BatchOrder(data, batch_size, model, own_loss=isinstance(loss_fn, str))
        settings = _settings(model, obj, schedule, held_out, baseline, lr, evaluations, seed,
                             curvature_products, curvature_rtol)
        store = _Store(out, settings["key"])
        start = diagnose_start(obj, settings, seed)
        work = Work(model, loss_fn, data, obj, schedule, baseline, settings, start, held_out)
        runs, total = [], len(chosen) * seeds
        for c in chosen:
            for s in range(seeds):
                run = store.read(c.name, s)
                if run is None:
                    run = store.write(work.run(c, s))
                runs.append(run)
                if progress is not None:
                    progress(len(runs), total, f"{c.name} seed {s}")
    settings = {**settings, "candidates": [c.name for c in chosen], "seeds": seeds}
    return Trial(settings, _public(start), runs, _summary(chosen, runs), skipped)


# ---------------------------------------------------------------------- settings and resume
def _settings(model, obj, schedule, held_out, baseline, lr, evaluations, seed, products,
              curvature_rtol) -> dict:
    """What a run's result depends on; ``key`` is its hash (a resumed trial must match it).
    The keys are those of the files already written (``steps`` is ``evaluations``,
    ``curvature_tol`` is ``curvature_rtol``):
    renaming one would change every key, and a rerun would no longer resume their runs."""
    identity = {
        "theta0_sha256": _sha256([t for _, t in sorted(model.state_dict().items())]),
        "data_sha256": _data_sha256(schedule.batches),
        "held_out_sha256": None if held_out is None else _data_sha256(Batches(held_out)),
        "model": type(model).__name__, "loss": obj.info["loss"], "n": obj.n,
        "dtype": obj.info["dtype"], "data": schedule.describe(), "batch_size": schedule.size,
        "optimizer": baseline.name, "optimizer_options": baseline.options,
        "lr": baseline.lr if lr is None else float(lr),
        "steps": evaluations, "seed": seed, "curvature_products": products,
        "curvature_tol": curvature_rtol,
        "schema_version": SCHEMA_VERSION,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return {**identity, "key": key}


class _Store:
    """One JSON file per finished run under ``out/escape-runs`` (written atomically)."""

    def __init__(self, out, key: str):
        self.key = key
        self.directory = None if out is None else Path(out) / "escape-runs"
        if self.directory is None or not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            theirs = io.read_result(path).get("key")
            if theirs != key:
                raise BadInputError(
                    f"{self.directory} holds runs of other settings (key {theirs} vs {key}: "
                    "another model, data, baseline, budget or seed); delete it to start over, "
                    "choose another --out, or rerun with the settings that made it")

    def read(self, name: str, s: int) -> dict | None:
        path = self._path(name, s)
        if path is None or not path.exists():
            return None
        return io.read_result(path)["run"]

    def write(self, run: dict) -> dict:
        """Keep ``run``; returned as it reads back (non-finite numbers become None)."""
        path = self._path(run["candidate"], run["seed"])
        if path is None:
            return run
        io.write_result(path.parent, "escape_run", {"key": self.key, "run": run}, name=path.name)
        return self.read(run["candidate"], run["seed"])

    def _path(self, name: str, s: int) -> Path | None:
        return None if self.directory is None else self.directory / f"{name}-seed{s}.json"


# ---------------------------------------------------------------------- summary
def _summary(chosen: list[Candidate], runs: list[dict]) -> list[dict]:
    """One row per candidate, ranked by the mean final training loss (diverged runs count as
    +inf, so a candidate with any divergence ranks below every one without)."""
    rows = []
    for c in chosen:
        mine = [r for r in runs if r["candidate"] == c.name]
        train = [math.inf if r["train_loss"] is None else r["train_loss"] for r in mine]
        held = [r["held_out_loss"] for r in mine if r["held_out_loss"] is not None]
        left = [r["negative_curvature_left"] for r in mine
                if r["negative_curvature_left"] is not None]
        rows.append({
            "candidate": c.name, "description": c.description,
            "train_loss_mean": _mean(train), "train_loss_std": _spread(train),
            "held_out_mean": _mean(held) if held else None,
            "held_out_std": _spread(held) if held else None,
            "negative_curvature_left": f"{sum(left)}/{len(left)}" if left else "—",
            "diverged": sum(r["diverged"] for r in mine),
            "evaluations": statistics.mean(r["evaluations"] for r in mine),
            "seconds": statistics.mean(r["seconds"] for r in mine)})
    rows.sort(key=lambda row: (row["train_loss_mean"], row["candidate"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _mean(values: list[float]) -> float:
    return math.inf if any(math.isinf(v) for v in values) else statistics.fmean(values)


def _spread(values: list[float]) -> float:
    """The sample standard deviation over seeds (0 for one seed)."""
    if len(values) < 2 or any(math.isinf(v) for v in values):
        return 0.0 if len(values) < 2 else math.inf
    return statistics.stdev(values)


def _public(start: dict) -> dict:
    """The diagnosis at θ₀ without the point itself."""
    vmin = start["vmin"]
    return {**start, "vmin": None if vmin is None else
            {k: v for k, v in vmin.items() if k != "theta"}}


# ---------------------------------------------------------------------- helpers
def _data_sha256(batches) -> str:
    return _sha256([t for b in batches for t in (*b.inputs, *b.kwargs.values(), b.target)
                    if t is not None])


def _sha256(tensors: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _rng_devices(model: nn.Module) -> list:
    first = next(model.parameters(), None)
    return [first.device] if first is not None and first.device.type == "cuda" else []
