"""Output-path policy and atomic replacement: nothing a user owns is ever lost.

Every data-loss case creates a user file first and checks that it survives, byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from flowmatch import outputs
from flowmatch.autoencoder import FlowAutoencoder
from flowmatch.coordinates import MapCoordinates
from flowmatch.outputs import OutputPathError, check_file_output, check_folder_output, check_name
from flowmatch.translation import Translation

AE = dict(latent_dim=2, hidden=8, n_components=2, max_steps=2, progress=False)


@pytest.fixture(scope="module")
def translation() -> Translation:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 4))
    a = FlowAutoencoder(**AE).fit(x)
    b = FlowAutoencoder(**AE).fit(x + 1.0)
    coords = MapCoordinates(2).fit(x), MapCoordinates(2).fit(x + 1.0)
    return Translation(*coords, torch.eye(2), torch.zeros(2), autoencoder_a=a, autoencoder_b=b)


def _user_file(path: Path, text: str = "the user's data") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.read_bytes()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "name", ["", ".", "..", "../victim", "a/b", "/abs/path", "../escaped", ".hidden", "a\x00b"]
)
def test_unsafe_run_names_are_refused(name):
    with pytest.raises(OutputPathError, match="name"):
        check_name(name)


@pytest.mark.parametrize("name", [None, 3, ["x"]])
def test_run_names_must_be_strings(name):
    with pytest.raises(OutputPathError, match="must be a string"):
        check_name(name)


def test_plain_names_pass():
    assert check_name("digits-2024_v1.b") == "digits-2024_v1.b"


# ----------------------------------------------------------------------------- folders
def test_current_directory_and_parents_are_refused(tmp_path, monkeypatch, translation):
    """``--out .`` once deleted the whole current directory."""
    work = tmp_path / "work"
    before = _user_file(work / "thesis.tex")
    monkeypatch.chdir(work)
    for out in (".", "./", str(work), str(tmp_path), "..", "sub/.."):
        with pytest.raises(OutputPathError, match="current folder"):
            translation.save(out)
    assert (work / "thesis.tex").read_bytes() == before


def test_a_folder_holding_a_user_file_is_not_replaced(tmp_path, translation):
    """``--out mydata`` on a folder with the user's file replaced the folder, exit code 0."""
    before = _user_file(tmp_path / "mydata" / "results.csv")
    with pytest.raises(OutputPathError, match="did not write"):
        translation.save(tmp_path / "mydata")
    assert _snapshot(tmp_path / "mydata") == {"results.csv": before}


def test_a_user_file_added_to_a_translation_folder_keeps_it(tmp_path, translation):
    out = tmp_path / "t"
    translation.save(out)
    before = _user_file(out / "notes.txt")
    with pytest.raises(OutputPathError, match=r"did not write \(notes.txt\)"):
        translation.save(out)
    assert (out / "notes.txt").read_bytes() == before


def test_a_file_in_the_way_of_a_folder_is_refused(tmp_path, translation):
    before = _user_file(tmp_path / "t")
    with pytest.raises(OutputPathError, match="is a file"):
        translation.save(tmp_path / "t")
    assert (tmp_path / "t").read_bytes() == before


def test_own_folder_is_replaced_and_marked(tmp_path, translation):
    out = tmp_path / "t"
    translation.save(out)
    first = _snapshot(out)
    marker = json.loads((out / outputs.MARKER).read_text())
    assert marker["kind"] == "Translation" and marker["format_version"] == outputs.FORMAT_VERSION
    assert sorted(marker["files"]) == sorted(k for k in first if k != outputs.MARKER)
    translation.save(out)
    assert _snapshot(out) == first  # same content, bytes included
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # nothing left beside it
    Translation.load(out)
    (tmp_path / "empty").mkdir()
    translation.save(tmp_path / "empty")  # an empty folder may receive a translation


def test_another_kind_is_not_replaced(tmp_path, translation):
    out = tmp_path / "figs"
    outputs.figures_folder(out)
    with pytest.raises(OutputPathError, match="figures folder written by flowmatch, not"):
        translation.save(out)


def test_a_symlink_is_refused(tmp_path, translation):
    (tmp_path / "real").mkdir()
    before = _user_file(tmp_path / "real" / "keep.txt")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OutputPathError, match="symbolic link"):
        translation.save(tmp_path / "link")
    assert (tmp_path / "real" / "keep.txt").read_bytes() == before


