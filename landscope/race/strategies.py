"""Global strategies: multi-start, simulated annealing, a genetic (evolutionary) algorithm.

Four classic ways out of poor local minima (Zhou, Machine Learning, 2016, §5.4) are multi-start
initialisation, simulated annealing, the noise of SGD and genetic algorithms; all but SGD's noise
are here, with one result format.
Multi-start runs a local optimiser from many uniform starts at once (as the rows of one tensor, see
:mod:`landscope.race.engine`) and keeps the best end. Annealing is scipy's ``dual_annealing``
(generalised simulated annealing with a local search, whose L-BFGS-B gets autograd gradients);
the genetic algorithm is scipy's ``differential_evolution`` — population, mutation, crossover,
selection — evaluated a population at a time through the batched function. Both are well-kept
implementations; landscope only counts evaluations and records when the best value improved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import differential_evolution, dual_annealing

from landscope import _checks as checks
from landscope._deprecated import old_names
from landscope.functions import TestFunction
from landscope.functions import get as get_function
from landscope.race.engine import descend

STRATEGIES = ("multistart", "annealing", "genetic")


@dataclass(frozen=True)
class Search:
    """The best point a global strategy found, and the way there.

    method, seed; x (n,) and value: the best point; evaluations: function evaluations spent
    (gradients count as evaluations); iterations: the strategy's own iterations;
    history: (k, 2 + n) rows [evaluations so far, best value, best x…] at each improvement.
    """

    method: str
    seed: int
    x: torch.Tensor
    value: float
    evaluations: int
    iterations: int
    history: np.ndarray

    def gap(self, fn: TestFunction) -> float | None:
        """value − the function's global minimum (None if it has none)."""
        return None if fn.global_min is None else self.value - fn.global_min


def search(method: str, fn: TestFunction | str, *, seed: int = 0, **options) -> Search:
    """Run the strategy called ``method`` (one of STRATEGIES) on ``fn`` within its box.

    Examples
    --------
    >>> result = search("genetic", "six_hump_camel", seed=0)
    >>> round(result.value, 4)
    -1.0316
    """
    runners = {"multistart": multistart, "annealing": anneal, "genetic": evolve}
    return runners[checks.choice("method", method, STRATEGIES)](fn, seed=seed, **options)


def multistart(fn: TestFunction | str, *, starts: int = 256, optimizer: str = "adam",
               steps: int = 300, lr: float | None = None, seed: int = 0) -> Search:
    """Run ``optimizer`` from ``starts`` uniform points of the box together; keep the best point
    any run visited."""
    fn = get_function(fn)
    points = fn.sample(starts, torch.Generator().manual_seed(seed))
    run = descend(fn, optimizer, points, steps=steps, lr=lr, seed=seed)
    finite = torch.where(torch.isfinite(run.values), run.values, torch.inf)
    best_so_far = finite.min(dim=1)
    history, best = [], np.inf
    for t in range(len(finite)):
        value = best_so_far.values[t].item()
        if value < best:
            best = value
            x = run.points[t, best_so_far.indices[t]]
            history.append([run.evaluations[t].sum().item(), value, *x.tolist()])
    t, row = divmod(int(finite.argmin()), finite.shape[1])  # the best point any run visited
    return Search("multistart", seed, run.points[t, row], finite[t, row].item(),
                        int(run.evaluations[-1].sum()), steps, np.array(history))


def anneal(fn: TestFunction | str, *, seed: int = 0, maxiter: int = 1000,
           local_search: bool = True) -> Search:
    """scipy's ``dual_annealing`` on the box (with ``local_search``: L-BFGS-B with autograd)."""
    fn = get_function(fn)
    counter = _Counter(fn)
    options = {"minimizer_kwargs": {"jac": counter.gradient}} if local_search else {}
    result = dual_annealing(counter.value, list(fn.domain), maxiter=maxiter,
                            rng=np.random.default_rng(seed), no_local_search=not local_search,
                            **options)
    return counter.result("annealing", seed, result.nit)


def evolve(fn: TestFunction | str, *, seed: int = 0, popsize: int = 15,
           maxiter: int = 1000) -> Search:
    """scipy's ``differential_evolution`` on the box, a whole population per call."""
    fn = get_function(fn)
    counter = _Counter(fn)
    result = differential_evolution(counter.population, list(fn.domain), popsize=popsize,
                                    maxiter=maxiter, rng=np.random.default_rng(seed),
                                    vectorized=True, updating="deferred", polish=True)
    return counter.result("genetic", seed, result.nit)


class _Counter:
    """Numpy views of a batched function that count evaluations and record each new best."""

    def __init__(self, fn: TestFunction):
        self.fn, self.count, self.best, self.history = fn, 0, (np.inf, None), []

    def population(self, xs: np.ndarray) -> np.ndarray:
        """f on points given as columns, (n, S) → (S,): scipy's vectorised convention."""
        points = torch.as_tensor(np.atleast_2d(xs.T).reshape(-1, self.fn.dim))
        with torch.no_grad():
            values = self.fn.f(points)
        self._record(points, values)
        return values.numpy()

    def value(self, x: np.ndarray) -> float:
        """f at one point (the hot path of annealing: kept lean)."""
        point = torch.from_numpy(np.array(x, dtype=np.float64))
        with torch.no_grad():
            value = float(self.fn.f(point))
        self.count += 1
        if value < self.best[0]:
            self.best = (value, point)
            self.history.append([self.count, value, *point.tolist()])
        return value

    def gradient(self, x: np.ndarray) -> np.ndarray:
        leaf = torch.as_tensor(np.asarray(x, dtype=np.float64)).requires_grad_(True)
        value = self.fn.f(leaf)
        (g,) = torch.autograd.grad(value, leaf)
        self._record(leaf.detach()[None], value.detach()[None])
        return g.numpy()

    def _record(self, points, values) -> None:
        self.count += len(values)
        finite = torch.where(torch.isfinite(values), values, torch.inf)
        i = int(finite.argmin())
        if finite[i].item() < self.best[0]:
            self.best = (finite[i].item(), points[i].clone())
            self.history.append([self.count, finite[i].item(), *points[i].tolist()])

    def result(self, method: str, seed: int, iterations: int) -> Search:
        value, x = self.best
        return Search(method, seed, x, value, self.count, int(iterations),
                            np.array(self.history))


__getattr__ = old_names(__name__, {"SearchResult": "Search"})
