"""The polytope lens: spline codes, polytope density along paths, clusters of codes.

A network built from affine maps and ReLUs is a continuous piecewise-affine function: its input
space is tiled by convex polytopes, one per *spline code* (the binary pattern of which ReLUs are
active, i.e. which pre-activations are positive). Black et al. (2022) read networks through these
regions: the density of polytope boundaries along the straight path between two inputs is larger
between inputs of different classes than within a class, and clusters of codes group inputs by
meaning.

>>> codes = spline_codes(model, x)                              # (n, n_units) bool
>>> res = class_path_density(model, x, y, n_pairs=300)          # intra vs inter density + CIs
>>> res.inter_ci.mean / res.intra_ci.mean, res.ratio_ci
>>> labels = cluster_codes(codes, method="hdbscan"); cluster_purity(labels, y)

The comparison method ``"polytope"`` (:class:`baselines.polytope_adapter.PolytopeCodes`)
clusters each model's codes separately and turns the clusters into a translation by unsupervised
cluster matching.

References
----------
Black, S., Sharkey, L., Grinsztajn, L., Winsor, E., Braun, D., Merizian, J., Parker, K.,
Guevara, C. R., Millidge, B., Alfour, G., Leahy, C. (2022). Interpreting neural networks through
the polytope lens. arXiv:2211.12312.
Balestriero, R., Baraniuk, R. (2018). A spline theory of deep networks. ICML.
Campello, R., Moulavi, D., Sander, J. (2013). Density-based clustering based on hierarchical
density estimates. PAKDD (HDBSCAN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowmatch._validation import as_matrix, resolve_device
from flowmatch.activations import find_module

__all__ = [
    "ClassPathDensity",
    "ClusterSummary",
    "MeanCI",
    "PathDensity",
    "bootstrap_ci",
    "class_path_density",
    "cluster_codes",
    "cluster_purity",
    "hamming_distances",
    "path_density",
    "relu_layers",
    "sample_pairs",
    "spline_codes",
]

#: Module types whose input sign pattern forms the spline code.
RELU_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU,)


# ----------------------------------------------------------------------------- codes
def relu_layers(model: nn.Module, upto: str | None = None) -> list[str]:
    """Names of the ReLU submodules of ``model``, in registration order.

    Parameters
    ----------
    model : any module; ReLUs are found by type (:data:`RELU_TYPES`).
    upto : keep only the ReLUs registered up to and including the submodule ``upto`` and its
        children (for sequential models, the ReLUs that act before the output of ``upto``).

    Returns
    -------
    list[str]  # dotted names accepted by :func:`spline_codes`
    """
    if upto is not None:
        find_module(model, upto)  # raises with the closest names
    names: list[str] = []
    seen_upto = False
    for name, mod in model.named_modules():
        inside = upto is not None and (name == upto or name.startswith(f"{upto}."))
        if seen_upto and not inside:
            break
        seen_upto = seen_upto or inside
        if name and isinstance(mod, RELU_TYPES):
            names.append(name)
    if not names:
        where = f" up to {upto!r}" if upto is not None else ""
        raise ValueError(f"model {type(model).__name__} has no ReLU layer{where}")
    return names


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        return relu_layers(model)
    if isinstance(layers, str):
        layers = [layers]
    if len(layers) == 0:
        raise ValueError("layers is empty: name at least one layer whose input signs form the code")
    for name in layers:
        find_module(model, name)
    return list(layers)


class _CodeRecorder:
    """Forward pre-hooks recording ``input > 0`` of each chosen layer, flattened per sample."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.layers = list(layers)
        self.codes: dict[str, list[Tensor]] = {name: [] for name in self.layers}
        self.handles = [
            find_module(model, name).register_forward_pre_hook(self._hook(name))
            for name in self.layers
        ]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple) -> None:
            self.codes[name].append((args[0] > 0).flatten(1))

        return hook

    def pop(self) -> list[Tensor]:
        """Per-layer codes of the last forward pass  # list of (batch, n_units_l) bool."""
        out = []
        for name in self.layers:
            if len(self.codes[name]) != 1:
                raise ValueError(
                    f"layer {name!r} ran {len(self.codes[name])} times in one forward pass; "
                    "spline codes need every chosen layer to run exactly once"
                )
            out.append(self.codes[name].pop())
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _Running:
    """Context: model in eval mode on ``device`` with code hooks; restored on exit."""

    def __init__(self, model: nn.Module, layers: Sequence[str], device: str | torch.device):
        self.model, self.layers, self.device = model, layers, resolve_device(device)

    def __enter__(self) -> _CodeRecorder:
        self.was_training = self.model.training
        self.original = next(iter(self.model.parameters()), torch.empty(0)).device
        self.model.eval().to(self.device)
        self.recorder = _CodeRecorder(self.model, self.layers)
        return self.recorder

    def __exit__(self, *exc: Any) -> None:
        self.recorder.remove()
        self.model.to(self.original)
        self.model.train(self.was_training)


