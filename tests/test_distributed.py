"""flowmatch.distributed and Moments.all_reduce across two gloo processes (tests/_spawn.py),
and the single-process fall-backs."""

from __future__ import annotations

import pytest
import torch
from _spawn import run_ranks

import flowmatch.distributed as fd
from flowmatch.streaming import Moments, moments_of_batches

SPLIT = 1234  # rank 0 holds rows [:SPLIT], rank 1 the rest: shards of uneven sizes


def _rows() -> torch.Tensor:
    """Rows  # (3001, 16) float64 around an offset of 1e3, anisotropic."""
    g = torch.Generator().manual_seed(0)
    scales = 10.0 ** torch.linspace(1.0, -1.0, 16, dtype=torch.float64)
    return torch.randn(3001, 16, generator=g, dtype=torch.float64) * scales + 1e3


def _state(m: Moments) -> dict:
    return {"count": m.count, **m.to_state()[0]}


def _each_rank(x: torch.Tensor) -> dict:
    """What one rank of a two-process job computes; the test process checks it."""
    joined = fd.init_from_env(backend="gloo", timeout_s=30)
    r = fd.rank()
    shard = x[:SPLIT] if r == 0 else x[SPLIT:]
    out = {"joined": joined, "rank": r, "world_size": fd.world_size(), "is_main": fd.is_main()}
    out["moments"] = _state(moments_of_batches(shard.split(100)).all_reduce())
    lone = Moments.of(x) if r == 0 else Moments.empty(x.shape[1])
    out["moments_one_rank_empty"] = _state(lone.all_reduce())
    out["mean"] = fd.all_reduce_mean(torch.tensor([1.0, 2.0]) * (r + 1))
    out["sum"] = fd.all_reduce_sum(torch.tensor([r + 1], dtype=torch.int64))
    out["gathered"] = fd.all_gather(torch.tensor([10.0 * r]))
    out["broadcast"] = fd.broadcast_object({"from": r, "items": [r, "x"]}, src=1)
    fd.barrier()
    try:
        Moments.empty(3 + r).all_reduce()
    except ValueError as err:
        out["width_error"] = str(err)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_ranks(_each_rank, 2, _rows(), timeout=60, init=False)


def test_each_rank_joins_the_job_from_the_environment(ranks):
    assert [(o["joined"], o["rank"], o["world_size"], o["is_main"]) for o in ranks] == [
        (True, 0, 2, True),
        (True, 1, 2, False),
    ]


@pytest.mark.parametrize("key", ["moments", "moments_one_rank_empty"])
def test_all_reduced_moments_equal_the_moments_of_all_rows(ranks, key):
    x = _rows()
    whole = Moments.of(x)
    for out in ranks:
        got = out[key]
        assert got["count"] == x.shape[0]
        assert (got["mean"] - whole.mean).abs().max() <= 1e-8 * whole.mean.abs().max()
        assert (got["m2"] - whole.m2).abs().max() <= 1e-8 * whole.m2.abs().max()
        assert torch.equal(got["minimum"], x.min(0).values)
        assert torch.equal(got["maximum"], x.max(0).values)
    first, second = (out[key] for out in ranks)
    assert all(torch.equal(first[k], second[k]) for k in ("mean", "m2", "minimum", "maximum"))


def test_collectives_combine_the_ranks(ranks):
    for out in ranks:
        assert out["mean"].tolist() == [1.5, 3.0]
        assert out["sum"].tolist() == [3]
        assert [t.tolist() for t in out["gathered"]] == [[0.0], [10.0]]
        assert out["broadcast"] == {"from": 1, "items": [1, "x"]}
        assert "different widths [3, 4]" in out["width_error"]


def _fail_on_rank_one() -> None:
    if fd.rank() == 1:
        raise ValueError("rank one gives up")
    fd.barrier()  # rank 0 waits for a rank that never comes: the helper must not hang


def test_run_ranks_reports_a_failing_rank():
    with pytest.raises(RuntimeError, match="^rank 1 failed:\n(.|\n)*rank one gives up"):
        run_ranks(_fail_on_rank_one, 2, timeout=60)


def test_run_ranks_wants_a_module_level_function():
    with pytest.raises(ValueError, match="module-level"):
        run_ranks(lambda: None, 2)


def test_one_process_falls_back_to_identities(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    assert fd.init_from_env() is False and not fd.is_initialized()
    assert (fd.rank(), fd.world_size(), fd.is_main()) == (0, 1, True)
    fd.barrier()
    t = torch.tensor([1.0, 2.0])
    assert fd.all_reduce_mean(t) is t and t.tolist() == [1.0, 2.0]
    assert fd.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert fd.all_gather(t) == [t]
    obj = {"a": 1}
    assert fd.broadcast_object(obj) is obj
    m = Moments.of(_rows()[:10])
    before = m.copy()
    assert m.all_reduce() is m and torch.equal(m.m2, before.m2) and m.count == 10
    with pytest.raises(TypeError, match="floating-point"):
        fd.all_reduce_mean(torch.tensor([1, 2]))
