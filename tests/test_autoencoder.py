"""FlowAutoencoder: exact density, invertibility, invariances, persistence, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch.testing import assert_close

from flowmatch.autoencoder import FlowAutoencoder
from flowmatch.flows import log_det_jacobian
from flowmatch.validation import NotFittedError

FAST = dict(hidden=16, n_components=3, max_steps=40, batch_size=64, progress=False, seed=0)


def _data(n: int = 300, d: int = 8, seed: int = 0) -> torch.Tensor:
    """Three clusters in a 3-dim subspace, curved, plus small isotropic noise  # (n, d)"""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    z = centres[torch.arange(n) % 3] + 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    signal = torch.cat([z, 0.2 * z[:, :1] ** 2, torch.zeros(n, d - 4, dtype=torch.float64)], 1)
    return signal @ basis.T + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0


@pytest.fixture(scope="module")
def fitted() -> tuple[FlowAutoencoder, torch.Tensor]:
    x = _data()
    return FlowAutoencoder(latent_dim=3, flow="coupling", dtype="float64", **FAST).fit(x), x


@pytest.mark.parametrize("flow", ["coupling", "cnf"])
def test_shapes_types_and_volume_preservation(flow: str) -> None:
    x = _data(200, 6)
    ae = FlowAutoencoder(latent_dim=2, flow=flow, **{**FAST, "max_steps": 15}).fit(x.numpy())
    z = ae.encode(x)
    assert z.shape == (200, 2) and z.dtype == torch.float32 and z.device.type == "cpu"
    assert ae.decode(z).shape == (200, 6) and ae.log_prob(x).shape == (200,)
    assert ae.latent_log_prob(z).shape == (200,) and ae.sample(5).shape == (5, 6)
    assert ae.mixture_weights_.shape == (3,) and ae.mixture_means_.shape == (3, 2)
    assert ae.mixture_covariances_.shape == (3, 2, 2) and ae.d_in_ == 6
    assert_close(ae.mixture_weights_.sum(), torch.tensor(1.0), rtol=0, atol=1e-5)
    flow64 = ae.model_.flow.double()  # the trained flow, checked in float64
    y = 3.0 * torch.randn(5, ae.d_flow_, generator=torch.Generator().manual_seed(1)).double()
    assert log_det_jacobian(flow64, y).abs().max() < 1e-5


def test_log_prob_is_a_normalised_density() -> None:
    """∫ exp(log p) = 1 on a grid, for a trained flow and with a constant column set aside."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(400, generator=g, dtype=torch.float64)
    x2 = torch.stack([t, 0.5 * torch.sin(2 * t) + 0.1 * torch.randn(400, generator=g)], 1)
    x = torch.cat([x2, torch.full((400, 1), 7.0, dtype=torch.float64)], 1)
    with pytest.warns(UserWarning, match="1 constant column"):
        ae = FlowAutoencoder(latent_dim=1, flow="coupling", dtype="float64", **FAST).fit(x)
    assert (
        ae.n_features_modelled_ == 2 and (ae.model_.flow(torch.ones(1, 2).double())[0] != 1).any()
    )
    a = torch.linspace(-6, 6, 241, dtype=torch.float64)
    b = torch.linspace(-3, 3, 241, dtype=torch.float64)
    grid = torch.cartesian_prod(a, b)
    grid = torch.cat([grid, torch.full((len(grid), 1), 7.0, dtype=torch.float64)], 1)
    mass = ae.log_prob(grid).exp().sum() * (a[1] - a[0]) * (b[1] - b[0])
    assert_close(mass, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=0.02)
    assert_close(ae.decode(ae.encode(x))[:, 2], x[:, 2])  # constant column restored


def test_gaussian_reference_numbers() -> None:
    """One component, (almost) no training: log p is the maximum-likelihood Gaussian density."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(500, 5, generator=g, dtype=torch.float64) @ a + 2.0
    ae = FlowAutoencoder(
        latent_dim=2,
        n_components=1,
        max_epochs=1,
        max_steps=1,
        lr=1e-12,  # one step that moves nothing (max_epochs=0 is refused)
        validation_fraction=0.0,
        dtype="float64",
        progress=False,
    ).fit(x)
    mean, cov = x.mean(0), torch.cov(x.T, correction=0)
    ref = multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy())
    assert_close(ae.log_prob(x), torch.as_tensor(ref), rtol=1e-5, atol=1e-4)


def test_latent_log_prob_matches_mixture_parameters(fitted) -> None:  # noqa: ANN001
    ae, x = fitted
    z = ae.encode(x)
    comps = torch.stack(
        [
            torch.distributions.MultivariateNormal(m, c).log_prob(z)
            for m, c in zip(ae.mixture_means_, ae.mixture_covariances_)
        ],
        1,
    )
    ref = torch.logsumexp(comps + ae.mixture_weights_.log(), 1)
    assert_close(ae.latent_log_prob(z), ref, rtol=1e-6, atol=1e-6)


