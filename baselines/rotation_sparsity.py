"""Rotations of an MLP's hidden activation spaces that make its layer-to-layer Jacobians sparse.

Which spaces are rotated
------------------------
The network is cut at the inputs of its linear layers (see :mod:`baselines._jacobians`): nodes
``h_0`` (the input, pixels), ``h_1 … h_{L-1}`` (the outputs of the hidden nonlinearities) and
``h_L`` (the logits). Only the *hidden* nodes are rotated, *after* their nonlinearity:
``h̃_k = R_k h_k`` with ``R_k`` orthogonal, and the next linear layer absorbs the inverse,
``W_{k+1} → W_{k+1} R_kᵀ``. The nonlinearity never sees a rotated vector, so the network's
function is unchanged (:func:`rotated_network` builds the rotated network). The input and the
logits keep their preferred bases (pixels, classes).

In the rotated bases the Jacobian of stage ``k`` at input ``x`` is
``J̃_k(x) = R_{k+1} J_k(x) R_kᵀ`` with ``J_k = ∂h_{k+1}/∂h_k``.

Objective
---------
Rotations are chosen layer by layer from the input side. ``R_k`` minimises the mean, over
minibatches of many inputs (not one), of a sparsity loss of the Jacobian *into* node ``k``
(``R_k J_{k-1} R_{k-1}ᵀ``, ``R_{k-1}`` already chosen) plus that of the Jacobian *out of* it
(``J_k R_kᵀ``, the next rotation still the identity). ``R_k = exp(A − Aᵀ)`` is optimised with
Adam from ``A = 0`` (the neuron basis). Every loss in :data:`SPARSITY_MEASURES` is computed on
each input's Jacobian divided by its Frobenius norm, which rotations leave unchanged.

Near-zero fraction
------------------
The reported sparsity is the fraction of entries with ``|J_ij| <= threshold · max_ij |J_ij|``
(per input, default ``threshold = 0.01``), averaged over inputs and entries; the same rule is
applied in every basis (neuron, PCA, optimised).

References
----------
Hoyer, P. O. (2004). Non-negative matrix factorization with sparseness constraints. JMLR 5.
Candès, E., Wakin, M., Boyd, S. (2008). Enhancing sparsity by reweighted ℓ1 minimization (log-sum).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn
from tqdm.auto import tqdm

from baselines._basis_matching import AffineBasis, BasisMatchingMethod
from baselines._jacobians import Network, split_network, stage_jacobians
from flowmatch.methods import FigureContext, MethodFigure, register
from flowmatch.validation import as_matrix, check_fitted, resolve_device, seed_everything

__all__ = [
    "SPARSITY_MEASURES",
    "JacobianSparsity",
    "RotationSparsity",
    "RotationSparsityMethod",
    "channel_alignment",
    "near_zero_fraction",
    "pca_rotations",
    "rotate_jacobians",
    "sparsity_bars",
    "rotated_network",
    "sparsity_table",
]

_EPS = 1e-12


# ----------------------------------------------------------------------------- measures
def _normalised(jac: Tensor) -> Tensor:
    """Each (m, n) matrix divided by its Frobenius norm  # (b, m, n)."""
    norm = jac.flatten(1).norm(dim=1).clamp_min(_EPS)
    return jac / norm[:, None, None]


def _l1_l2(jac: Tensor) -> Tensor:
    return _normalised(jac).abs().flatten(1).sum(1)


def _hoyer(jac: Tensor) -> Tensor:
    n = jac[0].numel()
    hoyer = (n**0.5 - _l1_l2(jac)) / (n**0.5 - 1.0)
    return -hoyer


def _log_sum(jac: Tensor, eps: float = 0.1) -> Tensor:
    n = jac[0].numel()
    rel = _normalised(jac).abs() * n**0.5  # |J_ij| / RMS(J)
    return torch.log1p(rel / eps).flatten(1).mean(1)


