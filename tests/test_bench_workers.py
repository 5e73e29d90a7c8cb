"""Benchmark worker processes: a failure, a crash or a timeout ends the benchmark with its error;
the parent never waits forever."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks._common import BenchmarkError, run_isolated


def _fails(n: int) -> None:
    raise ValueError(f"n must be positive, got {n}")


def _dies() -> None:
    os._exit(3)


def _sleeps() -> None:
    time.sleep(60)


def _ok(a: int, b: int) -> dict:
    return {"sum": a + b}


def test_result_comes_back():
    assert run_isolated(_ok, 2, 3, what="sum") == {"sum": 5}


def test_worker_error_is_raised_in_the_parent():
    with pytest.raises(BenchmarkError, match="tree at n=-5 failed .*ValueError: n must be"):
        run_isolated(_fails, -5, what="tree at n=-5")


def test_dead_worker_is_reported():
    with pytest.raises(BenchmarkError, match="died without a result \\(exit code 3\\)"):
        run_isolated(_dies, what="probe")


def test_timeout_stops_the_worker():
    start = time.perf_counter()
    with pytest.raises(BenchmarkError, match="did not finish within 0.5 s"):
        run_isolated(_sleeps, what="probe", timeout=0.5)
    assert time.perf_counter() - start < 10


def test_tree_benchmark_ends_with_the_worker_error(monkeypatch):
    """Any worker failure hung `flowmatch bench tree`; now it ends with the error."""
    from benchmarks import tree

    def broken(*args, **kwargs):
        raise MemoryError("out of memory at n=10")

    monkeypatch.setattr(tree, "_measure", broken)
    with pytest.raises(BenchmarkError, match="density_tree at n=10, dim=2 failed.*MemoryError"):
        tree.measure_tree([10], [2], k_neighbors=3, threads=1, tomato=False, recovery_pair=None)
