"""Scenarios: real small training runs on scikit-learn's bundled data, each showing one failure.

Each scenario trains a network for a few hundred steps under a :class:`~landscope.monitor.Monitor`
and leaves a run directory for :func:`~landscope.doctor.diagnose`. Most have a remedied twin: the
same run with the usual remedy. The doctor sees only the record; ``expect``
is what a reader should find, used by the tests and the listing, never by the rules.

The cases: the 10-layer sigmoid MLP that does not learn (vanishing gradients); a
learning rate that diverges; unscaled inputs that make a narrow valley (the diabetes data in raw
units: condition number ~5·10⁷); all-zero initialisation (symmetry); a deep linear network started
next to the origin, a strict saddle (a deep linear network has no poor minima, only saddles:
Kawaguchi 2016); a wide network
fitting 200 samples with noisy labels (overfitting); and a healthy control run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscope import default, io
from landscope._checks import choice
from landscope.errors import BadInputError
from landscope.monitor import Monitor
from landscope.objective import Objective, write_theta
from landscope.spectrum import spectrum


@dataclass
class Setup:
    """Everything one run needs: the network, its optimiser, data, and the training schedule."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: tuple[torch.Tensor, torch.Tensor]
    steps: int
    batch: int = 64
    loss_fn: Callable = nn.functional.cross_entropy
    val: tuple[torch.Tensor, torch.Tensor] | None = None
    note: str = ""
    clip: float | None = None  # the gradient norm clipped to this before each step
    schedule: Callable[[torch.optim.Optimizer], Any] | None = None  # optimizer → lr scheduler


@dataclass(frozen=True)
class Scenario:
    """A named failure: what it shows, the finding it should produce, and its remedy (if any)."""

    name: str
    description: str
    expect: str | None
    remedy: str | None
    build: Callable[[bool], Setup] = field(repr=False)


def run_scenario(name: str, run_dir: str | Path, *, remedy: bool = False, seed: int = 0) -> Path:
    """Train scenario ``name`` (or its remedied twin) under a Monitor; return the run directory,
    which also holds ``scenario.json`` (what was run; the doctor never reads it).

    Runs single-threaded (these models are too small to gain from threads) and restores the
    caller's thread count and global RNG afterwards.

    Examples
    --------
    >>> import tempfile
    >>> from landscope.doctor import diagnose
    >>> path = run_scenario("zero_init", tempfile.mkdtemp())
    >>> diagnose(path).primary.name
    'symmetric_init'
    """
    choice("scenario", name, SCENARIOS)
    scenario = SCENARIOS[name]
    if remedy and scenario.remedy is None:
        raise BadInputError(f"scenario {name!r} has no remedy to apply")
    with quiet_machine(seed):
        setup = scenario.build(remedy)
        train(setup, Path(run_dir), seed)
    io.write_result(run_dir, "scenario", {
        "scenario": name, "description": scenario.description, "remedied": remedy,
        "remedy": scenario.remedy if remedy else None, "note": setup.note, "seed": seed,
    }, name="scenario.json")
    return Path(run_dir)


# ---------------------------------------------------------------------- the scenarios
def _vanishing(remedy: bool) -> Setup:
    X, y = default.digits()
    layers: list[nn.Module] = []
    width = 64
    for _ in range(9):
        linear = nn.Linear(width, 32)
        width = 32
        if remedy:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            layers += [linear, nn.BatchNorm1d(32), nn.ReLU()]
        else:
            layers += [linear, nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 10))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1), (X, y), steps=300)


def _lr_too_large(remedy: bool) -> Setup:
    X, y = default.digits()
    model = default.mlp((64, 64, 10), nn.ReLU)
    lr = 0.1 if remedy else 3.0
    return Setup(model, torch.optim.SGD(model.parameters(), lr=lr), (X, y), steps=200)


def _ill_conditioned(remedy: bool) -> Setup:
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(scaled=False)  # ages in years, blood pressure in mmHg, ...
    X = torch.tensor(raw.data, dtype=torch.float32)
    y = torch.tensor(raw.target, dtype=torch.float32)
    y = ((y - y.mean()) / y.std())[:, None]
    model = nn.Linear(10, 1)
    if remedy:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    else:  # the largest rate plain SGD tolerates: 1.8 / λ_max of the full-data Hessian
        Xb = torch.cat([X, torch.ones(len(X), 1)], 1).double()
        lam = torch.linalg.eigvalsh(2 * Xb.T @ Xb / len(X))[-1].item()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.8 / lam)
    return Setup(model, optimizer, (X, y), steps=300, batch=32, loss_fn=nn.functional.mse_loss)


def _zero_init(remedy: bool) -> Setup:
    X, y = default.digits()
    model = default.mlp((64, 32, 10), nn.Tanh)
    if not remedy:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1), (X, y), steps=200)


def _saddle(remedy: bool) -> Setup:
    from sklearn.datasets import make_regression

    features, target = make_regression(n_samples=400, n_features=10, n_informative=10,
                                       noise=10.0, random_state=0)
    X = torch.tensor((features - features.mean(0)) / features.std(0), dtype=torch.float32)
    y = torch.tensor((target - target.mean()) / target.std(), dtype=torch.float32)[:, None]
    model = nn.Sequential(nn.Linear(10, 8, bias=False), nn.Linear(8, 1, bias=False))
    with torch.no_grad():  # 1e-12 from the origin, a strict saddle of the deep linear network
        for p in model.parameters():
            p.mul_(1e-12)
    note = ""
    if remedy:
        note = negative_curvature_step(model, nn.functional.mse_loss, (X, y))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.02), (X, y), steps=300,
                 batch=len(X), loss_fn=nn.functional.mse_loss, note=note)


