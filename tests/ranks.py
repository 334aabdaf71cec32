"""Run a function on several local processes joined by a gloo process group (for the tests of
data parallelism): ``run_ranks(fn, 2, *args)`` returns each rank's return value, in rank order.

Each rank is a fresh interpreter (``spawn``) with one torch thread; ``fn`` must be importable
(a module-level function). A rank that raises makes ``run_ranks`` raise with its traceback.
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback

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
