"""Collect a layer's activations from any ``torch.nn.Module`` through a forward hook.

>>> acts = collect(model, inputs, layer="blocks.0.mlp", labels=y)   # ActivationSet (n, d)
>>> acts.save("acts.safetensors"); ActivationSet.load("acts.safetensors")
"""

from __future__ import annotations

import difflib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from flowmatch._io import ArtefactError, check_input_file, load_state, save_state
from flowmatch.validation import check_finite, resolve_device

__all__ = ["ActivationSet", "collect", "find_module", "head_after"]


@dataclass(frozen=True)
class ActivationSet:
    """Activations of one layer of one model.

    Attributes
    ----------
    x : Tensor  # (n_samples, d), float32, CPU
    labels : Tensor | None  # (n_samples,), int64 class labels of the inputs, when known
    meta : dict  # JSON-serialisable: ``model``, ``layer``, ``input_index`` (row → input) ...
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
        """Rows ``index`` as a new ActivationSet (labels and ``input_index`` follow)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        meta = dict(self.meta)
        if "input_index" in meta:
            meta["input_index"] = [meta["input_index"][i] for i in idx.tolist()]
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


def _rows(out: Tensor, tokens: bool) -> Tensor:
    """(batch, ...) → (rows, d): positions to rows if ``tokens`` else trailing dims to features."""
    if out.ndim == 1:
        return out[:, None]
    if tokens and out.ndim >= 3:
        return out.reshape(-1, out.shape[-1])
    return out.reshape(out.shape[0], -1)


@torch.no_grad()
def collect(
    model: nn.Module,
    inputs: Tensor | np.ndarray,
    layer: str,
    *,
    labels: Tensor | np.ndarray | None = None,
    hook: Literal["output", "input"] = "output",
    tokens: bool = False,
    batch_size: int = 512,
    device: str | torch.device = "auto",
) -> ActivationSet:
    """Run ``model`` on ``inputs`` and record the output (or input) of submodule ``layer``.

    Parameters
    ----------
    model : any module; put in eval mode for the pass and restored afterwards.
    inputs : Tensor  # (n_inputs, ...) fed to ``model`` in batches
    layer : dotted submodule name (``"fc1"``, ``"blocks.0.mlp"``, ``"blocks.0.hook_resid_pre"``).
    labels : optional (n_inputs,) class labels carried along (repeated per position).
    hook : record what the layer returns (``"output"``) or what it receives (``"input"``).
    tokens : for (batch, positions, d) activations, make every position a row.
    batch_size, device : ``device="auto"`` uses CUDA when available.

    Returns
    -------
    ActivationSet  # x: (n_rows, d) float32 on the CPU
    """
    x_in = torch.as_tensor(np.asarray(inputs)) if isinstance(inputs, np.ndarray) else inputs
    if len(x_in) == 0:
        raise ValueError("inputs are empty: at least one input is needed to collect activations")
    module = find_module(model, layer)
    dev = resolve_device(device)
    chunks: list[Tensor] = []

    def _hook(_mod: nn.Module, args: tuple, output: Any) -> None:
        value = args[0] if hook == "input" else output
        if isinstance(value, (tuple, list)):
            value = value[0]
        chunks.append(_rows(value.detach().float().cpu(), tokens))

    was_training = model.training
    model.eval()
    original_device = next(iter(model.parameters()), torch.empty(0)).device
    model.to(dev)
    handle = module.register_forward_hook(_hook)
    try:
        for start in range(0, len(x_in), batch_size):
            model(x_in[start : start + batch_size].to(dev))
    finally:
        handle.remove()
        model.to(original_device)
        model.train(was_training)
    x = torch.cat(chunks)
    per_input = len(x) // len(x_in)
    check_finite(x, f"activations of layer {layer!r}")
    y = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long).repeat_interleave(per_input)
    meta = {
        "model": type(model).__name__,
        "layer": layer,
        "hook": hook,
        "input_index": torch.arange(len(x_in)).repeat_interleave(per_input).tolist(),
    }
    return ActivationSet(x.contiguous(), y, meta)
