"""natkit's pytest plugin used from another project, the way docs/pytest-plugin.md says.

A throwaway project in tmp_path gets the documented files (``<!-- example: PATH -->``
blocks of the page, exactly as written) and natkit as ``third_party/natkit`` (a copy of
this checkout, as a submodule would be); a fresh virtual environment installs it with the
documented ``python -m pip install ./third_party/natkit``, and the project's own pytest
runs the documented tests there, as root, with ``NATKIT_REQUIRE_NETNS=1``.

Installing natkit's dependencies from the package index takes ~35 s here and needs the
network, so by default the fresh environment borrows them (symlinks to this environment's
installed distributions, natkit's own excluded) and pip installs natkit itself with
``--no-deps --no-index --no-build-isolation``: the same build of the same checkout, the
same entry points and package data, only no download. ``NATKIT_TEST_INSTALL=full`` runs
the documented command verbatim instead (dependencies from the index).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "pytest-plugin.md"
SKIP_TOP = {"..", "__pycache__", "tests", "README.md", "pyproject.toml", "LICENSE", "bin"}


def doc_examples() -> dict[str, str]:
    """The page's ``<!-- example: PATH -->`` code blocks, by path."""
    text = DOC.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", text, re.DOTALL)}


def _copy_checkout(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".ruff_cache",
                                    ".pytest_cache", ".mypy_cache", "bench")
    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)


def _link_dependencies(deps: Path) -> int:
    """Symlink every installed distribution but natkit into ``deps``; returns how many."""
    deps.mkdir()
    count = 0
    for dist in importlib.metadata.distributions():
        if (dist.metadata["Name"] or "").lower() == "natkit" or dist.files is None:
            continue
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files}:
            if top in SKIP_TOP or top.endswith(".pth") or (deps / top).exists():
                continue
            if (base / top).exists():
                (deps / top).symlink_to(base / top)
        count += 1
    return count


def _fresh_venv(tmp_path: Path, project: Path) -> tuple[Path, dict[str, float]]:
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    times: dict[str, float] = {}
    t = time.monotonic()
    full = os.environ.get("NATKIT_TEST_INSTALL") == "full"
    subprocess.run([sys.executable, "-m", "venv", *([] if full else ["--without-pip"]), str(venv)], check=True, timeout=120)
    times["venv_s"] = time.monotonic() - t
    t = time.monotonic()
    if full:  # the documented command, dependencies from the package index
        argv = [str(python), "-m", "pip", "install", "-q", "./third_party/natkit", "pytest", "pytest-timeout"]
    else:
        deps = tmp_path / "deps"
        _link_dependencies(deps)
        purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                      capture_output=True, text=True, check=True).stdout.strip())
        (purelib / "natkit-test-borrowed-deps.pth").write_text(str(deps) + "\n")
        argv = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", "./third_party/natkit"]
    r = subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    times["install_s"] = time.monotonic() - t
    return python, times


def test_the_documented_examples_pass_in_a_fresh_project(tmp_path):
    from natkit.pytest_plugin import require_lab

    require_lab(True)
    examples = doc_examples()
    assert set(examples) == {"my_client.py", "tests/test_nat.py"}, set(examples)
    project = tmp_path / "project"
    for name, body in examples.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(body)
    # a test that fails on purpose: the failure must show the program's own error (NatkitError.__str__)
    (project / "tests" / "test_cause.py").write_text(
        "import sys\n\n\n"
        "def test_a_missing_module_says_so(nat_lab):\n"
        "    lab = nat_lab('open', turn=False, stun=False, verify=False, agents=False)\n"
        "    lab.exec('open1', [sys.executable, '-m', 'not_installed_anywhere'], check=True)\n"
    )
    _copy_checkout(project / "third_party" / "natkit")
    python, times = _fresh_venv(tmp_path, project)

    # the fresh environment runs its own copy of natkit, not this checkout
    where = subprocess.run([str(python), "-c", "import natkit, natkit.web; print(natkit.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where
    assert (tmp_path / "venv" / "bin" / "natkit").exists()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NATKIT_"))}
    env.update(NATKIT_REQUIRE_NETNS="1", NATKIT_LAB_DIR=str(tmp_path / "labs"), PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    t = time.monotonic()
    r = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_nat.py"],
                       cwd=project, capture_output=True, text=True, timeout=300, env=env, check=False)
    times["tests_s"] = time.monotonic() - t
    print("external project:", {k: round(v, 1) for k, v in times.items()})
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
    assert re.search(r"\b8 passed\b", r.stdout), r.stdout[-2000:]
    assert "skipped" not in r.stdout

    r = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cause.py"],
                       cwd=project, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout[-3000:]
    assert "No module named not_installed_anywhere" in r.stdout, r.stdout[-3000:]
    labs = tmp_path / "labs"
    assert not labs.exists() or list(labs.iterdir()) == []  # every lab of the run is gone


def test_the_ci_snippets_never_install_natkit_from_the_index():
    text = DOC.read_text()
    snippets = re.findall(r"```(?:yaml|console)\n(.*?)```", text, re.DOTALL)
    assert len(snippets) >= 3
    for snippet in snippets:
        assert not re.search(r"pip install (-\S+ )*natkit\b", snippet), snippet
    assert "python -m pip install ./third_party/natkit" in text
    assert sysconfig.get_path("purelib")  # the layout the fast install path relies on
