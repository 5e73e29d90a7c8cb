"""Comparison methods for flowmatch, all behind :class:`flowmatch.methods.Method`.

Importing this package imports every public module in it, which registers its methods;
``get_method(name)`` then builds one by name.
"""

import importlib
import pkgutil

from flowmatch.methods import REGISTRY, FitData, Method, get_method, list_methods, register

__all__ = ["REGISTRY", "FitData", "Method", "get_method", "list_methods", "register"]

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")
