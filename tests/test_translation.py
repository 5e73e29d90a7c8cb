import numpy as np
import pytest
import torch

from flowmatch.translation import Translation, translate

CENTRES = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [7.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 10.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 13.0, 0.0, 0.0],
        [6.0, 6.0, 6.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 9.0, 5.0],
    ]
)
AE = {"latent_dim": 5, "n_components": 6, "max_epochs": 15, "progress": False}


def _draw(rng, n):
    return CENTRES[rng.integers(0, len(CENTRES), n)] + 0.5 * rng.standard_normal((n, 5))


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    shift = rng.standard_normal(5) * 3
    to_b = lambda x: x @ q.T + shift  # noqa: E731
    a, b = _draw(rng, 1200), to_b(_draw(rng, 1200))  # different samples: no pairs
    test = _draw(rng, 300)
    t = translate(a, b, autoencoder_params=AE, seed=0, progress=False)
    return a, b, test, to_b(test), t


def test_rotation_and_shift_are_recovered_without_pairs(synthetic):
    a, b, test_a, test_b, t = synthetic
    score = t.score(test_a, test_b)
    assert score.r2 >= 0.99
    assert score.top1 > 0.5
    assert len(t.matching_.leaf_pairs) == len(CENTRES)
    out = t(test_a.astype(np.float32))
    assert isinstance(out, np.ndarray) and out.shape == (300, 5)
    assert isinstance(t(torch.as_tensor(test_a)), torch.Tensor)


def test_reported_mode_pairs_are_the_ones_the_map_carries(synthetic):
    *_, t = synthetic
    m = t.matching_
    assert m.method == "transport" and np.all(m.confidence >= 0.75)
    cent = lambda tree: np.stack([tree.tree_.nodes[v]["centroid_x"] for v in tree.leaves_])  # noqa: E731
    mapped = t(cent(t.tree_a_).astype(np.float32))
    nearest = np.linalg.norm(mapped[:, None] - cent(t.tree_b_)[None], axis=-1).argmin(1)
    np.testing.assert_array_equal(nearest[m.leaf_pairs[:, 0]], m.leaf_pairs[:, 1])


def test_the_lowest_cost_candidate_is_kept(synthetic):
    *_, t = synthetic
    costs = t.info_["transport_costs"]
    assert set(costs) == {"tree", *(f"gw{i}" for i in range(6))}
    assert t.info_["initialisation"] == min(costs, key=costs.get)


def test_tree_matching_alone_recovers_the_map(synthetic):
    a, b, test_a, test_b, _ = synthetic
    t = translate(a, b, autoencoder_params=AE, n_gw_starts=0, seed=0, progress=False)
    assert t.info_["initialisation"] == "tree" and set(t.info_["transport_costs"]) == {"tree"}
    assert t.score(test_a, test_b).r2 >= 0.99


def test_the_map_can_act_on_the_flow_latents(synthetic):
    a, b, test_a, test_b, t = synthetic
    assert t.space_ == "pca" and t.info_["space"] == "pca"
    t_lat = translate(a, b, autoencoder_params=AE, space="latent", seed=0, progress=False)
    assert t_lat.space_ == "latent"
    assert t_lat.score(test_a, test_b).r2 >= 0.95
    with pytest.raises(ValueError, match="space"):
        translate(a, b, autoencoder_params=AE, space="whitened", progress=False)


def test_inverse_goes_back(synthetic):
    _, _, test_a, test_b, t = synthetic
    assert t.inverse().score(test_b, test_a).r2 >= 0.98


def test_same_seed_same_result_and_row_order_does_not_matter(synthetic):
    a, b, _, _, t = synthetic
    perm = np.random.default_rng(5).permutation(len(a))
    t2 = translate(a[perm], b, autoencoder_params=AE, seed=0, progress=False)
    torch.testing.assert_close(t2.matrix_, t.matrix_)
    torch.testing.assert_close(t2.bias_, t.bias_)


def test_save_load_round_trip(synthetic, tmp_path):
    _, _, test_a, _, t = synthetic
    t.save(tmp_path / "tr")
    back = Translation.load(tmp_path / "tr")
    np.testing.assert_allclose(back(test_a), t(test_a), atol=1e-5)
    np.testing.assert_array_equal(back.matching_.leaf_pairs, t.matching_.leaf_pairs)


def test_errors(synthetic):
    a, b, test_a, test_b, t = synthetic
    with pytest.raises(ValueError, match="features"):
        t(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="rows must pair"):
        t.score(test_a, test_b[:10])
    with pytest.raises(ValueError, match="outside"):
        translate(a, b, pairs=([0, 5000], [0, 1]), autoencoder_params=AE, progress=False)
    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.validation import NotFittedError

    with pytest.raises(NotFittedError):
        translate(FlowAutoencoder(), FlowAutoencoder(), progress=False)


def test_digits_zero_pair_regression_floor(digits_pair):
    """Zero-pair translation on digits-mlp under the protocol (disjoint shuffled halves).

    Measured at about 0.98 of the supervised affine stitched accuracy; the floor sits below so
    that machine-level numeric differences do not trip it, but a broken stage does.
    """
    from flowmatch.compare import protocol_data

    data, reference = protocol_data(digits_pair, n_pairs=0, seed=0)
    t = translate(data.a, data.b, seed=0, progress=False)
    test_a = digits_pair.activations("a", "test").x
    test_b = digits_pair.activations("b", "test").x
    y = digits_pair.data.y_test
    score = t.score(test_a, test_b, head_b=digits_pair.head_b, y=y)
    from flowmatch.alignment import apply_map, fit_affine
    from flowmatch.metrics import stitched_accuracy

    m, c = fit_affine(reference.pairs_a, reference.pairs_b)
    supervised = stitched_accuracy(apply_map(test_a, m, c), digits_pair.head_b, y)
    assert score.stitched_accuracy / supervised >= 0.85
    assert score.r2 >= 0.8
