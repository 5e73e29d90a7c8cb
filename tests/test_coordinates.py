import numpy as np
import pytest
import torch

from flowmatch.coordinates import MapCoordinates, choose_n_components, participation_ratio
from flowmatch.validation import NotFittedError


def _anisotropic(n=600, d=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.linspace(3.0, 0.5, d) + 5.0


def test_coordinates_are_centred_unit_scale_and_invert_exactly_on_all_axes():
    x = _anisotropic()
    c = MapCoordinates(12).fit(x)
    u = c.transform(x)
    torch.testing.assert_close(u.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-10, rtol=0)
    assert float((u**2).sum(1).mean()) == pytest.approx(1.0)
    torch.testing.assert_close(c.inverse_transform(u), torch.as_tensor(x), atol=1e-9, rtol=0)
    assert float(c.explained_variance_ratio_.sum()) == pytest.approx(1.0)


def test_dropped_axes_come_back_at_their_mean():
    x = _anisotropic()
    c = MapCoordinates(3).fit(x)
    back = c.inverse_transform(c.transform(x)).numpy()
    resid = (back - x) @ c.components_.numpy()  # nothing left in the kept directions
    np.testing.assert_allclose(resid, 0.0, atol=1e-9)
    np.testing.assert_allclose(back.mean(0), x.mean(0), atol=1e-9)


def test_state_round_trip_and_errors():
    c = MapCoordinates(4).fit(_anisotropic())
    back = MapCoordinates.from_state(*c.to_state())
    x = _anisotropic(seed=1)
    torch.testing.assert_close(back.transform(x), c.transform(x))
    tensors, meta = c.to_state()
    with pytest.raises(ValueError, match="scale"):
        MapCoordinates.from_state(tensors, {**meta, "scale": 0.0})
    with pytest.raises(ValueError, match="inconsistent"):
        MapCoordinates.from_state({**tensors, "mean": torch.zeros(3)}, meta)
    with pytest.raises(ValueError, match="n_components"):
        MapCoordinates(13).fit(_anisotropic())
    with pytest.raises(NotFittedError):
        MapCoordinates(2).transform(_anisotropic())


def test_participation_ratio_counts_equal_axes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 6)) * np.array([1, 1, 1, 1, 0, 0]) + 0.0
    assert participation_ratio(x) == pytest.approx(4.0, rel=0.03)


def test_choose_n_components_rule():
    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 40))
    low_rank += 1e-3 * rng.standard_normal((500, 40))
    assert choose_n_components(low_rank, low_rank) == 32  # the floor; 99% needs 3 axes
    spread = rng.standard_normal((3000, 200)) * np.exp(-np.arange(200) / 100)
    p = choose_n_components(spread, spread)
    pr = participation_ratio(spread)
    ev = np.sort(np.linalg.eigvalsh(np.cov(spread.T)))[::-1]
    p99 = int((np.cumsum(ev) / ev.sum() < 0.99).sum()) + 1
    assert 3 * pr > p99 and p == p99  # the variance cap binds here
    assert choose_n_components(spread, spread, ratio_multiple=1.0) == round(pr)
    narrow = rng.standard_normal((500, 10))
    assert choose_n_components(spread, narrow) <= 10  # never wider than a side holds
