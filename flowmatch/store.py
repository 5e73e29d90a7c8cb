"""An on-disk activation store: sharded safetensors files and a JSON manifest.

For activation sets larger than memory (10^6 rows × 768 and more). A store is a folder::

    manifest.json            {"format": "flowmatch.ActivationStore", "version": 1, "dim": d,
                              "dtype": "float32" | "float16" | "bfloat16", "n_rows": N,
                              "shard_rows": R, "shards": [{"file": ..., "rows": n_i}, ...],
                              "has_labels": bool, "has_provenance": bool, "meta": {...}}
    shard-00000.safetensors  "x" (n_i, d) in the storage dtype; optional "labels" (n_i,) int64,
    shard-00001.safetensors  "input_index" and "position" (n_i,) int64 (the input and the token
    ...                      position each row came from; position -1 for one row per input)

Every shard holds ``R`` rows but the last, which may hold fewer. :class:`StoreWriter` fills a
store one chunk at a time, holding at most one shard; the folder appears at its path only when
the writer closes (:func:`flowmatch.outputs.staged_folder`). :class:`ActivationStore` reads one
shard at a time; its batches are a deterministic function of (seed, epoch) that does not depend
on how many processes share them.

>>> with StoreWriter("acts/", shard_rows=65536, meta={"layer": "fc1"}) as w:
...     for chunk in chunks:          # (m, d) each
...         w.append(chunk)
>>> store = ActivationStore.open("acts/")
>>> for batch in store.iter_batches(1024, seed=0, epoch=3, rank=0, world_size=2): ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from flowmatch._io import ArtefactError, _read_header
from flowmatch.activations import ActivationSet
from flowmatch.outputs import OutputPathError, check_name, staged_folder
from flowmatch.validation import check_bool, check_choice, check_int

__all__ = ["FORMAT", "MANIFEST", "VERSION", "ActivationStore", "StoreWriter"]

FORMAT = "flowmatch.ActivationStore"
"""The ``format`` entry of every store manifest."""

VERSION = 1
"""The manifest version this flowmatch writes and the newest it reads."""

MANIFEST = "manifest.json"
"""The manifest's file name inside a store folder."""

KIND = "ActivationStore"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HEADER_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
_PROVENANCE = ("input_index", "position")


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


