"""The run directory: schema-versioned ``result.json`` files and weights-only checkpoints.

Results are written atomically (to a temporary file, then renamed), so a file that exists is
complete. Checkpoints are read with ``torch.load(weights_only=True)``: a file that would need to
unpickle arbitrary Python objects is refused, never executed.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from landscope import __version__
from landscope.errors import BadInputError, CheckpointError

SCHEMA = "landscope.result"
SCHEMA_VERSION = 1


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
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(_jsonable(document), stream, indent=2, allow_nan=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it holds pickled Python objects that only a full unpickle "
            "could rebuild, and landscope loads checkpoints with weights_only=True. Save the "
            "weights alone: torch.save(model.state_dict(), path)."
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file: {error}") \
            from error
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor)
                                               for v in loaded.values()):
        raise CheckpointError(
            f"checkpoint {path} is not a state dict of tensors; save model.state_dict()"
        )
    return loaded


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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), temporary)
    os.replace(temporary, path)
    return path


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
