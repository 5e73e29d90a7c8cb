"""The ``flowmatch`` command: one line per user error, output paths checked before any fitting,
interrupts (SIGINT, SIGTERM) that clean up, ``--version``."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowmatch import __version__
from flowmatch.cli import main
from flowmatch.outputs import staged_folder

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowmatch: error: "), err
    return lines[0]


@pytest.fixture()
def no_fitting(monkeypatch):
    """Fail loudly if anything is fitted: every check must come first."""
    import flowmatch.autoencoder
    import flowmatch.translation
    import flowmatch.zoo

    def boom(*args, **kwargs):
        raise AssertionError("fitting started before the check")

    monkeypatch.setattr(flowmatch.autoencoder.FlowAutoencoder, "fit", boom)
    monkeypatch.setattr(flowmatch.translation, "translate", boom)
    monkeypatch.setattr(flowmatch.zoo, "load_pair", boom)


@pytest.fixture()
def acts(tmp_path) -> Path:
    path = tmp_path / "a.npy"
    np.save(path, np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32))
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"flowmatch {__version__}"


# ----------------------------------------------------------------------------- output paths
def test_translate_out_dot_deletes_nothing(tmp_path, monkeypatch, capsys, acts, no_fitting):
    monkeypatch.chdir(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    line = _one_line_error(capsys, main(["translate", str(acts), str(acts), "--out", "."]))
    assert "current folder" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_translate_out_user_folder_is_kept(tmp_path, capsys, acts, no_fitting):
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "keep.csv").write_text("1,2,3")
    rc = main(["translate", str(acts), str(acts), "--out", str(tmp_path / "mydata")])
    assert "did not write" in _one_line_error(capsys, rc)
    assert (tmp_path / "mydata" / "keep.csv").read_text() == "1,2,3"


def test_fit_out_checked_before_fitting(tmp_path, capsys, acts, no_fitting):
    rc = main(["fit", str(acts), "--out", str(acts)])  # would overwrite its own input
    assert "did not write it" in _one_line_error(capsys, rc)
    rc = main(["fit", str(acts), "--out", str(tmp_path)])
    assert "is a folder" in _one_line_error(capsys, rc)


def test_fit_bad_device_and_flow(tmp_path, capsys, acts, no_fitting):
    out = str(tmp_path / "m.safetensors")
    assert "not a device" in _one_line_error(
        capsys, main(["fit", str(acts), "--out", out, "--device", "bogus"])
    )
    assert "unknown flow" in _one_line_error(
        capsys, main(["fit", str(acts), "--out", out, "--flow", "nope"])
    )


def test_run_folder_with_a_user_file_is_refused_before_fitting(tmp_path, capsys, no_fitting):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "mine.txt").write_text("keep")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\noutput_dir: {tmp_path / 'runs'}\n")
    assert "did not write" in _one_line_error(capsys, main(["run", str(cfg)]))
    assert (tmp_path / "runs" / "x" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ('""', "not a folder name"),
        ('"."', "not a folder name"),
        ("../victim", "separator"),
        ("/tmp/abs", "separator"),
        ("..", "not a folder name"),
        ("null", "must be a string"),
    ],
)
def test_unsafe_run_names_fail_at_load(tmp_path, capsys, name, match, no_fitting):
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "data.txt").write_text("keep")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: {name}\noutput_dir: {tmp_path / 'runs'}\n")
    line = _one_line_error(capsys, main(["run", str(cfg)]))
    assert "c.yaml" in line and "'name'" in line and match in line
    assert (tmp_path / "victim" / "data.txt").read_text() == "keep"
    assert not (tmp_path / "runs").exists() and not Path("/tmp/abs").exists()


def test_run_file_in_the_way(tmp_path, capsys, no_fitting):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x").write_text("a file")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\noutput_dir: {tmp_path / 'runs'}\n")
    assert "is a file" in _one_line_error(capsys, main(["run", str(cfg)]))
    assert (tmp_path / "runs" / "x").read_text() == "a file"


def test_bench_json_checked_before_running(tmp_path, capsys, monkeypatch):
    import benchmarks.tree as tree

    monkeypatch.setattr(tree, "main", lambda args: pytest.fail("benchmark ran"))
    (tmp_path / "r.json").write_text('{"mine": true}')
    rc = main(["bench", "tree", "--json", str(tmp_path / "r.json")])
    assert "did not write" in _one_line_error(capsys, rc)


# ----------------------------------------------------------------------------- bad inputs
def _safetensors_with_metadata(path: Path, metadata: dict) -> Path:
    header = json.dumps(
        {"__metadata__": metadata, "x": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
    return path


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    good = tmp / "good.safetensors"
    from flowmatch.activations import ActivationSet

    ActivationSet(torch.zeros(4, 2)).save(good)
    raw = good.read_bytes()
    files = {
        "truncated": raw[: len(raw) // 2],
        "zero-byte safetensors": b"",
        "forged header length": struct.pack("<Q", 10**12) + raw[8:],
        "zero-byte npy": b"",
        "random bytes": os.urandom(64),
    }
    out = {}
    for name, data in files.items():
        suffix = ".npy" if "npy" in name else ".safetensors"
        out[name] = tmp / (name.replace(" ", "_") + suffix)
        out[name].write_bytes(data)
    np.save(tmp / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    out["string npy"] = tmp / "strings.npy"
    np.save(tmp / "struct.npy", np.zeros((3, 2), dtype=[("a", "f4"), ("b", "i4")]))
    out["structured npy"] = tmp / "struct.npy"
    np.save(tmp / "complex.npy", np.ones((5, 2), dtype=complex))
    out["complex npy"] = tmp / "complex.npy"
    np.save(tmp / "vector.npy", np.ones(5))
    out["1-d npy"] = tmp / "vector.npy"
    (tmp / "objects.NPY").write_bytes((tmp / "strings.npy").read_bytes())
    out["upper-case NPY"] = tmp / "objects.NPY"
    (tmp / "folder.npy").mkdir()
    out["folder"] = tmp / "folder.npy"
    out["metadata list"] = _safetensors_with_metadata(tmp / "list.safetensors", {"flowmatch": "[]"})
    out["foreign safetensors"] = _safetensors_with_metadata(tmp / "foreign.safetensors", {})
    return out


def test_bad_input_files_give_one_line(tmp_path, capsys, acts, no_fitting):
    for name, path in _bad_inputs(tmp_path).items():
        rc = main(["translate", str(path), str(acts), "--out", str(tmp_path / "t")])
        line = _one_line_error(capsys, rc)
        assert str(path) in line, (name, line)
        if name == "upper-case NPY":
            assert "<U1 values" in line  # read as .npy, not as safetensors


def test_upper_case_npy_is_read_as_npy(tmp_path):
    from flowmatch.activations import ActivationSet

    np.save(tmp_path / "a.npy", np.eye(3))
    os.replace(tmp_path / "a.npy", tmp_path / "A.NPY")
    assert ActivationSet.load(tmp_path / "A.NPY").x.shape == (3, 3)


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "--threads", "0"],
        ["bench", "tree", "--sizes", "-5"],
        ["bench", "tree", "--dims", "0"],
        ["fit", "a.npy", "--out", "m", "--latent-dim", "ten"],
        ["fit", "a.npy", "--out", "m", "--seed", "-1"],
    ],
)
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_bench_tree_bad_sizes_fail_fast():
    """``--sizes -5`` crashed in the worker and hung the parent forever."""
    proc = subprocess.run(
        [sys.executable, "-m", "flowmatch.cli", "bench", "tree", "--sizes", "-5"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and "--sizes" in proc.stderr


# ----------------------------------------------------------------------------- interrupts
_SLOW_RUN = """
import signal, sys, time
import flowmatch.zoo
# a shell's background job inherits an ignored SIGINT; a user's terminal delivers it
signal.signal(signal.SIGINT, signal.default_int_handler)
from flowmatch.cli import main

def slow(*args, **kwargs):
    print("staging", flush=True)
    time.sleep(120)

flowmatch.zoo.load_pair = slow
sys.exit(main(["run", sys.argv[1], "--quiet"]))
"""


@pytest.mark.parametrize(("sig", "rc"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_run_leaves_the_previous_run_and_no_litter(tmp_path, sig, rc):
    runs = tmp_path / "runs"
    with staged_folder(runs / "x", "run") as tmp:
        (tmp / "metrics.json").write_text('{"previous": true}')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\noutput_dir: {runs}\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_RUN, str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout.readline().strip() == "staging"
        assert any(".flowmatch-new-" in p.name for p in runs.iterdir())  # staging exists
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == rc, err
    assert "no partial files" in err and "Traceback" not in err
    assert [p.name for p in runs.iterdir()] == ["x"]
    assert json.loads((runs / "x" / "metrics.json").read_text()) == {"previous": True}
