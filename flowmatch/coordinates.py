"""Map coordinates: where :func:`flowmatch.translate` fits its linear map.

Each side's activations are centred, divided by one global scale and projected on their ``p``
leading principal axes: ``u = (x − μ) V / s`` with ``V`` (d, p) orthonormal and ``s`` chosen so
that ``E‖u‖² = 1``. The inverse ``x = s · u Vᵀ + μ`` puts the dropped directions at their mean.
One global scale keeps the relative variances: whitening would lift the weak, noisy directions
to the weight of the strong ones in every nearest-neighbour and transport cost.

How many coordinates (:func:`choose_n_components`): a few times the representation's effective
dimension, measured by the participation ratio ``(Σλ)² / Σλ²`` of the covariance spectrum
(Gao et al. 2017), at least ``min_components`` and at most what explains ``explained_variance``.
Sentence embeddings (participation ratio ≈ 80–125 in 384 dimensions) get ≈ 250–300 coordinates,
which a retrieval-grade map needs (a paired orthogonal map on 64 of them retrieves 0.93 of
1,000 WordNet glosses at top-1, on 128 0.99); the zoo's classifier layers (ratio ≈ 4) get the
floor, 32 (on 16, the previous floor, zero-pair relative stitching was lower on all three zoo
pairs at seeds 0, 1 and 2 — mnist1d-cnn 0.942–0.948 against 0.960–0.967: README, "How translate
finds the map").

References
----------
Gao, Trautmann, Yu, Santhanam, Ryu, Shenoy, Ganguli. "A theory of multineuronal dimensionality,
dynamics and measurement", bioRxiv 2017 (participation ratio).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowmatch._validation import as_matrix, check_fitted

__all__ = ["MapCoordinates", "choose_n_components", "participation_ratio"]


def _spectrum(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean (d,), eigenvalues (d,) descending and eigenvectors (d, d) of the covariance."""
    mu = x.mean(0)
    xc = x - mu
    evals, evecs = torch.linalg.eigh(xc.T @ xc / len(x))
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    sign = torch.sign(evecs[evecs.abs().argmax(0), torch.arange(evecs.shape[1])])
    return mu, evals, evecs * torch.where(sign == 0, 1.0, sign)


def participation_ratio(x: Any) -> float:
    """Effective dimension ``(Σλ)² / Σλ²`` of the rows' covariance  # (n, d) → float."""
    _, evals, _ = _spectrum(as_matrix(x, "x", min_samples=2, dtype=torch.float64))
    return float(evals.sum() ** 2 / (evals**2).sum().clamp_min(1e-300))


def _n_for_variance(evals: Tensor, fraction: float) -> int:
    ratio = torch.cumsum(evals, 0) / evals.sum().clamp_min(1e-300)
    return int((ratio < fraction - 1e-12).sum()) + 1


def choose_n_components(
    x_a: Any,
    x_b: Any,
    *,
    ratio_multiple: float = 3.0,
    min_components: int = 32,
    explained_variance: float = 0.99,
) -> int:
    """Common number of map coordinates for two activation sets.

    ``p = clip(ratio_multiple · max(PR_a, PR_b), min_components, max(p99_a, p99_b))``, where PR is
    the participation ratio and p99 the coordinates explaining ``explained_variance``; never more
    than either side's rank (its non-constant columns and rows − 1).
    """
    sides = [
        as_matrix(x, name, min_samples=2, dtype=torch.float64)
        for x, name in ((x_a, "x_a"), (x_b, "x_b"))
    ]
    spectra = [_spectrum(x)[1] for x in sides]
    pr = max(float(ev.sum() ** 2 / (ev**2).sum().clamp_min(1e-300)) for ev in spectra)
    upper = max(_n_for_variance(ev, explained_variance) for ev in spectra)
    rank = min(min(int((ev > 1e-12 * ev[0]).sum()), len(x) - 1) for ev, x in zip(spectra, sides))
    p = min(max(round(ratio_multiple * pr), min_components), max(upper, min_components))
    return max(1, min(p, rank))


class MapCoordinates:
    """Centred, globally scaled leading principal coordinates of one side's activations.

    Parameters
    ----------
    n_components : number ``p`` of leading principal axes kept.

    Attributes
    ----------
    mean_ : Tensor  # (d,)
    components_ : Tensor  # (d, p) orthonormal principal axes as columns
    scale_ : float  # s, with E‖u‖² = 1 on the fitted rows
    explained_variance_ratio_ : Tensor  # (p,)
    n_features_in_ : int  # d
    """

    def __init__(self, n_components: int) -> None:
        self.n_components = n_components

    def fit(self, x: Any) -> MapCoordinates:
        """Fit on activations ``x``  # (n, d)."""
        xt = as_matrix(x, "x", min_samples=2, dtype=torch.float64)
        p = int(self.n_components)
        if not 1 <= p <= xt.shape[1]:
            raise ValueError(
                f"n_components must lie in [1, {xt.shape[1]}], got {self.n_components}"
            )
        mu, evals, evecs = _spectrum(xt)
        if float(evals[:p].sum()) <= 0:
            raise ValueError("x has no variance in its leading principal directions")
        self.mean_, self.components_ = mu, evecs[:, :p].contiguous()
        self.scale_ = float(evals[:p].sum().sqrt())
        self.explained_variance_ratio_ = evals[:p] / evals.sum()
        self.n_features_in_ = int(xt.shape[1])
        return self

    def transform(self, x: Any) -> Tensor:
        """Coordinates ``u = (x − μ) V / s``  # (n, d) → (n, p), float64."""
        check_fitted(self, "components_")
        xt = as_matrix(x, "x", dim=self.n_features_in_, dtype=torch.float64)
        return (xt - self.mean_) @ self.components_ / self.scale_

    def inverse_transform(self, u: Any) -> Tensor:
        """Activations ``x = s · u Vᵀ + μ``  # (n, p) → (n, d), float64."""
        check_fitted(self, "components_")
        ut = as_matrix(u, "u", dim=self.components_.shape[1], dtype=torch.float64)
        return self.scale_ * ut @ self.components_.T + self.mean_

    def to_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and JSON-able metadata for saving (see :meth:`from_state`)."""
        check_fitted(self, "components_")
        tensors = {
            "mean": self.mean_,
            "components": self.components_,
            "explained_variance_ratio": self.explained_variance_ratio_,
        }
        return tensors, {"scale": self.scale_, "n_components": int(self.n_components)}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> MapCoordinates:
        """Rebuild fitted coordinates from :meth:`to_state`'s output (shapes are checked)."""
        comp = tensors["components"].double()
        mean = tensors["mean"].double()
        if comp.ndim != 2 or mean.shape != (comp.shape[0],):
            raise ValueError(
                f"inconsistent coordinates: mean {tuple(mean.shape)}, "
                f"components {tuple(comp.shape)}"
            )
        scale = float(meta["scale"])
        if not scale > 0 or scale != scale or scale == float("inf"):
            raise ValueError(f"coordinates scale must be positive and finite, got {scale}")
        out = cls(int(comp.shape[1]))
        out.mean_, out.components_, out.scale_ = mean, comp, scale
        out.explained_variance_ratio_ = tensors["explained_variance_ratio"].double()
        out.n_features_in_ = int(comp.shape[0])
        return out

    def __repr__(self) -> str:
        return f"MapCoordinates(n_components={self.n_components})"
