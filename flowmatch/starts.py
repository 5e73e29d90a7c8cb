"""Starting maps for :func:`flowmatch.translate`: orthogonal maps between two sides' map
coordinates (:mod:`flowmatch.coordinates`) found without paired rows.

Anchors are pairs of points, one in each space, believed to correspond: cluster centroids
(k-means, or the modes of a density tree) matched by quadratic assignment on the centred Gram
matrices of their centroids, which an orthogonal map leaves unchanged. Anchors become a map
through relative representations (Moschella et al. 2023): every row is described by its cosine
similarities to its side's anchors — coordinates the two spaces share — so each A row gets as
pseudo-partner the mean of the B rows whose descriptions are most similar, and an orthogonal
Procrustes fit of the pseudo-pairs gives the start. Pooling anchors of many independent runs
averages the wrong matches of single runs away (mini-vec2vec, Dar 2025).

References
----------
Dar. "mini-vec2vec: scaling universal geometry alignment with linear transformations",
arXiv:2510.02348, 2025.
Moschella, Maiorca, Fumero, Norelli, Locatello, Rodolà. "Relative representations enable
zero-shot latent space communication", ICLR 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowmatch.alignment import fit_orthogonal, polar
from flowmatch.gromov import gw_initial_map
from flowmatch.kmeans import batched_kmeans
from flowmatch.neighbours import mean_of_nearest
from flowmatch.qap import qap_search

__all__ = [
    "ANCHOR_BLOCK",
    "Anchors",
    "anchor_runs",
    "centred_gram",
    "cluster_anchors",
    "gw_start",
    "match_centroids",
    "mode_anchors",
    "moment_start",
    "normalise_rows",
    "relative_pseudo_pairs",
    "side_centroids",
    "start_from_anchors",
    "subsample",
]


@dataclass(frozen=True)
class Anchors:
    """Matched anchor points.

    Attributes
    ----------
    a : Tensor  # (m, p_a) anchors in A's map coordinates
    b : Tensor  # (m, p_b) their partners in B's
    values : tuple[float, ...]  # quadratic-assignment objective of each run (diagnostics)
    """

    a: Tensor
    b: Tensor
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.a)


def normalise_rows(u: Tensor) -> Tensor:
    """Rows scaled to unit length (zero rows stay zero)  # (n, p) → (n, p), float32."""
    u = torch.as_tensor(u).float()
    return u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)


