"""FlowAutoencoder.fit on an ActivationStore: streamed preprocessing, streamed training,
checkpoint resume, data-parallel training under torch.distributed (gloo, spawned here)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from _spawn import run_ranks

from flowmatch import _store_fit
from flowmatch.autoencoder import FlowAutoencoder
from flowmatch.store import ActivationStore, StoreWriter


def _rows(n: int = 2000, d: int = 8, seed: int = 0) -> np.ndarray:
    """Two anisotropic Gaussian clusters  # (n, d)"""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, d)) * 3
    x = centres[rng.integers(0, 2, n)] + rng.normal(size=(n, d)) * np.linspace(2, 0.2, d)
    return (x + 5.0).astype(np.float32)


def _store(path, x: np.ndarray, shard_rows: int = 300) -> ActivationStore:
    with StoreWriter(path, shard_rows=shard_rows) as w:
        for chunk in np.array_split(x, 7):
            w.append(torch.from_numpy(chunk))
    return ActivationStore.open(path)


def _ae(**kw) -> FlowAutoencoder:
    params = dict(
        latent_dim=2, d_flow=4, hidden=16, n_components=2, batch_size=64, max_steps=24,
        eval_steps=4, dtype="float64", progress=False, seed=3,
    )  # fmt: skip
    params.update(kw)
    return FlowAutoencoder(**params)


def _params(ae: FlowAutoencoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in ae.model_.state_dict().items()}


def test_store_preprocessing_equals_in_memory(tmp_path):
    x = _rows()
    store = _store(tmp_path / "acts", x)
    streamed = _ae(max_steps=1).fit(store)
    memory = _ae(max_steps=1).fit(torch.from_numpy(x))
    assert torch.allclose(streamed.mean_, memory.mean_, atol=1e-10)
    assert abs(streamed.scale_ - memory.scale_) < 1e-10
    assert torch.allclose(streamed.components_, memory.components_, atol=1e-8)
    assert torch.allclose(streamed.explained_variance_, memory.explained_variance_, atol=1e-9)


def test_store_fit_is_deterministic_and_as_good_as_in_memory(tmp_path):
    x = _rows()
    store = _store(tmp_path / "acts", x)
    a = _ae(max_steps=60).fit(store)
    b = _ae(max_steps=60).fit(store)
    for key, value in _params(a).items():
        assert torch.equal(value, _params(b)[key]), key
    assert a.n_steps_ == 60 and len(a.history_["val_nll"]) == 60 // 4  # one per evaluation
    assert a.fit_stage_seconds_.keys() == {"moments", "init", "train"}
    memory = _ae(max_steps=60).fit(torch.from_numpy(x))
    xt = torch.from_numpy(x)
    assert abs(a.score(xt) - memory.score(xt)) < 0.02  # nats per coordinate
    z = a.encode(torch.from_numpy(x[:10]))
    assert z.shape == (10, 2) and torch.isfinite(z).all()


def test_store_fit_resumes_after_interruption(tmp_path, monkeypatch):
    x = _rows()
    store = _store(tmp_path / "acts", x)
    straight = _ae().fit(store)
    ckpt = tmp_path / "ckpt.safetensors"
    real_step = _store_fit._Trainer._step

    def flaky(self, batch):
        if self.state["steps"] == 13:  # after the checkpoint at step 8 (every 2nd evaluation)
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(_store_fit._Trainer, "_step", flaky)
    with pytest.raises(KeyboardInterrupt):
        _ae(checkpoint=ckpt, checkpoint_every=2).fit(store)
    assert ckpt.exists()
    monkeypatch.setattr(_store_fit._Trainer, "_step", real_step)
    resumed = _ae(checkpoint=ckpt, checkpoint_every=2).fit(store)
    for key, value in _params(straight).items():
        assert torch.allclose(value, _params(resumed)[key], atol=1e-12), key
    assert resumed.history_["val_nll"] == pytest.approx(straight.history_["val_nll"], abs=1e-12)


def test_store_fit_checks_batch_and_size(tmp_path):
    small = _store(tmp_path / "small", _rows(n=6, d=8), shard_rows=4)
    with pytest.raises(ValueError, match="at least 9 rows"):
        _ae().fit(small)
    store = _store(tmp_path / "acts", _rows(n=100))
    with pytest.raises(ValueError, match="exceeds the 90 training rows"):
        _ae(batch_size=128).fit(store)


