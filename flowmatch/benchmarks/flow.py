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
``decode(encode(x))`` at the same k, training samples/s and fit time side by side. A second
table times one training step of each CNF alone on random data at ``d_flow`` = 64.

Run ``python -m flowmatch.benchmarks.flow --pair digits-mlp`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import numpy as np
import torch

from flowmatch.benchmarks._common import (
    environment,
    print_table,
    run_as_script,
    timer,
    write_result,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the benchmark."""
    parser.add_argument("--pair", default="digits-mlp", help="zoo pair (default digits-mlp)")
    parser.add_argument("--side", default="a", choices=["a", "b"], help="which model's layer")
    parser.add_argument("--quick", action="store_true", help="few steps, for a smoke run")
    parser.add_argument("--json", default=None, help="write the result as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--latent-dim", type=int, default=10, help="k for every method")
    parser.add_argument("--n-components", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=128, help="width of every flow")
    parser.add_argument("--max-steps", type=int, default=1200, help="optimiser steps per flow")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["cnf", "coupling", "pca+gmm", "ffjord"],
        help="subset of cnf, coupling, pca+gmm, ffjord",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")


def _pca_gmm(
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


def _flow_ae(flow: str, x_tr: Any, x_te: Any, args: argparse.Namespace) -> dict[str, Any]:
    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.metrics import r2_score

    ae = FlowAutoencoder(
        latent_dim=args.latent_dim,
        flow=flow,
        n_components=args.n_components,
        hidden=args.hidden,
        max_steps=args.max_steps,
        progress=False,
        device=args.device,
        seed=args.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with timer() as t:
            ae.fit(x_tr)
    return {
        "nll": -ae.score(x_te),
        "r2": r2_score(ae.decode(ae.encode(x_te)), x_te),
        "samples_per_s": ae.train_samples_per_second_,
        "fit_s": t["seconds"],
        "epochs": f"{ae.best_epoch_}/{ae.n_epochs_}",
    }


def _step_throughput(
    name: str, dim: int, hidden: int, batch: int, device: str, repeats: int
) -> float:
    """Training samples/s of one flow alone: NLL under N(0, I), Adam step, random data."""
    from flowmatch._validation import resolve_device
    from flowmatch.flows import get_flow

    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(0)
    flow = get_flow(name)(dim, hidden=hidden, generator=gen).to(dev)
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
    return batch / float(np.median(times))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train every method on one zoo activation set; print and return the figures."""
    from flowmatch.zoo import load_pair

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.max_steps = min(args.max_steps, 60)
    t_start = time.perf_counter()
    env = environment(args.seed, None if args.device == "auto" else args.device)
    print("environment:", ", ".join(f"{k}={v}" for k, v in env.items()))
    pair = load_pair(args.pair)
    acts_tr, acts_te = pair.activations(args.side, "train"), pair.activations(args.side, "test")
    x_tr, x_te = acts_tr.x, acts_te.x
    if args.quick:
        x_tr = x_tr[:800]
    print(
        f"pair={args.pair} side={args.side} layer=hidden train={tuple(x_tr.shape)} "
        f"test={tuple(x_te.shape)} k={args.latent_dim} K={args.n_components} "
        f"hidden={args.hidden} max_steps={args.max_steps}"
    )
    rows = []
    for method in args.methods:
        if method == "pca+gmm":
            res = _pca_gmm(x_tr, x_te, args.latent_dim, args.n_components, args.seed)
        else:
            res = _flow_ae(method, x_tr, x_te, args)
        rows.append({"method": method, **res})
        print(f"  {method}: done in {res['fit_s']:.1f}s", flush=True)
    cols = ["method", "nll", "r2", "samples_per_s", "fit_s", "epochs"]
    print_table(
        f"{args.pair}/{args.side}: held-out NLL (nats/dim), R² at k={args.latent_dim}", rows, cols
    )

    speed = []
    if {"cnf", "ffjord"} <= set(args.methods):
        reps = 3 if args.quick else 7
        for name in ("cnf", "ffjord"):
            sps = _step_throughput(name, 64, args.hidden, 256, args.device, reps)
            speed.append(
                {
                    "flow": name,
                    "d_flow": 64,
                    "hidden": args.hidden,
                    "batch": 256,
                    "samples_per_s": sps,
                }
            )
        speed[0]["speedup_vs_ffjord"] = speed[0]["samples_per_s"] / speed[1]["samples_per_s"]
        print_table("flow alone, one training step (median)", speed)

    by = {r["method"]: r for r in rows}
    checks: dict[str, Any] = {}
    if "pca+gmm" in by:
        for m in ("cnf", "coupling"):
            if m in by:
                checks[f"{m}_nll_better_than_pca_gmm"] = by[m]["nll"] < by["pca+gmm"]["nll"]
                checks[f"{m}_r2_at_least_pca"] = by[m]["r2"] >= by["pca+gmm"]["r2"]
    if "cnf" in by and "ffjord" in by:
        checks["cnf_speedup_in_autoencoder"] = (
            by["cnf"]["samples_per_s"] / by["ffjord"]["samples_per_s"]
        )
        checks["cnf_nll_le_ffjord"] = by["cnf"]["nll"] <= by["ffjord"]["nll"]
    if speed:
        checks["cnf_speedup_flow_alone"] = speed[0]["speedup_vs_ffjord"]
    wall = time.perf_counter() - t_start
    print(
        "\nchecks:",
        ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in checks.items()
        ),
    )
    print(f"wall time: {wall:.1f}s")
    result = {
        "benchmark": "flow",
        "environment": env,
        "args": vars(args),
        "rows": rows,
        "flow_alone": speed,
        "checks": checks,
        "wall_s": wall,
    }
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    run_as_script(__doc__, add_arguments, run)
