"""Second-order optimisers: damped Newton, saddle-free Newton and negative-curvature descent.

What is hard is what curvature does at a saddle. Newton's step −H⁻¹g is the exact minimiser of the
quadratic model only where H ≻ 0; at an indefinite H it is the model's critical point, so it jumps
*towards* a saddle. Saddle-free Newton (Dauphin et al. 2014) replaces H by |H| = V|Λ|Vᵀ, which
keeps the Newton scaling but turns the negative-curvature directions into descent; computing |H|
needs eigenvectors, so it works in a Krylov subspace K_k(H, g) of k Lanczos vectors:
d = −Q(|T| + δI)⁻¹Qᵀg with T = QᵀHQ. Negative-curvature descent (Carmon et al. 2018; Xu et al.
2018) looks for the most negative eigenvalue λ_min and, when λ_min < −ε, adds a step of length
|λ_min|/L₂ along its eigenvector v, signed so that gᵀ(step) ≤ 0; the cubic model promises a
decrease of at least |λ_min|³/(3L₂²) from that step alone, but only if L₂ bounds the Hessian's
Lipschitz constant: with a guessed L₂ (1 by default) the step can be far too long (it diverges on
Rosenbrock). So the step is safeguarded: it is accepted only if the loss falls by a fraction of
what the cubic model predicts, and halved (η/2, 2L₂) until it does.

All three run dense (the Hessian from n products and ``eigh``) up to ``dense_max`` parameters,
matrix-free above. Their closure returns the loss without calling backward (the optimiser takes
the gradient with its graph), or calls ``loss.backward(create_graph=True)`` itself.

Examples
--------
>>> import torch
>>> x = torch.tensor([1.0, 1e-8], dtype=torch.float64, requires_grad=True)
>>> opt = Newton([x])
>>> def closure():
...     opt.zero_grad()
...     return x[0]**2 - x[1]**2
>>> _ = opt.step(closure); x.tolist()   # Newton jumps onto the saddle of x² − y²
[0.0, 0.0]
"""

from __future__ import annotations

import torch

from landscope._checks import choice, integer, non_negative, positive
from landscope._deprecated import renamed
from landscope.errors import BadInputError
from landscope.linalg import Operator, extreme_eigenpairs
from landscope.optim._base import (
    PointOptimizer,
    conjugate_gradient,
    lanczos,
    pseudo_reciprocal,
    spectral_apply,
)

SOLVERS = ("auto", "dense", "cg")


class Newton(PointOptimizer):
    """Damped Newton: θ ← θ − lr · (H + δI)⁻¹ g.

    Parameters
    ----------
    lr: step length (1 is the full Newton step; below 1 damps it).
    damping: δ ≥ 0, the Levenberg–Marquardt shift.
    solver: "dense" (eigh of the dense Hessian; a singular H + δI gives the pseudo-inverse),
        "cg" (conjugate gradients on Hessian-vector products, truncated at non-positive
        curvature as Newton-CG does), or "auto" (dense up to ``dense_max`` parameters).
    cg_iterations, cg_rtol: CG's budget and relative residual tolerance.
    batched: step the rows of one (S, n) parameter as S independent points.
    """

    def __init__(self, params, lr: float = 1.0, damping: float = 0.0, solver: str = "auto",
                 dense_max: int = 256, cg_iterations: int = 100, cg_rtol: float = 1e-10, *,
                 batched: bool = False):
        for name, value in (("lr", lr), ("damping", damping)):
            non_negative(name, value)
        choice("solver", solver, SOLVERS)
        super().__init__(params, {"lr": lr, "damping": damping, "solver": solver,
                                  "dense_max": dense_max, "cg_iterations": cg_iterations,
                                  "cg_rtol": cg_rtol}, batched=batched)

    def _update(self, point):
        o = self.param_groups[0]
        if _dense(o, point):
            direction = spectral_apply(point.hessian(), point.g,
                                       lambda lam: pseudo_reciprocal(lam + o["damping"]))
        else:
            direction = conjugate_gradient(point.hvp, point.g, o["damping"], o["cg_iterations"],
                                           o["cg_rtol"])
        return point.x - o["lr"] * direction


class SaddleFreeNewton(PointOptimizer):
    """Saddle-free Newton: θ ← θ − lr · Q (|T| + δI)⁻¹ Qᵀ g in the Krylov space K_k(H, g).

    With k ≥ n (all of Rⁿ) this is exactly −lr (|H| + δI)⁻¹ g. ``krylov_dim`` k Lanczos steps
    cost k Hessian-vector products per step.
    """

    def __init__(self, params, lr: float = 1.0, damping: float = 0.0, krylov_dim: int = 20, *,
                 batched: bool = False):
        for name, value in (("lr", lr), ("damping", damping)):
            non_negative(name, value)
        integer("krylov_dim", krylov_dim)
        super().__init__(params, {"lr": lr, "damping": damping, "krylov_dim": krylov_dim},
                         batched=batched)

    def _update(self, point):
        o = self.param_groups[0]
        Q, T = lanczos(point.hvp, point.g, min(o["krylov_dim"], point.n))
        projected = (Q.transpose(1, 2) @ point.g[..., None])[..., 0]
        inside = spectral_apply(T, projected, lambda lam: pseudo_reciprocal(lam.abs()
                                                                            + o["damping"]))
        return point.x - o["lr"] * (Q @ inside[..., None])[..., 0]


