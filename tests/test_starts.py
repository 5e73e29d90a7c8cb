import numpy as np
import pytest
import torch

import flowmatch.starts as starts_module
from flowmatch.coordinates import MapCoordinates
from flowmatch.starts import (
    cluster_anchors,
    mode_anchors,
    moment_start,
    normalise_rows,
    relative_pseudo_pairs,
    side_centroids,
    start_from_anchors,
)


def _clustered_rotation(n=1500, d=24, n_clusters=8, seed=0):
    """Uneven clusters in d dims; B = fresh draws rotated by q. Returns u_a, u_b, q, labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)) * 3
    weights = rng.dirichlet(np.full(n_clusters, 3.0))

    def draw(m):
        c = rng.choice(n_clusters, m, p=weights)
        return centres[c] + rng.standard_normal((m, d)), c

    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    (xa, la), (xb, lb) = draw(n), draw(n)
    xa, xb = xa - xa.mean(0), (xb - xb.mean(0)) @ q.T
    return torch.as_tensor(xa), torch.as_tensor(xb), torch.as_tensor(q), la, lb


def _cluster_alignment(rot, ua, ub, la, lb):
    """Mean cosine between each mapped A cluster mean and the B mean of the same cluster."""
    ma = torch.stack([ua[torch.as_tensor(la == c)].mean(0) for c in range(8)]) @ rot.T
    mb = torch.stack([ub[torch.as_tensor(lb == c)].mean(0) for c in range(8)])
    return float((normalise_rows(ma) * normalise_rows(mb)).sum(1).mean())


def test_cluster_anchors_pair_matching_centroids():
    ua, ub, q, *_ = _clustered_rotation()
    anchors = cluster_anchors(ua, ub, n_clusters=8, n_runs=4, n_restarts=20, seed=0)
    assert anchors.a.shape == (32, 24) and len(anchors.values) == 4
    mapped = normalise_rows(anchors.a.double() @ q.T)
    agree = (mapped * normalise_rows(anchors.b.double())).sum(1)
    assert float((agree > 0.9).double().mean()) >= 0.75  # most anchor pairs are true partners


def test_anchors_from_subsamples_match_as_well_and_are_seeded(monkeypatch):
    """Above ``max_rows`` every run clusters its own subsample (here in batches of two runs):
    the anchors still pair true partners far above chance (1/8; single runs on this mixture
    range from 0 to 1 right, with scikit-learn's k-means as with these), and the same seed
    gives the same anchors."""
    ua, ub, q, *_ = _clustered_rotation()
    monkeypatch.setattr(starts_module, "ANCHOR_BLOCK", 2 * 600 * 24)
    kw = {"n_clusters": 8, "n_runs": 5, "n_restarts": 20, "max_rows": 600, "seed": 3}
    anchors = cluster_anchors(ua, ub, **kw)
    assert anchors.a.shape == (40, 24) and len(anchors.values) == 5
    mapped = normalise_rows(anchors.a.double() @ q.T)
    agree = (mapped * normalise_rows(anchors.b.double())).sum(1)
    assert float((agree > 0.9).double().mean()) >= 0.4
    again = cluster_anchors(ua, ub, **kw)
    assert torch.equal(anchors.a, again.a) and torch.equal(anchors.b, again.b)


def test_side_centroids_draws_a_fresh_subsample_per_run():
    x = np.random.default_rng(0).standard_normal((300, 6)).astype(np.float32)
    shared = side_centroids(x, 4, 3, 300, np.random.default_rng(1))
    sub = side_centroids(x, 4, 3, 100, np.random.default_rng(1))
    assert shared.shape == sub.shape == (3, 4, 6)
    # the runs' own subsamples give different centroid sets run to run
    assert not np.allclose(sub[0], sub[1]) and not np.allclose(sub[1], sub[2])


def test_start_from_anchors_carries_each_cluster_onto_its_partner():
    ua, ub, q, la, lb = _clustered_rotation()
    anchors = cluster_anchors(ua, ub, n_clusters=8, n_runs=4, n_restarts=20, seed=0)
    rot = start_from_anchors(ua, ub, anchors, k=20)
    assert _cluster_alignment(rot, ua, ub, la, lb) > 0.95
    torch.testing.assert_close(rot @ rot.T, torch.eye(24, dtype=torch.float64))
    src, dst = relative_pseudo_pairs(ua, ub, anchors, k=20, max_rows=100)
    assert src.shape == (100, 24) and dst.shape == (100, 24)


def test_mode_anchors_are_the_matched_modes_centroids():
    ua, ub, q, la, lb = _clustered_rotation()
    truth = np.stack([np.arange(8), np.arange(8)], axis=1)
    anchors = mode_anchors(ua, ub, la, lb, truth)
    torch.testing.assert_close(anchors.a[2], normalise_rows(ua)[torch.as_tensor(la == 2)].mean(0))
    rot = start_from_anchors(ua, ub, anchors, k=20)
    assert _cluster_alignment(rot, ua, ub, la, lb) > 0.95
    with pytest.raises(ValueError, match="fewer than two"):
        mode_anchors(ua, ub, la, lb, truth[:1])


def test_moment_start_is_exact_for_skewed_axes_of_distinct_variance():
    rng = np.random.default_rng(0)
    d, n = 6, 40000
    scale = np.array([3.0, 2.4, 1.9, 1.5, 1.2, 1.0])
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    xa = (rng.gamma(2.0, 1.0, (n, d)) - 2.0) * scale
    xb = ((rng.gamma(2.0, 1.0, (n, d)) - 2.0) * scale) @ q.T
    ca, cb = MapCoordinates(d).fit(xa), MapCoordinates(d).fit(xb)
    rot = moment_start(ca.transform(xa), cb.transform(xb))
    true = cb.components_.T @ torch.as_tensor(q) @ ca.components_  # q in map coordinates
    torch.testing.assert_close(rot, true, atol=0.05, rtol=0)
