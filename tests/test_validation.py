"""Parameter and input validation in the scikit-learn style: finite ranges, real input, no
silent overflow, scores that are an error or NaN rather than nonsense."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowmatch import metrics
from flowmatch.autoencoder import FlowAutoencoder
from flowmatch.density_tree import DensityTree
from flowmatch.validation import as_matrix, resolve_device

FAST = dict(latent_dim=2, hidden=8, n_components=2, max_steps=3, progress=False)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((120, 4))


@pytest.mark.parametrize(
    ("param", "value", "match"),
    [
        ("max_epochs", 0, "max_epochs must be >= 1, got 0"),
        ("max_epochs", 2.5, "max_epochs must be an int"),
        ("max_steps", 0, "max_steps must be >= 1"),
        ("latent_dim", 0, "latent_dim must be >= 1"),
        ("latent_dim", True, "latent_dim must be an int"),
        ("n_components", -1, "n_components must be >= 1"),
        ("lr", 0.0, "lr must be finite and > 0.0"),
        ("lr", math.inf, "lr must be finite"),
        ("lr", "fast", "lr must be a number"),
        ("validation_fraction", 1.0, "validation_fraction must be finite and >= 0.0 and < 1.0"),
        ("reconstruction_weight", math.nan, "reconstruction_weight must be finite"),
        ("min_variance", 0.0, "min_variance must be finite and > 0.0"),
        ("max_time", -1.0, "max_time must be finite and > 0.0"),
        ("seed", -1, "seed must be between 0 and"),
        ("seed", 1.7, "seed must be an int"),
        ("covariance_type", "spherical", "covariance_type must be one of"),
        ("progress", "yes", "progress must be True or False"),
        ("device", "bogus", "not a device"),
        ("flow_options", [1], "flow_options must be a dict"),
    ],
)
def test_autoencoder_parameters_are_checked_before_fitting(x, param, value, match):
    ae = FlowAutoencoder(**{**FAST, param: value})
    with pytest.raises((TypeError, ValueError), match=match):
        ae.fit(x)
    assert not hasattr(ae, "model_")


@pytest.mark.parametrize(
    ("param", "value", "match"),
    [
        ("min_prominence", -1.0, "min_prominence must be finite and >= 0.0, got -1.0"),
        ("min_prominence", math.nan, "min_prominence must be finite"),
        ("k_neighbors", 0, "k_neighbors must be >= 1"),
        ("k_neighbors", 2.0, "k_neighbors must be an int"),
        ("n_modes", 0, "n_modes must be >= 1"),
        ("max_points", 1, "max_points must be >= 2"),
        ("n_jobs", 0, "n_jobs must be -1"),
        ("seed", -3, "seed must be between"),
    ],
)
def test_density_tree_parameters_are_checked(param, value, match):
    z = np.random.default_rng(1).standard_normal((50, 2))
    with pytest.raises((TypeError, ValueError), match=match):
        DensityTree(**{param: value}).fit(z, log_density=-np.sum(z**2, 1))


def test_complex_input_is_refused(x):
    xc = x.astype(complex) + 1j
    with pytest.raises(TypeError, match="complex values"):
        FlowAutoencoder(**FAST).fit(xc)
    with pytest.raises(TypeError, match="complex values"):
        as_matrix(torch.as_tensor(xc))
    with pytest.raises(TypeError, match="<U1 values"):
        as_matrix(np.array([["a", "b"]]))


def test_float32_overflow_of_finite_input(x):
    """Finite inputs beyond float32 gave NaN encodings and -inf log-densities, silently."""
    big = x * 1e36  # fits float32 barely; centred products would not
    ae = FlowAutoencoder(**FAST).fit(big)
    assert torch.isfinite(ae.encode(big)).all() and torch.isfinite(ae.log_prob(big)).all()
    huge = x * 1e40  # beyond float32 (3.4e38), finite in float64
    ae = FlowAutoencoder(**FAST).fit(huge)
    z = ae.encode(huge)
    assert torch.isfinite(z).all() and torch.isfinite(ae.log_prob(huge)).all()
    torch.testing.assert_close(z, FlowAutoencoder(**FAST).fit(x).encode(x), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="beyond float32"):
        ae.encode(huge * 1e39)  # far outside the training data: refused, not NaN
    with pytest.raises(ValueError, match="overflow float32"):
        as_matrix(huge, dtype=torch.float32)
    small = FlowAutoencoder(**FAST).fit(x)
    with pytest.warns(RuntimeWarning, match="below the range of float32"):
        assert torch.isinf(small.log_prob(x[:3] * 1e20)).all()  # -1e40 nats: said, not silent
    assert torch.isfinite(FlowAutoencoder(**FAST, dtype="float64").fit(x).log_prob(x * 1e20)).all()


def test_float64_extreme_scales_fit(x):
    """float64 ×1e200 raised a raw torch._LinAlgError (the covariance overflowed)."""
    ref = FlowAutoencoder(**FAST, dtype="float64").fit(x)
    for factor in (1e200, 1e-200):
        ae = FlowAutoencoder(**FAST, dtype="float64").fit(x * factor)
        torch.testing.assert_close(ae.encode(x * factor), ref.encode(x), rtol=1e-6, atol=1e-6)
        assert math.isclose(ae.scale_ / ref.scale_, factor, rel_tol=1e-9)


def test_r2_needs_two_rows_and_variance():
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.r2_score(np.ones((1, 3)), np.zeros((1, 3)))
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert math.isnan(metrics.r2_score(np.ones((5, 3)), np.zeros((5, 3))))
    assert metrics.r2_score(np.arange(6.0).reshape(3, 2), np.arange(6.0).reshape(3, 2)) == 1.0


def test_resolve_device_names_the_problem():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="'bogus' is not a device"):
        resolve_device("bogus")
    with pytest.raises(TypeError, match="device must be a string"):
        resolve_device(3)
