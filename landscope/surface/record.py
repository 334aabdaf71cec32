"""The surface record: loss values on a grid with its directions, provenance and fidelity, saved as
a self-describing ``.npz`` (arrays and one JSON ``meta`` entry, no pickles) and read back.

A leaf: it imports no other part of :mod:`landscope.surface`, so the grid that fills a surface
(:mod:`landscope.surface.grid`) and the views built on it can all import it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from landscope import io
from landscope.errors import BadInputError

SCHEMA = "landscope.surface"
SCHEMA_VERSION = 1


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


@dataclass(frozen=True)
class SeedSpread:
    """How a random-direction picture depends on its seed (:func:`~landscope.surface.seed_spread`).

    ``ranges``: each seed's value range max − min; ``relative_spread_median`` and
    ``relative_spread_max``: the median and the maximum over grid points of the standard deviation
    across seeds, over the median range. ``to_dict`` writes ``resolution`` (grid points per axis)
    under its key of 0.1, ``steps``, so that files keep their keys.
    """

    seeds: tuple[int, ...]
    resolution: int
    span: float | tuple
    ranges: tuple[float, ...]
    relative_spread_median: float
    relative_spread_max: float

    def to_dict(self) -> dict:
        return {"seeds": list(self.seeds), "steps": self.resolution, "span": self.span,
                "ranges": list(self.ranges),
                "relative_spread_median": self.relative_spread_median,
                "relative_spread_max": self.relative_spread_max}

    @classmethod
    def from_dict(cls, entry: dict) -> SeedSpread:
        return cls(tuple(entry["seeds"]), entry["steps"], entry["span"], tuple(entry["ranges"]),
                   entry["relative_spread_median"], entry["relative_spread_max"])


@dataclass(frozen=True)
class Fidelity:
    """How far a picture can be trusted beyond its grid: the spread across direction seeds, and
    (a line along −∇L) the Taylor models' numbers (:meth:`landscope.taylor.TaylorProfile.summary`).
    An entry that was not measured is None and is left out of :meth:`to_dict`."""

    seed_spread: SeedSpread | None = None
    taylor: dict | None = None

    def to_dict(self) -> dict:
        out = {}
        if self.seed_spread is not None:
            out["seed_spread"] = self.seed_spread.to_dict()
        if self.taylor is not None:
            out["taylor"] = self.taylor
        return out

    @classmethod
    def from_dict(cls, entry: dict) -> Fidelity:
        spread = entry.get("seed_spread")
        return cls(None if spread is None else SeedSpread.from_dict(spread), entry.get("taylor"))


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
    fidelity: Fidelity = field(default_factory=Fidelity)

    def save(self, path: str | Path, *, extra: dict | None = None) -> Path:
        """Write an ``.npz`` (arrays + a JSON ``meta`` entry) atomically; read it with :meth:`load`.

        ``extra`` arrays are stored too (a :class:`~landscope.surface.Grid` keeps its resume
        state there).
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
        meta = {**self.meta, "fidelity": self.fidelity.to_dict(),
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
                   arrays.get("evaluated"), projection,
                   Fidelity.from_dict(meta.pop("fidelity", {})))

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
               "complete": self.complete, "fidelity": self.fidelity.to_dict()}
        at = [np.flatnonzero(a == 0.0) for a in self.axes]
        if all(i.size for i in at):
            out["centre_value"] = float(self.values[tuple(int(i[0]) for i in at)])
        if self.projection is not None:
            out["trajectory"] = self.projection.to_dict()
        if self.error is not None:
            out["max_error"] = float(np.nanmax(self.error))
        return out
