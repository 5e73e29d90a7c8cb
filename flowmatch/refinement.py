"""Refine an orthogonal map between two sides' map coordinates without pairs, and score it.

:func:`refine_nearest` is iterative closest points with averaged partners: each round maps a
fresh batch of A rows, takes as partner of each the mean of its ``k`` nearest B rows (cosine),
fits orthogonal Procrustes and moves the map half-way there (mini-vec2vec's refinement, Dar
2025); the average over ``k`` neighbours smooths the partner estimates, and the half steps
average rounds. :func:`refine_clusters` is mini-vec2vec's closing cluster correction, and
:func:`refine_mutual` pairs rows that are each other's best partner by CSLS and fits their
Procrustes map (the refinement of Conneau et al. 2018).

:func:`alignment_score` is the selection criterion among candidate maps: the mean CSLS of each
mapped A row's best B partner (Conneau et al. 2018), ``2·cos(Ra, b) − r_A(b) − r_B(Ra)``, where
``r`` is the mean similarity to the k nearest rows of the other side. Plain nearest-neighbour
similarity rewards maps that crowd A's rows into B's densest regions (hubs); CSLS subtracts
exactly that, and mutual nearest neighbours are reported beside it.

References
----------
Dar. "mini-vec2vec: scaling universal geometry alignment with linear transformations",
arXiv:2510.02348, 2025.
Conneau, Lample, Ranzato, Denoyer, Jégou. "Word translation without parallel data", ICLR 2018.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor
from tqdm.auto import tqdm

from flowmatch.alignment import fit_orthogonal, polar
from flowmatch.kmeans import kmeans_plusplus
from flowmatch.neighbours import (
    GROUPED_MIN_RATIO,
    NearestCache,
    mean_of_nearest,
    top_indices,
    worth_caching,
)
from flowmatch.starts import normalise_rows, subsample
from flowmatch.validation import check_real

__all__ = [
    "AlignmentScore",
    "alignment_score",
    "csls_lead",
    "mutual_pairs",
    "refine_clusters",
    "refine_mutual",
    "refine_nearest",
]


def _unit_sample(u: Tensor, m: int, rng: np.random.Generator) -> Tensor:
    """A seeded draw of at most ``m`` rows of ``u``, scaled to unit length  # (n, p) → (≤ m, p);
    rows are drawn first and normalised after, so all n are never normalised."""
    return normalise_rows(torch.as_tensor(u)[torch.as_tensor(subsample(len(u), m, rng))])


def refine_nearest(
    u_a: Tensor,
    u_b: Tensor,
    rotation: Tensor,
    *,
    n_rounds: int = 100,
    batch: int = 1000,
    k: int = 50,
    smoothing: float = 0.5,
    max_targets: int = 20_000,
    orthogonal: bool = False,
    tol: float | None = None,
    window: int = 10,
    trace: list[float] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Tensor:
    """Nearest-neighbour-mean refinement of ``rotation``  # (p_b, p_a) → (p_b, p_a), float64.

    Parameters
    ----------
    u_a : Tensor  # (n_a, p_a) ; u_b : Tensor  # (n_b, p_b) map coordinates (unpaired).
    n_rounds : refinement rounds, each on ``batch`` fresh A rows against at most
        ``max_targets`` B rows (so a round costs O(batch · max_targets · p), whatever n).
    k : B neighbours averaged into each partner.
    smoothing : weight of the previous map in each step (the new fit gets ``1 − smoothing``).
    orthogonal : project each average back onto the orthogonal matrices. Without it (the
        default, as in mini-vec2vec) the map is an average of rotations fitted to different
        batches, which shrinks the directions the batches disagree on: the noisily determined
        ones weigh less in every mapped row.
    tol, window : stop early once the selection criterion stops rising: every ``window`` rounds
        the map's CSLS (:func:`alignment_score` on a fixed subsample of 1,000 A rows) is
        computed, and the refinement ends when it has gained less than ``tol`` since the last
        check and the map has stopped drifting (its last two moves between checks no longer
        point the same way; judged only when rounds draw batches, :func:`_drifting`). A map
        still being carried towards the right optimum can gain little CSLS per check for
        many checks while its retrieval keeps rising (None: always ``n_rounds``). The CSLS is
        computed only where it can stop the refinement: not at a check where the map drifts,
        and at the check before only when the next one needs it. The refinement stops where it
        did when every check computed it; translate computes it at about half the checks
        (fortunes, 2,000 rows, seed 1: 51 of 105, most maps drift at the first width).
    trace : if a list, each round's fit is appended to it (its length is the rounds run).
    """
    check_real("smoothing", smoothing, 0.0, 1.0, high_open=True)
    rng = np.random.default_rng(seed)
    xa, xb = normalise_rows(u_a), normalise_rows(u_b)
    rot = torch.as_tensor(rotation, dtype=torch.float64)
    checked = [rot]  # the map at the last checks (and at the start)
    last: float | None = -float("inf")  # the CSLS at the last check (None: not computed)
    resampled = len(xa) > batch or len(xb) > max_targets  # else every round is the same step
    # every round searches all of B when it fits: then A rows keep their nearest B rows
    fixed = len(xb) <= max_targets and worth_caching(xb, len(xa), batch)
    cache = NearestCache(xb, k, len(xa)) if fixed else None
    for done in tqdm(range(1, n_rounds + 1), desc="refine", disable=not progress, leave=False):
        ids = subsample(len(xa), batch, rng)
        src = xa[torch.as_tensor(ids)]
        mapped = src @ rot.float().T
        if cache is not None:
            dst = cache.means(mapped, ids, xb)
        else:
            base = xb[torch.as_tensor(subsample(len(xb), max_targets, rng))]
            dst = mean_of_nearest(mapped, base, base, k)
        if trace is not None:
            trace.append(float((normalise_rows(mapped) * normalise_rows(dst)).sum(1).mean()))
        fit = polar(dst.double().T @ src.double())  # fit_orthogonal(src, dst), unchecked
        rot = smoothing * rot + (1.0 - smoothing) * fit
        rot = polar(rot) if orthogonal else rot
        if tol is not None and done % window == 0:
            checked = [*checked[-2:], rot]
            if resampled and _drifting(checked):  # no stop, whatever the CSLS gained
                last = None  # so the CSLS is computed only when the next check needs it
                continue
            if last is None:
                last = _check_score(u_a, u_b, checked[-2])
            score = _check_score(u_a, u_b, rot)
            if score - last < tol:
                break
            last = score
    return rot


def _check_score(u_a: Tensor, u_b: Tensor, rotation: Tensor) -> float:
    """The CSLS :func:`refine_nearest`'s early stop compares: :func:`alignment_score` on its
    fixed subsample of 1,000 A rows."""
    return alignment_score(u_a, u_b, rotation, n_rows=1000).csls


def _drifting(maps: list[Tensor]) -> bool:
    """Whether the map still moves one way: the last two steps between checks,
    ``R_t − R_{t−w}`` and ``R_{t−w} − R_{t−2w}``, point the same way (positive cosine).

    Rounds that only resample batches around a fixed point move the map back and forth, and
    two such steps have cosine near −1/2 (that of a stationary process' successive
    increments); a map that is still being carried towards another optimum moves on, and its
    steps agree. ``maps``: the map at the last checks, oldest first (fewer than three: False).
    Only meaningful when rounds draw batches: when every round sees all rows, the rounds are
    one deterministic iteration whose steps agree however little it still moves.
    """
    if len(maps) < 3:
        return False
    step, before = maps[2] - maps[1], maps[1] - maps[0]
    norm = float(step.norm() * before.norm())
    return norm > 0 and float((step * before).sum()) / norm > 0.0


def refine_clusters(
    u_a: Tensor,
    u_b: Tensor,
    rotation: Tensor,
    *,
    n_clusters: int = 500,
    smoothing: float = 0.5,
    orthogonal: bool = False,
    max_rows: int = 20_000,
    seed: int = 0,
) -> Tensor:
    """One cluster correction  # (p_b, p_a) → (p_b, p_a), float64.

    k-means on A's unit rows; k-means on B's started from A's centroids carried over by the map,
    so that cluster i of B grows where cluster i of A lands; Procrustes between the two sets of
    centroids, averaged with the map as in :func:`refine_nearest` (``orthogonal`` likewise).
    ``n_clusters`` is capped at a tenth of the smaller side, so that every centroid averages
    several rows. Each side's k-means sees at most ``max_rows`` rows (a seeded subsample), so
    the cost does not grow with n. A's k-means starts from the seeds of
    :func:`~flowmatch.kmeans.kmeans_plusplus`: the same greedy k-means++ as scikit-learn's,
    whose own seeding computes float32 rows' distances upcast to float64 in small blocks (500
    clusters of 20,000 rows, one thread: 5.9 against 2.2 s for the whole fit).
    """
    rng = np.random.default_rng(seed)
    xa, xb = _unit_sample(u_a, max_rows, rng).numpy(), _unit_sample(u_b, max_rows, rng).numpy()
    k = int(min(n_clusters, len(xa) // 10, len(xb) // 10))
    rot = torch.as_tensor(rotation, dtype=torch.float64)
    if k < 2:
        return rot
    seeds = kmeans_plusplus(torch.from_numpy(xa), k, generator=torch.Generator().manual_seed(seed))
    ca = KMeans(k, n_init=1, init=seeds[0].numpy()).fit(xa).cluster_centers_
    init = ca @ rot.numpy().T
    cb = KMeans(k, n_init=1, init=init, max_iter=100).fit(xb).cluster_centers_
    rot = smoothing * rot + (1.0 - smoothing) * fit_orthogonal(ca, cb)
    return polar(rot) if orthogonal else rot


class _Blocks:
    """Two reused buffers for blocks of similarities: the block and a scratch copy. On the
    CPU, writing into memory already touched is cheaper than a fresh allocation (a 1,024 ×
    10,000 float32 product on one thread: 39 against 56 ms; an in-place subtraction 2 against
    17 ms)."""

    def __init__(self, rows: int, cols: int, like: Tensor) -> None:
        self.block = torch.empty(rows, cols, dtype=like.dtype, device=like.device)
        self.scratch = torch.empty_like(self.block)

    def similarities(self, query: Tensor, base: Tensor) -> Tensor:
        """``query @ base.T`` written into the block  # (c, p), (m, p) → (c, m), c ≤ rows."""
        return torch.mm(query, base.T, out=self.block[: len(query)])


