"""Density trees: the merge tree of the super-level sets of a latent log-density.

A :class:`DensityTree` summarises a density on a latent space by persistent homology. On a
kNN graph of (a subsample of) the latent points, vertices enter in decreasing order of
log-density; connected components are born at density modes and merge at saddles. The merge
tree (leaves = modes, internal nodes = merges at a density level) is pruned by prominence
(persistence) and exposed as a :class:`networkx.DiGraph`, together with point-to-mode
labels, the leaves' ultrametric and the persistence diagram.

References
----------
Chazal, Guibas, Oudot, Skraba, "Persistence-based clustering in Riemannian manifolds",
J. ACM 60(6), 2013.
Edelsbrunner, Harer, *Computational Topology: An Introduction*, AMS, 2010.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar

import networkx as nx
import numpy as np
import torch
from sklearn.base import BaseEstimator

from flowmatch._merge_tree import MergeForest, Pruning, build_forest, knn_graph, prune
from flowmatch.validation import (
    MAX_SEED,
    Bool,
    Constraint,
    Int,
    Real,
    as_matrix,
    check_fitted,
    check_params,
)

__all__ = ["DensityTree"]


def _as_vector(v: Any, name: str, n: int) -> np.ndarray:
    arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(arr.shape)}")
    return arr


def _is_autoencoder(obj: Any) -> bool:
    return callable(getattr(obj, "encode", None)) and callable(
        getattr(obj, "latent_log_prob", None)
    )


class DensityTree(BaseEstimator):
    """Merge tree of a latent density, computed by 0-dimensional persistent homology.

    A scikit-learn estimator (``get_params``/``set_params``/``clone`` and the repr from
    :class:`sklearn.base.BaseEstimator`, constraints declared in ``_parameter_constraints``):
    ``fit(X, y, log_density=...)`` on latent points, or :meth:`from_autoencoder` on the
    latent of a fitted autoencoder.

    Parameters
    ----------
    k_neighbors : neighbours per point in the kNN graph (the graph is symmetrised).
    n_modes : number of modes to keep (the most persistent ones). Exclusive with
        ``min_prominence``; with neither, the threshold sits in the largest gap between
        consecutive sorted persistences on a log scale (the largest ratio), persistences
        being floored at 0.1 nats (``flowmatch._merge_tree.NOISE_FLOOR``, appended too, so
        that every mode or a single one may be kept).
    min_prominence : keep modes whose persistence (in log-density units) is at least this.
    max_points : fit on at most this many points (uniform subsample without replacement,
        deterministic under ``seed``); ``None`` uses every point.
    seed : seed of the subsample.
    n_jobs : threads for the kNN queries (``-1``: all cores).
    progress : show a progress bar over the union–find loop.

    Attributes
    ----------
    tree_ : networkx.DiGraph
        Pruned merge tree, edges parent → child. Nodes ``0 … n_modes_-1`` are the leaves (in
        ``leaves_`` order), nodes ``n_modes_ …`` the merges. The root (``root_``) is the
        component that contains every point, the one born at the global maximum. Node
        attributes:

        - ``level``: log-density; a leaf's peak value, a merge node's merge level;
        - ``peak``: highest log-density in the subtree (equals ``level`` at a leaf);
        - ``prominence``: persistence of the subtree's eldest mode, ``peak`` minus the level
          at which that mode's branch dies. At a leaf this is its persistence pair
          ``birth − death``; the root's branch never dies, so its prominence is the global
          maximum minus the lowest log-density of the fitted points (finite);
        - ``mass``: fraction of fitted points in the subtree;
        - ``centroid``: ndarray (k,), plain (unweighted) mean of the members' latent points;
        - ``centroid_x``: ndarray (d,), mean of the members' activations, or ``None`` when
          activations were not given;
        - ``members``: ndarray of fitted-point indices (into ``z_``), sorted;
        - ``label_hist``: ndarray (n_classes,) label counts over ``classes_``, or ``None``.
    leaves_ : list[int]
        Significant leaves by decreasing peak level (the global maximum first).
    n_modes_ : int
    root_ : int
    labels_ : ndarray  # (n_fit,) index into ``leaves_`` of every fitted point
        A point ascends the kNN graph to its peak; a pruned peak is attached to the mode its
        component merged into (ToMATo's rule).
    z_ : ndarray  # (n_fit, k) fitted latent points (float64)
    log_density_ : ndarray  # (n_fit,)
    fit_index_ : ndarray  # (n_fit,) rows of the input that were fitted
    classes_ : ndarray | None — sorted distinct labels, when labels were given.
    threshold_ : float — prominence threshold between kept and pruned modes.
    n_peaks_ : int — number of modes before pruning.
    n_graph_components_ : int — connected components of the kNN graph; when above 1 they are
        joined at the lowest log-density (a warning says so).

    References
    ----------
    Chazal, Guibas, Oudot, Skraba, "Persistence-based clustering in Riemannian manifolds",
    J. ACM 60(6), 2013.
    """

    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        "k_neighbors": Int(1),
        "n_modes": Int(1, none=True),
        "min_prominence": Real(0.0, none=True),
        "max_points": Int(2, none=True),
        "seed": Int(0, MAX_SEED),
        "n_jobs": Int(-1),
        "progress": Bool(),
    }

    def __init__(
        self,
        k_neighbors: int = 10,
        n_modes: int | None = None,
        min_prominence: float | None = None,
        max_points: int | None = 50_000,
        seed: int = 0,
        n_jobs: int = -1,
        progress: bool = False,
    ) -> None:
        self.k_neighbors = k_neighbors
        self.n_modes = n_modes
        self.min_prominence = min_prominence
        self.max_points = max_points
        self.seed = seed
        self.n_jobs = n_jobs
        self.progress = progress

    # ------------------------------------------------------------------ fitting
    def fit(
        self, X: Any, y: Any = None, *, log_density: Any = None, activations: Any = None
    ) -> DensityTree:
        """Fit on latent points and the log-density at each of them.

        Parameters
        ----------
        X : Tensor | ndarray  # (n, k) latent points
        y : array-like  # (n,), optional class labels (for the label histograms)
        log_density : Tensor | ndarray  # (n,) log-density at each point (required)
        activations : Tensor | ndarray  # (n, d), optional activations of the same rows (for
            activation-space centroids)

        Returns
        -------
        self

        To build the tree on the latent of an autoencoder with its latent log-density, use
        :meth:`from_autoencoder`.
        """
        if _is_autoencoder(X):  # the former ``fit(autoencoder, x, labels)``
            warnings.warn(
                "DensityTree().fit(autoencoder, x) is deprecated; use "
                "DensityTree.from_autoencoder(autoencoder, x, **params)",
                DeprecationWarning,
                stacklevel=2,
            )
            return self._fit_autoencoder(X, y, None)
        self.validate_params()
        if log_density is None:
            raise TypeError(
                "DensityTree.fit needs log_density= (one value per row of X); to fit on the "
                "latent of an autoencoder use DensityTree.from_autoencoder(autoencoder, x)"
            )
        zt = as_matrix(X, "X", min_samples=2, dtype=torch.float64)
        n = len(zt)
        f = _as_vector(log_density, "log_density", n).astype(np.float64)
        if not np.isfinite(f).all():
            raise ValueError(
                f"log_density contains {int((~np.isfinite(f)).sum())} non-finite values"
            )
        lab = None if y is None else _as_vector(y, "y", n)
        xa = None
        if activations is not None:
            xa = as_matrix(activations, "activations", dtype=torch.float64).numpy()
            if len(xa) != n:
                raise ValueError(f"activations has {len(xa)} rows but X has {n}")
        index = self._subsample(n)
        return self._fit(
            zt.numpy()[index],
            f[index],
            None if lab is None else lab[index],
            None if xa is None else xa[index],
            index,
        )

    @classmethod
    def from_autoencoder(
        cls, autoencoder: Any, x: Any, labels: Any = None, **params: Any
    ) -> DensityTree:
        """A tree fitted on the latent of ``x`` under ``autoencoder``, with its latent
        log-density.

        Parameters
        ----------
        autoencoder : fitted estimator with ``encode(x) -> Tensor (n, k)`` and
            ``latent_log_prob(z) -> Tensor (n,)`` (e.g. :class:`flowmatch.FlowAutoencoder`).
        x : ActivationSet | Tensor | ndarray  # (n, d) activations
        labels : array-like  # (n,), optional; taken from ``x`` when it is an ActivationSet.
        **params : hyperparameters of the tree (``k_neighbors``, ``min_prominence`` ...).

        Returns
        -------
        DensityTree  # fitted; centroids also in activation space (``centroid_x``)
        """
        return cls(**params)._fit_autoencoder(autoencoder, x, labels)

    def _fit_autoencoder(self, autoencoder: Any, x: Any, labels: Any) -> DensityTree:
        self.validate_params()
        if labels is None and isinstance(getattr(x, "labels", None), torch.Tensor):
            labels = x.labels
        xt = as_matrix(x, "x", min_samples=2)
        index = self._subsample(len(xt))
        xs = xt[torch.as_tensor(index)]
        with torch.no_grad():
            z = autoencoder.encode(xs)
            logp = autoencoder.latent_log_prob(z)
        z_np = np.asarray(torch.as_tensor(z).detach().cpu().numpy(), dtype=np.float64)
        logp_np = _as_vector(logp, "latent_log_prob(z)", len(z_np)).astype(np.float64)
        lab = None if labels is None else _as_vector(labels, "labels", len(xt))[index]
        x_np = xs.detach().cpu().numpy().astype(np.float64)
        return self._fit(z_np, logp_np, lab, x_np, index)

    def _subsample(self, n: int) -> np.ndarray:
        if self.max_points is None or n <= self.max_points:
            return np.arange(n)
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(n, size=int(self.max_points), replace=False))

    def validate_params(self) -> None:
        """Check every hyperparameter against ``_parameter_constraints`` (and the rules that
        tie two of them); ``fit`` calls this first.

        Raises ``TypeError`` or ``ValueError`` naming the first bad parameter, e.g.
        ``min_prominence must be finite and >= 0.0, got nan``.
        """
        check_params(self.get_params(deep=False), self._parameter_constraints)
        if self.n_modes is not None and self.min_prominence is not None:
            raise ValueError("give at most one of n_modes and min_prominence")
        if self.n_jobs == 0:
            raise ValueError("n_jobs must be -1 (all cores) or >= 1, got 0")

    _validate_params = validate_params  # scikit-learn's hook calls the same checks

    def _fit(
        self,
        z: np.ndarray,
        f: np.ndarray,
        labels: np.ndarray | None,
        x: np.ndarray | None,
        index: np.ndarray,
    ) -> DensityTree:
        self._kdtree, nbrs = knn_graph(np.ascontiguousarray(z), self.k_neighbors, self.n_jobs)
        forest = build_forest(nbrs, f, progress=self.progress)
        if forest.n_components > 1:
            warnings.warn(
                f"the {self.k_neighbors}-NN graph has {forest.n_components} connected "
                "components; they are joined at the lowest log-density",
                RuntimeWarning,
                stacklevel=3,
            )
        pruning = prune(forest, f, self.n_modes, self.min_prominence)
        self.z_, self.log_density_, self.fit_index_ = z, f, index
        self.n_peaks_ = len(forest.peaks)
        self.n_graph_components_ = forest.n_components
        self.threshold_ = pruning.threshold
        self._forest = forest
        self.classes_: np.ndarray | None = None
        label_codes: np.ndarray | None = None
        if labels is not None:
            self.classes_, label_codes = np.unique(labels, return_inverse=True)
        self.labels_ = pruning.owner[forest.basin]
        self.n_modes_ = len(pruning.leaf_peaks)
        self.leaves_ = list(range(self.n_modes_))
        self.tree_ = self._build_graph(pruning, forest, f, z, x, label_codes)
        self.root_ = next(v for v, d in self.tree_.in_degree() if d == 0)
        return self

    def _build_graph(
        self,
        pruning: Pruning,
        forest: MergeForest,
        f: np.ndarray,
        z: np.ndarray,
        x: np.ndarray | None,
        codes: np.ndarray | None,
    ) -> nx.DiGraph:
        n = len(z)
        n_leaves = len(pruning.leaf_peaks)
        groups = np.argsort(self.labels_, kind="stable")
        bounds = np.searchsorted(self.labels_[groups], np.arange(n_leaves + 1))
        members = [groups[bounds[i] : bounds[i + 1]] for i in range(n_leaves)]
        peak = list(f[forest.peaks[pruning.leaf_peaks]])
        eldest = list(range(n_leaves))  # the eldest leaf of each node's subtree
        level = list(peak)
        for (a, b), lev in zip(pruning.children.tolist(), pruning.levels.tolist()):
            members.append(np.sort(np.concatenate([members[a], members[b]])))
            peak.append(max(peak[a], peak[b]))
            eldest.append(min(eldest[a], eldest[b]))
            level.append(lev)
        graph = nx.DiGraph()
        n_classes = 0 if self.classes_ is None else len(self.classes_)
        for v, mem in enumerate(members):
            graph.add_node(
                v,
                level=float(level[v]),
                peak=float(peak[v]),
                prominence=float(peak[v] - pruning.leaf_death[eldest[v]]),
                mass=len(mem) / n,
                centroid=z[mem].mean(axis=0) if len(mem) else np.full(z.shape[1], np.nan),
                centroid_x=None if x is None else x[mem].mean(axis=0),
                members=mem,
                label_hist=None
                if codes is None
                else np.bincount(codes[mem], minlength=n_classes).astype(np.int64),
            )
        for j, (a, b) in enumerate(pruning.children.tolist()):
            graph.add_edge(n_leaves + j, a)
            graph.add_edge(n_leaves + j, b)
        return graph

    def coarsened(self, min_prominence: float) -> DensityTree:
        """The same merge tree pruned at a higher prominence threshold, without refitting.

        The kNN graph, densities and fitted points are shared; only the pruning changes, so the
        result is nested in this tree: each of this tree's modes lies whole inside one of its
        modes (:meth:`coarse_modes` gives which). Its nodes carry no ``centroid_x`` and no
        ``label_hist`` (None).

        Parameters
        ----------
        min_prominence : float  # ≥ ``threshold_``; modes of lower persistence are merged

        Returns
        -------
        DensityTree  # fitted, ``n_modes_`` ≤ this tree's
        """
        check_fitted(self, "tree_")
        if not min_prominence >= self.threshold_:
            raise ValueError(
                f"min_prominence must be at least this tree's threshold {self.threshold_:.4g} "
                f"(a coarser cut), got {min_prominence}"
            )
        pruning = prune(self._forest, self.log_density_, None, float(min_prominence))
        out = copy.copy(self)
        out.n_modes, out.min_prominence = None, float(min_prominence)
        out.threshold_ = pruning.threshold
        out.labels_ = pruning.owner[self._forest.basin]
        out.n_modes_ = len(pruning.leaf_peaks)
        out.leaves_ = list(range(out.n_modes_))
        out.tree_ = out._build_graph(pruning, self._forest, self.log_density_, self.z_, None, None)
        out.root_ = next(v for v, d in out.tree_.in_degree() if d == 0)
        return out

    def coarse_modes(self, coarse: DensityTree) -> np.ndarray:
        """Mode of ``coarse`` (:meth:`coarsened` of this tree) that holds each of this tree's
        modes  # (n_modes_,) index into ``coarse.leaves_``."""
        check_fitted(self, "tree_")
        if coarse.z_ is not self.z_:
            raise ValueError("coarse is not a coarsened copy of this tree")
        modes, member = np.unique(self.labels_, return_index=True)  # one member of each mode
        out = np.zeros(self.n_modes_, dtype=np.int64)
        out[modes] = coarse.labels_[member]
        return out

    # ------------------------------------------------------------------ queries
    def predict(self, z: Any) -> np.ndarray:
        """Mode of new latent points: the label of the nearest fitted point.

        Parameters
        ----------
        z : Tensor | ndarray  # (n, k)

        Returns
        -------
        ndarray  # (n,) index into ``leaves_``
        """
        check_fitted(self, "tree_")
        zt = as_matrix(z, "z", dim=self.z_.shape[1], dtype=torch.float64).numpy()
        _, nearest = self._kdtree.query(zt, k=1, workers=self.n_jobs)
        return self.labels_[np.asarray(nearest, dtype=np.int64).reshape(-1)]

    def ultrametric(self) -> np.ndarray:
        """Merge level of every pair of leaves (the tree's ultrametric, in log-density).

        Returns
        -------
        ndarray  # (n_modes, n_modes), ordered as ``leaves_``; entry ``(i, j)`` is the level of
            the lowest common ancestor, the diagonal the leaves' peak levels.
        """
        check_fitted(self, "tree_")
        u = np.empty((self.n_modes_, self.n_modes_))
        leaves_below: dict[int, list[int]] = {}
        for v in reversed(list(nx.topological_sort(self.tree_))):
            kids = list(self.tree_.successors(v))
            if not kids:
                leaves_below[v] = [v]
                u[v, v] = self.tree_.nodes[v]["level"]
                continue
            level = self.tree_.nodes[v]["level"]
            for i, a in enumerate(kids):
                for b in kids[i + 1 :]:
                    u[np.ix_(leaves_below[a], leaves_below[b])] = level
                    u[np.ix_(leaves_below[b], leaves_below[a])] = level
            leaves_below[v] = [leaf for c in kids for leaf in leaves_below[c]]
        return u

    def persistence_diagram(self) -> np.ndarray:
        """0-dimensional persistence of the super-level filtration, before pruning.

        Returns
        -------
        ndarray  # (m, 2) rows ``(birth, death)`` with birth = peak log-density and death = the
            merge level, so ``birth ≥ death``. Row 0 is the essential class (the global
            maximum), given death = the lowest log-density of the fitted points; the other rows
            follow by decreasing persistence. Negate both columns for gudhi's sub-level
            convention (birth < death).
        """
        check_fitted(self, "tree_")
        fo, f = self._forest, self.log_density_
        births = f[fo.peaks[fo.young]]
        deaths = f[fo.death]
        order = np.lexsort((fo.young, -(births - deaths)))
        first = np.array([[f[fo.peaks[0]], f[fo.order[-1]]]])
        return np.concatenate([first, np.c_[births, deaths][order]])

    def mode_centroids(self) -> np.ndarray:
        """Latent centroids of the leaves, ndarray (n_modes, k), in ``leaves_`` order."""
        check_fitted(self, "tree_")
        return np.stack([self.tree_.nodes[v]["centroid"] for v in self.leaves_])

    def mode_masses(self) -> np.ndarray:
        """Masses of the leaves, ndarray (n_modes,), in ``leaves_`` order."""
        check_fitted(self, "tree_")
        return np.array([self.tree_.nodes[v]["mass"] for v in self.leaves_])

    # ------------------------------------------------------------------ plots
    def plot(self, ax: Any = None) -> Any:
        """Dendrogram of the pruned tree: height = log-density, leaves annotated with their mass
        and majority label (when labels are known). Returns the matplotlib Figure."""
        check_fitted(self, "tree_")
        from flowmatch._tree_plots import plot_tree

        return plot_tree(self, ax=ax)

    def plot_diagram(self, ax: Any = None) -> Any:
        """Persistence diagram (birth vs death) with the pruning threshold as a line
        ``death = birth − threshold_``. Returns the matplotlib Figure."""
        check_fitted(self, "tree_")
        from flowmatch._tree_plots import plot_diagram

        return plot_diagram(self, ax=ax)
