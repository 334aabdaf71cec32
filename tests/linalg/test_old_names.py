"""The linalg routines' old keyword and class names (0.1) still work for one release: each warns,
naming the new one, and gives what the new name gives."""

from __future__ import annotations

import pytest
import torch
from linalg_helpers import with_spectrum

import landscope.linalg as linalg
from landscope._deprecated import LandscopeDeprecationWarning
from landscope.linalg import extreme_eigenpairs, hutchinson, slq

A = torch.from_numpy(with_spectrum([-2.0, -0.5, 0.1, 0.7, 1.5, 3.0], seed=4)[0])


@pytest.mark.parametrize("routine, old, new", [
    (extreme_eigenpairs, {"tol": 1e-3, "v0": A[:, 0]}, {"rtol": 1e-3, "v0": A[:, 0]}),
    (slq, {"steps": 4}, {"lanczos_steps": 4}),
    (hutchinson, {"samples": 6}, {"probes": 6}),
])
def test_an_old_keyword_warns_and_gives_the_same_result(routine, old, new):
    with pytest.warns(LandscopeDeprecationWarning, match=f"{next(iter(new))}="):
        before = routine(A, **old)
    assert before.to_dict() == routine(A, **new).to_dict()


def test_the_old_result_class_name_is_the_new_class():
    from landscope.linalg import lanczos

    for module in (linalg, lanczos):
        with pytest.warns(LandscopeDeprecationWarning, match="ExtremeEigenpairs"):
            assert module.LanczosResult is linalg.ExtremeEigenpairs
    assert isinstance(extreme_eigenpairs(A), linalg.ExtremeEigenpairs)
