"""Packaging: the bundled configs come from the top-level configs/ folder, in a checkout and in
a wheel; ``flowmatch run NAME`` finds them by name. (.ci/run installs the wheel into a fresh
environment and runs it from another folder.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from flowmatch.cli import main
from flowmatch.config import bundled_configs, find_config

ROOT = Path(__file__).resolve().parents[1]


def test_package_list_matches_the_tree():
    """pyproject lists the packages by hand (for the configs mapping): every folder with an
    __init__.py under flowmatch/, baselines/ and benchmarks/ must be in it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("flowmatch", "baselines", "benchmarks")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert set(setup["packages"]) == found | {"flowmatch.configs"}
    assert setup["package-dir"] == {"flowmatch.configs": "configs"}


def test_bundled_configs_are_the_top_level_folder():
    configs = bundled_configs()
    assert list(configs) == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert all(p.resolve().parent == (ROOT / "configs").resolve() for p in configs.values())


def test_find_config_by_name_or_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root
    digits = bundled_configs()["digits"]
    assert find_config("digits") == digits == find_config("digits.yaml")
    mine = tmp_path / "digits"  # a file of that name wins: a path is a path
    mine.write_text("name: mine\n")
    assert find_config("digits") == Path("digits")
    with pytest.raises(FileNotFoundError, match="'flowmatch run digits' runs the bundled one"):
        find_config("configs/digits.yaml")
    with pytest.raises(FileNotFoundError, match="bundled configs: digits, mnist1d-cnn"):
        find_config("nope")


def test_configs_command_lists_them(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == list(bundled_configs())


def test_run_from_another_folder_finds_the_bundled_config(tmp_path, monkeypatch, capsys):
    """Checked up to the output folder (nothing is fitted): the default config resolves."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "digits").mkdir(parents=True)
    (tmp_path / "runs" / "digits" / "mine.txt").write_text("keep")
    assert main(["run"]) == 2
    assert "did not write" in capsys.readouterr().err
