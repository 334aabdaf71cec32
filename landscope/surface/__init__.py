"""Loss surfaces: L on a 1-D or 2-D grid θ(α, β) = c + α·d₁ + β·d₂, saved, resumable, with fidelity.

What is hard is not the arithmetic but trusting the picture. Every point is formed afresh from the
centre, the caller's model is never touched, BatchNorm runs in eval mode unless statistics are
recomputed per point, a trajectory drawn over a plane comes with how much of it the plane really
holds, and (for random planes) the spread of the picture across direction seeds is measured.

Here: the full view, :func:`surface` (L at every grid point), and :func:`seed_spread`. Cost: one
full-data forward without gradients per point (:class:`landscope.pointwise.Replica`, at the
floor); points are evaluated one at a time, because on CPU evaluating several at once with vmap
was measured 1.6–2× slower (batching points is left for GPUs, where it may win).

The parts: ``record`` (the :class:`Surface` record and its ``.npz``, with :class:`Projection`,
:class:`Fidelity` and :class:`SeedSpread`; a leaf), ``grid`` (the frame checked, the axes laid
out, and the resumable, sharded :class:`Grid` that every view fills), ``trajectory``
(:func:`project`). :mod:`landscope.adaptive` builds the budgeted view on the same :class:`Grid`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landscope import directions, pointwise
from landscope._checks import choice
from landscope._deprecated import renamed
from landscope.errors import BadInputError
from landscope.objective import Objective
from landscope.progress import Progress
from landscope.surface.grid import SAVE_EVERY_S, Grid, as_frame, axes, sharding
from landscope.surface.record import (
    SCHEMA,
    SCHEMA_VERSION,
    Fidelity,
    Projection,
    SeedSpread,
    Surface,
)
from landscope.surface.trajectory import project

__all__ = ["BN_MODES", "SAVE_EVERY_S", "SCHEMA", "SCHEMA_VERSION", "Fidelity", "Grid",
           "Projection", "SeedSpread", "Surface", "as_frame", "axes", "project", "seed_spread",
           "sharding", "surface"]

BN_MODES = ("eval", "recompute")


@renamed(steps="resolution")
def surface(
    obj: Objective,
    frame,
    *,
    span=None,
    resolution: int | tuple[int, ...] = 41,
    centre: torch.Tensor | None = None,
    trajectory=None,
    bn: str = "eval",
    checkpoint: str | Path | None = None,
    progress: Progress | None = None,
) -> Surface:
    """L on a full grid around a centre along one or two directions.

    Parameters
    ----------
    obj: the Objective (any model, loss and data, or an analytic function).
    frame: a :class:`landscope.directions.Frame`, or one or two vectors of shape (n,).
    span: half-width s (grid −s..s on every axis), a (low, high) pair, or one pair per axis;
        default: the frame's window, else (−1, 1).
    resolution: grid points per axis (one number, or one per axis). An odd number on a symmetric
        span puts a point exactly on the centre.
    centre: c (default θ₀, or the frame's own centre for lines, planes and PCA frames).
    trajectory: points θₜ (a (T, n) tensor, θ vectors, state dicts or modules) to project.
    bn: "eval" (the Objective's BatchNorm running statistics) or "recompute" (statistics
        recomputed over the data at every point; two passes per point).
    checkpoint: an ``.npz`` path written atomically every few seconds, on Ctrl-C and at the end;
        a rerun with the same settings resumes it (or returns it if complete).
    progress: a :class:`~landscope.progress.Progress` of grid points: ``done`` of ``total``, the
        points this call computes (a resumed grid counts only the missing ones). Called on every
        rank; sharded by points, ``done`` counts every rank's points as if they kept this rank's
        pace, exactly at the end of each round.

    Under ``torch.distributed`` the ranks share the grid (:mod:`landscope.surface.grid`,
    :func:`~landscope.surface.grid.sharding`) and each returns the whole surface.

    Examples
    --------
    >>> obj = Objective.from_function(lambda x: x[0]**2 - x[1]**2, [0.0, 0.0])
    >>> s = surface(obj, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], span=1.0,
    ...             resolution=3)
    >>> s.values.tolist()
    [[0.0, 1.0, 0.0], [-1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    """
    frame = as_frame(obj, frame, centre)
    choice("bn", bn, BN_MODES)
    grid = Grid(obj, frame, axes(frame, span, resolution), {"bn": bn, "view": "full"},
                checkpoint)
    evaluate = _evaluator(obj, bn, grid)
    grid.run(np.ndindex(grid.shape), lambda index: (evaluate(index), 0.0, 1.0), progress)
    result = grid.result(evaluated=None)
    if trajectory is not None:
        result.projection = project(obj, frame, trajectory)
    return result


@renamed(steps="resolution", count="dims")
def seed_spread(obj: Objective, *, seeds=(1, 2, 3, 4), resolution: int = 11, span=1.0,
                norm: str = "filter", biases: str = "zero", dims: int = 2,
                centre: torch.Tensor | None = None, bn: str = "eval") -> SeedSpread:
    """How much a random-direction picture depends on the seed: small grids for several seeds.

    For each seed s a ``resolution``-point grid along ``dims`` seeded random directions
    (:func:`landscope.directions.random`); then the standard deviation across seeds at every grid
    point, over the median value range of one picture (its median and maximum). A relative
    spread near 0 means every seed shows the same landscape; near 1, the picture is the seed's.
    """
    if len(seeds) < 2:
        raise BadInputError(f"seeds={seeds}; a spread needs at least two seeds")
    stack = np.stack([surface(obj, directions.random(obj, dims, seed=s, norm=norm, biases=biases,
                                                     centre=centre),
                              span=span, resolution=resolution, bn=bn).values for s in seeds])
    ranges = np.ptp(stack.reshape(len(seeds), -1), axis=1)
    scale = float(np.median(ranges)) or 1.0
    spread = stack.std(axis=0)
    return SeedSpread(tuple(seeds), resolution, span, tuple(ranges.tolist()),
                      float(np.median(spread)) / scale, float(spread.max()) / scale)


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
