"""``translate(a, b)``: carry model A's activations into model B's activation space without
paired data.

Pipeline: fit a flow autoencoder per model → density tree of each latent →
:func:`~flowmatch.matching.match_trees` → starting maps (the matched mode centroids, and
Gromov–Wasserstein couplings of subsamples) → optimal-transport refinement of a similarity map
between the two sides' map coordinates → the start whose refined map has the lowest transport
cost is kept.

The map acts on each autoencoder's k leading principal coordinates by default
(``space="pca"``: ``x_a ↦ pca⁻¹_b(M · pca_a(x_a) + c)``), or on the flow latents
(``space="latent"``: ``x_a ↦ decode_b(M · encode_a(x_a) + c)``). On the zoo pairs the principal
coordinates give the better maps and the more reliable choice between starts (README, "translate").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowmatch import metrics
from flowmatch._io import ArtefactError, load_state, save_state
from flowmatch._validation import as_matrix, check_fitted
from flowmatch.alignment import (
    fit_similarity,
    refine_map,
    transport_cost,
    transport_subsample,
)
from flowmatch.gromov import gw_initial_map
from flowmatch.matching import TreeMatching, match_trees, matching_from_transport
from flowmatch.outputs import staged_folder

__all__ = ["Translation", "TranslationScore", "translate"]

_SPACES = ("pca", "latent")


@dataclass(frozen=True)
class TranslationScore:
    """Held-out scores of a translation (see :mod:`flowmatch.metrics`)."""

    r2: float
    cosine: float
    top1: float
    stitched_accuracy: float | None
    n: int


class Translation:
    """A map from model A's activation space to model B's: ``out_b(in_a(x) @ M.T + c)``.

    ``space="pca"``: ``in_a`` / ``out_b`` are the autoencoders' k leading principal coordinates
    and their inverse (:meth:`FlowAutoencoder.principal_coordinates`); ``space="latent"``: their
    ``encode`` / ``decode``.

    Attributes
    ----------
    autoencoder_a_, autoencoder_b_ : the fitted :class:`~flowmatch.FlowAutoencoder` of each side.
    matrix_ : Tensor  # (k_b, k_a) map between the two sides' coordinates
    bias_ : Tensor  # (k_b,)
    space_ : str  # "pca" or "latent"
    matching_ : TreeMatching | None  # which density mode of A the map carries onto which of B
        (from :func:`translate`: transport of the mapped rows, ``method="transport"``; the
        structural tree matching that gave one of the starts is in ``info_``)
    tree_a_, tree_b_ : fitted density trees (None after :meth:`load`).
    info_ : dict  # diagnostics: leaf counts, refinement settings, anchors used
    """

    def __init__(
        self,
        autoencoder_a: Any,
        autoencoder_b: Any,
        matrix: Tensor,
        bias: Tensor,
        matching: TreeMatching | None = None,
        tree_a: Any = None,
        tree_b: Any = None,
        info: dict[str, Any] | None = None,
        space: str = "latent",
    ) -> None:
        if space not in _SPACES:
            raise ValueError(f"space must be one of {_SPACES}, got {space!r}")
        self.space_ = space
        self.autoencoder_a_ = autoencoder_a
        self.autoencoder_b_ = autoencoder_b
        self.matrix_ = torch.as_tensor(matrix, dtype=torch.float64)
        self.bias_ = torch.as_tensor(bias, dtype=torch.float64)
        self.matching_ = matching
        self.tree_a_ = tree_a
        self.tree_b_ = tree_b
        self.info_ = dict(info or {})

    @property
    def d_a(self) -> int:
        return int(self.autoencoder_a_.d_in_)

    @property
    def d_b(self) -> int:
        return int(self.autoencoder_b_.d_in_)

    def latent(self, x_a: Any) -> Tensor:
        """A's activations in B's map coordinates (``space_``)  # (n, d_a) → (n, k_b)."""
        x = as_matrix(x_a, "x_a", dim=self.d_a)
        ae = self.autoencoder_a_
        z_a = (ae.principal_coordinates(x) if self.space_ == "pca" else ae.encode(x)).double()
        return z_a @ self.matrix_.T + self.bias_

    def __call__(self, x_a: Any) -> Any:
        """Translate ``x_a`` (n, d_a) → (n, d_b); returns NumPy for NumPy input, else torch."""
        ae, z = self.autoencoder_b_, self.latent(x_a).float()
        out = (ae.from_principal_coordinates(z) if self.space_ == "pca" else ae.decode(z)).float()
        return out.numpy() if isinstance(x_a, np.ndarray) else out

    def inverse(self) -> Translation:
        """The translation from B to A (pseudo-inverse of the latent map)."""
        inv = torch.linalg.pinv(self.matrix_)
        matching = None
        if self.matching_ is not None:
            m = self.matching_
            matching = TreeMatching(
                leaf_pairs=m.leaf_pairs[:, ::-1].copy(),
                confidence=m.confidence,
                node_pairs=tuple((b, a) for a, b in m.node_pairs),
                coupling=m.coupling.T.copy(),
                cost=m.cost,
                n_candidates=m.n_candidates,
                method=m.method,
            )
        return Translation(
            self.autoencoder_b_,
            self.autoencoder_a_,
            inv,
            -inv @ self.bias_,
            matching,
            self.tree_b_,
            self.tree_a_,
            {**self.info_, "inverted": not self.info_.get("inverted", False)},
            space=self.space_,
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
        """Write a folder: ``translation.safetensors``, both autoencoders and a marker.

        The folder is written beside ``path`` and then replaces it (old aside, new in, old
        deleted); an existing ``path`` must be an empty folder or a Translation folder written
        by flowmatch with nothing else in it (:mod:`flowmatch.outputs`).
        """
        with staged_folder(path, "Translation") as tmp:
            tensors = {"matrix": self.matrix_, "bias": self.bias_}
            meta: dict[str, Any] = {"info": self.info_, "space": self.space_}
            if self.matching_ is not None:
                m = self.matching_
                tensors.update(
                    leaf_pairs=torch.as_tensor(np.asarray(m.leaf_pairs, dtype=np.int64)),
                    confidence=torch.as_tensor(np.asarray(m.confidence, dtype=np.float64)),
                    coupling=torch.as_tensor(np.asarray(m.coupling, dtype=np.float64)),
                )
                meta["matching"] = {
                    "cost": float(m.cost),
                    "n_candidates": int(m.n_candidates),
                    "method": m.method,
                    "node_pairs": [[str(a), str(b)] for a, b in m.node_pairs],
                }
            save_state(tmp / "translation.safetensors", tensors, meta, kind="Translation")
            self.autoencoder_a_.save(tmp / "autoencoder_a.safetensors")
            self.autoencoder_b_.save(tmp / "autoencoder_b.safetensors")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Translation:
        """Read a folder written by :meth:`save` (trees are not stored).

        Every entry is checked; a bad folder raises ``ValueError`` naming the file and entry.
        """
        from flowmatch.autoencoder import FlowAutoencoder

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no translation folder at {path}")
        if not path.is_dir():
            raise ArtefactError(
                f"{path} is a file; a translation folder (Translation.save) is needed"
            )
        art = load_state(path / "translation.safetensors", "Translation")
        art.check_tensor_names({"matrix", "bias", "leaf_pairs", "confidence", "coupling"})
        ae_a = FlowAutoencoder.load(path / "autoencoder_a.safetensors")
        ae_b = FlowAutoencoder.load(path / "autoencoder_b.safetensors")
        k_a, k_b = int(ae_a.latent_dim_), int(ae_b.latent_dim_)
        matrix = art.tensor("matrix", torch.float64, (k_b, k_a))
        bias = art.tensor("bias", torch.float64, (k_b,))
        space = art.field("space", str) if "space" in art.meta or art.version else "latent"
        if space not in _SPACES:
            raise art.error(f"metadata entry 'space' must be one of {_SPACES}, got {space!r}")
        info = art.meta.get("info", {})
        if not isinstance(info, dict):
            raise art.error("metadata entry 'info' must be an object")
        matching = _load_matching(art) if "leaf_pairs" in art.tensors else None
        return cls(ae_a, ae_b, matrix, bias, matching, info=info, space=space)

    def __repr__(self) -> str:
        k_b, k_a = self.matrix_.shape
        n = 0 if self.matching_ is None else len(self.matching_.leaf_pairs)
        return (
            f"Translation(d_a={self.d_a}, d_b={self.d_b}, k_a={k_a}, k_b={k_b}, "
            f"space={self.space_!r}, matched_modes={n})"
        )


def _load_matching(art: Any) -> TreeMatching:
    """The stored :class:`TreeMatching` of a Translation file, every entry checked."""
    mm = art.field("matching", dict)
    pairs = art.tensor("leaf_pairs", torch.int64, (None, 2))
    m = len(pairs)
    confidence = art.tensor("confidence", "float", (m,))
    coupling = art.tensor("coupling", "float", (None, None))
    node_pairs = art.field("node_pairs", list, mm)
    if not all(isinstance(p, list) and len(p) == 2 for p in node_pairs):
        raise art.error("'matching' entry 'node_pairs' must be a list of pairs")
    return TreeMatching(
        leaf_pairs=pairs.numpy(),
        confidence=confidence.double().numpy(),
        node_pairs=tuple(tuple(p) for p in node_pairs),
        coupling=coupling.double().numpy(),
        cost=float(art.field("cost", (int, float), mm)),
        n_candidates=art.field("n_candidates", int, mm),
        method=art.field("method", str, mm),
    )


# ---------------------------------------------------------------------- fitting helpers
def _autoencoder_and_data(
    side: Any, data: Any, params: dict[str, Any], seed: int, name: str
) -> tuple[Any, Tensor]:
    """A fitted autoencoder and the rows its tree is built on."""
    from flowmatch.autoencoder import FlowAutoencoder

    if hasattr(side, "encode") and hasattr(side, "latent_log_prob"):
        check_fitted(side, "latent_dim_")
        if data is None:
            return side, side.sample(params.get("n_samples", 5000)).float()
        return side, as_matrix(data, f"data_{name}", dim=int(side.d_in_))
    x = as_matrix(side, name, min_samples=2)
    ae = FlowAutoencoder(**{"seed": seed, **params}).fit(x)
    return ae, x


def _standardise(z: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and one global scale: ``u = (z − mean) / scale`` has unit mean variance per
    coordinate. Relative variances are kept — whitening instead would lift the weak, noisy
    directions to the weight of the strong ones in every transport cost."""
    mu = z.mean(0)
    return mu, ((z - mu) ** 2).sum(1).mean().sqrt() / z.shape[1] ** 0.5


def _branch_centroids(u: Tensor, groups: np.ndarray, n: int) -> Tensor:
    """Mean of the rows of each matched branch  # (rows, k), (rows,) → (n, k)"""
    return torch.stack([u[torch.as_tensor(np.flatnonzero(groups == g))].mean(0) for g in range(n)])


def _matching_under_map(
    tree_a: Any,
    tree_b: Any,
    latents: tuple[Tensor, Tensor],
    coords: tuple[Tensor, Tensor],
    matrix: Tensor,
    bias: Tensor,
    max_exact: int,
    seed: int,
) -> TreeMatching:
    """Which mode of A the kept map carries onto which mode of B: the exact OT plan of
    :func:`~flowmatch.alignment.transport_cost` (same subsamples), summed per pair of leaves."""
    ia, ib, plan, _ = transport_subsample(*coords, matrix, bias, max_exact=max_exact, seed=seed)
    leaf_a = tree_a.predict(latents[0][ia].numpy())
    leaf_b = tree_b.predict(latents[1][ib].numpy())
    return matching_from_transport(tree_a, tree_b, leaf_a, leaf_b, plan)


def _agreement(matrix: Tensor, bias: Tensor, ca: Tensor, cb: Tensor) -> float:
    """Fraction of matched modes whose mapped A centroid lies nearest to its partner in B."""
    nearest = torch.cdist(ca @ matrix.T + bias, cb).argmin(1)
    return float((nearest == torch.arange(len(cb))).double().mean())


def _canonical(x: Tensor) -> np.ndarray:
    """Lexicographic row order, so that results do not depend on the order rows come in."""
    return np.lexsort(x.double().numpy().T[::-1])


def _groups(tree: Any, z: Tensor, matched: np.ndarray) -> np.ndarray:
    """Per row: index of its matched leaf pair, or −1 when its leaf is unmatched."""
    leaf = np.asarray(tree.predict(z.numpy()))
    lookup = np.full(max(len(tree.leaves_), 1), -1, dtype=np.int64)
    lookup[matched] = np.arange(len(matched))
    return lookup[leaf]


_AE_DEFAULTS: dict[str, Any] = {"explained_variance": 0.95, "min_latent_dim": 16}
"""A wider latent than the autoencoder's own default (0.9, floor 10): the latent map cannot be
better than a paired affine map between the two latents, and at k = 10 that ceiling is 0.91 of
the full supervised stitching on mnist1d-cnn (0.97 at k = 16)."""

_TREE_DEFAULTS: dict[str, Any] = {"min_prominence": 1.0}
"""Modes whose log-density peak rises less than 1 nat (a factor e) above the saddle where they
merge are treated as noise; the criterion does not change under rotation, translation or global
scaling of a latent."""


def translate(
    a: Any,
    b: Any,
    pairs: Any = None,
    *,
    data_a: Any = None,
    data_b: Any = None,
    autoencoder_params: dict[str, Any] | None = None,
    tree_params: dict[str, Any] | None = None,
    match_params: dict[str, Any] | None = None,
    n_refine: int = 10,
    max_exact: int = 1500,
    group_penalty: float = 0.0,
    anchor_weight: float = 10.0,
    balance_steps: int = 10,
    max_crossing: float = 0.2,
    n_gw_starts: int = 6,
    space: str = "pca",
    seed: int = 0,
    progress: bool = True,
) -> Translation:
    """Fit a translation from model A's activations to model B's.

    Parameters
    ----------
    a, b : fitted FlowAutoencoders, or activations (ActivationSet / Tensor / ndarray (n, d)) —
        then a default autoencoder is fitted to each. The two sets need not share inputs.
    pairs : optional known correspondences ``(idx_a, idx_b)`` into the rows of ``data_a`` /
        ``data_b`` (or of ``a``/``b`` when those are activations), used as weighted anchors.
    data_a, data_b : rows to build the density trees on when ``a``/``b`` are autoencoders
        (default: samples from the autoencoder's own density).
    autoencoder_params, tree_params, match_params : passed to FlowAutoencoder, DensityTree and
        match_trees. With ``latent_dim="auto"`` (default; here 0.95 of the variance, at least
        16 coordinates) B's latent gets the width chosen for A; trees keep modes of prominence
        ≥ 1 nat unless told otherwise.
    n_refine, max_exact, group_penalty, anchor_weight : OT refinement (see
        :func:`~flowmatch.alignment.refine_map`).
    balance_steps, max_crossing : when the kept map carries the modes of A one-to-one onto
        modes of B — at most ``max_crossing`` of the transported mass leaves the mode pairs
        (:func:`~flowmatch.matching.matching_from_transport`) — ``balance_steps`` more
        similarity steps reweight A's rows so that paired modes hold equal mass on both sides
        (and, with ``group_penalty`` > 0, penalise transport between modes). This removes the
        bias that unequal mode proportions in the two samples put on a balanced transport map;
        where modes are not clean units (the zoo layers: 28–90% crossing mass) it is skipped.
    n_gw_starts : extra starting maps from Gromov–Wasserstein couplings of subsamples
        (:func:`~flowmatch.gromov.gw_initial_map`). Every start (the tree matching's map first)
        gets ``n_refine`` similarity steps; the one with the lowest transport cost to B's rows
        is kept (``info_`` records the costs and the winner). 0: the tree matching alone.
    space : where the map acts: ``"pca"`` (default), the k leading principal coordinates of
        each autoencoder (before its flow), or ``"latent"``, the flow latents. Either way
        each side is centred and divided by one global scale, never whitened.
    seed : seeds every stage.

    Returns
    -------
    Translation  # callable (n, d_a) → (n, d_b)
    """
    from flowmatch.density_tree import DensityTree

    if space not in _SPACES:
        raise ValueError(f"space must be one of {_SPACES}, got {space!r}")
    ae_params = {"progress": progress, **_AE_DEFAULTS, **(autoencoder_params or {})}
    steps = tqdm(total=5, desc="translate", disable=not progress, leave=False)
    ae_a, xa = _autoencoder_and_data(a, data_a, ae_params, seed, "a")
    if ae_params.get("latent_dim", "auto") == "auto":  # both latents get A's chosen width
        ae_params["latent_dim"] = int(ae_a.latent_dim_)
    ae_b, xb = _autoencoder_and_data(b, data_b, ae_params, seed + 1, "b")
    steps.update(1)
    order_a, order_b = _canonical(xa), _canonical(xb)
    xa, xb = xa[torch.as_tensor(order_a)], xb[torch.as_tensor(order_b)]
    za, zb = ae_a.encode(xa).double(), ae_b.encode(xb).double()
    tp = {"seed": seed, **_TREE_DEFAULTS, **(tree_params or {})}
    tree_a = DensityTree(**tp).fit(ae_a, xa)
    tree_b = DensityTree(**tp).fit(ae_b, xb)
    matching = match_trees(tree_a, tree_b, seed=seed, **(match_params or {}))
    steps.update(1)
    if space == "pca":
        va, vb = ae_a.principal_coordinates(xa).double(), ae_b.principal_coordinates(xb).double()
    else:
        va, vb = za, zb
    (mu_a, s_a), (mu_b, s_b) = _standardise(va), _standardise(vb)
    ua, ub = (va - mu_a) / s_a, (vb - mu_b) / s_b
    ia, ib = matching.leaf_pairs[:, 0], matching.leaf_pairs[:, 1]
    groups = (_groups(tree_a, za, ia), _groups(tree_b, zb, ib))
    ca, cb = _branch_centroids(ua, groups[0], len(ia)), _branch_centroids(ub, groups[1], len(ib))
    weight = tree_a.mode_masses()[ia] * np.maximum(matching.confidence, 1e-3)
    anchors = None
    if pairs is not None:
        pa, pb = (np.asarray(p, dtype=np.int64).reshape(-1) for p in pairs)
        if len(pa) != len(pb):
            raise ValueError(f"pairs has {len(pa)} A indices but {len(pb)} B indices")
        if pa.size and (pa.min() < 0 or pa.max() >= len(xa) or pb.min() < 0 or pb.max() >= len(xb)):
            raise ValueError("pairs holds row indices outside the A or B activations")
        pa, pb = np.argsort(order_a)[pa], np.argsort(order_b)[pb]  # into the canonical order
        anchors = (ua[pa], ub[pb])
        ca, cb = torch.cat([ca, anchors[0]]), torch.cat([cb, anchors[1]])
        weight = np.concatenate([weight, np.full(len(pa), weight.mean())])
    inits = {"tree": fit_similarity(ca, cb, weight)}
    for start in range(n_gw_starts):
        matrix, bias, _ = gw_initial_map(va, vb, ua, ub, seed=seed + start)
        inits[f"gw{start}"] = (matrix, bias)
    steps.update(1)
    common = dict(max_exact=max_exact, seed=seed, anchors=anchors, anchor_weight=anchor_weight)
    maps, costs = {}, {}
    for name, (matrix, bias) in inits.items():  # same similarity refinement for every start
        maps[name] = refine_map(ua, ub, matrix, bias, n_iter=n_refine, kind="similarity", **common)
        costs[name] = transport_cost(ua, ub, *maps[name], max_exact=max_exact, seed=seed)
    chosen = min(costs, key=costs.__getitem__)
    matrix, bias = maps[chosen]
    agree = _agreement(matrix, bias, ca[: len(ia)], cb[: len(ib)])
    final = _matching_under_map(tree_a, tree_b, (za, zb), (ua, ub), matrix, bias, max_exact, seed)
    crossing = final.cost
    balanced = bool(balance_steps) and crossing <= max_crossing and len(final.leaf_pairs) > 0
    if balanced:
        fa, fb = final.leaf_pairs[:, 0], final.leaf_pairs[:, 1]
        by_mode = dict(groups=(_groups(tree_a, za, fa), _groups(tree_b, zb, fb)))
        matrix, bias = refine_map(
            ua,
            ub,
            matrix,
            bias,
            n_iter=balance_steps,
            kind="similarity",
            group_penalty=group_penalty,
            **common,
            **by_mode,
        )
        final = _matching_under_map(
            tree_a, tree_b, (za, zb), (ua, ub), matrix, bias, max_exact, seed
        )
    steps.update(1)
    steps.close()
    lat_matrix = matrix * (s_b / s_a)
    lat_bias = bias * s_b + mu_b - mu_a @ lat_matrix.T
    info = {
        "space": space,
        "n_modes_a": len(tree_a.leaves_),
        "n_modes_b": len(tree_b.leaves_),
        "n_matched": len(matching.leaf_pairs),
        "n_anchor_pairs": 0 if anchors is None else len(anchors[0]),
        "n_refine": n_refine,
        "max_exact": max_exact,
        "group_penalty": group_penalty,
        "balance_steps": balance_steps,
        "crossing_mass": crossing,
        "balanced": balanced,
        "initialisation": chosen,
        "tree_agreement": agree,
        "structural_leaf_pairs": matching.leaf_pairs.tolist(),
        "structural_cost": matching.cost,
        "transport_costs": costs,
        "seed": seed,
    }
    return Translation(ae_a, ae_b, lat_matrix, lat_bias, final, tree_a, tree_b, info, space=space)