# ----------------------------------------------------------------------------- writing
class StoreWriter:
    """Write an :class:`ActivationStore` chunk by chunk; a context manager.

    Parameters
    ----------
    path : the store folder; absent, empty, or a store flowmatch wrote (it is replaced).
    shard_rows : rows per shard (the last shard may hold fewer).
    dtype : storage dtype, ``"float32"``, ``"float16"`` or ``"bfloat16"``; rows are read back
        as float32.
    meta : JSON-serialisable description (model, layer, ...), kept in the manifest.

    Nothing appears at ``path`` before :meth:`close`; an exception inside the ``with`` block
    (or :meth:`abort`) leaves ``path`` as it was.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        shard_rows: int = 65536,
        dtype: str = "float32",
        meta: dict[str, Any] | None = None,
    ) -> None:
        check_int("shard_rows", shard_rows, 1)
        check_choice("dtype", dtype, tuple(_DTYPES))
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:
            raise TypeError(f"meta must be JSON-serialisable ({err})") from None
        self.path = Path(path)
        self.shard_rows = int(shard_rows)
        self.dtype = dtype
        self.meta = meta
        self.n_rows = 0
        self.dim: int | None = None
        self._has: dict[str, bool] | None = None  # "labels", "provenance": fixed by append 1
        self._buffer: list[dict[str, Tensor]] = []  # chunks of the shard being filled
        self._shards: list[dict[str, Any]] = []
        self._stage = staged_folder(self.path, KIND)
        self._folder: Path | None = self._stage.__enter__()

    # --- context manager
    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def buffered_rows(self) -> int:
        """Rows held in memory, waiting for their shard to fill (always < ``shard_rows``)."""
        return sum(len(c["x"]) for c in self._buffer)

    def append(
        self,
        x: Tensor | np.ndarray,
        labels: Tensor | np.ndarray | None = None,
        input_index: Tensor | np.ndarray | None = None,
        position: Tensor | np.ndarray | None = None,
    ) -> None:
        """Add rows ``x``  # (m, d), any float dtype.

        ``labels``, ``input_index`` and ``position`` (m,) integers: given with every call or
        never (``input_index`` and ``position`` together). Full shards are written as they
        fill; at most one shard's rows stay in memory.
        """
        self._check_open()
        chunk = self._chunk(x, labels, input_index, position)
        m = len(chunk["x"])
        start = 0
        while start < m:
            take = min(m - start, self.shard_rows - self.buffered_rows)
            self._buffer.append({k: v[start : start + take] for k, v in chunk.items()})
            start += take
            if self.buffered_rows == self.shard_rows:
                self._flush()
        self.n_rows += m

    def _chunk(
        self,
        x: Tensor | np.ndarray,
        labels: Tensor | np.ndarray | None,
        input_index: Tensor | np.ndarray | None,
        position: Tensor | np.ndarray | None,
    ) -> dict[str, Tensor]:
        """The checked tensors of one append, in storage dtypes (copies)."""
        x = torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor or array (m, d), got {type(x).__name__}")
        if x.ndim != 2 or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"x must be a real 2-D (m, d) matrix, got {x.dtype} {tuple(x.shape)}")
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(
                f"x has {x.shape[1]} features but the store {self.path} has {self.dim} "
                "(dimension mismatch)"
            )
        stored = x.detach().to("cpu", _DTYPES[self.dtype], copy=True)
        self._check_finite(x.detach().cpu(), stored)
        extra = {"labels": labels, "input_index": input_index, "position": position}
        self._check_presence(extra)
        chunk = {"x": stored}
        for name, value in extra.items():
            if value is not None:
                chunk[name] = _int_vector(name, value, len(x))
        self.dim = int(x.shape[1])
        return chunk

    def _check_finite(self, x: Tensor, stored: Tensor) -> None:
        """NaN/Inf in ``x``, or finite values the storage dtype cannot hold: name the rows."""
        for values, problem in ((x, "NaN or Inf values"), (stored, f"values beyond {self.dtype}")):
            bad = ~torch.isfinite(values).all(dim=1) if values.is_floating_point() else None
            if bad is not None and bool(bad.any()):
                rows = torch.nonzero(bad).flatten()
                lo, hi = int(rows[0]), int(rows[-1])
                raise ValueError(
                    f"x holds {problem} in {len(rows)} row(s) between rows {lo} and {hi} of "
                    f"this chunk (store rows {self.n_rows + lo}..{self.n_rows + hi})"
                )

    def _check_presence(self, extra: dict[str, Any]) -> None:
        """Labels and provenance: with every append or never; input_index with position."""
        given_ix, given_pos = extra["input_index"] is not None, extra["position"] is not None
        if given_ix != given_pos:
            raise ValueError("input_index and position must be given together")
        has = {"labels": extra["labels"] is not None, "provenance": given_ix}
        if self._has is None:
            self._has = has
        for name, now in has.items():
            if now != self._has[name]:
                was = "given" if self._has[name] else "not given"
                raise ValueError(
                    f"{name} were {was} with the first rows of {self.path}; give them with "
                    "every append or never"
                )

    def _flush(self) -> None:
        """Write the buffered rows as the next shard."""
        assert self._folder is not None
        tensors = {k: torch.cat([c[k] for c in self._buffer]) for k in self._buffer[0]}
        name = _shard_name(len(self._shards))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self._folder / name))
        self._shards.append({"file": name, "rows": len(tensors["x"])})
        self._buffer = []

    def _check_open(self) -> None:
        if self._folder is None:
            raise ValueError(f"the store writer for {self.path} is closed")

    def close(self) -> ActivationStore:
        """Write the last shard and the manifest, move the folder into place; return the store."""
        self._check_open()
        try:
            if self.n_rows == 0:
                raise ValueError(f"no rows were appended to {self.path}; a store needs one")
            if self._buffer:
                self._flush()
            assert self._folder is not None and self._has is not None
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "dim": self.dim,
                "dtype": self.dtype,
                "n_rows": self.n_rows,
                "shard_rows": self.shard_rows,
                "shards": self._shards,
                "has_labels": self._has["labels"],
                "has_provenance": self._has["provenance"],
                "meta": self.meta,
            }
            text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
            (self._folder / MANIFEST).write_text(text, encoding="utf-8")
        except BaseException:
            self.abort()
            raise
        self._folder = None
        self._stage.__exit__(None, None, None)
        return ActivationStore.open(self.path)

    def abort(self) -> None:
        """Discard everything written so far; ``path`` stays as it was."""
        if self._folder is None:
            return
        self._folder = None
        self._buffer = []
        err = RuntimeError("store writing aborted")
        try:
            self._stage.__exit__(RuntimeError, err, None)
        except RuntimeError as raised:
            if raised is not err:
                raise


def _int_vector(name: str, value: Any, n: int) -> Tensor:
    """``value`` as an int64 vector of length ``n``, or a ValueError naming ``name``."""
    t = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value.cpu()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({n},) (one per row)")
    return t.to(torch.int64, copy=True)


# ----------------------------------------------------------------------------- reading
class ActivationStore:
    """A store folder written by :class:`StoreWriter`, read one shard at a time.

    Attributes
    ----------
    path : Path; manifest : dict; meta : dict (the manifest's ``meta``).
    n_rows : int; dim : int; dtype : str (storage); shard_sizes : list[int] (rows per shard).
    has_labels, has_provenance : bool.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.meta: dict[str, Any] = manifest["meta"]
        self.n_rows: int = manifest["n_rows"]
        self.dim: int = manifest["dim"]
        self.dtype: str = manifest["dtype"]
        self.shard_sizes: list[int] = [s["rows"] for s in manifest["shards"]]
        self.has_labels: bool = manifest["has_labels"]
        self.has_provenance: bool = manifest["has_provenance"]
        self._offsets = np.concatenate([[0], np.cumsum(self.shard_sizes)]).astype(np.int64)

    @classmethod
    def open(cls, path: str | os.PathLike) -> ActivationStore:
        """Open the store at ``path``: the manifest and every shard's header are checked
        (format, version, entries, files present, tensor names, dtypes, shapes, file sizes);
        the data are read only when used. Problems raise :class:`ArtefactError` naming the file.
        """
        p = Path(path)
        if not p.is_dir():
            what = "nothing" if not p.exists() else "a file"
            raise ArtefactError(f"{p} is {what}, not an activation store folder")
        manifest = _read_manifest(p / MANIFEST)
        for i, shard in enumerate(manifest["shards"]):
            _check_shard_header(p / shard["file"], manifest, i)
        return cls(p, manifest)

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, n_rows={self.n_rows}, dim={self.dim}, "
            f"dtype={self.dtype!r}, shards={len(self.shard_sizes)})"
        )

    @property
    def n_shards(self) -> int:
        """Number of shard files."""
        return len(self.shard_sizes)

    # --- one shard
    def _load(self, i: int, name: str) -> Tensor:
        """Tensor ``name`` of shard ``i``, read from disk."""
        check_int("shard index", i, 0, self.n_shards - 1)
        file = self.path / self.manifest["shards"][i]["file"]
        try:
            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(name)
        except FileNotFoundError:
            raise ArtefactError(f"{file}: shard file is missing") from None
        except Exception as err:  # safetensors raises its own error types for bad files
            raise ArtefactError(f"{file} is not a readable shard ({err})") from None

    def shard(self, i: int) -> Tensor:
        """Rows of shard ``i``  # (n_i, d) float32."""
        x = self._load(i, "x").float()
        if x.shape != (self.shard_sizes[i], self.dim):
            raise ArtefactError(f"{self._file(i)}: 'x' has shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ArtefactError(f"{self._file(i)}: 'x' holds NaN or infinite values")
        return x

    def shard_labels(self, i: int) -> Tensor | None:
        """Labels of shard ``i``  # (n_i,) int64, or None when the store has none."""
        return self._load(i, "labels") if self.has_labels else None

    def shard_provenance(self, i: int) -> tuple[Tensor, Tensor] | None:
        """(input_index, position) of shard ``i``  # (n_i,), (n_i,) int64, or None."""
        if not self.has_provenance:
            return None
        return self._load(i, "input_index"), self._load(i, "position")

    def _file(self, i: int) -> Path:
        return self.path / self.manifest["shards"][i]["file"]

    def iter_shards(self, rank: int = 0, world_size: int = 1) -> Iterator[tuple[int, Tensor]]:
        """``(i, shard(i))`` for the shards with ``i % world_size == rank``, in order."""
        _check_ranks(rank, world_size)
        for i in range(rank, self.n_shards, world_size):
            yield i, self.shard(i)

    # --- rows by global id
    def _ids(self, index: Any) -> np.ndarray:
        ids = np.asarray(index.cpu() if isinstance(index, Tensor) else index)
        if ids.ndim != 1 or not (ids.dtype.kind in "iu" or ids.size == 0):
            raise ValueError(f"row ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_rows):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise IndexError(f"row id {bad} is out of range for {self.n_rows} rows of {self.path}")
        return ids

    def _gather(self, ids: np.ndarray, load: Any, shape: tuple[int, ...], dtype: Any) -> Tensor:
        """``load(i)`` rows at global ``ids``, one shard at a time, in the order of ``ids``."""
        out = torch.empty((len(ids), *shape), dtype=dtype)
        which = np.searchsorted(self._offsets, ids, side="right") - 1
        for i in np.unique(which):
            at = np.nonzero(which == i)[0]
            local = torch.from_numpy(ids[at] - self._offsets[i])
            out[torch.from_numpy(at)] = load(int(i))[local]
        return out

    def rows(self, index: Any) -> Tensor:
        """Rows at global ids ``index`` (any order, repeats allowed)  # (len, d) float32."""
        return self._gather(self._ids(index), self.shard, (self.dim,), torch.float32)

    def row_labels(self, index: Any) -> Tensor | None:
        """Labels at global ids ``index``  # (len,) int64, or None."""
        if not self.has_labels:
            return None
        return self._gather(self._ids(index), self.shard_labels, (), torch.int64)

    def row_provenance(self, index: Any) -> tuple[Tensor, Tensor] | None:
        """(input_index, position) at global ids ``index``  # (len,), (len,), or None."""
        if not self.has_provenance:
            return None
        ids = self._ids(index)
        ix = self._gather(ids, lambda i: self._load(i, "input_index"), (), torch.int64)
        pos = self._gather(ids, lambda i: self._load(i, "position"), (), torch.int64)
        return ix, pos

    # --- in-memory sets
    def _activation_set(self, ids: np.ndarray, extra: dict[str, Any]) -> ActivationSet:
        meta = {**self.meta, "store": str(self.path), **extra}
        prov = self.row_provenance(ids)
        if prov is not None:
            meta["input_index"], meta["position"] = prov[0].tolist(), prov[1].tolist()
        return ActivationSet(self.rows(ids), self.row_labels(ids), meta)

    def subsample(self, n: int, *, seed: int = 0) -> ActivationSet:
        """``n`` rows drawn uniformly without replacement, seeded, in increasing row order;
        labels and provenance follow. ``n >= len(self)`` gives every row."""
        check_int("n", n, 1)
        check_int("seed", seed, 0)
        if n >= self.n_rows:
            ids = np.arange(self.n_rows, dtype=np.int64)
        else:
            rng = np.random.default_rng(seed)
            ids = np.sort(rng.choice(self.n_rows, size=n, replace=False)).astype(np.int64)
        info = {"subsample": {"n": len(ids), "of": self.n_rows, "seed": seed}}
        return self._activation_set(ids, info)

    def to_activation_set(self) -> ActivationSet:
        """Every row in memory  # x: (n_rows, d) float32."""
        return self._activation_set(np.arange(self.n_rows, dtype=np.int64), {})

    # --- batches
    def iter_batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        rows: Any = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        start_batch: int = 0,
        shuffle: bool = True,
    ) -> Iterator[Tensor]:
        """This process's part of each global batch of one epoch  # (b / world_size, d) each.

        The epoch's row stream: the shards in a permutation seeded by ``(seed, epoch)``, each
        shard's rows in a permutation seeded by ``(seed, epoch, shard index)`` (file order when
        ``shuffle=False``), keeping only the global ids in ``rows`` (sorted ids; None: all).
        Consecutive ``batch_size`` rows of the stream form the global batches (``drop_last``
        drops a final short one); ``start_batch`` skips the first ones (to resume). Rank
        ``rank`` of ``world_size`` gets rows ``[rank*b/W, (rank+1)*b/W)`` of every global batch
        of ``b`` rows (a final short batch is split as evenly as possible; every rank yields
        the same number of batches), so the ranks together see exactly the batches of one
        process. At most one shard is held in memory besides the batch being assembled.
        """
        check_int("batch_size", batch_size, 1)
        _check_ranks(rank, world_size)
        if batch_size % world_size:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of world_size={world_size}"
            )
        check_int("seed", seed, 0)
        check_int("epoch", epoch, 0)
        check_int("start_batch", start_batch, 0)
        check_bool("drop_last", drop_last)
        check_bool("shuffle", shuffle)
        stream = _Stream(self, self._allowed(rows), seed, epoch, shuffle)
        total = stream.total
        n_batches = total // batch_size if drop_last else -(-total // batch_size)
        for k in range(start_batch, n_batches):
            lo, hi = k * batch_size, min((k + 1) * batch_size, total)
            part = hi - lo
            yield stream.take(lo + rank * part // world_size, lo + (rank + 1) * part // world_size)

    def _allowed(self, rows: Any) -> np.ndarray | None:
        """``rows`` checked: sorted, unique global ids (or None for all)."""
        if rows is None:
            return None
        ids = self._ids(rows)
        if ids.size > 1 and not bool((np.diff(ids) > 0).all()):
            raise ValueError("rows must be sorted increasing global row ids without repeats")
        return ids


class _Stream:
    """One epoch's row stream of a store; :meth:`take` reads stream positions ``[lo, hi)``,
    loading each shard once as the positions move forward (one shard cached)."""

    def __init__(
        self,
        store: ActivationStore,
        allowed: np.ndarray | None,
        seed: int,
        epoch: int,
        shuffle: bool,
    ) -> None:
        self.store, self.allowed, self.seed, self.epoch = store, allowed, seed, epoch
        self.shuffle = shuffle
        n = store.n_shards
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        self.order = order
        sizes = np.asarray(store.shard_sizes, dtype=np.int64)
        if allowed is not None:
            off = store._offsets
            sizes = np.searchsorted(allowed, off[1:]) - np.searchsorted(allowed, off[:-1])
        self.starts = np.concatenate([[0], np.cumsum(sizes[order])]).astype(np.int64)
        self.total = int(self.starts[-1])
        self._cached: tuple[int, np.ndarray, Tensor] | None = None

    def _local_order(self, shard: int) -> np.ndarray:
        """Local row ids of ``shard`` in stream order."""
        n = self.store.shard_sizes[shard]
        if self.shuffle:
            local = np.random.default_rng([self.seed, self.epoch, shard]).permutation(n)
        else:
            local = np.arange(n)
        if self.allowed is not None:
            off = int(self.store._offsets[shard])
            keep = np.zeros(n, dtype=bool)
            inside = self.allowed[(self.allowed >= off) & (self.allowed < off + n)]
            keep[inside - off] = True
            local = local[keep[local]]
        return local

    def _shard(self, j: int) -> tuple[np.ndarray, Tensor]:
        """(stream-order local ids, rows) of the ``j``-th shard of the stream."""
        if self._cached is None or self._cached[0] != j:
            self._cached = None  # release the previous shard before reading the next
            shard = int(self.order[j])
            self._cached = (j, self._local_order(shard), self.store.shard(shard))
        return self._cached[1], self._cached[2]

    def take(self, lo: int, hi: int) -> Tensor:
        """Rows at stream positions ``[lo, hi)``  # (hi - lo, d) float32."""
        pieces = [torch.empty(0, self.store.dim)]
        j = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while lo < hi:
            start, end = int(self.starts[j]), int(self.starts[j + 1])
            if end > lo:
                local, x = self._shard(j)
                upto = min(hi, end)
                pieces.append(x[torch.from_numpy(local[lo - start : upto - start])])
                lo = upto
            j += 1
        return torch.cat(pieces)


def _check_ranks(rank: int, world_size: int) -> None:
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0, world_size - 1)


