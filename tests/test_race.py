"""The race: the seeds' saddle story, fairness (same starts, reproducible), scoring against ground
truth, files, pictures and the command."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

import landscope as ls
from landscope import functions as zoo
from landscope import io
from landscope import race as races
from landscope._deprecated import LandscopeDeprecationWarning
from landscope.cli import app
from landscope.optim import Recipe
from landscope.race import RUN_FIELDS, SUMMARY_FIELDS, race

STORY = ["gd", "momentum", "adam", "noisy_gd", "perturbed_gd", "newton", "saddle_free_newton",
         "negative_curvature"]


@pytest.fixture(scope="module")
def saddle_race():
    return race(["saddle"], STORY, starts=6, steps=150, tune=3, tune_starts=4, strategies=(),
                seed=0)


def _row(result, function, optimizer):
    return next(r for r in result.summary
                if r["function"] == function and r["optimizer"] == optimizer)


@pytest.mark.slow
def test_the_seeds_saddle_story(saddle_race):
    rows = {name: _row(saddle_race, "saddle", name) for name in STORY}
    assert rows["newton"]["success_rate"] == 0.0 and rows["newton"]["ends"] == "saddle 6"
    for name in ("momentum", "adam", "noisy_gd", "perturbed_gd", "saddle_free_newton",
                 "negative_curvature"):
        assert rows[name]["success_rate"] == 1.0, name
        assert rows[name]["median_steps"] < rows["gd"]["median_steps"], name
    assert rows["gd"]["success_rate"] == 1.0  # it does leave: after lingering the longest
    assert saddle_race.saddles["saddle"] == [0.0, 0.0]
    starts = torch.tensor([r["x0"] for r in saddle_race.runs if r["optimizer"] == "gd"])
    assert torch.allclose(starts[:, 0].abs(), torch.ones(6))  # next to the saddle, on its
    assert (starts[:, 1].abs() <= 1e-8).all()                 # stable manifold up to 1e-8


def test_escape_steps_match_the_paths(saddle_race):
    run = saddle_race.descents["saddle", "gd"]
    for record in (r for r in saddle_race.runs if r["optimizer"] == "gd"):
        t, s = record["escape_steps"], record["start"]
        x = run.points[t, s]
        assert x.norm() >= run.points[0, s].norm() - 1e-12 and (x[0]**2 - x[1]**2) < 0
        before = run.points[t - 1, s]
        assert before.norm() < run.points[0, s].norm() or before[0]**2 - before[1]**2 >= 0


@pytest.mark.slow
def test_every_optimiser_gets_the_same_starts_and_the_race_is_reproducible():
    kwargs = {"starts": 4, "steps": 60, "tune": 2, "tune_starts": 2, "strategies": (),
              "noise": 0.1}
    first = race(["six_hump_camel"], ["adam", "perturbed_gd", "noisy_gd"], seed=5, **kwargs)
    again = race(["six_hump_camel"], ["adam", "perturbed_gd", "noisy_gd"], seed=5, **kwargs)
    other = race(["six_hump_camel"], ["adam", "perturbed_gd", "noisy_gd"], seed=6, **kwargs)
    for key, run in first.descents.items():
        assert torch.equal(run.points, again.descents[key].points)
        assert torch.equal(run.values, again.descents[key].values)
    assert first.summary == again.summary and first.runs == again.runs
    x0 = {r["optimizer"]: [] for r in first.runs}
    for r in first.runs:
        x0[r["optimizer"]].append(r["x0"])
    assert x0["adam"] == x0["perturbed_gd"] == x0["noisy_gd"]
    assert not torch.equal(first.descents["six_hump_camel", "adam"].points,
                           other.descents["six_hump_camel", "adam"].points)


@pytest.mark.slow
def test_runs_are_scored_against_the_known_critical_points():
    result = race(["himmelblau", "six_hump_camel"], ["newton", "adam"], starts=8, steps=80,
                  tune=1, strategy_runs=1, seed=1)
    for record in result.runs:
        fn = zoo.get(record["function"])
        if record["ended_at"] >= 0:
            listed = fn.critical_points[record["ended_at"]]
            assert record["end_kind"] == listed.kind
            assert torch.dist(torch.tensor(record["final_x"]), listed.tensor()) < 0.2
            assert record["found_global"] == (listed in fn.minimisers)
        if record["steps_to_tol"] is not None:
            run = result.descents[record["function"], record["optimizer"]]
            gap = run.values[record["steps_to_tol"], record["start"]] - fn.global_min
            assert gap <= 1e-6
    newton = [r for r in result.runs if r["optimizer"] == "newton"]
    assert {r["end_kind"] for r in newton} - {"local_min"}  # Newton also stops at other kinds
    strategies = [r for r in result.summary if r["optimizer"] in ("annealing", "genetic")]
    assert len(strategies) == 4 and all(r["success_rate"] == 1.0 for r in strategies)


def test_a_diverging_optimiser_is_reported_and_your_own_optimiser_races():
    hot = Recipe("hot_gd", torch.optim.SGD, lr=0.05, batchable=True)
    result = race(["rosenbrock"], [hot, "NAdam"], starts=4, steps=40, tune=1, strategies=())
    row = _row(result, "rosenbrock", "hot_gd")
    assert row["diverged"] == 4 and row["success_rate"] == 0.0
    assert all(r["status"] == "diverged" for r in result.runs if r["optimizer"] == "hot_gd")
    assert _row(result, "rosenbrock", "NAdam")["diverged"] == 0


def test_bad_names_list_the_valid_ones():
    with pytest.raises(ls.BadInputError, match="himmelblau"):
        race(["himmelblou"])
    with pytest.raises(ls.BadInputError, match="saddle_free_newton"):
        race(["saddle"], ["sfn"])
    with pytest.raises(ls.BadInputError, match="uniform"):
        race(["saddle"], ["gd"], start="corner")
    with pytest.raises(ls.BadInputError, match="no listed saddle"):
        race(["bowl"], ["gd"], start="saddle")
    with pytest.raises(ls.BadInputError, match="starts=0"):
        race(["bowl"], ["gd"], starts=0)


def test_the_old_tolerance_keyword_warns_and_gives_the_same_race():
    options = dict(starts=3, steps=40, tune=1, strategies=("genetic",), strategy_runs=1)
    new = race(["six_hump_camel"], ["gd"], global_rtol=0.5, **options)
    with pytest.warns(LandscopeDeprecationWarning, match="global_rtol="):
        old = race(["six_hump_camel"], ["gd"], tol=0.5, **options)
    assert old.runs == new.runs and old.summary == new.summary
    assert new.settings["tol"] == 0.5  # race.json's key, as in the files written before
    strict = race(["six_hump_camel"], ["gd"], global_rtol=1e-300, **options)
    assert [r["steps_to_tol"] for r in strict.runs] != [r["steps_to_tol"] for r in new.runs]
    with pytest.warns(LandscopeDeprecationWarning, match="RaceResult is renamed"):
        assert races.RaceResult is races.Race is type(new)


def test_progress_counts_the_pairs_and_names_the_one_running():
    calls = []
    race(["bowl", "saddle"], ["gd", "adam"], starts=2, steps=5, tune=1, strategies=("genetic",),
         strategy_runs=1, progress=lambda done, total, note="": calls.append((done, total, note)))
    assert calls == [(0, 5, "bowl: gd"), (1, 5, "bowl: adam"), (2, 5, "bowl: genetic"),
                     (3, 5, "saddle: gd"), (4, 5, "saddle: adam"), (5, 5, "")]


def test_files_and_pictures(saddle_race, tmp_path):
    from landscope.plot.race import race_figure, race_page

    summary, runs = saddle_race.write_csv(tmp_path)
    with open(summary) as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == SUMMARY_FIELDS and len(rows) == len(STORY)
    with open(runs) as stream:
        assert tuple(next(csv.reader(stream))) == RUN_FIELDS
    figure = race_figure(saddle_race, "saddle")
    assert len(figure.axes) == len(STORY)
    page = race_page(saddle_race, "saddle", tmp_path / "race.html", frames=10)
    text = page.read_text()
    assert '"sliders"' in text and text.count('"name":"') >= len(STORY)
    with pytest.raises(ls.BadInputError, match="two-dimensional"):
        race_figure(race(["cubic"], ["gd"], starts=1, steps=2, tune=1, strategies=()), "cubic")


def test_the_race_command(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["race", "--functions", "saddle", "--optimizers",
                                 "gd,newton,saddle_free_newton", "--starts", "2", "--steps",
                                 "40", "--tune", "1", "--no-strategies", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    document = io.read_result(tmp_path / "race.json")
    assert document["kind"] == "race"
    assert [row["optimizer"] for row in document["summary"]] == ["gd", "newton",
                                                                 "saddle_free_newton"]
    assert (tmp_path / "race-saddle.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "race.json").read_text())["settings"]["seed"] == 0
    bad = runner.invoke(app, ["race", "--functions", "camel", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "six_hump_camel" in bad.output
    old = runner.invoke(app, ["race", "--functions", "bowl", "--optimizers", "gd", "--starts",
                              "1", "--steps", "5", "--tune", "1", "--no-strategies",
                              "--no-pictures", "--tol", "0.25", "--out", str(tmp_path)])
    assert old.exit_code == 0 and "--tol is renamed --global-rtol" in old.output
    assert io.read_result(tmp_path / "race.json")["settings"]["tol"] == 0.25
    listing = runner.invoke(app, ["race", "--list"])
    assert listing.exit_code == 0 and "deep_linear" in listing.output
