"""What :meth:`Objective.from_model <landscope.objective.Objective.from_model>` builds before the
Objective: the batches on the analysis dtype and device (this rank's shard under data
parallelism), the :class:`~landscope.functional.ModelLoss`, what ``info`` records about them
(loss, mode, parameters and their ties, data, batch weights), a known lower bound of the loss
(0 for MSE, cross-entropy and the like with hard labels) and the sums over the ranks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from landscope import distributed
from landscope.data import Batches
from landscope.errors import BadInputError
from landscope.functional import ModelLoss

# Lower bounds of common losses (with hard labels and no smoothing): where they are reached the
# point is a global minimum.
_KNOWN_LOWER_BOUNDS = {
    torch.nn.functional.mse_loss: 0.0,
    torch.nn.functional.l1_loss: 0.0,
    torch.nn.functional.cross_entropy: 0.0,
    torch.nn.functional.binary_cross_entropy_with_logits: 0.0,
    torch.nn.functional.smooth_l1_loss: 0.0,
    torch.nn.functional.huber_loss: 0.0,
}
_LOSS_MODULES_BOUNDED_BY_ZERO = (
    nn.MSELoss, nn.L1Loss, nn.BCEWithLogitsLoss, nn.SmoothL1Loss, nn.HuberLoss,
)


class ModelParts(NamedTuple):
    """The parts an Objective of a model is made of."""

    loss: ModelLoss
    info: dict
    lower_bound: float | None
    across: distributed.Local | distributed.AcrossRanks


def model_parts(model: nn.Module, loss_fn, data, *, params, mode: str, dtype, device,
                batch_size, lower_bound, seed: int, output, target_key, reduction, batch_weight,
                shard: str, group) -> ModelParts:
    """The parts of ``Objective.from_model(model, loss_fn, data, ...)`` (its arguments, whose
    meaning its docstring gives)."""
    first = next(iter(model.parameters()), None)
    dtype = dtype or _analysis_dtype(first)
    if dtype in (torch.float16, torch.bfloat16):
        raise BadInputError(
            f"dtype={dtype}: half precision keeps about 3 significant digits, too few for "
            "Hessian eigenvalues. Analyse in float32 (the default for half-precision models) "
            "or float64"
        )
    device = torch.device(device) if device is not None else (
        first.device if first is not None else torch.device("cpu"))
    own_loss = isinstance(loss_fn, str)
    if shard not in distributed.SHARDS:
        raise BadInputError(f"shard={shard!r}; use 'split' (every rank passes all the data), "
                            "'given' (each rank passes its own part) or 'replicate' (each "
                            "rank computes alone on all of it)")
    parallel = distributed.active(group) and shard != "replicate"
    if parallel and shard == "given" and _empty(data):
        data = []  # this rank's part is empty: the others hold the data
    batches = Batches(data, batch_size=batch_size, dtype=dtype, device=device,
                      target_key=target_key, target_to_model=own_loss)
    if parallel:
        batches = distributed.shard(batches, shard, mode, group)
    loss = ModelLoss(model, loss_fn, batches, params=params, mode=mode, dtype=dtype,
                     device=device, seed=seed, output=output, reduction=reduction,
                     batch_weight=batch_weight)
    info = {
        "kind": "model",
        "name": type(model).__name__,
        "loss": _loss_name(loss_fn),
        "mode": mode,
        "parameters": loss.names,
        "frozen_parameters": sorted(loss.frozen),
        "tied_parameters": _ties(loss),
        "data": loss.batches.description,
        "reduction": loss.reduction,
        "batch_weights": loss.weighting,
        "attention": "second-order passes run scaled_dot_product_attention's math kernel",
    }
    if first is not None and first.dtype != dtype:
        info["model_dtype"] = str(first.dtype).replace("torch.", "")
    if lower_bound is None and not own_loss:
        lower_bound = _known_lower_bound(loss_fn)
    across = distributed.AcrossRanks(loss.theta0.numel(), dtype, device, group) \
        if parallel else distributed.Local()
    if parallel:
        distributed.same_model(loss, group)
        info["ranks"] = across.ranks
    return ModelParts(loss, info, lower_bound, across)


def _empty(data) -> bool:
    """Whether ``data`` is (X, y) with no samples, or no batches at all."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and \
            all(isinstance(t, torch.Tensor) for t in data):
        return data[0].shape[0] == 0
    return isinstance(data, (tuple, list)) and len(data) == 0


def _loss_name(loss_fn) -> str:
    if isinstance(loss_fn, str):
        return "the model's own loss"
    return getattr(loss_fn, "__name__", None) or type(loss_fn).__name__


def _analysis_dtype(first: torch.nn.Parameter | None) -> torch.dtype:
    """The model's dtype, or float32 for a half-precision model."""
    if first is None:
        return torch.get_default_dtype()
    return torch.float32 if first.dtype in (torch.float16, torch.bfloat16) else first.dtype


def _ties(loss: ModelLoss) -> dict[str, list[str]]:
    """``{first name: [other names]}`` for parameters held under several names."""
    first = {id(p): name for name, p in loss.model.named_parameters()}
    ties: dict[str, list[str]] = {}
    for name, p in loss.model.named_parameters(remove_duplicate=False):
        if name != first[id(p)]:
            ties.setdefault(first[id(p)], []).append(name)
    return ties


def _known_lower_bound(loss_fn) -> float | None:
    if loss_fn in _KNOWN_LOWER_BOUNDS:
        return _KNOWN_LOWER_BOUNDS[loss_fn]
    if isinstance(loss_fn, _LOSS_MODULES_BOUNDED_BY_ZERO):
        return 0.0
    if isinstance(loss_fn, nn.CrossEntropyLoss) and loss_fn.label_smoothing == 0:
        return 0.0
    return None
