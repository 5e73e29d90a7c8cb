"""Matplotlib figures of a fitted :class:`~flowmatch.density_tree.DensityTree`."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_diagram", "plot_tree"]


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    """The given axes and their figure, or a new pyplot-free Figure (saves headless)."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _leaf_text(tree: Any, v: int) -> str:
    node = tree.tree_.nodes[v]
    text = f"{v}\n{100 * node['mass']:.1f}%"
    hist = node["label_hist"]
    if hist is not None and hist.sum() > 0:
        top = int(np.argmax(hist))
        text += f"\n{tree.classes_[top]} ({100 * hist[top] / hist.sum():.0f}%)"
    return text


def leaf_positions(tree: Any) -> dict[int, float]:
    """x position of every node of ``tree.tree_`` for a dendrogram: leaves at 0, 1, 2, … in a
    depth-first order (elder child on the left, so branches never cross), a merge node at the
    mean of its children."""
    g = tree.tree_
    xpos: dict[int, float] = {}
    post: list[int] = []
    n_placed = 0
    stack: list[tuple[int, bool]] = [(tree.root_, False)]
    while stack:  # depth-first, elder child on the left: branches never cross
        v, done = stack.pop()
        kids = sorted(g.successors(v), key=lambda c: g.nodes[c]["peak"])
        if done or not kids:
            post.append(v)
            if not kids:
                xpos[v] = float(n_placed)
                n_placed += 1
            continue
        stack.append((v, True))
        stack.extend((c, False) for c in kids)
    for v in post:
        kids = list(g.successors(v))
        if kids:
            xpos[v] = float(np.mean([xpos[c] for c in kids]))
    return xpos


def plot_tree(tree: Any, ax: Any = None) -> Any:
    """Dendrogram: leaves along x (elder branch on the left), height = log-density level."""
    fig, ax = _axes(ax, (max(4.0, 0.7 * tree.n_modes_ + 2), 4.0))
    g = tree.tree_
    xpos = leaf_positions(tree)
    bottom = float(tree.log_density_.min())
    for v in g.nodes:
        level = g.nodes[v]["level"]
        parents = list(g.predecessors(v))
        low = g.nodes[parents[0]]["level"] if parents else bottom
        ax.plot([xpos[v], xpos[v]], [level, low], color="k", lw=1.2)
        kids = list(g.successors(v))
        if kids:
            xs = [xpos[c] for c in kids]
            ax.plot([min(xs), max(xs)], [level, level], color="k", lw=1.2)
        else:
            ax.plot(xpos[v], level, "o", color="tab:red", ms=4 + 20 * g.nodes[v]["mass"])
            ax.annotate(
                _leaf_text(tree, v),
                (xpos[v], level),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks([])
    ax.set_ylabel("log-density")
    ax.set_title(f"density tree: {tree.n_modes_} modes (of {tree.n_peaks_} peaks)")
    top = max(g.nodes[v]["level"] for v in g.nodes)
    span = top - bottom + 1e-12
    ax.set_ylim(bottom - 0.05 * span, top + 0.25 * span)
    ax.set_xlim(-0.7, tree.n_modes_ - 0.3)
    return fig


def plot_diagram(tree: Any, ax: Any = None) -> Any:
    """Persistence diagram (super-level convention: birth ≥ death) with the pruning threshold."""
    fig, ax = _axes(ax, (4.5, 4.5))
    dgm = tree.persistence_diagram()
    pers = dgm[:, 0] - dgm[:, 1]
    kept = np.zeros(len(dgm), dtype=bool)
    kept[: tree.n_modes_] = True  # rows after the first follow decreasing persistence
    ax.scatter(dgm[~kept, 0], dgm[~kept, 1], s=10, color="tab:gray", label="pruned")
    ax.scatter(dgm[kept, 0], dgm[kept, 1], s=18, color="tab:red", label="kept")
    ax.scatter(dgm[:1, 0], dgm[:1, 1], s=60, marker="*", color="tab:red", label="essential")
    lo, hi = float(dgm.min()), float(dgm.max())
    pad = 0.05 * (hi - lo + 1e-12)
    line = np.array([lo - pad, hi + pad])
    ax.plot(line, line, color="k", lw=0.8)
    if np.isfinite(tree.threshold_):
        ax.plot(line, line - tree.threshold_, "--", color="tab:blue", lw=0.8, label="threshold")
    ax.set_xlim(*line)
    ax.set_ylim(*line)
    ax.set_xlabel("birth (peak log-density)")
    ax.set_ylabel("death (merge level)")
    ax.set_title(f"persistence: {int(np.sum(pers >= 0))} classes")
    ax.legend(loc="upper left", fontsize=7)
    return fig
