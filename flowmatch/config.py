"""YAML run configurations ↔ frozen dataclasses.

A config names a zoo pair and the settings of each stage; unknown keys are errors that name the
key and the section, so a typo never silently falls back to a default.

Example (``configs/digits.yaml``)::

    name: digits
    pair: digits-mlp
    seed: 0
    autoencoder: {latent_dim: 10, flow: coupling}
    tree: {k_neighbors: 15}
    translate: {n_refine: 10, space: pca}
    compare: {n_pairs: 10, methods: null}
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict"]


class ConfigError(ValueError):
    """A configuration file or mapping is invalid; the message names the bad key."""


@dataclass(frozen=True)
class CompareSettings:
    """Which methods the comparison runs and how many paired rows paired methods get."""

    methods: tuple[str, ...] | None = None
    n_pairs: int = 10


@dataclass(frozen=True)
class TranslateSettings:
    """Map coordinates, starts and OT refinement settings of :func:`flowmatch.translate`."""

    space: str = "pca"
    n_gw_starts: int = 6
    n_refine: int = 10
    balance_steps: int = 10
    max_crossing: float = 0.2
    max_exact: int = 1500
    group_penalty: float = 0.0
    anchor_weight: float = 10.0

    def __post_init__(self) -> None:
        if self.space not in ("pca", "latent"):
            raise ConfigError(f"translate.space must be 'pca' or 'latent', got {self.space!r}")


@dataclass(frozen=True)
class Config:
    """One ``flowmatch run``: a pair, a seed, and per-stage keyword arguments."""

    name: str
    pair: str = "digits-mlp"
    seed: int = 0
    output_dir: str = "runs"
    autoencoder: dict[str, Any] = field(default_factory=dict)
    tree: dict[str, Any] = field(default_factory=dict)
    match: dict[str, Any] = field(default_factory=dict)
    translate: TranslateSettings = field(default_factory=TranslateSettings)
    compare: CompareSettings = field(default_factory=CompareSettings)

    def run_dir(self) -> Path:
        """``<output_dir>/<name>``."""
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_keys(section: str, given: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        where = f" in section '{section}'" if section else ""
        raise ConfigError(
            f"unknown config key {unknown[0]!r}{where}; allowed: {', '.join(sorted(allowed))}"
        )


def _section(cls: type, name: str, value: Any) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise ConfigError(f"config section '{name}' must be a mapping, got {type(value).__name__}")
    _check_keys(name, value, {f.name for f in dataclasses.fields(cls)})
    if "methods" in value and value["methods"] is not None:
        value = {**value, "methods": tuple(value["methods"])}
    return cls(**value)


def _kwargs_section(name: str, value: Any, target: Any) -> dict[str, Any]:
    """A free-form section whose keys must be parameters of ``target``'s ``__init__``."""
    import inspect

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config section '{name}' must be a mapping, got {type(value).__name__}")
    params = set(inspect.signature(target).parameters) - {"self", "args", "kwargs"}
    _check_keys(name, value, params)
    return dict(value)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a mapping and build a :class:`Config`."""
    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.density_tree import DensityTree
    from flowmatch.matching import match_trees
    from flowmatch.zoo import PAIRS

    if not isinstance(raw, dict):
        raise ConfigError("a config must be a YAML mapping at the top level")
    _check_keys("", raw, {f.name for f in dataclasses.fields(Config)})
    if "name" not in raw:
        raise ConfigError("config key 'name' is required")
    pair = raw.get("pair", "digits-mlp")
    if pair not in PAIRS:
        raise ConfigError(f"config key 'pair': unknown pair {pair!r}; choose from {list(PAIRS)}")
    match_kwargs = _kwargs_section("match", raw.get("match"), match_trees)
    match_kwargs.pop("tree_a", None)
    return Config(
        name=str(raw["name"]),
        pair=pair,
        seed=int(raw.get("seed", 0)),
        output_dir=str(raw.get("output_dir", "runs")),
        autoencoder=_kwargs_section("autoencoder", raw.get("autoencoder"), FlowAutoencoder),
        tree=_kwargs_section("tree", raw.get("tree"), DensityTree),
        match=match_kwargs,
        translate=_section(TranslateSettings, "translate", raw.get("translate")),
        compare=_section(CompareSettings, "compare", raw.get("compare")),
    )


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no config file at {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
