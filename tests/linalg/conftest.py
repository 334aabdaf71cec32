"""Shared fixtures of the linalg tests (helpers live in linalg_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linalg_helpers import fast_with_spectrum, trained_like_spectrum


@pytest.fixture(scope="session")
def trained2000():
    """``(A, lam_sorted, Q, lam)`` for the trained-network-like spectrum with n = 2000."""
    lam = trained_like_spectrum(2000, seed=0)
    A, Q = fast_with_spectrum(lam, seed=1)
    return A, np.sort(lam), Q, lam


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These operators are small: one intra-op thread is as fast, and immune to busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
