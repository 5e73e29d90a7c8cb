"""Gromov–Wasserstein alignment: couple the two point clouds by their internal distances alone.

Gromov–Wasserstein (Mémoli 2011; Peyré et al. 2016) finds the coupling ``T`` of two metric
measure spaces that best preserves pairwise distances,
``min_T Σ (C_a[i, k] − C_b[j, l])² T[i, j] T[k, l]``, needing no shared coordinates — the
unsupervised word-embedding alignment of Alvarez-Melis & Jaakkola (2018). Here:

1. each side is reduced by :class:`~baselines._linear.ScaledPCA` (centre, top ``n_components``
   axes, one global scale) and subsampled to ``n_samples`` rows;
2. the distance matrices, each divided by its mean, are coupled with POT's conditional-gradient
   solver (``ot.gromov.gromov_wasserstein``) from several starts: the product coupling, the OT
   plan between the points' distance profiles (Mémoli's third lower bound, isometry-invariant)
   and ``n_restarts`` randomly perturbed versions of it. The problem is non-convex and, being
   invariant to every isometry, has one optimum per symmetry (reflection) of a configuration;
   the coupling with the lowest GW loss is kept;
3. the coupling's barycentric targets are pseudo-pairs for a weighted orthogonal × scale fit,
   refined on all rows by :func:`flowmatch.alignment.refine_map` and lifted to the full spaces.

References
----------
Mémoli. "Gromov–Wasserstein distances and the metric approach to object matching",
Foundations of Computational Mathematics 2011.
Peyré, Cuturi, Solomon. "Gromov–Wasserstein averaging of kernel and distance matrices",
ICML 2016.
Alvarez-Melis, Jaakkola. "Gromov–Wasserstein alignment of word embedding spaces", EMNLP 2018.
Flamary et al. "POT: Python Optimal Transport", JMLR 2021.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import ot
import torch

from baselines._linear import LinearMapMethod, ScaledPCA, compose_map
from baselines.base import FitData, register
from flowmatch.alignment import fit_similarity, refine_map

__all__ = ["GromovWasserstein", "gw_coupling"]


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


@register("gromov_wasserstein")
class GromovWasserstein(LinearMapMethod):
    """Gromov–Wasserstein coupling of subsamples → pseudo-pairs → Procrustes → OT refinement.

    Parameters
    ----------
    n_samples : rows per side in the GW problem.
    n_components : principal axes kept on each side (``None``: all).
    n_restarts : randomised GW starts besides the product coupling and the eccentricity plan.
    max_iter : conditional-gradient iterations per start.
    n_iter, max_exact : refinement iterations and rows per side in each OT subsample.
    refine : run the OT refinement after the GW fit.

    Attributes
    ----------
    matrix_ : Tensor  # (d_b, d_a)
    bias_ : Tensor  # (d_b,)
    gw_loss_ : float  # GW loss of the kept coupling
    n_pairs_used_ : int  # always 0
    """

    paired: ClassVar[bool] = False
    uses: ClassVar[str] = "unpaired activations (Gromov–Wasserstein)"

    gw_loss_: float | None = None

    def __init__(
        self,
        n_samples: int = 400,
        n_components: int | None = 16,
        n_restarts: int = 2,
        max_iter: int = 200,
        n_iter: int = 10,
        max_exact: int = 1000,
        refine: bool = True,
    ) -> None:
        self.n_samples = n_samples
        self.n_components = n_components
        self.n_restarts = n_restarts
        self.max_iter = max_iter
        self.n_iter = n_iter
        self.max_exact = max_exact
        self.refine = refine

    def _fit(self, data: FitData) -> None:
        red_a = ScaledPCA.fit(data.a, self.n_components)
        red_b = ScaledPCA.fit(data.b, self.n_components)
        za, zb = red_a.transform(data.a), red_b.transform(data.b)
        rng = np.random.default_rng(data.seed)
        ia = np.sort(rng.permutation(len(za))[: self.n_samples])
        ib = np.sort(rng.permutation(len(zb))[: self.n_samples])
        sa, sb = za[ia], zb[ib]
        dist = lambda z: (d := torch.cdist(z, z).numpy()) / max(float(d.mean()), 1e-300)  # noqa: E731
        plan, self.gw_loss_ = gw_coupling(
            dist(sa), dist(sb), n_restarts=self.n_restarts, max_iter=self.max_iter, seed=data.seed
        )
        plan_t = torch.from_numpy(plan)
        mass = plan_t.sum(1)
        matrix, bias = fit_similarity(sa, (plan_t @ sb) / mass[:, None], mass)
        if self.refine:
            matrix, bias = refine_map(
                za,
                zb,
                matrix,
                bias,
                n_iter=self.n_iter,
                max_exact=self.max_exact,
                seed=data.seed,
                kind="similarity",
            )
        self.matrix_, self.bias_ = compose_map(red_a, red_b, matrix, bias)
