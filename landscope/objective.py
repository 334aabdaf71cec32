"""The Objective: a scalar function L: Rⁿ → R of one flat parameter vector θ, with its derivatives.

For a model, L(θ) = Σ_b n_b ℓ_b(θ) / Σ_b n_b (the sample-weighted mean of batch losses, see
:mod:`landscope.data`); for an analytic function, L = f. The Objective offers L, ∇L, Hessian-vector
products H·V for one vector or k at once, and the dense Hessian for small n.

What makes Hessian-vector products fast here: the first-order graph of G(θ) = ∇L(θ) is built once
per point θ (one forward and one backward with ``create_graph``) and kept; every product is then one
extra backward pass, H v = ∂(Gᵀv)/∂θ, about 1.4–2.3 gradients instead of the 2.5–4 of a product that
re-runs the forward. The graph costs memory of the order of the activations of the data set, so it
is kept only up to ``graph_cache_samples`` samples; beyond that products are recomputed per batch.
Models built of known layers (an MLP, a plain CNN, skip connections) have a faster exact engine,
"chain" (:mod:`landscope.chain`, hand-derived R-operators: 1.1–1.9 gradients per product on the
benchmark MLPs and CNN, against 1.4–2.3 through the kept graph). The first point checks it against
autograd (value, gradient and one product within 1e-7 relative in float64, 1e-3 in float32); with
``engine="auto"`` it also times one product of each twice and keeps the chain engine only if it
agrees and is faster (``engine="chain"`` skips only the timing). At every later point its value and
gradient are checked against one plain autograd gradient pass (none if they were computed there
already), never per product; a mismatch hands the products to autograd for good. ``info`` records
the trial (``chain_trial``) and the checks (``chain_checks``). Otherwise, for k vectors at once
there are two autograd engines: k backward passes through the kept graph ("loop"), or one vmapped
backward ("batched", ``is_grads_batched``). Which is faster depends on the model and the device
(vmap wins for small MLPs, loses for convolutions on CPU), so the first call with
k ≥ ``CALIBRATE_COLUMNS`` times both and keeps the faster; the choice is recorded in ``info``.
Fewer columns (the residual check of a few Ritz vectors) take the loop without that trial: little
time is at stake, and the vmapped trial holds a second copy of the graph's backward buffers.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from landscope.chain import ChainHessian, Unsupported
from landscope.data import Batches
from landscope.errors import BadInputError
from landscope.functional import ModelLoss, check_loss, normaliser

DENSE_LIMIT = 4096
"""Largest n for which :meth:`Objective.hessian` builds the dense n×n matrix without being asked."""

ENGINES = ("auto", "chain", "loop", "batched")
BATCH_COLUMNS = 16
"""Most columns the vmapped engine pushes through one backward (it keeps one graph per column)."""
CALIBRATE_COLUMNS = 8
"""Fewest columns for which the "auto" engine times the vmapped backward against the loop."""

# Lower bounds of common losses (with hard labels and no smoothing): where they are reached the
# point is a global minimum.
_KNOWN_LOWER_BOUNDS = {
    torch.nn.functional.mse_loss: 0.0,
    torch.nn.functional.l1_loss: 0.0,
    torch.nn.functional.cross_entropy: 0.0,
    torch.nn.functional.binary_cross_entropy_with_logits: 0.0,
    torch.nn.functional.smooth_l1_loss: 0.0,
    torch.nn.functional.huber_loss: 0.0,
}
_LOSS_MODULES_BOUNDED_BY_ZERO = (
    nn.MSELoss, nn.L1Loss, nn.BCEWithLogitsLoss, nn.SmoothL1Loss, nn.HuberLoss,
)


class Objective:
    """A twice-differentiable scalar function of a flat parameter vector.

    Build one with :meth:`from_model` or :meth:`from_function`. Every method takes an optional
    point ``theta`` (default: the point the Objective was built at, ``theta0``).

    Attributes
    ----------
    n: number of parameters. dtype, device: of θ and of every vector the methods return.
    theta0: the point the Objective was built at (the model's parameters, or ``x0``).
    lower_bound: a known lower bound of L (0 for MSE and cross-entropy), or None.
    counts: how many full passes, gradients and Hessian-vector products (columns) were computed.
    info: what was analysed (loss, mode, parameters, data, unused parameters, HVP engine).
    """

    def __init__(
        self,
        batch_losses: Callable[..., Iterator[tuple[int, torch.Tensor, float, int]]],
        theta0: torch.Tensor,
        *,
        info: dict,
        lower_bound: float | None = None,
        graph_cache_samples: int = 100_000,
        engine: str = "auto",
        reduction: str = "mean",
    ):
        if engine not in ENGINES:
            raise BadInputError(f"engine={engine!r}; use one of {', '.join(ENGINES)}")
        self._batch_losses = batch_losses
        self._reduction = reduction
        self.theta0 = theta0.detach().clone()
        self.n = theta0.numel()
        self.dtype, self.device = theta0.dtype, theta0.device
        self.lower_bound = lower_bound
        self.graph_cache_samples = graph_cache_samples
        self.counts = {"passes": 0, "gradients": 0, "hvp": 0}
        self.info = {**info, "n": self.n, "dtype": str(self.dtype).replace("torch.", ""),
                     "device": str(self.device), "lower_bound": lower_bound, "hvp_engine": engine}
        self._engine = engine
        self._samples: int | None = None
        self._point_cache: tuple | None = None  # (θ, value, gradient, graph of G or None)
        self._unflatten = lambda theta: {"x": theta}
        self.model_loss: ModelLoss | None = None  # set by from_model: the model, loss and data
        self._chain: ChainHessian | None = None  # the chain engine while it is used or on trial

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_function(
        cls,
        f: Callable[[torch.Tensor], torch.Tensor],
        x0,
        *,
        dtype: torch.dtype = torch.float64,
        lower_bound: float | None = None,
        name: str | None = None,
    ) -> Objective:
        """L = f for an analytic ``f`` taking a 1-D tensor of n coordinates to a scalar tensor.

        Examples
        --------
        >>> obj = Objective.from_function(lambda x: x[0]**2 - x[1]**2, [1.0, 2.0])
        >>> obj.grad().tolist()
        [2.0, -4.0]
        """
        x0 = torch.as_tensor(x0, dtype=dtype).detach().reshape(-1)
        if x0.numel() == 0:
            raise BadInputError("x0 is empty; the function needs at least one coordinate")

        def batch_losses(theta, second_order=False):
            yield 0, f(theta), 1.0, 1

        label = name or getattr(f, "__name__", "f")
        obj = cls(batch_losses, x0, lower_bound=lower_bound,
                  info={"kind": "function", "name": label, "loss": label, "mode": None})
        check_loss(f(x0.clone()), "x0")
        return obj

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        loss_fn: Callable,
        data,
        *,
        params: str | Sequence[str] | None = None,
        mode: str = "eval",
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        lower_bound: float | None = None,
        seed: int = 0,
        graph_cache_samples: int = 100_000,
        engine: str = "auto",
        output: int | str | Callable | None = None,
        target_key: str | None = None,
        reduction: str | None = None,
        batch_weight: Callable | None = None,
    ) -> Objective:
        """L(θ) = ``loss_fn(model(*inputs, **kwargs), target)`` over the whole of ``data``.

        L is what the loss means on all the data at once: batch losses weighted by what each
        averages over (see :mod:`landscope.functional`), so no result depends on the batching.

        Parameters
        ----------
        model: any ``nn.Module``; it is never modified (parameters and their ties, buffers,
            modes, RNG).
        loss_fn: ``loss_fn(output, target)`` returning the batch mean (PyTorch's default) or,
            with ``reduction='sum'``, the batch sum; or ``"model"``: the loss the model returns
            itself (a Hugging Face model given ``labels``).
        data: ``(X, y)`` tensors, a DataLoader (``shuffle=False``), or an iterable of
            ``(inputs..., target)`` tuples or of mappings (``input_ids``, ``attention_mask``,
            ``labels``, ...: the model gets the entries as keyword arguments, less the target).
        params: names or patterns of the parameters that form θ (default: all trainable); the
            others stay fixed at their current values.
        mode: ``"eval"`` (default: BatchNorm uses running statistics, dropout is off) or
            ``"train"`` (batch statistics on fixed batches, dropout masks fixed by ``seed``).
        dtype, device: of the analysis (default: those of the model's first parameter).
        batch_size: for ``(X, y)`` only, evaluate in chunks of this size to bound memory.
        lower_bound: known lower bound of the loss (inferred as 0 for MSE, cross-entropy, ...).
        graph_cache_samples: keep the first-order graph for HVPs up to this many samples.
        engine: how products are computed ("auto", "chain", "loop", "batched").
        output: which part of the model's output the loss reads (default: a tensor as is, a
            tuple's first element, a mapping's ``logits``); an index, a name or a callable.
        target_key: the target entry of mapping batches (default ``labels``, ``label``, ...).
        reduction: ``"mean"`` or ``"sum"``, for a loss function whose reduction landscope cannot
            read (a loss module's own ``reduction`` is read).
        batch_weight: ``batch_weight(batch)`` = what the loss of a
            :class:`landscope.data.Batch` averages over, for a mean loss landscope does not know
            (default: its samples; targets ≠ ignore_index and class weights are read from
            ``nn.CrossEntropyLoss`` / ``nn.NLLLoss``).

        Half-precision models (float16, bfloat16) are analysed in float32 unless ``dtype`` says
        otherwise: eigen-solvers need more than 3 significant digits, and half-precision
        products are refused.
        """
        first = next(iter(model.parameters()), None)
        dtype = dtype or _analysis_dtype(first)
        if dtype in (torch.float16, torch.bfloat16):
            raise BadInputError(
                f"dtype={dtype}: half precision keeps about 3 significant digits, too few for "
                "Hessian eigenvalues. Analyse in float32 (the default for half-precision models) "
                "or float64"
            )
        device = torch.device(device) if device is not None else (
            first.device if first is not None else torch.device("cpu"))
        own_loss = isinstance(loss_fn, str)
        batches = Batches(data, batch_size=batch_size, dtype=dtype, device=device,
                          target_key=target_key, target_to_model=own_loss)
        loss = ModelLoss(model, loss_fn, batches, params=params, mode=mode, dtype=dtype,
                         device=device, seed=seed, output=output, reduction=reduction,
                         batch_weight=batch_weight)
        info = {
            "kind": "model",
            "name": type(model).__name__,
            "loss": _loss_name(loss_fn),
            "mode": mode,
            "parameters": loss.names,
            "frozen_parameters": sorted(loss.frozen),
            "tied_parameters": _ties(loss),
            "data": loss.batches.description,
            "reduction": loss.reduction,
            "batch_weights": loss.weighting,
            "attention": "second-order passes run scaled_dot_product_attention's math kernel",
        }
        if first is not None and first.dtype != dtype:
            info["model_dtype"] = str(first.dtype).replace("torch.", "")
        if lower_bound is None and not own_loss:
            lower_bound = _known_lower_bound(loss_fn)
        return cls._of(loss, info, lower_bound=lower_bound,
                       graph_cache_samples=graph_cache_samples, engine=engine)

    @classmethod
    def _of(cls, loss: ModelLoss, info: dict, *, lower_bound, graph_cache_samples: int,
            engine: str) -> Objective:
        """The Objective of a ModelLoss: the survey of its parameters and the engine's trial."""
        obj = cls(loss, loss.theta0, info=info, lower_bound=lower_bound,
                  graph_cache_samples=graph_cache_samples, engine=engine,
                  reduction=loss.reduction)
        survey = loss.survey(loss.theta0)
        obj.info["unused_parameters"] = survey["unused"]
        if survey["writes_inputs"]:
            obj.info["writes_inputs"] = "the model changes its inputs in place; it gets copies"
        if survey["first_order_only"]:
            obj.info["first_order_only"] = survey["first_order_only"]
        obj._unflatten = loss.unflatten
        obj.model_loss = loss
        if engine in ("auto", "chain"):
            try:
                obj._chain = ChainHessian(loss)
            except Unsupported as why:
                if engine == "chain":
                    raise BadInputError(f"engine='chain' does not apply to this model: {why}. "
                                        "Use engine='auto' (autograd products).") from None
                obj.info["chain_engine"] = f"not used: {why}"
            else:  # on trial: the first point checks it against autograd (see _trial)
                obj._chain_forced = engine == "chain"
                obj._engine = obj.info["hvp_engine"] = "auto"
        return obj

    def subset(self, indices, *, units: str = "samples", engine: str | None = None
               ) -> Objective:
        """The same loss on part of the data: the samples ``indices`` (positions in the data
        order; with ``units="batches"``, whole batches, as train mode needs because BatchNorm
        mixes a batch's samples). Shares the model and every fixed part; ``info["subset"]`` says
        which part. ``engine`` defaults to the one this Objective settled on."""
        if self.model_loss is None:
            raise BadInputError("subset() needs an Objective from from_model: an analytic "
                                "function has no data to sample")
        if units not in ("samples", "batches"):
            raise BadInputError(f"units={units!r}; use 'samples' or 'batches'")
        loss = self.model_loss
        if units == "samples" and loss.mode == "train":
            raise BadInputError("in train mode BatchNorm mixes the samples of a batch, so a "
                                "subset of samples changes every sample's loss; sample whole "
                                "batches (units='batches') or analyse in mode='eval'")
        part = loss.on(loss.batches.subset(indices, units=units))
        if engine is None:
            engine = "chain" if self._engine == "chain" else "auto" if self._chain else \
                self._engine
        obj = Objective._of(part, {**self.info, "data": part.batches.description,
                                   "subset": part.batches.description},
                            lower_bound=self.lower_bound,
                            graph_cache_samples=self.graph_cache_samples, engine=engine)
        obj.info["unused_parameters"] = self.info.get("unused_parameters", [])
        return obj

    @property
    def chain_engine(self) -> bool:
        """Whether products come (or may come, on trial) from the chain engine."""
        return self._chain is not None

    # ------------------------------------------------------------------ evaluation
    def value(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """L(θ) as a 0-d tensor."""
        theta = self._point(theta)
        cached = self._cached(theta)
        if cached is not None:
            return cached[1]
        total, weights, samples = torch.zeros((), dtype=self.dtype, device=self.device), 0.0, 0
        with torch.no_grad():
            for _, loss, weight, size in self._batch_losses(theta):
                total, weights, samples = total + weight * loss.reshape(()), weights + weight, \
                    samples + size
        self._samples, self.counts["passes"] = samples, self.counts["passes"] + 1
        return total / self._normaliser(weights)

    def grad(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """∇L(θ), shape (n,)."""
        return self.value_and_grad(theta)[1]

    def value_and_grad(self, theta: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L(θ), ∇L(θ)) from one pass over the data."""
        theta = self._point(theta)
        cached = self._cached(theta)
        if cached is not None:
            return cached[1], cached[2]
        leaf = theta.detach().requires_grad_(True)
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        gradient, weights, samples = torch.zeros_like(leaf), 0.0, 0
        for _, loss, weight, size in self._batch_losses(leaf):
            (g,) = torch.autograd.grad(loss.reshape(()), leaf, allow_unused=True)
            if g is not None:
                gradient += weight * g
            total = total + weight * loss.detach().reshape(())
            weights, samples = weights + weight, samples + size
        self._samples = samples
        self.counts["passes"] += 1
        self.counts["gradients"] += 1
        norm = self._normaliser(weights)
        self._point_cache = (theta.clone(), total / norm, gradient / norm, None)
        return total / norm, gradient / norm

    def hvp(self, v: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """H(θ)·v for v of shape (n,), or H(θ)·V for V of shape (n, k): k products at once."""
        theta = self._point(theta)
        V = self._vectors(v)
        if self.info.get("first_order_only"):
            names = ", ".join(self.info["first_order_only"])
            raise BadInputError(
                f"the model uses the custom autograd Function(s) {names}, whose backward is "
                "@once_differentiable: autograd cannot differentiate it again, so Hessian-vector "
                "products would silently miss its second derivative. Write that backward with "
                "differentiable torch operations and drop @once_differentiable, or select only "
                "parameters after it (params=...). Values and gradients are unaffected."
            )
        columns = V if V.dim() == 2 else V[:, None]
        graph = self._prepare(theta)
        if isinstance(graph, ChainHessian):
            result = graph.hvp(columns)
        elif graph is not None:
            result = self._products(graph[0], graph[1], columns)
        else:  # too much data to keep the graph: rebuild it batch by batch
            result, weights = torch.zeros_like(columns), 0.0
            leaf = theta.detach().requires_grad_(True)
            for _, loss, weight, _ in self._batch_losses(leaf, second_order=True):
                (g,) = torch.autograd.grad(loss.reshape(()), leaf, create_graph=True,
                                           allow_unused=True)
                if g is not None and g.requires_grad:
                    result += weight * self._products(leaf, g, columns)
                weights += weight
            result /= self._normaliser(weights)
        self.counts["hvp"] += columns.shape[1]
        return result if V.dim() == 2 else result[:, 0]

    def hessian(self, theta: torch.Tensor | None = None, *, max_n: int = DENSE_LIMIT,
                block: int = 256) -> torch.Tensor:
        """The dense Hessian ∇²L(θ), (n, n), symmetrised; refused for n > ``max_n``."""
        if self.n > max_n:
            gib = self.n**2 * torch.finfo(self.dtype).bits / 8 / 2**30
            raise BadInputError(
                f"the dense Hessian of n = {self.n} parameters needs {gib:.1f} GiB and {self.n} "
                f"Hessian-vector products, above the limit max_n = {max_n}. Use the iterative "
                "path (landscope.spectrum, landscope.density, landscope.trace), choose a "
                "parameter subset (params=...), or raise max_n if you have the memory."
            )
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
        H = torch.cat([self.hvp(eye[:, j:j + block], theta) for j in range(0, self.n, block)], 1)
        return (H + H.T) / 2

    def unflatten(self, theta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """θ split into named views shaped like the model's parameters (``{"x": θ}`` for f).

        Differentiable: gradients flow back to ``theta``.
        """
        if theta is None:
            return self._unflatten(self.theta0)
        if theta.shape != (self.n,):
            self._point(theta)  # raises the shape error
        return self._unflatten(theta)

    # ------------------------------------------------------------------ helpers
    def point(self, theta=None) -> torch.Tensor:
        """θ checked and moved to this objective's dtype and device (default: ``theta0``)."""
        return self.theta0 if theta is None else self._point(theta)

    def _point(self, theta) -> torch.Tensor:
        if theta is None:
            return self.theta0
        theta = torch.as_tensor(theta)
        if theta.shape != (self.n,):
            raise BadInputError(
                f"theta has shape {tuple(theta.shape)}; this objective has n = {self.n} "
                f"parameters, so theta must have shape ({self.n},)"
            )
        return theta.detach().to(self.device, self.dtype)

    def _vectors(self, v) -> torch.Tensor:
        v = torch.as_tensor(v)
        if v.dim() not in (1, 2) or v.shape[0] != self.n:
            raise BadInputError(
                f"v has shape {tuple(v.shape)}; Hessian-vector products need shape ({self.n},) "
                f"or ({self.n}, k)"
            )
        return v.detach().to(self.device, self.dtype)

    def _normaliser(self, weights: float) -> float:
        return normaliser(self._reduction, weights)

    def _cached(self, theta):
        cache = self._point_cache
        if cache is not None and (cache[0] is theta or torch.equal(cache[0], theta)):
            return cache
        return None

    def _prepare(self, theta):
        """Make products at θ ready: the chain engine at θ, the kept first-order graph (θ leaf, G),
        or None if there is too much data to keep either (products then stream per batch)."""
        cache = self._cached(theta)
        if cache is not None and cache[3] is not None:
            return cache[3]
        if self._samples is not None and self._samples > self.graph_cache_samples:
            return None
        if self._engine == "chain":
            return self._checked_chain(theta)
        if self._chain is not None:
            return self._trial(theta)
        return self._graph(theta)

    def _checked_chain(self, theta):
        """The chain engine at a new θ, its L and ∇L checked against one plain autograd pass (none
        if L and ∇L are cached at θ already); on a mismatch autograd takes over for good."""
        value, gradient = self.value_and_grad(theta)
        checks = self.info["chain_checks"]
        try:
            chain_value, chain_gradient = self._chain.at(theta,
                                                         max_samples=self.graph_cache_samples)
        except Unsupported as why:
            errors, failure = None, f"{why}"
        else:
            self.counts["passes"] += 1
            self.counts["gradients"] += 1
            errors = _disagreement(chain_value, value, chain_gradient, gradient,
                                   checks["gradient_floor"])
            for key, error in errors.items():
                checks["max_relative_errors"][key] = max(checks["max_relative_errors"][key],
                                                         error)
            failure = None if max(errors.values()) <= checks["tolerance"] else (
                "it disagreed with autograd there (relative errors: "
                + ", ".join(f"{key} {error:.1e}" for key, error in errors.items()) + ")")
        checks["points"] += 1
        if failure is None:
            self._point_cache = (theta.clone(), value, gradient, self._chain)
            return self._chain
        self.info["chain_engine"] = (f"not used from point {checks['points']} on: {failure} "
                                     "(see chain_checks)")
        self._chain.release()
        self._chain, self._engine = None, "auto"
        self.info["hvp_engine"] = self._engine
        return self._graph(theta)

    def _graph(self, theta):
        """Build the first-order graph at θ: (θ leaf, G), or None if too much data."""
        leaf = theta.detach().requires_grad_(True)
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        G, weights, samples = torch.zeros_like(leaf), 0.0, 0
        for _, loss, weight, size in self._batch_losses(leaf, second_order=True):
            samples += size
            if samples > self.graph_cache_samples:  # give up keeping it; products will stream
                self._samples = samples
                return None
            (g,) = torch.autograd.grad(loss.reshape(()), leaf, create_graph=True,
                                       allow_unused=True)
            if g is not None:
                G = G + weight * g
            total = total + weight * loss.detach().reshape(())
            weights += weight
        self._samples = samples
        self.counts["passes"] += 1
        self.counts["gradients"] += 1
        norm = self._normaliser(weights)
        G = G / norm
        graph = (leaf, G if G.requires_grad else None)
        self._point_cache = (theta.clone(), total / norm, G.detach(), graph)
        return graph

    def _trial(self, theta):
        """Check the chain engine against the kept graph at θ (L, ∇L and one product) and keep
        it if it agrees and, unless ``engine="chain"`` asked for it, is faster.

        The graph is built first (it also checks the data against the model), timed, and
        released before the chain engine caches its own first-order quantities, so the two are
        never held at once: peak memory is that of the larger, not of both.
        """
        chain, self._chain = self._chain, None
        passes = self.counts["passes"]
        graph = self._graph(theta)
        if graph is None or graph[1] is None:  # too much data to keep, or H = 0
            self._chain = chain  # the trial waits for a point where it can run
            return graph
        v = torch.randn(self.n, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64).to(self.device, self.dtype)
        runs = 1 if self._chain_forced else 2  # asked for: checked, not timed
        graph_seconds, hv_graph = _timed(lambda: _backward(graph[1], graph[0], v), runs)
        value, gradient = self._point_cache[1], self._point_cache[2]
        self._point_cache = (theta.clone(), value, gradient, None)
        del graph  # the graph is freed here: nothing else refers to it
        try:
            chain_value, chain_gradient = chain.at(theta, max_samples=self.graph_cache_samples)
        except Unsupported as why:
            self.info["chain_engine"] = f"not used: {why}"
            return self._graph(theta)
        self.counts["passes"] += 1
        self.counts["gradients"] += 1
        chain_seconds, hv_chain = _timed(lambda: chain.hvp(v[:, None])[:, 0], runs)
        self.counts["hvp"] += 2 * runs
        tol = 1e-7 if self.dtype == torch.float64 else 1e-3
        floor = math.sqrt(torch.finfo(self.dtype).eps) * float(hv_graph.norm() / v.norm()) * 1e-2
        errors = {**_disagreement(chain_value, value, chain_gradient, gradient, floor),
                  "product": float((hv_chain - hv_graph).norm())
                  / max(float(hv_graph.norm()), 1e-30)}
        trial = self.info["chain_trial"] = {
            "seconds_per_product": {"chain": chain_seconds, "autograd": graph_seconds},
            "relative_errors": errors, "tolerance": tol}
        slower = chain_seconds >= graph_seconds and not self._chain_forced
        if max(errors.values()) > tol or slower:
            why = "it disagreed with autograd" if max(errors.values()) > tol else \
                "slower than autograd here"
            self.info["chain_engine"] = f"not used: {why} (see chain_trial)"
            chain.release()
            graph = self._graph(theta)
        else:
            self._chain, graph = chain, chain
            self._engine = self.info["hvp_engine"] = "chain"
            self.info["chain_engine"] = "used"
            # L and ∇L at every later point (see _checked_chain); near ∇L = 0 the rounding of
            # the sum over samples stays that of the first point's gradient
            rounding = math.sqrt(torch.finfo(self.dtype).eps) * float(gradient.norm())
            self.info["chain_checks"] = {
                "points": 1, "max_relative_errors": {"value": errors["value"],
                                                     "gradient": errors["gradient"]},
                "tolerance": tol, "gradient_floor": max(floor, rounding)}
            self._point_cache = (theta.clone(), value, gradient, chain)
        trial["passes"] = self.counts["passes"] - passes
        return graph

    def _products(self, leaf, G, columns: torch.Tensor) -> torch.Tensor:
        """∂(Gᵀ V)/∂θ for the columns of V through a kept graph G(θ)."""
        if G is None:  # the gradient does not depend on θ: L is linear, H = 0
            return torch.zeros_like(columns)
        k = columns.shape[1]
        if k == 1:
            return _backward(G, leaf, columns[:, 0])[:, None]
        if self._engine == "auto" and k >= CALIBRATE_COLUMNS:
            return self._calibrate(leaf, G, columns)
        if self._engine == "batched":
            return _batched(G, leaf, columns)
        return torch.stack([_backward(G, leaf, c) for c in columns.T], 1)

    def _calibrate(self, leaf, G, columns):
        """Time both engines (per column) and keep the faster from then on.

        The vmapped engine is timed on two columns only: it holds one copy of the graph's
        activations per column, which for a CNN is hundreds of MB at k = 5.
        """
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
        self.counts["hvp"] += 2  # the second engine's products were spent too
        self._engine = "batched" if batched_time < loop_time else "loop"
        self.info["hvp_engine"] = self._engine
        self.info["hvp_engine_seconds_per_product"] = {"loop": loop_time,
                                                       "batched": batched_time}
        return looped


def _timed(product, runs: int = 2) -> tuple[float, torch.Tensor]:
    """The fastest of ``runs`` runs of ``product()`` in seconds, and its result."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = product()
        seconds.append(time.perf_counter() - start)
    return min(seconds), result


def _disagreement(value, reference_value, gradient, reference_gradient, floor: float) -> dict:
    """Relative errors of (L, ∇L) against the reference; the gradient's error is relative to
    max(‖∇L‖, ``floor``), the rounding scale near ∇L = 0."""
    return {
        "value": abs(float(value - reference_value)) / max(abs(float(reference_value)), 1e-30),
        "gradient": float((gradient - reference_gradient).norm())
        / max(float(reference_gradient.norm()), floor, 1e-30),
    }


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


def _loss_name(loss_fn) -> str:
    if isinstance(loss_fn, str):
        return "the model's own loss"
    return getattr(loss_fn, "__name__", None) or type(loss_fn).__name__


def _analysis_dtype(first: torch.nn.Parameter | None) -> torch.dtype:
    """The model's dtype, or float32 for a half-precision model."""
    if first is None:
        return torch.get_default_dtype()
    return torch.float32 if first.dtype in (torch.float16, torch.bfloat16) else first.dtype


def _ties(loss: ModelLoss) -> dict[str, list[str]]:
    """``{first name: [other names]}`` for parameters held under several names."""
    first = {id(p): name for name, p in loss.model.named_parameters()}
    ties: dict[str, list[str]] = {}
    for name, p in loss.model.named_parameters(remove_duplicate=False):
        if name != first[id(p)]:
            ties.setdefault(first[id(p)], []).append(name)
    return ties


def _known_lower_bound(loss_fn) -> float | None:
    if loss_fn in _KNOWN_LOWER_BOUNDS:
        return _KNOWN_LOWER_BOUNDS[loss_fn]
    if isinstance(loss_fn, _LOSS_MODULES_BOUNDED_BY_ZERO):
        return 0.0
    if isinstance(loss_fn, nn.CrossEntropyLoss) and loss_fn.label_smoothing == 0:
        return 0.0
    return None
