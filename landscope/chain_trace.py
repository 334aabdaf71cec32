"""A model as the steps of the chain engine (:mod:`landscope.chain`), from its ``torch.fx`` trace.

The trace must mean what the model computes. It is taken in the analysis mode (a forward that
branches on ``self.training`` takes the analysed branch) with ``a += b`` kept as an in-place
node (plain fx rewrites it as ``a = a + b``), and refused where its steps would differ from the
model: an in-place operation whose overwritten tensor (or a view of it) is read again (an in-place
ReLU on a tensor nobody else reads is accepted), one that writes into the model's input, and hooks
(the trace does not run them). Sizes read from tensors (``x.reshape(x.shape[0], -1)``) become
functions of the shapes each batch produces.
"""

from __future__ import annotations

import inspect
import math
import operator

import torch
from torch import nn
from torch.nn import functional as F

from landscope.chain_layers import (
    Layer,
    Unsupported,
    _Activation,
    _AvgPool2d,
    _BatchNormEval,
    _Conv2d,
    _elu,
    _gelu,
    _leaky_relu,
    _Linear,
    _MaxPool2d,
    _relu,
    _Reshape,
    _sigmoid,
    _silu,
    _softplus,
    _tanh,
)
from landscope.functional import _modes

# ============================================================================ tracing
_ACTIVATION_MODULES = {  # module type -> (derivatives, options read from the module)
    nn.ReLU: (_relu, lambda m: {}), nn.Tanh: (_tanh, lambda m: {}),
    nn.Sigmoid: (_sigmoid, lambda m: {}), nn.SiLU: (_silu, lambda m: {}),
    nn.LeakyReLU: (_leaky_relu, lambda m: {"slope": m.negative_slope}),
    nn.Softplus: (_softplus, lambda m: {"beta": m.beta, "threshold": m.threshold}),
    nn.ELU: (_elu, lambda m: {"alpha": m.alpha}),
}


def _always(module: nn.Module, mode: str) -> bool:
    return True


def _in_eval(module: nn.Module, mode: str) -> bool:
    return mode == "eval"


def _activation_entry(derivatives, options):
    return _always, lambda m, prefix, buffers: _Activation(derivatives, **options(m))


_MODULE_LAYERS = {  # module type -> (whether this module in this mode is handled, its layer)
    nn.Linear: (_always, lambda m, prefix, buffers: _Linear(m, prefix)),
    nn.Conv2d: (_always, lambda m, prefix, buffers: _Conv2d(m, prefix)),
    **{kind: (_in_eval, _BatchNormEval) for kind in (nn.BatchNorm1d, nn.BatchNorm2d)},
    **{kind: _activation_entry(*entry) for kind, entry in _ACTIVATION_MODULES.items()},
    nn.GELU: (lambda m, mode: m.approximate == "none",
              lambda m, prefix, buffers: _Activation(_gelu)),
    nn.MaxPool2d: (lambda m, mode: not m.return_indices,
                   lambda m, prefix, buffers: _MaxPool2d(m)),
    **{kind: (_always, lambda m, prefix, buffers: _AvgPool2d(m))
       for kind in (nn.AvgPool2d, nn.AdaptiveAvgPool2d)},
    nn.Flatten: (_always, lambda m, prefix, buffers: _Reshape(
        lambda t, shapes: t.flatten(m.start_dim, m.end_dim))),
    nn.Identity: (_always, lambda m, prefix, buffers: _Reshape()),
    nn.Dropout: (_in_eval, lambda m, prefix, buffers: _Reshape()),
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


def _trace(model: nn.Module, buffers: dict, mode: str) -> list[tuple[Layer | None, list[int]]]:
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


def _layer_for(node, model: nn.Module, buffers: dict, mode: str, sizes: dict) -> Layer:
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
        return _shape_layer(node, rest, kwargs, sizes)
    if nodes:
        raise Unsupported(f"step {node.name!r} ({node.target!r}) reads tensor sizes (the chain "
                          "engine knows them only in reshapes)")
    if node.op == "call_module":
        module, prefix = model.get_submodule(node.target), node.target + "."
        kind = type(module)
        handled, layer = _MODULE_LAYERS.get(kind, (None, None))
        if handled is None or not handled(module, mode):
            raise Unsupported(f"module {node.target!r} ({kind.__name__}) in {mode} mode")
        return layer(module, prefix, buffers)
    if node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
        return _activation_function_layer(node, rest, kwargs)
    if node.op == "call_method" and node.target in _ACTIVATION_METHODS and not rest:
        return _Activation(_ACTIVATION_METHODS[node.target])
    raise Unsupported(f"operation {node.target!r} at step {node.name!r}")


def _shape_layer(node, rest: tuple, kwargs: dict, sizes: dict) -> _Reshape:
    """A reshaping function or method call, its size arguments read from each batch's shapes."""
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


def _activation_function_layer(node, rest: tuple, kwargs: dict) -> _Activation:
    """An activation called as a function (``F.relu(x)``, ``F.leaky_relu(x, 0.2)``); options
    other than the slope and ``inplace`` are refused."""
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
