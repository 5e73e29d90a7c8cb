"""Local Interaction Basis: reference properties (Bushnaq et al. 2024), ablation, graph, adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from _nets import mlp
from torch import nn
from torch.testing import assert_close

from baselines import FitData, get_method
from baselines._jacobians import batched_jacobian, folded_stage
from baselines.lib import (
    LocalInteractionBasis,
    _shift,
    ablation_curve,
    edge_concentration,
    interaction_graph,
    modularity,
    pca_bases,
)
from flowmatch.metrics import r2_score
from flowmatch.validation import NotFittedError


def _inputs(n: int, d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scales + 0.3


def test_lib_gram_is_diagonal_with_entries_lambda() -> None:
    model, x = mlp([6, 8, 7, 4]), _inputs(150, 6)
    lib = LocalInteractionBasis().fit(model, x)
    acts = lib.network_.node_activations(x)
    for basis, f in zip(lib.bases_[:-1], acts[:-1]):
        f_hat = basis.coords(f)
        gram = f_hat.T @ f_hat / len(f_hat)
        scale = float(basis.lambdas.max())
        assert_close(gram / scale, torch.diag(basis.lambdas) / scale, atol=1e-10, rtol=0)
        assert (basis.lambdas[:-1] >= basis.lambdas[1:]).all()


def test_lib_jacobian_gram_is_identity_without_separate_constant() -> None:
    # E[Ĵᵀ Ĵ] = I for Ĵ = ∂f̂^{l+1}/∂f̂^l, the defining property of the second rotation
    model, x = mlp([5, 6, 4]), _inputs(200, 5)
    lib = LocalInteractionBasis(separate_constant=False).fit(model, x)
    b0, b1 = lib.bases_[0], lib.bases_[1]
    stage = folded_stage(lib.network_.stages[0])
    jac = batched_jacobian(lambda z: stage(z @ b0.C_pinv) @ b1.C, b0.coords(x)).detach()
    gram = torch.einsum("nki,nkj->ij", jac, jac) / len(x)
    assert_close(gram, torch.eye(b0.k, dtype=torch.float64), atol=1e-8, rtol=0)


def test_identity_activations_give_diagonal_edges() -> None:
    linear = mlp([5, 5, 5, 5], act=nn.Identity)
    x = _inputs(150, 5)
    lib = LocalInteractionBasis().fit(linear, x)
    for e in lib.edges_:
        assert e.shape[0] == e.shape[1] == 5
        off = (e - torch.diag(torch.diag(e))).sum() / e.sum()
        assert float(off) < 1e-10
    # the same check fails for a ReLU network, so it is not vacuous
    relu = LocalInteractionBasis().fit(mlp([5, 5, 5, 5]), x)
    e = relu.edges_[0]
    assert float((e.sum() - e.diagonal().sum()) / e.sum()) > 1e-3


def _block_mlp(seed: int, h: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(3):
        lin = nn.Linear(2 * h, 2 * h).double()
        with torch.no_grad():
            w = torch.zeros(2 * h, 2 * h, dtype=torch.float64)
            w[:h, :h] = torch.randn(h, h) / h**0.5
            w[h:, h:] = torch.randn(h, h) / h**0.5
            lin.weight.copy_(w)
            lin.bias.copy_(0.1 * torch.randn(2 * h))
        layers += [lin, nn.ReLU()] if i < 2 else [lin]
    return nn.Sequential(*layers)


def _block_of(basis, h: int) -> torch.Tensor:
    """Block of every direction (−1 = the constant node), from its centred-coordinate column."""
    cols = _shift(basis.mean, inverse=True) @ basis.C if basis.C.shape[0] > 2 * h else basis.C
    m1, m2, mc = (cols[:h] ** 2).sum(0), (cols[h : 2 * h] ** 2).sum(0), (cols[2 * h :] ** 2).sum(0)
    lab = (m2 > m1).long()
    lab[mc > m1 + m2] = -1
    return lab


def _cross_block_fraction(lib: LocalInteractionBasis, h: int) -> float:
    cross, total = 0.0, 0.0
    for l, e in enumerate(lib.edges_):
        b_in, b_out = _block_of(lib.bases_[l], h), _block_of(lib.bases_[l + 1], h)
        mask = (b_out[:, None] != b_in[None]) & (b_out[:, None] >= 0) & (b_in[None] >= 0)
        cross += float(e[mask].sum())
        total += float(e.sum())
    return cross / total


@pytest.mark.parametrize("seed", [0, 1])
def test_block_diagonal_mlp_has_under_one_percent_cross_block_edges(seed: int) -> None:
    h = 4
    model = _block_mlp(seed, h)
    # independent blocks, realised exactly by a product design (no sampling cross-covariance)
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(20, h, generator=g, dtype=torch.float64)
    x2 = 1.5 * torch.randn(20, h, generator=g, dtype=torch.float64)
    x = torch.cat([x1.repeat_interleave(20, 0), x2.repeat(20, 1)], dim=1)
    lib = LocalInteractionBasis().fit(model, x)
    assert _cross_block_fraction(lib, h) < 0.01
    # interaction graph: one node per direction, each layer pair's weights sum to 1
    graph = interaction_graph(lib.edges_)
    assert graph.number_of_nodes() == sum(b.k for b in lib.bases_)
    assert graph.size(weight="weight") == pytest.approx(len(lib.edges_))
    q, communities = modularity(graph, seed=0)
    assert 0.0 < q < 1.0 and set().union(*communities) == set(graph.nodes)
    # mixing the shared constant (bias) direction into the rotation couples the blocks
    mixed = LocalInteractionBasis(separate_constant=False).fit(model, x)
    assert _cross_block_fraction(mixed, h) > _cross_block_fraction(lib, h)


def test_ablation_curve_endpoints_and_pca_reference() -> None:
    model, x = mlp([6, 10, 8, 3], seed=3), _inputs(300, 6)
    y = model(x).argmax(1)
    lib = LocalInteractionBasis().fit(model, x)
    basis = lib.bases_[1]
    curve = ablation_curve(model, x, y, basis, [0, basis.k])
    assert curve.accuracy[-1] == 1.0  # all directions kept: the network's own predictions
    with torch.no_grad():
        h1 = model[:2](x)
        expected = model[2:](h1.mean(0, keepdim=True)).argmax(1)
    assert curve.accuracy[0] == pytest.approx(float((y == expected).double().mean()))
    pca = pca_bases(model, x)[1]
    f_hat = pca.coords(h1)
    assert_close(f_hat.var(0, correction=0)[:-1], pca.lambdas[:-1], atol=1e-10, rtol=1e-10)
    assert ablation_curve(model, x, y, pca, [pca.k]).accuracy[0] == 1.0


def test_edge_concentration_reference() -> None:
    e = torch.tensor([[9.0, 0.5], [0.5, 0.0]])
    assert edge_concentration(e, 0.9) == (1, 0.25)
    assert edge_concentration(e, 0.95) == (2, 0.5)


def test_transform_errors_and_not_fitted() -> None:
    with pytest.raises(NotFittedError):
        LocalInteractionBasis().transform(torch.zeros(2, 3), "input")
    lib = LocalInteractionBasis().fit(mlp([3, 4, 2]), _inputs(50, 3))
    with pytest.raises(KeyError, match="unknown node"):
        lib.transform(torch.zeros(2, 3), "nope")
    with pytest.raises(ValueError):
        lib.transform(torch.zeros(2, 5), "input")


def test_lib_method_recovers_a_permuted_copy() -> None:
    """B is A with its hidden units permuted and rescaled: unpaired matching must find it."""
    d_in, d_h = 6, 5
    model_a = nn.Sequential(
        nn.Linear(d_in, d_h), nn.ReLU(), nn.Linear(d_h, d_h), nn.ReLU(), nn.Linear(d_h, 4)
    ).double()
    torch.manual_seed(4)
    for p in model_a.parameters():
        nn.init.normal_(p, std=0.8)
    perm, scale = torch.randperm(d_h), torch.linspace(0.5, 2.0, d_h, dtype=torch.float64)
    model_b = copy.deepcopy(model_a)
    with torch.no_grad():
        model_b[2].weight.copy_(model_a[2].weight[perm] * scale[:, None])
        model_b[2].bias.copy_(model_a[2].bias[perm] * scale)
        model_b[4].weight.copy_(model_a[4].weight[:, perm] / scale)
    layer = "3"
    x = _inputs(800, d_in, seed=5)
    xa, xb = x[:400], x[400:]
    a, b = model_a[:4](xa), model_b[:4](xb)
    data = FitData(a, b, None, None, model_a, model_b, layer, layer, xa, xb, seed=0)
    method = get_method("lib", refine=False).fit(data)
    assert method.n_pairs_used_ == 0 and not method.paired
    assert "Jacobians" in method.uses
    x_test = _inputs(200, d_in, seed=6)
    pred, true = method.transform(model_a[:4](x_test)), model_b[:4](x_test)
    assert pred.shape == true.shape
    # the head reads only the LIB span, so B's logits on translated rows must match its own
    logits_pred, logits_true = model_b[4](pred.double()), model_b(x_test)
    assert r2_score(logits_pred, logits_true) > 0.99
    assert float((logits_pred.argmax(1) == logits_true.argmax(1)).double().mean()) > 0.95
