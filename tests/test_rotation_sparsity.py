"""Rotation sparsity: function preserved, Jacobian algebra, measures, planted recovery, adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from _nets import mlp
from torch import nn
from torch.testing import assert_close

from baselines import FitData, get_method
from baselines._jacobians import split_network, stage_jacobians
from baselines.rotation_sparsity import (
    SPARSITY_MEASURES,
    RotationSparsity,
    channel_alignment,
    near_zero_fraction,
    pca_rotations,
    rotate_jacobians,
    rotated_network,
    sparsity_table,
)
from flowmatch.validation import NotFittedError


def _random_rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def _inputs(n: int, d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def test_rotated_network_preserves_function_and_rotates_activations() -> None:
    model, x = mlp([5, 7, 6, 3]), _inputs(64, 5)
    rots = {"1": _random_rotation(7, 0), "3": _random_rotation(6, 1)}
    rotated = rotated_network(model, rots)
    with torch.no_grad():
        assert_close(rotated(x), model(x), atol=1e-5, rtol=0)
        assert (rotated(x) - model(x)).abs().max() < 1e-12
        h1 = model[:2](x)
        assert_close(rotated[:3](x), h1 @ rots["1"].T, atol=1e-12, rtol=0)
    # the original model is untouched
    assert not torch.equal(rotated[3].weight, model[2].weight)


def test_rotate_jacobians_matches_jacobians_of_rotated_network() -> None:
    model, x = mlp([4, 6, 5, 3]), _inputs(32, 4)
    rots = {"1": _random_rotation(6, 2), "3": _random_rotation(5, 3)}
    net = split_network(model)
    jacs = stage_jacobians(net, net.node_activations(x))
    expected = rotate_jacobians(jacs, [None, rots["1"], rots["3"], None])
    rnet = split_network(rotated_network(model, rots))
    got = stage_jacobians(rnet, rnet.node_activations(x))
    for e, g in zip(expected, got):
        assert_close(g, e, atol=1e-12, rtol=0)
    # ReLU Jacobian in the neuron basis: rows of inactive units are exactly zero
    pre = model[0](x)
    assert torch.all(jacs[0][pre <= 0] == 0)


@pytest.mark.parametrize("measure", sorted(SPARSITY_MEASURES))
def test_measures_prefer_sparse_and_ignore_scale(measure: str) -> None:
    loss = SPARSITY_MEASURES[measure]
    sparse = torch.zeros(1, 4, 4, dtype=torch.float64)
    sparse[0, 0, 1], sparse[0, 2, 3] = 1.0, -0.5
    dense = sparse + 0.3
    assert float(loss(sparse)) < float(loss(dense))
    assert_close(loss(7.0 * dense), loss(dense))
    rot = _random_rotation(4, 0)
    assert float(loss(sparse)) < float(loss(rot @ sparse))


def test_near_zero_fraction_reference() -> None:
    j = torch.tensor([[[1.0, 0.005], [0.02, 0.0]], [[0.0, 0.0], [0.0, 2.0]]])
    # input 1: 0.005 and 0.0 are <= 0.01 · 1; input 2: three zeros
    assert near_zero_fraction(j, 0.01) == pytest.approx(5 / 8)
    assert near_zero_fraction(j, 0.03) == pytest.approx(6 / 8)


def test_channel_alignment_reference() -> None:
    # direction i of Y listens to i+1 inputs and drives i+1 outputs: perfectly aligned
    j_xy = torch.zeros(1, 3, 3)
    j_yz = torch.zeros(1, 3, 3)
    for i in range(3):
        j_xy[0, i, : i + 1] = 1.0
        j_yz[0, : i + 1, i] = 1.0
    assert channel_alignment(j_xy, j_yz) == pytest.approx(1.0)
    assert channel_alignment(j_xy, j_yz.flip(2)) == pytest.approx(-1.0)


def test_fit_recovers_a_planted_sparse_basis() -> None:
    """Linear net whose hidden space is a hidden rotation Q of a sparse one: J₁ = Q S₁,
    J₂ = S₂ Qᵀ. The fitted rotation must make both Jacobians sparser than the neuron basis."""
    d, g = 8, torch.Generator().manual_seed(0)
    s1 = torch.randn(d, d, generator=g, dtype=torch.float64) * (torch.rand(d, d, generator=g) < 0.2)
    s2 = torch.randn(4, d, generator=g, dtype=torch.float64) * (torch.rand(4, d, generator=g) < 0.3)
    s1 += torch.eye(d, dtype=torch.float64)
    q = _random_rotation(d, 5)
    model = nn.Sequential(nn.Linear(d, d, bias=False), nn.Identity(), nn.Linear(d, 4)).double()
    with torch.no_grad():
        model[0].weight.copy_(q @ s1)
        model[2].weight.copy_(s2 @ q.T)
    x = _inputs(64, d)
    rs = RotationSparsity("l1_l2", n_steps=300, lr=0.03, batch_size=32, seed=0).fit(model, x)
    hist = rs.loss_history_["1"]
    assert hist[-1] < 0.8 * hist[0]
    rot = rs.rotations_["1"]
    assert_close(rot @ rot.T, torch.eye(d, dtype=torch.float64), atol=1e-10, rtol=0)
    rows, _ = sparsity_table(model, x, {"neuron": [None] * 3, "rotated": rs.node_rotations()})
    nz = {(r.basis, r.stage): r.near_zero for r in rows}
    for stage in ("input→1", "1→output"):
        assert nz[("rotated", stage)] > nz[("neuron", stage)] + 0.1
    with torch.no_grad():
        assert_close(rs.rotated_model(model)(x), model(x), atol=1e-10, rtol=0)


def test_pca_rotations_diagonalise_covariance() -> None:
    x = _inputs(200, 4) @ torch.randn(4, 4, generator=torch.Generator().manual_seed(3)).double()
    (rot,) = pca_rotations([x])
    cov = torch.cov((x @ rot.T).T)
    assert_close(cov, torch.diag(torch.diag(cov)), atol=1e-10, rtol=0)
    assert (torch.diag(cov)[:-1] >= torch.diag(cov)[1:]).all()


def test_errors() -> None:
    with pytest.raises(NotFittedError):
        RotationSparsity().node_rotations()
    model = mlp([3, 4, 2])
    with pytest.raises(KeyError, match="unknown measure"):
        RotationSparsity("nope").fit(model, _inputs(10, 3))
    with pytest.raises(KeyError, match="unknown hidden nodes"):
        RotationSparsity(nodes=["output"]).fit(model, _inputs(10, 3))
    with pytest.raises(TypeError):
        split_network(nn.Linear(3, 2))


def test_rotation_sparsity_method_recovers_a_permuted_copy() -> None:
    """B is A with its hidden units permuted. Fitted on the same inputs (shuffled on B's side),
    full-batch rotation fitting is permutation-equivariant: the translation must be near exact."""
    model_a = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4)).double()
    torch.manual_seed(2)
    for p in model_a.parameters():
        nn.init.normal_(p, std=0.8)
    perm = torch.randperm(6)
    model_b = copy.deepcopy(model_a)
    with torch.no_grad():
        model_b[0].weight.copy_(model_a[0].weight[perm])
        model_b[0].bias.copy_(model_a[0].bias[perm])
        model_b[2].weight.copy_(model_a[2].weight[:, perm])
    xa = _inputs(300, 5, seed=7)
    xb = xa[torch.randperm(300, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        a, b = model_a[:2](xa), model_b[:2](xb)
    data = FitData(a, b, None, None, model_a, model_b, "1", "1", xa, xb, seed=0)
    method = get_method("rotation_sparsity", n_steps=100, batch_size=512, refine=False).fit(data)
    assert method.n_pairs_used_ == 0 and "Jacobians" in method.uses
    x_test = _inputs(100, 5, seed=8)
    with torch.no_grad():
        pred, true = method.transform(model_a[:2](x_test)), model_b[:2](x_test)
    # every direction of A is matched to its permuted copy in B ...
    idx_a, idx_b = method.matched_[:, 0].astype(int), method.matched_[:, 1].astype(int)
    assert all(int(perm[j]) == i for i, j in zip(idx_a, idx_b))
    # ... and the translation is near exact (float32 fitting noise only)
    rel = ((pred.double() - true) ** 2).sum() / ((true - true.mean(0)) ** 2).sum()
    assert float(rel) < 1e-3
