"""Property-based fuzzing of every loader: whatever the bytes, a loader returns a valid object or
raises one of the expected errors (which the CLI prints as one line) — never anything else."""

from __future__ import annotations

import io
import json
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flowmatch._io import load_state, save_state
from flowmatch.activations import ActivationSet
from flowmatch.autoencoder import FlowAutoencoder
from flowmatch.config import ConfigError, config_from_dict, load_config

LOADER_ERRORS = (ValueError, OSError)  # one line in the CLI, naming the file
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DIR = Path(tempfile.mkdtemp(prefix="flowmatch-fuzz-"))


def _file(data: bytes, name: str) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def valid_files() -> dict[str, bytes]:
    x = np.random.default_rng(0).standard_normal((40, 3))
    ActivationSet(torch.as_tensor(x, dtype=torch.float32), torch.arange(40)).save(_DIR / "a.st")
    FlowAutoencoder(latent_dim=2, hidden=8, n_components=2, max_steps=2, progress=False).fit(
        x
    ).save(_DIR / "m.st")
    return {"acts": (_DIR / "a.st").read_bytes(), "model": (_DIR / "m.st").read_bytes()}


def _check_activations(path: Path) -> None:
    try:
        acts = ActivationSet.load(path)
    except LOADER_ERRORS as err:
        assert path.name in str(err)  # the message names the file
        return
    assert acts.x.ndim == 2 and acts.x.is_floating_point() and torch.isfinite(acts.x).all()


def _check_model(path: Path) -> None:
    try:
        ae = FlowAutoencoder.load(path)
    except LOADER_ERRORS as err:
        assert path.name in str(err)
        return
    assert ae.latent_dim_ == 2


# ----------------------------------------------------------------------------- .npy
_DTYPES = st.one_of(
    hnp.floating_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.boolean_dtypes(),
    hnp.unicode_string_dtypes(),
    hnp.byte_string_dtypes(),
    hnp.datetime64_dtypes(),
    st.just(np.dtype([("a", "f4"), ("b", "i2")])),
)


@FUZZ
@given(hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)))
def test_any_npy_array_loads_or_fails_cleanly(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    _check_activations(_file(buf.getvalue(), "f.npy"))


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["f.npy", "f.NPY", "f.safetensors", "f"]))
def test_random_bytes_fail_cleanly(data, name):
    _check_activations(_file(data, name))


@FUZZ
@given(st.data())
def test_truncated_and_flipped_files_fail_cleanly(valid_files, data):
    raw = data.draw(st.sampled_from(list(valid_files.values())))
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.integers(0, len(raw) - 1), max_size=3))
    mutated = bytearray(raw[:cut] if data.draw(st.booleans()) else raw)
    for i in flips:
        if i < len(mutated):
            mutated[i] ^= 0xFF
    path = _file(bytes(mutated), "f.safetensors")
    _check_activations(path)
    _check_model(path)


# ----------------------------------------------------------------------------- metadata JSON
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _with_header(raw: bytes, edit) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


@FUZZ
@given(st.data())
def test_any_metadata_document_loads_or_fails_cleanly(valid_files, data):
    """The JSON document in the header replaced (whole or one entry) by arbitrary JSON."""
    which = data.draw(st.sampled_from(["acts", "model"]))
    value = data.draw(_JSON)
    key = data.draw(st.sampled_from([None, "params", "fitted", "history", "labels"]))

    def edit(header):
        meta = header["__metadata__"]
        doc = json.loads(meta["flowmatch"])
        if key is None:
            doc = value
        else:
            doc[key] = value
        meta["flowmatch"] = json.dumps(doc)
        if data.draw(st.booleans()):
            meta["format_version"] = data.draw(st.sampled_from(["0", "1", "2", "x", "-1", "1e9"]))

    path = _file(_with_header(valid_files[which], edit), "f.safetensors")
    _check_activations(path)
    _check_model(path)


@FUZZ
@given(
    st.dictionaries(
        st.text(max_size=6),
        hnp.arrays(
            st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8]),
            hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
        ),
        max_size=4,
    )
)
def test_activation_files_with_arbitrary_tensors(tensors):
    path = _DIR / "t.safetensors"
    path.unlink(missing_ok=True)
    save_state(path, {k: torch.as_tensor(v) for k, v in tensors.items()}, {}, kind="ActivationSet")
    _check_activations(path)
    assert load_state(path, "ActivationSet").version == 1


# ----------------------------------------------------------------------------- configs
_CONFIG_VALUES = st.one_of(
    _JSON, st.sampled_from(["digits", "digits-mlp", "procrustes", ".", "..", "../x", ""])
)
_CONFIG_KEYS = [
    "name",
    "pair",
    "seed",
    "output_dir",
    "autoencoder",
    "tree",
    "match",
    "translate",
    "compare",
    "n_refine",
    "methods",
    "max_epochs",
    "space",
]


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(_CONFIG_KEYS),
        st.one_of(
            _CONFIG_VALUES,
            st.dictionaries(st.sampled_from(_CONFIG_KEYS), _CONFIG_VALUES, max_size=3),
        ),
        max_size=6,
    )
)
def test_config_mappings_are_built_or_refused_with_config_error(raw):
    try:
        cfg = config_from_dict(raw)
    except ConfigError:
        return
    assert isinstance(cfg.seed, int) and cfg.run_dir().name == cfg.name


@FUZZ
@given(st.text(max_size=200))
def test_config_text_is_loaded_or_refused_cleanly(text):
    path = _DIR / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except (ConfigError, FileNotFoundError):
        return
    assert isinstance(cfg.name, str) and not math.isnan(cfg.translate.max_crossing)
