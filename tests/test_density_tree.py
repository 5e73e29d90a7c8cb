"""DensityTree: merge trees of super-level sets by 0-dimensional persistence."""

from __future__ import annotations

import gudhi
import networkx as nx
import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import adjusted_rand_score

from flowmatch._merge_tree import build_forest, knn_graph
from flowmatch.density_tree import DensityTree
from flowmatch.validation import NotFittedError


def mixture(centers, sizes, sigma, seed=0):
    """Gaussian mixture sample with its exact log-density (float64)."""
    rng = np.random.default_rng(seed)
    centers = np.asarray(centers, dtype=np.float64)
    z = np.concatenate([rng.normal(c, sigma, (m, len(c))) for c, m in zip(centers, sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    w = np.asarray(sizes, dtype=np.float64) / sum(sizes)
    sq = ((z[:, None, :] - centers[None]) ** 2).sum(-1)
    d = centers.shape[1]
    logp = logsumexp(-0.5 * sq / sigma**2 + np.log(w), axis=1) - 0.5 * d * np.log(
        2 * np.pi * sigma**2
    )
    return z, logp, labels


@pytest.fixture(scope="module")
def three():
    return mixture([(0, 0, 0), (6, 0, 0), (0, 7, 0)], [500, 300, 200], 1.0)


@pytest.fixture(scope="module")
def nested():
    # two groups of two modes: within-group saddles are far higher than the between-group one
    return mixture([(-8, -2), (-8, 2), (8, -2), (8, 2)], [250, 250, 250, 250], 0.7, seed=1)


# ------------------------------------------------------------------ structure / properties
def test_three_gaussians_three_leaves_with_masses(three):
    z, logp, labels = three
    tree = DensityTree(k_neighbors=15).fit(z, labels, log_density=logp)
    assert tree.n_modes_ == 3 and tree.leaves_ == [0, 1, 2]
    assert tree.n_peaks_ >= 3
    # leaves by decreasing peak level: the heaviest component has the highest peak
    levels = [tree.tree_.nodes[v]["level"] for v in tree.leaves_]
    assert levels == sorted(levels, reverse=True)
    torch.testing.assert_close(
        tree.mode_masses(), np.array([0.5, 0.3, 0.2]), atol=0.01, rtol=0, check_dtype=False
    )
    assert adjusted_rand_score(labels, tree.labels_) > 0.97
    hist = np.stack([tree.tree_.nodes[v]["label_hist"] for v in tree.leaves_])
    assert list(hist.argmax(axis=1)) == [0, 1, 2]
    # centroids near the generating centres
    torch.testing.assert_close(
        tree.mode_centroids(),
        np.array([(0.0, 0, 0), (6, 0, 0), (0, 7, 0)]),
        atol=0.3,
        rtol=0,
    )


def test_tree_attributes_are_consistent(three):
    z, logp, labels = three
    x = np.c_[z, -z, z[:, :1] ** 2]
    tree = DensityTree(k_neighbors=15).fit(z, labels, log_density=logp, activations=x)
    g = tree.tree_
    assert nx.is_arborescence(g)
    assert tree.root_ == max(g.nodes) and g.in_degree(tree.root_) == 0
    root = g.nodes[tree.root_]
    assert root["mass"] == 1.0 and len(root["members"]) == len(z)
    assert root["peak"] == logp.max()
    torch.testing.assert_close(root["prominence"], logp.max() - logp.min())
    for v in g.nodes:
        node = g.nodes[v]
        kids = list(g.successors(v))
        assert node["peak"] >= node["level"] and node["prominence"] > 0
        if kids:
            assert len(kids) == 2
            merged = np.sort(np.concatenate([g.nodes[c]["members"] for c in kids]))
            np.testing.assert_array_equal(merged, node["members"])
            assert all(g.nodes[c]["level"] > node["level"] for c in kids)
        else:
            np.testing.assert_array_equal(node["members"], np.flatnonzero(tree.labels_ == v))
        torch.testing.assert_close(node["centroid"], z[node["members"]].mean(0))
        torch.testing.assert_close(node["centroid_x"], x[node["members"]].mean(0))
        assert node["label_hist"].sum() == len(node["members"])
    # a leaf's prominence is its (birth − death) pair of the diagram
    dgm = tree.persistence_diagram()
    for v in tree.leaves_:
        pers = g.nodes[v]["prominence"]
        assert np.isclose(dgm[:, 0] - dgm[:, 1], pers).any()


def test_nested_mixture_tree_shape(nested):
    z, logp, labels = nested
    tree = DensityTree(k_neighbors=15).fit(z, labels, log_density=logp)
    assert tree.n_modes_ == 4
    g = tree.tree_
    groups = [sorted(g.successors(c)) for c in g.successors(tree.root_)]
    assert all(len(grp) == 2 for grp in groups)  # root → two merges → two leaves each
    majority = [sorted(int(g.nodes[v]["label_hist"].argmax()) for v in grp) for grp in groups]
    assert sorted(majority) == [[0, 1], [2, 3]]
    u = tree.ultrametric()
    np.testing.assert_array_equal(u, u.T)
    np.testing.assert_array_equal(np.diag(u), [g.nodes[v]["level"] for v in tree.leaves_])
    # ultrametric inequality and: the two within-group merges sit above the root's level
    n = tree.n_modes_
    for i in range(n):
        for j in range(n):
            for k in range(n):
                assert u[i, j] >= min(u[i, k], u[k, j]) - 1e-12
    a, b = groups[0]
    assert u[a, b] > g.nodes[tree.root_]["level"]
    torch.testing.assert_close(tree.mode_masses(), np.full(4, 0.25), atol=0.01, rtol=0)


def test_persistence_pairs_equal_gudhi(nested):
    z, logp, _ = nested
    rng = np.random.default_rng(3)
    f = logp + rng.normal(0, 0.05, len(z))  # rough density: many small modes
    tree = DensityTree(k_neighbors=6).fit(z, log_density=f)
    _, nbrs = knn_graph(z, 6)
    st = gudhi.SimplexTree()
    for i in range(len(z)):
        st.insert([i], filtration=-f[i])
    for i, j in zip(np.repeat(np.arange(len(z)), 6), nbrs.ravel()):
        st.insert([int(i), int(j)], filtration=max(-f[i], -f[j]))
    pairs = st.persistence()
    ref = np.array([(-b, -d) for dim, (b, d) in pairs if dim == 0])
    ref[~np.isfinite(ref[:, 1]), 1] = f.min()  # gudhi's essential classes: death = +inf
    ours = tree.persistence_diagram()
    assert len(ours) > 10 and len(ours) == len(ref)
    key = lambda d: d[np.lexsort((d[:, 1], d[:, 0]))]  # noqa: E731
    torch.testing.assert_close(key(ours), key(ref), rtol=0, atol=1e-12)
    assert (ours[:, 0] >= ours[:, 1]).all()
    assert ours[0, 0] == f.max() and ours[0, 1] == f.min()


def test_invariant_to_rotation_and_translation(nested):
    z, logp, _ = nested
    rng = np.random.default_rng(5)
    z4 = np.c_[z, rng.normal(0, 0.3, (len(z), 2))]
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    moved = z4 @ q + rng.normal(0, 10, 4)
    a = DensityTree(k_neighbors=10).fit(z4, log_density=logp)
    b = DensityTree(k_neighbors=10).fit(moved, log_density=logp)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    torch.testing.assert_close(a.persistence_diagram(), b.persistence_diagram())
    torch.testing.assert_close(a.ultrametric(), b.ultrametric())
    torch.testing.assert_close(a.mode_masses(), b.mode_masses())
    torch.testing.assert_close(b.mode_centroids(), (a.mode_centroids() @ q) + (moved - z4 @ q)[0])


def test_pruning_rules(nested):
    z, logp, _ = nested
    full = DensityTree(k_neighbors=15).fit(z, log_density=logp)
    two = DensityTree(k_neighbors=15, n_modes=2).fit(z, log_density=logp)
    assert two.n_modes_ == 2
    group = {v: next(full.tree_.predecessors(v)) for v in full.leaves_}
    siblings = np.array([group[v] for v in full.labels_])
    assert adjusted_rand_score(two.labels_, siblings) == 1.0  # pairs of siblings join
    one = DensityTree(k_neighbors=15, n_modes=1).fit(z, log_density=logp)
    assert one.n_modes_ == 1 and (one.labels_ == 0).all()
    assert one.tree_.number_of_nodes() == 1
    pers = np.sort(full.persistence_diagram()[1:, 0] - full.persistence_diagram()[1:, 1])[::-1]
    thr = DensityTree(k_neighbors=15, min_prominence=pers[1] - 1e-9).fit(z, log_density=logp)
    assert thr.n_modes_ == 3 and thr.threshold_ == pers[1] - 1e-9
    many = DensityTree(k_neighbors=15, n_modes=10**6).fit(z, log_density=logp)
    assert many.n_modes_ == many.n_peaks_


def test_coarsened_is_nested_and_equals_a_refit(nested):
    z, logp, _ = nested
    full = DensityTree(k_neighbors=15).fit(z, log_density=logp)
    pers = np.sort(full.persistence_diagram()[1:, 0] - full.persistence_diagram()[1:, 1])[::-1]
    for cut, n_modes in ((pers[1] + 1e-9, 2), (pers[0] + 1.0, 1)):
        coarse = full.coarsened(cut)
        refit = DensityTree(k_neighbors=15, min_prominence=cut).fit(z, log_density=logp)
        assert coarse.n_modes_ == refit.n_modes_ == n_modes
        np.testing.assert_array_equal(coarse.labels_, refit.labels_)
        assert nx.is_isomorphic(coarse.tree_, refit.tree_)
        np.testing.assert_array_equal(coarse.predict(z[:50]), refit.predict(z[:50]))
        # nested: every fine mode's points all lie in the coarse mode coarse_modes names
        np.testing.assert_array_equal(full.coarse_modes(coarse)[full.labels_], coarse.labels_)
    assert full.n_modes_ == 4  # the original is untouched
    with pytest.raises(ValueError, match="at least this tree's threshold"):
        full.coarsened(full.threshold_ / 2)
    other = DensityTree(k_neighbors=15).fit(z, log_density=logp)
    with pytest.raises(ValueError, match="not a coarsened copy"):
        full.coarse_modes(other)


def test_disconnected_graph_is_joined_and_reported():
    z, logp, labels = mixture([(0, 0), (50, 0)], [100, 60], 1.0, seed=2)
    with pytest.warns(RuntimeWarning, match="2 connected components"):
        tree = DensityTree(k_neighbors=5).fit(z, labels, log_density=logp)
    assert tree.n_graph_components_ == 2 and tree.n_modes_ == 2
    assert tree.tree_.nodes[tree.root_]["level"] == logp.min()
    assert adjusted_rand_score(labels, tree.labels_) == 1.0


def test_predict_and_subsample(three):
    z, logp, labels = three
    tree = DensityTree(k_neighbors=15, max_points=600, seed=4).fit(z, labels, log_density=logp)
    assert len(tree.z_) == 600 and len(tree.fit_index_) == 600
    np.testing.assert_array_equal(tree.z_, z[tree.fit_index_])
    again = DensityTree(k_neighbors=15, max_points=600, seed=4).fit(z, labels, log_density=logp)
    np.testing.assert_array_equal(again.fit_index_, tree.fit_index_)
    np.testing.assert_array_equal(tree.predict(tree.z_), tree.labels_)
    pred = tree.predict(torch.as_tensor(z))
    assert pred.shape == (len(z),) and adjusted_rand_score(labels, pred) > 0.95
    hist = tree.tree_.nodes[tree.root_]["label_hist"]
    assert hist.sum() == 600


class _ToyAutoencoder:
    """encode = fixed linear map; latent density = isotropic Gaussian mixture."""

    def __init__(self, centers, sigma):
        self.centers = torch.as_tensor(centers, dtype=torch.float64)
        self.sigma = sigma

    def encode(self, x):
        return torch.as_tensor(x, dtype=torch.float64)[:, :2] * 2.0

    def latent_log_prob(self, z):
        sq = ((z[:, None, :] - self.centers[None]) ** 2).sum(-1)
        return torch.logsumexp(-0.5 * sq / self.sigma**2, dim=1)


def test_fit_through_an_autoencoder():
    from flowmatch.activations import ActivationSet

    z, _, labels = mixture([(0, 0), (10, 0), (0, 10)], [80, 80, 80], 1.0)
    x = np.c_[z / 2.0, np.ones((len(z), 3))]
    acts = ActivationSet(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(labels), {})
    ae = _ToyAutoencoder([(0, 0), (10, 0), (0, 10)], 1.0)
    tree = DensityTree.from_autoencoder(ae, acts, k_neighbors=10)
    assert tree.n_modes_ == 3 and tree.z_.shape == (240, 2)
    assert adjusted_rand_score(labels, tree.labels_) == 1.0
    assert tree.classes_.tolist() == [0, 1, 2]
    cx = tree.tree_.nodes[0]["centroid_x"]
    assert cx.shape == (5,)
    torch.testing.assert_close(cx[2:], np.ones(3))


def test_old_autoencoder_call_still_fits_the_same_tree():
    """``fit(autoencoder, x)`` still works during the transition, with a deprecation warning."""
    from flowmatch.activations import ActivationSet

    z, _, labels = mixture([(0, 0), (10, 0)], [60, 60], 1.0)
    acts = ActivationSet(torch.as_tensor(z / 2.0, dtype=torch.float32), None, {})
    ae = _ToyAutoencoder([(0, 0), (10, 0)], 1.0)
    with pytest.warns(DeprecationWarning, match="from_autoencoder"):
        old = DensityTree(k_neighbors=8).fit(ae, acts)
    new = DensityTree.from_autoencoder(ae, acts, k_neighbors=8)
    np.testing.assert_array_equal(old.labels_, new.labels_)
    np.testing.assert_array_equal(old.log_density_, new.log_density_)


def test_scikit_learn_estimator_contract(nested):
    """Parameters through BaseEstimator (get/set/clone/repr), fit returns self, constraints
    declared for every parameter and checked by fit."""
    from sklearn.base import clone

    z, logp, labels = nested
    tree = DensityTree(k_neighbors=7, n_modes=2)
    assert tree.get_params() == {**DensityTree().get_params(), "k_neighbors": 7, "n_modes": 2}
    assert set(DensityTree._parameter_constraints) == set(tree.get_params())
    assert repr(tree) == "DensityTree(k_neighbors=7, n_modes=2)"
    copy = clone(tree.set_params(seed=3))
    assert copy.get_params() == tree.get_params() and copy is not tree
    assert tree.fit(z, labels, log_density=logp) is tree
    assert not hasattr(copy, "tree_")
    with pytest.raises(TypeError, match="log_density="):
        DensityTree().fit(z)
    with pytest.raises(ValueError, match="k_neighbors must be >= 1, got 0"):
        tree.set_params(k_neighbors=0).fit(z, log_density=logp)


def test_plots_save_png(tmp_path, nested):
    z, logp, labels = nested
    tree = DensityTree(k_neighbors=15).fit(z, labels, log_density=logp)
    for name, fig in [("tree", tree.plot()), ("diagram", tree.plot_diagram())]:
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors():
    tree = DensityTree()
    with pytest.raises(NotFittedError):
        tree.predict(np.zeros((2, 2)))
    with pytest.raises(NotFittedError):
        tree.ultrametric()
    z = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match="log_density must have shape"):
        DensityTree().fit(z, log_density=np.zeros(19))
    with pytest.raises(ValueError, match="non-finite"):
        DensityTree().fit(z, log_density=np.r_[np.zeros(19), np.nan])
    with pytest.raises(ValueError, match="NaN"):
        DensityTree().fit(np.r_[z[:-1], [[np.nan, 0]]], log_density=np.zeros(20))
    with pytest.raises(ValueError, match="at most one"):
        DensityTree(n_modes=2, min_prominence=1.0).fit(z, log_density=np.zeros(20))
    fitted = DensityTree(k_neighbors=3).fit(z, log_density=-np.sum(z**2, 1))
    with pytest.raises(ValueError, match="dimension mismatch"):
        fitted.predict(np.zeros((2, 3)))


def test_forest_on_ties_and_duplicates():
    # constant density and duplicated points: a strict order by index still gives one mode
    z = np.repeat(np.random.default_rng(0).normal(size=(30, 2)), 2, axis=0)
    _, nbrs = knn_graph(z, 4)
    assert (nbrs != np.arange(len(z))[:, None]).all()
    forest = build_forest(nbrs, np.zeros(len(z)))
    assert forest.peaks[0] == 0


def _tree_with_a_deep_tail():
    """Three modes near log-density 0 and one far outlier at -100: the root's stem would span
    the whole axis."""
    z, logp, _ = mixture([(0, 0), (4, 0), (0, 4)], [60, 60, 60], 1.0)
    z = np.r_[z, [[9.0, 9.0]]]
    logp = np.r_[logp, -100.0]
    return DensityTree(k_neighbors=8, n_modes=3).fit(z, log_density=logp)


def test_tree_figures_clip_the_root_stem_and_the_essential_class():
    tree = _tree_with_a_deep_tail()
    levels = [tree.tree_.nodes[v]["level"] for v in tree.tree_.nodes]
    ax = tree.plot().axes[0]
    low, high = ax.get_ylim()
    assert low > -100 and low <= min(levels) and high >= max(levels)
    assert (max(levels) - min(levels)) / (high - low) > 0.5  # the tree fills the axis
    assert any("root continues to -100.0" in t.get_text() for t in ax.texts)
    ax = tree.plot_diagram().axes[0]
    assert ax.get_ylim()[0] > -100
    assert any("dies at -100.0" in t.get_text() for t in ax.texts)


def test_matched_tree_leaves_carry_their_majority_class():
    from flowmatch.figures import matched_trees
    from flowmatch.matching import match_trees

    tree = _tree_with_a_deep_tail()
    classes = [7, None, 3]
    fig = matched_trees(tree, tree, match_trees(tree, tree), classes=(classes, classes))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum("class 7" in t for t in texts) == 1 and sum("class 3" in t for t in texts) == 1
    width, height = fig.get_size_inches()
    assert width <= 12.5 and height <= 9  # legible on a page without shrinking
