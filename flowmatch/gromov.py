"""Gromov–Wasserstein couplings: match two point clouds by their internal distances alone.

Gromov–Wasserstein (Mémoli 2011; Peyré et al. 2016) finds the coupling ``T`` of two metric
measure spaces that best preserves pairwise distances,
``min_T Σ (C_a[i, k] − C_b[j, l])² T[i, j] T[k, l]``, with no shared coordinates. The problem is
non-convex and, being invariant to every isometry, has one optimum per symmetry of a
configuration; :func:`gw_coupling` therefore tries several starts and keeps the lowest loss.
:func:`gw_initial_map` turns such a coupling between subsamples into a starting similarity map
for :func:`flowmatch.alignment.refine_map`.

References
----------
Mémoli. "Gromov–Wasserstein distances and the metric approach to object matching",
Foundations of Computational Mathematics 2011.
Peyré, Cuturi, Solomon. "Gromov–Wasserstein averaging of kernel and distance matrices",
ICML 2016.
Alvarez-Melis, Jaakkola. "Gromov–Wasserstein alignment of word embedding spaces", EMNLP 2018.
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor

from flowmatch.alignment import fit_similarity

__all__ = ["entropic_gw_coupling", "gw_coupling", "gw_initial_map", "normalised_distances"]


def _eccentricity_cost(dist_a: np.ndarray, dist_b: np.ndarray, n_quantiles: int = 32) -> np.ndarray:
    """Cost (n_a, n_b): L1 gap between the quantiles of each point's distances to all others.

    Invariant to isometries; its OT plan is the "third lower bound" of Mémoli (2011), a
    standard starting coupling for the non-convex GW problem.
    """
    levels = np.linspace(0.0, 1.0, n_quantiles)
    qa = np.quantile(dist_a, levels, axis=1).T  # (n_a, n_quantiles)
    qb = np.quantile(dist_b, levels, axis=1).T
    return ot.dist(qa, qb, metric="cityblock") / n_quantiles


def gw_coupling(
    dist_a: np.ndarray,
    dist_b: np.ndarray,
    *,
    n_restarts: int = 2,
    max_iter: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Lowest-loss Gromov–Wasserstein coupling over several starts (uniform marginals).

    Parameters
    ----------
    dist_a : (n_a, n_a), dist_b : (n_b, n_b) symmetric distance matrices.
    n_restarts : extra starts, each the OT plan of a randomly perturbed eccentricity cost,
        tried besides the product coupling and the plain eccentricity plan.
    max_iter : conditional-gradient iterations per start.

    Returns
    -------
    coupling : ndarray  # (n_a, n_b), rows sum to 1/n_a, columns to 1/n_b
    loss : float  # its GW loss
    """
    ca, cb = np.asarray(dist_a, np.float64), np.asarray(dist_b, np.float64)
    p, q = ot.unif(len(ca)), ot.unif(len(cb))
    rng = np.random.default_rng(seed)
    ecc = _eccentricity_cost(ca, cb)
    noise = float(ecc.std()) or 1.0
    starts = [None, ot.emd(p, q, ecc)]
    starts += [ot.emd(p, q, ecc + noise * rng.random(ecc.shape)) for _ in range(n_restarts)]
    best, best_loss = None, np.inf
    for g0 in starts:
        plan, log = ot.gromov.gromov_wasserstein(
            ca,
            cb,
            p,
            q,
            loss_fun="square_loss",
            symmetric=True,
            G0=g0,
            log=True,
            max_iter=max_iter,
        )
        if log["gw_dist"] < best_loss:
            best, best_loss = plan, float(log["gw_dist"])
    assert best is not None
    return best, best_loss


def entropic_gw_coupling(
    dist_a: np.ndarray, dist_b: np.ndarray, *, epsilon: float, max_iter: int = 1000
) -> tuple[np.ndarray, float]:
    """Entropic Gromov–Wasserstein coupling (Peyré et al. 2016; POT's projected gradient).

    Parameters
    ----------
    dist_a : (n_a, n_a), dist_b : (n_b, n_b) symmetric distance matrices (divide each by its
        mean, :func:`normalised_distances`, so that ``epsilon`` means the same on every pair).
    epsilon : entropic regularisation (> 0). Small values approach the unregularised problem
        and converge slowly; large ones blur the coupling towards the product of the marginals.
    max_iter : outer iterations of the solver.

    Returns
    -------
    coupling : ndarray  # (n_a, n_b), rows sum to 1/n_a, columns to 1/n_b
    loss : float  # its GW loss
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    ca, cb = np.asarray(dist_a, np.float64), np.asarray(dist_b, np.float64)
    plan, log = ot.gromov.entropic_gromov_wasserstein(
        ca,
        cb,
        ot.unif(len(ca)),
        ot.unif(len(cb)),
        loss_fun="square_loss",
        epsilon=float(epsilon),
        symmetric=True,
        max_iter=max_iter,
        log=True,
    )
    return np.asarray(plan), float(log["gw_dist"])


def normalised_distances(z: Tensor) -> np.ndarray:
    """Euclidean distance matrix of the rows of ``z`` divided by its mean  # (n, d) → (n, n)"""
    d = torch.cdist(z, z).numpy()
    return d / max(float(d.mean()), 1e-300)


def gw_initial_map(
    geom_a: Tensor,
    geom_b: Tensor,
    src: Tensor,
    dst: Tensor,
    *,
    n_samples: int = 400,
    n_restarts: int = 2,
    max_iter: int = 200,
    epsilon: float | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor, float]:
    """A similarity map ``src → dst`` from a GW coupling of random subsamples.

    Parameters
    ----------
    geom_a : Tensor  # (n_a, k_a) coordinates whose distances define A's geometry
    geom_b : Tensor  # (n_b, k_b) the same for B
    src : Tensor  # (n_a, k) rows of A in the coordinates the map acts on (same row order)
    dst : Tensor  # (n_b, k) rows of B in the map's target coordinates
    n_samples : rows per side in the GW problem (its cost grows as n_samples³).
    n_restarts, max_iter, seed : see :func:`gw_coupling`; ``seed`` also draws the subsamples.
    epsilon : ``None`` → the multi-start conditional-gradient solver (:func:`gw_coupling`); a
        positive float → one entropic solve with that regularisation (:func:`entropic_gw_coupling`,
        ``max_iter`` outer iterations; ``n_restarts`` unused).

    Returns
    -------
    matrix : Tensor  # (k, k)
    bias : Tensor  # (k,)
    loss : float  # GW loss of the coupling
    """
    rng = np.random.default_rng(seed)
    ia = np.sort(rng.permutation(len(geom_a))[:n_samples])
    ib = np.sort(rng.permutation(len(geom_b))[:n_samples])
    dist_a = normalised_distances(geom_a[ia].double())
    dist_b = normalised_distances(geom_b[ib].double())
    if epsilon is None:
        plan, loss = gw_coupling(
            dist_a, dist_b, n_restarts=n_restarts, max_iter=max_iter, seed=seed
        )
    else:
        plan, loss = entropic_gw_coupling(dist_a, dist_b, epsilon=epsilon, max_iter=max_iter)
    plan_t = torch.from_numpy(plan)
    mass = plan_t.sum(1)
    matrix, bias = fit_similarity(src[ia], (plan_t @ dst[ib].double()) / mass[:, None], mass)
    return matrix, bias, loss
