"""The comparison harness: the protocol's data split, a pair with a known answer, the report."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from flowmatch.compare import ComparisonReport, compare, protocol_data
from flowmatch.methods import REGISTRY, FitData, Method, register
from flowmatch.zoo import Dataset, ModelPair, head_after


def _toy_pair() -> ModelPair:
    """B is A with its hidden units permuted and rescaled: the same function, and B's hidden
    activations are exactly a linear image of A's (ReLU is positively homogeneous)."""
    torch.manual_seed(0)
    model_a = nn.Sequential(
        OrderedDict(fc1=nn.Linear(6, 8), hidden=nn.ReLU(), out=nn.Linear(8, 3))
    ).double()
    perm = torch.from_numpy(np.random.default_rng(0).permutation(8))
    scale = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    model_b = nn.Sequential(
        OrderedDict(fc1=nn.Linear(6, 8), hidden=nn.ReLU(), out=nn.Linear(8, 3))
    ).double()
    with torch.no_grad():
        model_b.fc1.weight.copy_(scale[:, None] * model_a.fc1.weight[perm])
        model_b.fc1.bias.copy_(scale * model_a.fc1.bias[perm])
        model_b.out.weight.copy_(model_a.out.weight[:, perm] / scale)
        model_b.out.bias.copy_(model_a.out.bias)
    g = torch.Generator().manual_seed(1)
    x_train = torch.randn(240, 6, generator=g, dtype=torch.float64)
    x_test = torch.randn(120, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y_train, y_test = model_a(x_train).argmax(1), model_a(x_test).argmax(1)
    return ModelPair(
        name="toy",
        model_a=model_a.eval(),
        model_b=model_b.eval(),
        layer_a="hidden",
        layer_b="hidden",
        head_a=head_after(model_a, "hidden"),
        head_b=head_after(model_b, "hidden"),
        data=Dataset("toy", x_train, y_train, x_test, y_test),
        info_a={},
        info_b={},
    )


@pytest.fixture(scope="module")
def toy() -> ModelPair:
    return _toy_pair()


def _rows_of(x: Tensor, rows: Tensor) -> list[int]:
    """Index in ``x`` of every row of ``rows`` (exact match)."""
    return [int(torch.nonzero((x == r).all(1))[0]) for r in rows]


def test_protocol_data_is_disjoint_shuffled_and_consistent(toy: ModelPair) -> None:
    data, ref = protocol_data(toy, n_pairs=7, seed=3)
    x = toy.data.x_train
    ia, ib = _rows_of(x, data.inputs_a), _rows_of(x, data.inputs_b)
    assert len(ia) == 120 and len(ib) == 120
    assert set(ia).isdisjoint(ib) and set(ia) | set(ib) == set(range(240))
    assert ia != sorted(ia) and ib != sorted(ib)  # shuffled, not in input order
    acts_a, acts_b = toy.activations("a").x, toy.activations("b").x
    assert_close(data.a, acts_a[ia])
    assert_close(data.b, acts_b[ib])
    # paired rows: the same inputs through both networks, taken from A's half
    assert data.n_pairs == 7
    ip = _rows_of(acts_a, data.pairs_a)
    assert set(ip) <= set(ia)
    assert_close(data.pairs_b, acts_b[ip])
    assert data.model_a is toy.model_a and data.layer_b == "hidden" and data.seed == 3
    # the reference sees every training input paired, and the same unpaired rows
    assert ref.n_pairs == 240
    assert_close(ref.a, data.a)
    # seeded: same seed, same split; another seed, another split
    again, _ = protocol_data(toy, n_pairs=7, seed=3)
    assert_close(again.inputs_a, data.inputs_a)
    other, _ = protocol_data(toy, n_pairs=7, seed=4)
    assert not torch.equal(other.inputs_a, data.inputs_a)
    with pytest.raises(ValueError, match="n_pairs"):
        protocol_data(toy, n_pairs=121)


def test_compare_on_a_pair_with_a_known_answer(toy: ModelPair) -> None:
    report = compare(toy, methods=["procrustes", "relative"], n_pairs=10, progress=False)
    assert [r.method for r in report.rows] == ["affine", "procrustes", "relative"]
    ref = report.row("affine")
    # B's activations are an exact linear image of A's: the supervised reference is exact
    assert ref.paired_rows == 240 and ref.error is None
    assert ref.r2 == pytest.approx(1.0, abs=1e-6)
    assert ref.cosine == pytest.approx(1.0, abs=1e-6)
    assert ref.top1 == 1.0 and ref.stitched_accuracy == 1.0 and ref.relative_stitching == 1.0
    assert report.accuracy_a == 1.0 and report.accuracy_b == 1.0
    for r in report.rows[1:]:
        assert r.paired_rows == 10 and r.error is None
        assert r.relative_stitching == pytest.approx(r.stitched_accuracy / ref.stitched_accuracy)
        assert 0 <= r.top1 <= 1 and r.fit_seconds >= 0
    assert 0 < report.cka <= 1
    assert (report.n_fit_a, report.n_fit_b, report.n_test) == (120, 120, 120)
    assert report.env["seed"] == 0


class _Broken(Method):
    paired: ClassVar[bool] = False
    uses: ClassVar[str] = "nothing"

    def _fit(self, data: FitData) -> None:
        raise RuntimeError("deliberate failure <b>")

    def _transform(self, x_a: Tensor) -> Tensor:
        return x_a


@pytest.fixture
def broken() -> Iterator[str]:
    register("_broken_for_test")(_Broken)
    yield "_broken_for_test"
    del REGISTRY["_broken_for_test"]


def test_a_failing_method_becomes_a_row(
    toy: ModelPair, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="flowmatch.compare"):
        report = compare(toy, methods=[broken, "procrustes"], progress=False)
    assert [r.method for r in report.rows] == ["affine", broken, "procrustes"]
    row = report.row(broken)
    assert row.error == "RuntimeError: deliberate failure <b>"
    assert row.stitched_accuracy is None and row.relative_stitching is None
    assert report.row("procrustes").error is None
    assert "deliberate failure" in caplog.text and "Traceback" in caplog.text
    md = report.to_markdown()
    assert f"| {broken} | failed |" in md and "deliberate failure" in md
    html = report.to_html()
    assert "&lt;b&gt;" in html and "<b>" not in html


def test_compare_returns_the_fitted_methods(toy: ModelPair, broken: str) -> None:
    """The report carries each fitted method (not serialised): its transform reproduces the
    scored row; a method named in ``required`` raises instead of becoming a row."""
    from flowmatch import metrics

    report = compare(toy, methods=["procrustes", broken], progress=False)
    assert set(report.methods) == {"affine", "procrustes"}  # the failed one is absent
    pred = report.methods["procrustes"].transform(toy.activations("a", "test").x)
    r2 = metrics.r2_score(pred, toy.activations("b", "test").x)
    assert r2 == pytest.approx(report.row("procrustes").r2, abs=1e-12)
    assert "methods" not in report.to_dict() and "procrustes" not in repr(report.methods.keys)
    rows = report.to_rows()
    assert [r["method"] for r in rows] == ["affine", "procrustes", broken]
    assert rows[0]["pair"] == "toy" and rows[0]["paired_rows"] == 240 and "uses" in rows[0]
    with pytest.raises(RuntimeError, match="deliberate failure"):
        compare(toy, methods=[broken], progress=False, required=(broken,))


def test_report_serialises(toy: ModelPair) -> None:
    report = compare(toy, methods=["affine"], seed=2, progress=False)
    assert isinstance(report, ComparisonReport)
    data = json.loads(report.to_json())
    assert data["pair"] == "toy" and data["seed"] == 2 and data["reference"] == "affine"
    assert data["rows"][0]["method"] == "affine" and data["rows"][0]["paired_rows"] == 240
    md = report.to_markdown().splitlines()
    assert md[2].startswith("| method | paired rows | stitched acc")
    assert md[4].startswith("| affine | 240 (all train) | 1.000 | 1.000 |")
    html = report.to_html()
    assert html.startswith('<table class="flowmatch-comparison">') and "<html" not in html
    assert html.count("<tr>") == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.seed = 5  # type: ignore[misc]


def test_bad_requests_fail_before_running(toy: ModelPair) -> None:
    with pytest.raises(KeyError, match="unknown method"):
        compare(toy, methods=["procrustes", "nope"], progress=False)
    with pytest.raises(KeyError, match="not run"):
        compare(toy, methods=["procrustes"], method_params={"relative": {}}, progress=False)


def test_benchmark_command_writes_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.cli import main

    out = tmp_path / "cmp.json"
    argv = ["compare", "--quick", "--methods", "procrustes", "--no-progress", "--json", str(out)]
    result = main(argv)
    saved = json.loads(out.read_text())
    reports = saved["result"]["reports"]
    assert saved["benchmark"] == "compare" and saved["options"]["methods"] == ["procrustes"]
    assert reports[0]["pair"] == "digits-mlp" == result.reports[0]["pair"]
    assert [r["method"] for r in reports[0]["rows"]] == ["affine", "procrustes"]
    assert reports[0]["rows"][0]["stitched_accuracy"] > 0.9
    assert saved["environment"]["seed"] == 0 and saved["wall_seconds"] > 0
