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

:class:`EntropicGromovWasserstein` (``"entropic_gw"``) is the peer named by the translation
benchmark's protocol: entropic GW (POT's projected-gradient solver) on the same subsampled
principal coordinates, followed by the same refinement. Its regularisation is chosen without
pairs from a small grid: each value's refined map is scored by its transport cost to B's rows
(:func:`flowmatch.alignment.transport_cost`, the criterion :func:`flowmatch.translate` uses to
choose among its starts) and the cheapest is kept.

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

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor

from baselines._linear import LinearMapMethod, ScaledPCA, compose_map
from flowmatch.alignment import refine_map, transport_cost
from flowmatch.gromov import gw_coupling, gw_initial_map
from flowmatch.methods import FitData, register

__all__ = ["EntropicGromovWasserstein", "GromovWasserstein", "gw_coupling"]


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
        matrix, bias, self.gw_loss_ = gw_initial_map(
            za,
            zb,
            za,
            zb,
            n_samples=self.n_samples,
            n_restarts=self.n_restarts,
            max_iter=self.max_iter,
            seed=data.seed,
        )
        if self.refine:
            matrix, bias = self._refine(za, zb, matrix, bias, data.seed)
        self.matrix_, self.bias_ = compose_map(red_a, red_b, matrix, bias)

    def _refine(
        self, za: Tensor, zb: Tensor, matrix: Tensor, bias: Tensor, seed: int
    ) -> tuple[Tensor, Tensor]:
        return refine_map(
            za,
            zb,
            matrix,
            bias,
            n_iter=self.n_iter,
            max_exact=self.max_exact,
            seed=seed,
            kind="similarity",
        )


@register("entropic_gw")
class EntropicGromovWasserstein(GromovWasserstein):
    """Entropic GW coupling of subsamples → pseudo-pairs → Procrustes → OT refinement.

    Parameters
    ----------
    n_samples, n_components, n_iter, max_exact : as for :class:`GromovWasserstein`.
    epsilons : entropic regularisations to try (on distance matrices of unit mean); the one
        whose refined map has the lowest transport cost to B's rows is kept.
    max_iter : outer iterations of each entropic solve.

    Attributes
    ----------
    matrix_ : Tensor  # (d_b, d_a)
    bias_ : Tensor  # (d_b,)
    epsilon_ : float  # the regularisation kept
    transport_costs_ : dict[float, float]  # refined map's transport cost for each epsilon
    gw_loss_ : float  # GW loss of the kept coupling
    n_pairs_used_ : int  # always 0
    """

    uses: ClassVar[str] = "unpaired activations (entropic Gromov–Wasserstein)"

    epsilon_: float | None = None
    transport_costs_: dict[float, float] | None = None

    def __init__(
        self,
        n_samples: int = 400,
        n_components: int | None = 16,
        epsilons: Sequence[float] = (0.005, 0.01, 0.05, 0.1),
        max_iter: int = 1000,
        n_iter: int = 10,
        max_exact: int = 1000,
    ) -> None:
        super().__init__(n_samples, n_components, 0, max_iter, n_iter, max_exact, refine=True)
        self.epsilons = epsilons

    def _fit(self, data: FitData) -> None:
        epsilons = [float(e) for e in self.epsilons]
        if not epsilons or min(epsilons) <= 0:
            raise ValueError(
                f"epsilons must be a non-empty list of positive values, got {epsilons}"
            )
        red_a = ScaledPCA.fit(data.a, self.n_components)
        red_b = ScaledPCA.fit(data.b, self.n_components)
        za, zb = red_a.transform(data.a), red_b.transform(data.b)
        fits, costs = {}, {}
        for eps in epsilons:
            matrix, bias, loss = gw_initial_map(
                za,
                zb,
                za,
                zb,
                n_samples=self.n_samples,
                max_iter=self.max_iter,
                epsilon=eps,
                seed=data.seed,
            )
            matrix, bias = self._refine(za, zb, matrix, bias, data.seed)
            fits[eps] = (matrix, bias, loss)
            costs[eps] = transport_cost(
                za, zb, matrix, bias, max_exact=self.max_exact, seed=data.seed
            )
        self.epsilon_ = min(costs, key=costs.__getitem__)
        matrix, bias, self.gw_loss_ = fits[self.epsilon_]
        self.transport_costs_ = costs
        self.matrix_, self.bias_ = compose_map(red_a, red_b, matrix, bias)
