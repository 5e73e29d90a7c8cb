"""Shared pieces of the embedding-alignment peers (mini-vec2vec, Wasserstein–Procrustes).

Both peers work on the *unit sphere of centred rows*: each side is centred on its mean, optionally
projected on its top principal axes (when the two widths differ), and every row is divided by its
norm. They fit a linear map ``R`` (k, k) between the two spheres, ``x̂_b ≈ x̂_a @ R.T``. This module
holds those coordinates (forward and back to the activation space), the uncentred orthogonal
Procrustes fit both peers use, a chunked nearest-neighbour search by inner products, and the
frozen map that carries A's activations into B's original activation space.

Back to B's space. A sphere coordinate has lost its row's norm; :class:`SphereMap` restores one:

* ``norm="ratio"`` (default): the translated row keeps the norm of its centred A row, rescaled by
  ``scale_b / scale_a`` (each side's mean centred row norm). The whole translation is then one
  affine map, ``x_a ↦ mean_b + (scale_b / scale_a) · lift_b(R · proj_a(x_a − mean_a))``, exposed
  as :attr:`SphereMap.matrix` and :attr:`SphereMap.bias`. Its direction is exactly the peer's
  sphere prediction; a hidden rotation (same norms on both sides) is reproduced exactly.
* ``norm="constant"``: every translated row gets B's mean centred norm ``scale_b`` (the only
  norm known without pairs), then B's mean is added.

Either way the cosine to B's centred rows is the peer's own prediction.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy import sparse

from baselines._linear import ScaledPCA
from flowmatch import alignment
from flowmatch.neighbours import top_indices
from flowmatch.validation import as_matrix

__all__ = [
    "SphereCoordinates",
    "SphereMap",
    "check_norm",
    "check_params",
    "inner_product_neighbours",
    "neighbour_means",
    "orthogonal_procrustes",
    "polar",
    "sphere_pair",
    "unit_rows",
]

NORMS = ("ratio", "constant")
_BLOCK_ENTRIES = 1 << 24  # entries of one float32 similarity block (64 MiB)


@dataclass(frozen=True)
class SphereCoordinates:
    """``x ↦ normalise(proj(x − mean))``: centred rows on the unit sphere of k coordinates.

    Attributes
    ----------
    mean : ndarray  # (d,) mean of the fitted rows
    basis : ndarray | None  # (d, k) orthonormal principal axes, or None (k = d, no projection)
    scale : float  # mean norm of the centred, projected fitted rows
    """

    mean: np.ndarray
    basis: np.ndarray | None
    scale: float

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int | None = None) -> SphereCoordinates:
        """Fit on rows ``x``  # (n, d); project on the top ``n_components`` axes when given."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(0)
        basis = None
        if n_components is not None and n_components < x.shape[1]:
            basis = ScaledPCA.fit(x, n_components).basis.numpy()
        z = x - mean if basis is None else (x - mean) @ basis
        return cls(mean, basis, float(np.linalg.norm(z, axis=1).mean()))

    @property
    def dim(self) -> int:
        """Width k of the sphere coordinates."""
        return len(self.mean) if self.basis is None else int(self.basis.shape[1])

    def centred(self, x: np.ndarray) -> np.ndarray:
        """Centred (and projected) rows  # (n, d) → (n, k), float64."""
        z = np.asarray(x, dtype=np.float64) - self.mean
        return z if self.basis is None else z @ self.basis

    def sphere(self, x: np.ndarray) -> np.ndarray:
        """Unit-norm centred rows  # (n, d) → (n, k), float64 (zero rows stay zero)."""
        return unit_rows(self.centred(x))

    def lift(self, z: np.ndarray) -> np.ndarray:
        """Back to the activation space  # (n, k) → (n, d) (dropped axes at the mean)."""
        return (z if self.basis is None else z @ self.basis.T) + self.mean


def unit_rows(z: np.ndarray) -> np.ndarray:
    """Rows divided by their norms (zero rows stay zero)  # (n, k) → (n, k)."""
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.maximum(norms, 1e-12)


def polar(m: np.ndarray) -> np.ndarray:
    """Nearest orthogonal matrix (polar factor ``U Vᵀ`` of ``m = U S Vᵀ``)  # (p, q) → (p, q);
    :func:`flowmatch.alignment.polar` as an array."""
    return alignment.polar(torch.as_tensor(np.asarray(m, dtype=np.float64))).numpy()


def orthogonal_procrustes(x: Any, y: Any) -> np.ndarray:
    """Orthogonal ``R`` (k_y, k_x) minimising ``‖x Rᵀ − y‖_F``, rows uncentred, no scale.

    Parameters
    ----------
    x : (n, k_x) ; y : (n, k_y) paired rows (pseudo-pairs, for the peers).

    Returns
    -------
    R : ndarray  # (k_y, k_x), float64 — the polar factor of ``yᵀ x`` (Schönemann 1966),
        :func:`flowmatch.alignment.fit_orthogonal` as an array
    """
    return alignment.fit_orthogonal(np.asarray(x), np.asarray(y)).numpy()


