"""Matplotlib figures of a fitted :class:`~flowmatch.density_tree.DensityTree`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["draw_tree", "leaf_positions", "plot_diagram", "plot_tree"]


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


def _descendant_leaves(tree: Any) -> dict[int, list[int]]:
    """Every node of ``tree.tree_`` → the leaves below it (itself for a leaf)."""
    import networkx as nx

    g = tree.tree_
    below: dict[int, list[int]] = {}
    for v in reversed(list(nx.topological_sort(g))):
        kids = list(g.successors(v))
        below[v] = [v] if not kids else [leaf for c in kids for leaf in below[c]]
    return below


def draw_tree(
    ax: Any,
    tree: Any,
    leaf_colours: Sequence[Any] | None = None,
    leaf_texts: Sequence[str] | None = None,
) -> None:
    """Dendrogram of ``tree`` on ``ax``: leaves along x (elder branch on the left), height =
    log-density, marker size = mass.

    The y axis spans the tree's own levels (modes and merges). The root's stem runs down to
    the lowest log-density of the fitted points, which can lie far below every merge; it is
    then cut at the bottom edge, marked with an arrow, and that level is written beside it.

    Parameters
    ----------
    leaf_colours : colour per leaf (``leaves_`` order); a branch whose leaves share one colour
        takes it, other branches are black. Default: black branches, red leaves.
    leaf_texts : label above each leaf (``leaves_`` order); default: index, mass and the
        majority label when the tree was fitted with labels.
    """
    g, xpos = tree.tree_, leaf_positions(tree)
    leaves = list(tree.leaves_)
    colours = list(leaf_colours) if leaf_colours is not None else ["tab:red"] * len(leaves)
    texts = list(leaf_texts) if leaf_texts is not None else [_leaf_text(tree, v) for v in leaves]
    colour_of = {v: colours[i] for i, v in enumerate(leaves)}
    below = _descendant_leaves(tree)
    levels = [g.nodes[v]["level"] for v in g.nodes]
    top, low = max(levels), min(levels)
    span = max(top - low, 1e-6)
    bottom = float(np.min(tree.log_density_))
    floor = min(low - 0.18 * span, low - 0.5)
    cut = bottom < floor
    for v in g.nodes:
        level, parents = g.nodes[v]["level"], list(g.predecessors(v))
        end = g.nodes[parents[0]]["level"] if parents else (floor if cut else bottom)
        shared = {str(colour_of[u]) for u in below[v]}
        c = colour_of[below[v][0]] if leaf_colours is not None and len(shared) == 1 else "k"
        ax.plot([xpos[v], xpos[v]], [level, end], color=c, lw=2.4 if c != "k" else 1.2)
        kids = list(g.successors(v))
        if kids:
            xs = [xpos[k] for k in kids]
            ax.plot([min(xs), max(xs)], [level, level], color="k", lw=1.2)
    for i, v in enumerate(leaves):
        node = g.nodes[v]
        ax.plot(xpos[v], node["level"], "o", color=colours[i], ms=5 + 22 * node["mass"])
        ax.annotate(
            texts[i], (xpos[v], node["level"]), textcoords="offset points", xytext=(0, 7),
            ha="center", va="bottom", fontsize=8,
        )  # fmt: skip
    ax.set_ylim(floor if cut else bottom - 0.05 * span, top + 0.3 * span)
    ax.set_xlim(-0.7, len(leaves) - 0.3)
    if cut:
        _mark_cut(ax, xpos[tree.root_], floor, span, bottom, "root continues to")
    ax.set_xticks([])
    ax.set_ylabel("log-density of the latent")


def _mark_cut(ax: Any, x: float, y: float, span: float, value: float, words: str) -> None:
    """An arrow down to the bottom edge at ``x`` and the level the line really reaches."""
    ax.annotate(
        "", xy=(x, y), xytext=(x, y + 0.12 * span),
        arrowprops={"arrowstyle": "-|>", "color": "k", "lw": 1.2},
    )  # fmt: skip
    left, right = ax.get_xlim()
    room_right = x <= (left + right) / 2  # write on the side with more room
    ax.annotate(
        f"{words} {value:.1f}", (x, y), textcoords="offset points",
        xytext=(6 if room_right else -6, 3), ha="left" if room_right else "right",
        va="bottom", fontsize=8, style="italic",
    )  # fmt: skip


def plot_tree(tree: Any, ax: Any = None) -> Any:
    """Dendrogram (:func:`draw_tree`): leaves along x, height = log-density level."""
    fig, ax = _axes(ax, (max(4.0, 0.7 * tree.n_modes_ + 2), 4.0))
    draw_tree(ax, tree)
    ax.set_title(f"density tree: {tree.n_modes_} modes (of {tree.n_peaks_} peaks)")
    return fig


def plot_diagram(tree: Any, ax: Any = None) -> Any:
    """Persistence diagram (super-level convention: birth ≥ death) with the pruning threshold.

    The axes span the classes that die; the essential class (the global maximum, which dies
    only at the lowest log-density of the fitted points) is drawn at the bottom edge when that
    level lies far below, with an arrow and its death level written beside it."""
    fig, ax = _axes(ax, (4.5, 4.5))
    dgm = tree.persistence_diagram()
    pers = dgm[:, 0] - dgm[:, 1]
    kept = np.zeros(len(dgm), dtype=bool)
    kept[: tree.n_modes_] = True  # rows after the first follow decreasing persistence
    rest = dgm[1:] if len(dgm) > 1 else dgm
    lo, hi = float(min(rest.min(), dgm[0, 0])), float(max(rest.max(), dgm[0, 0]))
    pad = 0.08 * max(hi - lo, 1e-6)
    line = np.array([lo - pad, hi + pad])
    essential = dgm[0].copy()
    cut = essential[1] < line[0]
    if cut:
        essential[1] = line[0]
    ax.scatter(dgm[~kept, 0], dgm[~kept, 1], s=10, color="tab:gray", label="pruned")
    ax.scatter(dgm[1:][kept[1:], 0], dgm[1:][kept[1:], 1], s=18, color="tab:red", label="kept")
    ax.scatter(*essential, s=80, marker="*", color="tab:red", label="essential", clip_on=False)
    ax.set_xlim(*line)
    ax.set_ylim(*line)
    if cut:
        _mark_cut(ax, essential[0], line[0], line[1] - line[0], dgm[0, 1], "dies at")
    ax.plot(line, line, color="k", lw=0.8)
    if np.isfinite(tree.threshold_):
        ax.plot(line, line - tree.threshold_, "--", color="tab:blue", lw=0.8, label="threshold")
    ax.set_xlabel("birth (peak log-density)")
    ax.set_ylabel("death (merge level)")
    ax.set_title(f"persistence: {int(np.sum(pers >= 0))} classes")
    ax.legend(loc="upper left", fontsize=8)
    return fig
