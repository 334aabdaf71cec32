"""The landscope command on a Hugging Face model with its own loss and tied embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from landscope.cli import app

pytest.importorskip("transformers")
FIXTURE = str(Path(__file__).parent / "fixtures" / "hf_net.py")


@pytest.mark.slow
def test_probe_a_hugging_face_model_with_its_own_loss(tmp_path, one_thread):
    result = CliRunner().invoke(app, [
        "probe", "--out", str(tmp_path), "--model", f"{FIXTURE}:model", "--data",
        f"{FIXTURE}:data", "--loss", "model", "--dtype", "float64",
        "--params", "transformer.wte.weight,transformer.h.0.attn.*"])
    assert result.exit_code == 0, result.output
    probe = json.loads((tmp_path / "result.json").read_text())["probe"]
    objective = probe["objective"]
    assert objective["loss"] == "the model's own loss"
    assert objective["tied_parameters"] == {"transformer.wte.weight": ["lm_head.weight"]}
    assert "causal shift" in objective["batch_weights"]
    assert probe["evidence"]["path"] == "exact" and probe["lambda_max"] > 0
