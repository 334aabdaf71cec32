"""The fault suite: the doctor measured like a debugger, on runs whose fault is known.

Each case trains a small network for a few hundred steps under a Monitor (the same loop as the
scenarios: mini-batches, a held batch of 256 training samples for curvature) with one fault
injected, and names the finding the doctor should put first. Faults × architectures × seeds, plus
healthy runs of each architecture (expected: no finding at all). Nothing is downloaded: the MLP
and the CNN learn scikit-learn's bundled digits, the transformer a generated token task.

``score`` reads the results as a classifier's: the confusion matrix (expected → primary finding),
the detection rate (faulty runs whose primary finding is the expected one) and the false-alarm
rate (healthy runs with any finding; every finding is a warning or critical).

Faults (how they are injected → the expected primary finding):

- vanishing: ten sigmoid layers → ``vanishing_gradients``;
- exploding: six ReLU layers, every weight ×8 → ``exploding_gradients``;
- dead_relus: every bias feeding a ReLU set to −10 → ``dead_relus``;
- saturation: tanh layers with their weights ×30 → ``saturation``;
- lr_too_large / lr_too_small: the healthy rate ×100 / ÷1000 → ``lr_too_large`` / ``lr_too_small``;
- saddle: every parameter ×1e-6, next to the origin (a saddle of the network) → ``saddle``;
- symmetric: every parameter zero → ``symmetric_init``;
- ill_conditioning: input features (the transformer: embedding coordinates) rescaled by fixed
  factors 10^u, u evenly from −3 to 0 (condition number ~10⁶), tanh layers, SGD at 0.5/λ_max of
  the initial held-batch Hessian (a network's sharpness grows as it trains) → ``narrow_valley``;
- edge_of_stability: full-batch gradient descent on the squared error to one-hot targets, tanh
  layers, at 2.1/λ_max of the initial Hessian, past the 2/λ limit: consecutive gradients point in
  opposite directions → ``lr_too_large`` (the doctor's finding for sharpness past the limit).

No cell is left out: the transformer's activation faults act on its head of Linear + activation
blocks (its encoder layer's own ReLU is a function call, which the Monitor cannot see), and its
feature scaling on the embedding's coordinates.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from landscope import default
from landscope.doctor.doctor import diagnose
from landscope.doctor.scenarios import Setup, _quiet_machine, _train
from landscope.errors import BadInputError
from landscope.objective import Objective
from landscope.spectrum import spectrum

HEALTHY = "healthy"
"""The expected label of a run without a fault, and the primary label of a run without findings."""

STEPS = 300
HELD = 256  # the held batch of ``_train``: the first 256 training samples


# ---------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Architecture:
    """A model family with its data and the SGD rate at which it trains well.

    ``model(activation, depth)``: ``depth`` hidden blocks, each a layer followed by an
    ``activation`` module, then a linear output layer.
    """

    name: str
    data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    model: Callable[[type[nn.Module], int], nn.Module]
    lr: float


def _mlp(activation: type[nn.Module], depth: int) -> nn.Module:
    widths = [64] + [32] * depth
    blocks = [m for a, b in zip(widths, widths[1:], strict=False) for m in (nn.Linear(a, b),
                                                                          activation())]
    return nn.Sequential(*blocks, nn.Linear(32, 10))


def _cnn(activation: type[nn.Module], depth: int) -> nn.Module:
    channels = [1] + [6] * depth
    blocks = [m for a, b in zip(channels, channels[1:], strict=False)
              for m in (nn.Conv2d(a, b, 3, padding=1), activation())]
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), *blocks, nn.Flatten(),
                         nn.Linear(6 * 64, 10))


class TokenClassifier(nn.Module):
    """Embedding, one transformer encoder layer, mean over positions, then a head of ``depth``
    Linear + activation blocks and a linear output: a small transformer classifier."""

    def __init__(self, activation: type[nn.Module], depth: int, vocab: int = 12, width: int = 16,
                 classes: int = 2, scales: torch.Tensor | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.register_buffer("scales", torch.ones(width) if scales is None else scales)
        self.encoder = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32,
                                                  dropout=0.0, batch_first=True)
        blocks = [m for _ in range(depth) for m in (nn.Linear(width, width), activation())]
        self.head = nn.Sequential(*blocks, nn.Linear(width, classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) * self.scales).mean(1))


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """1,024 sequences of 9 tokens from 12; the label: are most tokens below 6?"""
    generator = torch.Generator().manual_seed(0)
    X = torch.randint(0, 12, (1024, 9), generator=generator)
    return X, ((X < 6).sum(1) > 4).long()


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("mlp", default.digits, _mlp, 0.1),
    Architecture("cnn", default.digits, _cnn, 0.1),
    Architecture("transformer", _tokens, TokenClassifier, 0.1),
)}


# ---------------------------------------------------------------------- faults
@dataclass(frozen=True)
class Fault:
    """A fault class: how it is injected (``build(architecture)`` → a Setup) and the finding the
    doctor should rank first (``HEALTHY``: none)."""

    name: str
    expect: str
    build: Callable[[Architecture], Setup] = field(repr=False)


def _sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr)


def _setup(arch: Architecture, model: nn.Module, lr: float | None = None, data=None,
           batch: int = 64) -> Setup:
    data = arch.data() if data is None else data
    return Setup(model, _sgd(model, arch.lr if lr is None else lr), data, STEPS, batch)


def _feeding(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    """The layers whose output goes straight into a ``kind`` activation module."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            found += [a for a, b in zip(children, children[1:], strict=False)
                      if isinstance(b, kind)]
    return found


