"""The Local Interaction Basis (LIB) of an MLP: computationally relevant, sparsely interacting
directions of every layer, their interaction graph, ablation curves and modularity.

Algorithm (per node layer ``l``, from the output backwards)
-----------------------------------------------------------
Nodes are the inputs of the linear layers and the logits (see :mod:`baselines._jacobians`).
Activations are *bias-folded*, ``f ↦ [f, c]`` with ``c = 1``, so that each stage's bias is the
weight of the constant coordinate. Row convention: a basis is a matrix ``C`` (d + 1, k) and the
LIB coordinates are ``f̂ = [f, 1] @ C``.

1. Centre: ``Y`` = [[I, 0], [−μ, 1]], ``[f, 1] @ Y = [f − μ, 1]``; centred Gram
   ``G = E[(fY)ᵀ(fY)] = U D Uᵀ``; eigen-directions with ``D ≤ truncation · max D`` are dropped
   (PCA truncation).
2. Jacobian Gram of the next-layer function ``g(y) = stage_folded(y Y⁻¹) @ C_{l+1}``, i.e. of the
   next layer's LIB coordinates as a function of the centred coordinates:
   ``M' = E[∂gᵀ ∂g]``.
3. ``M = D^½ Uᵀ M' U D^½ = V Λ Vᵀ`` (second eigendecomposition); directions with
   ``Λ ≤ truncation · max Λ`` are dropped.
4. ``C = Y U D^-½ V Λ^½``, ``C⁺ = Λ^-½ Vᵀ D^½ Uᵀ Y⁻¹``.

Because the centred Gram is block-diagonal, the constant (bias) coordinate is one of its
eigenvectors. By default (``separate_constant=True``) step 3 does not let ``V`` mix it with the
other directions: it stays a node of its own, so a bias shared by independent modules does not
couple them (with the constant mixed in, block-diagonal MLPs showed 1–22 % cross-block edge
weight; separated, ~1e-28). ``E[f̂ᵀ f̂] = Λ`` holds either way; ``E[Ĵᵀ Ĵ] = I`` holds exactly
with ``separate_constant=False``.

Then ``E[f̂ᵀ f̂] = Λ`` (diagonal) and ``E[Ĵᵀ Ĵ] = I`` for ``Ĵ = ∂f̂^{l+1}/∂f̂^l``: each direction's
importance to the next layer is its eigenvalue. The logits' basis is their centred PCA
(``C = Y U``, the logits are not folded). Edges between the nodes of consecutive layers are
squared integrated gradients, ``E_ij = E_x[(∫₀¹ ∂F_i(α f̂)/∂f̂_j dα · f̂_j)²]`` with
``F(f̂) = stage_folded(f̂ C⁺_l) @ C_{l+1}``; ``n_intervals = 0`` evaluates the integrand at
``α = ½`` (trapezoid rule otherwise).

The PCA baseline (:func:`pca_bases`) uses the same folding and centring: the centred principal
directions, then the constant direction, ``C = Y U``.

References
----------
Bushnaq, L., Heimersheim, S., Goldowsky-Dill, N., Braun, D., Mendel, J., Hänni, K., Griffin, A.,
Stöhler, J., Wache, M., Hobbhahn, M. (2024). The Local Interaction Basis: Identifying
Computationally-Relevant and Sparsely Interacting Features in Neural Networks. arXiv:2405.10928.
Bushnaq, L., Mendel, J., Heimersheim, S., Braun, D., Goldowsky-Dill, N., Hänni, K., Wu, C.,
Hobbhahn, M. (2024). Using Degeneracy in the Loss Landscape for Mechanistic Interpretability.
arXiv:2405.10927.
Sundararajan, M., Taly, A., Yan, Q. (2017). Axiomatic Attribution for Deep Networks (integrated
gradients). ICML.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import networkx as nx
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from baselines._basis_matching import AffineBasis, BasisMatchingMethod
from baselines._jacobians import Network, batched_jacobian, folded_stage, split_network
from flowmatch.activations import head_after
from flowmatch.methods import FigureContext, MethodFigure, register
from flowmatch.validation import as_matrix, check_fitted

__all__ = [
    "AblationCurve",
    "LayerBasis",
    "LIBMethod",
    "LocalInteractionBasis",
    "ablation_curve",
    "ablation_figure",
    "edge_concentration",
    "interaction_edges",
    "interaction_graph",
    "modularity",
    "pca_bases",
]


@dataclass(frozen=True)
class LayerBasis:
    """A basis of one node layer, on bias-folded activations.

    Attributes
    ----------
    name : node name.
    C : Tensor  # (d + 1, k) coordinates ``f̂ = [f, 1] @ C``
    C_pinv : Tensor  # (k, d + 1) back, ``[f, 1] ≈ f̂ @ C_pinv`` on the kept subspace
    lambdas : Tensor  # (k,) importance of each direction (Λ for LIB, variance for PCA), sorted
    mean : Tensor  # (d,) activation mean μ
    n_pca : int  # eigen-directions of the centred Gram kept in step 1
    """

    name: str
    C: Tensor
    C_pinv: Tensor
    lambdas: Tensor
    mean: Tensor
    n_pca: int

    @property
    def k(self) -> int:
        """Number of directions."""
        return int(self.C.shape[1])

    def coords(self, f: Tensor) -> Tensor:
        """``(n, d) -> (n, k)``."""
        return _fold(f.double()) @ self.C


def _fold(f: Tensor) -> Tensor:
    return torch.cat([f, torch.ones_like(f[:, :1])], dim=1)


def _shift(mean: Tensor, inverse: bool = False) -> Tensor:
    """``Y`` (or ``Y⁻¹``)  # (d + 1, d + 1), row convention."""
    d = len(mean)
    y = torch.eye(d + 1, dtype=torch.float64)
    y[d, :d] = mean if inverse else -mean
    return y