def _model_dtype(model: nn.Module) -> torch.dtype:
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None else torch.float32


@torch.no_grad()
def spline_codes(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[str] | None = None,
    *,
    batch_size: int = 4096,
    device: str | torch.device = "auto",
) -> Tensor:
    """Binary activation patterns (spline codes) of ``inputs``.

    Parameters
    ----------
    model : network whose ``layers`` each run once per forward pass.
    inputs : Tensor  # (n, n_features) model inputs
    layers : names of the layers whose *input* signs form the code (pre-activation > 0);
        default: every ReLU of the model (:func:`relu_layers`), in registration order.
    batch_size, device : ``device="auto"`` uses CUDA when available.

    Returns
    -------
    Tensor  # (n, n_units) bool on the CPU; the units of the layers, concatenated in order
    """
    x = as_matrix(inputs, "inputs", dtype=_model_dtype(model))
    names = _resolve_layers(model, layers)
    chunks: list[Tensor] = []
    with _Running(model, names, device) as rec:
        dev = resolve_device(device)
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size].to(dev))
            chunks.append(torch.cat(rec.pop(), dim=1).cpu())
    return torch.cat(chunks)


def hamming_distances(a: Tensor, b: Tensor | None = None) -> Tensor:
    """Normalised Hamming distances between binary codes (fraction of differing units).

    Parameters
    ----------
    a : Tensor  # (n, m) bool or 0/1
    b : Tensor | None  # (k, m); defaults to ``a``

    Returns
    -------
    Tensor  # (n, k) float64, equal to ``scipy.spatial.distance.cdist(a, b, "hamming")``
    """
    b = a if b is None else b
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"codes must be 2-D with equal widths, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    af, bf = a.double(), b.double()
    differ = af @ (1.0 - bf).T + (1.0 - af) @ bf.T
    return differ / max(int(a.shape[1]), 1)


# ----------------------------------------------------------------------------- paths
def _hamming_count(prev: Tensor, nxt: Tensor) -> Tensor:
    return (prev != nxt).sum(-1)


def _region_count(prev: Tensor, nxt: Tensor) -> Tensor:
    return (prev != nxt).any(-1).long()


#: How to count code changes between consecutive path points: ``"hamming"`` counts units that
#: flip (boundaries crossed), ``"regions"`` counts 1 per change of polytope.
CHANGE_COUNTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "hamming": _hamming_count,
    "regions": _region_count,
}


@dataclass(frozen=True)
class PathDensity:
    """Code changes along straight paths x(t) = (1 − t) x_start + t x_end.

    Attributes
    ----------
    changes : Tensor  # (n_paths, n_steps - 1) changes between consecutive points
    layer_changes : Tensor  # (n_paths, n_layers) total changes per layer
    length : Tensor  # (n_paths,) Euclidean length ‖x_end − x_start‖ (float64)
    layers : names of the layers forming the code.
    count : ``"hamming"`` or ``"regions"``.
    """

    changes: Tensor
    layer_changes: Tensor
    length: Tensor
    layers: tuple[str, ...]
    count: str

    @property
    def total(self) -> Tensor:
        """Total changes per path  # (n_paths,)."""
        return self.changes.sum(1).double()

    @property
    def density(self) -> Tensor:
        """Polytope density: changes per unit Euclidean distance  # (n_paths,)."""
        return self.total / self.length

    @property
    def t(self) -> Tensor:
        """Midpoints of the path steps in [0, 1]  # (n_steps - 1,)."""
        n = self.changes.shape[1]
        return (torch.arange(n, dtype=torch.float64) + 0.5) / n

    @property
    def local_density(self) -> Tensor:
        """Changes per unit distance at each step  # (n_paths, n_steps - 1)."""
        step = self.length[:, None] / self.changes.shape[1]
        return self.changes.double() / step


