"""Fixtures shared by the tests; the helpers they use live in helpers.py."""

from __future__ import annotations

import pytest
import torch
from helpers import classification_data, make_mlp
from torch import nn


@pytest.fixture
def tanh_mlp():
    return make_mlp(nn.Tanh)


@pytest.fixture
def data():
    return classification_data()


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and are then immune to busy machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
