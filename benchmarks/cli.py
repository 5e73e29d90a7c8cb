"""The command line of the benchmarks: ``flowmatch bench NAME [options]``.

The parser of ``NAME`` is built only once ``NAME`` is known, so that listing or running one
benchmark imports no other benchmark module.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from benchmarks import BENCHMARKS
from benchmarks._common import common_options

__all__ = ["main", "parser_for"]


def parser_for(name: str, prog: str = "flowmatch bench") -> argparse.ArgumentParser:
    """The parser of benchmark ``name``: its own options and the common ones (a benchmark may
    redefine a common option: ``embeddings`` takes ``--pair`` for an encoder pair)."""
    module = importlib.import_module(f"benchmarks.{name}")
    parser = argparse.ArgumentParser(
        prog=f"{prog} {name}".strip(),
        description=BENCHMARKS[name],
        parents=[common_options()],
        conflict_handler="resolve",
    )
    module.add_arguments(parser)
    parser.set_defaults(bench=name)
    return parser


def main(argv: Sequence[str], prog: str = "flowmatch bench") -> object:
    """Parse ``NAME [options]`` and run benchmark ``NAME``; return its result dataclass.

    The ``--json`` path and, when the benchmark writes figures, ``--out`` are checked before
    anything is measured (:mod:`flowmatch.outputs`).
    """
    from flowmatch.outputs import check_file_output, check_folder_output

    first = argparse.ArgumentParser(
        prog=prog,
        description="benchmarks that print measured figures",
        epilog="benchmarks: " + "; ".join(f"{name}: {text}" for name, text in BENCHMARKS.items()),
    )
    first.add_argument("name", choices=list(BENCHMARKS), help="which benchmark")
    head, rest = first.parse_known_args(list(argv)[:1])
    args = parser_for(head.name, prog).parse_args([*rest, *list(argv)[1:]])
    if args.json:
        check_file_output(args.json, "benchmark")
    if getattr(args, "out", None):
        check_folder_output(args.out, "figures")
    module = importlib.import_module(f"benchmarks.{head.name}")
    return module.main(args)
