"""``flowmatch bench flow``: volume-preserving flow autoencoders against two references.

On one zoo activation set (layer "hidden", train split fit, test split held out) this trains,
in one run and with the same latent size k, number of mixture components and width:

- ``cnf``       FlowAutoencoder with the divergence-free CNF (leapfrog, exactly volume-preserving)
- ``coupling``  FlowAutoencoder with NICE additive coupling layers
- ``pca+gmm``   PCA + scikit-learn ``GaussianMixture`` on the top-k coordinates, the other
                principal coordinates as independent Gaussians (same constant-column handling)
- ``ffjord``    FlowAutoencoder with an FFJORD-style CNF of the same width (Hutchinson trace
                in training, exact trace for the held-out likelihood)

and prints held-out NLL (nats per modelled coordinate), reconstruction R² of
``decode(encode(x))`` at the same k, training samples/s and fit time side by side, every flow
with the same optimiser-step budget (``--max-steps``) and minibatch (``--batch-size``).

CNF against FFJORD, in the same run:

- *equal wall-clock*: the CNF autoencoder is trained again with ``max_time`` set to the time
  the FFJORD autoencoder spent in its optimiser steps (its held-out evaluations excluded; the
  CNF's own validation passes count against its budget), other settings unchanged. Both use
  their whole budget (no early stopping for the CNF; FFJORD's ``--max-steps`` run) and
  restore the epoch with the best validation NLL. Held-out NLL of both is printed with the
  rule.
- *step throughput at the trained weights*: one autoencoder training step (NLL +
  reconstruction, Adam) on training minibatches of the same size, timed with the trained
  weights of each model, for the CNF (leapfrog), the FFJORD reference as trained (``rk4``,
  ``--ffjord-steps`` steps) and FFJORD with the solver of Grathwohl et al. (2019)
  (``dopri5``, rtol = atol = 1e-5, the defaults of their tabular experiments), with the
  number of field evaluations per forward solve. An adaptive solver's cost grows as the field
  is trained, so it is timed on trained weights rather than at the identity initialisation.
- *flow alone*: one training step of each CNF on random data at ``d_flow`` = 64.
- *solver error of the FFJORD likelihood*: the integrated trace against the log-determinant
  of the Jacobian of the map that the solver actually computes, on a few held-out rows.

Run ``flowmatch bench flow --pair digits-mlp --threads 1`` (``--quick`` for a smoke run).
The properties these figures stand for (the flows beat PCA + GMM on held-out likelihood, FFJORD's
integrated trace matches its map's log-determinant) are tests in ``tests/test_flows.py`` and
``tests/test_autoencoder.py``.

References
----------
Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud (2019). FFJORD: Free-form continuous
dynamics for scalable reversible generative models. ICLR.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks._common import (
    pair_names,
    positive_int,
    print_table,
    running,
    timer,
)

__all__ = ["FlowBench", "FlowSettings", "add_arguments", "main", "measure_flow", "pca_gmm"]

_COLUMNS = ["method", "nll", "r2", "samples_per_s", "steps", "train_s", "epochs", "solver"]


@dataclass(frozen=True)
class FlowSettings:
    """What every flow in the benchmark shares (same k, mixture, width, budget, minibatch)."""

    # the model: latent width, mixture components, hidden width of every flow
    latent_dim: int = 10
    n_components: int = 12
    hidden: int = 128
    # the optimiser: step budget, minibatch, smoothing noise
    max_steps: int = 1200
    batch_size: int = 128
    training_noise: float = 0.0
    # the FFJORD reference's solver
    ffjord_method: str = "rk4"
    ffjord_steps: int = 8
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class FlowBench:
    """Every figure of the flow benchmark.

    Attributes
    ----------
    rows : per method: held-out NLL (nats/dim), reconstruction R², samples/s, steps, times.
    equal_wall_clock : FFJORD and the CNF retrained for FFJORD's optimiser time (or empty).
    trained_step : one autoencoder step at the trained weights, per flow and solver.
    flow_alone : one training step of each CNF alone on random data.
    ffjord_solver_error : mean |integrated trace − log|det J|| of FFJORD's map (nats/dim).
    """

    rows: tuple[dict[str, Any], ...]
    equal_wall_clock: tuple[dict[str, Any], ...]
    trained_step: tuple[dict[str, Any], ...]
    flow_alone: tuple[dict[str, Any], ...]
    ffjord_solver_error: float | None


_METHODS = ("cnf", "coupling", "pca+gmm", "ffjord")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the benchmark (default pair: digits-mlp)."""
    add = parser.add_argument
    add("--side", default="a", choices=["a", "b"], help="which model's layer")
    add("--device", default="auto")
    add("--latent-dim", type=positive_int, default=10, help="k for every method")
    add("--n-components", type=positive_int, default=12, help="mixture components")
    add("--hidden", type=positive_int, default=128, help="width of every flow")
    add("--max-steps", type=positive_int, default=1200, help="optimiser steps per flow")
    add("--batch-size", type=positive_int, default=128, help="minibatch of every flow")
    add("--training-noise", type=float, default=0.0, help="training_noise of every flow")
    add("--ffjord-method", default="rk4", help="torchdiffeq method of the FFJORD reference")
    add("--ffjord-steps", type=positive_int, default=8, help="fixed-grid steps of FFJORD")
    add("--no-equal-time", action="store_true", help="skip the equal wall-clock CNF run")
    add("--methods", nargs="+", default=list(_METHODS), help=f"subset of {', '.join(_METHODS)}")


