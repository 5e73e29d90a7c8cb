"""Orthogonal Procrustes with one global scale, fitted on paired rows.

``x_b ≈ s · x_a @ R.T + bias`` with ``R`` (d_b, d_a) having orthonormal rows or columns: the
best rotation/reflection between the two spaces (Schönemann 1966), the usual test of whether two
networks differ only by a change of basis (Williams et al. 2021).

References
----------
Schönemann. "A generalized solution of the orthogonal Procrustes problem", Psychometrika 1966.
Williams, Kunz, Kornblith, Linderman. "Generalized shape metrics on neural representations",
NeurIPS 2021.
"""

from __future__ import annotations

from typing import ClassVar

from baselines._linear import LinearMapMethod
from flowmatch.alignment import fit_similarity
from flowmatch.methods import FitData, register

__all__ = ["Procrustes"]


@register("procrustes")
class Procrustes(LinearMapMethod):
    """Orthogonal × scale map fitted on the paired rows.

    Attributes
    ----------
    matrix_ : Tensor  # (d_b, d_a), equal to s·R
    bias_ : Tensor  # (d_b,)
    scale_ : float  # the global scale s
    n_pairs_used_ : int
    """

    paired: ClassVar[bool] = True
    uses: ClassVar[str] = "paired rows (rotation + scale)"

    scale_: float | None = None

    def __init__(self) -> None:
        pass

    def _fit(self, data: FitData) -> None:
        assert data.pairs_a is not None and data.pairs_b is not None
        self.matrix_, self.bias_ = fit_similarity(data.pairs_a, data.pairs_b)
        self.scale_ = float(self.matrix_.norm() / min(self.matrix_.shape) ** 0.5)
