"""Turn a per-model interpretability basis into a translation, without paired data.

Each side's compared layer gets a basis from its own model and inputs (a rotation that
sparsifies Jacobians, the Local Interaction Basis, ...). Basis directions are then matched across
the two models by an assignment (Hungarian) on statistics that do not depend on how either
activation space is parametrised:

* **readout profile** — the mean change of the class logits per standard deviation of the
  direction (head Jacobian · decoder direction · std), centred over classes; the class logits
  are the one coordinate system both models share;
* **class profile** — the standardised mean of the direction on inputs the model itself
  assigns to each class (its own argmax, no labels);
* **moments** — log share of the total variance, skewness and excess kurtosis.

A direction's sign is arbitrary, so each candidate pair is scored with the sign that fits best
(sign-odd features flip). Matched directions are carried over with the ratio of their standard
deviations; unmatched B directions stay at their mean. The resulting affine map
``y = x @ matrix.T + bias`` is optionally refined by optimal transport
(:func:`flowmatch.alignment.refine_map`). No paired rows are read at any step.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from baselines._jacobians import batched_jacobian
from flowmatch.activations import head_after
from flowmatch.alignment import refine_map
from flowmatch.methods import FitData, Method

__all__ = [
    "AffineBasis",
    "BasisMatchingMethod",
    "DirectionStats",
    "direction_stats",
    "match_directions",
]


@dataclass(frozen=True)
class AffineBasis:
    """Coordinates of one activation space in a basis: ``z = x @ encoder + offset`` and back
    ``x ≈ z @ decoder + dec_offset``.

    Attributes
    ----------
    encoder : Tensor  # (d, k)
    offset : Tensor  # (k,)
    decoder : Tensor  # (k, d)
    dec_offset : Tensor  # (d,)
    """

    encoder: Tensor
    offset: Tensor
    decoder: Tensor
    dec_offset: Tensor

    @classmethod
    def from_encoder(cls, encoder: Tensor, offset: Tensor, mean: Tensor) -> AffineBasis:
        """Decoder = pseudo-inverse of ``encoder``; decoding the mean code gives ``mean``."""
        enc = encoder.double()
        dec = torch.linalg.pinv(enc)
        code_mean = mean.double() @ enc + offset.double()
        return cls(enc, offset.double(), dec, mean.double() - code_mean @ dec)

    def encode(self, x: Tensor) -> Tensor:
        """``(n, d) -> (n, k)``."""
        return x.double() @ self.encoder + self.offset

    def decode(self, z: Tensor) -> Tensor:
        """``(n, k) -> (n, d)``."""
        return z.double() @ self.decoder + self.dec_offset


@dataclass(frozen=True)
class DirectionStats:
    """Basis-invariant statistics of each direction of one side.

    Attributes
    ----------
    mean, std : Tensor  # (k,) of the codes
    readout : Tensor  # (k, n_classes) logit change per std, centred over classes, sign-odd
    profile : Tensor  # (k, n_classes) standardised class-conditional means, sign-odd
    log_var : Tensor  # (k,) log share of total variance
    skew : Tensor  # (k,) sign-odd
    kurt : Tensor  # (k,) excess kurtosis, compressed by sign(κ)·log(1 + |κ|)
    """

    mean: Tensor
    std: Tensor
    readout: Tensor
    profile: Tensor
    log_var: Tensor
    skew: Tensor
    kurt: Tensor


def direction_stats(
    basis: AffineBasis, acts: Tensor, head: nn.Module, *, max_jacobian_rows: int = 512
) -> DirectionStats:
    """Statistics of every basis direction on activations ``acts``  # (n, d)."""
    z = basis.encode(acts)
    mean, std = z.mean(0), z.std(0).clamp_min(1e-12)
    u = (z - mean) / std
    dtype = next(head.parameters()).dtype
    rows = acts[:max_jacobian_rows].to(dtype)
    jac = batched_jacobian(head, rows).detach().double().mean(0)  # (n_classes, d)
    readout = (basis.decoder @ jac.T) * std[:, None]  # (k, n_classes)
    readout = readout - readout.mean(1, keepdim=True)
    readout = readout / readout.norm(dim=1).max().clamp_min(1e-12)
    with torch.no_grad():
        pred = head(acts.to(dtype)).argmax(1)
    n_classes = jac.shape[0]
    profile = torch.zeros(z.shape[1], n_classes, dtype=torch.float64)
    for c in range(n_classes):
        mask = pred == c
        if mask.any():
            profile[:, c] = u[mask].mean(0)
    var = std**2
    kurt = (u**4).mean(0) - 3.0
    return DirectionStats(
        mean=mean,
        std=std,
        readout=readout,
        profile=profile,
        log_var=torch.log(var / var.sum()),
        skew=(u**3).mean(0),
        kurt=torch.sign(kurt) * torch.log1p(kurt.abs()),
    )


