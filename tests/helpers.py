"""Small models and data shared by the tests (``from helpers import ...``).

Ground truth comes from torch.func.hessian.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv-BN-ReLU-linear on 4×4 single-channel images."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x.reshape(-1, 1, 4, 4))))
        return self.fc(x.flatten(1))


def make_mlp(activation=nn.Tanh, sizes=(4, 5, 3), seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).to(dtype)


def make_cnn(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = SmallCNN().to(dtype)
    with torch.no_grad():  # non-trivial running statistics, as after training
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def classification_data(n=37, features=4, classes=3, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, features, generator=gen, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=gen)
    return X, y


def reference_hessian(model, loss_fn, X, y, obj):
    """torch.func.hessian of the full-data loss in the objective's parametrisation."""
    buffers = dict(model.named_buffers())

    def loss(theta):
        state = {**obj.unflatten(theta), **buffers}
        return loss_fn(torch.func.functional_call(model, state, (X,)), y)

    return torch.func.hessian(loss)(obj.theta0.clone())


class Snapshot:
    """Everything of a model a call must leave alone: Parameter objects and their ties under
    every name, values, buffers, per-module modes, and the global RNG."""

    def __init__(self, model):
        self.model = model
        self.params = [(n, p, p.detach().clone())
                       for n, p in model.named_parameters(remove_duplicate=False)]
        self.buffers = [(n, b, b.clone()) for n, b in model.named_buffers(remove_duplicate=False)]
        self.modes = [(n, m.training) for n, m in model.named_modules(remove_duplicate=False)]
        self.rng = torch.get_rng_state()

    def check(self):
        m = self.model
        now = list(m.named_parameters(remove_duplicate=False))
        assert [n for n, _ in now] == [n for n, _, _ in self.params]
        for (name, p), (_, before, value) in zip(now, self.params, strict=True):
            assert p is before and type(p) is type(before), f"{name} was replaced"
            assert isinstance(p, nn.Parameter) and torch.equal(p.detach(), value), name
        bufs = list(m.named_buffers(remove_duplicate=False))
        for (name, b), (_, before, value) in zip(bufs, self.buffers, strict=True):
            assert b is before and torch.equal(b, value), name
        assert [(n, x.training) for n, x in m.named_modules(remove_duplicate=False)] == \
            self.modes
        assert torch.equal(torch.get_rng_state(), self.rng)


class TiedDictLM(nn.Module):
    """What users train, small: a causal transformer layer (attention), the output head tied to
    the token embedding, a module used twice, keyword inputs from dict batches (``input_ids``)."""

    def __init__(self, vocab=7, d=4, length=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.block = nn.TransformerEncoderLayer(d, 2, 8, dropout=0.0, batch_first=True)
        self.mix = nn.Linear(d, d)  # applied twice
        self.head = nn.Linear(d, vocab)
        self.head.weight = self.embed.weight
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))
        self.double()

    def forward(self, input_ids):
        h = self.block(self.embed(input_ids), src_mask=self.mask, is_causal=True)
        return self.head(torch.tanh(self.mix(torch.tanh(self.mix(h)))))


def token_loss(logits, labels):
    """Mean cross-entropy over every token."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())


def dict_batches(batches=4, size=3, vocab=7, length=5, seed=2):
    """Hugging Face-style batches: ``{"input_ids": ..., "labels": ...}``."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (size, length), generator=g),
             "labels": torch.randint(0, vocab, (size, length), generator=g)}
            for _ in range(batches)]
