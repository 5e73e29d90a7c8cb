"""Versioned artefacts: format version, known keys only, dtypes and shapes checked, errors that
name the file and the entry, identical bytes for identical fits."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from flowmatch._io import ArtefactError, load_state, save_state
from flowmatch.activations import ActivationSet
from flowmatch.autoencoder import FlowAutoencoder
from flowmatch.coordinates import MapCoordinates
from flowmatch.outputs import FORMAT_VERSION
from flowmatch.translation import Translation

AE = dict(latent_dim=2, hidden=8, n_components=2, max_steps=3, progress=False)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((90, 4))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, x) -> Path:
    path = tmp_path_factory.mktemp("models") / "ae.safetensors"
    FlowAutoencoder(**AE).fit(x).save(path)
    return path


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _forge(src: Path, dst: Path, *, meta=None, header=None) -> Path:
    """Copy ``src`` to ``dst`` with its JSON metadata or raw header edited in place."""
    head, data = _header(src)
    if meta is not None:
        doc = json.loads(head["__metadata__"]["flowmatch"])
        meta(doc)
        head["__metadata__"]["flowmatch"] = json.dumps(doc)
    if header is not None:
        header(head)
    _write_header(dst, head, data)
    return dst


def _resave(src: Path, dst: Path, *, tensors=None, meta=None, kind="FlowAutoencoder") -> Path:
    """Re-save ``src``'s content with edited tensors or metadata (a well-formed forged file)."""
    art = load_state(src, "FlowAutoencoder")
    t, m = dict(art.tensors), json.loads(json.dumps(art.meta))
    if tensors:
        tensors(t)
    if meta:
        meta(m)
    save_state(dst, t, m, kind=kind)
    return dst


# ----------------------------------------------------------------------------- versions
def test_every_artefact_carries_kind_and_version(model_file, tmp_path):
    head, _ = _header(model_file)
    assert head["__metadata__"]["kind"] == "FlowAutoencoder"
    assert head["__metadata__"]["format_version"] == str(FORMAT_VERSION)
    ActivationSet(torch.zeros(3, 2)).save(tmp_path / "a.safetensors")
    head, _ = _header(tmp_path / "a.safetensors")
    assert head["__metadata__"]["kind"] == "ActivationSet"


def test_a_newer_format_version_is_refused(model_file, tmp_path):
    def future(h):
        h["__metadata__"]["format_version"] = "999"

    path = _forge(model_file, tmp_path / "f.safetensors", header=future)
    with pytest.raises(ArtefactError, match=r"f\.safetensors has format version 999.*upgrade"):
        FlowAutoencoder.load(path)


def test_another_kind_is_refused(model_file, tmp_path):
    ActivationSet(torch.zeros(3, 2)).save(tmp_path / "a.safetensors")
    with pytest.raises(ArtefactError, match="holds a 'ActivationSet', not a flowmatch Flow"):
        FlowAutoencoder.load(tmp_path / "a.safetensors")
    with pytest.raises(ArtefactError, match="holds a 'FlowAutoencoder'"):
        ActivationSet.load(model_file)


# ----------------------------------------------------------------------------- forged entries
def test_forged_fitted_key_does_not_shadow_a_method(model_file, tmp_path, x):
    path = _resave(
        model_file, tmp_path / "f.safetensors", meta=lambda m: m["fitted"].update(encode=1)
    )
    with pytest.raises(ArtefactError, match="unknown entry 'encode' in 'fitted'"):
        FlowAutoencoder.load(path)
    assert FlowAutoencoder.load(model_file).encode(x).shape == (90, 2)


def test_missing_tensor_is_named(model_file, tmp_path):
    path = _resave(model_file, tmp_path / "f.safetensors", tensors=lambda t: t.pop("mean_"))
    with pytest.raises(ArtefactError, match=r"f\.safetensors: tensor 'mean_' is missing"):
        FlowAutoencoder.load(path)
    path = _resave(
        model_file, tmp_path / "g.safetensors", tensors=lambda t: t.pop("model.mixture.means")
    )
    with pytest.raises(ArtefactError, match="'model.mixture.means' is missing"):
        FlowAutoencoder.load(path)


def test_reinterpreted_dtype_is_refused(model_file, tmp_path):
    def as_int(h):
        h["mean_"]["dtype"] = "I64"  # same bytes, other meaning

    path = _forge(model_file, tmp_path / "f.safetensors", header=as_int)
    with pytest.raises(ArtefactError, match="'mean_' has dtype int64, expected float64"):
        FlowAutoencoder.load(path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda t: t.update(mean_=torch.zeros(7, dtype=torch.float64)),
            r"'mean_' has shape \(7,\)",
        ),
        (lambda t: t.update(components_=torch.ones(4, 4, dtype=torch.float64)), "orthonormal"),
        (lambda t: t["mean_"].__setitem__(0, float("nan")), "NaN or infinite"),
        (lambda t: t.update(extra=torch.zeros(1)), "unexpected tensor 'extra'"),
        (lambda t: t.update({"model.x": torch.zeros(1)}), "unexpected tensor 'model.x'"),
        (lambda t: t.update(kept_columns_=torch.tensor([0, 1, 2, 2])), "do not split"),
    ],
)
def test_bad_tensors_are_named(model_file, tmp_path, edit, match):
    path = _resave(model_file, tmp_path / "f.safetensors", tensors=edit)
    with pytest.raises(ArtefactError, match=match):
        FlowAutoencoder.load(path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["fitted"].update(scale_=0.0), "'scale_' must be finite and > 0"),
        (lambda m: m["fitted"].update(latent_dim_=9), "inconsistent sizes"),
        (lambda m: m["fitted"].update(latent_dim_="2"), "'latent_dim_' must be int"),
        (lambda m: m["fitted"].pop("d_in_"), "'d_in_' is missing"),
        (lambda m: m["params"].update(max_epochs=0), "max_epochs must be >= 1"),
        (lambda m: m["params"].update(bogus=1), "unknown parameter 'bogus'"),
        (lambda m: m.pop("params"), "'params' is missing"),
        (lambda m: m.update(history=[1]), "'history' must be an object"),
    ],
)
def test_bad_metadata_is_named(model_file, tmp_path, edit, match):
    path = _resave(model_file, tmp_path / "f.safetensors", meta=edit)
    with pytest.raises(ArtefactError, match=match):
        FlowAutoencoder.load(path)


