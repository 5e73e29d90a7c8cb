"""Many k-means runs at once, as batched tensor operations.

The anchors of :func:`flowmatch.translate` pool dozens of independent k-means runs of a few
clusters each (:mod:`flowmatch.starts`). One scikit-learn fit per run spends most of its time
outside the arithmetic at these sizes (thousands of rows, tens of clusters); here every run of
a batch takes the same steps together: greedy k-means++ seeding (Arthur and Vassilvitskii
2007, with ``2 + ln k`` candidates per step as in scikit-learn) and Lloyd iterations until
every run's centres move less than ``tol`` times the mean variance of its rows.

The runs either share one set of rows (``x`` of shape (m, p)) or each have their own
(``x`` of shape (r, m, p)). Distances come from the expansion
``|x - c|² = |x|² - 2 x·c + |c|²``, in float32 unless the rows are float64, on the rows'
device; the random draws come from ``generator`` (a CPU generator) and move there.

References
----------
Arthur, Vassilvitskii. "k-means++: the advantages of careful seeding", SODA 2007.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowmatch.validation import check_finite

__all__ = ["batched_kmeans", "kmeans_plusplus"]


def _check(x: Tensor, k: int, n_runs: int) -> Tensor:
    """``x`` as a float tensor of shape (m, p) or (r, m, p), validated against ``k``."""
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.float()
    if x.dim() not in (2, 3):
        raise ValueError(f"rows must have shape (m, p) or (runs, m, p), got {tuple(x.shape)}")
    if x.dim() == 3 and x.shape[0] != n_runs:
        raise ValueError(f"rows hold {x.shape[0]} runs' rows, but n_runs={n_runs}")
    if not 1 <= k <= x.shape[-2]:
        raise ValueError(f"k={k} clusters needs 1 ≤ k ≤ rows ({x.shape[-2]})")
    check_finite(x, "rows")
    return x


def _cross(c: Tensor, x: Tensor) -> Tensor:
    """``c @ x.T`` per run  # (r, j, p), (m, p) or (r, m, p) → (r, j, m)."""
    return c @ x.transpose(-1, -2)


def _sq_norms(x: Tensor, n_runs: int) -> Tensor:
    """Squared row norms per run  # → (r, m)."""
    sq = (x * x).sum(-1)
    return sq.expand(n_runs, -1) if sq.dim() == 1 else sq


def _rows(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of each run  # (m, p) or (r, m, p), (r, j) → (r, j, p)."""
    if x.dim() == 2:
        return x[idx]
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def kmeans_plusplus(
    x: Tensor, k: int, *, n_runs: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    """Greedy k-means++ seeds for ``n_runs`` runs  # (m, p) or (r, m, p) → (r, k, p).

    The first centre is a uniform row; each next one is the best (least total squared distance
    to the nearest centre) of ``2 + int(ln k)`` rows drawn with probability proportional to
    their squared distance to the nearest centre so far.
    """
    x = _check(x, k, n_runs)
    m = x.shape[-2]
    runs = torch.arange(n_runs, device=x.device)
    sq = _sq_norms(x, n_runs)
    first = torch.randint(m, (n_runs, 1), generator=generator).to(x.device)
    centres = [_rows(x, first)]
    closest = (sq - 2 * _cross(centres[0], x)[:, 0] + sq[runs, first[:, 0]][:, None]).clamp_min(0)
    trials = 2 + int(math.log(k))
    for _ in range(1, k):
        weights = closest + (closest.sum(1, keepdim=True) <= 0)  # all rows on centres: uniform
        cand = torch.multinomial(weights.cpu(), trials, replacement=True, generator=generator)
        cand = cand.to(x.device)
        dist = sq[:, None, :] - 2 * _cross(_rows(x, cand), x) + torch.gather(sq, 1, cand)[..., None]
        merged = torch.minimum(closest[:, None, :], dist.clamp_min(0))  # (r, trials, m)
        best = merged.sum(-1).argmin(1)  # (r,)
        closest = merged[runs, best]
        centres.append(_rows(x, cand[runs, best][:, None]))
    return torch.cat(centres, 1)


def batched_kmeans(
    x: Tensor,
    k: int,
    *,
    n_runs: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Centres of ``n_runs`` k-means runs, each seeded by :func:`kmeans_plusplus`
    # (m, p) shared rows or (r, m, p) each run's own → (r, k, p).

    A run stops once its total squared centre shift in one Lloyd iteration is at most ``tol``
    times the mean variance of its rows' coordinates (scikit-learn's criterion); the rest go on,
    for at most ``max_iter`` iterations. A cluster that loses all its rows keeps its centre.
    """
    x = _check(x, k, n_runs)
    centres = kmeans_plusplus(x, k, n_runs=n_runs, generator=generator)
    limit = tol * x.var(-2, unbiased=False).mean(-1).expand(n_runs)  # (r,)
    active = torch.arange(n_runs, device=x.device)  # the runs still moving
    for _ in range(max_iter):
        current = centres[active]
        rows = x if x.dim() == 2 or len(active) == n_runs else x[active]  # no copy while all move
        new = _lloyd_step(rows, current)
        shift = ((new - current) ** 2).sum((1, 2))
        centres[active] = new
        active = active[shift > limit[active]]
        if not len(active):
            break
    return centres


def _lloyd_step(x: Tensor, centres: Tensor) -> Tensor:
    """One Lloyd iteration: every row to its nearest centre, every centre to the mean of its
    rows (a centre without rows stays)  # (m, p) or (r, m, p), (r, k, p) → (r, k, p).

    Each run's sums come from ``index_add_`` over its rows: a dense (k, m) one-hot product
    spends k times the additions (30 runs of 20 centres on 2,000 × 308 rows, one CPU thread:
    3.3 against 5.7 ms)."""
    r, k, p = centres.shape
    half_sq = 0.5 * (centres * centres).sum(-1, keepdim=True)  # (r, k, 1)
    # |c|²/2 − x·c, the squared distance less |x|², halved: (r, k, m), the subtraction fused
    # into the product (30 runs of 20 centres, 2,000 × 308 rows: 7.7 against 10.6 ms)
    if x.dim() == 2:  # one product for every run
        gap = torch.addmm(half_sq.reshape(r * k, 1), centres.reshape(r * k, p), x.T, alpha=-1.0)
    else:
        gap = torch.baddbmm(half_sq, centres, x.transpose(1, 2), alpha=-1.0)
    labels = gap.reshape(r, k, -1).min(1).indices  # (r, m); faster than argmin
    sums = torch.zeros_like(centres)
    for run in range(r):
        sums[run].index_add_(0, labels[run], x if x.dim() == 2 else x[run])
    counts = torch.zeros(r, k, dtype=x.dtype, device=x.device)
    counts.scatter_add_(1, labels, torch.ones(labels.shape, dtype=x.dtype, device=x.device))
    counts = counts[..., None]  # (r, k, 1)
    return torch.where(counts > 0, sums / counts.clamp_min(1), centres)
