"""Stages of a sequential network and their batched Jacobians (``torch.func``).

A sequential network ``nn.Sequential(pre..., Linear, act, ..., Linear, act, ..., Linear)`` is cut
into *nodes* and *stages*. A node is the input of each ``nn.Linear`` child, plus the network's
output; stage ``k`` maps node ``k`` to node ``k + 1`` and holds exactly one ``nn.Linear``
followed by the parameter-free modules (activations) before the next ``nn.Linear``. Children
before the first ``nn.Linear`` (e.g. a convolutional trunk and ``Flatten``) form ``pre``.

>>> net = split_network(model)           # nodes "input", "relu1", "hidden", "output"
>>> acts = net.node_activations(x)       # list of (n, d_k)
>>> jac = batched_jacobian(net.stages[1], acts[1])   # (n, d_2, d_1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

__all__ = ["Network", "batched_jacobian", "folded_stage", "split_network", "stage_jacobians"]


@dataclass(frozen=True)
class Network:
    """A sequential network cut at the inputs of its linear layers.

    Attributes
    ----------
    names : list[str]  # node names: the child after which each node is read ("input" for the
        network input), then "output"
    pre : nn.Sequential  # children before the first linear layer (maps inputs to node 0)
    stages : list[nn.Sequential]  # stage k maps node k (n, d_k) to node k+1 (n, d_{k+1})
    """

    names: list[str]
    pre: nn.Sequential
    stages: list[nn.Sequential]

    @property
    def widths(self) -> list[int]:
        """Width of every node."""
        linears = [cast(nn.Linear, s[0]) for s in self.stages]
        return [int(linears[0].in_features)] + [int(lin.out_features) for lin in linears]

    @torch.no_grad()
    def node_activations(self, inputs: Tensor) -> list[Tensor]:
        """Activations of every node  # list of (n, d_k), node 0 first."""
        h = self.pre(inputs)
        out = [h]
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out


def split_network(model: nn.Module) -> Network:
    """Cut an ``nn.Sequential`` at the inputs of its ``nn.Linear`` children.

    Raises ``TypeError`` for a model that is not sequential, has no linear layer, or has a
    parametrised non-linear child after its first linear layer.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"expected an nn.Sequential, got {type(model).__name__}")
    children = list(model.named_children())
    linear_at = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear)]
    if not linear_at:
        raise TypeError("the network has no nn.Linear layer to cut at")
    for name, module in children[linear_at[0] :]:
        if not isinstance(module, nn.Linear) and any(True for _ in module.parameters()):
            raise TypeError(f"child {name!r} after the first linear layer has parameters")
    pre = nn.Sequential(*[m for _, m in children[: linear_at[0]]])
    bounds = [*linear_at, len(children)]
    stages = [nn.Sequential(*[m for _, m in children[a:b]]) for a, b in zip(bounds, bounds[1:])]
    names = ["input" if i == 0 else children[i - 1][0] for i in linear_at] + ["output"]
    return Network(names=names, pre=pre, stages=stages)


def _per_sample(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda v: fn(v.unsqueeze(0)).squeeze(0)


def batched_jacobian(
    fn: Callable[[Tensor], Tensor], x: Tensor, *, chunk_size: int | None = 256
) -> Tensor:
    """Jacobian of a batched map at every row of ``x``.

    Parameters
    ----------
    fn : callable  # (n, d_in) -> (n, d_out), applied row-wise (no mixing across rows)
    x : Tensor  # (n, d_in)
    chunk_size : rows per vectorised chunk (bounds memory).

    Returns
    -------
    Tensor  # (n, d_out, d_in), ``J[s, i, j] = d fn(x)[s, i] / d x[s, j]``
    """
    jac = torch.func.jacrev(_per_sample(fn))
    return torch.func.vmap(jac, chunk_size=chunk_size)(x)


def stage_jacobians(net: Network, acts: list[Tensor]) -> list[Tensor]:
    """Jacobian of every stage at the given node activations  # list of (n, d_{k+1}, d_k)."""
    return [batched_jacobian(stage, a).detach() for stage, a in zip(net.stages, acts[:-1])]


def folded_stage(stage: nn.Sequential) -> Callable[[Tensor], Tensor]:
    """The stage acting on bias-folded inputs ``[f, c]``  # (n, d_k + 1) -> (n, d_{k+1} + 1).

    The linear layer's bias is multiplied by the extra coordinate ``c`` (``c = 1`` gives the
    original stage) and ``c`` is passed through, so that biases become directions of the
    activation space.
    """
    linear, rest = cast(nn.Linear, stage[0]), stage[1:]

    def fn(x: Tensor) -> Tensor:
        f, c = x[..., :-1], x[..., -1:]
        h = nn.functional.linear(f, linear.weight)
        if linear.bias is not None:
            h = h + c * linear.bias
        return torch.cat([rest(h), c], dim=-1)

    return fn
