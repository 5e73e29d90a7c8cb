"""The polytope lens: spline codes, polytope density along paths, clusters of codes.

A network built from affine maps and ReLUs is a continuous piecewise-affine function: its input
space is tiled by convex polytopes, one per *spline code* (the binary pattern of which ReLUs are
active, i.e. which pre-activations are positive). Black et al. (2022) read networks through these
regions: they count polytope boundaries along interpolation paths between inputs, layer by
layer, and report more boundaries per unit distance between inputs of different classes than
within a class; clusters of codes group inputs by meaning.

Here paths are straight segments in the model's input space, sampled at ``n_steps`` points;
a boundary crossing is a unit whose pre-activation changes sign between consecutive points.
Each start gets one same-class and one other-class path, starts are class-balanced, and ratio
intervals come from a paired bootstrap over starts. Densities are reported per layer, divided
either by the input distance or by the length of the path's image in the layer's own
pre-activation space, and a length-matched ratio separates a class effect from counts that
grow sub-linearly with distance.

>>> codes = spline_codes(model, x)                              # (n, n_units) bool
>>> res = class_path_density(model, x, y, n_pairs=300)          # intra vs inter, shared starts
>>> res.ratio_ci                                                # whole code, inter / intra
>>> for r in res.layer_ratios("input"): print(r.layer, r.ratio, r.matched)
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

from flowmatch.activations import find_module
from flowmatch.validation import as_matrix, resolve_device

__all__ = [
    "CHANGE_COUNTS",
    "NORMALISATIONS",
    "ClassPathDensity",
    "ClusterSummary",
    "LayerRatio",
    "MeanCI",
    "PathDensity",
    "bootstrap_ci",
    "class_path_density",
    "cluster_codes",
    "cluster_purity",
    "hamming_distances",
    "length_matched_ratio",
    "path_density",
    "relu_layers",
    "sample_class_paths",
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


class _PreactRecorder:
    """Forward pre-hooks recording the input (pre-activation) of each chosen layer, flattened."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.layers = list(layers)
        self.values: dict[str, list[Tensor]] = {name: [] for name in self.layers}
        self.handles = [
            find_module(model, name).register_forward_pre_hook(self._hook(name))
            for name in self.layers
        ]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple) -> None:
            self.values[name].append(args[0].flatten(1))

        return hook

    def pop(self) -> list[Tensor]:
        """Per-layer pre-activations of the last forward pass  # list of (batch, n_units_l)."""
        out = []
        for name in self.layers:
            if len(self.values[name]) != 1:
                n_runs = len(self.values[name])
                for v in self.values.values():
                    v.clear()
                raise ValueError(
                    f"layer {name!r} ran {n_runs} times in one forward pass; "
                    "spline codes need every chosen layer to run exactly once"
                )
            out.append(self.values[name].pop())
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _Running:
    """Context: model in eval mode on ``device`` with code hooks; restored on exit."""

    def __init__(self, model: nn.Module, layers: Sequence[str], device: str | torch.device):
        self.model, self.layers, self.device = model, layers, resolve_device(device)

    def __enter__(self) -> _PreactRecorder:
        self.was_training = self.model.training
        self.original = next(iter(self.model.parameters()), torch.empty(0)).device
        self.model.eval().to(self.device)
        self.recorder = _PreactRecorder(self.model, self.layers)
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
            chunks.append(torch.cat([h > 0 for h in rec.pop()], dim=1).cpu())
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
#: flip (boundaries crossed), ``"regions"`` counts 1 per change of polytope (at most one per
#: step, so it saturates at ``n_steps - 1`` when boundaries are denser than the steps).
CHANGE_COUNTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "hamming": _hamming_count,
    "regions": _region_count,
}


