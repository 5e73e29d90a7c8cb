"""Unsupervised pseudo-pairs from clusters: k-means on each side, match the clusters by their
geometry, fit a map from the matched centroids, refine it with optimal transport.

In the spirit of mini-vec2vec (Dar 2025) and of unsupervised word-embedding alignment
(Alvarez-Melis & Jaakkola 2018; Grave et al. 2019): no row of A is ever paired with a row of B.

1. Each side is reduced by :class:`~baselines._linear.ScaledPCA` (centre, top ``n_components``
   principal axes, one global scale), so that a rotation between the networks stays a rotation.
2. Clusters are summarised by their centroids, their masses and the matrix of distances between
   centroids within each side (normalised by its mass-weighted mean, so the two scales need not
   agree).
3. The clusters are matched by a quadratic assignment: the injection π minimising
   ``mean (D_a[i, i'] − D_b[π i, π i'])² + mass_weight · Σ |w_a[i] − w_b[π i]|``, found
   exhaustively when there are few clusters and otherwise by restarts of
   :func:`scipy.optimize.quadratic_assignment` (FAQ, Vogelstein et al. 2015) each polished by
   pairwise-swap local search. Unequal cluster counts give a partial matching of size
   ``min(k_a, k_b)``.
4. An orthogonal × scale map is fitted to the matched centroids (weighted by mass), refined by
   :func:`flowmatch.alignment.refine_map`, and lifted back to the full activation spaces.

References
----------
Dar. "mini-vec2vec: Scaling universal geometry alignment with linear transformations",
arXiv:2510.02348, 2025.
Vogelstein et al. "Fast approximate quadratic programming for graph matching", PLoS ONE 2015.
Alvarez-Melis, Jaakkola. "Gromov–Wasserstein alignment of word embedding spaces", EMNLP 2018.
Grave, Joulin, Berthet. "Unsupervised alignment of embeddings with Wasserstein Procrustes",
AISTATS 2019.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.optimize import quadratic_assignment
from sklearn.cluster import KMeans
from torch import Tensor

from baselines._linear import LinearMapMethod, ScaledPCA, compose_map
from flowmatch.alignment import fit_similarity, refine_map
from flowmatch.methods import FitData, register
from flowmatch.validation import as_matrix

__all__ = ["ClusterPairs", "match_clusters", "translate_from_clusters"]

_EXHAUSTIVE_MAX = 5040  # largest number of injections searched exhaustively


def _objective(
    da: np.ndarray, db: np.ndarray, wa: np.ndarray, wb: np.ndarray, pi: np.ndarray, mw: float
) -> np.ndarray:
    """Matching cost of injections ``pi`` (p, k_a) → (p,)."""
    sub = db[pi[:, :, None], pi[:, None, :]]  # (p, k_a, k_a)
    geometry = ((da[None] - sub) ** 2).mean(axis=(1, 2))
    return geometry + mw * np.abs(wa[None] - wb[pi]).sum(1)


def _local_search(
    da: np.ndarray, db: np.ndarray, wa: np.ndarray, wb: np.ndarray, pi: np.ndarray, mw: float
) -> tuple[np.ndarray, float]:
    """Best-improvement pairwise swaps (and moves to unused B clusters) until none helps."""
    k_a, k_b = len(da), len(db)
    pi = pi.copy()
    best = float(_objective(da, db, wa, wb, pi[None], mw)[0])
    while True:
        free = np.setdiff1d(np.arange(k_b), pi)
        cands = []
        for i, j in itertools.combinations(range(k_a), 2):
            c = pi.copy()
            c[i], c[j] = c[j], c[i]
            cands.append(c)
        for i in range(k_a):
            for f in free:
                c = pi.copy()
                c[i] = f
                cands.append(c)
        if not cands:
            return pi, best
        costs = _objective(da, db, wa, wb, np.stack(cands), mw)
        j = int(np.argmin(costs))
        if costs[j] >= best - 1e-12:
            return pi, best
        pi, best = cands[j], float(costs[j])


def match_clusters(
    dist_a: np.ndarray,
    dist_b: np.ndarray,
    mass_a: np.ndarray | None = None,
    mass_b: np.ndarray | None = None,
    *,
    mass_weight: float = 0.25,
    n_restarts: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """Match two sets of clusters from their within-side distance matrices alone.

    Parameters
    ----------
    dist_a : (k_a, k_a), dist_b : (k_b, k_b) symmetric distances (already on comparable scales).
    mass_a : (k_a,), mass_b : (k_b,) cluster masses (fractions); uniform when omitted.
    mass_weight : weight of the mass mismatch against the distance mismatch.
    n_restarts : random FAQ starts (besides the barycentre) when the search is not exhaustive.

    Returns
    -------
    pairs : ndarray  # (min(k_a, k_b), 2) rows ``(cluster of A, cluster of B)``, sorted by A.
    """
    da, db = np.asarray(dist_a, dtype=np.float64), np.asarray(dist_b, dtype=np.float64)
    for name, d in (("dist_a", da), ("dist_b", db)):
        if d.ndim != 2 or d.shape[0] != d.shape[1] or not np.isfinite(d).all():
            raise ValueError(f"{name} must be a finite square matrix, got shape {d.shape}")
    wa = np.full(len(da), 1 / len(da)) if mass_a is None else np.asarray(mass_a, np.float64)
    wb = np.full(len(db), 1 / len(db)) if mass_b is None else np.asarray(mass_b, np.float64)
    if len(wa) != len(da) or len(wb) != len(db):
        raise ValueError("masses must have one entry per cluster")
    if len(da) > len(db):  # search injections from the smaller side, then swap the columns
        rev = _match_small_to_large(db, da, wb, wa, mass_weight, n_restarts, seed)[:, ::-1]
        return np.ascontiguousarray(rev[np.argsort(rev[:, 0])])
    return _match_small_to_large(da, db, wa, wb, mass_weight, n_restarts, seed)


def _match_small_to_large(
    da: np.ndarray,
    db: np.ndarray,
    wa: np.ndarray,
    wb: np.ndarray,
    mw: float,
    n_restarts: int,
    seed: int,
) -> np.ndarray:
    k_a, k_b = len(da), len(db)
    n_inj = int(np.prod(np.arange(k_b - k_a + 1, k_b + 1), dtype=np.float64))
    if n_inj <= _EXHAUSTIVE_MAX:
        pis = np.array(list(itertools.permutations(range(k_b), k_a)), dtype=np.int64)
        best = pis[int(np.argmin(_objective(da, db, wa, wb, pis, mw)))]
    else:
        pad = np.zeros((k_b, k_b))
        pad[:k_a, :k_a] = da
        rng = np.random.default_rng(seed)
        best, best_cost = None, np.inf
        for r in range(n_restarts + 1):
            p0 = "barycenter" if r == 0 else "randomized"
            res = quadratic_assignment(
                pad, db, method="faq", options={"maximize": True, "P0": p0, "rng": rng}
            )
            pi, cost = _local_search(da, db, wa, wb, res.col_ind[:k_a].astype(np.int64), mw)
            if cost < best_cost - 1e-12:
                best, best_cost = pi, cost
        assert best is not None
    return np.stack([np.arange(k_a), best], axis=1)


def _as_labels(labels: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be 1-D with one label per row ({n}), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _summarise(z: Tensor, labels: np.ndarray, name: str) -> tuple[np.ndarray, Tensor, np.ndarray]:
    """Cluster ids (k,), centroids (k, dim) and masses (k,) of the rows with labels ≥ 0."""
    ids = np.unique(labels[labels >= 0])
    if len(ids) < 2:
        raise ValueError(f"{name} must name at least 2 clusters (labels ≥ 0), got {len(ids)}")
    lab = torch.from_numpy(labels)
    centroids = torch.stack([z[lab == i].mean(0) for i in ids])
    counts = np.array([(labels == i).sum() for i in ids], dtype=np.float64)
    return ids, centroids, counts / counts.sum()


def _distances(centroids: Tensor, mass: np.ndarray) -> np.ndarray:
    d = torch.cdist(centroids, centroids).numpy()
    return d / max(float(mass @ d @ mass), 1e-300)


def _balanced_rows(
    labels_a: np.ndarray, labels_b: np.ndarray, ids_a: np.ndarray, ids_b: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each side, subsampled per matched cluster so both sides carry equal proportions.

    Balanced OT between clouds whose matched clusters hold different fractions of the rows must
    move the surplus across clusters, which biases the refit (it shrinks the scale); keeping
    ``min(w_a, w_b)`` of each matched pair on both sides removes that surplus.
    """
    rng = np.random.default_rng(seed)
    count_a = np.array([(labels_a == i).sum() for i in ids_a], dtype=np.float64)
    count_b = np.array([(labels_b == j).sum() for j in ids_b], dtype=np.float64)
    share = np.minimum(count_a / count_a.sum(), count_b / count_b.sum())
    n_a = np.floor(share * min(count_a.sum(), *(count_a / share))).astype(int)
    n_b = np.floor(share * min(count_b.sum(), *(count_b / share))).astype(int)
    pick = lambda labels, i, n: rng.permutation(np.flatnonzero(labels == i))[:n]  # noqa: E731
    rows_a = np.concatenate([pick(labels_a, i, n) for i, n in zip(ids_a, n_a)])
    rows_b = np.concatenate([pick(labels_b, j, n) for j, n in zip(ids_b, n_b)])
    return np.sort(rows_a), np.sort(rows_b)