def subsample(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``min(n, m)`` distinct rows out of ``n``."""
    return np.arange(n) if n <= m else np.sort(rng.choice(n, size=m, replace=False))


def centred_gram(c: np.ndarray) -> np.ndarray:
    """Double-centred Gram matrix of centroids  # (k, p) → (k, k)."""
    g = c @ c.T
    return g - g.mean(0, keepdims=True) - g.mean(1, keepdims=True) + g.mean()


def match_centroids(ca: np.ndarray, cb: np.ndarray, n_restarts: int, rng: np.random.Generator):
    """Quadratic assignment of two centroid sets  # (k_a, p), (k_b, p): the best of
    ``n_restarts`` 2-opt searches on their :func:`centred_gram` matrices (the smaller set
    padded with zeros).

    Returns the matched index arrays (one pair per centroid of the smaller set) and the value.
    """
    m_a, m_b = len(ca), len(cb)
    n = max(m_a, m_b)
    ga, gb = np.zeros((n, n)), np.zeros((n, n))
    ga[:m_a, :m_a], gb[:m_b, :m_b] = centred_gram(ca), centred_gram(cb)
    perm, value = qap_search(ga, gb, n_restarts, rng)
    idx_a = np.arange(n)
    keep = (idx_a < m_a) & (perm < m_b)
    return idx_a[keep], perm[keep], value


ANCHOR_BLOCK = 1 << 25
"""Entries (float32) of one batch of runs' subsampled rows in :func:`side_centroids`."""


def side_centroids(
    x: np.ndarray,
    k: int,
    n_runs: int,
    max_rows: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """k-means centroids of ``n_runs`` runs on one side  # (n, p) → (n_runs, k, p).

    Each run clusters a fresh subsample of at most ``max_rows`` rows (all the rows, shared by
    every run, when there are no more), seeded by k-means++: the runs go through
    :func:`flowmatch.kmeans.batched_kmeans` together, in batches of at most
    :data:`ANCHOR_BLOCK` subsampled entries.
    """
    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    rows = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if len(rows) <= max_rows:
        return batched_kmeans(rows, k, n_runs=n_runs, generator=generator).numpy()
    picks = [subsample(len(rows), max_rows, rng) for _ in range(n_runs)]
    per_batch = max(1, ANCHOR_BLOCK // (max_rows * rows.shape[1]))
    batches = [np.stack(picks[i : i + per_batch]) for i in range(0, n_runs, per_batch)]
    parts = [
        batched_kmeans(rows[torch.from_numpy(b)], k, n_runs=len(b), generator=generator)
        for b in batches
    ]
    return torch.cat(parts).numpy()


def anchor_runs(
    xa: np.ndarray,
    xb: np.ndarray,
    k: int,
    n_runs: int,
    n_restarts: int,
    max_rows: int,
    rng: np.random.Generator,
    *,
    progress: bool = False,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]:
    """The runs of :func:`cluster_anchors`: k-means (``k`` clusters, one k-means++
    initialisation) on fresh subsamples of at most ``max_rows`` of each side's rows
    (:func:`side_centroids`), then :func:`match_centroids` run by run (a progress bar over
    the matching with ``progress``).

    Returns
    -------
    One ``(ca, cb, ia, ib, value)`` per run: ca, cb : ndarray  # (k, p) each side's centroids
    ; ia, ib : ndarray  # matched indices into them ; value : the quadratic-assignment objective
    """
    cents_a = side_centroids(xa, k, n_runs, max_rows, rng)
    cents_b = side_centroids(xb, k, n_runs, max_rows, rng)
    runs = []
    bar = tqdm(
        zip(cents_a, cents_b), total=n_runs, desc="anchors", disable=not progress, leave=False
    )
    for ca, cb in bar:
        ia, ib, value = match_centroids(ca, cb, n_restarts, rng)
        runs.append((ca, cb, ia, ib, value))
    return runs


def cluster_anchors(
    u_a: Tensor,
    u_b: Tensor,
    *,
    n_clusters: int = 20,
    n_runs: int = 30,
    n_restarts: int = 30,
    max_rows: int = 10_000,
    seed: int = 0,
    progress: bool = False,
) -> Anchors:
    """Anchors from k-means centroids matched by quadratic assignment, pooled over runs.

    Each run clusters a fresh subsample (at most ``max_rows`` rows) of each side's unit-length
    rows into ``n_clusters`` and matches the two sets of centroids by the best of
    ``n_restarts`` 2-opt searches (:mod:`flowmatch.qap`); :func:`anchor_runs`.

    Parameters
    ----------
    u_a : Tensor  # (n_a, p_a) A's map coordinates ; u_b : Tensor  # (n_b, p_b)

    Returns
    -------
    Anchors  # n_runs · n_clusters pairs
    """
    rng = np.random.default_rng(seed)
    xa, xb = normalise_rows(u_a).numpy(), normalise_rows(u_b).numpy()
    k = int(min(n_clusters, len(xa), len(xb)))
    runs = anchor_runs(xa, xb, k, n_runs, n_restarts, max_rows, rng, progress=progress)
    a = np.concatenate([ca[ia] for ca, _, ia, _, _ in runs])
    b = np.concatenate([cb[ib] for _, cb, _, ib, _ in runs])
    return Anchors(
        torch.from_numpy(a).float(), torch.from_numpy(b).float(), tuple(r[4] for r in runs)
    )


def mode_anchors(
    u_a: Tensor, u_b: Tensor, modes_a: np.ndarray, modes_b: np.ndarray, leaf_pairs: np.ndarray
) -> Anchors:
    """Anchors from two matched density trees: the mean unit coordinates of each matched mode.

    Parameters
    ----------
    modes_a : ndarray  # (n_a,) mode (leaf) index of each row of ``u_a``; modes_b likewise.
    leaf_pairs : ndarray  # (m, 2) matched (A leaf, B leaf), e.g. ``match_trees(...).leaf_pairs``
    """
    pairs = np.asarray(leaf_pairs, dtype=np.int64).reshape(-1, 2)
    xa, xb = normalise_rows(u_a), normalise_rows(u_b)
    ma, mb = torch.as_tensor(np.asarray(modes_a)), torch.as_tensor(np.asarray(modes_b))
    keep = [(i, j) for i, j in pairs if bool((ma == i).any()) and bool((mb == j).any())]
    if len(keep) < 2:
        raise ValueError("fewer than two matched modes hold rows; no anchors from the trees")
    a = torch.stack([xa[ma == i].mean(0) for i, _ in keep])
    b = torch.stack([xb[mb == j].mean(0) for _, j in keep])
    return Anchors(a, b, ())


def relative_pseudo_pairs(
    u_a: Tensor, u_b: Tensor, anchors: Anchors, *, k: int = 50, max_rows: int = 5000, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Pseudo-pairs from relative representations.

    Every (subsampled) A row and every B row is described by its cosine similarities to its
    side's anchors; the A row's pseudo-partner is the mean of the ``k`` B rows whose unit
    descriptions are closest.

    Returns
    -------
    src : Tensor  # (m, p_a) unit A rows ; dst : Tensor  # (m, p_b) their pseudo-partners
    """
    rng = np.random.default_rng(seed)
    ua, ub = normalise_rows(u_a), normalise_rows(u_b)
    ua = ua[torch.as_tensor(subsample(len(ua), max_rows, rng))]
    rel_a = normalise_rows(ua @ normalise_rows(anchors.a).T)
    rel_b = normalise_rows(ub @ normalise_rows(anchors.b).T)
    return ua, mean_of_nearest(rel_a, rel_b, ub, k)


def start_from_anchors(
    u_a: Tensor,
    u_b: Tensor,
    anchors: Anchors,
    *,
    k: int = 50,
    max_rows: int = 5000,
    width: int | None = None,
    seed: int = 0,
) -> Tensor:
    """Orthogonal map  # (w, w), float64, fitted to :func:`relative_pseudo_pairs` on their
    leading ``w = width`` coordinates (default: all, (p_b, p_a)); the pseudo-pairs themselves
    are found on every coordinate given."""
    src, dst = relative_pseudo_pairs(u_a, u_b, anchors, k=k, max_rows=max_rows, seed=seed)
    return fit_orthogonal(src[:, :width], dst[:, :width])


def moment_start(u_a: Tensor, u_b: Tensor) -> Tensor:
    """Orthogonal map  # (p_b, p_a) pairing the i-th principal axis of A with the i-th of B,
    with the sign that agrees on the axis' third moment (skewness).

    Map coordinates are principal coordinates sorted by variance, so this is the map that
    matches the two covariances and the marginal skews. Exact for a rotation of a distribution
    with distinct variances and skewed axes; near-equal variances mix axes (sampling noise),
    which refinement must then undo, and unrelated representations make it a poor start, which
    the selection criterion then passes over.
    """
    ua, ub = torch.as_tensor(u_a).double(), torch.as_tensor(u_b).double()
    p = min(ua.shape[1], ub.shape[1])
    skew_a, skew_b = (((u[:, :p] - u[:, :p].mean(0)) ** 3).mean(0) for u in (ua, ub))
    sign = torch.where(skew_a * skew_b < 0, -1.0, 1.0).double()
    rot = torch.zeros(ub.shape[1], ua.shape[1], dtype=torch.float64)
    rot[torch.arange(p), torch.arange(p)] = sign
    return rot


def gw_start(u_a: Tensor, u_b: Tensor, *, n_samples: int = 400, seed: int = 0) -> Tensor:
    """Orthogonal map  # (p_b, p_a) from a Gromov–Wasserstein coupling of subsamples
    (:func:`flowmatch.gromov.gw_initial_map`; its similarity map's rotation part)."""
    ua, ub = torch.as_tensor(u_a).double(), torch.as_tensor(u_b).double()
    matrix, _, _ = gw_initial_map(ua, ub, ua, ub, n_samples=n_samples, seed=seed)
    return polar(matrix)
