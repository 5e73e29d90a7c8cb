"""Polytope lens on the zoo: boundary density along paths, and clusters of spline codes.

For every model of the zoo pairs, on the held-out inputs:

* polytope density (spline-code changes per unit Euclidean input distance) on straight paths
  from class-balanced starts to one input of the same class and one of another class, with
  bootstrap 95% intervals of the means and a paired (over starts) interval of their ratio, plus
  a length-matched ratio (inter-class paths are longer, and counts need not grow linearly
  with length);
* the same per layer (each ReLU layer's own code), normalised by the input distance and by the
  length of the path's image in that layer's pre-activation space, beside the ratio of the same
  architecture at its random initialisation (a control: what geometry alone gives) and a
  resolution check (relative change of the counts when the points per path are doubled);
* the number of distinct spline codes;
* label purity of HDBSCAN (Hamming) and k-means clusters of the codes, beside HDBSCAN and
  k-means clusters of the raw activations of the compared layer and the modes of a
  :class:`flowmatch.density_tree.DensityTree`;
* the rows of :func:`flowmatch.compare.compare` for the comparison method ``"polytope"``
  (fitted on disjoint, shuffled halves of the training inputs, scored on the test inputs).

A model that appears in two pairs is measured once. Figures (``--out DIR``): density profiles
along the paths per pair, intra/inter means with their intervals for all models, and the
per-layer densities and ratios (:func:`layer_density_figure`).

Run: ``flowmatch bench polytope --out figures/polytope --json polytope.json``.

References
----------
Black et al. (2022). Interpreting neural networks through the polytope lens. arXiv:2211.12312.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.polytope import (
    ClassPathDensity,
    LayerRatio,
    MeanCI,
    class_path_density,
    cluster_codes,
    cluster_purity,
    path_density,
    spline_codes,
)
from benchmarks._common import (
    nonnegative_int,
    pair_names,
    positive_int,
    print_table,
    running,
    timer,
)
from flowmatch.outputs import figures_folder
from flowmatch.validation import resolve_device, seed_everything
from flowmatch.zoo import ModelSpec, build_model, load_pair

__all__ = [
    "PolytopeBench",
    "PolytopeSettings",
    "add_arguments",
    "layer_density_figure",
    "main",
    "measure_polytope",
]


@dataclass(frozen=True)
class PolytopeSettings:
    """Options of the measurements (see ``add_arguments`` for each)."""

    n_pairs: int = 300
    n_steps: int = 256
    count: str = "hamming"
    n_boot: int = 2000
    n_cluster: int = 1500
    min_cluster_size: int = 15
    k: int = 10
    control: bool = True
    check_paths: int = 100
    seed: int = 0
    device: str = "auto"
    progress: bool = True


@dataclass(frozen=True)
class PolytopeBench:
    """Rows of every table: whole-code densities (with per-layer rows), cluster purities, the
    comparison rows; notes and the figures written."""

    density: list[dict[str, Any]] = field(default_factory=list)
    clusters: list[dict[str, Any]] = field(default_factory=list)
    method: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the polytope benchmark (default pairs: every pair)."""
    parser.add_argument(
        "--n-pairs",
        type=nonnegative_int,
        default=300,
        help="starts (= paths of each kind) per model",
    )
    parser.add_argument("--n-steps", type=positive_int, default=256, help="points per path")
    parser.add_argument("--count", default="hamming", choices=["hamming", "regions"])
    parser.add_argument("--n-boot", type=positive_int, default=2000, help="bootstrap resamples")
    parser.add_argument(
        "--n-cluster", type=positive_int, default=1500, help="rows clustered per model"
    )
    parser.add_argument("--min-cluster-size", type=positive_int, default=15, help="HDBSCAN")
    parser.add_argument("--k", type=positive_int, default=10, help="k-means clusters")
    parser.add_argument("--no-method", action="store_true", help="skip the translation row")
    parser.add_argument(
        "--no-control", action="store_true", help="skip the randomly initialised control"
    )
    parser.add_argument(
        "--check-paths",
        type=nonnegative_int,
        default=100,
        help="paths of each kind re-measured at twice --n-steps (resolution check; 0 skips)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="directory for PNG figures")
    parser.add_argument("--no-progress", action="store_true")


# ----------------------------------------------------------------------------- pieces
def _raw_clusters(acts: np.ndarray, y: np.ndarray, args: PolytopeSettings) -> dict[str, Any]:
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
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from flowmatch.density_tree import DensityTree

    k_dim = min(8, acts.shape[1])
    z = PCA(n_components=k_dim, random_state=seed).fit_transform(acts)
    k = 15
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    log_density = -k_dim * np.log(np.maximum(dist[:, -1], 1e-12))
    tree = DensityTree(k_neighbors=k, seed=seed).fit(z, y, log_density=log_density)
    note = (
        f"density_tree: modes of flowmatch.density_tree.DensityTree (gap-rule pruning) on the top "
        f"{k_dim} principal components of the activations with a {k}-NN log-density estimate, "
        "not on a flow-autoencoder latent"
    )
    return cluster_purity(tree.labels_, y[tree.fit_index_]), note


def _method_rows(pair: Any, args: PolytopeSettings) -> list[dict[str, Any]]:
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
    return report.to_rows()


def _ci_text(ci: MeanCI) -> str:
    return f"{ci.mean:.3g} [{ci.low:.3g}, {ci.high:.3g}]"


def _untrained(info: dict[str, Any], n_features: int) -> torch.nn.Module:
    """The model's architecture at its seeded random initialisation (no training)."""
    spec = dict(info["spec"])
    spec["hidden"] = tuple(spec["hidden"])
    return build_model(ModelSpec(**spec), n_features).eval()


def _resolution_change(
    model: Any, x: torch.Tensor, res: ClassPathDensity, args: PolytopeSettings
) -> np.ndarray:
    """Relative change of each layer's total flips, then of the whole code's, when the first
    ``--check-paths`` paths of each kind are re-measured with twice the points
    # (n_layers + 1,)."""
    k = min(args.check_paths, len(res.endpoints))
    e = res.endpoints[:k]
    before = res.intra.layer_changes[:k].sum(0) + res.inter.layer_changes[:k].sum(0)
    after = sum(
        path_density(
            model, x[e[:, 0]], x[e[:, col]], n_steps=2 * args.n_steps, count=args.count,
            device=args.device,
        ).layer_changes.sum(0)
        for col in (1, 2)
    )  # fmt: skip
    before, after = before.double(), after.double()  # type: ignore[union-attr]
    before, after = torch.cat([before, before.sum()[None]]), torch.cat([after, after.sum()[None]])
    return ((after - before) / before.clamp(min=1)).numpy()


def _layer_rows(
    res: ClassPathDensity,
    control: ClassPathDensity | None,
    resolution: np.ndarray | None,
    args: PolytopeSettings,
) -> list[dict[str, Any]]:
    """One row per layer (and the whole code): densities, ratios and their intervals."""
    ci: dict[str, Any] = dict(n_boot=args.n_boot, seed=args.seed)
    by_input = res.layer_ratios("input", **ci)
    by_preact = res.layer_ratios("preact", whole=False, **ci)
    by_control = control.layer_ratios("input", **ci) if control is not None else None
    rows = []
    for k, r in enumerate(by_input):
        whole = r.layer == "all"
        units = sum(res.intra.layer_units) if whole else res.intra.layer_units[k]
        flips = res.intra.layer_changes.sum(0).double() + res.inter.layer_changes.sum(0)
        row: dict[str, Any] = {
            "layer": r.layer,
            "units": units,
            "flip share": 1.0 if whole else float(flips[k] / flips.sum()),
            "intra": _ci_text(r.intra),
            "inter": _ci_text(r.inter),
            "ratio": _ci_text(r.ratio),
            "matched": _ci_text(r.matched),
            "ratio/preact": "" if whole else _ci_text(by_preact[k].ratio),
            "untrained": _ci_text(by_control[k].ratio) if by_control else "",
            "d@2x steps": "" if resolution is None else float(resolution[k]),
            "_input": _ratio_dict(r),
            "_preact": None if whole else _ratio_dict(by_preact[k]),
            "_untrained": _ratio_dict(by_control[k]) if by_control else None,
        }
        rows.append(row)
    return rows


def _ratio_dict(r: LayerRatio) -> dict[str, Any]:
    return {
        "layer": r.layer,
        "normalise": r.normalise,
        **{k: getattr(r, k).as_dict() for k in ("intra", "inter", "ratio", "matched")},
    }


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


def _errbar(ax: Any, pos: np.ndarray, cis: Sequence[MeanCI], **kw: Any) -> None:
    m = np.array([c.mean for c in cis])
    err = np.array([[c.mean - c.low for c in cis], [c.high - c.mean for c in cis]])
    ax.errorbar(pos, m, yerr=np.clip(err, 0, None), fmt="o", ms=4, capsize=3, **kw)


def layer_density_figure(
    models: Sequence[tuple[str, ClassPathDensity, ClassPathDensity | None]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> Any:
    """Per-layer polytope density of intra- against inter-class paths, one column per model.

    Top row: mean flips of each layer's code (and of the whole code, "all") per unit input
    distance on intra- and inter-class paths, log scale, 95% bootstrap intervals. Bottom row:
    the inter/intra ratio per layer under input-distance normalisation, among length-matched
    paths, under the layer's own pre-activation path length, and for the same architecture at
    random initialisation when a control is given; the dashed line marks 1.

    Parameters
    ----------
    models : (title, result, control or None) per model; results from
        :func:`baselines.polytope.class_path_density`, controls likewise on an untrained model.
    n_boot, seed : bootstrap settings for the intervals.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    if len(models) == 0:
        raise ValueError("models is empty: give at least one (title, result, control) triple")
    fig = Figure(figsize=(4.2 * len(models), 6.4), layout="constrained")
    axes = fig.subplots(2, len(models), squeeze=False)
    for col, (title, res, control) in enumerate(models):
        by_input = res.layer_ratios("input", n_boot=n_boot, seed=seed)
        by_preact = res.layer_ratios("preact", whole=False, n_boot=n_boot, seed=seed)
        names = [r.layer for r in by_input]
        pos = np.arange(len(names), dtype=float)
        top, bottom = axes[0, col], axes[1, col]
        _errbar(top, pos - 0.1, [r.intra for r in by_input], color="C0", label="intra-class")
        _errbar(top, pos + 0.1, [r.inter for r in by_input], color="C3", label="inter-class")
        top.set_yscale("log")
        top.set_title(title, fontsize=10)
        top.set_ylabel("flips / unit input distance")
        series = [
            ("input distance", [r.ratio for r in by_input], "C2"),
            ("length-matched", [r.matched for r in by_input], "C4"),
            ("pre-activation length", [r.ratio for r in by_preact], "C1"),
        ]
        if control is not None:
            ctl = control.layer_ratios("input", n_boot=n_boot, seed=seed)
            series.append(("untrained, input distance", [r.ratio for r in ctl], "0.5"))
        for k, (label, cis, colour) in enumerate(series):
            shift = (k - (len(series) - 1) / 2) * 0.14
            _errbar(bottom, pos[: len(cis)] + shift, cis, color=colour, label=label)
        bottom.axhline(1.0, color="k", lw=0.8, ls="--")
        bottom.set_ylabel("inter / intra density")
        for ax in (top, bottom):
            ax.set_xticks(pos, names, fontsize=8)
        bottom.set_xlabel("layer (ReLU input signs); 'all' = whole code")
    axes[0, 0].legend(fontsize=8)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    return fig


# ----------------------------------------------------------------------------- run
def _analyse_model(
    model: Any,
    info: dict[str, Any],
    layer: str,
    x: torch.Tensor,
    y: torch.Tensor,
    args: PolytopeSettings,
) -> dict[str, Any]:
    """Density, per-layer and cluster figures of one model."""
    from flowmatch.activations import collect

    kw = dict(
        n_pairs=args.n_pairs, n_steps=args.n_steps, count=args.count, n_boot=args.n_boot,
        seed=args.seed, device=args.device, progress=args.progress,
    )  # fmt: skip
    res = class_path_density(model, x, y, **kw)  # type: ignore[arg-type]
    control = None
    if args.control:
        control = class_path_density(_untrained(info, x.shape[1]), x, y, **kw)  # type: ignore[arg-type]
    resolution = _resolution_change(model, x, res, args) if args.check_paths > 0 else None
    layer_rows = _layer_rows(res, control, resolution, args)
    codes = spline_codes(model, x, device=args.device)
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
    clusters["code_kmeans"] = cluster_purity(
        cluster_codes(codes[sub], "kmeans", seed=args.seed, n_clusters=args.k), ys
    )
    acts = collect(model, x[sub], layer, device=args.device).x.double().numpy()
    clusters.update(_raw_clusters(acts, ys, args))
    tree, tree_note = _density_tree_modes(acts, ys, args.seed)
    if tree is not None:
        clusters["density_tree"] = tree
    matched = layer_rows[-1]["_input"]["matched"]
    row = {
        **{f"{k}_{s}": getattr(getattr(res, f"{k}_ci"), s) for k in ("intra", "inter")
           for s in ("mean", "low", "high")},
        "ratio": res.ratio_ci.mean,
        "ratio_low": res.ratio_ci.low,
        "ratio_high": res.ratio_ci.high,
        "matched": matched["mean"],
        "matched_low": matched["low"],
        "matched_high": matched["high"],
        "len_intra": float(res.intra.length.mean()),
        "len_inter": float(res.inter.length.mean()),
        "n_units": int(codes.shape[1]),
        "distinct_codes": len(torch.unique(codes, dim=0)),
        "n_inputs": len(x),
        "per_layer": layer_rows,
    }  # fmt: skip
    return {"row": row, "clusters": clusters, "res": res, "control": control, "note": tree_note}


def _measure_pair(
    name: str,
    settings: PolytopeSettings,
    done: dict[str, dict[str, Any]],
    res: PolytopeBench,
    panels: list[tuple[str, ClassPathDensity, ClassPathDensity | None]],
) -> dict[str, ClassPathDensity]:
    """Both models of pair ``name`` (a model measured before is reused from ``done``)."""
    pair = load_pair(name)
    x, y = pair.data.x_test, pair.data.y_test
    per_model = {}
    for side, model, layer, info in (
        ("a", pair.model_a, pair.layer_a, pair.info_a),
        ("b", pair.model_b, pair.layer_b, pair.info_b),
    ):
        key = json.dumps([info["spec"], layer], sort_keys=True)
        tag = {"pair": name, "model": f"{side} ({info['spec']['arch']})"}
        if key in done:
            first = done[key]
            res.density.append({**first["row"], **tag, "same as": first["tag"], "seconds": 0.0})
            per_model[side] = first["res"]
            continue
        with timer() as t:
            out_m = _analyse_model(model, info, layer, x, y, settings)
        out_m["tag"] = f"{tag['pair']} {tag['model']}"
        out_m["row"] = {**tag, **out_m["row"], "same as": "", "seconds": t["seconds"]}
        done[key] = out_m
        res.density.append(out_m["row"])
        res.clusters.extend(
            {**tag, "clustering": k, **v.as_dict()} for k, v in out_m["clusters"].items()
        )
        per_model[side] = out_m["res"]
        panels.append((out_m["tag"], out_m["res"], out_m["control"]))
        if out_m["note"] not in res.notes:
            res.notes.append(out_m["note"])
    return per_model


def measure_polytope(
    pairs: Sequence[str],
    settings: PolytopeSettings = PolytopeSettings(),
    *,
    method_rows: bool = True,
    out: Path | None = None,
) -> PolytopeBench:
    """Every model of ``pairs`` measured once; comparison rows per pair; figures in ``out``."""
    seed_everything(settings.seed)
    res = PolytopeBench()
    done: dict[str, dict[str, Any]] = {}  # one measurement per distinct model
    panels: list[tuple[str, ClassPathDensity, ClassPathDensity | None]] = []
    for name in pairs:
        per_model = _measure_pair(name, settings, done, res, panels)
        if out is not None:
            res.figures.append(str(_plot_profiles(name, per_model, out)))
        if method_rows:
            res.method.extend(_method_rows(load_pair(name), settings))
    if out is not None and res.density:
        res.figures.append(str(_plot_cis(res.density, out)))
        fig = layer_density_figure(panels, n_boot=settings.n_boot, seed=settings.seed)
        res.figures.append(str(out / "polytope_layer_density.png"))
        fig.savefig(res.figures[-1], dpi=120)
    return res


def _print(res: PolytopeBench, settings: PolytopeSettings) -> None:
    cols = (
        ["pair", "model"]
        + [f"{k}{s}" for k in ("intra", "inter") for s in ("_mean", "_low", "_high")]
        + [f"{k}{s}" for k in ("ratio", "matched") for s in ("", "_low", "_high")]
    )
    print_table(
        f"whole-code polytope density ({settings.count} changes / unit input distance, test "
        f"inputs, {settings.n_pairs} class-balanced starts, one intra and one inter path each, "
        f"{settings.n_steps} points per path, 95% bootstrap CI, paired over starts for the ratio)",
        res.density,
        cols,
    )
    code_cols = ["len_intra", "len_inter", "n_units", "distinct_codes", "n_inputs", "seconds"]
    print_table("paths and codes", res.density, ["pair", "model", *code_cols, "same as"])
    layer_cols = [
        "pair", "model", "layer", "units", "flip share", "intra", "inter", "ratio", "matched",
        "ratio/preact", "untrained", "d@2x steps",
    ]  # fmt: skip
    layer_rows = [
        {"pair": r["pair"], "model": r["model"], **lr} for r in res.density for lr in r["per_layer"]
    ]
    print_table(
        "per-layer polytope density: each ReLU layer's own code, then the whole code ('all'); "
        "intra/inter = mean flips per unit input distance; ratio = inter/intra; matched = ratio "
        "among paths of similar length; ratio/preact = ratio with each path's length measured "
        "in that layer's pre-activation space; untrained = ratio of the same architecture at "
        "random initialisation; d@2x steps = relative change of the flip count at twice the "
        "points per path; all with 95% bootstrap CIs",
        layer_rows,
        layer_cols,
    )
    print_table(
        "clusters and label purity (test subsample; HDBSCAN with eom / leaf cluster selection; "
        "noise excluded from purity, one group in ARI)",
        res.clusters,
        ["pair", "model", "clustering", "n_points", "n_clusters", "noise_fraction", "purity",
         "ari"],
    )  # fmt: skip
    if res.method:
        print_table(
            "comparison rows (flowmatch.compare protocol: disjoint shuffled train halves, "
            "test inputs; reference = supervised affine on every train input)",
            res.method,
            ["pair", "method", "paired_rows", "stitched_accuracy", "relative_stitching", "r2",
             "cosine", "top1", "fit_seconds", "error"],
        )  # fmt: skip
    for note in res.notes:
        print("note:", note)
    for f in res.figures:
        print("figure:", f)


def main(args: argparse.Namespace) -> PolytopeBench:
    """Run the benchmark; print tables; save figures and JSON when asked."""
    device = str(resolve_device(args.device))
    settings = PolytopeSettings(
        n_pairs=args.n_pairs, n_steps=args.n_steps, count=args.count, n_boot=args.n_boot,
        n_cluster=args.n_cluster, min_cluster_size=args.min_cluster_size, k=args.k,
        control=not args.no_control, check_paths=args.check_paths, seed=args.seed,
        device=args.device, progress=not args.no_progress,
    )  # fmt: skip
    with running("polytope", args, device) as run:
        out = figures_folder(args.out) if args.out else None
        run.result = measure_polytope(
            pair_names(args, ["all"]), settings, method_rows=not args.no_method, out=out
        )
        _print(run.result, settings)
    return run.result
