"""``flowmatch bench translate``: zero-pair translation against its references, and scaling.

For each zoo pair, under the protocol of :mod:`flowmatch.compare` (A and B activations from
disjoint, shuffled halves of the training inputs; scores on test inputs), side by side in one
run: supervised affine stitching (all training rows paired), flowmatch with 0 pairs, flowmatch
with 10 pairs, and two unsupervised Gromov–Wasserstein peers, each followed by the same OT
refinement: entropic GW (POT) on 400-row subsamples of the 16 leading principal coordinates
(``entropic_gw``, its regularisation chosen by transport cost) and the multi-start
conditional-gradient GW whose couplings are also among flowmatch's own starts
(``gromov_wasserstein``).
With ``--ablate-starts``, flowmatch also runs with each start family alone (rows
``flowmatch[clusters]``, ``flowmatch[modes]``, …: k-means + QAP anchors, the density trees'
matched modes, principal moments, Gromov–Wasserstein couplings).
Then a scaling run: ``translate`` wall time for 10^3 … 10^5 activations per side on a synthetic
clustered pair (B a random rotation and shift of A's distribution, 64 dimensions).

Each pair is measured on every seed of ``--seeds`` (default: ``--seed`` and the next one; one
with ``--quick``): a seed draws the protocol's halves and seeds every method, and on some pairs
the map found depends on it (mnist1d-mlp-cnn: relative stitching 0.898 at seed 1, 0.092 at
seed 2), so a figure from one seed says little.

    flowmatch bench translate --quick
    flowmatch bench translate --pair all --sizes --ablate-starts
    flowmatch bench translate --pair mnist1d-mlp-cnn --sizes --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks._common import (
    ablation_name,
    nonnegative_int,
    pair_names,
    print_table,
    running,
    start_ablation,
    timer,
)
from flowmatch.cli import int_argument

__all__ = ["TranslateBench", "add_arguments", "main", "measure_translate", "synthetic_pair"]

METHODS = ["affine", "flowmatch", "flowmatch_pairs", "entropic_gw", "gromov_wasserstein"]
_COLUMNS = [
    "pair",
    "seed",
    "method",
    "paired_rows",
    "stitched_accuracy",
    "relative_stitching",
    "r2",
    "cosine",
    "top1",
    "fit_seconds",
    "error",
]


@dataclass(frozen=True)
class TranslateBench:
    """Side-by-side rows (``ComparisonReport.to_rows()``) of every pair, and the scaling run
    (rows per side, seconds, R², top-1)."""

    rows: tuple[dict[str, Any], ...]
    scaling: tuple[dict[str, Any], ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the translation benchmark (default pairs: every pair; digits-mlp with
    ``--quick``)."""
    parser.add_argument(
        "--n-pairs", type=nonnegative_int, default=10, help="pairs for flowmatch_pairs"
    )
    parser.add_argument(
        "--sizes",
        type=int_argument(2),
        nargs="*",
        default=None,
        help="activations per side in the scaling run (default 1e3 1e4 1e5; 1e3 3e3 with --quick;"
        " --sizes with no value skips it)",
    )
    parser.add_argument(
        "--ablate-starts",
        action="store_true",
        help="also run flowmatch with each start family alone",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="protocol seeds of the side-by-side table (default --seed, +1; --seed with --quick)",
    )


def synthetic_pair(
    n: int, d: int = 64, n_clusters: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clustered A rows, B rows from fresh samples mapped by a rotation + shift, and a paired
    held-out test set: ``(a (n, d), b (n, d), test_a (1000, d), test_b (1000, d))``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)) * 4.0
    scales = rng.uniform(0.5, 1.5, n_clusters)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    shift = rng.standard_normal(d)

    def draw(m: int) -> np.ndarray:
        c = rng.integers(0, n_clusters, m)
        return (centres[c] + scales[c, None] * rng.standard_normal((m, d))).astype(np.float32)

    test = draw(1000)
    return draw(n), draw(n) @ q.T + shift, test, test @ q.T + shift


def _table(
    name: str, n_pairs: int, seed: int, start_sets: Sequence[Sequence[str]] = ()
) -> list[dict[str, Any]]:
    from flowmatch.compare import compare
    from flowmatch.translation import NoStartingMap

    rows = compare(name, methods=METHODS, n_pairs=n_pairs, seed=seed, progress=False).to_rows()
    for starts in start_sets:  # flowmatch restricted to these start families
        params = {"flowmatch": {"starts": list(starts)}}
        try:
            report = compare(
                name, ["flowmatch"], n_pairs, seed, params, progress=False, required=["flowmatch"]
            )
            row = report.to_rows()[1]
        except NoStartingMap as err:  # the families gave no start on this pair
            row = {"pair": name, "method": "flowmatch", "paired_rows": 0, "error": str(err)}
        rows.append({**row, "method": ablation_name(starts)})
    return rows


def _scaling(sizes: Sequence[int], seed: int) -> list[dict[str, Any]]:
    from flowmatch.translation import translate

    rows = []
    for n in sizes:
        a, b, test_a, test_b = synthetic_pair(n, seed=seed)
        with timer() as t:
            tr = translate(a, b, seed=seed, progress=False)
        score = tr.score(test_a, test_b)
        rows.append({"n per side": n, "seconds": t["seconds"], "R2": score.r2, "top1": score.top1})
    for r in rows:
        r["seconds / 1e3 rows"] = r["seconds"] / (r["n per side"] / 1e3)
    return rows


def measure_translate(
    pairs: Sequence[str],
    sizes: Sequence[int] = (),
    *,
    n_pairs: int = 10,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    start_sets: Sequence[Sequence[str]] = (),
) -> TranslateBench:
    """The side-by-side table on every pair and every seed of ``seeds`` (default: ``seed``;
    each row carries its ``seed``), with a flowmatch row restricted to each of ``start_sets``,
    then ``translate`` wall time on the synthetic pair at each size (rows per side; ``seed``)."""
    rows = [
        {"seed": s, **row}
        for name in pairs
        for s in (seeds if seeds is not None else [seed])
        for row in _table(name, n_pairs, s, start_sets)
    ]
    return TranslateBench(tuple(rows), tuple(_scaling(sizes, seed)))


def main(args: argparse.Namespace) -> TranslateBench:
    """Print the side-by-side table for each pair and the scaling run; return the figures."""
    sizes = args.sizes
    if sizes is None:
        sizes = [1000, 3000] if args.quick else [1000, 10_000, 100_000]
    pairs = pair_names(args, ["digits-mlp"] if args.quick else ["all"])
    with running("translate", args) as run:
        run.result = result = measure_translate(
            pairs,
            sizes,
            n_pairs=args.n_pairs,
            seed=args.seed,
            seeds=args.seeds or ([args.seed] if args.quick else [args.seed, args.seed + 1]),
            start_sets=start_ablation(args.ablate_starts),
        )
        print_table(
            "zero-pair translation (test inputs; relative = stitched / affine)",
            result.rows,
            _COLUMNS,
        )
        if result.scaling:
            print_table(
                "translate wall time vs activations per side (synthetic, d=64)", result.scaling
            )
    return result
