"""The method registry of the core: plugins found by name and by entry point, the figure hook."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest
import torch

import flowmatch.methods as methods
from flowmatch.methods import FigureContext, FitData, Method, MethodFigure, register


class _Identity(Method):
    def _fit(self, data: FitData) -> None:
        pass

    def _transform(self, x_a: torch.Tensor) -> torch.Tensor:
        return x_a


def test_bundled_methods_are_registered_with_their_figures():
    names = methods.list_methods()
    assert {
        "affine", "flowmatch", "lib", "mini_vec2vec", "polytope", "rotation_sparsity",
        "wasserstein_procrustes",
    } <= set(names)  # fmt: skip
    context = FigureContext(
        torch.nn.Identity(), torch.nn.Identity(), "a", "b",
        torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2),
    )  # fmt: skip
    drawn = {n: methods.get_method(n).figures(context) for n in ("affine", "lib", "polytope")}
    assert drawn["affine"] == []
    assert all(isinstance(f, MethodFigure) and callable(f.make) for f in drawn["lib"])
    assert "'a'" in drawn["lib"][0].caption and drawn["polytope"][0].caption.startswith("polytope")
    with pytest.raises(KeyError, match="unknown method 'nope'; available: .*affine"):
        methods.get_method("nope")


def test_entry_point_plugins_are_loaded(monkeypatch):
    """A package that declares an entry point in the group flowmatch.methods registers its
    methods when the registry is first read."""
    plugin = types.ModuleType("_flowmatch_test_plugin")
    plugin.__dict__["Plugged"] = register("_plugged_for_test")(type("Plugged", (_Identity,), {}))
    monkeypatch.setitem(sys.modules, "_flowmatch_test_plugin", plugin)
    del methods.REGISTRY["_plugged_for_test"]  # registered again by the plugin's import
    point = importlib.metadata.EntryPoint(
        "plugged", "_flowmatch_test_plugin", methods.ENTRY_POINT_GROUP
    )
    loaded = []

    def load() -> object:
        loaded.append(True)
        methods.REGISTRY["_plugged_for_test"] = plugin.Plugged
        return plugin

    monkeypatch.setattr(type(point), "load", lambda self: load())
    monkeypatch.setattr(methods, "entry_points", lambda group: [point])
    monkeypatch.setattr(methods, "_loaded", False)
    try:
        assert "_plugged_for_test" in methods.list_methods() and loaded == [True]
    finally:
        methods.REGISTRY.pop("_plugged_for_test", None)


def test_unpaired_methods_never_see_pairs_and_names_are_unique():
    seen = []

    class Spy(_Identity):
        def _fit(self, data: FitData) -> None:
            seen.append(data.pairs_a)

    x = torch.zeros(4, 2)
    Spy().fit(FitData(x, x, pairs_a=x, pairs_b=x))
    assert seen == [None]
    register("_unique_for_test")(Spy)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register("_unique_for_test")(_Identity)
    finally:
        del methods.REGISTRY["_unique_for_test"]
