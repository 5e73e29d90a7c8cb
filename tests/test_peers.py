"""The published zero-pair peers (mini-vec2vec, Wasserstein–Procrustes) and their pieces.

Each peer must recover a hidden rotation B = A·Qᵀ from *different* rows of the same
distribution, never read paired rows, and give the same map under the same seed.
"""

from __future__ import annotations

import itertools

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import quadratic_assignment

from baselines._sphere import (
    SphereCoordinates,
    inner_product_neighbours,
    orthogonal_procrustes,
    sphere_pair,
)
from baselines.mini_vec2vec import fit_mini_vec2vec
from baselines.wasserstein_procrustes import (
    _sinkhorn,
    fit_wasserstein_procrustes,
    stochastic_procrustes,
    wp_objective,
)
from flowmatch.methods import FitData, get_method, list_methods
from flowmatch.qap import qap_objective, swap_gains, two_opt_batch
from flowmatch.validation import NotFittedError

PEERS = ["mini_vec2vec", "wasserstein_procrustes"]
FAST_MV = dict(n_runs=10, n_refine=30, n_refine_clusters=100)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _embedding_like(
    n: int, d: int, seed: int, *, n_topics: int = 100, noise: float = 0.3, power: float = 0.5
) -> np.ndarray:
    """Rows like sentence embeddings: many overlapping topics of unequal mass, a decaying
    spectrum, a mean offset, unit norm. The distribution is fixed; ``seed`` draws the rows."""
    g = np.random.default_rng(0)
    lam = np.arange(1, d + 1) ** -power
    basis = _rotation(d, 1)
    centres = g.normal(size=(n_topics, d)) * np.sqrt(lam)
    mass = g.dirichlet(np.full(n_topics, 0.5))
    offset = 1.5 * g.normal(size=d) * np.sqrt(lam).mean()
    r = np.random.default_rng(seed)
    z = centres[r.choice(n_topics, size=n, p=mass)] + noise * r.normal(size=(n, d)) * np.sqrt(lam)
    x = z @ basis.T + offset
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _top1(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of rows whose nearest true row (cosine after centring on the truth) is their own."""
    mu = true.mean(0)
    p, t = pred - mu, true - mu
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return float((np.argmax(p @ t.T, axis=1) == np.arange(len(p))).mean())


@pytest.fixture(scope="module")
def hidden_rotation() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A (2,000 rows), B = A'·Qᵀ on 2,000 *other* rows, a held-out paired test set, Q (32-d)."""
    q = _rotation(32, 123)
    a, b_rows, test = (_embedding_like(n, 32, s) for n, s in ((2000, 1), (2000, 2), (500, 3)))
    return a, b_rows @ q.T, test, test @ q.T, q


# --- pieces ------------------------------------------------------------------------------------


def test_swap_gains_match_recomputed_objectives() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 7, 7))
    a, b = a + a.T, b + b.T
    perm = rng.permutation(7)
    gains = swap_gains(a, b[np.ix_(perm, perm)][None])[0]
    base = qap_objective(a, b, perm[None])[0]
    for r, s in itertools.combinations(range(7), 2):
        swapped = perm.copy()
        swapped[[r, s]] = swapped[[s, r]]
        assert gains[r, s] == pytest.approx(qap_objective(a, b, swapped[None])[0] - base)


def test_two_opt_recovers_a_permuted_kernel_and_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    c = rng.normal(size=(20, 16)) * np.linspace(2, 0.5, 16)
    ka = c @ c.T
    perm = rng.permutation(20)
    kb = ka[np.ix_(perm, perm)]  # kb[i, j] = ka[perm[i], perm[j]]
    perms, objective = two_opt_batch(ka, kb, np.stack([rng.permutation(20) for _ in range(30)]))
    best = perms[np.argmax(objective)]
    np.testing.assert_array_equal(perm[best], np.arange(20))  # A's i ↔ B's best[i]
    assert objective.max() == pytest.approx(float((ka * ka).sum()))
    ref = max(
        quadratic_assignment(
            ka, kb, method="2opt", options={"maximize": True, "rng": np.random.default_rng(s)}
        ).fun
        for s in range(10)
    )
    assert objective.max() >= ref - 1e-9


def test_inner_product_neighbours_in_blocks_match_brute_force() -> None:
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(37, 5)), rng.normal(size=(53, 5))
    got = inner_product_neighbours(q, k, 4, block_entries=100)  # one query row per block
    want = np.argsort(-(q @ k.T), axis=1)[:, :4]
    np.testing.assert_array_equal(got, want)


