"""The shared nearest-row selection: whichever path it takes, it keeps the same entries as
``topk``, and the neighbour means are those of the brute-force neighbours; so does the cache
of candidates for recurring queries, whatever rows it answers from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowmatch.neighbours import (
    CACHE_MAX_ROUNDS,
    GROUPED_MIN_RATIO,
    PARTITION_MAX_COLUMNS,
    NearestCache,
    _count_at_least,
    mean_of_nearest,
    top_indices,
    worth_caching,
)


@pytest.mark.parametrize(
    ("m", "k"),
    [
        (300, 50),  # argpartition
        (PARTITION_MAX_COLUMNS + 1, 50),  # group maxima: a long row
        (PARTITION_MAX_COLUMNS + 7, 10),  # group maxima, trailing columns outside the groups
        (4_000, 50),  # argpartition: shorter than GROUPED_MIN_RATIO · k
        (300, 5),  # topk: few kept
        (40, 50),  # k above the row length: every column
    ],
)
def test_top_indices_keep_the_same_entries_as_topk(m: int, k: int) -> None:
    scores = torch.randn(64, m, generator=torch.Generator().manual_seed(m + k))
    got = top_indices(scores, k)
    want = scores.topk(min(k, m), dim=1).indices
    assert got.shape == want.shape and got.dtype == torch.int64
    assert torch.equal(got.sort(dim=1).values, want.sort(dim=1).values)


def test_group_maxima_find_entries_that_crowd_into_one_group_and_ties() -> None:
    """The largest entries of a row can all sit in one group (columns j, j + G, …) or in the
    trailing columns; ties keep k distinct columns holding the k largest values."""
    k, m = 10, GROUPED_MIN_RATIO * 10 + 3
    scores = torch.rand(6, m, generator=torch.Generator().manual_seed(3))
    g = int(np.sqrt(m / k) / 2)
    groups = m // g
    scores[0, 5 + groups * torch.arange(g)] = 2.0 + torch.arange(g, dtype=torch.float32)
    scores[1, -3:] = 5.0  # the trailing columns hold the three largest
    scores[2] = 1.0  # every entry ties
    scores[3, ::7] = 1.5  # many ties above the rest
    _same_sets(scores, top_indices(scores, k), k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_of_nearest_is_the_mean_over_the_brute_force_neighbours(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    query, base = torch.randn(37, 8, generator=gen), torch.randn(500, 8, generator=gen)
    values = torch.randn(500, 3, generator=gen, dtype=dtype)
    got = mean_of_nearest(query, base, values, k=25, chunk=16)  # three chunks
    nearest = (query @ base.T).topk(25, dim=1).indices
    want = values[nearest].mean(1)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _same_sets(sim: torch.Tensor, got: torch.Tensor, k: int) -> None:
    """Each row of ``got`` holds k distinct columns whose values are the row's k largest (a
    different column is allowed only where values tie)."""
    assert got.shape == (len(sim), k)
    assert all(len(set(row.tolist())) == k for row in got)
    want = sim.topk(k, dim=1).values.sort(dim=1).values
    assert torch.equal(sim.gather(1, got).sort(dim=1).values, want)


@pytest.mark.parametrize("m", [300, PARTITION_MAX_COLUMNS + 1])
def test_nearest_cache_equals_the_full_search_while_the_queries_move(m: int) -> None:
    gen = torch.Generator().manual_seed(m)
    rng = np.random.default_rng(0)
    base = torch.nn.functional.normalize(torch.randn(m, 16, generator=gen), dim=1)
    base[1] = base[0]  # a duplicate row: every query ties on it
    rows = torch.nn.functional.normalize(torch.randn(120, 16, generator=gen), dim=1)
    cache = NearestCache(base, 20, len(rows), spare=40)
    turn = torch.eye(16)
    for step in range(12):
        turn = turn + (0.3 if step == 6 else 0.02) * torch.randn(16, 16, generator=gen)
        ids = np.sort(rng.choice(len(rows), 70, replace=False))
        sim = rows[ids] @ turn.T @ base.T
        _same_sets(sim, cache.nearest(sim, ids), 20)
    assert cache.kept > 0 and cache.useful  # rows were answered from their candidates ...
    assert cache.searched > len(rows)  # ... and some, after the large turn, searched again


def test_nearest_cache_means_equal_mean_of_nearest() -> None:
    gen = torch.Generator().manual_seed(1)
    query, base = torch.randn(300, 8, generator=gen), torch.randn(700, 8, generator=gen)
    values = torch.randn(700, 3, generator=gen, dtype=torch.float64)
    cache = NearestCache(base, 25, 300)
    ids = np.arange(300)
    for _ in range(2):  # searched in full, then answered from the candidates
        got = cache.means(query, ids, values)
        torch.testing.assert_close(got, mean_of_nearest(query, base, values, 25))
    assert cache.kept == 300 and cache.searched == 300


def test_nearest_cache_with_no_spare_candidates_searches_every_row() -> None:
    base = torch.randn(30, 4, generator=torch.Generator().manual_seed(2))
    cache = NearestCache(base, 50, 10)  # k and spare clipped to the 30 rows
    sim = torch.randn(10, 4) @ base.T
    _same_sets(sim, cache.nearest(sim, np.arange(10)), 30)


@pytest.mark.parametrize("m", [7, 8, 2040, 2041, 5000])
def test_count_at_least_counts_every_column(m: int) -> None:
    rng = np.random.default_rng(m)
    block = rng.standard_normal((9, m)).astype(np.float32)
    kth = np.quantile(block, 0.1, axis=1).astype(np.float32)  # most columns reach it
    np.testing.assert_array_equal(_count_at_least(block, kth), (block >= kth[:, None]).sum(1))


def test_nearest_cache_stops_trying_candidates_that_keep_failing() -> None:
    gen = torch.Generator().manual_seed(3)
    base, rows = torch.randn(400, 8, generator=gen), torch.randn(50, 8, generator=gen)
    cache = NearestCache(base, 20, len(rows), spare=30)
    ids = np.arange(50)
    for _ in range(4):  # a new random map every call: the old candidates rarely hold
        sim = rows @ torch.randn(8, 8, generator=gen) @ base.T
        _same_sets(sim, cache.nearest(sim, ids), 20)
    assert not cache.useful
    searched = cache.searched
    sim = rows @ base.T
    _same_sets(sim, cache.nearest(sim, ids), 20)
    assert cache.searched == searched  # no longer counted: plain full searches


def test_worth_caching_only_where_rows_come_back_often() -> None:
    base = torch.zeros(10, 2)
    assert worth_caching(base, CACHE_MAX_ROUNDS * 1000, 1000)
    assert not worth_caching(base, CACHE_MAX_ROUNDS * 1000 + 1, 1000)
