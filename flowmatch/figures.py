"""Figures of a fitted pipeline: matched density trees, persistence diagrams, latent views,
translated against true activations, the comparison, and the baselines' diagnostics.

Every function returns a pyplot-free :class:`matplotlib.figure.Figure` (safe headless and in
threads); embed it with :meth:`flowmatch.report.Report.add_figure` or call ``fig.savefig``.
Matched modes share one colour in every figure (:func:`pair_colours`).

References
----------
Chazal, Guibas, Oudot, Skraba, "Persistence-based clustering in Riemannian manifolds",
J. ACM 60(6), 2013 (density trees and persistence diagrams).
Bushnaq et al., "The Local Interaction Basis: identifying computationally-relevant and sparsely
interacting features in neural networks", arXiv:2405.10928, 2024.
Black et al., "Interpreting neural networks through the polytope lens", arXiv:2211.12312, 2022.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from flowmatch._tree_plots import leaf_positions

__all__ = [
    "comparison_bars",
    "latent_views",
    "lib_ablation",
    "matched_trees",
    "pair_colours",
    "persistence_diagrams",
    "polytope_profiles",
    "rotation_sparsity_bars",
    "translated_vs_true",
]

_UNMATCHED = "#9e9e9e"


def _palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def pair_colours(matching: Any, n_a: int, n_b: int) -> tuple[list[Any], list[Any]]:
    """Colour per leaf of each tree (``leaves_`` order): the i-th matched pair gets colour i on
    both sides, unmatched leaves are grey.

    Returns
    -------
    colours_a : list (n_a,), colours_b : list (n_b,) of matplotlib colours
    """
    pairs = np.asarray(matching.leaf_pairs, dtype=np.int64).reshape(-1, 2)
    pal = _palette(len(pairs))
    ca: list[Any] = [_UNMATCHED] * n_a
    cb: list[Any] = [_UNMATCHED] * n_b
    for i, (ia, ib) in enumerate(pairs):
        ca[int(ia)], cb[int(ib)] = pal[i], pal[i]
    return ca, cb


def _pair_index(matching: Any, side: int, n: int) -> np.ndarray:
    """Per leaf (``leaves_`` order): index of its matched pair, or −1."""
    out = np.full(n, -1, dtype=np.int64)
    pairs = np.asarray(matching.leaf_pairs, dtype=np.int64).reshape(-1, 2)
    out[pairs[:, side]] = np.arange(len(pairs))
    return out


def _draw_tree(ax: Any, tree: Any, leaf_colour: list[Any], leaf_tag: list[str], title: str) -> None:
    g = tree.tree_
    xpos = leaf_positions(tree)
    node_of_leaf = {int(v): i for i, v in enumerate(tree.leaves_)}
    bottom = float(np.min(tree.log_density_))

    def colour(v: int) -> Any:
        """A branch takes its leaves' colour when all its leaves share one matched pair."""
        below = [u for u in [v, *_descendants(g, v)] if u in node_of_leaf]
        cols = {str(leaf_colour[node_of_leaf[u]]) for u in below}
        return leaf_colour[node_of_leaf[below[0]]] if len(cols) == 1 and below else "k"

    for v in g.nodes:
        level = g.nodes[v]["level"]
        parents = list(g.predecessors(v))
        low = g.nodes[parents[0]]["level"] if parents else bottom
        c = colour(v)
        ax.plot([xpos[v], xpos[v]], [level, low], color=c, lw=2.4 if c != "k" else 1.2)
        kids = list(g.successors(v))
        if kids:
            xs = [xpos[k] for k in kids]
            ax.plot([min(xs), max(xs)], [level, level], color="k", lw=1.2)
    for v, i in node_of_leaf.items():
        node = g.nodes[v]
        ax.plot(xpos[v], node["level"], "o", color=leaf_colour[i], ms=5 + 22 * node["mass"])
        ax.annotate(
            f"{leaf_tag[i]}\n{100 * node['mass']:.0f}%",
            (xpos[v], node["level"]),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    top = max(g.nodes[v]["level"] for v in g.nodes)
    ax.set_ylim(bottom, top + 0.22 * (top - bottom + 1e-12))
    ax.set_xlim(-0.7, len(tree.leaves_) - 0.3)
    ax.set_xticks([])
    ax.set_ylabel("log-density of the latent")
    ax.set_title(title, fontsize=10)


def _descendants(g: Any, v: int) -> list[int]:
    import networkx as nx

    return list(nx.descendants(g, v))


def matched_trees(
    tree_a: Any, tree_b: Any, matching: Any, names: Sequence[str] = ("A", "B")
) -> Any:
    """The two density trees side by side; matched leaves (and branches whose leaves all belong
    to one matched pair) share a colour, and carry the tag ``m<i>`` of their pair.

    Parameters
    ----------
    tree_a, tree_b : fitted :class:`~flowmatch.density_tree.DensityTree`
    matching : :class:`~flowmatch.matching.TreeMatching` with ``leaf_pairs`` (p, 2)
    names : labels of the two models.
    """
    n_a, n_b = len(tree_a.leaves_), len(tree_b.leaves_)
    ca, cb = pair_colours(matching, n_a, n_b)
    pa, pb = _pair_index(matching, 0, n_a), _pair_index(matching, 1, n_b)
    conf = np.asarray(matching.confidence, dtype=float)
    tags_a = [f"m{p}" if p >= 0 else "–" for p in pa]
    tags_b = [f"m{p}" if p >= 0 else "–" for p in pb]
    fig = Figure(figsize=(max(9.0, 0.55 * (n_a + n_b) + 4), 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    _draw_tree(axes[0], tree_a, ca, tags_a, f"model {names[0]}: {n_a} modes")
    _draw_tree(axes[1], tree_b, cb, tags_b, f"model {names[1]}: {n_b} modes")
    mean_conf = float(conf.mean()) if len(conf) else float("nan")
    fig.suptitle(
        f"density trees, {len(conf)} matched mode pairs (same colour = matched; "
        f"mean confidence {mean_conf:.2f})",
        fontsize=11,
    )
    return fig


def persistence_diagrams(tree_a: Any, tree_b: Any, names: Sequence[str] = ("A", "B")) -> Any:
    """Persistence diagrams (birth ≥ death, super-level sets) of both trees, with each tree's
    pruning threshold."""
    fig = Figure(figsize=(9.5, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, tree, name in zip(axes, (tree_a, tree_b), names):
        tree.plot_diagram(ax=ax)
        ax.set_title(f"model {name}: " + ax.get_title(), fontsize=10)
    return fig


def _pca2(x: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Top-2 PCA projection of ``x`` fitted on ``ref`` (default ``x``); also the explained
    variance fraction. Signs are fixed (largest loading positive) so plots are reproducible."""
    ref = x if ref is None else ref
    mean = ref.mean(0)
    _, s, vt = np.linalg.svd(ref - mean, full_matrices=False)
    comps = vt[:2]
    comps = comps * np.sign(comps[np.arange(2), np.abs(comps).argmax(1)])[:, None]
    frac = float((s[:2] ** 2).sum() / max((s**2).sum(), 1e-300))
    return (x - mean) @ comps.T, comps, frac


def latent_views(translation: Any, x_a: Any, x_b: Any, labels: Any = None) -> Any:
    """2-D PCA view of each latent, points coloured by their density-tree mode (matched modes
    share a colour), and, when ``labels`` are given, a second row coloured by class.

    Parameters
    ----------
    translation : fitted :class:`~flowmatch.translation.Translation` (with its trees).
    x_a : (n_a, d_a) activations of A; x_b : (n_b, d_b) of B (e.g. the test split).
    labels : optional (n,) classes shared by both (same inputs), for the second row.
    """
    tree_a, tree_b, matching = translation.tree_a_, translation.tree_b_, translation.matching_
    ca, cb = pair_colours(matching, len(tree_a.leaves_), len(tree_b.leaves_))
    pa = _pair_index(matching, 0, len(tree_a.leaves_))
    pb = _pair_index(matching, 1, len(tree_b.leaves_))
    rows = 2 if labels is not None else 1
    fig = Figure(figsize=(10.5, 4.4 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, 2))
    sides = (
        ("A", translation.autoencoder_a_, tree_a, x_a, ca, pa),
        ("B", translation.autoencoder_b_, tree_b, x_b, cb, pb),
    )
    for col, (name, ae, tree, x, colours, pidx) in enumerate(sides):
        z = ae.encode(x).double().numpy()
        mode = tree.predict(z)
        p2, comps, frac = _pca2(z)
        ax = axes[0, col]
        ax.scatter(p2[:, 0], p2[:, 1], s=6, c=[colours[m] for m in mode], alpha=0.75, lw=0)
        cent = (tree.mode_centroids() - z.mean(0)) @ comps.T
        for i, (cx, cy) in enumerate(cent):
            tag = f"m{pidx[i]}" if pidx[i] >= 0 else "–"
            ax.annotate(tag, (cx, cy), fontsize=8, weight="bold", ha="center", va="center")
        ax.set_title(
            f"model {name}: latent (k={z.shape[1]}) PCA, by mode ({100 * frac:.0f}% var.)",
            fontsize=10,
        )
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        if labels is not None:
            y = np.asarray(labels).reshape(-1)
            ax2 = axes[1, col]
            sc = ax2.scatter(p2[:, 0], p2[:, 1], s=6, c=y, cmap="tab10", alpha=0.75, lw=0)
            ax2.set_title(f"model {name}: same view, by class", fontsize=10)
            ax2.set_xlabel("PC 1")
            ax2.set_ylabel("PC 2")
    if labels is not None:
        fig.colorbar(sc, ax=axes[1, :], shrink=0.8, label="class")
    return fig


def translated_vs_true(
    pred_b: Any,
    true_b: Any,
    labels: Any,
    head_b: Any = None,
    reference_b: Any = None,
    reference_name: str = "supervised affine",
) -> Any:
    """Translated A→B test activations against the true B activations of the same inputs.

    Three panels: a PCA view (fitted on the true B activations) of true and translated rows;
    per-class stitched accuracy (``head_b`` on the translation, beside B itself and an optional
    reference translation); R² per B dimension (sorted), for the translation and the reference.

    Parameters
    ----------
    pred_b : (n, d_b) translated activations; true_b : (n, d_b) B's activations.
    labels : (n,) classes. head_b : the part of model B after the compared layer.
    reference_b : optional (n, d_b) translation of a reference method (e.g. supervised affine).
    """
    pred = torch.as_tensor(np.asarray(pred_b, dtype=np.float64))
    true = torch.as_tensor(np.asarray(true_b, dtype=np.float64))
    ref = None if reference_b is None else torch.as_tensor(np.asarray(reference_b, np.float64))
    y = np.asarray(labels).reshape(-1)
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    t2, comps, _ = _pca2(true.numpy())
    p2 = (pred.numpy() - true.numpy().mean(0)) @ comps.T
    axes[0].scatter(t2[:, 0], t2[:, 1], s=7, c=y, cmap="tab10", alpha=0.35, lw=0, label="true B")
    axes[0].scatter(
        p2[:, 0], p2[:, 1], s=9, c=y, cmap="tab10", marker="x", lw=0.8, label="translated A→B"
    )
    axes[0].set_title("PCA of B's activations (test): dots true, × translated", fontsize=10)
    axes[0].set_xlabel("PC 1 of true B")
    axes[0].set_ylabel("PC 2 of true B")
    axes[0].legend(fontsize=8, loc="best")
    classes = np.unique(y)
    if head_b is not None:
        series = [("B itself", true), ("translated A→B", pred)]
        if ref is not None:
            series.append((reference_name, ref))
        width = 0.8 / len(series)
        for s, (name, acts) in enumerate(series):
            with torch.no_grad():
                p = head_b(acts.float()).argmax(1).numpy()
            acc = [float((p[y == c] == c).mean()) for c in classes]
            axes[1].bar(
                np.arange(len(classes)) + (s - (len(series) - 1) / 2) * width,
                acc,
                width,
                label=name,
            )
        axes[1].set_xticks(np.arange(len(classes)), [str(c) for c in classes])
        axes[1].set_ylim(0, 1.05)
        axes[1].set_xlabel("class")
        axes[1].set_ylabel("accuracy of head_b")
        axes[1].set_title("stitched accuracy per class (test)", fontsize=10)
        axes[1].legend(fontsize=8, loc="lower right")
    else:
        axes[1].set_axis_off()
    var = true.var(0)
    live = var > 1e-12
    curves = [("translated A→B", pred, "C0")] + (
        [] if ref is None else [(reference_name, ref, "C1")]
    )
    for name, acts, colour in curves:
        per_unit = 1 - ((acts - true) ** 2).mean(0)[live] / var[live]
        r2 = np.sort(per_unit.numpy())[::-1]
        axes[2].plot(np.arange(1, len(r2) + 1), np.clip(r2, -1, 1), color=colour, label=name)
    axes[2].axhline(0, color="k", lw=0.7)
    axes[2].set_ylim(-1.05, 1.05)
    axes[2].set_xlabel(f"B unit (sorted; {int(live.sum())} of {len(var)} non-constant)")
    axes[2].set_ylabel("R² per unit (clipped to [−1, 1])")
    axes[2].set_title("R² per dimension of B (test)", fontsize=10)
    axes[2].legend(fontsize=8)
    return fig


def comparison_bars(report: Any) -> Any:
    """Stitched accuracy, R² and top-1 retrieval of every method of a
    :class:`~flowmatch.compare.ComparisonReport` as horizontal bars (failed methods omitted)."""
    rows = [r for r in report.rows if r.error is None]
    names = [
        f"{r.method} ({r.paired_rows if r.paired_rows is not None else '?'} pairs)" for r in rows
    ]
    fig = Figure(figsize=(13, 0.42 * len(rows) + 1.8), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    pos = np.arange(len(rows))[::-1]
    for ax, key, title in (
        (axes[0], "stitched_accuracy", "stitched accuracy"),
        (axes[1], "r2", "R² to true B"),
        (axes[2], "top1", "top-1 retrieval"),
    ):
        vals = np.array([np.nan if getattr(r, key) is None else getattr(r, key) for r in rows])
        colours = ["C3" if r.method.startswith("flowmatch") else "C0" for r in rows]
        ax.barh(pos, np.clip(vals, -0.25, None), color=colours)
        for p, v in zip(pos, vals):
            ax.annotate(
                f"{v:.3f}",
                (max(v, 0), p),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-0.3 if np.nanmin(vals, initial=0.0) < 0 else 0.0, 1.15)
        ax.axvline(0, color="k", lw=0.6)
    axes[0].axvline(report.accuracy_b, color="k", ls="--", lw=0.8, label="model B")
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_yticks(pos, names, fontsize=8)
    fig.suptitle(
        f"{report.pair}: every method on held-out test inputs (red: flowmatch)", fontsize=11
    )
    return fig


# ----------------------------------------------------------------------------- baselines
def rotation_sparsity_bars(
    model: Any, inputs: Any, *, n_steps: int = 150, seed: int = 0, max_samples: int = 512
) -> Any:
    """Near-zero fraction of every layer-to-layer Jacobian of an MLP in the neuron, PCA and
    sparsity-optimised rotated bases (:mod:`baselines.rotation_sparsity`)."""
    from baselines._jacobians import split_network
    from baselines.rotation_sparsity import RotationSparsity, pca_rotations, sparsity_table

    x = torch.as_tensor(inputs)[:max_samples]
    rs = RotationSparsity(n_steps=n_steps, seed=seed, max_samples=max_samples).fit(model, x)
    net = split_network(model)
    acts = net.node_activations(x.to(next(model.parameters()).dtype))
    hidden = set(rs.rotations_)
    pca = [r if n in hidden else None for n, r in zip(net.names, pca_rotations(acts))]
    neuron = [None] * len(net.names)
    rows, _ = sparsity_table(
        model, x, {"neuron": neuron, "pca": pca, "rotated": rs.node_rotations()}
    )
    stages = list(dict.fromkeys(r.stage for r in rows))
    bases = list(dict.fromkeys(r.basis for r in rows))
    fig = Figure(figsize=(1.9 * len(stages) + 4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(bases)
    for b, basis in enumerate(bases):
        vals = [
            next(r.near_zero for r in rows if r.stage == s and r.basis == basis) for s in stages
        ]
        ax.bar(
            np.arange(len(stages)) + (b - (len(bases) - 1) / 2) * width, vals, width, label=basis
        )
    ax.set_xticks(np.arange(len(stages)), stages, fontsize=8)
    ax.set_ylabel("near-zero fraction of |J| (≤ 1% of max)")
    ax.set_title("rotation sparsity: Jacobian sparsity per basis (model A)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def lib_ablation(model: Any, inputs: Any, x_test: Any, y_test: Any, node: str) -> Any:
    """Test accuracy when only the top-k directions of ``node`` survive (others mean-ablated),
    in the Local Interaction Basis and in the PCA basis (:mod:`baselines.lib`)."""
    from baselines.lib import LocalInteractionBasis, ablation_curve, pca_bases

    lib = LocalInteractionBasis().fit(model, inputs)
    pca = pca_bases(model, inputs)
    names = [b.name for b in lib.bases_]
    if node not in names:
        raise KeyError(f"node {node!r} is not a LIB node; nodes: {names}")
    i = names.index(node)
    fig = Figure(figsize=(6.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for basis_name, bases in (("LIB", lib.bases_), ("PCA", pca)):
        k_max = bases[i].k
        ks = sorted({k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k <= k_max} | {k_max})
        curve = ablation_curve(model, x_test, y_test, bases[i], ks, basis_name=basis_name)
        ax.plot(curve.ks, curve.accuracy, marker="o", ms=3, label=f"{basis_name} ({k_max} dirs)")
    ax.set_xscale("log")
    ax.set_xlabel(f"directions of {node!r} kept (others mean-ablated)")
    ax.set_ylabel("test accuracy")
    ax.set_title("LIB vs PCA: node ablation (model A)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def polytope_profiles(
    models: Sequence[tuple[str, Any]],
    x: Any,
    y: Any,
    *,
    n_pairs: int = 100,
    n_steps: int = 64,
    seed: int = 0,
) -> Any:
    """Polytope density (spline-code changes per unit distance) along straight paths between
    test inputs of the same class and of different classes (:mod:`baselines.polytope`)."""
    from baselines.polytope import class_path_density

    fig = Figure(figsize=(5.2 * len(models), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models)))
    for ax, (name, model) in zip(axes, models):
        res = class_path_density(
            model, x, y, n_pairs=n_pairs, n_steps=n_steps, n_boot=200, seed=seed
        )
        for kind, pd, colour, ci in (
            ("intra-class", res.intra, "C0", res.intra_ci),
            ("inter-class", res.inter, "C3", res.inter_ci),
        ):
            dens = pd.local_density.numpy()
            binned = np.stack([c.mean(1) for c in np.array_split(dens, 16, axis=1)], axis=1)
            mean = binned.mean(0)
            half = 1.96 * binned.std(0, ddof=1) / np.sqrt(len(binned))
            t = (np.arange(16) + 0.5) / 16
            ax.plot(t, mean, color=colour, label=f"{kind}: mean {ci.mean:.3g}")
            ax.fill_between(t, mean - half, mean + half, color=colour, alpha=0.25)
        ax.set_title(f"model {name}: inter/intra ratio {res.ratio_ci.mean:.2f}", fontsize=10)
        ax.set_xlabel("position t along the path between two inputs")
        ax.set_ylabel("code changes per unit distance")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    return fig
