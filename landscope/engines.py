"""How L, ∇L and Hessian-vector products are computed: engines of one small protocol.

An engine works at one point at a time: ``at(θ)`` makes products at θ ready (and returns the sums
it computed on the way), ``hvp(V)`` gives the products, ``release()`` drops what it holds. Every
engine returns *sums over this process's batches*, Σ_b w_b ℓ_b, Σ_b w_b ∇ℓ_b and Σ_b w_b H_b V;
the Objective takes their mean once (:func:`landscope.losses.reduced`). Sums make
data parallelism a wrapper: :class:`landscope.distributed.DataParallel` adds the sums of every
rank (one all-reduce per call) around any engine.

The engines:

- :class:`KeptGraph`: the first-order graph G(θ) = Σ_b w_b ∇ℓ_b(θ), built with ``create_graph``
  and kept; a product is one more backward, H v = ∂(Gᵀv)/∂θ: about 1.4–2.3 gradients instead of
  the 2.5–4 of a product that re-runs the forward. Memory: the activations of the data.
- :class:`Streaming`: the same per batch, when there is too much data to keep the graph.
- :class:`landscope.chain.ChainHessian`: hand-derived R-operators for models of known layers.

k columns at once go through the graph one backward each (``"loop"``) or in one vmapped backward
(``"batched"``, ``is_grads_batched``); :class:`Columns` times both once and keeps the faster
(vmap wins for small MLPs, loses for convolutions on CPU).

:func:`choose` picks the engine; :func:`trial` is the chain engine's check against the kept graph
at the first point (L, ∇L and one product) and, unless the chain engine was asked for, the
timing that keeps it only where it is faster.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

BatchLosses = Callable[..., Iterator[tuple[int, torch.Tensor, float, int]]]
"""``batch_losses(θ, second_order=False)`` yields (batch index, ℓ_b with its graph, w_b, size)."""

COLUMN_MODES = ("auto", "loop", "batched")
BATCH_COLUMNS = 16
"""Most columns the vmapped backward pushes through at once (it keeps one graph per column)."""
CALIBRATE_COLUMNS = 8
"""Fewest columns for which ``"auto"`` times the vmapped backward against the loop."""


@dataclass
class Sums:
    """Σ_b w_b ℓ_b (``value``), Σ_b w_b ∇ℓ_b (``gradient``, None if not computed), Σ_b w_b
    (``weight``) and the samples, over one process's batches."""

    value: torch.Tensor
    gradient: torch.Tensor | None
    weight: float
    samples: int


class Engine(Protocol):
    """Products of one loss at one point at a time, as sums over this process's batches."""

    name: str

    def at(self, theta: torch.Tensor) -> Sums | None:
        """Make products at θ ready; the sums computed on the way (None if none were)."""

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """Σ_b w_b H_b(θ) V for V of shape (n, k), at the point of the last :meth:`at`."""

    def release(self) -> None:
        """Drop what the last point holds."""


def first_order(batch_losses: BatchLosses, theta: torch.Tensor, *, gradient: bool) -> Sums:
    """One pass over the batches: Σ w_b ℓ_b, and Σ w_b ∇ℓ_b if ``gradient``."""
    leaf = theta.detach().requires_grad_(gradient)
    total = torch.zeros((), dtype=theta.dtype, device=theta.device)
    grad = torch.zeros_like(theta) if gradient else None
    weights, samples = 0.0, 0
    with torch.set_grad_enabled(gradient):
        for _, loss, weight, size in batch_losses(leaf):
            if gradient:
                (g,) = torch.autograd.grad(loss.reshape(()), leaf, allow_unused=True)
                if g is not None:
                    grad += weight * g
            total = total + weight * loss.detach().reshape(())
            weights, samples = weights + weight, samples + size
    return Sums(total, grad, weights, samples)


