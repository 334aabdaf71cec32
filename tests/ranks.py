"""Run a function on several local processes joined by a gloo process group (for the tests of
data parallelism): ``run_ranks(fn, 2, *args)`` returns each rank's return value, in rank order.

Each rank is a fresh interpreter (``spawn``) with one torch thread; ``fn`` must be importable
(a module-level function). A rank that raises makes ``run_ranks`` raise with its traceback.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STARTUP_S = 300.0
"""How long the ranks may take to start: a spawned interpreter imports torch and the test module
first, seconds on an idle machine, far longer on a loaded one. The ranks meet on the parent's
store before they form the process group, so ``timeout_s`` (the collectives') never covers a
rank's start-up."""


def _entry(rank: int, world: int, port: int, out: str, fn, args, timeout_s: float,
           backend: str):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    store = dist.TCPStore("127.0.0.1", port, is_master=False,
                          timeout=datetime.timedelta(seconds=STARTUP_S))
    store.set(f"started/{rank}", "1")
    store.wait([f"started/{other}" for other in range(world)])  # every rank is up
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = ("ok", fn(*args))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        result = ("error", f"rank {rank}: {type(error).__name__}: {error}\n"
                           + traceback.format_exc())
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    if result[0] == "ok":
        dist.destroy_process_group()


def _wait_for_start(store: dist.TCPStore, processes: list, world: int) -> None:
    """Return once every rank has joined ``store``; a rank that exits first, or not joining
    within ``STARTUP_S``, stops every rank and fails with a message naming it."""
    deadline = time.monotonic() + STARTUP_S
    waiting = list(range(world))
    while waiting:
        waiting = [rank for rank in waiting if not store.check([f"started/{rank}"])]
        exited = [(rank, processes[rank].exitcode) for rank in waiting
                  if processes[rank].exitcode is not None]
        if exited or (waiting and time.monotonic() > deadline):
            for process in processes:
                process.kill()
            raise AssertionError(
                ", ".join(f"rank {rank} exited with code {code}" for rank, code in exited)
                + " before joining the others" if exited else
                f"ranks {waiting} did not start within STARTUP_S = {STARTUP_S:.0f} s")
        time.sleep(0.05)


def run_ranks(fn, world: int, *args, timeout_s: float = 60.0, allow_errors: bool = False,
              backend: str = "gloo"):
    """``fn(*args)`` on ``world`` ranks; their results in rank order. ``timeout_s`` is the
    process group's: how long a collective waits for a late rank. With ``allow_errors``, a rank's
    error comes back as ``("error", message)`` instead of raising. ``backend="nccl"`` puts rank r
    on GPU r.

    The parent holds the rendezvous store, on a port the system chose and the parent keeps open
    (no other process can take it between its choice and the ranks' start)."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=STARTUP_S))
    with tempfile.TemporaryDirectory() as out:
        # not mp.spawn(join=True): it stops every rank as soon as one exits, and the tests of a
        # rank that dies need to see what the others do then
        context = mp.start_processes(_entry, nprocs=world, join=False, start_method="spawn",
                                     args=(world, store.port, out, fn, args, timeout_s,
                                           backend))
        _wait_for_start(store, context.processes, world)
        deadline = time.monotonic() + 3 * timeout_s + 60  # a rank that hangs is stopped
        for process in context.processes:
            process.join(max(0.0, deadline - time.monotonic()))
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
    """``landscope ARGS`` in one process, or under ``torchrun --standalone --nproc-per-node RANKS``
    (one thread per process; its rendezvous on a port the system chooses, never a fixed one)."""
    bin_dir = Path(sys.executable).parent
    launch = [] if ranks == 1 else [bin_dir / "torchrun", "--standalone", "--nproc-per-node",
                                    str(ranks), "--no-python"]  # standalone: a free port
    return subprocess.run([*launch, bin_dir / "landscope", *map(str, args)], text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          timeout=300)
