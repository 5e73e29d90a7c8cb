"""Relative representations (Moschella et al. 2023), decoded back into B's space.

Each row is described by its cosine similarities to a set of anchor inputs, run through its own
network: ``rel(x) = normalize(x − μ) @ normalize(anchors − μ).T``  # (n, n_anchors). If the two
networks embed the data the same way up to an angle-preserving change of basis, A's and B's
relative coordinates of the same input agree, so they form a shared space.

To compare with the other methods the shared space has to be mapped back into B's activations.
The decoder is an affine least-squares map from B's relative coordinates to B's activations,
fitted on B's own (unpaired) rows — which every method is entitled to. The anchors are the
``n_pairs`` paired rows, so this is a paired method that uses exactly ``n_pairs`` pairs; ``μ`` is
each network's mean activation over its unpaired rows (centring, as in the paper's experiments).

References
----------
Moschella, Maiorca, Fumero, Norelli, Locatello, Rodolà. "Relative representations enable
zero-shot latent space communication", ICLR 2023.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from flowmatch.alignment import fit_affine
from flowmatch.methods import FitData, Method, register
from flowmatch.validation import check_fitted

__all__ = ["RelativeRepresentation", "relative_coordinates"]


def relative_coordinates(x: Tensor, anchors: Tensor, center: Tensor) -> Tensor:
    """Cosine similarity of each centred row to each centred anchor  # (n, d) → (n, n_anchors)."""
    unit = lambda t: nn.functional.normalize(t - center, dim=1, eps=1e-12)  # noqa: E731
    return unit(x) @ unit(anchors).T


@register("relative")
class RelativeRepresentation(Method):
    """Relative representations with the paired rows as anchors, decoded to B by least squares.

    Parameters
    ----------
    center : subtract each network's mean activation before taking cosines.
    ridge : relative Tikhonov term of the decoder's least-squares fit.

    Attributes
    ----------
    anchors_a_ : Tensor  # (n_anchors, d_a)
    anchors_b_ : Tensor  # (n_anchors, d_b)
    center_a_, center_b_ : Tensor  # (d_a,), (d_b,)
    decoder_matrix_ : Tensor  # (d_b, n_anchors)
    decoder_bias_ : Tensor  # (d_b,)
    n_pairs_used_ : int
    """

    paired: ClassVar[bool] = True
    uses: ClassVar[str] = "paired rows as anchors + B's unpaired rows (decoder)"

    decoder_matrix_: Tensor | None = None

    def __init__(self, center: bool = True, ridge: float = 1e-6) -> None:
        self.center = center
        self.ridge = ridge

    def _fit(self, data: FitData) -> None:
        assert data.pairs_a is not None and data.pairs_b is not None
        a, b = data.a.double(), data.b.double()
        self.anchors_a_, self.anchors_b_ = data.pairs_a.double(), data.pairs_b.double()
        zero = lambda t: torch.zeros(t.shape[1], dtype=torch.float64)  # noqa: E731
        self.center_a_ = a.mean(0) if self.center else zero(a)
        self.center_b_ = b.mean(0) if self.center else zero(b)
        rel_b = relative_coordinates(b, self.anchors_b_, self.center_b_)
        self.decoder_matrix_, self.decoder_bias_ = fit_affine(rel_b, b, ridge=self.ridge)

    def _transform(self, x_a: Tensor) -> Tensor:
        check_fitted(self, "decoder_matrix_")
        assert self.decoder_matrix_ is not None
        rel = relative_coordinates(x_a.double().cpu(), self.anchors_a_, self.center_a_)
        return rel @ self.decoder_matrix_.T + self.decoder_bias_
