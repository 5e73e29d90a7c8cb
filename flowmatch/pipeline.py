"""``flowmatch run``: the whole pipeline on one configured zoo pair, written to ``runs/<name>/``.

Stages (one progress bar step each): zoo models → activations (the evaluation protocol's
disjoint, shuffled halves of the training inputs; see :func:`flowmatch.compare.protocol_data`)
→ translation (two flow autoencoders, two density trees, tree matching, OT refinement; one
:func:`flowmatch.translate` call) → scoring on the test inputs → every baseline
(:func:`flowmatch.compare.compare`) → figures → writing.

The run folder holds ``report.html`` (self-contained), ``figures/`` (its figures as PNG),
``metrics.json`` (deterministic under
the seed: no wall times, no dates), ``timings.json`` and ``translation/`` (the latent map and
both autoencoders, safetensors + JSON). Everything is first written to a hidden staging folder
beside the run folder, which replaces the run folder only when every file is complete: an
interrupted or failed run leaves the previous results untouched and no partial files. The run
folder is checked before anything is computed: it must be new, empty, or a run folder
flowmatch wrote with nothing else in it (:mod:`flowmatch.outputs`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from flowmatch import metrics
from flowmatch._io import write_json
from flowmatch.config import Config
from flowmatch.outputs import staged_folder
from flowmatch.validation import seed_everything

__all__ = ["STAGES", "RunResult", "run_pipeline"]

#: Stage names, in order; ``timings.json`` has one entry per stage.
STAGES: tuple[str, ...] = (
    "zoo models",
    "activations",
    "translation",
    "scoring",
    "baselines",
    "figures",
    "writing",
)

_TIMING_FIELDS = ("fit_seconds", "transform_seconds")


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_pipeline` wrote.

    Attributes
    ----------
    run_dir : the run folder; report : its ``report.html``.
    metrics : content of ``metrics.json``; timings : content of ``timings.json``.
    """

    run_dir: Path
    report: Path
    metrics: dict[str, Any]
    timings: dict[str, Any]


