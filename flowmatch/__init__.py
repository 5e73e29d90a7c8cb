"""flowmatch: relate two networks' representations without paired data.

Stages (one module each): ``activations.collect`` → ``FlowAutoencoder`` → ``DensityTree`` →
``match_trees`` → ``translate`` → ``compare``. Names are imported lazily so that
``import flowmatch`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ActivationSet": "flowmatch.activations",
    "ActivationStore": "flowmatch.store",
    "collect": "flowmatch.activations",
    "FlowAutoencoder": "flowmatch.autoencoder",
    "DensityTree": "flowmatch.density_tree",
    "TreeMatching": "flowmatch.matching",
    "match_trees": "flowmatch.matching",
    "Translation": "flowmatch.translation",
    "translate": "flowmatch.translation",
    "ComparisonReport": "flowmatch.compare",
    "compare": "flowmatch.compare",
    "load_pair": "flowmatch.zoo",
    "ModelPair": "flowmatch.zoo",
    "metrics": "flowmatch.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flowmatch' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if name == "metrics" else getattr(module, name)


def __dir__() -> list[str]:
    return __all__
