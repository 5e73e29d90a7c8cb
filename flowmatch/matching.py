"""Match two density trees using only basis-invariant information.

Each tree is summarised by its significant leaves (density modes): their masses, their
prominences, the ultrametric (level at which two modes merge) and the distances between mode
centroids measured in the tree's own *whitened* latent. Whitening each latent by its own
covariance turns an unknown invertible linear relation between the two latents into an
orthogonal one, under which centroid distances are preserved — so distances become comparable
across models without any shared coordinates.

The leaf assignment minimises a fused Gromov–Wasserstein-type objective over injections
π from the smaller leaf set into the larger one::

    J(π) = w_dist · min_s mean_ij (D_a[i,j] − s · D_b[πi,πj])²
         + w_ultra · mean_ij (U_a[i,j] − U_b[πi,πj])²
         + w_mass · mean_i |m_a[i] − m_b[πi]| / mean(m)
         + w_prom · mean_i |p_a[i] − p_b[πi]|

solved exactly by enumeration when small, otherwise by 2-opt quadratic assignment from a
distance-profile start and random starts (:mod:`flowmatch.qap`), followed for small trees by
pairwise-swap descent on J. Confidences come
from a Boltzmann weighting of all distinct candidate assignments found.

References
----------
Vayer, Chapel, Flamary, Tavenard, Courty. "Optimal Transport for structured data with application
on graphs" (fused Gromov–Wasserstein), ICML 2019.
Mémoli. "Gromov–Wasserstein distances and the metric approach to object matching",
Foundations of Computational Mathematics 2011 (distance-profile lower bound).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

import networkx as nx
import numpy as np
from scipy.optimize import linear_sum_assignment

from flowmatch.qap import two_opt

__all__ = [
    "MATCHING_FORMAT",
    "TreeMatching",
    "TreeSummary",
    "match_trees",
    "matching_from_transport",
    "summarise_tree",
]


class _Tree(Protocol):
    leaves_: list
    tree_: nx.DiGraph
    z_: Any

    def mode_centroids(self) -> np.ndarray: ...
    def mode_masses(self) -> np.ndarray: ...
    def ultrametric(self) -> np.ndarray: ...


@dataclass(frozen=True)
class TreeSummary:
    """Basis-invariant description of a pruned density tree (leaves in ``leaves_`` order).

    Attributes
    ----------
    distances : ndarray  # (m, m) whitened centroid distances / their mean off-diagonal value
    ultrametric : ndarray  # (m, m) merge depths below the highest peak, scaled to [0, 1]
    masses : ndarray  # (m,) fraction of points per mode
    prominence : ndarray  # (m,) persistence of each mode, scaled by the tree's level range
    """

    distances: np.ndarray
    ultrametric: np.ndarray
    masses: np.ndarray
    prominence: np.ndarray


#: Version of the state :meth:`TreeMatching.to_state` writes (``from_state`` reads it and the
#: unversioned state of earlier Translation files).
MATCHING_FORMAT = 1


@dataclass(frozen=True, init=False)
class TreeMatching:
    """A correspondence between the leaves of two density trees (:func:`match_trees`,
    :func:`matching_from_transport`).

    Attributes
    ----------
    leaf_pairs : ndarray  # (p, 2) int: (index into tree_a.leaves_, index into tree_b.leaves_)
    confidence : ndarray  # (p,) in [0, 1]: weight of candidate assignments that agree
        (a transport matching: the share of the A leaf's mass sent to its partner)
    node_pairs : tuple  # ((node_a, node_b), ...) internal nodes with the same matched leaf set
    coupling : ndarray  # (m_a, m_b) Boltzmann-averaged assignment matrix over candidates
        (a transport matching: share of each A leaf's mass sent to each B leaf)
    n_candidates : int  # distinct assignments evaluated for the confidences
    method : str  # "exhaustive", "qap" (2-opt search) or "transport"
    objective : float | None  # objective J of the chosen assignment (:func:`match_trees`);
        None for a transport matching
    crossing_mass : float | None  # fraction of the transported mass sent outside the pairs
        (:func:`matching_from_transport`); None for a structural matching

    ``cost=`` (the former single field) is still accepted: it fills ``crossing_mass`` of a
    transport matching and ``objective`` of the others, and ``cost`` reads back the one set.
    """

    leaf_pairs: np.ndarray
    confidence: np.ndarray
    node_pairs: tuple
    coupling: np.ndarray
    n_candidates: int
    method: str
    objective: float | None
    crossing_mass: float | None

    def __init__(
        self,
        leaf_pairs: np.ndarray,
        confidence: np.ndarray,
        node_pairs: tuple,
        coupling: np.ndarray,
        n_candidates: int,
        method: str,
        objective: float | None = None,
        crossing_mass: float | None = None,
        *,
        cost: float | None = None,
    ) -> None:
        if cost is not None and method == "transport" and crossing_mass is None:
            crossing_mass = cost
        elif cost is not None and method != "transport" and objective is None:
            objective = cost
        scores = [None if v is None else float(v) for v in (objective, crossing_mass)]
        values = (leaf_pairs, confidence, node_pairs, coupling, n_candidates, method, *scores)
        for f, value in zip(fields(self), values):  # frozen: set once, here
            object.__setattr__(self, f.name, value)

    @property
    def cost(self) -> float:
        """The former single field: ``objective``, or ``crossing_mass`` for a transport
        matching (kept readable while callers move to the two named fields)."""
        value = self.objective if self.objective is not None else self.crossing_mass
        return float("nan") if value is None else value

    def swapped(self) -> TreeMatching:
        """The same correspondence from B's side: pairs ``(b, a)``, coupling transposed."""
        return TreeMatching(
            leaf_pairs=np.asarray(self.leaf_pairs)[:, ::-1].copy(),
            confidence=np.asarray(self.confidence).copy(),
            node_pairs=tuple((b, a) for a, b in self.node_pairs),
            coupling=np.asarray(self.coupling).T.copy(),
            n_candidates=self.n_candidates,
            method=self.method,
            objective=self.objective,
            crossing_mass=self.crossing_mass,
        )

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: the arrays (``leaf_pairs`` int64, ``confidence`` and
        ``coupling`` float64) and a JSON-serialisable document with the other fields and
        ``format`` (:data:`MATCHING_FORMAT`). :meth:`from_state` reads them back."""
        arrays = {
            "leaf_pairs": np.asarray(self.leaf_pairs, dtype=np.int64).reshape(-1, 2),
            "confidence": np.asarray(self.confidence, dtype=np.float64),
            "coupling": np.asarray(self.coupling, dtype=np.float64),
        }
        meta = {
            "format": MATCHING_FORMAT,
            "objective": self.objective,
            "crossing_mass": self.crossing_mass,
            "n_candidates": int(self.n_candidates),
            "method": str(self.method),
            "node_pairs": [[_node_id(a), _node_id(b)] for a, b in self.node_pairs],
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> TreeMatching:
        """The matching :meth:`to_state` described; every entry is checked and a bad one
        raises ``ValueError`` naming it. A document without ``format`` is the state of an
        earlier Translation file (one ``cost`` field, node ids as strings)."""
        version = _state_field(meta, "format", int) if "format" in meta else 0
        if not 0 <= version <= MATCHING_FORMAT:
            raise ValueError(
                f"matching state has format {version}; this flowmatch reads formats up to "
                f"{MATCHING_FORMAT}: upgrade flowmatch to read it"
            )
        pairs = _state_array(arrays, "leaf_pairs", "int", (None, 2))
        confidence = _state_array(arrays, "confidence", "float", (len(pairs),))
        coupling = _state_array(arrays, "coupling", "float", (None, None))
        if len(pairs) and (pairs.min() < 0 or (pairs >= coupling.shape).any()):
            raise ValueError(
                f"matching entry 'leaf_pairs' indexes leaves outside the {coupling.shape} coupling"
            )
        node_pairs = _state_field(meta, "node_pairs", list)
        if not all(isinstance(p, list | tuple) and len(p) == 2 for p in node_pairs):
            raise ValueError("matching entry 'node_pairs' must be a list of pairs")
        method = _state_field(meta, "method", str)
        if version >= 1:
            scores = {k: _state_field(meta, k, (int, float), none=True) for k in _SCORES}
        else:
            scores = {"cost": _state_field(meta, "cost", (int, float))}
        return cls(
            leaf_pairs=pairs,
            confidence=confidence,
            node_pairs=tuple(tuple(p) for p in node_pairs),
            coupling=coupling,
            n_candidates=_state_field(meta, "n_candidates", int),
            method=method,
            **scores,
        )


_SCORES = ("objective", "crossing_mass")


def _node_id(node: Any) -> int | str:
    return int(node) if isinstance(node, int | np.integer) else str(node)


def _state_field(
    meta: Mapping[str, Any], name: str, types: type | tuple[type, ...], *, none: bool = False
) -> Any:
    if name not in meta:
        raise ValueError(f"matching entry {name!r} is missing")
    value = meta[name]
    if value is None and none:
        return None
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        raise ValueError(f"matching entry {name!r} must be {names}, got {value!r}")
    return value


def _state_array(
    arrays: Mapping[str, Any], name: str, kind: str, shape: tuple[int | None, ...]
) -> np.ndarray:
    if name not in arrays:
        raise ValueError(f"matching array {name!r} is missing")
    arr = np.asarray(arrays[name])
    ok_kind = arr.dtype.kind in ("iu" if kind == "int" else "f")
    if not ok_kind or arr.ndim != len(shape):
        raise ValueError(f"matching array {name!r} must be a {len(shape)}-D {kind} array")
    if any(s is not None and s != n for s, n in zip(shape, arr.shape)):
        raise ValueError(f"matching array {name!r} has shape {arr.shape}, expected {shape}")
    if kind == "float" and not np.isfinite(arr).all():
        raise ValueError(f"matching array {name!r} holds NaN or infinite values")
    return arr.astype(np.int64 if kind == "int" else np.float64)


def _whiten(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening matrix W (k, k) with cov(z W) = I (eigenvalues floored)."""
    mu = z.mean(0)
    cov = np.cov(z - mu, rowvar=False).reshape(z.shape[1], z.shape[1])
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, 1e-8 * max(vals.max(), 1e-300))
    return mu, vecs / np.sqrt(vals)


def _centroids(tree: _Tree, space: str) -> np.ndarray:
    if space == "activation":
        cx = [tree.tree_.nodes[n].get("centroid_x") for n in tree.leaves_]
        if all(c is not None for c in cx):
            return np.stack([np.asarray(c, dtype=np.float64) for c in cx])
    return np.asarray(tree.mode_centroids(), dtype=np.float64)


def summarise_tree(tree: _Tree, space: str = "activation") -> TreeSummary:
    """Basis-invariant summary of a fitted :class:`~flowmatch.DensityTree`.

    ``space`` says where centroid distances are measured:

    * ``"activation"`` (default): mode centroids in the model's activation space, when the tree
      has them. Distances there do not depend on the basis, nor on how the flow warps the
      latent; the normalisation by their mean removes the global scale.
    * ``"latent"``: centroids in the latent (a rotation and global scale of PCA coordinates,
      then the flow).
    * ``"whitened"``: latent centroids after whitening by the latent covariance — invariant to
      any linear map, but noisy directions are amplified.
    """
    if space not in ("activation", "latent", "whitened"):
        raise ValueError(f"space must be 'activation', 'latent' or 'whitened', got {space!r}")
    cent = _centroids(tree, space)
    if space == "whitened":
        mu, w = _whiten(np.asarray(tree.z_, dtype=np.float64))
        cent = (cent - mu) @ w
    d = np.linalg.norm(cent[:, None] - cent[None], axis=-1)
    m = len(cent)
    off = d[~np.eye(m, dtype=bool)]
    d = d / (off.mean() if off.size and off.mean() > 0 else 1.0)
    ultra = np.asarray(tree.ultrametric(), dtype=np.float64)
    top, low = ultra.max(), ultra.min()
    span = top - low if top > low else 1.0
    ultra = (top - ultra) / span
    prom = np.array([tree.tree_.nodes[n]["prominence"] for n in tree.leaves_], dtype=np.float64)
    prom = np.where(np.isfinite(prom), prom, span) / span
    return TreeSummary(d, ultra, np.asarray(tree.mode_masses(), dtype=np.float64), prom)


def _objective(
    sa: TreeSummary, sb: TreeSummary, perms: np.ndarray, weights: dict[str, float]
) -> np.ndarray:
    """J for each injection in ``perms`` (c, m_a) — row i holds πi ∈ [0, m_b)."""
    ix = perms[:, :, None], perms[:, None, :]
    db = sb.distances[ix]  # (c, m_a, m_a)
    # the relative scale of the two sets of distances is fitted per assignment (closed form),
    # so the term does not depend on which modes the other tree happens to have
    scale = (sa.distances[None] * db).sum((1, 2)) / np.maximum((db**2).sum((1, 2)), 1e-300)
    j = weights["dist"] * ((sa.distances[None] - scale[:, None, None] * db) ** 2).mean((1, 2))
    j += weights["ultra"] * ((sa.ultrametric[None] - sb.ultrametric[ix]) ** 2).mean((1, 2))
    mscale = max(sa.masses.mean(), 1e-12)
    j += weights["mass"] * np.abs(sa.masses[None] - sb.masses[perms]).mean(1) / mscale
    j += weights["prom"] * np.abs(sa.prominence[None] - sb.prominence[perms]).mean(1)
    return j


_MAX_SWAP_DESCENT = 30
"""Swap descent on J evaluates O(m²) moves of O(m²) each per step: only for small trees."""

_QAP_WORK = 1e8
"""Bound on the 2-opt work of one tree matching, in n² units (the cost of one step): 64
starts for tens of modes, a few for a few hundred."""


def _exhaustive(m_a: int, m_b: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(m_b), m_a)), dtype=np.int64)


