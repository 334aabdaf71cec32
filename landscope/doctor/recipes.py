"""How one run of the fault suite is made: the architectures and the recipe that builds a run on
any of them.

An :class:`Architecture` is a model family with its data (an MLP and a CNN on scikit-learn's
bundled digits, a small transformer classifier on a generated token task), the SGD rate at which
it trains well and its own way of being made ill-conditioned. A :class:`Recipe` says how the
network is initialised and changed, which data and loss, and how it is trained; ``setup`` turns it
into a :class:`~landscope.doctor.scenarios.Setup` of :data:`STEPS` steps. A fault
(:mod:`landscope.doctor.faults`) is a recipe; a remedy (:mod:`landscope.doctor.repairs`) is an
edit of one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from landscope import default
from landscope.doctor.scenarios import Setup, negative_curvature_step
from landscope.escape import scheduler
from landscope.objective import Objective
from landscope.spectrum import spectrum

STEPS = 300
"""Optimiser steps of every run of the suite."""
HELD = 256
"""The held batch of ``train`` (curvature): the first 256 training samples."""


# ---------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Architecture:
    """A model family with its data, the SGD rate at which it trains well, and how it is made
    ill-conditioned.

    ``model(activation, depth, norm)``: ``depth`` hidden blocks, each a layer, a normalisation
    layer if ``norm``, and an ``activation`` module; then a linear output layer.
    ``condition(model, X)``: the ill-conditioned inputs (the model may be changed too), trained
    at ``valley_rate``/λ_max of the initial held-batch Hessian.
    """

    name: str
    data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    model: Callable[[type[nn.Module], int, bool], nn.Module]
    lr: float
    condition: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    valley_rate: float


def _blocks(layer: Callable[[int, int], nn.Module], norm: Callable[[int], nn.Module],
            widths: list[int], activation: type[nn.Module], normalise: bool) -> list[nn.Module]:
    """layer(a, b), [norm(b)], activation() for consecutive widths a, b."""
    return [m for a, b in zip(widths, widths[1:], strict=False)
            for m in (layer(a, b), *((norm(b),) if normalise else ()), activation())]


def _mlp(activation: type[nn.Module], depth: int, norm: bool = False) -> nn.Module:
    blocks = _blocks(nn.Linear, nn.BatchNorm1d, [64] + [32] * depth, activation, norm)
    return nn.Sequential(*blocks, nn.Linear(32, 10))


def _cnn(activation: type[nn.Module], depth: int, norm: bool = False) -> nn.Module:
    blocks = _blocks(lambda a, b: nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d,
                     [1] + [6] * depth, activation, norm)
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), *blocks, nn.Flatten(),
                         nn.Linear(6 * 64, 10))


class TokenClassifier(nn.Module):
    """Embedding (its coordinates times the buffer ``scales``), one transformer encoder layer,
    mean over positions, then a head of ``depth`` Linear [+ BatchNorm] + activation blocks and a
    linear output: a small transformer classifier."""

    def __init__(self, activation: type[nn.Module], depth: int, norm: bool = False,
                 vocab: int = 12, width: int = 16, classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.register_buffer("scales", torch.ones(width))
        self.encoder = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32,
                                                  dropout=0.0, batch_first=True)
        blocks = _blocks(nn.Linear, nn.BatchNorm1d, [width] * (depth + 1), activation, norm)
        self.head = nn.Sequential(*blocks, nn.Linear(width, classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) * self.scales).mean(1))


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """1,024 sequences of 9 tokens from 12; the label: are most tokens below 6?"""
    generator = torch.Generator().manual_seed(0)
    X = torch.randint(0, 12, (1024, 9), generator=generator)
    return X, ((X < 6).sum(1) > 4).long()


def _offset(shift: float) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Every feature + ``shift``: un-centred inputs (one huge curvature along their mean)."""
    return lambda model, X: X + shift


