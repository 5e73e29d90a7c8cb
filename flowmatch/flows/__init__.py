"""Flows on ``R^d`` used by :class:`~flowmatch.autoencoder.FlowAutoencoder`.

Every flow is an ``nn.Module`` built as ``cls(dim, hidden=..., generator=..., **options)`` with

- ``forward(x) -> (z, logdet)``  # (n, dim), (n,): ``log|det ∂z/∂x|``
- ``inverse(z) -> x``            # (n, dim)
- a class attribute ``volume_preserving``; when True ``logdet`` is exactly zero by construction.

Registered flows:

==========  =====================================================  ==================
name        class                                                  volume-preserving
==========  =====================================================  ==================
``cnf``     :class:`~flowmatch.flows.cnf.DivergenceFreeCNF`        yes (leapfrog)
``coupling``:class:`~flowmatch.flows.coupling.AdditiveCouplingFlow` yes
``ffjord``  :class:`~flowmatch.flows.ffjord.FFJORDFlow`            no (benchmark reference)
==========  =====================================================  ==================

Add a flow with :func:`register_flow`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from flowmatch.flows.cnf import DivergenceFreeCNF, log_det_jacobian
from flowmatch.flows.coupling import AdditiveCouplingFlow
from flowmatch.flows.ffjord import FFJORDFlow

__all__ = [
    "FLOWS",
    "AdditiveCouplingFlow",
    "FFJORDFlow",
    "Flow",
    "DivergenceFreeCNF",
    "get_flow",
    "log_det_jacobian",
    "register_flow",
]


@runtime_checkable
class Flow(Protocol):
    """What the autoencoder needs from a flow (see the module docstring)."""

    volume_preserving: bool

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def inverse(self, z: Tensor) -> Tensor: ...


FLOWS: dict[str, type[torch.nn.Module]] = {
    "cnf": DivergenceFreeCNF,
    "coupling": AdditiveCouplingFlow,
    "ffjord": FFJORDFlow,
}


def register_flow(name: str, cls: type[torch.nn.Module] | None = None):  # noqa: ANN201
    """Register ``cls`` under ``name``; usable as ``@register_flow("name")`` too."""

    def add(c: type[torch.nn.Module]) -> type[torch.nn.Module]:
        if name in FLOWS and FLOWS[name] is not c:
            raise ValueError(f"a flow named {name!r} is already registered")
        FLOWS[name] = c
        return c

    return add if cls is None else add(cls)


def get_flow(name: str) -> type[torch.nn.Module]:
    """The flow class registered as ``name``."""
    if name not in FLOWS:
        raise KeyError(f"unknown flow {name!r}; registered: {', '.join(sorted(FLOWS))}")
    return FLOWS[name]
