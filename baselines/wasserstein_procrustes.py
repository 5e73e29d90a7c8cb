"""Wasserstein–Procrustes (Grave, Joulin & Berthet 2019): a rotation and a matching, jointly.

The problem is ``min_{R orthogonal} min_{P permutation} ‖X Rᵀ − P Y‖²_F`` between two unpaired
clouds. It is solved as in the paper (Algorithm 1 and its reference code), on the unit sphere of
centred rows (:mod:`baselines._sphere`, the paper's "centre and normalise"):

1. **Convex-relaxation start** (:func:`convex_init`, optional). On ``convex_sample`` rows per
   side, the graph-matching relaxation ``min_{P doubly stochastic} ‖P K_X − K_Y P‖²`` of the
   two Gram matrices is solved by ``convex_iter`` (100) Frank–Wolfe steps, each linear step an
   entropic OT plan (Sinkhorn, ``reg`` 0.05) and the step size ``2 / (2 + t)``; the rows are first
   given a square-root spectrum (``X = U S Vᵀ → U S^½ Vᵀ``) and B's Gram is rescaled to A's norm,
   as the reference does. The start is the Procrustes rotation between ``P X`` and ``Y``.
2. **Random starts.** ``n_restarts`` Haar-random orthogonal matrices (the restarts that
   third-party benchmarks run this method with; the paper itself uses the convex start only).
3. **Stochastic optimisation** (:func:`stochastic_procrustes`): ``n_epochs`` epochs; each
   step draws ``batch_size`` rows of each side, computes the OT plan between the mapped A rows
   and the B rows for the cost ``−⟨R x, y⟩`` (Sinkhorn with ``reg`` 0.05, rows of the plan
   summing to one, or the exact plan), takes the gradient step ``R ← R + (lr / b) (P Y)ᵀ X``
   and projects ``R`` back on the orthogonal matrices (polar factor). After each epoch the batch
   size doubles and the number of steps is divided by 4.
4. **Restarts and selection.** Every start first runs a probe of ``n_probe`` (50) steps; each
   probe is scored by the paper's objective, the mean squared distance between the mapped A
   rows and their barycentric B targets ``(P Y)_i`` under an entropic plan (``reg`` 0.025), on
   one fixed subsample of ``eval_sample`` rows per side. The best probe continues through the
   full schedule (``n_iter`` = 1,000 steps in the first epoch, 3 epochs: 1,312 steps). With
   ``n_probe=None`` every start runs the full schedule and the best final map is kept.

Defaults follow the reference code per step (batch 500, ``lr`` 500, ``reg`` 0.05, square-root
spectrum and 100 Frank–Wolfe steps for the convex start). Where they differ, for cost on CPUs:
the reference runs one start (the convex one) for 5 epochs of 5,000 → 19 steps (6,659 in all,
up to 8,000-row batches, on 2,500 rows for the convex start); here 1 + 30 starts are probed and
the best runs 3 epochs of 1,000 → 62 steps (batches up to 2,000 rows, capped at the row
counts), and the convex start uses 1,000 rows. When the widths differ, each side is first
projected on its top ``min(d_a, d_b)`` principal axes (the paper aligns equal widths). The
result lives in B's original activation space (:class:`baselines._sphere.SphereMap`).

References
----------
Grave, Joulin, Berthet. "Unsupervised alignment of embeddings with Wasserstein Procrustes",
AISTATS 2019 (reference code: fastText, ``alignment/unsup_align.py``).
Gold, Rangarajan. "A graduated assignment algorithm for graph matching", TPAMI 1996.
Cuturi. "Sinkhorn distances: lightspeed computation of optimal transport", NeurIPS 2013.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import ot
import torch
from torch import Tensor
from tqdm.auto import tqdm

from baselines._sphere import (
    SphereMap,
    check_norm,
    check_params,
    orthogonal_procrustes,
    polar,
    sphere_pair,
)
from flowmatch.methods import FitData, Method, register
from flowmatch.validation import check_fitted

__all__ = [
    "WassersteinProcrustes",
    "WassersteinProcrustesMap",
    "convex_init",
    "fit_wasserstein_procrustes",
    "stochastic_procrustes",
    "wp_objective",
]

SOLVERS = ("sinkhorn", "emd")
_FLOAT32_RANGE = 50.0  # largest cost / reg iterated in float32 (kernel entries ≥ e^−50)


@dataclass(frozen=True)
class WassersteinProcrustesMap(SphereMap):
    """The fitted Wasserstein–Procrustes translation A → B and its runs.

    Attributes
    ----------
    coords_a, coords_b, rotation, norm : see :class:`baselines._sphere.SphereMap`;
        ``rotation`` (k, k) is orthogonal; :meth:`transform` maps (n, d_a) → (n, d_b).
    start_kinds : tuple[str, ...]  # "convex" or "random" for each start, in order
    start_objectives : ndarray  # (n_starts,) objective of each starting map
    probe_objectives : ndarray  # (n_starts,) objective after each start's probe run
    kept : int  # index of the start whose run was kept (lowest probe objective)
    objective : float  # objective of the final map
    seconds : dict[str, float]  # wall time of the convex start, the probes and the final run
    """

    start_kinds: tuple[str, ...] = ()
    start_objectives: np.ndarray = field(default_factory=lambda: np.zeros(0))
    probe_objectives: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kept: int = 0
    objective: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)


def _sinkhorn(
    cost: np.ndarray, reg: float, *, stop: float = 1e-3, max_iter: int = 1000
) -> np.ndarray:
    """Entropic OT plan whose rows each sum to one and columns to ``n / m`` (n, m).

    Sinkhorn–Knopp scaling of ``exp(−cost / reg)`` (Cuturi 2013), as POT's ``sinkhorn`` with
    marginals of ones, stopping when the column sums are within ``stop`` (L2) of their target.
    The cost is first shifted by its row minima, then by its column minima (diagonal scalings,
    which the scaling vectors absorb, so the plan is unchanged), so that every row and column of
    the kernel holds a 1. The iterations run in float32 (twice as fast) when the kernel's
    dynamic range ``exp(−max cost / reg)`` stays far from float32's limits, else in float64.
    """
    c = torch.as_tensor(np.asarray(cost), dtype=torch.float64)
    n, m = c.shape
    c = c - c.min(1, keepdim=True).values
    c = c - c.min(0, keepdim=True).values
    dtype = torch.float32 if float(c.max()) / reg < _FLOAT32_RANGE else torch.float64
    k = torch.exp(-c / reg).to(dtype)
    a, b = torch.ones(n, dtype=dtype), torch.full((m,), n / m, dtype=dtype)
    u, v = torch.ones(n, dtype=dtype), torch.ones(m, dtype=dtype)
    for it in range(max_iter):
        v = b / (k.T @ u)
        u = a / (k @ v)
        if it % 10 == 9 and float(torch.linalg.vector_norm(v * (k.T @ u) - b)) < stop:
            break
    return (u[:, None].double() * k.double() * v[None, :].double()).numpy()


def _plan(cost: np.ndarray, reg: float, solver: str) -> np.ndarray:
    if solver == "emd":
        n, m = cost.shape
        return ot.emd(np.ones(n), np.full(m, n / m), cost, numItermax=1_000_000)
    return _sinkhorn(cost, reg)


def _sqrt_spectrum(x: np.ndarray) -> np.ndarray:
    """``U S Vᵀ → U S^½ Vᵀ``  # (n, d) → (n, d)."""
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    return (u * np.sqrt(s)) @ vh


