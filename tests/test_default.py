"""The built-in default: training it once per directory and keeping its path."""

from __future__ import annotations

import pytest
import torch

from landscope import default


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach()


@pytest.mark.slow
def test_trained_keeps_the_path_and_a_second_call_trains_nothing(tmp_path, one_thread):
    epochs = []
    net, path = default.trained(tmp_path, epochs=2, progress=lambda e, *_: epochs.append(e))
    X, y = default.digits()
    truth = default.default_model()
    start = _flat(truth).clone()
    default.train(truth, X, y, epochs=2)  # the same seeded run, done by hand
    assert epochs == [1, 2] and path.shape == (3, start.numel())
    assert torch.equal(path[0], start) and torch.equal(path[-1], _flat(truth))
    assert torch.equal(_flat(net), path[-1]) and not net.training
    assert default.path_file(tmp_path, 2).exists()
    again, kept = default.trained(tmp_path, epochs=2, progress=lambda e, *_: epochs.append(e))
    assert epochs == [1, 2] and torch.equal(kept, path) and torch.equal(_flat(again), path[-1])
