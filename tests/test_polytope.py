"""Tests for the polytope lens: spline codes, path density, clusters, and the comparison method."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.metrics import adjusted_rand_score
from torch import nn

from baselines.base import FitData, get_method, list_methods
from baselines.polytope import (
    bootstrap_ci,
    class_path_density,
    cluster_codes,
    cluster_purity,
    hamming_distances,
    length_matched_ratio,
    path_density,
    relu_layers,
    sample_class_paths,
    spline_codes,
)
from flowmatch.validation import NotFittedError


def _one_layer_net(n_hidden: int = 7, seed: int = 0) -> nn.Sequential:
    """2-D input, one hidden ReLU layer: its boundaries are the lines w_k·x + b_k = 0."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(2, n_hidden), hidden=nn.ReLU(), out=nn.Linear(n_hidden, 3))
    ).double()


def _two_layer_net(seed: int = 0, d_in: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(d_in, 6),
            relu1=nn.ReLU(),
            fc2=nn.Linear(6, 5),
            hidden=nn.ReLU(),
            out=nn.Linear(5, 3),
        )
    ).double()


# ----------------------------------------------------------------------------- codes
def test_relu_layers_found_by_type_and_upto():
    net = _two_layer_net()
    assert relu_layers(net) == ["relu1", "hidden"]
    assert relu_layers(net, upto="relu1") == ["relu1"]
    assert relu_layers(net, upto="fc2") == ["relu1"]
    with pytest.raises(KeyError, match="no layer"):
        relu_layers(net, upto="nope")
    nested = nn.Sequential(
        OrderedDict(block=nn.Sequential(nn.Linear(2, 2), nn.ReLU()), act=nn.ReLU())
    )
    assert relu_layers(nested, upto="block") == ["block.1"]
    assert relu_layers(nested) == ["block.1", "act"]
    with pytest.raises(ValueError, match="no ReLU"):
        relu_layers(nn.Sequential(nn.Linear(2, 2)))


def test_spline_codes_match_manual_sign_patterns():
    net = _two_layer_net(seed=3)
    x = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h1 = net.fc1(x)
    h2 = net.fc2(torch.relu(h1))
    codes = spline_codes(net, x, device="cpu")
    assert codes.dtype == torch.bool and codes.shape == (50, 11)
    torch.testing.assert_close(codes, torch.cat([h1 > 0, h2 > 0], dim=1))
    torch.testing.assert_close(spline_codes(net, x, ["hidden"], device="cpu"), h2 > 0)
    torch.testing.assert_close(
        spline_codes(net, x, ["hidden", "relu1"], device="cpu"), torch.cat([h2 > 0, h1 > 0], 1)
    )
    # batching does not change the result
    torch.testing.assert_close(spline_codes(net, x, batch_size=7, device="cpu"), codes)


def test_spline_codes_flatten_conv_channels_in_torch_order():
    torch.manual_seed(0)
    conv = nn.Conv1d(1, 3, kernel_size=3, padding=1)
    net = nn.Sequential(
        OrderedDict(
            unflatten=nn.Unflatten(1, (1, 8)),
            conv1=conv,
            crelu1=nn.ReLU(),
            flatten=nn.Flatten(),
            out=nn.Linear(24, 2),
        )
    )
    x = torch.randn(5, 8)
    expected = (conv(x[:, None, :]) > 0).reshape(5, -1)
    torch.testing.assert_close(spline_codes(net, x, device="cpu"), expected)


def test_spline_codes_bad_input():
    net = _two_layer_net()
    with pytest.raises(ValueError, match="NaN"):
        spline_codes(net, torch.full((3, 4), float("nan")), device="cpu")
    with pytest.raises(ValueError, match="2-D"):
        spline_codes(net, torch.zeros(4), device="cpu")
    with pytest.raises(ValueError, match="empty"):
        spline_codes(net, torch.zeros(2, 4), [], device="cpu")
    with pytest.raises(KeyError, match="no layer"):
        spline_codes(net, torch.zeros(2, 4), ["relu9"], device="cpu")
    relu = nn.ReLU()
    shared = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu)
    with pytest.raises(ValueError, match="2 times"):
        spline_codes(shared, torch.zeros(2, 4), device="cpu")


