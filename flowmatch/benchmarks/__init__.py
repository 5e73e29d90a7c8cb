"""Benchmark commands (``flowmatch bench NAME``): one module per benchmark.

Each module defines ``add_arguments(parser)`` and ``run(args) -> dict``; the dict is printed
as a table and written as JSON by :mod:`flowmatch.benchmarks._common`.
"""

BENCHMARKS = {
    "flow": "flowmatch.benchmarks.flow",
    "tree": "flowmatch.benchmarks.tree",
    "translate": "flowmatch.benchmarks.translate",
    "compare": "flowmatch.benchmarks.compare",
}

__all__ = ["BENCHMARKS"]