def inner_product_neighbours(
    queries: np.ndarray, keys: np.ndarray, k: int, *, block_entries: int = _BLOCK_ENTRIES
) -> np.ndarray:
    """Indices of the ``k`` keys with the largest inner product with each query, best first.

    Blocks of queries are compared with all keys by one float32 matrix product at a time, so no
    similarity block holds more than ``block_entries`` numbers; each block's best keys are
    selected by :func:`flowmatch.neighbours.top_indices`, as in translate's own search. (At
    20,000 keys mini-vec2vec ran slower with translate's smaller blocks, 102 → 121 s, so the
    peers keep 64 MiB ones.)

    Parameters
    ----------
    queries : (n_q, k_dim) ; keys : (n_k, k_dim).

    Returns
    -------
    ndarray  # (n_q, min(k, n_k)) int64
    """
    q = torch.as_tensor(np.ascontiguousarray(queries), dtype=torch.float32)
    kt = torch.as_tensor(np.ascontiguousarray(keys), dtype=torch.float32)
    k = min(int(k), len(kt))
    rows = max(1, block_entries // max(len(kt), 1))
    out = []
    for i in range(0, len(q), rows):
        block = q[i : i + rows] @ kt.T
        idx = top_indices(block, k)
        order = block.gather(1, idx).argsort(dim=1, descending=True)
        out.append(idx.gather(1, order))
    return torch.cat(out).numpy().astype(np.int64)


def neighbour_means(
    queries: np.ndarray, keys: np.ndarray, k: int, values: np.ndarray | None = None
) -> np.ndarray:
    """Mean of the ``values`` (default: the keys) of the ``k`` keys nearest to each query.

    Nearest by inner product (:func:`inner_product_neighbours`); the means are one sparse
    (n_q, n_k) averaging matrix times ``values``, never an (n_q, k, dim) gather.

    Returns
    -------
    ndarray  # (n_q, dim) float64
    """
    vals = keys if values is None else values
    idx = inner_product_neighbours(queries, keys, k)
    n_q, kk = idx.shape
    avg = sparse.csr_matrix(
        (np.full(idx.size, 1.0 / kk), idx.ravel(), np.arange(0, idx.size + 1, kk)),
        shape=(n_q, len(keys)),
    )
    return np.asarray(avg @ np.asarray(vals, dtype=np.float64))


@dataclass(frozen=True)
class SphereMap:
    """A linear map between two sphere coordinates, applied in the activation spaces.

    Attributes
    ----------
    coords_a, coords_b : SphereCoordinates  # each side's centring, projection and mean norm
    rotation : ndarray  # (k, k) the fitted map R: x̂_b ≈ x̂_a @ R.T (orthogonal, or close to it)
    norm : str  # how translated rows get their norm back: "ratio" or "constant" (module doc)
    """

    coords_a: SphereCoordinates
    coords_b: SphereCoordinates
    rotation: np.ndarray
    norm: Literal["ratio", "constant"]

    @property
    def matrix(self) -> np.ndarray:
        """The full map's matrix  # (d_b, d_a), for ``norm="ratio"``: y = x @ matrix.T + bias."""
        if self.norm != "ratio":
            raise ValueError('the translation is affine only with norm="ratio"')
        m = self.rotation * (self.coords_b.scale / self.coords_a.scale)
        if self.coords_a.basis is not None:
            m = m @ self.coords_a.basis.T
        if self.coords_b.basis is not None:
            m = self.coords_b.basis @ m
        return m

    @property
    def bias(self) -> np.ndarray:
        """The full map's bias  # (d_b,), for ``norm="ratio"``."""
        return self.coords_b.mean - self.matrix @ self.coords_a.mean

    def transform_sphere(self, x_a: Any) -> np.ndarray:
        """A's rows mapped into B's sphere coordinates  # (n, d_a) → (n, k), float64."""
        return self.coords_a.sphere(_rows(x_a, len(self.coords_a.mean))) @ self.rotation.T

    def transform(self, x_a: Any) -> np.ndarray:
        """A's rows translated into B's original activation space  # (n, d_a) → (n, d_b)."""
        x = _rows(x_a, len(self.coords_a.mean))
        if self.norm == "ratio":
            return x @ self.matrix.T + self.bias
        z = unit_rows(self.coords_a.sphere(x) @ self.rotation.T) * self.coords_b.scale
        return self.coords_b.lift(z)


def _rows(x: Any, dim: int) -> np.ndarray:
    return as_matrix(x, "x_a", dim=dim, dtype=torch.float64).cpu().numpy()


def check_params(func: Any, params: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming any key of ``params`` that ``func`` does not take by keyword
    (the data and the seed come from :class:`~flowmatch.methods.FitData`)."""
    accepted = set(inspect.signature(func).parameters) - {"x_a", "x_b", "seed"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise TypeError(f"unknown parameters {unknown}; {func.__name__} takes {sorted(accepted)}")


def check_norm(norm: str) -> None:
    """Raise ``ValueError`` unless ``norm`` is one of :data:`NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def sphere_pair(
    x_a: Any, x_b: Any, n_components: int | None
) -> tuple[SphereCoordinates, SphereCoordinates, np.ndarray, np.ndarray]:
    """Fit both sides' sphere coordinates; widths differ → PCA each side to min(d_a, d_b).

    Returns
    -------
    coords_a, coords_b : SphereCoordinates
    xa_hat : ndarray  # (n_a, k) float64 unit rows of A
    xb_hat : ndarray  # (n_b, k) float64 unit rows of B
    """
    xa = as_matrix(x_a, "x_a", min_samples=2, dtype=torch.float64).cpu().numpy()
    xb = as_matrix(x_b, "x_b", min_samples=2, dtype=torch.float64).cpu().numpy()
    d_a, d_b = xa.shape[1], xb.shape[1]
    k = n_components if n_components is not None else (None if d_a == d_b else min(d_a, d_b))
    if k is not None and not 1 <= k <= min(d_a, d_b):
        raise ValueError(f"n_components must be in [1, {min(d_a, d_b)}], got {k}")
    coords_a, coords_b = SphereCoordinates.fit(xa, k), SphereCoordinates.fit(xb, k)
    return coords_a, coords_b, coords_a.sphere(xa), coords_b.sphere(xb)
