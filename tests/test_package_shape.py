"""The package's shape: a small core that imports no lab dependency, and short modules.

These are the project's layout rules made checkable: ``import emrakul`` loads none of the lab's
packages, the core's declared dependencies hold none of them, and no function in ``emrakul/``
is longer than ~80 lines, no file longer than ~400, no experiment app longer than 150.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAB_PACKAGES = ("rlax", "gymnax", "mnist1d", "matplotlib", "absl", "ml_collections")
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 400
MAX_APP_LINES = 150

_LOADED = """
import sys
{imports}
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in {packages!r})))
"""


def _loaded_after(imports: str) -> set[str]:
    """The lab-package modules present in a fresh interpreter after ``imports``."""
    code = _LOADED.format(imports=imports, packages=set(LAB_PACKAGES) | {"emrakul"})
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return set(out.split())


@pytest.mark.timeout(120)
def test_import_emrakul_loads_no_lab_package():
    # optax, chex, flax and orbax import absl themselves: absl is only an error beyond theirs
    core_deps = _loaded_after("import jax, optax, chex, flax.linen, orbax.checkpoint")
    loaded = _loaded_after("import emrakul, emrakul.export, emrakul.agent")
    extra = {m for m in loaded - core_deps if not m.startswith("emrakul")}
    assert extra == set(), f"import emrakul loads lab packages: {sorted(extra)}"
    assert not any(m.startswith("emrakul.lab") for m in loaded)
    assert not any(m.split(".")[0] in {"rlax", "gymnax", "mnist1d", "matplotlib"} for m in loaded)


def test_core_dependencies_hold_no_lab_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]}
    lab = {d.split(">")[0].split("=")[0].strip() for d in project["optional-dependencies"]["lab"]}
    lab_names = {"rlax", "gymnax", "mnist1d", "matplotlib", "absl-py", "ml-collections"}
    assert core.isdisjoint(lab_names), core & lab_names
    assert lab_names <= lab, lab_names - lab


def _too_long(path: pathlib.Path) -> list[str]:
    src = path.read_text()
    rel = path.relative_to(ROOT)
    out = []
    if src.count("\n") > MAX_FILE_LINES:
        out.append(f"{rel}: {src.count(chr(10))} lines")
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    return out


def test_no_long_function_or_file_in_the_library():
    problems = [p for f in sorted((ROOT / "emrakul").rglob("*.py")) for p in _too_long(f)]
    assert problems == [], "\n".join(problems)


def test_experiment_apps_are_thin():
    long = [
        f"{f.name}: {n} lines"
        for f in sorted((ROOT / "experiments").glob("*.py"))
        if (n := f.read_text().count("\n")) > MAX_APP_LINES
    ]
    assert long == [], long


def test_too_long_sees_long_functions_and_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n")
    (tmp_path / "short.py").write_text("def g():\n    return 1\n")
    assert _too_long(tmp_path / "long.py") == [f"long.py:1 f: {MAX_FUNCTION_LINES + 1} lines"]
    assert _too_long(tmp_path / "short.py") == []
