"""The product engines, one protocol: each gives the sums Σ w_b ℓ_b, Σ w_b ∇ℓ_b and Σ w_b H_b V of
a dense reference; ``choose`` and ``trial`` decide between them."""

from __future__ import annotations

import pytest
import torch
from helpers import make_mlp
from torch import nn
from torch.nn.functional import cross_entropy

from landscope import engines
from landscope.chain import ChainHessian
from landscope.data import Batches
from landscope.functional import ModelLoss


def _loss(model, batch_size=None):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(23, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (23,), generator=g)
    batches = Batches((X, y), batch_size=batch_size, dtype=torch.float64,
                      device=torch.device("cpu"))
    return ModelLoss(model, cross_entropy, batches, params=None, mode="eval",
                     dtype=torch.float64, device=torch.device("cpu"), seed=0), X, y


def _reference(model, X, y, theta, loss):
    def L(t):
        return cross_entropy(torch.func.functional_call(model, loss.unflatten(t), (X,)), y)

    return L(theta), torch.func.grad(L)(theta), torch.func.hessian(L)(theta)


def _engines(loss):
    return {
        "graph loop": engines.KeptGraph(loss, engines.Columns("loop")),
        "graph batched": engines.KeptGraph(loss, engines.Columns("batched")),
        "streaming": engines.Streaming(loss, engines.Columns("loop")),
        "chain": ChainHessian(loss),
    }


@pytest.mark.parametrize("name", ["graph loop", "graph batched", "streaming", "chain"])
def test_every_engine_gives_the_sums_of_the_dense_reference(one_thread, name):
    """Sums, not means: with batches of 5, 5, 5, 5 and 3 samples, Σ w_b ℓ_b = 23·L."""
    model = make_mlp(sizes=(4, 5, 3))
    loss, X, y = _loss(model, batch_size=5)
    engine = _engines(loss)[name]
    theta = loss.theta0 + 0.1
    value, grad, H = _reference(model, X, y, theta, loss)
    sums = engine.at(theta)
    if name == "streaming":
        assert sums is None  # it computes nothing ahead of the products
    else:
        assert sums.weight == 23 and sums.samples == 23
        torch.testing.assert_close(sums.value / 23, value, rtol=1e-12, atol=0)
        torch.testing.assert_close(sums.gradient / 23, grad, rtol=1e-10, atol=1e-14)
    V = torch.randn(loss.theta0.numel(), 9, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    torch.testing.assert_close(engine.hvp(V) / 23, H @ V, rtol=1e-10, atol=1e-13)
    engine.release()


def test_choose_streams_beyond_the_cache_and_tries_the_chain_engine_where_it_applies():
    assert engines.choose(largest_shard=101, graph_cache_samples=100,
                          chain_on_trial=True) == "streaming"
    assert engines.choose(largest_shard=100, graph_cache_samples=100,
                          chain_on_trial=True) == "trial"
    assert engines.choose(largest_shard=100, graph_cache_samples=100,
                          chain_on_trial=False) == "graph"


def test_the_trial_keeps_the_chain_engine_when_it_agrees_and_is_faster(one_thread):
    loss, *_ = _loss(make_mlp(nn.ReLU, sizes=(4, 5, 3)))
    graph = engines.KeptGraph(loss, engines.Columns("loop"))
    # a clock that makes the chain engine faster (the first timing is autograd's)
    times = iter([1.0, 0.5])
    outcome = engines.trial(ChainHessian(loss), graph, loss.theta0, forced=False,
                            agree=lambda seconds: next(times))
    assert outcome.engine.name == "chain"
    assert max(outcome.record["relative_errors"].values()) < 1e-12
    assert outcome.passes == 2 and outcome.products == 4
    times = iter([0.5, 1.0])
    outcome = engines.trial(ChainHessian(loss), graph, loss.theta0, forced=False,
                            agree=lambda seconds: next(times))
    assert outcome.engine is graph and outcome.record["why"] == "slower than autograd here"
    times = iter([0.5, 1.0])
    outcome = engines.trial(ChainHessian(loss), graph, loss.theta0, forced=True,
                            agree=lambda seconds: next(times))
    assert outcome.engine.name == "chain" and outcome.products == 2  # checked, not timed


def test_the_trial_refuses_a_chain_engine_that_disagrees(one_thread):
    loss, *_ = _loss(make_mlp(nn.ReLU, sizes=(4, 5, 3)))
    chain = ChainHessian(loss)
    wrong = engines.Sums(torch.tensor(1.0, dtype=torch.float64), None, 23.0, 23)

    class Off:
        """The chain engine with a value 1 % off."""

        name = "chain"

        def at(self, theta):
            sums = chain.at(theta)
            wrong.gradient = sums.gradient
            wrong.value = sums.value * 1.01
            return wrong

        def hvp(self, V):
            return chain.hvp(V)

        def release(self):
            chain.release()

    outcome = engines.trial(Off(), engines.KeptGraph(loss, engines.Columns("loop")),
                            loss.theta0, forced=True)
    assert outcome.engine.name == "graph" and outcome.record["why"] == \
        "it disagreed with autograd"
    assert outcome.record["relative_errors"]["value"] == pytest.approx(0.01, rel=1e-6)
