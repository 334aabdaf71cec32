"""Test matrices with known spectra for the linalg tests, and a product-counting operator.

Ground truth is always independent of landscope: the spectrum is chosen, the matrix is
``Q diag(lam) Q^T`` with a seeded random orthogonal ``Q``, and checks use numpy.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import torch

from landscope.linalg import Operator


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """A Haar-distributed orthogonal matrix (QR of a Gaussian matrix with sign fix)."""
    rng = np.random.default_rng(seed)
    Q, R = np.linalg.qr(rng.standard_normal((n, n)))
    return Q * np.sign(np.diag(R))


def with_spectrum(lam, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(A, Q)`` with ``A = Q diag(lam) Q^T`` exactly symmetric, float64."""
    lam = np.asarray(lam, dtype=np.float64)
    Q = random_orthogonal(lam.size, seed)
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2, Q


def fast_with_spectrum(lam, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(A, Q)`` as :func:`with_spectrum` but with ``Q = S C^T`` (random signs ``S``, orthonormal
    DCT ``C``): dense eigenvectors at O(n^2 log n) cost instead of a QR of an n x n matrix.
    Lanczos, SLQ and Hutchinson with random start vectors do not care which orthogonal basis it is.
    """
    lam = np.asarray(lam, dtype=np.float64)
    n = lam.size
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], n)
    Q = scipy.fft.idct(np.eye(n), axis=0, norm="ortho") * signs[:, None]
    A = scipy.fft.idct(scipy.fft.idct(np.diag(lam), axis=0, norm="ortho").T, axis=0, norm="ortho").T
    A = signs[:, None] * A * signs[None, :]
    return (A + A.T) / 2, Q


def trained_like_spectrum(n: int = 2000, seed: int = 0) -> np.ndarray:
    """Like a trained network's Hessian: outliers, a big bulk near zero, a tight negative cluster.

    Outliers 12, 9, 6, 5, 4; 40 moderate positives in [0.01, 3]; the negative end
    -0.35, -0.344, -0.339 plus 30 smaller negatives in [-0.2, -0.005]; the rest a bulk of
    Laplace(0, 1e-3) values, a quarter of it exact zeros (a repeated eigenvalue).
    """
    rng = np.random.default_rng(seed)
    top = [12.0, 9.0, 6.0, 5.0, 4.0]
    cluster = [-0.35, -0.344, -0.339]
    moderate = list(np.geomspace(0.01, 3.0, 40))
    negatives = list(-rng.uniform(0.005, 0.2, 30))
    rest = n - len(top) - len(cluster) - len(moderate) - len(negatives)
    zeros = [0.0] * (rest // 4)
    bulk = list(rng.laplace(0.0, 1e-3, rest - len(zeros)))
    lam = np.array(top + cluster + moderate + negatives + zeros + bulk)
    rng.shuffle(lam)
    return lam


class Counting(Operator):
    """The operator of a dense matrix that counts the columns it multiplies and keeps its
    inputs."""

    def __init__(self, A: np.ndarray, dtype=torch.float64, keep_inputs: bool = False):
        super().__init__(A.shape[0], dtype, "cpu", self._multiply)
        self.A = torch.from_numpy(np.ascontiguousarray(A)).to(dtype)
        self.columns = 0
        self.calls = 0
        self.inputs: list[torch.Tensor] = []
        self.keep_inputs = keep_inputs

    def _multiply(self, V: torch.Tensor) -> torch.Tensor:
        assert V.ndim == 2 and V.shape[0] == self.A.shape[0]
        self.columns += V.shape[1]
        self.calls += 1
        if self.keep_inputs:
            self.inputs.append(V.clone())
        return self.A @ V