def test_hamming_distances_match_scipy():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(20, 13, generator=gen) > 0.5
    b = torch.rand(9, 13, generator=gen) > 0.3
    expected = torch.as_tensor(cdist(a.numpy(), b.numpy(), "hamming"))
    torch.testing.assert_close(hamming_distances(a, b), expected)
    assert torch.all(hamming_distances(a).diagonal() == 0)


# ----------------------------------------------------------------------------- paths
def _crossing_profile(net: nn.Sequential, x0: torch.Tensor, x1: torch.Tensor, n_steps: int):
    """Analytic step index of every hyperplane the segment x0 → x1 crosses."""
    w, b = net.fc1.weight.detach(), net.fc1.bias.detach()
    h0, h1 = x0 @ w.T + b, x1 @ w.T + b  # (n_hidden,)
    crossed = (h0 > 0) != (h1 > 0)
    t = h0 / (h0 - h1)  # where w·x(t) + b = 0
    steps = torch.floor(t[crossed] * (n_steps - 1)).long()
    profile = torch.zeros(n_steps - 1, dtype=torch.long)
    profile.index_add_(0, steps, torch.ones_like(steps))
    return profile


def test_path_counts_equal_analytic_hyperplane_crossings():
    net = _one_layer_net(n_hidden=9)
    gen = torch.Generator().manual_seed(2)
    x0 = 3 * torch.randn(25, 2, dtype=torch.float64, generator=gen)
    x1 = 3 * torch.randn(25, 2, dtype=torch.float64, generator=gen)
    n_steps = 301
    res = path_density(net, x0, x1, n_steps=n_steps, device="cpu")
    expected = torch.stack([_crossing_profile(net, a, b, n_steps) for a, b in zip(x0, x1)])
    assert expected.sum() > 25  # the paths do cross several lines
    torch.testing.assert_close(res.changes, expected)
    torch.testing.assert_close(res.total, expected.sum(1).double())
    torch.testing.assert_close(res.density, expected.sum(1).double() / (x1 - x0).norm(dim=1))
    torch.testing.assert_close(res.layer_changes[:, 0], expected.sum(1))
    regions = path_density(net, x0, x1, n_steps=n_steps, count="regions", device="cpu")
    torch.testing.assert_close(regions.changes, (expected > 0).long())


def test_path_density_invariant_to_direction():
    net = _two_layer_net(seed=5)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(12, 4, dtype=torch.float64, generator=gen)
    x1 = torch.randn(12, 4, dtype=torch.float64, generator=gen)
    fwd = path_density(net, x0, x1, n_steps=200, device="cpu")
    bwd = path_density(net, x1, x0, n_steps=200, device="cpu", batch_points=512)
    torch.testing.assert_close(bwd.changes, fwd.changes.flip(1))
    torch.testing.assert_close(bwd.density, fwd.density)
    assert fwd.total.sum() > 0


def test_path_total_bounded_below_by_endpoint_hamming():
    net = _two_layer_net(seed=7)
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(30, 4, dtype=torch.float64, generator=gen)
    x1 = torch.randn(30, 4, dtype=torch.float64, generator=gen)
    res = path_density(net, x0, x1, n_steps=64, device="cpu")
    c0, c1 = spline_codes(net, x0, device="cpu"), spline_codes(net, x1, device="cpu")
    assert torch.all(res.total >= (c0 != c1).sum(1).double())
    torch.testing.assert_close(res.layer_changes.sum(1), res.changes.sum(1))


def test_path_density_bad_input():
    net = _two_layer_net()
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="zero length"):
        path_density(net, x, x.clone(), device="cpu")
    with pytest.raises(ValueError, match="one end per start"):
        path_density(net, x, x[:2], device="cpu")
    with pytest.raises(ValueError, match="dimension mismatch"):
        path_density(net, x, torch.randn(3, 5), device="cpu")
    with pytest.raises(ValueError, match="n_steps"):
        path_density(net, x, x + 1, n_steps=1, device="cpu")
    with pytest.raises(KeyError, match="unknown count"):
        path_density(net, x, x + 1, count="bits", device="cpu")


