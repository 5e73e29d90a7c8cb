"""The start-family ablation of the embedding and zoo benchmarks: which settings reach
``translate``, how the rows are named, and a family that gives no start becomes a row saying so.

``translate`` and ``compare`` are replaced by recording fakes: these tests check the benchmarks'
plumbing (the fits themselves are tested in test_translation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import embeddings as emb
from benchmarks import translate as tb
from flowmatch.translation import NoStartingMap


class _FakeTranslation:
    matching_ = None
    info_ = {"initialisation": "fake"}

    def __call__(self, x):
        return np.asarray(x)


def test_embedding_ablation_runs_each_family_alone(monkeypatch):
    import flowmatch.translation as tr

    calls = []

    def fake_translate(a, b, *, seed, progress, **params):
        calls.append(params)
        if params.get("starts") == ["modes"]:
            raise NoStartingMap("no starting map: the start families ('modes',) gave none")
        return _FakeTranslation()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 8)).astype(np.float32)
    monkeypatch.setattr(tr, "translate", fake_translate)
    monkeypatch.setattr(emb, "check_available", lambda corpora, pairs: None)
    monkeypatch.setattr(emb, "load_pair_embeddings", lambda *args: (x, x, None))
    warmed = []
    monkeypatch.setattr(emb, "warm_up", lambda methods, options: warmed.append(tuple(methods)))
    bench = emb.measure_embeddings(
        ["wordnet"],
        ["minilm"],
        [200],
        [0],
        controls=("real",),
        methods=("b_mean", "flowmatch"),
        n_test=100,
        start_sets=[("clusters",), ("modes",)],
        progress=False,
    )
    names = [r.method for r in bench.rows]
    assert names == ["b_mean", "flowmatch", "flowmatch[clusters]", "flowmatch[modes]"]
    assert calls == [{}, {"starts": ["clusters"]}, {"starts": ["modes"]}]
    assert warmed == [("b_mean", "flowmatch")]  # once, before the timed rows
    skipped = bench.rows[-1]
    assert np.isnan(skipped.top1) and "no starting map" in skipped.note
    assert bench.rows[2].top1 == 1.0  # the fake identity map on identical sides


def test_warm_up_fits_each_method_once_on_a_small_split(monkeypatch):
    fitted = []

    def fake_fit(method, split, seed, options):
        fitted.append((method, split.a.shape, split.test_a.shape))
        if method == "wasserstein_procrustes":
            raise emb._Skip("too big")

    monkeypatch.setattr(emb, "_fit", fake_fit)
    emb.warm_up(["flowmatch", "mini_vec2vec", "flowmatch", "wasserstein_procrustes"], {})
    assert [m for m, _, _ in fitted] == ["flowmatch", "mini_vec2vec", "wasserstein_procrustes"]
    assert all(a == (300, 24) and t == (100, 24) for _, a, t in fitted)


def test_embedding_ablation_needs_flowmatch(capsys):
    from flowmatch.cli import main

    argv = ["bench", "embeddings", "--quick", "--methods", "b_mean", "--ablate-starts"]
    assert main(argv) == 2
    assert "--ablate-starts needs flowmatch" in capsys.readouterr().err


def test_zoo_ablation_rows(monkeypatch):
    import flowmatch.compare as cmp

    calls = []

    class _Report:
        def __init__(self, methods):
            self.methods = methods

        def to_rows(self):
            return [{"pair": "p", "method": m, "relative_stitching": 1.0} for m in self.methods]

    def fake_compare(name, methods, n_pairs=10, seed=0, method_params=None, **kwargs):
        calls.append(method_params)
        if method_params and method_params["flowmatch"]["starts"] == ["gw"]:
            raise NoStartingMap("no starting map: the start families ('gw',) gave none")
        return _Report(["affine", *methods])

    monkeypatch.setattr(cmp, "compare", fake_compare)
    bench = tb.measure_translate(["p"], (), start_sets=[("moments",), ("gw",)])
    assert [r["method"] for r in bench.rows][-2:] == ["flowmatch[moments]", "flowmatch[gw]"]
    assert calls[1:] == [{"flowmatch": {"starts": ["moments"]}}, {"flowmatch": {"starts": ["gw"]}}]
    assert "no starting map" in bench.rows[-1]["error"]
    assert bench.rows[-2]["relative_stitching"] == pytest.approx(1.0)


def test_zoo_table_runs_every_seed(monkeypatch):
    import flowmatch.compare as cmp

    seen = []

    class _Report:
        def __init__(self, methods, seed):
            self.methods, self.seed = methods, seed

        def to_rows(self):
            return [{"pair": "p", "method": m, "score": self.seed} for m in self.methods]

    def fake_compare(name, methods, n_pairs=10, seed=0, method_params=None, **kwargs):
        seen.append(seed)
        return _Report(methods, seed)

    monkeypatch.setattr(cmp, "compare", fake_compare)
    rows = tb.measure_translate(["p"], (), seeds=[3, 5]).rows
    assert seen == [3, 5]
    assert [r["seed"] for r in rows] == [3] * len(tb.METHODS) + [5] * len(tb.METHODS)
    assert all(r["score"] == r["seed"] for r in rows)  # each row is its own seed's
    rows = tb.measure_translate(["p"], (), seed=7).rows
    assert [r["seed"] for r in rows] == [7] * len(tb.METHODS)
