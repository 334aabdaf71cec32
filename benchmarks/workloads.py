"""Benchmark workloads W1-W5 for landscope and the peer tools.

W1-W3 use scikit-learn's bundled ``load_digits`` (1797 samples x 64 features, no download),
standardised with ``StandardScaler``. W4 and W5 are the networks people train today, on synthetic
data generated here from a fixed seed (nothing is downloaded): W4 a small causal text transformer
whose output head is tied to its token embedding (it classifies a sequence by predicting its
label token, GPT-style), W5 a ResNet-20 on CIFAR-shaped images. The loss is the mean
cross-entropy over the whole data set, taken as one batch. Each model is trained with Adam
(lr 1e-3, batch 64, seed 0) for 5 epochs (W4: 20, W5: 30) so that it sits somewhere after the
start of training, then put in eval mode. W4 holds 64 sequences and W5 64 images, one training
batch each: on a 2-core CPU their Hessian-vector products already take about 0.5 s, and the
peers' smallest-eigenvalue runs need hundreds of them.

====  ============================================================  =========  ==========
name  model                                                         dtype      parameters
====  ============================================================  =========  ==========
W1    MLP 64-32-10, tanh                                            float64     2,410
W2    MLP 64-128-128-10, ReLU                                       float32    26,122
W3    CNN conv16 3x3 -> BN2d -> ReLU -> conv32 3x3 -> ReLU ->       float32    25,322
      Linear(2048, 10), eval mode (BN uses running statistics)
W4    causal transformer LM classifier: token + position            float32    155,200
      embedding (vocab 64, width 64), 3 pre-norm encoder layers
      (4 heads, MLP 256), final LayerNorm, head tied to the token
      embedding; 64 sequences of 16 tokens, 10 label tokens
W5    ResNet-20 (3 stages x 3 basic blocks, 16/32/64 channels,      float32    269,722
      BatchNorm, identity skips zero-padded where downsampling),
      eval mode; 64 images 3x32x32, 10 classes
====  ============================================================  =========  ==========

Trained weights are cached (``$LANDSCOPE_BENCH_CACHE`` or ``~/.cache/landscope-bench``) and loaded
with ``torch.load(weights_only=True)``, so every process measures the very same model. Training runs
with a fixed 2 torch threads so the weights do not depend on the machine's core count.

Timing hygiene (see :func:`timing_hygiene`): three environment variables must be set *before* the
Python process starts, because libgomp and glibc read them at start-up::

    OMP_WAIT_POLICY=PASSIVE MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1000000000

``make bench`` sets them; ``bench_core.py`` re-executes itself with them when they are missing.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "HYGIENE_ENV",
    "WORKLOADS",
    "Workload",
    "build_workload",
    "cifar_like",
    "cache_dir",
    "digits",
    "label_token_sequences",
    "resnet20",
    "timing_hygiene",
]

# Bump when the definition of a workload or its training changes: old cached weights are ignored.
SPEC_VERSION = 3

#: Environment a benchmark process must be started with (they have no effect if set later).
HYGIENE_ENV = {
    # libgomp's default spin-waiting starves the other thread when other jobs share the 2 cores.
    "OMP_WAIT_POLICY": "PASSIVE",
    # A fixed mmap threshold: otherwise large activation buffers are mmap'ed and page-faulted
    # afresh on every call until a big free raises glibc's dynamic threshold (a fresh process then
    # runs a CNN forward ~2x slower than a warmed one).
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "1000000000",
}

BENCH_THREADS = 2
TRAIN_THREADS = 2

# W4's and W5's synthetic data: classes, W4's vocabulary (the last CLASSES tokens are the label
# tokens), sequence length and the content tokens that mark each class.
CLASSES = 10
VOCAB = 64
SEQ_LEN = 16
KEYS_PER_CLASS = 3


def restart_with_hygiene() -> None:
    """Re-exec the running script with :data:`HYGIENE_ENV` set (they only act at process start)."""
    missing = {k: v for k, v in HYGIENE_ENV.items() if os.environ.get(k) != v}
    if missing and os.environ.get("LANDSCOPE_BENCH_REEXEC") != "1":
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  dict(os.environ, **missing, LANDSCOPE_BENCH_REEXEC="1"))


def timing_hygiene(threads: int = BENCH_THREADS, warn: bool = True) -> list[str]:
    """Prepare this process for timing: ``torch.set_num_threads(threads)``.

    The variables in :data:`HYGIENE_ENV` must already be in the environment when the interpreter
    starts (``make bench`` and ``bench_core.py``'s self re-exec take care of it). Returns the names
    of those that are missing or differ, and warns about them if ``warn``.
    """
    torch.set_num_threads(threads)
    bad = [k for k, v in HYGIENE_ENV.items() if os.environ.get(k) != v]
    if bad and warn:
        warnings.warn(
            "timing hygiene: set " + " ".join(f"{k}={HYGIENE_ENV[k]}" for k in bad)
            + " before starting Python; timings may swing by 2x otherwise",
            RuntimeWarning,
            stacklevel=2,
        )
    return bad


def cache_dir() -> Path:
    """Directory for cached weights and reference spectra (created on demand)."""
    env = os.environ.get("LANDSCOPE_BENCH_CACHE")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "landscope-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------ data
def digits(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits, standardised per feature, as ``(X (1797, 64) of dtype, y (1797,) long)``."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    bunch = load_digits()
    feats = StandardScaler().fit_transform(np.asarray(bunch.data, dtype=np.float64))
    return torch.as_tensor(feats).to(dtype), torch.as_tensor(bunch.target, dtype=torch.long)


def label_token_sequences(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W4's data: ``n`` sequences of :data:`SEQ_LEN` tokens and their label tokens.

    Class c (of :data:`CLASSES`) owns :data:`KEYS_PER_CLASS` content tokens; a sequence is uniform
    content tokens with four positions overwritten by keys of its class, so a model must attend
    over the sequence to tell the class. The target is the label token ``VOCAB - CLASSES + c``.
    """
    g = torch.Generator().manual_seed(seed)
    content = VOCAB - CLASSES
    c = torch.randperm(n, generator=g) % CLASSES
    X = torch.randint(0, content, (n, SEQ_LEN), generator=g)
    keys = torch.randperm(content, generator=g)[:CLASSES * KEYS_PER_CLASS].view(CLASSES, -1)
    pos = torch.rand(n, SEQ_LEN, generator=g).argsort(1)[:, :4]
    pick = torch.randint(0, KEYS_PER_CLASS, (n, 4), generator=g)
    X.scatter_(1, pos, keys[c.unsqueeze(1), pick])
    return X, c + content


def cifar_like(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W5's data: ``n`` images 3x32x32 (float32) and labels in 0..9, CIFAR-shaped.

    Each class has a smooth random template (a 3x4x4 Gaussian pattern upsampled bilinearly); an
    image is its class template plus unit Gaussian pixel noise.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(CLASSES, 3, 4, 4, generator=g)
    templates = nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear",
                                          align_corners=False)
    y = torch.randperm(n, generator=g) % CLASSES
    return templates[y] + torch.randn(n, 3, 32, 32, generator=g), y


# ---------------------------------------------------------------------------------------- models
def _mlp(widths: list[int], activation: type[nn.Module]) -> nn.Module:
    """Linear layers of the given widths with ``activation`` between them (none after the last)."""
    mods: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        if i:
            mods.append(activation())
        mods.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*mods)


