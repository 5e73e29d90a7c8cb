"""Divergence-free continuous normalizing flow: a separable ODE solved with torchdiffeq.

The state ``y = (q, p)`` is split into two halves that drive each other::

    dq/dt = f(p, t)        dp/dt = g(q, t)

The velocity of each half never depends on that half, so the diagonal blocks of the field's
Jacobian vanish and its divergence is zero *by construction*: the exact flow preserves volume
and no trace estimator is needed. (With ``f = ∂H/∂p`` and ``g = −∂H/∂q`` for a separable
Hamiltonian ``H = T(p) + V(q)`` this is a Hamiltonian system; the general form keeps the
volume preservation and drops the weight tying.)

The default solver is the Störmer–Verlet ("leapfrog") scheme, written here in plain torch
(:func:`leapfrog`; ``method="leapfrog"``). A leapfrog step is a composition of three shears
(half kick of ``p``, drift of ``q``, half kick of ``p``), so the *discrete* map is exactly
volume-preserving (log|det J| = 0 up to rounding) and is inverted exactly by integrating the
same time grid backwards. Each shear evaluates only the half of the field it needs (``g(q)``
for a kick, ``f(p)`` for a drift), and the closing kick of a step opens the next, so a step
costs one evaluation of each half. Any torchdiffeq method (``"rk4"``, ``"dopri5"`` with
``rtol``/``atol`` ...) may be chosen instead, through ``torchdiffeq.odeint`` (its public API
only); those evaluate the full field, integrate the same divergence-free ODE, and preserve
volume only up to the solver error (measure it with :func:`log_det_jacobian`).

References
----------
Chen, Rubanova, Bettencourt, Duvenaud (2018). Neural ordinary differential equations. NeurIPS.
Greydanus, Dzamba, Yosinski (2019). Hamiltonian neural networks. NeurIPS.
Hairer, Lubich, Wanner (2006). Geometric Numerical Integration, 2nd ed., ch. II (Störmer–Verlet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

__all__ = [
    "METHODS",
    "DivergenceFreeCNF",
    "SeparableField",
    "leapfrog",
    "log_det_jacobian",
    "uniform_grid",
]

#: torchdiffeq's fixed-grid methods (their grid is set with :func:`uniform_grid`).
_FIXED_GRID = {"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams"}
#: Methods a :class:`DivergenceFreeCNF` accepts: the leapfrog of this module, and the methods
#: torchdiffeq documents for ``odeint``.
METHODS = (
    "leapfrog", *sorted(_FIXED_GRID), "fixed_adams", "dopri5", "dopri8", "bosh3", "fehlberg2",
    "adaptive_heun",
)  # fmt: skip


def leapfrog(func: Any, y0: Tensor, t0: float, t1: float, n_steps: int, n_q: int) -> Tensor:
    """End state of the Störmer–Verlet (kick–drift–kick) scheme for a separable field.

    ``n_steps`` equal steps from ``t0`` to ``t1`` (``t1 < t0`` integrates backwards, which
    inverts the forward map exactly). The state's last dimension is split at ``n_q`` into
    ``(q, p)``; the field's ``q`` part must depend only on ``p`` (and ``t``) and its ``p`` part
    only on ``q``. Each step is then exactly volume-preserving and time-reversible. The kick
    that ends a step opens the next one (first-same-as-last).

    Parameters
    ----------
    func : a field with ``halves() -> (drift, kick)``, ``drift(t, p) = dq/dt`` and
        ``kick(t, q) = dp/dt`` (as :class:`SeparableField` has): a step then evaluates each half
        once; or any callable ``f(t, y) -> dy/dt``, evaluated in full (three calls a step).
    y0 : Tensor  # (n, dim) start state; t0, t1 : start and end times; n_q : size of q.

    Returns
    -------
    Tensor  # (n, dim) state at ``t1``
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    grid = torch.linspace(float(t0), float(t1), n_steps + 1, dtype=y0.dtype).tolist()
    q, p = y0[..., :n_q], y0[..., n_q:]
    halves = getattr(func, "halves", None)
    if not (callable(halves) and getattr(func, "n_q", n_q) == n_q):
        return _leapfrog_full(func, q, p, grid)
    drift, kick = halves()
    g = kick(grid[0], q)
    for a, b in zip(grid[:-1], grid[1:]):
        h = b - a
        p = torch.add(p, g, alpha=0.5 * h)
        q = torch.add(q, drift(0.5 * (a + b), p), alpha=h)
        g = kick(b, q)
        p = torch.add(p, g, alpha=0.5 * h)
    return torch.cat([q, p], dim=-1)


