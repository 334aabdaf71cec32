"""Exact Hessian-vector products by hand-derived R-operators, for models built of known steps.

A model whose traced graph (``torch.fx``) runs x → f₁ → … → f_L → loss through known layers
(Linear, Conv2d, BatchNorm in eval mode, ReLU, LeakyReLU, Tanh, Sigmoid, GELU, SiLU, Softplus, ELU,
max and average pooling, reshapes, dropout in eval mode), and may branch and rejoin by addition
(skip connections, as in a residual block), gets H·v from Pearlmutter's R-operator
R{·} = ∂(·)/∂θ · v: per point, one forward and one backward pass cache each layer's input u_l and
output gradient ∂L/∂o_l; per product, one sweep forward of the tangents R{u_l} and one sweep
backward of R{∂L/∂u_l}, which collects H·v.

Why by hand, when autograd's double backward through the kept first-order graph is exact too:
autograd also differentiates the backward formulas of ReLU and friends with respect to their saved
inputs, materialises zero tensors for that and adds them up, and it cannot merge the two halves of
R{o} = R{u}·Wᵀ + u·Vᵀ into one accumulating matrix product. On the 26k-parameter ReLU MLP over the
1,797 digits a product here costs about 1.35 gradients against 1.7 for the kept graph
(``benchmarks/RESULTS.md``). The Objective checks this engine against autograd on first use (L,
∇L and one product) and keeps whichever exact engine is faster; at every later point it checks L
and ∇L against one plain gradient pass. On CPU the chain engine wins for MLPs, with or without
skip connections, and for plain CNNs; a residual CNN with BatchNorm measured 1.17x slower than
autograd here (its fused BatchNorm kernels), so there the trial keeps autograd.

The trace must mean what the model computes. It is taken in the analysis mode (a forward that
branches on ``self.training`` takes the analysed branch) with ``a += b`` kept as an in-place
node (plain fx rewrites it as ``a = a + b``), and refused where the steps would differ from the
model: an in-place operation whose overwritten tensor is read again (an in-place ReLU on a
tensor nobody else reads is accepted), hooks, keyword inputs, an output selector, a summed loss.
A parameter used by several steps (a module called twice, a weight tied to another module's) is
one block of θ whose gradient and curvature add up over its uses. Sizes read from tensors
(``x.reshape(x.shape[0], -1)``) are evaluated per batch.
"""

from __future__ import annotations

import inspect
import math
import operator

import torch
from torch import nn
from torch.nn import functional as F

from landscope.functional import ModelLoss, _modes, check_loss


class Unsupported(Exception):
    """The model, loss or data is outside what the chain engine handles (the message says why)."""


# ============================================================================ layers
# Every layer maps its input u to its output o. ``saved`` is what the forward pass keeps.
#   backward(d_o, saved, p, want, need_input)            -> d_u or None, [∂L/∂p_i or None]
#   rforward(r_u, saved, p, vp)                          -> R{o} (None when it is zero)
#   rbackward(rd_o, d_o, r_u, saved, p, vp, need_input)  -> R{d_u} or None, [(H v)_p_i or None]
# p: the layer's parameter values; vp: their tangents (None for a fixed parameter); want: which
# parameters need their gradient. ``keeps_grad_out``: whether rbackward reads d_o (else it is not
# kept, which saves one activation-sized tensor per such layer).


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


# ============================================================================ tracing
_ACTIVATION_MODULES = {  # module type -> (derivatives, options read from the module)
    nn.ReLU: (_relu, lambda m: {}), nn.Tanh: (_tanh, lambda m: {}),
    nn.Sigmoid: (_sigmoid, lambda m: {}), nn.SiLU: (_silu, lambda m: {}),
    nn.LeakyReLU: (_leaky_relu, lambda m: {"slope": m.negative_slope}),
    nn.Softplus: (_softplus, lambda m: {"beta": m.beta, "threshold": m.threshold}),
    nn.ELU: (_elu, lambda m: {"alpha": m.alpha}),
}
_ACTIVATION_FUNCTIONS = {torch.relu: _relu, F.relu: _relu, torch.relu_: _relu,
                         torch.tanh: _tanh, F.tanh: _tanh, torch.tanh_: _tanh,
                         torch.sigmoid: _sigmoid, F.sigmoid: _sigmoid, torch.sigmoid_: _sigmoid,
                         F.silu: _silu, F.gelu: _gelu, F.leaky_relu: _leaky_relu}