class Columns:
    """k products through a kept graph G: one backward per column, or one vmapped backward.

    ``mode="auto"`` times both the first time k ≥ ``CALIBRATE_COLUMNS`` and keeps the faster;
    fewer columns (the residual check of a few Ritz vectors) take the loop without that trial:
    little time is at stake, and the vmapped trial holds a second copy of the graph's backward
    buffers. ``record`` receives the choice (``hvp_engine``) and its timings.
    """

    def __init__(self, mode: str = "auto", record: dict | None = None):
        self.mode = mode
        self.record = record if record is not None else {}
        self.extra_products = 0  # products spent by the calibration beyond those asked for

    def __call__(self, G: torch.Tensor | None, leaf: torch.Tensor,
                 columns: torch.Tensor) -> torch.Tensor:
        """∂(Gᵀ V)/∂θ for the columns of V."""
        if G is None:  # the gradient does not depend on θ: L is linear here, H = 0
            return torch.zeros_like(columns)
        k = columns.shape[1]
        if k == 1:
            return _backward(G, leaf, columns[:, 0])[:, None]
        if self.mode == "auto" and k >= CALIBRATE_COLUMNS:
            return self._calibrate(G, leaf, columns)
        if self.mode == "batched":
            return _batched(G, leaf, columns)
        return torch.stack([_backward(G, leaf, c) for c in columns.T], 1)

    def _calibrate(self, G, leaf, columns):
        """Time both (per column) and keep the faster from then on. The vmapped backward is timed
        on two columns only: it holds one copy of the graph's activations per column."""
        k = columns.shape[1]
        start = time.perf_counter()
        looped = torch.stack([_backward(G, leaf, c) for c in columns.T], 1)
        loop_time = (time.perf_counter() - start) / k
        try:
            start = time.perf_counter()
            _batched(G, leaf, columns[:, :2])
            batched_time = (time.perf_counter() - start) / 2
        except RuntimeError:  # an operation without a vmap rule
            batched_time = float("inf")
        self.extra_products += 2
        self.mode = "batched" if batched_time < loop_time else "loop"
        self.record["hvp_engine"] = self.mode
        self.record["hvp_engine_seconds_per_product"] = {"loop": loop_time,
                                                         "batched": batched_time}
        return looped


class KeptGraph:
    """Products through the first-order graph G(θ) = Σ_b w_b ∇ℓ_b(θ), kept per point."""

    name = "graph"

    def __init__(self, batch_losses: BatchLosses, columns: Columns):
        self.batch_losses, self.columns = batch_losses, columns
        self._graph: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def at(self, theta: torch.Tensor) -> Sums:
        self._graph = None
        leaf = theta.detach().requires_grad_(True)
        total = torch.zeros((), dtype=theta.dtype, device=theta.device)
        G, weights, samples = torch.zeros_like(leaf), 0.0, 0
        for _, loss, weight, size in self.batch_losses(leaf, second_order=True):
            (g,) = torch.autograd.grad(loss.reshape(()), leaf, create_graph=True,
                                       allow_unused=True)
            if g is not None:
                G = G + weight * g
            total = total + weight * loss.detach().reshape(())
            weights, samples = weights + weight, samples + size
        self._graph = (leaf, G if G.requires_grad else None)
        return Sums(total, G.detach(), weights, samples)

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        leaf, G = self._graph
        return self.columns(G, leaf, V)

    def release(self) -> None:
        self._graph = None


class Streaming:
    """Products rebuilt batch by batch (a first-order graph per batch, then its backward): for
    data too large to keep the whole graph. Nothing is computed ahead of the products."""

    name = "streaming"

    def __init__(self, batch_losses: BatchLosses, columns: Columns):
        self.batch_losses, self.columns = batch_losses, columns
        self._theta: torch.Tensor | None = None

    def at(self, theta: torch.Tensor) -> None:
        self._theta = theta.detach()

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        result = torch.zeros_like(V)
        leaf = self._theta.requires_grad_(True)
        for _, loss, weight, _ in self.batch_losses(leaf, second_order=True):
            (g,) = torch.autograd.grad(loss.reshape(()), leaf, create_graph=True,
                                       allow_unused=True)
            if g is not None and g.requires_grad:
                result += weight * self.columns(g, leaf, V)
        return result

    def release(self) -> None:
        self._theta = None