def _swap_descent(
    perm: np.ndarray, sa: TreeSummary, sb: TreeSummary, weights: dict[str, float], m_b: int
) -> np.ndarray:
    """Pairwise swaps (and moves to unused B leaves) until no single change lowers J."""
    perm = perm.copy()
    best = _objective(sa, sb, perm[None], weights)[0]
    improved = True
    while improved:
        improved = False
        unused = sorted(set(range(m_b)) - set(perm.tolist()))
        moves = []
        for i, j in itertools.combinations(range(len(perm)), 2):
            q = perm.copy()
            q[i], q[j] = q[j], q[i]
            moves.append(q)
        for i in range(len(perm)):
            for u in unused:
                q = perm.copy()
                q[i] = u
                moves.append(q)
        if not moves:
            break
        cand = np.stack(moves)
        vals = _objective(sa, sb, cand, weights)
        k = int(vals.argmin())
        if vals[k] < best - 1e-12:
            perm, best, improved = cand[k], vals[k], True
    return perm


def _signature_start(sa: TreeSummary, sb: TreeSummary, n: int) -> np.ndarray:
    """Permutation (n,) pairing leaves with similar sorted distance profiles (an isometry
    invariant: Mémoli's third lower bound), by linear assignment; padding rows go last."""
    levels = np.linspace(0.0, 1.0, 16)
    qa = np.quantile(sa.distances, levels, axis=1).T
    qb = np.quantile(sb.distances, levels, axis=1).T
    cost = np.abs(qa[:, None, :] - qb[None, :, :]).mean(-1)  # (m_a, m_b)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(n, dtype=np.int64)
    perm[rows] = cols
    perm[len(rows) :] = np.setdiff1d(np.arange(n), cols)
    return perm