class NegativeCurvatureDescent(PointOptimizer):
    """Gradient descent plus a step along the most negative curvature, safeguarded.

    The step is d = −η g + [λ_min < −τ] (|λ_min| / L₂) s v, τ = ``curvature_atol``, with v the
    unit eigenvector of λ_min and s = −sign(gᵀv) (+1 when gᵀv = 0). It is accepted when the
    loss falls by at least ``accept`` times the decrease the cubic model
    m(d) = gᵀd + ½dᵀHd + (L₂/6)‖d‖³ predicts, −m(d) > 0 (dᵀHd from H g, one more product on the
    Lanczos path, and H v = λ_min v);
    otherwise η is halved and L₂ doubled and the step is tried again (at most
    ``max_trials`` times; a point where no trial passes
    stays where it is, so the loss never rises). ``lr`` = η and ``hessian_lipschitz`` = L₂ are
    the boldest values tried: after an accepted step each point's η doubles and its L₂ halves
    again, up to them (``row_state["eta"]``, ``row_state["hessian_lipschitz"]``). A point where
    the model predicts a change below rounding (a minimum) stays without trials.
    ``row_state["trials"]`` holds the closure calls each point's last line search needed.

    λ_min comes from ``eigh`` of the dense Hessian up to ``dense_max`` parameters, else from
    thick-restart Lanczos (:func:`landscope.linalg.extreme_eigenpairs`). Each trial costs one
    closure call.
    """

    @renamed(eps="curvature_atol")
    def __init__(self, params, lr: float = 0.01, hessian_lipschitz: float = 1.0,
                 curvature_atol: float = 1e-6, dense_max: int = 256, accept: float = 0.1,
                 max_trials: int = 30, *, batched: bool = False):
        for name, value in (("lr", lr), ("curvature_atol", curvature_atol)):
            non_negative(name, value)
        positive("hessian_lipschitz", hessian_lipschitz)
        if not 0 < accept < 1:
            raise BadInputError(f"accept={accept!r}; use a fraction in (0, 1)")
        integer("max_trials", max_trials)
        super().__init__(params, {"lr": lr, "hessian_lipschitz": hessian_lipschitz,
                                  "curvature_atol": curvature_atol,
                                  "dense_max": dense_max, "accept": accept,
                                  "max_trials": int(max_trials)}, batched=batched)

    def _update(self, point):
        o, state = self.param_groups[0], self.row_state
        if not state:
            state["eta"] = torch.full_like(point.values, o["lr"])
            state["hessian_lipschitz"] = torch.full_like(point.values, o["hessian_lipschitz"])
        lam, v, H = _smallest_pairs(point, o)
        state["lambda_min"] = lam
        g, f = point.g, point.values
        gv = (g * v).sum(1)
        sign = torch.where(gv > 0, -1.0, 1.0).to(v.dtype)
        negative = lam < -o["curvature_atol"]
        Hg = (H @ g[..., None])[..., 0] if H is not None else point.hvp(g)
        gg, gHg = (g * g).sum(1), (g * Hg).sum(1)
        eta, L2 = state["eta"].clone(), state["hessian_lipschitz"].clone()
        floor = 4 * torch.finfo(f.dtype).eps * f.abs().clamp(min=torch.finfo(f.dtype).tiny)
        new, done = point.x.clone(), torch.zeros_like(negative)
        trials = torch.zeros(point.rows, dtype=torch.long, device=f.device)
        for _ in range(o["max_trials"]):
            a, b = eta, torch.where(negative, lam.abs() / L2, 0.0) * sign
            step = -a[:, None] * g + b[:, None] * v
            # m(d) with gᵀd = −a‖g‖² + b gᵀv and dᵀHd = a²gᵀHg − 2ab λ gᵀv + b²λ
            model = (-a * gg + b * gv + 0.5 * (a * a * gHg - 2 * a * b * lam * gv + b * b * lam)
                     + L2 / 6 * step.norm(dim=1) ** 3)
            done |= model.abs() <= floor  # a change below rounding (at rest, or a tiny step)
            if bool(done.all()):
                break
            trial = torch.where(done[:, None], new, point.x + step)
            trials += ~done
            passed = ~done & (model < 0) & (f - point.values_at(trial) >= -o["accept"] * model)
            new = torch.where(passed[:, None], trial, new)
            done |= passed
            eta, L2 = torch.where(done, eta, eta / 2), torch.where(done, L2, 2 * L2)
        state["trials"] = trials
        state["eta"] = torch.clamp(2 * eta, max=o["lr"])
        state["hessian_lipschitz"] = torch.clamp(L2 / 2, min=o["hessian_lipschitz"])
        return new


# ---------------------------------------------------------------------- helpers
def _dense(options: dict, point) -> bool:
    solver = options["solver"]
    return solver == "dense" or (solver == "auto" and point.n <= options["dense_max"])


def _smallest_pairs(point, options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """λ_min (S,) and its unit eigenvector (S, n) for every row, and the dense Hessians
    (S, n, n) where they were formed (None on the Lanczos path)."""
    if point.n <= options["dense_max"]:
        H = point.hessian()
        values, vectors = torch.linalg.eigh(H)
        return values[:, 0], vectors[:, :, 0], H
    lams, vecs = [], []
    for s in range(point.rows):  # one Lanczos run per point; the others' rows stay zero
        def matmat(V, s=s):
            rows = torch.zeros(point.rows, point.n, dtype=V.dtype, device=V.device)
            columns = []
            for column in V.T:
                rows[s] = column
                columns.append(point.hvp(rows)[s])
            return torch.stack(columns, 1)
        H = Operator(point.n, point.x.dtype, point.x.device, matmat)
        pairs = extreme_eigenpairs(H, k_largest=0, k_smallest=1).smallest
        lams.append(pairs.values[0].to(point.x.device, point.x.dtype))
        vecs.append(pairs.vectors[:, 0])
    return torch.stack(lams), torch.stack(vecs), None
