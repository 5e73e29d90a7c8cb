"""``flowmatch run``: the whole pipeline on one configured zoo pair, written to ``runs/<name>/``.

Stages (one progress bar step each): zoo models → test activations → every method under the
evaluation protocol of :func:`flowmatch.compare.compare`, flowmatch first after the supervised
reference (its translation: two flow autoencoders, two density trees, tree matching, OT
refinement; one :func:`flowmatch.translate` call) → the matched modes → figures → writing.
Every method, flowmatch included, is fitted and scored once, by ``compare``; the pipeline
reuses the fitted methods for its figures.

The run folder holds ``report.html`` (self-contained), ``figures/`` (its figures as PNG),
``metrics.json`` (deterministic under the seed: no wall times, no dates), ``timings.json`` and
``translation/`` (the latent map and both autoencoders, safetensors + JSON). Everything is first
written to a hidden staging folder beside the run folder, which replaces the run folder only
when every file is complete: an interrupted or failed run leaves the previous results untouched
and no partial files. The run folder is checked before anything is computed: it must be new,
empty, or a run folder flowmatch wrote with nothing else in it (:mod:`flowmatch.outputs`).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from flowmatch._io import write_json
from flowmatch.config import Config
from flowmatch.environment import environment
from flowmatch.methods import FigureContext, list_methods
from flowmatch.outputs import staged_folder
from flowmatch.validation import seed_everything

__all__ = ["STAGES", "RunResult", "run_pipeline"]

#: Stage names, in order; ``timings.json`` has one entry per stage.
STAGES: tuple[str, ...] = (
    "zoo models",
    "activations",
    "methods",
    "modes",
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


@dataclass(frozen=True)
class _Run:
    """What the stages computed, for the figures and the files."""

    config: Config
    pair: Any
    comparison: Any
    translation: Any
    test_a: torch.Tensor
    test_b: torch.Tensor
    majority: tuple[list[int | None], list[int | None]]  # per leaf of tree A, of tree B
    modes: list[dict[str, Any]]


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
    """Keyword arguments of :func:`flowmatch.translate` from the config (its ``translate``
    section as ``settings``, and the stage sections)."""
    return {
        "autoencoder_params": dict(config.autoencoder),
        "tree_params": dict(config.tree),
        "match_params": dict(config.match),
        "settings": config.translate,
    }


def _methods(config: Config) -> list[str]:
    """Methods :func:`compare` runs after the reference: flowmatch first, then the configured
    ones (every registered method when the config names none)."""
    names = list_methods() if config.compare.methods is None else config.compare.methods
    return ["flowmatch", *[m for m in names if m != "flowmatch"]]


def _method_params(config: Config, methods: list[str], progress: bool) -> dict[str, Any]:
    translate = _translate_params(config)
    params = {"flowmatch": {**translate, "progress": progress}, "flowmatch_pairs": translate}
    return {k: v for k, v in params.items() if k in methods}


def _majority(labels: np.ndarray, mode: np.ndarray, n_modes: int) -> list[int | None]:
    out: list[int | None] = []
    for m in range(n_modes):
        ys = labels[mode == m]
        out.append(int(np.bincount(ys).argmax()) if len(ys) else None)
    return out


def _majorities(
    translation: Any, test_a: torch.Tensor, test_b: torch.Tensor, y: np.ndarray
) -> tuple[list[int | None], list[int | None]]:
    """Majority test class of every leaf of each tree (``leaves_`` order; None: no test input).
    Labels are used here only to evaluate the unsupervised matching."""
    t = translation
    out = []
    for ae, tree, x in (
        (t.autoencoder_a_, t.tree_a_, test_a),
        (t.autoencoder_b_, t.tree_b_, test_b),
    ):
        mode = tree.predict(ae.encode(x).double().numpy())
        out.append(_majority(y, mode, len(tree.leaves_)))
    return out[0], out[1]


def _mode_table(translation: Any, majority: tuple[list, list]) -> list[dict[str, Any]]:
    """Matched mode pairs with masses, confidence and the majority test class on each side."""
    ta, tb, m = translation.tree_a_, translation.tree_b_, translation.matching_
    (maj_a, maj_b), mass_a, mass_b = majority, ta.mode_masses(), tb.mode_masses()
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
    run_start = time.perf_counter()
    stage = _Stages(progress)
    target = config.run_dir()
    try:
        with staged_folder(target, "run") as tmp:
            run = _compute(config, stage, progress)
            with stage("figures"):
                notes: list[str] = []
                report = _build_report(run, notes)
            with stage("writing"):
                run.translation.save(tmp / "translation")
                result = _metrics(run, notes)
                write_json(tmp / "metrics.json", result)
                timings = _timings(stage.seconds, run, run_start)
                write_json(tmp / "timings.json", timings)
                _add_run_section(report, config, timings, target)
                report.to_html(tmp / "report.html")
                _write_pngs(report, tmp / "figures")
    finally:
        stage.close()
    _print_summary(run.comparison, result, target / "report.html")
    return RunResult(target, target / "report.html", result, timings)


def _compute(config: Config, stage: _Stages, progress: bool) -> _Run:
    """The zoo pair, every method fitted and scored by :func:`compare`, the matched modes."""
    from flowmatch.compare import compare
    from flowmatch.zoo import load_pair

    seed = config.seed
    with stage("zoo models"):
        seed_everything(seed)
        pair = load_pair(config.pair)
    with stage("activations"):
        test_a = pair.activations("a", "test").x
        test_b = pair.activations("b", "test").x
    with stage("methods"):
        methods = _methods(config)
        comparison = compare(
            pair,
            methods,
            n_pairs=config.compare.n_pairs,
            seed=seed,
            method_params=_method_params(config, methods, progress),
            progress=progress,
            required=("flowmatch",),
        )
        translation = cast(Any, comparison.methods["flowmatch"]).translation_
    with stage("modes"):
        majority = _majorities(translation, test_a, test_b, pair.data.y_test.numpy())
        modes = _mode_table(translation, majority)
    return _Run(config, pair, comparison, translation, test_a, test_b, majority, modes)


# ---------------------------------------------------------------------- outputs
def _ae_info(ae: Any) -> dict[str, Any]:
    return {
        "latent_dim": int(ae.latent_dim_),
        "d_in": int(ae.d_in_),
        "n_epochs": int(getattr(ae, "n_epochs_", 0)),
        "best_epoch": int(getattr(ae, "best_epoch_", 0)),
    }


def _metrics(run: _Run, notes: list[str]) -> dict[str, Any]:
    """Everything measured, without wall times (identical across runs with one seed)."""
    comparison, config = run.comparison, run.config
    rows = []
    for r in comparison.rows:
        row = asdict(r)
        for key in _TIMING_FIELDS:
            row.pop(key, None)
        rows.append(row)
    return {
        "pair": run.pair.name,
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
        "flowmatch": _flowmatch_metrics(run),
        "comparison": rows,
        "notes": notes,
    }


def _flowmatch_metrics(run: _Run) -> dict[str, Any]:
    fm, t, modes = run.comparison.row("flowmatch"), run.translation, run.modes
    m = t.matching_
    return {
        "stitched_accuracy": fm.stitched_accuracy,
        "relative_stitching": fm.relative_stitching,
        "r2": fm.r2,
        "cosine": fm.cosine,
        "top1": fm.top1,
        "autoencoder_a": _ae_info(t.autoencoder_a_),
        "autoencoder_b": _ae_info(t.autoencoder_b_),
        "n_modes_a": len(t.tree_a_.leaves_),
        "n_modes_b": len(t.tree_b_.leaves_),
        "n_matched": len(m.leaf_pairs),
        "matching_objective": m.objective,
        "crossing_mass": m.crossing_mass,
        "matching_method": m.method,
        "mean_confidence": float(np.mean(m.confidence)) if len(m.confidence) else None,
        "matched_same_majority_class": (
            float(np.mean([r["same class"] for r in modes])) if modes else None
        ),
        "matched_modes": modes,
        "explanation_levels": t.info_.get("explanation_levels", []),
    }


def _timings(stages: dict[str, float], run: _Run, start: float) -> dict[str, Any]:
    return {
        "stages_seconds": dict(stages),
        "total_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "methods_fit_seconds": {r.method: r.fit_seconds for r in run.comparison.rows},
        "autoencoder_fit_seconds": {
            "a": getattr(run.translation.autoencoder_a_, "fit_seconds_", None),
            "b": getattr(run.translation.autoencoder_b_, "fit_seconds_", None),
        },
    }


# ---------------------------------------------------------------------- report
def _build_report(run: _Run, notes: list[str]) -> Any:
    """The report's sections up to the run section (figures that fail become notes)."""
    from flowmatch.report import Report

    pair = run.pair
    report = Report(
        f"flowmatch: {pair.name}",
        f"config {run.config.name!r}, seed {run.config.seed}; model A {pair.layer_a!r} "
        f"(d={run.test_a.shape[1]}) → model B {pair.layer_b!r} (d={run.test_b.shape[1]})",
    )
    _summary_section(report, run.comparison)
    _tree_section(report, run, notes)
    _latent_and_translation_sections(report, run, notes)
    _comparison_section(report, run, notes)
    return report