def pca_gmm(
    x_tr: torch.Tensor,
    x_te: torch.Tensor,
    k: int,
    n_comp: int,
    seed: int,
    min_variance: float = 1e-6,
) -> dict[str, Any]:
    """PCA + scikit-learn GaussianMixture reference: exact density of the non-constant columns."""
    from sklearn.mixture import GaussianMixture

    from flowmatch.metrics import r2_score

    t0 = time.perf_counter()
    xtr = x_tr.double()
    kept = xtr.max(0).values > xtr.min(0).values
    a, b = xtr[:, kept], x_te.double()[:, kept]
    mu = a.mean(0)
    evals, evecs = torch.linalg.eigh((a - mu).T @ (a - mu) / len(a))
    evals, evecs = evals.flip(0), evecs.flip(1)
    var = evals[k:].clamp_min(min_variance * float(evals.mean()))
    gmm = GaussianMixture(n_comp, covariance_type="full", random_state=seed).fit(
        ((a - mu) @ evecs[:, :k]).numpy()
    )
    seconds = time.perf_counter() - t0
    z = (b - mu) @ evecs
    lp = (
        gmm.score_samples(z[:, :k].numpy())
        + (-0.5 * (z[:, k:] ** 2 / var + torch.log(var) + math.log(2 * math.pi))).sum(1).numpy()
    )
    recon = x_te.double().clone()
    recon[:, kept] = z[:, :k] @ evecs[:, :k].T + mu
    recon[:, ~kept] = xtr[0, ~kept]
    return {
        "nll": float(-lp.mean() / int(kept.sum())),
        "r2": r2_score(recon, x_te),
        "samples_per_s": len(a) / seconds,
        "fit_s": seconds,
        "epochs": "",
    }


def _solver_of(flow: str, settings: FlowSettings) -> dict[str, Any]:
    """Flow options (solver) of each flow in this benchmark."""
    if flow == "ffjord":
        return {"method": settings.ffjord_method, "n_steps": settings.ffjord_steps}
    return {}


def _describe_solver(flow: Any) -> str:  # noqa: ANN401
    method = getattr(flow, "method", None)
    if method is None:
        return "-"
    if method == "dopri5" or method not in ("leapfrog", "rk4", "euler", "midpoint"):
        return f"{method} rtol={flow.rtol:g} atol={flow.atol:g}"
    return f"{method} x{flow.n_steps}"