class DigitsCNN(nn.Module):
    """conv16 3x3 -> BN2d -> ReLU -> conv32 3x3 -> ReLU -> Linear(32*8*8, 10) on 8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        # Creation order fixes which random numbers each layer's initialisation draws.
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(-1, 1, 8, 8)
        h = torch.relu(self.bn1(self.conv1(h)))
        h = torch.relu(self.conv2(h))
        return self.fc(torch.flatten(h, 1))


class TiedTransformerLM(nn.Module):
    """Causal transformer LM over :data:`VOCAB` tokens whose output head is its token embedding.

    logits = LayerNorm(h_last) E^T, with E the (VOCAB, WIDTH) token embedding shared as one
    Parameter by ``embed`` and ``head`` (GPT-2's tie); h_last is the last position's state.
    """

    def __init__(self, width: int = 64, heads: int = 4, layers: int = 3, mlp: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(0.02 * torch.randn(SEQ_LEN, width))
        layer = nn.TransformerEncoderLayer(width, heads, mlp, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(SEQ_LEN),
                             persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos
        h = self.encoder(h, mask=self.causal, is_causal=True)
        return self.head(self.norm(h[:, -1]))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input, then ReLU (He et al. 2016, CIFAR variant).

    Where the block halves the resolution and doubles the channels, the skip subsamples the input
    and pads the new channels with zeros (option A), so skips carry no parameters.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            skip = nn.functional.pad(skip, (0, 0, 0, 0, 0, self.pad))
        return torch.relu(out + skip)


def resnet20() -> nn.Module:
    """ResNet-20 for 32x32 images: conv16-BN-ReLU, 3 stages x 3 basic blocks, avg-pool, linear."""
    blocks: list[nn.Module] = []
    c_in = 16
    for c_out in (16, 32, 64):
        for i in range(3):
            blocks.append(BasicBlock(c_in, c_out, 2 if (i == 0 and c_out != 16) else 1))
            c_in = c_out
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, CLASSES))


@dataclass(frozen=True)
class Workload:
    name: str
    desc: str
    dtype: torch.dtype
    n_params: int
    epochs: int = 5

    def make(self) -> nn.Module:
        if self.name == "W1":
            return _mlp([64, 32, 10], nn.Tanh)
        if self.name == "W2":
            return _mlp([64, 128, 128, 10], nn.ReLU)
        if self.name == "W3":
            return DigitsCNN()
        if self.name == "W4":
            return TiedTransformerLM()
        if self.name == "W5":
            return resnet20()
        raise KeyError(self.name)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full data set ``(X, y)``."""
        if self.name == "W4":
            return label_token_sequences()
        if self.name == "W5":
            return cifar_like()
        return digits(self.dtype)


WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", "MLP 64-32-10 tanh, float64", torch.float64, 2_410),
    "W2": Workload("W2", "MLP 64-128-128-10 ReLU, float32", torch.float32, 26_122),
    "W3": Workload("W3", "CNN conv16-BN2d-ReLU-conv32-ReLU-linear, float32, eval mode",
                   torch.float32, 25_322),
    "W4": Workload("W4", "causal transformer LM classifier, 3 layers, width 64, head tied to the "
                   "token embedding, float32, eval mode", torch.float32, 155_200, epochs=20),
    "W5": Workload("W5", "ResNet-20 (BatchNorm, skips) on 64 CIFAR-shaped images, float32, "
                   "eval mode", torch.float32, 269_722, epochs=30),
}


