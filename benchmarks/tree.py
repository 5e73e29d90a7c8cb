"""Benchmark of :class:`~flowmatch.density_tree.DensityTree`: speed, memory, mode recovery.

1. Speed: time and peak memory of a density tree on ``n`` points (10^3 … 10^6) of a Gaussian
   mixture in 2, 8 and 16 dimensions with its exact log-density, beside gudhi's ToMATo on the
   same points, density and ``k`` (kNN graph included in both timings; both use scipy's
   cKDTree). Every measurement runs in a fresh forked process so that its peak resident
   memory is its own. The diagrams of both are compared at the smallest size.
2. Recovery: on digits-mlp activations (both models), the adjusted Rand index of the tree's
   ``labels_`` against the digit labels, with the latent density of a
   :class:`~flowmatch.autoencoder.FlowAutoencoder`, and the reference of PCA to the same
   latent dimension + a Gaussian mixture with the same number of clusters.

Run ``flowmatch bench tree [--quick] [--json PATH]``.

References
----------
Chazal, Guibas, Oudot, Skraba, "Persistence-based clustering in Riemannian manifolds",
J. ACM 60(6), 2013 (ToMATo).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks._common import (
    pair_names,
    positive_float,
    positive_int,
    print_table,
    run_isolated,
    running,
)
from flowmatch.cli import int_argument

__all__ = ["TreeBench", "add_arguments", "main", "measure_tree"]


@dataclass(frozen=True)
class TreeBench:
    """Speed rows (n, dim, seconds and MiB of each method, modes, same diagram) and recovery
    rows (ARI of the tree's modes against the digit labels, beside PCA + GMM)."""

    speed: tuple[dict[str, Any], ...]
    recovery: tuple[dict[str, Any], ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``flowmatch bench tree`` (``--quick``: n ≤ 10^4 and a short AE fit;
    ``--threads`` also sets the kNN query threads of both methods)."""
    parser.add_argument("--k-neighbors", type=positive_int, default=10)
    parser.add_argument(
        "--sizes",
        type=int_argument(2),
        nargs="*",
        default=None,
        help="override the n grid (each >= 2)",
    )
    parser.add_argument("--dims", type=positive_int, nargs="*", default=[2, 8, 16])
    parser.add_argument(
        "--budget",
        type=positive_float,
        default=150.0,
        help="seconds; a method that exceeds it at some n is not run at larger n (same dim)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=3600.0,
        help="seconds; a measurement still running then is stopped and the benchmark fails",
    )
    parser.add_argument("--no-tomato", action="store_true", help="skip gudhi's ToMATo")
    parser.add_argument("--no-recovery", action="store_true", help="skip the digits ARI part")


# ----------------------------------------------------------------------------- speed
def _mixture(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Eight unit Gaussians with centres ~ N(0, 3² I) and their exact log-density."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (8, dim))
    z = centres[rng.integers(0, 8, n)] + rng.normal(size=(n, dim))
    logp = np.empty(n)
    for s in range(0, n, 200_000):
        sq = ((z[s : s + 200_000, None, :] - centres[None]) ** 2).sum(-1)
        logp[s : s + 200_000] = logsumexp(-0.5 * sq, axis=1) - np.log(8)
    return z, logp - 0.5 * dim * np.log(2 * np.pi)


def _measure(method: str, n: int, dim: int, k: int, threads: int, seed: int) -> dict[str, Any]:
    import resource

    z, logp = _mixture(n, dim, seed)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    start = time.perf_counter()
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "density_tree":
            from flowmatch.density_tree import DensityTree

            tree = DensityTree(k_neighbors=k, max_points=None, n_jobs=threads).fit(
                z, log_density=logp
            )
            out.update(modes=tree.n_modes_, peaks=tree.n_peaks_)
            dgm = tree.persistence_diagram()[1:]
            if tree.n_graph_components_ > 1:  # ToMATo leaves these classes infinite
                dgm = dgm[dgm[:, 1] > logp.min()]
        else:
            from gudhi.clustering.tomato import Tomato

            tom = Tomato(graph_type="knn", density_type="manual", k=k + 1, n_jobs=threads)
            tom.fit(z, weights=logp)
            out.update(modes=None, peaks=tom.n_leaves_)
            dgm = tom.diagram_
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out.update(seconds=seconds, peak_rss_mb=peak, data_rss_mb=base)
    if n <= 2000:
        if method == "tomato":  # same (symmetric) graph as the tree, for the comparison only
            tom = Tomato(graph_type="knn", density_type="manual", k=k + 1, symmetrize_graph=True)
            dgm = tom.fit(z, weights=logp).diagram_
        out["diagram"] = np.asarray(dgm).tolist()
    return out


def _same_diagram(a: list, b: list) -> bool:
    """Finite (birth, death) pairs equal as multisets."""
    da, db = np.asarray(a).reshape(-1, 2), np.asarray(b).reshape(-1, 2)
    if len(da) != len(db):
        return False
    key = lambda d: d[np.lexsort((d[:, 1], d[:, 0]))]  # noqa: E731
    return bool(np.allclose(key(da), key(db)))


def _speed(
    sizes: Sequence[int],
    dims: Sequence[int],
    k_neighbors: int,
    threads: int,
    tomato: bool,
    budget: float,
    timeout: float,
    seed: int,
) -> list[dict[str, Any]]:
    methods = ["density_tree"] + (["tomato"] if tomato else [])
    rows: list[dict[str, Any]] = []
    for dim in dims:
        over_budget: set[str] = set()
        for n in sizes:
            row: dict[str, Any] = {"n": n, "dim": dim}
            results = {}
            for m in methods:
                if m in over_budget:
                    row[f"{m}_s"] = "skipped"
                    continue
                r = run_isolated(
                    _measure,
                    m,
                    n,
                    dim,
                    k_neighbors,
                    threads,
                    seed,
                    what=f"{m} at n={n}, dim={dim}",
                    timeout=timeout,
                )
                results[m] = r
                row[f"{m}_s"] = round(r["seconds"], 3)
                row[f"{m}_mb"] = round(r["peak_rss_mb"], 1)
                if r["seconds"] > budget:
                    over_budget.add(m)
            tree = results.get("density_tree")
            if tree is not None:
                row["peaks"], row["modes"] = tree["peaks"], tree["modes"]
            if tree is not None and "tomato" in results:
                row["speedup"] = round(results["tomato"]["seconds"] / tree["seconds"], 2)
                if "diagram" in tree:
                    row["same_diagram"] = _same_diagram(
                        tree["diagram"], results["tomato"]["diagram"]
                    )
            rows.append(row)
            print(row, flush=True)
    return rows


# ----------------------------------------------------------------------------- recovery
def _recovery(pair_name: str, k_neighbors: int, seed: int, quick: bool) -> list[dict[str, Any]]:
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.density_tree import DensityTree
    from flowmatch.zoo import load_pair

    pair = load_pair(pair_name)
    rows = []
    for side in ("a", "b"):
        acts = pair.activations(side, "train")
        assert acts.labels is not None
        y = acts.labels.numpy()
        x = acts.x.numpy().astype(np.float64)
        ae_opts: dict[str, Any] = {"progress": False, "seed": seed}
        if quick:
            ae_opts["max_steps"] = 400
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ae = FlowAutoencoder(**ae_opts).fit(acts)
            ae_s = time.perf_counter() - start
            k = ae.latent_dim_
            zp = PCA(k, random_state=seed).fit_transform(x)
            for n_modes in (None, 10):
                tree = DensityTree.from_autoencoder(
                    ae, acts, k_neighbors=k_neighbors, n_modes=n_modes
                )
                m = tree.n_modes_
                gmm = GaussianMixture(m, random_state=seed).fit(zp)
                ref = DensityTree(k_neighbors=k_neighbors, n_modes=n_modes)
                ref.fit(zp, log_density=gmm.score_samples(zp))
                rows.append(
                    {
                        "model": side,
                        "latent_dim": k,
                        "n_modes": "auto" if n_modes is None else n_modes,
                        "flow_modes": m,
                        "flow_tree_ari": round(adjusted_rand_score(y, tree.labels_), 3),
                        "pca_gmm_ari": round(adjusted_rand_score(y, gmm.predict(zp)), 3),
                        "pca_gmm_tree_modes": ref.n_modes_,
                        "pca_gmm_tree_ari": round(adjusted_rand_score(y, ref.labels_), 3),
                        "ae_fit_s": round(ae_s, 1),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def measure_tree(
    sizes: Sequence[int],
    dims: Sequence[int] = (2, 8, 16),
    *,
    k_neighbors: int = 10,
    threads: int = -1,
    tomato: bool = True,
    recovery_pair: str | None = "digits-mlp",
    budget: float = 150.0,
    timeout: float = 3600.0,
    quick: bool = False,
    seed: int = 0,
) -> TreeBench:
    """Speed and memory of the density tree (and ToMATo) at every size and dimension, each in
    its own process; then mode recovery on ``recovery_pair`` (None skips it)."""
    speed = _speed(sizes, dims, k_neighbors, threads, tomato, budget, timeout, seed)
    recovery = [] if recovery_pair is None else _recovery(recovery_pair, k_neighbors, seed, quick)
    return TreeBench(tuple(speed), tuple(recovery))


def main(args: argparse.Namespace) -> TreeBench:
    """Run the benchmark; print the tables and return (and optionally write) the results."""
    sizes = args.sizes or ([1000, 10_000] if args.quick else [1000, 10_000, 100_000, 1_000_000])
    threads = args.threads or -1
    with running("tree", args, "cpu") as run:
        run.environment.update(cpu_count=os.cpu_count(), knn_threads=threads)
        run.result = result = measure_tree(
            sizes,
            args.dims,
            k_neighbors=args.k_neighbors,
            threads=threads,
            tomato=not args.no_tomato,
            recovery_pair=None if args.no_recovery else pair_names(args, ["digits-mlp"])[0],
            budget=args.budget,
            timeout=args.timeout,
            quick=args.quick,
            seed=args.seed,
        )
        print_table(
            f"density tree vs ToMATo (k={args.k_neighbors}, kNN threads {threads}; seconds, MiB)",
            result.speed,
        )
        if result.recovery:
            print_table("ARI of the tree's modes vs the class labels", result.recovery)
    return result
