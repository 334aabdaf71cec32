"""The steps of the chain engine (:mod:`landscope.chain`): each layer's forward pass, its adjoint
(backward) and its R-operators, R{·} = ∂(·)/∂θ · v, forward for the tangents and backward for the
R-gradients.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Unsupported(Exception):
    """The model, loss or data is outside what the chain engine handles (the message says why)."""


# ============================================================================ layers
class Layer(Protocol):
    """A step of the chain engine: it maps its input u to its output o = f(u; p).

    ``names``: the model's name of each parameter slot (None for an absent one, such as a missing
    bias). p: the layer's parameter values in that order (for a :class:`_Reshape`, the shapes of
    the model's input and of every output so far); vp: their tangents (None for a fixed
    parameter); want: which parameters need their gradient; ``saved``: what ``forward`` keeps.
    ``keeps_grad_out``: whether ``rbackward`` reads d_o (else it is not kept, which saves one
    activation-sized tensor per such layer).
    """

    names: list[str | None]
    keeps_grad_out: bool

    def forward(self, u: Tensor, p: list) -> tuple[Tensor, Any]:
        """(o, saved)."""

    def backward(self, d_o: Tensor, saved: Any, p: list, want: list[bool],
                 need_input: bool) -> tuple[Tensor | None, list[Tensor | None]]:
        """(∂L/∂u or None when not needed, [∂L/∂p_i or None])."""

    def rforward(self, r_u: Tensor | None, saved: Any, p: list,
                 vp: list[Tensor | None]) -> Tensor | None:
        """R{o} (None when it is zero)."""

    def rbackward(self, rd_o: Tensor, d_o: Tensor | None, r_u: Tensor | None, saved: Any,
                  p: list, vp: list[Tensor | None],
                  need_input: bool) -> tuple[Tensor | None, list[Tensor | None]]:
        """(R{∂L/∂u} or None when not needed, [(H v)_p_i or None])."""


def _add(a, b):
    return b if a is None else (a if b is None else a + b)


class _Linear:
    keeps_grad_out = True

    def __init__(self, module: nn.Linear, prefix: str):
        self.names = [prefix + "weight", prefix + "bias" if module.bias is not None else None]

    def forward(self, u, p):
        return F.linear(u, p[0], p[1]), u

    def backward(self, d_o, u, p, want, need_input):
        d2, u2 = d_o.reshape(-1, d_o.shape[-1]), u.reshape(-1, u.shape[-1])
        gw = d2.T @ u2 if want[0] else None
        gb = d2.sum(0) if want[1] else None
        return (d_o @ p[0] if need_input else None), [gw, gb]

    def rforward(self, r_u, u, p, vp):
        # R{o} = R{u} Wᵀ + u Vᵀ + c, accumulated into one buffer by addmm_.
        u2, out = u.reshape(-1, u.shape[-1]), None
        if vp[0] is not None:
            out = u2 @ vp[0].T if vp[1] is None else torch.addmm(vp[1], u2, vp[0].T)
        if r_u is not None:
            r2 = r_u.reshape(-1, r_u.shape[-1])
            if out is not None:
                out.addmm_(r2, p[0].T)
            else:
                out = r2 @ p[0].T if vp[1] is None else torch.addmm(vp[1], r2, p[0].T)
        if out is None and vp[1] is not None:  # only the bias moves, on the data itself
            out = vp[1].expand(u2.shape[0], -1).clone()
        return None if out is None else out.reshape(*u.shape[:-1], out.shape[-1])

    def rbackward(self, rd_o, d_o, r_u, u, p, vp, need_input):
        rd2, u2 = rd_o.reshape(-1, rd_o.shape[-1]), u.reshape(-1, u.shape[-1])
        hw = hb = None
        if vp[0] is not None:  # R{∂L/∂W} = R{d_o}ᵀ u + d_oᵀ R{u}
            hw = rd2.T @ u2
            if r_u is not None:
                hw.addmm_(d_o.reshape(-1, d_o.shape[-1]).T, r_u.reshape(-1, r_u.shape[-1]))
        if vp[1] is not None:
            hb = rd2.sum(0)
        rd_u = None
        if need_input:  # R{∂L/∂u} = R{d_o} W + d_o V
            rd_u = rd2 @ p[0]
            if vp[0] is not None:
                rd_u.addmm_(d_o.reshape(-1, d_o.shape[-1]), vp[0])
            rd_u = rd_u.reshape(*rd_o.shape[:-1], rd_u.shape[-1])
        return rd_u, [hw, hb]


class _Conv2d:
    keeps_grad_out = True

    def __init__(self, module: nn.Conv2d, prefix: str):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise Unsupported(f"{prefix or 'the'} Conv2d uses padding {module.padding!r} / mode "
                              f"{module.padding_mode!r} (only explicit zero padding is handled)")
        self.names = [prefix + "weight", prefix + "bias" if module.bias is not None else None]
        self.args = (module.stride, module.padding, module.dilation, module.groups)

    def _conv(self, x, w, b=None):
        return F.conv2d(x, w, b, *self.args)

    def _back(self, d_o, u, w, mask, bias=False):
        """(∂/∂u, ∂/∂W, ∂/∂b) of ⟨d_o, conv(u, W)⟩, only the parts in ``mask``."""
        stride, padding, dilation, groups = self.args
        return torch.ops.aten.convolution_backward(
            d_o, u, w, [w.shape[0]] if bias else None, list(stride), list(padding),
            list(dilation), False, [0, 0], groups, mask)

    def forward(self, u, p):
        return self._conv(u, p[0], p[1]), u

    def backward(self, d_o, u, p, want, need_input):
        du, gw, _ = self._back(d_o, u, p[0], [need_input, want[0], False])
        return du, [gw, d_o.sum((0, 2, 3)) if want[1] else None]

    def rforward(self, r_u, u, p, vp):
        out = None if r_u is None else self._conv(r_u, p[0])
        if vp[0] is not None or vp[1] is not None:  # + conv(u, V) + c
            w = vp[0] if vp[0] is not None else torch.zeros_like(p[0])
            moved = self._conv(u, w, vp[1])
            out = moved if out is None else out.add_(moved)
        return out

    def rbackward(self, rd_o, d_o, r_u, u, p, vp, need_input):
        rd_u, hw, _ = self._back(rd_o, u, p[0], [need_input, vp[0] is not None, False])
        if vp[0] is not None and r_u is not None:
            hw += self._back(d_o, r_u, p[0], [False, True, False])[1]
        if need_input and vp[0] is not None:
            rd_u += self._back(d_o, u, vp[0], [True, False, False])[0]
        return rd_u, [hw, rd_o.sum((0, 2, 3)) if vp[1] is not None else None]


class _BatchNormEval:
    """o = (u − μ)·s·γ + β with the running mean μ and s = 1/√(running var + ε), per channel."""

    keeps_grad_out = True

    def __init__(self, module: nn.modules.batchnorm._BatchNorm, prefix: str, buffers: dict):
        if not module.track_running_stats or module.running_mean is None:
            raise Unsupported(f"{prefix}BatchNorm keeps no running statistics")
        affine = module.weight is not None
        self.names = [prefix + "weight" if affine else None, prefix + "bias" if affine else None]
        self.mean = buffers[prefix + "running_mean"]
        self.scale = torch.rsqrt(buffers[prefix + "running_var"] + module.eps)

    def _c(self, t, like):  # per-channel vector shaped to broadcast over dimension 1
        return t.reshape(1, -1, *([1] * (like.dim() - 2)))

    def _sum(self, t):
        return t.sum([d for d in range(t.dim()) if d != 1])

    def forward(self, u, p):
        xh = (u - self._c(self.mean, u)) * self._c(self.scale, u)
        out = xh if p[0] is None else xh * self._c(p[0], u)
        return (out if p[1] is None else out + self._c(p[1], u)), xh

    def _gain(self, p, like):
        s = self._c(self.scale, like)
        return s if p[0] is None else s * self._c(p[0], like)

    def backward(self, d_o, xh, p, want, need_input):
        return (d_o * self._gain(p, d_o) if need_input else None), [
            self._sum(d_o * xh) if want[0] else None, self._sum(d_o) if want[1] else None]

    def rforward(self, r_u, xh, p, vp):
        out = None if r_u is None else r_u * self._gain(p, r_u)
        if vp[0] is not None:
            out = _add(out, xh * self._c(vp[0], xh))
        if vp[1] is not None:
            out = _add(out, self._c(vp[1], xh).expand_as(xh))
        return out

    def rbackward(self, rd_o, d_o, r_u, xh, p, vp, need_input):
        hg = hb = None
        if vp[0] is not None:  # R{Σ d_o·x̂} = Σ (R{d_o}·x̂ + d_o·R{u}·s)
            t = rd_o * xh
            if r_u is not None:
                t += d_o * r_u * self._c(self.scale, r_u)
            hg = self._sum(t)
        if vp[1] is not None:
            hb = self._sum(rd_o)
        rd_u = None
        if need_input:
            rd_u = rd_o * self._gain(p, rd_o)
            if vp[0] is not None:
                rd_u += d_o * self._c(self.scale * vp[0], d_o)
        return rd_u, [hg, hb]


def _relu(u):
    d1 = (u > 0).to(u.dtype)  # not kept as booleans: multiplying by them is 7x slower on CPU
    return u * d1, d1, None


def _leaky_relu(u, slope=0.01):
    d1 = (u > 0).to(u.dtype).mul_(1 - slope).add_(slope)  # 1 or the slope
    return u * d1, d1, None


def _tanh(u):
    o = torch.tanh(u)
    d1 = 1 - o * o
    return o, d1, -2 * o * d1


def _sigmoid(u):
    o = torch.sigmoid(u)
    d1 = o * (1 - o)
    return o, d1, d1 * (1 - 2 * o)


def _gelu(u):  # u·Φ(u): σ' = Φ + u·φ, σ'' = φ·(2 − u²)
    cdf = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
    pdf = torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    return F.gelu(u), cdf + u * pdf, pdf * (2 - u * u)


def _silu(u):  # u·s(u): σ' = s·(1 + u(1 − s)), σ'' = s(1 − s)·(2 + u(1 − 2s))
    s = torch.sigmoid(u)
    return F.silu(u), s * (1 + u * (1 - s)), s * (1 - s) * (2 + u * (1 - 2 * s))


def _softplus(u, beta=1.0, threshold=20.0):  # log(1 + e^{βu})/β, the identity where βu > threshold
    s = torch.sigmoid(beta * u)
    linear = beta * u > threshold
    d1 = torch.where(linear, torch.ones_like(s), s)
    d2 = torch.where(linear, torch.zeros_like(s), beta * s * (1 - s))
    return F.softplus(u, beta, threshold), d1, d2


def _elu(u, alpha=1.0):  # u where u > 0, α(eᵘ − 1) elsewhere
    curve = alpha * torch.exp(torch.clamp(u, max=0))
    negative = u <= 0
    d1 = torch.where(negative, curve, torch.ones_like(u))
    return F.elu(u, alpha), d1, torch.where(negative, curve, torch.zeros_like(u))


class _Activation:
    """o = σ(u) elementwise; saved: σ'(u) and σ''(u) (None where σ is piecewise linear)."""

    names: list = []

    def __init__(self, derivatives, **options):
        self.derivatives, self.options = derivatives, options
        self.inplace = True  # set by the engine: may tangents be updated in place?
        self.keeps_grad_out = derivatives not in (_relu, _leaky_relu)  # needed only with σ''

    def forward(self, u, p):
        o, d1, d2 = self.derivatives(u, **self.options)
        return o, (d1, d2)

    def backward(self, d_o, saved, p, want, need_input):
        return d_o * saved[0], []

    def rforward(self, r_u, saved, p, vp):
        if r_u is None:
            return None
        # In place where R{u} is not needed again (σ'' = 0) and nothing else reads it.
        return r_u.mul_(saved[0]) if saved[1] is None and self.inplace else r_u * saved[0]

    def rbackward(self, rd_o, d_o, r_u, saved, p, vp, need_input):
        d1, d2 = saved  # R{d_o·σ'(u)} = R{d_o}·σ'(u) + d_o·σ''(u)·R{u}
        rd_u = rd_o.mul_(d1) if self.inplace else rd_o * d1
        if d2 is not None and r_u is not None:
            rd_u.addcmul_(d_o * d2, r_u)
        return rd_u, []


