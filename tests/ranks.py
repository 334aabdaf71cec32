"""Run a function on several local processes joined by a gloo process group (for the tests of
data parallelism): ``run_ranks(fn, 2, *args)`` returns each rank's return value, in rank order.

Each rank is a fresh interpreter (``spawn``) with one torch thread; ``fn`` must be importable
(a module-level function). A rank that raises makes ``run_ranks`` raise with its traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out: str, fn, args, timeout_s: float,
           backend: str):
    import datetime

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = ("ok", fn(*args))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        result = ("error", f"rank {rank}: {type(error).__name__}: {error}\n"
                           + traceback.format_exc())
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    if result[0] == "ok":
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, timeout_s: float = 60.0, allow_errors: bool = False,
              backend: str = "gloo"):
    """``fn(*args)`` on ``world`` ranks; their results in rank order. With ``allow_errors``,
    a rank's error comes back as ``("error", message)`` instead of raising. ``backend="nccl"``
    puts rank r on GPU r."""
    with tempfile.TemporaryDirectory() as out:
        # not mp.spawn(join=True): it stops every rank as soon as one exits, and the tests of a
        # rank that dies need to see what the others do then
        context = mp.start_processes(_entry, nprocs=world, join=False, start_method="spawn",
                                     args=(world, free_port(), out, fn, args, timeout_s,
                                           backend))
        for process in context.processes:
            process.join(3 * timeout_s)
            if process.is_alive():
                process.kill()
        results = []
        for rank in range(world):
            path = os.path.join(out, f"rank{rank}.pt")
            status, value = torch.load(path, weights_only=False) if os.path.exists(path) \
                else ("error", f"rank {rank} wrote nothing")
            if status == "error" and not allow_errors:
                raise AssertionError(value)
            results.append(value if status == "ok" else ("error", value))
        return results


FACTORY = """import torch
def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).double()
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(37, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (37,),
                                                                              generator=g)
"""


def cli_options(directory: Path) -> list[str]:
    """``--model`` and ``--data`` of a float64 tanh MLP on 37 samples, written to ``directory``."""
    factory = Path(directory) / "factory.py"
    factory.write_text(FACTORY)
    return ["--model", f"{factory}:model", "--data", f"{factory}:data"]


def landscope(args: list, ranks: int = 1) -> subprocess.CompletedProcess:
    """``landscope ARGS`` in one process, or under ``torchrun --nproc-per-node RANKS`` (one thread
    per process)."""
    bin_dir = Path(sys.executable).parent
    launch = [] if ranks == 1 else [bin_dir / "torchrun", "--nproc-per-node", str(ranks),
                                    "--no-python"]
    return subprocess.run([*launch, bin_dir / "landscope", *map(str, args)], text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          timeout=300)
