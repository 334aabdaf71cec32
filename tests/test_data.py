"""The weighted mean L = Σ_b w_b ℓ_b / Σ_b w_b that every evaluator divides by once."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import landscope as ls
from landscope.data import weighted_mean
from landscope.errors import BadInputError
from landscope.pointwise import Replica

D = torch.float64


def test_weighted_mean_of_unequal_batches_is_the_hand_computed_one():
    losses, weights = [0.5, 2.0, 1.25], [3.0, 1.0, 4.0]  # (1.5 + 2 + 5) / 8
    total = sum(w * loss for w, loss in zip(weights, losses, strict=True))
    assert weighted_mean(total, sum(weights)) == 8.5 / 8
    assert weighted_mean(total, sum(weights)) != sum(losses) / len(losses)  # the plain mean
    gradients = torch.tensor([[1.0, -2.0], [4.0, 0.0], [0.5, 1.0]], dtype=D)
    summed = (torch.tensor(weights, dtype=D)[:, None] * gradients).sum(0)
    assert torch.equal(weighted_mean(summed, sum(weights)),
                       torch.tensor([(3 + 4 + 2) / 8, (-6 + 4) / 8], dtype=D))


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan])
def test_weighted_mean_refuses_when_nothing_is_averaged_over(weight):
    with pytest.raises(BadInputError, match="anything to average over.*ignore_index"):
        weighted_mean(1.0, weight)


def test_evaluators_weight_batches_by_what_their_loss_averages_over(one_thread):
    """Cross-entropy with ignored targets in batches of 4, 4 and 2: each batch's loss averages
    over its kept targets (3, 1 and 2 of them), so the full-data loss is theirs weighted, which
    only the whole data in one call gives directly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(D).eval()
    X = torch.randn(10, 3, dtype=D)
    y = torch.tensor([0, 1, 2, -100, 1, -100, -100, -100, 2, 0])
    truth = F.cross_entropy(model(X), y).item()
    parts = [(F.cross_entropy(model(X[i:i + 4]), y[i:i + 4]).item(),
              int((y[i:i + 4] != -100).sum())) for i in range(0, 10, 4)]
    assert [w for _, w in parts] == [3, 1, 2]
    by_hand = sum(w * loss for loss, w in parts) / sum(w for _, w in parts)
    assert by_hand == pytest.approx(truth, rel=1e-12)
    assert sum(loss for loss, _ in parts) / 3 != pytest.approx(truth, rel=1e-3)

    obj = ls.Objective.from_model(model, F.cross_entropy, (X, y), batch_size=4)
    theta = obj.theta0 + 0.1
    with torch.no_grad():
        moved = torch.func.functional_call(model, obj.unflatten(theta), (X,))
    assert obj.value().item() == pytest.approx(truth, rel=1e-12)
    assert Replica(obj).value(theta) == pytest.approx(F.cross_entropy(moved, y).item(),
                                                      rel=1e-12)
