"""The Objective against ground truth: torch.func.hessian, finite differences, hand-built sums."""

from __future__ import annotations

import pytest
import torch
from helpers import classification_data, make_cnn, make_mlp, reference_hessian
from torch import nn
from torch.nn.functional import cross_entropy, mse_loss

from landscope import BadInputError, NonFiniteLossError, Objective
from landscope.data import Batch
from landscope.engines import CALIBRATE_COLUMNS

MODELS = {
    "tanh_mlp_f64": lambda: make_mlp(nn.Tanh),
    "relu_mlp": lambda: make_mlp(nn.ReLU, sizes=(4, 6, 6, 3), seed=3),
    "cnn_bn_eval": lambda: make_cnn(),
}


def _objective_and_truth(name):
    """An Objective of model ``name`` on 29 samples, and its torch.func Hessian."""
    model = MODELS[name]()
    X, y = classification_data(n=29, features=16 if name == "cnn_bn_eval" else 4)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    return obj, reference_hessian(model, cross_entropy, X, y, obj)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dense_hessian_matches_torch_func(name):
    obj, expected = _objective_and_truth(name)
    H = obj.hessian()
    assert H.shape == (obj.n, obj.n)
    torch.testing.assert_close(H, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hvp_matches_dense_and_finite_differences(name):
    obj, H = _objective_and_truth(name)
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hv = obj.hvp(v)
    torch.testing.assert_close(hv, H @ v, rtol=1e-9, atol=1e-11)
    h = 1e-5  # central difference of gradients: error O(h²)
    fd = (obj.grad(obj.theta0 + h * v) - obj.grad(obj.theta0 - h * v)) / (2 * h)
    torch.testing.assert_close(hv, fd, rtol=1e-5, atol=1e-7)


def _opaque_loss(output, target):
    """Cross-entropy the chain engine cannot recognise, so the autograd engines are exercised."""
    return cross_entropy(output, target)


@pytest.mark.parametrize("engine", ["loop", "batched", "auto"])
def test_k_vectors_at_once_equal_k_single_products(engine, tanh_mlp, data):
    obj = Objective.from_model(tanh_mlp, _opaque_loss, data, engine=engine)  # autograd engines
    V = torch.randn(obj.n, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    block = obj.hvp(V)
    singles = torch.stack([obj.hvp(V[:, j]) for j in range(20)], 1)  # > BATCH_COLUMNS
    torch.testing.assert_close(block, singles, rtol=1e-12, atol=1e-13)
    assert obj.info["hvp_engine"] in ("loop", "batched")
    if engine == "auto":
        assert obj.info["chain_engine"].startswith("not used: loss")


def test_few_columns_take_the_loop_without_a_trial(tanh_mlp, data):
    """A residual check of a few Ritz vectors spends exactly k products and no vmapped trial."""
    obj = Objective.from_model(tanh_mlp, _opaque_loss, data)
    V = torch.randn(obj.n, CALIBRATE_COLUMNS - 1, dtype=torch.float64)
    block = obj.hvp(V)
    assert obj.counts["hvp"] == CALIBRATE_COLUMNS - 1
    assert obj.info["hvp_engine"] == "auto" and "hvp_engine_seconds_per_product" not in obj.info
    torch.testing.assert_close(block, torch.stack([obj.hvp(c) for c in V.T], 1))
    obj.hvp(torch.randn(obj.n, CALIBRATE_COLUMNS, dtype=torch.float64))
    assert obj.info["hvp_engine"] in ("loop", "batched")


def test_results_do_not_depend_on_batching(tanh_mlp, data):
    X, y = data
    whole = Objective.from_model(tanh_mlp, cross_entropy, (X, y))
    dataset = torch.utils.data.TensorDataset(X, y)
    variants = [
        Objective.from_model(tanh_mlp, cross_entropy, (X, y), batch_size=8),  # last batch: 5
        Objective.from_model(tanh_mlp, cross_entropy,
                             torch.utils.data.DataLoader(dataset, batch_size=10)),
        Objective.from_model(tanh_mlp, cross_entropy, [(X[:3], y[:3]), (X[3:], y[3:])]),
        Objective.from_model(tanh_mlp, cross_entropy, ((X[i:i + 4], y[i:i + 4])
                                                      for i in range(0, len(X), 4))),
    ]
    v = torch.randn(whole.n, dtype=torch.float64)
    for obj in variants:
        torch.testing.assert_close(obj.value(), whole.value(), rtol=1e-13, atol=0)
        torch.testing.assert_close(obj.grad(), whole.grad(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(obj.hvp(v), whole.hvp(v), rtol=1e-11, atol=1e-13)
    # the unweighted mean of batch means (a peer tool's bug) differs: the test can tell
    unweighted = sum(cross_entropy(tanh_mlp(X[i:i + 8]), y[i:i + 8])
                     for i in range(0, len(X), 8)) / 5
    assert abs(unweighted.item() - whole.value().item()) > 1e-4


def test_a_replaced_model_loss_changes_the_copy_only(tanh_mlp, data):
    """``ModelLoss.replace``: the copy computes with its own batches or loss function and
    the same weights w_b; the original keeps its own."""
    X, y = data
    obj = Objective.from_model(tanh_mlp, cross_entropy, (X, y), batch_size=8)
    loss, theta = obj.model_loss, obj.theta0 + 0.05
    with torch.no_grad():
        output = torch.func.functional_call(tanh_mlp, obj.unflatten(theta), (X,))

    def batch_losses(of):
        with torch.no_grad():
            return [(value.item(), weight) for _, value, weight, _ in of(theta)]

    before = batch_losses(loss)
    part = loss.replace(batches=[Batch((X[:5],), y[:5], 5)])
    assert batch_losses(part) == [(pytest.approx(cross_entropy(output[:5], y[:5]).item(),
                                                 rel=1e-12), 5.0)]
    doubled = loss.replace(loss_fn=lambda out, target: 2 * cross_entropy(out, target))
    assert batch_losses(doubled) == [(pytest.approx(2 * value, rel=1e-14), weight)
                                     for value, weight in before]
    assert batch_losses(loss) == before and len(before) == -(-len(X) // 8)
    assert obj.value(theta).item() == pytest.approx(cross_entropy(output, y).item(), rel=1e-12)


def test_streamed_products_equal_kept_graph(tanh_mlp, data):
    kept = Objective.from_model(tanh_mlp, cross_entropy, data, batch_size=10)
    streamed = Objective.from_model(tanh_mlp, cross_entropy, data, batch_size=10,
                                    graph_cache_samples=15)
    V = torch.randn(kept.n, 3, dtype=torch.float64)
    torch.testing.assert_close(streamed.hvp(V), kept.hvp(V), rtol=1e-12, atol=1e-13)


def test_parameter_subset_is_a_block_of_the_full_hessian(tanh_mlp, data):
    full = Objective.from_model(tanh_mlp, cross_entropy, data)
    last = Objective.from_model(tanh_mlp, cross_entropy, data, params="2.*")
    assert last.info["parameters"] == ["2.weight", "2.bias"]
    start = full.n - last.n  # the last layer's parameters come last
    torch.testing.assert_close(last.hessian(), full.hessian()[start:, start:])
    torch.testing.assert_close(last.grad(), full.grad()[start:])


def test_float32_agrees_with_float64(data):
    model = make_mlp(nn.Tanh)
    X, y = data
    obj64 = Objective.from_model(model, cross_entropy, (X, y))
    obj32 = Objective.from_model(model, cross_entropy, (X, y), dtype=torch.float32)
    assert obj32.dtype == torch.float32 and obj32.hvp(obj32.theta0).dtype == torch.float32
    torch.testing.assert_close(obj32.hessian().double(), obj64.hessian(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_agrees_with_cpu(tanh_mlp, data):  # pragma: no cover - needs a GPU
    cpu = Objective.from_model(tanh_mlp, cross_entropy, data)
    gpu = Objective.from_model(tanh_mlp, cross_entropy, data, device="cuda")
    torch.testing.assert_close(gpu.hessian().cpu(), cpu.hessian())


def test_caller_model_buffers_mode_and_rng_are_untouched():
    model = make_cnn()
    model.train()  # the caller's mode: must survive an eval-mode analysis
    model.fc.eval()  # a mixed state must survive too
    X, y = classification_data(n=12, features=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    for mode in ("eval", "train"):
        obj = Objective.from_model(model, cross_entropy, (X, y), mode=mode)
        obj.hvp(torch.ones(obj.n, dtype=torch.float64))
        obj.hessian()
        assert obj.info["mode"] == mode
    assert model.training and not model.fc.training and model.conv.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng)


def test_train_mode_uses_batch_statistics_and_fixed_dropout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5),
                          nn.Linear(8, 3)).double()
    X, y = classification_data(n=20)
    obj = Objective.from_model(model, cross_entropy, (X, y), mode="train", batch_size=10)
    first, again = obj.value(), obj.value()
    assert first == again  # dropout masks are fixed by the seed: one deterministic function
    no_dropout = nn.Sequential(*list(model)[:2], list(model)[3])
    expected = sum(cross_entropy(no_dropout.train()(X[i:i + 10]), y[i:i + 10])
                   for i in (0, 10)) / 2
    obj_nd = Objective.from_model(no_dropout, cross_entropy, (X, y), mode="train", batch_size=10)
    torch.testing.assert_close(obj_nd.value(), expected.detach())
    evald = Objective.from_model(no_dropout, cross_entropy, (X, y))
    assert abs(evald.value() - obj_nd.value()) > 1e-3  # the two modes are different functions


def test_unused_parameter_has_zero_curvature_and_is_reported(data):
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.spare = nn.Linear(4, 3)

        def forward(self, x):
            return self.used(x)

    model = WithSpare().double()
    obj = Objective.from_model(model, cross_entropy, data)
    assert obj.info["unused_parameters"] == ["spare.weight", "spare.bias"]
    H = obj.hessian()
    assert torch.count_nonzero(H[15:]) == 0 and torch.count_nonzero(H[:, 15:]) == 0
    assert torch.count_nonzero(obj.grad()[15:]) == 0


def test_function_objective_derivatives_are_exact():
    obj = Objective.from_function(lambda x: x[0] ** 2 * x[1] + torch.sin(x[1]), [1.5, -0.5])
    x, y = 1.5, -0.5
    assert obj.value().item() == pytest.approx(x * x * y + torch.sin(torch.tensor(y)).item())
    torch.testing.assert_close(obj.grad(), torch.tensor(
        [2 * x * y, x * x + torch.cos(torch.tensor(y)).item()], dtype=torch.float64))
    expected = torch.tensor([[2 * y, 2 * x], [2 * x, -torch.sin(torch.tensor(y)).item()]],
                            dtype=torch.float64)
    torch.testing.assert_close(obj.hessian(), expected)


def test_linear_function_has_zero_hessian():
    obj = Objective.from_function(lambda x: 3 * x[0] - x[1], [0.0, 0.0])
    assert torch.count_nonzero(obj.hessian()) == 0


def test_known_lower_bounds():
    X, y = classification_data()
    model = make_mlp()
    assert Objective.from_model(model, cross_entropy, (X, y)).lower_bound == 0.0
    assert Objective.from_model(model, nn.CrossEntropyLoss(label_smoothing=0.1),
                                (X, y)).lower_bound is None
    target = torch.randn(len(X), 3, dtype=torch.float64)
    assert Objective.from_model(model, mse_loss, (X, target)).lower_bound == 0.0


# ------------------------------------------------------------------ bad input
def test_non_scalar_loss_is_refused(tanh_mlp, data):
    with pytest.raises(BadInputError, match="reduction='mean'"):
        Objective.from_model(tanh_mlp, nn.CrossEntropyLoss(reduction="none"), data)


def test_nan_loss_names_the_batch(tanh_mlp, data):
    X, y = data
    X = X.clone()
    X[25] = float("nan")
    with pytest.raises(NonFiniteLossError, match="batch 2"):
        Objective.from_model(tanh_mlp, cross_entropy, (X, y), batch_size=10).value()


def test_no_trainable_parameters_is_refused(data):
    model = make_mlp().requires_grad_(False)
    with pytest.raises(BadInputError, match="no trainable parameters"):
        Objective.from_model(model, cross_entropy, data)
    with pytest.raises(BadInputError, match="no trainable parameters"):
        Objective.from_model(nn.Tanh(), cross_entropy, data)


def test_shape_mismatch_is_explained(tanh_mlp):
    X, y = classification_data(features=7)
    with pytest.raises(BadInputError, match=r"batch 0 \(inputs \(37, 7\)"):
        Objective.from_model(tanh_mlp, cross_entropy, (X, y))
    with pytest.raises(BadInputError, match="X has 37 samples but y has 5"):
        Objective.from_model(tanh_mlp, cross_entropy, (X, y[:5]))


def test_dense_hessian_beyond_the_limit_points_to_the_iterative_path(tanh_mlp, data):
    obj = Objective.from_model(tanh_mlp, cross_entropy, data)
    with pytest.raises(BadInputError, match="landscope.spectrum"):
        obj.hessian(max_n=10)


def test_wrong_shapes_and_names(tanh_mlp, data):
    obj = Objective.from_model(tanh_mlp, cross_entropy, data)
    with pytest.raises(BadInputError, match=r"shape \(3,\)"):
        obj.hvp(torch.ones(3))
    with pytest.raises(BadInputError, match="theta has shape"):
        obj.value(torch.ones(obj.n + 1))
    with pytest.raises(BadInputError, match="matches no parameter; the model has: 0.weight"):
        Objective.from_model(tanh_mlp, cross_entropy, data, params="head.*")
    with pytest.raises(BadInputError, match="mode='test'"):
        Objective.from_model(tanh_mlp, cross_entropy, data, mode="test")
