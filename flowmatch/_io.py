"""Artefact I/O: safetensors for tensors, JSON for everything else, written atomically.

One artefact is one ``.safetensors`` file whose header metadata holds a JSON document under the
key ``"flowmatch"``. Files are first written beside the target and then renamed, so an
interrupted write never leaves a half-written artefact behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

__all__ = ["atomic_path", "atomic_write_text", "load_state", "save_state", "write_json"]

_META_KEY = "flowmatch"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def save_state(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Save ``tensors`` (safetensors) with ``meta`` (JSON in the header), atomically."""
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps(meta, sort_keys=True, default=_jsonable)}
    with atomic_path(path) as tmp:
        save_file(payload, str(tmp), metadata=header)
    return Path(path)


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of :func:`save_state`: ``(tensors, meta)``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no artefact at {path}")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if _META_KEY not in header:
        raise ValueError(f"{path} is not a flowmatch artefact (no '{_META_KEY}' metadata)")
    return load_file(str(path)), json.loads(header[_META_KEY])
