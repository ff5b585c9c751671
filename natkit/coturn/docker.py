"""The Docker backend (placeholder until the engine-backed implementation lands)."""

from __future__ import annotations

from pathlib import Path

NAME = "docker"


def available() -> tuple[bool, str]:
    return False, "not implemented yet"


def reap_labelled() -> list[str]:
    return []
