"""The repository stands alone: packaging metadata, the set-up script's second run, no machine paths."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Paths of the machines this was written on; a clone elsewhere has none of them.
MACHINE_PATHS = re.compile(r"/work/(?:main|shared)|/tmp/pytest-of-|/root/\.(?:cache|pyenv)")


def test_the_licence_is_an_spdx_expression() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # a string, not the table setuptools deprecates
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))


def test_no_tracked_file_names_a_path_of_this_machine() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in files.splitlines():
        path = REPO_ROOT / name
        if path.suffix in {".png", ".jpg", ".onnx", ".pth"} or not path.is_file() or path == Path(__file__).resolve():
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{name}: {match.group(0)}" for match in MACHINE_PATHS.finditer(text)]
    assert not offenders, offenders


@pytest.mark.skipif(not (REPO_ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv made by bootstrap.sh")
def test_a_second_bootstrap_installs_nothing() -> None:
    stamp = REPO_ROOT / ".venv" / ".sam-serve-installed"
    if not stamp.exists() or Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve():
        pytest.skip("this run's interpreter is not the .venv that bootstrap.sh made")
    if stamp.read_text().split()[0] != hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest():
        pytest.skip("pyproject.toml changed since the last bootstrap: the next one installs, rightly")
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    installed = sorted(site.glob("sam_serve-*.dist-info"))
    assert installed, "the package is not installed in .venv"
    before = [os.stat(p).st_mtime_ns for p in (stamp, *installed)]

    started = time.monotonic()
    done = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=REPO_ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - started

    assert done.returncode == 0, done.stderr
    assert [os.stat(p).st_mtime_ns for p in (stamp, *installed)] == before  # pip did not run
    assert elapsed < 10, f"a bootstrap with nothing to do took {elapsed:.1f} s"


def test_every_benchmark_module_imports() -> None:
    """The benchmarks run by hand, not in the suite: at least each of their modules must import (a name that
    moved in a restructuring would otherwise surface only when someone measures)."""
    modules = sorted(path.stem for path in (REPO_ROOT / "bench").glob("*.py"))
    assert {"report", "harness", "clicks", "model_runs"} <= set(modules)
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=REPO_ROOT / "bench",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_file_of_the_service_is_over_its_size_budget() -> None:
    """Rooms that say what they hold: no module of the service, its page, examples or benchmarks past 300 lines."""
    sizes = {
        path.relative_to(REPO_ROOT).as_posix(): len(path.read_text().splitlines())
        for folder, pattern in (
            ("sam_core", "*.py"),
            ("deployments", "*.py"),
            ("sam_cli", "*.py"),
            ("bench", "*.py"),
            ("examples", "*.py"),
            ("scripts", "*.py"),
            ("web/ui", "*.js"),
        )
        for path in (REPO_ROOT / folder).rglob(pattern)
    }
    assert sizes, "no modules found"
    assert {path: lines for path, lines in sizes.items() if lines > 300} == {}


def test_tests_mirror_the_tree() -> None:
    """Tests live in folders by what they test; only shared fixtures and support modules stand in tests/."""
    loose = sorted(path.name for path in (REPO_ROOT / "tests").glob("test_*.py"))
    assert loose == []
