import numpy as np
import pytest
import torch
from _synthetic import manifold_rotation_pair

from flowmatch.settings import TranslateSettings
from flowmatch.translation import Translation, search_widths, translate
from flowmatch.validation import canonical_order

AE = {"latent_dim": 4, "n_components": 4, "hidden": 16, "max_steps": 30, "progress": False}
ALL_STARTS = ["clusters", "moments", "gw", "clusters_full"]
FAST = {"n_anchor_runs": 10, "n_probe": 10, "n_refine": 40, "n_finalists": 2}


@pytest.fixture(scope="module")
def rotation():
    """The issue's control: a hidden rotation of a 256-d anisotropic, non-clustered
    distribution, A and B drawn independently (no pairs)."""
    a, b, test_a, test_b, q = manifold_rotation_pair(n=2000)
    t = translate(a, b, autoencoder_params=AE, seed=0, progress=False, **FAST)
    return a, b, test_a, test_b, t


def test_a_hidden_rotation_is_recovered_without_pairs(rotation):
    a, b, test_a, test_b, t = rotation
    score = t.score(test_a, test_b)
    assert score.top1 >= 0.95 and score.r2 >= 0.95 and score.cosine >= 0.97
    out = t(test_a.astype(np.float32))
    assert isinstance(out, np.ndarray) and out.shape == test_b.shape
    assert isinstance(t(torch.as_tensor(test_a)), torch.Tensor)


def test_an_unresolved_selection_is_said_and_a_resolved_one_is_not(rotation):
    """translate warns (UnresolvedSelection) when the kept map's lead stays under
    ``resolve_margin``; the hidden rotation is resolved, so its fit did not."""
    from flowmatch.translation import UnresolvedSelection

    a, b, *_, t = rotation
    assert t.info_["resolution"]["resolved"] is True
    options = {**FAST, "resolve_margin": 2.0, "extra_anchor_pools": 0}  # a lead is at most 1
    with pytest.warns(UnresolvedSelection, match="unresolved.*after 0 extra anchor pools"):
        other = translate(a, b, autoencoder_params=AE, seed=0, progress=False, **options)
    assert other.info_["resolution"]["resolved"] is False


def test_every_start_is_scored_and_the_best_is_kept(rotation):
    *_, t = rotation
    scores = t.info_["scores"]
    starts = {k: v["csls"] for k, v in scores.items() if "final" not in k and "/" not in k}
    extra = {f"clusters{i + 1}" for i in range(t.info_["resolution"]["extra_starts"])}
    assert set(starts) == {"clusters", "moments", "gw0", "gw1"} | extra  # modes only when asked
    # the best probes are refined at two widths, the best there in full, and the best of
    # those at the full width is kept; extra anchor pools, when drawn, are all finalists
    settings = t.info_["settings"]
    first = sorted(set(starts) - extra, key=lambda k: -starts[k])[: settings["n_finalists"]]
    finalists = first + sorted(extra)
    (width,) = {k.split("/w")[1] for k in scores if "/w" in k}
    assert {k for k in scores if "/w" in k} == {f"{k}/w{width}" for k in finalists}
    mid = {k: scores[f"{k}/w{width}"]["csls"] for k in finalists}
    best = max(mid.values())  # less any finalist more than survivor_margin below the best
    close = [k for k in mid if mid[k] >= best - settings["survivor_margin"] * abs(best)]
    survivors = sorted(close, key=lambda k: -mid[k])[: settings["n_survivors"]]
    near = {k: scores[f"{k}/w{width}"]["nearest"] for k in finalists}
    closest = max(near, key=near.get)  # and the finalist closest to B's rows, if close
    if settings["nearest_survivor"] and closest in close and closest not in survivors:
        survivors.append(closest)
    # less those holding a better survivor's map (the maps are not in info_)
    finals = {k[: -len("/final")] for k in scores if k.endswith("/final")}
    assert survivors[0] in finals and finals <= set(survivors)
    finals = {k: scores[f"{k}/final"]["csls"] for k in finals}
    # rounds run so far by each candidate: the probe, then at most n_refine per width
    n_widths = len(search_widths(t.info_["n_components"], settings["search_components"]))
    for k in finalists:
        assert scores[k]["rounds"] == settings["n_probe"]
        assert settings["n_probe"] < scores[f"{k}/w{width}"]["rounds"] <= 2 * settings["n_refine"]
    for k in finals:
        assert scores[f"{k}/w{width}"]["rounds"] <= scores[f"{k}/final"]["rounds"]
        assert scores[f"{k}/final"]["rounds"] <= n_widths * settings["n_refine"]
    assert t.info_["initialisation"] == max(finals, key=finals.get)
    assert "final" in scores  # the kept map after the cluster correction
    assert t.info_["settings"]["n_refine"] == 40
    assert set(t.info_["seconds"]) == {
        "autoencoders",
        "coordinates and trees",
        "starting maps",
        "refine and select",
        "balancing and explanation",
    }


