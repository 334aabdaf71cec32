"""The analysis on a CUDA device: the same numbers as on the CPU, everything kept on the device,
and no host synchronisation beyond the scalars each solver step needs.

The device tests skip without CUDA. The synchronisation tests run everywhere: ``_OnDevice`` is a
CPU tensor that plays the device. Everything computed from it stays an ``_OnDevice`` (torch
propagates tensor subclasses), and every read of its values by the host (``.cpu()``, ``.to("cpu")``,
``.item()``, ``float``, ``bool``, ``.tolist()``) is counted and hands back a plain tensor, as a
device-to-host copy does.
"""

from __future__ import annotations

import pytest
import torch
from helpers import classification_data, make_cnn, make_mlp
from torch.nn.functional import cross_entropy

import landscope as ls
from landscope.data import Batches
from landscope.functional import ModelLoss
from landscope.linalg import Operator, hutchinson, slq
from landscope.surface import surface

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

_READS = {torch.Tensor.cpu, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy,
          torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__}


class _OnDevice(torch.Tensor):
    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_host = func is torch.Tensor.to and "cpu" in map(str, [*args[1:], *kwargs.values()])
        if func in _READS or to_host:
            _OnDevice.reads += 1
            plain = [a.as_subclass(torch.Tensor) if isinstance(a, _OnDevice) else a
                     for a in args]
            return func(*plain, **kwargs)
        return super().__torch_function__(func, types, args, kwargs)