_ACTIVATION_METHODS = {"relu": _relu, "tanh": _tanh, "sigmoid": _sigmoid, "relu_": _relu,
                       "tanh_": _tanh, "sigmoid_": _sigmoid}
_SHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_SIZE_OPERATORS = {operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
                   operator.mod, operator.neg}
_IN_PLACE_OPERATORS = {name: getattr(operator, name) for name in (
    "iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul", "iand", "ior",
    "ixor", "ilshift", "irshift")}


class _Proxy(torch.fx.Proxy):
    """fx's Proxy, with ``a += b`` (and the other augmented assignments) traced as in place.

    Plain fx has no in-place operators, so Python turns ``h += f(h)`` into ``h = h + f(h)`` and
    the graph no longer shows that every other name for ``h`` now sees the sum.
    """


def _in_place(target):
    return lambda self, other: self.tracer.create_proxy("call_function", target, (self, other),
                                                        {})


for _name, _target in _IN_PLACE_OPERATORS.items():
    setattr(_Proxy, f"__{_name}__", _in_place(_target))


class _Tracer(torch.fx.Tracer):
    def proxy(self, node):
        return _Proxy(node, self)


def _trace(model: nn.Module, buffers: dict, mode: str) -> list:
    """The model as steps ``(layer, inputs)`` in execution order; output 0 is the model's input,
    output j the result of step j; ``layer`` is None for a sum of two outputs (a skip
    connection).

    The model is traced in the analysis ``mode`` (a forward that branches on ``self.training``
    takes the branch the analysis runs). Refused: hooks (the trace does not run them), and an
    in-place operation whose overwritten tensor is read again (the steps would read the old
    value); an in-place ReLU on a tensor nobody else reads is an ordinary step.
    """
    hooked = _hooked(model)
    if hooked:
        raise Unsupported(f"{hooked} has hooks, which the traced graph does not run")
    try:
        with _modes(model, mode):
            graph = _Tracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "not supported"
        raise Unsupported(f"the model cannot be traced by torch.fx ({type(error).__name__})") \
            from None
    nodes = list(graph.nodes)
    if not nodes or nodes[0].op != "placeholder" or sum(n.op == "placeholder" for n in nodes) != 1:
        raise Unsupported("the model does not take exactly one input tensor")
    index, sizes, steps = {nodes[0]: 0}, {}, []
    storage = {nodes[0]: nodes[0]}  # node -> the node whose tensor it shares memory with
    for node in nodes[1:]:
        if node.op == "output":
            if index.get(node.args[0]) != len(steps):
                raise Unsupported("the model's output is not its last step")
            break
        size = _size_of(node, index, sizes)
        if size is not None:
            sizes[node] = size
            continue
        if _is_add(node):
            if any(a not in index for a in node.args):
                raise Unsupported(f"step {node.name!r} adds a tensor that is not computed here")
            layer = None
            steps.append((None, [index[a] for a in node.args]))
        elif node.args and node.args[0] in index:
            layer = _layer_for(node, model, buffers, mode, sizes)
            steps.append((layer, [index[node.args[0]]]))
        else:
            raise Unsupported(f"step {node.name!r} ({node.op} {node.target!r}) is not fed by an "
                              "earlier step")
        index[node] = len(steps)
        writes = _writes(node, model)
        storage[node] = storage[node.args[0]] if writes or isinstance(layer, _Reshape) else node
        if writes:
            _check_overwrite(node, nodes, storage, sizes)
    if not any(name for layer, _ in steps if layer is not None for name in layer.names):
        raise Unsupported("the model has no parameterised layer")
    return steps


