"""One interface for every comparison method, and the registry that names them.

A method is fitted on exactly the data it is entitled to (see the protocol in DESIGN.md):

* ``FitData.a`` / ``FitData.b`` — activations of A and of B on *disjoint*, shuffled inputs.
  Unsupervised methods may use only these (and the models / their own inputs, for the
  interpretability bases that need the networks).
* ``FitData.pairs_a`` / ``FitData.pairs_b`` — ``n_pairs`` paired rows (same inputs through both
  models). Only methods with ``paired = True`` may read them.

then maps A's activations into B's activation space with ``transform`` (n, d_a) → (n, d_b).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from flowmatch.validation import as_matrix, check_fitted

__all__ = ["FitData", "Method", "REGISTRY", "get_method", "list_methods", "register", "to_numpy"]


@dataclass(frozen=True)
class FitData:
    """What a method may be fitted on.

    Attributes
    ----------
    a : Tensor  # (n_a, d_a) A's activations on inputs ``inputs_a``
    b : Tensor  # (n_b, d_b) B's activations on inputs ``inputs_b`` (disjoint from ``inputs_a``)
    pairs_a, pairs_b : Tensor | None  # (n_pairs, d_a), (n_pairs, d_b) paired rows
    model_a, model_b : the networks, for methods that analyse them (Jacobians, codes).
    layer_a, layer_b : names of the compared layers.
    inputs_a, inputs_b : Tensor | None  # model inputs that produced ``a`` and ``b``
    seed : random seed for the method.
    """

    a: Tensor
    b: Tensor
    pairs_a: Tensor | None = None
    pairs_b: Tensor | None = None
    model_a: nn.Module | None = None
    model_b: nn.Module | None = None
    layer_a: str | None = None
    layer_b: str | None = None
    inputs_a: Tensor | None = None
    inputs_b: Tensor | None = None
    seed: int = 0

    @property
    def n_pairs(self) -> int:
        return 0 if self.pairs_a is None else int(len(self.pairs_a))


class Method(ABC):
    """A translation method: ``fit(FitData)`` then ``transform(x_a)``.

    Subclasses set ``name``, ``paired`` (whether it reads paired rows) and ``uses`` (a short
    description of what it was fitted on, shown in the comparison table).

    Attributes
    ----------
    n_pairs_used_ : int  # paired rows actually read by ``fit``
    d_a_, d_b_ : int  # fitted input and output widths
    """

    name: ClassVar[str] = "method"
    paired: ClassVar[bool] = False
    uses: ClassVar[str] = "unpaired activations"

    n_pairs_used_: int | None = None
    d_a_: int | None = None
    d_b_: int | None = None

    def fit(self, data: FitData) -> Method:
        """Fit on ``data``; unpaired methods never see ``pairs_a``/``pairs_b``."""
        if not self.paired and data.n_pairs:
            data = FitData(**{**data.__dict__, "pairs_a": None, "pairs_b": None})
        if self.paired and data.n_pairs == 0:
            raise ValueError(f"method {self.name!r} needs paired rows (n_pairs > 0)")
        self.d_a_, self.d_b_ = int(data.a.shape[1]), int(data.b.shape[1])
        self._fit(data)
        self.n_pairs_used_ = data.n_pairs if self.paired else 0
        return self

    def transform(self, x_a: Any) -> Tensor:
        """Translate A activations  # (n, d_a) → (n, d_b), float32."""
        check_fitted(self, "n_pairs_used_")
        x = as_matrix(x_a, "x_a", dim=self.d_a_)
        with torch.no_grad():
            return self._transform(x).float()

    @abstractmethod
    def _fit(self, data: FitData) -> None: ...

    @abstractmethod
    def _transform(self, x_a: Tensor) -> Tensor: ...


REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make the method available as ``get_method(name)``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def list_methods() -> list[str]:
    """Registered method names (imports the bundled method modules first)."""
    import baselines  # noqa: F401  (registers the bundled methods)

    return sorted(REGISTRY)


def get_method(name: str, **params: Any) -> Method:
    """Instantiate the registered method ``name`` with ``params``."""
    list_methods()
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**params)


def to_numpy(x: Tensor) -> np.ndarray:
    """float64 NumPy copy of a tensor."""
    return x.detach().cpu().double().numpy()