def _leapfrog_full(func: Any, q: Tensor, p: Tensor, grid: list[float]) -> Tensor:
    """:func:`leapfrog` for a field given only as ``f(t, y)``."""
    m = q.shape[-1]
    dt = lambda v: torch.as_tensor(v, dtype=q.dtype, device=q.device)  # noqa: E731
    g = func(dt(grid[0]), torch.cat([q, p], dim=-1))[..., m:]
    for a, b in zip(grid[:-1], grid[1:]):
        h = b - a
        p = torch.add(p, g, alpha=0.5 * h)
        q = torch.add(q, func(dt(0.5 * (a + b)), torch.cat([q, p], dim=-1))[..., :m], alpha=h)
        g = func(dt(b), torch.cat([q, p], dim=-1))[..., m:]
        p = torch.add(p, g, alpha=0.5 * h)
    return torch.cat([q, p], dim=-1)


def uniform_grid(n_steps: int) -> dict[str, Any]:
    """torchdiffeq options for ``n_steps`` equal steps between the two output times (its
    documented ``grid_constructor`` option of the fixed-grid solvers).

    Asking for the end point only (``t = [t0, t1]``) rather than every grid point spares the
    solver from stacking, and the backward pass from differentiating, the intermediate states.
    """

    def grid(func, y0: Tensor, t: Tensor) -> Tensor:  # noqa: ANN001, ARG001
        return torch.linspace(
            float(t[0]), float(t[-1]), n_steps + 1, dtype=t.dtype, device=t.device
        )

    return {"grid_constructor": grid}


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

    def halves(self) -> tuple[Callable[[float, Tensor], Tensor], Callable[[float, Tensor], Tensor]]:
        """The two halves ``(drift, kick)`` of the field as separate functions.

        ``drift(t, p) = f(p, t)  # (n, n_p) → (n, n_q)`` is ``dq/dt`` and ``kick(t, q) = g(q,
        t)  # (n, n_q) → (n, n_p)`` is ``dp/dt``; ``t`` is a Python float. The weights are
        sliced once here, so a solver that takes many steps pays for the slicing (and its
        backward pass) once rather than at every evaluation.
        """
        m = self.n_q
        w_f, w_g = self.w_in[0], self.w_in[1, :m]
        b_f, b_g = self.b_in[0], self.b_in[1]
        c_f, c_g = self.time[0], self.time[1]
        v_f, v_g = self.w_out[0, :, :m], self.w_out[1]
        o_f, o_g = self.b_out[0, :, :m], self.b_out[1]

        def drift(t: float, p: Tensor) -> Tensor:
            return torch.addmm(o_f, torch.tanh(torch.addmm(b_f.add(c_f, alpha=t), p, w_f)), v_f)

        def kick(t: float, q: Tensor) -> Tensor:
            return torch.addmm(o_g, torch.tanh(torch.addmm(b_g.add(c_g, alpha=t), q, w_g)), v_g)

        return drift, kick

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        """dy/dt = (f(p, t), g(q, t)), both halves in one batched call  # (n, dim)"""
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
    method : ``"leapfrog"`` (default, :func:`leapfrog`) is exactly volume-preserving and
        exactly invertible; a torchdiffeq method (:data:`METHODS`) only up to its
        discretisation error.
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
        if method not in METHODS:
            raise ValueError(f"unknown ODE method {method!r}; choose from {list(METHODS)}")
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.dim, self.method, self.n_steps = dim, method, int(n_steps)
        self.rtol, self.atol = rtol, atol
        self.field = SeparableField(dim, hidden, generator)

    def _integrate(self, y: Tensor, reverse: bool) -> Tensor:
        t0, t1 = (1.0, 0.0) if reverse else (0.0, 1.0)
        if self.method == "leapfrog":
            return leapfrog(self.field, y, t0, t1, self.n_steps, self.field.n_q)
        t = torch.tensor([t0, t1], dtype=y.dtype, device=y.device)
        options = uniform_grid(self.n_steps) if self.method in _FIXED_GRID else None
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
