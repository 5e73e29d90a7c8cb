"""mini-vec2vec (Dar 2025): zero-pair linear alignment of two embedding spaces.

A faithful re-implementation of the paper's Algorithm 1 with the defaults of its reference
notebook. Every stage works on the unit sphere of centred rows (:mod:`baselines._sphere`) and
fits a linear map ``R`` with ``x̂_b ≈ x̂_a @ R.T``:

1. **Normalise.** Centre each side on its mean and divide every row by its norm (once: the
   reference does not centre again after normalising).
2. **Anchors** (:func:`anchor_pairs`). ``n_runs`` times (30): draw up to ``anchor_sample``
   (10,000) rows of each side independently, k-means each sample into ``n_clusters`` (20)
   clusters, build each side's doubly centred centroid Gram matrix ``H C Cᵀ H`` and match the
   two sets of centroids by the quadratic assignment that *maximises* ``trace(K_a P K_b Pᵀ)``:
   a 2-opt (pairwise-swap) local search from each of ``qap_restarts`` (30) random permutations,
   the best kept. The runs are pooled by concatenation: 30 × 20 = 600 matched centroid pairs,
   with no vote or filtering between runs.
3. **Pseudo-pairs and Procrustes** (:func:`relative_pseudo_pairs`). Each row's relative
   representation is its vector of cosines to its side's 600 anchors (Moschella et al. 2023);
   each A row is paired with the mean of the ``n_neighbors`` (50) B rows whose relative
   representations have the highest cosine with its own; ``R`` is the orthogonal Procrustes
   solution (uncentred, no scale) between all A rows and their pseudo-targets.
4. **Refine-1: matching** (:func:`refine_matching`). ``n_refine`` (100) rounds: draw
   ``refine_sample`` (1,000) A rows, find for each mapped row its ``refine_neighbors`` (50)
   nearest B rows (cosine, over all B rows), pair it with their mean, solve Procrustes again and
   smooth: ``R ← α R + (1 − α) R_new`` with ``α = smoothing`` (0.5). The smoothed ``R`` is an
   average of orthogonal matrices and is *not* projected back (as in the reference).
5. **Refine-2: clusters** (:func:`refine_clusters`). k-means A's rows into
   ``n_refine_clusters`` (500) clusters; k-means B's rows starting from the mapped A centroids
   (so cluster i of B inherits cluster i of A); Procrustes between the two centroid sets and the
   same smoothing. Once (``n_cluster_refine = 1``).

Differences from the reference notebook, all optional or about plumbing:

* **QAP solver.** The notebook calls ``scipy.optimize.quadratic_assignment(method="2opt")``
  30 times per run (its ``P0`` option belongs to FAQ and is ignored by 2-opt). Here the same
  2-opt local search runs on all 30 random starts at once (:mod:`flowmatch.qap`; it takes the
  best swap at each step where scipy takes the first, so the local optima are the same kind):
  about a hundred times faster, and it reaches scipy's best objective in the tests.
  ``qap_method="faq"`` runs scipy's FAQ (Vogelstein et al. 2015) from random doubly stochastic
  starts instead; on a permuted copy of a 20-centroid kernel it missed the optimum in all 30
  starts where 2-opt found it in about one start in five.
* **Different widths.** The paper aligns encoders of equal width (its Procrustes needs square
  maps) and says nothing about ``d_a ≠ d_b``. Here each side is then projected on its top
  ``min(d_a, d_b)`` principal axes before normalising (PCA is an isometry on the kept axes, so
  the sphere geometry is untouched when the dropped variance is small), and translations are
  lifted back to B's space with B's axes.
* **Back to B's activation space.** The reference stays on the sphere. The harness needs B's
  original space, so :class:`MiniVec2VecMap` restores a norm and B's mean (see
  :mod:`baselines._sphere`; by default the row keeps its A norm scaled by the ratio of the two
  sides' mean centred norms, which makes the translation one affine map).
* **Determinism.** Every random draw (row samples, k-means, QAP starts) comes from one
  ``numpy.random.Generator`` seeded by ``seed``; k-means uses ``n_init`` = 1 (scikit-learn's
  ``"auto"`` for k-means++, which the unpinned reference ran with) unless told otherwise.

References
----------
Dar. "mini-vec2vec: Scaling universal geometry alignment with linear transformations",
arXiv:2510.02348, 2025 (reference code: github.com/guy-dar/mini-vec2vec).
Moschella et al. "Relative representations enable zero-shot latent space communication",
ICLR 2023.
Vogelstein et al. "Fast approximate quadratic programming for graph matching", PLoS ONE 2015.
Schönemann. "A generalized solution of the orthogonal Procrustes problem", Psychometrika 1966.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from scipy.optimize import quadratic_assignment
from sklearn.cluster import KMeans
from torch import Tensor
from tqdm.auto import tqdm

from baselines._sphere import (
    _BLOCK_ENTRIES,
    SphereMap,
    check_norm,
    check_params,
    neighbour_means,
    orthogonal_procrustes,
    sphere_pair,
    unit_rows,
)
from flowmatch.methods import FitData, Method, register
from flowmatch.neighbours import NearestCache, worth_caching
from flowmatch.qap import two_opt_batch
from flowmatch.starts import centred_gram
from flowmatch.validation import check_fitted

__all__ = [
    "MiniVec2Vec",
    "MiniVec2VecMap",
    "anchor_pairs",
    "fit_mini_vec2vec",
    "refine_clusters",
    "refine_matching",
    "relative_pseudo_pairs",
]

QAP_METHODS = ("2opt", "faq")


@dataclass(frozen=True)
class MiniVec2VecMap(SphereMap):
    """The fitted mini-vec2vec translation A → B and what each stage measured.

    Attributes
    ----------
    coords_a, coords_b, rotation, norm : see :class:`baselines._sphere.SphereMap`;
        ``rotation`` (k, k) is the final map on the spheres; :meth:`transform` maps
        (n, d_a) → (n, d_b) in B's original activation space.
    stages : dict[str, ndarray]  # (k, k) the map after each stage, in order:
        ``"anchors"`` (Procrustes on the pooled matched centroids: a diagnostic, not a stage of
        the reference), ``"pseudo_pairs"`` (stage 3), ``"refine_matching"`` (stage 4),
        ``"refine_clusters"`` (stage 5, equal to ``rotation``).
    qap_scores : ndarray  # (n_runs,) each run's best QAP objective, divided by ‖K_a‖_F ‖K_b‖_F
        (1 = the two centroid kernels agree exactly under the matching)
    refine_steps : ndarray  # (n_refine,) ‖R_t − R_{t−1}‖_F after each matching round
    cluster_consistency : float  # mean cosine between mapped A centroids and their B centroids
        after the cluster refinement (the reference's "self consistency"); NaN if skipped
    seconds : dict[str, float]  # wall time of each stage (keys as in ``stages``)
    """

    stages: dict[str, np.ndarray] = field(default_factory=dict)
    qap_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    refine_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cluster_consistency: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)


class _Clock:
    """Wall time between successive ``tick`` calls, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def tick(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now


def _kmeans(
    x: np.ndarray, k: int, *, n_init: int, seed: int, init: Any = "k-means++"
) -> np.ndarray:
    """Centroids  # (min(k, n), dim) float64 of scikit-learn's k-means, fitted in float32."""
    km = KMeans(n_clusters=min(k, len(x)), init=init, n_init=n_init, random_state=seed)
    return km.fit(np.asarray(x, dtype=np.float32)).cluster_centers_.astype(np.float64)


def _match_centroids(
    ka: np.ndarray, kb: np.ndarray, *, restarts: int, method: str, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Best of ``restarts`` QAP solutions maximising ``trace(K_a P K_b Pᵀ)``: (perm (k,), score)."""
    n = len(ka)
    if method == "2opt":
        starts = np.stack([rng.permutation(n) for _ in range(restarts)])
        perms, objective = two_opt_batch(ka, kb, starts)
        best, best_fun = perms[int(np.argmax(objective))], float(objective.max())
    else:
        best, best_fun = np.arange(n), -np.inf
        options: dict[str, Any] = {"maximize": True, "rng": rng, "P0": "randomized"}
        for _ in range(restarts):
            res = quadratic_assignment(ka, kb, method="faq", options=options)
            if res.fun > best_fun:
                best, best_fun = res.col_ind, float(res.fun)
    scale = float(np.linalg.norm(ka) * np.linalg.norm(kb)) or 1.0
    return np.asarray(best, dtype=np.int64), best_fun / scale


def anchor_pairs(
    xa_hat: np.ndarray,
    xb_hat: np.ndarray,
    *,
    n_runs: int = 30,
    n_clusters: int = 20,
    anchor_sample: int = 10_000,
    qap_restarts: int = 30,
    qap_method: str = "2opt",
    n_init: int = 1,
    rng: np.random.Generator,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 2: matched k-means centroids of both sides, pooled over ``n_runs`` runs.

    Parameters
    ----------
    xa_hat : (n_a, k) ; xb_hat : (n_b, k) unit rows of each side.
    n_runs : independent runs (fresh row samples, k-means and QAP starts each).
    n_clusters : k-means clusters per side and run.
    anchor_sample : rows drawn (without replacement) from each side per run.
    qap_restarts, qap_method : random QAP starts per run and the solver ("2opt" or "faq").
    n_init : k-means++ restarts of each k-means.

    Returns
    -------
    anchors_a, anchors_b : ndarray  # (n_runs · c, k) row i of A is matched to row i of B
    scores : ndarray  # (n_runs,) normalised best QAP objective of each run
    """
    if qap_method not in QAP_METHODS:
        raise ValueError(f"qap_method must be one of {QAP_METHODS}, got {qap_method!r}")
    out_a, out_b, scores = [], [], []
    for _ in tqdm(range(n_runs), desc="mini-vec2vec anchors", disable=not progress):
        cents = []
        for x in (xa_hat, xb_hat):
            rows = rng.permutation(len(x))[:anchor_sample]
            seed = int(rng.integers(2**31 - 1))
            cents.append(_kmeans(x[rows], n_clusters, n_init=n_init, seed=seed))
        c = min(len(cents[0]), len(cents[1]))
        ca, cb = cents[0][:c], cents[1][:c]
        perm, score = _match_centroids(
            centred_gram(ca), centred_gram(cb), restarts=qap_restarts, method=qap_method, rng=rng
        )
        out_a.append(ca)
        out_b.append(cb[perm])
        scores.append(score)
    return np.concatenate(out_a), np.concatenate(out_b), np.asarray(scores)


def relative_pseudo_pairs(
    xa_hat: np.ndarray,
    xb_hat: np.ndarray,
    anchors_a: np.ndarray,
    anchors_b: np.ndarray,
    *,
    n_neighbors: int = 50,
) -> np.ndarray:
    """Stage 3: each A row's pseudo-target, the mean of the B rows nearest in relative space.

    A row's relative representation is the vector of its cosines to its side's anchors; two rows
    of different sides are compared by the cosine of their relative representations.

    Parameters
    ----------
    xa_hat : (n_a, k) ; xb_hat : (n_b, k) unit rows.
    anchors_a, anchors_b : (m, k) matched anchors (row i of one is row i of the other).
    n_neighbors : B rows averaged per A row.

    Returns
    -------
    ndarray  # (n_a, k) pseudo-targets in B's sphere coordinates
    """
    f32 = np.float32
    rel_a = unit_rows(xa_hat.astype(f32) @ unit_rows(anchors_a).T.astype(f32))
    rel_b = unit_rows(xb_hat.astype(f32) @ unit_rows(anchors_b).T.astype(f32))
    return neighbour_means(rel_a, rel_b, n_neighbors, values=xb_hat)


def refine_matching(
    xa_hat: np.ndarray,
    xb_hat: np.ndarray,
    rotation: np.ndarray,
    *,
    n_rounds: int = 100,
    sample: int = 1000,
    n_neighbors: int = 50,
    smoothing: float = 0.5,
    rng: np.random.Generator,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 4: rounds of nearest-neighbour-mean matching, Procrustes and smoothing.

    Each round draws ``sample`` A rows, pairs each mapped row with the mean of its
    ``n_neighbors`` nearest B rows (cosine; ranking by inner product is the same) and moves the
    map half-way (``smoothing``) to their Procrustes solution: ``R ← α R + (1 − α) R_new``.
    The neighbours are exact; where the rounds redraw the same A rows often enough, each row
    keeps the B rows it was nearest to and is searched in full only when they no longer hold
    its nearest ones (:class:`flowmatch.neighbours.NearestCache`, shared with translate's
    rounds; :func:`flowmatch.neighbours.worth_caching`).

    Returns
    -------
    rotation : ndarray  # (k, k)
    steps : ndarray  # (n_rounds,) ‖R_t − R_{t−1}‖_F
    """
    r = np.asarray(rotation, dtype=np.float64)
    xb32 = xb_hat.astype(np.float32)  # the neighbour search runs in float32, as the reference
    # the rounds redraw the same A rows: each keeps its candidates (the same neighbours)
    keys = torch.from_numpy(xb32)
    cache = None
    if worth_caching(keys, len(xa_hat), sample):
        cache = NearestCache(keys, n_neighbors, len(xa_hat))
        values = torch.from_numpy(np.asarray(xb_hat, dtype=np.float64))
        block = max(1, _BLOCK_ENTRIES // len(xb32))  # query rows per similarity block, as
        # the peers' other searches (inner_product_neighbours)
    steps = np.zeros(n_rounds)
    for t in tqdm(range(n_rounds), desc="mini-vec2vec refine", disable=not progress):
        ids = rng.permutation(len(xa_hat))[:sample]
        xs = xa_hat[ids]
        queries = (xs @ r.T).astype(np.float32)
        if cache is not None:
            targets = cache.means(torch.from_numpy(queries), ids, values, chunk=block).numpy()
        else:
            targets = neighbour_means(queries, xb32, n_neighbors, xb_hat)
        new = smoothing * r + (1.0 - smoothing) * orthogonal_procrustes(xs, targets)
        steps[t], r = float(np.linalg.norm(new - r)), new
    return r, steps


def refine_clusters(
    xa_hat: np.ndarray,
    xb_hat: np.ndarray,
    rotation: np.ndarray,
    *,
    n_clusters: int = 500,
    smoothing: float = 0.5,
    n_init: int = 1,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Stage 5: k-means on A, k-means on B started at the mapped A centroids, Procrustes.

    Returns
    -------
    rotation : ndarray  # (k, k), ``α R + (1 − α) R_centroids``
    consistency : float  # mean cosine between mapped A centroids and their B centroids
    """
    r = np.asarray(rotation, dtype=np.float64)
    k = min(n_clusters, len(xa_hat), len(xb_hat))
    ca = _kmeans(xa_hat, k, n_init=n_init, seed=seed)
    cb = _kmeans(xb_hat, k, n_init=1, seed=seed, init=ca @ r.T)
    consistency = float((unit_rows(ca @ r.T) * unit_rows(cb)).sum(1).mean())
    return smoothing * r + (1.0 - smoothing) * orthogonal_procrustes(ca, cb), consistency


def fit_mini_vec2vec(
    x_a: np.ndarray,
    x_b: np.ndarray,
    *,
    n_runs: int = 30,
    n_clusters: int = 20,
    anchor_sample: int = 10_000,
    qap_restarts: int = 30,
    qap_method: Literal["2opt", "faq"] = "2opt",
    n_neighbors: int = 50,
    n_refine: int = 100,
    refine_sample: int = 1000,
    refine_neighbors: int = 50,
    smoothing: float = 0.5,
    n_refine_clusters: int = 500,
    n_cluster_refine: int = 1,
    n_init: int = 1,
    n_components: int | None = None,
    norm: Literal["ratio", "constant"] = "ratio",
    seed: int = 0,
    progress: bool = False,
) -> MiniVec2VecMap:
    """Fit mini-vec2vec on unpaired rows of A and B (Dar 2025; module docstring).

    Parameters
    ----------
    x_a : (n_a, d_a) A's rows ; x_b : (n_b, d_b) B's rows, on different inputs (no pairing).
    n_runs, n_clusters, anchor_sample, qap_restarts, qap_method : anchor stage (30 runs of
        20 clusters on 10,000-row samples, best of 30 QAP starts each).
    n_neighbors : B rows averaged per A row for the relative-representation pseudo-pairs (50).
    n_refine, refine_sample, refine_neighbors, smoothing : matching refinement (100 rounds of
        1,000 rows, 50 neighbours, ``R ← 0.5 R + 0.5 R_new``).
    n_refine_clusters, n_cluster_refine : cluster refinement (500 clusters, once; 0 skips it).
    n_init : k-means++ restarts of every k-means fitted from scratch.
    n_components : principal axes kept per side (default: all when ``d_a == d_b``, else
        ``min(d_a, d_b)``).
    norm : how translated rows get a norm back in B's space ("ratio" or "constant").
    seed : seeds every random draw; the result is deterministic given it.
    progress : show tqdm bars.

    Returns
    -------
    MiniVec2VecMap  # ``.transform(x_a)`` (n, d_a) → (n, d_b); ``.rotation`` (k, k)
    """
    check_norm(norm)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    clock = _Clock()
    coords_a, coords_b, xa_hat, xb_hat = sphere_pair(x_a, x_b, n_components)
    rng = np.random.default_rng(seed)
    anchors_a, anchors_b, scores = anchor_pairs(
        xa_hat, xb_hat, n_runs=n_runs, n_clusters=n_clusters, anchor_sample=anchor_sample,
        qap_restarts=qap_restarts, qap_method=qap_method, n_init=n_init, rng=rng,
        progress=progress,
    )  # fmt: skip
    stages = {"anchors": orthogonal_procrustes(anchors_a, anchors_b)}
    clock.tick("anchors")
    targets = relative_pseudo_pairs(xa_hat, xb_hat, anchors_a, anchors_b, n_neighbors=n_neighbors)
    r = stages["pseudo_pairs"] = orthogonal_procrustes(xa_hat, targets)
    clock.tick("pseudo_pairs")
    r, steps = refine_matching(
        xa_hat, xb_hat, r, n_rounds=n_refine, sample=refine_sample, n_neighbors=refine_neighbors,
        smoothing=smoothing, rng=rng, progress=progress,
    )  # fmt: skip
    stages["refine_matching"] = r
    clock.tick("refine_matching")
    consistency = float("nan")
    for _ in range(n_cluster_refine):
        r, consistency = refine_clusters(
            xa_hat, xb_hat, r, n_clusters=n_refine_clusters, smoothing=smoothing, n_init=n_init,
            seed=int(rng.integers(2**31 - 1)),
        )  # fmt: skip
    stages["refine_clusters"] = r
    clock.tick("refine_clusters")
    return MiniVec2VecMap(
        coords_a, coords_b, r, norm, stages=stages, qap_scores=scores, refine_steps=steps,
        cluster_consistency=consistency, seconds=clock.seconds,
    )  # fmt: skip


@register("mini_vec2vec")
class MiniVec2Vec(Method):
    """mini-vec2vec (Dar 2025): k-means + QAP anchors, relative pseudo-pairs, Procrustes,
    matching and cluster refinements — a linear map fitted without any pairs.

    Parameters
    ----------
    **params : keyword arguments of :func:`fit_mini_vec2vec` (all but ``x_a``, ``x_b``,
        ``seed``, which comes from :class:`~flowmatch.methods.FitData`).

    Attributes
    ----------
    map_ : MiniVec2VecMap  # the fitted translation and its diagnostics
    n_pairs_used_ : int  # always 0
    """

    paired: ClassVar[bool] = False
    uses: ClassVar[str] = "unpaired activations (mini-vec2vec)"

    map_: MiniVec2VecMap | None = None

    def __init__(self, **params: Any) -> None:
        check_params(fit_mini_vec2vec, params)
        self.params = params

    def _fit(self, data: FitData) -> None:
        self.map_ = fit_mini_vec2vec(
            data.a.cpu().numpy(), data.b.cpu().numpy(), seed=data.seed, **self.params
        )

    def _transform(self, x_a: Tensor) -> Tensor:
        check_fitted(self, "map_")
        assert self.map_ is not None
        return torch.from_numpy(self.map_.transform(x_a.cpu().double().numpy()))
