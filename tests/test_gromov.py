import numpy as np
import pytest
import torch

from flowmatch.alignment import apply_map, transport_cost
from flowmatch.gromov import entropic_gw_coupling, gw_initial_map, normalised_distances


def _isometric_pair(n=150, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)) * np.array([3.0, 1.5, 0.5])  # anisotropic: no symmetry left
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    shift = np.array([4.0, -2.0, 1.0])
    perm = rng.permutation(n)
    y = (x @ q.T + shift)[perm]
    return torch.from_numpy(x), torch.from_numpy(y), q, shift


def test_normalised_distances_have_unit_mean_and_zero_diagonal():
    d = normalised_distances(torch.randn(40, 5, dtype=torch.float64))
    assert abs(d.mean() - 1.0) < 1e-12
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-6)  # cdist rounding


def test_gw_initial_map_recovers_a_rigid_motion_without_pairs():
    x, y, q, shift = _isometric_pair()
    matrix, bias, loss = gw_initial_map(x, y, x, y, n_samples=150, seed=0)
    torch.testing.assert_close(matrix, torch.from_numpy(q), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias, torch.from_numpy(shift), atol=1e-6, rtol=0)
    assert loss < 1e-10


def test_entropic_gw_map_recovers_a_rigid_motion_and_epsilon_blurs_the_coupling():
    x, y, q, shift = _isometric_pair(seed=2)
    matrix, bias, _ = gw_initial_map(x, y, x, y, n_samples=150, epsilon=0.01, seed=0)
    torch.testing.assert_close(matrix, torch.from_numpy(q), atol=0.05, rtol=0)
    torch.testing.assert_close(bias, torch.from_numpy(shift), atol=0.1, rtol=0)
    dx, dy = normalised_distances(x), normalised_distances(y)
    sharp, _ = entropic_gw_coupling(dx, dy, epsilon=0.01)
    blurred, _ = entropic_gw_coupling(dx, dy, epsilon=10.0)
    np.testing.assert_allclose(sharp.sum(1), 1 / len(x), atol=1e-6)
    assert sharp.max() > 10 * blurred.max()  # a large epsilon spreads every row's mass
    with pytest.raises(ValueError, match="epsilon must be positive"):
        entropic_gw_coupling(dx, dy, epsilon=0.0)


def test_transport_cost_is_zero_for_the_true_map_and_grows_with_a_wrong_one():
    x, y, q, shift = _isometric_pair(seed=1)
    q_t, s_t = torch.from_numpy(q), torch.from_numpy(shift)
    assert transport_cost(x, y, q_t, s_t) < 1e-12
    wrong = transport_cost(x, y, q_t, s_t + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    np.testing.assert_allclose(wrong, 1.0, rtol=1e-9)  # a pure shift moves every point by 1
    assert transport_cost(x, apply_map(x, q_t, s_t), q_t, s_t) < 1e-12
