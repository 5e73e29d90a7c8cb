"""Nearest rows by inner product: the ``k`` largest entries of each row of a similarity block,
and the mean of the values of each query's ``k`` nearest rows.

Both the refinement of :func:`flowmatch.translate` and the embedding peers in ``baselines/``
spend most of their time here, so one selection serves them all. PyTorch's ``topk`` keeps a
heap per row; on short rows NumPy's ``argpartition`` (introselect) is faster. Measured on one
CPU thread, 1,000 rows, k = 50: 2,000 columns 21.6 → 10.2 ms, 3,000 columns 31.2 → 13.7 ms,
5,000 columns 26.9 → 23.4 ms, 7,000 columns 32.5 → 33.0 ms; with k = 10 on 2,000 columns
``topk`` is the faster (6.6 against 10.3 ms). Hence :data:`PARTITION_MAX_COLUMNS` and
:data:`PARTITION_MIN_K`.

Rows much longer than ``k`` go faster still through group maxima (:func:`_grouped_top`): the
row's ``k`` largest entries lie in the ``k`` groups of columns with the largest maxima, so
only those groups' entries are partitioned. On blocks of 2^21 similarities (at least 128
rows), one thread, ``topk`` / ``argpartition`` / group maxima: 5,000 columns, k = 50: 10.2 /
4.1 / 3.1 ms; 20,000 columns, k = 50: 7.0 / 4.6 / 1.9 ms; k = 10: 4.8 / 4.8 / 1.3 ms; 50,000
columns, k = 50: 15.1 / 16.1 / 3.2 ms. Where a row is shorter than about 100 ``k`` (2,000
columns, k = 50: 4.9 against 5.2 ms) ``argpartition`` stays the faster: hence
:data:`GROUPED_MIN_RATIO`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BLOCK_ENTRIES",
    "CACHE_MAX_ROUNDS",
    "GROUPED_MIN_RATIO",
    "NearestCache",
    "PARTITION_MAX_COLUMNS",
    "PARTITION_MIN_K",
    "mean_of_nearest",
    "top_indices",
    "worth_caching",
]

BLOCK_ENTRIES = 1 << 21
"""Entries of one similarity block of :func:`mean_of_nearest` (8 MiB of float32)."""

PARTITION_MAX_COLUMNS = 5_000
"""Rows at most this long are selected by NumPy's ``argpartition`` (CPU tensors only)."""

PARTITION_MIN_K = 20
"""... when at least this many entries are kept; fewer are left to ``topk``."""

GROUPED_MIN_RATIO = 100
"""Rows at least this many times ``k`` long are selected through group maxima
(:func:`_grouped_top`; CPU tensors only)."""

CACHE_MAX_ROUNDS = 5
"""A :class:`NearestCache` pays only where a query row comes back at least this often (in
rounds, on average: ``n_queries <= CACHE_MAX_ROUNDS * batch``; :func:`worth_caching`). In
translate's rounds (1,000 rows a round) about 85% of the rows passed at 2,000 rows, 70% at
4,000, 57% at 5,000 and 6–22% at 20,000, where the cache's tries made a run slower (WordNet,
20,000 rows, seed 1: refining and selecting 99.8 s with the cache against 83.3 s without)."""


def worth_caching(base: Tensor, n_queries: int, batch: int) -> bool:
    """Whether :class:`NearestCache` may pay for queries drawn ``batch`` at a time out of
    ``n_queries`` rows, searched against ``base``: on the CPU, and each row coming back at
    least every :data:`CACHE_MAX_ROUNDS` rounds."""
    return base.device.type == "cpu" and n_queries <= CACHE_MAX_ROUNDS * batch


def top_indices(scores: Tensor, k: int) -> Tensor:
    """Column indices of the ``k`` largest entries of each row, in no particular order
    # (n, m) → (n, min(k, m)) int64.

    The same set as ``scores.topk(k, dim=1).indices`` (ties aside): on the CPU by
    :func:`_grouped_top` for rows at least :data:`GROUPED_MIN_RATIO` times ``k`` long, else
    by whichever of ``argpartition`` and ``topk`` is faster for the row length (module
    docstring)."""
    m = scores.shape[1]
    k = min(int(k), m)
    if scores.device.type == "cpu" and 0 < k and m >= GROUPED_MIN_RATIO * k:
        return torch.from_numpy(_grouped_top(scores.detach().numpy(), k))
    if scores.device.type == "cpu" and PARTITION_MIN_K <= k < m <= PARTITION_MAX_COLUMNS:
        block = scores.detach().numpy()
        return torch.from_numpy(np.argpartition(block, m - k, axis=1)[:, m - k :])
    return scores.topk(k, dim=1, sorted=False).indices


