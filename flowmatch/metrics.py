"""Scores for a translation x_a → x̂_b against the true B activations (held-out rows only).

All functions take matrices (n, d_b) of predicted and true activations for the *same* inputs.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn

from flowmatch.validation import as_matrix

__all__ = ["linear_cka", "mean_cosine", "r2_score", "stitched_accuracy", "top1_retrieval"]


def _pair(pred: object, true: object) -> tuple[Tensor, Tensor]:
    p = as_matrix(pred, "predicted activations", dtype=torch.float64)
    t = as_matrix(true, "true activations", dtype=torch.float64)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: predicted {tuple(p.shape)} vs true {tuple(t.shape)}")
    return p, t


def r2_score(pred: object, true: object) -> float:
    """Coefficient of determination, pooled over features: 1 − SS_res / SS_tot.

    Needs at least 2 rows (``ValueError`` otherwise). When the true activations are constant
    (SS_tot = 0) R² is undefined: the result is NaN, with a ``RuntimeWarning``.
    """
    p, t = _pair(pred, true)
    if len(t) < 2:
        raise ValueError(f"R² needs at least 2 rows, got {len(t)}")
    ss_res = ((t - p) ** 2).sum()
    ss_tot = ((t - t.mean(0)) ** 2).sum()
    if not float(ss_tot) > 0.0:
        warnings.warn(
            "R² is undefined: the true activations are constant (zero variance); returning NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(1.0 - ss_res / ss_tot)


def mean_cosine(pred: object, true: object) -> float:
    """Mean cosine similarity between matching rows."""
    p, t = _pair(pred, true)
    return float(nn.functional.cosine_similarity(p, t, dim=1, eps=1e-12).mean())


def top1_retrieval(pred: object, true: object) -> float:
    """Fraction of rows whose nearest true row (Euclidean) is their own partner."""
    p, t = _pair(pred, true)
    nearest = torch.cdist(p, t).argmin(dim=1)
    return float((nearest == torch.arange(len(p))).double().mean())


@torch.no_grad()
def stitched_accuracy(pred: object, head_b: nn.Module, labels: object) -> float:
    """Accuracy of ``head_b`` (the rest of model B) applied to translated activations."""
    p = as_matrix(pred, "predicted activations", dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels for {len(p)} rows")
    param = next(iter(head_b.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    return float((head_b(p.to(dtype)).argmax(1) == y).double().mean())


def linear_cka(x: object, y: object) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of paired rows (n, d_x), (n, d_y)."""
    a = as_matrix(x, "x", dtype=torch.float64)
    b = as_matrix(y, "y", dtype=torch.float64)
    if len(a) != len(b):
        raise ValueError(f"CKA needs paired rows: {len(a)} vs {len(b)}")
    a, b = a - a.mean(0), b - b.mean(0)
    hsic = torch.linalg.matrix_norm(b.T @ a) ** 2
    norm = torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)
    return float(hsic / norm.clamp_min(1e-300))
