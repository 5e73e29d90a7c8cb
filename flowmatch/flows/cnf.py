"""Divergence-free continuous normalizing flow: a separable ODE solved with torchdiffeq.

The state ``y = (q, p)`` is split into two halves that drive each other::

    dq/dt = f(p, t)        dp/dt = g(q, t)

The velocity of each half never depends on that half, so the diagonal blocks of the field's
Jacobian vanish and its divergence is zero *by construction*: the exact flow preserves volume
and no trace estimator is needed. (With ``f = ∂H/∂p`` and ``g = −∂H/∂q`` for a separable
Hamiltonian ``H = T(p) + V(q)`` this is a Hamiltonian system; the general form keeps the
volume preservation and drops the weight tying.)

The default solver is the Störmer–Verlet ("leapfrog") scheme, registered with torchdiffeq as
``method="leapfrog"``. A leapfrog step is a composition of three shears (half kick of ``p``,
drift of ``q``, half kick of ``p``), so the *discrete* map is exactly volume-preserving
(log|det J| = 0 up to rounding) and is inverted exactly by integrating the same time grid
backwards. Any other torchdiffeq method (``"rk4"``, ``"dopri5"`` with ``rtol``/``atol`` ...)
may be chosen; those integrate the same divergence-free field but their discrete maps preserve
volume only up to the solver error (measure it with :func:`log_det_jacobian`).

References
----------
Chen, Rubanova, Bettencourt, Duvenaud (2018). Neural ordinary differential equations. NeurIPS.
Greydanus, Dzamba, Yosinski (2019). Hamiltonian neural networks. NeurIPS.
Hairer, Lubich, Wanner (2006). Geometric Numerical Integration, 2nd ed., ch. II (Störmer–Verlet).
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import Tensor, nn
from torchdiffeq import odeint
from torchdiffeq._impl.solvers import FixedGridODESolver

__all__ = ["DivergenceFreeCNF", "SeparableField", "Leapfrog", "log_det_jacobian"]

_FIXED_GRID = {"leapfrog", "euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams"}


class Leapfrog(FixedGridODESolver):
    """Störmer–Verlet (kick–drift–kick) fixed-grid solver for separable fields.

    The state's last dimension is split at ``options["n_q"]`` into ``(q, p)``; the field's
    ``q`` part must depend only on ``p`` (and ``t``) and its ``p`` part only on ``q``. Each
    step is then exactly volume-preserving and time-reversible. The kick that ends a step is
    reused to start the next one (first-same-as-last), so a step costs two field calls.
    """

    order = 2

    def __init__(self, func, y0: Tensor, n_q: int | None = None, **kwargs):  # noqa: ANN001
        if n_q is None:
            raise ValueError("the leapfrog solver needs options={'n_q': size of q}")
        super().__init__(func, y0, **kwargs)
        self.n_q = int(n_q)
        self._kick: tuple[Tensor, Tensor] | None = None

    def _step_func(self, func, t0: Tensor, dt: Tensor, t1: Tensor, y0: Tensor):  # noqa: ANN001
        m = self.n_q
        q0, p0 = y0[..., :m], y0[..., m:]
        if self._kick is not None and torch.equal(self._kick[0], t0):
            f0 = self._kick[1]
        else:
            f0 = func(t0, y0)
        p_half = p0 + 0.5 * dt * f0[..., m:]
        f_half = func(t0 + 0.5 * dt, torch.cat([q0, p_half], dim=-1))
        q1 = q0 + dt * f_half[..., :m]
        f1 = func(t1, torch.cat([q1, p_half], dim=-1))
        p1 = p_half + 0.5 * dt * f1[..., m:]
        self._kick = (t1, f1)
        return torch.cat([q1 - q0, p1 - p0], dim=-1), f0


# Make ``torchdiffeq.odeint(..., method="leapfrog")`` available (adds one entry to its table).
_SOLVERS: dict = importlib.import_module("torchdiffeq._impl.odeint").SOLVERS
_SOLVERS.setdefault("leapfrog", Leapfrog)


class SeparableField(nn.Module):
    """Block-hollow, divergence-free field ``v(t, (q, p)) = (f(p, t), g(q, t))``.

    ``f`` and ``g`` are one-hidden-layer tanh networks with the time as an extra input. The
    velocity of ``q`` never depends on ``q`` and that of ``p`` never on ``p``, so the diagonal
    blocks of ``∂v/∂y`` vanish and ``div v = 0`` for every parameter value. (A separable
    Hamiltonian ``H = T(p) + V(q)`` is the special case ``f = ∇T``, ``g = −∇V``.) The two
    networks are stacked so that one field call is two batched matrix products.

    Parameters
    ----------
    dim : state size; ``q`` is the first ``dim // 2`` coordinates, ``p`` the rest.
    hidden : hidden units of each network.
    generator : seeds the first-layer weights. The output layers start at zero, so the field
        is zero and the flow is the identity.
    """

    def __init__(self, dim: int, hidden: int = 128, generator: torch.Generator | None = None):
        super().__init__()
        if dim < 2:
            raise ValueError(f"a separable flow needs dim >= 2, got {dim}")
        self.n_q = dim // 2
        self.n_p = width = dim - self.n_q  # q is zero-padded to this width when dim is odd
        w_in = torch.randn(2, width, hidden, generator=generator)
        w_in[0] /= math.sqrt(self.n_p)
        w_in[1] /= math.sqrt(self.n_q)
        w_in[1, self.n_q :] = 0.0  # padding rows of g's input layer (inert)
        self.w_in = nn.Parameter(w_in)  # [0]: f (reads p), [1]: g (reads q)
        self.time = nn.Parameter(torch.randn(2, 1, hidden, generator=generator))
        self.b_in = nn.Parameter(0.1 * torch.randn(2, 1, hidden, generator=generator))
        self.w_out = nn.Parameter(torch.zeros(2, hidden, width))
        self.b_out = nn.Parameter(torch.zeros(2, 1, width))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        """dy/dt  # (n, dim)"""
        q, p = y[:, : self.n_q], y[:, self.n_q :]
        if self.n_q < self.n_p:
            q = torch.cat([q, q.new_zeros(q.shape[0], self.n_p - self.n_q)], dim=1)
        h = torch.tanh(torch.baddbmm(self.b_in + t * self.time, torch.stack([p, q]), self.w_in))
        out = torch.baddbmm(self.b_out, h, self.w_out)  # (2, n, n_p): f(p), g(q)
        return torch.cat([out[0, :, : self.n_q], out[1]], dim=1)