def _grouped_top(block: np.ndarray, k: int) -> np.ndarray:
    """The columns of the ``k`` largest entries of each row  # (n, m) → (n, k) int64, in no
    order, through group maxima.

    The leading ``G·g`` columns form ``G`` groups of ``g ≈ √(m/k)/2`` (group ``j``: columns
    ``j, j + G, j + 2G, …``, so that the maxima are an elementwise maximum of ``g`` contiguous
    slices). The ``k`` groups with the largest maxima, and the ``m − G·g`` trailing columns,
    hold the row's ``k`` largest entries: an entry of another group is at most its group's
    maximum, which is at most the ``k``-th largest maximum, and ``k`` entries reach that (ties
    aside). Only those ``k·g`` candidates are partitioned (times in the module docstring)."""
    n, m = block.shape
    g = max(int(np.sqrt(m / k) / 2), 1)
    groups = m // g
    leading = block[:, : groups * g].reshape(n, g, groups)
    best = np.argpartition(leading.max(1), groups - k, axis=1)[:, groups - k :]  # (n, k)
    cols = (best[:, None, :] + groups * np.arange(g)[None, :, None]).reshape(n, -1)
    if groups * g < m:
        tail = np.broadcast_to(np.arange(groups * g, m), (n, m - groups * g))
        cols = np.concatenate([cols, tail], axis=1)
    values = np.take_along_axis(block, cols, axis=1)
    cut = values.shape[1] - k
    return np.take_along_axis(cols, np.argpartition(values, cut, axis=1)[:, cut:], axis=1)


def mean_of_nearest(
    query: Tensor, base: Tensor, values: Tensor, k: int, chunk: int | None = None
) -> Tensor:
    """For each query row, the mean of ``values`` over its k most similar ``base`` rows (dot
    product)  # (n, q), (m, q), (m, p) → (n, p).

    ``chunk`` query rows are compared at a time; by default as many as keep a similarity block
    within :data:`BLOCK_ENTRIES` (at least 128). On long base sets the selection then reads a
    block that stays in cache: 1,000 queries against 20,000 rows of 32 coordinates took 78 ms
    in blocks of 128 rows against 133 ms in one block of all 1,000 (50,000 rows: 226 against
    320 ms; one CPU thread). The means are ``embedding_bag``'s: on 1,000 queries, k = 50,
    2,000 rows of 32 coordinates, 0.2 ms against 1.7 ms for a sparse product (308
    coordinates: 1.6 against 3.2 ms)."""
    k = min(k, len(base))
    return _means_by(lambda sim, _: top_indices(sim, k), query, base, values, chunk)


