"""Loss surfaces: L on a 1-D or 2-D grid θ(α, β) = c + α·d₁ + β·d₂, saved, resumable, with fidelity.

What is hard is not the arithmetic but trusting the picture. Every point is formed afresh from the
centre (no in-place walking of the grid, which shifts every other row in the loss-landscapes
package), the caller's model is never touched (θ goes into a private copy of it, or through the
Objective), BatchNorm runs in eval mode unless statistics are recomputed per point
(:mod:`landscope.pointwise`), and a
trajectory drawn over a plane comes with how much of it the plane really holds: the projection
(α, β)ₜ = argmin ‖θₜ − c − Dx‖ (least squares, D = [d₁ d₂]), the explained fraction
Σ‖D xₜ‖² / Σ‖θₜ − c‖², each point's distance ‖θₜ − c − D xₜ‖ from the plane, and (for random
planes) the spread of the picture across direction seeds.

Cost: one full-data forward without gradients per point (:class:`landscope.pointwise.Replica`,
at the floor); points are evaluated one at a time, because on CPU evaluating several at once with
vmap was measured 1.6–2× slower (batching points is left for GPUs, where it may win). A grid with
``checkpoint=`` survives Ctrl-C (the partial grid is written atomically) and a rerun resumes it.
:mod:`landscope.adaptive` builds the budgeted view on the same :class:`Grid`.

Under ``torch.distributed`` (a process group of more than one rank) the ranks share a grid in one
of two ways (:func:`sharding`, recorded in ``meta["sharding"]``). By *points* when every rank holds
all the data (an Objective built with ``shard="replicate"``, or a function): in rounds, rank r
evaluates every w-th point still to compute and every rank gathers the round's values, so each
ends with the whole grid. A round lasts about ``SAVE_EVERY_S`` (its size follows the slowest
rank's cost per point in the round before, the same number on every rank), and rank 0 writes the
checkpoint between rounds. By *data* when the Objective is data-parallel (``obj.ranks > 1``):
every rank visits every point, its replica reads its part of the data and one all-reduce adds up
the ranks' sums. Either way the values
are those of one process. The ranks check that they ask for the same grid and all take rank 0's
directions (computed on each rank, they can differ in the last bits). Rank 0 reads a checkpoint
and hands it to the others; a rank that stops ends the others with
:class:`~landscope.distributed.RankFailure` after rank 0 has written every point gathered so far,
and a rerun resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from landscope import directions, distributed, io, pointwise
from landscope._checks import choice
from landscope.distributed import RankFailure
from landscope.errors import BadInputError
from landscope.objective import Objective

SCHEMA = "landscope.surface"
SCHEMA_VERSION = 1
BN_MODES = ("eval", "recompute")
SAVE_EVERY_S = 10.0


@dataclass(frozen=True)
class Projection:
    """A trajectory in a frame's coordinates, with how faithful the picture of it is."""

    coords: np.ndarray  # (T, m) least-squares coordinates
    distance: np.ndarray  # (T,) distance of each point from the plane (or line)
    radius: np.ndarray  # (T,) distance of each point from the centre
    explained: float  # Σ‖D xₜ‖² / Σ‖θₜ − c‖²

    def to_dict(self) -> dict:
        relative = self.distance[self.radius > 0] / self.radius[self.radius > 0]
        return {"points": len(self.distance), "explained": self.explained,
                "max_distance": float(self.distance.max()),
                "median_relative_distance": float(np.median(relative)) if relative.size else 0.0}