def _eigh_desc(mat: Tensor) -> tuple[Tensor, Tensor]:
    vals, vecs = torch.linalg.eigh(0.5 * (mat + mat.T))
    return vals.flip(0).clamp_min(0.0), vecs.flip(1)


def _keep(vals: Tensor, truncation: float) -> Tensor:
    if vals.numel() == 0 or float(vals.max()) <= 0:
        return torch.zeros_like(vals, dtype=torch.bool)
    return vals > truncation * vals.max()


def _double(net: Network) -> Network:
    return Network(
        net.names, copy.deepcopy(net.pre).double(), [copy.deepcopy(s).double() for s in net.stages]
    )


def _output_basis(name: str, f: Tensor, truncation: float) -> LayerBasis:
    mean = f.mean(0)
    vals, vecs = _eigh_desc(torch.cov((f - mean).T, correction=0))
    keep = _keep(vals, truncation)
    u = vecs[:, keep]
    c = torch.cat([u, -(mean @ u)[None]], dim=0)  # [f, 1] @ c = (f − μ) u
    c_pinv = torch.cat([u.T, torch.zeros(u.shape[1], 1, dtype=u.dtype)], dim=1)  # centred
    return LayerBasis(name, c, c_pinv, vals[keep], mean, int(keep.sum()))


def pca_bases(model: nn.Module, inputs: Any, *, truncation: float = 1e-8) -> list[LayerBasis]:
    """PCA basis of every node layer: the centred principal directions with variance above
    ``truncation · max`` (decreasing), then the constant direction (``lambdas`` 1); the logits
    as in LIB."""
    net = _double(split_network(model))
    acts = net.node_activations(as_matrix(inputs, "inputs", min_samples=2).double())
    out = []
    for name, f in zip(net.names[:-1], acts[:-1]):
        mean = f.mean(0)
        gram = _centred_gram(f, mean)
        vals, vecs = _eigh_desc(gram[:-1, :-1])
        keep = _keep(vals, truncation)
        d = len(mean)
        u = torch.zeros(d + 1, int(keep.sum()) + 1, dtype=torch.float64)
        u[:d, :-1] = vecs[:, keep]
        u[d, -1] = 1.0
        y, y_inv = _shift(mean), _shift(mean, inverse=True)
        lam = torch.cat([vals[keep], torch.ones(1, dtype=torch.float64)])
        out.append(LayerBasis(name, y @ u, u.T @ y_inv, lam, mean, int(keep.sum()) + 1))
    out.append(_output_basis(net.names[-1], acts[-1], truncation))
    return out


