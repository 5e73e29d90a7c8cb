"""Artefact I/O: safetensors for tensors, JSON for everything else, written atomically.

One artefact is one ``.safetensors`` file. Its header metadata holds ``kind`` (what it is),
``format_version`` (:data:`flowmatch.outputs.FORMAT_VERSION`) and a JSON document under the key
``"flowmatch"``. :func:`load_state` checks all three before any tensor is used and returns an
:class:`Artefact` whose accessors validate each entry (presence, dtype, shape, finiteness), so
that a truncated, forged or foreign file fails with one line naming the file and the entry.
Every write goes through :mod:`flowmatch.outputs` (path policy, atomic replacement).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flowmatch.outputs import FORMAT_VERSION, staged_file

__all__ = [
    "Artefact",
    "ArtefactError",
    "atomic_path",
    "atomic_write_text",
    "check_input_file",
    "load_state",
    "save_state",
    "write_json",
]

_META_KEY = "flowmatch"
_HEADER_CAP = 100_000_000


class ArtefactError(ValueError):
    """A file that should hold a flowmatch artefact cannot be used; the message names the file
    and the missing or bad entry."""


@contextmanager
def atomic_path(path: str | os.PathLike, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only on success.

    ``path`` must be absent or hold a flowmatch artefact of ``kind``
    (:func:`flowmatch.outputs.check_file_output`).
    """
    with staged_file(path, kind) as tmp:
        yield tmp


def atomic_write_text(path: str | os.PathLike, text: str, kind: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path, kind) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, kind: str | None = None) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable)
    return atomic_write_text(path, text, kind)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def save_state(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any], kind: str
) -> Path:
    """Save ``tensors`` (safetensors) with ``kind``, the format version and ``meta`` (JSON) in
    the header, atomically; ``path`` must be absent or hold a ``kind`` already."""
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {
        _META_KEY: json.dumps(meta, sort_keys=True, default=_jsonable),
        "kind": kind,
        "format_version": str(FORMAT_VERSION),
    }
    with atomic_path(path, kind) as tmp:
        save_file(payload, str(tmp), metadata=header)
        _canonical_header(tmp)
    return Path(path)


def _canonical_header(path: Path) -> None:
    """Rewrite the header of safetensors file ``path`` with sorted keys.

    The library writes the metadata entries in hash order, which changes from one process to
    the next; sorted, identical content gives identical bytes."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        raw = text.encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        if len(raw) == n:
            f.seek(8)
            f.write(raw)
            return
        data_start = 8 + n
    # a header of another length: stream the data behind the new header
    tmp = path.with_name(path.name + ".hdr")
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(struct.pack("<Q", len(raw)) + raw)
            src.seek(data_start)
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- reading
def check_input_file(path: str | os.PathLike, what: str = "a file") -> Path:
    """``Path(path)`` if it is an existing, non-empty regular file; else a one-line error.

    ``what`` names the file expected, with its article (e.g. "an activation file")."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no file at {p}")
    if p.is_dir():
        raise ArtefactError(f"{p} is a folder; {what} is needed here")
    if not p.is_file():
        raise ArtefactError(f"{p} is not a regular file; {what} is needed here")
    if p.stat().st_size == 0:
        raise ArtefactError(f"{p} is empty (0 bytes); {what} is needed here")
    return p


