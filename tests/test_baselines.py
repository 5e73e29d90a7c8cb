"""Baselines: each one recovers a known map on a synthetic pair; interface and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from baselines import FitData, get_method, list_methods
from baselines._linear import ScaledPCA, compose_map
from baselines.cluster_pairs import match_clusters, translate_from_clusters
from baselines.relative import relative_coordinates
from flowmatch.gromov import gw_coupling
from flowmatch.validation import NotFittedError

BUNDLED = [
    "affine",
    "procrustes",
    "relative",
    "gromov_wasserstein",
    "entropic_gw",
    "cluster_pairs",
]


def _rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _cloud(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(3, 1, d)


def _mixture(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Six well-separated clusters of unequal mass in 5-D (no symmetry in their layout)."""
    g = torch.Generator().manual_seed(0)  # same centres for every seed
    centres = torch.randn(6, 5, generator=g, dtype=torch.float64) * 6
    mass = np.array([0.3, 0.22, 0.17, 0.13, 0.1, 0.08])
    labels = np.random.default_rng(seed).choice(6, size=n, p=mass)
    gs = torch.Generator().manual_seed(seed + 100)
    x = centres[torch.from_numpy(labels)] + 0.5 * torch.randn(
        n, 5, generator=gs, dtype=torch.float64
    )
    return x, labels


def test_bundled_methods_are_registered() -> None:
    assert set(BUNDLED) <= set(list_methods())
    with pytest.raises(KeyError, match="unknown method"):
        get_method("no-such-method")


@pytest.mark.parametrize("name", BUNDLED)
def test_transform_before_fit_raises(name: str) -> None:
    with pytest.raises(NotFittedError):
        get_method(name).transform(torch.zeros(3, 4))


@pytest.mark.parametrize("name", ["affine", "procrustes", "relative"])
def test_paired_methods_need_pairs(name: str) -> None:
    x = _cloud(40, 4, 0)
    with pytest.raises(ValueError, match="needs paired rows"):
        get_method(name).fit(FitData(a=x, b=x))


def test_affine_recovers_an_affine_map() -> None:
    a = _cloud(200, 4, 0)
    g = torch.Generator().manual_seed(1)
    matrix = torch.randn(6, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    b = a @ matrix.T + bias
    data = FitData(a=a[:100], b=b[100:], pairs_a=a[:30], pairs_b=b[:30])
    method = get_method("affine", ridge=0.0).fit(data)
    assert method.n_pairs_used_ == 30
    assert_close(method.matrix_, matrix, rtol=1e-9, atol=1e-9)
    assert_close(method.bias_, bias, rtol=1e-9, atol=1e-9)
    assert_close(method.transform(a[150:]), b[150:].float(), rtol=1e-5, atol=1e-5)
    # width checks on the translated input
    with pytest.raises(ValueError, match="dimension mismatch"):
        method.transform(torch.zeros(2, 5))


@pytest.mark.parametrize("d_b", [5, 7])
def test_procrustes_recovers_an_exact_rotation(d_b: int) -> None:
    a = _cloud(120, 5, 2)
    rot = _rotation(d_b, 3)[:, :5]  # (d_b, 5) with orthonormal columns
    b = 2.5 * a @ rot.T + torch.arange(d_b, dtype=torch.float64)
    data = FitData(a=a, b=b, pairs_a=a[:12], pairs_b=b[:12])
    method = get_method("procrustes").fit(data)
    assert method.n_pairs_used_ == 12
    assert_close(method.matrix_, 2.5 * rot, rtol=1e-9, atol=1e-9)
    assert method.scale_ == pytest.approx(2.5, rel=1e-9)
    assert_close(method.transform(a), b.float(), rtol=1e-5, atol=1e-4)


def test_relative_coordinates_are_invariant_to_rotation_scale_and_shift() -> None:
    a = _cloud(50, 4, 4)
    b = 3.0 * a @ _rotation(4, 5).T - 7.0
    anchors = slice(0, 8)
    rel_a = relative_coordinates(a, a[anchors], a.mean(0))
    rel_b = relative_coordinates(b, b[anchors], b.mean(0))
    assert rel_a.shape == (50, 8)
    assert_close(rel_a, rel_b, rtol=1e-10, atol=1e-10)
    assert float(rel_a.abs().max()) <= 1 + 1e-12


def test_relative_translation_equals_decoding_bs_own_coordinates() -> None:
    # B is a rotated, scaled, shifted copy of A: A's relative coordinates are B's, so translating
    # A must give exactly what the decoder gives for the true B rows.
    a = _cloud(300, 4, 6)
    b = 0.5 * a @ _rotation(4, 7).T + 2.0
    data = FitData(a=a, b=b, pairs_a=a[:10], pairs_b=b[:10])
    m = get_method("relative").fit(data)
    assert m.n_pairs_used_ == 10
    assert m.decoder_matrix_.shape == (4, 10)
    decoded_b = relative_coordinates(b, b[:10], b.mean(0)) @ m.decoder_matrix_.T
    assert_close(m.transform(a).double(), decoded_b + m.decoder_bias_, rtol=1e-5, atol=1e-5)
    # and the decoder is a usable least-squares fit on this cloud
    resid = ((m.transform(a).double() - b) ** 2).sum() / ((b - b.mean(0)) ** 2).sum()
    assert float(resid) < 0.2


def test_gw_coupling_recovers_a_permutation() -> None:
    x = _cloud(25, 3, 8)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(25))
    y = x[perm] @ _rotation(3, 9).T  # y[i] is x[perm[i]], rotated: same distances
    dist = lambda z: torch.cdist(z, z).numpy()  # noqa: E731
    plan, loss = gw_coupling(dist(x), dist(y), n_restarts=2, seed=0)
    assert plan.shape == (25, 25)
    np.testing.assert_allclose(plan.sum(1), 1 / 25, atol=1e-10)
    np.testing.assert_allclose(plan.sum(0), 1 / 25, atol=1e-10)
    # row i of x is matched to the row j of y with perm[j] == i
    expected = torch.argsort(perm).numpy()
    np.testing.assert_array_equal(plan.argmax(1), expected)
    assert loss == pytest.approx(0.0, abs=1e-10)


