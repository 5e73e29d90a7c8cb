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


def _matching():
    rng = np.random.default_rng(5)
    ta, tb = _tree(*_cloud(rng, CENTRES)), _tree(*_cloud(rng, CENTRES[:4]))
    return match_trees(ta, tb, seed=0)


def test_objective_and_crossing_mass_are_separate_fields():
    from flowmatch.matching import TreeMatching

    m = _matching()
    assert m.method == "exhaustive" and m.objective is not None and m.crossing_mass is None
    assert m.cost == m.objective  # the former single field, kept while callers move
    legacy = TreeMatching(m.leaf_pairs, m.confidence, (), m.coupling, 1, "transport", cost=0.25)
    assert legacy.crossing_mass == 0.25 and legacy.objective is None and legacy.cost == 0.25


def test_swapped_is_the_same_matching_from_the_other_side():
    m = _matching()
    s = m.swapped()
    np.testing.assert_array_equal(s.leaf_pairs, m.leaf_pairs[:, ::-1])
    np.testing.assert_array_equal(s.coupling, m.coupling.T)
    assert s.node_pairs == tuple((b, a) for a, b in m.node_pairs)
    np.testing.assert_array_equal(s.swapped().leaf_pairs, m.leaf_pairs)
    assert (s.objective, s.method, s.n_candidates) == (m.objective, m.method, m.n_candidates)


def test_state_round_trip_and_format_checks():
    import json

    from flowmatch.matching import MATCHING_FORMAT, TreeMatching

    m = _matching()
    arrays, meta = m.to_state()
    assert meta["format"] == MATCHING_FORMAT and json.loads(json.dumps(meta)) == meta
    back = TreeMatching.from_state(arrays, json.loads(json.dumps(meta)))
    np.testing.assert_array_equal(back.leaf_pairs, m.leaf_pairs)
    np.testing.assert_array_equal(back.coupling, m.coupling)
    assert back.node_pairs == m.node_pairs and back.objective == m.objective
    # the unversioned state of earlier Translation files: one "cost", node ids as strings
    old = {k: meta[k] for k in ("n_candidates", "method")}
    old.update(cost=0.5, node_pairs=[[str(a), str(b)] for a, b in m.node_pairs])
    assert TreeMatching.from_state(arrays, old).objective == 0.5
    with pytest.raises(ValueError, match="format 2; this flowmatch reads formats up to 1"):
        TreeMatching.from_state(arrays, {**meta, "format": 2})
    with pytest.raises(ValueError, match="'leaf_pairs' indexes leaves outside"):
        TreeMatching.from_state({**arrays, "leaf_pairs": arrays["leaf_pairs"] + 9}, meta)
    with pytest.raises(ValueError, match="'confidence' has shape"):
        TreeMatching.from_state({**arrays, "confidence": np.zeros(1)}, meta)
    with pytest.raises(ValueError, match="'method' must be str"):
        TreeMatching.from_state(arrays, {**meta, "method": 3})
