"""A model, a loss and data seen as a pure function of one flat parameter vector θ.

The caller's model is never changed: parameters are substituted with ``torch.func.functional_call``
(views of θ, so gradients come back flat), per-module ``training`` flags are restored exactly after
each pass, buffers are handed over as copies whenever a train-mode forward could update them
(BatchNorm running statistics), and train-mode randomness (dropout) is drawn from a forked RNG
seeded per batch, so the caller's RNG stream is untouched and every pass sees the same masks.

Tied parameters. θ holds one block per distinct ``nn.Parameter`` (an embedding tied to its output
head, a module used twice), named by its first name in ``named_parameters()``. The substitution
goes through *slots*: every distinct (module, attribute) pair that holds a parameter, each set once
to the view of its block (``tie_weights=False``). Setting one attribute twice, as
``functional_call``'s default tying does for a module reached by two paths, restores the wrong
tensor and leaves the caller's model holding a view of θ.

What the loss reads of the model's output, the checks of each batch's loss and its weight (what
it averages over) are :mod:`landscope.losses`.

Attention. PyTorch's fused ``scaled_dot_product_attention`` kernels have no second derivative;
passes whose graph is differentiated twice run under the math kernel (same function, composite
operations), first-order passes keep the fast kernels.

Why eval mode by default: in train mode BatchNorm normalises with the statistics of the batch
itself and dropout samples masks, so "the loss" depends on how the data was batched and on a
random draw; the function the network computes at test time, and whose minimum training seeks,
is the eval-mode one. Train mode (with fixed batches and fixed masks) is an option.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscope import _checks as checks
from landscope.data import Batch, Batches, weighted_mean
from landscope.errors import BadInputError
from landscope.losses import (
    MODEL_LOSS,
    check_loss,
    own_loss,
    select_output,
    weighing,
)

MODES = ("eval", "train")


class ModelLoss:
    """θ ↦ per-batch losses of ``loss_fn(output(model(*inputs, **kwargs)), target)`` at θ.

    Calling the object with θ yields ``(batch index, batch loss, weight w_b, samples)`` for every
    batch with w_b > 0; the loss carries the autograd graph back to θ, and
    L(θ) = Σ w_b ℓ_b / Σ w_b (``reduction == "mean"``) or Σ ℓ_b (``"sum"``).

    Attributes
    ----------
    names, shapes, sizes: θ's blocks, one per distinct selected Parameter (its first name).
    frozen: the other parameters' values. buffers: the model's buffers (first names).
    slots, buffer_slots: ``{slot: first name}`` for every distinct (module, attribute) holding a
        parameter or buffer (tied aliases included; a module reached by two paths once).
    reduction: "mean" or "sum". weighting: what w_b counts, in words.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable | str,
        batches: Batches,
        *,
        params: str | Sequence[str] | None,
        mode: str,
        dtype: torch.dtype,
        device: torch.device,
        seed: int,
        output: int | str | Callable | None = None,
        reduction: str | None = None,
        batch_weight: Callable[[Batch], float] | None = None,
    ):
        checks.choice("mode", mode, MODES)
        if isinstance(loss_fn, str) and loss_fn != MODEL_LOSS:
            raise BadInputError(f"loss={loss_fn!r}; pass a loss function, or {MODEL_LOSS!r} for "
                                "the loss the model returns itself")
        self.model, self.loss_fn, self.mode, self.seed = model, loss_fn, mode, seed
        self.output, self.device = output, device
        self.writes_inputs = False  # set by survey(): the model changes its inputs in place
        self.batches = batches.fixed() if mode == "train" else batches
        self.names = select_parameters(model, params)
        named = dict(model.named_parameters())
        chosen = [named[name] for name in self.names]
        self.shapes = [p.shape for p in chosen]
        self.sizes = [p.numel() for p in chosen]
        self.theta0 = torch.cat([p.detach().reshape(-1) for p in chosen]).to(device, dtype)
        selected = set(self.names)
        self.frozen = {name: p.detach().to(device, dtype)
                       for name, p in named.items() if name not in selected}
        buffers = dict(model.named_buffers())
        self.buffers = {name: b.detach().to(device, dtype if b.is_floating_point() else None)
                        for name, b in buffers.items()}
        self.slots = _slots(model, model.named_parameters(remove_duplicate=False), named)
        self.buffer_slots = _slots(model, model.named_buffers(remove_duplicate=False), buffers)
        self.reduction, self.weighting, self.weight = weighing(loss_fn, model, reduction,
                                                                batch_weight)
        self._weights: dict[int, float] = {}  # batch index -> w_b, read on the first pass

    def replace(self, *, batches: Iterable[Batch] | None = None,
                buffers: dict[str, torch.Tensor] | None = None,
                loss_fn: Callable | None = None) -> ModelLoss:
        """The same model, parameters and mode with some parts replaced; every other fixed part
        (θ₀, frozen values, slots, reduction and weighting) is shared, not rebuilt.

        ``batches``: other batches (a data subset; their weights are read afresh).
        ``buffers``: other buffer values by first name (BatchNorm statistics recomputed at θ).
        ``loss_fn``: another loss function that averages over the same w_b (one that also
        records what it computes).
        """
        other = copy.copy(self)
        if batches is not None:
            other.batches, other._weights = batches, {}
        if buffers is not None:
            other.buffers = buffers
        if loss_fn is not None:
            other.loss_fn = loss_fn
        return other

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """θ as a ``{parameter name: tensor}`` dict (views, no copy)."""
        pieces = theta.split(self.sizes)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    def state(self, theta: torch.Tensor | dict, buffers: dict | None = None
              ) -> dict[str, torch.Tensor]:
        """What ``functional_call`` needs at θ: every slot set to its block's view (or frozen
        value) and every buffer slot to its buffer (``buffers`` by first name, default the
        model's). θ may also be given as its ``unflatten`` views."""
        views = theta if isinstance(theta, dict) else self.unflatten(theta)
        values = {**self.frozen, **views}
        buffers = self.buffers if buffers is None else buffers
        return {**{slot: values[name] for slot, name in self.slots.items()},
                **{slot: buffers[name] for slot, name in self.buffer_slots.items()}}

    def __call__(self, theta: torch.Tensor, second_order: bool = False
                 ) -> Iterator[tuple[int, torch.Tensor, float, int]]:
        """The batches' losses at θ. Each batch's weight is read once (the batches are the same
        on every pass), and the losses are checked for NaN/Inf together at the end of the pass:
        one read by the host per pass, not one per batch (each read stalls a GPU)."""
        views = self.unflatten(theta)
        seen = []
        with _modes(self.model, self.mode), _attention(second_order):
            for index, batch in enumerate(self.batches):
                if index not in self._weights:
                    self._weights[index] = float(self.weight(batch))
                weight = self._weights[index]
                if weight > 0:
                    loss = self._forward(views, index, batch, finite=False)
                    seen.append((index, batch.size, loss.detach().reshape(())))
                    yield index, loss, weight, batch.size
        if seen and not bool(torch.isfinite(torch.stack([x for _, _, x in seen])).all()):
            index, size, loss = next(x for x in seen if not torch.isfinite(x[2]))
            check_loss(loss, f"batch {index} ({size} samples)")

    def inputs_of(self, batch: Batch) -> tuple[tuple, dict]:
        """The model's positional and keyword inputs for ``batch`` (copies if the model writes
        into its inputs in place, so the caller's data never changes)."""
        if self.writes_inputs:
            batch = _copied(batch)
        return batch.inputs, dict(batch.kwargs)

    def loss_of(self, output, batch: Batch) -> torch.Tensor:
        """The batch's loss from the model's raw output."""
        if isinstance(self.loss_fn, str):
            return own_loss(output)
        return self.loss_fn(select_output(output, self.output), batch.target)

    def survey(self, theta: torch.Tensor) -> dict[str, list[str]]:
        """What one forward on the first batch shows about the loss at θ.

        ``unused``: selected parameters the loss does not depend on (curvature zero).
        ``first_order_only``: custom ``torch.autograd.Function`` s on the path whose backward is
        ``@once_differentiable``: autograd cannot differentiate them again, so a Hessian-vector
        product through the kept graph would silently miss their second derivative.
        ``writes_inputs``: the model changes its inputs in place (an in-place first layer); the
        survey runs on copies, and every later forward gets copies too, so the caller's data is
        never changed.
        """
        views = self.unflatten(theta.detach().requires_grad_(True))
        with _modes(self.model, self.mode):
            index, batch = next(((i, b) for i, b in enumerate(self.batches)
                                 if self.weight(b) > 0), (None, None))
            if batch is None:
                weighted_mean(0.0, 0.0)  # raises: nothing to average over
            copy = _copied(batch)
            versions = [t._version for t in _tensors(copy)]
            loss = self._forward(views, index, copy)
            self.writes_inputs = versions != [t._version for t in _tensors(copy)]
        if not loss.requires_grad:
            raise BadInputError(
                f"the loss does not depend on any of the selected parameters "
                f"({', '.join(self.names[:5])}{', ...' if len(self.names) > 5 else ''}); choose "
                "parameters the model uses with params=[...]"
            )
        blockers = _once_differentiable(loss)
        grads = torch.autograd.grad(loss, list(views.values()), allow_unused=True)
        return {"unused": [name for name, g in zip(views, grads, strict=True) if g is None],
                "first_order_only": blockers, "writes_inputs": self.writes_inputs}

    def _forward(self, views: dict, index: int, batch: Batch, finite: bool = True
                 ) -> torch.Tensor:
        buffers = None
        args, kwargs = self.inputs_of(batch)
        if self.mode == "train":  # train-mode forwards may update running statistics in place
            buffers = {name: b.clone() for name, b in self.buffers.items()}
        try:
            with torch.random.fork_rng(devices=_rng_devices(self.device), enabled=self._random):
                if self._random:
                    torch.manual_seed(self.seed + index)
                output = torch.func.functional_call(
                    self.model, self.state(views, buffers), args, kwargs,
                    strict=False, tie_weights=False,
                )
                loss = self.loss_of(output, batch)
        except BadInputError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as error:
            raise BadInputError(
                f"the model or loss failed on batch {index} ({_describe(batch)}): {error}. Check "
                "that the data matches the model and that the loss accepts (output, target)."
            ) from error
        check_loss(loss, f"batch {index} ({batch.size} samples)", finite=finite)
        return loss

    @property
    def _random(self) -> bool:
        return self.mode == "train"