def test_inverse_goes_back(rotation):
    _, _, test_a, test_b, t = rotation
    assert t.inverse().score(test_b, test_a).top1 >= 0.95


def test_same_seed_same_result_and_row_order_does_not_matter(rotation):
    a, b, _, _, t = rotation
    perm = np.random.default_rng(5).permutation(len(a))
    t2 = translate(a[perm], b, autoencoder_params=AE, seed=0, progress=False, **FAST)
    torch.testing.assert_close(t2.matrix_, t.matrix_)
    torch.testing.assert_close(t2.bias_, t.bias_)


def test_canonical_order_is_the_lexicographic_one_with_ties_in_the_first_column():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 5, generator=gen).round(decimals=1)  # many ties in every column
    x[10:20] = x[0]  # whole rows repeated: kept in their input order
    want = np.lexsort(x.double().numpy().T[::-1])
    np.testing.assert_array_equal(canonical_order(x), want)
    assert len(canonical_order(x[:1])) == 1 and len(canonical_order(x[:0])) == 0


def test_save_load_round_trip(rotation, tmp_path):
    _, _, test_a, _, t = rotation
    t.save(tmp_path / "tr")
    back = Translation.load(tmp_path / "tr")
    np.testing.assert_allclose(back(test_a), t(test_a), atol=1e-5)
    np.testing.assert_array_equal(back.matching_.leaf_pairs, t.matching_.leaf_pairs)
    assert back.autoencoder_a_ is not None and back.info_["n_components"] == t.info_["n_components"]


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


def test_clean_modes_are_carried_one_to_one_and_balanced():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))

    def draw(n):
        return CENTRES[rng.integers(0, len(CENTRES), n)] + 0.5 * rng.standard_normal((n, 5))

    a, b, test = draw(1200), draw(1200) @ q.T + 3.0, draw(300)
    ae = {"latent_dim": 5, "n_components": 6, "max_epochs": 15, "progress": False}
    # each tree on a subsample of 500 rows; every row still gets its mode (nearest tree point)
    trees = {"max_points": 500}
    starts = ["clusters", "modes", "moments"]
    t = translate(
        a,
        b,
        autoencoder_params=ae,
        tree_params=trees,
        seed=0,
        progress=False,
        starts=starts,
        **FAST,
    )
    # on planted, well-separated modes the structural tree matching (made before any map) is
    # the right one, and the start it gives is as good as the best other
    structural = {tuple(p) for p in t.info_["structural_leaf_pairs"]}
    assert structural == {tuple(p) for p in t.matching_.leaf_pairs.tolist()}
    probe = {k: t.info_["scores"][k]["csls"] for k in starts}
    assert probe["modes"] >= 0.99 * max(probe.values())
    assert len(t.tree_a_.z_) == len(t.tree_b_.z_) == 500
    assert t.score(test, test @ q.T + 3.0).r2 >= 0.99
    m = t.matching_
    assert m.method == "transport" and len(m.leaf_pairs) == len(CENTRES)
    assert t.info_["balanced"] and t.info_["crossing_mass"] <= 0.2
    cent = lambda tree: np.stack([tree.tree_.nodes[v]["centroid_x"] for v in tree.leaves_])  # noqa: E731
    mapped = t(cent(t.tree_a_).astype(np.float32))
    nearest = np.linalg.norm(mapped[:, None] - cent(t.tree_b_)[None], axis=-1).argmin(1)
    np.testing.assert_array_equal(nearest[m.leaf_pairs[:, 0]], m.leaf_pairs[:, 1])
    # the correspondence at coarser cuts: the first cut is the trees' own, the last
    # one mode each
    levels = t.info_["explanation_levels"]
    assert levels[0]["pairs"] == len(m.leaf_pairs) == len(CENTRES)
    assert levels[0]["crossing_mass"] == pytest.approx(m.crossing_mass)
    assert [lv["min_prominence"] for lv in levels] == sorted(lv["min_prominence"] for lv in levels)
    assert all(lv["n_modes_a"] <= len(CENTRES) for lv in levels)
    assert levels[-1]["n_modes_a"] == levels[-1]["n_modes_b"] == levels[-1]["pairs"] == 1
    assert levels[-1]["crossing_mass"] == pytest.approx(0.0, abs=1e-12)


