"""flowmatch.streaming: one-pass moments equal the in-memory float64 computation, however
the rows are batched or the partial moments merged."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowmatch.streaming import Moments, moments_of_batches

N, D, OFFSET = 20_000, 64, 1e3


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    """Anisotropic rows  # (N, D) float64: principal scales 10 … 0.1 (well-separated
    eigenvalues), rotated, around a mean of about 1e3."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, D, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    scales = 10.0 ** torch.linspace(1.0, -1.0, D, dtype=torch.float64)
    mean = OFFSET + torch.randn(D, generator=g, dtype=torch.float64)
    return (z * scales) @ q.T + mean


def _in_memory(x: torch.Tensor):
    """Count, mean, covariance (ddof=0), eigenvalues and eigenvectors of ``x`` in memory."""
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / x.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    sign = torch.sign(evecs[evecs.abs().argmax(0), torch.arange(x.shape[1])])
    return x.shape[0], mean, cov, evals, evecs * sign


@pytest.fixture(scope="module")
def reference(data):
    return _in_memory(data)


def _assert_matches(m: Moments, reference, tol: float = 1e-8) -> None:
    n, mean, cov, evals, evecs = reference
    assert m.count == n
    assert (m.mean - mean).abs().max() <= tol * mean.abs().max()
    assert (m.covariance() - cov).abs().max() <= tol * cov.abs().max()
    got_vals, got_vecs = m.pca()
    assert ((got_vals - evals).abs() / evals).max() <= tol
    assert (got_vecs - evecs).abs().max() <= tol


def _uneven_sizes(n: int, seed: int) -> list[int]:
    """Batch sizes 0 … 2500 (empty batches included) summing to ``n``."""
    g = torch.Generator().manual_seed(seed)
    sizes, left = [], n
    while left:
        k = min(left, int(torch.randint(0, 2500, (1,), generator=g)))
        sizes.append(k)
        left -= k
    return sizes


@pytest.mark.parametrize("chunk", [7, 1000, "uneven"])
def test_streaming_moments_equal_the_in_memory_ones(data, reference, chunk):
    sizes = _uneven_sizes(N, 1) if chunk == "uneven" else chunk
    _assert_matches(moments_of_batches(data.split(sizes)), reference)


def test_one_row_at_a_time_equals_the_in_memory_moments(data):
    """Batches of one row (on 4,000 rows, whose eigenvalues stay well separated)."""
    x = data[:4000]
    _assert_matches(moments_of_batches(x.split(1)), _in_memory(x))


def test_update_accumulates_in_place(data, reference):
    m = Moments.empty(D)
    for batch in data.split(3000):
        assert m.update(batch) is m
    _assert_matches(m, reference)


def _balanced(parts: list[Moments]) -> Moments:
    if len(parts) == 1:
        return parts[0].copy()
    half = len(parts) // 2
    return _balanced(parts[:half]).merge(_balanced(parts[half:]))


@pytest.mark.parametrize("order", ["left", "right", "balanced", "shuffled"])
def test_merge_trees_in_any_order_equal_the_in_memory_moments(data, reference, order):
    parts = [Moments.of(b) for b in data.split(_uneven_sizes(N, 2))]
    if order == "left":
        total = Moments.empty(D)
        for p in parts:
            total.merge(p)
    elif order == "right":
        total = parts[-1].copy()
        for p in reversed(parts[:-1]):
            total = p.copy().merge(total)
    elif order == "balanced":
        total = _balanced(parts)
    else:
        perm = torch.randperm(len(parts), generator=torch.Generator().manual_seed(3))
        total = _balanced([parts[i] for i in perm])
    _assert_matches(total, reference)