def _overfitting(remedy: bool) -> Setup:
    X, y = default.digits()
    generator = torch.Generator().manual_seed(1)
    order = torch.randperm(len(X), generator=generator)
    train, val = order[:200], order[200:700]
    labels = y[train].clone()  # 30% of the training labels replaced by random ones
    noisy = torch.rand(len(train), generator=generator) < 0.3
    labels[noisy] = torch.randint(0, 10, (int(noisy.sum()),), generator=generator)
    model = default.mlp((64, 256, 10), nn.ReLU)
    optimizer = (torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=2.0) if remedy
                 else torch.optim.Adam(model.parameters(), lr=3e-3))
    return Setup(model, optimizer, (X[train], labels), steps=400, batch=32,
                 val=(X[val], y[val]))


def _healthy(remedy: bool) -> Setup:
    X, y = default.digits()
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(1))
    train, val = order[:1400], order[1400:]
    model = default.mlp((64, 32, 10), nn.Tanh)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), (X[train], y[train]),
                 steps=300, val=(X[val], y[val]))


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("vanishing", "10-layer sigmoid MLP on the digits, SGD: the loss does not move",
             "vanishing_gradients", "He initialisation + ReLU + batch normalisation", _vanishing),
    Scenario("lr_too_large", "MLP 64-64-10 on the digits, SGD with learning rate 3: diverges",
             "lr_too_large", "learning rate 0.1", _lr_too_large),
    Scenario("ill_conditioned", "linear regression on the diabetes data in raw units, SGD at "
             "the largest stable rate: stalls with a large gradient", "narrow_valley",
             "Adam (per-parameter step sizes)", _ill_conditioned),
    Scenario("zero_init", "MLP 64-32-10 tanh with every weight zero: units stay identical",
             "symmetric_init", "PyTorch's default random initialisation", _zero_init),
    Scenario("saddle", "two-layer linear network on a regression task, started 1e-12 from the "
             "origin (a strict saddle), gradient descent", "saddle",
             "one negative-curvature step along the eigenvector of λ_min", _saddle),
    Scenario("overfitting", "MLP 64-256-10 on 200 digits with 30% wrong labels, validated on "
             "500 others", "overfitting", "weight decay (AdamW, weight_decay=2)", _overfitting),
    Scenario("healthy", "MLP 64-32-10 tanh on 1,400 digits with Adam: a control run",
             None, None, _healthy),
)}


# ---------------------------------------------------------------------- helpers
def train(setup: Setup, run_dir: Path, seed: int) -> None:
    """:func:`steps` under a Monitor with a held batch of up to 256 training samples.

    These runs are a few hundred steps, so the Monitor records every 5th step over 100-step
    windows (the defaults, every 25 over 200, suit longer runs), and curvature, which the
    curvature findings (a saddle, an ill-conditioned valley) need, is not held to a time budget
    (``budget=math.inf``): the default 5% of a run under a second buys no products, and a budget
    in seconds would make what these runs find depend on the machine's load.
    """
    X, y = setup.data
    held = (X[:256], y[:256])
    with Monitor(setup.model, setup.optimizer, run_dir, loss_fn=setup.loss_fn, held=held,
                 every=5, window=100, budget=math.inf) as monitor:
        for step, loss in steps(setup, seed):
            monitor.step(loss, val_loss=_validation(setup, setup.model, step))


def steps(setup: Setup, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Mini-batch training of ``setup``, yielding (step, mini-batch loss) after each optimiser
    step: shuffled batches from ``seed``, the gradient norm clipped and the scheduler stepped
    where the setup says so."""
    X, y = setup.data
    generator = torch.Generator().manual_seed(seed)
    model, optimizer = setup.model, setup.optimizer
    scheduler = None if setup.schedule is None else setup.schedule(optimizer)
    step = 0
    while True:
        for index in torch.randperm(len(X), generator=generator).split(setup.batch):
            if step == setup.steps:
                return
            optimizer.zero_grad(set_to_none=True)
            loss = setup.loss_fn(model(X[index]), y[index])
            loss.backward()
            if setup.clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), setup.clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            yield step, loss
            step += 1


def _validation(setup: Setup, model: nn.Module, step: int) -> float | None:
    if setup.val is None or step % 10:
        return None
    return evaluate(model, setup.loss_fn, setup.val)


def evaluate(model: nn.Module, loss_fn, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """``loss_fn(model(X), y)`` in eval mode without a graph; the model's mode restored."""
    mode = model.training
    model.eval()
    with torch.no_grad():
        value = loss_fn(model(data[0]), data[1]).item()
    model.train(mode)
    return value


def negative_curvature_step(model: nn.Module, loss_fn, data) -> str:
    """Move θ along the eigenvector of λ_min (descent sign), with a backtracking step length."""
    obj = Objective.from_model(model, loss_fn, data)
    pairs = spectrum(obj, k=1, which="smallest").smallest
    v = pairs.vectors[:, 0]
    if torch.dot(obj.grad(), v) > 0:
        v = -v
    base = obj.value().item()
    best = min((obj.value(obj.theta0 + t * v).item(), t) for t in (2.0, 1.0, 0.5, 0.25, 0.125))
    if best[0] < base:
        write_theta(model, obj, obj.theta0 + best[1] * v)
    return (f"negative-curvature step: λ_min = {pairs.values[0].item():.3g}, step length "
            f"{best[1]:g}, loss {base:.4g} → {best[0]:.4g}")


@contextmanager
def quiet_machine(seed: int):
    """Single-threaded, the global RNG seeded with ``seed``; the caller's thread count and RNG
    are restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
