import numpy as np
import pytest
import torch

from flowmatch.density_tree import DensityTree
from flowmatch.matching import match_trees, summarise_tree

CENTRES = np.array(
    [[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 13.0], [8.0, 8.0, 8.0]]
)


def _cloud(rng, centres, n_per=150):
    z = np.concatenate([c + 0.6 * rng.standard_normal((n_per, 3)) for c in centres])
    diff = z[:, None, :] - centres[None]
    logp = np.log(np.exp(-0.5 * (diff**2).sum(-1) / 0.36).sum(1))
    return z, logp


def _tree(z, logp):
    return DensityTree(k_neighbors=10, min_prominence=1.0).fit(z, log_density=logp, activations=z)


def _leaf_cluster(tree, centres):
    cent = tree.mode_centroids()
    return np.linalg.norm(cent[:, None] - centres[None], axis=-1).argmin(1)


@pytest.mark.parametrize("drop", [None, 3])
def test_rotated_trees_match_their_counterparts(drop):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    za, la = _cloud(rng, CENTRES)
    kept = CENTRES if drop is None else np.delete(CENTRES, drop, axis=0)
    zb, lb = _cloud(rng, kept)
    zb = 1.7 * zb @ q.T + np.array([5.0, -2.0, 1.0])  # rotation, scale and shift of B
    ta, tb = _tree(za, la), _tree(zb, lb)
    m = match_trees(ta, tb, seed=0)
    ca = _leaf_cluster(ta, CENTRES)
    cb = _leaf_cluster(tb, (kept * 1.7) @ q.T + np.array([5.0, -2.0, 1.0]))
    kept_ids = [i for i in range(len(CENTRES)) if i != drop]
    assert len(m.leaf_pairs) == len(kept)
    for i, j in m.leaf_pairs:
        assert ca[i] == kept_ids[cb[j]]
    assert m.confidence.min() > 0.5
    assert m.coupling.shape == (len(ta.leaves_), len(tb.leaves_))


def test_summary_is_invariant_to_rotation_and_matching_is_seeded():
    rng = np.random.default_rng(1)
    z, logp = _cloud(rng, CENTRES)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    s1 = summarise_tree(_tree(z, logp), "latent")
    s2 = summarise_tree(_tree(z @ q.T + 3.0, logp), "latent")
    np.testing.assert_allclose(s1.distances, s2.distances, atol=1e-8)
    ta = _tree(z, logp)
    m1, m2 = match_trees(ta, ta, seed=3), match_trees(ta, ta, seed=3)
    np.testing.assert_array_equal(m1.leaf_pairs, m2.leaf_pairs)
    np.testing.assert_array_equal(m1.leaf_pairs[:, 0], m1.leaf_pairs[:, 1])


def test_bad_space_is_an_error():
    rng = np.random.default_rng(2)
    t = _tree(*_cloud(rng, CENTRES[:2]))
    with pytest.raises(ValueError, match="space"):
        summarise_tree(t, "pixels")
    assert torch.is_tensor(torch.as_tensor(t.mode_centroids()))
