"""``flowmatch bench anchors``: judging anchor runs needs no text extra, only paired rows."""

import numpy as np
import pytest

from benchmarks.anchors import judge_runs


def _clusters(rng, centres, weights, m, noise):
    label = rng.choice(len(centres), m, p=weights)
    return centres[label] + noise * rng.standard_normal((m, centres.shape[1]))


def _sides(related: bool, seed: int = 0):
    """A: well-separated clusters in 24 dims; B: fresh draws of them rotated (``related``) or of
    unrelated clusters; plus 300 paired rows (A rows and their rotated images) to judge."""
    rng = np.random.default_rng(seed)
    d, k = 24, 8
    centres = 6.0 * rng.standard_normal((k, d))
    weights = rng.dirichlet(np.full(k, 30.0))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = _clusters(rng, centres, weights, 1200, 1.0)
    other = centres if related else 6.0 * rng.standard_normal((k, d))
    b = _clusters(rng, other, weights, 1200, 1.0) @ q.T
    judge = _clusters(rng, centres, weights, 300, 1.0)
    return a, b, judge, judge @ q.T


def test_anchor_runs_on_a_rotation_are_right_and_unrelated_sides_are_not():
    """On a rotation of the same clusters almost every matched pair is right and no wrong
    pairing outscores the true one; between unrelated cluster sets the pairs are near chance."""
    a, b, ja, jb = _sides(related=True)
    good = judge_runs(a, b, ja, jb, n_clusters=8, n_runs=6, n_restarts=20)
    assert good["right"] >= 0.9 and good["wrong_beats_true"] <= 0.2
    assert good["true_cosine"] > 0.9 and good["chance"] == pytest.approx(1 / 8)
    a, b, ja, jb = _sides(related=False)
    bad = judge_runs(a, b, ja, jb, n_clusters=8, n_runs=12, n_restarts=20)
    assert bad["right"] < 0.5 and bad["true_cosine"] < good["true_cosine"]
    assert 0.0 <= bad["right_worst"] <= 1.0 and 0.0 <= bad["right_best"] <= 1.0


def test_judge_runs_names_mismatched_shapes():
    a, b, ja, jb = _sides(related=True)
    with pytest.raises(ValueError, match="one width"):
        judge_runs(a, b[:, :10], ja, jb)
    with pytest.raises(ValueError, match="paired"):
        judge_runs(a, b, ja, jb[:10])
    with pytest.raises(ValueError, match="at least 2 clusters"):
        judge_runs(a[:1], b, ja, jb)


def test_bench_anchors_judges_each_split_under_the_protocol(monkeypatch, capsys):
    """``flowmatch bench anchors`` on stand-in embeddings (the rotation control of clustered
    rows): one row per split, its figures from :func:`judge_runs`, and a table printed."""
    from benchmarks import embeddings as emb
    from flowmatch.cli import main

    rng = np.random.default_rng(1)
    x = _clusters(rng, 6.0 * rng.standard_normal((8, 16)), np.full(8, 1 / 8), 1500, 0.5)
    x = x.astype(np.float32)
    monkeypatch.setattr(emb, "check_available", lambda corpora, pairs: None)
    monkeypatch.setattr(emb, "load_pair_embeddings", lambda *args: (x, x, None))
    argv = ["bench", "anchors", "--sizes", "200", "--seeds", "0", "--runs", "4", "--clusters", "8"]
    assert main([*argv, "--controls", "rotation"]) == 0
    out = capsys.readouterr().out
    assert "anchor runs judged by the supervised map" in out and "rotation" in out
    line = [row for row in out.splitlines() if row.strip().startswith("wordnet")][-1]
    assert float(line.split()[7]) >= 0.75  # right: the same clusters, rotated


def test_bench_anchors_says_in_one_line_what_is_missing(monkeypatch, capsys):
    from benchmarks import text_data as td
    from flowmatch.cli import main

    monkeypatch.setattr(td, "_dpkg_version", lambda pkg: "3.0")
    monkeypatch.setattr(td, "_pip_version", lambda dist: None)
    assert main(["bench", "anchors", "--quick"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "flowmatch[text]" in err
