"""The budgeted view: a full-resolution surface for a fraction of the evaluations, with its error.

A full grid costs one pass over the data per point (a 51×51 CIFAR grid takes hours). Two savings,
each with a stated error against the full-data, full-resolution grid:

1. Subsets: a point may be evaluated on the first m of N samples of a seeded permutation
   (:class:`landscope.pointwise.SubsetLoss`); its error is 1.96·SE, SE = σ/√m·√(1 − m/N). Where
   that exceeds error_atol/2 the points are re-evaluated on twice the data (up to all of it). Every
   point sees the same subset, so the picture stays smooth but its subset errors are correlated:
   in about one run in twenty the whole picture sits outside the bound at many points at once
   (try another ``seed``). With ``samples=None`` (the default) only the error of step 2 remains.
2. Refinement where the surface bends: a coarse grid is split into cells; for each cell the points
   halfway between its corners are evaluated, and the *surplus* s = max |L(p) − Lᵢₙₜ(p)| over them
   (Lᵢₙₜ = multilinear interpolation from the corners) measures how far the cell is from flat.
   The cell with the largest surplus is split next, until every surplus is ≤ error_atol or the
   budget is spent. The leaves of this quadtree cover the grid; a point that was never evaluated is
   interpolated inside its leaf, with error s (for a twice-differentiable L the error at the finer
   scale is about s/4, so s is a conservative statement) plus the corners' subset error.

The coarse grid has a node at the centre (where every coordinate is 0, when the grid holds it):
the point the picture is about is always computed, never interpolated, and since multilinear
interpolation stays within its corners' range, the lowest value shown is a computed one.
"""

from __future__ import annotations

import heapq
import itertools
import math

import numpy as np
import torch

from landscope._deprecated import renamed
from landscope.errors import BadInputError
from landscope.objective import Objective
from landscope.pointwise import SubsetLoss
from landscope.progress import Progress
from landscope.surface.grid import Grid, as_frame, axes, checked_progress
from landscope.surface.record import Surface
from landscope.surface.trajectory import project


