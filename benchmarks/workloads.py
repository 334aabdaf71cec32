"""Benchmark workloads W1-W3 for landscope and the peer tools.

Every workload uses scikit-learn's bundled ``load_digits`` (1797 samples x 64 features, no
download), standardised with ``StandardScaler``; the loss is the mean cross-entropy over all 1797
samples, taken as one batch. Each model is trained for 5 epochs of Adam (lr 1e-3, batch 64,
seed 0) so that it sits somewhere after the start of training, then put in eval mode:

====  ============================================================  =========  ==========
name  model                                                         dtype      parameters
====  ============================================================  =========  ==========
W1    MLP 64-32-10, tanh                                            float64     2,410
W2    MLP 64-128-128-10, ReLU                                       float32    26,122
W3    CNN conv16 3x3 -> BN2d -> ReLU -> conv32 3x3 -> ReLU ->       float32    25,322
      Linear(2048, 10), eval mode (BN uses running statistics)
====  ============================================================  =========  ==========

Trained weights are cached (``$LANDSCOPE_BENCH_CACHE`` or ``~/.cache/landscope-bench``) and loaded
with ``torch.load(weights_only=True)``, so every process measures the very same model. Training runs
with a fixed 2 torch threads so the weights do not depend on the machine's core count.

Timing hygiene (see :func:`timing_hygiene`): three environment variables must be set *before* the
Python process starts, because libgomp and glibc read them at start-up::

    OMP_WAIT_POLICY=PASSIVE MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1000000000

``make bench`` sets them; ``bench_core.py`` re-executes itself with them when they are missing.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "HYGIENE_ENV",
    "WORKLOADS",
    "Workload",
    "build_workload",
    "cache_dir",
    "digits",
    "timing_hygiene",
]

# Bump when the definition of a workload or its training changes: old cached weights are ignored.
SPEC_VERSION = 2

#: Environment a benchmark process must be started with (they have no effect if set later).
HYGIENE_ENV = {
    # libgomp's default spin-waiting starves the other thread when other jobs share the 2 cores.
    "OMP_WAIT_POLICY": "PASSIVE",
    # A fixed mmap threshold: otherwise large activation buffers are mmap'ed and page-faulted
    # afresh on every call until a big free raises glibc's dynamic threshold (a fresh process then
    # runs a CNN forward ~2x slower than a warmed one).
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "1000000000",
}

BENCH_THREADS = 2
TRAIN_THREADS = 2


def restart_with_hygiene() -> None:
    """Re-exec the running script with :data:`HYGIENE_ENV` set (they only act at process start)."""
    missing = {k: v for k, v in HYGIENE_ENV.items() if os.environ.get(k) != v}
    if missing and os.environ.get("LANDSCOPE_BENCH_REEXEC") != "1":
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  dict(os.environ, **missing, LANDSCOPE_BENCH_REEXEC="1"))


def timing_hygiene(threads: int = BENCH_THREADS, warn: bool = True) -> list[str]:
    """Prepare this process for timing: ``torch.set_num_threads(threads)``.

    The variables in :data:`HYGIENE_ENV` must already be in the environment when the interpreter
    starts (``make bench`` and ``bench_core.py``'s self re-exec take care of it). Returns the names
    of those that are missing or differ, and warns about them if ``warn``.
    """
    torch.set_num_threads(threads)
    bad = [k for k, v in HYGIENE_ENV.items() if os.environ.get(k) != v]
    if bad and warn:
        warnings.warn(
            "timing hygiene: set " + " ".join(f"{k}={HYGIENE_ENV[k]}" for k in bad)
            + " before starting Python; timings may swing by 2x otherwise",
            RuntimeWarning,
            stacklevel=2,
        )
    return bad


def cache_dir() -> Path:
    """Directory for cached weights and reference spectra (created on demand)."""
    env = os.environ.get("LANDSCOPE_BENCH_CACHE")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "landscope-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------ data
def digits(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits, standardised per feature, as ``(X (1797, 64) of dtype, y (1797,) long)``."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    bunch = load_digits()
    feats = StandardScaler().fit_transform(np.asarray(bunch.data, dtype=np.float64))
    return torch.as_tensor(feats).to(dtype), torch.as_tensor(bunch.target, dtype=torch.long)


# ---------------------------------------------------------------------------------------- models
def _mlp(widths: list[int], activation: type[nn.Module]) -> nn.Module:
    """Linear layers of the given widths with ``activation`` between them (none after the last)."""
    mods: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        if i:
            mods.append(activation())
        mods.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*mods)


class DigitsCNN(nn.Module):
    """conv16 3x3 -> BN2d -> ReLU -> conv32 3x3 -> ReLU -> Linear(32*8*8, 10) on 8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        # Creation order fixes which random numbers each layer's initialisation draws.
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(-1, 1, 8, 8)
        h = torch.relu(self.bn1(self.conv1(h)))
        h = torch.relu(self.conv2(h))
        return self.fc(torch.flatten(h, 1))


@dataclass(frozen=True)
class Workload:
    name: str
    desc: str
    dtype: torch.dtype
    n_params: int

    def make(self) -> nn.Module:
        if self.name == "W1":
            return _mlp([64, 32, 10], nn.Tanh)
        if self.name == "W2":
            return _mlp([64, 128, 128, 10], nn.ReLU)
        if self.name == "W3":
            return DigitsCNN()
        raise KeyError(self.name)


WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", "MLP 64-32-10 tanh, float64", torch.float64, 2_410),
    "W2": Workload("W2", "MLP 64-128-128-10 ReLU, float32", torch.float32, 26_122),
    "W3": Workload("W3", "CNN conv16-BN2d-ReLU-conv32-ReLU-linear, float32, eval mode",
                   torch.float32, 25_322),
}


