"""Flows: identity at initialisation, exact volume preservation, exact inverses, registry."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torchdiffeq import odeint

from flowmatch.flows import (
    FLOWS,
    AdditiveCouplingFlow,
    DivergenceFreeCNF,
    FFJORDFlow,
    get_flow,
    log_det_jacobian,
    register_flow,
)
from flowmatch.flows.cnf import SeparableField, leapfrog

VP_FLOWS = ["cnf", "coupling"]


def _perturbed(name: str, dim: int, seed: int = 0, scale: float = 0.5, **kw) -> torch.nn.Module:
    """A flow of ``name`` moved away from the identity by random parameter noise (float64)."""
    gen = torch.Generator().manual_seed(seed)
    flow = get_flow(name)(dim, hidden=24, generator=gen, **kw).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return flow


def test_registry() -> None:
    assert FLOWS["cnf"] is DivergenceFreeCNF and FLOWS["coupling"] is AdditiveCouplingFlow
    assert FLOWS["ffjord"] is FFJORDFlow and not FFJORDFlow.volume_preserving
    with pytest.raises(KeyError, match="unknown flow"):
        get_flow("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_flow("cnf", AdditiveCouplingFlow)

    @register_flow("test-only-flow")
    class _Dummy(AdditiveCouplingFlow):
        pass

    try:
        assert get_flow("test-only-flow") is _Dummy
    finally:
        FLOWS.pop("test-only-flow")


@pytest.mark.parametrize("name", ["cnf", "coupling", "ffjord"])
def test_identity_at_initialisation(name: str) -> None:
    flow = get_flow(name)(7, hidden=16, generator=torch.Generator().manual_seed(1)).double()
    x = torch.randn(9, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z, logdet = flow(x)
    assert_close(z, x, rtol=0, atol=1e-12)
    assert_close(logdet, torch.zeros(9, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", VP_FLOWS)
@pytest.mark.parametrize("dim", [6, 7])
def test_exact_volume_preservation_autograd(name: str, dim: int) -> None:
    flow = _perturbed(name, dim)
    x = 2.0 * torch.randn(6, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z, logdet = flow(x)
    assert (z - x).abs().max() > 0.5  # the map is far from the identity
    assert torch.all(logdet == 0)
    ld = log_det_jacobian(flow, x)
    assert ld.abs().max() < 1e-5, ld
    assert_close(ld, torch.zeros_like(ld), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", VP_FLOWS)
def test_exact_inverse(name: str) -> None:
    flow = _perturbed(name, 8, seed=4)
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z, _ = flow(x)
    assert_close(flow.inverse(z), x, rtol=0, atol=1e-10)
    assert_close(flow(flow.inverse(x))[0], x, rtol=0, atol=1e-10)


def test_separable_field_is_divergence_free() -> None:
    field = SeparableField(9, hidden=16, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        field.w_out.normal_(generator=torch.Generator().manual_seed(1))
    y = torch.randn(9, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: field(torch.tensor(0.3), v[None])[0], y)
    assert jac.abs().sum() > 1.0
    assert_close(torch.diagonal(jac), torch.zeros(9, dtype=torch.float64), rtol=0, atol=0)


def test_leapfrog_converges_to_the_ode_solution() -> None:
    """The leapfrog solver approximates the ODE solution (second order); torchdiffeq's rk4 on
    a fine grid is the reference."""
    field = SeparableField(6, hidden=16, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        field.w_out.normal_(std=0.3, generator=torch.Generator().manual_seed(1))
    y0 = torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = odeint(field, y0, torch.linspace(0, 1, 201, dtype=torch.float64), method="rk4")[-1]
    errs = []
    for n in (8, 16):
        out = leapfrog(field, y0, 0.0, 1.0, n, field.n_q)
        errs.append(float((out - ref).detach().abs().max()))
    assert errs[1] < errs[0] / 3  # halving the step cuts the error ~4x
    assert errs[1] < 1e-2


def test_rk4_cnf_is_only_approximately_volume_preserving() -> None:
    """Documented behaviour: other torchdiffeq solvers preserve volume only up to their error."""
    flow = _perturbed("cnf", 6, method="rk4", n_steps=4)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert log_det_jacobian(flow, x).abs().max() > 1e-8


def test_ffjord_trace_estimates() -> None:
    flow = _perturbed("ffjord", 5, scale=0.3)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    flow.eval()
    with torch.no_grad():
        _, exact = flow(x)
    assert_close(exact, log_det_jacobian(flow, x), rtol=0, atol=5e-3)  # rk4, 8 steps
    flow.train()
    with torch.no_grad():  # one probe per row: 400 independent estimates per point
        est = flow(x.repeat(400, 1))[1].reshape(400, 4).mean(0)
    assert_close(est, exact, rtol=0, atol=0.15)  # Hutchinson is unbiased


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dim >= 2"):
        DivergenceFreeCNF(1)
    with pytest.raises(ValueError, match="unknown ODE method"):
        DivergenceFreeCNF(4, method="nope")
    with pytest.raises(ValueError, match="dim >= 2"):
        AdditiveCouplingFlow(1)


def _moved_field(dim: int, seed: int = 0) -> SeparableField:
    field = SeparableField(dim, hidden=16, generator=torch.Generator().manual_seed(seed)).double()
    with torch.no_grad():
        field.w_out.normal_(std=0.5, generator=torch.Generator().manual_seed(seed + 1))
        field.b_out.normal_(std=0.1, generator=torch.Generator().manual_seed(seed + 2))
    return field


@pytest.mark.parametrize("dim", [6, 7])
@pytest.mark.parametrize(("t0", "t1", "n_steps"), [(0.0, 1.0, 4), (1.0, 0.0, 3), (0.2, 0.9, 5)])
def test_leapfrog_half_field_path_equals_full_field_path(dim, t0, t1, n_steps) -> None:
    """Evaluating only the needed half gives the same solution and gradients as full calls."""
    field = _moved_field(dim)
    y0 = torch.randn(5, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out_half = leapfrog(field, y0, t0, t1, n_steps, field.n_q)
    out_full = leapfrog(lambda s, y: field(s, y), y0, t0, t1, n_steps, field.n_q)
    assert (out_half - y0).abs().max() > 0.1
    assert_close(out_half, out_full, rtol=0, atol=1e-12)
    g_half = torch.autograd.grad(out_half.square().sum(), list(field.parameters()))
    g_full = torch.autograd.grad(out_full.square().sum(), list(field.parameters()))
    for a, b in zip(g_half, g_full):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_leapfrog_steps_compose() -> None:
    """Four steps at once equal four one-step solves chained; backwards undoes forwards."""
    field = _moved_field(6)
    y0 = torch.randn(4, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    whole = leapfrog(field, y0, 0.0, 1.0, 4, field.n_q)
    y = y0
    for k in range(4):
        y = leapfrog(field, y, k / 4, (k + 1) / 4, 1, field.n_q)
    assert_close(whole, y, rtol=0, atol=1e-12)
    assert_close(leapfrog(field, whole, 1.0, 0.0, 4, field.n_q), y0, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        leapfrog(field, y0, 0.0, 1.0, 0, field.n_q)


def test_leapfrog_evaluates_one_half_per_kick_and_drift(monkeypatch) -> None:  # noqa: ANN001
    """A leapfrog solve of n steps costs n + 1 kicks and n drifts, never a full-field call."""
    flow = _perturbed("cnf", 8, n_steps=5)
    counts = {"drift": 0, "kick": 0}
    halves = flow.field.halves

    def counting_halves():  # noqa: ANN202
        drift, kick = halves()

        def d(t, p):  # noqa: ANN001, ANN202
            counts["drift"] += 1
            return drift(t, p)

        def k(t, q):  # noqa: ANN001, ANN202
            counts["kick"] += 1
            return kick(t, q)

        return d, k

    def no_full_call(t, y):  # noqa: ANN001, ANN202
        raise AssertionError("the full field was evaluated")

    monkeypatch.setattr(flow.field, "halves", counting_halves)
    monkeypatch.setattr(flow.field, "forward", no_full_call)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z, _ = flow(x)
    assert counts == {"drift": 5, "kick": 6}
    flow.inverse(z)
    assert counts == {"drift": 10, "kick": 12}
    flow.method = "rk4"  # any other method evaluates the full field
    with pytest.raises(AssertionError, match="full field"):
        flow(x)


@pytest.mark.parametrize("name, method", [("cnf", "rk4"), ("ffjord", "rk4")])
def test_end_point_solve_equals_solve_on_the_full_grid(name: str, method: str) -> None:
    """Asking torchdiffeq for the end point only does not change the map."""
    flow = _perturbed(name, 6, scale=0.3, method=method, n_steps=4).eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    field = flow.field if name == "cnf" else flow.dynamics.field
    opts = None
    ref = odeint(field, x, grid, method=method, options=opts)[-1]
    with torch.no_grad():
        assert_close(flow(x)[0], ref, rtol=0, atol=1e-12)
        assert_close(
            flow.inverse(ref),
            odeint(field, ref, grid.flip(0), method=method, options=opts)[-1],
            rtol=0,
            atol=1e-12,
        )
