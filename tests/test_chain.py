"""The chain engine (hand-derived R-operators) against torch.func.hessian and autograd."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from helpers import classification_data, make_cnn, make_mlp, reference_hessian
from torch import nn
from torch.nn import functional as F
from torch.nn.functional import cross_entropy, gelu, mse_loss

from landscope import BadInputError, NonFiniteLossError, Objective
from landscope.functional import _modes


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


def _with_running_statistics(model_class, seed, norms=("bn1",), gains=False):
    """``model_class()`` in float64 eval mode, its BatchNorm layers ``norms`` given non-trivial
    running statistics (and gains), as after training."""
    torch.manual_seed(seed)
    model = model_class().double().eval()
    with torch.no_grad():
        for bn in (getattr(model, name) for name in norms):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            if gains:
                bn.weight.uniform_(0.5, 1.5)
    return model


def _view_cnn():
    return _with_running_statistics(ViewCNN, 3)


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
    return _with_running_statistics(ResidualCNN, 7, ("bn1", "bn2"), gains=True)


class IdiomCNN(nn.Module):
    """The digits CNN as users write it: sizes read from the input, functional and in-place
    ReLUs on tensors nobody else reads, flatten in its three spellings."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(2 * 16, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = x.reshape(x.shape[0], 1, 4, 4)
        h = F.relu(self.bn1(self.conv1(h)), inplace=True)
        h = torch.relu(self.conv2(h))
        h = torch.flatten(h, 1).view(h.size(0), -1).flatten(1)
        return self.fc2(self.fc1(h).relu_())


def _idiom_cnn():
    return _with_running_statistics(IdiomCNN, 9)


class InplaceResidual(nn.Module):
    """torchvision's BasicBlock idiom: nn.ReLU(inplace=True) after BatchNorm, ``out += x``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(16, 6)
        self.fc1, self.bn1 = nn.Linear(6, 6), nn.BatchNorm1d(6)
        self.fc2, self.bn2 = nn.Linear(6, 6), nn.BatchNorm1d(6)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.tanh(self.stem(x))
        out = self.relu(self.bn1(self.fc1(x)))
        out = self.bn2(self.fc2(out))
        out += x
        out = self.relu(out)
        return self.head(out)


def _inplace_residual():
    return _with_running_statistics(InplaceResidual, 10, ("bn1", "bn2"))


class Twice(nn.Module):
    """One Linear applied twice: its weight's gradient and curvature add up over the uses."""

    def __init__(self):
        super().__init__()
        self.inp, self.fc, self.out = nn.Linear(16, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(self.inp(x))))))


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
    "idiom_cnn": (_idiom_cnn, cross_entropy, None),
    "inplace_residual": (_inplace_residual, cross_entropy, None),
    "module_twice": (lambda: (torch.manual_seed(11), Twice().double())[1], cross_entropy, None),
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
    loop = Objective.from_model(model, loss, (X, y), mode=mode, engine="loop")
    torch.testing.assert_close(hv, loop.hvp(torch.ones(obj.n, dtype=torch.float64)))


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


# ---------------------------------------------------------------------------- traps
class _Trap(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 6), nn.Linear(6, 3), nn.Linear(6, 3)
        self.relu = nn.ReLU(inplace=True)


class InplaceModuleReuse(_Trap):
    def forward(self, x):
        h = self.a(x)
        return self.b(self.relu(h)) + self.c(h)  # c reads h after the ReLU overwrote it


class InplaceFunctionReuse(_Trap):
    def forward(self, x):
        h = self.a(x)
        y = F.relu(h, inplace=True)
        return self.b(y) + self.c(h)


class InplaceMethod(_Trap):
    def forward(self, x):
        h = self.a(x)
        h.relu_()
        return self.b(h)


class AugmentedAlias(_Trap):
    def forward(self, x):
        h = self.a(x)
        skip = h
        h += torch.tanh(self.a(x))  # skip is h: it sees the sum too
        return self.b(h + skip)


