"""Run a function in several CPU processes joined by a gloo process group, for tests of
multi-process code.

    import torch
    from _spawn import run_ranks

    def _worker(scale):              # module level: the processes import it by name
        import flowmatch.distributed as fd
        t = torch.ones(2) * (fd.rank() + 1) * scale
        return fd.all_reduce_sum(t)  # whatever it returns comes back to the test

    def test_sum():
        results = run_ranks(_worker, 2, 10.0)   # [rank 0's result, rank 1's result]
        assert all(r.tolist() == [30.0, 30.0] for r in results)

Each process sees the environment ``torchrun`` would give it: ``MASTER_ADDR`` (127.0.0.1),
``MASTER_PORT`` (a free port), ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``LOCAL_WORLD_SIZE``, and the test process's ``sys.path``. By default the default process
group is initialised before ``fn`` runs and destroyed after it; with ``init=False`` ``fn``
sees only the environment and may initialise the group itself (e.g. through
``flowmatch.distributed.init_from_env``). Torch uses one thread per process.

The processes never copy the test process's memory. By default they are forked from a
``forkserver`` that imported torch once, when the first run began, so later runs start in a
fraction of a second instead of importing torch again in every process; their environment
is then the test process's as it was at that first run (pass ``env`` for anything set
later, or ``start_method="spawn"`` for a fresh interpreter per process).

A process that raises fails the call with a ``RuntimeError`` holding the traceback of every
rank that raised, the earliest first (the others often fail only because a peer went away);
a run longer than ``timeout`` seconds kills every process and raises ``TimeoutError``, and
collectives inside the group give up after the same time, so a hang fails the test instead
of stalling the suite.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

__all__ = ["free_port", "run_ranks"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 60.0,
    init: bool = True,
    backend: str = "gloo",
    env: Mapping[str, str] | None = None,
    start_method: str = "forkserver",
) -> list[Any]:
    """Call ``fn(*args)`` in ``world_size`` processes joined as one distributed job.

    Parameters
    ----------
    fn : a module-level function (the processes import it by its module and name).
    world_size : number of processes.
    *args : passed to ``fn`` in every process; picklable.
    timeout : seconds for the whole run, and for any collective inside it.
    init : initialise the default process group (``backend``) before ``fn`` and destroy it
        after; False leaves that to ``fn``.
    backend : the process group's backend when ``init``.
    env : extra environment variables for every process (they override the launcher's).
    start_method : ``"forkserver"`` (torch imported once, in the server) or ``"spawn"``.

    Returns
    -------
    What ``fn`` returned in each process, in rank order (saved with ``torch.save`` and read
    back with ``torch.load``, so tensors and any picklable objects).
    """
    if "<locals>" in fn.__qualname__ or fn.__name__ == "<lambda>":
        raise ValueError(f"fn must be a module-level function, got {fn.__qualname__}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    with tempfile.TemporaryDirectory(prefix="run_ranks_") as tmp:
        setup = {
            "world_size": world_size,
            "port": free_port(),
            "out": tmp,
            "timeout": float(timeout),
            "init": init,
            "backend": backend,
            "env": dict(env or {}),
        }
        deadline = time.monotonic() + float(timeout)
        if start_method == "forkserver":
            mp.get_context("forkserver").set_forkserver_preload(["torch", "torch.distributed"])
        ctx = mp.start_processes(
            _rank_main, args=(fn, args, setup), nprocs=world_size, join=False,
            start_method=start_method,
        )  # fmt: skip
        try:
            _join(ctx, deadline, float(timeout))
        except ProcessException as err:
            raise RuntimeError(_failures(Path(tmp), err)) from None
        return [
            torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world_size)
        ]


def _join(ctx: Any, deadline: float, timeout: float) -> None:
    """Wait for every process of ``ctx``; a process that failed raises (the others are
    killed), and so does the ``time.monotonic()`` deadline, after killing the processes
    still running."""
    while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            alive = [r for r, p in enumerate(ctx.processes) if p.is_alive()]
            for r in alive:
                ctx.processes[r].kill()
            for p in ctx.processes:
                p.join()
            raise TimeoutError(f"ranks {alive} still ran after {timeout:g} s; killed")


def _failures(out: Path, err: ProcessException) -> str:
    """Every failed rank's traceback, the earliest failure first; torch's report of the
    failure it saw when no rank left one (e.g. a process killed by a signal)."""
    found = []
    for path in out.glob("rank*.err"):
        when, text = path.read_text().split("\n", 1)
        found.append((float(when), path.stem.removeprefix("rank"), text))
    if not found:
        return str(err)
    return "\n".join(f"rank {r} failed:\n{text}" for _, r, text in sorted(found))


def _rank_main(index: int, fn: Callable[..., Any], args: tuple, setup: dict[str, Any]) -> None:
    """One process: the launcher's environment, the process group, ``fn``, its result."""
    world = str(setup["world_size"])
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(setup["port"]),
        RANK=str(index),
        WORLD_SIZE=world,
        LOCAL_RANK=str(index),
        LOCAL_WORLD_SIZE=world,
    )
    os.environ.update(setup["env"])
    torch.set_num_threads(1)
    try:
        if setup["init"]:
            timeout = datetime.timedelta(seconds=setup["timeout"])
            dist.init_process_group(setup["backend"], timeout=timeout)
        result = fn(*args)
        torch.save(result, Path(setup["out"]) / f"rank{index}.pt")
    except BaseException:
        text = f"{time.time()!r}\n{traceback.format_exc()}"
        (Path(setup["out"]) / f"rank{index}.err").write_text(text)
        raise
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
