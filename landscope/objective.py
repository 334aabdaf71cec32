"""The Objective: a scalar function L: Rⁿ → R of one flat parameter vector θ, with its derivatives.

For a model, L(θ) = Σ_b n_b ℓ_b(θ) / Σ_b n_b (the sample-weighted mean of batch losses, see
:mod:`landscope.data`); for an analytic function, L = f. The Objective offers L, ∇L, Hessian-vector
products H·V for one vector or k at once, and the dense Hessian for small n.

How products are made is an engine's job (:mod:`landscope.engines`): the first-order graph kept
per point (one extra backward per product), the same streamed per batch when the data is too large
to keep it (beyond ``graph_cache_samples`` samples), or the chain engine (:mod:`landscope.chain`,
hand-derived R-operators, 1.1–1.9 gradients per product on the benchmark MLPs and CNN against
1.4–2.3 through the kept graph). The first point checks the chain engine against autograd (value,
gradient and one product within 1e-7 relative in float64, 1e-3 in float32); with
``engine="auto"`` it also times one product of each twice and keeps the chain engine only if it
agrees and is faster (``engine="chain"`` skips only the timing). At every later point its value and
gradient are checked against one plain autograd gradient pass (none if they were computed there
already), never per product; a mismatch hands the products to autograd for good. ``info`` records
the trial (``chain_trial``) and the checks (``chain_checks``); ``info["hvp_engine"]`` the engine
and, for k columns through the graph, loop or vmapped backward (timed once, the faster kept).

Under ``torch.distributed`` (:mod:`landscope.distributed`) each rank holds its shard of the data,
the engines' sums are added over the ranks (one all-reduce per pass or block of products) and
every result is the single-process one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from landscope import distributed, engines
from landscope._checks import choice
from landscope.chain import ChainHessian, Unsupported
from landscope.data import Batches
from landscope.engines import Columns, KeptGraph, Streaming, Sums
from landscope.errors import BadInputError
from landscope.functional import ModelLoss, check_loss, reduced
from landscope.linalg.operator import Operator

DENSE_LIMIT = 4096
"""Largest n for which :meth:`Objective.hessian` builds the dense n×n matrix without being asked."""

ENGINES = ("auto", "chain", "loop", "batched")
"""``auto``: the chain engine where it applies and is faster, else the kept graph with loop or
vmapped columns, whichever is faster; ``chain``: the chain engine (checked, not timed);
``loop``, ``batched``: autograd with that column mode."""

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
        choice("engine", engine, ENGINES)
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
        self._requested = engine
        self._columns = Columns("auto" if engine == "chain" else engine, record=self.info)
        self._across = distributed.Local()  # the sums of every rank under data parallelism
        self._weight: float | None = None  # Σ w_b over all the data, once a pass has read it
        self._point: _Point | None = None
        self._engine: engines.Engine | None = None  # chosen at the first product
        self._unflatten = lambda theta: {"x": theta}
        self.model_loss: ModelLoss | None = None  # set by from_model: the model, loss and data
        self._chain: ChainHessian | None = None  # the chain engine while on trial or in use

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
        shard: str = "split",
        group=None,
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
        shard, group: under ``torch.distributed`` (a process group of ``group``, default the
            world, is initialised with more than one rank): ``"split"`` (default) when every rank
            passes all the data (each keeps a contiguous part: samples in eval mode, whole
            batches in train mode), ``"given"`` when each rank passes its own part (possibly
            none). L is that of all the data either way; see :mod:`landscope.distributed`.
            ``"replicate"``: each rank keeps all the data and computes alone (the work is
            shared otherwise, as grid points of a surface are).

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
        if shard not in distributed.SHARDS:
            raise BadInputError(f"shard={shard!r}; use 'split' (every rank passes all the data), "
                                "'given' (each rank passes its own part) or 'replicate' (each "
                                "rank computes alone on all of it)")
        parallel = distributed.active(group) and shard != "replicate"
        if parallel and shard == "given" and _empty(data):
            data = []  # this rank's part is empty: the others hold the data
        batches = Batches(data, batch_size=batch_size, dtype=dtype, device=device,
                          target_key=target_key, target_to_model=own_loss)
        if parallel:
            batches = distributed.shard(batches, shard, mode, group)
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
        across = distributed.AcrossRanks(loss.theta0.numel(), dtype, device, group) \
            if parallel else distributed.Local()
        if parallel:
            distributed.same_model(loss, group)
            info["ranks"] = across.ranks
        return cls._of(loss, info, lower_bound=lower_bound,
                       graph_cache_samples=graph_cache_samples, engine=engine, across=across)

    @classmethod
    def _of(cls, loss: ModelLoss, info: dict, *, lower_bound, graph_cache_samples: int,
            engine: str, across=None) -> Objective:
        """The Objective of a ModelLoss: the survey of its parameters and the engine's trial."""
        obj = cls(loss, loss.theta0, info=info, lower_bound=lower_bound,
                  graph_cache_samples=graph_cache_samples, engine=engine,
                  reduction=loss.reduction)
        obj._across = across or distributed.Local()
        survey = distributed.survey(loss, obj._across)
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
            else:  # on trial: the first point checks it against autograd (engines.trial)
                obj.info["hvp_engine"] = "auto"
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
        if isinstance(self._across, distributed.AcrossRanks):
            raise BadInputError("subset() of a data-parallel Objective: the subset's samples "
                                "would be split again; take subsets in one process")
        part = loss.replace(batches=loss.batches.subset(indices, units=units))
        obj = Objective._of(part, {**self.info, "data": part.batches.description,
                                   "subset": part.batches.description},
                            lower_bound=self.lower_bound,
                            graph_cache_samples=self.graph_cache_samples,
                            engine=engine or self.settled_engine)
        obj.info["unused_parameters"] = self.info.get("unused_parameters", [])
        return obj

    @property
    def chain_engine(self) -> bool:
        """Whether products come (or may come, on trial) from the chain engine."""
        return self._chain is not None

    @property
    def settled_engine(self) -> str:
        """The ``engine=`` that reproduces what this Objective settled on (for its subsets):
        ``chain`` when the chain engine is in use, ``auto`` while it is on trial, else the
        column mode (``loop``, ``batched``, or ``auto`` before it was timed)."""
        if self._chain is not None:
            return "chain" if self._engine is not None else "auto"
        return self._columns.mode

    @property
    def ranks(self) -> int:
        """How many processes hold a shard of the data (1 without data parallelism)."""
        return self._across.ranks

    def sample_count(self) -> int:
        """Samples in all the data (every rank's shard; 1 for an analytic function), counted
        from the batch sizes of the first pass (no pass over the data once one was made)."""
        if self.model_loss is None:
            return 1
        return int(self._across.add(sum(self.model_loss.batches.sizes)))

    def over_ranks(self, compute: Callable[[], Sums]) -> Sums:
        """The value sums ``compute()`` gives on this process's data (a :class:`Sums` without a
        gradient), added up over the ranks in one all-reduce (as they are in one process). A
        failure in ``compute`` on any rank is raised on every rank."""
        return self._across.sums(compute, gradient=False)

    def agree(self, value: float) -> float:
        """The largest of the ranks' ``value`` s (the value itself in one process): a time
        that decides what to do next must be the same on every rank, or they part ways."""
        return self._across.agree(value)

    # ------------------------------------------------------------------ evaluation
    def value(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """L(θ) as a 0-d tensor."""
        theta = self._point_of(theta)
        if self._point is not None and self._point.at(theta) and self._point.value is not None:
            return self._point.value
        sums = self._across.sums(lambda: engines.first_order(self._batch_losses, theta,
                                                             gradient=False), gradient=False)
        self.counts["passes"] += 1
        return self._mean(sums.value, sums)

    def grad(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """∇L(θ), shape (n,)."""
        return self.value_and_grad(theta)[1]

    def value_and_grad(self, theta: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L(θ), ∇L(θ)) from one pass over the data."""
        theta = self._point_of(theta)
        if self._point is not None and self._point.at(theta) and \
                self._point.gradient is not None:
            return self._point.value, self._point.gradient
        sums = self._across.sums(lambda: engines.first_order(self._batch_losses, theta,
                                                             gradient=True))
        self.counts["passes"] += 1
        self.counts["gradients"] += 1
        self._point = _Point.of(theta, sums, self._mean)
        return self._point.value, self._point.gradient

    def hvp(self, v: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """H(θ)·v for v of shape (n,), or H(θ)·V for V of shape (n, k): k products at once."""
        theta = self._point_of(theta)
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
        engine = self._ready(theta)
        calibrations = self._columns.extra_products
        result = self._mean(engine.hvp(columns), theta=theta)
        self.counts["hvp"] += columns.shape[1] + self._columns.extra_products - calibrations
        return result if V.dim() == 2 else result[:, 0]

    def operator(self, theta: torch.Tensor | None = None) -> Operator:
        """∇²L(θ) as a :class:`~landscope.linalg.Operator` for the linalg routines: its
        products are :meth:`hvp` at θ (the current point by default)."""
        return Operator(self.n, self.dtype, self.device, lambda V: self.hvp(V, theta))

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
            self._point_of(theta)  # raises the shape error
        return self._unflatten(theta)

    # ------------------------------------------------------------------ helpers
    def point(self, theta=None) -> torch.Tensor:
        """θ checked and moved to this objective's dtype and device (default: ``theta0``)."""
        return self.theta0 if theta is None else self._point_of(theta)

    def _point_of(self, theta) -> torch.Tensor:
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

    def _mean(self, total, sums: Sums | None = None, theta: torch.Tensor | None = None):
        """L, ∇L or H·V from its sum over all the data (:func:`landscope.functional.reduced`),
        with Σ w_b read from ``sums``, or from an earlier pass (a value pass at θ if none was made
        yet)."""
        if sums is not None:
            self._weight = sums.weight
        elif self._weight is None:
            self.value(theta)
        return reduced(self._reduction, total, self._weight)

    def _ready(self, theta: torch.Tensor) -> engines.Engine:
        """The engine, with products ready at θ: chosen at the first point (the chain engine's
        trial there), checked at later points when it is the chain engine."""
        if self._point is not None and self._point.at(theta) and self._point.ready:
            return self._engine
        if self._engine is None:
            return self._choose(theta)
        if self._engine.name == "chain":
            return self._checked_chain(theta)
        self._settle(theta, self._engine.at(theta))
        return self._engine

    def _settle(self, theta: torch.Tensor, sums: Sums | None) -> None:
        """Products are ready at θ; keep L and ∇L if the engine computed them on the way."""
        if sums is None:  # nothing computed on the way: keep what is known at θ
            known = self._point if self._point is not None and self._point.at(theta) else \
                _Point(theta.clone(), None, None)
            known.ready = True
            self._point = known
            return
        self.counts["passes"] += 1
        self.counts["gradients"] += 1
        self._point = _Point.of(theta, sums, self._mean, ready=True)

    def _choose(self, theta: torch.Tensor) -> engines.Engine:
        """The engine for every product of this Objective (:func:`landscope.engines.choose`)."""
        local = sum(self.model_loss.batches.sizes) if self.model_loss is not None else 1
        largest = int(self.agree(local))
        kind = engines.choose(largest_shard=largest,
                              graph_cache_samples=self.graph_cache_samples,
                              chain_on_trial=self._chain is not None)
        wrap = self._across.wrap
        if kind == "streaming":
            self._engine = wrap(Streaming(self._batch_losses, self._columns))
            if self._chain is not None:
                self.info["chain_engine"] = (f"not used: {largest} samples on one process are "
                                             "more than graph_cache_samples = "
                                             f"{self.graph_cache_samples}")
                self._chain = None
        elif kind == "graph":
            self._engine = wrap(KeptGraph(self._batch_losses, self._columns))
        else:
            return self._trial(theta)
        self._settle(theta, self._engine.at(theta))
        return self._engine

    def _trial(self, theta: torch.Tensor) -> engines.Engine:
        """The chain engine's trial at the first point (:func:`landscope.engines.trial`)."""
        graph = self._across.wrap(KeptGraph(self._batch_losses, self._columns))
        forced = self._requested == "chain"
        try:
            outcome = engines.trial(self._across.wrap(self._chain), graph, theta, forced=forced,
                                    agree=self._across.agree)
        except Unsupported as why:  # the chain engine refused the data
            self.counts["passes"] += 1  # the trial's pass of the graph
            self.counts["gradients"] += 1
            self.info["chain_engine"] = f"not used: {why}"
            self._chain, self._engine = None, graph
            self._settle(theta, graph.at(theta))
            return graph
        self.counts["passes"] += outcome.passes
        self.counts["gradients"] += outcome.passes
        self.counts["hvp"] += outcome.products
        record = outcome.record
        floor = record.pop("floor")
        self.info["chain_trial"] = {**record, "passes": outcome.passes}
        self._engine = outcome.engine
        if outcome.engine is graph:
            self.info["chain_engine"] = f"not used: {record['why']} (see chain_trial)"
            self._chain = None
            self._settle(theta, graph.at(theta))  # built again: the trial released it
            return graph
        self.info["hvp_engine"] = "chain"
        self.info["chain_engine"] = "used"
        # L and ∇L at every later point (see _checked_chain); near ∇L = 0 the rounding of the
        # sum over samples stays that of the first point's gradient
        self._point = _Point.of(theta, outcome.sums, self._mean, ready=True)
        rounding = math.sqrt(torch.finfo(self.dtype).eps) * float(self._point.gradient.norm())
        errors = record["relative_errors"]
        self.info["chain_checks"] = {
            "points": 1, "max_relative_errors": {"value": errors["value"],
                                                 "gradient": errors["gradient"]},
            "tolerance": record["tolerance"], "gradient_floor": max(floor, rounding)}
        return self._engine

    def _checked_chain(self, theta: torch.Tensor) -> engines.Engine:
        """The chain engine at a new θ, its L and ∇L checked against one plain autograd pass
        (none if L and ∇L are known at θ already); on a mismatch autograd takes over for good."""
        value, gradient = self.value_and_grad(theta)
        checks = self.info["chain_checks"]
        try:
            sums = self._engine.at(theta)
        except Unsupported as why:
            failure = f"{why}"
        else:
            self.counts["passes"] += 1
            self.counts["gradients"] += 1
            errors = engines.disagreement(
                Sums(self._mean(sums.value, sums), self._mean(sums.gradient, sums), 1.0,
                     sums.samples),
                Sums(value, gradient, 1.0, sums.samples), checks["gradient_floor"])
            for key, error in errors.items():
                checks["max_relative_errors"][key] = max(checks["max_relative_errors"][key],
                                                         error)
            failure = None if max(errors.values()) <= checks["tolerance"] else (
                "it disagreed with autograd there (relative errors: "
                + ", ".join(f"{key} {error:.1e}" for key, error in errors.items()) + ")")
        checks["points"] += 1
        if failure is None:
            self._point = _Point(theta.clone(), value, gradient, ready=True)
            return self._engine
        self.info["chain_engine"] = (f"not used from point {checks['points']} on: {failure} "
                                     "(see chain_checks)")
        self._engine.release()
        self._chain, self._engine = None, self._across.wrap(
            KeptGraph(self._batch_losses, self._columns))
        self.info["hvp_engine"] = self._columns.mode
        self._settle(theta, self._engine.at(theta))
        return self._engine


def write_theta(model: torch.nn.Module, obj: Objective, theta: torch.Tensor) -> None:
    """θ (in ``obj``'s parametrisation: its trainable parameters, by name) into ``model``'s
    parameters, in place. The Objective itself never does this; a caller does it to a model it
    owns (a trial's copy, a run being set up)."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, piece in obj.unflatten(theta).items():
            named[name].copy_(piece)


@dataclass
class _Point:
    """The last point: θ, L and ∇L there (None where not computed), and whether the engine's
    products are ready there."""

    theta: torch.Tensor
    value: torch.Tensor | None
    gradient: torch.Tensor | None
    ready: bool = False

    @classmethod
    def of(cls, theta, sums: Sums, mean: Callable, ready: bool = False) -> _Point:
        """The point θ with L and ∇L from their sums (``mean(total, sums)``: the Objective's)."""
        return cls(theta.clone(), mean(sums.value, sums),
                   None if sums.gradient is None else mean(sums.gradient, sums), ready)

    def at(self, theta: torch.Tensor) -> bool:
        return self.theta is theta or torch.equal(self.theta, theta)


def _empty(data) -> bool:
    """Whether ``data`` is (X, y) with no samples, or no batches at all."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and \
            all(isinstance(t, torch.Tensor) for t in data):
        return data[0].shape[0] == 0
    return isinstance(data, (tuple, list)) and len(data) == 0


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
