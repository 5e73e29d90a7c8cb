"""``flowmatch bench scale``: from activation stores on disk to a translation, at 10^6 rows.

Two synthetic stores (no extra, nothing downloaded) of ``ROWS × DIM`` float32 rows each are
written once, shard by shard, and reused while their manifest matches: A's rows come from
:class:`benchmarks.speed.RotatedMixture`, B's rows are *other* draws of it times the hidden
rotation. The measurement, in a fresh worker process (its own peak memory):

1. **fit A, fit B** — ``FlowAutoencoder.fit(store)`` with translate's autoencoder settings:
   one streamed pass for the moments and the PCA, then minibatches streamed from disk;
2. **subsample** — ``store_rows`` seeded rows per side for the trees and the map;
3. **translate** — density trees, starting maps, refinement and selection on those rows
   (its own stages are printed as well);
4. **score** — 1,000 held-out paired rows: top-1 among them (cosine) and R².

Each stage reports its wall time and the peak resident memory of the worker during it
(sampled every 50 ms from ``/proc/self/status``). Then the training throughput of the store
fit with 1 and with 2 processes (``torch.distributed``, gloo, one thread each) at the same
global batch: global rows per second, and their ratio.

    flowmatch bench scale                      # 1,000,000 × 768 per side (about 6 GiB on disk)
    flowmatch bench scale --rows 100000 --dim 256 --data /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import print_table, run_isolated, running

__all__ = ["ScaleBench", "add_arguments", "main", "measure_scale", "synthetic_stores"]

_CHUNK = 16_384


# ----------------------------------------------------------------------------- data
def synthetic_stores(
    folder: Path, rows: int, dim: int, *, shard_rows: int = 65_536, seed: int = 0
) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """``(store_a, store_b, test_a, test_b)``: the two stores under ``folder`` (written unless
    a store with the same manifest is there) and 1,000 held-out paired rows."""
    from benchmarks.speed import RotatedMixture

    dist = RotatedMixture(dim, np.random.default_rng(seed))
    meta = {"benchmark": "scale", "rows": rows, "dim": dim, "seed": seed}
    stores = []
    for side, rotation in (("a", None), ("b", dist.rotation)):
        stores.append(_side_store(folder / f"store_{side}", dist, rotation, meta, shard_rows))
    rng = np.random.default_rng([seed, 2])
    test_a = dist.draw(1000, rng)
    return stores[0], stores[1], test_a, test_a @ dist.rotation.T


def _write_stores(folder: Path, rows: int, dim: int, shard_rows: int, seed: int) -> None:
    synthetic_stores(folder, rows, dim, shard_rows=shard_rows, seed=seed)


def _side_store(path: Path, dist: Any, rotation: Any, meta: dict, shard_rows: int) -> Any:
    """One side's store, reused when its manifest matches ``meta``."""
    from flowmatch.store import ActivationStore, StoreWriter

    side = {**meta, "side": path.name}
    if (path / "manifest.json").exists():
        try:
            store = ActivationStore.open(path)
            if store.meta == side and store.shard_sizes[0] == min(shard_rows, meta["rows"]):
                return store
        except ValueError:
            pass
    t0 = time.perf_counter()
    seed_side = 0 if rotation is None else 1
    with StoreWriter(path, shard_rows=shard_rows, meta=side) as writer:
        for i, start in enumerate(range(0, meta["rows"], _CHUNK)):
            m = min(_CHUNK, meta["rows"] - start)
            x = dist.draw(m, np.random.default_rng([meta["seed"], seed_side, i]))
            writer.append(torch.from_numpy(x if rotation is None else x @ rotation.T))
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return ActivationStore.open(path)