def test_full_width_cluster_start_is_refined_at_the_full_width_only(rotation):
    """``clusters_full`` (anchors on all the map coordinates) skips the probe and the
    coarse-to-fine widths: one refinement at the full width, then it competes at the end."""
    a, b, test_a, test_b, t = rotation
    p = t.info_["n_components"]  # 32: search from 8 coordinates, so that it is wider
    wide = {**FAST, "starts": ["clusters_full"], "search_components": 8}
    full = translate(a, b, autoencoder_params=AE, seed=0, progress=False, **wide)
    scores = full.info_["scores"]
    assert set(scores) == {"clusters_full/final", "final"}
    assert scores["clusters_full/final"]["rounds"] == FAST["n_refine"]  # no early stop
    assert full.info_["initialisation"] == "clusters_full" and full.matrix_.shape == (p, p)
    # alone it does not find this rotation (top-1 about 0.06: anchors on all 32 coordinates of
    # a non-clustered distribution); beside the coarse-to-fine starts it must not be kept
    both = translate(
        a, b, autoencoder_params=AE, seed=0, progress=False, **{**wide, "starts": ALL_STARTS}
    )
    assert both.info_["initialisation"] != "clusters_full"
    assert both.score(test_a, test_b).top1 >= 0.95


def test_polish_gives_the_kept_map_more_rounds(rotation):
    """``n_polish`` rounds at the full width after the selection (no early stop)."""
    a, b, test_a, test_b, t = rotation
    scores = t.info_["scores"]
    kept = t.info_["initialisation"]
    assert scores["final"]["rounds"] == scores[f"{kept}/final"]["rounds"]  # default: none
    polished = translate(a, b, autoencoder_params=AE, seed=0, progress=False, **FAST, n_polish=15)
    ps = polished.info_["scores"]
    assert polished.info_["initialisation"] == kept
    assert ps["final"]["rounds"] == ps[f"{kept}/final"]["rounds"] + 15
    assert polished.score(test_a, test_b).top1 >= 0.95


def test_a_narrower_b_and_known_pairs():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((600, 6)) @ rng.standard_normal((6, 20))
    a, b = base[:300] + 0.01 * rng.standard_normal((300, 20)), base[300:, :16]
    ae = {"max_steps": 5, "hidden": 8, "n_components": 2, "progress": False}
    t = translate(
        a, b, pairs=([0, 1, 2], [5, 6, 7]), autoencoder_params=ae, seed=0, progress=False, **FAST
    )
    assert t(a[:3]).shape == (3, 16) and t.autoencoder_b_.latent_dim_ <= 16
    assert t.info_["n_anchor_pairs"] == 3