def _layer_for(node, model: nn.Module, buffers: dict, mode: str, sizes: dict):
    """The chain layer computing fx ``node`` (whose first argument is the previous output);
    ``sizes`` maps the graph's size nodes (``x.shape[0]``) to functions of the outputs' shapes."""
    rest, kwargs = node.args[1:], dict(node.kwargs)
    nodes = []
    torch.fx.node.map_arg((rest, kwargs), nodes.append)
    if any(a not in sizes for a in nodes):
        raise Unsupported(f"step {node.name!r} ({node.target!r}) combines two tensors in a way "
                          "the chain engine does not know (it knows a + b)")
    shape_step = ((node.op == "call_function" and node.target in _SHAPE_FUNCTIONS)
                  or (node.op == "call_method" and node.target in _SHAPE_METHODS))
    if shape_step:
        def arguments(shapes):
            return torch.fx.node.map_arg((rest, kwargs), lambda a: sizes[a](shapes))

        if node.op == "call_function":
            def fn(t, shapes, f=node.target):
                args, kw = arguments(shapes)
                return f(t, *args, **kw)
        else:
            def fn(t, shapes, m=node.target):
                args, kw = arguments(shapes)
                return getattr(t, m)(*args, **kw)
        return _Reshape(fn)
    if nodes:
        raise Unsupported(f"step {node.name!r} ({node.target!r}) reads tensor sizes (the chain "
                          "engine knows them only in reshapes)")
    if node.op == "call_module":
        module, prefix = model.get_submodule(node.target), node.target + "."
        kind = type(module)
        if kind is nn.Linear:
            return _Linear(module, prefix)
        if kind is nn.Conv2d:
            return _Conv2d(module, prefix)
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d) and mode == "eval":
            return _BatchNormEval(module, prefix, buffers)
        if kind in _ACTIVATION_MODULES:
            derivatives, options = _ACTIVATION_MODULES[kind]
            return _Activation(derivatives, **options(module))
        if kind is nn.GELU and module.approximate == "none":
            return _Activation(_gelu)
        if kind is nn.MaxPool2d and not module.return_indices:
            return _MaxPool2d(module)
        if kind in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
            return _AvgPool2d(module)
        if kind is nn.Flatten:
            return _Reshape(lambda t, shapes, m=module: t.flatten(m.start_dim, m.end_dim))
        if kind is nn.Identity or (kind is nn.Dropout and mode == "eval"):
            return _Reshape()
        raise Unsupported(f"module {node.target!r} ({kind.__name__}) in {mode} mode")
    if node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
        fn = _ACTIVATION_FUNCTIONS[node.target]
        options = {}
        kwargs.pop("inplace", None)  # whether that is safe is _check_overwrite's question
        if fn is _leaky_relu:
            options["slope"] = rest[0] if rest else kwargs.pop("negative_slope", 0.01)
            rest = rest[1:]
        if node.target in (F.relu, F.leaky_relu, F.silu):
            rest = rest[1:]  # the positional ``inplace``
        if kwargs.pop("approximate", "none") != "none" or rest or kwargs:
            raise Unsupported(f"{node.target.__name__} with options {rest or kwargs} at "
                              f"{node.name!r} (approximate)")
        return _Activation(fn, **options)
    if node.op == "call_method" and node.target in _ACTIVATION_METHODS and not rest:
        return _Activation(_ACTIVATION_METHODS[node.target])
    raise Unsupported(f"operation {node.target!r} at step {node.name!r}")


def _is_add(node) -> bool:
    """``a + b`` of two tensors of the graph (``operator.add``, ``torch.add``, ``a.add(b)``), or
    in place (``a += b``, ``a.add_(b)``)."""
    two = (len(node.args) == 2 and not node.kwargs
           and all(isinstance(a, torch.fx.Node) for a in node.args))
    return two and (
        (node.op == "call_function" and node.target in (operator.add, torch.add, operator.iadd))
        or (node.op == "call_method" and node.target in ("add", "add_")))


def _size_of(node, index: dict, sizes: dict):
    """For a node that computes a size from the shapes of tensors (``x.shape``, ``x.size(d)``,
    ``x.dim()``, ``x.numel()``, their items and integer arithmetic on them): its value as a
    function of the list of shapes of the model's input and step outputs. Else None."""
    args = node.args
    if node.op == "call_function" and node.target is getattr and len(args) == 2 \
            and args[0] in index and args[1] in ("shape", "ndim"):
        i = index[args[0]]
        return (lambda s: s[i]) if args[1] == "shape" else (lambda s: len(s[i]))
    if node.op == "call_method" and node.target in ("size", "dim", "numel") and args \
            and args[0] in index and not node.kwargs:
        i, rest = index[args[0]], args[1:]
        if node.target == "size" and all(isinstance(d, int) for d in rest) and len(rest) <= 1:
            return lambda s: s[i][rest[0]] if rest else s[i]
        if not rest:
            return (lambda s: len(s[i])) if node.target == "dim" else (lambda s: math.prod(s[i]))
        return None
    operands = [*args, *node.kwargs.values()]
    if node.op == "call_function" and node.target in _SIZE_OPERATORS and not node.kwargs \
            and any(a in sizes for a in operands if isinstance(a, torch.fx.Node)) \
            and all(a in sizes for a in operands if isinstance(a, torch.fx.Node)):
        parts = [sizes[a] if isinstance(a, torch.fx.Node) else (lambda s, a=a: a) for a in args]
        return lambda s: node.target(*(part(s) for part in parts))
    return None