def test_metadata_must_be_a_json_object(model_file, tmp_path):
    def as_list(h):
        h["__metadata__"]["flowmatch"] = "[1, 2]"

    path = _forge(model_file, tmp_path / "f.safetensors", header=as_list)
    for load in (FlowAutoencoder.load, ActivationSet.load):
        with pytest.raises(ArtefactError, match="must be a JSON object, got list"):
            load(path)


@pytest.mark.parametrize("cut", [0, 4, 8, 30, -5])
def test_truncated_files_are_named(model_file, tmp_path, cut):
    raw = model_file.read_bytes()
    path = tmp_path / "t.safetensors"
    path.write_bytes(raw[:cut])
    with pytest.raises(ArtefactError, match=r"t\.safetensors"):
        FlowAutoencoder.load(path)


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(ArtefactError, match="is a folder"):
        FlowAutoencoder.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no file at .*none.safetensors"):
        FlowAutoencoder.load(tmp_path / "none.safetensors")


# ----------------------------------------------------------------------------- bytes
def test_identical_fits_write_identical_bytes(model_file, tmp_path, x):
    ae = FlowAutoencoder(**AE).fit(x)
    ae.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == model_file.read_bytes()
    meta = json.loads(_header(model_file)[0]["__metadata__"]["flowmatch"])
    assert "seconds" not in json.dumps(meta)  # timings stay out of the model file
    back = FlowAutoencoder.load(model_file)
    assert back.fit_seconds_ is None and set(back.history_) == {"train_nll", "val_nll"}
    assert ae.fit_seconds_ > 0  # still measured on the fitted object


def test_a_file_from_before_versions_loads(model_file, tmp_path, x):
    """Version 0: kind inside the JSON document, timings in 'fitted', no format_version."""

    def old_style(h):
        meta = h["__metadata__"]
        doc = json.loads(meta.pop("flowmatch"))
        doc["kind"] = "FlowAutoencoder"
        doc["fitted"].update(fit_seconds_=1.5, train_samples_per_second_=10.0)
        h["__metadata__"] = {"flowmatch": json.dumps(doc)}

    path = _forge(model_file, tmp_path / "old.safetensors", header=old_style)
    back = FlowAutoencoder.load(path)
    torch.testing.assert_close(back.encode(x), FlowAutoencoder.load(model_file).encode(x))


# ----------------------------------------------------------------------------- other kinds
def test_activation_set_entries_are_checked(tmp_path):
    save_state(
        tmp_path / "a.safetensors",
        {"x": torch.zeros(3, 2, dtype=torch.int32)},
        {},
        kind="ActivationSet",
    )
    with pytest.raises(ArtefactError, match="'x' has dtype int32"):
        ActivationSet.load(tmp_path / "a.safetensors")
    save_state(
        tmp_path / "b.safetensors",
        {"x": torch.zeros(3, 2), "labels": torch.zeros(3)},
        {},
        kind="ActivationSet",
    )
    with pytest.raises(ArtefactError, match="'labels' has dtype float32"):
        ActivationSet.load(tmp_path / "b.safetensors")
    save_state(tmp_path / "c.safetensors", {"y": torch.zeros(3, 2)}, {}, kind="ActivationSet")
    with pytest.raises(ArtefactError, match="unexpected tensor 'y'"):
        ActivationSet.load(tmp_path / "c.safetensors")


def test_translation_entries_are_checked(tmp_path, x):
    a = FlowAutoencoder(**AE).fit(x)
    c = MapCoordinates(2).fit(x)
    t = Translation(c, c, torch.eye(2), torch.zeros(2), autoencoder_a=a, autoencoder_b=a)
    t.save(tmp_path / "t")
    path = tmp_path / "t" / "translation.safetensors"
    art = load_state(path, "Translation")
    bad = dict(art.tensors, matrix=torch.eye(3, dtype=torch.float64))
    path.unlink()
    save_state(path, bad, art.meta, kind="Translation")
    with pytest.raises(ArtefactError, match=r"translation\.safetensors: tensor 'matrix' has shape"):
        Translation.load(tmp_path / "t")
    (tmp_path / "t" / "autoencoder_b.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="autoencoder_b.safetensors"):
        Translation.load(tmp_path / "t")
    with pytest.raises(ArtefactError, match="is a file"):
        Translation.load(path)


def test_a_broken_zoo_cache_file_says_how_to_recover(tmp_path, monkeypatch):
    from flowmatch import zoo

    monkeypatch.setenv("FLOWMATCH_CACHE", str(tmp_path))
    spec = zoo.ModelSpec("mlp", dataset="digits", hidden=(4,), seed=0, epochs=1)
    zoo.train_model(spec)
    (path,) = (tmp_path / "zoo").glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtefactError, match="delete .* and the model is retrained"):
        zoo.train_model(spec)
    path.unlink()
    model, info = zoo.train_model(spec)
    assert zoo.train_model(spec)[1] == info
