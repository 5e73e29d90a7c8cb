"""The method interface and registry, re-exported from :mod:`flowmatch.methods` (where they
live: the core defines the interface, the baselines implement it)."""

from flowmatch.methods import REGISTRY, FitData, Method, get_method, list_methods, register

__all__ = ["FitData", "Method", "REGISTRY", "get_method", "list_methods", "register"]