def _writes(node, model: nn.Module) -> bool:
    """Whether fx ``node`` overwrites its first argument (an in-place operation)."""
    if node.op == "call_module":
        return bool(getattr(model.get_submodule(node.target), "inplace", False))
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if node.target in _IN_PLACE_OPERATORS.values() or (
            name.endswith("_") and not name.startswith("_")):
        return True
    if node.kwargs.get("inplace"):
        return True
    try:  # a Python function with an ``inplace`` parameter given by position (F.relu(x, True))
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return False
    return bool(bound.arguments.get("inplace", False))


def _check_overwrite(node, nodes: list, storage: dict, sizes: dict) -> None:
    """Refuse the in-place ``node`` if any tensor sharing the memory it overwrites, made before
    it, is read after it (by a step or as the output): that reader would see the new value where
    the traced steps pass on the old one."""
    where = storage[node]
    if where is nodes[0]:
        raise Unsupported(f"step {node.name!r} overwrites the model's input in place")
    position = {n: i for i, n in enumerate(nodes)}
    here = position[node]
    for earlier in nodes[1:here]:
        if storage.get(earlier) is not where:
            continue
        late = [user.name for user in earlier.users
                if user is not node and user not in sizes and position[user] > here]
        if late:
            raise Unsupported(
                f"step {node.name!r} overwrites {earlier.name!r} in place, and {late[0]!r} reads "
                "it afterwards (the traced steps would pass on its old value)")


def _hooked(model: nn.Module) -> str | None:
    """The first module with forward or backward hooks ("the model" for the root, or global
    hooks), else None."""
    from torch.nn.modules import module as registry

    if any((registry._global_forward_hooks, registry._global_forward_pre_hooks,
            registry._global_backward_hooks, registry._global_backward_pre_hooks)):
        return "every module (global module hooks are registered)"
    for name, module in model.named_modules():
        if (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks):
            return f"module {name!r}" if name else "the model"
    return None


# ============================================================================ losses
def _loss_kind(loss_fn) -> str:
    if loss_fn is F.cross_entropy or (
            type(loss_fn) is nn.CrossEntropyLoss and loss_fn.weight is None
            and loss_fn.label_smoothing == 0 and loss_fn.reduction == "mean"
            and loss_fn.ignore_index < 0):
        return "cross_entropy"
    if loss_fn is F.mse_loss or (type(loss_fn) is nn.MSELoss and loss_fn.reduction == "mean"):
        return "mse"
    raise Unsupported(f"loss {getattr(loss_fn, '__name__', type(loss_fn).__name__)} (the chain "
                      "engine knows cross-entropy and MSE with mean reduction)")


def _head(kind: str, z: torch.Tensor, target: torch.Tensor, weight: float):
    """(weight·ℓ, weight·∂ℓ/∂z, saved) of the batch-mean loss ℓ at the network output z."""
    if kind == "cross_entropy":
        if z.dim() != 2 or target.dim() != 1 or target.dtype != torch.long or (target < 0).any():
            raise Unsupported("cross-entropy here needs (batch, classes) outputs and class indices")
        logp = torch.log_softmax(z, 1)
        prob = logp.exp()
        loss = -logp.gather(1, target[:, None]).mean()
        d = prob.clone()
        d[torch.arange(len(target)), target] -= 1
        return weight * loss, d.mul_(weight / len(target)), (prob, weight / len(target))
    if target.shape != z.shape:
        raise Unsupported(f"MSE target shape {tuple(target.shape)} differs from the output's")
    scale = 2 * weight / z.numel()
    return weight * F.mse_loss(z, target), (z - target) * scale, (None, scale)


def _rhead(kind: str, r_z: torch.Tensor, saved) -> torch.Tensor:
    """R{∂ℓ/∂z} = ∇²_z ℓ · R{z}: softmax Jacobian (diag p − p pᵀ) per sample, or a constant."""
    prob, scale = saved
    if kind == "cross_entropy":
        pr = prob * r_z
        return pr.sub_(prob * pr.sum(1, keepdim=True)).mul_(scale)
    return r_z * scale