class Hooked(_Trap):
    def __init__(self):
        super().__init__()
        self.a.register_forward_hook(lambda module, inputs, output: output * 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _points(obj, count=3, scale=0.5):
    """θ₀ and ``count - 1`` seeded points around it."""
    gen = torch.Generator().manual_seed(12)
    return [obj.theta0] + [obj.theta0 + scale * torch.randn(obj.n, generator=gen,
                                                            dtype=obj.dtype)
                           for _ in range(count - 1)]


def _dense(model, loss, X, y, obj, theta, mode="eval"):
    """(L, ∇²L) at θ by torch.func.hessian in the analysis mode, on a copy of the model."""
    copy = deepcopy(model)

    def f(t):
        state = {**obj.unflatten(t), **dict(copy.named_buffers())}
        return loss(torch.func.functional_call(copy, state, (X,)), y)

    with _modes(copy, mode):
        return f(theta.clone()).detach(), torch.func.hessian(f)(theta.clone())


@pytest.mark.parametrize("trap, reason", [
    (InplaceModuleReuse, "'relu' overwrites 'a' in place, and 'c' reads it afterwards"),
    (InplaceFunctionReuse, "'relu' overwrites 'a' in place, and 'c' reads it afterwards"),
    (InplaceMethod, "'relu_' overwrites 'a' in place, and 'b' reads it afterwards"),
    (AugmentedAlias, "'iadd' overwrites 'a' in place, and 'add' reads it afterwards"),
    (Hooked, "module 'a' has hooks"),
])
def test_traps_fall_back_to_autograd_with_the_reason(trap, reason):
    torch.manual_seed(13)
    model = trap().double()
    X, y = classification_data(n=23, features=16, classes=3)
    with pytest.raises(BadInputError, match="engine='chain' does not apply") as error:
        Objective.from_model(model, cross_entropy, (X, y), engine="chain")
    assert reason in str(error.value)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    assert reason in obj.info["chain_engine"]
    V = torch.randn(obj.n, 2, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    for theta in _points(obj):
        value, H = _dense(model, cross_entropy, X, y, obj, theta)
        torch.testing.assert_close(obj.hvp(V, theta), H @ V, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(obj.value(theta), value, rtol=1e-12, atol=0)


class TrainingBranch(_Trap):
    def forward(self, x):
        h = self.a(x)
        h = torch.tanh(h) if self.training else torch.relu(h)
        return self.b(h)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_trace_follows_the_analysis_mode_not_the_callers(mode):
    torch.manual_seed(15)
    model = TrainingBranch().double().train(mode == "eval")  # the caller's mode is the other one
    X, y = classification_data(n=23, features=16, classes=3)
    obj = Objective.from_model(model, cross_entropy, (X, y), mode=mode, engine="chain")
    V = torch.randn(obj.n, 2, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    for theta in _points(obj):
        _, H = _dense(model, cross_entropy, X, y, obj, theta, mode)
        torch.testing.assert_close(obj.hvp(V, theta), H @ V, rtol=1e-10, atol=1e-12)
    assert obj.info["chain_engine"] == "used" and obj.info["chain_checks"]["points"] == 3
    assert model.training == (mode == "eval") and model.a.training == (mode == "eval")


def _positive_at_theta0():
    """The in-place trap with every pre-activation of ``a`` positive at θ₀ (its bias is large),
    so there the trap does not show; at ``theta1`` (bias −1) it does."""
    torch.manual_seed(0)
    model = InplaceModuleReuse().double()
    with torch.no_grad():
        model.a.bias.fill_(6.0)
    X, y = classification_data(n=23, features=16, classes=3)
    return model, X, y


@pytest.mark.parametrize("engine", ["auto", "chain"])
def test_every_new_point_is_checked_and_a_mismatch_switches_to_autograd(monkeypatch, engine):
    # A trap that slips past the structural checks (switched off here) is still caught at the
    # first point where it shows.
    monkeypatch.setattr("landscope.chain_trace._check_overwrite", lambda *args: None)
    model, X, y = _positive_at_theta0()
    obj = Objective.from_model(model, cross_entropy, (X, y), engine=engine)
    monkeypatch.setattr(obj, "_requested", "chain")  # keep it whatever the timing says
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    value0, H0 = _dense(model, cross_entropy, X, y, obj, obj.theta0)
    torch.testing.assert_close(obj.hvp(v), H0 @ v, rtol=1e-10, atol=1e-12)
    assert obj.info["chain_engine"] == "used"  # the two semantics agree at θ₀
    theta1 = obj.theta0.clone()
    obj.unflatten(theta1)["a.bias"].fill_(-1.0)
    sums = obj._chain.at(theta1)  # Σ w_b ℓ_b and Σ w_b
    chain_value = sums.value / sums.weight
    value1, H1 = _dense(model, cross_entropy, X, y, obj, theta1)
    assert abs(float(chain_value - value1)) > 0.1 * float(value1)  # the chain alone is wrong
    torch.testing.assert_close(obj.hvp(v, theta1), H1 @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.value(theta1), value1, rtol=1e-12, atol=0)
    assert obj.info["chain_engine"].startswith("not used from point 2 on: it disagreed")
    assert obj.info["hvp_engine"] != "chain" and obj.info["chain_checks"]["points"] == 2
    assert obj.info["chain_checks"]["max_relative_errors"]["value"] > 0.1
    torch.testing.assert_close(obj.hvp(v), H0 @ v, rtol=1e-10, atol=1e-12)  # autograd for good
    assert obj.info["chain_checks"]["points"] == 2


def test_the_check_costs_one_gradient_per_new_point_and_nothing_per_product():
    _, _, _, _, obj = _case("tanh_mlp")
    V = torch.randn(obj.n, 3, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    theta0, theta1, theta2 = _points(obj)
    obj.hvp(V, theta0)  # the trial
    counts = dict(obj.counts)
    obj.hvp(V, theta1)  # a new point: the chain's pass and one autograd gradient
    assert obj.counts["gradients"] - counts["gradients"] == 2
    assert obj.counts["passes"] - counts["passes"] == 2
    counts = dict(obj.counts)
    obj.hvp(V, theta1)  # the same point: products only
    assert obj.counts["gradients"] == counts["gradients"] and obj.counts["hvp"] == counts["hvp"] + 3
    obj.grad(theta2)  # L and ∇L by autograd first: the check reuses them
    counts = dict(obj.counts)
    obj.hvp(V, theta2)
    assert obj.counts["gradients"] - counts["gradients"] == 1
    checks = obj.info["chain_checks"]
    assert checks["points"] == 3 and max(checks["max_relative_errors"].values()) < 1e-12
    assert obj.info["hvp_engine"] == "chain"


# ---------------------------------------------------------------------------- shared weights
class TiedPair(nn.Module):
    """Two Linear layers holding one weight Parameter (as an embedding tied to its head)."""

    def __init__(self):
        super().__init__()
        self.inp, self.a, self.b = nn.Linear(16, 5), nn.Linear(5, 5), nn.Linear(5, 5)
        self.b.weight = self.a.weight
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.tanh(self.a(torch.tanh(self.inp(x)))))))


def _reused_sequential():
    torch.manual_seed(19)
    shared = nn.Linear(5, 5)
    return nn.Sequential(nn.Linear(16, 5), nn.Tanh(), shared, nn.Tanh(), shared, nn.Tanh(),
                         nn.Linear(5, 3)).double()


def _tied_pair():
    torch.manual_seed(20)
    return TiedPair().double()


@pytest.mark.parametrize("factory, params, names", [
    (_tied_pair, None, ["inp.weight", "inp.bias", "a.weight", "a.bias", "b.bias", "out.weight",
                        "out.bias"]),
    (_tied_pair, "a.weight,out.*", ["a.weight", "out.weight", "out.bias"]),
    (_reused_sequential, None, ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight",
                                "6.bias"]),
    (_reused_sequential, "2.weight", ["2.weight"]),
])
def test_shared_weights_are_one_block_exactly_and_the_model_keeps_them(factory, params, names):
    model = factory()
    before = {name: (p, p.detach().clone()) for name, p in model.named_parameters(
        remove_duplicate=False)}
    count = len(list(model.parameters()))
    X, y = classification_data(n=23, features=16, classes=3)
    obj = Objective.from_model(model, cross_entropy, (X, y), params=params, engine="chain")
    assert obj.info["parameters"] == names
    V = torch.randn(obj.n, 3, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    for theta in _points(obj):
        value, H = _dense(model, cross_entropy, X, y, obj, theta)
        torch.testing.assert_close(obj.hvp(V, theta), H @ V, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(obj.value(theta), value, rtol=1e-12, atol=0)
    assert obj.info["chain_engine"] == "used" and obj.info["chain_checks"]["points"] == 3
    after = dict(model.named_parameters(remove_duplicate=False))
    assert after.keys() == before.keys() and len(list(model.parameters())) == count
    for name, (parameter, values) in before.items():
        assert after[name] is parameter and torch.equal(parameter.detach(), values)
    assert model.training


@pytest.mark.parametrize("options, reason", [
    ({"reduction": "sum"}, "reduction='sum'"),
    ({"output": lambda out: 2 * out}, "selects what the loss reads"),
])
def test_losses_other_than_a_batch_mean_of_the_output_are_refused(options, reason):
    model = make_mlp(nn.Tanh, sizes=(16, 4, 3))
    X, y = classification_data(n=20, features=16, classes=3)
    with pytest.raises(BadInputError, match=reason):
        Objective.from_model(model, cross_entropy, (X, y), engine="chain", **options)
    obj = Objective.from_model(model, cross_entropy, (X, y), **options)
    assert reason in obj.info["chain_engine"]


def test_keyword_inputs_fall_back_at_the_first_point():
    model = make_mlp(nn.Tanh, sizes=(16, 4, 3))
    X, y = classification_data(n=20, features=16, classes=3)
    batches = [{"input": X[:12], "labels": y[:12]}, {"input": X[12:], "labels": y[12:]}]
    obj = Objective.from_model(model, cross_entropy, batches, engine="chain")
    v = torch.ones(obj.n, dtype=torch.float64)
    _, H = _dense(model, cross_entropy, X, y, obj, obj.theta0)
    torch.testing.assert_close(obj.hvp(v), H @ v, rtol=1e-10, atol=1e-12)
    assert "other inputs than one tensor" in obj.info["chain_engine"]
    assert obj.info["hvp_engine"] != "chain"


def test_engine_chain_is_checked_at_the_first_point_too(monkeypatch):
    monkeypatch.setattr("landscope.chain_trace._check_overwrite", lambda *args: None)
    torch.manual_seed(22)
    model = InplaceModuleReuse().double()  # pre-activations of both signs: the trap shows at θ₀
    X, y = classification_data(n=23, features=16, classes=3)
    obj = Objective.from_model(model, cross_entropy, (X, y), engine="chain")
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    _, H = _dense(model, cross_entropy, X, y, obj, obj.theta0)
    torch.testing.assert_close(obj.hvp(v), H @ v, rtol=1e-10, atol=1e-12)
    assert obj.info["chain_engine"] == "not used: it disagreed with autograd (see chain_trial)"
    assert max(obj.info["chain_trial"]["relative_errors"].values()) > 1e-2
    assert obj.info["hvp_engine"] != "chain"
