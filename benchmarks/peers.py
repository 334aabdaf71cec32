"""The tools landscope is measured against, and how the benchmark hooks into them.

The plain torch.autograd + scipy baseline (:class:`PlainHVP`); for the peers PyHessian, curvlinops
and hessian-eigenthings: their imports, HVP counters wrapped around their own HVP entry points,
the workarounds PyHessian needs (torch.eig shim, the shift trick for lambda_min), and the one any
of them needs on attention (:func:`second_order_context`).
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import scipy.sparse.linalg as sla
import torch
from harness import _flat

# ================================================================================ baseline HVP


class PlainHVP:
    """Plain torch.autograd: first backward with create_graph once, then one backward per HVP."""

    def __init__(self, model, X, y, crit):
        self.params = [p for p in model.parameters() if p.requires_grad]
        g = torch.autograd.grad(crit(model(X), y), self.params, create_graph=True)
        self.g = _flat(g)
        self.n, self.dtype, self.count = self.g.numel(), self.g.dtype, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.count += 1
        hv = torch.autograd.grad(self.g, self.params, grad_outputs=v, retain_graph=True)
        return _flat(hv).detach()

    def scipy(self) -> sla.LinearOperator:
        def mv(x):
            v = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1), dtype=self.dtype)
            return self(v).double().numpy()

        return sla.LinearOperator((self.n, self.n), matvec=mv, dtype=np.float64)


# ================================================================================ peers


def shift_trick_iterations(make, lmin_ref: float, cap: int, seed: int):
    """How many power iterations PyHessian's shift trick needs to get lambda_min to rel. 1e-3.

    Replays the loop of ``hessian.eigenvalues(top_n=1)`` on the shifted Hessian H - cI with
    PyHessian's own helpers (same start vector under the same seed) and scores every iterate
    mu + c. Returns ``(t, cap)``: t is the first iteration count from which every iterate is within
    rel. 1e-3 (checked over the next max(20, t/10) iterations), or None if that does not happen
    within ``cap`` iterations. This oracle stop is generous to PyHessian: a user cannot know t.
    """
    from pyhessian.utils import group_product, hessian_vector_product, normalization, orthnormal

    torch.manual_seed(seed)
    c, h2 = make()
    v = normalization([torch.randn(p.size()) for p in h2.params])
    first_ok = None
    for t in range(1, cap + 1):
        v = orthnormal(v, [])
        hv = hessian_vector_product(h2.gradsH, h2.params, v)
        mu = group_product(hv, v).item()
        v = normalization(hv)
        if abs(mu + c - lmin_ref) <= 1e-3 * abs(lmin_ref):
            first_ok = first_ok or t
            if t - first_ok >= max(20, first_ok // 10):
                return first_ok, cap
        else:
            first_ok = None
    return None, cap


def second_order_context(product):
    """How a tool's Hessian-vector products can run on this workload: ``(context, error)``.

    ``product()`` builds the tool's operator and applies it once. Run as shipped first; if it
    raises, run it again inside ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``: the fused
    attention kernels PyTorch picks by default have no derivative of their backward (double
    backward) and no forward-mode derivative on CPU, so every second-order pass through
    ``scaled_dot_product_attention`` fails until the user forces the math kernel. Returns
    ``(contextlib.nullcontext, None)`` when the tool runs as shipped, ``(math kernel context
    factory, the as-shipped error)`` when it needs the workaround; raises if it fails even so.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        product()
        return contextlib.nullcontext, None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:160]

    def math_kernel():
        return sdpa_kernel(SDPBackend.MATH)

    with math_kernel():
        product()
    return math_kernel, error


def in_context(context, fn):
    """``fn`` with every call made inside a fresh ``context()``."""
    def call(*args, **kwargs):
        with context():
            return fn(*args, **kwargs)
    return call


@contextlib.contextmanager
def torch_eig_shim():
    """PyHessian 0.1's density() calls torch.eig, removed from torch: answer it with eigh."""
    orig = torch.eig if hasattr(torch, "eig") else None

    def eig(A, eigenvectors=False):
        w, V = torch.linalg.eigh(A)
        return torch.stack([w, torch.zeros_like(w)], 1), V

    torch.eig = eig
    try:
        yield
    finally:
        if orig is None:
            del torch.eig
        else:
            torch.eig = orig


class Counters:
    """HVP counters installed by wrapping each peer's own HVP entry point."""

    def __init__(self):
        self.c = {"pyhessian": 0, "curvlinops": 0, "eigenthings": 0}

    def install(self, have: dict) -> None:
        if have.get("pyhessian"):
            import pyhessian  # noqa: F401  (its package attribute .hessian is the class)

            ph_mod = sys.modules["pyhessian.hessian"]

            orig = ph_mod.hessian_vector_product

            def ph_hvp(gradsH, params, v):
                self.c["pyhessian"] += 1
                return orig(gradsH, params, v)

            ph_mod.hessian_vector_product = ph_hvp
        if have.get("curvlinops"):
            from curvlinops import HessianLinearOperator
            from curvlinops._torch_base import CurvatureLinearOperator

            orig_mm = CurvatureLinearOperator._matmat

            def cl_matmat(op, M):
                self.c["curvlinops"] += int(M[0].shape[-1])
                return orig_mm(op, M)

            HessianLinearOperator._matmat = cl_matmat
        if have.get("eigenthings"):
            from hessian_eigenthings import HessianOperator

            orig_mv = HessianOperator.matvec

            def he_matvec(op, v):
                self.c["eigenthings"] += 1 if v.ndim == 1 else int(v.shape[-1])
                return orig_mv(op, v)

            HessianOperator.matvec = he_matvec

    def get(self, tool):
        return lambda: self.c[tool]


def import_peers(no_peers: bool, log) -> dict:
    have = {}
    if no_peers:
        return have
    for key, mod in (("pyhessian", "pyhessian"), ("curvlinops", "curvlinops"),
                     ("eigenthings", "hessian_eigenthings")):
        try:
            __import__(mod)
            have[key] = True
        except Exception as exc:
            log(f"peer {mod} not importable ({type(exc).__name__}: {exc}); its rows are skipped")
    return have
