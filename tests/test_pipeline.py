"""``flowmatch run`` end to end on digits with small settings: files, determinism, interrupts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from flowmatch.config import config_from_dict
from flowmatch.pipeline import STAGES, run_pipeline

SMALL = {
    "name": "small",
    "pair": "digits-mlp",
    "seed": 0,
    "autoencoder": {"max_epochs": 2, "n_components": 4},
    "translate": {"n_refine": 4},
    "compare": {"methods": ["procrustes"], "n_pairs": 10},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared, loaded machine, spinning thread pools slow the small flows
    down by an order of magnitude; results do not depend on it (both runs use the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, digits_pair):
    """A complete small run; the fitted translation is kept for the interruption tests."""
    import flowmatch.translation

    fitted = []
    real = flowmatch.translation.translate

    def keep(*args, **kwargs):
        fitted.append(real(*args, **kwargs))
        return fitted[-1]

    out = tmp_path_factory.mktemp("runs")
    config = config_from_dict({**SMALL, "output_dir": str(out)})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flowmatch.translation, "translate", keep)
        result = run_pipeline(config, progress=False)
    return config, result, fitted[0]


def test_run_writes_every_artefact(first_run):
    config, result, _ = first_run
    run = config.run_dir()
    assert result.run_dir == run and result.report == run / "report.html"
    names = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    assert names == [
        ".flowmatch.json",
        "figures",
        "figures/01_density_trees_of_model.png",
        "figures/02_0_dimensional_persistence_diagrams.png",
        "figures/03_test_activations_encoded_by.png",
        "figures/04_translated_a_b_against.png",
        "figures/05_scores_of_every_method.png",
        "metrics.json",
        "report.html",
        "timings.json",
        "translation",
        "translation/.flowmatch.json",
        "translation/autoencoder_a.safetensors",
        "translation/autoencoder_b.safetensors",
        "translation/translation.safetensors",
    ]
    assert [p.name for p in run.parent.iterdir()] == ["small"]  # no staging folder left
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["notes"] == []  # every figure was drawn
    methods = [r["method"] for r in metrics["comparison"]]
    assert methods == ["affine", "flowmatch", "procrustes"]
    assert not any("seconds" in key for r in metrics["comparison"] for key in r)
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings["stages_seconds"]) == set(STAGES) - {"writing"}
    assert metrics["flowmatch"]["crossing_mass"] is not None  # a transport matching
    fm = metrics["flowmatch"]
    assert 0 <= fm["stitched_accuracy"] <= 1 and -1 <= fm["cosine"] <= 1
    assert fm["n_matched"] == len(fm["matched_modes"]) <= min(fm["n_modes_a"], fm["n_modes_b"])
    levels = fm["explanation_levels"]  # the first cut is the trees' own
    assert levels and levels[0]["pairs"] == fm["n_matched"]
    assert levels[0]["crossing_mass"] == pytest.approx(fm["crossing_mass"])
    ref = metrics["comparison"][0]
    assert ref["paired_rows"] == metrics["protocol"]["n_fit_a"] + metrics["protocol"]["n_fit_b"]
    torch.testing.assert_close(
        fm["relative_stitching"], fm["stitched_accuracy"] / ref["stitched_accuracy"]
    )


def test_saved_translation_reproduces_the_scores(first_run, digits_pair):
    from flowmatch.translation import Translation

    config, result, _ = first_run
    t = Translation.load(config.run_dir() / "translation")
    pair = digits_pair
    score = t.score(
        pair.activations("a", "test").x,
        pair.activations("b", "test").x,
        pair.head_b,
        pair.data.y_test,
    )
    fm = result.metrics["flowmatch"]
    torch.testing.assert_close(score.stitched_accuracy, fm["stitched_accuracy"])
    torch.testing.assert_close(score.r2, fm["r2"], rtol=1e-5, atol=1e-6)


def test_report_has_every_section_and_figure(first_run):
    config, _, _ = first_run
    text = (config.run_dir() / "report.html").read_text(encoding="utf-8")
    for section in ("Density trees", "Latent spaces", "Translation A", "Comparison", "Run"):
        assert section in text
    # trees, persistence diagrams, latent views, translated vs true, comparison bars
    assert text.count('src="data:image/png;base64,') == 5
    assert 'class="flowmatch-comparison"' in text
    assert "no baseline with a figure of its own" in text  # procrustes draws none


@pytest.mark.skipif(
    __import__("shutil").which("chromium") is None, reason="chromium is not installed"
)
def test_report_renders_in_chromium(first_run, tmp_path):
    from test_report import assert_legible, render_in_chromium

    config, _, _ = first_run
    seen = render_in_chromium(config.run_dir() / "report.html", tmp_path)
    assert len(seen["images"]) == 5
    assert_legible(seen["images"])
    assert seen["tables"] >= 4  # summary, matched modes, comparison, environment, timings


def test_same_seed_same_metrics(first_run, tmp_path):
    config, _, _ = first_run
    again = replace(config, output_dir=str(tmp_path))
    run_pipeline(again, progress=False)
    first = json.loads((config.run_dir() / "metrics.json").read_text())
    second = json.loads((again.run_dir() / "metrics.json").read_text())
    assert first["config"].pop("output_dir") != second["config"].pop("output_dir")
    assert first == second  # every other number identical, to the last digit


def test_interrupted_run_leaves_no_partial_files(first_run, monkeypatch):
    """Ctrl-C while writing (the translation is already saved in staging): the previous run
    folder is untouched and nothing else remains."""
    import flowmatch.pipeline as pipeline
    import flowmatch.translation

    config, _, fitted = first_run
    monkeypatch.setattr(flowmatch.translation, "translate", lambda *a, **k: fitted)
    run = config.run_dir()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_json", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(replace(config, seed=1), progress=False)
    assert [p.name for p in run.parent.iterdir()] == ["small"]
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_failed_first_run_writes_nothing(tmp_path, monkeypatch):
    import flowmatch.translation

    def fail(*args, **kwargs):
        raise RuntimeError("translation stage broke")

    monkeypatch.setattr(flowmatch.translation, "translate", fail)
    config = config_from_dict({**SMALL, "output_dir": str(tmp_path / "runs")})
    with pytest.raises(RuntimeError, match="translation stage broke"):
        run_pipeline(config, progress=False)
    assert list((tmp_path / "runs").iterdir()) == []