def translate_from_clusters(
    a: Any,
    labels_a: Any,
    b: Any,
    labels_b: Any,
    *,
    seed: int = 0,
    refine: bool = True,
    n_components: int | None = 16,
    mass_weight: float = 0.25,
    n_restarts: int = 32,
    n_iter: int = 10,
    max_exact: int = 1000,
) -> tuple[np.ndarray, Tensor, Tensor]:
    """Affine map A → B from two independent clusterings, without any paired rows.

    Parameters
    ----------
    a : (n_a, d_a) A's rows ; labels_a : (n_a,) integer clusters of A (negative = no cluster).
    b : (n_b, d_b) B's rows ; labels_b : (n_b,) integer clusters of B (negative = no cluster).
    seed : seed of the matching restarts and of the refinement's subsamples.
    refine : refine the centroid fit by optimal transport (``refine_map``, similarity refits).
    n_components : principal axes kept on each side (``None``: all).
    mass_weight : weight of the cluster-mass mismatch in the matching cost.
    n_restarts : FAQ restarts of the matching when it is not exhaustive.
    n_iter, max_exact : refinement iterations and rows per side in each OT subsample.

    Returns
    -------
    pairs : ndarray  # (m, 2) matched cluster labels (label in A, label in B), m = min(k_a, k_b)
    matrix : Tensor  # (d_b, d_a), float64
    bias : Tensor  # (d_b,), float64 — the map is ``x_b ≈ x_a @ matrix.T + bias``
    """
    xa = as_matrix(a, "a", min_samples=2, dtype=torch.float64).cpu()
    xb = as_matrix(b, "b", min_samples=2, dtype=torch.float64).cpu()
    la, lb = _as_labels(labels_a, len(xa), "labels_a"), _as_labels(labels_b, len(xb), "labels_b")
    red_a, red_b = ScaledPCA.fit(xa, n_components), ScaledPCA.fit(xb, n_components)
    za, zb = red_a.transform(xa), red_b.transform(xb)
    ids_a, ca, wa = _summarise(za, la, "labels_a")
    ids_b, cb, wb = _summarise(zb, lb, "labels_b")
    idx = match_clusters(
        _distances(ca, wa),
        _distances(cb, wb),
        wa,
        wb,
        mass_weight=mass_weight,
        n_restarts=n_restarts,
        seed=seed,
    )
    ia, ib = idx[:, 0], idx[:, 1]
    matrix, bias = fit_similarity(ca[ia], cb[ib], (wa[ia] + wb[ib]) / 2)
    if refine:
        rows_a, rows_b = _balanced_rows(la, lb, ids_a[ia], ids_b[ib], seed)
        matrix, bias = refine_map(
            za[rows_a],
            zb[rows_b],
            matrix,
            bias,
            n_iter=n_iter,
            max_exact=max_exact,
            seed=seed,
            kind="similarity",
        )
    matrix, bias = compose_map(red_a, red_b, matrix, bias)
    return np.stack([ids_a[ia], ids_b[ib]], axis=1), matrix, bias


