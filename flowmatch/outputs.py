"""Where flowmatch may write, and how it replaces what it wrote before.

Every writer goes through this module: ``FlowAutoencoder.save``, ``ActivationSet.save``,
``Translation.save``, ``flowmatch fit/translate --out``, ``flowmatch run``'s run folder, the
benchmarks' ``--json`` and figure folders, ``Report.to_html`` and the zoo model cache.

Policy
------
flowmatch replaces only an artefact it wrote itself, of the same kind:

- a file artefact is recognised by its own content: the safetensors header metadata ``kind``
  and ``format_version``; a JSON object's ``"flowmatch"`` entry; a report's
  ``<meta name="generator" content="flowmatch">`` tag;
- a folder artefact (a Translation, a run folder, a figures folder) by its marker file
  ``.flowmatch.json`` (``kind``, ``format_version`` and the list of files written). It is
  replaced only while it holds nothing but those files: a file of the user's inside it keeps it.
  Folders written before markers existed are recognised by their exact layout.

Anything else in the way is refused with an :class:`OutputPathError` whose one line says what
to do: a file or a non-empty folder that flowmatch did not write, a file where a folder belongs
or the reverse, ``.``, the current directory or any folder above it, a symbolic link. Writers
call :func:`check_file_output` / :func:`check_folder_output` before any fitting starts, and the
check runs again just before the replacement.

Atomic replacement
------------------
New content is written under a hidden name beside the target (``.NAME.flowmatch-new-PID-…``).
A file then replaces the target with one ``os.replace``. A folder replaces it in three steps:
the old folder moves aside to ``.NAME.flowmatch-old``, the new one moves in, the old one is
deleted; SIGINT and SIGTERM are held back during the two renames. If the process dies between
them anyway (SIGKILL, power loss), the next write to the same target restores the old folder
when the target is missing and deletes it when the new one is in place; staging litter of a
dead process is deleted with a warning.

New files and folders get the permissions of ordinary new files under the process umask
(``0666 & ~umask``, ``0777 & ~umask``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import struct
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT_VERSION",
    "MARKER",
    "OutputPathError",
    "apply_umask",
    "check_file_output",
    "check_folder_output",
    "check_name",
    "figures_folder",
    "file_kind",
    "read_marker",
    "safetensors_metadata",
    "staged_file",
    "staged_folder",
]

FORMAT_VERSION = 1
"""Format version written into every artefact (files and folder markers)."""

MARKER = ".flowmatch.json"
"""Marker file of a folder artefact."""

_NEW = "flowmatch-new"
_OLD = "flowmatch-old"
_HEADER_CAP = 100_000_000  # the safetensors library refuses larger headers as well
_HTML_TAG = '<meta name="generator" content="flowmatch">'

_NOUNS = {
    "FlowAutoencoder": "flow autoencoder (.safetensors)",
    "FlowAutoencoder.checkpoint": "training checkpoint (.safetensors)",
    "ActivationSet": "activation file (.safetensors)",
    "ActivationStore": "activation store folder",
    "ZooModel": "zoo model (.safetensors)",
    "benchmark": "benchmark result (.json)",
    "report": "HTML report",
    "Translation": "translation folder",
    "run": "run folder",
    "figures": "figures folder",
}


class OutputPathError(ValueError):
    """An output path flowmatch must not write to; the message says what to do instead."""


def _noun(kind: str | None) -> str:
    return _NOUNS.get(kind or "", f"{kind} artefact")


def _a(kind: str | None) -> str:
    """The noun of ``kind`` with its indefinite article."""
    noun = _noun(kind)
    return f"{'an' if noun[0] in 'aeiouAEIOU' else 'a'} {noun}"


# ----------------------------------------------------------------------------- names
def check_name(name: Any, what: str = "run name") -> str:
    """Return ``name`` if it is one safe path component, else raise :class:`OutputPathError`.

    Refused: non-strings (``None`` included), ``""``, ``"."``, ``".."``, names holding a path
    separator or a control character (absolute paths and ``../x`` included), names starting
    with ``"."`` (hidden; staging uses them) and names over 255 bytes.
    """
    if not isinstance(name, str):
        raise OutputPathError(f"the {what} must be a string, got {name!r}; quote it in YAML")
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    problem = None
    if name in ("", ".", ".."):
        problem = "is not a folder name"
    elif any(s in name for s in seps):
        problem = (
            "holds a path separator; it must be one folder name (use output_dir for the place)"
        )
    elif any(ord(c) < 32 or c == "\x7f" for c in name):
        problem = "holds a control character"
    elif name.startswith("."):
        problem = "starts with '.'; hidden names are reserved for staging"
    elif len(name.encode("utf-8", "surrogateescape")) > 255:
        problem = "is longer than 255 bytes"
    if problem:
        raise OutputPathError(
            f"the {what} {name!r} {problem}; choose a plain name such as 'digits'"
        )
    return name


# ----------------------------------------------------------------------------- sniffing
def safetensors_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file, or None when ``path`` is not one.

    Reads only the header (8-byte little-endian length + JSON); never raises for bad content.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            size = os.fstat(f.fileno()).st_size
            if n < 2 or n > _HEADER_CAP or n > size - 8:
                return None
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else None


def _legacy_safetensors_kind(meta: dict[str, str]) -> str | None:
    """Kind of a file written before the header carried ``kind``."""
    try:
        doc = json.loads(meta.get("flowmatch", ""))
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("kind"), str):
        return doc["kind"]
    if "spec" in doc and "test_accuracy" in doc:
        return "ZooModel"
    if {"corpus", "encoder", "text_sha256"} <= set(doc):
        return "EmbeddingCache"
    return None


def file_kind(path: str | os.PathLike) -> str | None:
    """Kind of the flowmatch artefact in file ``path``, or None when flowmatch did not write it."""
    p = Path(path)
    meta = safetensors_metadata(p)
    if meta is not None:
        if "flowmatch" not in meta:
            return None
        kind = meta.get("kind")
        return kind if isinstance(kind, str) else _legacy_safetensors_kind(meta)
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    text = head.lstrip()
    if text[:15].lower() == b"<!doctype html>":
        return "report" if _HTML_TAG.encode() in head else None
    if text[:1] == b"{":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if isinstance(doc, dict):
            tag = doc.get("flowmatch")
            if isinstance(tag, dict) and isinstance(tag.get("kind"), str):
                return tag["kind"]
            if "wall_seconds" in doc and ("env" in doc or "environment" in doc):
                return "benchmark"  # written before the tag existed
    return None


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's ``.flowmatch.json`` marker as a dict, or None when absent or unreadable."""
    try:
        doc = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        return None
    return doc


