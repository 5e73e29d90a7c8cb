"""Shared pieces of the baselines whose result is one affine map ``y = x @ matrix.T + bias``.

* :class:`LinearMapMethod` — a :class:`~flowmatch.methods.Method` whose ``transform`` applies the
  fitted ``matrix_`` (d_b, d_a) and ``bias_`` (d_b,).
* :class:`ScaledPCA` — centre, project on the top principal axes, divide by one global scale.
  It is a similarity transform (orthogonal projection × one scale), so distances keep their
  ratios and a rotation between two networks stays a rotation between their reductions.
* :func:`compose_map` — lift a map between two reductions to a map between the full spaces.

The least-squares and Procrustes fits themselves are :func:`flowmatch.alignment.fit_affine` and
:func:`flowmatch.alignment.fit_similarity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowmatch.methods import Method
from flowmatch.validation import as_matrix, check_fitted

__all__ = ["LinearMapMethod", "ScaledPCA", "compose_map"]


class LinearMapMethod(Method):
    """A method whose translation is one affine map.

    Attributes
    ----------
    matrix_ : Tensor  # (d_b, d_a), float64
    bias_ : Tensor  # (d_b,), float64
    """

    matrix_: Tensor | None = None
    bias_: Tensor | None = None

    def _transform(self, x_a: Tensor) -> Tensor:
        check_fitted(self, "matrix_")
        assert self.matrix_ is not None and self.bias_ is not None
        return x_a.to(torch.float64).cpu() @ self.matrix_.T + self.bias_


@dataclass(frozen=True)
class ScaledPCA:
    """``z = (x − mean) @ basis / scale``: a PCA reduction with one global scale.

    Attributes
    ----------
    mean : Tensor  # (d,)
    basis : Tensor  # (d, k), orthonormal columns (the top-k principal axes)
    scale : float  # root mean squared norm of the reduced, centred rows before scaling
    """

    mean: Tensor
    basis: Tensor
    scale: float

    @classmethod
    def fit(cls, x: Any, n_components: int | None = None) -> ScaledPCA:
        """Fit on rows ``x``  # (n, d); ``n_components=None`` keeps every axis (k = min(n, d))."""
        t = as_matrix(x, "x", min_samples=2, dtype=torch.float64).cpu()
        mean = t.mean(0)
        _, s, vh = torch.linalg.svd(t - mean, full_matrices=False)
        k = len(s) if n_components is None else min(int(n_components), len(s))
        if k < 1:
            raise ValueError(f"n_components must be at least 1, got {n_components}")
        basis = vh[:k].T
        scale = float(torch.sqrt((s[:k] ** 2).sum() / len(t)).clamp_min(1e-12))
        return cls(mean, basis, scale)

    @property
    def n_components(self) -> int:
        return int(self.basis.shape[1])

    def transform(self, x: Any) -> Tensor:
        """Reduced coordinates  # (n, d) → (n, k), float64."""
        t = as_matrix(x, "x", dim=len(self.mean), dtype=torch.float64).cpu()
        return (t - self.mean) @ self.basis / self.scale

    def inverse_transform(self, z: Tensor) -> Tensor:
        """Back to the full space  # (n, k) → (n, d) (the discarded axes are set to the mean)."""
        return z @ self.basis.T * self.scale + self.mean


def compose_map(
    red_a: ScaledPCA, red_b: ScaledPCA, matrix: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor]:
    """Full-space form of a map between two reductions.

    ``x_a → red_b.inverse_transform(red_a.transform(x_a) @ matrix.T + bias)`` is affine; this
    returns it as ``(matrix_full (d_b, d_a), bias_full (d_b,))``.
    """
    m = torch.as_tensor(matrix, dtype=torch.float64)
    c = torch.as_tensor(bias, dtype=torch.float64)
    lift = red_b.basis * red_b.scale  # (d_b, k_b)
    full = lift @ m @ red_a.basis.T / red_a.scale  # (d_b, d_a)
    return full, red_b.mean + lift @ c - full @ red_a.mean