def test_bad_settings_and_inputs_are_named(rotation):
    a, b, test_a, test_b, t = rotation
    for bad, match in [
        ({"n_refine": -1}, "n_refine must be"),
        ({"n_gw_starts": -3}, "n_gw_starts must be"),
        ({"max_exact": 0}, "max_exact must be"),
        ({"smoothing": 1.0}, "smoothing must be"),
        ({"starts": ["clusters", "spline"]}, "start families"),
    ]:
        with pytest.raises(ValueError, match=match):
            translate(a, b, progress=False, **bad)
    with pytest.raises(TypeError, match="unknown translate setting 'n_refinement'"):
        translate(a, b, progress=False, n_refinement=3)
    with pytest.raises(TypeError, match="starts must be a non-empty list"):
        TranslateSettings(starts="clusters")
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

    ``flowmatch bench translate`` measures the relative stitching; the floor sits below it so
    that machine-level numeric differences do not trip it, but a broken stage does.
    """
    from flowmatch.alignment import apply_map, fit_affine
    from flowmatch.compare import protocol_data
    from flowmatch.metrics import stitched_accuracy

    data, reference = protocol_data(digits_pair, n_pairs=0, seed=0)
    t = translate(data.a, data.b, seed=0, progress=False, autoencoder_params={"max_steps": 300})
    test_a = digits_pair.activations("a", "test").x
    test_b = digits_pair.activations("b", "test").x
    y = digits_pair.data.y_test
    score = t.score(test_a, test_b, head_b=digits_pair.head_b, y=y)
    m, c = fit_affine(reference.pairs_a, reference.pairs_b)
    supervised = stitched_accuracy(apply_map(test_a, m, c), digits_pair.head_b, y)
    assert score.stitched_accuracy / supervised >= 0.95
    assert score.r2 >= 0.9


def test_survivors_drop_clear_losers_at_the_second_width():
    from flowmatch.translation import _survivors

    s = TranslateSettings(n_survivors=2, survivor_margin=0.1, nearest_survivor=False)
    names = ["gw0", "clusters", "moments"]
    flat = [0.5, 0.5, 0.5]
    assert _survivors(names, [0.087, 0.116, 0.086], flat, s) == ["clusters"]  # 25% behind
    assert _survivors(names, [0.1111, 0.1107, 0.1105], flat, s) == ["gw0", "clusters"]  # close
    assert _survivors(names, [-0.0105, -0.01, -0.5], flat, s) == ["clusters", "gw0"]  # below 0
    assert _survivors([], [], [], s) == []
    every = TranslateSettings(n_survivors=3, survivor_margin=1.0)
    assert _survivors(names, [0.02, 0.1, 0.05], flat, every) == ["clusters", "moments", "gw0"]


def test_the_finalist_closest_to_b_survives_when_the_csls_is_close():
    from flowmatch.translation import _survivors

    s = TranslateSettings(n_survivors=2, survivor_margin=0.1)
    names = ["gw0", "clusters", "moments"]
    close = [0.1026, 0.1021, 0.1016]  # within the CSLS's noise; moments is closest to B
    assert _survivors(names, close, [0.490, 0.491, 0.497], s) == ["gw0", "clusters", "moments"]
    assert _survivors(names, close, [0.497, 0.491, 0.490], s) == ["gw0", "clusters"]  # kept
    far = [0.116, 0.115, 0.087]  # 25% behind: the nearest cosine does not save it
    assert _survivors(names, far, [0.490, 0.491, 0.497], s) == ["gw0", "clusters"]
    off = s.replace(nearest_survivor=False)
    assert _survivors(names, close, [0.490, 0.491, 0.497], off) == ["gw0", "clusters"]


def test_a_finalist_holding_a_better_ones_map_does_not_survive():
    """Given the finalists' maps, a survivor whose map is a better survivor's (cosine at least
    ``same_map``) is dropped, whichever rule chose it; distinct maps all go on."""
    from flowmatch.translation import _survivors

    s = TranslateSettings(n_survivors=2, survivor_margin=0.1, nearest_survivor=False)
    names = ["gw0", "clusters", "moments"]
    close, flat = [0.1111, 0.1107, 0.1105], [0.5, 0.5, 0.5]
    q = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0]
    eye = torch.eye(16, dtype=torch.float64)
    twins = {"gw0": eye, "clusters": eye + 0.05 * q.double(), "moments": q.double()}
    assert _survivors(names, close, flat, s) == ["gw0", "clusters"]  # no maps: as before
    assert _survivors(names, close, flat, s, twins) == ["gw0"]
    near = s.replace(nearest_survivor=True)  # moments, closest to B, holds another map
    assert _survivors(names, close, [0.490, 0.491, 0.497], near, twins) == ["gw0", "moments"]
    apart = {"gw0": eye, "clusters": q.double(), "moments": -eye}
    assert _survivors(names, close, flat, s, apart) == ["gw0", "clusters"]
    assert _survivors(names, close, flat, s.replace(same_map=1.0), twins) == ["gw0", "clusters"]


def test_search_widths_refine_without_smoothing_and_the_full_width_with_it():
    from flowmatch.translation import _round_options

    s = TranslateSettings(smoothing=0.5, search_smoothing=0.0)
    widths = search_widths(298, 32)
    assert [_round_options(s, w, 298)["smoothing"] for w in widths] == [0.0] * 4 + [0.5]
    assert _round_options(s, 24, 24)["smoothing"] == 0.5  # one width only: it is the full one
    with pytest.raises(ValueError, match="search_smoothing"):
        TranslateSettings(search_smoothing=1.0)


def _clusters_beneath_the_leading_axes(n: int, seed: int):
    """(a, b, test_a, test_b): 16 cluster centres in 32-d, drowned in the 12 leading axes by
    wide isotropic noise (there the clusters overlap; beneath they are separated); B = A's
    distribution times a hidden rotation (independent rows; the test rows paired)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((16, 32))
    noise = np.concatenate([np.full(12, 2.0), np.full(20, 0.3)])

    def draw(m):
        return centres[rng.integers(16, size=m)] + rng.standard_normal((m, 32)) * noise

    q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    a, b, test = draw(n), draw(n) @ q.T, draw(500)
    return a, b, test, test @ q.T


