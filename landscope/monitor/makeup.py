"""What a run is made of, read once from the model and the optimiser: the doctor never prescribes
what is already there (Adam to an AdamW run, batch normalisation to a network with LayerNorm).

- activations: class name → number of modules, for the activation modules (ReLU, GELU, Sigmoid,
  Hugging Face's GELUActivation, ...); activations called as functions are invisible;
- normalisations: class names of the normalisation layers (BatchNorm*, LayerNorm, GroupNorm,
  InstanceNorm*, RMSNorm, and modules whose class name ends in "Norm");
- residual: True when a module known to add its input back is present (ResNet blocks, Transformer
  layers, anything with attention: Transformer blocks are residual), else None (unknown: a skip
  written in ``forward`` cannot be seen from the modules);
- scheduler: whether a ``torch.optim.lr_scheduler`` drives the optimiser (it writes
  ``initial_lr`` into the parameter groups), read at every header write since a scheduler is
  often made after the Monitor.
"""

from __future__ import annotations

import torch
from torch import nn

NORMALISATIONS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                  nn.LocalResponseNorm)
ACTIVATION_WORDS = ("relu", "gelu", "silu", "swish", "mish", "elu", "sigmoid", "tanh", "softplus",
                    "softsign", "hardswish", "prelu", "activation")
RESIDUAL_BLOCKS = ("BasicBlock", "Bottleneck", "TransformerEncoderLayer",
                   "TransformerDecoderLayer")


def make_up(model: nn.Module) -> dict:
    """The model's activations, normalisation layers and residual blocks (see the module
    docstring).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 2))
    >>> make_up(net)
    {'activations': {'GELU': 1}, 'normalisations': ['LayerNorm'], 'residual': None}
    """
    activations: dict[str, int] = {}
    normalisations: list[str] = []
    residual = None
    for module in model.modules():
        name = type(module).__name__
        if _is_normalisation(module):
            normalisations += [] if name in normalisations else [name]
        elif _is_activation(module):
            activations[name] = activations.get(name, 0) + 1
        if name in RESIDUAL_BLOCKS or "Residual" in name or "Attention" in name:
            residual = True
    return {"activations": activations, "normalisations": normalisations, "residual": residual}


def has_scheduler(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a learning-rate scheduler was attached (schedulers set ``initial_lr``)."""
    return any("initial_lr" in group for group in optimizer.param_groups)


def _is_normalisation(module: nn.Module) -> bool:
    return isinstance(module, NORMALISATIONS) or type(module).__name__.endswith("Norm")


def _is_activation(module: nn.Module) -> bool:
    if next(module.parameters(recurse=False), None) is not None and not isinstance(
            module, nn.PReLU):
        return False  # a layer with weights (a gated unit's projections) is not an activation
    name = type(module).__name__.lower()
    return any(word in name for word in ACTIVATION_WORDS) and not list(module.children())