def convex_init(
    xa: np.ndarray,
    xb: np.ndarray,
    *,
    n_iter: int = 100,
    reg: float = 0.05,
    sqrt_spectrum: bool = True,
) -> np.ndarray:
    """Starting rotation from the convex relaxation of graph matching (Frank–Wolfe).

    Minimises ``‖P K_a − K_b P‖²_F`` over doubly stochastic ``P`` (n, n) — row i of ``P`` weighs
    A's rows for B's row i — with ``K = X Xᵀ``. The gradient
    ``2 (P K_a² + K_b² P − 2 K_b P K_a)`` is formed through the rows (never the n × n Grams'
    products), each linear step is a Sinkhorn plan for the gradient (``reg`` applied to it as
    is, like the reference) and ``P ← (1 − γ) P + γ Q`` with ``γ = 2 / (2 + t)``.

    Parameters
    ----------
    xa : (n, k) ; xb : (n, k) rows of each side (equal counts).
    n_iter : Frank–Wolfe steps.
    reg : entropic regularisation of each linear step.
    sqrt_spectrum : replace each side's singular values by their square roots first.

    Returns
    -------
    ndarray  # (k, k) orthogonal R with ``P X Rᵀ ≈ Y`` on the (transformed) rows
    """
    x, y = np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64)
    if sqrt_spectrum:
        x, y = _sqrt_spectrum(x), _sqrt_spectrum(y)
    gx, gy = x.T @ x, y.T @ y  # K² = X (XᵀX) Xᵀ
    y = y * np.sqrt(float(np.linalg.norm(gx)) / max(float(np.linalg.norm(gy)), 1e-300))
    gy = y.T @ y
    n = len(x)
    p = np.full((n, n), 1.0 / n)
    for t in range(1, n_iter + 1):
        px, ytp = p @ x, y.T @ p  # (n, k), (k, n)
        grad = (px @ gx - 2.0 * y @ (ytp @ x)) @ x.T + y @ (gy @ ytp)
        q = _sinkhorn(grad, reg)
        gamma = 2.0 / (2.0 + t)
        p = (1.0 - gamma) * p + gamma * q
    return orthogonal_procrustes(p @ x, y)


