"""Figures of a fitted pipeline: matched density trees, persistence diagrams, latent views,
translated against true activations and the comparison. (A comparison method draws its own
diagnostics through :meth:`flowmatch.methods.Method.figures`.)

Every function returns a pyplot-free :class:`matplotlib.figure.Figure` (safe headless and in
threads); embed it with :meth:`flowmatch.report.Report.add_figure` or call ``fig.savefig``.
Matched modes share one colour in every figure (:func:`pair_colours`).

References
----------
Chazal, Guibas, Oudot, Skraba, "Persistence-based clustering in Riemannian manifolds",
J. ACM 60(6), 2013 (density trees and persistence diagrams).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from flowmatch._tree_plots import draw_tree

__all__ = [
    "comparison_bars",
    "latent_views",
    "matched_trees",
    "pair_colours",
    "persistence_diagrams",
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


def _leaf_texts(tags: Sequence[str], tree: Any, classes: Sequence[Any] | None) -> list[str]:
    """``m<i>``, mass and (when known) the majority class of every leaf."""
    masses = tree.mode_masses()
    out = []
    for i, tag in enumerate(tags):
        text = f"{tag}\n{100 * masses[i]:.0f}%"
        if classes is not None and classes[i] is not None:
            text += f"\nclass {classes[i]}"
        out.append(text)
    return out


def matched_trees(
    tree_a: Any,
    tree_b: Any,
    matching: Any,
    names: Sequence[str] = ("A", "B"),
    classes: tuple[Sequence[Any], Sequence[Any]] | None = None,
) -> Any:
    """The two density trees one above the other; matched leaves (and branches whose leaves
    all belong to one matched pair) share a colour and carry the tag ``m<i>`` of their pair.

    Each tree's axis spans its modes and merges; the root's stem, which reaches down to the
    lowest log-density of the fitted points, is cut at the bottom edge with an arrow and that
    level written beside it (:func:`flowmatch._tree_plots.draw_tree`).

    Parameters
    ----------
    tree_a, tree_b : fitted :class:`~flowmatch.density_tree.DensityTree`
    matching : :class:`~flowmatch.matching.TreeMatching` with ``leaf_pairs`` (p, 2)
    names : labels of the two models.
    classes : optional majority class of every leaf of each tree (``leaves_`` order, None
        where unknown), written under the leaf's mass.
    """
    n_a, n_b = len(tree_a.leaves_), len(tree_b.leaves_)
    ca, cb = pair_colours(matching, n_a, n_b)
    pa, pb = _pair_index(matching, 0, n_a), _pair_index(matching, 1, n_b)
    conf = np.asarray(matching.confidence, dtype=float)
    cls_a, cls_b = classes if classes is not None else (None, None)
    sides = (
        (tree_a, ca, [f"m{p}" if p >= 0 else "–" for p in pa], cls_a, names[0]),
        (tree_b, cb, [f"m{p}" if p >= 0 else "–" for p in pb], cls_b, names[1]),
    )
    width = min(12.5, max(7.0, 0.6 * max(n_a, n_b) + 2.0))
    fig = Figure(figsize=(width, 8.4), layout="constrained")
    for ax, (tree, colours, tags, cls, name) in zip(fig.subplots(2, 1), sides):
        draw_tree(ax, tree, colours, _leaf_texts(tags, tree, cls))
        ax.set_title(f"model {name}: {len(tree.leaves_)} modes", fontsize=10)
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
    fig = Figure(figsize=(12.5, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    _pca_panel(axes[0], pred, true, y)
    series = [("B itself", true), ("translated A→B", pred)]
    series += [] if ref is None else [(reference_name, ref)]
    if head_b is not None:
        _class_accuracy_panel(axes[1], series, head_b, y)
    else:
        axes[1].set_axis_off()
    _unit_r2_panel(axes[2], series[1:], true)
    return fig


def _pca_panel(ax: Any, pred: torch.Tensor, true: torch.Tensor, y: np.ndarray) -> None:
    t2, comps, _ = _pca2(true.numpy())
    p2 = (pred.numpy() - true.numpy().mean(0)) @ comps.T
    ax.scatter(t2[:, 0], t2[:, 1], s=7, c=y, cmap="tab10", alpha=0.35, lw=0, label="true B")
    ax.scatter(p2[:, 0], p2[:, 1], s=9, c=y, cmap="tab10", marker="x", lw=0.8, label="A→B")
    ax.set_title("PCA of B (test): dots true, × translated", fontsize=10)
    ax.set_xlabel("PC 1 of true B")
    ax.set_ylabel("PC 2 of true B")
    ax.legend(fontsize=8, loc="best")


def _class_accuracy_panel(
    ax: Any, series: list[tuple[str, torch.Tensor]], head_b: Any, y: np.ndarray
) -> None:
    classes = np.unique(y)
    width = 0.8 / len(series)
    for s, (name, acts) in enumerate(series):
        with torch.no_grad():
            p = head_b(acts.float()).argmax(1).numpy()
        acc = [float((p[y == c] == c).mean()) for c in classes]
        shift = (s - (len(series) - 1) / 2) * width
        ax.bar(np.arange(len(classes)) + shift, acc, width, label=name)
    ax.set_xticks(np.arange(len(classes)), [str(c) for c in classes])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy of head_b")
    ax.set_title("stitched accuracy per class (test)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def _unit_r2_panel(ax: Any, series: list[tuple[str, torch.Tensor]], true: torch.Tensor) -> None:
    var = true.var(0)
    live = var > 1e-12
    for (name, acts), colour in zip(series, ("C0", "C1")):
        per_unit = 1 - ((acts - true) ** 2).mean(0)[live] / var[live]
        r2 = np.sort(per_unit.numpy())[::-1]
        ax.plot(np.arange(1, len(r2) + 1), np.clip(r2, -1, 1), color=colour, label=name)
    ax.axhline(0, color="k", lw=0.7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(f"B unit (sorted; {int(live.sum())} of {len(var)} non-constant)")
    ax.set_ylabel("R² per unit (clipped to [−1, 1])")
    ax.set_title("R² per dimension of B (test)", fontsize=10)
    ax.legend(fontsize=8)


def comparison_bars(report: Any) -> Any:
    """Stitched accuracy, R² and top-1 retrieval of every method of a
    :class:`~flowmatch.compare.ComparisonReport` as horizontal bars (failed methods omitted)."""
    rows = [r for r in report.rows if r.error is None]
    names = [
        f"{r.method} ({r.paired_rows if r.paired_rows is not None else '?'} pairs)" for r in rows
    ]
    fig = Figure(figsize=(12.5, 0.42 * len(rows) + 1.8), layout="constrained")
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
