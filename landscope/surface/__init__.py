"""Loss surfaces: L on a 1-D or 2-D grid θ(α, β) = c + α·d₁ + β·d₂, saved, resumable, with fidelity.

What is hard is not the arithmetic but trusting the picture. Every point is formed afresh from the
centre, the caller's model is never touched, BatchNorm runs in eval mode unless statistics are
recomputed per point, a trajectory drawn over a plane comes with how much of it the plane really
holds, and (for random planes) the spread of the picture across direction seeds is measured.

The parts: ``record`` (the :class:`Surface` record and its ``.npz``, with :class:`Projection` and
:class:`Fidelity`; a leaf), ``grid`` (the frame checked, the axes laid out, and the resumable,
sharded :class:`Grid` that every view fills), ``trajectory`` (:func:`project`), ``full`` (the
full view :func:`surface` and :func:`seed_spread`). :mod:`landscope.adaptive` builds the budgeted
view on the same :class:`Grid`.
"""

from landscope.surface.full import BN_MODES, seed_spread, surface
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
