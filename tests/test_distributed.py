"""Data parallelism on gloo with 2 processes: every result equals the single-process one.

Each spawn of ranks costs seconds, so one worker runs many analyses and the tests compare them:
the split, uneven and empty shards, the chain engine, train mode with BatchNorm, a failure on
one rank, a rank that dies, ``torchrun`` running the command line, and a Monitor on every
rank of a DistributedDataParallel run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import numpy as np
import pytest
import torch
from helpers import SmallCNN, Snapshot, TiedDictLM, dict_batches, make_mlp, token_loss
from ranks import cli_options, landscope, run_ranks
from torch import nn
from torch.nn.functional import cross_entropy

import landscope as ls
from landscope import distributed

pytestmark = pytest.mark.slow  # processes spawned per test

SAMPLES = 37  # odd: the two shards are uneven (19 and 18)


def _data(n=SAMPLES, features=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, features, generator=g, dtype=torch.float64)
    return X, torch.randint(0, 3, (n,), generator=g)


def _opaque(output, target):
    """Cross-entropy the chain engine does not recognise: the kept autograd graph is used."""
    return cross_entropy(output, target)


def _cnn_batches():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(30, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    return list(zip(X.split(6), y.split(6), strict=True))  # 5 batches: 3 and 2 per rank


def _cnn():
    torch.manual_seed(0)
    model = SmallCNN().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def _objectives(rank: int | None):
    """The Objectives of every case, on this rank (``rank`` None: one process, all the data)."""
    X, y = _data()
    mlp = make_mlp(sizes=(6, 8, 3))
    relu = make_mlp(nn.ReLU, sizes=(6, 8, 3), seed=1)
    uneven = {0: (X[:30], y[:30]), 1: (X[30:], y[30:])}
    empty = {0: (X, y), 1: []}
    given = {None: (X, y)}
    return {
        "split": ls.Objective.from_model(mlp, _opaque, (X, y)),
        "uneven": ls.Objective.from_model(mlp, _opaque, uneven.get(rank, given.get(rank)),
                                          shard="given", engine="loop"),
        "empty": ls.Objective.from_model(mlp, _opaque, empty.get(rank, given.get(rank)),
                                         shard="given", engine="loop"),
        "batches": ls.Objective.from_model(mlp, _opaque, (X, y), batch_size=5, engine="loop"),
        "streaming": ls.Objective.from_model(mlp, _opaque, uneven.get(rank, given.get(rank)),
                                             shard="given", batch_size=4, engine="loop",
                                             graph_cache_samples=10),
        "chain": ls.Objective.from_model(relu, cross_entropy, (X, y), engine="chain"),
        "train": ls.Objective.from_model(_cnn(), cross_entropy, _cnn_batches(), mode="train",
                                         engine="loop"),
    }


def _analyses(obj) -> dict:
    """What the tests compare: L, ∇L, H·V, and probe, spectrum, density and trace on the
    iterative paths (the same products a large model would take)."""
    V = torch.randn(obj.n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    value, grad = obj.value_and_grad()
    pr = ls.probe(obj, k=2, exact=False, probes=3, lanczos_steps=20)
    spec = ls.spectrum(obj, k=3, which="both", exact=False)
    dens = ls.density(obj, probes=3, lanczos_steps=20, exact=False)
    tr = ls.trace(obj, probes=20, exact=False)
    moved = obj.theta0 + 0.01  # a second point: the chain engine is checked there again
    return {"value": value, "grad": grad, "hvp": obj.hvp(V), "moved": obj.hvp(V, moved),
            "kind": pr.kind, "lambda_max": pr.lambda_max, "lambda_min": pr.lambda_min,
            "grad_norm": pr.grad_norm, "fractions": dens.fractions(1e-2),
            "largest": spec.largest.values, "smallest": spec.smallest.values,
            "curve": torch.as_tensor(dens.curve()[1]), "trace": tr.value,
            "engine": obj.info["hvp_engine"], "data": obj.info["data"],
            "engine_name": obj._engine.name,
            "checks": obj.info.get("chain_checks", {}).get("points", 0),
            "ranks": obj.ranks}


def _worker() -> dict:
    """Every case on this rank, then a non-finite loss on rank 1 only."""
    rank = distributed.rank()
    results = {name: _analyses(obj) for name, obj in _objectives(rank).items()}
    X, y = _data()
    if rank == 1:
        X = X.clone()
        X[-1, 0] = float("nan")
    try:
        ls.Objective.from_model(make_mlp(sizes=(6, 8, 3)), _opaque, (X, y), shard="given")
    except Exception as error:  # noqa: BLE001 - compared by the test
        results["failure"] = (type(error).__name__, str(error))
    return results


@pytest.fixture(scope="module")
def runs():
    """Two runs of the worker on 2 ranks, and the single-process references."""
    torch.set_num_threads(1)
    reference = {name: _analyses(obj) for name, obj in _objectives(None).items()}
    return run_ranks(_worker, 2), run_ranks(_worker, 2), reference


CASES = ["split", "uneven", "empty", "batches", "streaming", "chain", "train"]


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_give_the_single_process_answers(runs, case):
    (first, second), _, reference = runs
    ref, got = reference[case], first[case]
    assert got["ranks"] == 2 and ref["ranks"] == 1
    for key in ("value", "grad", "hvp", "moved", "largest", "smallest", "curve"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-12, atol=1e-14, msg=key)
    for key in ("lambda_max", "lambda_min", "grad_norm", "trace"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-14), key
    assert got["kind"] == ref["kind"]
    assert got["fractions"].keys() == ref["fractions"].keys()
    assert got["engine"] == ref["engine"] or case not in ("chain",)
    # every rank holds the same bits (the solvers ran the same steps on both)
    for key in ("value", "grad", "hvp", "moved", "largest", "smallest", "curve"):
        assert torch.equal(first[case][key], second[case][key]), key


def test_each_rank_holds_its_own_part(runs):
    (first, second), _, _ = runs
    assert "rank 0 of 2: samples 0–18 of 37" in first["split"]["data"]
    assert "rank 1 of 2: samples 19–36 of 37" in second["split"]["data"]
    assert "rank 0 of 2: batches 0–2 of 5" in first["train"]["data"]
    assert "rank 1 of 2: batches 3–4 of 5" in second["train"]["data"]
    assert first["chain"]["engine"] == "chain"  # the chain engine runs data-parallel too
    assert first["chain"]["checks"] >= 2  # and is checked at later points on every rank
    assert first["streaming"]["engine_name"] == "streaming"


def test_two_runs_give_the_same_bits(runs):
    """With the engine fixed: ``engine="auto"`` times loop against vmapped products, and the
    faster on the day may round differently (its choice is in ``info["hvp_engine"]``)."""
    (first, _), (again, _), _ = runs
    for case in CASES[1:]:
        for key in ("value", "grad", "hvp", "moved", "largest", "smallest", "curve"):
            assert torch.equal(first[case][key], again[case][key]), (case, key)


def test_a_failure_on_one_rank_stops_every_rank_with_its_message(runs):
    (first, second), _, _ = runs
    kind, text = second["failure"]
    assert kind == "NonFiniteLossError" and "batch 0" in text
    kind, text = first["failure"]
    assert kind == "NonFiniteLossError" and text.startswith("on rank 1: ")


def _users_network(rank: int | None) -> dict:
    """A tied causal transformer with a module used twice on dict batches: L, ∇L, H·V and λ_max
    on this rank (``rank`` None: one process), with the caller's model checked unchanged."""
    model = TiedDictLM()
    snapshot = Snapshot(model)
    obj = ls.Objective.from_model(model, token_loss, dict_batches(), engine="loop")
    V = torch.randn(obj.n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    value, grad = obj.value_and_grad()
    top = ls.spectrum(obj, k=1, which="largest", exact=False)
    snapshot.check()
    return {"value": value, "grad": grad, "hvp": obj.hvp(V), "top": top.largest.values,
            "ranks": obj.ranks, "ties": obj.info["tied_parameters"]}


def _users_network_on_ranks() -> dict:
    return _users_network(distributed.rank())


def test_a_tied_transformer_on_dict_batches_equals_one_process_and_is_left_alone():
    reference = _users_network(None)
    first, second = run_ranks(_users_network_on_ranks, 2)
    assert first["ranks"] == 2 and first["ties"] == {"embed.weight": ["head.weight"]}
    for key in ("value", "grad", "hvp", "top"):
        torch.testing.assert_close(first[key], reference[key], rtol=1e-12, atol=1e-14, msg=key)
        assert torch.equal(first[key], second[key]), key


def _dying_worker() -> str:
    """Rank 1 dies in the middle of the products; rank 0 must stop with a message."""
    obj = ls.Objective.from_model(make_mlp(sizes=(6, 8, 3)), _opaque, _data())
    V = torch.randn(obj.n, 2, dtype=torch.float64)
    obj.hvp(V)
    if distributed.rank() == 1:
        os._exit(3)
    try:
        obj.hvp(V)
    except distributed.RankFailure as error:
        return str(error)
    return "no error"


def test_a_rank_that_dies_ends_the_others_with_a_clear_message():
    results = run_ranks(_dying_worker, 2, allow_errors=True, timeout_s=20)
    assert results[0].startswith("another rank stopped or timed out")
    assert "completed files are kept" in results[0]


def _stalling_worker() -> str:
    """Rank 1 stalls longer than the process group's timeout before a product."""
    import time

    obj = ls.Objective.from_model(make_mlp(sizes=(6, 8, 3)), _opaque, _data())
    if distributed.rank() == 1:
        time.sleep(5)
    try:
        obj.hvp(torch.ones(obj.n, dtype=torch.float64))
    except distributed.RankFailure as error:
        return str(error)
    return "no error"


def test_a_rank_past_the_timeout_ends_the_waiting_rank_with_a_clear_message():
    results = run_ranks(_stalling_worker, 2, allow_errors=True, timeout_s=2)
    assert results[0].startswith("another rank stopped or timed out during a collective")


def test_bad_shard_and_different_data_or_models_are_refused():
    with pytest.raises(ls.errors.BadInputError, match="shard='nope'"):
        ls.Objective.from_model(make_mlp(sizes=(6, 8, 3)), _opaque, _data(), shard="nope")
    for data, model, subset in run_ranks(_mismatches, 2):
        assert "passed other data than rank" in data and "shard='given'" in data
        assert "model (parameters or buffers) differs" in model and "broadcast" in model
        assert "subset() of a data-parallel Objective" in subset and "one process" in subset


def _mismatches() -> tuple[str, str]:
    """The errors of ranks passing different data, then different models (seeded by rank),
    then of a subset of a data-parallel Objective."""
    said = []
    for data_seed, model_seed in ((distributed.rank(), 0), (0, distributed.rank())):
        try:
            ls.Objective.from_model(make_mlp(sizes=(6, 8, 3), seed=model_seed), _opaque,
                                    _data(seed=data_seed))
        except ls.errors.BadInputError as error:
            said.append(str(error))
        else:
            said.append("no error")
    obj = ls.Objective.from_model(make_mlp(sizes=(6, 8, 3)), _opaque, _data())
    try:
        obj.subset([0, 1, 2])
    except ls.errors.BadInputError as error:
        said.append(str(error))
    else:
        said.append("no error")
    return tuple(said)


def test_the_part_of_each_rank_covers_everything_once():
    for items in (0, 1, 5, 37):
        for parts in (1, 2, 3, 8):
            pieces = [distributed.part(items, r, parts) for r in range(parts)]
            assert [i for p in pieces for i in p] == list(range(items))
            assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test on Linux")
def test_torchrun_probe_equals_the_single_process_probe(tmp_path):
    """``torchrun --standalone --nproc-per-node 2 --no-python landscope probe`` prints on rank 0
    only and writes the same verdict and numbers (float64) as one process."""
    args = ["probe", *cli_options(tmp_path), "--k", "2", "--probes", "2", "--lanczos-steps", "20",
            "--iterative"]
    one = landscope([*args, "--out", tmp_path / "one"])
    two = landscope([*args, "--out", tmp_path / "two"], ranks=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("written:") == 1  # rank 1 is silent
    a = json.loads((tmp_path / "one" / "result.json").read_text())["probe"]
    b = json.loads((tmp_path / "two" / "result.json").read_text())["probe"]
    assert a["kind"] == b["kind"]
    for key in ("loss", "grad_norm", "lambda_max", "lambda_min"):
        assert b[key] == pytest.approx(a[key], rel=1e-10), key
    assert b["objective"]["ranks"] == 2


def test_a_distributed_sampler_is_refused_with_the_fix():
    X, y = _data()
    dataset = torch.utils.data.TensorDataset(X, y)
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=2, rank=0,
                                                              shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler)
    with pytest.raises(ls.errors.BadInputError, match="pads the data with repeated samples.*"
                       "shard='given'"):
        ls.Objective.from_model(make_mlp(sizes=(6, 8, 3)), _opaque, loader)


def _on_gpus() -> dict:
    """The split case on this rank's GPU, moved back to the CPU for the comparison."""
    X, y = _data()
    obj = ls.Objective.from_model(make_mlp(sizes=(6, 8, 3)), _opaque, (X, y), engine="loop",
                                  device=f"cuda:{distributed.rank()}")
    return {key: value.cpu() if isinstance(value, torch.Tensor) else value
            for key, value in _analyses(obj).items()}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_with_nccl_give_the_single_process_answers():
    X, y = _data()
    reference = _analyses(ls.Objective.from_model(make_mlp(sizes=(6, 8, 3)), _opaque, (X, y),
                                                  engine="loop"))
    first, second = run_ranks(_on_gpus, 2, backend="nccl")
    for key in ("value", "grad", "hvp", "largest", "smallest"):
        torch.testing.assert_close(first[key], reference[key], rtol=1e-10, atol=1e-12, msg=key)
        assert torch.equal(first[key], second[key]), key


MONITOR_STEPS = 60
MONITOR_OPTIONS = {"every": 2, "check_every": 10, "window": 20, "budget": 1e6}
"""Settings under which the slowly falling loss stalls every window and curvature is measured
each time (the budget never binds, so no column depends on a clock)."""


def _monitored_training(run_dir, train_step, model, monitored: bool):
    """``MONITOR_STEPS`` steps of SGD (``train_step(model, t)`` returns the loss to record),
    under a Monitor of ``run_dir`` with a held batch when ``monitored``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    held = _data(n=32, seed=1)
    with contextlib.ExitStack() as stack:
        monitor = stack.enter_context(ls.monitor.Monitor(
            model, optimizer, run_dir, loss_fn=cross_entropy, held=held,
            **MONITOR_OPTIONS)) if monitored else None
        for t in range(MONITOR_STEPS):
            optimizer.zero_grad()
            loss = train_step(model, t)
            optimizer.step()
            if monitor is not None:
                monitor.step(loss)
    return monitor


def _shard_batch(rank: int, t: int):
    """Step t's mini-batch of 8 samples from rank ``rank``'s shard (every other sample)."""
    X, y = _data(n=64)
    X, y = X[rank::2], y[rank::2]
    i = 8 * t % len(X)
    return X[i:i + 8], y[i:i + 8]


def _ddp_step(model, t):
    X, y = _shard_batch(distributed.rank(), t)
    loss = cross_entropy(model(X), y)
    loss.backward()
    return loss


def _monitored_ddp(run_dir) -> dict:
    """A DDP run with a Monitor of ``run_dir`` on every rank, and its twin without one."""
    runs = {}
    for monitored in (False, True):
        model = nn.parallel.DistributedDataParallel(make_mlp(sizes=(6, 8, 3)))
        rng = torch.get_rng_state()
        monitor = _monitored_training(run_dir, _ddp_step, model, monitored)
        runs[monitored] = {"theta": torch.cat([p.detach().flatten()
                                               for p in model.parameters()]),
                           "rng_kept": torch.equal(rng, torch.get_rng_state())}
    try:
        monitor.record  # noqa: B018 - refused on every rank but 0
        runs["record"] = "read"
    except ls.errors.BadInputError as error:
        runs["record"] = str(error)
    runs["t"] = monitor.t
    return runs


def test_a_monitor_on_every_ddp_rank_records_once_what_one_process_would(tmp_path, one_thread):
    ranks = run_ranks(_monitored_ddp, 2, str(tmp_path / "ddp"), timeout_s=20)  # never hangs
    # one process replays it: rank 0's batches, gradients averaged with rank 1's (as DDP's)
    twin = make_mlp(sizes=(6, 8, 3))

    def averaged_step(model, t):
        twin.load_state_dict(model.state_dict())
        twin.zero_grad()
        losses = [cross_entropy(net(X), y) for net, (X, y)
                  in ((model, _shard_batch(0, t)), (twin, _shard_batch(1, t)))]
        (losses[0] / 2).backward()
        (losses[1] / 2).backward()
        for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
            mine.grad += theirs.grad
        return losses[0]

    _monitored_training(tmp_path / "one", averaged_step, make_mlp(sizes=(6, 8, 3)), True)
    got, want = (ls.monitor.record.read_record(tmp_path / name) for name in ("ddp", "one"))
    assert got.meta["ranks"] == 2 and want.meta["ranks"] == 1 and got.meta["loss_rank"] == 0
    assert got.meta["finished"] and got.meta["steps"] == MONITOR_STEPS
    assert list(got.columns) == list(want.columns)  # the DDP wrapper looked through
    np.testing.assert_array_equal(got["step"], np.arange(MONITOR_STEPS))  # written once
    for name in got.columns:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    timeless = [{key: value for key, value in event.items() if key != "seconds"}
                for event in got.meta["events"]]
    assert len(timeless) == 3 and timeless == [
        {key: value for key, value in event.items() if key != "seconds"}
        for event in want.meta["events"]]
    diagnosis = ls.doctor.diagnose(tmp_path / "ddp")
    assert diagnosis.summary["steps"] == MONITOR_STEPS
    assert diagnosis.summary["curvature_measurements"] == 3
    for rank, run in enumerate(ranks):  # training untouched: bit-identical, RNG kept
        assert torch.equal(run[True]["theta"], run[False]["theta"]) and run[True]["rng_kept"]
        assert run["t"] == MONITOR_STEPS
        assert (run["record"] == "read") == (rank == 0)
    assert "rank 1 keeps no record" in ranks[1]["record"]
