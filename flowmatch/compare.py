"""Run every translation method on one model pair under the same protocol; tabulate the scores.

Protocol (the honest evaluation protocol of ``docs/architecture.md``):

* The pair's *training* inputs are split by a seeded permutation into two disjoint halves. A's
  activations on half 1 and B's on half 2, each shuffled independently, are what every method
  may fit on (``FitData.a`` / ``FitData.b``): no row of A corresponds to a row of B.
* Paired methods also receive ``n_pairs`` paired rows: the first ``n_pairs`` inputs of half 1
  (in the permuted order) run through both networks.
* The reference method (``"affine"``: supervised least squares) is, by definition, fitted on
  *every* training input paired; the table says so in its "paired rows" column.
  Relative stitching = a method's stitched accuracy / the reference's.
* Scores use the held-out *test* inputs only: A's test activations are translated and compared
  with B's: stitched accuracy (``head_b`` on the translation, against the test labels), R²,
  mean cosine and top-1 retrieval (:mod:`flowmatch.metrics`). Each model's own test accuracy and
  the linear CKA of the two test activation sets are reported as references.

A method that raises does not stop the comparison: its row carries the error message (unless
the caller names it in ``required``). The fitted methods come back with the report
(:attr:`ComparisonReport.methods`), so a caller reuses them rather than fitting again.

>>> report = compare(load_pair("digits-mlp"), methods=["procrustes", "cluster_pairs"])
>>> print(report.to_markdown())
>>> report.methods["procrustes"].transform(x_a)
"""

from __future__ import annotations

import html
import json
import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowmatch import metrics
from flowmatch.environment import environment
from flowmatch.methods import REGISTRY, FitData, Method, get_method, list_methods
from flowmatch.report import format_table
from flowmatch.validation import seed_everything
from flowmatch.zoo import ModelPair, accuracy, load_pair

__all__ = ["COLUMNS", "ComparisonReport", "MethodResult", "compare", "protocol_data"]

logger = logging.getLogger(__name__)

#: Table columns: (field of :class:`MethodResult`, header).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("method", "method"),
    ("paired_rows", "paired rows"),
    ("stitched_accuracy", "stitched acc"),
    ("relative_stitching", "relative stitching"),
    ("r2", "R²"),
    ("cosine", "cosine"),
    ("top1", "top-1"),
    ("fit_seconds", "fit s"),
)


