"""The Objective: a scalar function L: Rⁿ → R of one flat parameter vector θ, with its derivatives.

For a model, L(θ) = Σ_b n_b ℓ_b(θ) / Σ_b n_b (the sample-weighted mean of batch losses, see
:mod:`landscope.data`); for an analytic function, L = f. The Objective offers L, ∇L, Hessian-vector
products H·V for one vector or k at once, and the dense Hessian for small n.

How products are made is an engine's job (:mod:`landscope.engines`): the first-order graph kept
per point (one extra backward per product), the same streamed per batch when the data is too large
to keep it (beyond ``graph_cache_samples`` samples), or the chain engine (:mod:`landscope.chain`,
hand-derived R-operators, 1.1–1.9 gradients per product on the benchmark MLPs and CNN against
1.4–2.3 through the kept graph), checked against autograd at the first point and its L and ∇L at
every later one (:mod:`landscope.products`, which also keeps the last point). ``info`` records the
engine (``hvp_engine``: for k columns through the graph, loop or vmapped backward, timed once, the
faster kept), the chain engine's trial (``chain_trial``) and checks (``chain_checks``).

Under ``torch.distributed`` (:mod:`landscope.distributed`) each rank holds its shard of the data,
the engines' sums are added over the ranks (one all-reduce per pass or block of products) and
every result is the single-process one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from landscope import distributed, engines
from landscope._checks import choice
from landscope.engines import Sums
from landscope.errors import BadInputError
from landscope.functional import ModelLoss
from landscope.linalg.operator import Operator
from landscope.losses import check_loss, reduced
from landscope.model_parts import model_parts
from landscope.products import Point, ProductSource

DENSE_LIMIT = 4096
"""Largest n for which :meth:`Objective.hessian` builds the dense n×n matrix without being asked."""

ENGINES = ("auto", "chain", "loop", "batched")
"""``auto``: the chain engine where it applies and is faster, else the kept graph with loop or
vmapped columns, whichever is faster; ``chain``: the chain engine (checked, not timed);
``loop``, ``batched``: autograd with that column mode."""

class Objective(ProductSource):
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
        self._across = distributed.Local()  # the sums of every rank under data parallelism
        self._weight: float | None = None  # Σ w_b over all the data, once a pass has read it
        self._unflatten = lambda theta: {"x": theta}
        self.model_loss: ModelLoss | None = None  # set by from_model: the model, loss and data
        self._start_products(engine)

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
        parts = model_parts(model, loss_fn, data, params=params, mode=mode, dtype=dtype,
                            device=device, batch_size=batch_size, lower_bound=lower_bound,
                            seed=seed, output=output, target_key=target_key,
                            reduction=reduction, batch_weight=batch_weight, shard=shard,
                            group=group)
        return cls._of(parts.loss, parts.info, lower_bound=parts.lower_bound,
                       graph_cache_samples=graph_cache_samples, engine=engine,
                       across=parts.across)

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
        obj._offer_chain(loss)
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
        self._point = Point.of(theta, sums, self._mean)
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
        """L, ∇L or H·V from its sum over all the data (:func:`landscope.losses.reduced`),
        with Σ w_b read from ``sums``, or from an earlier pass (a value pass at θ if none was made
        yet)."""
        if sums is not None:
            self._weight = sums.weight
        elif self._weight is None:
            self.value(theta)
        return reduced(self._reduction, total, self._weight)


def write_theta(model: torch.nn.Module, obj: Objective, theta: torch.Tensor) -> None:
    """θ (in ``obj``'s parametrisation: its trainable parameters, by name) into ``model``'s
    parameters, in place. The Objective itself never does this; a caller does it to a model it
    owns (a trial's copy, a run being set up)."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, piece in obj.unflatten(theta).items():
            named[name].copy_(piece)
