"""`landscope probe`: classify the point training stopped at."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from landscope import io
from landscope.cli._common import (
    DType,
    Mode,
    _guard,
    _objective,
    _ProductsProgress,
    app,
    console,
)
from landscope.critical import probe as run_probe
from landscope.render import probe_panel


@app.command()
def probe(
    model: str = typer.Option(None, help="Your network: 'pkg.module:factory' or "
                              "'file.py:factory', a function returning an nn.Module. "
                              "Default: the built-in MLP, trained on the digits here."),
    checkpoint: Path = typer.Option(None, help="Weights for --model (a state_dict saved with "
                                    "torch.save); loaded with weights_only=True."),
    data: str = typer.Option(None, help="'pkg.module:factory' returning (X, y) tensors or a "
                             "DataLoader, or 'digits' (scikit-learn's bundled digits)."),
    loss: str = typer.Option("cross_entropy", help="cross_entropy, mse, model (its own "
                             "loss), or 'pkg.module:fn' "
                             "taking (output, target) and returning the batch mean."),
    dtype: DType = typer.Option(None, help="Analyse in this dtype (default: the model's)."),
    params: str = typer.Option(None, help="Only these parameters, e.g. 'net.2.*' "
                               "(comma-separated names or patterns); the rest stay fixed."),
    mode: Mode = typer.Option(Mode.eval, help="eval: BatchNorm running statistics, no "
                              "dropout. train: batch statistics on fixed batches."),
    k: int = typer.Option(5, min=1, help="Eigenpairs computed at each end of the spectrum."),
    exact: bool = typer.Option(None, "--exact/--iterative", help="Force the dense Hessian or "
                               "the Lanczos path (default: dense for n ≤ 1024)."),
    batch_size: int = typer.Option(None, min=1, help="Evaluate (X, y) data in chunks."),
    seed: int = typer.Option(0, help="Seed of the random start vectors and probes."),
    out: Path = typer.Option(Path("landscope-out"), help="Directory for result.json (and "
                             "the default model's checkpoint, reused on the next run)."),
):
    """Classify the point training stopped at: minimum, saddle (and its index), degenerate,
    or not critical at all, with the Hessian spectrum and the evidence behind the verdict."""
    _guard(lambda: _probe(model, checkpoint, data, loss, dtype, params, mode, k, exact,
                          batch_size, seed, out))


def _probe(model_spec, checkpoint, data_spec, loss_spec, dtype, params, mode, k, exact,
           batch_size, seed, out: Path):
    obj, _ = _objective(model_spec, checkpoint, data_spec, loss_spec, dtype, params, mode,
                        batch_size, seed, out)
    start = time.perf_counter()
    with _ProductsProgress("probing the Hessian") as report:
        result = run_probe(obj, k=k, exact=exact, seed=seed, progress=report)
    seconds = time.perf_counter() - start
    path = io.write_result(out, "probe", {"probe": result.to_dict(), "seconds": seconds,
                                          "command": " ".join(sys.argv)})  # before any printing
    console.print(probe_panel(result, seconds))
    console.print(f"written: {path}")