def test_unwritable_parent_is_reported_before_writing(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root may write anywhere: let the access check say no
        real = os.access
        monkeypatch.setattr(outputs.os, "access", lambda p, m: p != ro and real(p, m))
    try:
        with pytest.raises(OutputPathError, match="no permission"):
            check_folder_output(ro / "t", "Translation")
        with pytest.raises(OutputPathError, match="no permission"):
            check_file_output(ro / "m.safetensors", "FlowAutoencoder")
    finally:
        ro.chmod(0o700)


def test_a_file_as_parent_is_reported(tmp_path):
    _user_file(tmp_path / "plain")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_folder_output(tmp_path / "plain" / "t", "Translation")


# ----------------------------------------------------------------------------- files
def test_model_file_never_replaces_a_user_file(tmp_path, translation):
    ae = translation.autoencoder_a_
    for name in ("acts.npy", "model.safetensors", "empty.safetensors"):
        target = tmp_path / name
        before = _user_file(target, "" if name.startswith("empty") else "user bytes")
        with pytest.raises(OutputPathError, match="did not write"):
            ae.save(target)
        assert target.read_bytes() == before
    with pytest.raises(OutputPathError, match="is a folder"):
        ae.save(tmp_path)


def test_model_file_does_not_replace_another_kind(tmp_path, translation):
    from flowmatch.activations import ActivationSet

    acts = tmp_path / "acts.safetensors"
    ActivationSet(torch.zeros(3, 2)).save(acts)
    before = acts.read_bytes()
    with pytest.raises(OutputPathError, match="holds an activation file"):
        translation.autoencoder_a_.save(acts)
    assert acts.read_bytes() == before


def test_model_file_replaces_its_own_kind(tmp_path, translation):
    path = tmp_path / "m.safetensors"
    translation.autoencoder_a_.save(path)
    translation.autoencoder_b_.save(path)
    assert FlowAutoencoder.load(path).mean_.shape == translation.autoencoder_b_.mean_.shape
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_report_and_benchmark_json_replace_only_their_own(tmp_path):
    from benchmarks._common import write_result
    from flowmatch.report import Report

    html = tmp_path / "index.html"
    before = _user_file(html, "<!DOCTYPE html><html>my page</html>")
    with pytest.raises(OutputPathError):
        Report("x").to_html(html)
    assert html.read_bytes() == before
    Report("x").to_html(tmp_path / "r.html")
    Report("y").to_html(tmp_path / "r.html")
    data = tmp_path / "data.json"
    before = _user_file(data, '{"mine": 1}')
    with pytest.raises(OutputPathError):
        write_result(str(data), {"x": 1})
    assert data.read_bytes() == before
    write_result(str(tmp_path / "res.json"), {"x": 1})
    write_result(str(tmp_path / "res.json"), {"x": 2})
    assert json.loads((tmp_path / "res.json").read_text())["x"] == 2


def test_figures_folder_only_in_new_empty_or_own_folders(tmp_path):
    before = _user_file(tmp_path / "photos" / "cat.png", "png")
    with pytest.raises(OutputPathError):
        outputs.figures_folder(tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.png").read_bytes() == before
    out = outputs.figures_folder(tmp_path / "figs")
    (out / "a.png").write_bytes(b"png")
    assert outputs.figures_folder(out) == out


# ----------------------------------------------------------------------------- atomicity
def test_interrupt_between_the_renames_loses_nothing(tmp_path, translation, monkeypatch):
    """Ctrl-C arriving between "old aside" and "new in" is held until both renames are done;
    the old translation was lost in that window before."""
    # a shell's background job inherits an ignored SIGINT; a user's terminal delivers it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_between_renames(tmp_path, translation, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_between_renames(tmp_path, translation, monkeypatch):
    out = tmp_path / "t"
    translation.save(out)
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        real_replace(src, dst)
        if Path(dst).parent == tmp_path:
            calls.append(Path(dst).name)
        if Path(dst).name == ".t.flowmatch-old":  # old folder just moved aside
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        translation.inverse().save(out)
    monkeypatch.undo()
    assert calls == [".t.flowmatch-old", "t"]  # both renames completed before the interrupt
    assert Translation.load(out).info_["inverted"] is True  # the new one, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_failed_move_in_restores_the_old_folder(tmp_path, translation, monkeypatch):
    out = tmp_path / "t"
    translation.save(out)
    before = _snapshot(out)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "t" and ".flowmatch-new-" in Path(src).name:
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        translation.inverse().save(out)
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_a_crash_between_the_renames_is_recovered_on_the_next_write(tmp_path, translation):
    """A killed process (no handler runs) left the old folder aside: the next write restores
    it (target missing) or finishes the replacement (target present)."""
    out = tmp_path / "t"
    translation.save(out)
    before = _snapshot(out)
    os.replace(out, tmp_path / ".t.flowmatch-old")  # as if killed right after "old aside"
    with pytest.warns(UserWarning, match="restored"):
        check_folder_output(out, "Translation")
    assert _snapshot(out) == before
    translation.save(tmp_path / ".t.flowmatch-old")  # as if killed right after "new in"
    translation.inverse().save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_staging_litter_of_a_dead_process_is_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    litter = tmp_path / f".t.flowmatch-new-{dead}-abc"
    litter.mkdir()
    (litter / "half.safetensors").write_bytes(b"x")
    alive = tmp_path / f".t.flowmatch-new-{os.getpid()}-def"
    alive.mkdir()
    with pytest.warns(UserWarning, match="interrupted earlier write"):
        check_folder_output(tmp_path / "t", "Translation")
    assert not litter.exists() and alive.exists()  # a live writer's staging is left alone


def test_legacy_run_aside_is_restored(tmp_path):
    """Older versions left a lost run folder as ``.NAME.old-XXXX/NAME``."""
    aside = tmp_path / ".small.old-x1y2" / "small"
    before = _user_file(aside / "metrics.json", "{}")
    with pytest.warns(UserWarning, match="restored"):
        check_folder_output(tmp_path / "small", "run")
    assert (tmp_path / "small" / "metrics.json").read_bytes() == before


def test_written_files_follow_the_umask(tmp_path, translation):
    old = os.umask(0o027)
    try:
        translation.save(tmp_path / "t")
        translation.autoencoder_a_.save(tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "t") == 0o750
    assert mode(tmp_path / "t" / "translation.safetensors") == 0o640
    assert mode(tmp_path / "m.safetensors") == 0o640


def test_legacy_translation_folder_is_recognised(tmp_path, translation):
    out = tmp_path / "t"
    translation.save(out)
    (out / outputs.MARKER).unlink()  # as written before markers existed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        translation.save(out)
    assert (out / outputs.MARKER).exists()
