"""Collect a layer's activations from any ``torch.nn.Module`` through a forward hook.

>>> acts = collect(model, inputs, layer="blocks.0.mlp", labels=y)   # ActivationSet (n, d)
>>> acts.save("acts.safetensors"); ActivationSet.load("acts.safetensors")
>>> store = collect(bert, loader, "encoder.layer.3", tokens=True, out="acts/")  # on disk

``inputs`` may be a tensor, a dict of tensors, or an iterable of batches (tensors, dicts of
keyword arguments such as ``input_ids`` and ``attention_mask``, or (inputs, labels) pairs).
With an ``attention_mask``, ``tokens=True`` keeps the unmasked positions only and ``pool``
averages or picks positions per input; every row records its input and token position.
"""

from __future__ import annotations

import difflib
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from flowmatch._io import ArtefactError, check_input_file, load_state, save_state
from flowmatch.validation import (
    check_bool,
    check_choice,
    check_finite,
    check_int,
    resolve_device,
)

__all__ = ["ActivationSet", "collect", "find_module", "head_after"]


@dataclass(frozen=True)
class ActivationSet:
    """Activations of one layer of one model.

    Attributes
    ----------
    x : Tensor  # (n_samples, d), float32, CPU
    labels : Tensor | None  # (n_samples,), int64 class labels of the inputs, when known
    meta : dict  # JSON-serialisable: ``model``, ``layer``, ``input_index`` (row → input),
        ``position`` (row → token position, -1 for one row per input) ...
    """

    x: Tensor
    labels: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.ndim != 2:
            raise ValueError(f"activations must be 2-D (n, d), got shape {tuple(self.x.shape)}")
        if self.labels is not None and len(self.labels) != len(self.x):
            raise ValueError(
                f"{len(self.labels)} labels for {len(self.x)} activation rows (length mismatch)"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        """Number of features ``d``."""
        return int(self.x.shape[1])

    def numpy(self) -> np.ndarray:
        """Activations as a float32 NumPy array  # (n, d)."""
        return self.x.numpy()

    def subset(self, index: Tensor | np.ndarray | list[int]) -> ActivationSet:
        """Rows ``index`` as a new ActivationSet (labels, ``input_index`` and ``position``
        follow)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        meta = dict(self.meta)
        for key in ("input_index", "position"):
            if key in meta:
                meta[key] = [meta[key][i] for i in idx.tolist()]
        labels = None if self.labels is None else self.labels[idx]
        return ActivationSet(self.x[idx], labels, meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``path`` (.safetensors with a JSON header), atomically; an existing ``path``
        must be an ActivationSet file (see :mod:`flowmatch.outputs`)."""
        tensors = {"x": self.x}
        if self.labels is not None:
            tensors["labels"] = self.labels
        save_state(path, tensors, self.meta, kind="ActivationSet")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationSet:
        """Read an ActivationSet written by :meth:`save`, or a bare ``.npy`` matrix (n, d).

        The format is told by the file's content (NumPy's magic bytes), not by its suffix.
        A file that is neither, or holds anything but a finite real matrix, raises a
        ``ValueError`` that names the file.
        """
        p = check_input_file(path, "an activation file (.safetensors or .npy)")
        with open(p, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            return cls(_load_npy(p), None, {"source": str(p)})
        if magic[:4] == b"PK\x03\x04":
            raise ArtefactError(
                f"{p} is a zip archive (.npz?); save one (n, d) matrix with numpy.save instead"
            )
        if p.suffix.lower() == ".npy":
            raise ArtefactError(f"{p} is not a .npy file (no NumPy header)")
        art = load_state(p, "ActivationSet")
        art.check_tensor_names({"x", "labels"})
        x = art.tensor("x", "float", (None, None), finite=False)
        check_finite(x, str(p))
        labels = None
        if "labels" in art.tensors:
            labels = art.tensor("labels", _INT_DTYPES, (len(x),)).long()
        meta = dict(art.meta)
        if art.version == 0:
            meta.pop("kind", None)
        return cls(x, labels, meta)


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _load_npy(path: os.PathLike) -> Tensor:
    """A finite real (n, d) matrix from a .npy file, as float32."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise ArtefactError(f"{path} is not a readable .npy file ({err})") from None
    if arr.dtype.names is not None:
        raise ArtefactError(f"{path} holds a structured array; a plain (n, d) matrix is needed")
    if arr.dtype.kind == "c":
        raise ArtefactError(
            f"{path} holds complex values; activations must be real (save x.real if intended)"
        )
    if arr.dtype.kind not in "fiub":
        raise ArtefactError(f"{path} holds {arr.dtype} values; activations must be numbers")
    if arr.ndim != 2:
        raise ArtefactError(
            f"{path} holds an array of shape {arr.shape}; activations must be a 2-D (n, d) matrix"
        )
    with np.errstate(over="ignore"):
        x32 = arr.astype(np.float32)
    if not np.isfinite(x32).all() and np.isfinite(arr).all():
        big = float(np.abs(arr).max())
        raise ArtefactError(
            f"{path} holds values up to {big:.3g}, beyond float32; rescale the activations"
        )
    x = torch.from_numpy(x32)
    check_finite(x, str(path))
    return x


def find_module(model: nn.Module, layer: str) -> nn.Module:
    """Return the submodule called ``layer`` (dotted path), or raise listing the closest names."""
    names = dict(model.named_modules())
    if layer in names:
        return names[layer]
    close = difflib.get_close_matches(layer, [n for n in names if n], n=5, cutoff=0.3)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise KeyError(f"model {type(model).__name__} has no layer {layer!r}{hint}")


def head_after(model: nn.Sequential, layer: str) -> nn.Sequential:
    """The part of ``model`` after its top-level submodule ``layer``, in eval mode (shares
    parameters with ``model``): what turns the layer's activations into the outputs."""
    names = [name for name, _ in model.named_children()]
    if layer not in names:
        raise KeyError(f"{layer!r} is not a top-level layer; choose from {names}")
    head = nn.Sequential(OrderedDict(list(model.named_children())[names.index(layer) + 1 :]))
    return head.eval()


# ----------------------------------------------------------------------------- batches
Batch = Tensor | dict[str, Tensor]
_POOLS = (None, "mean", "first", "last")


def _as_tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value)
    raise TypeError(f"{what} must be a tensor or an array, got {type(value).__name__}")


def _sliced(inputs: Batch, labels: Tensor | None, batch_size: int) -> Iterator[tuple]:
    """(batch, labels) slices of ``batch_size`` inputs of a tensor or a dict of tensors."""
    n = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
    if isinstance(inputs, dict) and any(len(v) != n for v in inputs.values()):
        sizes = {k: len(v) for k, v in inputs.items()}
        raise ValueError(f"the input tensors differ in length: {sizes}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} inputs (length mismatch)")
    for s in range(0, n, batch_size):
        part = (
            {k: v[s : s + batch_size] for k, v in inputs.items()}
            if isinstance(inputs, dict)
            else inputs[s : s + batch_size]
        )
        yield part, None if labels is None else labels[s : s + batch_size]


def _one_batch(batch: Any) -> tuple[Batch, Tensor | None]:
    """A batch of an iterable: a tensor, a dict (its "labels" popped), or (inputs, labels)."""
    labels = None
    if isinstance(batch, (tuple, list)):
        if len(batch) not in (1, 2):
            raise ValueError(
                f"a batch given as a sequence must be (inputs,) or (inputs, labels), got "
                f"{len(batch)} items"
            )
        batch, labels = batch[0], (batch[1] if len(batch) == 2 else None)
    if isinstance(batch, Mapping):
        batch = {k: _as_tensor(v, f"batch entry {k!r}") for k, v in batch.items()}
        if "labels" in batch:
            if labels is not None:
                raise ValueError("labels were given both in the batch dict and beside it")
            labels = batch.pop("labels")
    else:
        batch = _as_tensor(batch, "a batch")
    return batch, None if labels is None else _as_tensor(labels, "labels")


def _batches(inputs: Any, labels: Any, batch_size: int) -> Iterator[tuple[Batch, Tensor | None]]:
    """(model inputs, per-input labels or None) batch by batch, whatever form ``inputs`` has."""
    y = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if isinstance(inputs, (Tensor, np.ndarray, Mapping)):
        whole, own = _one_batch(inputs)
        if own is not None and y is not None:
            raise ValueError("labels were given both in the inputs dict and as labels=")
        yield from _sliced(whole, y if own is None else own, batch_size)
        return
    if y is not None:
        raise ValueError(
            "labels= goes with a tensor or dict of inputs; an iterable of batches carries its "
            "labels in each batch (a 'labels' entry or an (inputs, labels) pair)"
        )
    if not isinstance(inputs, Iterable):
        raise TypeError(
            f"inputs must be a tensor, an array, a dict of tensors or an iterable of batches, "
            f"got {type(inputs).__name__}"
        )
    for batch in inputs:
        yield _one_batch(batch)


def _batch_size(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)


def _run(model: nn.Module, batch: Batch, dev: torch.device) -> None:
    if isinstance(batch, dict):
        model(**{k: v.to(dev) for k, v in batch.items()})
    else:
        model(batch.to(dev))


# ----------------------------------------------------------------------------- rows
def _layer_value(args: tuple, kwargs: dict, output: Any, hook: str) -> Tensor:
    """The tensor a forward hook sees: the layer's first input or its (first) output."""
    if hook == "input":
        value = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
    else:
        value = output
    if isinstance(value, Mapping):  # e.g. a transformers ModelOutput
        value = next(iter(value.values()))
    if isinstance(value, (tuple, list)):
        value = value[0]
    if not isinstance(value, Tensor):
        raise TypeError(f"the layer's {hook} is a {type(value).__name__}, not a tensor")
    return value.detach()


def _batch_rows(
    value: Tensor, mask: Tensor | None, tokens: bool, pool: str | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The rows of one batch's layer value (b, ...), with each row's input (within the batch)
    and token position (-1 for one row per input).

    Returns
    -------
    x : Tensor  # (m, d) float32
    local : Tensor  # (m,) int64, the input of each row
    position : Tensor  # (m,) int64
    """
    b = value.shape[0]
    if value.ndim == 1:
        value = value[:, None]
    if value.ndim >= 3 and (tokens or pool is not None):
        seq = value.reshape(b, -1, value.shape[-1]).float()
        if mask is not None and tuple(mask.shape) != tuple(seq.shape[:2]):
            raise ValueError(
                f"attention_mask has shape {tuple(mask.shape)} but the layer's activations "
                f"have {tuple(value.shape)}: (batch, positions) must agree"
            )
        if tokens:
            keep = torch.ones(seq.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
            local, position = torch.nonzero(keep.cpu(), as_tuple=True)
            return seq[keep.to(seq.device)].cpu(), local, position
        return _pool(seq, mask, pool).cpu(), torch.arange(b), torch.full((b,), -1)
    if pool is not None:
        raise ValueError(
            f"pool={pool!r} needs (batch, positions, d) activations; the layer gives "
            f"{tuple(value.shape)}"
        )
    if mask is not None and value.ndim >= 3:
        raise ValueError(
            "the batches are padded (attention_mask) but tokens=False and pool=None would "
            "flatten the padding into the features; pass tokens=True or pool='mean'"
        )
    return value.reshape(b, -1).float().cpu(), torch.arange(b), torch.full((b,), -1)


def _pool(seq: Tensor, mask: Tensor | None, pool: str | None) -> Tensor:
    """One row per input of ``seq`` (b, T, d): masked mean, first position or last unmasked."""
    b, t, _ = seq.shape
    m = torch.ones(b, t, device=seq.device) if mask is None else mask.to(seq.device).float()
    counts = m.sum(1)
    if pool != "first" and bool((counts == 0).any()):
        raise ValueError(f"pool={pool!r}: an input has no unmasked position (attention_mask)")
    if pool == "mean":
        return (seq * m[:, :, None]).sum(1) / counts[:, None]
    if pool == "first":
        return seq[:, 0]
    last = t - 1 - torch.argmax(m.flip(1), dim=1)  # the last position whose mask is 1
    return seq[torch.arange(b, device=seq.device), last]


# ----------------------------------------------------------------------------- sinks
class _Rows:
    """Rows collected in memory, turned into an :class:`ActivationSet` at the end."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {"x": [], "labels": [], "index": [], "pos": []}

    def append(self, x: Tensor, labels: Tensor | None, index: Tensor, pos: Tensor) -> None:
        if self.parts["x"] and (labels is None) != (not self.parts["labels"]):
            raise ValueError("labels must come with every batch or with none")
        for key, value in (("x", x), ("labels", labels), ("index", index), ("pos", pos)):
            if value is not None:
                self.parts[key].append(value)

    def close(self, meta: dict[str, Any]) -> ActivationSet:
        p = self.parts
        labels = torch.cat(p["labels"]) if p["labels"] else None
        meta = {**meta, "input_index": torch.cat(p["index"]).tolist()}
        meta["position"] = torch.cat(p["pos"]).tolist()
        return ActivationSet(torch.cat(p["x"]).contiguous(), labels, meta)


class _Store:
    """Rows streamed into an on-disk store as they come."""

    def __init__(self, out: str | os.PathLike, shard_rows: int, dtype: str, meta: dict) -> None:
        from flowmatch.store import StoreWriter  # the store module builds on ActivationSet

        self.writer = StoreWriter(out, shard_rows=shard_rows, dtype=dtype, meta=meta)

    def append(self, x: Tensor, labels: Tensor | None, index: Tensor, pos: Tensor) -> None:
        self.writer.append(x, labels, index, pos)

    def close(self, meta: dict[str, Any]) -> Any:
        return self.writer.close()


# ----------------------------------------------------------------------------- collect
@torch.no_grad()
def collect(
    model: nn.Module,
    inputs: Any,
    layer: str,
    *,
    labels: Tensor | np.ndarray | None = None,
    hook: Literal["output", "input"] = "output",
    tokens: bool = False,
    pool: Literal["mean", "first", "last"] | None = None,
    batch_size: int = 512,
    device: str | torch.device = "auto",
    out: str | os.PathLike | None = None,
    shard_rows: int = 65536,
    storage_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
) -> Any:
    """Run ``model`` on ``inputs`` and record the output (or input) of submodule ``layer``.

    Parameters
    ----------
    model : any module; put in eval mode for the pass and restored afterwards.
    inputs : what ``model`` is fed, in one of these forms:
        a Tensor or array  # (n_inputs, ...), cut into batches of ``batch_size``;
        a dict of tensors (keyword arguments of ``model``, e.g. ``input_ids`` and
        ``attention_mask``), cut into batches along dim 0;
        an iterable of batches (a ``DataLoader``, a list), each a Tensor, a dict (passed as
        ``model(**batch)``; a ``"labels"`` entry is taken out and recorded) or an
        ``(inputs, labels)`` pair.
    layer : dotted submodule name (``"fc1"``, ``"blocks.0.mlp"``, ``"encoder.layer.3"``).
    labels : optional (n_inputs,) class labels of a tensor or dict input, repeated per row.
    hook : record what the layer returns (``"output"``) or what it receives (``"input"``).
    tokens : for (batch, positions, d) activations, make every position a row; with an
        ``attention_mask`` in the batch, only the unmasked positions (mask == 1).
    pool : one row per input from (batch, positions, d) activations: ``"mean"`` (masked
        mean), ``"first"`` (position 0) or ``"last"`` (last unmasked position); not with
        ``tokens=True``.
    batch_size, device : ``device="auto"`` uses CUDA when available.
    out : a folder: stream the rows into an :class:`~flowmatch.store.ActivationStore` there
        (at most one shard and one batch in memory) and return the store.
    shard_rows, storage_dtype : the store's rows per shard and storage dtype (with ``out``).

    Returns
    -------
    ActivationSet  # x: (n_rows, d) float32 on the CPU; ``meta["input_index"]`` and
        ``meta["position"]`` give each row's input and token position (-1: one row per input).
    ActivationStore  # with ``out``; the same provenance is stored per row in its shards.
    """
    check_choice("hook", hook, ("output", "input"))
    check_choice("pool", pool, _POOLS)
    check_bool("tokens", tokens)
    check_int("batch_size", batch_size, 1)
    if tokens and pool is not None:
        raise ValueError(
            f"tokens=True makes every position a row; pool={pool!r} makes one per input: choose one"
        )
    module = find_module(model, layer)
    dev = resolve_device(device)
    meta = {
        "model": type(model).__name__,
        "layer": layer,
        "hook": hook,
        "tokens": tokens,
        "pool": pool,
    }
    sink = _Rows() if out is None else _Store(out, shard_rows, storage_dtype, meta)
    try:
        n_inputs = _forward_all(
            model,
            module,
            _batches(inputs, labels, batch_size),
            dev,
            sink,
            (hook, tokens, pool, layer),
        )
        if n_inputs == 0:
            raise ValueError(
                "inputs are empty: at least one input is needed to collect activations"
            )
        return sink.close(meta)
    except BaseException:
        if isinstance(sink, _Store):
            sink.writer.abort()
        raise


def _forward_all(
    model: nn.Module,
    module: nn.Module,
    batches: Iterator[tuple[Batch, Tensor | None]],
    dev: torch.device,
    sink: _Rows | _Store,
    how: tuple[str, bool, str | None, str],
) -> int:
    """Run every batch through ``model``, handing each batch's rows to ``sink``; the number
    of inputs seen."""
    hook, tokens, pool, layer = how
    seen: list[Tensor] = []
    handle = module.register_forward_hook(
        lambda _m, args, kwargs, output: seen.append(_layer_value(args, kwargs, output, hook)),
        with_kwargs=True,
    )
    was_training = model.training
    original_device = next(iter(model.parameters()), torch.empty(0)).device
    model.eval().to(dev)
    n_inputs = 0
    try:
        for k, (batch, y) in enumerate(batches):
            b = _batch_size(batch)
            if b == 0:
                continue
            seen.clear()
            _run(model, batch, dev)
            if len(seen) != 1:
                raise ValueError(
                    f"layer {layer!r} ran {len(seen)} times in one forward pass; "
                    "choose a layer that runs once"
                )
            mask = batch.get("attention_mask") if isinstance(batch, dict) else None
            x, local, pos = _batch_rows(seen.pop(), mask, tokens, pool)
            check_finite(x, f"activations of layer {layer!r} (batch {k})")
            if y is not None and len(y) != b:
                raise ValueError(f"batch {k} has {len(y)} labels for {b} inputs")
            sink.append(x, None if y is None else y.long()[local], local + n_inputs, pos)
            n_inputs += b
    finally:
        handle.remove()
        model.to(original_device)
        model.train(was_training)
    return n_inputs
