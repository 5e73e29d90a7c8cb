"""Linear maps between two point clouds: fitting from correspondences, and refinement by
optimal transport when no correspondences are known.

Convention: a map is ``y = x @ matrix.T + bias`` with ``matrix`` (d_dst, d_src) and
``bias`` (d_dst,). Everything is computed in float64 and returned as float64 tensors.

The refinement alternates (a) an optimal-transport plan between the mapped source rows and the
target rows and (b) a weighted least-squares refit of the map to the plan's barycentric targets —
an iterative-closest-point scheme with a transport plan in place of nearest neighbours (as in
Alvarez-Melis & Jaakkola 2018; Grave et al. 2019). Each iteration works on a fresh random
subsample of at most ``max_exact`` rows per side, solved exactly (``ot.emd``) or with Sinkhorn,
so cost grows linearly with the number of rows.

References
----------
Grave, Joulin, Berthet. "Unsupervised alignment of embeddings with Wasserstein Procrustes",
AISTATS 2019.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ot
import torch
from torch import Tensor

from flowmatch.validation import as_matrix

__all__ = [
    "apply_map",
    "fit_affine",
    "fit_orthogonal",
    "fit_similarity",
    "polar",
    "refine_map",
    "transport_cost",
    "transport_plan",
    "transport_subsample",
]


def _f64(x: Any, name: str) -> Tensor:
    return as_matrix(x, name, dtype=torch.float64).cpu()


def _weights(w: Any, n: int) -> Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = torch.as_tensor(np.asarray(w), dtype=torch.float64).reshape(-1)
    if len(w) != n or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
    return w / w.sum()


def _centred(src: Any, dst: Any, weights: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Rows of src and dst centred on their weighted means: (xc, yc, w, mean_x, mean_y)."""
    x, y = _f64(src, "src"), _f64(dst, "dst")
    if len(x) != len(y):
        raise ValueError(f"src has {len(x)} rows but dst has {len(y)}")
    w = _weights(weights, len(x))
    mx, my = w @ x, w @ y
    return x - mx, y - my, w, mx, my


def apply_map(x: Any, matrix: Tensor, bias: Tensor) -> Tensor:
    """``x @ matrix.T + bias``  # (n, d_src) → (n, d_dst), float64."""
    return _f64(x, "x") @ matrix.T + bias


