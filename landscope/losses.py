"""What landscope reads of a loss: the tensor it reads from the model's output (or the loss the
model returns itself), the check that a batch's loss is a finite scalar, and what each batch's
loss averages over with the reduction that turns the batches' sums into L.

What a batch's loss averages over (its weight w_b in L = Σ w_b ℓ_b / Σ w_b, see
:mod:`landscope.data`): the samples, for most losses; the targets not equal to ``ignore_index``,
or the sum of their class weights, for cross-entropy and NLL; the label tokens (≠ −100, shifted by
one for causal language models) for a Hugging Face model's own loss; nothing, for
``reduction="sum"``, whose batch losses are summed. A batch with nothing to average over is
skipped. A loss landscope does not know is taken as a mean over samples unless declared
(``reduction=``, ``batch_weight=``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from landscope import _checks as checks
from landscope.data import Batch, weighted_mean
from landscope.errors import BadInputError, NonFiniteLossError

REDUCTIONS = ("mean", "sum")
MODEL_LOSS = "model"
"""``loss_fn`` value meaning "the loss the model returns itself" (Hugging Face: ``.loss``)."""
IGNORED_LABEL = -100
"""The label value Hugging Face losses (and PyTorch's default ``ignore_index``) leave out."""


def reduced(reduction: str, total, weight: float):
    """L (or ∇L, or H·V) from its sums over the batches, ``total`` = Σ_b w_b ℓ_b and ``weight``
    = Σ_b w_b: their weighted mean (:func:`landscope.data.weighted_mean`) for a mean loss, the sum
    Σ_b ℓ_b itself for ``reduction="sum"`` (there w_b = 1)."""
    return total if reduction == "sum" else weighted_mean(total, weight)


def select_output(output, spec: int | str | Callable | None = None):
    """The tensor the loss reads from a model's output.

    ``spec`` None: a tensor as it is, the first element of a tuple or list, the ``logits`` entry
    of a mapping or Hugging Face ``ModelOutput``; an int indexes a tuple, a str names an entry or
    attribute, a callable maps the output to the tensor.
    """
    if callable(spec):
        return spec(output)
    if isinstance(output, torch.Tensor) and spec is None:
        return output
    if isinstance(output, Mapping):
        key = "logits" if spec is None else spec
        if key not in output:
            raise BadInputError(
                f"the model returns a mapping with entries {', '.join(map(str, output))} and no "
                f"{key!r}; name the output the loss reads with output='<entry>'"
            )
        return output[key]
    if isinstance(output, (tuple, list)):
        index = 0 if spec is None else spec
        if not isinstance(index, int) or not -len(output) <= index < len(output):
            raise BadInputError(f"output={spec!r}, but the model returns a {type(output).__name__}"
                                f" of {len(output)}; use an index below {len(output)}")
        return output[index]
    if isinstance(spec, str) and hasattr(output, spec):
        return getattr(output, spec)
    if spec is None:
        return output
    raise BadInputError(f"output={spec!r} does not apply to a {type(output).__name__} output")


def own_loss(output) -> torch.Tensor:
    """The loss a model returned itself: ``.loss`` / ``["loss"]``, or a tuple's first element."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if loss is None and isinstance(output, (tuple, list)) and output:
        loss = output[0]
    if loss is None and isinstance(output, torch.Tensor):
        loss = output
    if loss is None:
        raise BadInputError(
            "loss='model', but the model returned no loss; pass the labels in the batch (a "
            "'labels' entry, as Hugging Face models expect) or give a loss function instead"
        )
    return loss


def weighing(loss_fn, model: nn.Module, reduction: str | None,
              batch_weight: Callable[[Batch], float] | None):
    """(reduction, what w_b counts, w_b as a function of the batch) for ``loss_fn``."""
    declared = getattr(loss_fn, "reduction", None) if isinstance(loss_fn, nn.Module) else None
    if declared not in (None, *REDUCTIONS):
        raise BadInputError(
            f"the loss has reduction={declared!r}; landscope needs a scalar loss per batch. Use "
            "reduction='mean' (the PyTorch default) or 'sum'"
        )
    if reduction is not None:
        checks.choice("reduction", reduction, REDUCTIONS)
    if declared is not None and reduction is not None and declared != reduction:
        raise BadInputError(f"reduction={reduction!r}, but the loss itself has "
                            f"reduction={declared!r}; leave reduction out or make them agree")
    reduction = reduction or declared or "mean"
    if reduction == "sum":
        return "sum", "none: batch losses are summed (reduction='sum')", lambda batch: 1.0
    if batch_weight is not None:
        return "mean", "as declared by batch_weight", batch_weight
    if isinstance(loss_fn, str):
        shift = _is_causal_lm(model)
        what = "label tokens ≠ −100" + (" after the causal shift" if shift else "")
        return "mean", what, lambda batch: _label_count(batch, shift)
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        ignore, weight = loss_fn.ignore_index, loss_fn.weight
        what = ("the class weights of targets" if weight is not None else "targets") + \
            f" ≠ ignore_index ({ignore})"
        return "mean", what, lambda batch: _class_targets(batch, ignore, weight)
    if loss_fn in (F.cross_entropy, F.nll_loss):
        return ("mean", f"targets ≠ ignore_index ({IGNORED_LABEL})",
                lambda batch: _class_targets(batch, IGNORED_LABEL, None))
    return "mean", "samples", lambda batch: batch.size


def _class_targets(batch: Batch, ignore: int, weight: torch.Tensor | None) -> float:
    """What a mean cross-entropy / NLL divides by: Σ weight[y] over targets y ≠ ``ignore``."""
    target = batch.target
    if target is None or target.is_floating_point():  # class probabilities: a mean over samples
        return batch.size
    kept = target[target != ignore]
    if weight is None:
        return kept.numel()
    return float(weight.to(kept.device)[kept].sum())


def _label_count(batch: Batch, shift: bool) -> float:
    """What a Hugging Face model's own loss averages over: label tokens ≠ −100 (for a causal
    language model, those after the first position of each sequence: token t predicts t + 1)."""
    labels = batch.target
    if labels is None or labels.is_floating_point():
        return batch.size
    if shift:
        labels = labels[..., 1:]
    return int((labels != IGNORED_LABEL).sum())


def _is_causal_lm(model: nn.Module) -> bool:
    name = type(model).__name__
    return getattr(model, "loss_type", None) == "ForCausalLM" or name.endswith(
        ("ForCausalLM", "LMHeadModel"))


def check_loss(loss, where: str, finite: bool = True) -> None:
    """Raise a clear error unless ``loss`` is a (finite, unless ``finite=False``) scalar
    tensor."""
    if not isinstance(loss, torch.Tensor):
        raise BadInputError(f"the loss on {where} is a {type(loss).__name__}, not a tensor")
    if loss.numel() != 1:
        raise BadInputError(
            f"the loss on {where} has shape {tuple(loss.shape)}; landscope needs a scalar. Use a "
            "loss with reduction='mean' (the PyTorch default), not a per-sample loss."
        )
    if not finite:
        return
    value = loss.detach().reshape(()).item()
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"the loss is {value} on {where}. Check the data of that batch for NaN/Inf, or analyse "
            "a point where training had not diverged."
        )
