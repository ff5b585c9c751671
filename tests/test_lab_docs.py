"""The lab's documentation says what the code does (CPU only, no root).

- docs/lab.md's example ruleset is what natkit renders, and both docs' matrix tables are
  :func:`natkit.lab.expected_outcome`;
- docs/pytest-plugin.md's reference names every fixture, every public attribute of what
  the fixtures return, every ``nat_lab`` keyword and every environment variable the plugin reads;
- nothing in the repository points a user to notes that are not in it.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from natkit.lab.spec import (
    MATRIX_BEHAVIOURS,
    NatSpec,
    expected_outcome,
    render_nat_ruleset,
)

ROOT = Path(__file__).resolve().parent.parent
LAB_DOC = (ROOT / "docs" / "lab.md").read_text()
PLUGIN_DOC = (ROOT / "docs" / "pytest-plugin.md").read_text()


def test_the_documented_ruleset_is_what_natkit_renders():
    m = re.search(r"<!-- ruleset: [^>]*-->\n```\n(.*?)```", LAB_DOC, re.DOTALL)
    assert m, "docs/lab.md lost its example ruleset"
    assert m.group(1) == render_nat_ruleset(NatSpec("home", "restricted", hairpin=True), "198.51.100.11", "10.0.1.0/24")


def _matrix_tables(text: str) -> list[dict[tuple[str, str], str]]:
    label = {"open": "open", "full cone": "full_cone", "restricted": "restricted", "port-restricted": "port_restricted",
             "symmetric": "symmetric"}
    tables = []
    for block in re.findall(r"^\|  \| open \|.*?(?=\n\n|\Z)", text, re.DOTALL | re.MULTILINE):
        rows = block.splitlines()
        cols = [label[c.strip()] for c in rows[0].strip("|").split("|")[1:]]
        cells = {}
        for row in rows[2:]:
            parts = [c.strip() for c in row.strip().strip("|").split("|")]
            a = label[parts[0].strip("*")]
            for b, cell in zip(cols, parts[1:], strict=True):
                if cell:
                    cells[(a, b)] = cell
        tables.append(cells)
    return tables


@pytest.mark.parametrize("doc", ["lab.md", "pytest-plugin.md"])
def test_the_documented_matrix_is_expected_outcome(doc):
    tables = _matrix_tables(LAB_DOC if doc == "lab.md" else PLUGIN_DOC)
    assert len(tables) == 1
    cells = tables[0]
    n = len(MATRIX_BEHAVIOURS)
    assert len(cells) == n * (n + 1) // 2  # the upper triangle, diagonal included
    for (a, b), text in cells.items():
        with_turn = expected_outcome(a, b, turn=True)
        stun_only = expected_outcome(a, b, turn=False)
        want = with_turn if with_turn == stun_only or doc == "lab.md" else f"{with_turn} (STUN only: {stun_only})"
        assert text == want, (doc, a, b)


def _documented(name: str, text: str = PLUGIN_DOC) -> bool:
    """``name`` appears in code quotes: `name`, `name(...)`, `name=...`, or as a `.name` attribute."""
    return re.search(r"`(?:[\w.@]*\.)?" + re.escape(name) + r"(?:[`(=]|\s*[,)])", text) is not None


def _fixtures() -> list[str]:
    import natkit.pytest_plugin as plugin

    names = []
    for name, obj in vars(plugin).items():
        if type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(obj, "_pytestfixturefunction"):
            names.append(name)
    return names


def _public(obj) -> set[str]:
    names = {n for n in dir(type(obj)) if not n.startswith("_")}
    names |= {n for n in vars(obj) if not n.startswith("_")}
    return names


def test_the_reference_names_every_fixture_attribute_and_option():
    from natkit.lab import LabSpec, NatLab
    from natkit.pytest_plugin import NAT_MARKER, NatPair, TurnServerHandle

    missing = []
    fixtures = _fixtures()
    assert {"turn_server", "nat_lab", "nat_matrix_lab", "nat_pair"} <= set(fixtures)
    missing += [f"fixture {n}" for n in fixtures if not _documented(n)]
    handle = TurnServerHandle("turn:127.0.0.1:1", ("turn:127.0.0.1:1",), "s", "127.0.0.1", 1, "native", None, "stun:127.0.0.1:1")
    missing += [f"TurnServerHandle.{n}" for n in sorted(_public(handle)) if not _documented(n)]
    pair = NatPair(None, "symmetric", "open")
    missing += [f"NatPair.{n}" for n in sorted(_public(pair)) if not _documented(n)]
    lab = NatLab(LabSpec.peers("open"), name="docs", turn=False, stun=False, verify=False, agents=False)
    stored = {"keep_agents", "do_verify", "agent_env", "persistent"}  # the agents/verify/... keywords, as stored
    missing += [f"NatLab.{n}" for n in sorted(_public(lab) - stored) if not _documented(n)]
    params = [p for p in inspect.signature(NatLab).parameters if p != "spec"]
    missing += [f"nat_lab keyword {p}" for p in params if not _documented(p)]
    for option in re.findall(r"(\w+)=", NAT_MARKER.split(":")[0]):
        missing += [f"marker option {option}"] if not _documented(option) else []
    source = (ROOT / "natkit" / "pytest_plugin.py").read_text()
    missing += [f"variable {v}" for v in sorted(set(re.findall(r"NATKIT_[A-Z_]+", source))) if v not in PLUGIN_DOC]
    assert not missing, "docs/pytest-plugin.md does not document: " + ", ".join(missing)


def test_the_spec_classes_are_top_level_api():
    import natkit
    from natkit.lab import spec

    for name in ("NatLab", "LabSpec", "NatSpec", "HostSpec", "ServerSpec"):
        assert name in natkit.__all__
        assert getattr(natkit, name) is getattr(spec, name, None) or name == "NatLab"


def test_nothing_points_users_to_notes_outside_the_repository():
    needles = ["NAT" + "LAB.md", "DES" + "IGN.md", "../" + "shared"]
    hits = []
    for base in ("natkit", "docs", "tests", "bench", "README.md"):
        path = ROOT / base
        kinds = (".py", ".md", ".js", ".html", ".toml", ".txt")
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and p.suffix in kinds]
        for f in files:
            text = f.read_text(errors="replace")
            hits += [f"{f.relative_to(ROOT)}: {n}" for n in needles if n in text]
    assert not hits, hits