def _symmetric(n=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    return (U * torch.linspace(-2.0, 5.0, n, dtype=torch.float64)) @ U.T


def _counted(A: torch.Tensor) -> Operator:
    """A as an operator whose products count their reads back to the host."""
    return Operator(A.shape[0], A.dtype, A.device, lambda V: (A @ V).as_subclass(_OnDevice))


def test_slq_reads_the_device_once_per_step_for_all_probes():
    A = _symmetric()
    lanczos_steps = 20
    for probes in (2, 8):
        _OnDevice.reads = 0
        on_device = slq(_counted(A), probes=probes, lanczos_steps=lanczos_steps)
        assert _OnDevice.reads == lanczos_steps  # not per probe, not per entry
        plain = slq(A, probes=probes, lanczos_steps=lanczos_steps)
        assert torch.equal(on_device.nodes, plain.nodes)
        assert torch.equal(on_device.weights, plain.weights)


def test_hutchinson_reads_the_device_once_per_batch_of_probes():
    A = _symmetric()
    _OnDevice.reads = 0
    est = hutchinson(_counted(A), probes=30, batch=10)
    assert _OnDevice.reads == 3
    assert est.to_dict() == hutchinson(A, probes=30, batch=10).to_dict()


def test_data_in_memory_is_moved_once_and_read_back_once_per_pass():
    X, y = classification_data(n=40, features=16)
    batches = Batches((X.as_subclass(_OnDevice), y.as_subclass(_OnDevice)), batch_size=8,
                      dtype=torch.float32)
    _OnDevice.reads = 0
    first, second = list(batches), list(batches)
    assert _OnDevice.reads == 2  # the five batches' fingerprints, one transfer per pass
    assert len(first) == 5 and first[0].inputs[0].dtype == torch.float32
    assert all(a.inputs[0] is b.inputs[0] and a.target is b.target  # cast once, not per pass
               for a, b in zip(first, second, strict=True))


def test_a_pass_of_the_loss_reads_the_device_twice_whatever_the_batches():
    """Per pass: the batches' fingerprints and the losses' finiteness, one read each; the
    batch weights are read on the first pass only."""
    X, y = classification_data(n=40, features=16)
    batches = Batches((X.as_subclass(_OnDevice), y.as_subclass(_OnDevice)), batch_size=8)
    loss = ModelLoss(make_mlp(sizes=(16, 6, 3)), cross_entropy, batches, params=None,
                     mode="eval", dtype=torch.float64, device=torch.device("cpu"), seed=0)
    list(loss(loss.theta0))
    _OnDevice.reads = 0
    assert len(list(loss(loss.theta0))) == 5
    assert _OnDevice.reads == 2


def test_a_non_finite_loss_still_names_its_batch():
    X, y = classification_data(n=40, features=16)
    X[27, 3] = float("nan")
    obj = ls.Objective.from_model(make_mlp(sizes=(16, 6, 3)), cross_entropy, (X, y),
                                  batch_size=8, engine="loop")
    with pytest.raises(ls.NonFiniteLossError, match=r"batch 3 \(8 samples\)"):
        obj.grad()


def test_a_changed_batch_is_caught_at_the_end_of_its_pass():
    X, y = classification_data(n=40, features=16)
    batches = Batches([(X[:20], y[:20]), (X[20:], y[20:])])
    list(batches)
    X[25, 0] += 1.0  # the caller changes the data in place between two passes
    with pytest.raises(ls.BadInputError, match="batch 1 differs from the first pass"):
        list(batches)


# ---------------------------------------------------------------------------------- on CUDA
def _pair(dtype=torch.float64, model=None):
    model = model if model is not None else make_cnn(dtype=dtype)
    X, y = classification_data(n=40, features=16, dtype=dtype)
    cpu = ls.Objective.from_model(model, cross_entropy, (X, y), batch_size=16)
    gpu = ls.Objective.from_model(model, cross_entropy, (X, y), batch_size=16, device="cuda")
    return model, cpu, gpu


def _close(gpu_value, cpu_value, scale, rtol):
    gpu_value = torch.as_tensor(gpu_value).double().cpu()
    cpu_value = torch.as_tensor(cpu_value).double()
    assert float((gpu_value - cpu_value).abs().max()) <= rtol * scale


@cuda
def test_cuda_matches_cpu_in_float64_and_keeps_everything_on_the_device():  # pragma: no cover
    model, cpu, gpu = _pair()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert gpu.theta0.is_cuda and not cpu.theta0.is_cuda
    v = torch.randn(cpu.n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hv = gpu.hvp(v)
    assert hv.is_cuda
    rho = float(cpu.hvp(v).abs().max())
    _close(hv, cpu.hvp(v), rho, 1e-10)
    _close(gpu.grad(), cpu.grad(), float(cpu.grad().abs().max()), 1e-10)

    spec_gpu = ls.spectrum(gpu, k=2, which="both", exact=False)
    spec_cpu = ls.spectrum(cpu, k=2, which="both", exact=False)
    assert spec_gpu.largest.vectors.is_cuda and spec_gpu.smallest.vectors.is_cuda
    rho = float(spec_cpu.largest.values.abs().max())
    for end in ("largest", "smallest"):
        _close(getattr(spec_gpu, end).values, getattr(spec_cpu, end).values, rho, 1e-10)

    pr_gpu, pr_cpu = ls.probe(gpu, exact=False), ls.probe(cpu, exact=False)
    assert pr_gpu.kind == pr_cpu.kind
    _close([pr_gpu.lambda_max, pr_gpu.lambda_min], [pr_cpu.lambda_max, pr_cpu.lambda_min],
           rho, 1e-10)

    dens_gpu = ls.density(gpu, probes=4, lanczos_steps=30, exact=False)
    dens_cpu = ls.density(cpu, probes=4, lanczos_steps=30, exact=False)
    _close(dens_gpu.quadrature.nodes, dens_cpu.quadrature.nodes, rho, 1e-8)
    _close(dens_gpu.quadrature.weights, dens_cpu.quadrature.weights, 1.0, 1e-8)

    tr_gpu = ls.trace(gpu, probes=20, exact=False)
    tr_cpu = ls.trace(cpu, probes=20, exact=False)
    _close(tr_gpu.value, tr_cpu.value, abs(tr_cpu.value), 1e-10)

    d = torch.randn(cpu.n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    line_gpu = surface(gpu, [d], span=0.5, resolution=5)
    line_cpu = surface(cpu, [d], span=0.5, resolution=5)
    _close(line_gpu.values, line_cpu.values, float(abs(line_cpu.values).max()), 1e-10)

    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@cuda
def test_cuda_matches_cpu_in_float32_within_the_solver_tolerance():  # pragma: no cover
    _, cpu, gpu = _pair(torch.float32)
    assert gpu.dtype == torch.float32 and gpu.theta0.is_cuda
    eig_rtol = 1e-4
    spec_gpu = ls.spectrum(gpu, k=1, which="both", exact=False, eig_rtol=eig_rtol)
    spec_cpu = ls.spectrum(cpu, k=1, which="both", exact=False, eig_rtol=eig_rtol)
    rho = float(spec_cpu.largest.values.abs().max())
    for end in ("largest", "smallest"):  # each value within its residual of an eigenvalue
        _close(getattr(spec_gpu, end).values, getattr(spec_cpu, end).values, rho, 4 * eig_rtol)


@cuda
def test_a_model_on_cuda_stays_there_unchanged():  # pragma: no cover
    model = make_cnn().cuda().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, y = classification_data(n=40, features=16)
    obj = ls.Objective.from_model(model, cross_entropy, (X, y))
    assert obj.device.type == "cuda"
    ls.spectrum(obj, k=1, which="largest", exact=False)
    assert model.training and all(p.is_cuda for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
