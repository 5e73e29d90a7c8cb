"""The polytope lens as a comparison method: matched clusters of spline codes.

Each model's inputs are grouped by their spline codes (see :mod:`baselines.polytope`); the groups
are matched across the two models without paired data and turned into an affine translation by
:func:`baselines.cluster_pairs.translate_from_clusters`.

References
----------
Black, S., Sharkey, L., Grinsztajn, L., et al. (2022). Interpreting neural networks through the
polytope lens. arXiv:2211.12312.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from baselines.polytope import (
    CODE_CLUSTERERS,
    RELU_TYPES,
    class_path_density,
    cluster_codes,
    hamming_distances,
    relu_layers,
    spline_codes,
)
from flowmatch.activations import find_module
from flowmatch.methods import FigureContext, FitData, Method, MethodFigure, register
from flowmatch.validation import as_matrix, check_fitted

__all__ = ["CODE_REGIONS", "PolytopeCodes", "profiles_figure"]


def _nearest_labels(
    codes: Tensor, ref_codes: Tensor, ref_labels: np.ndarray, chunk: int = 2048
) -> np.ndarray:
    """Label of the nearest (Hamming) reference row for every row of ``codes``."""
    out = []
    for s in range(0, len(codes), chunk):
        out.append(hamming_distances(codes[s : s + chunk], ref_codes).argmin(1).numpy())
    return ref_labels[np.concatenate(out)]


def _upto_layers(model: nn.Module, layer: str) -> list[str]:
    return relu_layers(model, upto=layer)


def _all_layers(model: nn.Module, layer: str) -> list[str]:
    return relu_layers(model)


def _layer_only(model: nn.Module, layer: str) -> list[str]:
    if not isinstance(find_module(model, layer), RELU_TYPES):
        raise ValueError(f"layer {layer!r} is not a ReLU; use region='upto' or 'all'")
    return [layer]


#: Which ReLUs form the code of a compared layer: those up to and including it (``"upto"``),
#: every ReLU of the model (``"all"``), or the compared layer alone (``"layer"``).
CODE_REGIONS: dict[str, Callable[[nn.Module, str], list[str]]] = {
    "upto": _upto_layers,
    "all": _all_layers,
    "layer": _layer_only,
}


# ----------------------------------------------------------------------------- figure
def profiles_figure(
    models: Sequence[tuple[str, Any]],
    x: Any,
    y: Any,
    *,
    n_pairs: int = 100,
    n_steps: int = 64,
    seed: int = 0,
) -> Any:
    """Polytope density (spline-code changes per unit distance) along straight paths between
    test inputs of the same class and of different classes (a pyplot-free matplotlib
    Figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(models), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models)))
    for ax, (name, model) in zip(axes, models):
        res = class_path_density(
            model, x, y, n_pairs=n_pairs, n_steps=n_steps, n_boot=200, seed=seed
        )
        for kind, pd, colour, ci in (
            ("intra-class", res.intra, "C0", res.intra_ci),
            ("inter-class", res.inter, "C3", res.inter_ci),
        ):
            dens = pd.local_density.numpy()
            binned = np.stack([c.mean(1) for c in np.array_split(dens, 16, axis=1)], axis=1)
            mean = binned.mean(0)
            half = 1.96 * binned.std(0, ddof=1) / np.sqrt(len(binned))
            t = (np.arange(16) + 0.5) / 16
            ax.plot(t, mean, color=colour, label=f"{kind}: mean {ci.mean:.3g}")
            ax.fill_between(t, mean - half, mean + half, color=colour, alpha=0.25)
        ax.set_title(f"model {name}: inter/intra ratio {res.ratio_ci.mean:.2f}", fontsize=10)
        ax.set_xlabel("position t along the path between two inputs")
        ax.set_ylabel("code changes per unit distance")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- adapter
