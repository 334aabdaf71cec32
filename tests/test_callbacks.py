"""The Lightning and Hugging Face callbacks on real trainers (tiny models built from configs, no
downloads), past the Monitor's flushes, and `landscope doctor` reading what they wrote.

Both frameworks are pinned in requirements-dev.txt: these tests import them outright, so a test
environment without them fails here instead of skipping.
"""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import transformers
from torch import nn
from typer.testing import CliRunner

from landscope.cli import app
from landscope.monitor import (
    CurveThresholds,
    huggingface_callback,
    lightning_callback,
    read_record,
)
from landscope.monitor.curvature import EIG_RTOL

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STEPS = 120  # past the Monitor's first flush (check_every=100), where the old callbacks died


def _doctor_reads(run_dir, steps):
    """The CLI diagnoses the run directory and writes doctor.json; the record has every step."""
    result = CliRunner().invoke(app, ["doctor", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "doctor.json").read_text())["diagnosis"]["summary"]["steps"] \
        == steps
    record = read_record(run_dir)
    assert record["step"].tolist() == list(range(steps))
    assert record.meta["finished"] is True
    return record


# ---------------------------------------------------------------------- Lightning
def test_lightning_run_with_a_validation_loop_is_recorded_and_diagnosed(tmp_path):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 6, generator=gen)
    y = (X[:, 0] > 0).long()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
            self.val_losses, self._batch_losses = [], []

        def training_step(self, batch, index):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, index):
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("val_loss", loss)
            self._batch_losses.append(loss.item())
            return loss

        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking:
                self.val_losses.append(float(np.mean(self._batch_losses)))
            self._batch_losses = []

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[:32], y[:32]),
                                      batch_size=16)
    run = tmp_path / "run"
    # 4 batches an epoch: validation ends epochs at steps 3, 7, ..., 99 (right after the flush)
    trainer = pl.Trainer(max_steps=STEPS, callbacks=[lightning_callback(run, every=5)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         accelerator="cpu")
    module = Module()
    trainer.fit(module, train, val)
    assert trainer.global_step == STEPS
    record = _doctor_reads(run, STEPS)
    csv = (run / "monitor.csv").read_bytes()
    assert np.isfinite(record["loss"]).all()
    validated = np.flatnonzero(np.isfinite(record["val_loss"]))
    assert validated.tolist() == list(range(3, STEPS, 4))  # 99 included: after the flush
    np.testing.assert_allclose(record["val_loss"][validated], module.val_losses, rtol=1e-6)
    trainer.validate(module, val, verbose=False)  # after training: the callback stays quiet
    assert (run / "monitor.csv").read_bytes() == csv
    assert np.isfinite(record["grad_norm"][::5]).all()


# ---------------------------------------------------------------------- Hugging Face
def _sequences(n=96, length=12, vocab=50, seed=0):
    """Token sequences whose class is whether token 7 occurs: a task a tiny BERT learns."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, vocab, (n, length), generator=gen)
    ids[: n // 2, 3] = 7
    labels = (ids == 7).any(1).long()
    return ids, labels


class _Rows(torch.utils.data.Dataset):
    def __init__(self, **columns):
        self.columns = columns

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i):
        return {name: column[i] for name, column in self.columns.items()}


def _hf_train(model, dataset, run_dir, tmp_path, logging_steps, learning_rate=1e-3,
              **monitor_options):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=STEPS, per_device_train_batch_size=8,
        learning_rate=learning_rate, logging_steps=logging_steps, report_to=[], use_cpu=True,
        save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset,
                                   callbacks=[huggingface_callback(run_dir, **monitor_options)])
    logged = []
    trainer.add_callback(type("Logs", (transformers.TrainerCallback,), {
        "on_log": lambda self, args, state, control, logs=None, **kw: logged.append(
            (state.global_step, dict(logs or {})))})())
    trainer.train()
    assert trainer.state.global_step == STEPS
    return logged


def _tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(config)


@pytest.mark.parametrize("logging_steps", [10, 500])
@pytest.mark.slow
def test_huggingface_trainer_run_is_recorded_and_diagnosed(tmp_path, logging_steps):
    ids, labels = _sequences()
    run = tmp_path / "run"
    logged = _hf_train(_tiny_bert(), _Rows(input_ids=ids, labels=labels), run, tmp_path,
                       logging_steps, every=5)
    record = _doctor_reads(run, STEPS)
    losses = {step - 1: logs["loss"] for step, logs in logged if "loss" in logs}
    assert sorted(losses) == ([] if logging_steps == 500 else list(range(9, STEPS, 10)))
    recorded = np.flatnonzero(np.isfinite(record["loss"]))
    assert recorded.tolist() == sorted(losses)  # 99 included: logged right after the flush
    np.testing.assert_allclose(record["loss"][recorded], [losses[s] for s in recorded],
                               rtol=1e-9)
    assert np.isfinite(record["grad_norm"][::5]).all()  # gradients read at every 5th step
    assert record.meta["model"] == "BertForSequenceClassification"


@pytest.mark.slow
def test_huggingface_gpt2_with_tied_embedding_and_head(tmp_path):
    """GPT-2 ties lm_head.weight to transformer.wte.weight: one layer in the record, and the
    model keeps its Parameters and its tie."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1,
                                     n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    before = [(n, id(p)) for n, p in model.named_parameters(remove_duplicate=False)]
    ids, _ = _sequences()
    run = tmp_path / "run"
    _hf_train(model, _Rows(input_ids=ids, labels=ids), run, tmp_path, 10, every=5)
    record = _doctor_reads(run, STEPS)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert [(n, id(p)) for n, p in model.named_parameters(remove_duplicate=False)] == before
    layers = {layer["name"]: layer["params"] for layer in record.meta["layers"]}
    assert layers["transformer.wte"] == ["transformer.wte.weight"] and "lm_head" not in layers
    assert record.meta["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert np.isfinite(record["grad_norm:transformer.wte"][::5]).all()


def _power_lambda_max(model, loss_fn, batch, iterations=300):
    """λ_max of the held loss by power iteration on |H| shifted to be positive, with autograd's
    double backward through the math attention kernel: independent of landscope's analysis."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = [p for p in model.parameters() if p.requires_grad]
    inputs, target = batch
    with sdpa_kernel(SDPBackend.MATH):
        output = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        loss = loss_fn(output, target)
        grads = torch.autograd.grad(loss, params, create_graph=True)

        def hvp(v):
            pieces = torch.autograd.grad(grads, params, v, retain_graph=True)
            return [piece.detach() for piece in pieces]

        def dot(a, b):
            return sum((x * y).sum() for x, y in zip(a, b, strict=True))

        gen = torch.Generator().manual_seed(0)
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        shift = 0.0
        for phase in range(2):  # the largest |λ|; then, shifted by it, the top of the spectrum
            for _ in range(iterations):
                norm = dot(v, v).sqrt()
                v = [x / norm for x in v]
                w = [h + shift * x for h, x in zip(hvp(v), v, strict=True)]
                value = dot(v, w).item() - shift
                v = w
            if phase == 0 and value < 0:
                shift = -value
            elif phase == 0:
                break
    return value


@pytest.mark.slow
def test_held_batch_curvature_on_a_tiny_transformer_does_not_stop_training(tmp_path):
    """A tiny BERT with a held batch: the curvature measurement runs (attention twice
    differentiated) and its λ_max agrees with autograd's; training completes either way."""
    ids, labels = _sequences()
    model = _tiny_bert()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0

    loss_fn = nn.functional.cross_entropy  # the analysis reads a ModelOutput's logits
    held = (ids[:16], labels[:16])
    run = tmp_path / "run"
    _hf_train(model, _Rows(input_ids=ids, labels=labels), run, tmp_path, 10, every=5,
              loss_fn=loss_fn, held=held, window=60, check_every=60, budget=math.inf,
              thresholds=CurveThresholds(min_points=5), learning_rate=0.0)
    record = _doctor_reads(run, STEPS)
    events = record.meta["events"]
    assert [e["step"] for e in events] == [59, 119]
    assert all("failed" not in e["note"] for e in events), events[0]["note"]
    model.train()  # the Trainer leaves it as it trains; no dropout, so modes do not matter
    expected = _power_lambda_max(model, lambda out, y: loss_fn(out.logits, y), held)
    assert record["lambda_max"][59] == pytest.approx(expected, rel=1e-2)
    # learning rate 0: θ fixed; the second measurement starts from the first one's vector and
    # agrees within the Monitor's eigenvalue tolerance, in fewer products
    assert record["lambda_max"][119] == pytest.approx(record["lambda_max"][59], rel=EIG_RTOL)
    assert record["curvature_products"][119] < record["curvature_products"][59]


@pytest.mark.slow
def test_held_dict_batch_with_the_models_own_loss_on_a_tied_gpt2(tmp_path):
    """A held batch as Hugging Face has it ({input_ids, labels}) with loss_fn='model': the
    Monitor measures the curvature of GPT-2's own loss, tied head and all, and it agrees with
    autograd's on model(**batch).loss."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1,
                                     n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    ids, _ = _sequences()
    held = {"input_ids": ids[:16], "labels": ids[:16]}
    run = tmp_path / "run"
    _hf_train(model, _Rows(input_ids=ids, labels=ids), run, tmp_path, 10, every=5,
              loss_fn="model", held=held, window=60, check_every=60, budget=math.inf,
              thresholds=CurveThresholds(min_points=5), learning_rate=0.0)
    record = _doctor_reads(run, STEPS)
    assert record.meta["loss_fn"] == "model" and record.meta["held_size"] == 16
    events = record.meta["events"]
    assert [e["step"] for e in events] == [59, 119], events
    model.train()
    expected = _power_lambda_max(model, lambda out, _: out.loss, (held, None))
    assert record["lambda_max"][59] == pytest.approx(expected, rel=1e-2)
    assert model.lm_head.weight is model.transformer.wte.weight