# ----------------------------------------------------------------------------- memory
def _rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class _PeakSampler:
    """Samples this process's resident memory every ``interval`` seconds in a thread; the
    peak since the last :meth:`reset`."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self._stop = interval, _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_mb())

    def reset(self) -> float:
        """The peak so far (MiB), then start again from the current value."""
        peak, self.peak = max(self.peak, _rss_mb()), _rss_mb()
        return peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def _stage(rows: list[dict[str, Any]], name: str, sampler: _PeakSampler):
    """Time ``name`` and record the peak resident memory during it."""
    sampler.reset()
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    yield extra
    rows.append(
        {
            "stage": name,
            "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(sampler.reset(), 0),
            **extra,
        }
    )
    print(rows[-1], flush=True)


# ----------------------------------------------------------------------------- end to end
def _end_to_end(folder: str, rows: int, dim: int, store_rows: int, seed: int) -> dict:
    """Inside the worker: stores → fits → subsample → translate → score."""
    from benchmarks.embeddings import retrieval_scores
    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.store import ActivationStore
    from flowmatch.translation import _AE_DEFAULTS, translate

    torch.manual_seed(seed)
    sampler, stages = _PeakSampler(), []
    test = synthetic_stores(Path(folder), rows, dim, seed=seed)[2:]
    store_a = ActivationStore.open(Path(folder) / "store_a")
    store_b = ActivationStore.open(Path(folder) / "store_b")
    fitted = []
    for name, store, s in (("fit A", store_a, seed), ("fit B", store_b, seed + 1)):
        with _stage(stages, name, sampler) as extra:
            ae = FlowAutoencoder(**{**_AE_DEFAULTS, "seed": s, "progress": False}).fit(store)
            extra.update(
                {k: round(v, 1) for k, v in ae.fit_stage_seconds_.items()}, steps=ae.n_steps_
            )
        fitted.append(ae)
    with _stage(stages, "subsample", sampler) as extra:
        xa = store_a.subsample(store_rows, seed=seed).x
        xb = store_b.subsample(store_rows, seed=seed + 1).x
        extra["rows_per_side"] = len(xa)
    with _stage(stages, "translate", sampler) as extra:
        t = translate(fitted[0], fitted[1], data_a=xa, data_b=xb, seed=seed, progress=False)
        extra.update({k: round(v, 1) for k, v in t.info_["seconds"].items()})
    with _stage(stages, "score", sampler):
        scores = retrieval_scores(np.asarray(t(test[0])), test[1])
    sampler.close()
    return {"stages": stages, "top1": scores["top1"], "r2": round(scores["r2"], 4)}


# ----------------------------------------------------------------------------- throughput
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _throughput_rank(rank: int, world: int, port: int, path: str, opts: dict, out: str) -> None:
    """One process of the throughput run: a store fit of ``opts`` under gloo."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    from flowmatch import distributed
    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.store import ActivationStore

    distributed.init_from_env(backend="gloo")
    try:
        ae = FlowAutoencoder(**opts, device="cpu", progress=False).fit(ActivationStore.open(path))
        if rank == 0:
            Path(out).write_text(
                json.dumps({"rows_per_second": ae.train_samples_per_second_, "steps": ae.n_steps_})
            )
    finally:
        torch.distributed.destroy_process_group()


def _throughput(path: str, world: int, batch: int, steps: int, seed: int) -> dict[str, Any]:
    """Training rows per second of a store fit on ``world`` processes."""
    from flowmatch.translation import _AE_DEFAULTS

    opts = {**_AE_DEFAULTS, "batch_size": batch, "max_steps": steps, "eval_steps": steps}
    opts["seed"] = seed
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        torch.multiprocessing.start_processes(
            _throughput_rank,
            args=(world, _free_port(), path, opts, out),
            nprocs=world,
            start_method="spawn",
        )
        result = json.loads(Path(out).read_text())
    return {"processes": world, "global_batch": batch, **result}


