"""``flowmatch bench anchors``: how many of the k-means + QAP anchor pairs are right, run by run.

The ``clusters`` starts of :func:`flowmatch.translate` (and mini-vec2vec) pool the anchors of
many runs: each run clusters each side's rows with k-means and matches the two sets of
centroids by quadratic assignment on their centred Gram matrices
(:func:`flowmatch.starts.match_centroids`). Whether a split's map is found depends on how many
of those pairs are right. This benchmark judges every run of a split with the supervised
orthogonal map, fitted on the split's paired fitting texts (``pairs_a``/``pairs_b`` of
:func:`benchmarks.embeddings.split_rows`) and used only to judge; the runs themselves see the
unpaired rows only, as in translate.

Per split (corpus, pair, control, rows per side, seed), over the runs
    ``right``         fraction of matched pairs whose B centroid is the one nearest (cosine) the
                      mapped A centroid (chance: 1 / clusters)
    ``right_best``    the same over the sixth of runs whose pairing correlates the two Gram
                      matrices best; ``right_worst`` over the sixth that correlate them least
    ``wrong_beats_true``  fraction of runs whose QAP pairing is not the true pairing (the
                      linear assignment of the mapped A centroids to the B centroids by cosine)
                      yet scores at least its objective: where it is near 1 the Gram matrices
                      cannot single out the right pairing and only pooling lifts the signal
    ``true_cosine``   mean cosine of the mapped A centroids with their true partners: how far
                      the two sides' partitions agree at all

Rows are centred (each side by its own mean) and scaled to unit length, as translate's map
coordinates are before the anchors are found.

    flowmatch bench anchors --corpus fortunes --sizes 1000 4000
    flowmatch bench anchors --quick     # wordnet, minilm, 1,000 rows, one seed, 12 runs
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from baselines._sphere import SphereCoordinates, unit_rows
from benchmarks._common import nonnegative_int, positive_int, print_table, running
from flowmatch.alignment import fit_orthogonal
from flowmatch.qap import qap_objective
from flowmatch.starts import anchor_runs, centred_gram

__all__ = ["AnchorRuns", "AnchorsBench", "add_arguments", "judge_runs", "main", "measure_anchors"]


@dataclass(frozen=True)
class AnchorRuns:
    """One split's anchor runs, judged (see the module docstring)."""

    corpus: str
    pair: str
    control: str
    n: int
    seed: int
    runs: int
    clusters: int
    right: float
    right_best: float
    right_worst: float
    wrong_beats_true: float
    true_cosine: float
    chance: float
    seconds: float


@dataclass(frozen=True)
class AnchorsBench:
    """Every split's judged anchor runs."""

    rows: tuple[AnchorRuns, ...]