@renamed(steps="resolution", tol="error_atol", rel_tol="error_rtol")
def adaptive_surface(
    obj: Objective,
    frame,
    *,
    span=None,
    resolution: int | tuple[int, ...] = 41,
    centre: torch.Tensor | None = None,
    error_atol: float | None = None,
    error_rtol: float = 0.01,
    budget: float = 0.25,
    samples: int | float | None = None,
    coarse: int | None = None,
    seed: int = 0,
    trajectory=None,
    checkpoint=None,
    progress: Progress | None = None,
) -> Surface:
    """A full-resolution grid from adaptive refinement (and optionally data subsets), with errors.

    Parameters
    ----------
    obj, frame, span, resolution, centre, trajectory, checkpoint: as in
        :func:`landscope.surface.surface`.
    error_atol: target absolute error in loss units; default ``error_rtol`` × the value range of
        the coarse grid.
    error_rtol: the target error relative to that range, when ``error_atol`` is None.
    budget: stop refining once this fraction of the full grid's cost (points × full passes) is
        spent; the stated error then says where the target was not reached.
    samples: data per point: a count (> 1), a fraction of the data set (≤ 1), or None (all of
        it). Needs a model Objective in eval mode.
    coarse: stride of the first grid (default: the power of two giving at most 4 cells per
        axis), laid out from the centre. The first grid and its first refinement are always
        evaluated.
    seed: of the subset permutation.
    progress: a :class:`~landscope.progress.Progress` of grid points evaluated so far (a point
        re-evaluated on more data counts again), ``total`` None: refinement decides how many.

    Returns
    -------
    A :class:`Surface` with ``error`` (the stated ≈95 % error per point), ``evaluated`` (points
    computed rather than interpolated) and ``meta["cost_full_passes"]``.

    Examples
    --------
    >>> obj = Objective.from_function(lambda x: (x**2).sum(), [0.0, 0.0])
    >>> s = adaptive_surface(obj, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])],
    ...                      resolution=33, error_atol=0.01)
    >>> bool(np.all(np.abs(s.values - (s.axes[0][:, None]**2 + s.axes[1]**2)) <= s.error))
    True
    """
    frame = as_frame(obj, frame, centre)
    grid_axes = axes(frame, span, resolution)
    shape = tuple(len(a) for a in grid_axes)
    if not 0 < budget <= 1:
        raise BadInputError(f"budget={budget}; give a fraction of the full grid's cost in (0, 1]")
    if error_atol is not None and not (math.isfinite(error_atol) and error_atol > 0):
        raise BadInputError(f"error_atol={error_atol}; give a positive error in loss units, "
                            "or None")
    compute, fraction, settings = _sampler(obj, samples, seed)
    # the file keys of 0.1, so that a grid checkpointed before still resumes
    settings.update(view="budgeted", tol=error_atol, rel_tol=error_rtol, budget=budget,
                    coarse=coarse)
    grid = Grid(obj, frame, grid_axes, settings, checkpoint)
    stride = coarse or 2 ** math.ceil(math.log2(max(1.0, (min(shape) - 1) / 4)))
    cells = _coarse(grid_axes, stride)

    progress, evaluated = checked_progress(progress), 0  # points evaluated by earlier runs

    def run(points, at_least):
        nonlocal evaluated
        report = None if progress is None else (
            lambda done, _total: progress(evaluated + done, None))
        evaluated += grid.run(sorted(set(points)), lambda i: compute(grid.point(i), at_least),
                              report, fraction=at_least)

    run([c for cell in cells for c in _corners(cell)], fraction)
    if error_atol is None:
        spread = float(np.nanmax(grid.values) - np.nanmin(grid.values))
        error_atol = error_rtol * spread or error_rtol
    leaves = _refine(grid, cells, run, fraction, error_atol, budget * np.prod(shape))
    values, error = _fill(grid, leaves)
    result = grid.result(values=values, error=error, evaluated=grid.fraction > 0)
    result.meta.update(tol_used=error_atol, points_total=int(np.prod(shape)),
                       cost_ratio=grid.cost / np.prod(shape))
    if trajectory is not None:
        result.projection = project(obj, frame, trajectory)
    return result


# ---------------------------------------------------------------------- helpers
def _sampler(obj: Objective, samples, seed):
    """compute(θ, fraction) -> (value, stderr, fraction used), the starting fraction, settings."""
    if samples is None:
        return (lambda theta, f: (obj.value(theta).item(), 0.0, 1.0)), 1.0, {"samples": None}
    if obj.ranks > 1:
        raise BadInputError(f"samples={samples} with a data-parallel Objective: the subsets would "
                            "be drawn from one rank's part of the data. Build the Objective with "
                            "shard='replicate' (the ranks then share the grid points) or use "
                            "all the data (samples=None)")
    subset = SubsetLoss(obj, seed=seed)
    samples = float(samples)
    count = int(samples) if samples > 1 else int(round(samples * subset.total))
    if not 2 * subset.chunks <= count:
        raise BadInputError(f"samples={samples}; use at least {2 * subset.chunks} samples or a "
                            "fraction of the data such as 0.25")
    start = min(1.0, count / subset.total)

    def compute(theta, f):
        m = min(subset.total, int(math.ceil(f * subset.total)))
        value, stderr = subset.value(theta, m)
        return value, stderr, m / subset.total

    return compute, start, {"samples": count, "subset_seed": seed, "chunks": subset.chunks,
                            "t95": subset.t95}


def _bound(grid: Grid, points) -> float:
    """The largest subset error bound (t₉₇.₅·SE) among points."""
    t95 = grid.meta.get("t95") or 0.0
    return max((t95 * grid.stderr[p] for p in points), default=0.0)


