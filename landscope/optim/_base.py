"""Common ground of landscope's own optimisers: the parameters as one point, or as S rows stepped
together, with gradients, Hessian-vector products and the small batched linear algebra they need.

A torch optimiser sees a list of tensors; Newton-type methods need one point θ ∈ Rⁿ with one
gradient and one Hessian. :class:`PointOptimizer` concatenates the parameters into that point
(``batched=False``), or, with ``batched=True``, treats the rows of one ``(S, n)`` parameter as S
independent points: the closure returns the S losses and back-propagates their sum, so row s of the
gradient depends on row s only and every product below is S products at once.

Hessian-vector products come from the gradient's own graph, H v = ∂(gᵀv)/∂θ, each one more backward
pass. The closure may simply return the loss (after ``opt.zero_grad()``): the optimiser then takes
the gradient itself, with its graph when it needs one. Or it may call
``loss.backward(create_graph=True)`` itself (AdaHessian's convention; torch then warns about a
reference cycle). After the step the gradients are detached, which frees the graph.
"""

from __future__ import annotations

import torch

from landscope.errors import BadInputError
from landscope.linalg.recurrence import batched_lanczos, rowwise


class PointOptimizer(torch.optim.Optimizer):
    """Base class: ``step(closure)`` evaluates the closure, builds the :class:`Point` and writes
    back what ``_update(point)`` returns. ``counts`` holds evaluations per point (closure calls,
    Hessian-vector products)."""

    needs_graph = True  # whether the gradient must keep its graph (for Hessian-vector products)

    def __init__(self, params, defaults: dict, *, batched: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise BadInputError(f"{type(self).__name__} treats all parameters as one point; "
                                "pass one parameter group")
        self._params = list(self.param_groups[0]["params"])
        if batched and (len(self._params) != 1 or self._params[0].dim() != 2):
            shapes = [tuple(p.shape) for p in self._params]
            raise BadInputError(f"batched=True needs exactly one parameter of shape (S, n), the S "
                                f"points as rows; got shapes {shapes}")
        self.batched = batched
        device = self._params[0].device
        self.generator = generator or torch.Generator(device=device).manual_seed(0)
        self.counts = {"closure": 0, "hvp": 0}

    @torch.no_grad()
    def step(self, closure=None):
        """One step. ``closure`` re-evaluates the loss and back-propagates it (see the module)."""
        if closure is None:
            raise BadInputError(f"{type(self).__name__}.step needs a closure: def closure(): "
                                "opt.zero_grad(); return loss_of_the_model()")
        with torch.enable_grad():
            loss = closure()
            if all(p.grad is None for p in self._params):  # the closure left the gradient to us
                grads = torch.autograd.grad(loss.sum(), self._params, allow_unused=True,
                                            create_graph=self.needs_graph)
                for p, g in zip(self._params, grads, strict=True):
                    p.grad = torch.zeros_like(p) if g is None else g
        self.counts["closure"] += 1
        point = Point(self._params, loss, self.batched, self.counts, closure)
        point.write(self._update(point))
        point.release()
        return loss

    @property
    def row_state(self) -> dict:
        """Per-point state (saved by ``state_dict``)."""
        return self.state[self._params[0]]

    def _update(self, point: Point) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Point:
    """The S points being stepped: x, g of shape (S, n), values (S,), and their curvature."""

    def __init__(self, params, loss, batched: bool, counts: dict, closure=None):
        missing = [i for i, p in enumerate(params) if p.grad is None]
        if missing:
            raise BadInputError(f"parameter(s) {missing} have no gradient: the closure must call "
                                "loss.backward() (create_graph=True for second-order methods)")
        self.params, self.batched, self.counts, self._closure = params, batched, counts, closure
        self._grads = [p.grad for p in params]
        self.x = self._rows([p.detach() for p in params]).clone()
        self.g = self._rows([g.detach() for g in self._grads]).clone()
        self.rows, self.n = self.x.shape
        loss = torch.as_tensor(loss, dtype=self.x.dtype).detach()
        if loss.numel() != self.rows:
            raise BadInputError(f"the closure returned {loss.numel()} loss value(s) for "
                                f"{self.rows} point(s); batched closures return one per row")
        self.values = loss.reshape(self.rows).to(self.x.device)

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """H_s v_s for every row s: V and the result have shape (S, n)."""
        if not all(g.requires_grad for g in self._grads):
            raise BadInputError("this optimiser needs Hessian-vector products: call "
                                "loss.backward(create_graph=True) in the closure")
        with torch.enable_grad():
            products = torch.autograd.grad(self._grads, self.params, self._pieces(V),
                                           retain_graph=True, allow_unused=True)
        self.counts["hvp"] += 1
        return self._rows([torch.zeros_like(p) if h is None else h
                           for p, h in zip(self.params, products, strict=True)])

    def hessian(self) -> torch.Tensor:
        """The dense Hessians, (S, n, n), from n products with the unit vectors (symmetrised)."""
        eye = torch.eye(self.n, dtype=self.x.dtype, device=self.x.device)
        H = torch.stack([self.hvp(eye[j].expand(self.rows, -1)) for j in range(self.n)], -1)
        return (H + H.transpose(-1, -2)) / 2

    def values_at(self, x: torch.Tensor) -> torch.Tensor:
        """f at the points x (S, n), from one more closure call; the parameters are put back.

        Line searches use it (torch's L-BFGS evaluates its trial points the same way)."""
        self.write(x)
        try:
            with torch.enable_grad():
                loss = self._closure()
        finally:
            self.write(self.x)
        self.counts["closure"] += 1
        return torch.as_tensor(loss, dtype=self.x.dtype).detach().reshape(self.rows).to(
            self.x.device)

    def write(self, x: torch.Tensor) -> None:
        for p, piece in zip(self.params, self._pieces(x), strict=True):
            p.copy_(piece)

    def release(self) -> None:
        """Leave the step's gradient (without its graph) in ``.grad``, also after trial calls."""
        for p, g in zip(self.params, self._grads, strict=True):
            p.grad = g.detach()

    def _rows(self, tensors) -> torch.Tensor:
        if self.batched:
            return tensors[0]
        return torch.cat([t.reshape(-1) for t in tensors])[None]

    def _pieces(self, rows: torch.Tensor) -> list[torch.Tensor]:
        if self.batched:
            return [rows.reshape(self.params[0].shape)]
        sizes = [p.numel() for p in self.params]
        pieces = rows[0].split(sizes)
        return [piece.reshape(p.shape) for piece, p in zip(pieces, self.params, strict=True)]


# ---------------------------------------------------------------------- batched linear algebra
def spectral_apply(H: torch.Tensor, g: torch.Tensor, scale) -> torch.Tensor:
    """V diag(scale(λ)) Vᵀ g for the eigendecompositions H_s = V diag(λ) Vᵀ; shapes (S, n, n)."""
    values, vectors = torch.linalg.eigh(H)
    coefficients = scale(values) * (vectors.transpose(-1, -2) @ g[..., None])[..., 0]
    return (vectors @ coefficients[..., None])[..., 0]


def pseudo_reciprocal(values: torch.Tensor) -> torch.Tensor:
    """1/λ, with 0 where |λ| is below rounding relative to the largest |λ| of its row (so that a
    singular matrix gives the pseudo-inverse instead of inf)."""
    floor = 1e3 * torch.finfo(values.dtype).eps * values.abs().amax(-1, keepdim=True)
    keep = values.abs() > floor
    return torch.where(keep, 1 / torch.where(keep, values, 1.0), 0.0)


def lanczos(hvp, start: torch.Tensor, lanczos_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise Lanczos (:func:`landscope.linalg.recurrence.batched_lanczos`, row s through its
    own H_s): orthonormal bases Q (S, n, k) of the Krylov spaces K_k(H_s, start_s), k =
    ``lanczos_steps``, and the projections T = QᵀHQ (S, k, k), in the dtype of ``start`` on its
    device.

    A row whose space is exhausted early (an invariant subspace) gets zero columns; its T is
    block-diagonal with a zero block, which carries no weight for vectors in the first block. A
    zero start (the gradient at a critical point) runs from e₁ instead: start's projection is
    zero whatever the space. A non-finite product leaves NaN in its own row.
    """
    rows = start.shape[0]
    norm = start.norm(dim=1, keepdim=True)
    first = torch.zeros_like(start)
    first[:, 0] = 1.0
    unit = torch.where(norm > 0, start / torch.where(norm > 0, norm, 1.0), first)
    run = batched_lanczos(rowwise(hvp, rows), unit, lanczos_steps, check_finite=False)
    return run.basis.transpose(1, 2), run.tridiagonal().to(start)


def conjugate_gradient(hvp, b: torch.Tensor, damping: float, iterations: int,
                       rtol: float) -> torch.Tensor:
    """Row-wise CG for (H + δI) d = b, truncated where a search direction meets curvature ≤ 0.

    A row stops when ‖r‖ ≤ rtol‖b‖, or at non-positive curvature pᵀ(H + δI)p ≤ 0 (Newton-CG's
    rule: the quadratic model is unbounded along p), keeping its iterate — or b itself when that
    happens at the first iteration, so that the step is never zero while b is not.
    """
    d = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = (r * r).sum(1)
    target = (rtol * b.norm(dim=1))**2
    active = rr > target
    for i in range(iterations):
        if not bool(active.any()):
            break
        Hp = hvp(p) + damping * p
        curvature = (p * Hp).sum(1)
        negative = active & (curvature <= 0)
        if i == 0:
            d = torch.where(negative[:, None], b, d)
        active = active & ~negative
        alpha = torch.where(active, rr / torch.where(active, curvature, 1.0), 0.0)[:, None]
        d, r = d + alpha * p, r - alpha * Hp
        new_rr = (r * r).sum(1)
        beta = torch.where(active, new_rr / torch.where(rr > 0, rr, 1.0), 0.0)[:, None]
        p, rr = r + beta * p, new_rr
        active = active & (rr > target)
    return d
