"""The `bulk` study: its small scale against its checks, the checks against fabricated spectra
that must fail them, and its eigenvalues against a dense Hessian taken by torch.func."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landscope import default, studies
from landscope.studies import bulk

CLASSES = 6


@pytest.fixture(scope="module")
def small():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread fixture, for the module's shared run
    try:
        return studies.run("bulk", "small", seed=0)
    finally:
        torch.set_num_threads(threads)


def spectrum(outliers: int, bulk_width: float = 0.01, negative: float = -0.002,
             n: int = 1000) -> np.ndarray:
    """A bulk of n − outliers eigenvalues spread evenly on [negative, bulk_width] and outliers
    evenly on [1, 3]: what the claim describes when outliers = C."""
    return np.concatenate([np.linspace(1.0, 3.0, outliers),
                           np.linspace(negative, bulk_width, n - outliers)])


LEVELLED = [2.0, 1.0, 0.6, 0.5, 0.45, 0.43, 0.42, 0.415, 0.412, 0.411, 0.4105]
SMALL_GRADIENTS = [1.0, 0.5, 0.3, 0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.03, 0.02]


def passed(values, losses=LEVELLED, gradients=SMALL_GRADIENTS) -> dict[str, bool]:
    return {check.name: check.passed for check in bulk.checks(values, CLASSES, losses,
                                                             gradients)}


@pytest.mark.slow
def test_small_scale_passes_its_checks(small):
    assert small.passed, small.checks
    values = np.array(small.figures["eigenvalues"])
    assert len(values) == small.settings["parameters"] == 20 * 60 + 60 + 60 * 6 + 6
    assert np.all(np.diff(values) <= 0)
    count = small.figures["outliers"]
    assert CLASSES - 1 <= count <= CLASSES + 1
    # the outliers stand clear of the bulk, the bulk's top is far below them
    assert values[count - 1] > 1.5 * values[count]
    assert small.figures["loss"][-1] < small.figures["loss"][0] / 2


@pytest.mark.slow
def test_the_figure_redraws_from_the_stored_numbers(small):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    stored = json.loads(json.dumps(small.to_dict()))
    figure = bulk.draw_figure(studies.StudyResult(
        "bulk", stored["scale"], stored["seed"], stored["settings"], stored["figures"]))
    spectrum_axes, training_axes = figure.axes
    outliers = [text.get_text() for text in spectrum_axes.texts]
    assert outliers == [f"λ{rank}" for rank in range(1, small.figures["outliers"] + 1)]
    assert len(training_axes.lines[0].get_xdata()) == small.settings["epochs"] + 1
    pyplot.close(figure)


def test_the_fabricated_claim_passes_every_check():
    assert all(passed(spectrum(CLASSES)).values())
    assert all(passed(spectrum(CLASSES - 1)).values())


def test_outlier_check_fails_with_none_or_three_per_class():
    name = "outliers above the bulk ≈ the number of classes C"
    assert bulk.outliers(spectrum(0))[0] == 0
    assert not passed(spectrum(0))[name]
    assert bulk.outliers(spectrum(3 * CLASSES))[0] == 3 * CLASSES
    assert not passed(spectrum(3 * CLASSES))[name]
    # a continuous spectrum (no gap ≥ MIN_GAP) has no outliers, however wide
    assert bulk.outliers(np.linspace(3.0, 0.0, 500))[0] == 0


def test_bulk_check_fails_when_the_bulk_is_wide():
    name = f"the bulk is near zero: |λ| < {bulk.EPSILON:g}·λ_max"
    assert not passed(spectrum(CLASSES, bulk_width=0.5))[name]


def test_negative_eigenvalue_check_fails_without_any_or_with_large_ones():
    name = "negative eigenvalues are left, small (inside the bulk)"
    assert not passed(spectrum(CLASSES, negative=0.0))[name]
    assert not passed(spectrum(CLASSES, negative=-0.5))[name]


def test_gradient_and_plateau_checks_fail_on_other_runs():
    values = spectrum(CLASSES)
    gradient = "training stops at a small but non-zero gradient"
    assert not passed(values, gradients=[1.0] * 11)[gradient]           # did not fall
    assert not passed(values, gradients=SMALL_GRADIENTS[:-1] + [0.0])[gradient]  # critical
    still_falling = list(np.linspace(2.0, 0.1, 11))
    assert not passed(values, losses=still_falling)["the loss has levelled off"]


def test_runs_are_reproducible_from_the_seed(one_thread, monkeypatch):
    monkeypatch.setitem(bulk.SETTINGS, "small", {"classes": 3, "dim": 4, "hidden": 6,
                                                "samples": 200, "epochs": 3})
    first, second = (studies.run("bulk", "small", seed=5) for _ in range(2))
    assert first.figures == second.figures
    assert first.figures != studies.run("bulk", "small", seed=6).figures


def test_eigenvalues_match_a_dense_hessian_by_torch_func(one_thread):
    X, y = bulk.mixture(4, 5, 150, seed=1)
    torch.manual_seed(1)
    net = default.mlp((5, 8, 4), torch.nn.ReLU).double()
    bulk.train(net, X, y, epochs=2, seed=1)
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(theta):
        pieces = torch.split(theta, [s.numel() for s in shapes])
        parameters = {name: piece.reshape(shape)
                      for name, piece, shape in zip(names, pieces, shapes, strict=True)}
        return torch.nn.functional.cross_entropy(torch.func.functional_call(net, parameters, X),
                                                 y)

    reference = np.linalg.eigvalsh(torch.func.hessian(loss)(flat).numpy())[::-1]
    assert bulk.eigenvalues(net, X, y) == pytest.approx(reference, abs=1e-10 * reference[0])