def _refine(grid: Grid, cells, run, fraction, error_atol, budget):
    """Split the cells with the largest surplus until all are ≤ error_atol or the budget is
    spent."""
    heap, order = [], itertools.count()

    def measure(cell_list):
        nonlocal fraction
        points = [p for cell in cell_list for p in _corners(cell) + _children(cell)]
        run(points, fraction)
        while fraction < 1.0 and _bound(grid, points) > error_atol / 2:
            more = min(1.0, 2 * fraction)  # uncertain: the same points on twice the data
            if grid.cost + len(set(points)) * more > budget:
                break
            fraction = more
            run(points, fraction)
        for cell in cell_list:
            if _children(cell):
                heapq.heappush(heap, (-_surplus(grid, cell), next(order), cell))

    measure(cells)
    while heap and -heap[0][0] > error_atol:
        subcells = _split(heap[0][2])
        new = {p for sub in subcells for p in _children(sub) if grid.fraction[p] < fraction}
        if grid.cost + len(new) * fraction > budget:
            break  # the budget is a hard cap: the stated error shows what is left
        heapq.heappop(heap)
        measure(subcells)
    return [(cell, -negative) for negative, _, cell in heap]


def _fill(grid: Grid, leaves):
    """Values everywhere: evaluated points as they are, others interpolated inside their leaf."""
    t95 = grid.meta.get("t95") or 0.0
    values = grid.values.copy()
    error = np.where(grid.fraction > 0, t95 * np.nan_to_num(grid.stderr), np.inf)
    for leaf, surplus in leaves:
        for sub in _split(leaf):
            corners = _corners(sub)
            noise = _bound(grid, corners)
            ranges = [range(lo, hi + 1) for lo, hi in sub]
            for index in itertools.product(*ranges):
                if grid.fraction[index] > 0 or error[index] <= surplus + noise:
                    continue
                values[index] = _interpolate(grid.values, sub, index)
                error[index] = surplus + noise
    if not np.isfinite(error).all():  # cannot happen: the leaves cover the grid
        raise RuntimeError("adaptive grid left points uncovered")
    return values, error


def _surplus(grid: Grid, cell) -> float:
    return max(abs(grid.values[p] - _interpolate(grid.values, cell, p)) for p in _children(cell))


def _interpolate(values, cell, index) -> float:
    """Multilinear interpolation at ``index`` from the corners of ``cell``."""
    total = 0.0
    for corner in _corners(cell):
        weight = 1.0
        for (lo, hi), c, i in zip(cell, corner, index, strict=True):
            t = 0.0 if hi == lo else (i - lo) / (hi - lo)
            weight *= t if c == hi else 1 - t
        total += weight * values[corner]
    return total


def _coarse(grid_axes, stride):
    """The first cells: per axis, nodes every ``stride`` points out from the centre (0), else from
    the first point; an end piece shorter than stride/2 joins its neighbour."""
    nodes = []
    for coords in grid_axes:
        last = len(coords) - 1
        zero = np.flatnonzero(coords == 0.0)
        anchor = int(zero[0]) if zero.size else 0
        inner = [i for i in range(anchor % stride, last, stride)
                 if 2 * min(i, last - i) >= stride or i == anchor]
        nodes.append(sorted({0, last, *inner}))
    return [tuple(pair) for pair in itertools.product(
        *[list(itertools.pairwise(axis)) for axis in nodes])]


def _corners(cell):
    return list(itertools.product(*[sorted({lo, hi}) for lo, hi in cell]))


def _children(cell):
    """Grid points halfway between the corners (edge midpoints and centre), if the cell has any."""
    levels = [sorted({lo, (lo + hi) // 2, hi}) for lo, hi in cell]
    corners = set(_corners(cell))
    return [p for p in itertools.product(*levels) if p not in corners]


def _split(cell):
    halves = [[(lo, (lo + hi) // 2), ((lo + hi) // 2, hi)] if hi - lo >= 2 else [(lo, hi)]
              for lo, hi in cell]
    return [tuple(sub) for sub in itertools.product(*halves)]