def _summary_section(report: Any, comparison: Any) -> None:
    from flowmatch.compare import COLUMNS

    fm, ref = comparison.row("flowmatch"), comparison.rows[0]
    report.add_section("Summary")
    report.add_text(
        f"Model A and model B reach {comparison.accuracy_a:.3f} and {comparison.accuracy_b:.3f} "
        f"test accuracy; the linear CKA of their test activations is {comparison.cka:.3f}. "
        f"flowmatch saw A's activations on {comparison.n_fit_a} training inputs and B's on "
        f"{comparison.n_fit_b} other training inputs (disjoint halves, each shuffled: no pairs). "
        "Every score below is on the held-out test inputs."
    )
    headers = dict(c for c in COLUMNS if c[0] != "fit_seconds")
    report.add_table(
        [{headers[k]: getattr(r, k) for k in headers} for r in (fm, ref)],
        caption=(
            "flowmatch (zero pairs) against supervised affine stitching fitted on every "
            "training input paired"
        ),
    )


def _tree_section(report: Any, run: _Run, notes: list[str]) -> None:
    from flowmatch import figures

    t = run.translation
    report.add_section("Density trees and their matching")
    report.add_text(
        "Each latent density is summarised by the merge tree of its super-level sets; leaves "
        "are modes. The matching shown is the one the fitted map carries: the optimal-transport "
        "plan between A's mapped rows and B's rows, summed per pair of modes. Matched modes "
        "carry the same colour and tag m<i> in every figure."
    )
    _add_figure(
        report,
        lambda: figures.matched_trees(t.tree_a_, t.tree_b_, t.matching_, classes=run.majority),
        "density trees of model A (left) and B (right), height = log-density; leaf size and "
        "percentage = mass; same colour = matched; a leaf's class is the majority class of "
        "its test inputs; the root's stem is cut (arrow: the lowest log-density)",
        notes,
    )
    report.add_table(
        run.modes,
        caption=(
            "matched mode pairs; the majority test class of each mode is shown only to evaluate "
            "the matching (labels are never used to fit)"
        ),
    )
    report.add_table(
        t.info_.get("explanation_levels", []),
        caption=(
            "the same correspondence at coarser cuts of both trees (min_prominence in nats; "
            "crossing_mass: transported mass between unpaired modes): where the two models' "
            "modes agree"
        ),
    )
    _add_figure(
        report,
        lambda: figures.persistence_diagrams(t.tree_a_, t.tree_b_),
        "0-dimensional persistence diagrams of the latent densities; points below the dashed "
        "line are pruned as noise; the essential class (the global maximum, which never dies) "
        "is drawn at the bottom edge with its death level written beside it",
        notes,
    )