def _centred_gram(f: Tensor, mean: Tensor) -> Tensor:
    fc = _fold(f - mean)
    return fc.T @ fc / len(f)


class LocalInteractionBasis:
    """Local Interaction Basis of every node layer of an MLP (see the module docstring).

    Parameters
    ----------
    truncation : relative eigenvalue threshold for both eigendecompositions.
    n_intervals : integration intervals for the edges (0 = midpoint estimate).
    separate_constant : keep the constant (bias) direction out of the second rotation.
    max_samples : at most this many inputs (the first ones) are used.
    chunk_size : rows per vectorised Jacobian chunk.
    progress : tqdm bars.

    Attributes
    ----------
    network_ : Network  # float64 copy of the model, cut at its linear layers
    bases_ : list[LayerBasis]  # one per node, input first, logits last
    edges_ : list[Tensor]  # (k_{l+1}, k_l) squared-IG edges between consecutive layers
    """

    def __init__(
        self,
        *,
        truncation: float = 1e-8,
        n_intervals: int = 0,
        max_samples: int | None = None,
        chunk_size: int = 256,
        separate_constant: bool = True,
        progress: bool = False,
    ) -> None:
        self.truncation = truncation
        self.separate_constant = separate_constant
        self.n_intervals = n_intervals
        self.max_samples = max_samples
        self.chunk_size = chunk_size
        self.progress = progress

    def fit(self, model: nn.Module, inputs: Any) -> LocalInteractionBasis:
        """Compute the bases and edges of ``model`` on ``inputs``  # (n, n_features)."""
        net = _double(split_network(model))
        x = as_matrix(inputs, "inputs", min_samples=2).double()[: self.max_samples]
        acts = net.node_activations(x)
        bases = [_output_basis(net.names[-1], acts[-1], self.truncation)]
        layers = range(len(net.stages) - 1, -1, -1)
        for l in tqdm(layers, disable=not self.progress, desc="LIB layers"):
            bases.insert(0, self._layer_basis(net, l, acts[l], bases[0]))
        self.network_, self.bases_ = net, bases
        self.edges_ = interaction_edges(net, acts, bases, n_intervals=self.n_intervals)
        return self

    def _layer_basis(self, net: Network, l: int, f: Tensor, nxt: LayerBasis) -> LayerBasis:
        mean = f.mean(0)
        d_vals, u = _eigh_desc(_centred_gram(f, mean))
        keep = _keep(d_vals, self.truncation)
        d_vals, u = d_vals[keep], u[:, keep]
        y, y_inv = _shift(mean), _shift(mean, inverse=True)
        stage = folded_stage(net.stages[l])
        fn = lambda yc: stage(yc @ y_inv) @ nxt.C  # noqa: E731
        jac = batched_jacobian(fn, _fold(f - mean), chunk_size=self.chunk_size).detach()
        m_dash = torch.einsum("nki,nkj->ij", jac, jac) / len(f)
        sqrt_d = d_vals.sqrt()
        m = sqrt_d[:, None] * (u.T @ m_dash @ u) * sqrt_d[None]
        if self.separate_constant:
            const = u[-1].abs() > 0.5  # the centred Gram is block-diagonal: e_c is an eigenvector
            m = torch.where(const[:, None] ^ const[None], torch.zeros_like(m), m)
        lam, v = _eigh_desc(m)
        keep = _keep(lam, self.truncation)
        lam, v = lam[keep], v[:, keep]
        c = y @ (u / sqrt_d) @ v * lam.sqrt()
        c_pinv = (v / lam.sqrt()).T @ (sqrt_d[:, None] * u.T) @ y_inv
        return LayerBasis(net.names[l], c, c_pinv, lam, mean, int(len(d_vals)))

    def transform(self, f: Any, node: str) -> Tensor:
        """LIB coordinates of activations ``f`` (n, d) of node ``node``  # (n, k)."""
        check_fitted(self, "bases_")
        names = [b.name for b in self.bases_]
        if node not in names:
            raise KeyError(f"unknown node {node!r}; choose from {names}")
        basis = self.bases_[names.index(node)]
        return basis.coords(as_matrix(f, "f", dim=len(basis.mean)))


