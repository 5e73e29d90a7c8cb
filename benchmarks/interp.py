"""``flowmatch bench interp``: Jacobian-sparsity rotations and the Local Interaction Basis on the
zoo MLPs, each side by side with the neuron and PCA bases, plus their comparison-table rows.

Prints, for each model of the pair (all measured in this run):

* rotation sparsity — near-zero fraction (``|J_ij| <= threshold · max|J|`` per input) and Hoyer
  sparseness of every layer-to-layer Jacobian in the neuron, PCA and optimised bases; the
  alignment (Spearman) of the middle layer's sparse output channels of X→Y with the sparse input
  channels of Y→Z; the largest output change after inserting the rotations (float64);
* LIB — directions kept per layer against PCA (same relative truncation), interaction sparsity
  (fewest edges holding 90 % of the edge weight) and Louvain modularity against PCA, node-ablation
  accuracy on the test split (LIB vs PCA ordering);
* the rows of ``lib`` and ``rotation_sparsity`` in the comparison harness (with ``affine``).

PNG figures go to ``--out DIR``: Jacobian heatmaps, LIB interaction graphs, ablation curves.

    flowmatch bench interp --out /tmp/interp --json interp.json
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    pair_names,
    positive_int,
    print_table,
    running,
    timer,
)
from flowmatch.outputs import figures_folder

__all__ = ["InterpBench", "InterpSettings", "add_arguments", "main", "measure_interp"]


@dataclass(frozen=True)
class InterpSettings:
    """Options of both analyses."""

    measure: str = "l1_l2"
    all_measures: bool = False
    n_steps: int = 300
    threshold: float = 0.01
    truncation: float = 1e-8
    seed: int = 0


@dataclass(frozen=True)
class InterpBench:
    """Every table of the benchmark (lists of rows), and the comparison report's dict."""

    rotation: list[dict[str, Any]] = field(default_factory=list)
    alignment: list[dict[str, Any]] = field(default_factory=list)
    fits: list[dict[str, Any]] = field(default_factory=list)
    lib_kept: list[dict[str, Any]] = field(default_factory=list)
    lib_sparsity: list[dict[str, Any]] = field(default_factory=list)
    modularity: list[dict[str, Any]] = field(default_factory=list)
    ablation: list[dict[str, Any]] = field(default_factory=list)
    compare: dict[str, Any] | None = None
    figures: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the interpretability benchmark (default pair: digits-mlp)."""
    parser.add_argument("--out", default=None, metavar="DIR", help="write PNG figures here")
    parser.add_argument("--measure", default="l1_l2", help="sparsity measure to optimise")
    parser.add_argument(
        "--all-measures", action="store_true", help="also fit the other measures (model A)"
    )
    parser.add_argument(
        "--n-steps", type=positive_int, default=300, help="Adam steps per rotated layer"
    )
    parser.add_argument("--threshold", type=float, default=0.01, help="near-zero threshold")
    parser.add_argument("--truncation", type=float, default=1e-8, help="LIB/PCA truncation")
    parser.add_argument("--no-compare", action="store_true", help="skip the comparison rows")


# ----------------------------------------------------------------------------- rotation
def _rotation_part(model: Any, x: Any, side: str, args: InterpSettings) -> dict[str, Any]:
    import torch

    from baselines._jacobians import split_network
    from baselines.rotation_sparsity import (
        RotationSparsity,
        channel_alignment,
        pca_rotations,
        sparsity_table,
    )

    net = split_network(model)
    acts = net.node_activations(x)
    n_nodes = len(net.names)
    bases: dict[str, list[Any]] = {
        "neuron": [None] * n_nodes,
        "pca": [None, *pca_rotations(acts[1:-1]), None],
    }
    measures = [args.measure]
    if args.all_measures and side == "a":
        from baselines.rotation_sparsity import SPARSITY_MEASURES

        measures += [m for m in SPARSITY_MEASURES if m != args.measure]
    fit_seconds, max_change = {}, {}
    for measure in measures:
        with timer() as t:
            rs = RotationSparsity(measure, n_steps=args.n_steps, seed=args.seed).fit(model, x)
        fit_seconds[measure] = t["seconds"]
        bases[f"rotated[{measure}]"] = rs.node_rotations()
        m64 = copy.deepcopy(model).double()
        with torch.no_grad():
            change = (rs.rotated_model(m64)(x.double()) - m64(x.double())).abs().max()
        max_change[measure] = float(change)
    rows, jacs = sparsity_table(model, x, bases, threshold=args.threshold)
    table = [
        {
            "model": side,
            "basis": r.basis,
            "stage": r.stage,
            "near_zero": r.near_zero,
            "hoyer": r.hoyer,
        }
        for r in rows
    ]
    align = [
        {
            "model": side,
            "basis": b,
            "spearman(out X→Y, in Y→Z)": channel_alignment(j[0], j[1], args.threshold),
        }
        for b, j in jacs.items()
    ]
    return {
        "names": net.names,
        "table": table,
        "alignment": align,
        "fit_seconds": fit_seconds,
        "max_output_change": max_change,
        "jacobians": jacs,
    }


def _plot_jacobians(jacs: dict[str, list[Any]], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = list(jacs)
    fig, axes = plt.subplots(
        2, len(bases), figsize=(3.4 * len(bases) + 1, 7.4), squeeze=False, layout="constrained"
    )
    for col, basis in enumerate(bases):
        for row in range(2):
            j = jacs[basis][row].abs()
            j = j / j.flatten(1).amax(1).clamp_min(1e-300)[:, None, None]
            ax = axes[row, col]
            im = ax.imshow(j.mean(0).numpy(), cmap="magma", vmin=0, vmax=1, aspect="auto")
            ax.set_title(f"{basis}\n{names[row]}→{names[row + 1]}", fontsize=9)
            ax.set_xlabel(f"{names[row]} direction", fontsize=8)
            ax.set_ylabel(f"{names[row + 1]} direction", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="mean over inputs of |J| / max|J|")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- LIB
def _lib_part(model: Any, x: Any, pair: Any, side: str, args: InterpSettings) -> dict[str, Any]:
    from baselines.lib import (
        LocalInteractionBasis,
        ablation_curve,
        edge_concentration,
        interaction_edges,
        interaction_graph,
        modularity,
        pca_bases,
    )

    with timer() as t:
        lib = LocalInteractionBasis(truncation=args.truncation).fit(model, x)
    pca = pca_bases(model, x, truncation=args.truncation)
    acts = lib.network_.node_activations(x.double())
    pca_edges = interaction_edges(lib.network_, acts, pca)
    names = lib.network_.names
    kept = [
        {"model": side, "node": b.name, "width": len(b.mean), "lib": b.k, "pca": p.k}
        for b, p in zip(lib.bases_, pca)
    ]
    sparsity = []
    for l, (e_lib, e_pca) in enumerate(zip(lib.edges_, pca_edges)):
        (n_l, f_l), (n_p, f_p) = edge_concentration(e_lib), edge_concentration(e_pca)
        sparsity.append(
            {
                "model": side,
                "edges": f"{names[l]}→{names[l + 1]}",
                "lib_edges90": n_l,
                "lib_frac90": f_l,
                "pca_edges90": n_p,
                "pca_frac90": f_p,
            }
        )
    q_lib, comm_lib = modularity(interaction_graph(lib.edges_), seed=args.seed)
    q_pca, comm_pca = modularity(interaction_graph(pca_edges), seed=args.seed)
    ks = [1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64]
    curves = []
    xt, yt = pair.data.x_test, pair.data.y_test
    for node in names[1:-1]:
        i = names.index(node)
        for basis, bases in (("lib", lib.bases_), ("pca", pca)):
            kk = [k for k in ks if k <= bases[i].k] + [bases[i].k]
            curves.append(
                ablation_curve(model, xt, yt, bases[i], sorted(set(kk)), basis_name=basis)
            )
    return {
        "lib": lib,
        "pca_edges": pca_edges,
        "kept": kept,
        "sparsity": sparsity,
        "modularity": {
            "model": side,
            "lib_modularity": q_lib,
            "lib_communities": len(comm_lib),
            "pca_modularity": q_pca,
            "pca_communities": len(comm_pca),
        },
        "communities": comm_lib,
        "curves": curves,
        "fit_seconds": t["seconds"],
    }


def _k_for(curve: Any, frac: float) -> int:
    target = frac * curve.accuracy[-1]
    return next(k for k, a in zip(curve.ks, curve.accuracy) if a >= target)


def _plot_graph(lib: Any, communities: list, path: Path, title: str, top: int = 16) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = lib.network_.names
    comm_of = {n: c for c, nodes in enumerate(communities) for n in nodes}
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(2.6 * len(names), 6))
    shown = [min(b.k, top) for b in lib.bases_]
    pos = {
        (l, i): (l, 1.0 - i / max(shown[l] - 1, 1))
        for l in range(len(names))
        for i in range(shown[l])
    }
    for l, e in enumerate(lib.edges_):
        e = e[: shown[l + 1], : shown[l]]
        w = (e / e.max().clamp_min(1e-300)).sqrt()
        for i in range(e.shape[0]):
            for j in range(e.shape[1]):
                if w[i, j] > 0.05:
                    (x0, y0), (x1, y1) = pos[(l, j)], pos[(l + 1, i)]
                    ax.plot(
                        [x0, x1], [y0, y1], color="0.3", lw=3 * float(w[i, j]), alpha=float(w[i, j])
                    )
    for (l, i), (px, py) in pos.items():
        lam = float(lib.bases_[l].lambdas[i] / lib.bases_[l].lambdas.max())
        ax.scatter(px, py, s=30 + 200 * lam**0.5, color=cmap(comm_of.get((l, i), 0) % 10), zorder=3)
    ax.set_xticks(range(len(names)), [f"{n}\n({b.k} dirs)" for n, b in zip(names, lib.bases_)])
    ax.set_yticks([])
    ax.set_title(f"{title}\nnode size ∝ √Λ, colour = Louvain community, top {top} per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curves(curves: list[Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = list(dict.fromkeys(c.node for c in curves))
    fig, axes = plt.subplots(1, len(nodes), figsize=(4.5 * len(nodes), 3.6), squeeze=False)
    for ax, node in zip(axes[0], nodes):
        for c in curves:
            if c.node == node:
                ax.plot(c.ks, c.accuracy, marker="o", ms=3, label=c.basis)
        ax.set_xscale("log")
        ax.set_xlabel("directions kept (others mean-ablated)")
        ax.set_ylabel("test accuracy")
        ax.set_title(node)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- run
def _ablation_rows(side: str, names: list[str], curves: list[Any]) -> list[dict[str, Any]]:
    by = {(c.node, c.basis): c for c in curves}
    rows = []
    for node in names[1:-1]:
        cl, cp = by[(node, "lib")], by[(node, "pca")]
        row = {"model": side, "node": node, "full_acc": cl.accuracy[-1]}
        for k in (1, 2, 4, 8):
            row[f"lib@{k}"], row[f"pca@{k}"] = (
                cl.accuracy[cl.ks.index(k)],
                cp.accuracy[cp.ks.index(k)],
            )
        row["lib_k99"], row["pca_k99"] = _k_for(cl, 0.99), _k_for(cp, 0.99)
        rows.append(row)
    return rows


def _plots(out: Path, pair_name: str, side: str, rot: dict, lib: dict) -> list[str]:
    paths = [out / f"jacobians_{side}.png", out / f"lib_graph_{side}.png"]
    paths.append(out / f"lib_ablation_{side}.png")
    _plot_jacobians(
        {b: j[:2] for b, j in rot["jacobians"].items()}, rot["names"], paths[0],
        f"{pair_name} model {side}: Jacobians around {rot['names'][1]!r}",
    )  # fmt: skip
    _plot_graph(
        lib["lib"], lib["communities"], paths[1], f"{pair_name} model {side}: LIB interaction graph"
    )
    _plot_curves(
        lib["curves"], paths[2], f"{pair_name} model {side}: node ablation, LIB vs PCA order"
    )
    return [str(p) for p in paths]


def measure_interp(
    pair_name: str = "digits-mlp",
    settings: InterpSettings = InterpSettings(),
    *,
    compare_rows: bool = True,
    out: Path | None = None,
) -> InterpBench:
    """Both analyses on both models of the pair (figures in ``out`` when given), then the
    comparison rows of ``lib`` and ``rotation_sparsity``."""
    import torch

    from flowmatch.zoo import load_pair

    torch.manual_seed(settings.seed)
    pair = load_pair(pair_name)
    x = pair.data.x_train
    res = InterpBench()
    for side, model in (("a", pair.model_a), ("b", pair.model_b)):
        rot = _rotation_part(model, x, side, settings)
        lib = _lib_part(model, x, pair, side, settings)
        res.rotation.extend(rot["table"])
        res.alignment.extend(rot["alignment"])
        res.fits.append(
            {
                "model": side,
                **{f"rotation[{k}] s": v for k, v in rot["fit_seconds"].items()},
                **{f"max|Δout| [{k}]": v for k, v in rot["max_output_change"].items()},
                "lib s": lib["fit_seconds"],
            }
        )
        res.lib_kept.extend(lib["kept"])
        res.lib_sparsity.extend(lib["sparsity"])
        res.modularity.append(lib["modularity"])
        res.ablation.extend(_ablation_rows(side, rot["names"], lib["curves"]))
        if out is not None:
            res.figures.extend(_plots(out, pair_name, side, rot, lib))
    if not compare_rows:
        return res
    from flowmatch.compare import compare

    report = compare(
        pair, methods=["affine", "lib", "rotation_sparsity"], seed=settings.seed, progress=False
    )
    print("\n== comparison harness rows\n" + report.to_text())
    return InterpBench(**{**res.__dict__, "compare": report.to_dict()})


def _print(res: InterpBench, settings: InterpSettings) -> None:
    print_table(
        f"rotation sparsity: Jacobian near-zero fraction (|J| <= {settings.threshold}·max|J|) "
        "and Hoyer sparseness",
        res.rotation,
    )
    print_table(
        "sparse out-channels of X→Y vs sparse in-channels of Y→Z (middle layer)", res.alignment
    )
    print_table("fit times and function preservation (float64)", res.fits)
    print_table(
        f"LIB vs PCA: directions kept (relative truncation {settings.truncation:g})", res.lib_kept
    )
    print_table("interaction sparsity: fewest edges holding 90% of edge weight", res.lib_sparsity)
    print_table("modularity of the interaction graph (Louvain)", res.modularity)
    print_table(
        "node ablation: test accuracy keeping k directions; k for 99% of full", res.ablation
    )
    if res.figures:
        print("figures: " + ", ".join(res.figures))


def main(args: argparse.Namespace) -> InterpBench:
    """Run both analyses on both models of the pair; print, plot and return the figures."""
    settings = InterpSettings(
        args.measure, args.all_measures, args.n_steps, args.threshold, args.truncation, args.seed
    )
    with running("interp", args) as run:
        out = figures_folder(args.out) if args.out else None
        run.result = measure_interp(
            pair_names(args, ["digits-mlp"])[0], settings, compare_rows=not args.no_compare,
            out=out,
        )  # fmt: skip
        _print(run.result, settings)
    return run.result