def test_anchors_on_all_coordinates_find_the_leading_block():
    """``anchor_width="full"`` finds the k-means anchors on every map coordinate and fits the
    start on the leading ``p0``: here the clusters lie beneath the leading axes, so anchors on
    the leading 12 coordinates alone match them worse (agreement with the true leading block
    0.47–0.82 over four draws, against 0.97–0.99 from all 32)."""
    from flowmatch.alignment import fit_orthogonal
    from flowmatch.starts import normalise_rows
    from flowmatch.translation import fit_coordinates, starting_maps

    a, b, test_a, test_b = _clusters_beneath_the_leading_axes(3000, 0)
    ca, cb = fit_coordinates(*(torch.as_tensor(x) for x in (a, b)), 32)
    ua, ub = ca.transform(torch.as_tensor(a)), cb.transform(torch.as_tensor(b))
    ta, tb = ca.transform(torch.as_tensor(test_a)), cb.transform(torch.as_tensor(test_b))
    p0 = 12
    truth = fit_orthogonal(normalise_rows(ta[:, :p0]), normalise_rows(tb[:, :p0]))

    def start(width: str) -> torch.Tensor:
        s = TranslateSettings(starts=("clusters",), anchor_width=width, n_clusters=16,
                              n_anchor_pools=2)  # fmt: skip
        maps = starting_maps(ua[:, :p0], ub[:, :p0], s, full=(ua, ub), seed=0)
        assert set(maps) == {"clusters", "clusters1"}
        assert all(m.shape == (p0, p0) for m in maps.values())
        assert not torch.allclose(maps["clusters"], maps["clusters1"])  # independent pools
        return maps["clusters"]

    full, search = start("full"), start("search")
    with pytest.raises(ValueError, match="anchor_width must be one of 'search', 'full'"):
        TranslateSettings(anchor_width="wide")
    agreement = {k: float((m * truth).sum() / p0) for k, m in (("full", full), ("search", search))}
    assert agreement["full"] > 0.95 > agreement["search"] + 0.1