# ----------------------------------------------------------------------------- edges, graph
def _alphas(n_intervals: int) -> list[tuple[float, float]]:
    if n_intervals <= 0:
        return [(0.5, 1.0)]
    pts = np.linspace(0.0, 1.0, n_intervals + 1)
    w = np.full(n_intervals + 1, 1.0 / n_intervals)
    w[[0, -1]] *= 0.5
    return list(zip(pts.tolist(), w.tolist()))


def interaction_edges(
    net: Network,
    acts: Sequence[Tensor],
    bases: Sequence[LayerBasis],
    *,
    n_intervals: int = 0,
    chunk_size: int = 256,
) -> list[Tensor]:
    """Squared integrated-gradient edges between consecutive layers' basis directions.

    Parameters
    ----------
    net : Network (float64).
    acts : node activations  # list of (n, d_l)
    bases : one LayerBasis per node.

    Returns
    -------
    list of Tensor  # (k_{l+1}, k_l), ``E_ij`` from direction j of layer l to i of layer l+1
    """
    edges = []
    for l, stage in enumerate(net.stages):
        b_in, b_out = bases[l], bases[l + 1]
        f_hat = b_in.coords(acts[l])
        stage_f = folded_stage(stage)
        fn = lambda z, s=stage_f, bi=b_in, bo=b_out: s(z @ bi.C_pinv) @ bo.C  # noqa: E731
        integral = torch.zeros(len(f_hat), b_out.k, b_in.k, dtype=torch.float64)
        for alpha, weight in _alphas(n_intervals):
            jac = batched_jacobian(fn, alpha * f_hat, chunk_size=chunk_size).detach()
            integral += weight * jac
        edges.append(((integral * f_hat[:, None, :]) ** 2).mean(0))
    return edges


def edge_concentration(edges: Tensor, mass: float = 0.9) -> tuple[int, float]:
    """Fewest edges holding ``mass`` of the total edge weight: (count, fraction of all edges)."""
    w = edges.flatten().sort(descending=True).values
    total = float(w.sum())
    if total <= 0:
        return 0, 0.0
    count = int(torch.searchsorted(w.cumsum(0), torch.tensor(mass * total, dtype=w.dtype))) + 1
    count = min(count, w.numel())
    return count, count / w.numel()


def interaction_graph(edges: Sequence[Tensor], names: Sequence[str] | None = None) -> nx.Graph:
    """Weighted graph of the edges; node ``(layer, i)``; each layer pair's weights sum to 1."""
    g = nx.Graph()
    for l, e in enumerate(edges):
        e = e / e.sum().clamp_min(1e-300)
        k_out, k_in = e.shape
        g.add_nodes_from(((l, j), {"layer": l}) for j in range(k_in))
        g.add_nodes_from(((l + 1, i), {"layer": l + 1}) for i in range(k_out))
        rows, cols = torch.nonzero(e > 0, as_tuple=True)
        g.add_weighted_edges_from(
            ((l, int(j)), (l + 1, int(i)), float(e[i, j])) for i, j in zip(rows, cols)
        )
    if names is not None:
        nx.set_node_attributes(g, {n: names[n[0]] for n in g.nodes}, "layer_name")
    return g


def modularity(graph: nx.Graph, *, seed: int = 0, resolution: float = 1.0) -> tuple[float, list]:
    """Louvain communities of a weighted graph and their modularity (Newman 2006)."""
    comms = nx.community.louvain_communities(
        graph, weight="weight", resolution=resolution, seed=seed
    )
    return float(nx.community.modularity(graph, comms, weight="weight")), [set(c) for c in comms]


# ----------------------------------------------------------------------------- ablation
@dataclass(frozen=True)
class AblationCurve:
    """Accuracy and loss of the network when only the top ``k`` directions of one node survive.

    Attributes
    ----------
    node : node name; basis : e.g. "lib" or "pca"
    ks : list[int]; accuracy : list[float]; loss : list[float] (cross-entropy)
    """

    node: str
    basis: str
    ks: list[int]
    accuracy: list[float]
    loss: list[float]