def _flow_ae(
    flow: str, x_tr: Any, x_te: Any, settings: FlowSettings, **overrides: Any
) -> tuple[dict[str, Any], Any]:
    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.metrics import r2_score

    params: dict[str, Any] = dict(
        latent_dim=settings.latent_dim,
        flow=flow,
        n_components=settings.n_components,
        hidden=settings.hidden,
        batch_size=settings.batch_size,
        max_steps=settings.max_steps,
        training_noise=settings.training_noise,
        flow_options=_solver_of(flow, settings) or None,
        progress=False,
        device=settings.device,
        seed=settings.seed,
    )
    params.update(overrides)
    ae = FlowAutoencoder(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with timer() as t:
            ae.fit(x_tr)
    n_tr = len(x_tr) - int(round(ae.validation_fraction * len(x_tr)))
    steps = ae.n_epochs_ * math.ceil(n_tr / ae.batch_size)
    res = {
        "nll": -ae.score(x_te),
        "r2": r2_score(ae.decode(ae.encode(x_te)), x_te),
        "samples_per_s": ae.train_samples_per_second_,
        "train_s": ae.n_epochs_ * n_tr / ae.train_samples_per_second_,
        "fit_s": t["seconds"],
        "steps": steps,
        "epochs": f"{ae.best_epoch_}/{ae.n_epochs_}",
        "solver": _describe_solver(ae.model_.flow),
    }
    return res, ae


def _trained_step_throughput(
    ae: Any, x_tr: torch.Tensor, repeats: int, **solver: Any
) -> dict[str, Any]:  # noqa: ANN401
    """Samples/s of one autoencoder training step at the trained weights of ``ae``.

    The step is what ``FlowAutoencoder.fit`` does per minibatch (NLL + reconstruction term,
    backward, Adam) on training rows, on a copy of the model; ``solver`` overrides the flow's
    ``method``/``rtol``/``atol``/``n_steps``. Also counts field evaluations of one forward
    solve (FFJORD's augmented dynamics; the CNF's leapfrog evaluates one half per kick/drift).
    """
    import copy

    model = copy.deepcopy(ae.model_).train()
    for key, value in solver.items():
        setattr(model.flow, key, value)
    gen = torch.Generator().manual_seed(1)
    y_all = ae._to_pca(x_tr.to(ae._device, next(model.parameters()).dtype))
    batches = [
        y_all[torch.randperm(len(y_all), generator=gen)[: ae.batch_size].to(ae._device)]
        for _ in range(repeats + 1)
    ]
    opt = torch.optim.Adam(model.parameters(), lr=ae.lr)
    nfe = [0]
    counted = getattr(model.flow, "dynamics", None)
    hook = (
        counted.register_forward_pre_hook(lambda *_: nfe.__setitem__(0, nfe[0] + 1))
        if counted is not None
        else None
    )

    def step(y: torch.Tensor) -> None:
        loss, _ = ae._loss(model, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])
    times = []
    for y in batches[1:]:
        nfe[0] = 0
        with torch.no_grad():
            model.flow(y)
        n_eval = nfe[0]
        with timer() as t:
            step(y)
        times.append(t["seconds"])
    if hook is not None:
        hook.remove()
        nfe_text = f"{n_eval}"
    else:
        n_steps = int(getattr(model.flow, "n_steps", 0))
        nfe_text = f"{2 * n_steps + 1} half-field" if n_steps else "-"
    return {
        "samples_per_s": ae.batch_size / float(np.median(times)),
        "solver": _describe_solver(model.flow),
        "nfe_forward": nfe_text,
    }