def _radii(query: Tensor, base: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Each query row's mean similarity to its ``k`` most similar base rows, its CSLS radius
    # (n, p), (m, p) → (n,); ``chunk`` query rows at a time."""
    blocks = _Blocks(min(chunk, len(query)), len(base), query)
    return torch.cat(
        [
            _top_mean(blocks.similarities(query[s : s + chunk], base), k, blocks.scratch)
            for s in range(0, len(query), chunk)
        ]
    )


def mutual_pairs(
    u_a: Tensor, u_b: Tensor, rotation: Tensor, *, k: int = 10, chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """The rows that are each other's best partner by CSLS (Conneau et al. 2018) under
    ``rotation`` (p_b, p_a): ``(idx_a (m,), idx_b (m,))``.

    Two passes over the similarities, ``chunk`` rows at a time: A's radii; then, per block of
    B rows, their radii, each B row's best A row, and each A row's best B row so far (a
    running maximum over the blocks). Scores are compared as ``cos − r/2``, which ranks
    exactly as ``2·cos − r`` (halving is exact in floating point)."""
    ma = normalise_rows(normalise_rows(u_a) @ torch.as_tensor(rotation).float().T)
    xb = normalise_rows(u_b)
    half_r_a = _radii(ma, xb, k, chunk) / 2
    blocks = _Blocks(min(chunk, len(xb)), len(ma), ma)
    back = torch.empty(len(xb), dtype=torch.long, device=ma.device)
    best = torch.full((len(ma),), -float("inf"), dtype=ma.dtype, device=ma.device)
    forward = torch.zeros(len(ma), dtype=torch.long, device=ma.device)
    for s in range(0, len(xb), chunk):
        sim = blocks.similarities(xb[s : s + chunk], ma)  # (c, n_a)
        half_r_b = _top_mean(sim, k, blocks.scratch) / 2
        by_a = torch.sub(sim, half_r_a, out=blocks.scratch[: len(sim)])
        back[s : s + len(sim)] = _row_best(by_a)[1]
        value, row = sim.sub_(half_r_b[:, None]).max(0)
        better = value > best
        best[better], forward[better] = value[better], row[better] + s
    idx_a = torch.nonzero(back[forward] == torch.arange(len(ma), device=ma.device)).squeeze(1)
    return idx_a, forward[idx_a]


def refine_mutual(
    u_a: Tensor,
    u_b: Tensor,
    rotation: Tensor,
    *,
    n_iter: int = 3,
    k: int = 10,
    smoothing: float = 0.5,
    orthogonal: bool = False,
    max_rows: int = 10_000,
    seed: int = 0,
) -> Tensor:
    """Mutual-nearest-neighbour Procrustes, averaged with the map  # (p_b, p_a) → (p_b, p_a),
    float64.

    ``n_iter`` times, the rows that are each other's best partner by CSLS under the current
    fit (:func:`mutual_pairs`) are paired and their orthogonal Procrustes map becomes the next
    fit: the refinement of unsupervised word translation (Conneau et al. 2018). Each pair holds
    two real rows, where :func:`refine_nearest` pairs a row with the mean of its B
    neighbours. The result is ``smoothing · rotation + (1 − smoothing) · fit``: the averaged map
    of :func:`refine_nearest` keeps the noisily determined directions small, which the
    orthogonal fit alone undoes (WordNet, 1,000 rows, seed 0: top-1 0.435 → 0.332 with the fit
    alone, 0.440 averaged; README); ``orthogonal`` projects the average back onto the orthogonal
    matrices, as in :func:`refine_nearest`. Each side contributes a seeded subsample of at most
    ``max_rows`` rows.
    """
    check_real("smoothing", smoothing, 0.0, 1.0, high_open=True)
    rng = np.random.default_rng(seed)
    xa, xb = _unit_sample(u_a, max_rows, rng), _unit_sample(u_b, max_rows, rng)
    rot = torch.as_tensor(rotation, dtype=torch.float64)
    fit = rot
    for _ in range(n_iter):
        idx_a, idx_b = mutual_pairs(xa, xb, fit, k=k)
        if len(idx_a) < 2:
            break
        fit = fit_orthogonal(xa[idx_a], xb[idx_b])
    rot = smoothing * rot + (1.0 - smoothing) * fit
    return polar(rot) if orthogonal else rot


@dataclass(frozen=True)
class AlignmentScore:
    """How well a map's image of A's rows matches B's rows (higher is better).

    Attributes
    ----------
    csls : float  # mean CSLS of each mapped A row's best B partner (the selection criterion)
    nearest : float  # mean cosine of each mapped A row to its nearest B row
    mutual : float  # fraction of mapped A rows whose nearest B row has them as nearest
    """

    csls: float
    nearest: float
    mutual: float


def _top_mean(sim: Tensor, k: int, scratch: Tensor | None = None) -> Tensor:
    """Mean of the ``k`` largest entries of each row of a 2-D block  # (n, m) → (n,).
    On the CPU, for rows at least ``GROUPED_MIN_RATIO · k`` long, the entries of
    :func:`~flowmatch.neighbours.top_indices`; on shorter ones NumPy's ``partition`` on the
    rows (about twice as fast as ``topk`` for these block sizes), in ``scratch`` (at least (n, m),
    float32, overwritten) when given instead of a fresh copy."""
    k = min(k, sim.shape[1])
    if sim.device.type != "cpu" or k == sim.shape[1]:
        return sim.topk(k, dim=1).values.mean(1)
    m = sim.shape[1]
    if m >= GROUPED_MIN_RATIO * k:  # the entries found through group maxima
        block = sim.detach().numpy()
        top = np.take_along_axis(block, top_indices(sim, k).numpy(), axis=1)
        return torch.from_numpy(top.mean(1))
    if scratch is None:
        block = np.partition(np.ascontiguousarray(sim.detach().numpy()), m - k, axis=1)
    else:
        block = scratch[: len(sim)].numpy()
        np.copyto(block, sim.detach().numpy())
        block.partition(m - k, axis=1)
    return torch.from_numpy(block[:, m - k :].mean(1))


def _row_best(sim: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's largest entry and its column  # (n, m) → (n,), (n,) int64. On the CPU by
    NumPy's ``argmax`` (1,000 × 2,000 float32: 0.4 ms against 2.7 ms for ``max(1)``)."""
    if sim.device.type != "cpu":
        best = sim.max(1)
        return best.values, best.indices
    block = sim.detach().numpy()
    idx = block.argmax(1)
    return torch.from_numpy(block[np.arange(len(block)), idx]), torch.from_numpy(idx)


def _transposed(sim: Tensor) -> Tensor:
    """A contiguous copy of the transpose  # (n, m) → (m, n); on the CPU by NumPy (1,000 ×
    2,000 float32: 1.7 against 2.8 ms for torch's ``contiguous``)."""
    if sim.device.type != "cpu":
        return sim.T.contiguous()
    return torch.from_numpy(np.ascontiguousarray(sim.detach().numpy().T))


def _scored_rows(
    u_a: Tensor, u_b: Tensor, rotation: Tensor, n_rows: int, max_targets: int, k: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Each sampled A row's CSLS with its best B partner, its cosine to it and whether it is
    mutual  # (m_a,), (m_a,), (m_a,) bool; the same ``seed`` draws the same rows."""
    rng = np.random.default_rng(seed)
    xa, xb = _unit_sample(u_a, n_rows, rng), _unit_sample(u_b, max_targets, rng)
    sim = normalise_rows(xa @ torch.as_tensor(rotation).float().T) @ xb.T  # (m_a, m_b)
    best, partner = _row_best(sim)
    # only the partners' radii and best A rows are read: their columns, as rows (u, m_a)
    cols, slot = torch.unique(partner, return_inverse=True)
    by_b = _transposed(sim.index_select(1, cols))
    r_b = _top_mean(by_b, k)  # each partner's mean similarity to its k nearest mapped A rows
    r_a = _top_mean(sim, k)
    csls = 2.0 * best - r_a - r_b[slot]
    mutual = _row_best(by_b)[1][slot] == torch.arange(len(xa))
    return csls, best, mutual


def alignment_score(
    u_a: Tensor,
    u_b: Tensor,
    rotation: Tensor,
    *,
    n_rows: int = 2000,
    max_targets: int = 10_000,
    k: int = 10,
    seed: int = 12345,
) -> AlignmentScore:
    """Score ``rotation`` (p_b, p_a) on seeded subsamples: see :class:`AlignmentScore`.

    The same ``seed`` gives the same rows for every candidate map, so scores compare.
    """
    csls, nearest, mutual = _scored_rows(u_a, u_b, rotation, n_rows, max_targets, k, seed)
    return AlignmentScore(
        csls=float(csls.mean()),
        nearest=float(nearest.mean()),
        mutual=float(mutual.double().mean()),
    )


def csls_lead(u_a: Tensor, u_b: Tensor, rotation: Tensor, rival: Tensor) -> float:
    """How many standard errors ``rotation``'s CSLS leads ``rival``'s (both (p_b, p_a)):
    the mean of the per-row differences of :func:`alignment_score`'s CSLS (its default rows,
    the same A rows and B rows for both maps) over the standard error of that mean. Below
    about 1 the lead is within the noise of the rows drawn; negative when the rival scores
    higher."""
    rows = alignment_score.__kwdefaults__  # its n_rows, max_targets, k and seed
    diff = _scored_rows(u_a, u_b, rotation, **rows)[0] - _scored_rows(u_a, u_b, rival, **rows)[0]
    diff = diff.double()
    se = float(diff.std()) / float(np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return float(diff.mean()) / se if se > 0 else (float("inf") if float(diff.mean()) > 0 else 0.0)
