"""The record of a monitored run: a CSV table any tool can read, under a versioned JSON header.

A run directory holds ``monitor.csv`` (one row per recorded step; ``nan`` marks a value not
measured at that step) and ``monitor.json`` (a ``landscope.io`` result of kind ``"monitor"``: the
model's layers and activation sites, the optimiser and its hyper-parameters, the run's make-up
(:mod:`landscope.monitor.makeup`; absent from older records), the settings, the curvature events,
the list of columns). ``pandas.read_csv("monitor.csv")`` is all another tool needs.

Column names: ``step, loss, val_loss, lr, non_finite, grad_norm, grad_cos, update_ratio``; per
layer ``grad_norm:<layer>``, ``weight_norm:<layer>``, ``update_ratio:<layer>``,
``row_spread:<layer>``; per activation site ``saturation:<site>`` or ``dead:<site>``; then the
curvature columns of :mod:`landscope.monitor.curvature`. ``update_ratio`` is ‖Δθ‖/‖θ‖ over one
optimiser step; ``grad_cos`` the cosine between the gradients of consecutive steps. With
``tensorboard=True`` the same values also go to ``run_dir/tensorboard`` (if tensorboard is
installed).
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from landscope import io
from landscope.errors import BadInputError

RECORD_FORMAT = 1
"""Version of the table layout; a record in another format is refused with a clear error. It
changes when a column changes meaning or the layout changes; a column added is listed in the
header and read by name, and reads as NaN from a record made before it (``batch_sharpness``)."""
HEADER, TABLE = "monitor.json", "monitor.csv"
EVERY_STEP = ("step", "loss", "val_loss", "lr", "non_finite")
"""The columns recorded at every step; the table starts with them (the rest every few steps)."""
BASE_COLUMNS = (*EVERY_STEP, "grad_norm", "grad_cos", "update_ratio")
LAYER_STATS = ("grad_norm", "weight_norm", "update_ratio", "row_spread")


@dataclass
class Record:
    """A monitored run: ``meta`` (the header) and ``columns`` (name → float array, NaN = missing).

    Examples
    --------
    >>> r = Record({"layers": []}, {"step": np.arange(3.0), "loss": np.array([3.0, 2.0, 1.0])})
    >>> r["loss"].tolist(), r["val_loss"].tolist()
    ([3.0, 2.0, 1.0], [nan, nan, nan])
    """

    meta: dict
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        """The column, or all-NaN if this run did not record it."""
        if name in self.columns:
            return self.columns[name]
        return np.full(len(self), np.nan)

    def __len__(self) -> int:
        return len(self.columns["step"]) if "step" in self.columns else 0

    @property
    def steps(self) -> np.ndarray:
        return self["step"]

    def per_layer(self, stat: str) -> dict[str, np.ndarray]:
        """``{layer: column}`` for one of LAYER_STATS, layers in depth (registration) order."""
        return {layer["name"]: self[f"{stat}:{layer['name']}"]
                for layer in self.meta.get("layers", [])}

    def per_site(self, kind: str) -> dict[str, np.ndarray]:
        """``{site: column}`` for activation sites of ``kind`` ("saturation" or "dead")."""
        return {site["name"]: self[f"{kind}:{site['name']}"]
                for site in self.meta.get("sites", []) if site["kind"] == kind}


def column_names(layer_names: list[str], weighted: list[str], sites: list[dict],
                 curvature: tuple[str, ...]) -> list[str]:
    """All columns of a record, in table order."""
    names = list(BASE_COLUMNS)
    for stat in LAYER_STATS:
        pool = weighted if stat == "row_spread" else layer_names
        names += [f"{stat}:{name}" for name in pool]
    names += [f"{site['kind']}:{site['name']}" for site in sites]
    return names + list(curvature)


class Columns:
    """A record's columns in table order, addressed by name: ``columns["grad_norm"]`` is the
    position of a column, ``columns.per_layer("grad_norm")`` those of its per-layer columns.

    Examples
    --------
    >>> columns = Columns(column_names(["0", "2"], ["0"], [], ()))
    >>> columns["loss"], [columns.names[i] for i in columns.per_layer("weight_norm")]
    (1, ['weight_norm:0', 'weight_norm:2'])
    """

    def __init__(self, names: list[str]):
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}

    def __getitem__(self, name: str) -> int:
        return self.index[name]

    def __len__(self) -> int:
        return len(self.names)

    def per_layer(self, stat: str) -> list[int]:
        """The columns ``<stat>:<layer>`` of one of LAYER_STATS, layers in depth order."""
        return [i for i, name in enumerate(self.names) if name.startswith(f"{stat}:")]


def write_header(run_dir: str | Path, meta: dict) -> Path:
    """Write ``monitor.json`` (atomically, schema-versioned)."""
    return io.write_result(run_dir, "monitor", {"record_format": RECORD_FORMAT, "table": TABLE,
                                                **meta}, name=HEADER)


def append_rows(run_dir: str | Path, names: list[str], rows: np.ndarray, *, new: bool) -> int:
    """Append rows to ``monitor.csv``; ``new`` starts the file afresh with the column names
    (written atomically, so an interrupt leaves the old table whole).

    Returns the byte offset at which the last row starts, for :func:`rewrite_last_row`.
    """
    lines = _lines(rows)
    path = Path(run_dir) / TABLE
    with io.atomic_write(path) if new else path.open("ab") as stream:
        if new:
            stream.write((",".join(names) + "\n").encode())
        stream.write("".join(line + "\n" for line in lines[:-1]).encode())
        offset = stream.tell()
        stream.write((lines[-1] + "\n").encode())
    return offset


def rewrite_last_row(run_dir: str | Path, offset: int, row: np.ndarray) -> None:
    """Replace the last row of ``monitor.csv`` (starting at byte ``offset``) by ``row``."""
    with (Path(run_dir) / TABLE).open("r+b") as stream:
        stream.seek(offset)
        stream.truncate()
        stream.write((_lines(row[None])[0] + "\n").encode())


def read_record(run_dir: str | Path) -> Record:
    """The record in ``run_dir`` (a directory holding ``monitor.json`` and ``monitor.csv``).

    Refuses, with a message naming the fix, a directory without a record, a header of another
    schema or record format, and a table whose columns disagree with its header.
    """
    run_dir = Path(run_dir)
    if not (run_dir / HEADER).is_file():
        raise BadInputError(
            f"{run_dir} holds no monitor record ({HEADER} is missing); record a run with "
            "landscope.Monitor(model, optimizer, run_dir) and call monitor.step(loss) every step"
        )
    meta = io.read_result(run_dir / HEADER)
    if meta.get("kind") != "monitor":
        raise BadInputError(f"{run_dir / HEADER} is a landscope {meta.get('kind')!r} result, "
                            "not a monitor record")
    if meta.get("record_format") != RECORD_FORMAT:
        raise BadInputError(
            f"{run_dir / HEADER} has record format {meta.get('record_format')}; this landscope "
            f"reads format {RECORD_FORMAT}. Record the run again with this version."
        )
    table = run_dir / meta.get("table", TABLE)
    if not table.is_file():
        return Record(meta, {name: np.zeros(0) for name in meta.get("columns", ["step"])})
    with table.open(newline="") as stream:
        reader = csv.reader(stream)
        names = next(reader, [])
        values = [[float(x) for x in row] for row in reader if row]
    if names != meta.get("columns"):
        raise BadInputError(f"{table} has columns that differ from those listed in "
                            f"{HEADER}; the two files are from different runs")
    data = np.array(values, dtype=np.float64).reshape(len(values), len(names))
    return Record(meta, {name: data[:, i] for i, name in enumerate(names)})


def _lines(rows: np.ndarray) -> list[str]:
    """The CSV lines of ``rows`` (``nan`` for values not measured).

    Most rows hold only the EVERY_STEP columns (the others are recorded every few steps): those
    are written from a template, ten times faster than formatting every ``nan``.
    """
    base = len(EVERY_STEP)
    thin = ",".join(["%.10g"] * base) + ",nan" * (rows.shape[1] - base)
    full = ",".join(["%.10g"] * rows.shape[1])
    sparse = np.isnan(rows[:, base:]).all(1).tolist()
    return [thin % tuple(row[:base]) if empty else full % tuple(row)
            for row, empty in zip(rows.tolist(), sparse, strict=True)]


def tensorboard_writer(run_dir: Path | None):
    """A ``SummaryWriter`` on ``run_dir/tensorboard``, or None (with a warning) if not installed."""
    if run_dir is None:
        raise BadInputError("tensorboard=True needs a run_dir to write the event files to")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard=True but the tensorboard package is not installed "
                      "(pip install tensorboard); writing the CSV record only",
                      RuntimeWarning, stacklevel=4)
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def write_scalars(writer, columns: list[str], rows: np.ndarray) -> None:
    """Every measured value of ``rows`` as a TensorBoard scalar (``grad_norm:0`` → grad_norm/0)."""
    for row in rows:
        step = int(row[0])
        for name, value in zip(columns[1:], row[1:], strict=True):
            if not math.isnan(value):
                writer.add_scalar(name.replace(":", "/"), value, step)
