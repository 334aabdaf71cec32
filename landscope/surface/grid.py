"""The grid that fills a surface: θ(α, β) = c + α·d₁ + β·d₂ evaluated point by point, each point
formed afresh from the centre (no in-place walking of the grid, which shifts every other row in the
loss-landscapes package), checkpointed and resumable, shared among the ranks of a process group.

:func:`as_frame` checks a frame against the Objective and :func:`axes` lays out the coordinates;
:class:`Grid` holds the values, their standard errors and the data fraction each used, and is what
the full view (:func:`landscope.surface.surface`) and the budgeted view
(:func:`landscope.adaptive.adaptive_surface`) both fill. A grid with a ``checkpoint`` survives
Ctrl-C (the partial grid is written atomically) and a rerun resumes it.

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
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from landscope import directions, distributed
from landscope.distributed import RankFailure
from landscope.errors import BadInputError
from landscope.objective import Objective
from landscope.progress import Progress
from landscope.surface.record import SCHEMA, SCHEMA_VERSION, Surface

SAVE_EVERY_S = 10.0


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


def axes(frame: directions.Frame, span, resolution) -> tuple[np.ndarray, ...]:
    """The grid coordinates per axis (float64), ``resolution`` points each (one number or one per
    axis), with the centre exactly 0 when it is on the grid."""
    m = len(frame.directions)
    resolution = (resolution,) * m if isinstance(resolution, int) else tuple(resolution)
    if span is None:
        span = frame.window or ((-1.0, 1.0),) * m
    elif np.isscalar(span):
        span = ((-float(span), float(span)),) * m
    elif np.isscalar(span[0]):
        span = (tuple(span),) * m
    if len(resolution) != m or len(span) != m:
        raise BadInputError(f"resolution={resolution}, span={span}: give one value or one per "
                            f"direction ({m})")
    out = []
    for (low, high), points in zip(span, resolution, strict=True):
        low, high = float(low), float(high)
        if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
            raise BadInputError(f"span ({low}, {high}) is empty or not finite; use a positive "
                                "half-width such as span=1.0, or (low, high) with low < high")
        if int(points) < 2:
            raise BadInputError(f"resolution={points}; an axis needs at least 2 points")
        coords = np.linspace(low, high, int(points))
        coords[np.abs(coords) < 1e-12 * (high - low)] = 0.0
        out.append(coords)
    return tuple(out)


def checked_progress(progress) -> Progress | None:
    """A surface's ``progress=`` as a :class:`~landscope.progress.Progress` or None: False (the
    default of 0.1) is None; True (a bar that 0.1 drew itself) is refused, naming what draws one."""
    if progress is True:
        raise BadInputError("progress=True: the library no longer draws a bar; pass a Progress, "
                            "progress(done, total, note), such as landscope.render.progress.bar"
                            "(label, 'grid points') gives, or None")
    return None if progress is False else progress


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

    def run(self, indices, compute, progress: Progress | None = None, *,
            fraction: float = 1.0) -> int:
        """Evaluate the ``indices`` not yet known on at least ``fraction`` of the data; on an
        interrupt or a failure the points completed so far are written before it propagates.

        ``progress(done, total)``: grid points evaluated in this call, of those it has to
        evaluate (not called when there are none). Returns how many it evaluated.
        """
        progress = checked_progress(progress)
        todo = [tuple(i) for i in indices if self.fraction[tuple(i)] < fraction]
        report = (lambda done: None) if progress is None else (
            lambda done: progress(done, len(todo)))
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
        self._save()
        return len(todo)

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


