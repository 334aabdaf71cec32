"""Networks as users have them: attention, tied and shared weights, dict batches, model outputs,
a model's own loss, weighted / ignored / summed losses, changing data, half precision.

Ground truth: the dense Hessian (float64, attention on its math kernel) of the loss on the whole
data at once, computed on a deep copy of the model with its parameters tied as PyTorch ties them
(``functional_call``'s default), or of a function written out by hand; its quadratic form is
checked against second differences of the loss itself. The dense Hessian comes from
``torch.autograd.functional.hessian`` (reverse over reverse): in torch 2.13 ``torch.func.hessian``
is 5 % off finite differences on ``nn.TransformerEncoderLayer`` models (both of its modes agree
with each other, not with the loss), so it cannot serve as the reference there.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import Snapshot
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import landscope as ls
from landscope import directions, pointwise, surface
from landscope.errors import BadInputError

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


# ---------------------------------------------------------------------- ground truth
def truth(model, full_loss, params=None, second_differences=True):
    """(θ₀, dense H) of θ ↦ full_loss(call) where call(*args, **kwargs) runs a copy at θ."""
    ref = copy.deepcopy(model)
    named = dict(ref.named_parameters())
    names = list(named) if params is None else params
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    theta = torch.cat([named[n].detach().reshape(-1) for n in names])

    def f(t):
        views = {n: p.view(s) for n, p, s in zip(names, t.split(sizes), shapes, strict=True)}
        return full_loss(lambda *a, **k: torch.func.functional_call(ref, views, a, k))

    with sdpa_kernel([SDPBackend.MATH]):
        H = torch.autograd.functional.hessian(f, theta)
        v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(9), dtype=D)
        v = v / v.norm()
        quadratic = float(v @ H @ v)
        # two step lengths: a ReLU kink may lie within the longer one
        seconds = [float((f(theta + e * v) - 2 * f(theta) + f(theta - e * v)) / e**2)
                   for e in (1e-4, 1e-5)]
    if second_differences:  # not for a loss computed in float32 (Hugging Face's own losses)
        assert any(abs(quadratic - s) <= 1e-5 * abs(quadratic) + 1e-5 for s in seconds), \
            (quadratic, seconds)
    return theta, H


def assert_hessian(obj, H, rtol=1e-9):
    V = torch.randn(obj.n, 3, generator=torch.Generator().manual_seed(3), dtype=D)
    HV = obj.hvp(V)
    assert torch.allclose(HV, H @ V, rtol=rtol, atol=rtol * float(H.abs().max()))


# ---------------------------------------------------------------------- models
class TiedLM(nn.Module):
    """A causal transformer language model whose output head is the token embedding."""

    def __init__(self, vocab=7, d=4, length=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.position = nn.Parameter(0.1 * torch.randn(length, d))
        self.block = nn.TransformerEncoderLayer(d, 2, 8, dropout=0.1, batch_first=True)
        self.head = nn.Linear(d, vocab)
        self.head.weight = self.embed.weight
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, ids):
        h = self.embed(ids) + self.position[: ids.shape[1]]
        return self.head(self.block(h, src_mask=self.mask, is_causal=True))


class PatchViT(nn.Module):
    """ViT-style: 2×2 patches of a 4×4 image, one encoder layer, mean pooling, a head."""

    def __init__(self, d=4, classes=3):
        super().__init__()
        self.patch = nn.Conv2d(1, d, 2, stride=2)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, 2, 8, dropout=0.0, batch_first=True), 1,
            enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(tokens).mean(1))


class MHAClassifier(nn.Module):
    def __init__(self, d=4, classes=3):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x, padding):
        out, _ = self.attn(x, x, x, key_padding_mask=padding, need_weights=False)
        return self.head(out.mean(1))


def lm_data(n=6, vocab=7, length=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=gen)
    return ids[:, :-1], ids[:, 1:]


def token_ce(logits, target):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


# ---------------------------------------------------------------------- attention
@pytest.mark.slow
def test_tied_causal_transformer_matches_the_dense_hessian_and_stays_untouched():
    torch.manual_seed(0)
    model = TiedLM().to(D).eval()
    ids, target = lm_data()
    snap = Snapshot(model)
    obj = ls.Objective.from_model(model, token_ce, DataLoader(TensorDataset(ids, target), 4))
    assert obj.info["tied_parameters"] == {"embed.weight": ["head.weight"]}
    assert obj.n == sum(p.numel() for p in model.parameters())  # one block for the tie
    theta, H = truth(model, lambda call: token_ce(call(ids), target))
    assert torch.equal(obj.theta0, theta)
    assert torch.allclose(obj.value(), token_ce(model(ids), target), rtol=1e-12)
    assert_hessian(obj, H)
    exact = torch.linalg.eigvalsh(H)
    pr = ls.probe(obj)
    assert pr.lambda_max == pytest.approx(float(exact[-1]), rel=1e-8)
    assert pr.lambda_min == pytest.approx(float(exact[0]), rel=1e-8, abs=1e-10)
    snap.check()


def test_a_tied_gradient_is_the_sum_over_the_uses():
    torch.manual_seed(0)
    model = TiedLM().to(D).eval()
    ids, target = lm_data()
    untied = copy.deepcopy(model)
    untied.head.weight = nn.Parameter(model.embed.weight.detach().clone())
    token_ce(untied(ids), target).backward()
    expected = untied.embed.weight.grad + untied.head.weight.grad
    obj = ls.Objective.from_model(model, token_ce, (ids, target))
    assert torch.allclose(obj.unflatten(obj.grad())["embed.weight"], expected, rtol=1e-12)


def test_vit_and_multihead_attention_models_match_the_dense_hessian():
    torch.manual_seed(1)
    vit = PatchViT().to(D).eval()
    X = torch.randn(5, 1, 4, 4, dtype=D)
    y = torch.tensor([0, 1, 2, 1, 0])
    obj = ls.Objective.from_model(vit, F.cross_entropy, (X, y), batch_size=2)
    _, H = truth(vit, lambda call: F.cross_entropy(call(X), y))
    assert_hessian(obj, H)
    with torch.profiler.profile() as prof:  # value() runs without grad: the encoder's fast path
        value = obj.value(obj.theta0 + 0.01)
    assert any("transformer_encoder_layer_fwd" in e.name for e in prof.events())
    shifted = obj.unflatten(obj.theta0 + 0.01)
    reference = F.cross_entropy(torch.func.functional_call(vit, shifted, X), y)
    assert value.item() == pytest.approx(reference.item(), rel=1e-12)

    mha = MHAClassifier().to(D).eval()
    x = torch.randn(5, 3, 4, dtype=D)
    padding = torch.zeros(5, 3, dtype=torch.bool)
    padding[1, 2] = padding[3, 1:] = True
    snap = Snapshot(mha)
    obj = ls.Objective.from_model(mha, F.cross_entropy, [(x[:3], padding[:3], y[:3]),
                                                         (x[3:], padding[3:], y[3:])])
    _, H = truth(mha, lambda call: F.cross_entropy(call(x, padding), y))
    assert_hessian(obj, H)
    assert "math kernel" in obj.info["attention"]
    snap.check()


# ---------------------------------------------------------------------- shared modules
def test_a_module_used_twice_is_one_block_and_the_model_is_left_exactly_as_it_was():
    torch.manual_seed(0)
    layer = nn.Linear(3, 3).to(D)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    X, y = torch.randn(8, 3, dtype=D), torch.randn(8, 3, dtype=D)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snap = Snapshot(model)
    obj = ls.Objective.from_model(model, F.mse_loss, (X, y), batch_size=3)
    assert obj.n == 12

    def by_hand(t):
        W, b = t[:9].view(3, 3), t[9:]
        return F.mse_loss(torch.tanh(X @ W.T + b) @ W.T + b, y)

    H = torch.func.hessian(by_hand)(obj.theta0)
    assert torch.allclose(obj.hessian(), H, rtol=1e-10, atol=1e-12)
    ls.probe(obj)
    ls.spectrum(obj, k=2)
    snap.check()
    assert len(list(model.parameters())) == 2 and model[0].weight is model[2].weight
    before = layer.weight.detach().clone()
    F.mse_loss(model(X), y).backward()
    optimizer.step()  # an optimizer made before the analysis still moves the layer
    assert not torch.equal(layer.weight.detach(), before)


@pytest.mark.slow
def test_every_public_call_leaves_a_tied_model_untouched(tmp_path):
    torch.manual_seed(2)
    model = TiedLM().to(D).train()  # the caller trains: modes must survive too
    model.block.dropout.eval()
    ids, target = lm_data()
    snap = Snapshot(model)
    obj = ls.Objective.from_model(model, token_ce, (ids, target), batch_size=4)
    obj.value(), obj.grad(), obj.hvp(torch.ones(obj.n, dtype=D))
    ls.probe(obj)
    ls.density(obj, probes=1, lanczos_steps=5)
    ls.trace(obj, probes=2)
    frame = directions.random(obj, 2, seed=0)
    surface.surface(obj, frame, resolution=3)
    pointwise.Replica(obj).value(obj.theta0 + 0.01)
    trained = ls.Objective.from_model(model, token_ce, (ids, target), mode="train")
    trained.hvp(torch.ones(trained.n, dtype=D))
    ls.cost_plan(obj)
    ls.anytime_probe(obj, samples=2, subsets=2, probes=1, lanczos_steps=4)
    one_batch = ls.anytime_probe(trained, samples=2, subsets=2, density=False)
    assert [s.name for s in one_batch.stages] == ["extremes"]  # train mode: no batches to draw
    ls.spectrum(obj, 1, "largest", warm=ls.spectrum(obj, 1, "largest"))
    snap.check()


@pytest.mark.slow
def test_a_subset_of_a_tied_lm_is_the_loss_on_those_samples_and_the_first_stage_runs():
    torch.manual_seed(0)
    model = TiedLM().to(D).eval()
    ids, target = lm_data(n=8)
    snap = Snapshot(model)
    obj = ls.Objective.from_model(model, token_ce, (ids, target), batch_size=3)
    chosen = torch.tensor([0, 2, 3, 7])   # across three batches: joined up to 3 samples
    sub = obj.subset(chosen)
    alone = ls.Objective.from_model(model, token_ce, (ids[chosen], target[chosen]))
    assert sub.info["tied_parameters"] == {"embed.weight": ["head.weight"]}
    assert sub.value().item() == pytest.approx(alone.value().item(), rel=1e-12)
    V = torch.randn(obj.n, 2, generator=torch.Generator().manual_seed(1), dtype=D)
    assert torch.allclose(sub.hvp(V), alone.hvp(V), rtol=1e-10, atol=1e-12)
    result = ls.anytime_probe(obj, samples=2, subsets=3, density=False)
    assert [s.name for s in result.stages] == ["subsample", "extremes"]
    full = ls.spectrum(obj, 1, "both")
    assert result.estimates["lambda_max"].value == pytest.approx(full.largest.values[0].item(),
                                                                 rel=1e-6)
    snap.check()


def test_a_subset_of_a_module_used_twice_keeps_its_one_block():
    torch.manual_seed(0)
    layer = nn.Linear(3, 3).to(D)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    X, y = torch.randn(12, 3, dtype=D), torch.randn(12, 3, dtype=D)
    snap = Snapshot(model)
    obj = ls.Objective.from_model(model, F.mse_loss, (X, y), batch_size=5)
    chosen = torch.tensor([1, 4, 5, 11])
    sub, alone = obj.subset(chosen), ls.Objective.from_model(model, F.mse_loss,
                                                             (X[chosen], y[chosen]))
    assert sub.n == alone.n == 12
    assert torch.allclose(sub.hessian(), alone.hessian(), rtol=1e-12, atol=1e-14)
    ls.anytime_probe(obj, samples=3, subsets=3, probes=2, lanczos_steps=5)
    snap.check()
    assert model[0].weight is model[2].weight


# ---------------------------------------------------------------------- Hugging Face
transformers = pytest.importorskip("transformers")


def _quiet():
    transformers.utils.logging.set_verbosity_error()


def tiny_bert(labels=3):
    _quiet()
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=13, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8, max_position_embeddings=8, num_labels=labels,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return transformers.BertForSequenceClassification(config).to(D).eval()


def tiny_gpt2():
    _quiet()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=11, n_positions=6, n_embd=4, n_layer=1,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).to(D).eval()


def bert_batches():
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 13, (5, 6), generator=gen)
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[1, 4:] = mask[3, 2:] = 0
    labels = torch.tensor([0, 2, 1, 1, 0])
    whole = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    parts = [{k: v[:3] for k, v in whole.items()}, {k: v[3:] for k, v in whole.items()}]
    return whole, parts


BERT_PARAMS = ["classifier.*", "bert.pooler.*", "bert.encoder.layer.0.attention.self.*"]


def test_hugging_face_bert_with_its_own_loss_and_with_a_user_loss():
    model = tiny_bert()
    whole, parts = bert_batches()
    snap = Snapshot(model)
    inputs = {k: v for k, v in whole.items() if k != "labels"}
    for loss, full in (("model", lambda call: call(**whole).loss),
                       (F.cross_entropy,
                        lambda call: F.cross_entropy(call(**inputs).logits, whole["labels"]))):
        obj = ls.Objective.from_model(model, loss, parts, params=BERT_PARAMS)
        names = obj.info["parameters"]
        theta, H = truth(model, full, names, second_differences=loss != "model")
        assert torch.equal(obj.theta0, theta)
        assert obj.value().item() == pytest.approx(float(full(model)), rel=1e-6)
        assert_hessian(obj, H, rtol=1e-6)  # the model's own loss is computed in float32
    snap.check()


@pytest.mark.slow
def test_a_subset_of_hugging_face_dict_batches_of_different_lengths():
    """Padded batches of different sequence lengths: chosen samples of each stay in their own
    batch (never joined), and the model's own loss weighs their label tokens as the full data
    does."""
    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(6)
    long_ids, short_ids = torch.randint(0, 11, (3, 6), generator=gen), torch.randint(
        0, 11, (3, 4), generator=gen)
    parts = [{"input_ids": long_ids, "labels": long_ids.clone()},
             {"input_ids": short_ids, "labels": short_ids.clone()}]
    parts[0]["labels"][1, :3] = -100
    snap = Snapshot(model)
    params = ["transformer.wte.weight", "transformer.h.0.attn.*"]
    obj = ls.Objective.from_model(model, "model", parts, params=params)
    sub = obj.subset([1, 2, 4])
    assert len(list(sub.model_loss.batches)) == 2
    picked = [{k: v[[1, 2]] for k, v in parts[0].items()}, {k: v[[1]] for k, v in parts[1].items()}]
    alone = ls.Objective.from_model(model, "model", picked, params=params)
    assert sub.value().item() == pytest.approx(alone.value().item(), rel=1e-12)
    V = torch.randn(obj.n, 2, generator=torch.Generator().manual_seed(2), dtype=D)
    assert torch.allclose(sub.hvp(V), alone.hvp(V), rtol=1e-9, atol=1e-12)
    ls.anytime_probe(obj, samples=2, subsets=3, density=False)
    snap.check()


def test_hugging_face_gpt2_tied_head_with_its_own_loss_counts_shifted_tokens():
    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 11, (5, 6), generator=gen)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt that is not scored
    labels[4, 1:] = -100  # leaves nothing to predict in that sequence after the shift
    whole = {"input_ids": ids, "labels": labels}
    parts = [{k: v[:1] for k, v in whole.items()}, {k: v[1:] for k, v in whole.items()}]
    snap = Snapshot(model)
    params = ["transformer.wte.weight", "transformer.h.0.attn.*"]
    obj = ls.Objective.from_model(model, "model", parts, params=params)
    assert obj.info["tied_parameters"] == {"transformer.wte.weight": ["lm_head.weight"]}
    assert "causal shift" in obj.info["batch_weights"]
    _, H = truth(model, lambda call: call(**whole).loss, obj.info["parameters"],
                 second_differences=False)
    assert obj.value().item() == pytest.approx(float(model(**whole).loss), rel=1e-6)
    assert_hessian(obj, H, rtol=1e-5)
    snap.check()
    assert model.lm_head.weight is model.transformer.wte.weight


# ---------------------------------------------------------------------- weighted losses
LOSSES = {
    "class weights": nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 3.0], dtype=D)),
    "ignore_index": nn.CrossEntropyLoss(ignore_index=1),
    "weights, ignore_index and smoothing": nn.CrossEntropyLoss(
        weight=torch.tensor([0.5, 2.0, 1.0], dtype=D), ignore_index=0, label_smoothing=0.1),
    "nll with weights": nn.NLLLoss(weight=torch.tensor([1.0, 0.3, 2.0], dtype=D)),
    "sum": nn.CrossEntropyLoss(reduction="sum"),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_no_result_depends_on_the_batch_size(name):
    loss_fn = LOSSES[name]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(D)
    if "nll" in name:
        model.append(nn.LogSoftmax(-1))
    X = torch.randn(23, 4, dtype=D)
    y = torch.randint(0, 3, (23,))
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=D)
    full = loss_fn(model(X), y)
    _, H = truth(model, lambda call: loss_fn(call(X), y))
    for batch_size in (2, 7, None):
        obj = ls.Objective.from_model(model, loss_fn, (X, y), batch_size=batch_size)
        assert obj.value().item() == pytest.approx(full.item(), rel=1e-12)
        assert torch.allclose(obj.hvp(v), H @ v, rtol=1e-10, atol=1e-12)


def test_a_batch_with_every_target_ignored_is_skipped_not_blamed():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(D)
    X, y = torch.randn(6, 4, dtype=D), torch.tensor([0, 2, 1, -100, -100, -100])
    obj = ls.Objective.from_model(model, F.cross_entropy, (X, y), batch_size=3)
    assert obj.value().item() == pytest.approx(F.cross_entropy(model(X), y).item(), rel=1e-12)
    with pytest.raises(BadInputError, match="anything to average over"):
        ls.Objective.from_model(model, F.cross_entropy, (X[3:], y[3:]))


def test_reductions_landscope_cannot_use_or_that_conflict_are_refused():
    model, data = nn.Linear(2, 1), (torch.randn(4, 2), torch.randn(4, 1))
    with pytest.raises(BadInputError, match="reduction='none'"):
        ls.Objective.from_model(model, nn.MSELoss(reduction="none"), data)
    with pytest.raises(BadInputError, match="make them agree"):
        ls.Objective.from_model(model, nn.MSELoss(), data, reduction="sum")
    summed = ls.Objective.from_model(model, lambda o, t: ((o - t) ** 2).sum(), data,
                                     batch_size=1, reduction="sum")
    assert summed.value().item() == pytest.approx(((model(data[0]) - data[1]) ** 2).sum().item())


# ---------------------------------------------------------------------- data
def test_a_shuffling_loader_is_refused_and_a_plain_one_leaves_the_rng_alone():
    data = TensorDataset(torch.randn(10, 2), torch.randn(10, 1))
    with pytest.raises(BadInputError, match="shuffle=False"):
        ls.Objective.from_model(nn.Linear(2, 1), F.mse_loss, DataLoader(data, 3, shuffle=True))
    model = nn.Linear(2, 1)
    state = torch.get_rng_state()
    obj = ls.Objective.from_model(model, F.mse_loss, DataLoader(data, 3))
    obj.value(), obj.grad()
    assert torch.equal(torch.get_rng_state(), state)  # a DataLoader draws a seed per pass


class Drifting(IterableDataset):
    """Each pass yields new samples, as a stream or a random augmentation does."""

    def __init__(self):
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for i in range(3):
            yield torch.full((2,), float(self.passes + i)), torch.ones(1)


def test_data_that_changes_between_passes_is_caught_with_the_fix():
    obj = ls.Objective.from_model(nn.Linear(2, 1), F.mse_loss, DataLoader(Drifting(), 2))
    obj.value()
    with pytest.raises(BadInputError, match="changed between two passes.*shuffle=False"):
        obj.value(obj.theta0 + 1)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x, scale=None):
        out = {"logits": self.a(x), "aux": self.b(x)}
        return out if scale is None else {k: v * scale for k, v in out.items()}


def test_dict_batches_and_the_output_the_loss_reads():
    torch.manual_seed(0)
    model = DictOut().to(D)
    x, y, s = torch.randn(5, 3, dtype=D), torch.randint(0, 2, (5,)), torch.rand(5, 1, dtype=D)
    batches = [{"x": x[:2], "scale": s[:2], "target": y[:2]},
               {"x": x[2:], "scale": s[2:], "target": y[2:]}]
    for output, pick in ((None, "logits"), ("aux", "aux"),
                         (lambda o: o["logits"] + o["aux"], None)):
        obj = ls.Objective.from_model(model, F.cross_entropy, batches, output=output)
        out = model(x, s)
        logits = out[pick] if pick else out["logits"] + out["aux"]
        assert obj.value().item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)
    with pytest.raises(BadInputError, match="no 'probs'"):
        ls.Objective.from_model(model, F.cross_entropy, batches, output="probs").value()
    with pytest.raises(BadInputError, match="none of them is a target"):
        ls.Objective.from_model(model, F.cross_entropy, [{"x": x}]).value()


def test_half_precision_models_are_analysed_in_float32_and_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(torch.bfloat16)
    X, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    snap = Snapshot(model)
    obj = ls.Objective.from_model(model, F.cross_entropy, (X, y))
    assert obj.dtype == torch.float32 and obj.info["model_dtype"] == "bfloat16"
    reference = copy.deepcopy(model).float()
    assert obj.value().item() == pytest.approx(F.cross_entropy(reference(X), y).item(), rel=1e-6)
    snap.check()
    with pytest.raises(BadInputError, match="half precision"):
        ls.Objective.from_model(model, F.cross_entropy, (X, y), dtype=torch.float16)


def test_parameters_the_loss_does_not_use_at_all_are_refused_by_name():
    model = nn.ModuleDict({"used": nn.Linear(2, 1), "idle": nn.Linear(2, 1)})
    model.forward = lambda x: model["used"](x)
    with pytest.raises(BadInputError, match="does not depend on any.*idle.weight.*params="):
        ls.Objective.from_model(model, F.mse_loss, (torch.randn(4, 2), torch.randn(4, 1)),
                                params="idle.*")


class FirstOrderSquare(torch.autograd.Function):
    """x² with a backward autograd cannot differentiate again."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_a_once_differentiable_function_is_named_instead_of_giving_wrong_products():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 3), nn.Linear(3, 1)

        def forward(self, x):
            return self.b(FirstOrderSquare.apply(self.a(x)))

    net = Net().to(D)
    data = (torch.randn(5, 2, dtype=D), torch.randn(5, 1, dtype=D))
    obj = ls.Objective.from_model(net, F.mse_loss, data)
    assert obj.info["first_order_only"] == ["FirstOrderSquare"]
    assert obj.grad().shape == (obj.n,)  # values and gradients are unaffected
    with pytest.raises(BadInputError, match="FirstOrderSquare.*once_differentiable"):
        obj.hvp(torch.ones(obj.n, dtype=D))
    after = ls.Objective.from_model(net, F.mse_loss, data, params="b.*")  # after it: exact
    assert "first_order_only" not in after.info
    after.hvp(torch.ones(after.n, dtype=D))


