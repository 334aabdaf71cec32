"""Pictures of surfaces and Taylor profiles; the `surface` and `plot` commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from landscope import BadInputError, Objective  # noqa: E402
from landscope import directions as D  # noqa: E402
from landscope._deprecated import LandscopeDeprecationWarning  # noqa: E402
from landscope.adaptive import adaptive_surface  # noqa: E402
from landscope.cli import app  # noqa: E402
from landscope.plot import contour, html, profile, save_all, surface3d, taylor_plot  # noqa: E402
from landscope.surface import Surface, surface  # noqa: E402
from landscope.taylor import taylor  # noqa: E402

FIXTURE = str(Path(__file__).parent / "fixtures" / "user_net.py")
PLANE = D.frame(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))


def _saddle():
    return Objective.from_function(lambda x: x[0]**2 - x[1]**2 + 2.0, [0.0, 0.0])


def test_contour_draws_values_trajectory_and_fidelity():
    path = torch.tensor([[-0.8, 0.5], [-0.4, 0.2], [0.0, 0.0]], dtype=torch.float64)
    s = surface(_saddle(), PLANE, resolution=11, trajectory=path)
    fig = contour(s)
    ax = fig.axes[0]
    lines = {tuple(np.round(line.get_xydata()[:, 0], 6)) for line in ax.get_lines()}
    assert (-0.8, -0.4, 0.0) in lines  # the projected trajectory
    assert "100.0 % of its variance" in ax.get_legend().get_title().get_text()
    levels = ax.collections[0].levels
    assert levels[0] == pytest.approx(s.values.min()) and levels[-1] == pytest.approx(
        s.values.max())
    logged = contour(s, log=True).axes[0].collections[0].levels
    assert np.allclose(np.diff(np.log(logged)), np.log(logged[1] / logged[0]))  # geometric


def test_budgeted_contour_shows_the_error_and_the_evaluated_points():
    s = adaptive_surface(_saddle(), PLANE, resolution=17, error_rtol=0.05)
    fig = contour(s)
    assert len(fig.axes) == 4  # contour, its colour bar, the error map and its colour bar
    dots = [line for line in fig.axes[2].get_lines() if line.get_label() == "evaluated"]
    assert len(dots[0].get_xdata()) == int(s.evaluated.sum())


@pytest.mark.slow
def test_every_format_is_written(tmp_path):
    s = surface(_saddle(), PLANE, resolution=7)
    paths = save_all(s, tmp_path, formats=("png", "svg"), log=True)
    names = sorted(p.name for p in paths)
    assert names == ["surface-3d.png", "surface-3d.svg", "surface-contour.png",
                     "surface-contour.svg", "surface.html"]
    assert (tmp_path / "surface-contour.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "surface-3d.svg").read_text()[:400]
    page = (tmp_path / "surface.html").read_text()
    assert "plotly" in page and '"type":"surface"' in page and '"type":"contour"' in page
    line = surface(_saddle(), PLANE.directions[0].vector, resolution=7)
    assert [p.name for p in save_all(line, tmp_path, name="line", interactive=False)] == [
        "line-profile.png"]
    assert surface3d(s).axes[0].name == "3d"
    assert html(line, tmp_path / "line.html", cdn=True).stat().st_size < 100_000


def test_profile_and_taylor_plot():
    obj = _saddle()
    s = adaptive_surface(obj, PLANE.directions[0].vector, resolution=33)
    ax = profile(s).axes[0]
    assert ax.get_lines()[0].get_ydata().tolist() == s.values.tolist()
    p = taylor(Objective.from_function(lambda x: (x**2).sum() + x[0]**3, [1.0, 1.0]), resolution=9)
    ax = taylor_plot(p).axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:3] == ["real loss", "first order  L + t·gᵀd", "second order  + ½t²·dᵀHd"]
    assert any(label.startswith("t* = ") for label in labels)
    assert ax.get_xlabel() == "t (learning rate)"


def test_plots_refuse_the_wrong_surface():
    s = surface(_saddle(), PLANE, resolution=5)
    with pytest.raises(BadInputError, match="needs a 1-D surface"):
        profile(s)
    s.values[0, 0] = np.nan
    with pytest.raises(BadInputError, match="incomplete"):
        contour(s)


runner = CliRunner()


@pytest.mark.slow
def test_cli_surface_then_plot(tmp_path):
    model = ["--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:data", "--dtype", "float64"]
    result = runner.invoke(app, ["surface", *model, "--resolution", "9", "--spread", "2",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "surface.json").read_text())
    assert document["kind"] == "surface" and document["schema_version"] == 1
    assert document["meta"]["frame"]["directions"][0]["normalisation"] == "filter"
    assert len(document["surface"]["fidelity"]["seed_spread"]["ranges"]) == 2
    saved = Surface.load(tmp_path / "surface.npz")
    assert saved.values.shape == (9, 9) and not (tmp_path / "surface.partial.npz").exists()
    for name in ("surface-contour.png", "surface-3d.png", "surface.html"):
        assert (tmp_path / name).stat().st_size > 1000
    redraw = runner.invoke(app, ["plot", str(tmp_path / "surface.npz"), "--out",
                                 str(tmp_path / "again"), "--format", "svg", "--log"])
    assert redraw.exit_code == 0, redraw.output
    assert (tmp_path / "again" / "surface-contour.svg").exists()


@pytest.mark.slow
def test_cli_gradient_line_with_taylor_and_budgeted_plane(tmp_path):
    model = ["--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:data"]
    result = runner.invoke(app, ["surface", *model, "--directions", "gradient", "--dims", "1",
                                 "--resolution", "9", "--out", str(tmp_path / "line")])
    assert result.exit_code == 0, result.output
    fidelity = json.loads((tmp_path / "line" / "surface.json").read_text())["surface"]
    assert (tmp_path / "line" / "taylor.png").exists() and "t* =" in result.output
    assert fidelity["shape"] == [9]
    checkpoints = []
    for i in range(3):
        net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
        checkpoints.append(tmp_path / f"ckpt-{i}.pt")
        torch.save(net.state_dict(), checkpoints[-1])
    result = runner.invoke(app, ["surface", *model, "--budget", "--resolution", "17",
                                 "--trajectory", str(tmp_path / "ckpt-*.pt"), "--out",
                                 str(tmp_path / "plane")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "plane" / "surface.json").read_text())["surface"]
    assert summary["trajectory"]["points"] == 3 and "max_error" in summary


@pytest.mark.parametrize("args, message", [
    (["--directions", "pca"], "needs a training path"),
    (["--format", "jpg"], "use png or svg"),
    (["--directions", "gradient"], "use --dims 1"),
    (["--bn", "recompute"], "no BatchNorm layer"),
    (["--trajectory", "no-such-*.pt"], "matches no file"),
])
def test_cli_bad_input_exits_2(tmp_path, args, message):
    result = runner.invoke(app, ["surface", "--model", f"{FIXTURE}:model", "--data",
                                 f"{FIXTURE}:data", "--resolution", "3", "--out", str(tmp_path),
                                 *args])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")


def _bowl(low=1.6, high=370.0):
    """low at the centre, high at the corners of [−1, 1]²: a steep-walled basin."""
    return Objective.from_function(
        lambda x: low + (high - low) * ((x[0]**2 + x[1]**2) / 2)**4, [0.0, 0.0])


def test_colour_scale_is_log_when_the_range_spans_decades_and_says_so():
    steep = surface(_bowl(), PLANE, resolution=21)
    assert steep.values.min() == pytest.approx(1.6) and steep.values.max() == pytest.approx(370)
    fig = contour(steep)
    levels = fig.axes[0].collections[0].levels
    assert np.allclose(np.diff(np.log(levels)), np.log(levels[1] / levels[0]))  # geometric
    assert fig.axes[1].get_ylabel() == "loss (log scale: spans 2.36 decades)"  # log10(370/1.6)
    forced = contour(steep, log=False)
    assert forced.axes[1].get_ylabel() == "loss"
    assert np.allclose(np.diff(forced.axes[0].collections[0].levels), 368.4 / 29)
    gentle = contour(surface(_bowl(1.6, 40.0), PLANE, resolution=21))  # 1.40 decades: linear
    assert gentle.axes[1].get_ylabel() == "loss (linear scale: spans 1.40 decades)"
    ax = surface3d(steep).axes[0]
    assert ax.get_zlabel() == "log₁₀ loss"
    assert np.allclose(ax.get_zlim(), np.log10([1.6, 370]), atol=0.1)
    # not positive: log of the excess over the minimum, whose median is far below the walls
    sunk = Objective.from_function(lambda x: -5 + 300 * ((x[0]**2 + x[1]**2) / 2)**4, [0., 0.])
    label = contour(surface(sunk, PLANE, resolution=21)).axes[1].get_ylabel()
    assert label.startswith("loss − min + 3.0e-01 (log scale: spans")


def test_3d_labels_and_caption_lie_inside_the_picture():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    gen = torch.Generator().manual_seed(0)
    X, Y = (torch.randn(8, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    obj = Objective.from_model(torch.nn.Linear(2, 2).double(), torch.nn.functional.mse_loss, (X, Y))
    fig = surface3d(surface(obj, D.random(obj, 2, seed=0), resolution=7))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer, box = canvas.get_renderer(), fig.bbox
    assert "α: random (seed 0, filter-normalised)" in fig.get_supxlabel()
    ax = fig.axes[0]
    caption = [t for t in fig.findobj(Text) if t.get_text() == fig.get_supxlabel()]
    texts = [ax.xaxis.label, ax.yaxis.label, ax.zaxis.label, ax.title, *caption]
    assert [t.get_text() for t in texts[:3]] == ["α", "β", "loss"] and len(caption) == 1
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert (extent.x0 >= box.x0 and extent.y0 >= box.y0 and extent.x1 <= box.x1
                and extent.y1 <= box.y1), (text.get_text(), extent, box)


def test_an_interrupt_while_drawing_leaves_no_partial_picture_and_says_what_was_kept(
        tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    original, calls = Figure.savefig, []

    def savefig(fig, target, **kwargs):
        calls.append(kwargs.get("format"))
        if len(calls) == 2:  # the 3-D picture: half written, then Ctrl-C
            target.write(b"\x89PNG half a picture")
            raise KeyboardInterrupt
        return original(fig, target, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    old = os.umask(0o022)
    try:
        result = runner.invoke(app, ["surface", "--model", f"{FIXTURE}:model", "--data",
                                     f"{FIXTURE}:data", "--resolution", "5", "--out",
                                     str(tmp_path)])
    finally:
        os.umask(old)
    assert result.exit_code == 130, result.output
    message = " ".join(result.output.split())
    kept = [tmp_path / "surface.npz", tmp_path / "surface-contour.png"]
    assert f"kept these complete files, written before the interrupt: {kept[0]}, {kept[1]}." \
        in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["surface-contour.png", "surface.npz"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in kept)
    assert Surface.load(kept[0]).values.shape == (5, 5)


def test_checkpoint_glob_is_read_in_natural_order_and_says_so(tmp_path):
    from landscope.cli import _common
    from landscope.cli.surface import _load_trajectory

    for epoch in (1, 2, 10, 11, 3):
        torch.save({"w": torch.full((2,), float(epoch))}, tmp_path / f"epoch_{epoch}.pt")
    with _common.console.capture() as captured:
        states = _load_trajectory(str(tmp_path / "epoch_*.pt"))
    assert [float(s["w"][0]) for s in states] == [1, 2, 3, 10, 11]
    assert ("5 checkpoints in natural order (numbers in names compared as numbers): "
            "epoch_1.pt, epoch_2.pt, epoch_3.pt, epoch_10.pt, epoch_11.pt") in " ".join(
        captured.get().split())


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "notes.txt").write_text("loss went down\n") and d / "notes.txt",
     "is not a landscope surface file: `landscope surface` writes an .npz archive"),
    (lambda d: d, "is a directory; give the surface.npz"),
])
def test_plot_of_something_else_says_what_to_give_and_never_suggests_unpickling(
        tmp_path, make, message):
    result = runner.invoke(app, ["plot", str(make(tmp_path))])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert message in text and "pickle" not in text.lower()


def test_the_old_name_of_save_all_warns_and_is_save_all():
    import landscope.plot
    import landscope.plot.surface

    for module in (landscope.plot, landscope.plot.surface):
        with pytest.warns(LandscopeDeprecationWarning, match="render is renamed"):
            assert module.render is save_all


def test_cli_old_steps_option_warns_and_sets_the_resolution(tmp_path):
    result = runner.invoke(app, ["surface", "--model", f"{FIXTURE}:model", "--data",
                                 f"{FIXTURE}:data", "--dims", "1", "--steps", "3", "--out",
                                 str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "--steps is renamed --resolution" in result.output
    assert Surface.load(tmp_path / "surface.npz").values.shape == (3,)