def test_path_length_in_preactivation_space_of_an_affine_layer_is_exact():
    """Before the first ReLU the path stays straight: its image has length ‖W (x1 − x0)‖."""
    net = _one_layer_net(n_hidden=9)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(10, 2, dtype=torch.float64, generator=gen)
    x1 = torch.randn(10, 2, dtype=torch.float64, generator=gen)
    res = path_density(net, x0, x1, n_steps=33, device="cpu")
    expected = ((x1 - x0) @ net.fc1.weight.detach().T).norm(dim=1)
    torch.testing.assert_close(res.layer_length[:, 0], expected)
    assert res.layer_units == (9,)
    torch.testing.assert_close(
        res.layer_density("preact")[:, 0], res.layer_changes[:, 0].double() / expected
    )
    torch.testing.assert_close(res.layer_density("input"), res.density[:, None])
    with pytest.raises(KeyError, match="unknown normalisation"):
        res.layer_density("output")


def test_first_layer_count_is_exact_at_any_resolution_deeper_layers_converge():
    """The first layer is affine along a path (one flip per unit at most): endpoint Hamming
    distance, even with 2 points. Deeper layers may flip back and forth within a step."""
    net = _two_layer_net(seed=8)
    gen = torch.Generator().manual_seed(6)
    x0 = 2 * torch.randn(40, 4, dtype=torch.float64, generator=gen)
    x1 = 2 * torch.randn(40, 4, dtype=torch.float64, generator=gen)
    c0 = spline_codes(net, x0, ["relu1"], device="cpu")
    c1 = spline_codes(net, x1, ["relu1"], device="cpu")
    coarse = path_density(net, x0, x1, n_steps=2, device="cpu")
    fine = path_density(net, x0, x1, n_steps=1025, device="cpu")
    finer = path_density(net, x0, x1, n_steps=2049, device="cpu")  # contains fine's points
    torch.testing.assert_close(coarse.layer_changes[:, 0], (c0 != c1).sum(1))
    torch.testing.assert_close(fine.layer_changes[:, 0], (c0 != c1).sum(1))
    assert coarse.layer_changes[:, 1].sum() < fine.layer_changes[:, 1].sum()  # misses flips
    torch.testing.assert_close(finer.layer_changes, fine.layer_changes)
    # the polyline through more points of a piecewise-linear curve is longer, and converges
    assert torch.all(finer.layer_length >= fine.layer_length * (1 - 1e-9))
    torch.testing.assert_close(finer.layer_length, fine.layer_length, rtol=1e-3, atol=0)
    # hidden-layer length is the polyline through the sampled pre-activations, not the chord
    t = torch.linspace(0, 1, 1025, dtype=torch.float64)[:, None]
    for p in range(3):
        pts = (1 - t) * x0[p] + t * x1[p]  # (1025, 4)
        h2 = net.fc2(torch.relu(net.fc1(pts))).detach()
        polyline = (h2[1:] - h2[:-1]).norm(dim=1).sum()
        torch.testing.assert_close(fine.layer_length[p, 1], polyline)
    chord = (net.fc2(torch.relu(net.fc1(x1))) - net.fc2(torch.relu(net.fc1(x0)))).norm(dim=1)
    assert torch.all(fine.layer_length[:, 1] >= chord.detach() * (1 - 1e-9))
    assert torch.any(fine.layer_length[:, 1] > 1.05 * chord.detach())  # bent by relu1


def test_sample_class_paths_are_balanced_matched_and_seeded():
    y = torch.tensor([0] * 30 + [1] * 12 + [2] * 50 + [3])  # class 3 has one row: no intra path
    ends = sample_class_paths(y, 100, seed=0)
    assert ends.shape == (100, 3) and ends.dtype == torch.long
    start, same, other = y[ends[:, 0]], y[ends[:, 1]], y[ends[:, 2]]
    assert torch.all(start == same) and torch.all(ends[:, 0] != ends[:, 1])
    assert torch.all(start != other)
    counts = torch.bincount(start, minlength=4)
    assert counts[3] == 0 and counts[:3].max() - counts[:3].min() <= 1  # balanced starts
    # class 1 has 12 rows for 33 or 34 starts: every row used 2 or 3 times (no replacement
    # until the class runs out)
    uses = torch.bincount(ends[start == 1, 0], minlength=len(y))[30:42]
    assert uses.min() >= 2 and uses.max() <= 3
    # other-class ends spread over the other classes, class 3 included
    assert set(other.tolist()) == {0, 1, 2, 3}
    torch.testing.assert_close(sample_class_paths(y, 100, seed=0), ends)
    assert not torch.equal(sample_class_paths(y, 100, seed=1), ends)
    x = torch.zeros(len(y), 2)  # every input identical: no valid end exists
    with pytest.raises(ValueError, match="duplicate"):
        sample_class_paths(y, 5, inputs=x)
    with pytest.raises(ValueError, match="one class"):
        sample_class_paths(torch.zeros(5), 3)
    with pytest.raises(ValueError, match="two samples"):
        sample_class_paths(torch.arange(5), 3)
    with pytest.raises(ValueError, match="positive"):
        sample_class_paths(y, 0)