def _ffjord_solver_error(ae: Any, x_te: torch.Tensor, n_rows: int = 16) -> float:  # noqa: ANN401
    """Mean |integrated trace − log|det J|| (nats/dim) of FFJORD's solver map on test rows.

    The held-out likelihood of FFJORD integrates the exact trace along the solver's path; the
    density of the map the solver computes has the log-determinant of that map's Jacobian.
    """
    from flowmatch.flows import log_det_jacobian

    flow = ae.model_.flow.eval()
    y = ae._to_pca(x_te[:n_rows].to(ae._device, next(flow.parameters()).dtype))[:, : ae.d_flow_]
    with torch.enable_grad():
        _, integrated = flow(y)
    exact = log_det_jacobian(_ZMap(flow), y)
    return float((integrated.detach() - exact).abs().mean()) / ae.n_features_modelled_


class _ZMap(torch.nn.Module):
    """The z-part of FFJORD's solver map, ``forward(x) -> (z, 0)`` (for Jacobians)."""

    def __init__(self, flow: torch.nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flow: Any = self.flow
        z = flow._solve(flow.dynamics.field, x, reverse=False)
        return z, x.new_zeros(x.shape[0])


def _step_throughput(
    name: str, dim: int, hidden: int, batch: int, device: str, repeats: int, **options: Any
) -> tuple[float, str]:
    """Training samples/s of one flow alone (NLL under N(0, I), Adam step, random data) and
    its solver."""
    from flowmatch.flows import get_flow
    from flowmatch.validation import resolve_device

    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(0)
    flow = get_flow(name)(dim, hidden=hidden, generator=gen, **options).to(dev)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(dev))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    x = torch.randn(batch, dim, generator=gen).to(dev)

    def step() -> None:
        z, logdet = flow(x)
        loss = 0.5 * (z**2).sum(1).mean() - logdet.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        with timer() as t:
            step()
        times.append(t["seconds"])
    return batch / float(np.median(times)), _describe_solver(flow)


def _equal_time(
    models: dict[str, Any], by: dict[str, Any], x_tr: Any, x_te: Any, settings: FlowSettings
) -> list[dict[str, Any]]:
    """The CNF retrained for the optimiser time FFJORD spent, beside FFJORD."""
    budget = by["ffjord"]["train_s"]
    res, _ = _flow_ae(
        "cnf", x_tr, x_te, settings, max_steps=None, max_time=budget, max_epochs=10**6,
        patience=10**6,
    )  # fmt: skip
    return [
        {"method": "ffjord", **{k: by["ffjord"][k] for k in _COLUMNS[1:]}},
        {"method": "cnf", "budget_s": budget, **{k: res[k] for k in _COLUMNS[1:]}},
    ]


def _trained_steps(
    models: dict[str, Any], x_tr: Any, settings: FlowSettings, quick: bool
) -> list[dict[str, Any]]:
    """One autoencoder step at the trained weights: CNF, FFJORD as trained, FFJORD dopri5."""
    reps = 3 if quick else 9
    cnf_row = _trained_step_throughput(models["cnf"], x_tr, reps)
    trained = [{"flow": "cnf", **cnf_row}]
    trained.append({"flow": "ffjord", **_trained_step_throughput(models["ffjord"], x_tr, reps)})
    if settings.ffjord_method != "dopri5":
        faithful = _trained_step_throughput(
            models["ffjord"], x_tr, 2 if quick else 5, method="dopri5", rtol=1e-5, atol=1e-5
        )
        trained.append({"flow": "ffjord", **faithful})
    for row in trained:
        row["cnf_speedup"] = cnf_row["samples_per_s"] / row["samples_per_s"]
    return trained


def _flows_alone(settings: FlowSettings, quick: bool) -> list[dict[str, Any]]:
    speed: list[dict[str, Any]] = []
    for name in ("cnf", "ffjord"):
        sps, flow_solver = _step_throughput(
            name, 64, settings.hidden, 256, settings.device, 3 if quick else 9,
            **_solver_of(name, settings),
        )  # fmt: skip
        speed.append(
            {"flow": name, "d_flow": 64, "hidden": settings.hidden, "batch": 256,
             "solver": flow_solver, "samples_per_s": sps}
        )  # fmt: skip
    speed[0]["speedup_vs_ffjord"] = speed[0]["samples_per_s"] / speed[1]["samples_per_s"]
    return speed