def test_orthogonal_procrustes_recovers_a_rotation() -> None:
    rng = np.random.default_rng(3)
    q = _rotation(6, 4)
    x = rng.normal(size=(50, 6))
    r = orthogonal_procrustes(x, x @ q.T + 0.01 * rng.normal(size=(50, 6)))
    np.testing.assert_allclose(r @ r.T, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(r, q, atol=0.02)


def test_sphere_coordinates_and_pca_for_unequal_widths() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(200, 6)) + 3.0, rng.normal(size=(150, 9)) * np.arange(1, 10)
    ca, cb, xa, xb = sphere_pair(a, b, None)
    assert xa.shape == (200, 6) and xb.shape == (150, 6)  # PCA of B to min(d_a, d_b)
    assert ca.basis is None and cb.basis is not None and cb.basis.shape == (9, 6)
    np.testing.assert_allclose(np.linalg.norm(xa, axis=1), 1.0)
    np.testing.assert_allclose(xa.mean(0) * 0, 0)
    np.testing.assert_allclose(ca.scale, np.linalg.norm(a - a.mean(0), axis=1).mean())
    top = cb.lift(cb.centred(b))  # projection on the top axes, back in B's space
    assert np.linalg.norm(top - b) < np.linalg.norm(b - b.mean(0))
    full = SphereCoordinates.fit(b, None)
    np.testing.assert_allclose(full.lift(full.centred(b)), b)


def test_sinkhorn_plan_has_the_requested_marginals_and_matches_pot() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(2, 80, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    cost = -(x @ y.T)  # the peers' cost: unit rows, range ≤ 2 (float32 iterations)
    plan = _sinkhorn(cost, 0.05)
    np.testing.assert_allclose(plan.sum(1), 1.0, atol=1e-5)
    assert np.linalg.norm(plan.sum(0) - 1.0) < 1e-3
    ref = ot.sinkhorn(np.ones(80), np.ones(80), cost, 0.05, stopThr=1e-3)
    np.testing.assert_allclose(plan, ref, atol=2e-4)
    wide = _sinkhorn(20.0 * cost, 0.025)  # cost / reg up to 1,600: float64, no overflow
    assert np.isfinite(wide).all()
    np.testing.assert_allclose(wide.sum(1), 1.0, atol=1e-6)


# --- mini-vec2vec ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mv_map(hidden_rotation):  # type: ignore[no-untyped-def]
    a, b, *_ = hidden_rotation
    return fit_mini_vec2vec(a, b, seed=0, **FAST_MV)


def test_mini_vec2vec_recovers_a_hidden_rotation_without_pairs(hidden_rotation, mv_map) -> None:  # type: ignore[no-untyped-def]
    _, _, test_a, test_b, q = hidden_rotation
    assert np.linalg.norm(mv_map.rotation - q) < 1.0  # ‖Q‖_F = √32 ≈ 5.7
    assert _top1(mv_map.transform(test_a), test_b) >= 0.95
    errors = {k: np.linalg.norm(r - q) for k, r in mv_map.stages.items()}
    assert list(errors) == ["anchors", "pseudo_pairs", "refine_matching", "refine_clusters"]
    assert errors["refine_clusters"] < errors["pseudo_pairs"] < errors["anchors"]
    assert mv_map.qap_scores.shape == (10,) and mv_map.refine_steps.shape == (30,)
    assert 0.5 < mv_map.cluster_consistency <= 1.0


def test_mini_vec2vec_output_lives_in_b_space(hidden_rotation, mv_map) -> None:  # type: ignore[no-untyped-def]
    _, b, test_a, test_b, _ = hidden_rotation
    y = mv_map.transform(test_a)
    np.testing.assert_allclose(y, test_a @ mv_map.matrix.T + mv_map.bias, atol=1e-12)
    r2 = 1 - ((y - test_b) ** 2).sum() / ((test_b - test_b.mean(0)) ** 2).sum()
    assert r2 > 0.9  # norm and mean restored, not just the direction
    const = fit_mini_vec2vec(b[:10], b[:10], n_runs=1, n_clusters=2, n_neighbors=2, n_refine=0,
                             n_cluster_refine=0, norm="constant")  # fmt: skip
    z = const.transform(test_a[:5, :32]) - const.coords_b.mean
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), const.coords_b.scale)


def test_mini_vec2vec_is_deterministic_under_its_seed(hidden_rotation, mv_map) -> None:  # type: ignore[no-untyped-def]
    a, b, *_ = hidden_rotation
    again = fit_mini_vec2vec(a, b, seed=0, **FAST_MV)
    np.testing.assert_array_equal(again.rotation, mv_map.rotation)
    other = fit_mini_vec2vec(a, b, seed=1, **FAST_MV)
    assert not np.array_equal(other.rotation, mv_map.rotation)


def test_mini_vec2vec_with_unequal_widths(hidden_rotation) -> None:  # type: ignore[no-untyped-def]
    a, b, test_a, test_b, _ = hidden_rotation
    rng = np.random.default_rng(7)
    pad = lambda x: np.hstack([x, 1e-3 * rng.normal(size=(len(x), 8))])  # noqa: E731
    m = fit_mini_vec2vec(a, pad(b), seed=0, **FAST_MV)  # B is 40-d, A 32-d
    assert m.rotation.shape == (32, 32) and m.coords_b.basis.shape == (40, 32)
    y = m.transform(test_a)
    assert y.shape == (len(test_a), 40)
    assert _top1(y, pad(test_b)) >= 0.95


# --- Wasserstein–Procrustes --------------------------------------------------------------------