def test_pca_follows_the_autoencoder_convention(data):
    from flowmatch.autoencoder import FlowAutoencoder

    ae = FlowAutoencoder()
    ae._fit_preprocessing(data)
    evals, evecs = moments_of_batches(data.split(777)).pca()
    assert (evecs - ae.components_).abs().max() <= 1e-8
    assert ((evals - ae.explained_variance_ * ae.scale_**2).abs() / evals).max() <= 1e-8


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 40), max_size=5),
    seed=st.integers(0, 2**16),
)
def test_any_split_merges_to_the_moments_of_all_rows(n, d, cuts, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 50
    bounds = [0, *sorted(min(c, n) for c in cuts), n]
    parts = [Moments.of(x[a:b].reshape(-1, d)) for a, b in zip(bounds, bounds[1:])]
    total = Moments.empty(d)
    for p in reversed(parts):
        total.merge(p)
    whole = Moments.of(x)
    assert total.count == n
    torch.testing.assert_close(total.mean, whole.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(total.m2, whole.m2, rtol=1e-9, atol=1e-9)
    assert torch.equal(total.minimum, x.min(0).values)
    assert torch.equal(total.maximum, x.max(0).values)


def test_constant_columns_are_exact_and_have_zero_variance():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(500, 4, generator=g, dtype=torch.float64)
    x[:, 1], x[:, 3] = 0.1, 3e5
    m = moments_of_batches(x.split(37))
    assert m.constant_columns().tolist() == [False, True, False, True]
    assert m.mean[1] == 0.1 and m.mean[3] == 3e5
    assert (m.m2[[1, 3]] == 0).all() and (m.m2[:, [1, 3]] == 0).all()


def test_any_float_dtype_is_accumulated_in_float64():
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(5)).to(torch.float16)
    m, ref = Moments.of(x), Moments.of(x.double())
    assert m.mean.dtype == m.m2.dtype == torch.float64
    assert torch.equal(m.mean, ref.mean) and torch.equal(m.m2, ref.m2)


def test_merge_leaves_the_other_moments_alone_and_handles_empty_ones():
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a, b = Moments.of(x[:4]), Moments.of(x[4:])
    before = b.to_state()[0]
    assert a.merge(b) is a
    assert all(torch.equal(v, getattr(b, k)) for k, v in before.items())
    assert Moments.empty(2).merge(Moments.empty(2)).count == 0
    c = Moments.empty(2).merge(b)
    c.maximum += 1  # a copy: b is untouched
    assert not torch.equal(c.maximum, b.maximum)
    assert torch.equal(Moments.of(x[:4]).merge(Moments.empty(2)).m2, Moments.of(x[:4]).m2)
    assert Moments.of(x[:0]).count == 0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="dimension mismatch"):
        Moments.empty(3).merge(Moments.empty(4))
    with pytest.raises(ValueError, match="seen 0"):
        Moments.empty(3).covariance()
    with pytest.raises(ValueError, match="ddof=1"):
        Moments.of(torch.ones(1, 3)).covariance(ddof=1)
    with pytest.raises(ValueError, match="no rows"):
        Moments.empty(3).constant_columns()
    with pytest.raises(ValueError, match="NaN"):
        Moments.of(torch.tensor([[1.0, math.nan]]))
    with pytest.raises(ValueError, match="pass d"):
        moments_of_batches([])
    with pytest.raises(ValueError, match="batch 1 has 2 features but 3"):
        moments_of_batches([torch.ones(2, 3), torch.ones(2, 2)])
    with pytest.raises(ValueError, match="positive int"):
        Moments.empty(0)


def test_batches_may_be_empty_given_d_and_show_progress(capsys):
    m = moments_of_batches([], d=3)
    assert (m.count, m.d) == (0, 3)
    m = moments_of_batches(iter([torch.ones(2, 3), torch.zeros(0, 3)]), progress=True)
    assert m.count == 2 and m.constant_columns().all()


def test_state_round_trips_through_safetensors_and_json(tmp_path):
    from safetensors.torch import load_file, save_file

    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(7))
    m = Moments.of(x)
    tensors, meta = m.to_state()
    save_file(tensors, tmp_path / "moments.safetensors")
    back = Moments.from_state(
        load_file(tmp_path / "moments.safetensors"), json.loads(json.dumps(meta))
    )
    assert back.count == 50
    for k in ("mean", "m2", "minimum", "maximum"):
        assert torch.equal(getattr(back, k), getattr(m, k))
    with pytest.raises(ValueError, match="'m2' must be a float tensor of shape"):
        Moments.from_state({**tensors, "m2": torch.zeros(2, 2)}, meta)
    with pytest.raises(ValueError, match="format 9"):
        Moments.from_state(tensors, {**meta, "format": 9})
    with pytest.raises(ValueError, match="'count' must be an int"):
        Moments.from_state(tensors, {**meta, "count": "50"})
