"""Polytope lens on the zoo: boundary density along paths, and clusters of spline codes.

For every model of every zoo pair, on the held-out inputs:

* polytope density (spline-code changes per unit Euclidean distance) on straight paths between
  two inputs of the same class and of different classes, with bootstrap 95% intervals of the
  means and of their ratio, plus a length-matched ratio (inter-class paths are longer);
* the number of distinct spline codes;
* label purity of HDBSCAN (Hamming) and k-means clusters of the codes, beside HDBSCAN and
  k-means clusters of the raw activations of the compared layer and the modes of a
  :class:`flowmatch.density_tree.DensityTree`;
* the rows of :func:`flowmatch.compare.compare` for the comparison method ``"polytope"``
  (fitted on disjoint, shuffled halves of the training inputs, scored on the test inputs).

Figures (``--out DIR``): density profiles along the paths per pair, and intra/inter means with
their intervals for all models.

Run: ``python -m flowmatch.benchmarks.polytope --out figures/polytope --json polytope.json``.

References
----------
Black et al. (2022). Interpreting neural networks through the polytope lens. arXiv:2211.12312.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.polytope import (
    ClassPathDensity,
    bootstrap_ci,
    class_path_density,
    cluster_codes,
    cluster_purity,
    spline_codes,
)
from flowmatch._validation import resolve_device, seed_everything
from flowmatch.benchmarks._common import (
    environment,
    print_table,
    run_as_script,
    timer,
    write_result,
)
from flowmatch.zoo import list_pairs, load_pair

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the polytope benchmark."""
    parser.add_argument("--pairs", nargs="*", default=None, help="zoo pairs (default: all)")
    parser.add_argument("--n-pairs", type=int, default=300, help="paths per kind and model")
    parser.add_argument("--n-steps", type=int, default=256, help="points per path")
    parser.add_argument("--count", default="hamming", choices=["hamming", "regions"])
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--n-cluster", type=int, default=1500, help="rows clustered per model")
    parser.add_argument("--min-cluster-size", type=int, default=15, help="HDBSCAN")
    parser.add_argument("--k", type=int, default=10, help="k-means clusters")
    parser.add_argument("--no-method", action="store_true", help="skip the translation row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="directory for PNG figures")
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    parser.add_argument("--no-progress", action="store_true")


# ----------------------------------------------------------------------------- pieces
def _length_matched_ratio(res: ClassPathDensity, n_bins: int = 5, n_boot: int = 500, seed: int = 0):
    """Inter/intra density ratio within quantile bins of path length, pooled over bins.

    Returns (ratio, low, high, n_bins_used): per bin the ratio of mean densities, averaged with
    weights min(n_intra, n_inter); bootstrap over paths for the interval.
    """
    di, li = res.intra.density.numpy(), res.intra.length.numpy()
    de, le = res.inter.density.numpy(), res.inter.length.numpy()
    edges = np.quantile(np.concatenate([li, le]), np.linspace(0, 1, n_bins + 1))

    def stat(di, li, de, le):
        bi, be = np.digitize(li, edges[1:-1]), np.digitize(le, edges[1:-1])
        num = den = 0.0
        used = 0
        for k in range(n_bins):
            a, b = di[bi == k], de[be == k]
            if min(len(a), len(b)) >= 5 and a.mean() > 0:
                w = min(len(a), len(b))
                num, den, used = num + w * b.mean() / a.mean(), den + w, used + 1
        return (num / den if den else float("nan")), used

    ratio, used = stat(di, li, de, le)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i, e = rng.integers(len(di), size=len(di)), rng.integers(len(de), size=len(de))
        boots.append(stat(di[i], li[i], de[e], le[e])[0])
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    return float(ratio), float(lo), float(hi), used


def _raw_clusters(acts: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.cluster import HDBSCAN, KMeans

    out = {}
    for selection in ("eom", "leaf"):
        hd = HDBSCAN(
            min_cluster_size=args.min_cluster_size, cluster_selection_method=selection, copy=True
        ).fit_predict(acts)
        out[f"act_hdbscan_{selection}"] = cluster_purity(hd, y)
    km = KMeans(n_clusters=args.k, n_init=4, random_state=args.seed).fit_predict(acts)
    out["act_kmeans"] = cluster_purity(km, y)
    return out


def _density_tree_modes(acts: np.ndarray, y: np.ndarray, seed: int) -> tuple[Any, str]:
    """Modes of a DensityTree on the activations' top principal components, with a kNN
    log-density (flow autoencoder latents are used by the main pipeline; this is the same tree
    on a simpler density)."""
    if importlib.util.find_spec("flowmatch.density_tree") is None:
        return None, "flowmatch.density_tree not available"
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from flowmatch.density_tree import DensityTree

    k_dim = min(8, acts.shape[1])
    z = PCA(n_components=k_dim, random_state=seed).fit_transform(acts)
    k = 15
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    log_density = -k_dim * np.log(np.maximum(dist[:, -1], 1e-12))
    tree = DensityTree(k_neighbors=k, seed=seed).fit_points(z, log_density, y)
    note = (
        f"density_tree: modes of flowmatch.density_tree.DensityTree (gap-rule pruning) on the top "
        f"{k_dim} principal components of the activations with a {k}-NN log-density estimate, "
        "not on a flow-autoencoder latent"
    )
    return cluster_purity(tree.labels_, y[tree.fit_index_]), note


def _method_rows(pair: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of ``flowmatch.compare`` for the method "polytope" (and cluster_pairs, which matches
    k-means clusters of raw activations the same way), beside the supervised reference."""
    from flowmatch.compare import compare

    report = compare(
        pair,
        methods=["polytope", "cluster_pairs"],
        seed=args.seed,
        method_params={"polytope": {"n_clusters": args.k, "device": args.device}},
        progress=False,
    )
    rows = []
    for r in report.rows:
        rows.append(
            {
                "pair": pair.name,
                "method": r.method,
                "paired rows": r.paired_rows,
                "uses": r.uses,
                "stitched acc": r.stitched_accuracy,
                "relative stitching": r.relative_stitching,
                "r2": r.r2,
                "cosine": r.cosine,
                "top1": r.top1,
                "fit_s": r.fit_seconds,
                "error": r.error or "",
            }
        )
    return rows


def _per_layer(res: ClassPathDensity, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Intra/inter density of each layer's part of the code, with the ratio's interval."""
    out = []
    for l, layer in enumerate(res.intra.layers):
        intra = res.intra.layer_changes[:, l].double() / res.intra.length
        inter = res.inter.layer_changes[:, l].double() / res.inter.length
        ratio = bootstrap_ci(inter, against=intra, n_boot=args.n_boot, seed=args.seed + l)
        out.append(
            {
                "layer": layer,
                "intra": float(intra.mean()),
                "inter": float(inter.mean()),
                "ratio": ratio.mean,
                "ratio_low": ratio.low,
                "ratio_high": ratio.high,
            }
        )
    return out


# ----------------------------------------------------------------------------- figures
def _band(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin columns of (n_paths, n_steps) into ``n_bins``; mean and normal 95% half-width."""
    binned = np.stack([c.mean(1) for c in np.array_split(values, n_bins, axis=1)], axis=1)
    mean = binned.mean(0)
    half = 1.96 * binned.std(0, ddof=1) / np.sqrt(len(binned))
    t = (np.arange(n_bins) + 0.5) / n_bins
    return t, mean, half


def _plot_profiles(name: str, results: dict[str, ClassPathDensity], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.6), squeeze=False)
    for ax, (side, res) in zip(axes[0], results.items()):
        for kind, pd, colour in (
            ("intra-class", res.intra, "C0"),
            ("inter-class", res.inter, "C3"),
        ):
            t, mean, half = _band(pd.local_density.numpy(), 32)
            ax.plot(t, mean, color=colour, label=f"{kind} (n={len(pd.length)})")
            ax.fill_between(t, mean - half, mean + half, color=colour, alpha=0.25)
        ax.set_title(f"{name}: model {side}")
        ax.set_xlabel("position t along path x(t) = (1-t) x_i + t x_j")
        ax.set_ylabel("code changes per unit distance")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"polytope_density_profile_{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_cis(rows: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    labels = [f"{r['pair']}\n{r['model']}" for r in rows]
    pos = np.arange(len(rows))
    for kind, shift, colour in (("intra", -0.18, "C0"), ("inter", 0.18, "C3")):
        m = np.array([r[f"{kind}_mean"] for r in rows])
        err = np.array(
            [
                [r[f"{kind}_mean"] - r[f"{kind}_low"], r[f"{kind}_high"] - r[f"{kind}_mean"]]
                for r in rows
            ]
        ).T
        axes[0].bar(pos + shift, m, 0.36, yerr=err, capsize=3, color=colour, label=f"{kind}-class")
    axes[0].set_ylabel("mean polytope density (changes / unit distance)")
    axes[0].set_title("polytope density, bootstrap 95% CI")
    axes[0].legend()
    for kind, shift, colour in (("ratio", -0.18, "C2"), ("matched", 0.18, "C4")):
        m = np.array([r[f"{kind}"] for r in rows])
        err = np.array([[r[kind] - r[f"{kind}_low"], r[f"{kind}_high"] - r[kind]] for r in rows]).T
        name = "inter / intra" if kind == "ratio" else "inter / intra, length-matched"
        axes[1].bar(pos + shift, m, 0.36, yerr=err, capsize=3, color=colour, label=name)
    axes[1].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[1].set_title("density ratio, bootstrap 95% CI")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(pos, labels, fontsize=7, rotation=20, ha="right")
    fig.tight_layout()
    path = out / "polytope_density_ci.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- run
def _analyse_model(
    model: Any, layer: str, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, tag: dict
):
    """Density and cluster figures of one model; returns (row, cluster rows, path result)."""
    from flowmatch.activations import collect

    res = class_path_density(
        model,
        x,
        y,
        n_pairs=args.n_pairs,
        n_steps=args.n_steps,
        count=args.count,
        n_boot=args.n_boot,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    lm = _length_matched_ratio(res, seed=args.seed)
    codes = spline_codes(model, x, device=args.device)
    n_distinct = len(torch.unique(codes, dim=0))
    rng = np.random.default_rng(args.seed)
    sub = np.sort(rng.choice(len(x), min(args.n_cluster, len(x)), replace=False))
    ys = y.numpy()[sub]
    clusters = {
        f"code_hdbscan_{sel}": cluster_purity(
            cluster_codes(
                codes[sub],
                "hdbscan",
                min_cluster_size=args.min_cluster_size,
                cluster_selection_method=sel,
            ),
            ys,
        )
        for sel in ("eom", "leaf")
    }
    clusters |= {
        "code_kmeans": cluster_purity(
            cluster_codes(codes[sub], "kmeans", seed=args.seed, n_clusters=args.k), ys
        ),
    }
    acts = collect(model, x[sub], layer, device=args.device).x.double().numpy()
    clusters.update(_raw_clusters(acts, ys, args))
    tree, tree_note = _density_tree_modes(acts, ys, args.seed)
    if tree is not None:
        clusters["density_tree"] = tree
    row = {
        **tag,
        "intra_mean": res.intra_ci.mean,
        "intra_low": res.intra_ci.low,
        "intra_high": res.intra_ci.high,
        "inter_mean": res.inter_ci.mean,
        "inter_low": res.inter_ci.low,
        "inter_high": res.inter_ci.high,
        "ratio": res.ratio_ci.mean,
        "ratio_low": res.ratio_ci.low,
        "ratio_high": res.ratio_ci.high,
        "matched": lm[0],
        "matched_low": lm[1],
        "matched_high": lm[2],
        "len_intra": float(res.intra.length.mean()),
        "len_inter": float(res.inter.length.mean()),
        "n_units": int(codes.shape[1]),
        "distinct_codes": n_distinct,
        "n_inputs": len(x),
        "per_layer": _per_layer(res, args),
    }
    crow = [{**tag, "clustering": k, **v.as_dict()} for k, v in clusters.items()]
    return row, crow, res, tree_note


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; print tables; save figures and JSON when asked."""
    seed_everything(args.seed)
    device = str(resolve_device(args.device))
    env = environment(args.seed, device)
    print("environment:", env)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    rows, cluster_rows, method_rows, figures = [], [], [], []
    notes: list[str] = []
    have_method = all(
        importlib.util.find_spec(m) is not None
        for m in ("baselines.cluster_pairs", "flowmatch.compare")
    )
    with timer() as total:
        for name in args.pairs or list_pairs():
            pair = load_pair(name)
            x, y = pair.data.x_test, pair.data.y_test
            per_model = {}
            for side, model, layer in (
                ("a", pair.model_a, pair.layer_a),
                ("b", pair.model_b, pair.layer_b),
            ):
                arch = pair.info_a["spec"]["arch"] if side == "a" else pair.info_b["spec"]["arch"]
                tag = {"pair": name, "model": f"{side} ({arch})"}
                with timer() as t:
                    row, crow, res, tree_note = _analyse_model(model, layer, x, y, args, tag)
                row["seconds"] = t["seconds"]
                rows.append(row)
                cluster_rows.extend(crow)
                per_model[side] = res
                if tree_note not in notes:
                    notes.append(tree_note)
            if out is not None:
                figures.append(str(_plot_profiles(name, per_model, out)))
            if args.no_method:
                continue
            if have_method:
                method_rows.extend(_method_rows(pair, args))
            elif "flowmatch.compare or baselines.cluster_pairs missing: no table row" not in notes:
                notes.append("flowmatch.compare or baselines.cluster_pairs missing: no table row")
        if out is not None and rows:
            figures.append(str(_plot_cis(rows, out)))
    cols = (
        ["pair", "model"]
        + [f"{k}{s}" for k in ("intra", "inter") for s in ("_mean", "_low", "_high")]
        + [f"{k}{s}" for k in ("ratio", "matched") for s in ("", "_low", "_high")]
    )
    title = (
        f"polytope density ({args.count} changes / unit distance, test inputs, "
        f"{args.n_pairs} paths per kind, {args.n_steps} steps, 95% bootstrap CI)"
    )
    print_table(title, rows, cols)
    code_cols = ["len_intra", "len_inter", "n_units", "distinct_codes", "n_inputs", "seconds"]
    print_table("paths and codes", rows, ["pair", "model", *code_cols])
    layer_rows = [
        {"pair": r["pair"], "model": r["model"], **lr} for r in rows for lr in r["per_layer"]
    ]
    print_table(
        "per-layer polytope density (changes / unit distance, 95% bootstrap CI)", layer_rows
    )
    print_table(
        "clusters and label purity (test subsample; HDBSCAN with eom / leaf cluster selection; "
        "noise excluded from purity, one group in ARI)",
        cluster_rows,
        [
            "pair",
            "model",
            "clustering",
            "n_points",
            "n_clusters",
            "noise_fraction",
            "purity",
            "ari",
        ],
    )
    if method_rows:
        print_table(
            "comparison rows (flowmatch.compare protocol: disjoint shuffled train halves, "
            "test inputs; reference = supervised affine on every train input)",
            method_rows,
        )
    for note in notes:
        print("note:", note)
    print(f"\nwall time: {total['seconds']:.1f} s")
    for f in figures:
        print("figure:", f)
    result = {
        "benchmark": "polytope",
        "environment": env,
        "args": vars(args),
        "density": rows,
        "clusters": cluster_rows,
        "method": method_rows,
        "notes": notes,
        "figures": figures,
        "wall_seconds": total["seconds"],
    }
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    run_as_script(__doc__, add_arguments, run)
