"""Learnable Gaussian mixture (a torch module) used as the latent base density.

Each component has a full covariance ``Σ_c = L_c L_cᵀ`` parametrised by a lower-triangular
Cholesky factor whose diagonal is ``softplus(·) + sqrt(min_variance)``; this bounds every
component's density, so maximum likelihood cannot collapse a component onto a point.
``covariance_type="diag"`` keeps only the diagonal. Parameters are initialised from
scikit-learn's EM fit so that training starts at the classical PCA + GMM solution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

__all__ = ["GaussianMixture"]


def _softplus_inv(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


class GaussianMixture(nn.Module):
    """Mixture of ``n_components`` Gaussians on ``R^dim``.

    Parameters
    ----------
    n_components : number of components K.
    dim : dimension k of the modelled coordinates.
    covariance_type : ``"full"`` or ``"diag"``.
    min_variance : lower bound on the variance along each Cholesky direction.

    Attributes
    ----------
    logits : Parameter  # (K,), mixture weights are ``softmax(logits)``
    means : Parameter  # (K, k)
    raw_diag : Parameter  # (K, k), Cholesky diagonal before the softplus
    raw_lower : Parameter  # (K, k, k), strictly lower Cholesky part (unused for "diag")
    """

    def __init__(
        self, n_components: int, dim: int, covariance_type: str = "full", min_variance: float = 1e-6
    ) -> None:
        super().__init__()
        if covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}")
        self.covariance_type = covariance_type
        self.min_std = math.sqrt(min_variance)
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.means = nn.Parameter(torch.zeros(n_components, dim))
        self.raw_diag = nn.Parameter(_softplus_inv(torch.ones(n_components, dim)))
        self.raw_lower = nn.Parameter(torch.zeros(n_components, dim, dim))

    def cholesky(self) -> Tensor:
        """Lower-triangular factors ``L`` with ``Σ = L Lᵀ``  # (K, k, k)"""
        diag = torch.diag_embed(softplus(self.raw_diag) + self.min_std)
        if self.covariance_type == "diag":
            return diag
        return diag + torch.tril(self.raw_lower, diagonal=-1)

    @property
    def weights(self) -> Tensor:
        """Mixture weights  # (K,)"""
        return torch.softmax(self.logits, dim=0)

    def covariances(self) -> Tensor:
        """Component covariances ``Σ_c``  # (K, k, k)"""
        chol = self.cholesky()
        return chol @ chol.transpose(-1, -2)

    def component_log_prob(self, z: Tensor) -> Tensor:
        """``log w_c + log N(z; μ_c, Σ_c)``  # (n, K)"""
        chol = self.cholesky()  # (K, k, k)
        diff = (z[None] - self.means[:, None]).transpose(-1, -2)  # (K, k, n)
        white = torch.linalg.solve_triangular(chol, diff, upper=False)  # (K, k, n)
        maha = (white**2).sum(dim=1)  # (K, n)
        half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
        k = z.shape[1]
        logn = -0.5 * maha - half_logdet[:, None] - 0.5 * k * math.log(2 * math.pi)
        return (logn + torch.log_softmax(self.logits, 0)[:, None]).T

    def log_prob(self, z: Tensor) -> Tensor:
        """Log density  # (n,)"""
        return torch.logsumexp(self.component_log_prob(z), dim=1)

    def predict(self, z: Tensor) -> Tensor:
        """Most responsible component of each row  # (n,) int64"""
        return self.component_log_prob(z).argmax(dim=1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws  # (n, k)"""
        w = self.weights.cpu().double()
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        eps = eps.to(self.means)
        chol = self.cholesky()[comp.to(self.means.device)]
        return self.means[comp.to(self.means.device)] + (chol @ eps[:, :, None])[:, :, 0]

    @torch.no_grad()
    def init_from_data(self, z: Tensor, seed: int) -> None:
        """Set the parameters from scikit-learn's EM fit on ``z``  # (n, k)"""
        from sklearn.mixture import GaussianMixture as SkGMM

        zz = z.detach().cpu().double().numpy()
        k_comp = self.logits.shape[0]
        gm = SkGMM(
            k_comp,
            covariance_type=self.covariance_type,
            reg_covar=max(self.min_std**2 * 10, 1e-6),
            random_state=seed,
            n_init=1,
        ).fit(zz)
        cov = (
            gm.covariances_
            if self.covariance_type == "full"
            else np.stack([np.diag(c) for c in gm.covariances_])
        )
        chol = torch.linalg.cholesky(torch.as_tensor(cov))
        diag = torch.diagonal(chol, dim1=-2, dim2=-1).clamp_min(self.min_std * 1.01)
        self.raw_diag.copy_(_softplus_inv(diag - self.min_std))
        self.raw_lower.copy_(torch.tril(chol, diagonal=-1))
        self.means.copy_(torch.as_tensor(gm.means_))
        self.logits.copy_(torch.log(torch.as_tensor(gm.weights_)))
