"""Merge tree of a super-level-set filtration on a kNN graph (0-dimensional persistence).

The vertices of a graph carry a value ``f`` (a log-density). The super-level sets
``{v : f(v) >= t}`` (with every edge whose two endpoints are present) grow as ``t`` decreases;
their connected components are born at local maxima and merge at edges. The elder rule pairs
each merge with the younger component (the one with the lower peak), giving the
0-dimensional persistence diagram and the merge tree.

The computation is near-linear:

1. vertices are ranked by decreasing value (ties: smaller index first), which makes the order
   strict;
2. every vertex points to its highest graph neighbour above it; pointer jumping carries each
   vertex to its peak (its *basin*). Basins restricted to any super-level set stay connected
   through these pointers, so the persistence of the graph equals that of the quotient graph
   on basins, whose edge ``(a, b)`` enters at the earliest rank any graph edge between the two
   basins enters;
3. union–find over the deduplicated quotient edges, in filtration order, records the merges.

Steps 1–2 are vectorised NumPy; only step 3 loops, over the edges between basins (a small
number for a smooth density).

References
----------
Chazal, Guibas, Oudot, Skraba, "Persistence-based clustering in Riemannian manifolds",
J. ACM 60(6), 2013 (ToMATo).
Edelsbrunner, Letscher, Zomorodian, "Topological persistence and simplification",
Discrete Comput. Geom. 28, 2002 (elder rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

__all__ = [
    "NOISE_FLOOR",
    "MergeForest",
    "Pruning",
    "build_forest",
    "knn_graph",
    "persistence",
    "prune",
]


def knn_graph(z: np.ndarray, k: int, n_jobs: int = -1) -> tuple[cKDTree, np.ndarray]:
    """Build a kd-tree on ``z`` and return it with the ``k`` nearest other points of each row.

    Parameters
    ----------
    z : ndarray  # (n, dim) float64
    k : number of neighbours (excluding the point itself); clipped to ``n - 1``.
    n_jobs : query threads (``-1``: all cores).

    Returns
    -------
    (cKDTree, ndarray  # (n, k) int64 neighbour indices, closest first)
    """
    n = len(z)
    k = int(min(k, n - 1))
    tree = cKDTree(z, leafsize=32)
    # Querying in the tree's own point order keeps successive queries in nearby leaves
    # (cache-friendly); the result is permuted back.
    perm = tree.indices
    _, found = tree.query(z[perm], k=k + 1, workers=n_jobs)
    idx = np.empty((n, k + 1), dtype=np.int64)
    idx[perm] = np.asarray(found, dtype=np.int64).reshape(n, k + 1)
    # Drop the point itself; with duplicate points it may not come first (or at all).
    is_self = idx == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    is_self &= np.cumsum(is_self, axis=1) == 1  # drop exactly one entry per row
    return tree, idx[~is_self].reshape(n, k)


@dataclass(frozen=True)
class MergeForest:
    """Unpruned result of the filtration: basins and the elder-rule merge events.

    Attributes
    ----------
    order : ndarray  # (n,) vertices by decreasing value, ties by index
    rank : ndarray  # (n,) position of each vertex in ``order``
    basin : ndarray  # (n,) index into ``peaks`` of the peak each vertex ascends to
    peaks : ndarray  # (P,) vertex ids of the local maxima, by decreasing value
    young : ndarray  # (m,) index into ``peaks`` of the component that dies at each merge
    old : ndarray  # (m,) index into ``peaks`` of the component it merges into
    death : ndarray  # (m,) vertex whose value is the merge level
    n_components : number of connected components of the graph; components beyond the first
        are joined to the global maximum's at the lowest vertex (the last events).
    """

    order: np.ndarray
    rank: np.ndarray
    basin: np.ndarray
    peaks: np.ndarray
    young: np.ndarray
    old: np.ndarray
    death: np.ndarray
    n_components: int


def _ascent_pointers(nbrs: np.ndarray, rank: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Peak reached from every vertex by steepest ascent over the symmetrised kNN graph."""
    n, k = nbrs.shape
    best = rank.copy()
    if k:
        best = np.minimum(best, rank[nbrs].min(axis=1))
        src_rank = np.repeat(rank, k)
        np.minimum.at(best, nbrs.ravel(), src_rank)  # reverse edges: j sees i when i ∈ kNN(j)
    parent = order[best]
    while True:  # pointer jumping: O(log depth) vectorised passes
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt


def _find(uf: list[int], a: int) -> int:
    while uf[a] != a:
        uf[a] = uf[uf[a]]
        a = uf[a]
    return a


def build_forest(nbrs: np.ndarray, values: np.ndarray, progress: bool = False) -> MergeForest:
    """0-dimensional persistence of the super-level filtration of ``values`` on a kNN graph.

    Parameters
    ----------
    nbrs : ndarray  # (n, k) neighbour indices; the graph is their symmetric closure
    values : ndarray  # (n,) vertex values (log-density), finite
    progress : show a progress bar over the union–find loop.

    Returns
    -------
    MergeForest
    """
    n, k = nbrs.shape
    order = np.lexsort((np.arange(n), -values))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    root = _ascent_pointers(nbrs, rank, order)
    is_peak = root == np.arange(n)
    peaks = order[is_peak[order]]
    n_peaks = len(peaks)
    peak_index = np.full(n, -1, dtype=np.int64)
    peak_index[peaks] = np.arange(n_peaks)
    basin = peak_index[root]

    # Quotient graph on basins; an edge enters when its lower endpoint does (max rank).
    src = np.repeat(np.arange(n), k)
    dst = nbrs.ravel()
    bs, bd = basin[src], basin[dst]
    cross = bs != bd
    lo = np.minimum(bs[cross], bd[cross])
    hi = np.maximum(bs[cross], bd[cross])
    enter = np.maximum(rank[src[cross]], rank[dst[cross]])
    key = lo * n_peaks + hi
    by_enter = np.lexsort((key, enter))
    _, first = np.unique(key[by_enter], return_index=True)
    keep = by_enter[np.sort(first)]  # earliest entering edge per basin pair, in filtration order
    lo_l, hi_l, enter_l = lo[keep].tolist(), hi[keep].tolist(), enter[keep].tolist()

    uf = list(range(n_peaks))
    young: list[int] = []
    old: list[int] = []
    death: list[int] = []
    edges = zip(lo_l, hi_l, enter_l)
    for a, b, e in tqdm(edges, total=len(lo_l), disable=not progress, desc="merge tree"):
        ra, rb = _find(uf, a), _find(uf, b)
        if ra == rb:
            continue
        if ra > rb:  # the smaller index is the higher peak: the elder survives
            ra, rb = rb, ra
        uf[rb] = ra
        young.append(rb)
        old.append(ra)
        death.append(int(order[e]))
        if len(young) == n_peaks - 1:
            break
    roots = sorted({_find(uf, a) for a in range(n_peaks)})
    for r in roots[1:]:  # disconnected graph: join the rest at the lowest level
        young.append(r)
        old.append(roots[0])
        death.append(int(order[-1]))
    as_int = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return MergeForest(
        order=order,
        rank=rank,
        basin=basin,
        peaks=peaks,
        young=as_int(young),
        old=as_int(old),
        death=as_int(death),
        n_components=len(roots),
    )


@dataclass(frozen=True)
class Pruning:
    """Merge tree restricted to the significant modes.

    Attributes
    ----------
    leaf_peaks : ndarray  # (L,) index into ``MergeForest.peaks`` of each kept mode, by
        decreasing peak value; leaf ``i`` of the pruned tree is node ``i``.
    owner : ndarray  # (P,) leaf index that every basin is attached to
    children : ndarray  # (L - 1, 2) children of internal node ``L + j`` (elder first)
    levels : ndarray  # (L - 1,) merge level of internal node ``L + j``
    leaf_death : ndarray  # (L,) value at which each leaf's branch dies (root: the minimum)
    threshold : prominence threshold separating kept from pruned modes
    """

    leaf_peaks: np.ndarray
    owner: np.ndarray
    children: np.ndarray
    levels: np.ndarray
    leaf_death: np.ndarray
    threshold: float


def persistence(forest: MergeForest, values: np.ndarray) -> np.ndarray:
    """Persistence (birth − death) of every merge event, shape (m,)."""
    return values[forest.peaks[forest.young]] - values[forest.death]


#: Persistence (nats of log-density) below which a mode is treated as noise by the automatic
#: rule: its peak density is within about 10 % of the saddle that absorbs it.
NOISE_FLOOR = 0.1


def _gap_threshold(pers: np.ndarray) -> float:
    """Geometric midpoint of the largest ratio between consecutive sorted persistences.

    Persistences are sorted, floored at :data:`NOISE_FLOOR`, and the floor is appended, so
    that keeping every mode is possible. A gap on the log scale treats saddles of different
    depths fairly (a component joined across a disconnected graph at the lowest level next
    to a shallow but clear saddle); the ratio of log-densities does not depend on the units
    of the latent. With no gap at all (everything at the floor) the floor is the threshold.
    """
    q = np.maximum(np.append(np.sort(pers)[::-1], NOISE_FLOOR), NOISE_FLOOR)
    gaps = np.log(q[:-1]) - np.log(q[1:])
    if len(gaps) == 0 or gaps.max() <= 0:
        return float(NOISE_FLOOR)
    i = int(np.argmax(gaps))
    return float(np.sqrt(q[i] * q[i + 1]))


def prune(
    forest: MergeForest,
    values: np.ndarray,
    n_modes: int | None = None,
    min_prominence: float | None = None,
) -> Pruning:
    """Keep the modes whose persistence passes a threshold and build the pruned merge tree.

    Exactly one rule applies: ``n_modes`` keeps the most persistent modes (the global maximum
    always counts); ``min_prominence`` keeps modes with persistence ≥ it; with neither, the
    threshold sits in the largest gap, on a log scale, of the sorted persistences (see
    :func:`_gap_threshold`).
    """
    pers = persistence(forest, values)
    m = len(pers)
    by_pers = np.lexsort((forest.young, -pers))  # ties: the elder first
    sorted_p = pers[by_pers]
    if n_modes is not None:
        n_keep = int(min(max(n_modes, 1), m + 1)) - 1
        upper = sorted_p[n_keep - 1] if n_keep > 0 else np.inf
        lower = sorted_p[n_keep] if n_keep < m else 0.0
        threshold = float(0.5 * (upper + lower)) if np.isfinite(upper) else float(lower)
    else:
        threshold = _gap_threshold(pers) if min_prominence is None else (float(min_prominence))
        n_keep = int(np.count_nonzero(sorted_p >= threshold))
    significant = np.zeros(len(forest.peaks), dtype=bool)
    significant[0] = True
    significant[forest.young[by_pers[:n_keep]]] = True

    owner = np.arange(len(forest.peaks))
    for y, o in zip(forest.young[::-1].tolist(), forest.old[::-1].tolist()):
        if not significant[y]:
            owner[y] = owner[o]
    leaf_peaks = np.flatnonzero(significant)
    leaf_of = np.full(len(forest.peaks), -1, dtype=np.int64)
    leaf_of[leaf_peaks] = np.arange(len(leaf_peaks))
    owner = leaf_of[owner]

    n_leaves = len(leaf_peaks)
    node = np.arange(n_leaves)  # current tree node of each leaf's component
    children, levels = [], []
    leaf_death = np.full(n_leaves, values[forest.order[-1]], dtype=np.float64)
    for e in np.flatnonzero(significant[forest.young]):
        a, b = leaf_of[forest.old[e]], leaf_of[forest.young[e]]
        children.append((node[a], node[b]))
        levels.append(values[forest.death[e]])
        leaf_death[b] = values[forest.death[e]]
        node[a] = n_leaves + len(levels) - 1
    return Pruning(
        leaf_peaks=leaf_peaks,
        owner=owner,
        children=np.asarray(children, dtype=np.int64).reshape(-1, 2),
        levels=np.asarray(levels, dtype=np.float64),
        leaf_death=leaf_death,
        threshold=threshold,
    )