@dataclass(frozen=True)
class MethodResult:
    """One row of the comparison.

    Attributes
    ----------
    method : registered method name.
    paired_rows : paired rows the method read (the reference: every training input).
    uses : what the method was fitted on, in words.
    stitched_accuracy : accuracy of ``head_b`` on translated test activations of A.
    relative_stitching : ``stitched_accuracy`` / the reference's stitched accuracy.
    r2, cosine, top1 : R², mean cosine and top-1 retrieval against B's test activations.
    fit_seconds, transform_seconds : wall time of ``fit`` and of translating the test set.
    error : the exception message when the method failed (all scores are then ``None``).
    """

    method: str
    paired_rows: int | None
    uses: str
    stitched_accuracy: float | None = None
    relative_stitching: float | None = None
    r2: float | None = None
    cosine: float | None = None
    top1: float | None = None
    fit_seconds: float | None = None
    transform_seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class ComparisonReport:
    """Scores of every method on one pair, with the references needed to read them.

    Attributes
    ----------
    pair : name of the model pair.
    rows : one :class:`MethodResult` per method, the reference first.
    reference : name of the supervised reference method.
    cka : linear CKA between A's and B's test activations.
    accuracy_a, accuracy_b : each model's own test accuracy.
    seed, n_pairs : protocol seed and number of paired rows given to paired methods.
    n_fit_a, n_fit_b, n_test : rows in ``FitData.a``, ``FitData.b`` and in the test set.
    env : device, library versions, threads.
    methods : the fitted :class:`~flowmatch.methods.Method` of every row that did not fail,
        by name (not serialised, not compared).
    """

    pair: str
    rows: tuple[MethodResult, ...]
    reference: str
    cka: float
    accuracy_a: float
    accuracy_b: float
    seed: int
    n_pairs: int
    n_fit_a: int
    n_fit_b: int
    n_test: int
    env: dict[str, Any] = field(default_factory=dict)
    methods: Mapping[str, Method] = field(default_factory=dict, repr=False, compare=False)

    def row(self, method: str) -> MethodResult:
        """The row of ``method``."""
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(f"no row for method {method!r}; rows: {[r.method for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary of everything in the report but the fitted methods."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "methods"}
        out["rows"] = [asdict(r) for r in self.rows]
        out["env"] = dict(self.env)
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dictionary per method: the pair's name and every field of its
        :class:`MethodResult` (for tables and JSON)."""
        return [{"pair": self.pair, **asdict(r)} for r in self.rows]

    def to_json(self, indent: int | None = 2) -> str:
        """The report as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def _cells(self, r: MethodResult) -> list[str]:
        cells = []
        for key, _ in COLUMNS:
            v = getattr(r, key)
            if key == "paired_rows" and r.method == self.reference and v is not None:
                cells.append(f"{v} (all train)")
            elif v is None:
                cells.append("failed" if r.error and key != "method" else "–")
            elif isinstance(v, float):
                cells.append(f"{v:.2f}" if key == "fit_seconds" else f"{v:.3f}")
            else:
                cells.append(str(v))
        return cells

    def _summary(self) -> str:
        return (
            f"pair {self.pair}: model A test accuracy {self.accuracy_a:.3f}, model B "
            f"{self.accuracy_b:.3f}, linear CKA(A, B) {self.cka:.3f}; fitted on {self.n_fit_a} A "
            f"rows and {self.n_fit_b} disjoint B rows, {self.n_pairs} paired rows for paired "
            f"methods, scored on {self.n_test} test rows; seed {self.seed}"
        )

    def _errors(self) -> list[tuple[str, str]]:
        return [(r.method, r.error) for r in self.rows if r.error]

    def to_markdown(self) -> str:
        """A Markdown table with a one-line summary above and failures below."""
        lines = [self._summary(), ""]
        lines.append("| " + " | ".join(h for _, h in COLUMNS) + " |")
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
        lines += ["| " + " | ".join(self._cells(r)) + " |" for r in self.rows]
        lines += [f"\n{m} failed: {e}" for m, e in self._errors()]
        return "\n".join(lines)

    def to_html(self) -> str:
        """An HTML table fragment (caption = summary; failures in a list after the table)."""
        esc = html.escape
        head = "".join(f"<th>{esc(h)}</th>" for _, h in COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in self._cells(r)) + "</tr>"
            for r in self.rows
        )
        out = (
            f'<table class="flowmatch-comparison"><caption>{esc(self._summary())}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
        errors = self._errors()
        if errors:
            items = "".join(f"<li>{esc(m)}: {esc(e)}</li>" for m, e in errors)
            out += f'<ul class="flowmatch-errors">{items}</ul>'
        return out

    def to_text(self) -> str:
        """Plain-text table (aligned columns) for terminals."""
        rows = [dict(zip([h for _, h in COLUMNS], self._cells(r))) for r in self.rows]
        return self._summary() + "\n" + format_table(rows)


def protocol_data(pair: ModelPair, n_pairs: int = 10, seed: int = 0) -> tuple[FitData, FitData]:
    """The fitting data of the protocol: ``(data, reference_data)``, two ``FitData``.

    ``data``: A's activations on half 1 of the training inputs and B's on half 2 (disjoint halves
    of a seeded permutation, each shuffled again independently), plus the first ``n_pairs``
    inputs of half 1 through both networks as paired rows. ``reference_data``: the same, with
    every training input paired (what the supervised reference is fitted on).
    """
    x = pair.data.x_train
    n = len(x)
    if not 0 <= n_pairs <= n // 2:
        raise ValueError(f"n_pairs must be between 0 and {n // 2} (half of x_train), got {n_pairs}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    half_a, half_b = perm[: n // 2], perm[n // 2 :]
    idx_a, idx_b = rng.permutation(half_a), rng.permutation(half_b)
    acts_a, acts_b = pair.activations("a", "train").x, pair.activations("b", "train").x
    paired = torch.from_numpy(half_a[:n_pairs])
    common = dict(
        a=acts_a[idx_a],
        b=acts_b[idx_b],
        model_a=pair.model_a,
        model_b=pair.model_b,
        layer_a=pair.layer_a,
        layer_b=pair.layer_b,
        inputs_a=x[idx_a],
        inputs_b=x[idx_b],
        seed=seed,
    )
    data = FitData(
        pairs_a=acts_a[paired] if n_pairs else None,
        pairs_b=acts_b[paired] if n_pairs else None,
        **common,  # type: ignore[arg-type]
    )
    reference = FitData(pairs_a=acts_a, pairs_b=acts_b, **common)  # type: ignore[arg-type]
    return data, reference


def _ordered(methods: Sequence[str] | None, reference: str) -> list[str]:
    available = list_methods()
    names = available if methods is None else list(methods)
    unknown = [m for m in names if m not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown method(s) {unknown}; available: {', '.join(available)}")
    return list(dict.fromkeys([reference, *names]))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _run_method(
    name: str,
    params: Mapping[str, Any],
    data: FitData,
    test: tuple[Tensor, Tensor],
    pair: ModelPair,
    required: bool,
) -> tuple[MethodResult, Method | None]:
    """Fit and score one method: its row, and the fitted method (None when it failed)."""
    uses = REGISTRY[name].uses
    test_a, test_b = test
    try:
        seed_everything(data.seed)
        method = get_method(name, **params)
        _sync()
        t0 = time.perf_counter()
        method.fit(data)
        _sync()
        t1 = time.perf_counter()
        pred = method.transform(test_a)
        _sync()
        t2 = time.perf_counter()
        pred = pred.detach().cpu()
        row = MethodResult(
            method=name,
            paired_rows=method.n_pairs_used_,
            uses=uses,
            stitched_accuracy=metrics.stitched_accuracy(pred, pair.head_b, pair.data.y_test),
            r2=metrics.r2_score(pred, test_b),
            cosine=metrics.mean_cosine(pred, test_b),
            top1=metrics.top1_retrieval(pred, test_b),
            fit_seconds=t1 - t0,
            transform_seconds=t2 - t1,
        )
        return row, method
    except Exception as err:  # a failing method becomes a row, not a crash
        if required:
            raise
        logger.error("method %r failed on pair %r:\n%s", name, pair.name, traceback.format_exc())
        message = f"{type(err).__name__}: {err}"
        return MethodResult(method=name, paired_rows=None, uses=uses, error=message), None


def _relative(rows: list[MethodResult]) -> list[MethodResult]:
    """Rows with ``relative_stitching`` set against the first (the reference)."""
    ref_acc = rows[0].stitched_accuracy
    if not ref_acc:
        return rows
    return [
        r
        if r.stitched_accuracy is None
        else replace(r, relative_stitching=r.stitched_accuracy / ref_acc)
        for r in rows
    ]


def compare(
    pair: ModelPair | str,
    methods: Sequence[str] | None = None,
    n_pairs: int = 10,
    seed: int = 0,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    reference: str = "affine",
    required: Sequence[str] = (),
) -> ComparisonReport:
    """Fit and score every method on ``pair`` under the protocol of this module.

    Parameters
    ----------
    pair : a :class:`~flowmatch.zoo.ModelPair` or the name of a zoo pair.
    methods : registered method names (:func:`flowmatch.methods.list_methods`), run in this
        order after the reference; ``None`` runs them all. The reference is always run, first.
    n_pairs : paired rows given to paired methods (the reference gets every training input).
    seed : seed of the split, the shuffles and every method.
    method_params : keyword arguments per method name, e.g. ``{"cluster_pairs": {"n_iter": 5}}``.
    progress : show a progress bar over the methods.
    reference : the supervised method relative stitching is measured against.
    required : methods whose failure raises (their exception) instead of becoming an error row.

    Returns
    -------
    ComparisonReport  # with the fitted methods in ``methods``
    """
    if isinstance(pair, str):
        pair = load_pair(pair)
    params = dict(method_params or {})
    names = _ordered(methods, reference)
    stray = set(params) - set(names)
    if stray:
        raise KeyError(f"method_params given for methods that are not run: {sorted(stray)}")
    data, reference_data = protocol_data(pair, n_pairs, seed)
    test = pair.activations("a", "test").x, pair.activations("b", "test").x
    rows: list[MethodResult] = []
    fitted: dict[str, Method] = {}
    for name in tqdm(names, desc=f"compare {pair.name}", disable=not progress):
        fit_on = reference_data if name == reference else data
        row, method = _run_method(name, params.get(name, {}), fit_on, test, pair, name in required)
        rows.append(row)
        if method is not None:
            fitted[name] = method
    x_test, y_test = pair.data.x_test, pair.data.y_test
    return ComparisonReport(
        pair=pair.name,
        rows=tuple(_relative(rows)),
        reference=reference,
        cka=metrics.linear_cka(*test),
        accuracy_a=accuracy(pair.model_a, x_test, y_test),
        accuracy_b=accuracy(pair.model_b, x_test, y_test),
        seed=seed,
        n_pairs=n_pairs,
        n_fit_a=len(data.a),
        n_fit_b=len(data.b),
        n_test=len(x_test),
        env=environment(seed),
        methods=fitted,
    )
