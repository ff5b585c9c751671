"""Shared test setup. The require_* helpers live in natkit.pytest_plugin (loaded via its entry point)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Every test gets its own natkit state directory; progress lines are silenced."""
    monkeypatch.setenv("NATKIT_STATE_DIR", str(tmp_path / "natkit-state"))
    monkeypatch.setenv("NATKIT_QUIET", "1")
