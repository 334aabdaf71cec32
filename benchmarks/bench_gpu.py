"""W6 on a GPU: λ_max and λ_min of a ResNet-18 on 50,000 CIFAR-shaped images.

W6 is a CIFAR-style ResNet-18 (conv3x3-64, four stages of two basic blocks at 64/128/256/512
channels, 1x1 convolution + BatchNorm on the skips that change shape; 11,173,962 parameters) on
synthetic images made on the device from a fixed seed (a smooth template per class plus unit pixel
noise, as W5's ``cifar_like``; nothing is downloaded), trained briefly with SGD so that the point is
not the random initialisation, then analysed in eval mode: L is the mean cross-entropy over all the
images, streamed in batches of ``--batch-size``. It lives here rather than in ``workloads.py``: its
data and training run on the device, and its weights are not cached.

Timed: ``landscope.spectrum(obj, k=1, which="largest", eig_rtol=1e-3)`` and the same for "smallest",
each with time, Hessian-vector products, peak device memory and products per second. On CUDA the
target is each within 60 s on one H100-class GPU (PASS/FAIL). On a CPU it is a smoke run::

    python benchmarks/bench_gpu.py --device cpu --samples 512

which trains two steps and caps the products (``--max-products``), so it only shows that the
path runs.

On N GPUs, under ``torchrun``::

    torchrun --nproc-per-node N benchmarks/bench_gpu.py
    torchrun --nproc-per-node 2 benchmarks/bench_gpu.py --device cpu --samples 256  # gloo smoke

each rank takes the GPU ``LOCAL_RANK`` and joins the NCCL group
(:func:`landscope.distributed.start`; gloo on a CPU). Every rank makes all the images from the same
seed (614 MB in float32 for 50,000: little beside a GPU's memory, and it keeps the data and the
1-GPU run's identical) and ``shard="split"`` keeps its contiguous part, checking on the way that
the ranks made the same data. Every rank trains the same steps; rank 0's parameters and buffers
are then broadcast, so that every rank analyses the same θ even where cuDNN's backward is not
bit-reproducible. Each product is then one all-reduce of the ranks' sums; rank 0 prints.
Efficiency on N GPUs: (products/s on N) / (N × products/s on 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import landscope as ls
from landscope import distributed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from small_resnet import Block  # noqa: E402  (the basic block with projection skips)

TARGET_SECONDS = 60.0
CLASSES = 10


def resnet18() -> nn.Module:
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, stages of 2 blocks, average pool, linear."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU()]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(c_in, c_out, stride), Block(c_out, c_out, 1)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, CLASSES))


def synthetic_cifar(n: int, device: torch.device, seed: int = 0):
    """``n`` images 3x32x32 and labels, drawn on ``device`` from a generator seeded ``seed``."""
    g = torch.Generator(device=device).manual_seed(seed)
    coarse = torch.randn(CLASSES, 3, 4, 4, generator=g, device=device)
    templates = nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear",
                                          align_corners=False)
    y = torch.randint(0, CLASSES, (n,), generator=g, device=device)
    return templates[y] + torch.randn(n, 3, 32, 32, generator=g, device=device), y


def train(model: nn.Module, X, y, steps: int, batch: int = 128, seed: int = 1) -> float:
    """SGD (lr 0.05, momentum 0.9) on random minibatches; returns the last minibatch loss."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator(device=X.device).manual_seed(seed)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, len(X), (min(batch, len(X)),), generator=g, device=X.device)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return float(loss.detach())


def same_on_every_rank(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (nothing without a process group)."""
    if distributed.active():
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor, 0)


def timed(obj, which: str, max_products: int | None, device: torch.device) -> dict:
    """One ``spectrum(k=1, eig_rtol=1e-3)`` call at one end: value, seconds, products, peak
    memory."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    spec = ls.spectrum(obj, k=1, which=which, eig_rtol=1e-3, exact=False, max_products=max_products)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    pairs = spec.largest if which == "largest" else spec.smallest
    products = spec.evidence["hvp_products"]
    return {"which": which, "value": float(pairs.values[0]), "seconds": seconds,
            "products": products, "per_second": products / seconds,
            "converged": spec.evidence.get("converged"),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="images per batch of the loss's passes (bounds memory)")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="SGD steps before the analysis (default 300 on CUDA, 2 on a CPU)")
    parser.add_argument("--max-products", type=int, default=None,
                        help="cap per eigenvalue (default none on CUDA, 4 on a CPU: smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if distributed.launched():
        distributed.start(device)
        if cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        with distributed.quiet_unless_main():
            run(args, device)
    finally:
        distributed.stop()


def run(args, device: torch.device) -> None:
    """Build W6 on ``device``, time both ends of the spectrum and print the table."""
    cuda = device.type == "cuda"
    steps = args.train_steps if args.train_steps is not None else (300 if cuda else 2)
    cap = args.max_products if args.max_products is not None or cuda else 4

    torch.manual_seed(args.seed)
    model = resnet18().to(device)
    n = sum(p.numel() for p in model.parameters())
    X, y = synthetic_cifar(args.samples, device, args.seed)
    start = time.perf_counter()
    last = train(model, X, y, steps)
    same_on_every_rank(model)
    ranks = distributed.world()
    where = f"{ranks} ranks ({device.type}, {'NCCL' if cuda else 'gloo'})" if ranks > 1 else \
        str(device)
    print(f"W6: ResNet-18, {n:,} parameters, {args.samples:,} images on {where}, "
          f"{steps} SGD steps in {time.perf_counter() - start:.1f} s (last batch loss {last:.3f})")

    # graph_cache_samples=0: products stream over the batches (the first-order graph of 50,000
    # images does not fit in device memory)
    # shard="split" (the default) under torchrun: each rank keeps its part of the images
    obj = ls.Objective.from_model(model, nn.functional.cross_entropy, (X, y),
                                  batch_size=args.batch_size, graph_cache_samples=0)
    del X, y  # a rank's Objective holds its own part
    print(f"L = {float(obj.value()):.4f} over {args.samples:,} images in batches of "
          f"{args.batch_size}; products stream per batch"
          + (f"; split over the ranks, {obj.info['data']}" if obj.ranks > 1 else "")
          + (f"; smoke run: at most {cap} products per eigenvalue" if cap else ""))
    rows = [timed(obj, which, cap, device) for which in ("largest", "smallest")]

    print(f"\n{'':8} {'value':>12} {'seconds':>9} {'products':>9} {'products/s':>11} "
          f"{'peak GiB':>9} {'converged':>9}  target")
    for r in rows:
        verdict = "n/a (CPU smoke run)" if not cuda else "n/a (the target is one GPU's)" \
            if obj.ranks > 1 else "PASS" if r["seconds"] <= TARGET_SECONDS else "FAIL"
        name = "λ_max" if r["which"] == "largest" else "λ_min"
        print(f"{name:8} {r['value']:12.5g} {r['seconds']:9.1f} {r['products']:9d} "
              f"{r['per_second']:11.3f} {r['peak_gib']:9.2f} {str(r['converged']):>9}  "
              f"≤ {TARGET_SECONDS:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
