"""The chain engine (hand-derived R-operators) against torch.func.hessian and autograd."""

from __future__ import annotations

import pytest
import torch
from helpers import classification_data, make_cnn, make_mlp, reference_hessian
from torch import nn
from torch.nn import functional as F
from torch.nn.functional import cross_entropy, gelu, mse_loss

from landscope import BadInputError, NonFiniteLossError, Objective


class ViewCNN(nn.Module):
    """A plain CNN written with a custom forward (view, functional relu, torch.flatten)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x):
        h = x.view(-1, 1, 4, 4)
        h = torch.relu(self.bn1(self.conv1(h)))
        h = torch.sigmoid(self.conv2(h))
        return self.fc(torch.flatten(h, 1))


def _view_cnn():
    torch.manual_seed(3)
    model = ViewCNN().double().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model


def _mixed_mlp():
    """Nested Sequential, LeakyReLU, Sigmoid, identity-like layers, a bias-free layer, BN1d."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(16, 6), nn.LeakyReLU(0.2)),
        nn.Dropout(0.3), nn.BatchNorm1d(6, affine=False), nn.Identity(),
        nn.Linear(6, 5, bias=False), nn.Sigmoid(), nn.Flatten(), nn.Linear(5, 3),
    ).double().eval()
    with torch.no_grad():
        model[2].running_var.uniform_(0.5, 2.0)
    return model


def _smooth_mlp():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(16, 6), nn.GELU(), nn.Linear(6, 6), nn.SiLU(),
                         nn.Linear(6, 5), nn.Softplus(beta=2.0, threshold=1.0), nn.Linear(5, 5),
                         nn.ELU(alpha=0.7), nn.Linear(5, 3)).double()


class PoolCNN(nn.Module):
    """Overlapping max pooling, average pooling and adaptive pooling between convolutions."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.pool1 = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool2 = nn.AvgPool2d(2)
        self.pool3 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.pool1(torch.tanh(self.conv1(x.view(-1, 1, 4, 4))))
        h = self.pool3(self.pool2(F.gelu(self.conv2(h))))
        return self.fc(h.flatten(1))


def _pool_cnn():
    torch.manual_seed(6)
    return PoolCNN().double()


class ResidualMLP(nn.Module):
    """Two residual blocks (one with a ReLU that would update a shared tangent in place)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 8)
        self.a1, self.a2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b1 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + self.a2(torch.relu(self.a1(h)))
        h = torch.tanh(self.b1(h)).add(h)
        return self.out(torch.relu(h))