class _Stages:
    """One tqdm step per stage, and the wall time of each."""

    def __init__(self, progress: bool) -> None:
        self.bar = tqdm(total=len(STAGES), desc="flowmatch run", unit="stage", disable=not progress)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_description(f"flowmatch run: {name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self.bar.update(1)

    def close(self) -> None:
        self.bar.set_description("flowmatch run: done")
        self.bar.close()


def _translate_params(config: Config) -> dict[str, Any]:
    t = config.translate
    return {
        "autoencoder_params": dict(config.autoencoder),
        "tree_params": dict(config.tree),
        "match_params": dict(config.match),
        "space": t.space,
        "n_gw_starts": t.n_gw_starts,
        "n_refine": t.n_refine,
        "balance_steps": t.balance_steps,
        "max_crossing": t.max_crossing,
        "max_exact": t.max_exact,
        "group_penalty": t.group_penalty,
        "anchor_weight": t.anchor_weight,
    }


def _methods(config: Config) -> list[str]:
    """Methods :func:`compare` runs (flowmatch itself is the pipeline's own translation)."""
    import baselines

    names = baselines.list_methods() if config.compare.methods is None else config.compare.methods
    return [m for m in names if m != "flowmatch"]


def _flowmatch_row(
    translation: Any, pred: torch.Tensor, test_b: torch.Tensor, pair: Any, seconds: float
) -> Any:
    import baselines
    from flowmatch.compare import MethodResult

    return MethodResult(
        method="flowmatch",
        paired_rows=0,
        uses=baselines.REGISTRY["flowmatch"].uses,
        stitched_accuracy=metrics.stitched_accuracy(pred, pair.head_b, pair.data.y_test),
        r2=metrics.r2_score(pred, test_b),
        cosine=metrics.mean_cosine(pred, test_b),
        top1=metrics.top1_retrieval(pred, test_b),
        fit_seconds=seconds,
    )


def _with_flowmatch(report: Any, row: Any) -> Any:
    """``report`` with the pipeline's flowmatch row after the reference, relative stitching set."""
    ref = report.rows[0].stitched_accuracy
    if ref and row.stitched_accuracy is not None:
        row = replace(row, relative_stitching=row.stitched_accuracy / ref)
    return replace(report, rows=(report.rows[0], row, *report.rows[1:]))


def _majority(labels: np.ndarray, mode: np.ndarray, n_modes: int) -> list[int | None]:
    out: list[int | None] = []
    for m in range(n_modes):
        ys = labels[mode == m]
        out.append(int(np.bincount(ys).argmax()) if len(ys) else None)
    return out


def _mode_table(translation: Any, test_a: Any, test_b: Any, y: np.ndarray) -> list[dict[str, Any]]:
    """Matched mode pairs with masses, confidence and the majority test class on each side
    (labels are used here only to evaluate the unsupervised matching)."""
    ta, tb, m = translation.tree_a_, translation.tree_b_, translation.matching_
    mode_a = ta.predict(translation.autoencoder_a_.encode(test_a).double().numpy())
    mode_b = tb.predict(translation.autoencoder_b_.encode(test_b).double().numpy())
    maj_a = _majority(y, mode_a, len(ta.leaves_))
    maj_b = _majority(y, mode_b, len(tb.leaves_))
    mass_a, mass_b = ta.mode_masses(), tb.mode_masses()
    rows = []
    for i, (ia, ib) in enumerate(np.asarray(m.leaf_pairs, dtype=np.int64)):
        rows.append(
            {
                "pair": f"m{i}",
                "mode A": int(ia),
                "mode B": int(ib),
                "mass A": float(mass_a[ia]),
                "mass B": float(mass_b[ib]),
                "confidence": float(m.confidence[i]),
                "majority class A (test)": maj_a[ia],
                "majority class B (test)": maj_b[ib],
                "same class": maj_a[ia] is not None and maj_a[ia] == maj_b[ib],
            }
        )
    return rows


def _baseline_figures(pair: Any, methods: list[str], seed: int) -> list[tuple[str, Callable]]:
    from flowmatch import figures

    d = pair.data
    todo: list[tuple[str, Callable]] = []
    if "rotation_sparsity" in methods:
        todo.append(
            (
                "rotation sparsity: Jacobian near-zero fraction in the neuron, PCA and rotated "
                "bases (model A, training inputs)",
                lambda: figures.rotation_sparsity_bars(pair.model_a, d.x_train, seed=seed),
            )
        )
    if "lib" in methods:
        todo.append(
            (
                f"Local Interaction Basis vs PCA: test accuracy keeping the top-k directions of "
                f"{pair.layer_a!r} (model A)",
                lambda: figures.lib_ablation(
                    pair.model_a, d.x_train, d.x_test, d.y_test, pair.layer_a
                ),
            )
        )
    if "polytope" in methods:
        todo.append(
            (
                "polytope lens: spline-code changes per unit distance along paths between test "
                "inputs of the same and of different classes (mean ± 95% interval)",
                lambda: figures.polytope_profiles(
                    [("A", pair.model_a), ("B", pair.model_b)], d.x_test, d.y_test, seed=seed
                ),
            )
        )
    return todo


def _add_figure(report: Any, make: Callable[[], Any], caption: str, notes: list[str]) -> None:
    """Add ``make()`` to ``report``; a failing figure becomes a note instead."""
    try:
        report.add_figure(make(), caption=caption)
    except Exception as err:  # a broken figure must not lose the run
        note = f"figure skipped ({caption.split(':')[0]}): {type(err).__name__}: {err}"
        notes.append(note)
        report.add_note(note)


def run_pipeline(config: Config, *, progress: bool = True) -> RunResult:
    """Run ``config`` end to end and write its run folder (see the module docstring).

    Parameters
    ----------
    config : a validated :class:`~flowmatch.config.Config`.
    progress : progress bars (stages, autoencoder training, comparison).

    Returns
    -------
    RunResult
    """
    from flowmatch.compare import compare, protocol_data
    from flowmatch.translation import translate
    from flowmatch.zoo import load_pair

    run_start = time.perf_counter()
    stage = _Stages(progress)
    seed = config.seed
    target = config.run_dir()
    try:
        with staged_folder(target, "run") as tmp:
            with stage("zoo models"):
                seed_everything(seed)
                pair = load_pair(config.pair)
            with stage("activations"):
                n_pairs = config.compare.n_pairs
                data, reference = protocol_data(pair, n_pairs, seed)
                test_a = pair.activations("a", "test").x
                test_b = pair.activations("b", "test").x
            with stage("translation"):
                seed_everything(seed)
                t0 = time.perf_counter()
                translation = translate(
                    data.a, data.b, seed=seed, progress=progress, **_translate_params(config)
                )
                fit_seconds = time.perf_counter() - t0
            with stage("scoring"):
                pred = translation(test_a).detach().cpu()
                flow_row = _flowmatch_row(translation, pred, test_b, pair, fit_seconds)
                y_test = pair.data.y_test.numpy()
                modes = _mode_table(translation, test_a, test_b, y_test)
            with stage("baselines"):
                methods = _methods(config)
                params = {"flowmatch_pairs": _translate_params(config)}
                params = {k: v for k, v in params.items() if k in methods}
                comparison = compare(
                    pair,
                    methods,
                    n_pairs=n_pairs,
                    seed=seed,
                    method_params=params,
                    progress=progress,
                )
                comparison = _with_flowmatch(comparison, flow_row)
            with stage("figures"):
                notes: list[str] = []
                report = _build_report(
                    config,
                    pair,
                    translation,
                    comparison,
                    modes,
                    data,
                    reference,
                    pred,
                    test_a,
                    test_b,
                    methods,
                    notes,
                )
            with stage("writing"):
                translation.save(tmp / "translation")
                result = _metrics(config, pair, translation, comparison, modes, notes)
                write_json(tmp / "metrics.json", result)
                timings = _timings(stage.seconds, comparison, translation, run_start)
                write_json(tmp / "timings.json", timings)
                _add_run_section(report, config, timings, target)
                report.to_html(tmp / "report.html")
                _write_pngs(report, tmp / "figures")
    finally:
        stage.close()
    _print_summary(comparison, result, target / "report.html")
    return RunResult(target, target / "report.html", result, timings)


# ---------------------------------------------------------------------- outputs
def _ae_info(ae: Any) -> dict[str, Any]:
    return {
        "latent_dim": int(ae.latent_dim_),
        "d_in": int(ae.d_in_),
        "n_epochs": int(getattr(ae, "n_epochs_", 0)),
        "best_epoch": int(getattr(ae, "best_epoch_", 0)),
    }


def _metrics(
    config: Config, pair: Any, translation: Any, comparison: Any, modes: list, notes: list
) -> dict[str, Any]:
    """Everything measured, without wall times (identical across runs with one seed)."""
    from flowmatch.benchmarks._common import environment

    rows = []
    for r in comparison.rows:
        row = asdict(r)
        for key in _TIMING_FIELDS:
            row.pop(key, None)
        rows.append(row)
    fm = comparison.row("flowmatch")
    m = translation.matching_
    return {
        "pair": pair.name,
        "seed": config.seed,
        "config": config.to_dict(),
        "environment": environment(config.seed),
        "models": {
            "accuracy_a": comparison.accuracy_a,
            "accuracy_b": comparison.accuracy_b,
            "linear_cka": comparison.cka,
        },
        "protocol": {
            "n_fit_a": comparison.n_fit_a,
            "n_fit_b": comparison.n_fit_b,
            "n_test": comparison.n_test,
            "n_pairs": comparison.n_pairs,
            "reference": comparison.reference,
        },
        "flowmatch": {
            "stitched_accuracy": fm.stitched_accuracy,
            "relative_stitching": fm.relative_stitching,
            "r2": fm.r2,
            "cosine": fm.cosine,
            "top1": fm.top1,
            "autoencoder_a": _ae_info(translation.autoencoder_a_),
            "autoencoder_b": _ae_info(translation.autoencoder_b_),
            "n_modes_a": len(translation.tree_a_.leaves_),
            "n_modes_b": len(translation.tree_b_.leaves_),
            "n_matched": len(m.leaf_pairs),
            "matching_cost": float(m.cost),
            "matching_method": m.method,
            "mean_confidence": float(np.mean(m.confidence)) if len(m.confidence) else None,
            "matched_same_majority_class": (
                float(np.mean([r["same class"] for r in modes])) if modes else None
            ),
            "matched_modes": modes,
        },
        "comparison": rows,
        "notes": notes,
    }


def _timings(
    stages: dict[str, float], comparison: Any, translation: Any, start: float
) -> dict[str, Any]:
    return {
        "stages_seconds": dict(stages),
        "total_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "methods_fit_seconds": {r.method: r.fit_seconds for r in comparison.rows},
        "autoencoder_fit_seconds": {
            "a": getattr(translation.autoencoder_a_, "fit_seconds_", None),
            "b": getattr(translation.autoencoder_b_, "fit_seconds_", None),
        },
    }


def _build_report(
    config: Config,
    pair: Any,
    translation: Any,
    comparison: Any,
    modes: list,
    data: Any,
    reference: Any,
    pred: torch.Tensor,
    test_a: torch.Tensor,
    test_b: torch.Tensor,
    methods: list[str],
    notes: list[str],
) -> Any:
    from flowmatch import figures
    from flowmatch.alignment import apply_map, fit_affine
    from flowmatch.report import Report

    fm = comparison.row("flowmatch")
    ref = comparison.rows[0]
    y = pair.data.y_test
    report = Report(
        f"flowmatch: {pair.name}",
        f"config {config.name!r}, seed {config.seed}; model A {pair.layer_a!r} "
        f"(d={test_a.shape[1]}) → model B {pair.layer_b!r} (d={test_b.shape[1]})",
    )
    report.add_section("Summary")
    report.add_text(
        f"Model A and model B reach {comparison.accuracy_a:.3f} and {comparison.accuracy_b:.3f} "
        f"test accuracy; the linear CKA of their test activations is {comparison.cka:.3f}. "
        f"flowmatch saw A's activations on {comparison.n_fit_a} training inputs and B's on "
        f"{comparison.n_fit_b} other training inputs (disjoint halves, each shuffled: no pairs). "
        "Every score below is on the held-out test inputs."
    )
    report.add_table(
        [
            {
                "method": r.method,
                "paired rows": r.paired_rows,
                "stitched acc": r.stitched_accuracy,
                "relative stitching": r.relative_stitching,
                "R²": r.r2,
                "cosine": r.cosine,
                "top-1": r.top1,
            }
            for r in (fm, ref)
        ],
        caption=(
            "flowmatch (zero pairs) against supervised affine stitching fitted on every "
            "training input paired"
        ),
    )
    report.add_section("Density trees and their matching")
    report.add_text(
        "Each latent density is summarised by the merge tree of its super-level sets; leaves "
        "are modes. The two trees are matched without shared coordinates; matched modes carry "
        "the same colour and tag m<i> in every figure."
    )
    ta, tb = translation.tree_a_, translation.tree_b_
    _add_figure(
        report,
        lambda: figures.matched_trees(ta, tb, translation.matching_),
        "density trees of model A (left) and B (right), height = log-density; leaf size and "
        "percentage = mass; same colour = matched",
        notes,
    )
    report.add_table(
        modes,
        caption=(
            "matched mode pairs; the majority test class of each mode is shown only to evaluate "
            "the matching (labels are never used to fit)"
        ),
    )
    _add_figure(
        report,
        lambda: figures.persistence_diagrams(ta, tb),
        "0-dimensional persistence diagrams of the latent densities; points below the dashed "
        "line are pruned as noise",
        notes,
    )
    report.add_section("Latent spaces")
    _add_figure(
        report,
        lambda: figures.latent_views(translation, test_a, test_b, y),
        "test activations encoded by each flow autoencoder, PCA of the latent; top: coloured by "
        "density-tree mode (matched modes share a colour, unmatched grey), bottom: by class",
        notes,
    )
    report.add_section("Translation A → B")
    matrix, bias = fit_affine(reference.pairs_a, reference.pairs_b)
    supervised = apply_map(test_a, matrix, bias).float()
    _add_figure(
        report,
        lambda: figures.translated_vs_true(pred, test_b, y, pair.head_b, supervised),
        "translated A→B against the true B activations of the same test inputs: PCA view, "
        "stitched accuracy per class, R² per B unit (supervised affine for reference)",
        notes,
    )
    report.add_section("Comparison with every baseline")
    report.add_html(comparison.to_html())
    _add_figure(
        report,
        lambda: figures.comparison_bars(comparison),
        "scores of every method on the test inputs; the dashed line is model B's own accuracy",
        notes,
    )
    report.add_section("Baselines' figures")
    todo = _baseline_figures(pair, methods, config.seed)
    if not todo:
        report.add_note(
            "no baseline with a figure of its own (rotation_sparsity, lib, polytope) "
            "was among the configured methods"
        )
    for caption, make in todo:
        _add_figure(report, make, caption, notes)
    return report


def _write_pngs(report: Any, folder: Path) -> None:
    """Each embedded figure also as ``figures/NN_<words>.png`` (for slides and papers)."""
    import re

    folder.mkdir()
    for i, (caption, png) in enumerate(report.images, 1):
        words = re.findall(r"[a-z0-9]+", caption.split(":")[0].lower())[:4]
        (folder / f"{i:02d}_{'_'.join(words) or 'figure'}.png").write_bytes(png)


def _add_run_section(report: Any, config: Config, timings: dict, target: Path) -> None:
    import yaml

    from flowmatch.benchmarks._common import environment

    report.add_section("Run")
    report.add_text(
        f"Written to {target}: report.html, metrics.json (deterministic under the seed), "
        "timings.json, figures/ (every figure as PNG) and translation/ (latent map and both "
        "flow autoencoders, safetensors with JSON metadata; load with "
        "flowmatch.Translation.load)."
    )
    report.add_code(yaml.safe_dump(config.to_dict(), sort_keys=False))
    env = environment(config.seed)
    report.add_table([{"setting": k, "value": v} for k, v in env.items()], caption="environment")
    rows = [{"stage": k, "seconds": v} for k, v in timings["stages_seconds"].items()]
    report.add_table(rows, caption="wall time per stage (writing excludes this report)")


def _print_summary(comparison: Any, result: dict[str, Any], report_path: Path) -> None:
    fm = result["flowmatch"]
    print()
    print(comparison.to_text())
    print(
        f"\nflowmatch: {fm['n_modes_a']} and {fm['n_modes_b']} modes, {fm['n_matched']} matched "
        f"(mean confidence {fm['mean_confidence'] or float('nan'):.2f}); stitched accuracy "
        f"{fm['stitched_accuracy']:.3f}, relative stitching {fm['relative_stitching'] or 0:.3f}"
    )
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"\nreport: {report_path}")