def test_decode_encode_recovers_noise_free_part(fitted) -> None:  # noqa: ANN001
    ae, x = fitted
    clean = ae.decode(ae.encode(x))
    assert_close(ae.decode(ae.encode(clean)), clean, rtol=0, atol=1e-8)
    assert_close(ae.encode(clean), ae.encode(x), rtol=0, atol=1e-8)
    r2 = 1 - ((clean - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert r2 > 0.95  # three latent coordinates carry the signal


def test_principal_coordinates_are_the_leading_pca_axes(fitted) -> None:  # noqa: ANN001
    ae, x = fitted
    y = ae.principal_coordinates(x)
    assert y.shape == (len(x), 3)
    centred = x - x.mean(0)
    top = torch.linalg.svd(centred, full_matrices=False)[2][:3]  # (3, d) leading axes
    projection = centred @ top.T @ top + x.mean(0)
    assert_close(ae.from_principal_coordinates(y), projection, rtol=0, atol=1e-8)
    assert_close(ae.principal_coordinates(ae.from_principal_coordinates(y)), y, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="dim"):
        ae.from_principal_coordinates(y[:, :2])


def test_row_order_and_seed_invariance(fitted) -> None:  # noqa: ANN001
    ae, x = fitted
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(9))
    ae_perm = FlowAutoencoder(latent_dim=3, flow="coupling", dtype="float64", **FAST).fit(x[perm])
    assert_close(ae_perm.encode(x), ae.encode(x), rtol=0, atol=1e-10)
    assert_close(ae_perm.log_prob(x), ae.log_prob(x), rtol=0, atol=1e-10)
    other = FlowAutoencoder(latent_dim=3, flow="coupling", dtype="float64", **{**FAST, "seed": 1})
    assert not torch.allclose(other.fit(x).log_prob(x), ae.log_prob(x))


def test_training_improves_held_out_likelihood() -> None:
    x_all = _data(900, 8, seed=0)
    x, x_test = x_all[:600], x_all[600:]
    base = FlowAutoencoder(latent_dim=3, **{**FAST, "max_steps": 1}).fit(x)
    ae = FlowAutoencoder(latent_dim=3, **{**FAST, "max_steps": 150}).fit(x)
    assert ae.score(x_test) > base.score(x_test) + 0.01
    assert ae.history_["val_nll"][ae.best_epoch_ - 1] == min(ae.history_["val_nll"])


def test_save_load_roundtrip(tmp_path, fitted) -> None:  # noqa: ANN001
    ae, x = fitted
    path = ae.save(tmp_path / "ae.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, JSON header
    back = FlowAutoencoder.load(path)
    assert back.latent_dim_ == 3 and back.get_params() == ae.get_params()
    assert_close(back.encode(x), ae.encode(x), rtol=0, atol=0)
    assert_close(back.log_prob(x), ae.log_prob(x), rtol=0, atol=0)
    assert_close(back.sample(4, seed=2), ae.sample(4, seed=2), rtol=0, atol=0)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_checkpoint_resume_equals_uninterrupted_run(tmp_path, noise: float) -> None:
    x = _data(200, 6)
    kw = {**FAST, "max_steps": None, "patience": 100, "latent_dim": 2, "dtype": "float64"}
    kw["training_noise"] = noise
    straight = FlowAutoencoder(max_epochs=6, **kw).fit(x)
    ckpt = tmp_path / "ckpt.safetensors"
    FlowAutoencoder(max_epochs=3, checkpoint=ckpt, checkpoint_every=1, **kw).fit(x)
    resumed = FlowAutoencoder(max_epochs=6, checkpoint=ckpt, **kw).fit(x)
    assert resumed.n_epochs_ == 6 and len(resumed.history_["val_nll"]) == 6
    assert_close(resumed.log_prob(x), straight.log_prob(x), rtol=0, atol=1e-10)
    with pytest.warns(UserWarning, match="other data"):
        FlowAutoencoder(max_epochs=1, checkpoint=ckpt, **kw).fit(x + 1.0)


def test_training_noise_is_seeded_and_changes_the_fit(fitted) -> None:  # noqa: ANN001
    ae, x = fitted
    kw = dict(latent_dim=3, flow="coupling", dtype="float64", training_noise=0.3, **FAST)
    noisy = FlowAutoencoder(**kw).fit(x)
    assert_close(FlowAutoencoder(**kw).fit(x).log_prob(x), noisy.log_prob(x), rtol=0, atol=0)
    assert (noisy.log_prob(x) - ae.log_prob(x)).abs().max() > 1e-3
    for bad in (-0.1, math.nan):
        with pytest.raises(ValueError, match="training_noise"):
            FlowAutoencoder(**{**kw, "training_noise": bad}).fit(x)


def test_auto_latent_dim() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 10, generator=g) * torch.tensor([10.0, 8, 6] + [0.1] * 7)
    ae = FlowAutoencoder(
        latent_dim="auto", explained_variance=0.95, min_latent_dim=1, **{**FAST, "max_steps": 2}
    ).fit(x)
    assert ae.latent_dim_ == 3
    assert float(ae.explained_variance_ratio_[:3].sum()) >= 0.95
    assert_close(ae.explained_variance_.mean(), torch.tensor(1.0, dtype=torch.float64))


def test_float64_input_and_dtype() -> None:
    x = _data(120, 5).numpy()
    ae = FlowAutoencoder(latent_dim=2, **{**FAST, "max_steps": 2}).fit(x)
    assert ae.encode(x).dtype == torch.float32 and ae.log_prob(x).dtype == torch.float32


def test_ffjord_reference_runs() -> None:
    x = _data(150, 5)
    ae = FlowAutoencoder(latent_dim=2, flow="ffjord", **{**FAST, "max_steps": 3}).fit(x)
    assert torch.isfinite(ae.log_prob(x)).all() and ae.decode(ae.encode(x)).shape == (150, 5)


def test_bad_input_errors(fitted) -> None:  # noqa: ANN001
    ae, x = fitted
    with pytest.raises(ValueError, match="dimension mismatch"):
        ae.encode(x[:, :5])
    with pytest.raises(ValueError, match="dimension mismatch"):
        ae.decode(torch.zeros(2, 4))
    bad = x.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        ae.log_prob(bad)
    with pytest.raises(ValueError, match="NaN"):
        FlowAutoencoder(**FAST).fit(bad)
    with pytest.raises(ValueError, match="fewer samples than dimensions"):
        FlowAutoencoder(**FAST).fit(torch.randn(8, 10))
    with pytest.raises(ValueError, match="all columns of x are constant"):
        FlowAutoencoder(**FAST).fit(torch.ones(50, 4))
    xc = x.clone()
    xc[:, 2] = 0.0
    with pytest.raises(ValueError, match="constant column"):
        FlowAutoencoder(on_constant="error", **FAST).fit(xc)
    with pytest.raises(ValueError, match="exceeds d_flow"):
        FlowAutoencoder(latent_dim=20, **FAST).fit(x)
    with pytest.raises(NotFittedError):
        FlowAutoencoder().encode(x)
    with pytest.raises(KeyError, match="unknown flow"):
        FlowAutoencoder(flow="nope", **FAST).fit(x)


def test_non_finite_loss_stops_with_clear_error() -> None:
    x = _data(200, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match="non-finite"):
            FlowAutoencoder(latent_dim=2, lr=1e12, **FAST).fit(x)


def test_zoo_layer_with_dead_units_fits() -> None:
    """Dead ReLU units (constant zero columns) are set aside with a warning, not an error."""
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(300, 12, generator=g) @ torch.randn(12, 12, generator=g))
    x[:, [3, 7]] = 0.0
    with pytest.warns(UserWarning, match=r"2 constant column\(s\)"):
        ae = FlowAutoencoder(latent_dim=4, **{**FAST, "max_steps": 5}).fit(x)
    assert ae.constant_columns_.tolist() == [3, 7]
    out = ae.decode(ae.encode(x))
    assert torch.all(out[:, [3, 7]] == 0) and np.isfinite(ae.log_prob(x).numpy()).all()