def stochastic_procrustes(
    xa: np.ndarray,
    xb: np.ndarray,
    rotation: np.ndarray,
    *,
    n_epochs: int = 5,
    n_iter: int = 100,
    batch_size: int = 500,
    lr: float = 500.0,
    reg: float = 0.05,
    solver: str = "sinkhorn",
    rng: np.random.Generator,
) -> np.ndarray:
    """Algorithm 1 of the paper: minibatch OT plans and projected gradient steps on ``R``.

    Parameters
    ----------
    xa : (n_a, k) ; xb : (n_b, k) unit rows.
    rotation : (k, k) starting orthogonal map (``x̂_b ≈ R x̂_a``).
    n_epochs, n_iter, batch_size : epochs; steps and rows per side in the first epoch (then
        the batch doubles and the steps are divided by 4 each epoch).
    lr : learning rate; the step is ``(lr / b) (P Y)ᵀ X`` with P's rows summing to one.
    reg, solver : the plan of each step: Sinkhorn with ``reg`` on ``−⟨R x, y⟩``, or exact.

    Returns
    -------
    ndarray  # (k, k) orthogonal
    """
    r = np.asarray(rotation, dtype=np.float64)
    xa32, xb32 = xa.astype(np.float32), xb.astype(np.float32)
    for epoch in range(n_epochs):
        b = min(batch_size * 2**epoch, len(xa), len(xb))
        for _ in range(n_iter // 4**epoch):
            xt = xa32[rng.choice(len(xa), size=b, replace=False)]
            yt = xb32[rng.choice(len(xb), size=b, replace=False)]
            cost = -(xt @ r.T.astype(np.float32)) @ yt.T
            plan = _plan(cost.astype(np.float64), reg, solver)
            r = polar(r + (lr / b) * ((plan @ yt).T @ xt))
    return r


def wp_objective(
    xa: np.ndarray, xb: np.ndarray, rotation: np.ndarray, *, reg: float = 0.025
) -> float:
    """Mean squared distance of the mapped A rows to their barycentric B targets.

    The paper's objective ``‖X Rᵀ − P Y‖²`` (per row), with ``P`` the Sinkhorn plan for the cost
    ``−⟨R x, y⟩`` between the given rows, rows of ``P`` summing to one.
    """
    mapped = xa @ rotation.T
    plan = _sinkhorn(-(mapped @ xb.T), reg)
    return float(((mapped - plan @ xb) ** 2).sum(1).mean())


def _haar(k: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.sign(np.diag(r))


def _starts(
    xa: np.ndarray, xb: np.ndarray, *, init: str, n_restarts: int, convex_sample: int,
    convex_iter: int, reg: float, rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[str]]:  # fmt: skip
    """The convex-relaxation start (if ``init == "convex"``) and ``n_restarts`` Haar rotations."""
    starts, kinds = [], []
    if init == "convex":
        m = min(convex_sample, len(xa), len(xb))
        ia, ib = rng.permutation(len(xa))[:m], rng.permutation(len(xb))[:m]
        starts.append(convex_init(xa[ia], xb[ib], n_iter=convex_iter, reg=reg))
        kinds.append("convex")
    starts += [_haar(xa.shape[1], rng) for _ in range(n_restarts)]
    return starts, kinds + ["random"] * n_restarts


def fit_wasserstein_procrustes(
    x_a: np.ndarray,
    x_b: np.ndarray,
    *,
    n_restarts: int = 30,
    init: Literal["convex", "random"] = "convex",
    convex_sample: int = 1000,
    convex_iter: int = 100,
    n_probe: int | None = 50,
    n_epochs: int = 3,
    n_iter: int = 1000,
    batch_size: int = 500,
    lr: float = 500.0,
    reg: float = 0.05,
    solver: Literal["sinkhorn", "emd"] = "sinkhorn",
    eval_sample: int = 2000,
    n_components: int | None = None,
    norm: Literal["ratio", "constant"] = "ratio",
    seed: int = 0,
    progress: bool = False,
) -> WassersteinProcrustesMap:
    """Fit Wasserstein–Procrustes on unpaired rows of A and B (module docstring).

    Parameters
    ----------
    x_a : (n_a, d_a) A's rows ; x_b : (n_b, d_b) B's rows, on different inputs (no pairing).
    n_restarts : Haar-random starting rotations.
    init : "convex" adds the paper's convex-relaxation start (first); "random" omits it.
    convex_sample, convex_iter : rows per side and Frank–Wolfe steps of the convex start.
    n_probe : steps (at ``batch_size``) each start runs before the runs are compared; the best
        continues through the full schedule. ``None``: every start runs the full schedule and
        the best final map is kept (``1 + n_restarts`` times the cost of one run).
    n_epochs, n_iter, batch_size, lr, reg, solver : the stochastic optimisation
        (:func:`stochastic_procrustes`); ``n_iter`` steps in the first epoch.
    eval_sample : rows per side of the fixed subsample the runs are scored on.
    n_components : principal axes kept per side (default: all when ``d_a == d_b``, else
        ``min(d_a, d_b)``).
    norm : how translated rows get a norm back in B's space ("ratio" or "constant").
    seed : seeds every random draw; the result is deterministic given it.
    progress : show a tqdm bar over the starts.

    Returns
    -------
    WassersteinProcrustesMap  # ``.transform(x_a)`` (n, d_a) → (n, d_b); ``.rotation`` (k, k)
    """
    check_norm(norm)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if init not in ("convex", "random") or (init == "random" and n_restarts < 1):
        raise ValueError(f'init must be "convex", or "random" with n_restarts ≥ 1, got {init!r}')
    coords_a, coords_b, xa, xb = sphere_pair(x_a, x_b, n_components)
    rng = np.random.default_rng(seed)
    clock = [time.perf_counter()]
    starts, kinds = _starts(
        xa, xb, init=init, n_restarts=n_restarts, convex_sample=convex_sample,
        convex_iter=convex_iter, reg=reg, rng=rng,
    )  # fmt: skip
    clock.append(time.perf_counter())
    m = min(eval_sample, len(xa), len(xb))
    ea, eb = xa[rng.permutation(len(xa))[:m]], xb[rng.permutation(len(xb))[:m]]
    score = lambda r: wp_objective(ea, eb, r)  # noqa: E731

    def run(r0: np.ndarray, epochs: int, iters: int) -> np.ndarray:
        return stochastic_procrustes(
            xa, xb, r0, n_epochs=epochs, n_iter=iters, batch_size=batch_size, lr=lr, reg=reg,
            solver=solver, rng=rng,
        )  # fmt: skip

    probe_epochs, probe_iter = (1, n_probe) if n_probe is not None else (n_epochs, n_iter)
    bar = tqdm(starts, desc="Wasserstein-Procrustes starts", disable=not progress)
    runs = [run(r0, probe_epochs, probe_iter) for r0 in bar]
    probed = np.array([score(r) for r in runs])
    kept = int(np.argmin(probed))
    clock.append(time.perf_counter())
    r = runs[kept] if n_probe is None else run(runs[kept], n_epochs, n_iter)
    clock.append(time.perf_counter())
    seconds = dict(zip(("starts", "probes", "final_run"), np.diff(clock).tolist()))
    return WassersteinProcrustesMap(
        coords_a, coords_b, r, norm, start_kinds=tuple(kinds),
        start_objectives=np.array([score(r0) for r0 in starts]), probe_objectives=probed,
        kept=kept, objective=score(r), seconds=seconds,
    )  # fmt: skip


@register("wasserstein_procrustes")
class WassersteinProcrustes(Method):
    """Wasserstein–Procrustes (Grave et al. 2019): minibatch OT and orthogonal gradient steps
    from a convex-relaxation start and random restarts; the run with the best objective is kept.

    Parameters
    ----------
    **params : keyword arguments of :func:`fit_wasserstein_procrustes` (all but ``x_a``,
        ``x_b``, ``seed``, which comes from :class:`~flowmatch.methods.FitData`).

    Attributes
    ----------
    map_ : WassersteinProcrustesMap  # the fitted translation and its runs
    n_pairs_used_ : int  # always 0
    """

    paired: ClassVar[bool] = False
    uses: ClassVar[str] = "unpaired activations (Wasserstein-Procrustes)"

    map_: WassersteinProcrustesMap | None = None

    def __init__(self, **params: Any) -> None:
        check_params(fit_wasserstein_procrustes, params)
        self.params = params

    def _fit(self, data: FitData) -> None:
        self.map_ = fit_wasserstein_procrustes(
            data.a.cpu().numpy(), data.b.cpu().numpy(), seed=data.seed, **self.params
        )

    def _transform(self, x_a: Tensor) -> Tensor:
        check_fitted(self, "map_")
        assert self.map_ is not None
        return torch.from_numpy(self.map_.transform(x_a.cpu().double().numpy()))