def _entries(folder: Path) -> list[str]:
    """Every file and folder below ``folder``, as sorted POSIX paths relative to it."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        out += [(rel / n).as_posix() for n in dirs + files]
    return sorted(out)


def _legacy_translation(folder: Path) -> bool:
    names = {"translation.safetensors", "autoencoder_a.safetensors", "autoencoder_b.safetensors"}
    if set(_entries(folder)) != names:
        return False
    return file_kind(folder / "translation.safetensors") == "Translation"


def _legacy_run(folder: Path) -> bool:
    entries = _entries(folder)
    top = {e for e in entries if "/" not in e}
    allowed = {"report.html", "metrics.json", "timings.json", "figures", "translation"}
    if "metrics.json" not in top or not top <= allowed:
        return False
    for e in entries:
        if e.startswith("figures/") and not (e.count("/") == 1 and e.endswith(".png")):
            return False
    return "translation" not in top or _legacy_translation(folder / "translation")


_LEGACY_FOLDERS = {"Translation": _legacy_translation, "run": _legacy_run}


def _folder_problem(folder: Path, kind: str) -> str | None:
    """Why the existing folder ``folder`` may not be replaced by a ``kind``, or None."""
    entries = _entries(folder)
    if not entries:
        return None
    marker = read_marker(folder)
    if marker is None:
        if kind in _LEGACY_FOLDERS and _LEGACY_FOLDERS[kind](folder):
            return None
        return f"{folder} is a non-empty folder that flowmatch did not write"
    if marker["kind"] != kind:
        return f"{folder} holds {_a(marker['kind'])} written by flowmatch, not {_a(kind)}"
    version = marker.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        return (
            f"{folder} was written by a newer flowmatch (format version {version!r}; this one "
            f"writes {FORMAT_VERSION})"
        )
    listed = marker.get("files")
    if listed is None and kind == "figures":
        extra = [e for e in entries if e != MARKER and not e.endswith(".png")]
    else:
        known = set(listed) if isinstance(listed, list) else set()
        extra = [e for e in entries if e != MARKER and e not in known]
    if extra:
        shown = ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
        return f"{folder} holds files flowmatch did not write ({shown})"
    return None


# ----------------------------------------------------------------------------- checks
def _check_parent(target: Path) -> None:
    """The nearest existing ancestor of ``target`` must be a writable folder."""
    parent = target.parent
    while not os.path.lexists(parent):
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(
            f"cannot write {target}: {parent} is a file, not a folder; choose another place"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"cannot write {target}: no permission to write in {parent}; choose another place"
        )


def _inside_cwd_chain(target: Path) -> bool:
    """True when ``target`` is the current directory or a folder above it."""
    try:
        here = Path.cwd().resolve()
        resolved = target.resolve()
    except OSError:
        return False
    return resolved == here or resolved in here.parents


def check_file_output(path: str | os.PathLike, kind: str | None) -> Path:
    """Raise :class:`OutputPathError` unless ``path`` may receive a file artefact of ``kind``.

    ``path`` may be absent, or a file flowmatch wrote that holds a ``kind``; ``kind=None``
    allows only an absent path. Leftovers of interrupted earlier writes are cleaned first.
    Nothing is created. Returns ``Path(path)``.
    """
    target = _as_target(path, kind)
    _recover(target)
    if target.is_symlink():
        raise OutputPathError(f"{target} is a symbolic link; give the real path instead")
    if target.is_dir():
        raise OutputPathError(
            f"{target} is a folder, but {_a(kind)} is a file; give a file name such as "
            f"{target / _example_name(kind)}"
        )
    if os.path.lexists(target):
        found = file_kind(target)
        if kind is None or found != kind:
            what = "flowmatch did not write it" if found is None else f"it holds {_a(found)}"
            raise OutputPathError(
                f"{target} exists and {what}; flowmatch replaces only its own {_noun(kind)} "
                "files: choose another name or move that file away"
            )
    _check_parent(target)
    return target


def check_folder_output(path: str | os.PathLike, kind: str) -> Path:
    """Raise :class:`OutputPathError` unless ``path`` may receive a folder artefact of ``kind``.

    ``path`` may be absent, an empty folder, or a folder flowmatch wrote that holds a ``kind``
    and nothing else. Refused: ``.``, the current directory and any folder above it, a file,
    a symbolic link, a folder with anything flowmatch did not write. Leftovers of an
    interrupted earlier replacement are recovered first. Nothing is created.
    """
    target = _as_target(path, kind)
    if target.name in ("", ".", "..") or _inside_cwd_chain(target):
        raise OutputPathError(
            f"refusing to write {_a(kind)} to {str(path)!r}, the current folder or one "
            f"above it; give a new folder name such as {_example_name(kind)!r}"
        )
    _recover(target)
    if target.is_symlink():
        raise OutputPathError(f"{target} is a symbolic link; give the real path instead")
    if os.path.lexists(target) and not target.is_dir():
        raise OutputPathError(
            f"{target} is a file, but {_a(kind)} is a folder; choose another name or move "
            "that file away"
        )
    if target.is_dir():
        problem = _folder_problem(target, kind)
        if problem:
            raise OutputPathError(
                f"{problem}; flowmatch replaces only its own {_noun(kind)}s: choose a new "
                "folder name, or move the folder away"
            )
    _check_parent(target)
    return target


def _as_target(path: Any, kind: str | None) -> Path:
    if path is None or str(path) == "":
        raise OutputPathError(f"no output path given for the {_noun(kind)}")
    if "\x00" in str(path):
        raise OutputPathError(f"the output path {str(path)!r} holds a null character")
    return Path(path)


def _example_name(kind: str | None) -> str:
    return {
        "Translation": "translation",
        "ActivationStore": "activations",
        "run": "runs",
        "figures": "figures",
        "benchmark": "result.json",
        "report": "report.html",
    }.get(kind or "", "model.safetensors")


# ----------------------------------------------------------------------------- recovery
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _recover(target: Path) -> None:
    """Finish or undo an interrupted earlier write to ``target`` (see the module docstring)."""
    parent = target.parent
    if not parent.is_dir():
        return
    name = target.name
    old = parent / f".{name}.{_OLD}"
    if old.is_dir() and not old.is_symlink():
        if not os.path.lexists(target):
            os.replace(old, target)
            warnings.warn(
                f"restored {target} from an interrupted earlier replacement", stacklevel=4
            )
        elif read_marker(old) is not None or any(f(old) for f in _LEGACY_FOLDERS.values()):
            shutil.rmtree(old, ignore_errors=True)
        else:
            warnings.warn(f"left {old} in place: it does not look like flowmatch's", stacklevel=4)
    prefix = f".{name}.{_NEW}-"
    try:
        leftovers = [p for p in parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for p in leftovers:
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            _remove(p)
            warnings.warn(f"removed {p}, left by an interrupted earlier write", stacklevel=4)
    _restore_legacy_aside(target)


def _restore_legacy_aside(target: Path) -> None:
    """Older flowmatch staged run folders as ``.NAME.old-XXXX/NAME``: restore a lost one."""
    if os.path.lexists(target):
        return
    for aside in sorted(target.parent.glob(f".{target.name}.old-*")):
        inner = aside / target.name
        if inner.is_dir() and not inner.is_symlink():
            os.replace(inner, target)
            shutil.rmtree(aside, ignore_errors=True)
            warnings.warn(f"restored {target} from {aside} (an interrupted run)", stacklevel=5)
            return


# ----------------------------------------------------------------------------- permissions
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (and everything below a folder) the mode of ordinary new files:
    ``0666 & ~umask`` for files, ``0777 & ~umask`` for folders (temporary files are private)."""
    mask = _umask()
    root = Path(path)
    paths = [root]
    if root.is_dir() and not root.is_symlink():
        paths += [Path(r) / n for r, ds, fs in os.walk(root) for n in ds + fs]
    for p in paths:
        if p.is_symlink():
            continue
        mode = 0o777 if stat.S_ISDIR(p.stat().st_mode) else 0o666
        p.chmod(mode & ~mask)