def judge_runs(
    a: np.ndarray,
    b: np.ndarray,
    judge_a: np.ndarray,
    judge_b: np.ndarray,
    *,
    n_clusters: int = 20,
    n_runs: int = 30,
    n_restarts: int = 30,
    max_rows: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """Cluster and match ``n_runs`` times, as translate's anchor pool does, and judge each run.

    Parameters
    ----------
    a, b : ndarray  # (n_a, d), (n_b, d) unpaired rows of the two sides (same width d)
    judge_a, judge_b : ndarray  # (m, d) paired rows, used only to fit the judging map

    Returns
    -------
    dict with ``right``, ``right_best``, ``right_worst``, ``wrong_beats_true``, ``true_cosine``,
    ``chance`` (module docstring)
    """
    if a.shape[1] != b.shape[1] or judge_a.shape[1] != a.shape[1] or judge_b.shape[1] != b.shape[1]:
        raise ValueError(
            f"judge_runs needs one width on both sides, got a {a.shape}, b {b.shape}, "
            f"judge_a {judge_a.shape}, judge_b {judge_b.shape}"
        )
    if len(judge_a) != len(judge_b):
        raise ValueError(
            f"judge_a and judge_b must be paired, got {len(judge_a)} and {len(judge_b)}"
        )
    sphere_a, sphere_b = SphereCoordinates.fit(a), SphereCoordinates.fit(b)
    xa, xb = sphere_a.sphere(a), sphere_b.sphere(b)
    # the judge: orthogonal w (d, d) with judge_b ≈ judge_a @ w.T on the same sphere
    w = fit_orthogonal(sphere_a.sphere(judge_a), sphere_b.sphere(judge_b)).numpy()
    k = int(min(n_clusters, len(xa), len(xb)))
    if k < 2:
        raise ValueError(f"at least 2 clusters are needed, got {k} (rows: {len(xa)}, {len(xb)})")
    rng = np.random.default_rng(seed)
    right, beats, cosine, corr = [], [], [], []
    for ca, cb, ia, ib, value in anchor_runs(xa, xb, k, n_runs, n_restarts, max_rows, rng):
        sim = unit_rows(ca @ w.T) @ unit_rows(cb).T  # (k, k) cosines
        true_a, true_b = linear_sum_assignment(-sim)
        ga, gb = centred_gram(ca), centred_gram(cb)
        true_perm = true_b[np.argsort(true_a)]
        right.append(float(np.mean(sim[ia].argmax(1) == ib)))
        wrong = bool(np.any(true_perm[ia] != ib))
        beats.append(
            wrong and value >= float(qap_objective(ga, gb, true_perm)[0]) - 1e-9 * abs(value)
        )
        cosine.append(float(sim[true_a, true_b].mean()))
        corr.append(value / max(float(np.linalg.norm(ga) * np.linalg.norm(gb)), 1e-300))
    order, sixth = np.argsort(corr)[::-1], max(1, n_runs // 6)
    right_arr = np.asarray(right)
    return {
        "right": float(right_arr.mean()),
        "right_best": float(right_arr[order[:sixth]].mean()),
        "right_worst": float(right_arr[order[-sixth:]].mean()),
        "wrong_beats_true": float(np.mean(beats)),
        "true_cosine": float(np.mean(cosine)),
        "chance": 1.0 / k,
    }


def measure_anchors(
    corpora: Sequence[str],
    pairs: Sequence[str],
    sizes: Sequence[int],
    seeds: Sequence[int],
    *,
    controls: Sequence[str] = ("real",),
    n_clusters: int = 20,
    n_runs: int = 30,
    progress: bool = True,
) -> AnchorsBench:
    """Judge the anchor runs of every split (the protocol of ``flowmatch bench embeddings``;
    cached embeddings only; a size the cache cannot hold is skipped with a printed note).
    Raises :class:`~benchmarks._common.BenchmarkUnavailable` when a corpus, the extra
    ``flowmatch[text]`` or the cached embeddings are missing."""
    from benchmarks.embeddings import check_available, load_pair_embeddings, split_rows

    check_available(corpora, pairs)
    rows = []
    for corpus in corpora:
        for pair in pairs:
            emb_a, emb_b, labels = load_pair_embeddings(corpus, pair, 2 * max(sizes) + 1000, False)
            if emb_a.shape[1] != emb_b.shape[1]:
                raise ValueError(f"pair {pair!r} maps {emb_a.shape[1]} to {emb_b.shape[1]} dims")
            for control in controls:
                for n in sizes:
                    for seed in seeds:
                        try:
                            split = split_rows(emb_a, emb_b, labels, n, control=control, seed=seed)
                        except ValueError as err:  # more rows than the corpus or the cache
                            print(f"{corpus} {pair} n={n}: skipped ({err})", flush=True)
                            continue
                        start = time.perf_counter()
                        figures = judge_runs(
                            split.a,
                            split.b,
                            split.pairs_a,
                            split.pairs_b,
                            n_clusters=n_clusters,
                            n_runs=n_runs,
                            seed=seed,
                        )
                        row = AnchorRuns(
                            corpus, pair, control, n, seed, n_runs, n_clusters,
                            **{k: round(v, 3) for k, v in figures.items()},
                            seconds=round(time.perf_counter() - start, 1),
                        )  # fmt: skip
                        rows.append(row)
                        if progress:
                            print(
                                f"{corpus} {pair} {control} n={n} seed={seed}: right "
                                f"{row.right:.3f} (chance {row.chance:.3f})",
                                flush=True,
                            )
    return AnchorsBench(tuple(rows))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the anchor benchmark (``--pair`` names an encoder pair, as in
    ``flowmatch bench embeddings``)."""
    from benchmarks.embeddings import CONTROLS, PAIRS
    from benchmarks.text_data import CORPORA

    parser.add_argument(
        "--corpus", action="append", choices=sorted(CORPORA), help="corpus (default wordnet)"
    )
    parser.add_argument(
        "--pair", action="append", choices=sorted(PAIRS), help="encoder pair (default minilm)"
    )
    parser.add_argument(
        "--sizes", type=positive_int, nargs="+", default=None, help="rows per side (1000 2000)"
    )
    parser.add_argument(
        "--seeds", type=nonnegative_int, nargs="+", default=None, help="default --seed, +1"
    )
    parser.add_argument("--controls", nargs="+", choices=CONTROLS, default=["real"])
    parser.add_argument("--clusters", type=positive_int, default=20, help="k-means clusters")
    parser.add_argument("--runs", type=positive_int, default=None, help="runs (default 30)")


def main(args: argparse.Namespace) -> AnchorsBench:
    """Run the benchmark, print one table, return the figures."""
    from benchmarks.embeddings import check_available

    quick = args.quick
    corpora = args.corpus or ["wordnet"]
    pairs = args.pair or ["minilm"]
    check_available(corpora, pairs)
    with running("anchors", args) as run:
        run.result = result = measure_anchors(
            corpora,
            pairs,
            args.sizes or ([1000] if quick else [1000, 2000]),
            args.seeds or ([args.seed] if quick else [args.seed, args.seed + 1]),
            controls=args.controls,
            n_clusters=args.clusters,
            n_runs=args.runs or (12 if quick else 30),
        )
        print_table(
            "k-means + QAP anchor runs judged by the supervised map",
            [asdict(r) for r in result.rows],
        )
    return result