def _badly_scaled_embedding(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The embedding frozen (as a pretrained one), its coordinates scaled by 10^u, u from −3 to
    0: a condition number the network cannot learn away."""
    model.scales.copy_(torch.logspace(-3, 0, len(model.scales)))
    model.embed.weight.requires_grad_(False)
    return X


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("mlp", default.digits, _mlp, 0.1, _offset(5.0), 1.0),
    Architecture("cnn", default.digits, _cnn, 0.1, _offset(10.0), 0.5),
    Architecture("transformer", _tokens, TokenClassifier, 0.1, _badly_scaled_embedding, 0.7),
)}


# ---------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """How one run of the suite is made, on any architecture. A fault is a recipe; a remedy
    applied to it (:mod:`landscope.doctor.repairs`) is an edited recipe.

    The network: ``depth`` hidden blocks of ``activation`` (with normalisation if ``norm``),
    initialised by PyTorch (``init="default"``) or by He (``"he"``, kaiming_normal_); then every
    weight matrix × ``weight_gain``; the weights of the layers feeding an activation ×
    ``feeding_gain`` and their biases set to ``feeding_bias``; every parameter × ``scale``; then
    N(0, ``perturb``²) noise added to every parameter. The data: ill-conditioned by the
    architecture if ``conditioning`` (:class:`Architecture`); the squared error to one-hot
    targets on 512 samples if ``squared_error``. The training: ``optimizer`` ("sgd",
    "momentum": heavy ball 0.9, "adam", "adamw": weight decay 0.01) at the architecture's rate
    (ill-conditioned: its valley rate; Adam's: 10⁻³) or, with ``lr_sharpness`` = c, at c/λ_max of
    the held-batch Hessian; × ``lr_factor``. The run starts after ``settle`` full-batch steps at
    1/λ_max (the Hessian sharpens as a network trains), the rate set there; mini-batches of
    ``batch`` (None: full batch); gradient norm clipped to ``clip``; a schedule from
    :data:`landscope.escape.SCHEDULES` (the remedy trials' own); with ``vmin_step``, first one
    line-searched step along the eigenvector of λ_min.
    """

    activation: type[nn.Module] = nn.ReLU
    depth: int = 2
    norm: bool = False
    init: str = "default"
    weight_gain: float = 1.0
    feeding_gain: float = 1.0
    feeding_bias: float | None = None
    scale: float = 1.0
    perturb: float = 0.0
    conditioning: bool = False
    squared_error: bool = False
    optimizer: str = "sgd"
    lr_sharpness: float | None = None
    settle: int = 0
    lr_factor: float = 1.0
    batch: int | None = 64
    clip: float | None = None
    schedule: str | None = None
    vmin_step: bool = False

    def setup(self, arch: Architecture) -> Setup:
        """The run on ``arch``: draws the initialisation from the global RNG (seed it first)."""
        model = arch.model(self.activation, self.depth, self.norm)
        self._initialise(model)
        X, y = arch.data()
        loss_fn = nn.functional.cross_entropy
        if self.squared_error:  # the transformer's own label is fitted at once: token parity
            X = X[:512]
            labels = y[:512] if X.is_floating_point() else (X < 6).sum(1) % 2
            y, loss_fn = nn.functional.one_hot(labels).float(), nn.functional.mse_loss
        lr = arch.lr
        if self.conditioning:
            X = arch.condition(model, X)
            lr = arch.valley_rate / _sharpness(model, (X, y), loss_fn)
        _settle(model, (X, y), loss_fn, self.settle)
        if self.lr_sharpness is not None:
            lr = self.lr_sharpness / _sharpness(model, (X, y), loss_fn)
        lr = {"adam": 1e-3, "adamw": 1e-3}.get(self.optimizer, lr)
        if self.vmin_step:
            negative_curvature_step(model, loss_fn, (X[:HELD], y[:HELD]))
        return Setup(model, _optimizer(self.optimizer, model, lr * self.lr_factor), (X, y),
                     STEPS, len(X) if self.batch is None else self.batch, loss_fn,
                     clip=self.clip, schedule=None if self.schedule is None else partial(
                         scheduler, self.schedule, budget=STEPS))

    def _initialise(self, model: nn.Module) -> None:
        activations = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh)
        with torch.no_grad():
            if self.init == "he":
                for layer in _feeding(model, activations):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    layer.bias.zero_()
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(self.weight_gain)
            for layer in _feeding(model, activations):
                layer.weight.mul_(self.feeding_gain)
                if self.feeding_bias is not None:
                    layer.bias.fill_(self.feeding_bias)
            for p in model.parameters():
                p.mul_(self.scale)
                if self.perturb:
                    p.add_(self.perturb * torch.randn_like(p))


def _feeding(model: nn.Module, kinds) -> list[nn.Module]:
    """The layers whose output goes into an activation of ``kinds``, straight or through one
    normalisation layer."""
    norms = (nn.BatchNorm1d, nn.BatchNorm2d)
    found = []
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            for i, child in enumerate(children[:-1]):
                after = children[i + 1:i + 3]
                if isinstance(after[0], norms) and len(after) > 1:
                    after = after[1:]
                if isinstance(child, (nn.Linear, nn.Conv2d)) and isinstance(after[0], kinds):
                    found.append(child)
    return found


def _settle(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], loss_fn: Callable,
            steps: int) -> None:
    """``steps`` of full-batch gradient descent at 1/λ_max of the initial Hessian."""
    if steps:
        optimizer = _optimizer("sgd", model, 1.0 / _sharpness(model, data, loss_fn))
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(data[0]), data[1]).backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return {"sgd": lambda: torch.optim.SGD(params, lr=lr),
            "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
            "adam": lambda: torch.optim.Adam(params, lr=lr),
            "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=0.01)}[name]()


def _sharpness(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor],
               loss_fn: Callable) -> float:
    """λ_max of the initial loss's Hessian on the held batch (the samples ``train`` holds)."""
    held = (data[0][:HELD], data[1][:HELD])
    obj = Objective.from_model(model, loss_fn, held)
    return spectrum(obj, k=1, which="largest", eig_rtol=1e-3).largest.values[0].item()