@register("cluster_pairs")
class ClusterPairs(LinearMapMethod):
    """k-means on each side, quadratic assignment of the clusters, Procrustes, OT refinement.

    Parameters
    ----------
    n_clusters : k of the k-means on each side (an int, or a pair ``(k_a, k_b)``).
    n_components : principal axes kept on each side before clustering and matching.
    mass_weight, n_restarts, n_iter, max_exact, refine : see :func:`translate_from_clusters`.
    n_init : k-means restarts.

    Attributes
    ----------
    matrix_ : Tensor  # (d_b, d_a)
    bias_ : Tensor  # (d_b,)
    labels_a_, labels_b_ : ndarray  # (n_a,), (n_b,) k-means clusters of the fitted rows
    cluster_pairs_ : ndarray  # (m, 2) matched clusters
    n_pairs_used_ : int  # always 0
    """

    paired: ClassVar[bool] = False
    uses: ClassVar[str] = "unpaired activations (k-means + cluster matching)"

    def __init__(
        self,
        n_clusters: int | tuple[int, int] = 10,
        n_components: int | None = 16,
        mass_weight: float = 0.25,
        n_restarts: int = 32,
        n_iter: int = 10,
        max_exact: int = 1000,
        refine: bool = True,
        n_init: int = 4,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_components = n_components
        self.mass_weight = mass_weight
        self.n_restarts = n_restarts
        self.n_iter = n_iter
        self.max_exact = max_exact
        self.refine = refine
        self.n_init = n_init

    def _fit(self, data: FitData) -> None:
        k = self.n_clusters
        k_a, k_b = (k, k) if isinstance(k, int) else k
        labels = []
        for x, kk, s in ((data.a, k_a, data.seed), (data.b, k_b, data.seed + 1)):
            z = ScaledPCA.fit(x, self.n_components).transform(x).numpy()
            km = KMeans(n_clusters=kk, n_init=self.n_init, random_state=s)
            labels.append(km.fit_predict(z))
        self.labels_a_, self.labels_b_ = labels
        self.cluster_pairs_, self.matrix_, self.bias_ = translate_from_clusters(
            data.a,
            self.labels_a_,
            data.b,
            self.labels_b_,
            seed=data.seed,
            refine=self.refine,
            n_components=self.n_components,
            mass_weight=self.mass_weight,
            n_restarts=self.n_restarts,
            n_iter=self.n_iter,
            max_exact=self.max_exact,
        )
