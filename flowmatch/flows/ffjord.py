"""FFJORD-style continuous normalizing flow with a Hutchinson trace estimator (reference).

An unconstrained field ``v(t, z)`` (an MLP on ``[z, t]``) is integrated with torchdiffeq
together with the log-determinant ``d/dt log|det ∂z(t)/∂z(0)| = tr ∂v/∂z``. During training
the trace is estimated with one Rademacher probe per sample and solve (Hutchinson), which
needs a vector–Jacobian product at every field evaluation and a double backward pass; in
evaluation mode the trace is computed exactly (one backward pass per coordinate), so held-out
log-likelihoods are exact up to the solver error. This flow is *not* volume-preserving; it is
the baseline that the divergence-free :class:`~flowmatch.flows.cnf.DivergenceFreeCNF` is
benchmarked against.

References
----------
Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud (2019). FFJORD: Free-form continuous
dynamics for scalable reversible generative models. ICLR.
Hutchinson (1989). A stochastic estimator of the trace of the influence matrix for Laplacian
smoothing splines. Communications in Statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from flowmatch.flows.cnf import _FIXED_GRID, uniform_grid

__all__ = ["FFJORDFlow"]


class _TimeMLP(nn.Module):
    """``v(t, z)``: MLP on ``[z, t]`` with tanh hidden layers and a zero-initialised output."""

    def __init__(self, dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = dim + 1
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        last = nn.Linear(width, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([z, t.expand(z.shape[0], 1)], dim=1))


class _Dynamics(nn.Module):
    """Augmented dynamics ``(z, ℓ) ↦ (v, tr ∂v/∂z)`` with a Hutchinson or exact trace."""

    def __init__(self, field: _TimeMLP) -> None:
        super().__init__()
        self.field = field
        self.probe: Tensor | None = None  # Rademacher probe (n, dim); None → exact trace

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        z = state[0]
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            v = self.field(t, z)
            if self.probe is not None:
                (vjp,) = torch.autograd.grad(v, z, self.probe, create_graph=create)
                div = (vjp * self.probe).sum(dim=1)
            else:
                div = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
                for i in range(z.shape[1]):
                    (g,) = torch.autograd.grad(v[:, i].sum(), z, retain_graph=True)
                    div = div + g[:, i]
        if not create:
            v, div = v.detach(), div.detach()
        return v, div


class FFJORDFlow(nn.Module):
    """Free-form CNF (not volume-preserving) with a stochastic trace in training mode.

    Parameters
    ----------
    dim : number of coordinates the flow acts on.
    hidden : width of the field MLP's hidden layers.
    depth : number of hidden layers of the field MLP.
    n_steps : steps of the fixed grid on [0, 1] (fixed-grid methods).
    method : torchdiffeq method (``"rk4"`` by default; ``"dopri5"`` with ``rtol``/``atol``,
        e.g. ``rtol = atol = 1e-5`` as in the tabular experiments of Grathwohl et al.).
    rtol, atol : tolerances for adaptive methods.
    generator : seeds the initial weights and the Hutchinson probes.

    Attributes
    ----------
    volume_preserving : bool  # False: ``forward`` returns the integrated log-determinant.
    """

    volume_preserving = False

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        depth: int = 2,
        n_steps: int = 8,
        method: str = "rk4",
        rtol: float = 1e-5,
        atol: float = 1e-6,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        rng_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            self.dynamics = _Dynamics(_TimeMLP(dim, hidden, depth))
        finally:
            torch.random.set_rng_state(rng_state)
        self._probe_gen = torch.Generator().manual_seed(seed + 1)
        self.dim, self.method, self.n_steps = dim, method, int(n_steps)
        self.rtol, self.atol = rtol, atol

    def _solve(self, func: nn.Module, state: Any, reverse: bool) -> Any:  # noqa: ANN401
        """End state of the ODE ``func`` from ``state`` over [0, 1] (or [1, 0] if reversed)."""
        x = state[0] if isinstance(state, tuple) else state
        t = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=x.dtype, device=x.device)
        options = uniform_grid(self.n_steps) if self.method in _FIXED_GRID else None
        out = odeint(
            func, state, t, method=self.method, rtol=self.rtol, atol=self.atol, options=options
        )
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``z = φ(x)`` and ``log|det ∂φ/∂x|``  # (n, dim), (n,)

        The log-determinant is a Hutchinson estimate in training mode, exact in eval mode.
        """
        if self.training:
            probe = torch.randint(0, 2, x.shape, generator=self._probe_gen).to(x) * 2 - 1
            self.dynamics.probe = probe
        else:
            self.dynamics.probe = None
        return self._solve(self.dynamics, (x, x.new_zeros(x.shape[0])), reverse=False)

    def inverse(self, z: Tensor) -> Tensor:
        """``x = φ⁻¹(z)`` by integrating from t = 1 back to t = 0  # (n, dim)"""
        return self._solve(self.dynamics.field, z, reverse=True)
