"""YAML run configurations ↔ frozen dataclasses.

A config names a zoo pair and the settings of each stage. Everything is checked when the file
is loaded, before anything is computed, and every error names the file and the key:

- unknown keys (a typo never silently falls back to a default);
- the type and range of every value (``seed: 1.7``, ``seed: [1, 2]``,
  ``translate: {n_refine: ten}``, ``autoencoder: {max_epochs: 0}``);
- method names against the registry (``methods: procrustes`` is one method, not ten letters);
- the run name, which must be one safe folder name (:func:`flowmatch.outputs.check_name`);
- the YAML itself: aliases (``*ref``, the "billion laughs" expansion) and duplicate keys are
  refused, and files over 1 MB are not read.

Example (``configs/digits.yaml``)::

    name: digits
    pair: digits-mlp
    seed: 0
    autoencoder: {latent_dim: 10, flow: coupling}
    tree: {k_neighbors: 15}
    translate: {n_refine: 100, starts: [clusters, gw]}
    compare: {n_pairs: 10, methods: null}
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowmatch.outputs import OutputPathError, check_file_output, check_name
from flowmatch.settings import TranslateSettings, check_setting
from flowmatch.validation import MAX_SEED, check_bool, check_int, check_real

__all__ = [
    "Config",
    "ConfigError",
    "bundled_configs",
    "config_from_dict",
    "find_config",
    "load_config",
]

MAX_CONFIG_BYTES = 1_000_000


class ConfigError(ValueError):
    """A configuration file or mapping is invalid; the message names the bad key."""


def _checked(key: str, check: Callable[[], Any]) -> None:
    """Run ``check``; turn its TypeError/ValueError into a ConfigError naming ``key``."""
    try:
        check()
    except (TypeError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ConfigError(f"config key '{key}': {message}") from None


@dataclass(frozen=True)
class CompareSettings:
    """Which methods the comparison runs and how many paired rows paired methods get.

    ``methods``: registered method names (:func:`flowmatch.methods.list_methods`), or None for
    all.
    """

    methods: tuple[str, ...] | None = None
    n_pairs: int = 10

    def __post_init__(self) -> None:
        if self.methods is not None:
            from flowmatch.methods import list_methods

            known = list_methods()
            if not isinstance(self.methods, tuple) or not all(
                isinstance(m, str) for m in self.methods
            ):
                raise ConfigError(
                    f"config key 'compare.methods' must be a list of method names, got "
                    f"{self.methods!r}"
                )
            for m in self.methods:
                if m not in known:
                    raise ConfigError(
                        f"config key 'compare.methods': unknown method {m!r}; available: "
                        f"{', '.join(known)}"
                    )
        _checked("compare.n_pairs", lambda: check_int("n_pairs", self.n_pairs, 0))


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

    def __post_init__(self) -> None:
        try:
            check_name(self.name, "run name")
        except OutputPathError as err:
            raise ConfigError(f"config key 'name': {err}") from None
        _checked("seed", lambda: check_int("seed", self.seed, 0, MAX_SEED))
        if not isinstance(self.output_dir, str | os.PathLike) or not str(self.output_dir):
            raise ConfigError(
                f"config key 'output_dir' must be a non-empty path, got {self.output_dir!r}"
            )
        if "\x00" in str(self.output_dir):
            raise ConfigError("config key 'output_dir' holds a null character")

    def run_dir(self) -> Path:
        """``<output_dir>/<name>``."""
        return Path(self.output_dir) / check_name(self.name, "run name")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_keys(section: str, given: dict[str, Any], allowed: set[str]) -> None:
    bad = [k for k in given if not isinstance(k, str)]
    if bad:
        where = f" in section '{section}'" if section else ""
        raise ConfigError(f"config key {bad[0]!r}{where} is not a string")
    unknown = sorted(set(given) - allowed)
    if unknown:
        where = f" in section '{section}'" if section else ""
        raise ConfigError(
            f"unknown config key {unknown[0]!r}{where}; allowed: {', '.join(sorted(allowed))}"
        )


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config section '{name}' must be a mapping, got {type(value).__name__}")
    return value


def _translate(value: Any) -> TranslateSettings:
    raw = dict(_mapping("translate", value))
    _check_keys("translate", raw, {f.name for f in dataclasses.fields(TranslateSettings)})
    for key, value in raw.items():
        _checked(f"translate.{key}", functools.partial(check_setting, key, value))
    return TranslateSettings(**raw)


def _compare(value: Any) -> CompareSettings:
    raw = dict(_mapping("compare", value))
    _check_keys("compare", raw, {f.name for f in dataclasses.fields(CompareSettings)})
    methods = raw.get("methods")
    if isinstance(methods, str):
        raw["methods"] = (methods,)  # one method, not a sequence of letters
    elif isinstance(methods, list):
        raw["methods"] = tuple(methods)
    elif methods is not None:
        raise ConfigError(
            f"config key 'compare.methods' must be a list of method names or null, got {methods!r}"
        )
    return CompareSettings(**raw)


def _estimator_section(name: str, value: Any, cls: type) -> dict[str, Any]:
    """Keyword arguments of ``cls``, checked by its ``validate_params``."""
    raw = _mapping(name, value)
    params = set(inspect.signature(cls).parameters) - {"self", "args", "kwargs"}
    _check_keys(name, raw, params)
    try:
        cls(**raw).validate_params()
    except (TypeError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ConfigError(f"config section '{name}': {message}") from None
    if raw.get("checkpoint") is not None:
        try:
            check_file_output(raw["checkpoint"], "FlowAutoencoder.checkpoint")
        except OutputPathError as err:
            raise ConfigError(f"config key '{name}.checkpoint': {err}") from None
    return dict(raw)


def _match_section(value: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`~flowmatch.matching.match_trees`, type-checked against
    its defaults and annotations (its own ranges are checked when it runs)."""
    from flowmatch.matching import match_trees

    raw = _mapping("match", value)
    params = {
        k: p
        for k, p in inspect.signature(match_trees).parameters.items()
        if k not in ("tree_a", "tree_b")
    }
    _check_keys("match", raw, set(params))
    for key, v in raw.items():
        p = params[key]
        _checked(f"match.{key}", functools.partial(_like_default, key, v, p))
    return dict(raw)


