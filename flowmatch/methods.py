"""The interface every translation method follows, and the registry that names them.

:func:`flowmatch.compare.compare` runs registered methods under one protocol. A method is
fitted on exactly the data it is entitled to (the protocol is in :mod:`flowmatch.compare`):

* ``FitData.a`` / ``FitData.b`` — activations of A and of B on *disjoint*, shuffled inputs.
  Unsupervised methods may use only these (and the models / their own inputs, for the
  interpretability bases that need the networks).
* ``FitData.pairs_a`` / ``FitData.pairs_b`` — ``n_pairs`` paired rows (same inputs through both
  models). Only methods with ``paired = True`` may read them.

then maps A's activations into B's activation space with ``transform`` (n, d_a) → (n, d_b).
A method may also draw figures of its own for the run report (:meth:`Method.figures`).

Methods join the registry with :func:`register`. The bundled ones live in the top-level
``baselines`` package, which imports this module and is never imported by the core: the
registry loads method packages as plugins when it is first read — the bundled package by its
name (:data:`BUNDLED`, when installed), and any other package that declares an entry point in
the group ``flowmatch.methods`` (``[project.entry-points."flowmatch.methods"]`` in its
``pyproject.toml``, naming the module whose import registers its methods). See
``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowmatch.validation import as_matrix, check_fitted

__all__ = [
    "BUNDLED",
    "ENTRY_POINT_GROUP",
    "FigureContext",
    "FitData",
    "Method",
    "MethodFigure",
    "REGISTRY",
    "get_method",
    "list_methods",
    "register",
]

#: Entry-point group through which packages contribute methods.
ENTRY_POINT_GROUP = "flowmatch.methods"
#: The method package shipped beside flowmatch, loaded by name when no entry point is found.
BUNDLED = "baselines"


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


@dataclass(frozen=True)
class FigureContext:
    """What a method's figures may draw on: the pair's networks and inputs.

    Attributes
    ----------
    model_a, model_b : the two networks; layer_a, layer_b : the compared layers.
    x_train : Tensor  # (n_train, n_features) training inputs
    x_test : Tensor  # (n_test, n_features) held-out inputs; y_test : Tensor  # (n_test,)
    seed : random seed of the run.
    """

    model_a: nn.Module
    model_b: nn.Module
    layer_a: str
    layer_b: str
    x_train: Tensor
    x_test: Tensor
    y_test: Tensor
    seed: int = 0


@dataclass(frozen=True)
class MethodFigure:
    """A figure a method contributes to the report: ``make()`` draws it (a matplotlib
    Figure) when the report is built; ``caption`` is printed under it."""

    caption: str
    make: Callable[[], Any]


class Method(ABC):
    """A translation method: ``fit(FitData)`` then ``transform(x_a)``.

    Subclasses set ``name`` (through :func:`register`), ``paired`` (whether it reads paired
    rows) and ``uses`` (a short description of what it was fitted on, shown in the
    comparison table), and implement ``_fit`` and ``_transform``.

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
            data = replace(data, pairs_a=None, pairs_b=None)
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

    def figures(self, context: FigureContext) -> list[MethodFigure]:
        """Figures of the method's own diagnostics for the run report (default: none)."""
        return []

    @abstractmethod
    def _fit(self, data: FitData) -> None: ...

    @abstractmethod
    def _transform(self, x_a: Tensor) -> Tensor: ...


REGISTRY: dict[str, type[Method]] = {}
_loaded = False


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make the method available as ``get_method(name)``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def _load_plugins() -> None:
    """Import the method packages once: :data:`BUNDLED` when it is installed, then every
    entry point of :data:`ENTRY_POINT_GROUP`."""
    global _loaded
    if _loaded:
        return
    try:
        importlib.import_module(BUNDLED)
    except ModuleNotFoundError as err:
        if err.name != BUNDLED:
            raise
    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()
    _loaded = True


def list_methods() -> list[str]:
    """Registered method names (the method packages are imported first)."""
    _load_plugins()
    return sorted(REGISTRY)


def get_method(name: str, **params: Any) -> Method:
    """Instantiate the registered method ``name`` with ``params``."""
    available = list_methods()
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available)}")
    return REGISTRY[name](**params)