@dataclass(frozen=True)
class PathDensity:
    """Code changes along straight input-space paths x(t) = (1 − t) x_start + t x_end.

    Attributes
    ----------
    changes : Tensor  # (n_paths, n_steps - 1) changes of the whole code between consecutive points
    layer_changes : Tensor  # (n_paths, n_layers) total changes of each layer's own code
    length : Tensor  # (n_paths,) Euclidean input-space length ‖x_end − x_start‖ (float64)
    layer_length : Tensor  # (n_paths, n_layers) length of the path's image in each layer's
        pre-activation space (the polyline through the sampled points; float64)
    layers : names of the layers forming the code.
    layer_units : number of units (code bits) of each layer.
    count : ``"hamming"`` or ``"regions"``.
    """

    changes: Tensor
    layer_changes: Tensor
    length: Tensor
    layer_length: Tensor
    layers: tuple[str, ...]
    layer_units: tuple[int, ...]
    count: str

    @property
    def total(self) -> Tensor:
        """Total changes per path  # (n_paths,)."""
        return self.changes.sum(1).double()

    @property
    def density(self) -> Tensor:
        """Polytope density of the whole code: changes per unit input distance  # (n_paths,)."""
        return self.total / self.length

    def layer_density(self, normalise: str = "input") -> Tensor:
        """Changes of each layer's code per unit path length  # (n_paths, n_layers).

        ``normalise`` is a key of :data:`NORMALISATIONS`: ``"input"`` divides by the input-space
        length, ``"preact"`` by the length of the path's image in that layer's pre-activation
        space (where the layer's boundaries are the coordinate hyperplanes). A path whose image
        has zero length in a layer (a layer blind to the path's direction) has density 0.
        """
        if normalise not in NORMALISATIONS:
            raise KeyError(
                f"unknown normalisation {normalise!r}; choose from {', '.join(NORMALISATIONS)}"
            )
        length = NORMALISATIONS[normalise](self)
        dens = self.layer_changes.double() / length
        return torch.where(length > 0, dens, torch.zeros_like(dens))

    @property
    def t(self) -> Tensor:
        """Midpoints of the path steps in [0, 1]  # (n_steps - 1,)."""
        n = self.changes.shape[1]
        return (torch.arange(n, dtype=torch.float64) + 0.5) / n

    @property
    def local_density(self) -> Tensor:
        """Changes per unit input distance at each step  # (n_paths, n_steps - 1)."""
        step = self.length[:, None] / self.changes.shape[1]
        return self.changes.double() / step


#: Path lengths that per-layer densities are divided by  # each (n_paths, n_layers).
NORMALISATIONS: dict[str, Callable[[PathDensity], Tensor]] = {
    "input": lambda pd: pd.length[:, None].expand_as(pd.layer_length),
    "preact": lambda pd: pd.layer_length,
}