def _train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
           batch: int, seed: int) -> None:
    """Adam on shuffled mini-batches; the shuffle has its own generator seeded ``seed + 1``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=shuffle)
        for idx in order.split(batch):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()


def build_workload(name: str, *, epochs: int = 5, lr: float = 1e-3, batch: int = 64,
                   seed: int = 0, cache: bool = True):
    """Return ``(model, X, y, criterion)`` for workload ``name``.

    The model is trained (or loaded from the cache), in eval mode, with no ``.grad`` set; ``X, y``
    are the full data set; ``criterion`` is ``nn.CrossEntropyLoss()`` (mean reduction).
    Deterministic for a given seed.
    """
    wl = WORKLOADS[name]
    X, y = digits(wl.dtype)
    torch.manual_seed(seed)
    model = wl.make().to(wl.dtype)
    path = cache_dir() / f"{name}-v{SPEC_VERSION}-seed{seed}-ep{epochs}-lr{lr:g}-b{batch}.pt"
    if cache and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        threads = torch.get_num_threads()
        # A fixed thread count fixes the reduction order, hence the weights, on any machine; 2
        # threads (the benchmark setting) reproduce the reference figures of the shared anchors.
        torch.set_num_threads(TRAIN_THREADS)
        try:
            _train(model, X, y, epochs=epochs, lr=lr, batch=batch, seed=seed)
        finally:
            torch.set_num_threads(threads)
        if cache:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
    model.eval()
    for p in model.parameters():
        p.grad = None
    n = sum(p.numel() for p in model.parameters())
    assert n == wl.n_params, (name, n)
    return model, X, y, nn.CrossEntropyLoss()


if __name__ == "__main__":  # quick look: python benchmarks/workloads.py
    timing_hygiene(warn=False)
    for key in WORKLOADS:
        m, X, y, crit = build_workload(key)
        with torch.no_grad():
            out = m(X)
        print(f"{key}: {WORKLOADS[key].desc}; loss {crit(out, y).item():.4f}, "
              f"accuracy {(out.argmax(1) == y).double().mean().item():.3f}")
