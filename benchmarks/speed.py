"""``flowmatch bench speed``: translate against mini-vec2vec at scale, side by side.

Each size ``ROWSxDIM`` builds a synthetic pair (no extra, nothing downloaded): A's rows are
a 50-component Gaussian mixture on a 32-dimensional subspace plus noise with a power-law
spectrum over all ``DIM`` coordinates, L2-normalised like sentence embeddings; B's rows are
*other* draws of the same distribution times a hidden random rotation. Both methods fit on the
two unpaired sets in a fresh worker process each (its own peak resident memory) and are scored
on 1,000 held-out paired rows: top-1 among them (cosine) and R².

    flowmatch bench speed --threads 2 --sizes 5000x384 50000x384 100000x768
    flowmatch bench speed --threads 2 --sizes 100000x768 --methods flowmatch
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks._common import peak_rss_mb, print_table, run_isolated, running

__all__ = [
    "RotatedMixture",
    "SpeedBench",
    "add_arguments",
    "main",
    "measure_speed",
    "rotated_mixture",
]

METHODS = ("flowmatch", "mini_vec2vec")


class RotatedMixture:
    """The synthetic distribution (see the module docstring), built from ``rng``: a
    50-component mixture on a ``min(32, d)``-dimensional subspace plus power-law noise, rows
    L2-normalised; ``rotation`` is the hidden (d, d) orthogonal map from A to B."""

    def __init__(self, d: int, rng: np.random.Generator) -> None:
        self.k, self.w = 50, min(32, d)
        self.centres = rng.standard_normal((self.k, self.w)) * 2.0
        self.lift = np.linalg.qr(rng.standard_normal((d, self.w)))[0]  # (d, w) orthonormal
        self.noise_sd = 0.3 * np.arange(1, d + 1) ** -0.5
        self.rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)

    def draw(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """``m`` rows of A's distribution  # (m, d) float32"""
        z = self.centres[rng.integers(self.k, size=m)] + rng.standard_normal((m, self.w))
        x = z @ self.lift.T + rng.standard_normal((m, len(self.noise_sd))) * self.noise_sd
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rotated_mixture(n: int, d: int, *, n_test: int = 1000, seed: int = 0):
    """``(a, b, test_a, test_b)`` float32: unpaired (n, d) sets and paired (n_test, d) rows,
    ``b = a' @ q.T`` for other draws ``a'`` and a hidden rotation ``q`` (see the module
    docstring)."""
    rng = np.random.default_rng(seed)
    dist = RotatedMixture(d, rng)
    a, other, test = dist.draw(n, rng), dist.draw(n, rng), dist.draw(n_test, rng)
    rot = dist.rotation
    return a, other @ rot.T, test, test @ rot.T


def _fit_and_score(method: str, n: int, d: int, seed: int) -> dict[str, Any]:
    """One method on one size, inside its worker: seconds, peak memory, scores."""
    from benchmarks.embeddings import retrieval_scores

    torch.manual_seed(seed)
    a, b, test_a, test_b = rotated_mixture(n, d, seed=seed)
    base_rss = peak_rss_mb()
    start = time.perf_counter()
    if method == "flowmatch":
        from flowmatch.translation import translate

        t = translate(a, b, seed=seed, progress=False)
        predict, stages = t, t.info_["seconds"]
    else:
        from baselines.mini_vec2vec import fit_mini_vec2vec

        m = fit_mini_vec2vec(a, b, seed=seed)
        predict, stages = m.transform, {}
    seconds = time.perf_counter() - start
    scores = retrieval_scores(np.asarray(predict(test_a)), test_b)
    return {
        "rows": n,
        "dim": d,
        "method": method,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 0),
        "data_rss_mb": round(base_rss, 0),
        "top1": scores["top1"],
        "r2": round(scores["r2"], 4),
        "stages": stages,
    }


@dataclass(frozen=True)
class SpeedBench:
    """One row per method and size: rows, dim, method, seconds, peak_rss_mb, data_rss_mb
    (the worker's peak before fitting: data and imports), top1, r2, stages (translate's
    seconds per stage) and time_vs_mini_vec2vec (translate's seconds / the peer's)."""

    rows: list[dict[str, Any]]


def measure_speed(
    sizes: list[tuple[int, int]],
    seed: int = 0,
    timeout: float | None = None,
    methods: tuple[str, ...] = METHODS,
) -> SpeedBench:
    """The ``methods`` on every size, each in a fresh process (see the module docstring);
    ``time_vs_mini_vec2vec`` is filled in where both ran."""
    rows = []
    for n, d in sizes:
        pair = {}
        for method in methods:
            pair[method] = run_isolated(
                _fit_and_score, method, n, d, seed, what=f"{method} at {n}x{d}", timeout=timeout
            )
            print({k: v for k, v in pair[method].items() if k != "stages"}, flush=True)
        ratio = None
        if len(pair) == len(METHODS):
            ratio = pair["flowmatch"]["seconds"] / max(pair["mini_vec2vec"]["seconds"], 1e-9)
            ratio = round(ratio, 2)
        for row in pair.values():
            rows.append({**row, "time_vs_mini_vec2vec": ratio})
    return SpeedBench(rows)


def _size(text: str) -> tuple[int, int]:
    try:
        n, d = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ROWSxDIM such as 50000x384, got {text!r}"
        ) from None
    if n < 2000 or d < 2:
        raise argparse.ArgumentTypeError(f"need at least 2000 rows and 2 dims, got {text!r}")
    return n, d


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the speed benchmark (``--quick``: 5000x384 only)."""
    parser.add_argument("--sizes", type=_size, nargs="+", default=None, metavar="ROWSxDIM")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per fit")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to run (default both; the time ratio needs both)",
    )


def main(args: argparse.Namespace) -> SpeedBench:
    """Run the benchmark and print the table."""
    default = [(5000, 384)] if args.quick else [(5000, 384), (50000, 384), (100000, 768)]
    with running("speed", args) as run:
        run.result = result = measure_speed(
            args.sizes or default, args.seed, args.timeout, tuple(args.methods)
        )
        print_table(
            "translate vs mini-vec2vec (synthetic rotated mixture)",
            [{k: v for k, v in r.items() if k != "stages"} for r in result.rows],
        )
        for r in result.rows:
            if r["stages"]:
                print(f"translate stages at {r['rows']}x{r['dim']} (s): {r['stages']}")
    return result