def _check_paths(
    starts: Any, ends: Any, n_steps: int, count: str, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
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
    return x0, x1, length


@torch.no_grad()
def path_density(
    model: nn.Module,
    starts: Any,
    ends: Any,
    *,
    n_steps: int = 256,
    layers: Sequence[str] | None = None,
    count: str = "hamming",
    batch_points: int = 16384,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> PathDensity:
    """Count spline-code changes along straight input-space paths between inputs.

    Point k of path p is ``((n_steps-1-k) x_start + k x_end) / (n_steps-1)``, so reversing a
    path visits exactly the same points in reverse order.

    Parameters
    ----------
    model : network; see :func:`spline_codes` for ``layers``.
    starts, ends : Tensor  # (n_paths, n_features) path endpoints (distinct rows)
    n_steps : points per path (≥ 2), endpoints included. A unit that flips and flips back
        within one step is missed; the first layer after the input is affine along the path,
        so its count is exact at any ``n_steps``. ``"regions"`` counting merges all changes
        within one step.
    count : key of :data:`CHANGE_COUNTS`.
    batch_points : path points per forward pass.
    device, progress : compute device; show a progress bar over path batches.

    Returns
    -------
    PathDensity
    """
    dtype = _model_dtype(model)
    x0, x1, length = _check_paths(starts, ends, n_steps, count, dtype)
    names = _resolve_layers(model, layers)
    counter = CHANGE_COUNTS[count]
    dev = resolve_device(device)
    k = torch.arange(n_steps, dtype=dtype, device=dev)
    w_end = (k / (n_steps - 1))[None, :, None]
    w_start = ((n_steps - 1 - k) / (n_steps - 1))[None, :, None]
    per_batch = max(1, batch_points // n_steps)
    changes, layer_changes, layer_length = [], [], []
    units: tuple[int, ...] = ()
    with _Running(model, names, dev) as rec:
        for s in tqdm(range(0, len(x0), per_batch), disable=not progress, desc="paths"):
            a, b = x0[s : s + per_batch].to(dev), x1[s : s + per_batch].to(dev)
            pts = w_start * a[:, None, :] + w_end * b[:, None, :]  # (p, n_steps, f)
            model(pts.reshape(-1, pts.shape[-1]))
            pre = [h.reshape(len(a), n_steps, -1) for h in rec.pop()]  # each (p, n_steps, u_l)
            codes = [h > 0 for h in pre]
            units = tuple(int(h.shape[2]) for h in pre)
            full = torch.cat(codes, dim=2)
            changes.append(counter(full[:, :-1], full[:, 1:]).cpu())
            per_layer = [counter(c[:, :-1], c[:, 1:]).sum(1) for c in codes]  # each (p,)
            layer_changes.append(torch.stack(per_layer, dim=1).cpu())
            arcs = [(h[:, 1:] - h[:, :-1]).double().norm(dim=2).sum(1) for h in pre]
            layer_length.append(torch.stack(arcs, dim=1).cpu())
    return PathDensity(
        changes=torch.cat(changes),
        layer_changes=torch.cat(layer_changes),
        length=length,
        layer_length=torch.cat(layer_length),
        layers=tuple(names),
        layer_units=units,
        count=count,
    )


def _labels_array(labels: Any) -> np.ndarray:
    return np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)


def _draw_end(
    rng: np.random.Generator, pool: np.ndarray, start: int, x: Tensor | None, tries: int = 100
) -> int:
    for _ in range(tries):
        j = int(rng.choice(pool))
        if j != start and (x is None or not torch.equal(x[start], x[j])):
            return j
    raise ValueError("could not draw a distinct end point (too many duplicate inputs)")


def sample_class_paths(
    labels: Any, n_paths: int, *, seed: int = 0, inputs: Any | None = None
) -> Tensor:
    """Matched path endpoints: per start, one same-class end and one other-class end.

    Starts are spread evenly over the classes that have two or more rows (``n_paths // K``
    each, the remainder to randomly chosen classes) and drawn without replacement within a
    class while it has rows left. The same-class end is a uniform other row of the start's
    class; the other-class end is a uniform row of a uniformly chosen other class, so every
    ordered pair of classes is equally likely. Intra- and inter-class paths thus come in equal
    numbers from the same starts, which lets a paired bootstrap resample starts.

    Parameters
    ----------
    labels : (n,) class labels (at least two classes, one with two or more rows).
    n_paths : number of starts (= intra paths = inter paths).
    seed : NumPy seed.
    inputs : optional (n, n_features); ends identical to their start are redrawn.

    Returns
    -------
    Tensor  # (n_paths, 3) int64 rows: start, same-class end, other-class end
    """
    y = _labels_array(labels)
    if n_paths < 1:
        raise ValueError(f"n_paths must be positive, got {n_paths}")
    x = None if inputs is None else as_matrix(inputs, "inputs").double()
    if x is not None and len(x) != len(y):
        raise ValueError(f"{len(y)} labels for {len(x)} inputs (length mismatch)")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError("only one class present: inter-class paths are impossible")
    usable = classes[counts >= 2]
    if len(usable) == 0:
        raise ValueError("no class has two samples: intra-class paths are impossible")
    rng = np.random.default_rng(seed)
    quota = np.full(len(usable), n_paths // len(usable))
    quota[rng.choice(len(usable), n_paths % len(usable), replace=False)] += 1
    members = {c: np.flatnonzero(y == c) for c in classes}
    out: list[tuple[int, int, int]] = []
    for c, q in zip(usable, quota):
        pool = members[c]
        starts = np.concatenate(
            [rng.permutation(pool) for _ in range(-(-int(q) // len(pool)))] or [pool[:0]]
        )[:q]
        others = classes[classes != c]
        for i in starts:
            j_same = _draw_end(rng, pool, int(i), x)
            j_other = _draw_end(rng, members[others[rng.integers(len(others))]], int(i), x)
            out.append((int(i), j_same, j_other))
    return torch.tensor(out, dtype=torch.long).reshape(-1, 3)


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class MeanCI:
    """A statistic with a percentile-bootstrap confidence interval."""

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


def _finite_1d(values: Any, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"{name} must be a non-empty array of finite numbers")
    return v


def bootstrap_ci(
    values: Any,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    against: Any | None = None,
    paired: bool = False,
) -> MeanCI:
    """Percentile bootstrap interval of ``mean(values)``, or of ``mean(values) / mean(against)``.

    Parameters
    ----------
    values : (n,) samples.
    n_boot, level, seed : resamples, confidence level, NumPy seed.
    against : optional (m,) second sample; the statistic is then the ratio of means (``inf``
        where the resampled ``against`` has mean 0).
    paired : resample ``values`` and ``against`` with the same indices (rows i of both come
        from one sampling unit, e.g. two paths from one start); needs ``m == n``. Otherwise the
        two samples are resampled independently.

    Returns
    -------
    MeanCI
    """
    v = _finite_1d(values, "values")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(v), size=(n_boot, len(v)))
    boot = v[idx].mean(1)
    stat = float(v.mean())
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero mean gives inf
        if against is not None:
            w = _finite_1d(against, "against")
            if paired and len(w) != len(v):
                raise ValueError(f"paired samples need equal lengths, got {len(v)} and {len(w)}")
            widx = idx if paired else rng.integers(len(w), size=(n_boot, len(w)))
            boot = boot / w[widx].mean(1)
            stat = float(np.float64(stat) / w.mean())
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return MeanCI(stat, float(lo), float(hi), level, len(v))


def length_matched_ratio(
    intra: Any,
    intra_length: Any,
    inter: Any,
    inter_length: Any,
    *,
    n_bins: int = 5,
    min_per_bin: int = 5,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> MeanCI:
    """Inter/intra ratio of mean densities among paths of similar length.

    Paths are binned by quantiles of the pooled lengths; in each bin holding at least
    ``min_per_bin`` paths of both kinds (and a positive intra mean) the ratio of mean densities
    is taken, and the bin ratios are averaged with weights min(n_intra, n_inter). This removes
    the part of the raw ratio that comes from inter-class paths being longer when density
    depends on length. The interval resamples rows i of both kinds together (a paired
    bootstrap over starts, see :func:`sample_class_paths`); NaN when no bin qualifies.

    Parameters
    ----------
    intra, intra_length, inter, inter_length : (n,) densities and lengths of each kind.
    n_bins, min_per_bin : binning.
    n_boot, level, seed : bootstrap settings.

    Returns
    -------
    MeanCI
    """
    di, li = _finite_1d(intra, "intra"), _finite_1d(intra_length, "intra_length")
    de, le = _finite_1d(inter, "inter"), _finite_1d(inter_length, "inter_length")
    if not len(di) == len(li) == len(de) == len(le):
        raise ValueError("densities and lengths of both kinds need one common length")
    edges = np.quantile(np.concatenate([li, le]), np.linspace(0, 1, n_bins + 1))[1:-1]
    bi, be = np.digitize(li, edges), np.digitize(le, edges)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([np.arange(len(di))[None], rng.integers(len(di), size=(n_boot, len(di)))])
    num = np.zeros(len(idx))
    den = np.zeros(len(idx))
    for k in range(n_bins):
        mi, me = (bi[idx] == k), (be[idx] == k)  # (1 + n_boot, n)
        ni, ne = mi.sum(1), me.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_i = (di[idx] * mi).sum(1) / ni
            mean_e = (de[idx] * me).sum(1) / ne
            ok = (np.minimum(ni, ne) >= min_per_bin) & (mean_i > 0)
            w = np.where(ok, np.minimum(ni, ne), 0)
            num += np.where(ok, w * mean_e / np.where(ok, mean_i, 1.0), 0.0)
        den += w
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = num / den
    boot = stats[1:][np.isfinite(stats[1:])]
    if len(boot) == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), level, len(di))
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return MeanCI(float(stats[0]), float(lo), float(hi), level, len(di))


@dataclass(frozen=True)
class LayerRatio:
    """Intra- against inter-class density of one layer's code (or of the whole code).

    Attributes
    ----------
    layer : layer name, or ``"all"`` for the whole code.
    normalise : key of :data:`NORMALISATIONS` the changes were divided by.
    intra, inter : mean densities with bootstrap intervals.
    ratio : inter / intra ratio of means, paired bootstrap over starts.
    matched : the same ratio among paths of similar normalising length
        (:func:`length_matched_ratio`).
    """

    layer: str
    normalise: str
    intra: MeanCI
    inter: MeanCI
    ratio: MeanCI
    matched: MeanCI


@dataclass(frozen=True)
class ClassPathDensity:
    """Polytope density on intra-class against inter-class paths from shared starts.

    Attributes
    ----------
    intra, inter : PathDensity of the same-label and different-label paths; row i of both
        starts at the same input.
    endpoints : Tensor  # (n_paths, 3) row indices: start, same-class end, other-class end
    intra_ci, inter_ci : whole-code mean density with bootstrap interval.
    ratio_ci : whole-code inter / intra ratio of mean densities, paired bootstrap over starts.
    """

    intra: PathDensity
    inter: PathDensity
    endpoints: Tensor
    intra_ci: MeanCI
    inter_ci: MeanCI
    ratio_ci: MeanCI

    @property
    def intra_pairs(self) -> Tensor:
        """(start, end) rows of the intra-class paths  # (n_paths, 2)."""
        return self.endpoints[:, [0, 1]]

    @property
    def inter_pairs(self) -> Tensor:
        """(start, end) rows of the inter-class paths  # (n_paths, 2)."""
        return self.endpoints[:, [0, 2]]

    def layer_ratios(
        self,
        normalise: str = "input",
        *,
        whole: bool = True,
        n_boot: int = 2000,
        level: float = 0.95,
        seed: int = 0,
    ) -> tuple[LayerRatio, ...]:
        """Per-layer intra/inter densities and ratios, then (``whole``) the whole code.

        ``normalise`` applies to the layers (:meth:`PathDensity.layer_density`); the whole code
        mixes layers and is always divided by the input-space length.
        """
        ci = dict(n_boot=n_boot, level=level)
        di, de = self.intra.layer_density(normalise), self.inter.layer_density(normalise)
        li, le = NORMALISATIONS[normalise](self.intra), NORMALISATIONS[normalise](self.inter)
        cols = [
            (name, di[:, k], de[:, k], li[:, k], le[:, k])
            for k, name in enumerate(self.intra.layers)
        ]
        if whole:
            cols.append(
                (
                    "all",
                    self.intra.density,
                    self.inter.density,
                    self.intra.length,
                    self.inter.length,
                )
            )
        out = []
        for k, (name, a, b, la, lb) in enumerate(cols):
            s = seed + 10 * k
            out.append(
                LayerRatio(
                    layer=name,
                    normalise="input" if name == "all" else normalise,
                    intra=bootstrap_ci(a, seed=s, **ci),  # type: ignore[arg-type]
                    inter=bootstrap_ci(b, seed=s + 1, **ci),  # type: ignore[arg-type]
                    ratio=bootstrap_ci(b, against=a, paired=True, seed=s + 2, **ci),  # type: ignore[arg-type]
                    matched=length_matched_ratio(a, la, b, lb, seed=s + 3, **ci),  # type: ignore[arg-type]
                )
            )
        return tuple(out)


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

    ``n_pairs`` starts are drawn class-balanced (:func:`sample_class_paths`); from each start
    one straight input-space path goes to a same-class input and one to an other-class input.

    Parameters
    ----------
    model : network; inputs : Tensor  # (n, n_features); labels : (n,) classes.
    n_pairs : starts, i.e. paths of each kind.
    n_steps, layers, count, device, progress : as in :func:`path_density`.
    n_boot, level, seed : bootstrap settings and seed (endpoints and resamples).

    Returns
    -------
    ClassPathDensity
    """
    x = as_matrix(inputs, "inputs", min_samples=2)
    ends = sample_class_paths(labels, n_pairs, seed=seed, inputs=x)
    kw = dict(n_steps=n_steps, layers=layers, count=count, device=device, progress=progress)
    intra = path_density(model, x[ends[:, 0]], x[ends[:, 1]], **kw)  # type: ignore[arg-type]
    inter = path_density(model, x[ends[:, 0]], x[ends[:, 2]], **kw)  # type: ignore[arg-type]
    ci = dict(n_boot=n_boot, level=level)
    return ClassPathDensity(
        intra=intra,
        inter=inter,
        endpoints=ends,
        intra_ci=bootstrap_ci(intra.density, seed=seed, **ci),  # type: ignore[arg-type]
        inter_ci=bootstrap_ci(inter.density, seed=seed + 1, **ci),  # type: ignore[arg-type]
        ratio_ci=bootstrap_ci(
            inter.density,
            against=intra.density,
            paired=True,
            seed=seed + 2,
            **ci,  # type: ignore[arg-type]
        ),
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
