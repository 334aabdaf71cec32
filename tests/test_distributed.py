"""Data parallelism on gloo with 2 processes: every result equals the single-process one.

Each spawn of ranks costs seconds, so one worker runs many analyses and the tests compare them:
the split, uneven and empty shards, the chain engine, train mode with BatchNorm, a failure on
one rank, a rank that dies, and ``torchrun`` running the command line.
"""

from __future__ import annotations

import json
import os
import sys

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
