"""The structure the code promises (docs/architecture.md): dependencies run one way, the
command line imports a benchmark only when it runs, library functions stay short."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` statement in ``path`` names, at any depth (inside functions
    too), with its line; relative imports resolved against the file's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.append((node.lineno, base))
    return found


def _offenders(folder: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in forbidden and rel not in allowed:
                out.append(f"{rel}:{line} imports {module}")
    return out


def test_the_core_never_imports_baselines_or_benchmarks():
    """baselines → flowmatch, benchmarks → both, never back (the command line hands
    ``flowmatch bench`` to the benchmarks package, in flowmatch/cli.py only)."""
    assert _offenders("flowmatch", ("baselines",)) == []
    assert _offenders("flowmatch", ("benchmarks",), allowed=("flowmatch/cli.py",)) == []
    assert _offenders("baselines", ("benchmarks",)) == []


def test_the_import_check_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The check can fail: an import hidden in a function body is found."""
    fake = ROOT / "flowmatch" / "_probe_for_import_test.py"
    fake.write_text("def f():\n    if True:\n        from baselines.base import Method\n")
    try:
        assert _offenders("flowmatch", ("baselines",)) == [
            "flowmatch/_probe_for_import_test.py:3 imports baselines.base"
        ]
    finally:
        fake.unlink()


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_internal_import_names_a_module_of_this_tree():
    """An import of a module that moved away fails here, even inside a function that no test
    reaches (an installed copy elsewhere could otherwise answer it)."""
    missing = []
    for top in ("flowmatch", "baselines", "benchmarks", "tests"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                if parts[0] not in ("flowmatch", "baselines", "benchmarks"):
                    continue
                # "from package import name" may name a module or an attribute
                if not (_exists(module) or _exists(".".join(parts[:-1]))):
                    missing.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert missing == []


def _fresh(code: str) -> list[str]:
    """Modules a fresh interpreter has imported after ``code``: the benchmark ones."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules "
    probe += "if m.split('.')[0] in ('benchmarks', 'baselines'))))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=120, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_command_line_imports_one_benchmark_only_when_it_runs():
    assert _fresh("from flowmatch.cli import _parser; _parser()") == []
    loaded = _fresh(
        "from benchmarks.cli import parser_for; parser_for('tree').parse_args(['--quick'])"
    )
    assert [m for m in loaded if m.startswith("benchmarks.")] == [
        "benchmarks._common",
        "benchmarks.cli",
        "benchmarks.tree",
    ]


def _function_lengths(folder: Path) -> list[tuple[int, str]]:
    """(lines, where) of every function: its source lines without its docstring."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            doc = node.body[0]
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                n -= doc.end_lineno - doc.lineno + 1  # type: ignore[operator]
            out.append((n, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


@pytest.mark.parametrize("folder", ["flowmatch", "baselines"])
def test_library_functions_are_at_most_60_lines(folder):
    """translate() is excepted until its rewrite lands; benchmarks are not library code."""
    long = [
        (n, where)
        for n, where in _function_lengths(ROOT / folder)
        if n > 60 and not where.startswith("flowmatch/translation.py")
    ]
    assert long == []
