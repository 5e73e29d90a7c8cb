"""Saving and loading :class:`~flowmatch.autoencoder.FlowAutoencoder` artefacts.

A model file holds the preprocessing arrays and the flow/mixture state dict as tensors, and
``params`` (hyperparameters), ``fitted`` (sizes and the global scale) and ``history`` (per-epoch
NLL) as JSON. Loading restores known entries only, each checked (type, dtype, shape, finite
values, consistent sizes), so that a forged or damaged file fails with a one-line
:class:`~flowmatch._io.ArtefactError` naming the file and the entry.

Training checkpoints (in-memory and store fits alike) hold the model's and the best state's
tensors (``model.*``, ``best.*``), the optimiser's per-parameter state (``opt.<i>.<key>``)
and, as JSON, the fit's fingerprint, its loop state, its history and the optimiser's
parameter groups: :func:`save_checkpoint`, :func:`restore_checkpoint`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowmatch._io import Artefact, save_state
from flowmatch.validation import resolve_device

__all__ = ["CHECKPOINT_KIND", "restore", "restore_checkpoint", "save_checkpoint", "state_of"]

CHECKPOINT_KIND = "FlowAutoencoder.checkpoint"

INTS = ("d_in_", "n_features_modelled_", "latent_dim_", "d_flow_", "n_epochs_", "best_epoch_")
TIMINGS = ("fit_seconds_", "train_samples_per_second_")  # never saved: not reproducible
ARRAYS = (
    "constant_columns_",
    "constant_values_",
    "kept_columns_",
    "mean_",
    "components_",
    "explained_variance_",
    "explained_variance_ratio_",
)


def state_of(ae: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON metadata of a fitted autoencoder (no timings)."""
    tensors = {name: getattr(ae, name) for name in ARRAYS}
    tensors.update({f"model.{k}": v for k, v in ae.model_.state_dict().items()})
    params = {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in ae.get_params().items()}
    params["flow"] = ae.flow_  # the flow used, so that a file loads the same flow anywhere
    fitted: dict[str, Any] = {name: int(getattr(ae, name)) for name in INTS}
    fitted["scale_"] = float(ae.scale_)
    history = {k: v for k, v in ae.history_.items() if k in ("train_nll", "val_nll")}
    return tensors, {"params": params, "fitted": fitted, "history": history}


