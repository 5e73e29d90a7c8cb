"""The speed benchmark's synthetic pair and its size option (the timing itself is a benchmark)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks.speed import _size, rotated_mixture


def test_rotated_mixture_hides_one_rotation_between_other_draws():
    a, b, test_a, test_b = rotated_mixture(3000, 24, n_test=200, seed=3)
    assert a.shape == b.shape == (3000, 24) and test_a.shape == test_b.shape == (200, 24)
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # the paired rows differ by an orthogonal map, recovered exactly by least squares
    q, *_ = np.linalg.lstsq(test_a.astype(np.float64), test_b.astype(np.float64), rcond=None)
    np.testing.assert_allclose(q.T @ q, np.eye(24), atol=1e-4)
    # the unpaired B rows are other draws, not A's rows rotated
    assert np.abs(a @ q - b).max() > 0.5
    again = rotated_mixture(3000, 24, n_test=200, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((a, b, test_a, test_b), again))


@pytest.mark.parametrize("text", ["50000", "50000x", "10x384", "axb"])
def test_bad_sizes_are_refused_with_the_expected_form(text):
    with pytest.raises(argparse.ArgumentTypeError, match="ROWSxDIM|at least"):
        _size(text)
    assert _size("50000x384") == (50000, 384)
