"""Fit a :class:`~flowmatch.autoencoder.FlowAutoencoder` from an on-disk activation store.

``FlowAutoencoder.fit(store)`` lands here. Nothing holds the whole store in memory:

1. **Preprocessing** from one streaming pass: float64 :class:`~flowmatch.streaming.Moments`
   (mean, covariance, column range) of every row; under ``torchrun`` each rank reads every
   ``world_size``-th shard and the moments are merged exactly (``all_reduce``).
2. **Held-out and initial rows**: a seeded uniform draw of at most ``MAX_VALIDATION_ROWS``
   held-out rows (``validation_fraction`` of the store, capped) and ``MAX_INIT_ROWS`` training
   rows for the mixture's EM initialisation; the rest are the training rows.
3. **Training**: Adam on global minibatches streamed from disk
   (:meth:`~flowmatch.store.ActivationStore.iter_batches`: shards and rows in a seeded order
   that does not depend on the number of processes). Under ``torchrun`` the model is wrapped
   in ``DistributedDataParallel`` and rank ``r`` computes the loss of its ``1/world_size``
   share of every global batch, so the averaged gradient is the one-process gradient of the
   same global batch: the fitted parameters agree with a one-process fit to rounding.
   Every ``eval_steps`` steps the held-out NLL (split over ranks, summed) drives early
   stopping, and every ``checkpoint_every`` evaluations rank 0 writes the checkpoint; a later
   ``fit`` with the same data and hyperparameters resumes from the step it records, in the
   same data order, so an interrupted fit ends where an uninterrupted one does.

``fit_stage_seconds_`` holds the wall time of the three parts: ``moments`` (the streamed
pass and the PCA), ``init`` (held-out and initial rows read, mixture initialised) and
``train``.

Memory per process: one or two shards, a minibatch, ``MAX_VALIDATION_ROWS / world_size``
held-out rows and ``MAX_INIT_ROWS`` initial rows (released after the initialisation), all of
them ``d`` floats wide, plus the ``d × d`` float64 moments.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowmatch import _autoencoder_io, distributed
from flowmatch._io import load_state
from flowmatch.streaming import Moments
from flowmatch.validation import resolve_device

__all__ = ["MAX_INIT_ROWS", "MAX_VALIDATION_ROWS", "fit_store"]

logger = logging.getLogger("flowmatch")

MAX_VALIDATION_ROWS = 20_000
MAX_INIT_ROWS = 20_000


class _Objective(nn.Module):
    """The training loss as a module, so that ``DistributedDataParallel`` can wrap it."""

    def __init__(self, ae: Any, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._ae = [ae]  # a list: the estimator is not a submodule

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._ae[0]._loss(self.model, y)


def _device(ae: Any) -> torch.device:
    """The estimator's device; under ``torchrun`` on CUDA, the rank's local GPU."""
    dev = resolve_device(ae.device)
    if dev.type == "cuda" and distributed.world_size() > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def fit_store(ae: Any, store: Any) -> Any:
    """Fit ``ae`` (a validated FlowAutoencoder) on every row of ``store``; returns ``ae``."""
    distributed.init_from_env()
    n, d = len(store), int(store.dim)
    if n <= d:
        raise ValueError(
            f"store {store.path} has {n} rows for {d} dimensions; at least {d + 1} rows are "
            "needed to estimate the covariance"
        )
    ae._device = _device(ae)
    ae._resolve_runtime()
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        seconds[name] = time.perf_counter() - clock[0]
        clock[0] = time.perf_counter()

    moments = _moments(store, bool(ae.progress))
    ae._preprocessing_from_moments(moments)
    ae._set_device_tensors()
    lap("moments")
    val_ids, train_ids, init_ids = _split(n, ae)
    model, y_val = _initial_model(ae, store, val_ids, init_ids)
    ae.model_ = model
    lap("init")
    _Trainer(ae, store, model, y_val, train_ids).run()
    lap("train")
    ae.model_.eval()
    ae.fit_stage_seconds_ = seconds
    return ae


def _moments(store: Any, progress: bool) -> Moments:
    """Float64 moments of every row: this rank's shards, merged over ranks."""
    moments = Moments.empty(int(store.dim))
    rank, world = distributed.rank(), distributed.world_size()
    shards = store.iter_shards(rank, world)
    total = len(range(rank, len(store.shard_sizes), world))
    for _, x in tqdm(
        shards, total=total, desc="moments", leave=False, disable=not progress or rank != 0
    ):
        moments.update(x)
    return moments.all_reduce()