def test_gromov_wasserstein_method_recovers_a_rotation() -> None:
    a = _cloud(300, 3, 10)
    rot = _rotation(3, 11)
    b = 2.0 * a[torch.randperm(300, generator=torch.Generator().manual_seed(0))] @ rot.T + 1.0
    m = get_method("gromov_wasserstein", n_samples=150, n_components=None).fit(FitData(a=a, b=b))
    assert m.n_pairs_used_ == 0
    assert_close(m.matrix_, 2.0 * rot, rtol=0, atol=0.05)
    assert_close(m.transform(a[:20]).double(), 2.0 * a[:20] @ rot.T + 1.0, rtol=0, atol=0.2)


def test_entropic_gw_method_recovers_a_rotation_and_keeps_the_cheapest_epsilon() -> None:
    a = _cloud(300, 3, 10)
    rot = _rotation(3, 11)
    b = 2.0 * a[torch.randperm(300, generator=torch.Generator().manual_seed(0))] @ rot.T + 1.0
    m = get_method("entropic_gw", n_samples=150, n_components=None, epsilons=(0.01, 0.05, 5.0))
    m.fit(FitData(a=a, b=b))
    assert m.n_pairs_used_ == 0
    assert set(m.transport_costs_) == {0.01, 0.05, 5.0}
    assert m.transport_costs_[m.epsilon_] == min(m.transport_costs_.values())
    assert_close(m.matrix_, 2.0 * rot, rtol=0, atol=0.05)


def test_entropic_gw_rejects_non_positive_epsilons() -> None:
    a = _cloud(60, 3, 10)
    with pytest.raises(ValueError, match="epsilons must be"):
        get_method("entropic_gw", epsilons=(0.05, 0.0)).fit(FitData(a=a, b=a))


@pytest.mark.parametrize("name", ["gromov_wasserstein", "entropic_gw"])
def test_unpaired_methods_never_read_pairs(name: str) -> None:
    a, b = _cloud(200, 3, 12), _cloud(200, 3, 13)
    poisoned = FitData(a=a, b=b, pairs_a=torch.full((5, 3), torch.nan), pairs_b=b[:5])
    m = get_method(name, n_samples=60, n_iter=2).fit(poisoned)
    assert m.n_pairs_used_ == 0
    assert torch.isfinite(m.transform(a)).all()