def _slots(model: nn.Module, pairs, first: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{slot: first name}``: one slot per distinct (module, attribute) that holds one of the
    tensors in ``first`` (named by their first names); ``pairs`` lists every path to them."""
    name_of = {id(t): name for name, t in first.items()}
    slots, seen = {}, set()
    for name, tensor in pairs:
        owner, _, attribute = name.rpartition(".")
        key = (id(model.get_submodule(owner)), attribute)
        if key not in seen:
            seen.add(key)
            slots[name] = name_of[id(tensor)]
    return slots


def _tensors(batch: Batch) -> list[torch.Tensor]:
    return [*batch.inputs, *batch.kwargs.values()]


def _copied(batch: Batch) -> Batch:
    """The batch with its model inputs copied (the target is only read)."""
    return Batch(tuple(t.clone() for t in batch.inputs), batch.target, batch.size,
                 {k: t.clone() for k, t in batch.kwargs.items()})


def _once_differentiable(loss: torch.Tensor) -> list[str]:
    """Names of the custom autograd Functions in ``loss``'s graph whose backward is wrapped by
    ``torch.autograd.function.once_differentiable`` (a graph walk: no extra pass)."""
    found, seen, stack = [], set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        backward = getattr(getattr(node, "_forward_cls", None), "backward", None)
        code = getattr(backward, "__code__", None)
        if code is not None and code.co_name == "wrapper" and \
                code.co_filename.replace("\\", "/").endswith("torch/autograd/function.py"):
            name = node._forward_cls.__name__
            if name not in found:
                found.append(name)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


@contextmanager
def _attention(second_order: bool):
    """Run ``scaled_dot_product_attention`` on its twice-differentiable math kernel if asked."""
    with sdpa_kernel([SDPBackend.MATH]) if second_order else contextlib.nullcontext():
        yield


def _describe(batch: Batch) -> str:
    parts = [str(tuple(t.shape)) for t in batch.inputs]
    parts += [f"{k}={tuple(t.shape)}" for k, t in batch.kwargs.items()]
    target = "none" if batch.target is None else str(tuple(batch.target.shape))
    return f"inputs {', '.join(parts)}, target {target}"


def select_parameters(model: nn.Module, params: str | Sequence[str] | None) -> list[str]:
    """Names of the parameters that make up θ.

    ``None`` selects every parameter with ``requires_grad``; otherwise names or shell-style
    patterns (``"fc.*"``, or ``"fc.*,head.*"`` as one comma-separated string).
    """
    named = [name for name, p in model.named_parameters()]
    if params is None:
        chosen = [name for name, p in model.named_parameters() if p.requires_grad]
    else:
        patterns = params.split(",") if isinstance(params, str) else list(params)
        patterns = [p.strip() for p in patterns if p.strip()]
        chosen = []
        for pattern in patterns:
            hits = [name for name in named if fnmatch.fnmatchcase(name, pattern)]
            if not hits:
                raise BadInputError(
                    f"params pattern {pattern!r} matches no parameter; the model has: "
                    f"{', '.join(named) or '(none)'}"
                )
            chosen += [name for name in hits if name not in chosen]
        chosen = [name for name in named if name in chosen]  # keep the model's order
    if not chosen:
        raise BadInputError(
            "the model has no trainable parameters to analyse (none, or all with "
            "requires_grad=False); pass params=[...] to choose some"
        )
    return chosen


@contextmanager
def _modes(model: nn.Module, mode: str):
    """Put ``model`` in ``mode`` and restore every submodule's own flag afterwards."""
    saved = [(module, module.training) for module in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


def _rng_devices(device: torch.device) -> list:
    return [device] if torch.device(device).type == "cuda" else []
