"""Supervised affine stitching: least squares on paired rows.

The reference every other method is scored against: with every training input run through both
networks, ``x_b ≈ x_a @ matrix.T + bias`` is the best linear stitching layer (Lenc & Vedaldi
2015; Bansal et al. 2021), fitted in closed form with a small ridge term.

References
----------
Lenc, Vedaldi. "Understanding image representations by measuring their equivariance and
equivalence", CVPR 2015.
Bansal, Nakkiran, Barak. "Revisiting model stitching to compare neural representations",
NeurIPS 2021.
"""

from __future__ import annotations

from typing import ClassVar

from baselines._linear import LinearMapMethod
from flowmatch.alignment import fit_affine
from flowmatch.methods import FitData, register

__all__ = ["Affine"]


@register("affine")
class Affine(LinearMapMethod):
    """Least-squares affine map fitted on the paired rows.

    Parameters
    ----------
    ridge : Tikhonov term relative to the mean variance of the paired A rows (keeps the fit
        defined when there are fewer pairs than A's width).

    Attributes
    ----------
    matrix_ : Tensor  # (d_b, d_a)
    bias_ : Tensor  # (d_b,)
    n_pairs_used_ : int
    """

    paired: ClassVar[bool] = True
    uses: ClassVar[str] = "paired rows (least squares)"

    def __init__(self, ridge: float = 1e-6) -> None:
        self.ridge = ridge

    def _fit(self, data: FitData) -> None:
        assert data.pairs_a is not None and data.pairs_b is not None
        self.matrix_, self.bias_ = fit_affine(data.pairs_a, data.pairs_b, ridge=self.ridge)
