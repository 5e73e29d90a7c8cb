"""Volume-preserving flow autoencoder: an exact density on activations with a k-dim latent.

>>> ae = FlowAutoencoder(latent_dim=10, flow="coupling", seed=0).fit(acts)   # acts: (n, d)
>>> z = ae.encode(acts)            # (n, 10)
>>> x_hat = ae.decode(z)           # (n, d), noise coordinates set to zero
>>> ae.log_prob(acts)              # (n,) exact log-density of the activations

Model
-----
``x ∈ R^d`` is preprocessed by an exactly invertible affine map: columns that are constant on
the training data are set aside (see *Constant columns*), the rest are centred, divided by one
global scale ``s`` and rotated onto their principal axes, ``y = Rᵀ(x − μ) / s`` (``R``
orthogonal). The top ``d_flow`` PCA coordinates go through a volume-preserving flow φ
(registry :data:`flowmatch.flows.FLOWS`) initialised at the identity; its first ``k`` outputs
are the latent ``z``, the other ``d_flow − k`` outputs and the ``d' − d_flow`` trailing PCA
coordinates are modelled as independent zero-mean Gaussian noise. The base density is a
learnable Gaussian mixture (full covariances) on ``z`` times ``N(0, diag σ²)`` on the noise.
Because ``log|det ∂φ/∂y| = 0`` and ``|det R| = 1``::

    log p(x) = log GMM(z) + Σ_j log N(ε_j; 0, σ_j²) − d' log s

is an exact density of the non-constant columns, trained by plain maximum likelihood
(optionally plus ``reconstruction_weight`` × the squared error of ``decode(encode(x))``, as in
denoising normalizing flows). The trailing PCA variances are their maximum-likelihood values
(the PCA eigenvalues, floored at ``min_variance``); the flow-noise variances are learned.

Default flow
------------
``flow="coupling"`` (NICE additive coupling, 6 layers) is the default: within the default
budget of 1,200 optimiser steps it reaches the better held-out likelihood of the two exactly
volume-preserving flows. ``flow="cnf"`` (a divergence-free ODE with a leapfrog solver) is
exactly volume-preserving as well, and needs no trace estimator, so it trains several times as
many samples per second as a trace-estimating CNF of the same width. ``flowmatch bench flow``
measures both; the README gives the figures.

Constant columns
----------------
Dead ReLU units give columns that are constant on all training rows; such data has no density
with respect to Lebesgue measure on ``R^d``. With ``on_constant="drop"`` (default) these
columns are set aside with a warning: they are restored to their constant value by
``decode``/``sample`` and ``log_prob`` is the density of the other ``d'`` columns (the
conditional density given the constant columns; their values in new rows are ignored). With
``on_constant="error"`` they raise ``ValueError``. A matrix whose columns are all constant
always raises.

Row order
---------
Rows are sorted into a canonical (lexicographic) order before anything else, so the fitted
model does not depend on the order of the rows given to ``fit``.

References
----------
Dinh, Krueger, Bengio (2015). NICE: Non-linear independent components estimation.
Sorrenson, Rother, Köthe (2020). Disentanglement by nonlinear ICA with general
incompressible-flow networks (GIN). ICLR.
Horvat, Pfister (2021). Denoising normalizing flow. NeurIPS.
Grathwohl et al. (2019). FFJORD. ICLR.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from sklearn.base import BaseEstimator
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowmatch import _autoencoder_io
from flowmatch._gmm import GaussianMixture
from flowmatch._io import load_state, save_state
from flowmatch.flows import Flow, get_flow
from flowmatch.outputs import check_file_output
from flowmatch.store import ActivationStore
from flowmatch.validation import (
    MAX_SEED,
    Bool,
    Constraint,
    Instance,
    Int,
    Options,
    Real,
    Valid,
    as_matrix,
    canonical_order,
    check_bool,
    check_fitted,
    check_params,
    resolve_device,
)

__all__ = ["FlowAutoencoder"]

logger = logging.getLogger("flowmatch")
_LOG_2PI = math.log(2 * math.pi)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _Model(nn.Module):
    """Trainable part: flow, latent mixture, log-variances of the flow-noise coordinates."""

    flow: Flow
    mixture: GaussianMixture

    def __init__(self, flow: Flow, mixture: GaussianMixture, n_noise: int) -> None:
        super().__init__()
        self.flow = flow
        self.mixture = mixture
        self.noise_log_var = nn.Parameter(torch.zeros(n_noise))


def _gauss_log_prob(x: Tensor, var: Tensor) -> Tensor:
    """Σ_j log N(x_j; 0, var_j)  # (n,)"""
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0])
    return -0.5 * ((x**2) / var + torch.log(var) + _LOG_2PI).sum(dim=1)


