"""``.ci/run``: exactly the README's test command, then ruff and mypy over the configured scope (which passes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_ci_runs_the_readme_test_command_then_lint_and_types():
    ci = _lines(ROOT / ".ci" / "run")
    readme_test = next(ln for ln in _lines(ROOT / "README.md") if ln.endswith("-m pytest -q"))
    assert readme_test in ci
    assert ci.index(".venv/bin/ruff check . && .venv/bin/mypy") > ci.index(readme_test)


def test_mypy_is_pinned_and_in_the_dev_extra():
    import tomllib

    assert any(ln.startswith("mypy==") for ln in _lines(ROOT / "constraints.txt"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(dep.startswith("mypy") for dep in project["project"]["optional-dependencies"]["dev"])
    assert project["tool"]["mypy"]["files"] and project["tool"]["mypy"]["ignore_missing_imports"] is True


def test_mypy_scope_passes():
    mypy = Path(sys.executable).parent / "mypy"
    if not mypy.exists() and shutil.which("mypy") is None:
        pytest.skip("mypy is not installed (pip install -c constraints.txt -e '.[dev]')")
    r = subprocess.run([str(mypy) if mypy.exists() else "mypy"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
