"""Settings of :func:`flowmatch.translate`: one frozen dataclass, the single source of its
defaults (the YAML config's ``translate`` section and the ``translate(..., **options)`` keywords
are both checked against it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowmatch._validation import check_bool, check_choice, check_int, check_real

__all__ = ["DEFAULT_STARTS", "START_FAMILIES", "TranslateSettings", "check_setting"]

START_FAMILIES = ("clusters", "modes", "moments", "gw", "clusters_full")
"""Starting-map families: k-means anchors matched by quadratic assignment (``clusters``), the
density trees' matched modes as anchors (``modes``), principal axes paired in order with the
signs of their skews (``moments``), Gromov–Wasserstein couplings (``gw``); and
``clusters_full``, the same k-means anchors on all the map coordinates, refined at the full
width only (mini-vec2vec's path), which competes with the coarse-to-fine survivors at the end."""

DEFAULT_STARTS = ("clusters", "moments", "gw")
"""The families :func:`flowmatch.translate` uses by default: all but ``modes``. Run alone
(``flowmatch bench translate --ablate-starts``, ``flowmatch bench embeddings
--ablate-starts``), ``modes`` was never the best start on a zoo pair (seeds 0 and 1) or a
WordNet split (1,000–5,000 rows, seeds 0 and 1): the trees' structural matching, made before
any map exists, pairs modes of the same class at chance level (digits-mlp: 2 of 13 pairs;
mnist1d-cnn: 0 of 26), so its anchors point the wrong way."""


def _check_starts(name: str, value: Any) -> None:
    if isinstance(value, str) or not isinstance(value, tuple | list) or not value:
        raise TypeError(f"{name} must be a non-empty list of start families, got {value!r}")
    unknown = [v for v in value if v not in START_FAMILIES]
    if unknown or len(set(value)) != len(value):
        raise ValueError(
            f"{name} must name distinct start families among {', '.join(START_FAMILIES)}; "
            f"got {list(value)!r}"
        )


_RULES: dict[str, Callable[[str, Any], None]] = {
    "n_components": lambda n, v: check_int(n, v, 1, none=True),
    "search_components": lambda n, v: check_int(n, v, 1),
    "starts": _check_starts,
    "anchor_width": lambda n, v: check_choice(n, v, ("search", "full")),
    "n_clusters": lambda n, v: check_int(n, v, 2),
    "n_anchor_runs": lambda n, v: check_int(n, v, 1),
    "n_anchor_pools": lambda n, v: check_int(n, v, 1),
    "extra_anchor_pools": lambda n, v: check_int(n, v, 0),
    "resolve_margin": lambda n, v: check_real(n, v, 0.0),
    "lead_z": lambda n, v: check_real(n, v, 0.0, none=True),
    "settle_z": lambda n, v: check_real(n, v, 0.0, none=True),
    "same_map": lambda n, v: check_real(n, v, -1.0, 1.0),
    "n_qap_restarts": lambda n, v: check_int(n, v, 1),
    "anchor_rows": lambda n, v: check_int(n, v, 10),
    "neighbours": lambda n, v: check_int(n, v, 1),
    "n_gw_starts": lambda n, v: check_int(n, v, 0),
    "n_probe": lambda n, v: check_int(n, v, 0),
    "n_finalists": lambda n, v: check_int(n, v, 1),
    "n_survivors": lambda n, v: check_int(n, v, 1),
    "n_refine": lambda n, v: check_int(n, v, 0),
    "refine_tol": lambda n, v: check_real(n, v, 0.0, none=True),
    "refine_batch": lambda n, v: check_int(n, v, 2),
    "smoothing": lambda n, v: check_real(n, v, 0.0, 1.0, high_open=True),
    "survivor_margin": lambda n, v: check_real(n, v, 0.0, 1.0),
    "nearest_survivor": check_bool,
    "search_smoothing": lambda n, v: check_real(n, v, 0.0, 1.0, high_open=True),
    "orthogonal": check_bool,
    "max_targets": lambda n, v: check_int(n, v, 2),
    "n_polish": lambda n, v: check_int(n, v, 0),
    "n_refine_clusters": lambda n, v: check_int(n, v, 0),
    "n_mutual": lambda n, v: check_int(n, v, 0),
    "mutual_rows": lambda n, v: check_int(n, v, 2),
    "balance_steps": lambda n, v: check_int(n, v, 0),
    "max_crossing": lambda n, v: check_real(n, v, 0.0, 1.0),
    "max_exact": lambda n, v: check_int(n, v, 2),
    "group_penalty": lambda n, v: check_real(n, v, 0.0),
    "anchor_weight": lambda n, v: check_real(n, v, 0.0),
    "store_rows": lambda n, v: check_int(n, v, 10),
}


def check_setting(name: str, value: Any) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is valid for it
    (``KeyError`` for an unknown name)."""
    if name not in _RULES:
        raise KeyError(f"unknown translate setting {name!r}; valid: {', '.join(_RULES)}")
    _RULES[name](name, value)


@dataclass(frozen=True)
class TranslateSettings:
    """What :func:`flowmatch.translate` does at each stage (README, "How translate finds the map").

    Coordinates
        n_components : map coordinates per side; ``None``: three times the larger participation
            ratio, at least 16, at most 99% of the variance
            (:func:`flowmatch.coordinates.choose_n_components`).
        search_components : ``p0``, the leading coordinates on which the starts are built and
            selected; the kept map is then refined on twice as many, and so on up to all
            (:func:`flowmatch.translation.search_widths`). The strong directions are the best
            determined: searching there first finds maps a search on all of them misses when
            rows are few (README, "How translate finds the map").
    Starting maps
        starts : which families give candidate maps (:data:`START_FAMILIES`; default
            :data:`DEFAULT_STARTS`).
        anchor_width : where the ``clusters`` anchors are found: ``"full"``, on all the map
            coordinates (k-means, quadratic assignment and the relative-representation
            pseudo-pairs; the start is the pseudo-pairs' Procrustes fit on the ``p0`` leading
            coordinates), or ``"search"``, on the ``p0`` leading ones only. On free-form text
            the leading coordinates alone hold too little of the cluster structure: Python
            docs, 2,000 rows, seed 0, top-1 0.044 → 0.427; 9,000 rows 0.375 → 0.874
            (docs/history.md).
        n_anchor_pools : independent pools of ``n_anchor_runs`` anchor runs, each a
            ``clusters`` start (``clusters``, ``clusters1``, …). Which pool's anchors land
            near the right map is partly luck on hard corpora (fortunes, 4,000 rows, seed 1:
            top-1 0.003 with one pool, 0.438 with two, ``gw`` left out; 0.839 with three,
            ``gw`` kept); each pool costs another anchor stage and candidate (WordNet, 2,000
            rows: 24.8 s with one pool, 36.4 s with three), so by default the further pools
            are drawn only where the finalists are unresolved (``extra_anchor_pools``).
        extra_anchor_pools, resolve_margin, same_map : while the finalists are unresolved at
            the second width — the best one's CSLS leads the best finalist with another map
            (the maps' cosine below ``same_map``) by less than ``resolve_margin`` of its own
            CSLS (:func:`flowmatch.translation.resolution`) — two more anchor pools at a time
            are drawn (``clusters<i>``, seeded as further ``n_anchor_pools``) and refined as
            finalists too, at most ``extra_anchor_pools`` in all (0: never). Where a map is
            found its lead was 0.04–0.29 (WordNet 1,000–5,000 rows, Python docs 2,000–9,000
            rows, fortunes 4,000 rows seed 0); where none was, 0.001–0.028. When introduced
            (scikit-learn's k-means runs, docs/history.md): fortunes 4,000 rows seed 1: 0.003
            → 0.839 (resolved after two pools, lead 0.069); 2,000 rows seed 0: 0.212 → 0.363;
            Python docs 2,000 rows seed 1: 0.064 → 0.480 (found by the fourth extra pool). The
            resolved splits pay nothing, an unresolved one its extra pools (Python docs, 2,000
            rows, seed 1, side by side with mini-vec2vec: 26.8 s against 11.2 s, README).
            Extra pools of 10 anchor runs instead of 30 lost both fortunes maps (0.104,
            0.074). A lead is no proof: on a synthetic mixture (``flowmatch bench
            speed``, 100,000 × 768) every finalist was wrong and the best led by 0.071.
        settle_z : before the first extra pools are drawn, the best finalist and its rival
            are carried one width further (the third of the schedule, or the full width), and
            no pools are drawn when one leads the other there by at least ``settle_z``
            standard errors of the per-row CSLS differences
            (:func:`flowmatch.translation._wider_lead`; None: no such check). Fortunes, 4,000
            rows, seed 1: the two maps' CSLS 0.35% apart at 64 coordinates, 4.85 standard
            errors at 128; on the twelve other splits that drew pools, whose leads at the
            full width stayed within 1.4 standard errors, at most 1.7 at 128 (README).
        lead_z : the final pick among the maps refined through the full width is the best by
            CSLS unless its lead over the best rival map is under ``lead_z`` standard errors
            of the per-row CSLS differences (:func:`flowmatch.refinement.csls_lead`): then the
            CSLS cannot tell them apart on the rows scored, and the map under which B's flow
            density finds the mapped A rows likeliest is kept
            (:func:`flowmatch.translation.select_final`; None: always the CSLS). Between an
            MLP's and a CNN's layer (zoo mnist1d-mlp-cnn, seed 1) the CSLS ranked a wrong map
            first by 0.88 standard errors, and the density picked the right one (relative
            stitching 0.419 → 0.898). On the embedding benchmark every map found led its
            rival by ≥ 1.43 standard errors or had none; there the density alone is the worse
            criterion (it preferred wrong maps on fortunes, 4,000 rows, both seeds, where the
            CSLS led by 8 standard errors), so it only breaks the CSLS's ties (README, "Which
            starts matter").
        n_clusters, n_anchor_runs, n_qap_restarts, anchor_rows : k-means anchors — clusters per
            run, runs pooled, 2-opt restarts of each quadratic assignment, rows clustered per
            run (5,000; at 9,000 rows per side two pools' starting maps took 31.5 s with
            10,000-row runs, 17.8 s with 5,000-row ones; top-1 with 5,000- and 10,000-row
            runs: Python docs 9,000 rows 0.919, 0.922, WordNet 20,000 rows 0.995, 0.994,
            seed 0). Ten clusters per run give more right pairs per run but fewer anchors,
            and lost maps (fortunes 2,000 rows seed 0 0.363 → 0.008); the README's "Why the
            anchors are luck" has the run-by-run measurements.
        neighbours : B rows averaged into each pseudo-partner (anchors and refinement).
        n_gw_starts : Gromov–Wasserstein starts (with ``"gw"`` in ``starts``).
    Refine and select
        n_probe : nearest-neighbour refinement rounds every candidate gets before the
            selection criterion (:func:`flowmatch.refinement.alignment_score`) picks one.
        n_finalists : the candidates with the best probe scores that are refined at the
            schedule's first two widths.
        n_survivors, survivor_margin : the finalists with the best score at the second width
            that are refined through the full width (less those scoring more than
            ``survivor_margin``, a fraction of the best's score, below the best, and those
            holding a better survivor's map, cosine at least ``same_map``); the one with the
            best score there is kept.
        nearest_survivor : also refine through the full width the finalist whose mapped rows
            lie closest to B's at the second width (the best mean nearest-neighbour cosine),
            when the CSLS did not keep it and it is within the margin. With maps only partly
            found the finalists' CSLS there differ by less than their noise (fortunes, 2,000
            rows, seed 0: 0.1000–0.1026 for five finalists; the one with top-1 0.180 was third
            by CSLS, first by nearest cosine); an extra survivor costs its wider widths.
        n_refine : the most rounds each finalist gets at each width of the coarse-to-fine
            schedule (``n_probe`` of the first width's already done).
        refine_tol : a width's refinement ends early once the map's CSLS, checked every 10
            rounds, has gained less than this since the last check and the map has stopped
            drifting — its last two moves between checks no longer point the same way
            (:func:`flowmatch.refinement.refine_nearest`; None: always ``n_refine`` rounds).
            On WordNet the maps that win reach their plateau within 20–40 rounds at every
            width; on harder corpora a partly found map keeps improving for many checks while
            its CSLS barely moves, and the drift test keeps it going (fortunes, 4,000 rows,
            seed 0: top-1 0.436 with the CSLS test alone, 0.905 with both; docs/history.md).
        search_smoothing : weight of the previous map in each round at the widths below the
            full one. There every round's fit is well determined, and without smoothing a
            partly found map moves twice as fast towards the right one (fortunes, 4,000 rows:
            top-1 at 64 coordinates 0.66 after 100 rounds with 0.5, 0.85 with 0); at the full
            width ``smoothing`` averages the noisily determined directions away.
        refine_batch, smoothing, max_targets : A rows per round, weight of the previous map in
            each step at the full width, B rows searched per round (a seeded subsample above
            it; also the rows of the closing k-means). On 50,000 WordNet gloss embeddings per
            side, searching all of them instead of 20,000 raised top-1 from 0.986 / 0.988 to
            0.989 / 0.990 (seeds 0 / 1), translate taking about 15% longer (seed 0, each beside
            another job: 235 s against 205 s).
        orthogonal : keep the map orthogonal; by default it is the running average of the
            rounds' rotations, which shrinks the directions they disagree on
            (:func:`flowmatch.refinement.refine_nearest`).
        n_polish : rounds the kept map gets at the full width after the selection, without the
            early stop (0: none), before the cluster correction. Where a map is only partly
            found the CSLS rises too slowly for ``refine_tol`` while retrieval still improves
            (docs/history.md).
        n_refine_clusters : clusters of the closing cluster correction (0: none).
        n_mutual, mutual_rows : iterations of the closing mutual-nearest-neighbour Procrustes
            (:func:`flowmatch.refinement.refine_mutual`; 0: none) and the rows per side it
            pairs (a seeded subsample above it). Its orthogonal fit is averaged with the map
            (weight ``smoothing`` on the map). On Python docs, 9,000 rows, seed 1, top-1 in
            the map coordinates 0.859 → 0.916 (docs/history.md). Its two passes over the
            similarities are quadratic in ``mutual_rows``: at 20,000 WordNet rows, all of them
            (20,000) gave top-1 0.997 / 0.998 against 0.994 / 0.995 with 10,000, in 82–83
            against 72–73 s (seeds 0 / 1, one thread); at 50,000 rows 20,000 / 30,000 / all
            50,000 gave 0.990 / 0.994, 0.992 / 0.993 and 0.993 / 0.995, in 159, 181–187 and
            251–252 s, against mini-vec2vec's 0.992 / 0.991 in 127–135 s: 30,000 keeps the
            largest splits level or ahead at about 1.4× its time (docs/history.md).
    Balancing (optional)
        balance_steps, max_crossing, max_exact, group_penalty : when at most ``max_crossing`` of
            the transported mass leaves the mode pairs the map carries, ``balance_steps``
            optimal-transport similarity steps (exact on ``max_exact`` rows per side) give
            paired modes equal mass (``group_penalty`` > 0 also penalises crossing them).
    Known pairs
        anchor_weight : weight of each known pair in the balancing steps, in transported rows.
    Activation stores
        store_rows : a side given as an :class:`~flowmatch.store.ActivationStore` has its flow
            autoencoder fitted on every row (streamed), and the coordinates, trees and map
            fitted on a seeded uniform draw of this many rows (``info["rows"]``).
    """

    n_components: int | None = None
    search_components: int = 32
    starts: tuple[str, ...] = DEFAULT_STARTS
    anchor_width: str = "full"
    n_clusters: int = 20
    n_anchor_runs: int = 30
    n_anchor_pools: int = 1
    extra_anchor_pools: int = 4
    resolve_margin: float = 0.03
    lead_z: float | None = 1.0
    settle_z: float | None = 3.0
    same_map: float = 0.5
    n_qap_restarts: int = 30
    anchor_rows: int = 5_000
    neighbours: int = 50
    n_gw_starts: int = 2
    n_probe: int = 20
    n_finalists: int = 5
    n_survivors: int = 2
    survivor_margin: float = 0.1
    nearest_survivor: bool = True
    n_refine: int = 100
    refine_tol: float | None = 0.002
    refine_batch: int = 1000
    smoothing: float = 0.5
    search_smoothing: float = 0.0
    orthogonal: bool = False
    max_targets: int = 50_000
    n_polish: int = 0
    n_refine_clusters: int = 500
    n_mutual: int = 3
    mutual_rows: int = 30_000
    balance_steps: int = 10
    max_crossing: float = 0.2
    max_exact: int = 1500
    group_penalty: float = 0.0
    anchor_weight: float = 10.0
    store_rows: int = 50_000

    def __post_init__(self) -> None:
        if isinstance(self.starts, list):
            object.__setattr__(self, "starts", tuple(self.starts))
        for f in dataclasses.fields(self):
            check_setting(f.name, getattr(self, f.name))

    def replace(self, **changes: Any) -> TranslateSettings:
        """A copy with ``changes``; unknown names raise ``TypeError`` listing the valid ones."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise TypeError(f"unknown translate setting {unknown[0]!r}; valid: {valid}")
        return dataclasses.replace(self, **changes)