def test_resolution_is_the_lead_over_the_best_finalist_with_another_map():
    from flowmatch.translation import map_similarity, resolution

    rng = np.random.default_rng(0)
    r, q = (torch.as_tensor(np.linalg.qr(rng.standard_normal((64, 64)))[0]) for _ in range(2))
    near = r + 0.05 * torch.as_tensor(rng.standard_normal((64, 64)))
    assert map_similarity(r, r) == pytest.approx(1.0)
    assert map_similarity(r, near) > 0.9 and abs(map_similarity(r, q)) < 0.2
    maps = {"clusters": r, "clusters1": near, "gw0": q}
    # the same map found twice does not count as a rival; the other map does
    csls = {"clusters": 0.1241, "clusters1": 0.1235, "gw0": 0.1118}
    assert resolution(csls, maps, 0.5) == pytest.approx((0.1241 - 0.1118) / 0.1241)
    csls = {"clusters": 0.1093, "clusters1": 0.1090, "gw0": 0.1096}  # the other map leads
    assert resolution(csls, maps, 0.5) == pytest.approx((0.1096 - 0.1093) / 0.1096)
    assert resolution({"clusters": 0.1, "clusters1": 0.09}, maps, 0.5) == 1.0  # no rival


def test_the_final_pick_falls_to_the_density_only_within_the_csls_noise():
    """``select_final``: the best CSLS is kept while its lead is clear; within ``lead_z``
    standard errors of a rival map, the density's choice is kept (and the record says so)."""
    from flowmatch.translation import _unresolved_message, select_final

    rng = np.random.default_rng(0)
    base = rng.standard_normal((3000, 16)) * np.linspace(3.0, 0.5, 16)
    truth = torch.as_tensor(np.linalg.qr(rng.standard_normal((16, 16)))[0])
    wrong = torch.as_tensor(np.linalg.qr(rng.standard_normal((16, 16)))[0])
    ua = torch.as_tensor(base[:1500])
    ub = torch.as_tensor(base[1500:]) @ truth.T
    maps = {"right": truth, "wrong": wrong}

    def likelier(r):  # a density that prefers the wrong map
        return -float((r - wrong).norm())

    s = TranslateSettings()
    # a clear CSLS lead: the CSLS decides, whatever the density says
    kept, record = select_final(ua, ub, maps, {"right": 0.2, "wrong": 0.1}, s, likelier)
    assert kept == "right" and record["decided_by"] == "csls" and record["lead_z"] > 5
    # the CSLS ranks the wrong map first, but its lead is negative in standard errors: the
    # density decides between them
    kept, record = select_final(
        ua, ub, maps, {"right": 0.1, "wrong": 0.2}, s, lambda r: -float((r - truth).norm())
    )
    assert (kept, record["decided_by"], record["csls_pick"]) == ("right", "density", "wrong")
    assert record["lead_z"] < 0
    message = _unresolved_message(kept, {"resolved": True, "final": record}, s)
    assert "pick 'wrong' led 'right'" in message and "B's flow density chose" in message
    # lead_z=None, or no density: the CSLS alone
    assert (
        select_final(ua, ub, maps, {"right": 0.1, "wrong": 0.2}, s.replace(lead_z=None), likelier)[
            0
        ]
        == "wrong"
    )
    assert select_final(ua, ub, maps, {"right": 0.1, "wrong": 0.2}, s)[0] == "wrong"
    # the same map twice is no rival
    twice = {"a": truth, "b": truth + 1e-3}
    assert select_final(ua, ub, twice, {"a": 0.2, "b": 0.1}, s)[1]["lead_z"] is None
    assert _unresolved_message("a", {"resolved": True, "final": {"decided_by": "csls"}}, s) is None


def _pool_case(**changes):
    """Coordinates of the clusters-beneath-the-axes pair (32 wide, searched from 16 unless
    ``changes`` say otherwise), settings with ``changes``, a ``clusters`` start and a wrong
    one (``moments``: the identity), and ``more``, the extra pools' starts, whose calls go to
    ``calls``."""
    from flowmatch.translation import fit_coordinates, pool_starts

    a, b, *_ = _clusters_beneath_the_leading_axes(1500, 1)
    ca, cb = fit_coordinates(*(torch.as_tensor(x) for x in (a, b)), 32)
    ua, ub = ca.transform(torch.as_tensor(a)), cb.transform(torch.as_tensor(b))
    s = TranslateSettings(starts=("clusters", "moments"), search_components=16, n_clusters=16,
                          n_anchor_runs=5, n_probe=5, n_refine=20, n_refine_clusters=0,
                          n_mutual=0, extra_anchor_pools=3).replace(**changes)  # fmt: skip
    p0 = s.search_components
    starts = pool_starts(ua[:, :p0], ub[:, :p0], s, range(1), full=(ua, ub))
    starts["moments"] = torch.eye(p0, dtype=torch.float64)
    calls = []

    def more(pools: range) -> dict[str, torch.Tensor]:
        calls.append(list(pools))
        return pool_starts(ua[:, :p0], ub[:, :p0], s, pools, full=(ua, ub))

    return ua, ub, s, starts, more, calls


