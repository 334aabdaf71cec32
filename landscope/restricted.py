"""The Hessian restricted to the coordinates the loss uses, on either path: the dense block
(refused above ``DENSE_LIMIT``) or the operator P H Pᵀ, and vectors embedded back in Rⁿ.

The two sizes: at or below ``EXACT_MAX_N`` parameters the dense path is the default (n products
and ``numpy.linalg.eigh`` beat a Krylov method there); above ``objective.DENSE_LIMIT`` it is
refused even when asked for, before anything is allocated.
"""

from __future__ import annotations

import torch

from landscope.errors import BadInputError
from landscope.linalg import Eigenpairs, Operator
from landscope.objective import DENSE_LIMIT, Objective

EXACT_MAX_N = 1024
"""Up to this many parameters the exact (dense) path is chosen automatically."""


def use_exact(obj: Objective, exact: bool | None, wanted: int) -> bool:
    """The dense path when asked, else when n ≤ ``EXACT_MAX_N`` or every eigenpair is wanted."""
    if exact is None:
        return obj.n <= EXACT_MAX_N or wanted >= obj.n
    return exact


def restricted_hessian(obj: Objective, theta, coords: torch.Tensor | None) -> torch.Tensor:
    """The dense Hessian, or its block on ``coords``; refused above ``DENSE_LIMIT`` parameters
    (before anything is allocated), naming the memory and the iterative path."""
    if obj.n > DENSE_LIMIT:
        gib = obj.n**2 * torch.finfo(obj.dtype).bits / 8 / 2**30
        raise BadInputError(
            f"the exact (dense) path needs the n x n Hessian of n = {obj.n:,} parameters: "
            f"{gib:,.1f} GiB and {obj.n:,} Hessian-vector products, above the dense limit of "
            f"{DENSE_LIMIT:,} parameters. Drop exact=True (--exact) for the iterative path "
            "(Lanczos, stochastic quadrature, Hutchinson), or analyse a parameter subset "
            "(Objective.from_model(..., params=...); --params)."
        )
    H = obj.hessian(theta)
    return H if coords is None else H[coords][:, coords]


def restricted_operator(obj: Objective, theta, coords: torch.Tensor | None) -> Operator:
    """H at θ, or its block P H Pᵀ on ``coords``."""
    if coords is None:
        return obj.operator(theta)

    def block(V):
        full = V.new_zeros((obj.n, *V.shape[1:]))
        full[coords] = V
        return obj.hvp(full, theta)[coords]

    return Operator(coords.numel(), obj.dtype, obj.device, block)


def embed(vectors: torch.Tensor, coords: torch.Tensor | None, n: int) -> torch.Tensor:
    """Columns in the coordinates ``coords`` put back in Rⁿ (zero elsewhere)."""
    if coords is None:
        return vectors
    full = vectors.new_zeros((n, vectors.shape[1]))
    full[coords.to(vectors.device)] = vectors
    return full


def embed_pairs(pairs: Eigenpairs | None, coords: torch.Tensor | None, n: int):
    """The pairs with their vectors put back in Rⁿ."""
    if pairs is None:
        return pairs
    return Eigenpairs(pairs.values, embed(pairs.vectors, coords, n), pairs.residuals)
