"""Bundled, reproducible model pairs: data that ships with packages, small models trained
deterministically on the CPU and cached as safetensors.

Pairs
-----
``digits-mlp``       scikit-learn digits; two MLPs (hidden 64 and 96, different seeds).
``mnist1d-cnn``      MNIST-1D (8,000 samples generated locally); two 1-D CNNs, different seeds.
``mnist1d-mlp-cnn``  MNIST-1D; an MLP and a CNN (cross-architecture).

Every model maps a flat input (n, n_features) to logits (n, 10). The compared layer is the
last hidden ReLU; ``head`` is everything after it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowmatch._io import ArtefactError, load_state, save_state
from flowmatch.activations import ActivationSet, collect, head_after

__all__ = [
    "Dataset",
    "ModelPair",
    "ModelSpec",
    "PAIRS",
    "build_model",
    "cache_dir",
    "head_after",
    "list_pairs",
    "load_dataset",
    "load_pair",
    "train_model",
]

_ZOO_VERSION = 1


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Dataset:
    """Train/test split of a classification data set (features float32, labels int64)."""

    name: str
    x_train: Tensor  # (n_train, n_features)
    y_train: Tensor  # (n_train,)
    x_test: Tensor  # (n_test, n_features)
    y_test: Tensor  # (n_test,)


@lru_cache(maxsize=4)
def load_dataset(name: str) -> Dataset:
    """``"digits"`` (scikit-learn, 1,797 images) or ``"mnist1d"`` (8,000 generated samples)."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = (d.data / 16.0).astype(np.float32)
        xtr, xte, ytr, yte = train_test_split(
            x, d.target, test_size=0.3, random_state=0, stratify=d.target
        )
    elif name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed = 8000, 42
        data = make_dataset(args)
        xtr, ytr, xte, yte = data["x"], data["y"], data["x_test"], data["y_test"]
    else:
        raise KeyError(f"unknown data set {name!r}; choose 'digits' or 'mnist1d'")
    as_f = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    as_l = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
    return Dataset(name, as_f(xtr), as_l(ytr), as_f(xte), as_l(yte))