# ============================================================================ the engine
class ChainHessian:
    """L, ∇L and H·V for a ``ModelLoss`` whose model is a graph of known steps.

    The graph may branch and rejoin by addition (skip connections); a tensor used by several
    steps gets the sum of their gradients, and so does a parameter used by several steps (a
    module called twice, a weight tied to another module's): its one block of θ collects
    ∂L/∂p and (H v)_p over its uses. Raises :class:`Unsupported` (with the reason) for anything
    else: an unknown layer, operation or loss, BatchNorm or dropout in train mode, keyword inputs,
    a selected part of the output, a summed loss.
    """

    def __init__(self, loss: ModelLoss):
        self.loss = loss
        self.kind = _loss_kind(loss.loss_fn)
        if loss.reduction != "mean":
            raise Unsupported(f"reduction={loss.reduction!r} (the chain engine knows batch means)")
        if loss.output is not None:
            raise Unsupported(f"output={loss.output!r} selects what the loss reads (the chain "
                              "engine differentiates the model's output itself)")
        buffers = {slot: loss.buffers[name] for slot, name in loss.buffer_slots.items()}
        self.steps = _trace(loss.model, buffers, loss.mode)
        # blocks[j - 1]: for each parameter slot of step j, the first name of its Parameter
        # (its θ block, or its frozen value): where its gradient and curvature add up
        self.blocks = [[] if layer is None else [self._block(name) for name in layer.names]
                       for layer, _ in self.steps]
        selected = set(loss.names)
        self.selected = [[name is not None and name in selected for name in names]
                         for names in self.blocks]
        # depends[j]: output j depends on θ (output 0, the data, does not)
        self.depends = [False]
        for (_, inputs), sel in zip(self.steps, self.selected, strict=True):
            self.depends.append(any(sel) or any(self.depends[i] for i in inputs))
        if not self.depends[-1]:
            raise Unsupported("no selected parameter belongs to a step of the model")
        self.users = [0] * (len(self.steps) + 1)  # how many steps read output j
        for _, inputs in self.steps:
            for i in inputs:
                self.users[i] += 1
        # In a pure chain every tangent has one reader, so activations may update it in place;
        # where outputs are shared (a skip connection), they must not.
        shared = any(count > 1 for count in self.users)
        for layer, _ in self.steps:
            if isinstance(layer, _Activation):
                layer.inplace = not shared
        self._point = None

    def _block(self, slot: str | None) -> str | None:
        if slot is None:
            return None
        if slot not in self.loss.slots:
            raise Unsupported(f"{slot!r} is not a parameter of the model as named_parameters "
                              "lists it")
        return self.loss.slots[slot]

    def at(self, theta: torch.Tensor, max_samples: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache the first-order quantities at θ; return (L(θ), ∇L(θ)).

        Raises :class:`Unsupported` if the data has more than ``max_samples`` samples (the
        caches hold activations of the order of the data set, like a kept autograd graph).
        """
        values = self.loss.state(theta.detach())  # every parameter and buffer slot
        batches = [(index, batch, float(self.loss.weight(batch)))
                   for index, batch in enumerate(self.loss.batches)]
        samples = sum(batch.size for _, batch, _ in batches)
        if max_samples is not None and samples > max_samples:
            raise Unsupported(f"{samples} samples are more than graph_cache_samples = "
                              f"{max_samples}")
        total = sum(weight for *_, weight in batches)  # L = Σ w_b ℓ_b / Σ w_b, as the Objective
        value = torch.zeros((), dtype=theta.dtype, device=theta.device)
        grads: dict[str, torch.Tensor] = {}
        caches = []
        with torch.no_grad():
            for index, batch, weight in batches:
                if weight <= 0:
                    continue
                if len(batch.inputs) != 1 or batch.kwargs or batch.target is None:
                    raise Unsupported("the model takes other inputs than one tensor, or the "
                                      "batches hold no target")
                outputs, saved = [batch.inputs[0]], [None]
                shapes = [batch.inputs[0].shape]  # what size arguments (x.shape[0]) read
                unread = list(self.users)
                for layer, inputs in self.steps:
                    if layer is None:
                        outputs.append(outputs[inputs[0]] + outputs[inputs[1]])
                        saved.append(None)
                    else:
                        p = shapes if isinstance(layer, _Reshape) else self._params(layer, values)
                        out, keep = layer.forward(outputs[inputs[0]], p)
                        outputs.append(out)
                        saved.append(keep)
                    shapes.append(outputs[-1].shape)
                    for i in inputs:  # the steps keep what they need in ``saved``
                        unread[i] -= 1
                        if not unread[i]:
                            outputs[i] = None
                loss, d, head = _head(self.kind, outputs[-1], batch.target, weight / total)
                del outputs
                check_loss(loss, f"batch {index} ({batch.size} samples)")
                value += loss
                d_out = [None] * len(saved)

                def back(j, layer, source, d, saved=saved, d_out=d_out):
                    d_out[j] = d if layer.keeps_grad_out else None
                    d_u, gs = layer.backward(d, saved[j], self._params(layer, values),
                                             self.selected[j - 1], self.depends[source])
                    _collect(grads, self.blocks[j - 1], gs)
                    return d_u

                self._sweep_back(d, back)
                caches.append((saved, d_out, head))
        self._point = (values, caches)
        gradient = torch.cat([grads[name].reshape(-1) if name in grads
                              else torch.zeros(size, dtype=theta.dtype, device=theta.device)
                              for name, size in zip(self.loss.names, self.loss.sizes,
                                                    strict=True)])
        return value, gradient

    def release(self) -> None:
        """Drop the caches of the last point."""
        self._point = None

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """H·V for V of shape (n, k) at the point of the last :meth:`at`, one column at a time."""
        return torch.stack([self._product(v) for v in V.T], 1)

    def _product(self, v: torch.Tensor) -> torch.Tensor:
        values, caches = self._point
        tangents = self.loss.unflatten(v)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for saved, d_out, head in caches:
                r = [None] * len(saved)  # R{output j}; None where it is zero
                for j, (layer, inputs) in enumerate(self.steps, 1):
                    if not self.depends[j]:
                        continue
                    if layer is None:
                        a, b = (r[i] for i in inputs)
                        r[j] = a + b if a is not None and b is not None else _copy(a, b)
                    else:
                        r[j] = layer.rforward(r[inputs[0]], saved[j], self._params(layer, values),
                                              self._tangents(j, tangents))

                def back(j, layer, source, rd_o, saved=saved, d_out=d_out, r=r):
                    rd_u, hs = layer.rbackward(rd_o, d_out[j], r[source], saved[j],
                                               self._params(layer, values),
                                               self._tangents(j, tangents), self.depends[source])
                    _collect(out, self.blocks[j - 1], hs)
                    return rd_u

                self._sweep_back(_rhead(self.kind, r[-1], head), back)
        return torch.cat([out[name].reshape(-1) if name in out
                          else torch.zeros(size, dtype=v.dtype, device=v.device)
                          for name, size in zip(self.loss.names, self.loss.sizes, strict=True)])

    def _sweep_back(self, top, back) -> None:
        """Carry a quantity from the output back to the input through the steps: ``top`` enters
        at the output; ``back(j, layer, source, incoming)`` maps what reaches step j to what its
        input ``source`` receives; a sum passes it to both inputs; readers of one output add up."""
        incoming = [None] * (len(self.steps) + 1)
        incoming[-1] = top
        for j in range(len(self.steps), 0, -1):
            (layer, inputs), x = self.steps[j - 1], incoming[j]
            if x is None or not self.depends[j]:
                continue
            if layer is None:
                for i in inputs:
                    incoming[i] = _add(incoming[i], x) if self.depends[i] else None
                continue
            sent = back(j, layer, inputs[0], x)
            if sent is not None:
                incoming[inputs[0]] = _add(incoming[inputs[0]], sent)

    @staticmethod
    def _params(layer, values):
        return [None if name is None else values[name] for name in layer.names]

    def _tangents(self, j, tangents):
        return [tangents[name] if sel else None
                for name, sel in zip(self.blocks[j - 1], self.selected[j - 1], strict=True)]


def _collect(total: dict, names, pieces) -> None:
    """Add each non-None piece into ``total[name]`` (in place: the layers return fresh tensors)."""
    for name, piece in zip(names, pieces, strict=True):
        if piece is not None:
            total[name] = piece if name not in total else total[name].add_(piece)


def _copy(a, b):
    """The one non-zero tangent of a sum, copied: steps after the sum may update it in place."""
    t = a if a is not None else b
    return None if t is None else t.clone()
