"""Where an Objective's Hessian-vector products come from, point after point.

The engine (:mod:`landscope.engines`) is chosen at the first product: the kept graph, the same
streamed per batch beyond ``graph_cache_samples``, or the chain engine after its trial against
the kept graph (:func:`landscope.engines.trial`: L, ∇L and one product agree, and it is faster
unless asked for). The last point is kept (:class:`Point`: θ, L and ∇L there, products ready),
so no pass is made twice at one θ. At every later point the chain engine's L and ∇L are checked
against one plain autograd gradient pass, max relative error ≤ the trial's tolerance (none is
made if L and ∇L are known there already); a mismatch hands the products to autograd for good.
``info["chain_trial"]`` and ``info["chain_checks"]`` record what was compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from landscope import engines
from landscope.chain import ChainHessian, Unsupported
from landscope.engines import Columns, KeptGraph, Streaming, Sums
from landscope.errors import BadInputError
from landscope.functional import ModelLoss


@dataclass
class Point:
    """The last point: θ, L and ∇L there (None where not computed), and whether the engine's
    products are ready there."""

    theta: torch.Tensor
    value: torch.Tensor | None
    gradient: torch.Tensor | None
    ready: bool = False

    @classmethod
    def of(cls, theta, sums: Sums, mean: Callable, ready: bool = False) -> Point:
        """The point θ with L and ∇L from their sums (``mean(total, sums)``: the Objective's)."""
        return cls(theta.clone(), mean(sums.value, sums),
                   None if sums.gradient is None else mean(sums.gradient, sums), ready)

    def at(self, theta: torch.Tensor) -> bool:
        return self.theta is theta or torch.equal(self.theta, theta)


class ProductSource:
    """The Objective's engine over its points (a base class of
    :class:`~landscope.objective.Objective`, whose state it keeps: ``_point``, ``_engine``, and
    ``_chain`` while the chain engine is on trial or in use; it reads ``_batch_losses``,
    ``_columns``, ``_across``, ``_requested``, ``model_loss`` and ``graph_cache_samples``, divides
    sums with ``_mean`` and records in ``counts`` and ``info``)."""

    def _start_products(self, engine: str) -> None:
        """No engine yet: it is chosen at the first product, as ``engine`` (one of
        :data:`landscope.objective.ENGINES`) asks."""
        self._requested = engine
        self._columns = Columns("auto" if engine == "chain" else engine, record=self.info)
        self._point: Point | None = None
        self._engine: engines.Engine | None = None  # chosen at the first product
        self._chain: ChainHessian | None = None  # the chain engine while on trial or in use

    def _offer_chain(self, loss: ModelLoss) -> None:
        """Put the chain engine on trial for ``loss`` (engine "auto" or "chain"): the first
        point checks it against autograd (:func:`landscope.engines.trial`)."""
        if self._requested not in ("auto", "chain"):
            return
        try:
            self._chain = ChainHessian(loss)
        except Unsupported as why:
            if self._requested == "chain":
                raise BadInputError(f"engine='chain' does not apply to this model: {why}. "
                                    "Use engine='auto' (autograd products).") from None
            self.info["chain_engine"] = f"not used: {why}"
        else:
            self.info["hvp_engine"] = "auto"

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
                Point(theta.clone(), None, None)
            known.ready = True
            self._point = known
            return
        self.counts["passes"] += 1
        self.counts["gradients"] += 1
        self._point = Point.of(theta, sums, self._mean, ready=True)

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
        self._point = Point.of(theta, outcome.sums, self._mean, ready=True)
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
            self._point = Point(theta.clone(), value, gradient, ready=True)
            return self._engine
        self.info["chain_engine"] = (f"not used from point {checks['points']} on: {failure} "
                                     "(see chain_checks)")
        self._engine.release()
        self._chain, self._engine = None, self._across.wrap(
            KeptGraph(self._batch_losses, self._columns))
        self.info["hvp_engine"] = self._columns.mode
        self._settle(theta, self._engine.at(theta))
        return self._engine
