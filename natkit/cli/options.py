"""Option definitions shared by the commands, validated at the edge.

Every float option is a finite number in a stated range (``inf`` and ``nan``
are usage errors, exit 2), every input file exists and is readable before any
work starts, every output path is writable before any work starts. A
violation raises ``typer.BadParameter``, which :mod:`natkit.cli.commands`
prints as one line (exit 2, and a JSON error document with ``--json``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional

import typer


def _fmt(value: float) -> str:
    return f"{value:g}"


def _number(flag: str, low: float | None, high: float | None, *, low_open: bool, unit: str) -> Callable[[Any], Any]:
    def check(value):
        if value is None:
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise typer.BadParameter(f"must be a finite number{unit}, got {value}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else (f"> {_fmt(low)}" if low_open else f">= {_fmt(low)}")
            hi = "" if high is None else f"<= {_fmt(high)}"
            raise typer.BadParameter(f"must be {' and '.join(p for p in (lo, hi) if p)}{unit}, got {_fmt(value)}")
        return value

    return check


def seconds(default: Optional[float], flag: str, *more: str, help: str, low: float = 0.0, high: float = 3600.0,
            allow_zero: bool = False) -> Any:
    """A duration option in seconds: finite, ``> low`` (``>= low`` with ``allow_zero``), ``<= high``."""
    return typer.Option(default, flag, *more, help=help,
                        callback=_number(flag, low, high, low_open=not allow_zero, unit=" of seconds"))


def integer(default: Optional[int], flag: str, *more: str, help: str, low: int | None = None, high: int | None = None) -> Any:
    """An integer option within ``[low, high]``."""
    return typer.Option(default, flag, *more, help=help, callback=_number(flag, low, high, low_open=False, unit=""))


def _input_file(flag: str) -> Callable[[Optional[str]], Optional[str]]:
    def check(value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        if not os.path.exists(value):
            raise typer.BadParameter(f"{value}: no such file")
        if os.path.isdir(value):
            raise typer.BadParameter(f"{value}: is a directory, not a file")
        if not os.access(value, os.R_OK):
            raise typer.BadParameter(f"{value}: not readable")
        return value

    return check


def input_file(default: Optional[str], flag: str, *more: str, help: str) -> Any:
    """A file natkit reads (a CA bundle, a certificate): it must exist and be readable."""
    return typer.Option(default, flag, *more, help=help, callback=_input_file(flag))


def check_output_file(flag: str, value: str) -> str:
    """Raise ``BadParameter`` unless ``value`` can be created or overwritten as a file."""
    path = os.path.abspath(value)
    if os.path.isdir(path):
        raise typer.BadParameter(f"{value}: is a directory")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise typer.BadParameter(f"{value}: directory {parent} does not exist")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise typer.BadParameter(f"{value}: not writable")
    if not os.path.exists(path) and not os.access(parent, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{value}: cannot create files in {parent}")
    return value


def output_file(default: Optional[str], flag: str, *more: str, help: str) -> Any:
    """A file natkit writes (a JUnit report): checked before any work starts."""
    return typer.Option(default, flag, *more, help=help,
                        callback=lambda value: value if value is None else check_output_file(flag, value))


def check_output_dir(flag: str, value: str) -> str:
    """Raise ``BadParameter`` unless ``value`` is a writable directory or can be created as one."""
    path = os.path.abspath(value)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise typer.BadParameter(f"{value}: exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise typer.BadParameter(f"{value}: directory is not writable")
        return value
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{value}: cannot create it ({ancestor} is not a writable directory)")
    return value


def output_dir(default: Optional[str], flag: str, *more: str, help: str) -> Any:
    """A directory natkit writes files into (created when missing): checked before any work starts."""
    return typer.Option(default, flag, *more, help=help,
                        callback=lambda value: value if value is None else check_output_dir(flag, value))


def json_flag(help: str = "print one JSON document on stdout (errors too)") -> Any:
    return typer.Option(False, "--json", help=help)


# ---- the shared TLS trust options (probe, relay-check, check, audit, peer)

def ca_option(help: str = "CA bundle (PEM) to verify TLS servers") -> Any:
    return input_file(None, "--ca", help=help)


def insecure_option(help: str = "do not verify TLS certificates") -> Any:
    return typer.Option(False, "--insecure", help=help)