@pytest.mark.parametrize("k", [5, 9])  # exhaustive search, then FAQ restarts + local search
def test_match_clusters_recovers_a_permutation(k: int) -> None:
    pts = _cloud(k, 4, 14).numpy()
    perm = np.random.default_rng(1).permutation(k)
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    mass = np.random.default_rng(2).dirichlet(np.ones(k))
    pairs = match_clusters(dist, dist[np.ix_(perm, perm)], mass, mass[perm], seed=0)
    # cluster i of A sits at position j of B with perm[j] == i
    np.testing.assert_array_equal(pairs[:, 0], np.arange(k))
    np.testing.assert_array_equal(perm[pairs[:, 1]], np.arange(k))


def test_match_clusters_with_unequal_counts() -> None:
    pts = _cloud(7, 4, 15).numpy()
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    mass = np.full(7, 1 / 7)
    keep = np.array([4, 0, 6, 2, 5])  # A sees five of B's seven clusters
    pairs = match_clusters(dist[np.ix_(keep, keep)], dist, mass[keep], mass)
    assert pairs.shape == (5, 2)
    np.testing.assert_array_equal(keep[pairs[:, 0]], pairs[:, 1])
    back = match_clusters(dist, dist[np.ix_(keep, keep)], mass, mass[keep])  # larger side first
    assert back.shape == (5, 2)
    np.testing.assert_array_equal(back[:, 0], keep[back[:, 1]])
    assert list(back[:, 0]) == sorted(back[:, 0])


def test_translate_from_clusters_recovers_a_rotation() -> None:
    a, la = _mixture(600, seed=0)
    x, lb = _mixture(500, seed=1)  # other samples of the same mixture ...
    rot = _rotation(5, 16)
    b = 1.5 * x @ rot.T - 3.0  # ... seen through a rotation, a scale and a shift
    relabel = np.array([3, 5, 0, 1, 4, 2])  # B's clusters carry other names
    pairs, matrix, bias = translate_from_clusters(a, la, b, relabel[lb], n_components=None)
    np.testing.assert_array_equal(relabel[pairs[:, 0]], pairs[:, 1])
    assert matrix.shape == (5, 5) and bias.shape == (5,)
    # the two samples hold the clusters in different proportions (0.27 vs 0.32 for the largest):
    # the refinement must not let that surplus bias the map
    assert_close(matrix, 1.5 * rot, rtol=0, atol=0.03)
    assert_close(bias, torch.full((5,), -3.0, dtype=torch.float64), rtol=0, atol=0.1)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        translate_from_clusters(a, np.zeros(600, dtype=int), b, lb)
    with pytest.raises(ValueError, match="one label per row"):
        translate_from_clusters(a, la[:10], b, lb)


def test_cluster_pairs_method_recovers_a_rotation() -> None:
    a, _ = _mixture(600, seed=2)
    x, _ = _mixture(500, seed=3)
    rot = _rotation(5, 17)
    b = 0.8 * x @ rot.T + 2.0
    m = get_method("cluster_pairs", n_clusters=6, n_components=None).fit(FitData(a=a, b=b))
    assert m.n_pairs_used_ == 0 and m.cluster_pairs_.shape == (6, 2)
    assert_close(m.matrix_, 0.8 * rot, rtol=0, atol=0.03)


def test_scaled_pca_is_a_similarity_and_compose_lifts_maps() -> None:
    x = _cloud(100, 6, 18)
    red = ScaledPCA.fit(x, 3)
    z = red.transform(x)
    assert z.shape == (100, 3)
    assert float((z**2).sum(1).mean()) == pytest.approx(1.0, rel=1e-10)
    full = ScaledPCA.fit(x)
    assert_close(full.inverse_transform(full.transform(x)), x)
    # lifting the identity between full reductions of x and of a rotated copy gives that rotation
    rot = _rotation(6, 19)
    red_b = ScaledPCA(full.mean @ rot.T, rot @ full.basis, full.scale)
    matrix, bias = compose_map(full, red_b, torch.eye(6, dtype=torch.float64), torch.zeros(6))
    assert_close(matrix, rot)
    assert_close(x @ matrix.T + bias, x @ rot.T)
