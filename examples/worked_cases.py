"""Two classic stuck networks, as faulty runs to try remedies on with `landscope escape`.

- ``stuck_cnn``: a plain 6-layer ReLU CNN (no normalisation, no skips, PyTorch's default
  initialisation) on the 8×8 digits. Each layer shrinks the signal (default init: Var w =
  1/(3·fan_in), so ReLU keeps 1/6 of the variance per layer), so the output hardly depends on
  the input and plain SGD (lr 0.01) sits at L ≈ ln 10, a plateau with ‖∇L‖ ≈ 0.
- ``sigmoid_mlp``: a 10-layer fully connected sigmoid network (64-32×9-10), plain SGD (lr 0.1):
  each layer multiplies the gradient by σ' ≤ 1/4, so the first layers learn nothing and the
  loss stays at ln 10.

``python examples/worked_cases.py [DIR]`` trains both faulty runs (seeded, single thread, about ten
seconds), checks that each is stuck (:func:`plateau`: the windowed mean loss moved less than
``STUCK``), and saves the weights as ``DIR/<case>.pt`` (default ``worked-cases``). Then::

    landscope escape --model examples/worked_cases.py:stuck_cnn \\
        --checkpoint worked-cases/stuck_cnn.pt --data examples/worked_cases.py:digit_images \\
        --optimizer gd --lr 0.01 --candidates baseline,lr_x10,momentum,cosine,adam,warmup,vmin_step

and the same with ``sigmoid_mlp``, ``--data digits`` and ``--lr 0.1``. Nothing is downloaded:
the digits ship with scikit-learn.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from landscope import default, io
from landscope.errors import BadInputError

BATCH = 64
WINDOW = 100
"""Steps per window of :func:`plateau`."""
STUCK = 0.01
"""A run whose windowed mean loss moved by less than this fraction is stuck."""


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled digits as images (1,797, 1, 8, 8), standardised pixels, and their labels."""
    X, y = default.digits()
    return X.reshape(-1, 1, 8, 8), y


def stuck_cnn(seed: int = 0, depth: int = 6, width: int = 16) -> nn.Module:
    """A plain CNN: ``depth`` × (3×3 conv, ReLU), then one linear layer; default init."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for channels_in in [1] + [width] * (depth - 1):
            layers += [nn.Conv2d(channels_in, width, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * 8 * 8, 10))


def sigmoid_mlp(seed: int = 0) -> nn.Module:
    """The 10-layer sigmoid MLP 64-32×9-10; default init."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return default.mlp((64, *[32] * 9, 10), nn.Sigmoid)


class Case(NamedTuple):
    """A worked case: its network, its data and the plain-SGD run that gets stuck (a named
    tuple, not a dataclass: `--model file.py:factory` runs this file outside sys.modules)."""

    model: Callable[[], nn.Module]
    data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    lr: float
    steps: int


CASES = {
    "stuck_cnn": Case(stuck_cnn, digit_images, lr=0.01, steps=300),
    "sigmoid_mlp": Case(sigmoid_mlp, default.digits, lr=0.1, steps=300),
}


def train_faulty(name: str, steps: int | None = None, seed: int = 0
                 ) -> tuple[nn.Module, list[float]]:
    """The case's network after ``steps`` of plain SGD (batch 64, each epoch a seeded
    permutation), and its mini-batch loss at every step."""
    case = CASES[name]
    net, (X, y) = case.model(), case.data()
    sgd = torch.optim.SGD(net.parameters(), lr=case.lr)
    order = torch.Generator().manual_seed(seed)
    batches: list[torch.Tensor] = []
    curve = []
    for _ in range(case.steps if steps is None else steps):
        if not batches:
            batches = list(torch.randperm(len(X), generator=order).split(BATCH))
        index = batches.pop(0)
        sgd.zero_grad()
        loss = nn.functional.cross_entropy(net(X[index]), y[index])
        loss.backward()
        sgd.step()
        curve.append(loss.item())
    return net.eval(), curve


def plateau(curve: list[float], window: int = WINDOW) -> float:
    """|m₂ − m₁| / m₁ for the mean losses m₁, m₂ of the last two windows of ``curve``."""
    if len(curve) < 2 * window:
        raise BadInputError(f"a curve of {len(curve)} steps has no two windows of {window}; "
                            f"train at least {2 * window} steps or pass a smaller window")
    before = statistics.fmean(curve[-2 * window:-window])
    return abs(statistics.fmean(curve[-window:]) - before) / before


def main(out: str = "worked-cases") -> None:
    torch.set_num_threads(1)
    for name in CASES:
        net, curve = train_faulty(name)
        change = plateau(curve)
        verdict = "stuck" if change < STUCK else "NOT stuck"
        print(f"{name}: loss {curve[0]:.4f} → {curve[-1]:.4f} over {len(curve)} SGD steps; "
              f"last {WINDOW} steps' mean moved {change:.2%}: {verdict}")
        print(f"written: {io.save_state_dict(net, Path(out) / f'{name}.pt')}")


if __name__ == "__main__":
    main(*sys.argv[1:])