def _healthy(arch: Architecture) -> Setup:
    return _setup(arch, arch.model(nn.ReLU, 2))


def _vanishing(arch: Architecture) -> Setup:
    return _setup(arch, arch.model(nn.Sigmoid, 10))


def _exploding(arch: Architecture) -> Setup:
    model = arch.model(nn.ReLU, 6)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(8.0)
    return _setup(arch, model)


def _dead_relus(arch: Architecture) -> Setup:
    model = arch.model(nn.ReLU, 2)
    with torch.no_grad():
        for layer in _feeding(model, nn.ReLU):
            layer.bias.fill_(-10.0)
    return _setup(arch, model)


def _saturation(arch: Architecture) -> Setup:
    model = arch.model(nn.Tanh, 2)
    with torch.no_grad():
        for layer in _feeding(model, nn.Tanh):
            layer.weight.mul_(30.0)
    return _setup(arch, model)


def _lr_too_large(arch: Architecture) -> Setup:
    return _setup(arch, arch.model(nn.ReLU, 2), lr=arch.lr * 100)


def _lr_too_small(arch: Architecture) -> Setup:
    return _setup(arch, arch.model(nn.ReLU, 2), lr=arch.lr / 1000)


def _scaled(arch: Architecture, factor: float) -> Setup:
    model = arch.model(nn.Tanh, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return _setup(arch, model)


def _saddle(arch: Architecture) -> Setup:
    return _scaled(arch, 1e-6)


def _symmetric(arch: Architecture) -> Setup:
    return _scaled(arch, 0.0)


def _ill_conditioning(arch: Architecture) -> Setup:
    X, y = arch.data()
    if isinstance(X, torch.Tensor) and X.is_floating_point():
        X = X * torch.logspace(-3, 0, X.shape[1])
        model = arch.model(nn.Tanh, 2)
    else:  # tokens: the embedding's coordinates are the features
        model = TokenClassifier(nn.Tanh, 2, scales=torch.logspace(-3, 0, 16))
    return _setup(arch, model, lr=0.5 / _sharpness(model, (X, y)), data=(X, y))


def _edge_of_stability(arch: Architecture) -> Setup:
    X, y = arch.data()
    X, y = X[:512], nn.functional.one_hot(y[:512]).float()
    model = arch.model(nn.Tanh, 2)
    lr = 2.1 / _sharpness(model, (X, y), nn.functional.mse_loss)
    return Setup(model, _sgd(model, lr), (X, y), STEPS, len(X), nn.functional.mse_loss)


def _sharpness(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor],
               loss_fn: Callable = nn.functional.cross_entropy) -> float:
    """λ_max of the initial loss's Hessian on the held batch (the samples ``_train`` holds)."""
    held = (data[0][:HELD], data[1][:HELD])
    obj = Objective.from_model(model, loss_fn, held)
    return spectrum(obj, k=1, which="largest", tol=1e-3).largest.values[0].item()


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("vanishing", "vanishing_gradients", _vanishing),
    Fault("exploding", "exploding_gradients", _exploding),
    Fault("dead_relus", "dead_relus", _dead_relus),
    Fault("saturation", "saturation", _saturation),
    Fault("lr_too_large", "lr_too_large", _lr_too_large),
    Fault("lr_too_small", "lr_too_small", _lr_too_small),
    Fault("saddle", "saddle", _saddle),
    Fault("symmetric", "symmetric_init", _symmetric),
    Fault("ill_conditioning", "narrow_valley", _ill_conditioning),
    Fault("edge_of_stability", "lr_too_large", _edge_of_stability),
    Fault(HEALTHY, HEALTHY, _healthy),
)}