def test_mixed_precision_trains_on_cpu(tmp_path):
    x = _rows()
    xt = torch.from_numpy(x)
    amp = _ae(dtype="float32", mixed_precision=True, max_steps=40).fit(xt)
    full = _ae(dtype="float32", mixed_precision=False, max_steps=40).fit(xt)
    assert amp._amp and not amp.model_.training  # evaluation and inference run in float32
    lp = amp.log_prob(xt[:50])
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    assert abs(amp.score(xt) - full.score(xt)) < 0.02  # nats per coordinate
    assert not torch.equal(amp.encode(xt[:5]), full.encode(xt[:5]))  # bfloat16 was used


def test_flow_auto_resolves_and_saves_the_flow_used(tmp_path):
    ae = _ae(flow="auto", max_steps=2).fit(torch.from_numpy(_rows(n=300)))
    assert ae.flow_ == ("cnf" if torch.cuda.is_available() else "coupling")
    path = ae.save(tmp_path / "ae.safetensors")
    loaded = FlowAutoencoder.load(path)
    assert loaded.flow == ae.flow_ and loaded.flow_ == ae.flow_


def _fit_in_rank(path: str, options: dict, interrupt_at: int | None = None):
    """One rank of a data-parallel store fit (run by ``run_ranks``): its parameters and
    held-out history, or "interrupted" when the fit is stopped at step ``interrupt_at``."""
    real_step = _store_fit._Trainer._step

    def flaky(self, batch):
        if self.state["steps"] == interrupt_at:
            raise KeyboardInterrupt
        return real_step(self, batch)

    _store_fit._Trainer._step = flaky
    try:
        ae = _ae(**options).fit(ActivationStore.open(path))
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        _store_fit._Trainer._step = real_step
    return _params(ae), ae.history_["val_nll"], ae.n_steps_


def test_two_processes_fit_what_one_process_fits(tmp_path):
    """DistributedDataParallel over 2 gloo processes, each with half of every global batch,
    gives the parameters of one process with the whole batch (same seed)."""
    x = _rows()
    store = _store(tmp_path / "acts", x)
    one = _ae().fit(store)
    ranks = run_ranks(_fit_in_rank, 2, str(store.path), {}, init=False, timeout=120)
    for params, val_nll, steps in ranks:
        assert steps == one.n_steps_
        for key, value in _params(one).items():
            assert torch.allclose(params[key], value, atol=1e-5, rtol=0), key
        assert val_nll == pytest.approx(one.history_["val_nll"], abs=1e-9)
    for key, value in ranks[0][0].items():
        assert torch.equal(value, ranks[1][0][key]), key  # the ranks agree exactly


def test_interrupted_distributed_fit_resumes_to_the_same_result(tmp_path):
    x = _rows()
    store = _store(tmp_path / "acts", x)
    straight = _ae().fit(store)
    options = {"checkpoint": str(tmp_path / "ckpt.safetensors"), "checkpoint_every": 2}
    first = run_ranks(_fit_in_rank, 2, str(store.path), options, 13, init=False, timeout=120)
    assert first == ["interrupted", "interrupted"]
    resumed = run_ranks(_fit_in_rank, 2, str(store.path), options, init=False, timeout=120)
    for key, value in _params(straight).items():
        assert torch.allclose(resumed[0][0][key], value, atol=1e-5, rtol=0), key
    assert resumed[0][1] == pytest.approx(straight.history_["val_nll"], abs=1e-9)


def test_fit_command_under_torchrun(tmp_path):
    """``torchrun --nproc_per_node=2 -m flowmatch fit STORE --out AE``: rank 0 writes the
    artefact, which loads and encodes."""
    store = _store(tmp_path / "acts", _rows())
    out = tmp_path / "ae.safetensors"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "flowmatch", "fit", str(store.path), "--out", str(out), "--latent-dim", "2",
        "--max-steps", "10", "--batch-size", "64", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("fitted coupling autoencoder on 2 processes") == 1  # rank 0 only
    ae = FlowAutoencoder.load(out)
    assert ae.latent_dim_ == 2 and ae.encode(torch.from_numpy(_rows(n=5))).shape == (5, 2)


def test_translate_takes_stores(tmp_path):
    """The autoencoders stream every row; trees and map use ``store_rows`` of them."""
    x = _rows(n=1500, d=6)
    rot = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))[0]
    store_a = _store(tmp_path / "a", x)
    store_b = _store(tmp_path / "b", (torch.from_numpy(_rows(n=1500, d=6, seed=1)) @ rot).numpy())
    from flowmatch.translation import translate

    t = translate(
        store_a, store_b, store_rows=800, progress=False, n_anchor_runs=2, n_refine=5,
        autoencoder_params={"max_steps": 20, "hidden": 16, "latent_dim": 2, "d_flow": 4},
    )  # fmt: skip
    assert t.info_["rows"] == {"a": 800, "b": 800}
    assert t(torch.from_numpy(x[:10])).shape == (10, 6)
