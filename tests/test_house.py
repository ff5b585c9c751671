"""House rules that keep natkit easy to live in, checked on every run (CPU only)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 120


def test_no_function_in_natkit_is_longer_than_120_lines():
    long = []
    for path in sorted((ROOT / "natkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], "split these along their steps: " + ", ".join(long)


def test_the_product_points_users_only_to_its_own_docs():
    """Users get docs/; nothing points outside the repository for what they need."""
    offenders = []
    for top in ("natkit", "docs", "tests", "bench", "deploy", "compose"):
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".md", ".yml", ".yaml", ".toml", ".js", ".html", ".sh", ".service"):
                text = path.read_text(errors="replace")
                if any(word in text for word in ("NATLAB" + ".md", "DESIGN" + ".md", "../" + "shared")):
                    offenders.append(str(path.relative_to(ROOT)))
    readme = (ROOT / "README.md").read_text()
    assert "NATLAB" + ".md" not in readme and "DESIGN" + ".md" not in readme
    assert offenders == []


def test_every_type_ignore_in_natkit_names_its_code_and_why():
    """``# type: ignore[code]  # why``: never a blanket ignore, never one without its reason
    (mypy's warn_unused_ignores removes the ones no longer needed)."""
    import re

    ignore = re.compile(r"#\s*type:\s*ignore(?P<code>\[[a-z-]+(,\s*[a-z-]+)*\])?(?P<why>\s+#\s*\S.*)?$")
    bad = []
    for path in sorted((ROOT / "natkit").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = ignore.search(line)
            if m and not (m.group("code") and m.group("why")):
                bad.append(f"{path.relative_to(ROOT)}:{n}")
    assert bad == [], "give these a code and a reason: " + ", ".join(bad)
