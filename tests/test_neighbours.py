"""The shared nearest-row selection: whichever path it takes, it keeps the same entries as
``topk``, and the neighbour means are those of the brute-force neighbours."""

from __future__ import annotations

import pytest
import torch

from flowmatch.neighbours import PARTITION_MAX_COLUMNS, mean_of_nearest, top_indices


@pytest.mark.parametrize(
    ("m", "k"),
    [
        (300, 50),  # argpartition
        (PARTITION_MAX_COLUMNS + 1, 50),  # topk: a long row
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