def _qap_candidates(
    sa: TreeSummary,
    sb: TreeSummary,
    weights: dict[str, float],
    n_restarts: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """2-opt quadratic assignment on the distance + ultrametric matrices (A padded to B's size)
    from a signature start and random starts, then swap descent on J for small trees.

    The 2-opt steps of all starts share the budget ``_QAP_WORK / n²`` (at least 8n, which the
    signature start may use whole), so trees with hundreds of modes are matched in seconds.
    """
    m_a, m_b = len(sa.masses), len(sb.masses)
    n = m_b
    a = np.zeros((n, n))
    b = np.zeros((n, n))
    a[:m_a, :m_a] = sa.distances + sa.ultrametric
    b[:m_b, :m_b] = sb.distances + sb.ultrametric
    steps = max(8 * n, int(_QAP_WORK // max(n, 1) ** 2))  # total 2-opt steps, all starts
    out = [two_opt(a, b, _signature_start(sa, sb, n), max_steps=steps)[:m_a]]
    for _ in range(int(n_restarts) - 1):
        steps -= 2 * n
        if steps < 2 * n:
            break
        out.append(two_opt(a, b, rng.permutation(n), max_steps=2 * n)[:m_a])
    if m_b <= _MAX_SWAP_DESCENT:  # n = m_b: every truncated permutation is a valid injection
        out = [_swap_descent(perm, sa, sb, weights, m_b) for perm in out]
    return np.unique(np.stack(out), axis=0)


def _n_injections(m_a: int, m_b: int, cap: int) -> int:
    """m_b! / (m_b − m_a)!, or ``cap + 1`` as soon as the product exceeds ``cap``."""
    total = 1
    for k in range(m_b - m_a + 1, m_b + 1):
        total *= k
        if total > cap:
            return cap + 1
    return total


def _internal_pairs(tree_a: _Tree, tree_b: _Tree, pairs: np.ndarray) -> tuple:
    """Internal nodes whose sets of matched leaves coincide across the two trees."""
    to_b = {tree_a.leaves_[i]: tree_b.leaves_[j] for i, j in pairs}

    def leafsets(t: _Tree, keep: set) -> dict:
        out = {}
        for node in t.tree_.nodes:
            if t.tree_.out_degree(node) == 0:
                continue
            leaves = {x for x in nx.descendants(t.tree_, node) if x in keep}
            if leaves:
                out[node] = frozenset(leaves)
        return out

    sets_a = leafsets(tree_a, set(to_b))
    sets_b = {v: k for k, v in leafsets(tree_b, set(to_b.values())).items()}
    node_pairs = []
    for node, leaves in sets_a.items():
        mapped = frozenset(to_b[x] for x in leaves)
        if mapped in sets_b and len(leaves) > 1:
            node_pairs.append((node, sets_b[mapped]))
    return tuple(sorted(node_pairs, key=lambda p: str(p)))


def match_trees(
    tree_a: _Tree,
    tree_b: _Tree,
    *,
    w_dist: float = 1.0,
    w_ultra: float = 0.05,
    w_mass: float = 0.05,
    w_prom: float = 0.01,
    n_restarts: int = 64,
    max_exhaustive: int = 40_000,
    temperature: float | None = None,
    space: str = "activation",
    seed: int = 0,
) -> TreeMatching:
    """Match the significant leaves of two fitted density trees without shared coordinates.

    Parameters
    ----------
    tree_a, tree_b : fitted :class:`~flowmatch.DensityTree` objects (any numbers of leaves).
    w_dist, w_ultra, w_mass, w_prom : weights of the objective's terms (see module docstring).
        Centroid distances dominate by default: masses and merge levels shift when a mode
        splits in one model and not in the other, distances between the modes that persist do
        not (on digits-mlp the truth-consistent assignment has the lower distance term but the
        higher mass term).
    n_restarts : 2-opt starts when enumeration is too large (fewer for trees of hundreds of
        modes, whose every 2-opt step costs an n × n matrix product).
    max_exhaustive : enumerate all injections when there are at most this many.
    temperature : Boltzmann temperature for the confidences; default (a heuristic scale): the
        spread between the best and the median candidate objective, divided by 30.
    space : where centroid distances are measured (see :func:`summarise_tree`).
    seed : seeds the restarts.

    Returns
    -------
    TreeMatching  # leaf pairs index ``tree_a.leaves_`` and ``tree_b.leaves_``
    """
    sa, sb = summarise_tree(tree_a, space), summarise_tree(tree_b, space)
    flip = len(sa.masses) > len(sb.masses)
    if flip:
        sa, sb = sb, sa
    m_a, m_b = len(sa.masses), len(sb.masses)
    if m_a == 0:
        raise ValueError("a density tree has no significant leaves to match")
    weights = {"dist": w_dist, "ultra": w_ultra, "mass": w_mass, "prom": w_prom}
    if _n_injections(m_a, m_b, max_exhaustive) <= max_exhaustive:
        cand, method = _exhaustive(m_a, m_b), "exhaustive"
    else:
        rng = np.random.default_rng(seed)
        cand, method = _qap_candidates(sa, sb, weights, n_restarts, rng), "qap"
    vals = _objective(sa, sb, cand, weights)
    order = np.argsort(vals, kind="stable")
    best = cand[order[0]]
    spread = float(np.median(vals) - vals.min())
    temp = temperature if temperature is not None else max(spread / 30.0, 1e-12)
    boltz = np.exp(-(vals - vals.min()) / temp)
    coupling = np.zeros((m_a, m_b))
    for p, wgt in zip(cand, boltz):
        coupling[np.arange(m_a), p] += wgt
    coupling /= boltz.sum()
    conf = coupling[np.arange(m_a), best]
    pairs = np.stack([np.arange(m_a), best], axis=1)
    if flip:
        pairs, coupling = pairs[:, ::-1], coupling.T
    order_rows = np.argsort(pairs[:, 0])
    pairs, conf = pairs[order_rows], conf[order_rows]
    node_pairs = _internal_pairs(tree_a, tree_b, pairs)
    return TreeMatching(
        leaf_pairs=pairs.astype(np.int64),
        confidence=conf,
        node_pairs=node_pairs,
        coupling=coupling,
        objective=float(vals[order[0]]),
        n_candidates=len(cand),
        method=method,
    )


def matching_from_transport(
    tree_a: _Tree,
    tree_b: _Tree,
    leaf_a: np.ndarray,
    leaf_b: np.ndarray,
    plan: np.ndarray,
    min_share: float = 0.5,
) -> TreeMatching:
    """The leaf correspondence a transport plan between the two trees' rows carries.

    The plan's mass is summed per (A leaf, B leaf); a one-to-one assignment maximises the
    mass kept, and a pair is reported when it holds at least ``min_share`` of its A leaf's
    transported mass (a mode that one model splits in two keeps its larger half).

    Parameters
    ----------
    tree_a, tree_b : fitted density trees.
    leaf_a : (n_a,) leaf index (into ``tree_a.leaves_``) of each source row of the plan.
    leaf_b : (n_b,) the same for the target rows.
    plan : (n_a, n_b) transport plan, e.g. between A's rows under a fitted map and B's rows.

    Returns
    -------
    TreeMatching  # ``coupling`` (m_a, m_b): share of each A leaf's mass sent to each B leaf;
                  # ``crossing_mass``: fraction of all mass sent outside the reported pairs
    """
    m_a, m_b = len(tree_a.leaves_), len(tree_b.leaves_)
    one_a = np.eye(m_a)[np.asarray(leaf_a)]  # (n_a, m_a)
    one_b = np.eye(m_b)[np.asarray(leaf_b)]
    mass = one_a.T @ np.asarray(plan, dtype=np.float64) @ one_b  # (m_a, m_b)
    share = mass / np.maximum(mass.sum(1, keepdims=True), 1e-300)
    rows, cols = linear_sum_assignment(mass, maximize=True)
    keep = share[rows, cols] >= min_share
    pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
    return TreeMatching(
        leaf_pairs=pairs,
        confidence=share[pairs[:, 0], pairs[:, 1]],
        node_pairs=_internal_pairs(tree_a, tree_b, pairs),
        coupling=share,
        crossing_mass=1.0 - mass[pairs[:, 0], pairs[:, 1]].sum() / max(mass.sum(), 1e-300),
        n_candidates=1,
        method="transport",
    )
