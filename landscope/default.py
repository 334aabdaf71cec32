"""The built-in default: an MLP trained on scikit-learn's bundled digits data.

The digits (1,797 8×8 images, 10 classes) ship inside scikit-learn, so nothing is downloaded. The
default network, 64-32-10 with tanh (2,410 parameters), trains in a few seconds on two CPU cores
and is large enough that its Hessian is analysed by the iterative path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

HIDDEN = 32
EPOCHS = 40
BATCH = 64
LEARNING_RATE = 1e-3


def digits(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, y): the 1,797 digits, each pixel standardised to mean 0 and variance 1."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    data = load_digits()
    X = StandardScaler().fit_transform(data.data)
    return torch.tensor(X, dtype=dtype), torch.tensor(data.target, dtype=torch.long)


def mlp(sizes=(64, HIDDEN, 10), activation: Callable[[], nn.Module] = nn.Tanh) -> nn.Sequential:
    """A fully connected network with the given layer sizes and activation between layers."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def train(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = EPOCHS,
    batch: int = BATCH,
    lr: float = LEARNING_RATE,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Mini-batch Adam on mean cross-entropy; deterministic for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(X.shape[0], generator=generator)
        total = 0.0
        for start in range(0, X.shape[0], batch):
            index = order[start:start + batch]
            optimiser.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(X[index]), y[index])
            loss.backward()
            optimiser.step()
            total += loss.item() * index.numel()
        if on_epoch is not None:
            on_epoch(epoch + 1, total / X.shape[0])
    model.eval()
    return model


def default_model(seed: int = 0) -> nn.Module:
    """The untrained default network (64-32-10 tanh), initialised from ``seed``."""
    with torch.random.fork_rng():  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        return mlp()