def _split(n: int, ae: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded held-out, training and initialisation row ids (sorted int64)."""
    perm = np.random.default_rng(int(ae.seed)).permutation(n)
    n_val = min(int(round(ae.validation_fraction * n)), MAX_VALIDATION_ROWS) if n >= 20 else 0
    val = np.sort(perm[:n_val])
    train = np.sort(perm[n_val:])
    init = np.sort(perm[n_val : n_val + MAX_INIT_ROWS])
    return val, train, init


def _initial_model(
    ae: Any, store: Any, val_ids: np.ndarray, init_ids: np.ndarray
) -> tuple[nn.Module, Tensor]:
    """The model with its mixture and noise variances initialised from ``init_ids``' rows,
    and this rank's share of the held-out rows in principal coordinates."""
    rank, world = distributed.rank(), distributed.world_size()
    mine = val_ids[rank::world] if len(val_ids) else init_ids[rank::world]
    ids = np.union1d(init_ids, mine)
    rows = store.rows(ids)
    y_init = ae._to_pca(ae._working(rows[np.searchsorted(ids, init_ids)]))
    y_val = ae._to_pca(ae._working(rows[np.searchsorted(ids, mine)]))
    del rows
    model = ae._initial_model(y_init)
    return model.to(ae._device, getattr(torch, ae.dtype)), y_val


class _Trainer:
    """The streamed training loop of one process (see the module docstring)."""

    def __init__(
        self, ae: Any, store: Any, model: nn.Module, y_val: Tensor, train_ids: Any
    ) -> None:
        self.ae, self.store, self.model, self.y_val = ae, store, model, y_val
        self.train_ids = train_ids
        self.rank, self.world = distributed.rank(), distributed.world_size()
        batch = int(ae.batch_size)
        if batch % self.world:
            raise ValueError(
                f"batch_size={batch} is the global minibatch and must be a multiple of the "
                f"{self.world} processes"
            )
        self.steps_per_epoch = len(train_ids) // batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size={batch} exceeds the {len(train_ids)} training rows of the store"
            )
        self.eval_every = int(ae.eval_steps or min(self.steps_per_epoch, 200))
        self.net: nn.Module = _Objective(ae, model)
        if self.world > 1:
            _freeze_unused(self.net, y_val[:2])
            ids = [ae._device.index] if ae._device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.opt = torch.optim.Adam(model.parameters(), lr=ae.lr, foreach=True)
        self.state: dict[str, Any] = {
            "epoch": 0, "batch": 0, "steps": 0, "evals": 0, "best": math.inf,
            "best_eval": 0, "bad": 0, "seconds": 0.0,
        }  # fmt: skip
        self.history: dict[str, list[float]] = {"train_nll": [], "val_nll": [], "seconds": []}
        self.best_state = copy.deepcopy(model.state_dict())
        self.fingerprint = _fingerprint(ae, store)
        self.noise_std = ae.training_noise * torch.sqrt(
            ae.explained_variance_.clamp_min(ae.min_variance)
        )  # (d',)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Train until early stopping, ``max_steps``, ``max_epochs`` or ``max_time``."""
        ae = self.ae
        if ae.checkpoint is not None and Path(ae.checkpoint).exists():
            self._resume()
        state = self.state
        budget = int(ae.max_epochs) * self.steps_per_epoch
        if ae.max_steps is not None:
            budget = min(budget, int(ae.max_steps))
        bar = tqdm(
            total=budget,
            initial=min(int(state["steps"]), budget),
            disable=not ae.progress or self.rank != 0,
            desc=f"FlowAutoencoder[{ae.flow_}] k={ae.latent_dim_} (store, {self.world} proc)",
            leave=False,
        )
        n_seen, t_train, stop = 0, 0.0, state["steps"] >= budget
        nll_sum, nll_count = 0.0, 0
        while not stop and state["epoch"] < int(ae.max_epochs):
            t0 = time.perf_counter()
            for x in self._batches():
                nll_sum += self._step(x)
                nll_count += 1
                n_seen += len(x) * self.world
                bar.update(1)
                due = state["steps"] % self.eval_every == 0 or state["steps"] >= budget
                if state["batch"] == self.steps_per_epoch:
                    state.update(epoch=state["epoch"] + 1, batch=0)
                    due = True
                if due:
                    dt = time.perf_counter() - t0
                    t_train, t0 = t_train + dt, time.perf_counter()
                    stop = self._evaluate(nll_sum / max(nll_count, 1), dt, budget)
                    nll_sum, nll_count = 0.0, 0
                    bar.set_postfix(best=f"{state['best']:.3f}")
                if stop or state["batch"] == 0:
                    break
        bar.close()
        self._finish(n_seen, t_train)

    def _batches(self) -> Any:
        """This rank's share of the rest of the current epoch's global minibatches."""
        return self.store.iter_batches(
            int(self.ae.batch_size),
            seed=int(self.ae.seed),
            epoch=int(self.state["epoch"]),
            rows=self.train_ids,
            rank=self.rank,
            world_size=self.world,
            drop_last=True,
            start_batch=int(self.state["batch"]),
        )

    def _step(self, x: Tensor) -> float:
        """One optimiser step on this rank's rows ``x`` of a global batch; its NLL."""
        ae, state = self.ae, self.state
        self.model.train()
        y = ae._to_pca(ae._working(x))
        if ae.training_noise > 0:
            y = y + self._noise(len(x)).to(y) * self.noise_std.to(y)
        loss, nll = self.net(y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({float(loss)}) at step {state['steps']}; lower lr "
                f"(now {ae.lr}) or use dtype='float64'"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        state["steps"] += 1
        state["batch"] += 1
        return float(nll.detach())

    def _noise(self, m: int) -> Tensor:
        """This rank's rows of the global batch's seeded training noise  # (m, d')"""
        gen = torch.Generator().manual_seed(int(self.ae.seed) * 7919 + int(self.state["steps"]))
        size = (m * self.world, self.ae.n_features_modelled_)
        eps = torch.randn(size, generator=gen, dtype=torch.float64)
        return eps[self.rank * m : (self.rank + 1) * m]

    def _evaluate(self, train_nll: float, seconds: float, budget: int) -> bool:
        """Held-out NLL over all ranks, early stopping and checkpoints; whether to stop."""
        ae, state = self.ae, self.state
        self.model.eval()
        with torch.no_grad():
            lp = ae._log_prob_terms(self.model, self.y_val)[0].double()
        totals = distributed.all_reduce_sum(
            torch.tensor([float(-lp.sum()), train_nll, float(len(lp))], dtype=torch.float64)
        )
        val = float(totals[0]) / float(totals[2]) / ae.n_features_modelled_
        train = float(totals[1]) / self.world
        if not math.isfinite(val):
            raise FloatingPointError(f"non-finite held-out NLL at step {state['steps']}; lower lr")
        state["seconds"] += seconds
        state["evals"] += 1
        for key, value in (("train_nll", train), ("val_nll", val), ("seconds", state["seconds"])):
            self.history[key].append(value)
        if val < state["best"] - 1e-4:
            state.update(best=val, best_eval=state["evals"], bad=0)
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            state["bad"] += 1
        stop = state["bad"] >= int(ae.patience) or state["steps"] >= budget
        timeout = ae.max_time is not None and state["seconds"] >= float(ae.max_time)
        # the clock may differ between ranks: rank 0's decision holds for all
        stop = bool(distributed.broadcast_object(stop or timeout))
        if ae.checkpoint is not None and (stop or state["evals"] % int(ae.checkpoint_every) == 0):
            self._save()
        return stop

    def _finish(self, n_seen: int, t_train: float) -> None:
        ae, state = self.ae, self.state
        self.model.load_state_dict(self.best_state)
        ae.history_ = self.history
        ae.n_epochs_ = int(state["epoch"]) + (1 if state["batch"] else 0)
        ae.best_epoch_ = int(state["best_eval"])
        ae.n_steps_ = int(state["steps"])
        ae.fit_seconds_ = float(state["seconds"])
        ae.train_samples_per_second_ = n_seen / t_train if t_train > 0 else float("nan")

    # ------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        """Rank 0 writes the checkpoint; every rank waits for it."""
        if distributed.is_main():
            meta = {"fingerprint": self.fingerprint, "state": self.state, "history": self.history}
            _autoencoder_io.save_checkpoint(
                self.ae.checkpoint, self.model, self.opt, self.best_state, meta
            )
        distributed.barrier()

    def _resume(self) -> None:
        """Restore model, optimiser, best state and position from the checkpoint."""
        ae = self.ae
        art = load_state(ae.checkpoint, _autoencoder_io.CHECKPOINT_KIND)
        if art.meta.get("fingerprint") != self.fingerprint:
            warnings.warn(
                f"checkpoint {ae.checkpoint} was written for another store or other "
                "hyperparameters; training starts afresh",
                stacklevel=5,
            )
            return

        def check(state: dict, history: dict) -> None:
            if set(state) != set(self.state) or set(history) != set(self.history):
                raise KeyError("state")

        state, history, self.best_state = _autoencoder_io.restore_checkpoint(
            art, self.model, self.opt, ae._device, check
        )
        self.state, self.history = state, {k: list(v) for k, v in history.items()}
        logger.info("FlowAutoencoder: resumed from %s at step %d", ae.checkpoint, state["steps"])


def _freeze_unused(net: nn.Module, y: Tensor) -> None:
    """Stop gradients for the parameters the loss never reaches (an empty noise block, the
    off-diagonal factors of a diagonal mixture), which DistributedDataParallel would wait for."""
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(net(y)[0], params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is None:
            p.requires_grad_(False)


def _fingerprint(ae: Any, store: Any) -> str:
    """Hash of the hyperparameters that shape training and of the store's manifest."""
    skip = (*ae._RESUMABLE_PARAMS, "device")
    params = {k: v for k, v in ae.get_params().items() if k not in skip}
    blob = json.dumps([params, store.manifest], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()
