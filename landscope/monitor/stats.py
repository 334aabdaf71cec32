"""The first-order statistics the Monitor records, as small pure functions of tensors.

What is hard: these run inside a training step, so each must cost a handful of tensor operations
and never synchronise more than needed; and each must mean the same thing on every architecture.

- A *layer* is the module that owns parameters (``net.0`` owns ``net.0.weight`` and ``net.0.bias``);
  per-layer norms are ‖g_layer‖ = (Σ_p ‖g_p‖²)^½ over its parameters. Depth order is the order
  in which the model registers them (input to output for ``nn.Sequential``).
- *Saturation* of a sigmoid or tanh: the share of outputs y where the local derivative is below 1%
  of its maximum: 4·y(1−y) < 0.01 (sigmoid), 1 − y² < 0.01 (tanh). Backpropagation through such
  a unit multiplies the gradient by less than 0.01.
- A *dead* ReLU unit outputs 0 for every sample in the batch (and every position of a feature map),
  i.e. its largest output is not positive, so its incoming weights get no gradient from that
  batch. Units are features (last dimension) of 2-D and 3-D outputs, channels (dimension 1) of
  4-D and 5-D ones.
- *Row spread* of a weight W (rows = output units): ‖W − 1·w̄ᵀ‖_F / ‖W‖_F, 0 when every unit has
  the same incoming weights (and for W = 0). Gradient descent keeps identical rows identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SATURATING = (nn.Sigmoid, nn.Tanh)
RECTIFIERS = (nn.ReLU, nn.ReLU6)
DERIVATIVE_FLOOR = 0.01
"""A saturated unit passes back less than this fraction of its largest possible derivative."""
_ROOT = (1 - DERIVATIVE_FLOOR) ** 0.5


@dataclass(frozen=True)
class Layer:
    """A module with trainable parameters: its name, its parameters' names and sizes."""

    name: str
    kind: str
    params: tuple[str, ...]
    numel: int
    weight: str | None  # the parameter whose rows are the layer's units, if any
    units: int  # rows of that weight (0 without one)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "params": list(self.params),
                "numel": self.numel, "weight": self.weight, "units": self.units}


def layers(model: nn.Module) -> list[Layer]:
    """The model's trainable layers in registration order, grouping parameters by owning module.

    A tied parameter (one Parameter under several names, as an embedding shared with the output
    head) belongs to the first module that registers it, under the name ``named_parameters()``
    gives it; a module used several times is one layer.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> [(layer.name, layer.numel) for layer in layers(net)]
    [('0', 16), ('2', 10)]
    """
    found: list[Layer] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        own = [(name, p) for name, p in module.named_parameters(recurse=False)
               if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for _, p in own)
        if not own:
            continue
        prefix = f"{module_name}." if module_name else ""
        weight = next(((prefix + name, p.shape[0]) for name, p in own if p.dim() >= 2), None)
        found.append(Layer(module_name or "(root)", type(module).__name__,
                           tuple(prefix + name for name, _ in own),
                           sum(p.numel() for _, p in own), *(weight or (None, 0))))
    return found


def activation_kind(module: nn.Module) -> str | None:
    """``"saturation"`` for sigmoid/tanh modules, ``"dead"`` for ReLUs, else None."""
    if isinstance(module, SATURATING):
        return "saturation"
    if isinstance(module, RECTIFIERS):
        return "dead"
    return None


def saturation(output: torch.Tensor, module: nn.Module) -> float:
    """Fraction of the outputs of a sigmoid or tanh whose derivative is below 1% of its maximum.

    Examples
    --------
    >>> saturation(torch.tensor([0.5, 0.999, 0.0001, 0.3]), nn.Sigmoid())
    0.5
    """
    count, total = saturated_count(output, module)
    return count.item() / total


def dead_fraction(output: torch.Tensor) -> float:
    """Fraction of rectifier units that output zero for the whole batch (module docstring).

    Examples
    --------
    >>> round(dead_fraction(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])), 4)
    0.3333
    """
    alive, units = alive_count(output)
    return 1 - alive.item() / units


def saturated_count(output: torch.Tensor, module: nn.Module) -> tuple[torch.Tensor, int]:
    """(number of saturated outputs as a 0-d tensor, number of outputs), in three operations.

    4y(1−y) = 1 − (2y−1)² and 1 − y² are below 0.01 exactly where |2y−1| resp. |y| exceed √0.99.
    """
    y = output.detach()
    centred = y - 0.5 if isinstance(module, nn.Sigmoid) else y
    bound = 0.5 * _ROOT if isinstance(module, nn.Sigmoid) else _ROOT
    return torch.count_nonzero(centred.abs() > bound), y.numel()


def alive_count(output: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(number of units with a positive output somewhere, number of units) of a ReLU output."""
    y = output.detach()
    if y.dim() <= 1:
        y = y.reshape(1, -1)
    unit_dim = 1 if y.dim() >= 4 else y.dim() - 1
    others = tuple(d for d in range(y.dim()) if d != unit_dim)
    return torch.count_nonzero(y.amax(dim=others) > 0), y.shape[unit_dim]


def row_spread(weight: torch.Tensor) -> float:
    """‖W − 1·w̄ᵀ‖_F / ‖W‖_F with rows = output units; 0 for identical rows (and for W = 0).

    Examples
    --------
    >>> row_spread(torch.ones(3, 2))
    0.0
    """
    W = weight.detach().reshape(weight.shape[0], -1).double()
    total = torch.linalg.norm(W)
    if total == 0:
        return 0.0
    return (torch.linalg.norm(W - W.mean(0, keepdim=True)) / total).item()