def fit_affine(
    src: Any, dst: Any, weights: Any = None, ridge: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Weighted least-squares affine map ``src → dst``.

    Parameters
    ----------
    src : (n, d_src) ; dst : (n, d_dst) ; weights : (n,) non-negative, optional.
    ridge : Tikhonov term relative to the mean source variance (keeps few-anchor fits stable).

    Returns
    -------
    matrix : Tensor  # (d_dst, d_src)
    bias : Tensor  # (d_dst,)
    """
    xc, yc, w, mx, my = _centred(src, dst, weights)
    gram = xc.T @ (w[:, None] * xc)
    scale = torch.trace(gram) / gram.shape[0]
    gram = gram + ridge * float(scale.clamp_min(1e-300)) * torch.eye(gram.shape[0], dtype=xc.dtype)
    matrix = torch.linalg.solve(gram, xc.T @ (w[:, None] * yc)).T
    return matrix, my - mx @ matrix.T


def fit_similarity(src: Any, dst: Any, weights: Any = None) -> tuple[Tensor, Tensor]:
    """Weighted orthogonal Procrustes with one global scale: ``y ≈ s R x + b``.

    ``R`` (d_dst, d_src) has orthonormal rows or columns (whichever is fewer), so the map is a
    rotation/reflection followed by an isotropic scale even when the widths differ.

    Returns
    -------
    matrix : Tensor  # (d_dst, d_src) equal to s·R
    bias : Tensor  # (d_dst,)
    """
    xc, yc, w, mx, my = _centred(src, dst, weights)
    u, s, vh = torch.linalg.svd(yc.T @ (w[:, None] * xc), full_matrices=False)
    rot = u @ vh
    scale = s.sum() / (w[:, None] * xc**2).sum().clamp_min(1e-300)
    matrix = scale * rot
    return matrix, my - mx @ matrix.T


def fit_orthogonal(src: Any, dst: Any, weights: Any = None) -> Tensor:
    """Weighted orthogonal Procrustes without shift or scale: ``dst ≈ src @ R.T``.

    For rows that are already centred (map coordinates). ``R`` (d_dst, d_src) has orthonormal
    rows or columns, whichever are fewer.

    Returns
    -------
    R : Tensor  # (d_dst, d_src), float64
    """
    x, y = _f64(src, "src"), _f64(dst, "dst")
    if len(x) != len(y):
        raise ValueError(f"src has {len(x)} rows but dst has {len(y)}")
    if weights is None:  # uniform weights only scale the product: the same polar factor
        return polar(y.T @ x)
    w = _weights(weights, len(x))
    return polar(y.T @ (w[:, None] * x))


def polar(m: Tensor) -> Tensor:
    """Nearest matrix with orthonormal rows or columns (the polar factor ``U Vᵀ`` of ``m``)."""
    u, _, vh = torch.linalg.svd(torch.as_tensor(m, dtype=torch.float64), full_matrices=False)
    return u @ vh


_FITTERS = {"affine": fit_affine, "similarity": fit_similarity}


def transport_plan(
    cost: np.ndarray, *, reg: float | None = None, a: np.ndarray | None = None
) -> np.ndarray:
    """OT plan for a cost matrix (n, m) with uniform (or ``a``) source marginals.

    ``reg=None`` solves exactly with ``ot.emd``; otherwise Sinkhorn with ``reg`` times the
    median cost as the entropic regularisation.
    """
    n, m = cost.shape
    a = np.full(n, 1.0 / n) if a is None else a / a.sum()
    b = np.full(m, 1.0 / m)
    if reg is None:
        return ot.emd(a, b, cost, numItermax=1_000_000)
    scale = float(np.median(cost)) or 1.0
    return ot.sinkhorn(a, b, cost / scale, reg, numItermax=2000, stopThr=1e-7)


def refine_map(
    x_a: Any,
    x_b: Any,
    matrix: Tensor,
    bias: Tensor,
    *,
    n_iter: int = 10,
    max_exact: int = 1500,
    reg: float | None = None,
    seed: int = 0,
    anchors: tuple[Any, Any] | None = None,
    anchor_weight: float = 10.0,
    groups: tuple[Any, Any] | None = None,
    group_penalty: float = 0.0,
    kind: str = "affine",
    pool: int = 1,
) -> tuple[Tensor, Tensor]:
    """Refine ``y = x @ matrix.T + bias`` from ``x_a`` towards the cloud ``x_b`` without pairs.

    Parameters
    ----------
    x_a : (n_a, d_a) source rows; x_b : (n_b, d_b) target rows (unpaired, any order).
    matrix, bias : the initial map, (d_b, d_a) and (d_b,).
    n_iter : alternations of (OT plan, weighted refit).
    max_exact : rows per side in each iteration's subsample (fresh, seeded, per iteration).
    reg : ``None`` → exact EMD; a float → Sinkhorn with that relative regularisation.
    anchors : optional known correspondences ``(src (p, d_a), dst (p, d_b))``; they join every
        refit, each weighted like ``anchor_weight`` transported rows (a few anchors must not
        outweigh the transported cloud, or the affine refit interpolates them).
    groups : optional ``(groups_a (n_a,), groups_b (n_b,))`` integer labels of matched branches
        (−1 = unassigned); transport between rows of different non-negative groups costs an
        extra ``group_penalty`` times the median squared distance, and A's rows are reweighted
        so that each matched group holds the same share of mass on both sides.
    kind : ``"affine"`` or ``"similarity"`` refit.
    pool : when > 1, one last refit after the ``n_iter`` rounds on the pooled pseudo-pairs of
        ``pool`` fresh subsamples, each transported under the refined map. Each round's map
        follows the one subsample it drew; pooling averages that draw out of the returned map.

    Returns
    -------
    matrix : Tensor  # (d_b, d_a)
    bias : Tensor  # (d_b,)
    """
    if kind not in _FITTERS:
        raise KeyError(f"unknown map kind {kind!r}; choose from {sorted(_FITTERS)}")
    if int(pool) != pool or pool < 1:
        raise ValueError(f"pool must be a positive integer, got {pool}")
    xa, xb = _f64(x_a, "x_a"), _f64(x_b, "x_b")
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    bias = torch.as_tensor(bias, dtype=torch.float64)
    if matrix.shape != (xb.shape[1], xa.shape[1]):
        raise ValueError(
            f"matrix has shape {tuple(matrix.shape)}; expected ({xb.shape[1]}, {xa.shape[1]})"
        )
    ga = gb = None
    if groups is not None:
        ga, gb = (np.asarray(g, dtype=np.int64) for g in groups)
        if len(ga) != len(xa) or len(gb) != len(xb):
            raise ValueError("groups must have one label per row of x_a and x_b")
    rng = np.random.default_rng(seed)
    fit = _FITTERS[kind]
    group_cost = dict(groups=(ga, gb), group_penalty=group_penalty)
    for _ in range(n_iter):
        src, dst, w = _pseudo_pairs(xa, xb, matrix, bias, max_exact, reg, rng, **group_cost)
        matrix, bias = fit(*_with_anchors(src, dst, w, anchors, anchor_weight))
    if pool > 1:
        parts = [
            _pseudo_pairs(xa, xb, matrix, bias, max_exact, reg, rng, **group_cost)
            for _ in range(pool)
        ]
        src, dst, w = (torch.cat(p) for p in zip(*parts))
        matrix, bias = fit(*_with_anchors(src, dst, w, anchors, anchor_weight))
    return matrix, bias


def _pseudo_pairs(
    xa: Tensor,
    xb: Tensor,
    matrix: Tensor,
    bias: Tensor,
    max_exact: int,
    reg: float | None,
    rng: np.random.Generator,
    groups: tuple[np.ndarray | None, np.ndarray | None],
    group_penalty: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One OT round on fresh subsamples: A rows, their barycentric B targets, their masses.

    Returns ``src (m, d_a)``, ``dst (m, d_b)``, ``w (m,)`` for the subsampled A rows that
    received mass under the plan between the mapped A rows and the B rows.
    """
    ga, gb = groups
    ia, ib, cost = _mapped_cost(xa, xb, matrix, bias, max_exact, rng)
    if ga is not None and gb is not None and group_penalty > 0:
        sa, sb = ga[ia][:, None], gb[ib][None, :]
        cross = (sa != sb) & (sa >= 0) & (sb >= 0)
        cost = cost + group_penalty * float(np.median(cost)) * cross
    source = _balanced_source(ga[ia], gb[ib]) if ga is not None and gb is not None else None
    plan = torch.from_numpy(transport_plan(cost, reg=reg, a=source))
    mass = plan.sum(1)
    keep = mass > 0
    return xa[ia][keep], (plan[keep] @ xb[ib]) / mass[keep, None], mass[keep]


def _with_anchors(
    src: Tensor, dst: Tensor, w: Tensor, anchors: tuple[Any, Any] | None, anchor_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Append known pairs, each weighted like ``anchor_weight`` transported rows."""
    if anchors is None:
        return src, dst, w
    pa, pb = _f64(anchors[0], "anchor sources"), _f64(anchors[1], "anchor targets")
    w = torch.cat([w / w.sum(), torch.full((len(pa),), anchor_weight / len(src))])
    return torch.cat([src, pa]), torch.cat([dst, pb]), w


def transport_subsample(
    x_a: Any, x_b: Any, matrix: Tensor, bias: Tensor, *, max_exact: int = 1500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact OT between the mapped ``x_a`` and ``x_b`` on seeded subsamples.

    Returns
    -------
    idx_a : ndarray  # (m_a,) rows of ``x_a`` in the subsample (at most ``max_exact``)
    idx_b : ndarray  # (m_b,) rows of ``x_b``
    plan : ndarray  # (m_a, m_b) optimal plan, uniform marginals
    cost : ndarray  # (m_a, m_b) squared distances from the mapped A rows to the B rows
    """
    xa, xb = _f64(x_a, "x_a"), _f64(x_b, "x_b")
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    bias = torch.as_tensor(bias, dtype=torch.float64)
    ia, ib, cost = _mapped_cost(xa, xb, matrix, bias, max_exact, np.random.default_rng(seed))
    return ia, ib, transport_plan(cost), cost


def transport_cost(
    x_a: Any, x_b: Any, matrix: Tensor, bias: Tensor, *, max_exact: int = 1500, seed: int = 0
) -> float:
    """Mean squared transport distance between the mapped ``x_a`` and ``x_b`` (exact OT).

    The squared 2-Wasserstein distance between the two empirical measures (on seeded subsamples
    of at most ``max_exact`` rows per side, :func:`transport_subsample`). It needs no pairs, so
    it can compare candidate maps into the same target coordinates: the lower, the better the
    mapped cloud covers ``x_b``.
    """
    _, _, plan, cost = transport_subsample(x_a, x_b, matrix, bias, max_exact=max_exact, seed=seed)
    return float((plan * cost).sum())


def _balanced_source(ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
    """Source weights giving every matched group the same share of mass as on the target side.

    Balanced OT between samples that hold matched groups in different proportions must move mass
    across groups, which shrinks the fitted map; reweighting the source rows removes that bias.
    Rows of unmatched groups (−1) keep their plain weight.
    """
    w = np.ones(len(ga))
    for g in np.unique(ga[ga >= 0]):
        in_a, share_b = ga == g, float((gb == g).mean())
        if share_b > 0:
            w[in_a] = share_b * len(ga) / in_a.sum()
    return w / w.sum()


def _mapped_cost(
    xa: Tensor, xb: Tensor, matrix: Tensor, bias: Tensor, max_exact: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subsample each side (A first), map A's rows: ``idx_a (m_a,)``, ``idx_b (m_b,)`` and the
    squared distances ``cost (m_a, m_b)`` from the mapped A rows to the B rows."""
    ia, ib = _subsample(len(xa), max_exact, rng), _subsample(len(xb), max_exact, rng)
    cost = torch.cdist(xa[ia] @ matrix.T + bias, xb[ib]).pow(2).numpy()
    return ia, ib, cost


def _subsample(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= m else np.sort(rng.choice(n, size=m, replace=False))
