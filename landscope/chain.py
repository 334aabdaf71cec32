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

The steps come from :mod:`landscope.chain_trace` (which refuses a trace that would not mean what
the model computes), their R-operators from :mod:`landscope.chain_layers`. A parameter used by
several steps (a module called twice, a weight tied to another module's) is one block of θ whose
gradient and curvature add up over its uses. Refused here: losses other than the batch mean of
cross-entropy or MSE on the model's output itself, keyword inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from landscope.chain_layers import Unsupported, _Activation, _add, _Reshape
from landscope.chain_trace import _trace
from landscope.engines import Sums
from landscope.functional import ModelLoss
from landscope.losses import check_loss

__all__ = ["ChainHessian", "Unsupported"]


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
    """An engine (:class:`landscope.engines.Engine`): Σ w_b ℓ_b, Σ w_b ∇ℓ_b and Σ w_b H_b V
    for a ``ModelLoss`` whose model is a graph of known steps.

    The graph may branch and rejoin by addition (skip connections); a tensor used by several
    steps gets the sum of their gradients, and so does a parameter used by several steps (a
    module called twice, a weight tied to another module's): its one block of θ collects
    ∂L/∂p and (H v)_p over its uses. Raises :class:`Unsupported` (with the reason) for anything
    else: an unknown layer, operation or loss, BatchNorm or dropout in train mode, keyword inputs,
    a selected part of the output, a summed loss.
    """

    name = "chain"

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

    def at(self, theta: torch.Tensor) -> Sums:
        """Cache the first-order quantities at θ; return the sums Σ w_b ℓ_b and Σ w_b ∇ℓ_b
        (the Objective divides them by Σ w_b, :mod:`landscope.engines`). The caches hold
        activations of the order of the data set, like a kept autograd graph."""
        values = self.loss.state(theta.detach())  # every parameter and buffer slot
        batches = [(index, batch, float(self.loss.weight(batch)))
                   for index, batch in enumerate(self.loss.batches)]
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
                loss, d, head = _head(self.kind, outputs[-1], batch.target, weight)
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
        return Sums(value, gradient, sum(w for *_, w in batches if w > 0),
                    sum(batch.size for _, batch, w in batches if w > 0))

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