class ResidualCNN(nn.Module):
    """A ResNet basic block with BatchNorm (eval) and an identity shortcut, then a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 16, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x.view(-1, 1, 4, 4)))
        y = torch.relu(self.bn1(self.conv1(h)))
        y = self.bn2(self.conv2(y))
        h = torch.relu(y + h)
        return self.fc(h.flatten(1))


def _residual_cnn():
    torch.manual_seed(7)
    model = ResidualCNN().double().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return model


MODELS = {  # name: (model factory, loss, parameter selection)
    "tanh_mlp": (lambda: make_mlp(nn.Tanh, sizes=(16, 6, 5, 3)), cross_entropy, None),
    "relu_mlp_mse": (lambda: make_mlp(nn.ReLU, sizes=(16, 7, 3)), mse_loss, None),
    "cnn_bn_eval": (make_cnn, cross_entropy, None),
    "view_cnn": (_view_cnn, nn.CrossEntropyLoss(), None),
    "mixed_mlp": (_mixed_mlp, cross_entropy, None),
    "smooth_mlp": (_smooth_mlp, cross_entropy, None),
    "pool_cnn": (_pool_cnn, cross_entropy, None),
    "residual_mlp": (lambda: (torch.manual_seed(8), ResidualMLP().double())[1], cross_entropy,
                     None),
    "residual_cnn": (_residual_cnn, cross_entropy, None),
    "residual_tail_only": (_residual_cnn, cross_entropy, ["conv2.weight", "bn2.*", "fc.*"]),
    "last_layer_only": (lambda: make_mlp(nn.Tanh, sizes=(16, 6, 5, 3)), cross_entropy, "4.*"),
    "biases_and_bn": (make_cnn, cross_entropy, ["conv.bias", "bn.weight", "fc.bias"]),
}


def _case(name, batch_size=None):
    factory, loss, params = MODELS[name]
    model = factory()
    X, y = classification_data(n=23, features=16, classes=3)
    target = torch.nn.functional.one_hot(y, 3).double() if loss is mse_loss else y
    obj = Objective.from_model(model, loss, (X, target), params=params, engine="chain",
                               batch_size=batch_size)
    return model, loss, X, target, obj


@pytest.mark.parametrize("name", sorted(MODELS))
def test_chain_matches_the_dense_hessian(name):
    model, loss, X, target, obj = _case(name, batch_size=7)  # batches 7, 7, 7, 2
    H = reference_hessian(model, loss, X, target, obj)
    V = torch.randn(obj.n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(V), H @ V, rtol=1e-10, atol=1e-12)
    assert obj.info["hvp_engine"] == "chain"
    autograd = Objective.from_model(model, loss, (X, target), params=obj.info["parameters"],
                                    engine="loop")
    value, grad = obj.value_and_grad()
    ref_value, ref_grad = autograd.value_and_grad()
    torch.testing.assert_close(value, ref_value, rtol=1e-13, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-13)


def test_chain_follows_the_point_and_leaves_the_model_alone():
    model, loss, X, y, obj = _case("view_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    theta = obj.theta0 + 0.1 * torch.randn(obj.n, generator=torch.Generator().manual_seed(4),
                                           dtype=torch.float64)
    reference = Objective.from_model(model, loss, (X, y), engine="loop")
    v = torch.randn(obj.n, dtype=torch.float64)
    for point in (theta, obj.theta0, theta):
        torch.testing.assert_close(obj.hvp(v, point), reference.hvp(v, point), rtol=1e-10,
                                   atol=1e-12)
        torch.testing.assert_close(obj.grad(point), reference.grad(point), rtol=1e-11,
                                   atol=1e-13)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training  # its mode untouched


def test_auto_engine_tries_the_chain_once_and_records_the_trial():
    model = make_mlp(nn.Tanh, sizes=(16, 32, 3))
    X, y = classification_data(n=300, features=16, classes=3)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    v = torch.randn(obj.n, dtype=torch.float64)
    hv = obj.hvp(v)
    trial = obj.info["chain_trial"]
    assert max(trial["relative_errors"].values()) <= trial["tolerance"] == 1e-7
    assert obj.info["chain_engine"] in ("used", "not used: slower than autograd here "
                                                "(see chain_trial)")
    assert obj.counts["hvp"] == 1 + 4  # the trial's products are counted too
    reference = Objective.from_model(model, cross_entropy, (X, y), engine="loop")
    torch.testing.assert_close(hv, reference.hvp(v), rtol=1e-10, atol=1e-12)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.b(x * torch.sigmoid(self.a(x)))


class TanhGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(gelu(self.a(x), approximate="tanh"))


@pytest.mark.parametrize("model, loss, mode, reason", [
    (Gated(), cross_entropy, "eval", "combines two tensors"),
    (TanhGelu(), cross_entropy, "eval", "approximate"),
    (make_cnn(), cross_entropy, "train", "BatchNorm2d) in train mode"),
    (make_mlp(nn.Tanh, sizes=(16, 3)), lambda out, t: cross_entropy(out, t), "eval", "loss"),
    (make_mlp(nn.Tanh, sizes=(16, 3)), nn.CrossEntropyLoss(label_smoothing=0.1), "eval", "loss"),
])
def test_what_the_chain_does_not_handle_falls_back_with_the_reason(model, loss, mode, reason):
    model = model.double()
    X, y = classification_data(n=20, features=16, classes=3)
    with pytest.raises(BadInputError, match="engine='chain' does not apply") as error:
        Objective.from_model(model, loss, (X, y), mode=mode, engine="chain")
    assert reason in str(error.value)
    obj = Objective.from_model(model, loss, (X, y), mode=mode)  # auto: autograd, and why
    assert reason in obj.info["chain_engine"]
    hv = obj.hvp(torch.ones(obj.n, dtype=torch.float64))
    H = Objective.from_model(model, loss, (X, y), mode=mode, engine="loop").hessian()
    torch.testing.assert_close(hv, H @ torch.ones(obj.n, dtype=torch.float64))


def test_probability_targets_fall_back_at_the_first_point():
    model = make_mlp(nn.Tanh, sizes=(16, 3))
    X, y = classification_data(n=20, features=16, classes=3)
    soft = torch.softmax(torch.randn(20, 3, dtype=torch.float64), 1)
    obj = Objective.from_model(model, cross_entropy, (X, soft))
    hv = obj.hvp(torch.ones(obj.n, dtype=torch.float64))
    assert "class indices" in obj.info["chain_engine"]
    ref = Objective.from_model(model, cross_entropy, (X, soft), engine="loop")
    torch.testing.assert_close(hv, ref.hvp(torch.ones(obj.n, dtype=torch.float64)))


def test_a_non_finite_loss_under_the_chain_names_the_batch():
    _, _, _, _, obj = _case("tanh_mlp", batch_size=10)
    theta = obj.theta0.clone()
    theta[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="batch 0"):
        obj.hvp(torch.ones(obj.n, dtype=torch.float64), theta)
