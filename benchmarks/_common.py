"""Shared benchmark plumbing: the common options, the run context (threads, environment,
timing, JSON), tables, isolated worker processes and argparse types."""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import resource
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from flowmatch._io import write_json
from flowmatch.cli import int_argument
from flowmatch.environment import environment
from flowmatch.outputs import FORMAT_VERSION
from flowmatch.report import format_table

__all__ = [
    "BenchmarkError",
    "BenchmarkUnavailable",
    "Run",
    "ablation_name",
    "common_options",
    "limit_threads",
    "nonnegative_int",
    "pair_names",
    "peak_rss_mb",
    "positive_float",
    "positive_int",
    "print_table",
    "run_isolated",
    "running",
    "start_ablation",
    "timer",
    "to_json",
    "write_result",
]


class BenchmarkError(ChildProcessError):
    """A benchmark measurement failed in its worker process (an error, a crash or a timeout);
    the message says which. An ``OSError``, so the command line reports it in one line."""


class BenchmarkUnavailable(OSError):
    """What a benchmark needs is not installed (an optional extra, a data package, a cache);
    the message says what to install. An ``OSError``, so the command line reports it in one
    line."""


# ----------------------------------------------------------------------------- argparse types
#: argparse types: an int >= 1, an int >= 0.
positive_int = int_argument(1)
nonnegative_int = int_argument(0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _pair(text: str) -> str:
    from flowmatch.zoo import list_pairs

    names = [*list_pairs(), "all"]
    if text not in names:
        raise argparse.ArgumentTypeError(f"unknown pair {text!r}; choose from {names}")
    return text


def common_options() -> argparse.ArgumentParser:
    """The options every benchmark takes, as an argparse parent parser."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("common options")
    group.add_argument(
        "--pair",
        action="append",
        type=_pair,
        metavar="NAME",
        help="zoo pair, repeatable, or 'all' (default: the benchmark's own)",
    )
    group.add_argument("--seed", type=nonnegative_int, default=0, help="random seed")
    group.add_argument("--quick", action="store_true", help="a small, fast run (a smoke test)")
    group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="limit torch, BLAS/OpenMP and kNN threads to this number (default: no limit)",
    )
    group.add_argument("--json", default=None, metavar="PATH", help="write the result here")
    return parent


def pair_names(args: argparse.Namespace, default: Sequence[str]) -> list[str]:
    """The pairs ``--pair`` names (``all``: every zoo pair), or ``default``; no repeats."""
    from flowmatch.zoo import list_pairs

    chosen = args.pair or list(default)
    return list(dict.fromkeys(list_pairs() if "all" in chosen else chosen))


def start_ablation(enabled: bool) -> list[tuple[str, ...]]:
    """``--ablate-starts``: one start set per family of :data:`flowmatch.settings.START_FAMILIES`
    (flowmatch run with that family alone), or none."""
    from flowmatch.settings import START_FAMILIES

    return [(family,) for family in START_FAMILIES] if enabled else []


def ablation_name(starts: Sequence[str]) -> str:
    """Row name of flowmatch restricted to the start families ``starts``."""
    return f"flowmatch[{'+'.join(starts)}]"


# ----------------------------------------------------------------------------- the run
@contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads and every BLAS/OpenMP pool (threadpoolctl) to
    ``threads`` inside the block; ``None`` leaves them as they are."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Run:
    """What :func:`running` records: the environment, the options, the result, the wall time."""

    name: str
    environment: dict[str, Any]
    options: dict[str, Any]
    result: Any = None
    wall_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def running(name: str, args: argparse.Namespace, device: str | None = None) -> Iterator[Run]:
    """The frame of every benchmark command: thread limits from ``--threads``, the
    environment printed, the wall time measured, and ``--json`` written at the end with the
    result the block stores in ``run.result`` (a dataclass)."""
    options = {k: v for k, v in vars(args).items() if k not in ("func", "bench")}
    with ExitStack() as stack:
        stack.enter_context(limit_threads(args.threads))
        env = environment(args.seed, device)
        print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
        run = Run(name, env, options)
        start = time.perf_counter()
        yield run
        run.wall_seconds = time.perf_counter() - start
    print(f"\nwall time {run.wall_seconds:.1f} s")
    write_result(args.json, run)


def to_json(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON-serialisable data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return obj


def write_result(path: str | None, run: Run | dict[str, Any]) -> None:
    """Write the run (or a plain dict) as JSON to ``path`` when given (atomically), tagged as a
    flowmatch benchmark result so that a later run may replace it (:mod:`flowmatch.outputs`)."""
    if not path:
        return
    body = (
        run
        if isinstance(run, dict)
        else {
            "benchmark": run.name,
            "environment": run.environment,
            "options": run.options,
            "result": to_json(run.result),
            "wall_seconds": run.wall_seconds,
            **run.extra,
        }
    )
    tag = {"kind": "benchmark", "format_version": FORMAT_VERSION}
    write_json(path, {"flowmatch": tag, **body}, kind="benchmark")
    print(f"\nwrote {path}")


# ----------------------------------------------------------------------------- measuring
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


def print_table(
    title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None
) -> None:
    """Print a titled plain-text table to stdout."""
    print(f"\n== {title}")
    print(format_table(rows, columns))


def _worker(func: Callable[..., Any], args: tuple, conn: Any) -> None:
    # the command line's SIGTERM handler (inherited through fork) would print a traceback when
    # the parent stops this worker; here SIGTERM just ends the process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
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
    received = False
    try:
        if not receive.poll(timeout):
            raise BenchmarkError(f"{what} did not finish within {timeout:g} s (worker stopped)")
        try:
            status, payload = receive.recv()
            received = True
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
        if received:  # a worker that has sent its result exits on its own
            proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        proc.join()
