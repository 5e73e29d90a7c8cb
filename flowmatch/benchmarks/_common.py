"""Shared benchmark plumbing: environment record, timing, peak memory, tables, JSON."""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from flowmatch._io import write_json
from flowmatch.outputs import FORMAT_VERSION

__all__ = [
    "BenchmarkError",
    "environment",
    "format_table",
    "nonnegative_int",
    "peak_rss_mb",
    "positive_float",
    "positive_int",
    "print_table",
    "run_as_script",
    "run_isolated",
    "timer",
    "write_result",
]


class BenchmarkError(RuntimeError):
    """A benchmark measurement failed (e.g. in its worker process); the message says which."""


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


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
    """Write ``result`` as JSON to ``path`` when given (atomically), tagged as a flowmatch
    benchmark result so that a later run may replace it (:mod:`flowmatch.outputs`)."""
    if path:
        tag = {"kind": "benchmark", "format_version": FORMAT_VERSION}
        write_json(path, {"flowmatch": tag, **result}, kind="benchmark")
        print(f"\nwrote {path}")


def _worker(func: Callable[..., Any], args: tuple, conn: Any) -> None:
    try:
        result = ("ok", func(*args))
    except BaseException as err:  # reported to the parent, which raises it
        result = ("error", f"{type(err).__name__}: {err}")
    try:
        conn.send(result)
    finally:
        conn.close()


def run_isolated(
    func: Callable[..., Any], *args: Any, what: str, timeout: float | None = None
) -> Any:
    """``func(*args)`` in a fresh forked process (its own peak memory); return its result.

    A failure in the worker raises :class:`BenchmarkError` with the worker's error; so do a
    worker that dies without a result and one that runs past ``timeout`` seconds (it is
    terminated). The parent never waits forever.
    """
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(func, args, send), daemon=True)
    proc.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise BenchmarkError(f"{what} did not finish within {timeout:g} s (worker stopped)")
        try:
            status, payload = receive.recv()
        except EOFError:
            proc.join()
            raise BenchmarkError(
                f"{what}: the worker process died without a result (exit code {proc.exitcode})"
            ) from None
        if status != "ok":
            raise BenchmarkError(f"{what} failed in its worker process: {payload}")
        return payload
    finally:
        receive.close()
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        proc.join()


def run_as_script(
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Any],
) -> None:
    """``python -m flowmatch.benchmarks.NAME``: parse the benchmark's options and run it."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args())
