"""Fixtures shared by the tests; the helpers they use live in helpers.py."""

from __future__ import annotations

import pytest
from helpers import classification_data, make_mlp
from torch import nn


@pytest.fixture
def tanh_mlp():
    return make_mlp(nn.Tanh)


@pytest.fixture
def data():
    return classification_data()