@dataclass
class Surface:
    """Loss values on a grid: ``values[i, j] = L(c + axes[0][i]·d₁ + axes[1][j]·d₂)``.

    ``error`` (budgeted views only) is the stated error of each value against the full-data,
    full-resolution grid (a ≈95 % bound), ``evaluated`` marks points computed rather than
    interpolated, ``meta`` holds everything needed to reproduce the grid.
    """

    axes: tuple[np.ndarray, ...]
    values: np.ndarray
    directions: np.ndarray
    meta: dict
    error: np.ndarray | None = None
    evaluated: np.ndarray | None = None
    projection: Projection | None = None
    fidelity: dict = field(default_factory=dict)

    def save(self, path: str | Path, *, extra: dict | None = None) -> Path:
        """Write an ``.npz`` (arrays + a JSON ``meta`` entry) atomically; read it with :meth:`load`.

        ``extra`` arrays are stored too (a :class:`Grid` keeps its resume state there).
        """
        arrays = {**(extra or {}), **{f"axis_{i}": a for i, a in enumerate(self.axes)}}
        arrays.update(values=self.values, directions=self.directions)
        for name in ("error", "evaluated"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        if self.projection is not None:
            p = self.projection
            arrays.update(trajectory=p.coords, trajectory_distance=p.distance,
                          trajectory_radius=p.radius)
        meta = {**self.meta, "fidelity": self.fidelity,
                "projection": None if self.projection is None else self.projection.explained}
        path = Path(path)
        with io.atomic_write(path) as stream:
            np.savez(stream, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Surface:
        """Read a surface written by :meth:`save` (no pickles: ``allow_pickle=False``)."""
        path = Path(path)
        if path.is_dir():
            raise BadInputError(f"{path} is a directory; give the surface.npz that `landscope "
                                "surface` wrote into it")
        if not path.is_file():
            raise BadInputError(f"no surface file at {path}")
        if not zipfile.is_zipfile(path):
            raise BadInputError(f"{path} is not a landscope surface file: `landscope surface` "
                                "writes an .npz archive (surface.npz); give that file")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (ValueError, OSError, zipfile.BadZipFile) as error:
            raise BadInputError(f"{path} is a damaged surface file ({type(error).__name__}); "
                                "compute it again with `landscope surface`") from error
        meta = json.loads(str(arrays.get("meta", "{}")))
        if meta.get("schema") != SCHEMA or meta.get("schema_version") != SCHEMA_VERSION:
            raise BadInputError(f"{path} is not a landscope surface of schema version "
                                f"{SCHEMA_VERSION} (found {meta.get('schema')!r} "
                                f"{meta.get('schema_version')!r})")
        axes = tuple(arrays[f"axis_{i}"] for i in range(arrays["values"].ndim))
        projection = None
        if "trajectory" in arrays:
            projection = Projection(arrays["trajectory"], arrays["trajectory_distance"],
                                    arrays["trajectory_radius"], float(meta["projection"]))
        return cls(axes, arrays["values"], arrays["directions"], meta, arrays.get("error"),
                   arrays.get("evaluated"), projection, meta.pop("fidelity", {}))

    @property
    def complete(self) -> bool:
        return bool(np.isfinite(self.values).all())

    def summary(self) -> dict:
        """Headline numbers for a result file: range, minimum and where, centre value, fidelity."""
        finite = np.where(np.isfinite(self.values), self.values, np.inf)
        where = np.unravel_index(int(np.argmin(finite)), self.values.shape)
        out = {"shape": list(self.values.shape), "min": float(np.nanmin(self.values)),
               "max": float(np.nanmax(self.values)),
               "argmin": [float(a[i]) for a, i in zip(self.axes, where, strict=True)],
               "complete": self.complete, "fidelity": self.fidelity}
        at = [np.flatnonzero(a == 0.0) for a in self.axes]
        if all(i.size for i in at):
            out["centre_value"] = float(self.values[tuple(int(i[0]) for i in at)])
        if self.projection is not None:
            out["trajectory"] = self.projection.to_dict()
        if self.error is not None:
            out["max_error"] = float(np.nanmax(self.error))
        return out


def surface(
    obj: Objective,
    frame,
    *,
    span=None,
    steps: int | tuple[int, ...] = 41,
    centre: torch.Tensor | None = None,
    trajectory=None,
    bn: str = "eval",
    checkpoint: str | Path | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> Surface:
    """L on a full grid around a centre along one or two directions.

    Parameters
    ----------
    obj: the Objective (any model, loss and data, or an analytic function).
    frame: a :class:`landscope.directions.Frame`, or one or two vectors of shape (n,).
    span: half-width s (grid −s..s on every axis), a (low, high) pair, or one pair per axis;
        default: the frame's window, else (−1, 1).
    steps: points per axis (one number, or one per axis). An odd count on a symmetric span puts a
        point exactly on the centre.
    centre: c (default θ₀, or the frame's own centre for lines, planes and PCA frames).
    trajectory: points θₜ (a (T, n) tensor, θ vectors, state dicts or modules) to project.
    bn: "eval" (the Objective's BatchNorm running statistics) or "recompute" (statistics
        recomputed over the data at every point; two passes per point).
    checkpoint: an ``.npz`` path written atomically every few seconds, on Ctrl-C and at the end;
        a rerun with the same settings resumes it (or returns it if complete).
    progress: True for a progress bar (on rank 0), or a callable(done, total) (on every rank;
        sharded by points, ``done`` counts every rank's points as if they kept this rank's pace,
        exactly at the end of each round).

    Under ``torch.distributed`` the ranks share the grid (see the module text and
    :func:`sharding`) and each returns the whole surface.

    Examples
    --------
    >>> obj = Objective.from_function(lambda x: x[0]**2 - x[1]**2, [0.0, 0.0])
    >>> s = surface(obj, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], span=1.0, steps=3)
    >>> s.values.tolist()
    [[0.0, 1.0, 0.0], [-1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    """
    frame = as_frame(obj, frame, centre)
    choice("bn", bn, BN_MODES)
    grid = Grid(obj, frame, axes(frame, span, steps), {"bn": bn, "view": "full"}, checkpoint)
    evaluate = _evaluator(obj, bn, grid)
    grid.run(np.ndindex(grid.shape), lambda index: (evaluate(index), 0.0, 1.0), progress)
    result = grid.result(evaluated=None)
    if trajectory is not None:
        result.projection = project(obj, frame, trajectory)
    return result


def seed_spread(obj: Objective, *, seeds=(1, 2, 3, 4), steps: int = 11, span=1.0,
                norm: str = "filter", biases: str = "zero", count: int = 2,
                centre: torch.Tensor | None = None, bn: str = "eval") -> dict:
    """How much a random-direction picture depends on the seed: small grids for several seeds.

    Returns the median and the maximum over grid points of the standard deviation across seeds,
    both relative to the median value range of one picture, and each seed's range. A relative
    spread near 0 means every seed shows the same landscape; near 1, the picture is the seed's.
    """
    if len(seeds) < 2:
        raise BadInputError(f"seeds={seeds}; a spread needs at least two seeds")
    stack = np.stack([surface(obj, directions.random(obj, count, seed=s, norm=norm, biases=biases,
                                                     centre=centre),
                              span=span, steps=steps, bn=bn).values for s in seeds])
    ranges = np.ptp(stack.reshape(len(seeds), -1), axis=1)
    scale = float(np.median(ranges)) or 1.0
    spread = stack.std(axis=0)
    return {"seeds": list(seeds), "steps": steps, "span": span, "ranges": ranges.tolist(),
            "relative_spread_median": float(np.median(spread)) / scale,
            "relative_spread_max": float(spread.max()) / scale}


def project(obj: Objective, frame, trajectory) -> Projection:
    """Least-squares coordinates of a trajectory in a frame, its distances, the explained part."""
    frame = as_frame(obj, frame, None)
    path = directions.trajectory(obj, trajectory).to(torch.float64)
    c = (obj.theta0 if frame.centre is None else frame.centre).to(torch.float64)
    D = torch.stack([v.to(torch.float64) for v in frame.vectors], 1)
    X = path - c
    coords = torch.linalg.solve(D.T @ D, D.T @ X.T).T
    inside = coords @ D.T
    total = float((X * X).sum())
    explained = float((inside * inside).sum()) / total if total > 0 else 1.0
    distance = torch.linalg.vector_norm(X - inside, dim=1)
    return Projection(coords.cpu().numpy(), distance.cpu().numpy(),
                      torch.linalg.vector_norm(X, dim=1).cpu().numpy(), explained)


def as_frame(obj: Objective, frame, centre) -> directions.Frame:
    """Validate a frame (or one or two raw directions) against the Objective."""
    if not isinstance(frame, directions.Frame):
        many = isinstance(frame, (list, tuple))
        frame = directions.frame(*(frame if many else [frame]))
    if centre is not None:
        if frame.centre is not None:
            raise BadInputError("this frame has its own centre (a line, plane or PCA frame); "
                                "pass centre= only with plain directions")
        frame = directions.Frame(frame.directions, centre, frame.window, frame.marks, frame.info)
    for i, d in enumerate(frame.directions):
        vector = directions._vector(obj, d.vector, f"direction {i + 1}")
        if not torch.any(vector != 0):
            raise BadInputError(f"direction {i + 1} is zero; it spans nothing")
    if frame.centre is not None:
        directions._vector(obj, frame.centre, "centre")
    return frame


def axes(frame: directions.Frame, span, steps) -> tuple[np.ndarray, ...]:
    """The grid coordinates per axis (float64), with the centre exactly 0 when it is on the grid."""
    m = len(frame.directions)
    steps = (steps,) * m if isinstance(steps, int) else tuple(steps)
    if span is None:
        span = frame.window or ((-1.0, 1.0),) * m
    elif np.isscalar(span):
        span = ((-float(span), float(span)),) * m
    elif np.isscalar(span[0]):
        span = (tuple(span),) * m
    if len(steps) != m or len(span) != m:
        raise BadInputError(f"steps={steps}, span={span}: give one value or one per direction "
                            f"({m})")
    out = []
    for (low, high), count in zip(span, steps, strict=True):
        low, high = float(low), float(high)
        if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
            raise BadInputError(f"span ({low}, {high}) is empty or not finite; use a positive "
                                "half-width such as span=1.0, or (low, high) with low < high")
        if int(count) < 2:
            raise BadInputError(f"steps={count}; an axis needs at least 2 points")
        coords = np.linspace(low, high, int(count))
        coords[np.abs(coords) < 1e-12 * (high - low)] = 0.0
        out.append(coords)
    return tuple(out)


def sharding(obj: Objective) -> dict | None:
    """How the ranks of a running process group share a grid of ``obj`` (None: one process).

    ``{"by": "data", ...}`` when the Objective is data-parallel (``obj.ranks > 1``): each rank
    holds only its part of the data, so every rank visits every point and the ranks' sums are
    added up there (one all-reduce per point). ``{"by": "points", ...}`` when each rank holds
    all of it (``shard="replicate"``, or a function): each rank evaluates its share of the
    points. The choice follows the memory
    the Objective already took.
    """
    if not distributed.active():
        return None
    if obj.ranks == 1:
        return {"by": "points", "ranks": distributed.world()}
    if obj.ranks != distributed.world():
        raise BadInputError(f"the Objective is data-parallel over {obj.ranks} of the "
                            f"{distributed.world()} ranks; a grid is shared by all of them. "
                            "Build it on the whole process group (group=None)")
    return {"by": "data", "ranks": obj.ranks}


class Grid:
    """The state of one grid computation: values filled point by point, checkpointed, resumable.

    ``run(indices, compute)`` evaluates the points not yet known; ``compute(index)`` returns
    (value, standard error, fraction of the data used). A point is reused when it was evaluated
    on at least the fraction asked for. Under a process group the ranks share the work as
    :func:`sharding` says and every rank ends with the same grid.
    """

    def __init__(self, obj: Objective, frame: directions.Frame, grid_axes, settings: dict,
                 checkpoint=None):
        self.axes, self.shape = grid_axes, tuple(len(a) for a in grid_axes)
        self.centre = obj.theta0 if frame.centre is None else frame.centre.to(obj.device,
                                                                               obj.dtype)
        self.vectors = [v.to(obj.device, obj.dtype) for v in frame.vectors]
        self.values = np.full(self.shape, np.nan)
        self.stderr = np.full(self.shape, np.nan)
        self.fraction = np.zeros(self.shape)
        self.cost = 0.0  # full-data passes spent (subsets count as their fraction)
        self.seconds = 0.0
        self.sharding = sharding(obj)
        identity = _identity(obj, self.vectors, self.centre, grid_axes, settings)
        if self.sharding is not None:
            identity = _agreed(identity, self.sharding["by"])
            self.vectors = _from_rank_0(self.vectors)
        self.meta = {**_meta(identity, obj, frame), "sharding": self.sharding}
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self._unsaved = False  # points recorded since the checkpoint was last written
        self._clock, self._saved = time.perf_counter(), time.monotonic()
        if self.checkpoint is not None:
            self._resume()

    def coeffs(self, index) -> list[float]:
        """(α, β) at a grid index."""
        return [float(coords[i]) for coords, i in zip(self.axes, index, strict=True)]

    def point(self, index) -> torch.Tensor:
        """θ at a grid index: c + α·d₁ + β·d₂, formed afresh (no accumulated steps)."""
        theta = self.centre
        for x, d in zip(self.coeffs(index), self.vectors, strict=True):
            theta = theta + x * d
        return theta

    def run(self, indices, compute, progress=False, *, fraction: float = 1.0) -> None:
        """Evaluate the ``indices`` not yet known on at least ``fraction`` of the data; on an
        interrupt or a failure the points completed so far are written before it propagates."""
        todo = [tuple(i) for i in indices if self.fraction[tuple(i)] < fraction]
        report = _progress(progress, len(todo))
        self._clock, self._saved = time.perf_counter(), time.monotonic()
        try:
            if self.sharding is not None and self.sharding["by"] == "points":
                self._shared(todo, compute, report)
            else:
                for done, index in enumerate(todo, 1):
                    self._record(index, *compute(index))
                    report(done)
                    self._save_now_and_then()
        except BaseException:
            self._save()
            raise
        finally:
            report(None)
        self._save()

    def result(self, values=None, error=None, evaluated=None) -> Surface:
        directions_ = torch.stack(self.vectors).cpu().numpy()
        meta = {**self.meta, "points_evaluated": int((self.fraction > 0).sum()),
                "cost_full_passes": self.cost, "seconds": self.seconds}
        return Surface(self.axes, self.values.copy() if values is None else values, directions_,
                       meta, error, evaluated)

    def _shared(self, todo, compute, report) -> None:
        """The points shared among the ranks, in rounds: rank r evaluates every w-th point of
        the round, then every rank gathers every rank's values (and failure, if one failed).

        Interleaved rather than contiguous shares: the cost of a point changes smoothly over the
        grid (subsets that grow, regions where the model is slow), so every rank gets its part
        of each region; and a rank's consecutive points still mostly share a row, whose partial
        sum c + α·d₁ the replica keeps. The first round takes one point per rank to measure the
        cost; later rounds last about ``SAVE_EVERY_S`` at the slowest rank's rate.
        """
        ranks, me = distributed.world(), distributed.rank()
        size, at = 1, 0  # points per rank in the next round; where it starts in ``todo``
        while at < len(todo):
            batch = todo[at:at + size * ranks]
            mine, failure, began = [], None, time.perf_counter()
            try:
                for index in batch[me::ranks]:
                    mine.append((index, *compute(index)))
                    self._record(*mine[-1])
                    report(at + min(len(batch), len(mine) * ranks))
            except Exception as error:  # every rank learns of it in the gather below
                failure = error
            everyone = [None] * ranks
            distributed.guarded(dist.all_gather_object, everyone, (
                mine, time.perf_counter() - began,
                None if failure is None else f"{type(failure).__name__}: {failure}"))
            for r, (theirs, _, _) in enumerate(everyone):
                for point in theirs if r != me else ():
                    self._record(*point)
            failed = next((r for r, (_, _, said) in enumerate(everyone) if said), None)
            if failure is not None:
                raise failure
            if failed is not None:
                raise RankFailure(f"on rank {failed}: a grid point failed ({everyone[failed][2]}); "
                                  "every rank stops, and the points gathered so far are kept "
                                  "in the checkpoint")
            at += len(batch)
            report(at)
            slowest = max(spent / len(theirs) for theirs, spent, _ in everyone if theirs)
            size = max(1, int(SAVE_EVERY_S / max(slowest, 1e-9)))
            self._save_now_and_then()

    def _record(self, index, value, stderr, used) -> None:
        self.values[index], self.stderr[index], self.fraction[index] = value, stderr, used
        self.cost += used
        self._unsaved = True

    def _save_now_and_then(self) -> None:
        if time.monotonic() - self._saved > SAVE_EVERY_S:
            self._save()

    def _save(self) -> None:
        """Count the time spent; write the checkpoint (rank 0 only) if new points came in."""
        now = time.perf_counter()
        self.seconds, self._clock, self._saved = self.seconds + now - self._clock, now, \
            time.monotonic()
        if self.checkpoint is None or not self._unsaved or not distributed.is_main():
            return
        self.result().save(self.checkpoint, extra={"grid_stderr": self.stderr,
                                                   "grid_fraction": self.fraction})
        self._unsaved = False

    def _resume(self) -> None:
        """Continue from the checkpoint, if there is one. Under a process group rank 0 reads it
        and hands the grid (or the error) to the others, so every rank starts from the same."""
        if self.sharding is None:
            state = self._read() if self.checkpoint.exists() else None
        else:
            state = None
            if distributed.is_main() and self.checkpoint.exists():
                try:
                    state = self._read()
                except BadInputError as error:
                    state = error
            box = [state]
            distributed.guarded(dist.broadcast_object_list, box, src=0)
            state = box[0]
            if isinstance(state, BadInputError):
                raise state
        if state is not None:
            self.values[:], self.stderr[:], self.fraction[:], self.cost, self.seconds = state

    def _read(self):
        """(values, stderr, fraction, cost, seconds) from the checkpoint, checked to be this
        grid's."""
        old = Surface.load(self.checkpoint)
        if old.meta.get("key") != self.meta["key"]:
            raise BadInputError(
                f"{self.checkpoint} holds a grid with other settings (key {old.meta.get('key')} "
                f"vs {self.meta['key']}); delete it to start over, choose another path, or rerun "
                "with the settings that made it"
            )
        with np.load(self.checkpoint, allow_pickle=False) as data:
            return (old.values, data["grid_stderr"], data["grid_fraction"],
                    old.meta["cost_full_passes"], old.meta["seconds"])


# ---------------------------------------------------------------------- helpers
def _evaluator(obj: Objective, bn: str, grid: Grid):
    """index ↦ L there: BatchNorm recomputed, or the replica at the cost floor (for a
    data-parallel Objective each rank's replica reads its part and the sums are added up), or
    obj.value."""
    parallel = obj.ranks > 1
    if bn == "recompute":
        if parallel:
            raise BadInputError("bn='recompute' with a data-parallel Objective would take the "
                                "BatchNorm statistics of one rank's part of the data; build the "
                                "Objective with shard='replicate' (each rank holds all the "
                                "data and the ranks share the grid points)")
        pointwise.bn_buffers(obj, obj.theta0)  # fail early: no BatchNorm, not a model, train mode
        return lambda index: pointwise.bn_value(obj, grid.point(index))
    if obj.info.get("kind") == "model" and obj.info.get("mode") == "eval":
        try:
            along = pointwise.Replica(obj).along(grid.centre, grid.vectors)
            return lambda index: along(grid.coeffs(index))
        except BadInputError:  # a model the copy cannot reproduce: the Objective's own path
            pass
    return lambda index: obj.value(grid.point(index)).item()


def _identity(obj: Objective, vectors, centre, grid_axes, settings: dict) -> dict:
    """What makes two grids the same grid (the checkpoint's key is its hash)."""
    return {
        "centre_sha256": _sha256(centre),
        "directions_sha256": _sha256(torch.stack(vectors) if vectors else torch.empty(0)),
        "axes": [[float(a[0]), float(a[-1]), len(a)] for a in grid_axes],
        "objective": {k: obj.info.get(k) for k in ("kind", "name", "loss", "mode", "n", "dtype",
                                                   "data", "frozen_parameters")},
        **settings,
    }


def _agreed(identity: dict, by: str) -> dict:
    """The grid's identity, the same on every rank: rank 0's. Sharded by data, its data is the
    list of every rank's part; the centre, axes, settings and Objective (with the data itself when
    each rank holds all of it) must agree across the ranks, or they would fill one grid with
    points of different landscapes. The directions are rank 0's (:func:`_from_rank_0`)."""
    everyone = [None] * distributed.world()
    distributed.guarded(dist.all_gather_object, everyone, identity)
    if by == "data":
        parts = [theirs["objective"]["data"] for theirs in everyone]
        everyone = [{**theirs, "objective": {**theirs["objective"], "data": parts}}
                    for theirs in everyone]
    for r, theirs in enumerate(everyone):
        differ = [key for key in everyone[0] if key != "directions_sha256" and
                  theirs.get(key) != everyone[0][key]]
        if differ:
            raise BadInputError(
                f"rank {r} asks for another grid than rank 0 ({', '.join(differ)} differ): "
                "every rank must pass the same model weights, directions, span and data (seed "
                "anything random the same way on every rank)")
    return everyone[0]


def _from_rank_0(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rank 0's directions on every rank: ranks that hold the same model and data and compute
    the directions each for itself can still differ in the last bits (Hessian eigenvectors from
    the product engine each rank timed on its own), and one grid needs one plane."""
    stacked = torch.stack(vectors).contiguous()
    distributed.guarded(dist.broadcast, stacked, src=0)
    return list(stacked.unbind())


def _meta(identity: dict, obj: Objective, frame) -> dict:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "key": key[:16], **identity,
            "frame": frame.to_dict(), "mode": obj.info.get("mode"), "dtype": obj.info["dtype"]}


def _sha256(tensor: torch.Tensor) -> str:
    array = tensor.detach().cpu().contiguous().numpy()
    return hashlib.sha256(str(array.dtype).encode() + array.tobytes()).hexdigest()


def _progress(progress, total: int):
    """A reporter(done) — None closes it — for a rich bar, a callable(done, total), or nothing."""
    if callable(progress):
        return lambda done: done is not None and progress(done, total)
    if not progress or total == 0 or not distributed.is_main():
        return lambda done: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("loss surface", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True)
    bar.start()
    task = bar.add_task("points", total=total)
    return lambda done: bar.stop() if done is None else bar.update(task, completed=done)
