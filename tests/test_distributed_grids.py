"""Surface grids and races shared among torch.distributed ranks (2 gloo ranks) against one process.

Each spawn of ranks costs seconds, so one worker runs every check that needs no failure: the
surfaces sharded by points (replicated data), by data (split unevenly, and given with one rank
empty), a budgeted view, a resume, refusals, and a race. A second spawn kills a rank mid-grid, and
``torchrun`` runs ``landscope surface``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from helpers import classification_data, make_mlp
from ranks import cli_options, landscope, run_ranks
from torch import nn

from landscope import Objective
from landscope import directions as D
from landscope.adaptive import adaptive_surface
from landscope.distributed import rank
from landscope.errors import BadInputError
from landscope.race import race
from landscope.surface import Surface, sharding, surface

pytestmark = pytest.mark.slow  # processes spawned per test

STEPS = 9
RACE = {"functions": ["six_hump_camel", "saddle"], "optimizers": ["gd", "adam", "newton"],
        "starts": 3, "steps": 25, "tune": 2, "tune_starts": 2, "strategies": ("genetic",),
        "strategy_runs": 2}


def _objective(shard="split", data=None):
    X, y = classification_data() if data is None else data
    return Objective.from_model(make_mlp(), nn.functional.cross_entropy, (X, y), shard=shard)


def _plane(obj):
    return D.random(obj, 2, seed=3)


def _race_files(directory):
    return tuple((directory / name).read_text() for name in ("race-summary.csv",
                                                             "race-runs.csv"))


def _fails_on_rank_1(x):
    if rank() == 1 and x[0] > 0:
        raise ValueError("this rank cannot evaluate α > 0")
    return (x**2).sum()


def _shared_work(out: str) -> dict:
    """Every check of sharded grids and races that needs no rank to die, on each rank."""
    me, found = rank(), {}
    points = _objective("replicate")
    found["sharding"] = [sharding(points), sharding(_objective())]
    checkpoint = os.path.join(out, "grid.npz")
    grid = surface(points, _plane(points), resolution=STEPS, checkpoint=checkpoint)
    found["points"], found["meta"] = grid.values, grid.meta
    calls = []
    again = surface(points, _plane(points), resolution=STEPS, checkpoint=checkpoint,
                    progress=lambda *args: calls.append(args))
    found["resumed"], found["resumed_calls"] = again.values, len(calls)
    found["budgeted"] = adaptive_surface(points, _plane(points), resolution=17,
                                         error_rtol=0.02).values
    split = _objective()
    found["split"] = surface(split, _plane(split), resolution=STEPS).values
    X, y = classification_data()
    given = Objective.from_model(make_mlp(), nn.functional.cross_entropy,
                                 (X, y) if me == 0 else [], shard="given")
    found["given"] = surface(given, _plane(given), resolution=STEPS).values
    d1, d2 = _plane(points).vectors
    nudged = surface(points, [d1 * (1 + 1e-15 * me), d2], resolution=3)  # other bits on rank 1
    found["nudged"] = nudged.values, nudged.directions
    refusals = []
    for attempt in (lambda: surface(split, _plane(split), resolution=3, bn="recompute"),
                    lambda: adaptive_surface(split, _plane(split), resolution=9, samples=0.5),
                    lambda: surface(points, _plane(points), resolution=3, span=1.0 + me)):
        try:
            attempt()
        except BadInputError as error:
            refusals.append(str(error))
    found["refusals"] = refusals
    try:
        surface(Objective.from_function(_fails_on_rank_1, [0.0, 0.0]),
                [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], resolution=3)
    except Exception as error:  # noqa: BLE001 - what each rank was told
        found["failure"] = f"{type(error).__name__}: {error}"
    result = race(**RACE)
    result.write_csv(os.path.join(out, "race"))  # rank 0 writes; rank 1 writes nothing
    found["race"] = result.summary, result.runs
    found["race_paths"] = {key: run.points for key, run in result.descents.items()}
    return found


def test_sharded_surfaces_and_race_equal_one_process(tmp_path, one_thread):
    ranks = run_ranks(_shared_work, 2, str(tmp_path))
    reference = _objective()
    plane = _plane(reference)
    full = surface(reference, plane, resolution=STEPS).values
    budgeted = adaptive_surface(reference, plane, resolution=17, error_rtol=0.02).values
    rank_0s = surface(reference, plane.vectors, resolution=3)
    single = race(**RACE)
    single.write_csv(tmp_path / "single")
    for found in ranks:
        assert found["sharding"] == [{"by": "points", "ranks": 2}, {"by": "data", "ranks": 2}]
        assert found["meta"]["sharding"] == {"by": "points", "ranks": 2}
        for name in ("points", "resumed", "split", "given"):
            np.testing.assert_allclose(found[name], full, rtol=1e-12, atol=0, err_msg=name)
        assert found["resumed_calls"] == 0  # the checkpoint was complete: nothing recomputed
        np.testing.assert_allclose(found["budgeted"], budgeted, rtol=1e-12, atol=0)
        assert np.array_equal(found["nudged"][1], rank_0s.directions)  # one plane: rank 0's
        np.testing.assert_allclose(found["nudged"][0], rank_0s.values, rtol=1e-12, atol=0)
        assert [m.split(" ")[0] for m in found["refusals"]] == ["bn='recompute'", "samples=0.5",
                                                                "rank"]
        assert "rank 1 asks for another grid than rank 0 (axes differ)" in found["refusals"][2]
    assert ranks[0]["failure"] == ("RankFailure: on rank 1: a grid point failed (ValueError: "
                                   "this rank cannot evaluate α > 0); every rank stops, and the "
                                   "points gathered so far are kept in the checkpoint")
    assert ranks[1]["failure"] == "ValueError: this rank cannot evaluate α > 0"
    for found in ranks:
        summary, runs = found["race"]
        assert summary == single.summary and runs == single.runs
        assert list(found["race_paths"]) == list(single.descents)
        assert all(torch.equal(found["race_paths"][key], run.points)
                   for key, run in single.descents.items())
    assert _race_files(tmp_path / "race") == _race_files(tmp_path / "single")
    saved = Surface.load(tmp_path / "grid.npz")
    np.testing.assert_allclose(saved.values, full, rtol=1e-12, atol=0)


def _killed(out: str, after: int):
    """Rank 1 stops dead after its first ``after`` points; rank 0 carries on until it gathers."""
    points = _objective("replicate")
    seen = []

    def die(done, total):
        seen.append(done)
        if rank() == 1 and len(seen) == after:
            os._exit(0)  # no goodbye: the other rank finds out in its next collective

    surface(points, _plane(points), resolution=STEPS, checkpoint=os.path.join(out, "grid.npz"),
            progress=die)


def test_a_rank_that_dies_mid_grid_stops_the_other_and_the_grid_resumes(tmp_path, one_thread):
    first, second = run_ranks(_killed, 2, str(tmp_path), 3, timeout_s=30, allow_errors=True)
    assert first[0] == "error" and "RankFailure" in first[1]
    assert second == ("error", "rank 1 wrote nothing")
    kept = Surface.load(tmp_path / "grid.npz")
    done = np.isfinite(kept.values).ravel()
    # the first round (one point each) was gathered; of the second, rank 0's share was kept and
    # rank 1's was lost with it
    assert done[:2].all() and done[2::2].all() and not done[3::2].any()
    reference = _objective()
    full = surface(reference, _plane(reference), resolution=STEPS).values
    calls = []
    resumed = surface(reference, _plane(reference), resolution=STEPS,
                      checkpoint=tmp_path / "grid.npz", progress=lambda d, t: calls.append(t))
    assert set(calls) == {int((~done).sum())}
    np.testing.assert_allclose(resumed.values, full, rtol=1e-12, atol=0)


def test_a_single_process_grid_records_no_sharding():
    obj = Objective.from_function(lambda x: x[0] ** 2 - x[1] ** 2, [0.0, 0.0])
    assert sharding(obj) is None
    assert surface(obj, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])],
                   resolution=3).meta["sharding"] is None


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test on Linux")
def test_torchrun_surface_equals_the_single_process_surface(tmp_path):
    """``torchrun --nproc-per-node 2 --no-python landscope surface`` says how it shares the grid,
    prints on rank 0 only and writes the surface of one process (float64)."""
    args = ["surface", *cli_options(tmp_path), "--resolution", "5"]
    one = landscope([*args, "--out", tmp_path / "one"])
    two = [landscope([*args, "--out", tmp_path / shard, "--shard", shard], ranks=2)
           for shard in ("points", "data")]
    assert one.returncode == 0, one.stderr
    a = Surface.load(tmp_path / "one" / "surface.npz")
    assert a.meta["sharding"] is None
    for run, shard, told in zip(two, ("points", "data"), (
            "grid points across 2 ranks", "data across 2 ranks (each rank holds only its part)"),
            strict=True):
        assert run.returncode == 0, run.stderr
        assert f"sharding: {told}" in run.stdout
        assert run.stdout.count("written:") == one.stdout.count("written:") == 5  # rank 0 only
        b = Surface.load(tmp_path / shard / "surface.npz")
        np.testing.assert_allclose(b.values, a.values, rtol=1e-12, atol=0)
        assert b.meta["sharding"] == {"by": shard, "ranks": 2}
