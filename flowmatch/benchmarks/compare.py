"""``flowmatch compare``: every method on each zoo pair under the evaluation protocol.

Prints the environment, then for each pair the model accuracies, the linear CKA of the two
networks and the table (method, paired rows, stitched accuracy, relative stitching, R², cosine,
top-1, fit seconds), all measured in this run; ``--json PATH`` writes every report.

    python -m flowmatch.benchmarks.compare --pair digits-mlp --json compare.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from flowmatch.benchmarks._common import (
    environment,
    nonnegative_int,
    positive_int,
    run_as_script,
    timer,
    write_result,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the comparison."""
    from flowmatch.zoo import list_pairs

    parser.add_argument(
        "--pair",
        action="append",
        choices=[*list_pairs(), "all"],
        help="zoo pair (repeatable; default: every pair, or digits-mlp with --quick)",
    )
    parser.add_argument(
        "--methods", nargs="+", default=None, help="registered method names (default: all)"
    )
    parser.add_argument(
        "--n-pairs", type=nonnegative_int, default=10, help="paired rows given to paired methods"
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument(
        "--params",
        type=json.loads,
        default=None,
        help='per-method keyword arguments as JSON, e.g. \'{"cluster_pairs": {"n_iter": 5}}\'',
    )
    parser.add_argument("--quick", action="store_true", help="digits-mlp only (a smoke run)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="limit torch/BLAS/OpenMP threads to this number",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")


def _pairs(args: argparse.Namespace) -> list[str]:
    from flowmatch.zoo import list_pairs

    chosen = args.pair or (["digits-mlp"] if args.quick else ["all"])
    names = list_pairs() if "all" in chosen else chosen
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison for every requested pair; print and return the results."""
    import torch
    from threadpoolctl import threadpool_limits

    from flowmatch.compare import compare

    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args.seed)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    reports = []
    with threadpool_limits(limits=args.threads), timer() as total:
        for name in _pairs(args):
            with timer() as t:
                report = compare(
                    name,
                    methods=args.methods,
                    n_pairs=args.n_pairs,
                    seed=args.seed,
                    method_params=args.params,
                    progress=not args.no_progress,
                )
            print(f"\n== {name}  ({t['seconds']:.1f} s)")
            print(report.to_text())
            for row in report.rows:
                if row.error:
                    print(f"  {row.method} failed: {row.error}")
            reports.append({**report.to_dict(), "wall_seconds": t["seconds"]})
    print(f"\ntotal wall time {total['seconds']:.1f} s")
    result = {
        "benchmark": "compare",
        "env": env,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "reports": reports,
        "wall_seconds": total["seconds"],
    }
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    run_as_script(__doc__, add_arguments, run)