def _means_by(
    select: Callable[[Tensor, slice], Tensor],
    query: Tensor,
    base: Tensor,
    values: Tensor,
    chunk: int | None,
) -> Tensor:
    """The means of :func:`mean_of_nearest`, with each block's neighbours from
    ``select(similarities (c, m), the block's query rows as a slice) → (c, k)``."""
    chunk = chunk or max(128, BLOCK_ENTRIES // max(len(base), 1))
    out = torch.empty(len(query), values.shape[1], dtype=values.dtype, device=values.device)
    for s in range(0, len(query), chunk):
        rows = slice(s, s + chunk)
        nb = select(query[rows] @ base.T, rows)
        out[rows] = F.embedding_bag(nb.to(values.device), values, mode="mean")
    return out


class NearestCache:
    """The exact ``k`` nearest rows of a fixed ``base`` for queries that recur, as in the rounds
    of a refinement that draws batches of the same query rows while the map moves a little.

    Each query row (by its index among ``n_queries``) keeps the ``spare`` base rows it was
    nearest to when it was last fully searched (its candidates). At its next visit only the
    candidates' new similarities are ranked: their ``k``-th largest, ``t``, is a threshold, and
    when exactly ``k`` entries of the row's full similarity row reach ``t`` (one comparison
    pass, no selection), the ``k`` best candidates are the ``k`` nearest of all base rows. Rows
    that fail the test (ties at ``t`` included) and rows seen for the first time are searched
    in full and their candidates renewed. The result is therefore always
    :func:`top_indices`'s set; only the cost changes. Replaying translate's rounds (one
    thread, 1,000 queries a round): fortunes, 2,000 rows, 32 coordinates, 90% of the rows pass
    and a round's :meth:`means` take 5.1 against 7.0 ms for :func:`mean_of_nearest`; WordNet,
    5,000 rows, 59% pass, 13.3 against 21.9 ms. Where the map moves further between a row's
    visits (more coordinates, or more A rows, each drawn less often) fewer pass, hence
    :attr:`useful`.

    Parameters
    ----------
    base : Tensor  # (m, p) the rows searched (CPU; on other devices every row is searched).
    k : int ; n_queries : int  # the number of distinct query rows (indices 0 … n_queries − 1).
    spare : int  # candidates kept per query row (clipped to m).
    """

    def __init__(self, base: Tensor, k: int, n_queries: int, spare: int = 100) -> None:
        self.base = base
        self.k = min(int(k), len(base))
        self.spare = min(max(int(spare), self.k), len(base))
        self._candidates = np.zeros((n_queries, self.spare), dtype=np.int64)
        self._known = np.zeros(n_queries, dtype=bool)
        self.kept = 0  # query rows answered from their candidates
        self.searched = 0  # query rows searched in full
        self._tried = 0  # query rows whose candidates were tried

    @property
    def useful(self) -> bool:
        """False once, over at least ``n_queries`` tries, fewer than half the query rows were
        answered from their candidates: each failed try costs a comparison pass on top of the
        full search, so from then on every row is searched in full. (WordNet, 5,000 rows:
        about 60% pass at 32 coordinates, where a round's selection took 13 against 22 ms;
        30–40% at 128–256, where it was slower than the full search.)"""
        return self._tried < len(self._known) or 2 * self.kept >= self._tried

    def nearest(self, sim: Tensor, ids: np.ndarray) -> Tensor:
        """Indices of the ``k`` largest entries of each row of ``sim``, the similarities of the
        query rows ``ids`` to every base row  # (c, m), (c,) → (c, k) int64, in no order."""
        if sim.device.type != "cpu" or self.spare <= self.k or not self.useful:
            return top_indices(sim, self.k)
        block = sim.detach().numpy()
        out = np.empty((len(ids), self.k), dtype=np.int64)
        done = np.zeros(len(ids), dtype=bool)
        known = np.flatnonzero(self._known[ids])
        if len(known):
            part = block if len(known) == len(block) else block[known]
            cand = self._candidates[ids[known]]
            exact = self._pick(part, cand, out, known, check=True)
            done[known[exact]] = True
            self.kept += int(exact.sum())
            self._tried += len(known)
        redo = np.flatnonzero(~done)
        if len(redo):
            part = block if len(redo) == len(block) else block[redo]
            cand = top_indices(torch.from_numpy(part), self.spare).numpy()
            self._pick(part, cand, out, redo, check=False)
            self._candidates[ids[redo]] = cand
            self._known[ids[redo]] = True
            self.searched += len(redo)
        return torch.from_numpy(out)

    def _pick(
        self, part: np.ndarray, cand: np.ndarray, out: np.ndarray, rows: np.ndarray, check: bool
    ) -> np.ndarray:
        """Write into ``out[rows]`` the ``k`` best of each row's candidates  # part (r, m),
        cand (r, spare); returns which rows were written (r,) bool: those whose ``k``-th best
        candidate score is reached by exactly ``k`` entries of the whole row (``check``) or,
        without ``check``, by exactly ``k`` candidates (always so unless scores tie)."""
        scores = torch.from_numpy(part).gather(1, torch.from_numpy(cand)).numpy()
        kth = np.partition(scores, self.spare - self.k, axis=1)[:, self.spare - self.k]
        keep = scores >= kth[:, None]  # exactly k per row unless scores tie at the k-th
        whole = _count_at_least(part, kth) if check else keep.sum(1)
        ok = whole == self.k
        if not check and not ok.all():  # ties at the k-th among the candidates: any k of them
            keep[~ok] = False
            bad = np.flatnonzero(~ok)
            cut = self.spare - self.k
            keep[bad[:, None], np.argpartition(scores[bad], cut, axis=1)[:, cut:]] = True
            ok[:] = True
        out[rows[ok]] = cand[ok][keep[ok]].reshape(-1, self.k)
        return ok

    def means(
        self, query: Tensor, ids: np.ndarray, values: Tensor, chunk: int | None = None
    ) -> Tensor:
        """For each query row, the mean of ``values`` over its ``k`` nearest base rows, as
        :func:`mean_of_nearest` (``chunk`` likewise)  # (c, p), (c,), (m, q) → (c, q); ``ids``
        are the query rows' indices (0 … n_queries − 1), which key their candidates."""
        ids = np.asarray(ids)
        return _means_by(
            lambda sim, rows: self.nearest(sim, ids[rows]), query, self.base, values, chunk
        )


def _count_at_least(block: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """How many entries of each row reach its threshold  # (n, m), (n,) → (n,) int64.

    The comparison's 0/1 bytes are read eight at a time as 64-bit words and the words summed:
    each byte of the sum then counts one of the eight columns' hits, as long as no more than
    255 words are summed at once. That is about six times faster than NumPy's ``sum`` over the
    bytes (1,000 × 2,000: 0.13 against 0.8 ms, beside 0.7 ms for the comparison)."""
    n, m = block.shape
    mask = np.zeros((n, -(-m // 8) * 8), dtype=bool)  # zero padding to whole words
    np.greater_equal(block, kth[:, None], out=mask[:, :m])
    words = mask.view(np.uint64)
    total = np.zeros(n, dtype=np.int64)
    for s in range(0, words.shape[1], 255):
        lanes = words[:, s : s + 255].sum(1, dtype=np.uint64)
        total += lanes.view(np.uint8).reshape(n, 8).sum(1, dtype=np.int64)
    return total
