"""One-pass, mergeable first and second moments of rows that never sit in memory together.

:class:`Moments` accumulates, in float64, the number of rows, their mean, the scatter matrix
``m2 = Σ (x − mean)(x − mean)ᵀ`` and each column's minimum and maximum. Two accumulators merge
exactly (in exact arithmetic) by the pairwise update of Chan, Golub and LeVeque (1979), so
the rows may arrive in batches of any size, in any grouping, or split over the ranks of a
``torch.distributed`` job (:meth:`Moments.all_reduce`); the covariance, the principal axes
(:meth:`Moments.pca`, with the sign convention of :class:`flowmatch.FlowAutoencoder`) and the
constant columns follow from the accumulated state.

Every batch is centred on its own mean before its scatter is formed, and batches combine
through the difference of their means, so a large common offset costs no precision.
Range: the scatter holds squared deviations from the mean summed over the rows, so the
deviations must stay well inside float64, about ``1e-150 < |x − mean| < 1e150 / sqrt(n)``;
outside that range, multiply the rows by a power of two (an exact rescaling) first, as
:class:`flowmatch.FlowAutoencoder` does for data held in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowmatch import distributed
from flowmatch.validation import as_matrix

__all__ = ["MOMENTS_FORMAT", "Moments", "moments_of_batches"]

MOMENTS_FORMAT = 1
"""Version of the document :meth:`Moments.to_state` writes."""

_F64 = torch.float64


@dataclass(eq=False)
class Moments:
    """Float64 accumulators of the rows seen so far.

    Attributes
    ----------
    count : number of rows.
    mean : Tensor  # (d,) float64, zeros while ``count == 0``
    m2 : Tensor  # (d, d) float64, Σ (x − mean)(x − mean)ᵀ over the rows
    minimum, maximum : Tensor  # (d,) float64, +inf / −inf while ``count == 0``

    :meth:`update`, :meth:`merge` and :meth:`all_reduce` change the accumulator in place
    and return it; :meth:`copy` gives an independent one. The tensors live on the device of
    the first rows seen (the CPU for :meth:`empty` without a device).
    """

    count: int
    mean: Tensor  # (d,) float64
    m2: Tensor  # (d, d) float64
    minimum: Tensor  # (d,) float64
    maximum: Tensor  # (d,) float64

    def __repr__(self) -> str:
        return f"Moments(count={self.count}, d={self.d}, device={self.mean.device})"

    @property
    def d(self) -> int:
        """Number of columns."""
        return int(self.mean.shape[0])

    @classmethod
    def empty(cls, d: int, device: str | torch.device | None = None) -> Moments:
        """The accumulator of no rows of width ``d``."""
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be a positive int (the number of columns), got {d!r}")
        kw: dict[str, Any] = {"dtype": _F64, "device": device}
        inf = torch.full((d,), torch.inf, **kw)
        return cls(0, torch.zeros(d, **kw), torch.zeros(d, d, **kw), inf, -inf)

    @classmethod
    def of(cls, x: Any) -> Moments:
        """The accumulator of the rows of ``x``  # (n, d), any float dtype; computed in float64

        ``x`` is shifted by its first row (exact for constant columns), then centred on the
        mean of the shifted rows before the scatter is formed: no cancellation of large
        offsets. ``n == 0`` gives :meth:`empty`. NaN or Inf entries raise ``ValueError``.
        """
        return cls._of_checked(as_matrix(x, "x", min_samples=0))

    @classmethod
    def _of_checked(cls, x: Tensor) -> Moments:
        """:meth:`of` of a matrix :func:`~flowmatch.validation.as_matrix` has checked."""
        n = int(x.shape[0])
        if n == 0:
            return cls.empty(int(x.shape[1]), x.device)
        x64 = x.to(_F64)
        shift = x64[0]
        xs = x64 - shift
        mean_s = xs.sum(0) / n
        xc = xs - mean_s
        lo, hi = torch.aminmax(x64, dim=0)
        return cls(count=n, mean=shift + mean_s, m2=xc.T @ xc, minimum=lo, maximum=hi)

    def copy(self) -> Moments:
        """An independent accumulator with the same state."""
        return Moments(
            self.count,
            self.mean.clone(),
            self.m2.clone(),
            self.minimum.clone(),
            self.maximum.clone(),
        )

    def update(self, x: Any) -> Moments:
        """Add the rows of ``x``  # (n, d); in place, returns ``self``.

        The same as ``self.merge(Moments.of(x))``.
        """
        return self.merge(Moments.of(x))

    def merge(self, other: Moments) -> Moments:
        """Add the rows ``other`` has seen; in place, returns ``self``.

        The pairwise update of Chan, Golub and LeVeque (1979): with ``δ = mean_b − mean_a``
        and ``n = n_a + n_b``, ``mean = mean_a + δ n_b / n`` and
        ``m2 = m2_a + m2_b + δδᵀ n_a n_b / n``; exact in exact arithmetic, so any grouping of
        the rows gives the same moments up to rounding. Raises ``ValueError`` when the widths
        differ.
        """
        if not isinstance(other, Moments):
            raise TypeError(f"can only merge Moments, got {type(other).__name__}")
        if other.d != self.d:
            raise ValueError(
                f"cannot merge moments of {other.d} columns into moments of {self.d} columns "
                "(dimension mismatch)"
            )
        if other.count == 0:
            return self
        if self.count == 0:  # take the rows' device as well as their moments
            o = other.copy()
            self._assign(o.count, o.mean, o.m2, o.minimum, o.maximum)
            return self
        o = other._on(self.mean.device)
        n_a, n_b = self.count, o.count
        n = n_a + n_b
        delta = o.mean - self.mean
        mean = torch.add(self.mean, delta, alpha=n_b / n)
        m2 = torch.addr(self.m2 + o.m2, delta, delta, alpha=n_a * n_b / n)
        lo, hi = torch.minimum(self.minimum, o.minimum), torch.maximum(self.maximum, o.maximum)
        self._assign(n, mean, m2, lo, hi)
        return self

    def _assign(self, count: int, mean: Tensor, m2: Tensor, lo: Tensor, hi: Tensor) -> None:
        self.count, self.mean, self.m2, self.minimum, self.maximum = count, mean, m2, lo, hi

    def _on(self, device: torch.device) -> Moments:
        """``self``, or a copy of it on ``device``."""
        if self.mean.device == device:
            return self
        t = [v.to(device) for v in (self.mean, self.m2, self.minimum, self.maximum)]
        return Moments(self.count, *t)

    def all_reduce(self, group: Any = None) -> Moments:
        """Combine the moments of every rank of ``group`` (the default process group when
        None); in place, returns ``self``.

        Every rank gathers every rank's accumulator and merges them in rank order, so every
        rank ends with bit-identical moments. A no-op when ``torch.distributed`` is not
        initialised. Raises ``ValueError`` on every rank when the ranks' widths differ.
        """
        if not distributed.is_initialized():
            return self
        shapes = distributed.all_gather(torch.tensor([self.d], dtype=torch.int64), group)
        widths = [int(s[0]) for s in shapes]
        if len(set(widths)) > 1:
            raise ValueError(f"the ranks hold moments of different widths {widths}")
        counts = distributed.all_gather(torch.tensor([self.count], dtype=torch.int64), group)
        parts = [
            distributed.all_gather(t, group)
            for t in (self.mean, self.m2, self.minimum, self.maximum)
        ]
        total = Moments.empty(self.d, self.mean.device)
        for r, c in enumerate(counts):
            total.merge(Moments(int(c[0]), *(p[r] for p in parts)))
        self._assign(total.count, total.mean, total.m2, total.minimum, total.maximum)
        return self

    def covariance(self, ddof: int = 0) -> Tensor:
        """``m2 / (count − ddof)``  # (d, d) float64

        ``ddof=0``: the maximum-likelihood covariance (as :class:`flowmatch.FlowAutoencoder`
        uses); ``ddof=1``: the unbiased one. Raises ``ValueError`` without enough rows.
        """
        if isinstance(ddof, bool) or not isinstance(ddof, int) or ddof < 0:
            raise ValueError(f"ddof must be a non-negative int, got {ddof!r}")
        if self.count - ddof <= 0:
            raise ValueError(
                f"the covariance with ddof={ddof} needs more than {ddof} row(s); "
                f"these moments have seen {self.count}"
            )
        return self.m2 / (self.count - ddof)

    def pca(self) -> tuple[Tensor, Tensor]:
        """Principal axes of the covariance (``ddof=0``).

        Returns
        -------
        eigenvalues : Tensor  # (d,) float64, descending, clamped at 0
        eigenvectors : Tensor  # (d, d) float64, one axis per column; each column's
            largest-magnitude entry is positive (the convention of
            :class:`flowmatch.FlowAutoencoder`)
        """
        evals, evecs = torch.linalg.eigh(self.covariance())
        evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
        cols = torch.arange(self.d, device=evecs.device)
        sign = torch.sign(evecs[evecs.abs().argmax(0), cols])
        evecs = evecs * torch.where(sign == 0, 1.0, sign)
        return evals, evecs.contiguous()

    def constant_columns(self) -> Tensor:
        """Which columns took one value on every row  # (d,) bool

        Read from the minimum and maximum, so exact. Raises ``ValueError`` before any row.
        """
        if self.count == 0:
            raise ValueError("these moments have seen no rows; no column is known constant")
        return self.maximum == self.minimum

    def to_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, meta)`` for a checkpoint: the float64 tensors ``mean``, ``m2``,
        ``minimum``, ``maximum`` (on the CPU, contiguous; safetensors can store them) and a
        JSON-serialisable document with ``format`` (:data:`MOMENTS_FORMAT`), ``count`` and
        ``d``. :meth:`from_state` reads them back."""
        tensors = {
            k: getattr(self, k).detach().cpu().contiguous()
            for k in ("mean", "m2", "minimum", "maximum")
        }
        meta = {"format": MOMENTS_FORMAT, "count": int(self.count), "d": self.d}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> Moments:
        """The accumulator :meth:`to_state` described, on the CPU; a missing or malformed
        entry raises ``ValueError`` naming it."""
        version = _meta_int(meta, "format")
        if not 1 <= version <= MOMENTS_FORMAT:
            raise ValueError(
                f"moments state has format {version}; this flowmatch reads formats up to "
                f"{MOMENTS_FORMAT}: upgrade flowmatch to read it"
            )
        count, d = _meta_int(meta, "count"), _meta_int(meta, "d")
        if count < 0 or d < 1:
            raise ValueError(f"moments state has count={count} and d={d}; need >= 0 and >= 1")
        shapes = {"mean": (d,), "m2": (d, d), "minimum": (d,), "maximum": (d,)}
        t = {k: _state_tensor(tensors, k, shape) for k, shape in shapes.items()}
        return cls(count, t["mean"], t["m2"], t["minimum"], t["maximum"])