def test_class_path_density_sees_boundaries_between_classes():
    """All hyperplanes sit between two well-separated classes: intra paths cross none."""
    net = _one_layer_net(n_hidden=6)
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1.0, 0.1 * k] for k in range(6)], dtype=torch.float64))
        net.fc1.bias.copy_(torch.linspace(-0.5, 0.5, 6, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 2
    x = 0.3 * torch.randn(80, 2, dtype=torch.float64, generator=gen)
    x[:, 0] += torch.where(y == 0, -3.0, 3.0).double()
    res = class_path_density(net, x, y, n_pairs=60, n_steps=128, n_boot=500, device="cpu")
    assert res.intra.total.sum() == 0
    torch.testing.assert_close(res.inter.total, torch.full((60,), 6.0, dtype=torch.float64))
    assert res.intra_ci.mean == 0 and res.inter_ci.low > 0
    assert res.ratio_ci.mean == float("inf")
    assert torch.all(y[res.inter_pairs[:, 0]] != y[res.inter_pairs[:, 1]])
    assert torch.equal(res.intra_pairs[:, 0], res.inter_pairs[:, 0])  # shared starts
    torch.testing.assert_close(
        res.intra.length, (x[res.intra_pairs[:, 0]] - x[res.intra_pairs[:, 1]]).norm(dim=1)
    )


def test_layer_ratios_per_layer_and_whole_code():
    """Layer 1 separates the classes, layer 2 is blind to the class direction."""
    net = nn.Sequential(
        OrderedDict(fc1=nn.Linear(2, 4), relu1=nn.ReLU(), fc2=nn.Linear(4, 3), hidden=nn.ReLU())
    ).double()
    with torch.no_grad():  # units 3, 4 pass x_1 on (never flip for |x_1| < 10)
        net.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
        net.fc1.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 10.0]))
        net.fc2.weight.copy_(torch.tensor([[0.0, 0.0, 1.0, -1.0]] * 3))  # = 2 x_1
        net.fc2.bias.copy_(torch.tensor([-0.5, 0.0, 0.5]))
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(200) % 2
    x = torch.randn(200, 2, dtype=torch.float64, generator=gen)
    x[:, 0] = torch.where(y == 0, -1.0, 1.0) * (1 + x[:, 0].abs())  # class = sign of x_0
    res = class_path_density(net, x, y, n_pairs=80, n_steps=64, n_boot=300, device="cpu")
    by_layer = res.layer_ratios("input", n_boot=300)
    assert [r.layer for r in by_layer] == ["relu1", "hidden", "all"]
    relu1, hidden, whole = by_layer
    assert relu1.intra.mean == 0 and relu1.inter.low > 0  # only inter paths cross x_0 = 0
    torch.testing.assert_close(res.inter.layer_changes[:, 0], torch.full((80,), 2))
    # "hidden" sees only x_1 (its pre-activation is x_1 + b): as many flips on both kinds of
    # path, but inter paths are longer in the input, so per unit input distance inter < intra;
    # per unit of its own pre-activation length the two agree.
    assert hidden.ratio.high < 0.8
    preact = res.layer_ratios("preact", whole=False, n_boot=300)
    assert [r.layer for r in preact] == ["relu1", "hidden"] and preact[1].normalise == "preact"
    assert preact[1].ratio.low < 1 < preact[1].ratio.high
    assert whole.ratio.mean == res.ratio_ci.mean and whole.normalise == "input"


