"""``flowmatch compare`` (also ``flowmatch bench compare``): every method on each zoo pair under
the evaluation protocol of :mod:`flowmatch.compare`.

Prints, for each pair, the model accuracies, the linear CKA of the two networks and the table
(method, paired rows, stitched accuracy, relative stitching, R², cosine, top-1, fit seconds),
all measured in this run; ``--json PATH`` writes every report.

    flowmatch compare --pair digits-mlp --json compare.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._common import nonnegative_int, pair_names, running, timer

__all__ = ["CompareBench", "add_arguments", "main", "measure_compare"]


@dataclass(frozen=True)
class CompareBench:
    """Every comparison report (``ComparisonReport.to_dict()``) with its wall time."""

    reports: tuple[dict[str, Any], ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the comparison (default pairs: every pair; digits-mlp with ``--quick``)."""
    parser.add_argument(
        "--methods", nargs="+", default=None, help="registered method names (default: all)"
    )
    parser.add_argument(
        "--n-pairs", type=nonnegative_int, default=10, help="paired rows given to paired methods"
    )
    parser.add_argument(
        "--params",
        type=json.loads,
        default=None,
        help='per-method keyword arguments as JSON, e.g. \'{"cluster_pairs": {"n_iter": 5}}\'',
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def measure_compare(
    pairs: Sequence[str],
    *,
    methods: Sequence[str] | None = None,
    n_pairs: int = 10,
    seed: int = 0,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
    report: Any = None,
) -> CompareBench:
    """Run :func:`flowmatch.compare.compare` on every pair; ``report(name, report, seconds)``
    is called after each pair (e.g. to print it)."""
    from flowmatch.compare import compare

    out = []
    for name in pairs:
        with timer() as t:
            result = compare(
                name,
                methods=methods,
                n_pairs=n_pairs,
                seed=seed,
                method_params=method_params,
                progress=progress,
            )
        if report is not None:
            report(name, result, t["seconds"])
        out.append({**result.to_dict(), "wall_seconds": t["seconds"]})
    return CompareBench(tuple(out))


def _print(name: str, report: Any, seconds: float) -> None:
    print(f"\n== {name}  ({seconds:.1f} s)")
    print(report.to_text())
    for row in report.rows:
        if row.error:
            print(f"  {row.method} failed: {row.error}")


def main(args: argparse.Namespace) -> CompareBench:
    """Run the comparison for every requested pair; print and return the reports."""
    with running("compare", args) as run:
        run.result = measure_compare(
            pair_names(args, ["digits-mlp"] if args.quick else ["all"]),
            methods=args.methods,
            n_pairs=args.n_pairs,
            seed=args.seed,
            method_params=args.params,
            progress=not args.no_progress,
            report=_print,
        )
    return run.result