SPARSITY_MEASURES: dict[str, Callable[[Tensor], Tensor]] = {
    "hoyer": _hoyer,
    "log_sum": _log_sum,
    "l1_l2": _l1_l2,
}
"""Sparsity losses (lower = sparser) of a batch of Jacobians  # (b, m, n) -> (b,).

``hoyer``: minus Hoyer's sparseness ``(√N − ‖J‖₁/‖J‖₂)/(√N − 1)``; ``l1_l2``: ``‖J‖₁/‖J‖₂``;
``log_sum``: mean of ``log(1 + |J_ij| / (0.1 · RMS(J)))``. Register more by adding to the dict.
"""


def near_zero_fraction(jac: Tensor, threshold: float = 0.01) -> float:
    """Fraction of entries with ``|J_ij| <= threshold · max|J|`` (max per input).

    Parameters
    ----------
    jac : Tensor  # (n, m, d) one Jacobian per input
    threshold : relative threshold.
    """
    return float(_near_zero_mask(jac, threshold).double().mean())


def _near_zero_mask(jac: Tensor, threshold: float) -> Tensor:
    peak = jac.abs().flatten(1).amax(1)[:, None, None]
    return jac.abs() <= threshold * peak


def hoyer_sparseness(jac: Tensor) -> float:
    """Mean Hoyer sparseness in [0, 1] (1 = one non-zero entry)  # (n, m, d) -> float."""
    return float(-_hoyer(jac.double()).mean())


# ----------------------------------------------------------------------------- rotations
def _orthogonal(skew_param: Tensor) -> Tensor:
    return torch.linalg.matrix_exp(skew_param - skew_param.T)


def pca_rotations(acts: Sequence[Tensor]) -> list[Tensor]:
    """Rotation onto the principal axes of each activation matrix  # (n, d) -> (d, d).

    Row ``i`` of the result is the ``i``-th principal direction (decreasing variance), so that
    ``R h`` are PCA coordinates (uncentred: a rotation, no shift).
    """
    out = []
    for a in acts:
        a = a.double()
        cov = torch.cov(a.T) if len(a) > 1 else torch.zeros(a.shape[1], a.shape[1]).double()
        _, vecs = torch.linalg.eigh(cov)
        out.append(vecs.flip(1).T.contiguous())
    return out


def rotate_jacobians(jacs: Sequence[Tensor], rotations: Sequence[Tensor | None]) -> list[Tensor]:
    """Jacobians in rotated node bases: ``J̃_k = R_{k+1} J_k R_kᵀ``.

    Parameters
    ----------
    jacs : list of Tensor  # J_k (n, d_{k+1}, d_k), k = 0..L-1
    rotations : list of Tensor | None  # R_k (d_k, d_k) for k = 0..L; None = identity
    """
    if len(rotations) != len(jacs) + 1:
        raise ValueError(f"need {len(jacs) + 1} rotations (one per node), got {len(rotations)}")
    out = []
    for k, jac in enumerate(jacs):
        r_in, r_out = rotations[k], rotations[k + 1]
        j = jac
        if r_out is not None:
            j = r_out.to(j) @ j
        if r_in is not None:
            j = j @ r_in.to(j).T
        out.append(j)
    return out


class _Rotate(nn.Module):
    """``h ↦ h Rᵀ`` (row convention for ``R h``)."""

    def __init__(self, rotation: Tensor) -> None:
        super().__init__()
        self.register_buffer("rotation", rotation.clone())

    def forward(self, h: Tensor) -> Tensor:
        rotation = cast(Tensor, self.rotation)
        return h @ rotation.T


def rotated_network(model: nn.Sequential, rotations: dict[str, Tensor]) -> nn.Sequential:
    """Copy of ``model`` with ``R`` inserted after each named child and ``Rᵀ`` folded into the
    next linear layer; the function is unchanged and the named activations become ``R h``.

    Parameters
    ----------
    model : nn.Sequential  # an MLP whose named children are followed by an ``nn.Linear``
    rotations : dict  # child name -> orthogonal R (d, d)
    """
    children = list(copy.deepcopy(model).named_children())
    names = [n for n, _ in children]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    pending: Tensor | None = None
    for name, module in children:
        if pending is not None:
            if not isinstance(module, nn.Linear):
                raise TypeError(f"child after a rotated node must be nn.Linear, got {name!r}")
            with torch.no_grad():
                module.weight.copy_(module.weight @ pending.to(module.weight).T)
            pending = None
        layers[name] = module
        if name in rotations:
            rot = rotations[name].to(next(model.parameters()))
            layers[f"{name}_rotation"] = _Rotate(rot)
            pending = rot
    unknown = set(rotations) - set(names)
    if unknown or pending is not None:
        raise KeyError(f"cannot rotate after {sorted(unknown) or names[-1:]}")
    return nn.Sequential(layers)


