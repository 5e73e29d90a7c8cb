import numpy as np
import pytest
import torch
from _synthetic import manifold_rotation_pair

from flowmatch.alignment import polar
from flowmatch.coordinates import MapCoordinates
from flowmatch.refinement import (
    alignment_score,
    csls_lead,
    mutual_pairs,
    refine_clusters,
    refine_mutual,
    refine_nearest,
)
from flowmatch.starts import normalise_rows


@pytest.fixture(scope="module")
def coords():
    """The 256-d manifold pair in 24 map coordinates and the true map between them."""
    a, b, _, _, q = manifold_rotation_pair(n=1500)
    ca, cb = MapCoordinates(24).fit(a), MapCoordinates(24).fit(b)
    true = polar(cb.components_.T @ torch.as_tensor(q) @ ca.components_)
    return ca.transform(a), cb.transform(b), true


def _error_on_data(rot, true, ua):
    """RMS of (rot − true) applied to A's rows, relative to their RMS norm."""
    return float(((ua @ (rot - true).T) ** 2).sum(1).mean().sqrt() / (ua**2).sum(1).mean().sqrt())


def _perturbed(true, t, seed):
    noise = torch.as_tensor(np.random.default_rng(seed).standard_normal(true.shape))
    return polar((1 - t) * true + t * polar(noise))


def test_refine_nearest_pulls_a_perturbed_map_back(coords):
    ua, ub, true = coords
    start = _perturbed(true, 0.5, 1)
    rot = refine_nearest(ua, ub, start, n_rounds=40, batch=500, k=10)
    assert _error_on_data(rot, true, ua) < 0.2 * _error_on_data(start, true, ua)
    ortho = refine_nearest(ua, ub, start, n_rounds=40, batch=500, k=10, orthogonal=True)
    assert _error_on_data(ortho, true, ua) < 0.2 * _error_on_data(start, true, ua)
    torch.testing.assert_close(ortho @ ortho.T, torch.eye(24, dtype=torch.float64))
    singular = torch.linalg.svdvals(rot)  # the average of rotations shrinks, never stretches
    assert float(singular.max()) <= 1.0 + 1e-9 and float(singular.min()) > 0.5
    with pytest.raises(ValueError, match="smoothing"):
        refine_nearest(ua, ub, start, smoothing=1.0)


def test_refinement_stops_once_the_criterion_stops_rising(coords):
    ua, ub, true = coords
    start = _perturbed(true, 0.5, 1)
    full, early = [], []
    rot_full = refine_nearest(ua, ub, start, n_rounds=150, batch=500, k=10, trace=full)
    rot = refine_nearest(ua, ub, start, n_rounds=150, batch=500, k=10, tol=0.002, trace=early)
    assert len(full) == 150  # one fit per round
    assert 20 <= len(early) < 150 and len(early) % 10 == 0  # checked every `window` rounds
    assert early == full[: len(early)]  # the same rounds, cut short
    # stopped on the plateau: as close to the true map as the full run
    assert _error_on_data(rot, true, ua) < 0.2 * _error_on_data(start, true, ua)
    assert _error_on_data(rot, true, ua) < 1.5 * _error_on_data(rot_full, true, ua)
    assert max(full[-20:]) > full[0]  # the fit (mean cosine to the partners) rose


def test_the_selection_criterion_ranks_the_true_map_first(coords):
    ua, ub, true = coords
    candidates = {"true": true}
    candidates.update({f"t{t}": _perturbed(true, t, 2) for t in (0.1, 0.3, 0.6)})
    candidates.update({f"random{i}": _perturbed(true, 1.0, 10 + i) for i in range(3)})
    scores = {name: alignment_score(ua, ub, rot).csls for name, rot in candidates.items()}
    assert max(scores, key=scores.get) == "true"
    assert scores["t0.1"] > scores["t0.6"] > max(scores[f"random{i}"] for i in range(3))


def test_the_csls_lead_is_counted_in_standard_errors(coords):
    ua, ub, true = coords
    near, wrong = _perturbed(true, 0.05, 2), _perturbed(true, 1.0, 10)
    assert csls_lead(ua, ub, true, wrong) > 5.0  # far beyond the rows' noise
    assert csls_lead(ua, ub, wrong, true) < -5.0  # the rival scores higher
    assert csls_lead(ua, ub, true, true) == 0.0  # no lead over itself
    assert abs(csls_lead(ua, ub, true, near)) < abs(csls_lead(ua, ub, true, wrong))


def test_cluster_correction_keeps_a_good_map(coords):
    ua, ub, true = coords
    rot = refine_clusters(ua, ub, true, n_clusters=40)
    assert _error_on_data(rot, true, ua) < 0.25  # a random rotation: about 1.4
    tiny = refine_clusters(ua[:15], ub[:15], true)  # too few rows for two clusters: unchanged
    torch.testing.assert_close(tiny, true)


