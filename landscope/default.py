"""The built-in default: an MLP trained on scikit-learn's bundled digits data.

The digits (1,797 8×8 images, 10 classes) ship inside scikit-learn, so nothing is downloaded. The
default network, 64-32-10 with tanh (2,410 parameters), trains in a few seconds on two CPU cores
and is large enough that its Hessian is analysed by the iterative path. :func:`trained` trains it
once per directory and keeps θ after every epoch, the path a surface's PCA plane is drawn through.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from landscope import io
from landscope.progress import Progress

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
    progress: Progress | None = None,
) -> nn.Module:
    """Mini-batch Adam on mean cross-entropy; deterministic for a given seed. ``progress``
    (:class:`~landscope.progress.Progress`): epochs done of ``epochs``, the epoch's mean loss as
    the note."""
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
        if progress is not None:
            progress(epoch + 1, epochs, f"loss {total / X.shape[0]:.4f}")
    model.eval()
    return model


def default_model(seed: int = 0) -> nn.Module:
    """The untrained default network (64-32-10 tanh), initialised from ``seed``."""
    with torch.random.fork_rng():  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        return mlp()


def path_file(directory: Path, epochs: int = EPOCHS) -> Path:
    """Where :func:`trained` keeps the training path of the default model in ``directory``."""
    return Path(directory) / f"{_stem(epochs)}-path.pt"


def trained(directory: Path, *, epochs: int = EPOCHS,
            progress: Progress | None = None) -> tuple[nn.Module, torch.Tensor]:
    """The default MLP trained on the digits, and its training path θ₀, θ₁, …, θ_E (θ after
    every epoch, shape (E + 1, n)), in eval mode at θ_E.

    The path (and the weights, as a state dict) are kept in ``directory``; a later call finds
    them at :func:`path_file` and trains nothing. ``progress`` follows the training when there is
    one (as in :func:`train`).
    """
    net = default_model()
    cache = path_file(directory, epochs)
    if cache.exists():
        path = torch.load(cache, weights_only=True)
    else:
        X, y = digits()

        def flat():
            return torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()

        points = [flat()]

        def record(epoch: int, total: int | None, note: str = "") -> None:
            points.append(flat())
            if progress is not None:
                progress(epoch, total, note)

        train(net, X, y, epochs=epochs, progress=record)
        path = torch.stack(points)
        with io.atomic_write(cache) as stream:
            torch.save(path, stream)
        io.save_state_dict(net, Path(directory) / f"{_stem(epochs)}.pt")
    torch.nn.utils.vector_to_parameters(path[-1], net.parameters())
    return net.eval(), path


def _stem(epochs: int) -> str:
    return f"default-mlp-64-{HIDDEN}-10-tanh-e{epochs}"