def test_stochastic_procrustes_converges_from_near_the_answer(hidden_rotation) -> None:  # type: ignore[no-untyped-def]
    a, b, _, _, q = hidden_rotation
    _, _, xa, xb = sphere_pair(a, b, None)
    rng = np.random.default_rng(8)
    u, _, vh = np.linalg.svd(q + 0.15 * rng.normal(size=q.shape))
    start = u @ vh
    r = stochastic_procrustes(xa, xb, start, n_epochs=1, n_iter=20, batch_size=300, rng=rng)
    np.testing.assert_allclose(r @ r.T, np.eye(32), atol=1e-10)
    assert np.linalg.norm(r - q) < 0.5 * np.linalg.norm(start - q)
    assert wp_objective(xa[:500], xb[:500], r) < wp_objective(xa[:500], xb[:500], start)


# --- the Method wrappers -----------------------------------------------------------------------


def test_peers_are_registered() -> None:
    assert set(PEERS) <= set(list_methods())
    with pytest.raises(TypeError, match="unknown parameters"):
        get_method("mini_vec2vec", n_run=3)


@pytest.mark.parametrize("name", PEERS)
def test_peer_transform_before_fit_raises(name: str) -> None:
    with pytest.raises(NotFittedError):
        get_method(name).transform(torch.zeros(3, 4))


SMALL = {
    "mini_vec2vec": dict(n_runs=2, n_clusters=4, n_neighbors=5, n_refine=2, n_refine_clusters=8),
    "wasserstein_procrustes": dict(n_restarts=1, convex_sample=40, convex_iter=5, n_probe=2,
                                   n_epochs=1, n_iter=2, batch_size=30, eval_sample=40),
}  # fmt: skip


@pytest.mark.parametrize("name", PEERS)
def test_peer_methods_never_read_pairs_and_map_into_b_space(name: str) -> None:
    rng = np.random.default_rng(9)
    a = torch.from_numpy(rng.normal(size=(120, 6)))
    b = torch.from_numpy(rng.normal(size=(100, 9)) + 2.0)
    poisoned = FitData(a=a, b=b, pairs_a=torch.full((5, 6), torch.nan), pairs_b=b[:5], seed=3)
    m = get_method(name, **SMALL[name]).fit(poisoned)
    assert m.n_pairs_used_ == 0
    out = m.transform(a[:7])
    assert out.shape == (7, 9) and out.dtype == torch.float32 and torch.isfinite(out).all()
    again = get_method(name, **SMALL[name]).fit(FitData(a=a, b=b, seed=3)).transform(a[:7])
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # same seed → same map


def test_wasserstein_procrustes_recovers_a_hidden_rotation_without_pairs() -> None:
    q = _rotation(8, 123)
    a, b = _embedding_like(1000, 8, 1), _embedding_like(1000, 8, 2) @ q.T
    test_a = _embedding_like(500, 8, 3)
    m = fit_wasserstein_procrustes(
        a, b, n_restarts=3, n_probe=20, n_iter=40, n_epochs=2, batch_size=200, eval_sample=500,
        convex_sample=300, seed=0,
    )  # fmt: skip
    assert m.start_kinds == ("convex", "random", "random", "random")
    assert m.kept == int(np.argmin(m.probe_objectives))
    assert m.objective <= m.probe_objectives[m.kept] + 0.01
    np.testing.assert_allclose(m.rotation @ m.rotation.T, np.eye(8), atol=1e-10)
    assert np.linalg.norm(m.rotation - q) < 0.5  # ‖Q‖_F = √8 ≈ 2.8
    assert _top1(m.transform(test_a), test_a @ q.T) >= 0.95
    _, _, xa, xb = sphere_pair(a, b, None)
    ea, eb = xa[:500], xb[:500]
    assert wp_objective(ea, eb, q) < wp_objective(ea, eb, _rotation(8, 5))  # it sees the answer


def test_wasserstein_procrustes_without_probes_keeps_the_best_final_run() -> None:
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(60, 4)), rng.normal(size=(70, 4))
    small = dict(convex_sample=30, convex_iter=3, n_epochs=1, n_iter=3, batch_size=20)
    m = fit_wasserstein_procrustes(a, b, n_restarts=2, n_probe=None, eval_sample=50, **small)
    assert m.probe_objectives.shape == (3,) and m.kept == int(np.argmin(m.probe_objectives))
    assert m.objective == pytest.approx(m.probe_objectives[m.kept])


@pytest.mark.parametrize(
    ("fit", "bad"),
    [
        (fit_wasserstein_procrustes, dict(init="random", n_restarts=0)),
        (fit_wasserstein_procrustes, dict(solver="lbfgs")),
        (fit_wasserstein_procrustes, dict(norm="unit")),
        (fit_mini_vec2vec, dict(smoothing=1.0)),
        (fit_mini_vec2vec, dict(qap_method="exhaustive")),
        (fit_mini_vec2vec, dict(n_components=7)),
    ],
)
def test_peers_reject_bad_settings(fit, bad) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(11)
    with pytest.raises(ValueError):
        fit(rng.normal(size=(30, 6)), rng.normal(size=(30, 6)), **bad)
