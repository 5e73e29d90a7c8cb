"""Input checks and small shared helpers (devices, seeds, array conversion).

Every public entry point funnels user data through :func:`as_matrix` so that bad input
(wrong rank, NaN/Inf, too few rows, mismatched widths) fails early with a message that
names the problem.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "NotFittedError",
    "as_matrix",
    "check_fitted",
    "check_finite",
    "resolve_device",
    "seed_everything",
]


class NotFittedError(RuntimeError):
    """Raised when an estimator is used before ``fit``."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002  (seeds third-party code using the global RNG)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_finite(x: torch.Tensor, name: str = "input") -> None:
    """Raise ``ValueError`` naming how many NaN/Inf entries ``x`` holds."""
    if not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} Inf values")


def as_matrix(
    x: Any,
    name: str = "x",
    *,
    dim: int | None = None,
    min_samples: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Convert an ActivationSet, tensor or array-like to a checked 2-D tensor.

    Parameters
    ----------
    x : ActivationSet | Tensor | ndarray  # (n_samples, n_features)
    name : how to call the argument in error messages.
    dim : expected number of features, if known.
    min_samples : minimum number of rows.
    dtype : floating dtype of the result; defaults to ``x``'s floating dtype or float32.

    Returns
    -------
    Tensor  # (n_samples, n_features), on the CPU unless ``x`` was already a tensor elsewhere.
    """
    if hasattr(x, "x") and isinstance(x.x, torch.Tensor):  # ActivationSet
        x = x.x
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from err
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if dtype is not None:
        t = t.to(dtype)
    n, d = t.shape
    if n < min_samples:
        raise ValueError(f"{name} has {n} samples; at least {min_samples} are needed")
    if dim is not None and d != dim:
        raise ValueError(f"{name} has {d} features but {dim} were expected (dimension mismatch)")
    check_finite(t, name)
    return t


def check_fitted(estimator: Any, attribute: str) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has the fitted ``attribute``."""
    if getattr(estimator, attribute, None) is None:
        raise NotFittedError(
            f"this {type(estimator).__name__} is not fitted yet; call fit(...) first"
        )
