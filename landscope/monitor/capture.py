"""What the Monitor reads inside a training step: the hooks, and one sample per step.

What is hard: these run inside every step, so they must cost a few tensor operations and no
synchronisation, and they must only observe. On a measured step (every ``every`` steps):

- an optimiser step pre-hook reads the gradient g_t and θ_t just before the update (so loops that
  zero the gradients right after ``step()`` are covered), and keeps g_t when the next step is
  measured, for cos(g_{t+1}, g_t) = g_{t+1}ᵀg_t / (‖g_{t+1}‖ ‖g_t‖);
- after the update, θ_{t+1} gives Δθ, and one ``_foreach_norm`` call gives every per-layer norm of
  g, θ and Δθ (‖Δθ‖/‖θ‖ is the update ratio);
- forward hooks on sigmoid/tanh/ReLU modules count saturated or live units; they are registered
  only for the measured step's training forward (grad enabled), so other steps run the model's
  fast path. Until the training batch size is known, a pre-hook on the model reads it from the
  first dimension of its first tensor input.

Values stay tensors on the training's device; the table converts them at a flush
(:mod:`landscope.monitor.table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from landscope.monitor import stats
from landscope.monitor.scheduler import Ledger


class SiteCount(NamedTuple):
    """Units counted at one activation site (a 0-d tensor) out of ``units``: the share is
    count / units, or 1 − count / units with ``complement`` (dead = 1 − alive / units)."""

    count: torch.Tensor
    units: int
    complement: bool


@dataclass
class StepSample:
    """One training step as captured: ``norms`` holds, on measured steps only, the per-layer
    ‖g‖, ‖θ‖ and ‖Δθ‖, then gᵀg_prev and ‖g_prev‖ (NaN when the previous step was measured too:
    its norm is then in the previous row) in one tensor; ``activations`` maps a site to its
    :class:`SiteCount`."""

    step: int
    loss: float | torch.Tensor | None
    lr: float
    norms: torch.Tensor | None
    activations: dict[str, SiteCount]
    val_loss: float | None


@dataclass
class _BeforeUpdate:
    """What the optimiser step pre-hook reads on a measured step."""

    grad: torch.Tensor  # g_t, flattened
    dot: torch.Tensor  # g_tᵀ g_{t−1} (NaN without g_{t−1})
    previous_norm: torch.Tensor  # ‖g_{t−1}‖ (NaN when step t−1 was measured or is unknown)
    theta: torch.Tensor  # θ_t, flattened


@dataclass
class _PreviousGradient:
    """g_t kept for the next step's cosine; its norm only when step t is not measured (a
    measured step has it in its own row)."""

    step: int
    grad: torch.Tensor
    norm: torch.Tensor | None


class Capture:
    """The hooks on ``model`` and ``optimizer`` (module docstring) and the step counter.

    ``ledger`` is charged with the pre-hook's time. Call :meth:`sample` once per step, after
    ``optimizer.step()``; :meth:`remove` takes every hook away.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 layers: list[stats.Layer], every: int, ledger: Ledger):
        self.model, self.every, self.ledger = model, every, ledger
        named = dict(model.named_parameters())
        self._tensors = [named[name] for layer in layers for name in layer.params]
        self._sizes = [layer.numel for layer in layers]  # θ is laid out layer by layer
        self._module_names = {m: name for name, m in model.named_modules()
                              if stats.activation_kind(m) is not None}
        self.step = 0  # the index of the step in progress
        self.sites: list[dict] = []
        self.batch_size: int | None = None
        self._finding_sites = True
        self._before: _BeforeUpdate | None = None
        self._previous: _PreviousGradient | None = None
        self._activations: dict[str, SiteCount] = {}
        self._calls: dict[str, int] = {}
        self._activation_handles: list = []
        self._step_handle = optimizer.register_step_pre_hook(self._on_optimizer_step)

    def measuring(self, step: int) -> bool:
        """Whether step ``step`` records the first-order statistics."""
        return step % self.every == 0

    def fix_sites(self) -> list[dict]:
        """The activation sites seen so far, now final (the table's columns are built from them)."""
        self._finding_sites = False
        return self.sites

    def sample(self, loss, lr: float, val_loss: float | None) -> StepSample:
        """The step just taken (its norms in one fused call if measured); the next one begins."""
        norms = None
        if self._before is not None:
            before = self._before
            delta = _flat(self._tensors) - before.theta
            pieces = [*before.grad.split(self._sizes), *before.theta.split(self._sizes),
                      *delta.split(self._sizes)]
            norms = torch.stack([*torch._foreach_norm(pieces), before.dot, before.previous_norm])
        sample = StepSample(self.step, loss, lr, norms, self._activations, val_loss)
        self.step += 1
        self._before, self._activations = None, {}
        self.disarm()
        return sample

    @property
    def armed(self) -> bool:
        return bool(self._activation_handles)

    def arm(self) -> None:
        """Hook the activation modules for the next training forward (and that one only), and
        the model's input until the training batch size is known."""
        self._calls = {}
        self._activation_handles = [m.register_forward_hook(self._on_activation)
                                    for m in self._module_names]
        if self.batch_size is None:
            self._activation_handles.append(
                self.model.register_forward_pre_hook(self._on_input, with_kwargs=True))

    def disarm(self) -> None:
        for handle in self._activation_handles:
            handle.remove()
        self._activation_handles = []

    def remove(self) -> None:
        """Take every hook away."""
        self.disarm()
        if self._step_handle is not None:
            self._step_handle.remove()
            self._step_handle = None

    def _on_input(self, module, args, kwargs):
        """The training batch size: the first dimension of the model's first tensor input."""
        if self.batch_size is None and torch.is_grad_enabled():
            first = next((x for x in (*args, *kwargs.values())
                          if isinstance(x, torch.Tensor) and x.dim() > 0), None)
            if first is not None:
                self.batch_size = first.shape[0]

    def _on_activation(self, module, args, output):
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
            return  # evaluation forwards (no_grad) are not the step's training forward
        name = self._module_names[module]
        self._calls[name] = count = self._calls.get(name, 0) + 1
        key = name if count == 1 else f"{name}#{count}"
        kind = stats.activation_kind(module)
        if self._finding_sites and all(site["name"] != key for site in self.sites):
            self.sites.append({"name": key, "kind": kind, "module": type(module).__name__})
        if kind == "saturation":
            self._activations[key] = SiteCount(*stats.saturated_count(output, module), False)
        else:  # store the live units; dead = 1 − alive / units
            self._activations[key] = SiteCount(*stats.alive_count(output), True)

    def _on_optimizer_step(self, optimizer, args, kwargs):
        """Capture the gradient and θ before the update (and g_{t-1} for the cosine)."""
        measure, before_next = self.measuring(self.step), self.measuring(self.step + 1)
        if not (measure or before_next):
            return
        start = self.ledger.clock()
        flat = _flat([torch.zeros_like(p) if p.grad is None else p.grad for p in self._tensors])
        if measure:
            previous = self._previous if self._previous and self._previous.step == self.step - 1 \
                else None
            nan = torch.full((), math.nan, dtype=flat.dtype, device=flat.device)
            dot = nan if previous is None else flat.dot(previous.grad)
            previous_norm = nan if previous is None or previous.norm is None else previous.norm
            self._before = _BeforeUpdate(flat, dot, previous_norm, _flat(self._tensors))
        # the next step needs g_t for its cosine; its norm is in this row when this step is measured
        self._previous = (_PreviousGradient(self.step, flat, None if measure else flat.norm())
                          if before_next else None)
        self.ledger.charge(start)


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([t.reshape(-1) for t in tensors])