def restore(cls: type, art: Artefact, device: str | None) -> Any:
    """A fitted ``cls`` from a loaded artefact, every entry checked."""
    ae = _from_params(cls, art, device)
    _restore_fitted(ae, art)
    ae.history_ = _history(art)
    ae.fit_seconds_ = None
    ae.train_samples_per_second_ = None
    ae._device = resolve_device(ae.device)
    ae._resolve_runtime()
    ae._set_device_tensors()
    model = ae._build_model().to(ae._device, getattr(torch, ae.dtype))
    state = {k[6:]: v for k, v in art.tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    for key, value in expected.items():
        art.tensor(f"model.{key}", value.dtype, tuple(value.shape))
    extra = sorted(set(state) - set(expected))
    if extra:
        raise art.error(f"unexpected tensor 'model.{extra[0]}' for this flow")
    model.load_state_dict(state)
    ae.model_ = model.eval()
    return ae


def _from_params(cls: type, art: Artefact, device: str | None) -> Any:
    params = art.field("params", dict)
    known = set(inspect.signature(cls).parameters)
    unknown = sorted(set(params) - known)
    if unknown:
        raise art.error(f"unknown parameter {unknown[0]!r} in 'params'")
    ae = cls(**params)
    if device is not None:
        ae.device = device
    try:
        ae.validate_params()
    except (TypeError, ValueError, KeyError) as err:
        raise art.error(f"bad parameter in 'params': {err}") from None
    return ae


def _restore_fitted(ae: Any, art: Artefact) -> None:
    fitted = art.field("fitted", dict)
    allowed = set(INTS) | {"scale_"} | (set(TIMINGS) if art.version == 0 else set())
    unknown = sorted(set(fitted) - allowed)
    if unknown:
        raise art.error(f"unknown entry {unknown[0]!r} in 'fitted'")
    for name in INTS:
        setattr(ae, name, art.field(name, int, fitted))
    scale = art.field("scale_", (int, float), fitted)
    if not (math.isfinite(scale) and scale > 0):
        raise art.error(f"'fitted' entry 'scale_' must be finite and > 0, got {scale}")
    ae.scale_ = float(scale)
    d, dp, k, f = ae.d_in_, ae.n_features_modelled_, ae.latent_dim_, ae.d_flow_
    if not (1 <= k <= f <= dp <= d) or dp < 2 or ae.best_epoch_ > ae.n_epochs_:
        raise art.error(
            f"inconsistent sizes in 'fitted' (d_in_={d}, n_features_modelled_={dp}, "
            f"d_flow_={f}, latent_dim_={k})"
        )
    art.check_tensor_names(ARRAYS, prefixes=("model.",))
    c = d - dp
    ae.constant_columns_ = art.tensor("constant_columns_", torch.int64, (c,))
    ae.kept_columns_ = art.tensor("kept_columns_", torch.int64, (dp,))
    columns = torch.cat([ae.constant_columns_, ae.kept_columns_]).sort().values
    if not torch.equal(columns, torch.arange(d)):
        raise art.error("constant_columns_ and kept_columns_ do not split the columns")
    ae.constant_values_ = art.tensor("constant_values_", torch.float64, (c,))
    ae.mean_ = art.tensor("mean_", torch.float64, (dp,))
    ae.components_ = art.tensor("components_", torch.float64, (dp, dp))
    ae.explained_variance_ = art.tensor("explained_variance_", torch.float64, (dp,))
    ae.explained_variance_ratio_ = art.tensor("explained_variance_ratio_", torch.float64, (dp,))
    eye = ae.components_.T @ ae.components_
    if not torch.allclose(eye, torch.eye(dp, dtype=torch.float64), atol=1e-6):
        raise art.error("components_ is not orthonormal")
    if bool((ae.explained_variance_ < 0).any()):
        raise art.error("explained_variance_ has negative entries")


def _history(art: Artefact) -> dict[str, list[float]]:
    raw = art.meta.get("history", {})
    if not isinstance(raw, dict):
        raise art.error("metadata entry 'history' must be an object")
    out: dict[str, list[float]] = {}
    for key in ("train_nll", "val_nll"):
        values = raw.get(key, [])
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise art.error(f"'history' entry {key!r} must be a list of numbers")
        out[key] = [float(v) for v in values]
    return out


def save_checkpoint(
    path: Any,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    best_state: dict[str, Tensor],
    meta: dict[str, Any],
) -> None:
    """Write a training checkpoint to ``path``: the tensors above and ``meta`` (fingerprint,
    loop state, history) with the optimiser's parameter groups."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt_sd = opt.state_dict()
    for idx, st in opt_sd["state"].items():
        for key, val in st.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(val)
    meta = {**meta, "param_groups": opt_sd["param_groups"]}
    save_state(str(path), tensors, meta, kind=CHECKPOINT_KIND)


def restore_checkpoint(
    art: Artefact,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    device: torch.device,
    check_state: Callable[[dict, dict], None],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
    """Load a checkpoint's model and optimiser state into ``model`` and ``opt`` (on
    ``device``); return its loop state, history and best state. ``check_state(state,
    history)`` raises for a loop state the caller cannot use; any bad entry raises the
    artefact's one-line error."""
    tensors, meta = art.tensors, art.meta

    def prefixed(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}

    try:
        best = prefixed("best.")
        model.load_state_dict(best)  # checks the best state too
        model.load_state_dict(prefixed("model."))
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, val in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                moved = val if name == "step" else val.to(device)
                opt_state.setdefault(int(idx), {})[name] = moved
        opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        state, history = dict(meta["state"]), dict(meta["history"])
        check_state(state, history)
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise art.error(f"not a usable checkpoint ({err}); delete it to train afresh") from None
    return state, history, best
