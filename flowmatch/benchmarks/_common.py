"""Shared benchmark plumbing: environment record, timing, peak memory, tables, JSON."""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from flowmatch._io import write_json

__all__ = [
    "environment",
    "format_table",
    "peak_rss_mb",
    "print_table",
    "run_as_script",
    "timer",
    "write_result",
]


def environment(seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Device, library versions, threads and seed: printed and stored with every benchmark."""
    import gudhi
    import numpy
    import ot
    import scipy
    import sklearn

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    env: dict[str, Any] = {
        "device": dev,
        "device_name": torch.cuda.get_device_name(0)
        if dev.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "gudhi": gudhi.__version__,
        "pot": ot.__version__,
        "seed": seed,
    }
    return env


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t["seconds"]`` (CUDA synchronised when in use)."""
    out: dict[str, float] = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        yield out
    finally:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - start


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain-text table of ``rows`` (list of dicts) with aligned columns."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, cells)])


def print_table(
    title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None
) -> None:
    """Print a titled table to stdout."""
    print(f"\n== {title}")
    print(format_table(rows, columns))


def write_result(path: str | None, result: dict[str, Any]) -> None:
    """Write ``result`` as JSON to ``path`` when given (atomically)."""
    if path:
        write_json(path, result)
        print(f"\nwrote {path}")


def run_as_script(
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Any],
) -> None:
    """``python -m flowmatch.benchmarks.NAME``: parse the benchmark's options and run it."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args())