# ----------------------------------------------------------------------------- writing
@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then act on them (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is None:  # installed outside Python: cannot be restored
            continue
        previous[int(signum)] = signal.signal(signum, lambda s, _f: received.append(s))
    try:
        yield
    finally:
        for num, handler in previous.items():
            signal.signal(num, handler)
        for num in dict.fromkeys(received):
            handler = previous[num]
            if callable(handler):
                handler(num, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), num)


def _staging_name(target: Path) -> str:
    return f".{target.name}.{_NEW}-{os.getpid()}-"


@contextmanager
def staged_file(path: str | os.PathLike, kind: str | None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``path`` is checked with :func:`check_file_output` before and again just before the
    replacement; on any error (or interrupt) the temporary file is removed and ``path`` is left
    as it was.
    """
    target = check_file_output(path, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_staging_name(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        apply_umask(tmp)
        check_file_output(target, kind)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staged_folder(path: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield a new hidden folder beside ``path``; on success it replaces ``path``.

    The folder gets the marker (kind, format version, the files written), the umask's
    permissions, and replaces ``path`` by :func:`_replace_folder`; on any error or interrupt it
    is removed and ``path`` is left as it was.
    """
    target = check_folder_output(path, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_staging_name(target), dir=target.parent))
    try:
        yield tmp
        _write_marker(tmp, kind, files=_entries(tmp))
        apply_umask(tmp)
        _replace_folder(tmp, target, kind)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def figures_folder(path: str | os.PathLike) -> Path:
    """Create (or reuse) a folder that benchmarks write PNG figures into.

    Allowed: an absent or empty folder (it gets a ``figures`` marker) or a figures folder
    flowmatch made; anything else is refused (see :func:`check_folder_output`).
    """
    target = check_folder_output(path, "figures")
    target.mkdir(parents=True, exist_ok=True)
    if read_marker(target) is None:
        _write_marker(target, "figures", files=None)
        apply_umask(target)
    return target


def _write_marker(folder: Path, kind: str, files: list[str] | None) -> None:
    doc = {"kind": kind, "format_version": FORMAT_VERSION, "files": files}
    (folder / MARKER).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", "utf-8")


def _replace_folder(new: Path, target: Path, kind: str) -> None:
    """Move ``new`` onto ``target``: old aside, new in, old deleted (no window of loss)."""
    check_folder_output(target, kind)
    old = target.parent / f".{target.name}.{_OLD}"
    moved_in = False
    try:
        with _signals_held():
            had_old = target.is_dir() and bool(os.listdir(target))
            if had_old:
                os.replace(target, old)
            elif target.is_dir():
                target.rmdir()
            try:
                os.replace(new, target)
            except BaseException:
                if had_old:
                    os.replace(old, target)
                raise
            moved_in = True
    finally:
        if moved_in and old.exists():
            shutil.rmtree(old, ignore_errors=True)
