"""The run directory: schema-versioned ``result.json`` files and weights-only checkpoints.

Every file landscope writes (results, checkpoints, surfaces, pictures, reports) goes through
:func:`atomic_write`: a temporary file beside the target, renamed onto it once complete, so a file
that exists is complete and an interrupt leaves no partial file. The one exception is the
Monitor's table, which grows by appended rows once it has been started (atomically).

Checkpoints are read with ``torch.load(weights_only=True)``: a file that would need to unpickle
arbitrary Python objects is refused, never executed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import torch

from landscope import distributed
from landscope._version import __version__
from landscope.errors import BadInputError, CheckpointError

SCHEMA = "landscope.result"
SCHEMA_VERSION = 1

_WRITTEN: ContextVar[list[Path] | None] = ContextVar("landscope_written", default=None)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Write ``path`` through a stream on a temporary file beside it, renamed onto it at the end.

    An error or an interrupt inside the block removes the temporary file and leaves ``path`` as it
    was. The file gets the mode ``open`` would give it (0666 less the umask: 0644 by default).
    Under data parallelism only rank 0 writes: the other ranks hold the same results, and their
    stream goes to a temporary file that is removed (:mod:`landscope.distributed`).

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "note.txt"
    >>> with atomic_write(target, "w") as stream:
    ...     _ = stream.write("complete")
    >>> target.read_text()
    'complete'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    handle = os.open(temporary, flags, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(handle, mode, **open_kwargs) as stream:
            yield stream
        if distributed.is_main():
            os.replace(temporary, path)
        else:
            temporary.unlink()
            return
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    written = _WRITTEN.get()
    if written is not None:
        written.append(path)


@contextmanager
def recording() -> Iterator[list[Path]]:
    """The paths that :func:`atomic_write` completes inside the block, in order (the command line
    lists them when it is interrupted)."""
    written: list[Path] = []
    token = _WRITTEN.set(written)
    try:
        yield written
    finally:
        _WRITTEN.reset(token)


def write_csv(path: str | Path, rows, fields) -> Path:
    """``rows`` (mappings) as a CSV with the header ``fields`` (other keys left out), written
    atomically."""
    with atomic_write(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def write_result(directory: str | Path, kind: str, payload: dict,
                 name: str = "result.json") -> Path:
    """Write ``payload`` under a versioned header to ``directory/name`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "landscope_version": __version__,
        "torch_version": torch.__version__,
        **payload,
    }
    path = directory / name
    with atomic_write(path, "w", encoding="utf-8") as stream:
        json.dump(_jsonable(document), stream, indent=2, allow_nan=False)
    return path


def read_result(path: str | Path) -> dict:
    """Read a result file, refusing other schemas and versions with a clear error."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise BadInputError(f"no result file at {path}") from error
    except json.JSONDecodeError as error:
        raise BadInputError(f"{path} is not valid JSON ({error}); was it written by landscope?") \
            from error
    if document.get("schema") != SCHEMA:
        raise BadInputError(f"{path} is not a landscope result (schema {document.get('schema')!r})")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise BadInputError(
            f"{path} has schema version {document.get('schema_version')}; this landscope "
            f"({__version__}) reads version {SCHEMA_VERSION}. Re-run the analysis with this "
            "version."
        )
    return document


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from ``path``, loaded with ``weights_only=True``.

    Accepts a bare state dict or the common wrappers ``{"state_dict": ...}`` and
    ``{"model": ...}``.
    """
    loaded = load_weights(path)
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor)
                                               for v in loaded.values()):
        raise CheckpointError(
            f"checkpoint {path} is not a state dict of tensors; save model.state_dict()"
        )
    return loaded


def load_weights(path: str | Path):
    """Whatever ``torch.save`` wrote to ``path`` (tensors, dicts, lists), read with
    ``weights_only=True``; every way of failing gets a message that says which it is and the fix.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".bin"))
        raise CheckpointError(
            f"checkpoint {path} is a directory; give the file inside it"
            + (f" (it holds {', '.join(inside[:5])})" if inside else "")
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found is None:  # a pickle stream the safe unpickler cannot parse: damaged
            raise CheckpointError(_unreadable(path, error)) from error
        raise CheckpointError(
            f"refused to load {path}: besides tensors it holds a pickled Python object "
            f"({found.group(1)}) that only a full unpickle could rebuild, and landscope loads "
            "checkpoints with weights_only=True. Save the weights alone: "
            "torch.save(model.state_dict(), path)."
        ) from error
    except Exception as error:  # torch.load fails on damaged files in many ways
        raise CheckpointError(_unreadable(path, error)) from error


def load_into(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a weights-only checkpoint into ``model``; mismatched keys give a clear error."""
    state = load_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {error}") from error
    return model


def save_state_dict(model: torch.nn.Module, path: str | Path) -> Path:
    """Save the model's weights atomically (a checkpoint that exists is complete)."""
    path = Path(path)
    with atomic_write(path) as stream:
        torch.save(model.state_dict(), stream)
    return path


def _unreadable(path: Path, error: Exception) -> str:
    """The message for a file torch.load cannot read; torch's own advice to load it unsafely is
    left out, only its diagnosis is kept."""
    text = str(error).split("WeightsUnpickler error:")[-1].strip()
    reason = text.splitlines()[0].split(". ")[0][:160] if text else ""
    return (f"checkpoint {path} is damaged or not a file written by torch.save "
            f"({type(error).__name__}{': ' + reason if reason else ''}); save it again with "
            "torch.save(model.state_dict(), path)")


def _jsonable(value):
    """Plain JSON: tensors to lists, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)
