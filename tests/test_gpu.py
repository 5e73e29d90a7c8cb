"""The CUDA path: the divergence-free CNF as the default flow, bfloat16 mixed precision, a
store fit on the GPU. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowmatch.autoencoder import FlowAutoencoder
from flowmatch.store import StoreWriter

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _rows(n: int = 4000, d: int = 16) -> torch.Tensor:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, d)) * 3
    x = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, d)) * np.linspace(2, 0.2, d)
    return torch.from_numpy(x.astype(np.float32))


def _fit(x, **kw) -> FlowAutoencoder:
    params = dict(latent_dim=4, d_flow=8, hidden=32, n_components=3, max_steps=150, seed=0)
    params.update(kw)
    return FlowAutoencoder(progress=False, **params).fit(x)


def test_cuda_defaults_to_the_cnf_with_mixed_precision():
    ae = _fit(_rows(), device="cuda")
    assert ae.flow_ == "cnf" and ae._amp
    assert next(ae.model_.parameters()).is_cuda
    full = _fit(_rows(), device="cuda", mixed_precision=False)
    x = _rows()[:500]
    assert abs(ae.score(x) - full.score(x)) < 0.05  # nats per coordinate
    assert torch.isfinite(ae.encode(x)).all()


def test_store_fit_on_cuda(tmp_path):
    x = _rows()
    with StoreWriter(tmp_path / "acts", shard_rows=1000) as w:
        w.append(x)
    from flowmatch.store import ActivationStore

    store = ActivationStore.open(tmp_path / "acts")
    gpu = _fit(store, device="cuda", batch_size=256)
    cpu = _fit(store, device="cpu", batch_size=256, flow="cnf", mixed_precision=False)
    assert gpu.flow_ == "cnf" and gpu.n_steps_ == cpu.n_steps_
    assert abs(gpu.score(x) - cpu.score(x)) < 0.05