# ---------------------------------------------------------------------- running
@dataclass(frozen=True)
class Case:
    """One cell of the suite: a fault on an architecture, from a seed (initialisation, order)."""

    fault: str
    architecture: str
    seed: int = 0

    @property
    def expect(self) -> str:
        return FAULTS[self.fault].expect

    @property
    def name(self) -> str:
        return f"{self.fault}-{self.architecture}-{self.seed}"


@dataclass(frozen=True)
class Result:
    """What the doctor made of one case: its findings, in rank order, and the primary one
    (``HEALTHY`` when there is none)."""

    case: Case
    findings: tuple[str, ...]
    seconds: float = 0.0

    @property
    def primary(self) -> str:
        return self.findings[0] if self.findings else HEALTHY

    @property
    def expect(self) -> str:
        return self.case.expect


def cases(faults: Iterable[str] | None = None, architectures: Iterable[str] | None = None,
          seeds: Iterable[int] = (0, 1)) -> list[Case]:
    """Every fault (``HEALTHY`` included) × architecture × seed."""
    faults = list(FAULTS if faults is None else faults)
    architectures = list(ARCHITECTURES if architectures is None else architectures)
    for name, known in (*((f, FAULTS) for f in faults), *((a, ARCHITECTURES)
                                                            for a in architectures)):
        if name not in known:
            raise BadInputError(f"no fault or architecture {name!r}; choose from "
                                f"{', '.join(known)}")
    return [Case(f, a, s) for f in faults for a in architectures for s in seeds]


def run_case(case: Case, run_dir: str | Path) -> Path:
    """Train ``case`` under a Monitor into ``run_dir`` (single-threaded, the caller's RNG and
    thread count restored) and return the directory."""
    with _quiet_machine(case.seed):
        setup = FAULTS[case.fault].build(ARCHITECTURES[case.architecture])
        _train(setup, Path(run_dir), case.seed)
    return Path(run_dir)


def run_suite(suite: Iterable[Case], root: str | Path | None = None,
              progress: Callable[[Result], None] | None = None) -> list[Result]:
    """Run and diagnose every case (run directories under ``root``, else a temporary one)."""
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch if root is None else root)
        for case in suite:
            start = time.perf_counter()
            path = run_case(case, base / case.name)
            result = Result(case, tuple(diagnose(path).names()), time.perf_counter() - start)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


# ---------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Score:
    """The suite as a classifier's test: ``confusion[(expected, primary)]`` counts;
    ``detected`` / ``faulty`` faulty runs with the expected primary finding; ``alarms`` /
    ``healthy`` healthy runs with any finding. A rate with nothing to count is NaN."""

    confusion: dict[tuple[str, str], int]
    faulty: int
    detected: int
    healthy: int
    alarms: int

    @property
    def detection_rate(self) -> float:
        return self.detected / self.faulty if self.faulty else math.nan

    @property
    def false_alarm_rate(self) -> float:
        return self.alarms / self.healthy if self.healthy else math.nan


def score(results: Iterable[Result]) -> Score:
    """Confusion matrix, detection and false-alarm counts of ``results``."""
    results = list(results)
    faulty = [r for r in results if r.expect != HEALTHY]
    healthy = [r for r in results if r.expect == HEALTHY]
    return Score(dict(Counter((r.expect, r.primary) for r in results)), len(faulty),
                 sum(r.primary == r.expect for r in faulty), len(healthy),
                 sum(r.primary != HEALTHY for r in healthy))