class DivergenceFreeCNF(nn.Module):
    """Volume-preserving CNF on ``R^dim``: the time-1 map of a :class:`SeparableField`.

    Parameters
    ----------
    dim : number of coordinates the flow acts on.
    hidden : hidden units of each of the two networks f and g.
    n_steps : steps of the fixed time grid on [0, 1] (fixed-grid methods).
    method : torchdiffeq method; ``"leapfrog"`` (default) is exactly volume-preserving and
        exactly invertible, the others only up to their discretisation error.
    rtol, atol : tolerances for adaptive methods (``"dopri5"`` ...).
    generator : seeds the initial weights. The output weights start at zero, so the
        freshly built flow is the identity map.

    Attributes
    ----------
    volume_preserving : bool  # True: ``forward`` returns a zero log-determinant.
    """

    volume_preserving = True

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        n_steps: int = 8,
        method: str = "leapfrog",
        rtol: float = 1e-5,
        atol: float = 1e-6,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if method not in _SOLVERS:
            raise ValueError(f"unknown ODE method {method!r}; choose from {sorted(_SOLVERS)}")
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.dim, self.method, self.n_steps = dim, method, int(n_steps)
        self.rtol, self.atol = rtol, atol
        self.field = SeparableField(dim, hidden, generator)

    def _integrate(self, y: Tensor, reverse: bool) -> Tensor:
        if self.method in _FIXED_GRID:
            t = torch.linspace(0.0, 1.0, self.n_steps + 1, dtype=y.dtype, device=y.device)
        else:
            t = torch.tensor([0.0, 1.0], dtype=y.dtype, device=y.device)
        if reverse:
            t = t.flip(0)
        options = {"n_q": self.field.n_q} if self.method == "leapfrog" else None
        return odeint(
            self.field, y, t, method=self.method, rtol=self.rtol, atol=self.atol, options=options
        )[-1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``z = φ(x)`` and ``log|det ∂φ/∂x| = 0``  # (n, dim), (n,)"""
        return self._integrate(x, reverse=False), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        """``x = φ⁻¹(z)`` by integrating the ODE from t = 1 back to t = 0  # (n, dim)"""
        return self._integrate(z, reverse=True)


def log_det_jacobian(flow: nn.Module, x: Tensor) -> Tensor:
    """``log|det ∂φ/∂x|`` of ``flow.forward`` at each row of ``x`` by full autograd Jacobians.

    Parameters
    ----------
    flow : a flow with ``forward(x) -> (z, logdet)``.
    x : Tensor  # (n, dim); use float64 to resolve values near 1e-5.

    Returns
    -------
    Tensor  # (n,)
    """
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda r: flow(r[None])[0][0], row)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)