# ----------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines a trained zoo model (its hash keys the cache)."""

    arch: str  # "mlp" | "cnn"
    dataset: str
    hidden: tuple[int, ...]
    seed: int
    epochs: int
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0

    def key(self) -> str:
        blob = json.dumps({"v": _ZOO_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_model(spec: ModelSpec, n_features: int, n_classes: int = 10) -> nn.Sequential:
    """Fresh, seeded model for ``spec``: named layers, last hidden ReLU called ``"hidden"``."""
    torch.manual_seed(spec.seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if spec.arch == "mlp":
        width = n_features
        for i, h in enumerate(spec.hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"relu{i}" if i < len(spec.hidden) else "hidden"] = nn.ReLU()
            width = h
        layers["out"] = nn.Linear(width, n_classes)
    elif spec.arch == "cnn":
        channels, dense = spec.hidden[:-1], spec.hidden[-1]
        layers["unflatten"] = nn.Unflatten(1, (1, n_features))
        c_in, length = 1, n_features
        for i, c in enumerate(channels, start=1):
            stride = 1 if i == 1 else 2
            layers[f"conv{i}"] = nn.Conv1d(c_in, c, kernel_size=5, stride=stride, padding=2)
            layers[f"crelu{i}"] = nn.ReLU()
            c_in, length = c, (length + 2 * 2 - 5) // stride + 1
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(c_in * length, dense)
        layers["hidden"] = nn.ReLU()
        layers["out"] = nn.Linear(dense, n_classes)
    else:
        raise KeyError(f"unknown architecture {spec.arch!r}; choose 'mlp' or 'cnn'")
    return nn.Sequential(layers)


def cache_dir() -> Path:
    """``$FLOWMATCH_CACHE`` or ``~/.cache/flowmatch``."""
    root = os.environ.get("FLOWMATCH_CACHE") or Path.home() / ".cache" / "flowmatch"
    return Path(root)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` on (x, y)."""
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def train_model(spec: ModelSpec, *, cache: bool = True) -> tuple[nn.Sequential, dict[str, Any]]:
    """Train (or load from the cache) the model ``spec`` describes; return (model, info)."""
    data = load_dataset(spec.dataset)
    model = build_model(spec, data.x_train.shape[1])
    path = cache_dir() / "zoo" / f"{spec.arch}-{spec.dataset}-{spec.key()}.safetensors"
    if cache and os.path.lexists(path):
        return _load_cached(path, model)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    n = len(data.x_train)
    for _ in range(spec.epochs):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(spec.batch_size):
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    info = {
        "spec": json.loads(json.dumps(asdict(spec))),  # the same record a cache hit returns
        "train_accuracy": accuracy(model, data.x_train, data.y_train),
        "test_accuracy": accuracy(model, data.x_test, data.y_test),
    }
    if cache:
        save_state(path, model.state_dict(), info, kind="ZooModel")
    return model.eval(), info


def _load_cached(path: Path, model: nn.Sequential) -> tuple[nn.Sequential, dict[str, Any]]:
    """A cached zoo model, every tensor checked against ``model``'s (names, dtypes, shapes)."""
    try:
        art = load_state(path, "ZooModel", legacy_kind=True)
        expected = model.state_dict()
        art.check_tensor_names(expected)
        state = {k: art.tensor(k, v.dtype, tuple(v.shape)) for k, v in expected.items()}
        info = art.meta
        if not isinstance(info.get("test_accuracy"), float):
            raise art.error("metadata entry 'test_accuracy' is missing or not a number")
    except ValueError as err:
        raise ArtefactError(
            f"{err}; this is the zoo model cache: delete {path} and the model is retrained"
        ) from None
    model.load_state_dict(state)
    return model.eval(), info


# ----------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class ModelPair:
    """Two trained models, the compared layer of each, the data, and B's head.

    Attributes
    ----------
    name : zoo name of the pair.
    model_a, model_b : trained models, inputs (n, n_features) → logits (n, n_classes).
    layer_a, layer_b : compared submodule names.
    head_a, head_b : the part of each model after its layer, callable on activations.
    data : the shared train/test inputs and labels.
    info_a, info_b : training record of each model (spec, accuracies).
    """

    name: str
    model_a: nn.Module
    model_b: nn.Module
    layer_a: str
    layer_b: str
    head_a: nn.Module
    head_b: nn.Module
    data: Dataset
    info_a: dict[str, Any]
    info_b: dict[str, Any]

    def activations(self, side: str, split: str = "train") -> ActivationSet:
        """Activations of model ``side`` ("a" or "b") on the ``split`` ("train"/"test") inputs."""
        if side not in ("a", "b") or split not in ("train", "test"):
            raise ValueError("side must be 'a' or 'b' and split 'train' or 'test'")
        model, layer = (self.model_a, self.layer_a) if side == "a" else (self.model_b, self.layer_b)
        x, y = (
            (self.data.x_train, self.data.y_train)
            if split == "train"
            else (self.data.x_test, self.data.y_test)
        )
        acts = collect(model, x, layer, labels=y, device="cpu")
        return ActivationSet(acts.x, acts.labels, {**acts.meta, "pair": self.name, "side": side})


_DIGITS = dict(dataset="digits", epochs=60, lr=2e-3, batch_size=64, weight_decay=1e-4)
_M1D = dict(dataset="mnist1d", epochs=40, lr=2e-3, batch_size=128, weight_decay=1e-4)
PAIRS: dict[str, tuple[ModelSpec, ModelSpec]] = {
    "digits-mlp": (
        ModelSpec("mlp", hidden=(64, 64), seed=0, **_DIGITS),  # type: ignore[arg-type]
        ModelSpec("mlp", hidden=(96, 96), seed=1, **_DIGITS),  # type: ignore[arg-type]
    ),
    "mnist1d-cnn": (
        ModelSpec("cnn", hidden=(32, 32, 32, 64), seed=0, **_M1D),  # type: ignore[arg-type]
        ModelSpec("cnn", hidden=(32, 32, 32, 64), seed=1, **_M1D),  # type: ignore[arg-type]
    ),
    "mnist1d-mlp-cnn": (
        ModelSpec("mlp", hidden=(256, 128, 64), seed=2, **_M1D),  # type: ignore[arg-type]
        ModelSpec("cnn", hidden=(32, 32, 32, 64), seed=0, **_M1D),  # type: ignore[arg-type]
    ),
}


def list_pairs() -> list[str]:
    """Names of the bundled pairs."""
    return list(PAIRS)


def load_pair(name: str, *, cache: bool = True) -> ModelPair:
    """Train or load the pair ``name``; layers are the last hidden ReLU of each model."""
    if name not in PAIRS:
        raise KeyError(f"unknown pair {name!r}; available: {', '.join(PAIRS)}")
    spec_a, spec_b = PAIRS[name]
    model_a, info_a = train_model(spec_a, cache=cache)
    model_b, info_b = train_model(spec_b, cache=cache)
    return ModelPair(
        name=name,
        model_a=model_a,
        model_b=model_b,
        layer_a="hidden",
        layer_b="hidden",
        head_a=head_after(model_a, "hidden"),
        head_b=head_after(model_b, "hidden"),
        data=load_dataset(spec_a.dataset),
        info_a=info_a,
        info_b=info_b,
    )