# ----------------------------------------------------------------------------- statistics
def test_bootstrap_ci_properties():
    rng = np.random.default_rng(0)
    v = rng.normal(2.0, 1.0, size=400)
    ci = bootstrap_ci(v, n_boot=4000, seed=0)
    assert ci.low < ci.mean < ci.high and ci.mean == pytest.approx(v.mean())
    # normal-theory half-width 1.96 σ / √n, within 15 %
    assert (ci.high - ci.low) / 2 == pytest.approx(1.96 * v.std() / 20, rel=0.15)
    const = bootstrap_ci(np.full(10, 3.0))
    assert const.low == const.high == const.mean == 3.0
    ratio = bootstrap_ci(2 * v, against=v, seed=1)
    assert ratio.mean == pytest.approx(2.0) and ratio.low < 2.0 < ratio.high
    assert bootstrap_ci(v, seed=5) == bootstrap_ci(v, seed=5)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(v, level=1.5)


def test_paired_bootstrap_uses_the_pairing():
    rng = np.random.default_rng(1)
    base = rng.lognormal(0.0, 1.0, size=300)  # large spread shared by both samples
    inter = 1.1 * base * rng.lognormal(0.0, 0.05, size=300)
    paired = bootstrap_ci(inter, against=base, paired=True, seed=0)
    independent = bootstrap_ci(inter, against=base, seed=0)
    assert paired.mean == independent.mean == pytest.approx(inter.mean() / base.mean())
    assert paired.low > 1.05 and paired.high < 1.15  # tight: the shared spread cancels
    assert (paired.high - paired.low) < 0.3 * (independent.high - independent.low)
    with pytest.raises(ValueError, match="equal lengths"):
        bootstrap_ci(inter, against=base[:10], paired=True)


def test_length_matched_ratio_removes_a_length_effect_and_keeps_a_real_one():
    rng = np.random.default_rng(0)
    n = 600
    li = rng.uniform(1.0, 3.0, n)
    le = rng.uniform(1.5, 4.0, n)  # inter paths longer, overlapping range
    sublinear = lambda length: length**0.5 / length  # noqa: E731  count ∝ √length
    noise = lambda: rng.lognormal(0.0, 0.1, n)  # noqa: E731
    di, de = sublinear(li) * noise(), sublinear(le) * noise()
    raw = bootstrap_ci(de, against=di, paired=True)
    assert raw.high < 0.95  # longer inter paths look less dense
    same = length_matched_ratio(di, li, de, le, n_bins=8, n_boot=500)
    # most of the deficit goes; length differences within a bin leave a small residual
    assert abs(same.mean - 1) < 0.25 * abs(raw.mean - 1) and same.high > 0.97
    real = length_matched_ratio(di, li, 1.5 * de, le, n_bins=8, n_boot=500)
    assert real.mean == pytest.approx(1.5, abs=0.08) and real.low > 1.3
    apart = length_matched_ratio(di, li, de, li + 10.0, n_bins=4, n_boot=50)  # no overlap
    assert np.isnan(apart.mean)
    with pytest.raises(ValueError, match="common length"):
        length_matched_ratio(di, li, de[:5], le)


def test_cluster_purity_hand_example():
    clusters = np.array([0, 0, 0, 1, 1, -1])
    labels = np.array([5, 5, 7, 7, 7, 5])
    s = cluster_purity(clusters, labels)
    assert s.n_clusters == 2 and s.n_points == 6
    assert s.purity == pytest.approx(4 / 5)
    assert s.noise_fraction == pytest.approx(1 / 6)
    assert s.ari == pytest.approx(adjusted_rand_score(labels, clusters))
    assert np.isnan(cluster_purity(np.full(3, -1), np.arange(3)).purity)
    with pytest.raises(ValueError, match="cluster labels"):
        cluster_purity(clusters, labels[:3])


@pytest.mark.parametrize("method", ["hdbscan", "kmeans"])
def test_cluster_codes_recovers_planted_codes(method):
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.rand(3, 60, generator=gen) > 0.5
    truth = torch.arange(150) % 3
    flips = torch.rand(150, 60, generator=gen) < 0.05
    codes = prototypes[truth] ^ flips
    params = {"n_clusters": 3} if method == "kmeans" else {"min_cluster_size": 10}
    labels = cluster_codes(codes, method, seed=0, **params)
    assert adjusted_rand_score(truth.numpy(), labels) > 0.95
    with pytest.raises(KeyError, match="unknown clusterer"):
        cluster_codes(codes, "spectral")