def test_scikit_learn_estimator_contract() -> None:
    """Parameters through BaseEstimator (get/set/clone/repr), a declared constraint for every
    parameter, fit(X) returning self, constraints checked before fitting."""
    from sklearn.base import clone

    ae = FlowAutoencoder(latent_dim=2, flow="cnf")
    assert set(FlowAutoencoder._parameter_constraints) == set(ae.get_params())
    assert repr(ae) == "FlowAutoencoder(flow='cnf', latent_dim=2)"
    copy = clone(ae.set_params(seed=4))
    assert copy.get_params() == ae.get_params() and copy is not ae
    with pytest.raises(ValueError, match="Invalid parameter 'latent'"):
        ae.set_params(latent=3)
    x = _data(200, 5, seed=1)
    small = FlowAutoencoder(latent_dim=2, **{**FAST, "max_steps": 2})
    assert small.fit(x) is small
    with pytest.raises(KeyError, match="unknown flow"):
        small.set_params(flow="nope").fit(x)


def test_flow_beats_pca_and_a_mixture_on_a_curved_density() -> None:
    """The flow benchmark's checks, as a test: where the noise coordinate bends with the kept
    one, the flow straightens it, so the autoencoder's held-out likelihood and reconstruction
    beat PCA + GaussianMixture at the same k (the benchmark's reference)."""
    from benchmarks.flow import pca_gmm
    from flowmatch.metrics import r2_score

    rng = np.random.default_rng(0)

    def parabola(n: int) -> torch.Tensor:
        x1 = 2 * rng.standard_normal(n)
        x2 = 0.2 * (x1**2 - 4) + 0.1 * rng.standard_normal(n)
        return torch.tensor(np.c_[x1, x2], dtype=torch.float32)

    x_tr, x_te = parabola(400), parabola(200)
    ref = pca_gmm(x_tr, x_te, 1, 2, 0)
    ae = FlowAutoencoder(latent_dim=1, n_components=2, hidden=32, max_steps=120, progress=False)
    ae.fit(x_tr)
    assert -ae.score(x_te) < ref["nll"] - 0.1
    assert r2_score(ae.decode(ae.encode(x_te)), x_te) > ref["r2"] + 0.1