def choose(*, largest_shard: int, graph_cache_samples: int, chain_on_trial: bool) -> str:
    """Which engine makes the products: ``"streaming"`` when a process holds more samples than
    ``graph_cache_samples`` (neither the graph nor the chain caches would fit), ``"trial"`` when
    the chain engine applies (it is checked, and timed, against the kept graph at the first
    point), ``"graph"`` otherwise."""
    if largest_shard > graph_cache_samples:
        return "streaming"
    return "trial" if chain_on_trial else "graph"


@dataclass
class TrialOutcome:
    """What :func:`trial` decided: the engine kept, the sums at θ (from the kept graph), the
    record (timings and relative errors), and the passes and products it spent."""

    engine: Engine
    sums: Sums
    record: dict
    passes: int
    products: int


def trial(chain: Engine, graph: Engine, theta: torch.Tensor, *, forced: bool,
          agree: Callable[[float], float] = float) -> TrialOutcome:
    """Check the chain engine against the kept graph at θ (L, ∇L and one product) and keep it if
    it agrees within the tolerance and, unless ``forced``, is faster.

    The graph is built first, timed and released before the chain engine caches its own
    first-order quantities, so the two are never held at once. ``agree`` turns this process's
    timings into everyone's (the slowest rank's, under data parallelism), so every rank decides
    the same. Errors of the chain engine's own (:class:`landscope.chain.Unsupported`) propagate.
    """
    sums = graph.at(theta)
    dtype, device, n = sums.value.dtype, sums.value.device, theta.numel()
    v = torch.randn(n, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64).to(device, dtype)[:, None]
    runs = 1 if forced else 2  # asked for: checked, not timed
    graph_seconds, hv_graph = _timed(lambda: graph.hvp(v), runs)
    graph.release()
    chain_sums = chain.at(theta)
    chain_seconds, hv_chain = _timed(lambda: chain.hvp(v), runs)
    graph_seconds, chain_seconds = agree(graph_seconds), agree(chain_seconds)
    tol = 1e-7 if dtype == torch.float64 else 1e-3
    floor = math.sqrt(torch.finfo(dtype).eps) * float(hv_graph.norm() / v.norm()) * 1e-2
    errors = {**disagreement(chain_sums, sums, floor),
              "product": float((hv_chain - hv_graph).norm())
              / max(float(hv_graph.norm()), 1e-30)}
    record = {"seconds_per_product": {"chain": chain_seconds, "autograd": graph_seconds},
              "relative_errors": errors, "tolerance": tol, "floor": floor}
    agrees = max(errors.values()) <= tol
    keep = agrees and (forced or chain_seconds < graph_seconds)
    if keep:
        engine = chain
    else:
        chain.release()
        record["why"] = "it disagreed with autograd" if not agrees else \
            "slower than autograd here"
        engine = graph
    return TrialOutcome(engine, sums, record, passes=2, products=2 * runs)


def disagreement(sums: Sums, reference: Sums, floor: float) -> dict:
    """Relative errors of (Σwℓ, Σw∇ℓ) against the reference; the gradient's error is relative to
    max(‖∇‖, ``floor``), the rounding scale near ∇L = 0."""
    return {
        "value": abs(float(sums.value - reference.value))
        / max(abs(float(reference.value)), 1e-30),
        "gradient": float((sums.gradient - reference.gradient).norm())
        / max(float(reference.gradient.norm()), floor, 1e-30),
    }


def _timed(product, runs: int = 2) -> tuple[float, torch.Tensor]:
    """The fastest of ``runs`` runs of ``product()`` in seconds, and its result."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = product()
        seconds.append(time.perf_counter() - start)
    return min(seconds), result


def _backward(G, leaf, v):
    (hv,) = torch.autograd.grad(G, leaf, v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(v) if hv is None else hv


def _batched(G, leaf, columns):
    """One vmapped backward per block of BATCH_COLUMNS columns (memory: one graph per column)."""
    if columns.shape[1] > BATCH_COLUMNS:
        return torch.cat([_batched(G, leaf, block) for block in columns.split(BATCH_COLUMNS, 1)],
                         1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's "performance drop" notes; timing decides
        (HV,) = torch.autograd.grad(G, leaf, columns.T, retain_graph=True,
                                    is_grads_batched=True, allow_unused=True)
    return torch.zeros_like(columns) if HV is None else HV.T