# ----------------------------------------------------------------------------- estimator
class RotationSparsity:
    """Per-layer rotations that sparsify the layer-to-layer Jacobians of an MLP, on average over
    many inputs (see the module docstring for the spaces rotated and the objective).

    Parameters
    ----------
    measure : key of :data:`SPARSITY_MEASURES`.
    n_steps : Adam steps per rotated layer.
    lr : Adam learning rate on the skew-symmetric generator.
    batch_size : inputs per step (Jacobians averaged over the batch).
    nodes : names of the hidden nodes to rotate (default: every hidden node), in network order.
    include_next : also sparsify the Jacobian out of each rotated node.
    max_samples : at most this many inputs are used (a seeded subsample).
    seed, device, progress : determinism, ``"auto"``/``"cpu"``/``"cuda"``, tqdm bars.

    Attributes
    ----------
    network_ : Network  # the model cut at its linear layers
    rotations_ : dict[str, Tensor]  # node name -> R (d, d), float64, CPU
    loss_history_ : dict[str, list[float]]  # node name -> loss per step
    """

    def __init__(
        self,
        measure: str = "l1_l2",
        *,
        n_steps: int = 300,
        lr: float = 0.01,
        batch_size: int = 128,
        nodes: Sequence[str] | None = None,
        include_next: bool = True,
        max_samples: int | None = 4096,
        seed: int = 0,
        device: str = "auto",
        progress: bool = False,
    ) -> None:
        self.measure = measure
        self.n_steps = n_steps
        self.lr = lr
        self.batch_size = batch_size
        self.nodes = nodes
        self.include_next = include_next
        self.max_samples = max_samples
        self.seed = seed
        self.device = device
        self.progress = progress

    def fit(self, model: nn.Module, inputs: Any) -> RotationSparsity:
        """Choose the rotations for ``model`` on ``inputs``  # (n, n_features)."""
        if self.measure not in SPARSITY_MEASURES:
            raise KeyError(f"unknown measure {self.measure!r}; choose {sorted(SPARSITY_MEASURES)}")
        gen = seed_everything(self.seed)
        net = split_network(model)
        x = _subsample(as_matrix(inputs, "inputs", min_samples=2), self.max_samples, gen)
        jacs = _jacobians(net, x)
        hidden = net.names[1:-1]
        wanted = list(hidden if self.nodes is None else self.nodes)
        if unknown := set(wanted) - set(hidden):
            raise KeyError(f"unknown hidden nodes {sorted(unknown)}; choose from {hidden}")
        dev = resolve_device(self.device)
        rotations: list[Tensor | None] = [None] * len(net.names)
        self.loss_history_ = {}
        for k, name in enumerate(net.names):
            if name not in wanted:
                continue
            prev = rotations[k - 1]
            j_in = jacs[k - 1] if prev is None else jacs[k - 1] @ prev.T
            j_out = jacs[k] if self.include_next else None
            rot, hist = self._optimise(j_in.to(dev), None if j_out is None else j_out.to(dev), gen)
            rotations[k] = rot
            self.loss_history_[name] = hist
        self.network_ = net
        self.rotations_ = {n: r for n, r in zip(net.names, rotations) if r is not None}
        return self

    def _optimise(
        self, j_in: Tensor, j_out: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, list[float]]:
        loss_fn = SPARSITY_MEASURES[self.measure]
        n, d, d_prev = j_in.shape
        # (d, n, d_prev) layout: R @ J for a batch is one matrix product
        j_in_t = j_in.float().transpose(0, 1).contiguous()
        j_out_f = None if j_out is None else j_out.float()
        gen_param = torch.zeros(d, d, device=j_in.device, requires_grad=True)
        opt = torch.optim.Adam([gen_param], lr=self.lr)
        hist = []
        for _ in tqdm(range(self.n_steps), disable=not self.progress, desc="rotation"):
            idx = torch.randperm(n, generator=gen)[: self.batch_size].to(j_in.device)
            rot = _orthogonal(gen_param)
            b = len(idx)
            rj = (rot @ j_in_t[:, idx].reshape(d, -1)).reshape(d, b, d_prev).transpose(0, 1)
            loss = loss_fn(rj).mean()
            if j_out_f is not None:
                jr = (j_out_f[idx].reshape(-1, d) @ rot.T).reshape(b, -1, d)
                loss = loss + loss_fn(jr).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist.append(float(loss.detach()))
        with torch.no_grad():
            rot = torch.linalg.matrix_exp((gen_param - gen_param.T).double())
        return rot.cpu(), hist

    def node_rotations(self) -> list[Tensor | None]:
        """One rotation per node of ``network_`` (None = identity)."""
        check_fitted(self, "rotations_")
        return [self.rotations_.get(n) for n in self.network_.names]

    def rotated_model(self, model: nn.Sequential) -> nn.Sequential:
        """``model`` with the fitted rotations inserted (same function)."""
        check_fitted(self, "rotations_")
        return rotated_network(model, self.rotations_)