def test_a_model_that_writes_into_its_input_gets_copies_and_the_data_stays():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(3, 1)).to(D)
    X, y = torch.randn(6, 3, dtype=D), torch.randn(6, 1, dtype=D)
    kept = X.clone()
    obj = ls.Objective.from_model(model, F.mse_loss, (X, y), batch_size=4)
    assert "in place" in obj.info["writes_inputs"]
    obj.value(), obj.hvp(torch.ones(obj.n, dtype=D)), ls.probe(obj)
    pointwise.Replica(obj).value(obj.theta0 + 0.1)
    assert torch.equal(X, kept)
    assert obj.value().item() == pytest.approx(F.mse_loss(model(X.clone()), y).item(), rel=1e-12)


class BasicBlockNet(nn.Module):
    """A ResNet basic block with BatchNorm and an in-place ReLU, fed by a dict batch."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.conv2, self.bn2 = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, pixels):
        h = self.relu(self.stem(pixels))
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(h)))))
        return self.head(self.relu(y + h).flatten(1))


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.slow
def test_a_resnet_block_with_batchnorm_and_dict_batches_is_exact_and_left_alone(mode):
    torch.manual_seed(0)
    model = BasicBlockNet().to(D)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    model.train()  # the caller is training: running statistics must not move
    X, y = torch.randn(6, 1, 4, 4, dtype=D), torch.tensor([0, 1, 2, 1, 0, 2])
    batches = [{"pixels": X[:4], "labels": y[:4]}, {"pixels": X[4:], "labels": y[4:]}]
    snap = Snapshot(model)
    obj = ls.Objective.from_model(model, F.cross_entropy, batches, mode=mode)
    reference = copy.deepcopy(model).train(mode == "train")

    def full(call):  # train mode: batch statistics per batch, as the Objective defines it
        if mode == "eval":
            return F.cross_entropy(call(pixels=X), y)
        parts = [F.cross_entropy(call(pixels=b["pixels"]), b["labels"]) * len(b["labels"])
                 for b in batches]
        return sum(parts) / len(y)

    _, H = truth(reference, full)
    assert_hessian(obj, H)
    ls.probe(obj)
    if mode == "eval":
        pointwise.bn_value(obj, obj.theta0 + 0.01)
        surface.surface(obj, directions.random(obj, 2, seed=0), resolution=3)
    snap.check()