class _MaxPool2d:
    """Piecewise linear: o gathers u at the window maxima (indices kept), the adjoint scatters."""

    names: list = []
    keeps_grad_out = False  # R{∂L/∂u} does not involve ∂L/∂o

    def __init__(self, module: nn.MaxPool2d):
        self.args = (module.kernel_size, module.stride, module.padding, module.dilation,
                     module.ceil_mode)

    def forward(self, u, p):
        o, index = F.max_pool2d(u, *self.args, return_indices=True)
        return o, (index.flatten(2), u.shape, o.shape)

    def backward(self, d_o, saved, p, want, need_input):
        index, shape, _ = saved
        d_u = d_o.new_zeros(shape[0], shape[1], shape[2] * shape[3])
        return d_u.scatter_add_(2, index, d_o.flatten(2)).view(shape), []

    def rforward(self, r_u, saved, p, vp):
        index, _, out_shape = saved
        return None if r_u is None else r_u.flatten(2).gather(2, index).view(out_shape)

    def rbackward(self, rd_o, d_o, r_u, saved, p, vp, need_input):
        return self.backward(rd_o, saved, p, None, need_input)


class _AvgPool2d:
    """A fixed linear map o = A u (average pooling); its adjoint comes from ATen's backward."""

    names: list = []
    keeps_grad_out = False  # R{∂L/∂u} does not involve ∂L/∂o

    def __init__(self, module):
        if isinstance(module, nn.AdaptiveAvgPool2d):
            self.apply = lambda t: F.adaptive_avg_pool2d(t, module.output_size)
            self.adjoint = torch.ops.aten._adaptive_avg_pool2d_backward
        else:
            pair = nn.modules.utils._pair
            args = (list(pair(module.kernel_size)),
                    list(pair(module.stride if module.stride is not None else module.kernel_size)),
                    list(pair(module.padding)), module.ceil_mode, module.count_include_pad,
                    module.divisor_override)
            self.apply = lambda t: F.avg_pool2d(t, *args)
            self.adjoint = lambda d, u: torch.ops.aten.avg_pool2d_backward(d, u, *args)

    def forward(self, u, p):
        return self.apply(u), u

    def backward(self, d_o, u, p, want, need_input):
        return self.adjoint(d_o.contiguous(), u), []

    def rforward(self, r_u, u, p, vp):
        return None if r_u is None else self.apply(r_u)

    def rbackward(self, rd_o, d_o, r_u, u, p, vp, need_input):
        return self.adjoint(rd_o.contiguous(), u), []


class _Reshape:
    """A shape-only step (view, reshape, flatten, squeeze) or the identity (dropout in eval mode).

    ``fn(u, shapes)`` makes the output; ``shapes`` (of the model's input and of every output so far)
    feeds size arguments such as ``x.shape[0]``. Each such step is a row-major reshape, so tangents
    take the output's shape and adjoints the input's.
    """

    names: list = []
    keeps_grad_out = False  # R{∂L/∂u} does not involve ∂L/∂o

    def __init__(self, fn=None):
        self.fn = fn

    def forward(self, u, shapes):
        o = u if self.fn is None else self.fn(u, shapes)
        return o, (u.shape, o.shape)

    def backward(self, d_o, saved, p, want, need_input):
        return d_o.reshape(saved[0]), []

    def rforward(self, r_u, saved, p, vp):
        return None if r_u is None else r_u.reshape(saved[1])

    def rbackward(self, rd_o, d_o, r_u, saved, p, vp, need_input):
        return rd_o.reshape(saved[0]), []
