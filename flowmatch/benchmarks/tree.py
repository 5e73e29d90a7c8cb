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

Run ``flowmatch bench tree [--quick] [--json PATH]`` or ``python -m flowmatch.benchmarks.tree``.

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
from typing import Any

import numpy as np

from flowmatch.benchmarks._common import (
    environment,
    positive_float,
    positive_int,
    print_table,
    run_as_script,
    run_isolated,
    write_result,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``flowmatch bench tree``."""
    parser.add_argument("--quick", action="store_true", help="n ≤ 10^4 and a short AE fit")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k-neighbors", type=positive_int, default=10)
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="kNN query threads (both methods)"
    )
    parser.add_argument(
        "--sizes", type=_size, nargs="*", default=None, help="override the n grid (each >= 2)"
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


def _size(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected a size >= 2, got {value}")
    return value


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


def _speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = args.sizes or ([1000, 10_000] if args.quick else [1000, 10_000, 100_000, 1_000_000])
    methods = ["density_tree"] + ([] if args.no_tomato else ["tomato"])
    rows: list[dict[str, Any]] = []
    for dim in args.dims:
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
                    args.k_neighbors,
                    args.threads,
                    args.seed,
                    what=f"{m} at n={n}, dim={dim}",
                    timeout=args.timeout,
                )
                results[m] = r
                row[f"{m}_s"] = round(r["seconds"], 3)
                row[f"{m}_mb"] = round(r["peak_rss_mb"], 1)
                if r["seconds"] > args.budget:
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
def _recovery(args: argparse.Namespace) -> list[dict[str, Any]]:
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.density_tree import DensityTree
    from flowmatch.zoo import load_pair

    pair = load_pair("digits-mlp")
    rows = []
    for side in ("a", "b"):
        acts = pair.activations(side, "train")
        assert acts.labels is not None
        y = acts.labels.numpy()
        x = acts.x.numpy().astype(np.float64)
        ae_opts: dict[str, Any] = {"progress": False, "seed": args.seed}
        if args.quick:
            ae_opts["max_steps"] = 400
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ae = FlowAutoencoder(**ae_opts).fit(acts)
            ae_s = time.perf_counter() - start
            k = ae.latent_dim_
            zp = PCA(k, random_state=args.seed).fit_transform(x)
            for n_modes in (None, 10):
                tree = DensityTree.from_autoencoder(
                    ae, acts, k_neighbors=args.k_neighbors, n_modes=n_modes
                )
                m = tree.n_modes_
                gmm = GaussianMixture(m, random_state=args.seed).fit(zp)
                ref = DensityTree(k_neighbors=args.k_neighbors, n_modes=n_modes)
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; print the tables and return (and optionally write) the results."""
    env = environment(args.seed, "cpu")
    env["cpu_count"] = os.cpu_count()
    env["threads"] = args.threads
    print("environment:", env)
    start = time.perf_counter()
    speed = _speed(args)
    print_table(
        f"density tree vs ToMATo (k={args.k_neighbors}, {args.threads} threads; seconds, MiB)",
        speed,
    )
    result: dict[str, Any] = {"environment": env, "speed": speed}
    if not args.no_recovery:
        recovery = _recovery(args)
        print_table("digits-mlp: ARI of the tree's modes vs digit labels", recovery)
        result["recovery"] = recovery
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(f"\nwall time: {result['wall_seconds']} s")
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    run_as_script(__doc__, add_arguments, run)
