"""The thin ``torch.distributed`` layer flowmatch uses: joining a job started by ``torchrun``,
the rank and world size, and the few collectives the library needs.

Every function works in a single process too: without an initialised default process group
the rank is 0, the world size 1, collectives return their input unchanged and
:func:`barrier` returns at once. Code written against this module therefore runs the same
under ``python script.py`` and ``torchrun --nproc-per-node N script.py``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "init_from_env",
    "is_initialized",
    "is_main",
    "rank",
    "shutdown",
    "world_size",
]

_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR")


def is_initialized() -> bool:
    """Whether ``torch.distributed`` is available and its default process group is set up."""
    return dist.is_available() and dist.is_initialized()


def init_from_env(backend: str | None = None, *, timeout_s: float | None = None) -> bool:
    """Join the job a launcher such as ``torchrun`` started, if any.

    When the environment names a job (``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR`` set; the
    port comes from ``MASTER_PORT``) and the default process group is not initialised yet, it
    is initialised from the environment. Under NCCL each process then uses the GPU
    ``LOCAL_RANK`` names (GPU 0 without it).

    Parameters
    ----------
    backend : ``"nccl"``, ``"gloo"`` ...; None: NCCL when CUDA is available, else gloo.
    timeout_s : seconds a collective may wait for the other ranks before failing; None:
        torch's default.

    Returns
    -------
    Whether this process runs distributed: the default process group is initialised, by this
    call or before it. False without a launcher's environment.
    """
    if is_initialized():
        return True
    if not dist.is_available() or not all(k in os.environ for k in _LAUNCH_ENV):
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend='nccl' needs CUDA, which is not available; use 'gloo'")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kw: dict[str, Any] = {"backend": backend, "init_method": "env://"}
    if timeout_s is not None:
        kw["timeout"] = datetime.timedelta(seconds=float(timeout_s))
    dist.init_process_group(**kw)
    return True


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (the default group when None); 0 when not
    distributed."""
    return dist.get_rank(group) if is_initialized() else 0


def world_size(group: Any = None) -> int:
    """Number of processes in ``group`` (the default group when None); 1 when not
    distributed."""
    return dist.get_world_size(group) if is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and logs (True when not
    distributed)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this call; returns at once when not distributed."""
    if is_initialized():
        dist.barrier()


def _comm_device(t: Tensor, group: Any) -> torch.device:
    """The device the group's backend communicates ``t`` on: the current GPU under NCCL,
    else ``t``'s own."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_sum(t: Tensor, group: Any = None) -> Tensor:
    """Sum ``t`` over the ranks, in place; returns ``t`` (unchanged when not distributed).
    Every rank must pass a tensor of the same shape and dtype."""
    if not is_initialized():
        return t
    dev = _comm_device(t, group)
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    if buf is not t:
        t.copy_(buf)
    return t


def all_reduce_mean(t: Tensor, group: Any = None) -> Tensor:
    """Average a floating-point ``t`` over the ranks, in place; returns ``t`` (unchanged when
    not distributed)."""
    if not t.is_floating_point():
        raise TypeError(f"all_reduce_mean needs a floating-point tensor, got {t.dtype}")
    if not is_initialized():
        return t
    return all_reduce_sum(t, group).div_(world_size(group))


def all_gather(t: Tensor, group: Any = None) -> list[Tensor]:
    """Every rank's ``t``, in rank order, on ``t``'s device; ``[t]`` when not distributed.
    Every rank must pass a tensor of the same shape and dtype."""
    if not is_initialized():
        return [t]
    dev = _comm_device(t, group)
    buf = t.to(dev).contiguous()
    out = [torch.empty_like(buf) for _ in range(world_size(group))]
    dist.all_gather(out, buf, group=group)
    return [o.to(t.device) for o in out]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank; ``obj`` itself when not
    distributed. The other ranks' ``obj`` is ignored."""
    if not is_initialized():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    """Destroy the default process group if one is initialised (end of a ``torchrun`` job)."""
    if is_initialized():
        dist.destroy_process_group()