@torch.no_grad()
def ablation_curve(
    model: nn.Module,
    inputs: Any,
    labels: Any,
    basis: LayerBasis,
    ks: Sequence[int],
    *,
    basis_name: str = "",
) -> AblationCurve:
    """Keep the first ``k`` directions of ``basis`` at its node, mean-ablate the others (set them
    to their mean over ``inputs``), rebuild ``f ≈ f̂ C⁺`` (shifted so that ablating every
    direction gives the mean activation) and run the rest of the network."""
    net = _double(split_network(model))
    if basis.name not in net.names[:-1]:
        raise KeyError(f"node {basis.name!r} is not an input of a linear layer of the model")
    l = net.names.index(basis.name)
    acts = net.node_activations(as_matrix(inputs, "inputs").double())
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    f_hat = basis.coords(acts[l])
    f_mean = f_hat.mean(0)
    shift = basis.mean - (f_mean @ basis.C_pinv)[:-1]  # mean-ablating every direction gives μ
    accs, losses = [], []
    for k in ks:
        kept = torch.cat([f_hat[:, :k], f_mean[k:].expand(len(f_hat), -1)], dim=1)
        h = (kept @ basis.C_pinv)[:, :-1] + shift
        for stage in net.stages[l:]:
            h = stage(h)
        accs.append(float((h.argmax(1) == y).double().mean()))
        losses.append(float(nn.functional.cross_entropy(h, y)))
    return AblationCurve(basis.name, basis_name, list(ks), accs, losses)


# ----------------------------------------------------------------------------- figure
def ablation_figure(model: Any, inputs: Any, x_test: Any, y_test: Any, node: str) -> Any:
    """Test accuracy when only the top-k directions of ``node`` survive (others mean-ablated),
    in the Local Interaction Basis and in the PCA basis (a pyplot-free matplotlib Figure)."""
    from matplotlib.figure import Figure

    lib = LocalInteractionBasis().fit(model, inputs)
    pca = pca_bases(model, inputs)
    names = [b.name for b in lib.bases_]
    if node not in names:
        raise KeyError(f"node {node!r} is not a LIB node; nodes: {names}")
    i = names.index(node)
    fig = Figure(figsize=(6.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for basis_name, bases in (("LIB", lib.bases_), ("PCA", pca)):
        k_max = bases[i].k
        ks = sorted({k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k <= k_max} | {k_max})
        curve = ablation_curve(model, x_test, y_test, bases[i], ks, basis_name=basis_name)
        ax.plot(curve.ks, curve.accuracy, marker="o", ms=3, label=f"{basis_name} ({k_max} dirs)")
    ax.set_xscale("log")
    ax.set_xlabel(f"directions of {node!r} kept (others mean-ablated)")
    ax.set_ylabel("test accuracy")
    ax.set_title("LIB vs PCA: node ablation (model A)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- adapter
def _head_lib(head: nn.Module, acts: Tensor, truncation: float) -> LayerBasis:
    return LocalInteractionBasis(truncation=truncation).fit(head, acts).bases_[0]


@register("lib")
class LIBMethod(BasisMatchingMethod):
    """Local Interaction Basis of each model's compared layer, matched across models without pairs.

    The compared layer's LIB uses the Jacobian of the function after it (the model's head) into
    the logits' PCA basis, so it keeps at most as many directions as the head's rank; each side's
    activations are expressed in its LIB and directions are matched by assignment on
    basis-invariant statistics (see :mod:`baselines._basis_matching`).
    """

    uses = "unpaired activations + model Jacobians + model logits (LIB basis)"

    def __init__(self, *, truncation: float = 1e-8, refine: bool = True) -> None:
        super().__init__(refine=refine)
        self.truncation = truncation

    def _basis(self, model: nn.Module, layer: str, inputs: Tensor, acts: Tensor) -> AffineBasis:
        basis = _head_lib(head_after(cast(nn.Sequential, model), layer), acts, self.truncation)
        d = len(basis.mean)
        return AffineBasis.from_encoder(basis.C[:d], basis.C[d], basis.mean)

    def figures(self, context: FigureContext) -> list[MethodFigure]:
        """Node ablation of model A's compared layer, LIB against PCA order."""
        caption = (
            f"Local Interaction Basis vs PCA: test accuracy keeping the top-k directions of "
            f"{context.layer_a!r} (model A)"
        )
        c = context
        draw = partial(ablation_figure, c.model_a, c.x_train, c.x_test, c.y_test, c.layer_a)
        return [MethodFigure(caption, draw)]