@register("polytope")
class PolytopeCodes(Method):
    """Translation from matched clusters of spline codes (no paired data).

    Each model's inputs are clustered by their spline codes (Hamming geometry) separately; the
    clusters group A's rows and B's rows; clusters are matched across models and turned into an
    affine map by :func:`baselines.cluster_pairs.translate_from_clusters` (assignment on
    basis-invariant cluster statistics, map fit, OT refinement).

    Parameters
    ----------
    clusterer : key of :data:`CODE_CLUSTERERS` (``"kmeans"`` or ``"hdbscan"``).
    n_clusters : clusters for k-means.
    min_cluster_size : smallest HDBSCAN cluster.
    region : key of :data:`CODE_REGIONS`: which ReLUs form the code of the compared layer.
    max_cluster_rows : cluster at most this many rows (seeded subsample); the other rows take
        the cluster of their nearest clustered row in Hamming distance. HDBSCAN noise rows of
        the subsample keep the label -1 and are left out of the cluster matching.
    refine : OT refinement of the map (passed to ``translate_from_clusters``).
    device : where the models run to compute codes.

    Attributes
    ----------
    layers_a_, layers_b_ : list[str]  # layers forming each model's code
    labels_a_, labels_b_ : ndarray  # (n_a,), (n_b,) cluster of every fitted row (-1: noise)
    cluster_pairs_ : ndarray  # (m, 2) matched (cluster of A, cluster of B)
    matrix_ : Tensor  # (d_b, d_a)
    bias_ : Tensor  # (d_b,)

    References
    ----------
    Black et al. (2022), Interpreting neural networks through the polytope lens.
    """

    paired = False
    uses = "unpaired activations + spline codes of each model"

    def __init__(
        self,
        clusterer: str = "kmeans",
        n_clusters: int = 10,
        min_cluster_size: int = 15,
        region: str = "upto",
        max_cluster_rows: int = 3000,
        refine: bool = True,
        device: str = "auto",
    ) -> None:
        self.clusterer = clusterer
        self.n_clusters = n_clusters
        self.min_cluster_size = min_cluster_size
        self.region = region
        self.max_cluster_rows = max_cluster_rows
        self.refine = refine
        self.device = device

    def _side_labels(
        self, model: Any, layer: Any, inputs: Any, acts: Tensor, side: str, seed: int
    ) -> tuple[list[str], np.ndarray]:
        if model is None or inputs is None or layer is None:
            raise ValueError(
                f"method 'polytope' needs model_{side}, layer_{side} and inputs_{side} in FitData "
                "(spline codes are computed from the model on its inputs)"
            )
        if len(inputs) != len(acts):
            raise ValueError(
                f"inputs_{side} has {len(inputs)} rows but {side} has {len(acts)} "
                "(one input per activation row is needed)"
            )
        layers = CODE_REGIONS[self.region](model, layer)
        codes = spline_codes(model, inputs, layers, device=self.device)
        rng = np.random.default_rng(seed)
        fit_rows = np.arange(len(codes))
        if len(codes) > self.max_cluster_rows:
            fit_rows = np.sort(rng.choice(len(codes), self.max_cluster_rows, replace=False))
        params = (
            {"n_clusters": self.n_clusters}
            if self.clusterer == "kmeans"
            else {"min_cluster_size": self.min_cluster_size}
        )
        sub = cluster_codes(codes[fit_rows], self.clusterer, seed=seed, **params)
        if (sub < 0).all():
            raise ValueError(f"{self.clusterer} put every code of model {side} in noise")
        ref = fit_rows[sub >= 0]
        labels = _nearest_labels(codes, codes[ref], sub[sub >= 0])
        labels[fit_rows] = sub  # clustered rows keep their label, noise (-1) included
        return layers, labels

    def _fit(self, data: FitData) -> None:
        if self.clusterer not in CODE_CLUSTERERS:
            raise KeyError(
                f"unknown clusterer {self.clusterer!r}; choose from {', '.join(CODE_CLUSTERERS)}"
            )
        if self.region not in CODE_REGIONS:
            raise KeyError(f"unknown region {self.region!r}; choose from {', '.join(CODE_REGIONS)}")
        a = as_matrix(data.a, "a", min_samples=2)
        b = as_matrix(data.b, "b", min_samples=2)
        self.layers_a_, self.labels_a_ = self._side_labels(
            data.model_a, data.layer_a, data.inputs_a, a, "a", data.seed
        )
        self.layers_b_, self.labels_b_ = self._side_labels(
            data.model_b, data.layer_b, data.inputs_b, b, "b", data.seed + 1
        )
        from baselines.cluster_pairs import translate_from_clusters

        pairs, matrix, bias = translate_from_clusters(
            a, self.labels_a_, b, self.labels_b_, seed=data.seed, refine=self.refine
        )
        self.cluster_pairs_ = np.asarray(pairs)
        self.matrix_ = torch.as_tensor(matrix, dtype=torch.float64)
        self.bias_ = torch.as_tensor(bias, dtype=torch.float64)

    def _transform(self, x_a: Tensor) -> Tensor:
        check_fitted(self, "matrix_")
        return x_a.double() @ self.matrix_.T + self.bias_

    def figures(self, context: FigureContext) -> list[MethodFigure]:
        """Polytope density along paths between test inputs, for both models."""
        caption = (
            "polytope lens: spline-code changes per unit distance along paths between test "
            "inputs of the same and of different classes (mean ± 95% interval)"
        )
        models = [("A", context.model_a), ("B", context.model_b)]
        draw = partial(profiles_figure, models, context.x_test, context.y_test, seed=context.seed)
        return [MethodFigure(caption, draw)]
