"""Quadratic assignment by 2-opt local search: the graph matching of two symmetric kernels.

``max_π f(π) = Σ_ij A[i, j] · B[π_i, π_j]`` over permutations π (A, B symmetric, n × n). From a
starting permutation, the pairwise swap with the largest gain is applied until no swap gains: a
2-opt local optimum (the neighbourhood of :func:`scipy.optimize.quadratic_assignment` with
``method="2opt"``, which takes the first improving swap instead of the best). The problem is
NP-hard and has many local optima, so many cheap starts replace one expensive solve.

Gain of swapping positions r and s, with ``C = B[π][:, π]`` and ``M = A C``::

    Δ_rs = 2 (M_rs + M_sr − M_rr − M_ss − e_r − e_s) + (A_rr − A_ss)(C_ss − C_rr)
    e_r = (A_rr − A_sr)(C_sr − C_rr),  e_s = (A_rs − A_ss)(C_ss − C_rs)

(twice the sum over every k of (A_rk − A_sk)(C_sk − C_rk) without the k ∈ {r, s} terms, plus
the change on the 2 × 2 block). Two searches use it:

* :func:`two_opt_batch` advances many starts together, one batched product per step — for
  small problems (anchor centroids, tens of tree modes);
* :func:`two_opt` follows one start and updates ``M`` in O(n²) per swap (a swap changes two rows
  and two columns of ``C``) — for hundreds of items.

References
----------
Burkard, Dell'Amico, Martello. *Assignment Problems*, SIAM 2009 (ch. 7, local search for QAP).
"""

from __future__ import annotations

import numpy as np

__all__ = ["qap_objective", "qap_search", "swap_gains", "two_opt", "two_opt_batch"]


def qap_objective(a: np.ndarray, b: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``Σ_ij a[i, j] b[π_i, π_j]`` for each row π of ``perms``  # (p, n) → (p,)."""
    perms = np.atleast_2d(perms)
    return np.einsum("ij,pij->p", a, b[perms[:, :, None], perms[:, None, :]])


def swap_gains(a: np.ndarray, c: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """Gain of swapping positions r, s  # a (n, n), permuted b c (p, n, n) → (p, n, n).

    ``m`` is ``a @ c`` when already known.
    """
    m = a @ c if m is None else m
    dm = np.diagonal(m, axis1=1, axis2=2)
    da, dc = np.diag(a), np.diagonal(c, axis1=1, axis2=2)
    e_r = (da[:, None] - a.T)[None] * (c.transpose(0, 2, 1) - dc[:, :, None])
    e_s = (a - da[None, :])[None] * (dc[:, None, :] - c)
    block = (da[:, None] - da[None, :])[None] * (dc[:, None, :] - dc[:, :, None])
    return 2 * (m + m.transpose(0, 2, 1) - dm[:, :, None] - dm[:, None, :] - e_r - e_s) + block


def _tolerance(a: np.ndarray, b: np.ndarray) -> float:
    return 1e-12 * (float(np.abs(a).sum() * np.abs(b).max()) + 1e-300)


def two_opt_batch(
    a: np.ndarray, b: np.ndarray, starts: np.ndarray, *, max_steps: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """Best-improvement swaps from every start at once until none gains.

    Parameters
    ----------
    a, b : (n, n) symmetric matrices ; starts : (p, n) starting permutations.

    Returns
    -------
    perms : ndarray  # (p, n) local optima: item i of ``a`` ↔ item perms[:, i] of ``b``
    objective : ndarray  # (p,) their objectives
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    perms = np.array(starts, dtype=np.int64, copy=True)
    p, n = perms.shape
    iu, ju = np.triu_indices(n, 1)
    tol = _tolerance(a, b)
    active = np.arange(p)  # the searches a swap still improves; the rest stay where they are
    for _ in range(max_steps):
        at = perms[active]
        gains = swap_gains(a, b[at[:, :, None], at[:, None, :]])[:, iu, ju]
        best = gains.argmax(1)
        moving = np.flatnonzero(gains[np.arange(len(active)), best] > tol)
        if len(moving) == 0:
            break
        rows, r, s = active[moving], iu[best[moving]], ju[best[moving]]
        perms[rows, r], perms[rows, s] = perms[rows, s], perms[rows, r]
        active = rows
    return perms, qap_objective(a, b, perms)


def two_opt(a: np.ndarray, b: np.ndarray, perm: np.ndarray, max_steps: int = 100_000) -> np.ndarray:
    """Best-improvement swaps from one start, ``M = a · b[π][:, π]`` updated in O(n²) per swap
    # (n,) → (n,) local optimum (or where ``max_steps`` stops it)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    perm = np.array(perm, dtype=np.int64, copy=True)
    tol = _tolerance(a, b)
    c = b[np.ix_(perm, perm)]
    m = a @ c
    for _ in range(max_steps):
        gain = swap_gains(a, c[None], m[None])[0]
        np.fill_diagonal(gain, 0.0)
        r, s = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[r, s] <= tol:
            break
        perm[r], perm[s] = perm[s], perm[r]
        rs = np.array([r, s])
        new = c.copy()
        new[rs] = new[rs[::-1]]
        new[:, rs] = new[:, rs[::-1]]
        diff = new - c
        m += a[:, rs] @ diff[rs]  # the two changed rows
        cols = diff[:, rs].copy()
        cols[rs] = 0.0  # their entries are already counted
        m[:, rs] += a @ cols
        c = new
    return perm


def qap_search(
    a: np.ndarray, b: np.ndarray, n_restarts: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Best of ``n_restarts`` 2-opt searches from random permutations (maximisation).

    Parameters
    ----------
    a, b : ndarray  # (n, n) symmetric; pad the smaller problem with zeros when sizes differ.
    n_restarts : number of random starting permutations (at least 1).
    rng : source of the starting permutations.

    Returns
    -------
    perm : ndarray  # (n,) int64, item i of ``a`` ↔ item perm[i] of ``b``
    value : float  # its objective
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"a and b must be square and of one shape, got {a.shape} and {b.shape}")
    starts = np.stack([rng.permutation(len(a)) for _ in range(max(int(n_restarts), 1))])
    if len(a) <= 64:
        perms, values = two_opt_batch(a, b, starts)
    else:
        perms = np.stack([two_opt(a, b, s) for s in starts])
        values = qap_objective(a, b, perms)
    best = int(np.argmax(values))
    return perms[best], float(values[best])
