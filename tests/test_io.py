"""The run directory: versioned results written atomically; checkpoints loaded weights-only."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import make_mlp

from landscope import BadInputError, CheckpointError, io
from landscope.monitor import record
from landscope.plot._files import save_figure, save_page
from landscope.report import write_report
from landscope.surface import Surface


class NotWeights:
    """A pickled object that weights_only loading must refuse to rebuild."""

    def __init__(self):
        self.payload = [1, 2, 3]


def test_result_is_versioned_and_round_trips(tmp_path):
    path = io.write_result(tmp_path / "run", "probe", {"probe": {"loss": 0.5, "inf": float("inf"),
                                                                 "v": torch.tensor([1.0, 2.0])}})
    document = io.read_result(path)
    assert document["schema"] == "landscope.result" and document["schema_version"] == 1
    assert document["probe"] == {"loss": 0.5, "inf": None, "v": [1.0, 2.0]}
    assert not list((tmp_path / "run").glob(".*.tmp"))  # nothing half-written left behind


def test_other_schema_versions_are_refused(tmp_path):
    path = io.write_result(tmp_path, "probe", {})
    document = json.loads(path.read_text())
    document["schema_version"] = 99
    path.write_text(json.dumps(document))
    with pytest.raises(BadInputError, match="schema version 99"):
        io.read_result(path)
    (tmp_path / "other.json").write_text('{"schema": "something else"}')
    with pytest.raises(BadInputError, match="not a landscope result"):
        io.read_result(tmp_path / "other.json")


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def dump_then_fail(document, stream, **kwargs):
        stream.write('{"schema": "landscope.result", "partial"')
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(io.json, "dump", dump_then_fail)
    with pytest.raises(KeyboardInterrupt):
        io.write_result(tmp_path, "probe", {"x": 1})
    assert not (tmp_path / "result.json").exists()
    assert not list(tmp_path.glob(".*"))


def test_checkpoint_round_trip_and_wrappers(tmp_path):
    model, other = make_mlp(seed=0), make_mlp(seed=1)
    io.save_state_dict(model, tmp_path / "w.pt")
    io.load_into(other, tmp_path / "w.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 other.state_dict().values(), strict=True))
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    assert set(io.load_state_dict(tmp_path / "wrapped.pt")) == set(model.state_dict())


def test_pickled_checkpoint_is_refused(tmp_path):
    torch.save({"model": NotWeights()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        io.load_state_dict(tmp_path / "pickled.pt")


def test_corrupt_missing_and_mismatched_checkpoints(tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged"):
        io.load_state_dict(tmp_path / "corrupt.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        io.load_state_dict(tmp_path / "missing.pt")
    io.save_state_dict(make_mlp(sizes=(4, 7, 3)), tmp_path / "big.pt")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        io.load_into(make_mlp(sizes=(4, 5, 3)), tmp_path / "big.pt")


def test_pictures_results_and_checkpoints_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        paths = [io.write_result(tmp_path, "probe", {}), io.save_state_dict(make_mlp(),
                                                                            tmp_path / "w.pt")]
        with io.atomic_write(tmp_path / "picture.png") as stream:
            stream.write(b"\x89PNG")
        paths.append(tmp_path / "picture.png")
        assert [p.stat().st_mode & 0o777 for p in paths] == [0o644] * 3
        os.umask(0o077)
        assert io.write_result(tmp_path, "probe", {}, name="private.json").stat().st_mode \
            & 0o777 == 0o600
    finally:
        os.umask(old)


def test_an_interrupted_atomic_write_keeps_the_old_file_and_records_only_complete_ones(tmp_path):
    target = tmp_path / "surface-3d.png"
    target.write_bytes(b"old picture")
    with io.recording() as written:
        with io.atomic_write(tmp_path / "first.svg", "w") as stream:
            stream.write("<svg/>")
        with pytest.raises(KeyboardInterrupt), io.atomic_write(target) as stream:
            stream.write(b"half a new pic")
            raise KeyboardInterrupt
    assert written == [tmp_path / "first.svg"]
    assert target.read_bytes() == b"old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.svg", "surface-3d.png"]
    with io.atomic_write(tmp_path / "outside.txt", "w") as stream:
        stream.write("not recorded")
    assert written == [tmp_path / "first.svg"]


@pytest.mark.parametrize("content, expected", [
    (np.random.default_rng(0).bytes(300), "damaged or not a file written by torch.save"),
    (b"epoch,loss\n1,0.5\n", "damaged or not a file written by torch.save"),
    (b"", "damaged or not a file written by torch.save (EOFError)"),
])
def test_damaged_checkpoints_are_called_damaged_not_pickled(tmp_path, content, expected):
    (tmp_path / "w.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        io.load_state_dict(tmp_path / "w.pt")
    message = str(caught.value)
    assert expected in message and "save it again with torch.save" in message
    assert "pickled" not in message and "weights_only=False" not in message


def test_a_directory_is_called_a_directory_with_the_files_inside(tmp_path):
    (tmp_path / "ckpt").mkdir()
    io.save_state_dict(make_mlp(), tmp_path / "ckpt" / "model.pt")
    with pytest.raises(CheckpointError, match=r"is a directory; give the file inside it "
                                              r"\(it holds model.pt\)"):
        io.load_state_dict(tmp_path / "ckpt")
    torch.save({"model": NotWeights()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"pickled Python object \(test_io.NotWeights\)"):
        io.load_state_dict(tmp_path / "pickled.pt")


class DiskFullStream:
    """A stream that writes half of its first write and then fails, as on a full disk."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, data):
        self._stream.write(data[:max(1, len(data) // 2)])
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._stream.close()


class Page:
    """A plotly-like figure: ``write_html`` writes the page to the stream it is given."""

    def write_html(self, stream, **options):
        stream.write("<html>" + "x" * 1000 + "</html>")


def _picture(path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig = plt.figure()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _surface(path):
    axis = np.linspace(-1, 1, 3)
    return Surface((axis, axis), np.zeros((3, 3)), np.zeros((2, 4)), {"note": "test"}).save(path)


def _report(path):
    io.write_result(path.parent, "probe", {"probe": {"loss": 0.5}})
    return write_report(path.parent, path)


WRITERS = {
    "result": ("result.json", lambda path: io.write_result(path.parent, "probe", {"x": 1})),
    "csv": ("table.csv", lambda path: io.write_csv(path, [{"a": 1, "b": 2}], ["a", "b"])),
    "checkpoint": ("w.pt", lambda path: io.save_state_dict(make_mlp(), path)),
    "surface": ("surface.npz", _surface),
    "picture": ("surface.png", _picture),
    "page": ("surface.html", lambda path: save_page(Page(), path)),
    "report": ("report.html", _report),
    "monitor table": (record.TABLE, lambda path: record.append_rows(
        path.parent, list(record.EVERY_STEP), np.ones((2, len(record.EVERY_STEP))), new=True)),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_keeps_the_old_file_and_leaves_no_temporary_when_a_write_fails(
        writer, tmp_path, monkeypatch):
    name, write = WRITERS[writer]
    target = tmp_path / name
    write(target)  # the writer works, and writes this file
    assert target.stat().st_size > 0
    target.write_bytes(b"the old, complete file")
    fdopen = os.fdopen
    monkeypatch.setattr(io.os, "fdopen", lambda *args, **kw: DiskFullStream(fdopen(*args, **kw)))
    with pytest.raises(Exception):  # noqa: B017 — writers wrap the disk's error their own way
        write(target)
    assert target.read_bytes() == b"the old, complete file"
    assert not list(tmp_path.glob(".*"))