def _latent_and_translation_sections(report: Any, run: _Run, notes: list[str]) -> None:
    from flowmatch import figures

    y, comparison = run.pair.data.y_test, run.comparison
    report.add_section("Latent spaces")
    _add_figure(
        report,
        lambda: figures.latent_views(run.translation, run.test_a, run.test_b, y),
        "test activations encoded by each flow autoencoder, PCA of the latent; top: coloured by "
        "density-tree mode (matched modes share a colour, unmatched grey), bottom: by class",
        notes,
    )
    report.add_section("Translation A → B")
    pred = comparison.methods["flowmatch"].transform(run.test_a)
    reference = comparison.methods.get(comparison.reference)
    supervised = None if reference is None else reference.transform(run.test_a)
    _add_figure(
        report,
        lambda: figures.translated_vs_true(pred, run.test_b, y, run.pair.head_b, supervised),
        "translated A→B against the true B activations of the same test inputs: PCA view, "
        "stitched accuracy per class, R² per B unit (supervised affine for reference)",
        notes,
    )


def _comparison_section(report: Any, run: _Run, notes: list[str]) -> None:
    from flowmatch import figures

    comparison, pair = run.comparison, run.pair
    report.add_section("Comparison with every baseline")
    report.add_html(comparison.to_html())
    _add_figure(
        report,
        lambda: figures.comparison_bars(comparison),
        "scores of every method on the test inputs; the dashed line is model B's own accuracy",
        notes,
    )
    report.add_section("Baselines' figures")
    d = pair.data
    context = FigureContext(
        pair.model_a, pair.model_b, pair.layer_a, pair.layer_b,
        d.x_train, d.x_test, d.y_test, run.config.seed,
    )  # fmt: skip
    drawn = [f for m in comparison.methods.values() for f in m.figures(context)]
    if not drawn:
        report.add_note(
            "no baseline with a figure of its own (e.g. rotation_sparsity, lib, polytope) "
            "was among the compared methods"
        )
    for figure in drawn:
        _add_figure(report, figure.make, figure.caption, notes)


def _write_pngs(report: Any, folder: Path) -> None:
    """Each embedded figure also as ``figures/NN_<words>.png`` (for slides and papers)."""
    folder.mkdir()
    for i, (caption, png) in enumerate(report.images, 1):
        words = re.findall(r"[a-z0-9]+", caption.split(":")[0].lower())[:4]
        (folder / f"{i:02d}_{'_'.join(words) or 'figure'}.png").write_bytes(png)


def _add_run_section(report: Any, config: Config, timings: dict, target: Path) -> None:
    import yaml

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