def _like_default(name: str, value: Any, param: inspect.Parameter) -> None:
    default, note = param.default, str(param.annotation)
    none = default is None or "None" in note
    if value is None and none:
        return
    if isinstance(default, bool) or note == "bool":
        check_bool(name, value)
    elif isinstance(default, int) or note.startswith("int"):
        check_int(name, value, none=none)
    elif isinstance(default, float) or note.startswith("float"):
        check_real(name, value, none=none)
    elif isinstance(default, str) or note.startswith("str"):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {value!r}")


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a mapping and build a :class:`Config` (every value checked)."""
    from flowmatch.autoencoder import FlowAutoencoder
    from flowmatch.density_tree import DensityTree
    from flowmatch.zoo import PAIRS

    if not isinstance(raw, dict):
        raise ConfigError("a config must be a YAML mapping at the top level")
    _check_keys("", raw, {f.name for f in dataclasses.fields(Config)})
    if "name" not in raw:
        raise ConfigError("config key 'name' is required")
    pair = raw.get("pair", "digits-mlp")
    if not isinstance(pair, str) or pair not in PAIRS:
        raise ConfigError(f"config key 'pair': unknown pair {pair!r}; choose from {list(PAIRS)}")
    return Config(
        name=raw["name"],
        pair=pair,
        seed=raw.get("seed", 0),
        output_dir=raw.get("output_dir", "runs"),
        autoencoder=_estimator_section("autoencoder", raw.get("autoencoder"), FlowAutoencoder),
        tree=_estimator_section("tree", raw.get("tree"), DensityTree),
        match=_match_section(raw.get("match")),
        translate=_translate(raw.get("translate")),
        compare=_compare(raw.get("compare")),
    )


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                "allowed in a config; write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                raise ConfigError(f"line {line}: a mapping key must be a plain value") from None
            if first is not None:
                raise ConfigError(f"line {line}: duplicate key {key!r} (first at line {first})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def bundled_configs() -> dict[str, Path]:
    """Name → file of every config shipped with flowmatch, sorted by name.

    The repository's top-level ``configs/`` folder is the one source; a wheel carries the same
    files as package data under ``flowmatch/configs/`` (``pyproject.toml`` maps the folder).
    """
    installed = Path(__file__).with_name("configs")
    folder = installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def find_config(config: str | os.PathLike) -> Path:
    """The config file ``config`` names: an existing file, else a bundled config by name
    (``"digits"`` or ``"digits.yaml"``); anything else raises ``FileNotFoundError`` listing the
    bundled names."""
    path = Path(config)
    if path.exists():
        return path
    bundled = bundled_configs()
    name = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    if str(path) in (name, path.name) and name in bundled:
        return bundled[name]
    hint = f"; 'flowmatch run {name}' runs the bundled one" if name in bundled else ""
    raise FileNotFoundError(
        f"no config file at {path}{hint} (bundled configs: {', '.join(bundled) or 'none'})"
    )


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file (see the module docstring for the checks)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no config file at {path}")
    if not path.is_file():
        raise ConfigError(f"{path} is not a file; give a YAML config file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_bytes().decode("utf-8")
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
