"""Synthetic activation pairs with a known answer, shared by the translation tests."""

from __future__ import annotations

import numpy as np


def manifold_rotation_pair(
    n: int = 2000, d: int = 256, k: int = 8, n_test: int = 500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A non-clustered, anisotropic distribution in ``d`` dimensions and a hidden rotation.

    Rows are a random two-layer tanh network of a standard normal ``k``-dimensional code (a
    curved ``k``-dimensional manifold, one blob, no clusters) whose output directions have
    geometrically decaying scales, plus small isotropic noise. B's rows are fresh draws rotated
    by a random orthogonal ``q``; the test rows are paired.

    Returns ``(a (n, d), b (n, d), test_a (n_test, d), test_b (n_test, d), q (d, d))``.
    """
    g = np.random.default_rng(1000 + seed)
    w1, b1 = g.standard_normal((k, 64)) * 1.5, g.standard_normal(64) * 0.5
    w2 = g.standard_normal((64, d)) * np.exp(-np.arange(64) / 12)[:, None]
    rng = np.random.default_rng(seed)

    def draw(m: int) -> np.ndarray:
        h = np.tanh(rng.standard_normal((m, k)) @ w1 + b1)
        return h @ w2 + 0.01 * rng.standard_normal((m, d))

    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b, test = draw(n), draw(n) @ q.T, draw(n_test)
    return a, b, test, test @ q.T, q