# ----------------------------------------------------------------------------- method
def _fit_data(seed: int = 0, n: int = 160) -> FitData:
    gen = torch.Generator().manual_seed(seed)
    model_a, model_b = (
        _two_layer_net(seed=1, d_in=4).float(),
        _two_layer_net(seed=2, d_in=4).float(),
    )
    x = torch.randn(2 * n, 4, generator=gen)
    x[:, 0] += 4 * (torch.arange(2 * n) % 3).float()  # three groups of inputs
    xa, xb = x[:n], x[n:]
    with torch.no_grad():
        a = torch.relu(model_a.fc2(torch.relu(model_a.fc1(xa))))
        b = torch.relu(model_b.fc2(torch.relu(model_b.fc1(xb))))
    return FitData(
        a=a, b=b, model_a=model_a, model_b=model_b, layer_a="hidden", layer_b="hidden",
        inputs_a=xa, inputs_b=xb, seed=seed,
    )  # fmt: skip


def test_method_is_registered_unpaired():
    assert "polytope" in list_methods()
    m = get_method("polytope", n_clusters=3)
    assert m.paired is False and "spline codes" in m.uses


def test_method_fit_transform_shapes():
    data = _fit_data()
    m = get_method("polytope", n_clusters=3, max_cluster_rows=100).fit(data)
    out = m.transform(data.a[:11])
    assert out.shape == (11, 5) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert m.n_pairs_used_ == 0 and m.layers_a_ == ["relu1", "hidden"]
    assert m.labels_a_.shape == (160,) and m.labels_a_.min() >= 0
    assert len(np.unique(m.labels_a_)) == 3 and len(m.cluster_pairs_) == 3
    assert m.matrix_.shape == (5, 5) and m.bias_.shape == (5,)
    torch.testing.assert_close(
        out.double(), data.a[:11].double() @ m.matrix_.T + m.bias_, rtol=1e-5, atol=1e-5
    )


def test_method_hdbscan_subsample_labels_every_row():
    data = _fit_data(seed=0)
    m = get_method("polytope", clusterer="hdbscan", min_cluster_size=8, max_cluster_rows=100)
    m.fit(data)
    assert m.labels_a_.shape == (160,) and m.labels_b_.shape == (160,)
    # 60 rows lie outside the clustered subsample: each gets a cluster, so at most 100 are noise
    assert (m.labels_a_ >= 0).sum() >= 60 and (m.labels_b_ >= 0).sum() >= 60
    assert m.transform(data.a).shape == (160, 5)


def test_method_bad_input():
    m = get_method("polytope", n_clusters=3)
    with pytest.raises(NotFittedError):
        m.transform(torch.zeros(2, 5))
    data = _fit_data()
    no_model = FitData(**{**data.__dict__, "model_a": None})
    with pytest.raises(ValueError, match="model_a"):
        get_method("polytope").fit(no_model)
    short = FitData(**{**data.__dict__, "inputs_b": data.inputs_b[:10]})
    with pytest.raises(ValueError, match="inputs_b has 10 rows"):
        get_method("polytope").fit(short)
    with pytest.raises(KeyError, match="unknown clusterer"):
        get_method("polytope", clusterer="spectral").fit(data)
    with pytest.raises(KeyError, match="unknown region"):
        get_method("polytope", region="everything").fit(data)


def test_layer_density_figure_has_a_panel_pair_per_model():
    from benchmarks.polytope import layer_density_figure

    net = _two_layer_net(seed=4)
    gen = torch.Generator().manual_seed(2)
    y = torch.arange(60) % 3
    x = torch.randn(60, 4, dtype=torch.float64, generator=gen) + 2 * y[:, None].double()
    res = class_path_density(net, x, y, n_pairs=30, n_steps=16, n_boot=50, device="cpu")
    fig = layer_density_figure([("m1", res, res), ("m2", res, None)], n_boot=50)
    axes = fig.get_axes()
    assert len(axes) == 4
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["relu1", "hidden", "all"]
    assert axes[0].get_title() == "m1" and axes[0].get_yscale() == "log"
    assert len(fig.legends[0].get_texts()) == 4  # three normalisations + untrained control
    with pytest.raises(ValueError, match="empty"):
        layer_density_figure([])
