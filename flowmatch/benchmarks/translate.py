"""``flowmatch bench translate``: zero-pair translation against its references, and scaling.

For each zoo pair, under the protocol of :mod:`flowmatch.compare` (A and B activations from
disjoint, shuffled halves of the training inputs; scores on test inputs), side by side in one
run: supervised affine stitching (all training rows paired), flowmatch with 0 pairs, flowmatch
with 10 pairs, and two unsupervised Gromov–Wasserstein peers, each followed by the same OT
refinement: entropic GW (POT) on 400-row subsamples of the 16 leading principal coordinates
(``entropic_gw``, its regularisation chosen by transport cost) and the multi-start
conditional-gradient GW whose couplings are also among flowmatch's own starts
(``gromov_wasserstein``).
Then a scaling run: ``translate`` wall time for 10^3 … 10^5 activations per side on a synthetic
clustered pair (B a random rotation and shift of A's distribution, 64 dimensions).

    python -m flowmatch.benchmarks.translate --quick
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from flowmatch.benchmarks._common import (
    environment,
    nonnegative_int,
    positive_int,
    print_table,
    run_as_script,
    timer,
    write_result,
)

__all__ = ["add_arguments", "run", "synthetic_pair"]

METHODS = ["affine", "flowmatch", "flowmatch_pairs", "entropic_gw", "gromov_wasserstein"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the translation benchmark."""
    from flowmatch.zoo import list_pairs

    parser.add_argument(
        "--pair",
        action="append",
        choices=[*list_pairs(), "all"],
        help="zoo pair (repeatable; default every pair, digits-mlp with --quick)",
    )
    parser.add_argument(
        "--n-pairs", type=nonnegative_int, default=10, help="pairs for flowmatch_pairs"
    )
    parser.add_argument(
        "--sizes",
        type=positive_int,
        nargs="*",
        default=None,
        help="activations per side in the scaling run (default 1e3 1e4 1e5; 1e3 3e3 with --quick;"
        " --sizes with no value skips it)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed")
    parser.add_argument("--quick", action="store_true", help="digits-mlp and a small scaling run")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch/BLAS threads")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")


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


def _pairs(args: argparse.Namespace) -> list[str]:
    from flowmatch.zoo import list_pairs

    chosen = args.pair or (["digits-mlp"] if args.quick else ["all"])
    return list(dict.fromkeys(list_pairs() if "all" in chosen else chosen))


def _table(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from flowmatch.compare import compare

    report = compare(name, methods=METHODS, n_pairs=args.n_pairs, seed=args.seed, progress=False)
    rows = []
    for r in report.rows:
        rows.append(
            {
                "pair": name,
                "method": r.method,
                "paired rows": r.paired_rows,
                "stitched": r.stitched_accuracy,
                "relative": r.relative_stitching,
                "R2": r.r2,
                "cosine": r.cosine,
                "top1": r.top1,
                "fit s": r.fit_seconds,
                "error": r.error or "",
            }
        )
    return rows


def _scaling(sizes: list[int], seed: int) -> list[dict[str, Any]]:
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Print the side-by-side table for each pair and the scaling run; return the figures."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args.seed)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    with timer() as total:
        rows = [row for name in _pairs(args) for row in _table(name, args)]
        print_table("zero-pair translation (test inputs; relative = stitched / affine)", rows)
        sizes = args.sizes
        if sizes is None:
            sizes = [1000, 3000] if args.quick else [1000, 10_000, 100_000]
        scaling = _scaling(sizes, args.seed) if sizes else []
        if scaling:
            print_table("translate wall time vs activations per side (synthetic, d=64)", scaling)
    print(f"\ntotal wall time {total['seconds']:.1f} s")
    result = {
        "benchmark": "translate",
        "env": env,
        "rows": rows,
        "scaling": scaling,
        "wall_seconds": total["seconds"],
    }
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    run_as_script(__doc__, add_arguments, run)