# ----------------------------------------------------------------------------- checks
def _read_manifest(path: Path) -> dict[str, Any]:
    """The checked manifest at ``path``; an :class:`ArtefactError` naming it otherwise."""
    if not path.is_file():
        raise ArtefactError(f"{path} is missing: {path.parent} is not an activation store")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ArtefactError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ArtefactError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise ArtefactError(f"{path}: format {doc.get('format')!r} is not {FORMAT!r}")
    _check_entries(path, doc)
    _check_shard_list(path, doc)
    return doc


_ENTRIES: dict[str, type] = {
    "version": int,
    "dim": int,
    "dtype": str,
    "n_rows": int,
    "shard_rows": int,
    "shards": list,
    "has_labels": bool,
    "has_provenance": bool,
    "meta": dict,
}


def _check_entries(path: Path, doc: dict[str, Any]) -> None:
    for key, types in _ENTRIES.items():
        if key not in doc:
            raise ArtefactError(f"{path}: entry {key!r} is missing")
        value = doc[key]
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            raise ArtefactError(f"{path}: entry {key!r} must be {types.__name__}, got {value!r}")
    if doc["version"] > VERSION or doc["version"] < 1:
        raise ArtefactError(
            f"{path}: version {doc['version']} is not one this flowmatch reads (1..{VERSION}); "
            "upgrade flowmatch to read it"
        )
    if doc["dtype"] not in _DTYPES:
        raise ArtefactError(f"{path}: dtype {doc['dtype']!r} is not one of {sorted(_DTYPES)}")
    for key in ("dim", "n_rows", "shard_rows"):
        if doc[key] < 1:
            raise ArtefactError(f"{path}: entry {key!r} must be >= 1, got {doc[key]}")


