"""``translate(a, b)``: carry model A's activations into model B's activation space without
paired data.

Stages (each a function below, with its own module and tests):

1. **coordinates** — each side centred, globally scaled, its ``p`` leading principal
   coordinates kept (:mod:`flowmatch.coordinates`);
2. **density trees** — a volume-preserving flow autoencoder per side, the merge tree of its
   latent density, the two trees matched (:mod:`flowmatch.density_tree`,
   :mod:`flowmatch.matching`);
3. **starting maps** — orthogonal maps between the leading ``p0`` coordinates from anchors:
   k-means centroids matched by quadratic assignment (found on all the map coordinates by
   default, ``anchor_width``), principal axes with their skews,
   Gromov–Wasserstein couplings, and on request the trees' matched modes (not a default: the
   structural tree matching pairs modes at chance level on the zoo and the embeddings,
   :data:`flowmatch.settings.DEFAULT_STARTS`) (:mod:`flowmatch.starts`);
4. **refine and select** — every start gets a few nearest-neighbour refinement rounds, the
   best under the selection criterion is refined coarse to fine, on ever more coordinates
   (:mod:`flowmatch.refinement`);
5. **balancing** (optional) — when the map carries modes one-to-one, optimal-transport steps
   that give paired modes equal mass (:func:`flowmatch.alignment.refine_map`);
6. **explanation** — which mode of A the map carries onto which mode of B
   (:func:`flowmatch.matching.matching_from_transport`).

The result maps ``x_a ↦ coords_b⁻¹(coords_a(x_a) · Mᵀ + c)``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowmatch import metrics
from flowmatch._io import ArtefactError, load_state, save_state
from flowmatch._merge_tree import NOISE_FLOOR
from flowmatch.alignment import refine_map, transport_subsample
from flowmatch.coordinates import MapCoordinates, choose_n_components
from flowmatch.matching import TreeMatching, match_trees, matching_from_transport
from flowmatch.outputs import staged_folder
from flowmatch.refinement import (
    alignment_score,
    csls_lead,
    refine_clusters,
    refine_mutual,
    refine_nearest,
)
from flowmatch.settings import TranslateSettings
from flowmatch.starts import (
    Anchors,
    cluster_anchors,
    gw_start,
    mode_anchors,
    moment_start,
    normalise_rows,
    start_from_anchors,
    subsample,
)
from flowmatch.validation import as_matrix, canonical_order, check_fitted

__all__ = ["NoStartingMap", "Translation", "TranslationScore", "UnresolvedSelection", "translate"]


@dataclass(frozen=True)
class TranslationScore:
    """Held-out scores of a translation (see :mod:`flowmatch.metrics`)."""

    r2: float
    cosine: float
    top1: float
    stitched_accuracy: float | None
    n: int


class Translation:
    """A map from model A's activation space to model B's:
    ``x_a ↦ coords_b⁻¹(coords_a(x_a) · Mᵀ + c)``.

    Attributes
    ----------
    coords_a_, coords_b_ : :class:`~flowmatch.coordinates.MapCoordinates` of each side.
    matrix_ : Tensor  # (p_b, p_a) map between the two sides' coordinates (orthogonal unless
        the balancing stage ran, then a rotation times one scale)
    bias_ : Tensor  # (p_b,)
    autoencoder_a_, autoencoder_b_ : the fitted :class:`~flowmatch.FlowAutoencoder` of each
        side (whose latents the density trees summarise), or None.
    matching_ : TreeMatching | None  # which density mode of A the map carries onto which of B
    tree_a_, tree_b_ : fitted density trees (None after :meth:`load`).
    info_ : dict  # diagnostics: coordinates, every candidate's score, the kept start, timings, the
        mode correspondence at coarser cuts of the trees (``explanation_levels``)
    """

    def __init__(
        self,
        coords_a: MapCoordinates,
        coords_b: MapCoordinates,
        matrix: Tensor,
        bias: Tensor,
        *,
        autoencoder_a: Any = None,
        autoencoder_b: Any = None,
        matching: TreeMatching | None = None,
        tree_a: Any = None,
        tree_b: Any = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.coords_a_, self.coords_b_ = coords_a, coords_b
        self.matrix_ = torch.as_tensor(matrix, dtype=torch.float64)
        self.bias_ = torch.as_tensor(bias, dtype=torch.float64)
        p_b, p_a = coords_b.components_.shape[1], coords_a.components_.shape[1]
        if tuple(self.matrix_.shape) != (p_b, p_a) or tuple(self.bias_.shape) != (p_b,):
            raise ValueError(
                f"matrix {tuple(self.matrix_.shape)} and bias {tuple(self.bias_.shape)} do not "
                f"fit coordinates of widths {p_a} → {p_b}"
            )
        self.autoencoder_a_, self.autoencoder_b_ = autoencoder_a, autoencoder_b
        self.matching_ = matching
        self.tree_a_, self.tree_b_ = tree_a, tree_b
        self.info_ = dict(info or {})

    @property
    def d_a(self) -> int:
        return int(self.coords_a_.n_features_in_)

    @property
    def d_b(self) -> int:
        return int(self.coords_b_.n_features_in_)

    def latent(self, x_a: Any) -> Tensor:
        """A's activations in B's map coordinates  # (n, d_a) → (n, p_b), float64."""
        return (
            self.coords_a_.transform(as_matrix(x_a, "x_a", dim=self.d_a)) @ self.matrix_.T
            + self.bias_
        )

    def __call__(self, x_a: Any) -> Any:
        """Translate ``x_a`` (n, d_a) → (n, d_b); returns NumPy for NumPy input, else torch."""
        out = self.coords_b_.inverse_transform(self.latent(x_a)).float()
        return out.numpy() if isinstance(x_a, np.ndarray) else out

    def inverse(self) -> Translation:
        """The translation from B to A (pseudo-inverse of the coordinate map)."""
        inv = torch.linalg.pinv(self.matrix_)
        matching = None if self.matching_ is None else self.matching_.swapped()
        return Translation(
            self.coords_b_,
            self.coords_a_,
            inv,
            -inv @ self.bias_,
            autoencoder_a=self.autoencoder_b_,
            autoencoder_b=self.autoencoder_a_,
            matching=matching,
            tree_a=self.tree_b_,
            tree_b=self.tree_a_,
            info={**self.info_, "inverted": not self.info_.get("inverted", False)},
        )

    def score(
        self, x_a: Any, x_b: Any, head_b: nn.Module | None = None, y: Any = None
    ) -> TranslationScore:
        """R², mean cosine, top-1 retrieval against the true ``x_b`` rows (same inputs as ``x_a``)
        and, with ``head_b`` and labels ``y``, the stitched accuracy."""
        pred = self(as_matrix(x_a, "x_a", dim=self.d_a))
        true = as_matrix(x_b, "x_b", dim=self.d_b)
        if len(pred) != len(true):
            raise ValueError(f"x_a has {len(pred)} rows but x_b has {len(true)}; rows must pair")
        acc = None
        if head_b is not None:
            if y is None:
                raise ValueError("stitched accuracy needs the labels y")
            acc = metrics.stitched_accuracy(pred, head_b, y)
        return TranslationScore(
            r2=metrics.r2_score(pred, true),
            cosine=metrics.mean_cosine(pred, true),
            top1=metrics.top1_retrieval(pred, true),
            stitched_accuracy=acc,
            n=len(pred),
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write a folder: ``translation.safetensors``, the autoencoders and a marker.

        The folder is written beside ``path`` and then replaces it (old aside, new in, old
        deleted); an existing ``path`` must be an empty folder or a Translation folder written
        by flowmatch with nothing else in it (:mod:`flowmatch.outputs`).
        """
        with staged_folder(path, "Translation") as tmp:
            tensors = {"matrix": self.matrix_, "bias": self.bias_}
            meta: dict[str, Any] = {"info": self.info_, "coordinates": {}}
            for side, coords in (("a", self.coords_a_), ("b", self.coords_b_)):
                t, m = coords.to_state()
                tensors.update({f"coords_{side}.{k}": v.clone() for k, v in t.items()})
                meta["coordinates"][side] = m
            if self.matching_ is not None:
                arrays, meta["matching"] = self.matching_.to_state()
                tensors.update({k: torch.as_tensor(v) for k, v in arrays.items()})
            sides = [s for s, ae in (("a", self.autoencoder_a_), ("b", self.autoencoder_b_)) if ae]
            meta["autoencoders"] = sides
            save_state(tmp / "translation.safetensors", tensors, meta, kind="Translation")
            for side in sides:
                ae = self.autoencoder_a_ if side == "a" else self.autoencoder_b_
                ae.save(tmp / f"autoencoder_{side}.safetensors")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Translation:
        """Read a folder written by :meth:`save` (trees are not stored).

        Every entry is checked; a bad folder raises ``ValueError`` naming the file and entry.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no translation folder at {path}")
        if not path.is_dir():
            raise ArtefactError(
                f"{path} is a file; a translation folder (Translation.save) is needed"
            )
        art = load_state(path / "translation.safetensors", "Translation")
        names = {f"coords_{s}.{k}" for s in "ab" for k in _COORD_TENSORS}
        art.check_tensor_names({"matrix", "bias", "leaf_pairs", "confidence", "coupling", *names})
        if "coords_a.components" not in art.tensors:
            raise art.error(
                "written by an earlier flowmatch whose maps acted on the autoencoders' own "
                "coordinates; fit the translation again"
            )
        saved = art.field("autoencoders", list)
        aes = [
            _load_autoencoder(path / f"autoencoder_{side}.safetensors") if side in saved else None
            for side in "ab"
        ]
        coords = [_load_coordinates(art, side) for side in "ab"]
        p_a, p_b = (c.components_.shape[1] for c in coords)
        matrix = art.tensor("matrix", torch.float64, (p_b, p_a))
        bias = art.tensor("bias", torch.float64, (p_b,))
        info = art.meta.get("info", {})
        if not isinstance(info, dict):
            raise art.error("metadata entry 'info' must be an object")
        matching = _load_matching(art) if "leaf_pairs" in art.tensors else None
        return cls(
            *coords,
            matrix,
            bias,
            autoencoder_a=aes[0],
            autoencoder_b=aes[1],
            matching=matching,
            info=info,
        )

    def __repr__(self) -> str:
        p_b, p_a = self.matrix_.shape
        n = 0 if self.matching_ is None else len(self.matching_.leaf_pairs)
        return (
            f"Translation(d_a={self.d_a}, d_b={self.d_b}, p_a={p_a}, p_b={p_b}, matched_modes={n})"
        )


_COORD_TENSORS = ("mean", "components", "explained_variance_ratio")


def _load_coordinates(art: Any, side: str) -> MapCoordinates:
    """One side's stored :class:`MapCoordinates`, every entry checked."""
    comp = art.tensor(f"coords_{side}.components", torch.float64, (None, None))
    d, p = comp.shape
    tensors = {
        "components": comp,
        "mean": art.tensor(f"coords_{side}.mean", torch.float64, (d,)),
        "explained_variance_ratio": art.tensor(
            f"coords_{side}.explained_variance_ratio", torch.float64, (p,)
        ),
    }
    meta = art.field(side, dict, art.field("coordinates", dict))
    try:
        return MapCoordinates.from_state(tensors, {"scale": art.field("scale", (int, float), meta)})
    except ValueError as err:
        raise art.error(f"coordinates of side {side}: {err}") from None


def _load_autoencoder(path: Path) -> Any:
    from flowmatch.autoencoder import FlowAutoencoder

    return FlowAutoencoder.load(path)


def _load_matching(art: Any) -> TreeMatching:
    """The stored :class:`TreeMatching` of a Translation file, every entry checked."""
    mm = art.field("matching", dict)
    pairs = art.tensor("leaf_pairs", torch.int64, (None, 2))
    arrays = {
        "leaf_pairs": pairs.numpy(),
        "confidence": art.tensor("confidence", "float", (len(pairs),)).double().numpy(),
        "coupling": art.tensor("coupling", "float", (None, None)).double().numpy(),
    }
    try:
        return TreeMatching.from_state(arrays, mm)
    except ValueError as err:
        raise art.error(str(err)) from None


# ---------------------------------------------------------------------- stages
class NoStartingMap(ValueError):
    """The chosen start families gave no candidate map (e.g. ``starts=["modes"]`` when the
    trees match fewer than two modes)."""


class UnresolvedSelection(UserWarning):
    """translate kept a map whose lead over a rival map stayed below ``resolve_margin``, even
    after the extra anchor pools, or whose CSLS lead at the full width was under ``lead_z``
    standard errors, so that B's flow density chose it: the selection could not tell the maps
    apart, and the kept one may be wrong. On the embedding benchmark most such splits were at
    chance; some held a partly found map (``flowmatch bench embeddings``; README)."""


_AE_DEFAULTS: dict[str, Any] = {"latent_dim": 16, "hidden": 64, "max_steps": 400, "patience": 2}
"""The trees summarise a 16-dimensional flow latent (at most what a side holds); the map itself
acts on the map coordinates, so a wider latent or a longer fit would only cost training time
(FlowAutoencoder's own defaults: hidden 128, 1200 steps). Training ends once the held-out NLL
has not improved for 2 epochs (the estimator's default: 20), and the best epoch's weights are
kept: on 384-d sentence embeddings the held-out NLL was best after the first epoch in every fit
measured (WordNet glosses, Python docs and fortunes, 1,000 to 5,000 rows; the reconstruction
term trades likelihood for reconstruction from then on), so every later epoch is trained and
thrown away — with a patience of 5 the same model took 2.8 s per side at 2,000 rows against
0.9 s now, 4.7 against 2.0 s at 5,000. On the zoo layers the NLL improves until the step
budget is spent."""

_TREE_DEFAULTS: dict[str, Any] = {"min_prominence": 1.0, "max_points": 20_000}
"""Modes whose log-density peak rises less than 1 nat (a factor e) above the saddle where they
merge are treated as noise; the criterion does not change under rotation, translation or global
scaling of a latent. Each tree is built on at most 20,000 rows (a seeded subsample) and every
row gets its mode from the nearest of them: on 50,000 WordNet gloss embeddings per side the
tree on every row took 14.5 s per side and found 24 modes, on 20,000 of them 3.0 s (and 1.5 s
to assign the rest) and 22 modes."""


def _autoencoder(
    side: Any, data: Any, params: dict[str, Any], seed: int, name: str, store_rows: int
):
    """A fitted autoencoder and the rows the map and the tree are fitted on."""
    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.store import ActivationStore

    if isinstance(side, ActivationStore):  # the flow on every row, the rest on a draw
        ae = FlowAutoencoder(**{"seed": seed, **params}).fit(side)
        return ae, side.subsample(store_rows, seed=seed).x

    if hasattr(side, "encode") and hasattr(side, "latent_log_prob"):
        check_fitted(side, "latent_dim_")
        if data is None:
            return side, side.sample(params.get("n_samples", 5000)).float()
        return side, as_matrix(data, f"data_{name}", dim=int(side.d_in_), min_samples=2)
    x = as_matrix(side, name, min_samples=2)
    params = dict(params)
    if isinstance(params.get("latent_dim"), int):  # never wider than the side holds
        params["latent_dim"] = min(params["latent_dim"], _modelled_width(x))
    return FlowAutoencoder(**{"seed": seed, **params}).fit(x), x


def _modelled_width(x: Tensor) -> int:
    """Non-constant columns of ``x`` (what an autoencoder's latent can hold)."""
    return max(int(((x.max(0).values - x.min(0).values) > 0).sum()), 1)


def fit_coordinates(
    x_a: Tensor, x_b: Tensor, n_components: int | None = None
) -> tuple[MapCoordinates, MapCoordinates]:
    """Stage 1: both sides' map coordinates, with a common width ``p``
    (:func:`~flowmatch.coordinates.choose_n_components` when ``n_components`` is None)."""
    p = choose_n_components(x_a, x_b) if n_components is None else int(n_components)
    p = min(p, x_a.shape[1], x_b.shape[1])
    return MapCoordinates(p).fit(x_a), MapCoordinates(p).fit(x_b)


def fit_trees(ae_a: Any, x_a: Tensor, ae_b: Any, x_b: Tensor, params: dict[str, Any], seed: int):
    """Stage 2: the density tree of each side's flow latent, their structural matching and
    every row's mode (leaf index): ``(tree_a, tree_b, matching, modes_a, modes_b)``."""
    from flowmatch.density_tree import DensityTree

    tree_params = {"seed": seed, **params.get("tree", {})}
    trees, modes = [], []
    for ae, x in ((ae_a, x_a), (ae_b, x_b)):
        tree = DensityTree.from_autoencoder(ae, x, **tree_params)
        trees.append(tree)
        modes.append(np.asarray(tree.predict(ae.encode(x).double().numpy())))
    matching = match_trees(*trees, seed=seed, **params.get("match", {}))
    return trees[0], trees[1], matching, modes[0], modes[1]


def _cluster_start(
    u_a: Tensor,
    u_b: Tensor,
    s: TranslateSettings,
    pairs: tuple[np.ndarray, np.ndarray] | None,
    seed: int,
    anchor_seed: int,
    progress: bool,
    width: int | None = None,
) -> Tensor:
    """The k-means + QAP anchors' start on these coordinates, the known pairs' unit rows
    added to the anchors (when there are any)  # (w, w), ``w = width`` (default: all the
    coordinates given). The anchors and the pseudo-pairs use every coordinate given; the map is
    their Procrustes fit on the leading ``w``. ``anchor_seed`` seeds the anchors' draws,
    ``seed`` the pseudo-pairs'."""
    anchors = cluster_anchors(
        u_a,
        u_b,
        n_clusters=s.n_clusters,
        n_runs=s.n_anchor_runs,
        n_restarts=s.n_qap_restarts,
        max_rows=s.anchor_rows,
        seed=anchor_seed,
        progress=progress,
    )
    if pairs is not None and len(pairs[0]):
        known_a, known_b = normalise_rows(u_a[pairs[0]]), normalise_rows(u_b[pairs[1]])
        anchors = Anchors(torch.cat([anchors.a, known_a]), torch.cat([anchors.b, known_b]), ())
    return start_from_anchors(u_a, u_b, anchors, k=s.neighbours, width=width, seed=seed)


def pool_starts(
    u_a: Tensor,
    u_b: Tensor,
    settings: TranslateSettings,
    pools: range,
    *,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    full: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Tensor]:
    """The ``clusters`` starts of anchor pools ``pools`` by name (``clusters``, ``clusters1``,
    …), each a (p0, p0) map on the coordinates given (``u_a``, ``u_b``: the ``p0`` leading
    ones); pool ``i``'s anchors are drawn from ``seed + 7919·i``, on all the map coordinates
    ``full = (U_a, U_b)`` when ``anchor_width="full"``."""
    s = settings
    src = full if s.anchor_width == "full" and full is not None else (u_a, u_b)
    return {
        "clusters" if i == 0 else f"clusters{i}": _cluster_start(
            *src, s, pairs, seed, seed + 7919 * i, progress, u_a.shape[1]
        )
        for i in pools
    }


def starting_maps(
    u_a: Tensor,
    u_b: Tensor,
    settings: TranslateSettings,
    *,
    trees: tuple[Any, ...] | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    full: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Stage 3: candidate orthogonal maps (p_b, p_a) by name, on the coordinates given
    (``u_a``, ``u_b``: the ``p0`` leading ones).

    ``clusters`` (and ``clusters1``, … for ``n_anchor_pools`` > 1): pooled k-means anchors
    (plus the known pairs, if any), found on all the map coordinates ``full = (U_a, U_b)`` when
    ``anchor_width="full"`` and fitted on the ``p0`` leading ones; ``modes``: the matched
    density modes of ``trees = (tree_a, tree_b, matching, modes_a, modes_b)``; ``moments``:
    principal axes in order, signs by skew; ``gw<i>``: Gromov–Wasserstein couplings of 400-row
    subsamples; ``clusters_full``: k-means anchors on all the map coordinates ``full = (U_a,
    U_b)`` when they are wider than ``u_a`` — a (p, p) map that
    :func:`refine_and_select` refines at the full width only.
    """
    s, out = settings, {}
    if "clusters" in s.starts:
        pools = range(s.n_anchor_pools)
        out.update(
            pool_starts(u_a, u_b, s, pools, pairs=pairs, full=full, seed=seed, progress=progress)
        )
    if "modes" in s.starts and trees is not None:
        _, _, matching, modes_a, modes_b = trees
        try:
            anchors = mode_anchors(u_a, u_b, modes_a, modes_b, matching.leaf_pairs)
            out["modes"] = start_from_anchors(u_a, u_b, anchors, k=s.neighbours, seed=seed)
        except ValueError:  # fewer than two matched modes: no start from the trees
            pass
    if "moments" in s.starts:
        out["moments"] = moment_start(u_a, u_b)
    if "gw" in s.starts:
        for i in range(s.n_gw_starts):
            out[f"gw{i}"] = gw_start(u_a, u_b, seed=seed + i)
    if "clusters_full" in s.starts and full is not None and full[0].shape[1] > u_a.shape[1]:
        out["clusters_full"] = _cluster_start(*full, s, pairs, seed, seed + 1, progress)
    if not out:
        raise NoStartingMap(f"no starting map: the start families {s.starts} gave none")
    return out


def search_widths(p: int, search_components: int) -> list[int]:
    """Coordinate widths of the coarse-to-fine search: ``p0 = min(p, search_components)``, then
    doubling, then ``p``  # e.g. (298, 32) → [32, 64, 128, 256, 298]."""
    widths = [min(p, search_components)]
    while widths[-1] < p:
        widths.append(min(2 * widths[-1], p))
    return widths


def _widened(rot: Tensor, width: int) -> Tensor:
    """``rot`` (w, w) as the leading block of a (width, width) map, zero elsewhere."""
    out = torch.zeros(width, width, dtype=torch.float64)
    out[: rot.shape[0], : rot.shape[1]] = rot
    return out


def _round_options(s: TranslateSettings, width: int, p: int) -> dict[str, Any]:
    """The settings every :func:`~flowmatch.refinement.refine_nearest` call of translate takes
    at ``width`` of ``p`` coordinates: ``search_smoothing`` below the full width,
    ``smoothing`` at it."""
    return {
        "batch": s.refine_batch,
        "k": s.neighbours,
        "smoothing": s.search_smoothing if width < p else s.smoothing,
        "max_targets": s.max_targets,
        "orthogonal": s.orthogonal,
        "tol": s.refine_tol,
    }


def _fixed_rounds(
    u_a: Tensor,
    u_b: Tensor,
    rot: Tensor,
    n_rounds: int,
    settings: TranslateSettings,
    seed: int,
    trace: list[float],
) -> Tensor:
    """``n_rounds`` of translate's nearest-neighbour rounds on the leading ``rot.shape[1]``
    coordinates, without the early stop  # (w, w) → (w, w); each round's fit goes to
    ``trace``."""
    w = rot.shape[1]
    options = {**_round_options(settings, w, u_a.shape[1]), "tol": None}
    return refine_nearest(
        u_a[:, :w], u_b[:, :w], rot, n_rounds=n_rounds, seed=seed, trace=trace, **options
    )


def _refine_stages(
    u_a: Tensor,
    u_b: Tensor,
    rot: Tensor,
    settings: TranslateSettings,
    seed: int,
    stages: range,
    trace: list[float] | None = None,
) -> Tensor:
    """A map refined at the schedule's widths ``stages`` (indices into :func:`search_widths`),
    each widened from the one before  # (w, w) → (widths[stages[-1]], same). Each round's fit
    is appended to ``trace`` (a list) when given."""
    s = settings
    widths = search_widths(u_a.shape[1], s.search_components)
    for stage in stages:
        width = widths[stage]
        rot = refine_nearest(
            u_a[:, :width],
            u_b[:, :width],
            _widened(rot, width),
            n_rounds=max(s.n_refine - (s.n_probe if stage == 0 else 0), 0),
            seed=seed + 1 + stage,
            trace=trace,
            **_round_options(s, width, widths[-1]),
        )
    return rot


def _survivors(
    names: list[str],
    csls: list[float],
    nearest: list[float],
    s: TranslateSettings,
    maps: dict[str, Tensor] | None = None,
) -> list[str]:
    """The finalists refined through the full width: the ``n_survivors`` with the best CSLS at
    the second width, and (``nearest_survivor``) the one whose mapped rows lie closest to B's
    (best mean nearest-neighbour cosine) when it is not among them; less, in both cases, those
    scoring more than ``survivor_margin`` (a fraction of the best's CSLS) below the best CSLS:
    a clear loser at the second width does not catch up at the wider ones; and, given the
    finalists' ``maps``, less those holding the same map (:func:`map_similarity` at least
    ``same_map``) as a survivor before them: the same map twice adds nothing to the final pick
    (WordNet, 20,000 rows, seed 1: a ``gw`` start at cosine 0.94 with the best, 0.7% of the
    CSLS behind it, was carried through every width beside it)."""
    order = sorted(zip(csls, names), key=lambda pair: -pair[0])
    if not order:  # every start was wider than the search's first width
        return []
    best = order[0][0]
    close = {name for score, name in order if score >= best - s.survivor_margin * abs(best)}
    kept = [name for _, name in order if name in close][: s.n_survivors]
    closest = max(zip(nearest, names), key=lambda pair: pair[0])[1]
    if s.nearest_survivor and closest in close and closest not in kept:
        kept.append(closest)
    if maps is None:
        return kept
    distinct: list[str] = []
    for name in kept:
        if all(map_similarity(maps[name], maps[other]) < s.same_map for other in distinct):
            distinct.append(name)
    return distinct


def map_similarity(r: Tensor, q: Tensor) -> float:
    """Cosine between two maps of the same shape, as flattened matrices: 1 for the same map,
    about 0 for unrelated rotations of many coordinates  # (w, w), (w, w) → float."""
    r, q = torch.as_tensor(r).double().flatten(), torch.as_tensor(q).double().flatten()
    return float(r @ q / (r.norm() * q.norm()).clamp_min(1e-12))


def _best_and_rival(
    csls: dict[str, float], maps: dict[str, Tensor], same_map: float
) -> tuple[str, str | None]:
    """The name with the best CSLS, and the best-scoring one whose map differs from its
    (``map_similarity`` below ``same_map``; None when every map is the best's)."""
    best = max(csls, key=csls.get)
    rivals = [n for n in csls if map_similarity(maps[n], maps[best]) < same_map]
    return best, (max(rivals, key=csls.get) if rivals else None)


def resolution(csls: dict[str, float], maps: dict[str, Tensor], same_map: float) -> float:
    """How clearly the best finalist leads: its CSLS's lead over the best finalist with a
    different map (``map_similarity`` below ``same_map``), as a fraction of its own CSLS
    (1 when every finalist found the best's map: nothing competes)."""
    best, rival = _best_and_rival(csls, maps, same_map)
    if rival is None:
        return 1.0
    return (csls[best] - csls[rival]) / max(abs(csls[best]), 1e-12)


def _closing(
    u_a: Tensor, u_b: Tensor, rot: Tensor, s: TranslateSettings, seed: int, trace: list[float]
) -> Tensor:
    """The kept map's closing steps  # (p, p) → (p, p): ``n_polish`` more full-width rounds
    (their fits appended to ``trace``), the cluster correction and the
    mutual-nearest-neighbour Procrustes."""
    if s.n_polish:
        n_widths = len(search_widths(u_a.shape[1], s.search_components))
        rot = _fixed_rounds(u_a, u_b, rot, s.n_polish, s, seed + n_widths + 1, trace)
    if s.n_refine_clusters:
        rot = refine_clusters(
            u_a,
            u_b,
            rot,
            n_clusters=s.n_refine_clusters,
            orthogonal=s.orthogonal,
            max_rows=s.max_targets,
            seed=seed,
        )
    if s.n_mutual:
        rot = refine_mutual(
            u_a,
            u_b,
            rot,
            n_iter=s.n_mutual,
            smoothing=s.smoothing,
            orthogonal=s.orthogonal,
            max_rows=s.mutual_rows,
            seed=seed,
        )
    return rot


def select_final(
    u_a: Tensor,
    u_b: Tensor,
    refined: dict[str, Tensor],
    csls: dict[str, float],
    settings: TranslateSettings,
    density: Callable[[Tensor], float] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The final pick among the maps refined through the full width (each (p, p), by name,
    with its CSLS there): the best by CSLS, unless its lead over the best rival map (cosine
    below ``same_map``) is within the noise of the rows scored — fewer than ``lead_z``
    standard errors (:func:`~flowmatch.refinement.csls_lead`) — and ``density`` is given: then
    the map whose mapped A rows ``density`` scores highest (translate: their mean
    log-likelihood under B's flow density).

    Returns ``(name, {"csls_pick": the best by CSLS, "lead_z": its lead over its rival in
    standard errors (None without a rival), "rival": the rival's name, "decided_by": "csls" or
    "density"})``, and with the density's choice each map's ``"log_likelihood"``.
    """
    s = settings
    best, rival = _best_and_rival(csls, refined, s.same_map)
    if rival is None:
        return best, {"csls_pick": best, "lead_z": None, "rival": None, "decided_by": "csls"}
    z = csls_lead(u_a, u_b, refined[best], refined[rival])
    out = {"csls_pick": best, "lead_z": round(z, 3), "rival": rival, "decided_by": "csls"}
    if s.lead_z is None or z >= s.lead_z or density is None:
        return best, out
    likelihood = {name: density(rot) for name, rot in refined.items()}
    out.update(decided_by="density", log_likelihood={n: round(v, 4) for n, v in likelihood.items()})
    return max(refined, key=lambda name: likelihood[name]), out


def refine_and_select(
    u_a: Tensor,
    u_b: Tensor,
    starts: dict[str, Tensor],
    settings: TranslateSettings,
    *,
    seed: int = 0,
    progress: bool = False,
    more_starts: Callable[[range], dict[str, Tensor]] | None = None,
    density: Callable[[Tensor], float] | None = None,
) -> tuple[str, Tensor, dict[str, dict[str, float]], dict[str, Any]]:
    """Stage 4: refine the starts coarse to fine and select one.

    Every start (maps between the ``p0`` leading coordinates, :func:`search_widths`) gets
    ``n_probe`` nearest-neighbour rounds and its score
    (:func:`~flowmatch.refinement.alignment_score`, CSLS at ``p0``). The ``n_finalists`` best
    get up to ``n_refine`` rounds at each of the schedule's first two widths (fewer once the
    CSLS stops rising, ``refine_tol``) — the map found on the strong directions is the start
    on the next, wider set; the ``n_survivors`` best of them by CSLS at the second width, and
    the one closest to B's rows there (``nearest_survivor``; less any more than
    ``survivor_margin`` below the best CSLS, or holding the map of a better one) go on
    through the remaining widths, and the one
    :func:`select_final` picks there (the best CSLS, or ``density``'s choice when the CSLS lead
    is within its noise) is kept and gets the cluster correction and the
    mutual-nearest-neighbour Procrustes (:func:`~flowmatch.refinement.refine_mutual`).
    While the best finalist at the second width leads the best one with another map by less
    than ``resolve_margin`` (:func:`resolution`), ``more_starts(pools)`` gives the starts of
    two more anchor pools (``pools``: their indices, from ``n_anchor_pools`` on; at most
    ``extra_anchor_pools`` in all), which are probed and refined as finalists too, before the
    survivors are chosen — unless, before the first draw, the best finalist and its rival,
    carried one width further, stand ``settle_z`` standard errors apart there
    (:func:`_wider_lead`; the two maps are not refined again if they survive). (Probe scores
    at ``p0`` rank the starts roughly — on the manual-page embeddings the start that wins at
    the full width was fourth of five there — while at the second width it was first, as on
    WordNet.)
    A start wider than ``p0`` (``clusters_full``, a (p, p) map) skips the probe and the widths:
    it gets ``n_refine`` rounds at the full width (no early stop) and competes there.

    Returns
    -------
    name : the kept start ; rotation : Tensor  # (p, p) ; scores : per start, its score after
        the probe rounds, ``"<name>/w<width>"`` per finalist at the second width,
        ``"<name>/final"`` per survivor at the full width, and ``"final"`` for the kept map
        (after ``n_polish`` more rounds, the cluster correction and the mutual-neighbour
        Procrustes); each a dict of
        :class:`~flowmatch.refinement.AlignmentScore`'s fields, and ``rounds`` (the
        candidate's refinement rounds so far) ; resolution : ``{"leads": the best
        finalist's lead at the second width before each draw of more pools and after the last,
        "extra_starts": how many starts more_starts gave, "resolved": whether the last lead
        reached resolve_margin or the wider lead settle_z, "settled_z": that wider lead in
        standard errors (None when not measured, or when no finalist held another map), "final":
        the final pick's record
        (:func:`select_final`)}``.
    """
    s = settings
    widths = search_widths(u_a.shape[1], s.search_components)
    p0, cut, p = widths[0], min(2, len(widths)), widths[-1]
    probed, scores, fits = {}, {}, {name: [] for name in starts}
    wide = {name: rot for name, rot in starts.items() if rot.shape[0] > p0}

    def record(key: str, name: str, rot: Tensor, width: int) -> None:
        score = alignment_score(u_a[:, :width], u_b[:, :width], rot)
        scores[key] = {**asdict(score), "rounds": len(fits[name])}

    def probe(candidates: dict[str, Tensor]) -> None:
        for name, rot in candidates.items():
            fits.setdefault(name, [])
            probed[name] = _fixed_rounds(u_a, u_b, rot, s.n_probe, s, seed, fits[name])
            record(name, name, probed[name], p0)

    probe({name: rot for name, rot in starts.items() if name not in wide})
    ranked = sorted(probed, key=lambda name: -scores[name]["csls"])[: s.n_finalists]
    wc, partial = widths[cut - 1], {}

    def finalists(names: list[str]) -> None:
        for name in tqdm(names, desc="finalists", disable=not progress, leave=False):
            partial[name] = _refine_stages(u_a, u_b, probed[name], s, seed, range(cut), fits[name])
            record(f"{name}/w{wc}", name, partial[name], wc)

    carried: dict[str, tuple[int, Tensor]] = {}  # name → (stages done, its map there)

    def carry(name: str, stages: int) -> Tensor:  # refined through the widths before ``stages``
        done, rot = carried.get(name, (cut, partial[name]))
        if done < stages:
            rot = _refine_stages(u_a, u_b, rot, s, seed, range(done, stages), fits[name])
            carried[name] = (stages, rot)
            if stages < len(widths):  # the full width's score is recorded as "/final"
                record(f"{name}/w{widths[stages - 1]}", name, rot, widths[stages - 1])
        return rot

    finalists(ranked)
    leads, drawn, settled, settled_far = [], 0, None, False
    while True:  # more anchor pools, two at a time, while the finalists are unresolved
        csls = {name: scores[f"{name}/w{wc}"]["csls"] for name in ranked}
        lead = resolution(csls, partial, s.same_map) if ranked else 1.0
        leads.append(round(lead, 4))
        if more_starts is None or lead >= s.resolve_margin or drawn >= s.extra_anchor_pools:
            break
        if settled is None and s.settle_z is not None:
            settled = _wider_lead(u_a, u_b, csls, partial, s, carry, min(cut + 1, len(widths)))
            settled_far = settled >= s.settle_z
            if settled_far:
                break
        first = s.n_anchor_pools + drawn
        extra = more_starts(range(first, first + min(2, s.extra_anchor_pools - drawn)))
        probe(extra)
        finalists(list(extra))
        ranked, drawn = ranked + list(extra), drawn + len(extra)
    resolved = {
        "leads": leads,
        "extra_starts": drawn,
        "settled_z": round(settled, 3) if settled is not None and settled < math.inf else None,
        "resolved": lead >= s.resolve_margin or settled_far,
    }
    mid = [scores[f"{name}/w{wc}"] for name in ranked]
    nearest = [m["nearest"] for m in mid]
    survivors = _survivors(ranked, [m["csls"] for m in mid], nearest, s, partial)
    refined = {name: carry(name, len(widths)) for name in survivors}
    for name in refined:
        record(f"{name}/final", name, refined[name], p)
    for name, rot in wide.items():  # mini-vec2vec's path: all rounds at the full width
        refined[name] = _fixed_rounds(u_a, u_b, rot, s.n_refine, s, seed + 1, fits[name])
        record(f"{name}/final", name, refined[name], p)
    final_csls = {name: scores[f"{name}/final"]["csls"] for name in refined}
    kept, resolved["final"] = select_final(u_a, u_b, refined, final_csls, s, density)
    rot = _closing(u_a, u_b, refined[kept], s, seed, fits[kept])
    record("final", kept, rot, p)
    return kept, rot, scores, resolved


def _wider_lead(
    u_a: Tensor,
    u_b: Tensor,
    csls: dict[str, float],
    partial: dict[str, Tensor],
    s: TranslateSettings,
    carry: Callable[[str, int], Tensor],
    stages: int,
) -> float:
    """How many standard errors apart the unresolved best finalist and its rival are once both
    are carried one width further (``carry(name, stages)``: the maps through the schedule's
    first ``stages`` widths; the size of :func:`~flowmatch.refinement.csls_lead`, whichever
    leads there). A map the second width cannot tell from its rival can stand clear of it at
    the third (fortunes, 4,000 rows, seed 1: a CSLS lead of 0.35% at 64 coordinates, 4.85
    standard errors at 128 and 7.1 at the full width; where no map was found, at most 1.7 at
    128). ``inf`` when no finalist holds another map."""
    best, rival = _best_and_rival(csls, partial, s.same_map)
    if rival is None:
        return math.inf
    top, other = carry(best, stages), carry(rival, stages)
    w = top.shape[0]
    return abs(csls_lead(u_a[:, :w], u_b[:, :w], top, other))


EXPLANATION_CUTS = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Prominence cuts of :func:`explanation_levels`, as multiples of the trees' own threshold."""


def _mode_plan(
    trees: tuple, u_a: Tensor, u_b: Tensor, matrix: Tensor, bias: Tensor, max_exact: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 6 (explanation): the exact OT plan between the mapped A rows and the B rows
    (seeded subsamples of at most ``max_exact`` rows) and each of their rows' mode:
    ``(leaf_a (m_a,), leaf_b (m_b,), plan (m_a, m_b))``, what
    :func:`~flowmatch.matching.matching_from_transport` and :func:`explanation_levels` read."""
    _, _, _, modes_a, modes_b = trees
    ia, ib, plan, _ = transport_subsample(u_a, u_b, matrix, bias, max_exact=max_exact, seed=seed)
    return modes_a[ia], modes_b[ib], plan


def explanation_levels(
    tree_a: Any,
    tree_b: Any,
    leaf_a: np.ndarray,
    leaf_b: np.ndarray,
    plan: np.ndarray,
    cuts: tuple[float, ...] = EXPLANATION_CUTS,
) -> list[dict[str, float]]:
    """The mode correspondence a transport plan carries at coarser cuts of both trees.

    Both trees are pruned (:meth:`~flowmatch.density_tree.DensityTree.coarsened`) at each
    ``cut × max(threshold_a, threshold_b)`` (× 0.1 nats, the persistence noise floor, when
    both thresholds are 0) until both have one mode, and the plan's leaf
    correspondence is read off as in :func:`~flowmatch.matching.matching_from_transport`.
    Fine modes may split the rows differently in the two models while coarser ones agree:
    the list shows at which cut the correspondence holds (a low ``crossing_mass``).

    Parameters
    ----------
    leaf_a : (m_a,) ; leaf_b : (m_b,) leaf of each row of the plan in ``tree_a`` / ``tree_b``.
    plan : (m_a, m_b) transport plan between the mapped A rows and the B rows.

    Returns
    -------
    list of dicts: ``min_prominence`` (nats), ``n_modes_a``, ``n_modes_b``, ``pairs`` (the
    reported mode pairs) and ``crossing_mass``, from the finest cut to the coarsest.
    """
    # a tree that kept every peak (threshold 0) is cut from the persistence noise floor on
    base = max(float(tree_a.threshold_), float(tree_b.threshold_)) or NOISE_FLOOR
    out: list[dict[str, float]] = []
    for cut in cuts:
        ca, cb = tree_a.coarsened(cut * base), tree_b.coarsened(cut * base)
        coarse_a, coarse_b = tree_a.coarse_modes(ca)[leaf_a], tree_b.coarse_modes(cb)[leaf_b]
        m = matching_from_transport(ca, cb, coarse_a, coarse_b, plan)
        out.append(
            {
                "min_prominence": cut * base,
                "n_modes_a": ca.n_modes_,
                "n_modes_b": cb.n_modes_,
                "pairs": len(m.leaf_pairs),
                "crossing_mass": float(m.crossing_mass),
            }
        )
        if ca.n_modes_ == cb.n_modes_ == 1:
            break
    return out


def balance(
    u_a: Tensor,
    u_b: Tensor,
    rotation: Tensor,
    trees: tuple,
    settings: TranslateSettings,
    *,
    anchors: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor, TreeMatching, bool, list[dict[str, float]]]:
    """Stage 5: when at most ``max_crossing`` of the transported mass leaves the mode pairs the
    map carries, ``balance_steps`` similarity steps of OT refinement that give paired modes
    equal mass on both sides. Returns ``(matrix, bias, mode correspondence, balanced, the
    correspondence at coarser cuts of the trees)`` (:func:`explanation_levels`)."""
    s, (tree_a, tree_b, _, modes_a, modes_b) = settings, trees
    matrix, bias = rotation, torch.zeros(rotation.shape[0], dtype=torch.float64)
    plan = _mode_plan(trees, u_a, u_b, matrix, bias, s.max_exact, seed)
    final = matching_from_transport(tree_a, tree_b, *plan)
    if not (s.balance_steps and final.crossing_mass <= s.max_crossing and len(final.leaf_pairs)):
        return matrix, bias, final, False, explanation_levels(tree_a, tree_b, *plan)
    lookup = [np.full(len(t.leaves_) + 1, -1, dtype=np.int64) for t in trees[:2]]
    for side in (0, 1):
        lookup[side][final.leaf_pairs[:, side]] = np.arange(len(final.leaf_pairs))
    groups = (lookup[0][modes_a], lookup[1][modes_b])
    matrix, bias = refine_map(
        u_a,
        u_b,
        matrix,
        bias,
        n_iter=s.balance_steps,
        kind="similarity",
        max_exact=s.max_exact,
        seed=seed,
        groups=groups,
        group_penalty=s.group_penalty,
        anchors=anchors,
        anchor_weight=s.anchor_weight,
    )
    plan = _mode_plan(trees, u_a, u_b, matrix, bias, s.max_exact, seed)
    final = matching_from_transport(tree_a, tree_b, *plan)
    return matrix, bias, final, True, explanation_levels(tree_a, tree_b, *plan)


def _pairs(pairs: Any, n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Known pairs ``(idx_a, idx_b)`` as checked int arrays."""
    if pairs is None:
        return None
    pa, pb = (np.asarray(p, dtype=np.int64).reshape(-1) for p in pairs)
    if len(pa) != len(pb):
        raise ValueError(f"pairs has {len(pa)} A indices but {len(pb)} B indices")
    if pa.size and (pa.min() < 0 or pa.max() >= n_a or pb.min() < 0 or pb.max() >= n_b):
        raise ValueError("pairs holds row indices outside the A or B activations")
    return pa, pb


def _unresolved_message(kept: str, resolved: dict[str, Any], s: TranslateSettings) -> str | None:
    """The :class:`UnresolvedSelection` warning's text (None: the selection was resolved)."""
    parts, final = [], resolved.get("final", {})
    if not resolved["resolved"]:
        pools = resolved["extra_starts"]
        parts.append(
            f"the best finalist leads the best one holding another map by "
            f"{resolved['leads'][-1]:.1%} of its CSLS, under resolve_margin="
            f"{s.resolve_margin:g}, after {pools} extra anchor pool{'' if pools == 1 else 's'}"
        )
    if final.get("decided_by") == "density":
        parts.append(
            f"at the full width the CSLS's pick {final['csls_pick']!r} led {final['rival']!r} "
            f"by {final['lead_z']:.2f} standard errors (under lead_z={s.lead_z:g}), so B's flow "
            "density chose between them"
        )
    if not parts:
        return None
    return (
        f"translate: the selection is unresolved (kept start {kept!r}): {'; '.join(parts)}. "
        "The map may be wrong (on the embedding benchmark most such splits were at chance); "
        "more rows per side or another seed may resolve it (Translation.info_['resolution'])."
    )


def mapped_log_likelihood(
    u_a: Tensor,
    coords_b: MapCoordinates,
    autoencoder_b: Any,
    *,
    max_rows: int = 2000,
    seed: int = 0,
) -> Callable[[Tensor], float]:
    """A map's score by B's density: ``rot`` (p, p) → the mean log-likelihood, under
    ``autoencoder_b``'s flow density, of A's map coordinates ``u_a`` (n, p) mapped by ``rot``
    and carried back to B's activations (a seeded subsample of at most ``max_rows`` rows)."""
    rows = torch.as_tensor(subsample(len(u_a), max_rows, np.random.default_rng(seed)))
    u = torch.as_tensor(u_a, dtype=torch.float64)[rows]

    def score(rot: Tensor) -> float:
        x = coords_b.inverse_transform(u @ torch.as_tensor(rot, dtype=torch.float64).T)
        return float(autoencoder_b.log_prob(x.float()).mean())

    return score


def translate(
    a: Any,
    b: Any,
    pairs: Any = None,
    *,
    data_a: Any = None,
    data_b: Any = None,
    settings: TranslateSettings | None = None,
    autoencoder_params: dict[str, Any] | None = None,
    tree_params: dict[str, Any] | None = None,
    match_params: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> Translation:
    """Fit a translation from model A's activations to model B's without paired rows.

    Parameters
    ----------
    a, b : activations (ActivationSet / Tensor / ndarray (n, d)), then a flow autoencoder is
        fitted to each; or an :class:`~flowmatch.store.ActivationStore` (its autoencoder is
        fitted on every row, streamed; the rest on ``store_rows`` of them); or fitted
        FlowAutoencoders (then ``data_a``/``data_b`` give the rows, default: samples of their
        densities). The two sets need not share inputs.
    pairs : optional known correspondences ``(idx_a, idx_b)`` into the rows of A and B: extra
        anchors for the starting maps and the balancing steps.
    settings : :class:`~flowmatch.settings.TranslateSettings`; ``**options`` override its
        fields by name (e.g. ``translate(a, b, n_refine=50)``).
    autoencoder_params, tree_params, match_params : passed to FlowAutoencoder (default: a
        16-dimensional latent, at most what a side holds), DensityTree (default: modes of
        prominence ≥ 1 nat, built on at most 20,000 rows) and match_trees.
    seed : seeds every stage.

    Returns
    -------
    Translation  # callable (n, d_a) → (n, d_b)
    """
    s = (settings or TranslateSettings()).replace(**options)
    clock, info = time.perf_counter(), {"seconds": {}}
    bar = tqdm(total=5, desc="translate", disable=not progress, leave=False)

    def done(stage: str) -> None:
        nonlocal clock
        info["seconds"][stage] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
        bar.update(1)

    tp = {**_TREE_DEFAULTS, **(tree_params or {})}
    if "n_modes" in (tree_params or {}) and "min_prominence" not in (tree_params or {}):
        tp.pop("min_prominence")
    ae_params = {"progress": progress, **_AE_DEFAULTS, **(autoencoder_params or {})}
    ae_a, xa = _autoencoder(a, data_a, ae_params, seed, "a", s.store_rows)
    ae_b, xb = _autoencoder(b, data_b, ae_params, seed + 1, "b", s.store_rows)
    order_a, order_b = canonical_order(xa), canonical_order(xb)
    xa, xb = xa[torch.as_tensor(order_a)], xb[torch.as_tensor(order_b)]
    known = _pairs(pairs, len(xa), len(xb))
    if known is not None:  # into the canonical order
        known = (np.argsort(order_a)[known[0]], np.argsort(order_b)[known[1]])
    done("autoencoders")
    coords = fit_coordinates(xa, xb, s.n_components)
    ua, ub = coords[0].transform(xa), coords[1].transform(xb)
    trees = fit_trees(ae_a, xa, ae_b, xb, {"tree": tp, "match": match_params or {}}, seed)
    done("coordinates and trees")
    p0 = search_widths(ua.shape[1], s.search_components)[0]
    starts = starting_maps(
        ua[:, :p0],
        ub[:, :p0],
        s,
        trees=trees,
        pairs=known,
        full=(ua, ub),
        seed=seed,
        progress=progress,
    )
    done("starting maps")
    more_starts = None  # the extra anchor pools, drawn only when the finalists are unresolved
    if "clusters" in s.starts and s.extra_anchor_pools:
        more_starts = partial(
            pool_starts, ua[:, :p0], ub[:, :p0], s, pairs=known, full=(ua, ub), seed=seed
        )
    density = mapped_log_likelihood(ua, coords[1], ae_b, seed=seed)
    kept, rot, scores, resolved = refine_and_select(
        ua, ub, starts, s, seed=seed, progress=progress, more_starts=more_starts, density=density
    )
    message = _unresolved_message(kept, resolved, s)
    if message is not None:
        warnings.warn(message, UnresolvedSelection, stacklevel=2)
    done("refine and select")
    anchors = None if known is None else (ua[known[0]], ub[known[1]])
    matrix, bias, final, balanced, levels = balance(
        ua, ub, rot, trees, s, anchors=anchors, seed=seed
    )
    done("balancing and explanation")
    bar.close()
    info.update(
        n_components=int(coords[0].n_components),
        rows={"a": len(xa), "b": len(xb)},
        explained_variance=[float(c.explained_variance_ratio_.sum()) for c in coords],
        n_modes_a=len(trees[0].leaves_),
        n_modes_b=len(trees[1].leaves_),
        structural_leaf_pairs=trees[2].leaf_pairs.tolist(),
        n_anchor_pairs=0 if known is None else len(known[0]),
        initialisation=kept,
        scores=scores,
        resolution=resolved,
        crossing_mass=float(final.crossing_mass),
        explanation_levels=levels,
        balanced=balanced,
        settings=asdict(s),
        seed=seed,
    )
    return Translation(
        coords[0],
        coords[1],
        matrix,
        bias,
        autoencoder_a=ae_a,
        autoencoder_b=ae_b,
        matching=final,
        tree_a=trees[0],
        tree_b=trees[1],
        info=info,
    )
