"""What a user calls "data", turned into a re-iterable sequence of weighted batches.

Why this is a module of its own: the full-data loss must not depend on how the data was cut.
With per-batch mean losses ℓ_b over n_b samples, landscope analyses

    L(θ) = Σ_b n_b · ℓ_b(θ) / Σ_b n_b,

the mean over all samples, whatever the batch sizes (averaging ℓ_b without the weights n_b, as some
tools do, is off whenever the last batch is short). Gradients and Hessians inherit the weighting.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from landscope.errors import BadInputError


@dataclass(frozen=True)
class Batch:
    """One batch: the model's positional inputs, the target, and the number of samples."""

    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor
    size: int


class Batches:
    """A re-iterable sequence of :class:`Batch` es on a fixed device and floating dtype.

    Parameters
    ----------
    data:
        ``(X, y)`` tensors with equal first dimension; a ``DataLoader``; or any iterable whose
        items are ``(inputs..., target)`` tuples. A one-shot iterator (a generator) is read once
        and kept in memory so that every pass sees the same batches.
    batch_size:
        Only for ``(X, y)``: evaluate in chunks of this many samples (bounds memory). ``None``
        evaluates all samples in one batch.
    dtype, device:
        Floating tensors are cast to ``dtype``; everything is moved to ``device``.
    """

    def __init__(self, data, *, batch_size: int | None = None, dtype=None, device=None):
        self.dtype = dtype
        self.device = device
        self._source, self.description = _normalise(data, batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for index, raw in enumerate(self._source):
            yield self._prepare(index, raw)

    def fixed(self) -> Batches:
        """The same batches, read once and frozen (needed when batch composition matters)."""
        frozen = Batches.__new__(Batches)
        frozen.dtype, frozen.device = self.dtype, self.device
        frozen._source = list(self._source)
        frozen.description = self.description + ", batches fixed"
        return frozen

    def _prepare(self, index: int, raw) -> Batch:
        if not isinstance(raw, (tuple, list)) or len(raw) < 2:
            raise BadInputError(
                f"batch {index} is a {type(raw).__name__}; landscope expects each batch to be a "
                "tuple (inputs..., target), as a DataLoader over a TensorDataset yields"
            )
        tensors = [self._move(index, t) for t in raw]
        target = tensors[-1]
        if target.dim() == 0:
            raise BadInputError(
                f"batch {index} has a 0-d target; the target's first dimension must count samples"
            )
        for position, tensor in enumerate(tensors[:-1]):
            if tensor.dim() == 0 or tensor.shape[0] != target.shape[0]:
                raise BadInputError(
                    f"batch {index}: input {position} has shape {tuple(tensor.shape)} but the "
                    f"target has {target.shape[0]} samples; inputs and target must agree in their "
                    "first dimension"
                )
        return Batch(tuple(tensors[:-1]), target, int(target.shape[0]))

    def _move(self, index: int, value) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise BadInputError(
                f"batch {index} holds a {type(value).__name__}; every element of a batch must be a "
                "torch.Tensor"
            )
        dtype = self.dtype if value.is_floating_point() and self.dtype is not None else None
        return value.to(device=self.device, dtype=dtype)


def _normalise(data, batch_size: int | None) -> tuple[Iterable, str]:
    if _is_tensor_pair(data):
        X, y = data
        if X.shape[0] != y.shape[0]:
            raise BadInputError(
                f"X has {X.shape[0]} samples but y has {y.shape[0]}; they must match"
            )
        if X.shape[0] == 0:
            raise BadInputError("the data set is empty (0 samples)")
        if batch_size is None:
            return [(X, y)], f"{X.shape[0]} samples in one batch"
        if batch_size < 1:
            raise BadInputError(f"batch_size={batch_size}; use a positive number or None")
        chunks = list(zip(X.split(batch_size), y.split(batch_size), strict=True))
        return chunks, f"{X.shape[0]} samples in {len(chunks)} batches of at most {batch_size}"
    if batch_size is not None:
        raise BadInputError(
            "batch_size only applies to (X, y) tensors; a DataLoader keeps its own batch size"
        )
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise BadInputError(
            f"data is a {type(data).__name__}; pass (X, y) tensors, a DataLoader, or an iterable "
            "of (inputs, target) batches"
        )
    if iter(data) is data:  # a generator or other one-shot iterator: keep what it yields
        data = list(data)
        return data, f"{len(data)} batches read once from an iterator"
    return data, f"{type(data).__name__} of batches"


def _is_tensor_pair(data) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    )