def test_unresolved_finalists_draw_more_anchor_pools():
    """While the best finalist's lead at the second width is under ``resolve_margin``, two more
    anchor pools at a time (at most ``extra_anchor_pools``) are probed and refined as finalists
    too; otherwise none is drawn."""
    from flowmatch.translation import refine_and_select

    ua, ub, s, starts, more, calls = _pool_case(settle_z=None)
    never = s.replace(resolve_margin=0.0)  # a lead is never below 0
    *_, scores, resolved = refine_and_select(ua, ub, starts, never, more_starts=more)
    assert calls == [] and resolved["extra_starts"] == 0 and len(resolved["leads"]) == 1
    assert resolved["resolved"] is True
    assert 0.0 <= resolved["leads"][0] <= 1.0 and "clusters1" not in scores
    always = s.replace(resolve_margin=2.0)  # a lead is at most 1: draws until the cap
    *_, scores, resolved = refine_and_select(ua, ub, starts, always, more_starts=more)
    assert calls == [[1, 2], [3]] and resolved["extra_starts"] == 3
    assert len(resolved["leads"]) == 3  # before each draw, and after the last
    assert resolved["resolved"] is False and resolved["settled_z"] is None
    for name in ("clusters1", "clusters2", "clusters3"):
        assert scores[name]["rounds"] == s.n_probe
        assert scores[f"{name}/w32"]["rounds"] > s.n_probe


@pytest.mark.parametrize("search", [16, 8])
def test_a_map_clear_of_its_rival_one_width_further_draws_no_pools(search):
    """Finalists the second width cannot separate (``resolve_margin`` out of reach here) draw
    no pools when the best and its rival, carried one width further (the full width when the
    schedule has no other; 8 → 16 → 32 has), stand ``settle_z`` standard errors apart; no map
    is refined twice, and the kept map is the one kept without the check and its pools."""
    from flowmatch.translation import refine_and_select, search_widths

    ua, ub, s, starts, more, calls = _pool_case(resolve_margin=2.0, search_components=search)
    kept, rot, scores, resolved = refine_and_select(ua, ub, starts, s, more_starts=more)
    assert calls == [] and resolved["extra_starts"] == 0
    assert resolved["settled_z"] >= s.settle_z and resolved["resolved"] is True
    widths = search_widths(32, search)
    finals = [key for key in scores if key.endswith("/final")]
    assert finals  # each survivor's rounds: the probe, then at most n_refine per width
    assert all(scores[key]["rounds"] <= s.n_probe + len(widths) * s.n_refine for key in finals)
    plain = s.replace(extra_anchor_pools=0)
    kept_plain, rot_plain, *_ = refine_and_select(ua, ub, starts, plain)
    assert kept == kept_plain and torch.equal(rot, rot_plain)
    # too high a bar: the pools are drawn
    *_, resolved = refine_and_select(ua, ub, starts, s.replace(settle_z=1e9), more_starts=more)
    assert calls and resolved["extra_starts"] == 3 and resolved["settled_z"] < 1e9
    # the lowest bar settles at once; and finalists all holding one map have no rival to
    # lead (no z, which would be infinite: the record stays JSON)
    calls.clear()
    *_, resolved = refine_and_select(ua, ub, starts, s.replace(settle_z=0.0), more_starts=more)
    assert calls == [] and resolved["resolved"] is True and resolved["settled_z"] >= 0.0
    twins = {"clusters": starts["clusters"], "moments": starts["clusters"].clone()}
    *_, resolved = refine_and_select(ua, ub, twins, s, more_starts=more)
    assert calls == [] and resolved["resolved"] is True and resolved["settled_z"] is None