# ----------------------------------------------------------------------------- command
@dataclass(frozen=True)
class ScaleBench:
    """``stages``: one row per stage (seconds, peak_rss_mb and the stage's own timings);
    ``top1``, ``r2``: the translation on 1,000 held-out pairs; ``throughput``: one row per
    process count (global rows per second of the store fit's training); ``speedup``: 2
    processes over 1; ``total_seconds``: the end-to-end stages together."""

    rows: int
    dim: int
    store_rows: int
    stages: list[dict[str, Any]]
    top1: float
    r2: float
    total_seconds: float
    peak_rss_mb: float
    throughput: list[dict[str, Any]]
    speedup: float | None


def measure_scale(
    rows: int,
    dim: int,
    folder: Path,
    *,
    store_rows: int = 50_000,
    shard_rows: int = 65_536,
    batch: int = 4096,
    steps: int = 40,
    procs: tuple[int, ...] = (1, 2),
    seed: int = 0,
) -> ScaleBench:
    """Write (or reuse) the stores, run the end-to-end worker, then the throughput runs.

    Every step runs in a worker process: the parent never starts torch's thread pool, which
    a forked worker could not use."""
    run_isolated(_write_stores, folder, rows, dim, shard_rows, seed, what="writing the stores")
    e2e = run_isolated(
        _end_to_end, str(folder), rows, dim, store_rows, seed, what="the end-to-end run"
    )
    throughput = [_throughput(str(folder / "store_a"), w, batch, steps, seed) for w in procs]
    for row in throughput:
        print(row, flush=True)
    rate = {r["processes"]: r["rows_per_second"] for r in throughput}
    speedup = rate[2] / rate[1] if 1 in rate and 2 in rate else None
    stages = [s for s in e2e["stages"] if s["stage"] != "score"]
    return ScaleBench(
        rows=rows,
        dim=dim,
        store_rows=store_rows,
        stages=e2e["stages"],
        top1=e2e["top1"],
        r2=e2e["r2"],
        total_seconds=round(sum(s["seconds"] for s in stages), 1),
        peak_rss_mb=max(s["peak_rss_mb"] for s in e2e["stages"]),
        throughput=throughput,
        speedup=None if speedup is None else round(speedup, 3),
    )


def _default_folder() -> Path:
    from flowmatch.zoo import cache_dir

    return cache_dir() / "scale"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the scale benchmark (``--quick``: 100,000 × 256)."""
    parser.add_argument("--rows", type=int, default=None, help="rows per side (1,000,000)")
    parser.add_argument("--dim", type=int, default=None, help="dimensions (768)")
    parser.add_argument("--data", type=Path, default=None, help="folder of the two stores")
    parser.add_argument("--store-rows", type=int, default=50_000, help="rows for trees and map")
    parser.add_argument("--shard-rows", type=int, default=65_536, help="rows per shard")
    parser.add_argument("--batch", type=int, default=4096, help="global batch of the throughput")
    parser.add_argument("--steps", type=int, default=40, help="steps of each throughput run")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts")


def main(args: argparse.Namespace) -> ScaleBench:
    """Run the benchmark and print the tables."""
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    dim = args.dim or (256 if args.quick else 768)
    with running("scale", args) as run:
        run.result = result = measure_scale(
            rows,
            dim,
            args.data or _default_folder(),
            store_rows=args.store_rows,
            shard_rows=args.shard_rows,
            batch=args.batch,
            steps=args.steps,
            procs=tuple(args.procs),
            seed=args.seed,
        )
        print_table(f"store → translation, {rows} × {dim} per side", result.stages)
        for row in result.stages:
            own = {k: v for k, v in row.items() if k not in ("stage", "seconds", "peak_rss_mb")}
            if own:
                print(f"{row['stage']}: {own}")
        print(
            f"end to end {result.total_seconds:.0f} s, peak resident memory "
            f"{result.peak_rss_mb:.0f} MiB; top-1 {result.top1:.3f}, R² {result.r2:.3f}"
        )
        print_table("store-fit training throughput (global rows/s)", result.throughput)
        if result.speedup is not None:
            print(f"2 processes / 1 process: {result.speedup:.2f}×")
    return result