def _read_header(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ArtefactError(f"{path} is not a safetensors file ({size} bytes: truncated)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ArtefactError(
                f"{path} is truncated or not a safetensors file (header of {n} bytes announced, "
                f"{size - 8} present)"
            )
        if n > _HEADER_CAP:
            raise ArtefactError(f"{path}: safetensors header of {n} bytes is too large")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ArtefactError(f"{path} is not a safetensors file (bad header: {err})") from None
    if not isinstance(header, dict):
        raise ArtefactError(f"{path} is not a safetensors file (its header is not an object)")
    return header


def load_state(path: str | os.PathLike, kind: str, *, legacy_kind: bool = False) -> Artefact:
    """Read a file written by :func:`save_state` and check that it holds a ``kind``.

    Refused with :class:`ArtefactError` (one line naming the file): a folder, an empty,
    truncated or foreign file, a flowmatch artefact of another kind, a format version newer
    than this flowmatch reads, metadata that is not a JSON object. Files written before the
    header carried a format version read as version 0; ``legacy_kind`` also accepts such files
    without a ``kind``.
    """
    p = check_input_file(path, f"a flowmatch {kind} file")
    header = _read_header(p)
    meta_raw = header.get("__metadata__") or {}
    if not isinstance(meta_raw, dict) or _META_KEY not in meta_raw:
        raise ArtefactError(f"{p} is not a flowmatch artefact (no '{_META_KEY}' metadata)")
    try:
        meta = json.loads(meta_raw[_META_KEY])
    except (TypeError, ValueError, RecursionError) as err:
        raise ArtefactError(f"{p}: the flowmatch metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ArtefactError(
            f"{p}: the flowmatch metadata must be a JSON object, got {type(meta).__name__}"
        )
    found = meta_raw.get("kind", meta.get("kind"))
    if found != kind and not (found is None and legacy_kind):
        what = "no kind" if found is None else f"a {found!r}"
        raise ArtefactError(f"{p} holds {what}, not a flowmatch {kind}")
    version = _version(p, meta_raw.get("format_version"))
    try:
        tensors = load_file(str(p))
    except Exception as err:  # safetensors raises its own error types for bad files
        raise ArtefactError(f"{p} is not a readable safetensors file ({err})") from None
    return Artefact(p, kind, version, tensors, meta)


def _version(path: Path, raw: Any) -> int:
    if raw is None:
        return 0
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise ArtefactError(f"{path}: format_version {raw!r} is not an integer") from None
    if version > FORMAT_VERSION:
        raise ArtefactError(
            f"{path} has format version {version}; this flowmatch reads versions up to "
            f"{FORMAT_VERSION}: upgrade flowmatch to read it"
        )
    if version < 1:
        raise ArtefactError(f"{path}: format_version {raw!r} is not a valid version")
    return version


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Artefact:
    """A loaded artefact: tensors and metadata, with validating accessors.

    Attributes
    ----------
    path : Path; kind : str; version : int (0: written before versions existed).
    tensors : dict[str, Tensor]; meta : dict — the JSON metadata document.
    """

    path: Path
    kind: str
    version: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def error(self, message: str) -> ArtefactError:
        """An :class:`ArtefactError` prefixed with the file."""
        return ArtefactError(f"{self.path}: {message}")

    def check_tensor_names(self, allowed: Iterable[str], prefixes: tuple[str, ...] = ()) -> None:
        """Refuse tensors that this kind never holds (a forged file)."""
        allowed = set(allowed)
        extra = sorted(k for k in self.tensors if k not in allowed and not k.startswith(prefixes))
        if extra:
            raise self.error(f"unexpected tensor {extra[0]!r} in a {self.kind} file")

    def tensor(
        self,
        name: str,
        dtype: torch.dtype | tuple[torch.dtype, ...] | str | None = None,
        shape: tuple[int | None, ...] | None = None,
        *,
        finite: bool = True,
    ) -> torch.Tensor:
        """Entry ``name``, checked: present, of ``dtype`` ("float": any floating dtype),
        of ``shape`` (None matches any size), and finite."""
        if name not in self.tensors:
            raise self.error(f"tensor {name!r} is missing (not a complete {self.kind} file)")
        t = self.tensors[name]
        allowed = (
            _FLOATS if dtype == "float" else (dtype,) if isinstance(dtype, torch.dtype) else dtype
        )
        if allowed and t.dtype not in allowed:
            want = " or ".join(str(d).replace("torch.", "") for d in allowed)
            raise self.error(f"tensor {name!r} has dtype {str(t.dtype)[6:]}, expected {want}")
        if shape is not None and (
            t.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape))
        ):
            want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
            raise self.error(f"tensor {name!r} has shape {tuple(t.shape)}, expected {want}")
        if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise self.error(f"tensor {name!r} holds NaN or infinite values")
        return t

    def field(self, name: str, types: type | tuple[type, ...], where: Any = None) -> Any:
        """Metadata entry ``name`` (in ``where``, default the top level) of one of ``types``."""
        doc = self.meta if where is None else where
        if not isinstance(doc, dict) or name not in doc:
            raise self.error(f"metadata entry {name!r} is missing")
        value = doc[name]
        types = types if isinstance(types, tuple) else (types,)
        bad_bool = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or bad_bool:
            names = " or ".join(t.__name__ for t in types)
            raise self.error(f"metadata entry {name!r} must be {names}, got {value!r}")
        return value