def _meta_int(meta: Mapping[str, Any], key: str) -> int:
    value = meta.get(key) if isinstance(meta, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"moments state entry {key!r} must be an int, got {value!r}")
    return value


def _state_tensor(tensors: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> Tensor:
    if key not in tensors:
        raise ValueError(f"moments state has no entry {key!r}")
    value = torch.as_tensor(tensors[key])
    if tuple(value.shape) != shape or not value.is_floating_point():
        raise ValueError(
            f"moments state entry {key!r} must be a float tensor of shape {shape}, "
            f"got {value.dtype} of shape {tuple(value.shape)}"
        )
    return value.to("cpu", _F64).clone()


def moments_of_batches(
    batches: Iterable[Any], d: int | None = None, *, progress: bool = False
) -> Moments:
    """The moments of all rows of ``batches``, read once.

    Parameters
    ----------
    batches : iterable of Tensor | ndarray | ActivationSet  # each (n_i, d)
    d : the expected width; when None, the first batch's. Needed when ``batches`` may be
        empty.
    progress : show a tqdm progress bar over the batches.

    Returns
    -------
    Moments of the concatenated rows (a batch may hold no rows). A batch of another width
    raises ``ValueError`` naming it.
    """
    total = Moments.empty(d) if d is not None else None
    for i, batch in enumerate(tqdm(batches, disable=not progress, desc="moments", unit="batch")):
        part = Moments._of_checked(as_matrix(batch, f"batch {i}", dim=d, min_samples=0))
        if total is None:
            total, d = part, part.d
        else:
            total.merge(part)
    if total is None:
        raise ValueError("batches is empty and d was not given; pass d to accept no rows")
    return total
