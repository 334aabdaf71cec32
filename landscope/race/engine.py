"""Many starts of one optimiser on one batched function, stepped together: the race's engine.

What makes it fast is that the S starts are the rows of one (S, n) tensor and the loss is the sum
of the rows' values: every per-coordinate optimiser (SGD, Adam, …) then moves each row exactly as
a run of its own would, and landscope's optimisers treat rows as points (``batched=True``), so one
step of S runs costs one batched evaluation instead of S small ones. Optimisers that mix the rows
(L-BFGS) run start by start.

What makes it safe is that a run may diverge without spoiling the others: a row whose next point
is not finite, or leaves a sentinel box ``box_factor`` times the function's box, is frozen at its
last good point, marked ``diverged`` (or ``unbounded`` when it was sliding down a function that has
no minimum), and no longer counted.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import torch

from landscope._deprecated import renamed
from landscope.functions import TestFunction
from landscope.optim import Recipe, recipe

STATUSES = ("ran", "diverged", "unbounded")


@dataclass(frozen=True)
class Descent:
    """S runs of one optimiser on one function.

    Attributes
    ----------
    optimizer, lr: what ran (lr None: the optimiser's own default).
    points: (T+1, S, n) iterates x₀ … x_T; a stopped row repeats its last good point.
    values, grad_norms: (T+1, S) f(x_t) and ‖∇f(x_t)‖ (without any added noise).
    evaluations: (T+1, S) gradient evaluations plus Hessian-vector products spent before x_t.
    status: per row, one of STATUSES; stop_step: the step a row stopped at (−1: never).
    batched: whether the rows stepped together; seconds: wall time.
    """

    optimizer: str
    lr: float | None
    points: torch.Tensor
    values: torch.Tensor
    grad_norms: torch.Tensor
    evaluations: torch.Tensor
    status: tuple[str, ...]
    stop_step: torch.Tensor
    batched: bool
    seconds: float


class _Rows(NamedTuple):
    """What one runner recorded for its rows: the per-run fields of :class:`Descent`."""

    points: torch.Tensor
    values: torch.Tensor
    grad_norms: torch.Tensor
    evaluations: torch.Tensor
    status: list[str]
    stop_step: torch.Tensor


@renamed(gtol="grad_atol")
def descend(fn: TestFunction, optimizer: str | Recipe, starts: torch.Tensor, *,
            steps: int = 300, lr: float | None = None, noise: float = 0.0, seed: int = 0,
            batched: bool | None = None, grad_atol: float = 1e-12,
            box_factor: float = 10.0) -> Descent:
    """Run ``optimizer`` from every row of ``starts`` (S, n) for ``steps`` steps on ``fn``.

    Parameters
    ----------
    noise: standard deviation of zero-mean Gaussian noise added to every gradient evaluation
        (a stand-in for mini-batch noise); 0 for exact gradients.
    seed: seeds the noise and the optimiser's own random numbers (bit-reproducible).
    batched: step all rows together (default: whenever the optimiser allows it).
    grad_atol: in a deterministic run a row with ‖∇f‖ ≤ grad_atol has converged, and one whose
        step did not move it has stalled (L-BFGS stops itself that way): either spends no more
        evaluations, and the run stops once every row has. A negative grad_atol runs every
        step.
    box_factor: the sentinel box is the function's box scaled by this about its centre.

    Examples
    --------
    >>> from landscope import functions
    >>> fn = functions.get("bowl")
    >>> run = descend(fn, "gd", torch.tensor([[1.0, 1.0], [0.5, -1.0]], dtype=torch.float64),
    ...               steps=200, lr=0.1)
    >>> bool(run.values[-1].max() < 1e-12)
    True
    """
    rec = recipe(optimizer)
    batched = rec.batchable if batched is None else batched
    starts = torch.as_tensor(starts, dtype=torch.float64).reshape(-1, fn.dim)
    begin = time.perf_counter()
    if batched:
        parts = [_Runner(fn, rec, starts, lr, noise, seed, True, box_factor).run(steps, grad_atol)]
    else:
        parts = [_Runner(fn, rec, starts[s:s + 1], lr, noise, derive_seed(seed, s), False,
                         box_factor).run(steps, grad_atol) for s in range(len(starts))]
    def stacked(name: str) -> torch.Tensor:  # (T+1, S) or (T+1, S, n): runs along dim 1
        return torch.cat([getattr(p, name) for p in parts], 1)

    return Descent(optimizer=rec.name, lr=rec.lr if lr is None else lr,
                   points=stacked("points"), values=stacked("values"),
                   grad_norms=stacked("grad_norms"), evaluations=stacked("evaluations"),
                   status=tuple(s for p in parts for s in p.status),
                   stop_step=torch.cat([p.stop_step for p in parts]), batched=batched,
                   seconds=time.perf_counter() - begin)


def derive_seed(seed: int, *labels) -> int:
    """A seed for a labelled sub-stream of ``seed`` (stable across runs and platforms)."""
    return zlib.crc32(repr((seed, *labels)).encode()) ^ (seed * 0x9E3779B1 % 2**31)


class _Runner:
    """One optimiser over one (S, n) tensor, with the bookkeeping of every step."""

    def __init__(self, fn, rec: Recipe, starts, lr, noise, seed, batched, box_factor):
        self.fn, self.rec, self.noise = fn, rec, noise
        self.x = starts.clone().requires_grad_(True)
        self.noise_gen = torch.Generator().manual_seed(derive_seed(seed, "noise"))
        self.opt = rec.build([self.x], lr, batched=batched,
                             generator=torch.Generator().manual_seed(derive_seed(seed, "opt")))
        low, high = fn.bounds()
        centre, half = (low + high) / 2, (high - low) / 2
        self.low, self.high = centre - box_factor * half, centre + box_factor * half
        self.calls, self.seen = 0, None
        self.rest = starts.clone()  # where frozen rows stay

    def closure(self):
        self.opt.zero_grad()
        values = self.fn.f(self.x)
        # autograd.grad + assignment, not backward(create_graph=True): the same gradient with its
        # graph, without the parameter ↔ gradient reference cycle that backward would create
        (self.x.grad,) = torch.autograd.grad(values.sum(), self.x,
                                             create_graph=self.rec.second_order)
        self.calls += 1
        if self.seen is None:  # the first evaluation of a step is at the step's own point
            self.seen = (values.detach().clone(), self.x.grad.detach().norm(dim=1))
        if self.noise:
            shock = torch.randn(self.x.shape, generator=self.noise_gen, dtype=self.x.dtype)
            self.x.grad = self.x.grad + self.noise * shock
        return values.detach() if self.rec.row_aware else values.sum()

    def run(self, steps: int, grad_atol: float) -> _Rows:
        S = self.x.shape[0]
        points, values, norms, evals = [], [], [], []
        spent = torch.zeros(S, dtype=torch.long)
        frozen = torch.zeros(S, dtype=torch.bool)
        status, stop = ["ran"] * S, torch.full((S,), -1, dtype=torch.long)
        deterministic = not self.rec.stochastic and not self.noise and grad_atol >= 0
        for t in range(steps + 1):
            before = self.x.detach().clone()
            self.seen, calls, hvps = None, self.calls, self._hvps()
            if t == steps:  # the last point is only measured
                self.closure()
            else:
                self.opt.step(self.closure)
            points.append(before)
            values.append(self.seen[0])
            norms.append(self.seen[1])
            evals.append(spent.clone())
            if t == steps:
                break
            done = frozen.clone()
            if deterministic:  # converged, or stalled: a deterministic run that did not move
                done |= (norms[-1] <= grad_atol) | (self.x.detach() == before).all(1)
            used = self.calls - calls + self._hvps() - hvps
            trials = self._trials()
            if trials is not None:  # a line search: each row counts the trial calls it needed
                used = used - trials.max() + trials
            spent += torch.where(done, 0, used)
            self._freeze(before, values[0], frozen, status, stop, t + 1)
            if bool((done | frozen).all()):
                break
        while len(points) < steps + 1:  # a run that stopped early stays where it stopped
            points.append(points[-1])
            values.append(values[-1])
            norms.append(norms[-1])
            evals.append(spent.clone())
        return _Rows(points=torch.stack(points), values=torch.stack(values),
                     grad_norms=torch.stack(norms), evaluations=torch.stack(evals), status=status,
                     stop_step=stop)

    def _freeze(self, before, start_values, frozen, status, stop, t):
        """Freeze the rows whose new point is not finite or left the sentinel box."""
        with torch.no_grad():
            after = self.x.detach()
            bad = ~torch.isfinite(after).all(1) | ((after < self.low) | (after > self.high)).any(1)
            new = bad & ~frozen
            if bool(new.any()):
                downhill = self.fn.f(before) < start_values
                for s in new.nonzero()[:, 0].tolist():
                    sliding = self.fn.global_min is None and bool(downhill[s])
                    status[s], stop[s] = ("unbounded" if sliding else "diverged"), t
                self.rest[new] = before[new]
                frozen |= new
            if bool(frozen.any()):
                self.x[frozen] = self.rest[frozen]

    def _trials(self) -> torch.Tensor | None:
        """Closure calls each row's line search needed in the last step (landscope's own
        line-searching optimisers); a batched call serves all rows, so it is not what a row
        spent."""
        state = getattr(self.opt, "row_state", None)
        return state.get("trials") if state else None

    def _hvps(self) -> int:
        return getattr(self.opt, "counts", {}).get("hvp", 0)