def _check_shard_list(path: Path, doc: dict[str, Any]) -> None:
    shards, r = doc["shards"], doc["shard_rows"]
    if not shards:
        raise ArtefactError(f"{path}: the shard list is empty")
    for i, s in enumerate(shards):
        if not isinstance(s, dict) or not isinstance(s.get("file"), str):
            raise ArtefactError(f"{path}: shard {i} must be an object with a 'file' name")
        try:
            check_name(s["file"], "shard file name")
        except OutputPathError as err:
            raise ArtefactError(f"{path}: shard {i}: {err}") from None
        rows = s.get("rows")
        last = i == len(shards) - 1
        if not isinstance(rows, int) or isinstance(rows, bool) or not 1 <= rows <= r:
            raise ArtefactError(f"{path}: shard {i} ('{s['file']}') has rows={rows!r}")
        if not last and rows != r:
            raise ArtefactError(
                f"{path}: shard {i} ('{s['file']}') holds {rows} rows; every shard but the last "
                f"holds shard_rows={r}"
            )
    total = sum(s["rows"] for s in shards)
    if total != doc["n_rows"]:
        raise ArtefactError(f"{path}: the shards hold {total} rows, n_rows says {doc['n_rows']}")


def _check_shard_header(file: Path, manifest: dict[str, Any], i: int) -> None:
    """Shard ``i``'s safetensors header agrees with the manifest; the file is complete."""
    if not file.is_file():
        raise ArtefactError(f"{file}: shard file {i} is missing")
    header = _read_header(file)
    n, d = manifest["shards"][i]["rows"], manifest["dim"]
    want = {"x": (_HEADER_DTYPES[manifest["dtype"]], [n, d])}
    if manifest["has_labels"]:
        want["labels"] = ("I64", [n])
    if manifest["has_provenance"]:
        want.update({name: ("I64", [n]) for name in _PROVENANCE})
    found = {k: v for k, v in header.items() if k != "__metadata__"}
    if set(found) != set(want):
        raise ArtefactError(
            f"{file}: holds tensors {sorted(found)}, expected {sorted(want)} (per {MANIFEST})"
        )
    end = max(_check_entry(file, name, found[name], *want[name]) for name in want)
    with open(file, "rb") as f:
        header_bytes = int.from_bytes(f.read(8), "little")
    size = file.stat().st_size
    if size != 8 + header_bytes + end:
        raise ArtefactError(
            f"{file}: {size} bytes, expected {8 + header_bytes + end} (truncated or corrupt shard)"
        )


def _check_entry(file: Path, name: str, entry: Any, dtype: str, shape: list[int]) -> int:
    """One tensor's header entry has ``dtype``, ``shape`` and a consistent byte range; its
    end offset in the data section."""
    if not isinstance(entry, dict) or entry.get("dtype") != dtype or entry.get("shape") != shape:
        got = (entry.get("dtype"), entry.get("shape")) if isinstance(entry, dict) else entry
        raise ArtefactError(f"{file}: tensor {name!r} is {got}, expected {(dtype, shape)}")
    offsets = entry.get("data_offsets")
    nbytes = _ITEM_BYTES[dtype] * int(np.prod(shape))
    if not (isinstance(offsets, list) and len(offsets) == 2):
        raise ArtefactError(f"{file}: tensor {name!r} has bad data offsets {offsets!r}")
    start, end = offsets
    if not (isinstance(start, int) and isinstance(end, int) and end - start == nbytes):
        raise ArtefactError(f"{file}: tensor {name!r} has bad data offsets {offsets!r}")
    return end