def _subsample(x: Tensor, max_samples: int | None, gen: torch.Generator) -> Tensor:
    if max_samples is None or len(x) <= max_samples:
        return x
    return x[torch.randperm(len(x), generator=gen)[:max_samples]]


def _jacobians(net: Network, x: Tensor) -> list[Tensor]:
    dtype = next(net.stages[0].parameters()).dtype
    acts = net.node_activations(x.to(dtype))
    return [j.double() for j in stage_jacobians(net, acts)]


# ----------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class JacobianSparsity:
    """Sparsity of one stage's Jacobian in one basis.

    Attributes
    ----------
    basis : "neuron" | "pca" | "rotated" | ...
    stage : e.g. ``"input→relu1"``
    near_zero : fraction of entries ``<= threshold · max|J|`` (per input)
    hoyer : mean Hoyer sparseness in [0, 1]
    threshold : the relative threshold used
    """

    basis: str
    stage: str
    near_zero: float
    hoyer: float
    threshold: float


def sparsity_table(
    model: nn.Module,
    inputs: Any,
    bases: Mapping[str, Sequence[Tensor | None]],
    *,
    threshold: float = 0.01,
) -> tuple[list[JacobianSparsity], dict[str, list[Tensor]]]:
    """Near-zero fraction and Hoyer sparseness of every stage Jacobian in every basis.

    Parameters
    ----------
    model : nn.Sequential MLP.
    inputs : Tensor  # (n, n_features)
    bases : basis name -> one rotation per node (None = identity), as from
        :meth:`RotationSparsity.node_rotations` or :func:`pca_rotations`.

    Returns
    -------
    rows : list of :class:`JacobianSparsity`
    jacobians : basis name -> rotated stage Jacobians  # list of (n, d_{k+1}, d_k)
    """
    net = split_network(model)
    jacs = _jacobians(net, as_matrix(inputs, "inputs"))
    rows, rotated = [], {}
    for basis, rots in bases.items():
        rotated[basis] = rotate_jacobians(jacs, rots)
        for k, jac in enumerate(rotated[basis]):
            stage = f"{net.names[k]}→{net.names[k + 1]}"
            nz, hoy = near_zero_fraction(jac, threshold), hoyer_sparseness(jac)
            rows.append(JacobianSparsity(basis, stage, nz, hoy, threshold))
    return rows, rotated


def channel_alignment(j_xy: Tensor, j_yz: Tensor, threshold: float = 0.01) -> float:
    """Do the sparse output channels of X→Y line up with the sparse input channels of Y→Z?

    For every direction ``i`` of the middle space Y, the near-zero fraction of row ``i`` of
    ``J_XY`` (how few inputs it listens to) and of column ``i`` of ``J_YZ`` (how few outputs it
    drives); returns their Spearman rank correlation across directions (nan when constant).

    Parameters
    ----------
    j_xy : Tensor  # (n, d_y, d_x)
    j_yz : Tensor  # (n, d_z, d_y)
    """
    out_sparse = _near_zero_mask(j_xy, threshold).double().mean(dim=(0, 2))
    in_sparse = _near_zero_mask(j_yz, threshold).double().mean(dim=(0, 1))
    a, b = out_sparse.numpy(), in_sparse.numpy()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