def _pair_cost(sa: DirectionStats, sb: DirectionStats, sign: float, weights: tuple) -> Tensor:
    w_read, w_prof, w_mom = weights
    cost = w_read * torch.cdist(sa.readout, sign * sb.readout) ** 2
    cost = cost + w_prof * torch.cdist(sa.profile, sign * sb.profile) ** 2 / sa.profile.shape[1]
    moments = (
        (sa.log_var[:, None] - sb.log_var[None]) ** 2
        + (sa.kurt[:, None] - sb.kurt[None]) ** 2
        + (sa.skew[:, None] - sign * sb.skew[None]) ** 2
    )
    return cost + w_mom * moments


def match_directions(
    sa: DirectionStats, sb: DirectionStats, weights: tuple[float, float, float] = (1.0, 1.0, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Assignment of A's directions to B's (Hungarian), each pair with its best sign.

    Returns
    -------
    idx_a, idx_b : ndarray  # (m,) matched direction indices, m = min(k_a, k_b)
    signs : ndarray  # (m,) ±1
    cost : float  # mean assignment cost
    """
    plus, minus = _pair_cost(sa, sb, 1.0, weights), _pair_cost(sa, sb, -1.0, weights)
    cost = torch.minimum(plus, minus).numpy()
    idx_a, idx_b = linear_sum_assignment(cost)
    signs = np.where(plus.numpy()[idx_a, idx_b] <= minus.numpy()[idx_a, idx_b], 1.0, -1.0)
    return idx_a, idx_b, signs, float(cost[idx_a, idx_b].mean())


class BasisMatchingMethod(Method):
    """Translation by unpaired matching of per-model basis directions (see the module docstring).

    Subclasses implement :meth:`_basis`, the basis of one model's compared layer.

    Parameters
    ----------
    refine : refine the matched map by optimal transport (:func:`flowmatch.alignment.refine_map`).

    Attributes
    ----------
    basis_a_, basis_b_ : AffineBasis
    matched_ : ndarray  # (m, 3) rows (index in A, index in B, sign)
    match_cost_ : float
    refined_ : bool  # whether the OT refinement ran
    matrix_ : Tensor  # (d_b, d_a)
    bias_ : Tensor  # (d_b,)
    """

    paired = False

    def __init__(self, *, refine: bool = True) -> None:
        self.refine = refine

    @abstractmethod
    def _basis(self, model: nn.Module, layer: str, inputs: Tensor, acts: Tensor) -> AffineBasis:
        """Basis of ``model``'s layer ``layer``, from ``inputs`` and their activations ``acts``."""

    def _fit(self, data: FitData) -> None:
        sides: list[tuple[Any, Any, Any, Tensor]] = [
            (data.model_a, data.layer_a, data.inputs_a, data.a),
            (data.model_b, data.layer_b, data.inputs_b, data.b),
        ]
        if any(m is None or lay is None or x is None for m, lay, x, _ in sides):
            raise ValueError(f"{self.name!r} needs the models, their layers and their inputs")
        self.seed_ = int(data.seed)
        bases, stats = [], []
        for model, layer, inputs, acts in sides:
            inputs, acts = inputs.detach(), acts.detach()
            basis = self._basis(model, layer, inputs, acts)
            bases.append(basis)
            stats.append(direction_stats(basis, acts, head_after(model, layer)))
        self.basis_a_, self.basis_b_ = bases
        idx_a, idx_b, signs, cost = match_directions(stats[0], stats[1])
        self.matched_ = np.stack([idx_a, idx_b, signs], axis=1)
        self.match_cost_ = cost
        sa, sb = stats
        scale = torch.zeros(len(sa.std), len(sb.std), dtype=torch.float64)
        ia, ib = torch.as_tensor(idx_a), torch.as_tensor(idx_b)
        scale[ia, ib] = torch.as_tensor(signs) * sb.std[ib] / sa.std[ia]
        ba, bb = self.basis_a_, self.basis_b_
        matrix = (ba.encoder @ scale @ bb.decoder).T
        bias = (sb.mean + (ba.offset - sa.mean) @ scale) @ bb.decoder + bb.dec_offset
        self.refined_ = False
        if self.refine:
            matrix, bias = refine_map(
                data.a.double(), data.b.double(), matrix, bias, seed=data.seed
            )
            self.refined_ = True
        self.matrix_, self.bias_ = matrix.double(), bias.double()

    def _transform(self, x_a: Tensor) -> Tensor:
        return x_a.double() @ self.matrix_.T + self.bias_
