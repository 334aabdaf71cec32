"""A model, a loss and data seen as a pure function of one flat parameter vector θ.

The caller's model is never changed: parameters are substituted with ``torch.func.functional_call``
(views of θ, so gradients come back flat), per-module ``training`` flags are restored exactly after
each pass, buffers are handed over as copies whenever a train-mode forward could update them
(BatchNorm running statistics), and train-mode randomness (dropout) is drawn from a forked RNG
seeded per batch, so the caller's RNG stream is untouched and every pass sees the same masks.

Why eval mode by default: in train mode BatchNorm normalises with the statistics of the batch
itself and dropout samples masks, so "the loss" depends on how the data was batched and on a
random draw; the function the network computes at test time, and whose minimum training seeks,
is the eval-mode one. Train mode (with fixed batches and fixed masks) is an option.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from landscope.data import Batches
from landscope.errors import BadInputError, NonFiniteLossError

MODES = ("eval", "train")


class ModelLoss:
    """θ ↦ per-batch losses of ``loss_fn(model(*inputs), target)`` with θ substituted.

    Calling the object with θ yields ``(batch index, batch mean loss, batch size)`` for every
    batch; the loss carries the autograd graph back to θ.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        batches: Batches,
        *,
        params: str | Sequence[str] | None,
        mode: str,
        dtype: torch.dtype,
        device: torch.device,
        seed: int,
    ):
        if mode not in MODES:
            raise BadInputError(f"mode={mode!r}; use 'eval' (the default) or 'train'")
        self.model, self.loss_fn, self.mode, self.seed = model, loss_fn, mode, seed
        self.batches = batches.fixed() if mode == "train" else batches
        self.names = select_parameters(model, params)
        named = dict(model.named_parameters())
        chosen = [named[name] for name in self.names]
        self.shapes = [p.shape for p in chosen]
        self.sizes = [p.numel() for p in chosen]
        self.theta0 = torch.cat([p.detach().reshape(-1) for p in chosen]).to(device, dtype)
        self.frozen = {
            name: p.detach().to(device, dtype)
            for name, p in named.items()
            if name not in set(self.names)
        }
        self.buffers = {
            name: b.detach().to(device, dtype if b.is_floating_point() else None)
            for name, b in model.named_buffers()
        }

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """θ as a ``{parameter name: tensor}`` dict (views, no copy)."""
        pieces = theta.split(self.sizes)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    def __call__(self, theta: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, int]]:
        state = {**self.frozen, **self.unflatten(theta)}
        with _modes(self.model, self.mode):
            for index, batch in enumerate(self.batches):
                loss = self._forward(state, index, batch)
                yield index, loss, batch.size

    def unused_parameters(self, theta: torch.Tensor) -> list[str]:
        """Names of selected parameters that the loss does not depend on (curvature zero)."""
        views = self.unflatten(theta.detach().requires_grad_(True))
        state = {**self.frozen, **views}
        with _modes(self.model, self.mode):
            batch = next(iter(self.batches))
            loss = self._forward(state, 0, batch)
        grads = torch.autograd.grad(loss, list(views.values()), allow_unused=True)
        return [name for name, g in zip(views, grads, strict=True) if g is None]

    def _forward(self, state: dict, index: int, batch) -> torch.Tensor:
        buffers = self.buffers
        if self.mode == "train":  # train-mode forwards may update running statistics in place
            buffers = {name: b.clone() for name, b in buffers.items()}
        try:
            with torch.random.fork_rng(devices=_rng_devices(batch.target), enabled=self._random):
                if self._random:
                    torch.manual_seed(self.seed + index)
                output = torch.func.functional_call(
                    self.model, {**state, **buffers}, batch.inputs, strict=False
                )
                loss = self.loss_fn(output, batch.target)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            shapes = ", ".join(str(tuple(t.shape)) for t in batch.inputs)
            raise BadInputError(
                f"the model or loss failed on batch {index} (inputs {shapes}, target "
                f"{tuple(batch.target.shape)}): {error}. Check that the data matches the model "
                "and that the loss accepts (output, target)."
            ) from error
        check_loss(loss, f"batch {index} ({batch.size} samples)")
        return loss

    @property
    def _random(self) -> bool:
        return self.mode == "train"


def check_loss(loss, where: str) -> None:
    """Raise a clear error unless ``loss`` is a finite scalar tensor."""
    if not isinstance(loss, torch.Tensor):
        raise BadInputError(f"the loss on {where} is a {type(loss).__name__}, not a tensor")
    if loss.numel() != 1:
        raise BadInputError(
            f"the loss on {where} has shape {tuple(loss.shape)}; landscope needs a scalar. Use a "
            "loss with reduction='mean' (the PyTorch default), not a per-sample loss."
        )
    value = loss.detach().reshape(()).item()
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"the loss is {value} on {where}. Check the data of that batch for NaN/Inf, or analyse "
            "a point where training had not diverged."
        )


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


def _rng_devices(tensor: torch.Tensor) -> list:
    return [tensor.device] if tensor.device.type == "cuda" else []