# ----------------------------------------------------------------------------- figure
def sparsity_bars(
    model: Any, inputs: Any, *, n_steps: int = 150, seed: int = 0, max_samples: int = 512
) -> Any:
    """Near-zero fraction of every layer-to-layer Jacobian of an MLP in the neuron, PCA and
    sparsity-optimised rotated bases (a pyplot-free matplotlib Figure)."""
    from matplotlib.figure import Figure

    x = torch.as_tensor(inputs)[:max_samples]
    rs = RotationSparsity(n_steps=n_steps, seed=seed, max_samples=max_samples).fit(model, x)
    net = split_network(model)
    acts = net.node_activations(x.to(next(model.parameters()).dtype))
    hidden = set(rs.rotations_)
    pca = [r if n in hidden else None for n, r in zip(net.names, pca_rotations(acts))]
    neuron = [None] * len(net.names)
    rows, _ = sparsity_table(
        model, x, {"neuron": neuron, "pca": pca, "rotated": rs.node_rotations()}
    )
    stages = list(dict.fromkeys(r.stage for r in rows))
    bases = list(dict.fromkeys(r.basis for r in rows))
    fig = Figure(figsize=(1.9 * len(stages) + 4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(bases)
    for b, basis in enumerate(bases):
        vals = [
            next(r.near_zero for r in rows if r.stage == s and r.basis == basis) for s in stages
        ]
        ax.bar(
            np.arange(len(stages)) + (b - (len(bases) - 1) / 2) * width, vals, width, label=basis
        )
    ax.set_xticks(np.arange(len(stages)), stages, fontsize=8)
    ax.set_ylabel("near-zero fraction of |J| (≤ 1% of max)")
    ax.set_title("rotation sparsity: Jacobian sparsity per basis (model A)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- adapter
@register("rotation_sparsity")
class RotationSparsityMethod(BasisMatchingMethod):
    """Rotation-sparsity basis of each model's compared layer, matched across models without pairs.

    The rotation at the compared layer is optimised (:class:`RotationSparsity`, that layer only)
    to sparsify the Jacobians into and out of it; each side's centred activations are expressed
    in its rotated basis and the directions are matched by assignment on basis-invariant
    statistics (see :mod:`baselines._basis_matching`).
    """

    uses = "unpaired activations + model Jacobians + model logits (rotation-sparsity basis)"

    def __init__(
        self,
        *,
        measure: str = "l1_l2",
        n_steps: int = 300,
        batch_size: int = 128,
        max_samples: int = 1024,
        refine: bool = True,
        device: str = "auto",
    ) -> None:
        super().__init__(refine=refine)
        self.measure = measure
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.device = device

    def _basis(self, model: nn.Module, layer: str, inputs: Tensor, acts: Tensor) -> AffineBasis:
        rs = RotationSparsity(
            self.measure,
            n_steps=self.n_steps,
            batch_size=self.batch_size,
            nodes=[layer],
            max_samples=self.max_samples,
            seed=self.seed_,
            device=self.device,
        ).fit(model, inputs)
        rot = rs.rotations_[layer]  # (d, d), rows = directions
        mean = acts.double().mean(0)
        return AffineBasis(encoder=rot.T, offset=-(mean @ rot.T), decoder=rot, dec_offset=mean)

    def figures(self, context: FigureContext) -> list[MethodFigure]:
        """Near-zero fraction of model A's Jacobians in the neuron, PCA and rotated bases."""
        caption = (
            "rotation sparsity: Jacobian near-zero fraction in the neuron, PCA and rotated "
            "bases (model A, training inputs)"
        )
        draw = partial(sparsity_bars, context.model_a, context.x_train, seed=context.seed)
        return [MethodFigure(caption, draw)]