def measure_flow(
    x_tr: torch.Tensor,
    x_te: torch.Tensor,
    settings: FlowSettings = FlowSettings(),
    *,
    methods: Sequence[str] = _METHODS,
    equal_time: bool = True,
    quick: bool = False,
) -> FlowBench:
    """Train every method on ``x_tr`` (n, d), score on ``x_te``; with both CNFs, the equal
    wall-clock run, the step throughputs and FFJORD's solver error."""
    rows, models = [], {}
    for method in methods:
        if method == "pca+gmm":
            k, n_comp = settings.latent_dim, settings.n_components
            res = pca_gmm(x_tr, x_te, k, n_comp, settings.seed)
        else:
            res, models[method] = _flow_ae(method, x_tr, x_te, settings)
        rows.append({"method": method, **res})
        print(f"  {method}: done in {res['fit_s']:.1f}s", flush=True)
    both = "cnf" in models and "ffjord" in models
    by = {r["method"]: r for r in rows}
    return FlowBench(
        rows=tuple(rows),
        equal_wall_clock=tuple(
            _equal_time(models, by, x_tr, x_te, settings) if both and equal_time else ()
        ),
        trained_step=tuple(_trained_steps(models, x_tr, settings, quick) if both else ()),
        flow_alone=tuple(_flows_alone(settings, quick) if both else ()),
        ffjord_solver_error=_ffjord_solver_error(models["ffjord"], x_te) if both else None,
    )


def _print(result: FlowBench, settings: FlowSettings, where: str) -> None:
    print_table(
        f"{where}: held-out NLL (nats/dim), R² at k={settings.latent_dim}; rule: same "
        f"optimiser-step budget ({settings.max_steps} steps, batch {settings.batch_size})",
        result.rows,
        _COLUMNS,
    )
    if result.equal_wall_clock:
        print_table(
            "equal wall-clock: cnf trained for the seconds that ffjord spent in its optimiser "
            "steps (cnf's validation passes count against its budget); both use their whole "
            "budget and restore their best validation epoch",
            result.equal_wall_clock,
            ["method", "budget_s", *_COLUMNS[1:]],
        )
    if result.trained_step:
        print_table(
            f"one autoencoder training step at the trained weights (batch "
            f"{settings.batch_size}, median; nfe_forward = field evaluations of one forward "
            "solve)",
            result.trained_step,
        )
    if result.flow_alone:
        print_table("flow alone, one training step on random data (median)", result.flow_alone)
    if result.ffjord_solver_error is not None:
        error = result.ffjord_solver_error
        print(f"\nFFJORD |integrated trace − log|det J||: {error:.3g} nats/dim")


def main(args: argparse.Namespace) -> FlowBench:
    """Train every method on one zoo activation set; print and return the figures."""
    from flowmatch.zoo import load_pair

    settings = FlowSettings(
        latent_dim=args.latent_dim, n_components=args.n_components, hidden=args.hidden,
        max_steps=min(args.max_steps, 60) if args.quick else args.max_steps,
        batch_size=args.batch_size, training_noise=args.training_noise,
        ffjord_method=args.ffjord_method, ffjord_steps=args.ffjord_steps, device=args.device,
        seed=args.seed,
    )  # fmt: skip
    name = pair_names(args, ["digits-mlp"])[0]
    device = None if args.device == "auto" else args.device
    with running("flow", args, device) as run:
        pair = load_pair(name)
        x_tr = pair.activations(args.side, "train").x
        x_te = pair.activations(args.side, "test").x
        x_tr = x_tr[:800] if args.quick else x_tr
        print(
            f"pair={name} side={args.side} train={tuple(x_tr.shape)} test={tuple(x_te.shape)} "
            f"{settings}"
        )
        run.result = measure_flow(
            x_tr, x_te, settings, methods=args.methods, equal_time=not args.no_equal_time,
            quick=args.quick,
        )  # fmt: skip
        _print(run.result, settings, f"{name}/{args.side}")
    return run.result
