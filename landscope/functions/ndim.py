"""Functions of chosen dimension: an ill-conditioned quadratic, a quadratic saddle of chosen index,
and a deep linear network.

The quadratics are ½ (Qᵀx)ᵀ diag(d) (Qᵀx) with a fixed rotation Q (from a seeded QR), so that no
coordinate axis is special and per-coordinate methods (Adam, AdaGrad) get no free help.

The deep linear network is the loss ½‖W_L ⋯ W_1 − A‖²_F with A = diag(s): the mean squared error
of a linear network on whitened inputs (E xxᵀ = I) with targets y = A x. Its critical points are
known (Baldi & Hornik 1989; Kawaguchi 2016): at each one the product is P_J A, with P_J the
projection onto a set J of at most ``width`` singular directions; the loss is ½ Σ_{j∉J} sⱼ². Only
J = the ``width`` largest gives minima, all global; every other critical point is a saddle. The
weights are never isolated — W_{l+1} C⁻¹, C W_l gives the same product — so one balanced
representative stands for each set, and ``invariant`` (the product) identifies the set of a point.
"""

from __future__ import annotations

import itertools

import torch

from landscope import _checks as checks
from landscope.errors import BadInputError
from landscope.functions.base import TestFunction, critical


def ill_conditioned(kappa: float = 100.0, n: int = 2) -> TestFunction:
    """½ xᵀ A x, A = Q diag(λ) Qᵀ with λ geometrically spaced from 1 to ``kappa``."""
    n = checks.integer("n", n, minimum=2)
    if not kappa >= 1:
        raise BadInputError(f"kappa={kappa!r}; use a condition number ≥ 1")
    eigenvalues = torch.logspace(0, torch.log10(torch.tensor(float(kappa))).item(), n,
                                 dtype=torch.float64)
    return _quadratic("ill_conditioned", eigenvalues, {"kappa": kappa, "n": n})


def quadratic_saddle(n: int = 10, index: int = 3) -> TestFunction:
    """½ xᵀ A x with ``index`` negative eigenvalues among n (magnitudes 1 … 2, rotated)."""
    n = checks.integer("n", n)
    if checks.integer("index", index, minimum=0) > n:
        raise BadInputError(f"index={index!r}; use a whole number from 0 to n = {n}")
    magnitudes = torch.linspace(1, 2, n, dtype=torch.float64)
    signs = torch.cat([-torch.ones(index), torch.ones(n - index)]).double()
    return _quadratic("quadratic_saddle", signs * magnitudes, {"n": n, "index": index})


def deep_linear(depth: int = 2, width: int = 2, singular_values=(3.0, 2.0, 1.0)) -> TestFunction:
    """½‖W_L ⋯ W_1 − diag(s)‖²_F: L = ``depth`` layers, hidden ``width``, d = len(s) in and out.

    θ holds W_1 (width × d), the middle layers (width × width) and W_L (d × width), row-major.
    """
    depth, width = checks.integer("depth", depth, minimum=2), checks.integer("width", width)
    s = tuple(float(v) for v in singular_values)
    if any(v <= 0 for v in s) or list(s) != sorted(set(s), reverse=True):
        raise BadInputError(f"singular_values={singular_values!r}; use distinct positive "
                            "singular values in decreasing order")
    d = len(s)
    shapes = [(width, d)] + [(width, width)] * (depth - 2) + [(d, width)]
    target = torch.diag(torch.tensor(s, dtype=torch.float64))

    def product(p):
        layers, start = [], 0
        for rows, cols in shapes:
            layers.append(p[..., start:start + rows * cols].reshape(*p.shape[:-1], rows, cols))
            start += rows * cols
        out = layers[0]
        for layer in layers[1:]:
            out = layer @ out
        return out

    def f(p):
        return 0.5 * ((product(p) - target)**2).sum((-2, -1))

    best = set(range(min(width, d)))
    points = []
    for size in range(min(width, d) + 1):
        for J in itertools.combinations(range(d), size):
            location = _balanced(J, s, shapes, depth)
            kind = "local_min" if set(J) == best else "saddle"
            value = 0.5 * sum(s[j]**2 for j in range(d) if j not in J)
            points.append(critical(location, kind, value, isolated=not J))
    n = sum(r * c for r, c in shapes)
    return TestFunction(
        "deep_linear", "½‖W_L ⋯ W_1 − diag(s)‖²_F", f, ((-2.0, 2.0),) * n, tuple(points), True,
        0.5 * sum(v**2 for v in s[width:]),
        invariant=lambda p: product(p).flatten(-2),
        note="critical points come in sets (W_{l+1}C⁻¹, C W_l); one representative per set",
        params={"depth": depth, "width": width, "singular_values": s})


# ---------------------------------------------------------------------- helpers
def _quadratic(name: str, eigenvalues: torch.Tensor, params: dict) -> TestFunction:
    n = len(eigenvalues)
    generator = torch.Generator().manual_seed(0)
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))  # a unique Q for the fixed draw

    def f(p):
        return 0.5 * (eigenvalues * (p @ Q)**2).sum(-1)

    negative = int((eigenvalues < 0).sum())
    kind = "local_min" if negative == 0 else "local_max" if negative == n else "saddle"
    return TestFunction(
        name, "½ xᵀ Q diag(λ) Qᵀ x", f, ((-1.0, 1.0),) * n, (critical((0,) * n, kind, 0),),
        True, 0.0 if negative == 0 else None,
        note=f"eigenvalues {', '.join(f'{v:.3g}' for v in eigenvalues.tolist())}",
        params=params)


def _balanced(J, s, shapes, depth) -> list[float]:
    """Weights whose product is Σ_{j∈J} sⱼ eⱼeⱼᵀ, each layer carrying sⱼ^(1/L)."""
    layers = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
    for k, j in enumerate(J):
        root = s[j] ** (1 / depth)
        layers[0][k, j] = root
        for middle in layers[1:-1]:
            middle[k, k] = root
        layers[-1][j, k] = root
    return torch.cat([layer.flatten() for layer in layers]).tolist()