class FlowAutoencoder(BaseEstimator):
    """Volume-preserving flow autoencoder (see the module docstring for the model).

    A scikit-learn estimator: ``get_params``/``set_params``/``clone`` and the repr come from
    :class:`sklearn.base.BaseEstimator`; every parameter has a declared constraint
    (``_parameter_constraints``, :mod:`flowmatch.validation`) checked by ``fit``.

    Parameters
    ----------
    latent_dim : int or "auto"
        Number k of kept latent coordinates. ``"auto"``: the smallest k whose top-k PCA
        coordinates explain ``explained_variance`` of the variance (clipped to
        ``[min_latent_dim, d_flow]``); the choice is logged and stored in ``latent_dim_``.
    flow : ``"auto"`` (default: ``"cnf"`` on CUDA, ``"coupling"`` on the CPU) or a registered
        flow name: ``"coupling"``, ``"cnf"`` or ``"ffjord"`` (the latter is not
        volume-preserving; it exists as a benchmark reference). The flow used is ``flow_``.
    n_components : number of Gaussian mixture components on the latent.
    d_flow : number of top PCA coordinates the flow acts on (capped at d').
    hidden : hidden width of the flow networks.
    flow_options : extra keyword arguments for the flow class (e.g. ``{"n_steps": 8,
        "method": "leapfrog"}`` for ``cnf``, ``{"n_layers": 6}`` for ``coupling``).
    covariance_type : ``"full"`` or ``"diag"`` mixture covariances.
    explained_variance, min_latent_dim : the ``"auto"`` rule. The floor keeps enough
        directions for the class structure of a layer whose variance sits in few directions.
    reconstruction_weight : weight λ of the reconstruction term (squared error per
        coordinate, in units of the scaled data) added to the NLL per coordinate.
    training_noise : standard deviation of Gaussian noise added to each training minibatch,
        per principal coordinate and relative to that coordinate's standard deviation (0: off).
        A smoothing regulariser for small activation sets: the flow's shears regress half of
        the coordinates on the other half, and on about a thousand rows that regression
        overfits. It helps long runs and slows short ones (README, "The flow autoencoders'
        likelihood"), so it is off by default. ``history_["train_nll"]`` is then the NLL of
        the smoothed minibatches; the held-out NLL used for early stopping is always on clean
        rows.
    lr, batch_size, max_epochs, patience : Adam learning rate, minibatch size, epoch limit,
        and early stopping on the held-out NLL (epochs without improvement).
    max_steps : optional limit on optimiser steps (training stops after the epoch that
        reaches it), which keeps the default cost roughly independent of n.
    validation_fraction : fraction of rows held out for early stopping (none below 20 rows).
    min_variance : variance floor (scaled units) for noise coordinates and mixture factors.
    on_constant : ``"drop"`` or ``"error"`` for constant columns.
    max_time : optional wall-clock budget in seconds for training (stops early with a note).
    checkpoint : optional path; training state is saved there every ``checkpoint_every``
        epochs and a later ``fit`` on the same data and hyperparameters resumes from it.
    checkpoint_every : epochs between checkpoints (evaluations for a fit from a store).
    eval_steps : fits from an :class:`~flowmatch.store.ActivationStore` only: optimiser steps
        between held-out evaluations (early stopping and checkpoints happen there); ``None``:
        one pass over the training rows or 200 steps, whichever is fewer.
    mixed_precision : run the flow's networks under ``torch.autocast`` in bfloat16 (the
        mixture, the noise terms and the flow's state stay in ``dtype``). ``"auto"``: on CUDA
        with ``dtype="float32"`` only.
    progress : show a tqdm progress bar with the training and held-out NLL (nats/dim).
    dtype : ``"float32"`` or ``"float64"`` parameters and computations.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` ...
    seed : seeds the split, minibatch order, initial weights and the mixture initialisation.

    Attributes
    ----------
    d_in_ : int  # number of input columns d
    n_features_modelled_ : int  # d', the non-constant columns
    latent_dim_ : int  # chosen k
    d_flow_ : int
    constant_columns_ : Tensor  # (c,) int64, columns set aside
    constant_values_ : Tensor  # (c,)
    kept_columns_ : Tensor  # (d',) int64
    mean_ : Tensor  # (d',)
    scale_ : float  # global scale s
    components_ : Tensor  # (d', d'), orthonormal principal axes as columns
    explained_variance_ : Tensor  # (d',), PCA variances in scaled units (mean 1)
    explained_variance_ratio_ : Tensor  # (d',)
    noise_variance_ : Tensor  # (d' − k,), flow-noise then trailing PCA variances
    mixture_weights_ : Tensor  # (K,)
    mixture_means_ : Tensor  # (K, k)
    mixture_covariances_ : Tensor  # (K, k, k), full covariances (diagonal if "diag")
    history_ : dict  # per-epoch "train_nll", "val_nll" (nats/dim), "seconds" (not saved)
    flow_ : str  # the flow used (``flow`` with ``"auto"`` resolved)
    n_epochs_ : int  # epochs run; ``best_epoch_`` the one restored (for a store fit:
        passes begun, and the evaluation restored)
    n_steps_ : int  # optimiser steps taken
    fit_seconds_ : float  # None after :meth:`load` (timings are not saved)
    train_samples_per_second_ : float  # None after :meth:`load`
    """

    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        "latent_dim": Int(1, also=("auto",)),
        "flow": Valid(lambda name: name == "auto" or get_flow(name)),
        "n_components": Int(1),
        "d_flow": Int(1),
        "hidden": Int(1),
        "flow_options": Instance(dict, "a dict", none=True),
        "covariance_type": Options(("full", "diag")),
        "explained_variance": Real(0.0, 1.0, low_open=True),
        "min_latent_dim": Int(1),
        "reconstruction_weight": Real(0.0),
        "training_noise": Real(0.0),
        "lr": Real(0.0, low_open=True),
        "batch_size": Int(1),
        "max_epochs": Int(1),
        "max_steps": Int(1, none=True),
        "patience": Int(1),
        "validation_fraction": Real(0.0, 1.0, high_open=True),
        "min_variance": Real(0.0, low_open=True),
        "on_constant": Options(("drop", "error")),
        "max_time": Real(0.0, low_open=True, none=True),
        "checkpoint": Instance((str, os.PathLike), "a path", none=True),
        "checkpoint_every": Int(1),
        "eval_steps": Int(1, none=True),
        "mixed_precision": Valid(lambda v: v == "auto" or check_bool("mixed_precision", v)),
        "progress": Bool(),
        "dtype": Options(tuple(_DTYPES)),
        "device": Valid(resolve_device),
        "seed": Int(0, MAX_SEED),
    }

    def __init__(
        self,
        latent_dim: int | str = "auto",
        flow: str = "auto",
        n_components: int = 12,
        d_flow: int = 64,
        hidden: int = 128,
        flow_options: dict[str, Any] | None = None,
        covariance_type: str = "full",
        explained_variance: float = 0.9,
        min_latent_dim: int = 10,
        reconstruction_weight: float = 50.0,
        training_noise: float = 0.0,
        lr: float = 1e-3,
        batch_size: int = 128,
        max_epochs: int = 200,
        max_steps: int | None = 1200,
        patience: int = 20,
        validation_fraction: float = 0.1,
        min_variance: float = 1e-6,
        on_constant: str = "drop",
        max_time: float | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        eval_steps: int | None = None,
        mixed_precision: bool | str = "auto",
        progress: bool = True,
        dtype: str = "float32",
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.latent_dim = latent_dim
        self.flow = flow
        self.n_components = n_components
        self.d_flow = d_flow
        self.hidden = hidden
        self.flow_options = flow_options
        self.covariance_type = covariance_type
        self.explained_variance = explained_variance
        self.min_latent_dim = min_latent_dim
        self.reconstruction_weight = reconstruction_weight
        self.training_noise = training_noise
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.min_variance = min_variance
        self.on_constant = on_constant
        self.max_time = max_time
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.eval_steps = eval_steps
        self.mixed_precision = mixed_precision
        self.progress = progress
        self.dtype = dtype
        self.device = device
        self.seed = seed

    # ------------------------------------------------------------------ parameters
    def validate_params(self) -> None:
        """Check every hyperparameter against ``_parameter_constraints``; ``fit`` calls this
        first.

        Raises ``TypeError`` or ``ValueError`` naming the first bad parameter, e.g.
        ``max_epochs must be >= 1, got 0``; an unknown flow raises ``KeyError``.
        """
        check_params(self.get_params(deep=False), self._parameter_constraints)

    _validate_params = validate_params  # scikit-learn's hook calls the same checks

    # ------------------------------------------------------------------ preprocessing
    def _fit_preprocessing(self, x: Tensor) -> None:
        """Constant columns set aside, then mean, global scale and principal axes of the rest,
        and the latent width k."""
        n = x.shape[0]
        x64 = x.double()
        constant = (x64.max(0).values - x64.min(0).values) == 0
        self._set_aside_constants(constant, x64[0])
        xk = x64[:, self.kept_columns_]
        # far from 1, work on x times a power of two (exact) so that the covariance of huge
        # (1e200) or tiny values neither over- nor underflows; otherwise on x itself
        big = float(xk.abs().max())
        f = 1.0 if 1e-100 < big < 1e100 else 2.0 ** -round(math.log2(big))
        xn = xk * f
        mean_n = xn.mean(0)
        xc = xn - mean_n
        self._set_principal_axes(mean_n, xc.T @ xc / n, f, big)

    def _preprocessing_from_moments(self, moments: Any) -> None:
        """The same preprocessing from one-pass statistics of the rows
        (:class:`flowmatch.streaming.Moments`, float64), as a store fit computes them."""
        self._set_aside_constants(moments.constant_columns(), moments.minimum)
        kept = self.kept_columns_
        cov = moments.covariance()[kept][:, kept]
        big = float(torch.maximum(moments.maximum.abs(), moments.minimum.abs())[kept].max())
        self._set_principal_axes(moments.mean[kept], cov, 1.0, big)

    def _set_principal_axes(self, mean_n: Tensor, cov: Tensor, f: float, big: float) -> None:
        """Mean, global scale, principal axes and k from the mean and covariance of the kept
        columns of ``x · f``  # (d',), (d', d')"""
        dp = cov.shape[0]
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
        sign = torch.sign(evecs[evecs.abs().argmax(0), torch.arange(dp)])
        evecs = evecs * torch.where(sign == 0, 1.0, sign)
        scale_n = math.sqrt(float(evals.sum()) / dp)
        self.mean_ = mean_n / f
        self.scale_ = float(scale_n / f)
        if not (
            math.isfinite(self.scale_) and self.scale_ > 0 and torch.isfinite(self.mean_).all()
        ):
            raise ValueError(
                f"x spans values up to {big:.3g} whose mean or spread is not representable "
                "in float64; rescale the activations"
            )
        self.components_ = evecs.contiguous()
        self.explained_variance_ = evals / scale_n**2
        self.explained_variance_ratio_ = evals / evals.sum()
        self.d_flow_ = min(int(self.d_flow), dp)
        self.latent_dim_ = self._latent_width(dp)

    def _set_aside_constants(self, constant: Tensor, values: Tensor) -> None:
        """Record the constant columns (bool (d,)) and their values (warn, or raise with
        ``on_constant="error"``)."""
        if bool(constant.all()):
            raise ValueError("all columns of x are constant; there is nothing to model")
        if bool(constant.any()):
            cols = torch.nonzero(constant).flatten().tolist()
            msg = (
                f"x has {len(cols)} constant column(s) (zero variance, e.g. dead ReLU units): "
                f"{cols[:20]}{' ...' if len(cols) > 20 else ''}"
            )
            if self.on_constant == "error":
                raise ValueError(msg + "; pass on_constant='drop' to set them aside")
            warnings.warn(
                msg + "; they are set aside (restored by decode, ignored by log_prob)",
                stacklevel=4,
            )
        self.d_in_ = int(constant.shape[0])
        self.constant_columns_ = torch.nonzero(constant).flatten()
        self.kept_columns_ = torch.nonzero(~constant).flatten()
        self.constant_values_ = values.double()[self.constant_columns_].clone()
        self.n_features_modelled_ = int(self.kept_columns_.shape[0])
        if self.n_features_modelled_ < 2:
            raise ValueError(
                f"x has {self.n_features_modelled_} non-constant column; at least 2 are needed"
            )

    def _latent_width(self, dp: int) -> int:
        """k: ``latent_dim``, or with ``"auto"`` the smallest k whose top-k principal
        coordinates explain ``explained_variance`` (clipped to [min_latent_dim, d_flow])."""
        if self.latent_dim != "auto":
            if int(self.latent_dim) > self.d_flow_:
                raise ValueError(
                    f"latent_dim={self.latent_dim} exceeds d_flow={self.d_flow_} "
                    f"(min of d_flow and the {dp} non-constant columns)"
                )
            return int(self.latent_dim)
        cum = torch.cumsum(self.explained_variance_ratio_, 0)
        k = int((cum < self.explained_variance - 1e-12).sum()) + 1
        want = max(k, min(int(self.min_latent_dim), self.d_flow_))
        k = min(want, self.d_flow_)
        kept = float(cum[k - 1])
        if want > self.d_flow_:
            warnings.warn(
                f"latent_dim='auto' wants k={want} coordinates for "
                f"{self.explained_variance:.3g} of the variance, but the flow acts on "
                f"d_flow={self.d_flow_}; k={self.d_flow_} keeps {kept:.3g} of it (raise "
                "d_flow to keep more)",
                stacklevel=6,
            )
        logger.info("FlowAutoencoder: latent_dim='auto' chose k=%d (%.4f of the variance)", k, kept)
        return k

    def _working(self, x: Tensor) -> Tensor:
        """``x`` on the device in the working dtype, or in float64 when its finite values
        overflow the working dtype (float32 ends at 3.4e38)."""
        out = x.to(self._device, _DTYPES[self.dtype])
        if out.dtype != x.dtype and not bool(torch.isfinite(out).all()):
            return x.to(self._device, torch.float64)
        return out

    def _to_pca(self, x: Tensor) -> Tensor:
        """``y = Rᵀ(x − μ)/s`` on the non-constant columns  # (n, d')

        When the working dtype overflows on finite rows, the rows are centred and scaled in
        float64 first; rows whose coordinates still do not fit raise a ``ValueError``."""
        xk = x[:, self.kept_columns_.to(x.device)]
        if xk.dtype == self._mean.dtype:
            y = (xk - self._mean) @ self._components / self.scale_
            if bool(torch.isfinite(y).all()):
                return y
        mean, comp = self.mean_.to(x.device), self.components_.to(x.device)
        y64 = ((xk.double() - mean) / self.scale_) @ comp
        y = y64.to(_DTYPES[self.dtype])
        if not bool(torch.isfinite(y).all()):
            raise ValueError(
                f"x lies up to {float(y64.abs().max()):.3g} scaled units from the training data, "
                f"beyond {self.dtype}; check the input or use dtype='float64'"
            )
        return y

    def _from_pca(self, y: Tensor) -> Tensor:
        """Inverse of :meth:`_to_pca`, constant columns restored  # (n, d_in)"""
        out = y.new_empty(y.shape[0], self.d_in_)
        out[:, self.kept_columns_.to(y.device)] = y @ self._components.T * self.scale_ + self._mean
        out[:, self.constant_columns_.to(y.device)] = self.constant_values_.to(y)
        return out

    # ------------------------------------------------------------------ model
    def _build_model(self) -> _Model:
        gen = torch.Generator().manual_seed(int(self.seed))
        flow_cls = get_flow(self.flow_)
        flow = flow_cls(
            self.d_flow_, hidden=int(self.hidden), generator=gen, **(self.flow_options or {})
        )
        mixture = GaussianMixture(
            int(self.n_components), self.latent_dim_, self.covariance_type, self.min_variance
        )
        return _Model(cast(Flow, flow), mixture, self.d_flow_ - self.latent_dim_)

    def _resolve_runtime(self) -> None:
        """The flow (``flow_``) and whether the flow's networks run in bfloat16, once the
        device is known."""
        cuda = self._device.type == "cuda"
        self.flow_ = ("cnf" if cuda else "coupling") if self.flow == "auto" else self.flow
        amp = self.mixed_precision
        self._amp = (cuda and self.dtype == "float32") if amp == "auto" else bool(amp)

    def _flow_precision(self, model: _Model) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for the flow while training with mixed precision; otherwise
        (evaluation, inference) nothing changes and the flow runs in ``dtype``."""
        if getattr(self, "_amp", False) and model.training:
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _set_device_tensors(self) -> None:
        dt = _DTYPES[self.dtype]
        self._mean = self.mean_.to(self._device, dt)
        self._components = self.components_.to(self._device, dt)
        tail = self.explained_variance_[self.d_flow_ :].clamp_min(self.min_variance)
        self._tail_var = tail.to(self._device, dt)

    def _noise_var(self, model: _Model) -> Tensor:
        return torch.exp(model.noise_log_var) + self.min_variance

    def _log_prob_terms(self, model: _Model, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p(x), u)`` from PCA coordinates ``y``  # (n,), (n, d_flow)"""
        k, f = self.latent_dim_, self.d_flow_
        with self._flow_precision(model):
            u, logdet = model.flow(y[:, :f])
        u, logdet = u.to(y.dtype), logdet.to(y.dtype)
        lp = (
            model.mixture.log_prob(u[:, :k])
            + _gauss_log_prob(u[:, k:], self._noise_var(model))
            + _gauss_log_prob(y[:, f:], self._tail_var)
            + logdet
            - self.n_features_modelled_ * math.log(self.scale_)
        )
        return lp, u

    def _loss(self, model: _Model, y: Tensor) -> tuple[Tensor, Tensor]:
        lp, u = self._log_prob_terms(model, y)
        nll = -lp.mean() / self.n_features_modelled_
        if self.reconstruction_weight > 0:
            k = self.latent_dim_
            u0 = torch.cat([u[:, :k], torch.zeros_like(u[:, k:])], dim=1)
            with self._flow_precision(model):
                y_hat = model.flow.inverse(u0)
            err = ((y_hat.to(y.dtype) - y[:, : self.d_flow_]) ** 2).sum(1).mean()
            return nll + self.reconstruction_weight * err / self.n_features_modelled_, nll
        return nll, nll

    # ------------------------------------------------------------------ fit
    def fit(self, x: Any, y: Any = None) -> FlowAutoencoder:
        """Fit preprocessing, flow and base density by maximum likelihood.

        Parameters
        ----------
        x : ActivationSet | Tensor | ndarray  # (n, d), n > d, finite; or an
            :class:`~flowmatch.store.ActivationStore`: then the preprocessing comes from one
            streaming pass and minibatches are read from disk, data-parallel under
            ``torchrun`` (:mod:`flowmatch._store_fit`).
        y : ignored (scikit-learn convention).

        Returns
        -------
        self
        """
        self.validate_params()
        if self.checkpoint is not None:
            check_file_output(self.checkpoint, "FlowAutoencoder.checkpoint")
        if isinstance(x, ActivationStore):
            from flowmatch._store_fit import fit_store

            return fit_store(self, x)
        x = as_matrix(x, "x", min_samples=2)
        n, d = x.shape
        if n <= d:
            raise ValueError(
                f"x has {n} samples for {d} dimensions; fewer samples than dimensions "
                f"(at least {d + 1} rows are needed to estimate a {d}-dim covariance)"
            )
        x = x.detach().cpu().double()
        x = x[torch.as_tensor(canonical_order(x))]
        self._device = resolve_device(self.device)
        self._resolve_runtime()
        self._fit_preprocessing(x)
        self._set_device_tensors()
        dt = _DTYPES[self.dtype]
        y_all = self._to_pca(self._working(x))
        gen = torch.Generator().manual_seed(int(self.seed))
        n_val = int(round(self.validation_fraction * n)) if n >= 20 else 0
        order = torch.randperm(n, generator=gen).to(self._device)
        y_val, y_tr = (y_all[order[:n_val]], y_all[order[n_val:]]) if n_val else (y_all, y_all)
        model = self._initial_model(y_tr).to(self._device, dt)
        self.model_ = model
        self._train(model, y_tr, y_val, self._fingerprint(x))
        self.model_.eval()
        return self

    def _initial_model(self, y: Tensor) -> _Model:
        """A new model whose mixture is fitted by EM to the latent block of the principal
        coordinates ``y`` and whose flow-noise variances are ``y``'s  # y: (n, d')"""
        model = self._build_model()
        model.mixture.init_from_data(y[:, : self.latent_dim_], int(self.seed))
        if self.d_flow_ > self.latent_dim_:  # flow-noise coordinates exist
            with torch.no_grad():
                noise = y[:, self.latent_dim_ : self.d_flow_].double().var(0, unbiased=False)
                model.noise_log_var.copy_(torch.log((noise - self.min_variance).clamp_min(1e-12)))
        return model

    #: parameters a fit may be resumed with other values of (a larger budget, say)
    _RESUMABLE_PARAMS = (
        "progress",
        "checkpoint",
        "checkpoint_every",
        "max_epochs",
        "max_steps",
        "max_time",
        "patience",
    )

    def _fingerprint(self, x: Tensor) -> str:
        skip = self._RESUMABLE_PARAMS
        params = {k: v for k, v in self.get_params().items() if k not in skip}
        blob = json.dumps(params, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob + x.numpy().tobytes()).hexdigest()

    def _train(self, model: _Model, y_tr: Tensor, y_val: Tensor, fingerprint: str) -> None:
        """Adam on minibatches of ``y_tr`` with early stopping on the held-out NLL of
        ``y_val``; the best epoch's weights are restored. Checkpoints resume an earlier run."""
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        state: dict[str, Any] = {
            "epoch": 0, "best": math.inf, "best_epoch": 0, "bad": 0, "seconds": 0.0, "steps": 0,
        }  # fmt: skip
        history: dict[str, list[float]] = {"train_nll": [], "val_nll": [], "seconds": []}
        best_state = copy.deepcopy(model.state_dict())
        if self.checkpoint is not None and Path(self.checkpoint).exists():
            resumed = self._load_checkpoint(model, opt, fingerprint)
            if resumed is not None:
                state, history, best_state = resumed
        bar = tqdm(
            range(int(state["epoch"]), int(self.max_epochs)),
            disable=not self.progress,
            desc=f"FlowAutoencoder[{self.flow}] k={self.latent_dim_}",
            leave=False,
        )
        n_seen, t_train = 0, 0.0
        for epoch in bar:
            t0 = time.perf_counter()
            train_nll = self._epoch(model, opt, y_tr, epoch, state)
            n_seen, t_train = n_seen + y_tr.shape[0], t_train + time.perf_counter() - t0
            with torch.no_grad():
                val = -float(self._log_prob_terms(model, y_val)[0].mean())
                val /= self.n_features_modelled_
            if not math.isfinite(val):
                raise FloatingPointError(f"non-finite held-out NLL at epoch {epoch}; lower lr")
            state["seconds"] += time.perf_counter() - t0
            for key, value in (("train_nll", train_nll), ("val_nll", val)):
                history[key].append(value)
            history["seconds"].append(state["seconds"])
            state["epoch"] = epoch + 1
            if val < state["best"] - 1e-4:
                state.update(best=val, best_epoch=epoch + 1, bad=0)
                best_state = copy.deepcopy(model.state_dict())
            else:
                state["bad"] += 1
            bar.set_postfix(nll=f"{train_nll:.3f}", val=f"{val:.3f}", best=f"{state['best']:.3f}")
            if self._stop(epoch, state, (model, opt, history, best_state, fingerprint)):
                break
        bar.close()
        model.load_state_dict(best_state)
        self.history_ = history
        self.n_epochs_, self.best_epoch_ = state["epoch"], state["best_epoch"]
        self.fit_seconds_ = state["seconds"]
        self.n_steps_ = int(state["steps"])
        self.train_samples_per_second_ = n_seen / t_train if t_train > 0 else float("nan")

    def _epoch(
        self, model: _Model, opt: torch.optim.Optimizer, y_tr: Tensor, epoch: int, state: dict
    ) -> float:
        """One pass over ``y_tr`` in seeded minibatches (with the training noise, when on);
        returns the mean training NLL per coordinate."""
        model.train()
        gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        perm = torch.randperm(y_tr.shape[0], generator=gen)
        noise_gen = torch.Generator().manual_seed(self.seed * 7919 + epoch + 104729)
        noise_std = self.training_noise * torch.sqrt(
            self.explained_variance_.clamp_min(self.min_variance)
        ).to(y_tr)  # (d',) per principal coordinate
        total, count = 0.0, 0
        for idx in perm.to(y_tr.device).split(int(self.batch_size)):
            batch = y_tr[idx]
            if self.training_noise > 0:
                eps = torch.randn(batch.shape, generator=noise_gen, dtype=torch.float64)
                batch = batch + eps.to(batch) * noise_std
            loss, nll = self._loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss ({float(loss)}) at epoch {epoch}; lower lr "
                    f"(now {self.lr}) or use dtype='float64'"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(nll.detach()) * len(idx), count + len(idx)
            state["steps"] += 1
        return total / count

    def _stop(self, epoch: int, state: dict, progress: tuple) -> bool:
        """Whether training ends after ``epoch`` (patience, time or step budget); writes the
        checkpoint when one is due."""
        stop = state["bad"] >= self.patience
        timeout = self.max_time is not None and state["seconds"] >= self.max_time
        timeout |= self.max_steps is not None and state["steps"] >= self.max_steps
        if self.checkpoint is not None and (
            stop or timeout or (epoch + 1) % self.checkpoint_every == 0
        ):
            model, opt, history, best_state, fingerprint = progress
            self._save_checkpoint(model, opt, state, history, best_state, fingerprint)
        if timeout and not stop:
            logger.info("FlowAutoencoder: time or step budget reached at epoch %d", epoch + 1)
        return stop or timeout

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, opt, state, history, best_state, fingerprint) -> None:  # noqa: ANN001
        meta = {"fingerprint": fingerprint, "state": state, "history": history}
        _autoencoder_io.save_checkpoint(self.checkpoint, model, opt, best_state, meta)

    def _load_checkpoint(self, model, opt, fingerprint):  # noqa: ANN001, ANN202
        art = load_state(self.checkpoint, _autoencoder_io.CHECKPOINT_KIND)
        if art.meta.get("fingerprint") != fingerprint:
            warnings.warn(
                f"checkpoint {self.checkpoint} was written for other data or hyperparameters; "
                "training starts afresh",
                stacklevel=4,
            )
            return None

        def check(state: dict, history: dict) -> None:
            int(state["epoch"]), float(state["best"]), int(state["steps"])

        state, history, best = _autoencoder_io.restore_checkpoint(
            art, model, opt, self._device, check
        )
        logger.info("FlowAutoencoder: resumed from %s at epoch %d", self.checkpoint, state["epoch"])
        return state, history, best

    # ------------------------------------------------------------------ inference
    def _prepare(self, x: Any, name: str = "x") -> Tensor:
        check_fitted(self, "model_")
        return self._working(as_matrix(x, name, dim=self.d_in_))

    @torch.no_grad()
    def encode(self, x: Any) -> Tensor:
        """Kept latent coordinates ``z = φ(y)[:, :k]``  # (n, d) → (n, k), CPU."""
        y = self._to_pca(self._prepare(x))
        self.model_.eval()
        z = self.model_.flow(y[:, : self.d_flow_])[0][:, : self.latent_dim_]
        return self._finite(z, "latent coordinates").cpu()

    transform = encode

    @torch.no_grad()
    def decode(self, z: Any) -> Tensor:
        """Activations from latents, noise coordinates set to zero  # (n, k) → (n, d), CPU."""
        check_fitted(self, "model_")
        zt = as_matrix(z, "z", dim=self.latent_dim_).to(self._device, _DTYPES[self.dtype])
        n = zt.shape[0]
        u = torch.cat([zt, zt.new_zeros(n, self.d_flow_ - self.latent_dim_)], dim=1)
        self.model_.eval()
        yf = self.model_.flow.inverse(u)
        y = torch.cat([yf, yf.new_zeros(n, self.n_features_modelled_ - self.d_flow_)], dim=1)
        return self._finite(self._from_pca(y), "decoded activations").cpu()

    inverse_transform = decode

    @torch.no_grad()
    def principal_coordinates(self, x: Any) -> Tensor:
        """The k leading scaled PCA coordinates, before the flow  # (n, d) → (n, k), CPU."""
        return self._to_pca(self._prepare(x))[:, : self.latent_dim_].cpu()

    @torch.no_grad()
    def from_principal_coordinates(self, y: Any) -> Tensor:
        """Activations from the k leading PCA coordinates, the others zero  # (n, k) → (n, d)."""
        check_fitted(self, "model_")
        yt = as_matrix(y, "y", dim=self.latent_dim_).to(self._device, _DTYPES[self.dtype])
        full = yt.new_zeros(yt.shape[0], self.n_features_modelled_)
        full[:, : self.latent_dim_] = yt
        return self._from_pca(full).cpu()

    def log_prob(self, x: Any) -> Tensor:
        """Exact log-density of each row (of its non-constant columns)  # (n, d) → (n,), CPU."""
        y = self._to_pca(self._prepare(x))
        self.model_.eval()
        ctx = torch.enable_grad() if not self.model_.flow.volume_preserving else torch.no_grad()
        with ctx:
            lp = self._log_prob_terms(self.model_, y)[0]
        lp = lp.detach()
        if bool(torch.isnan(lp).any()):
            self._finite(lp, "log-densities")
        if bool(torch.isinf(lp).any()):
            warnings.warn(
                f"{int(torch.isinf(lp).sum())} row(s) have log-densities below the range of "
                f"{self.dtype} (-inf): they lie far from the training data; dtype='float64' "
                "keeps them finite",
                RuntimeWarning,
                stacklevel=2,
            )
        return lp.cpu()

    def _finite(self, t: Tensor, what: str) -> Tensor:
        """``t``, or a ``ValueError`` when finite input gave non-finite ``what``."""
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).reshape(len(t), -1).any(1).sum())
            raise ValueError(
                f"{bad} row(s) gave non-finite {what} in {self.dtype} (they lie too far from "
                "the training data); check the input or use dtype='float64'"
            )
        return t

    def score(self, x: Any) -> float:
        """Mean log-likelihood per modelled coordinate (nats/dim) of ``x``."""
        return float(self.log_prob(x).double().mean()) / self.n_features_modelled_

    @torch.no_grad()
    def latent_log_prob(self, z: Any) -> Tensor:
        """Log-density of the latent Gaussian mixture  # (n, k) → (n,), CPU."""
        check_fitted(self, "model_")
        zt = as_matrix(z, "z", dim=self.latent_dim_).to(self._device, _DTYPES[self.dtype])
        return self.model_.mixture.log_prob(zt).cpu()

    @torch.no_grad()
    def predict_component(self, z: Any) -> Tensor:
        """Most responsible mixture component of each latent row  # (n, k) → (n,) int64."""
        check_fitted(self, "model_")
        zt = as_matrix(z, "z", dim=self.latent_dim_).to(self._device, _DTYPES[self.dtype])
        return self.model_.mixture.predict(zt).cpu()

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """``n`` draws from the fitted density  # (n, d), CPU."""
        check_fitted(self, "model_")
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        model = self.model_.eval()
        z = model.mixture.sample(n, gen)
        dev, dt = self._device, _DTYPES[self.dtype]
        var = torch.cat([self._noise_var(model), self._tail_var])
        eps = torch.randn(n, var.shape[0], generator=gen, dtype=torch.float64).to(dev, dt)
        eps = eps * var.sqrt()
        f, k = self.d_flow_, self.latent_dim_
        yf = model.flow.inverse(torch.cat([z, eps[:, : f - k]], dim=1))
        return self._from_pca(torch.cat([yf, eps[:, f - k :]], dim=1)).cpu()

    # ------------------------------------------------------------------ fitted views
    @property
    def mixture_weights_(self) -> Tensor:
        """Mixture weights  # (K,)"""
        check_fitted(self, "model_")
        return self.model_.mixture.weights.detach().cpu()

    @property
    def mixture_means_(self) -> Tensor:
        """Component means in the latent  # (K, k)"""
        check_fitted(self, "model_")
        return self.model_.mixture.means.detach().cpu()

    @property
    def mixture_covariances_(self) -> Tensor:
        """Component covariances in the latent  # (K, k, k)"""
        check_fitted(self, "model_")
        return self.model_.mixture.covariances().detach().cpu()

    @property
    def noise_variance_(self) -> Tensor:
        """Variances of the noise coordinates (flow noise, then trailing PCA)  # (d' − k,)"""
        check_fitted(self, "model_")
        return torch.cat([self._noise_var(self.model_), self._tail_var]).detach().cpu()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model to ``path`` (one .safetensors file, JSON header; no pickle).

        Wall-clock timings (``fit_seconds_``, ``train_samples_per_second_``,
        ``history_["seconds"]``) are not saved, so two identical fits write identical bytes.
        An existing ``path`` must hold a FlowAutoencoder (:mod:`flowmatch.outputs`).
        """
        check_fitted(self, "model_")
        tensors, meta = _autoencoder_io.state_of(self)
        return save_state(path, tensors, meta, kind="FlowAutoencoder")

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> FlowAutoencoder:
        """Read a model written by :meth:`save` (optionally onto another ``device``).

        Every entry is checked (known keys only, dtypes, shapes, finite values, a consistent
        model); a bad file raises ``ValueError`` naming the file and the entry.
        """
        return _autoencoder_io.restore(cls, load_state(path, "FlowAutoencoder"), device)