def test_mutual_pairs_under_the_true_map_are_the_true_partners():
    # B holds A's rows, shuffled and rotated: under the rotation every row's best partner by
    # CSLS is its own image, both ways (1,500 rows: more than one block of similarities)
    rng = np.random.default_rng(0)
    xa = torch.as_tensor(rng.standard_normal((1500, 8)) * np.linspace(2.0, 0.5, 8))
    q, perm = polar(torch.as_tensor(rng.standard_normal((8, 8)))), rng.permutation(1500)
    xb = xa[perm] @ q.T
    idx_a, idx_b = mutual_pairs(xa, xb, q)
    assert len(idx_a) == 1500
    np.testing.assert_array_equal(perm[idx_b.numpy()], idx_a.numpy())
    wrong_a, wrong_b = mutual_pairs(xa, xb, polar(torch.as_tensor(rng.standard_normal((8, 8)))))
    assert float((perm[wrong_b.numpy()] == wrong_a.numpy()).sum()) < 0.1 * 1500


@pytest.mark.parametrize("chunk", [256, 4096])
def test_mutual_pairs_are_those_of_the_whole_csls_matrix(chunk: int) -> None:
    """The two passes over blocks of rows (radii, then both ways' best partners with a running
    maximum) give the pairs read off the whole CSLS matrix, for uneven sides and blocks."""
    gen = torch.Generator().manual_seed(chunk)
    xa, xb = torch.randn(700, 12, generator=gen), torch.randn(1100, 12, generator=gen)
    rot = polar(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    sim = normalise_rows(normalise_rows(xa) @ rot.float().T) @ normalise_rows(xb).T
    r_a, r_b = sim.topk(10, dim=1).values.mean(1), sim.topk(10, dim=0).values.mean(0)
    csls = 2 * sim - r_a[:, None] - r_b[None, :]
    forward, back = csls.argmax(1), csls.argmax(0)
    want = torch.nonzero(back[forward] == torch.arange(700)).squeeze(1)
    idx_a, idx_b = mutual_pairs(xa, xb, rot, chunk=chunk)
    assert len(want) > 50 and torch.equal(idx_a, want) and torch.equal(idx_b, forward[want])


def test_refine_mutual_moves_a_perturbed_map_towards_the_true_one(coords):
    ua, ub, true = coords
    start = _perturbed(true, 0.3, 3)
    fit = refine_mutual(ua, ub, start, smoothing=0.0)
    assert _error_on_data(fit, true, ua) < 0.5 * _error_on_data(start, true, ua)
    torch.testing.assert_close(fit @ fit.T, torch.eye(24, dtype=torch.float64))  # Procrustes
    half = refine_mutual(ua, ub, start)  # the default averages the fit with the map
    torch.testing.assert_close(half, 0.5 * start + 0.5 * fit)
    with pytest.raises(ValueError, match="smoothing"):
        refine_mutual(ua, ub, start, smoothing=1.0)


def _walk(n_checks: int, drift: float, seed: int) -> list[torch.Tensor]:
    """Maps at successive checks: a fixed point plus fresh noise each check, moved ``drift``
    further along one direction every check."""
    rng = np.random.default_rng(seed)
    base, way = (torch.as_tensor(rng.standard_normal((16, 16))) for _ in range(2))
    return [
        base + drift * t * way + torch.as_tensor(rng.standard_normal((16, 16))) * 0.1
        for t in range(n_checks)
    ]


def test_drift_test_tells_a_moving_map_from_one_resampled_in_place():
    from flowmatch.refinement import _drifting

    assert _drifting(_walk(3, 0.5, 0))  # consistent moves, larger than the noise
    still = [_drifting(_walk(3, 0.0, seed)) for seed in range(200)]
    assert np.mean(still) < 0.2  # around a fixed point successive moves disagree (cos ≈ −1/2)
    assert not _drifting(_walk(2, 0.5, 0))  # fewer than three checks: no verdict
    same = _walk(1, 0.0, 0) * 3
    assert not _drifting(same)  # a map that does not move


def test_early_stop_waits_for_a_drifting_map(coords, monkeypatch):
    """The CSLS test alone would stop; a map still drifting is refined on."""
    import flowmatch.refinement as refinement

    ua, ub, true = coords
    start = _perturbed(true, 0.5, 1)
    options = {"n_rounds": 60, "batch": 500, "k": 10, "tol": 10.0}  # no CSLS gain is enough
    scored = []
    score = refinement._check_score
    monkeypatch.setattr(refinement, "_check_score", lambda *a: scored.append(1) or score(*a))
    monkeypatch.setattr(refinement, "_drifting", lambda maps: True)
    refine_nearest(ua, ub, start, trace=(drifting := []), **options)
    assert len(drifting) == 60  # always drifting: every round
    assert not scored  # a drifting map cannot stop, so its CSLS is never computed
    refine_nearest(ua[:400], ub[:400], start, trace=(whole := []), **options)
    assert len(whole) == 20  # every round sees all rows: the drift test is not consulted
    monkeypatch.setattr(refinement, "_drifting", lambda maps: False)
    scored.clear()
    refine_nearest(ua, ub, start, trace=(stopped := []), **options)
    assert len(stopped) == 20  # the first check that can compare two scores
    assert len(scored) == 2