@torch.no_grad()
def path_density(
    model: nn.Module,
    starts: Any,
    ends: Any,
    *,
    n_steps: int = 256,
    layers: Sequence[str] | None = None,
    count: str = "hamming",
    batch_points: int = 32768,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> PathDensity:
    """Count spline-code changes along straight paths between inputs.

    Point k of path p is ``((n_steps-1-k) x_start + k x_end) / (n_steps-1)``, so reversing a
    path visits exactly the same points in reverse order.

    Parameters
    ----------
    model : network; see :func:`spline_codes` for ``layers``.
    starts, ends : Tensor  # (n_paths, n_features) path endpoints (distinct rows)
    n_steps : points per path (≥ 2), endpoints included. Boundaries closer together than one
        step are merged in ``"regions"`` counting; ``"hamming"`` still counts every unit that flips.
    count : key of :data:`CHANGE_COUNTS`.
    batch_points : path points per forward pass.
    device, progress : compute device; show a progress bar over path batches.

    Returns
    -------
    PathDensity
    """
    dtype = _model_dtype(model)
    x0 = as_matrix(starts, "starts", dtype=dtype)
    x1 = as_matrix(ends, "ends", dim=x0.shape[1], dtype=dtype)
    if len(x0) != len(x1):
        raise ValueError(f"{len(x0)} starts but {len(x1)} ends: one end per start is needed")
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2 (both endpoints), got {n_steps}")
    if count not in CHANGE_COUNTS:
        raise KeyError(f"unknown count {count!r}; choose from {', '.join(CHANGE_COUNTS)}")
    length = (x1.double() - x0.double()).norm(dim=1)
    if bool((length == 0).any()):
        bad = torch.nonzero(length == 0).flatten()[:5].tolist()
        raise ValueError(f"paths {bad} have zero length (start equals end); density is undefined")
    names = _resolve_layers(model, layers)
    counter = CHANGE_COUNTS[count]
    dev = resolve_device(device)
    k = torch.arange(n_steps, dtype=dtype, device=dev)
    w_end, w_start = (
        (k / (n_steps - 1))[None, :, None],
        ((n_steps - 1 - k) / (n_steps - 1))[None, :, None],
    )
    per_batch = max(1, batch_points // n_steps)
    changes, layer_changes = [], []
    with _Running(model, names, dev) as rec:
        for s in tqdm(range(0, len(x0), per_batch), disable=not progress, desc="paths"):
            a, b = x0[s : s + per_batch].to(dev), x1[s : s + per_batch].to(dev)
            pts = w_start * a[:, None, :] + w_end * b[:, None, :]  # (p, n_steps, f)
            model(pts.reshape(-1, pts.shape[-1]))
            codes = [c.reshape(len(a), n_steps, -1) for c in rec.pop()]
            per_layer = [counter(c[:, :-1], c[:, 1:]) for c in codes]  # each (p, n_steps-1)
            full = torch.cat(codes, dim=2)
            changes.append(counter(full[:, :-1], full[:, 1:]).cpu())
            layer_changes.append(torch.stack([c.sum(1) for c in per_layer], dim=1).cpu())
    return PathDensity(
        changes=torch.cat(changes),
        layer_changes=torch.cat(layer_changes),
        length=length,
        layers=tuple(names),
        count=count,
    )


def sample_pairs(
    labels: Any, n_pairs: int, *, same_class: bool, seed: int = 0, inputs: Any | None = None
) -> Tensor:
    """Random index pairs (i, j), i ≠ j, of rows with equal (or different) labels.

    Parameters
    ----------
    labels : (n,) class labels.
    n_pairs : number of pairs to draw (with replacement across pairs).
    same_class : True for intra-class pairs, False for inter-class pairs.
    seed : NumPy seed.
    inputs : optional (n, n_features); pairs of identical inputs are redrawn.

    Returns
    -------
    Tensor  # (n_pairs, 2) int64
    """
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    x = None if inputs is None else as_matrix(inputs, "inputs").double()
    if x is not None and len(x) != len(y):
        raise ValueError(f"{len(y)} labels for {len(x)} inputs (length mismatch)")
    classes, counts = np.unique(y, return_counts=True)
    if same_class and not (counts >= 2).any():
        raise ValueError("no class has two samples: intra-class pairs are impossible")
    if not same_class and len(classes) < 2:
        raise ValueError("only one class present: inter-class pairs are impossible")
    rng = np.random.default_rng(seed)
    out: list[tuple[int, int]] = []
    tries = 0
    while len(out) < n_pairs:
        tries += 1
        if tries > 100 * n_pairs:
            raise ValueError("could not draw enough distinct pairs (too many duplicate inputs)")
        i = int(rng.integers(len(y)))
        pool = np.flatnonzero((y == y[i]) if same_class else (y != y[i]))
        pool = pool[pool != i]
        if len(pool) == 0:
            continue
        j = int(rng.choice(pool))
        if x is not None and torch.equal(x[i], x[j]):
            continue
        out.append((i, j))
    return torch.tensor(out, dtype=torch.long)


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class MeanCI:
    """A mean with a percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    level: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "n": self.n,
        }


def bootstrap_ci(
    values: Any,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    against: Any | None = None,
) -> MeanCI:
    """Percentile bootstrap interval of ``mean(values)``, or of ``mean(values) / mean(against)``.

    Parameters
    ----------
    values : (n,) samples.
    n_boot, level, seed : resamples, confidence level, NumPy seed.
    against : optional (m,) second sample, resampled independently; the statistic is then the
        ratio of means (``inf`` where the resampled ``against`` has mean 0).

    Returns
    -------
    MeanCI
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) == 0 or not np.isfinite(v).all():
        raise ValueError("values must be a non-empty array of finite numbers")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    boot = v[rng.integers(len(v), size=(n_boot, len(v)))].mean(1)
    stat = float(v.mean())
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero mean gives inf
        if against is not None:
            w = np.asarray(against, dtype=np.float64).reshape(-1)
            if len(w) == 0 or not np.isfinite(w).all():
                raise ValueError("against must be a non-empty array of finite numbers")
            boot = boot / w[rng.integers(len(w), size=(n_boot, len(w)))].mean(1)
            stat = float(np.float64(stat) / w.mean())
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return MeanCI(stat, float(lo), float(hi), level, len(v))


@dataclass(frozen=True)
class ClassPathDensity:
    """Polytope density on intra-class against inter-class paths.

    Attributes
    ----------
    intra, inter : PathDensity of same-label and different-label pairs.
    intra_pairs, inter_pairs : Tensor  # (n_pairs, 2) row indices of the endpoints
    intra_ci, inter_ci : mean density with bootstrap interval.
    ratio_ci : inter / intra ratio of mean densities with bootstrap interval.
    """

    intra: PathDensity
    inter: PathDensity
    intra_pairs: Tensor
    inter_pairs: Tensor
    intra_ci: MeanCI
    inter_ci: MeanCI
    ratio_ci: MeanCI


def class_path_density(
    model: nn.Module,
    inputs: Any,
    labels: Any,
    *,
    n_pairs: int = 300,
    n_steps: int = 256,
    layers: Sequence[str] | None = None,
    count: str = "hamming",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> ClassPathDensity:
    """Compare polytope density on paths within a class and across classes.

    Parameters
    ----------
    model : network; inputs : Tensor  # (n, n_features); labels : (n,) classes.
    n_pairs : pairs of each kind (seeded draws, see :func:`sample_pairs`).
    n_steps, layers, count, device, progress : as in :func:`path_density`.
    n_boot, level, seed : bootstrap settings and seed (pairs and resamples).

    Returns
    -------
    ClassPathDensity
    """
    x = as_matrix(inputs, "inputs", min_samples=2)
    intra_idx = sample_pairs(labels, n_pairs, same_class=True, seed=seed, inputs=x)
    inter_idx = sample_pairs(labels, n_pairs, same_class=False, seed=seed + 1, inputs=x)
    kw = dict(n_steps=n_steps, layers=layers, count=count, device=device, progress=progress)
    intra = path_density(model, x[intra_idx[:, 0]], x[intra_idx[:, 1]], **kw)  # type: ignore[arg-type]
    inter = path_density(model, x[inter_idx[:, 0]], x[inter_idx[:, 1]], **kw)  # type: ignore[arg-type]
    ci = dict(n_boot=n_boot, level=level)
    return ClassPathDensity(
        intra=intra,
        inter=inter,
        intra_pairs=intra_idx,
        inter_pairs=inter_idx,
        intra_ci=bootstrap_ci(intra.density, seed=seed, **ci),  # type: ignore[arg-type]
        inter_ci=bootstrap_ci(inter.density, seed=seed + 1, **ci),  # type: ignore[arg-type]
        ratio_ci=bootstrap_ci(inter.density, against=intra.density, seed=seed + 2, **ci),  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- clusters
@dataclass(frozen=True)
class ClusterSummary:
    """How well a clustering agrees with class labels.

    Attributes
    ----------
    n_points : rows clustered.
    n_clusters : clusters found (noise excluded).
    noise_fraction : fraction of rows labelled noise (-1).
    purity : size-weighted mean over clusters of the majority-label fraction (noise excluded).
    ari : adjusted Rand index against the labels, noise counted as one group.
    """

    n_points: int
    n_clusters: int
    noise_fraction: float
    purity: float
    ari: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def cluster_purity(clusters: Any, labels: Any) -> ClusterSummary:
    """Label purity of a clustering (``-1`` marks noise).

    Parameters
    ----------
    clusters : (n,) integer cluster labels, -1 for noise.
    labels : (n,) true classes.

    Returns
    -------
    ClusterSummary  # purity is NaN when every row is noise
    """
    from sklearn.metrics import adjusted_rand_score

    c = np.asarray(clusters).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if len(c) != len(y) or len(c) == 0:
        raise ValueError(f"{len(c)} cluster labels for {len(y)} class labels (need equal, > 0)")
    kept = c >= 0
    majority = 0
    for k in np.unique(c[kept]):
        majority += int(np.unique(y[c == k], return_counts=True)[1].max())
    n_kept = int(kept.sum())
    return ClusterSummary(
        n_points=len(c),
        n_clusters=len(np.unique(c[kept])),
        noise_fraction=float(1 - n_kept / len(c)),
        purity=float(majority / n_kept) if n_kept else float("nan"),
        ari=float(adjusted_rand_score(y, c)),
    )


def _hdbscan(codes: Tensor, seed: int, min_cluster_size: int = 15, **kw: Any) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    dist = hamming_distances(codes).numpy()
    return HDBSCAN(
        metric="precomputed", min_cluster_size=min_cluster_size, copy=True, **kw
    ).fit_predict(dist)


def _kmeans(codes: Tensor, seed: int, n_clusters: int = 10, **kw: Any) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed, **kw)
    return km.fit_predict(codes.double().numpy())


#: Clusterers of binary codes: ``"hdbscan"`` (Hamming metric, noise = -1) and ``"kmeans"``
#: (Euclidean on 0/1 codes, i.e. on the square root of the Hamming distance).
CODE_CLUSTERERS: dict[str, Callable[..., np.ndarray]] = {"hdbscan": _hdbscan, "kmeans": _kmeans}


def cluster_codes(
    codes: Tensor, method: str = "hdbscan", *, seed: int = 0, **params: Any
) -> np.ndarray:
    """Cluster spline codes.

    Parameters
    ----------
    codes : Tensor  # (n, n_units) bool
    method : key of :data:`CODE_CLUSTERERS`.
    seed : seed for randomised clusterers.
    **params : passed on (``min_cluster_size``, ``min_samples`` for HDBSCAN; ``n_clusters``
        for k-means).

    Returns
    -------
    ndarray  # (n,) int cluster labels, -1 for noise
    """
    if method not in CODE_CLUSTERERS:
        raise KeyError(f"unknown clusterer {method!r}; choose from {', '.join(CODE_CLUSTERERS)}")
    if codes.ndim != 2 or len(codes) < 2:
        raise ValueError(f"codes must be 2-D with at least 2 rows, got shape {tuple(codes.shape)}")
    return CODE_CLUSTERERS[method](codes, seed, **params)