def _train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
           batch: int, seed: int) -> None:
    """Adam on shuffled mini-batches; the shuffle has its own generator seeded ``seed + 1``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=shuffle)
        for idx in order.split(batch):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()


def build_workload(name: str, *, epochs: int | None = None, lr: float = 1e-3, batch: int = 64,
                   seed: int = 0, cache: bool = True):
    """Return ``(model, X, y, criterion)`` for workload ``name``.

    The model is trained for ``epochs`` (default: the workload's) or loaded from the cache, in
    eval mode, with no ``.grad`` set; ``X, y`` are the full data set; ``criterion`` is
    ``nn.CrossEntropyLoss()`` (mean reduction). Deterministic for a given seed.
    """
    wl = WORKLOADS[name]
    epochs = wl.epochs if epochs is None else epochs
    X, y = wl.data()
    torch.manual_seed(seed)
    model = wl.make().to(wl.dtype)
    path = cache_dir() / f"{name}-v{SPEC_VERSION}-seed{seed}-ep{epochs}-lr{lr:g}-b{batch}.pt"
    if cache and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        threads = torch.get_num_threads()
        # A fixed thread count fixes the reduction order, hence the weights, on any machine; 2
        # threads (the benchmark setting) reproduce the reference figures of the shared anchors.
        torch.set_num_threads(TRAIN_THREADS)
        try:
            _train(model, X, y, epochs=epochs, lr=lr, batch=batch, seed=seed)
        finally:
            torch.set_num_threads(threads)
        if cache:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
    model.eval()
    for p in model.parameters():
        p.grad = None
    n = sum(p.numel() for p in model.parameters())
    assert n == wl.n_params, (name, n)
    return model, X, y, nn.CrossEntropyLoss()


if __name__ == "__main__":  # quick look: python benchmarks/workloads.py
    timing_hygiene(warn=False)
    for key in WORKLOADS:
        m, X, y, crit = build_workload(key)
        with torch.no_grad():
            out = m(X)
        print(f"{key}: {WORKLOADS[key].desc}; loss {crit(out, y).item():.4f}, "
              f"accuracy {(out.argmax(1) == y).double().mean().item():.3f}")
