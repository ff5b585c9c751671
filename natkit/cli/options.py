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


# ---- TURN credentials: secrets never in argv (one definition for every client command)
#
# --secret / --password stay accepted, but every local user reads argv in ps; the
# file forms read natkit.coturn.secrets' way while the options are parsed (a missing,
# unreadable or empty file is exit 2 before any work), and the environment variables
# are the third source. The option's value is what the file holds, never its path.

SECRET_ENV = "NATKIT_TURN_SECRET"
PASSWORD_ENV = "NATKIT_TURN_PASSWORD"


class FileValue(str):
    """A secret read from a file: the text itself, plus the file's ``path`` and a ``warning`` (loose mode) or None."""

    path: str
    warning: Optional[str]


def _from_file(flag: str, reader: str, what: str) -> Callable[[Optional[str]], Optional[FileValue]]:
    """A callback reading ``path`` with ``natkit.coturn.secrets.<reader>``; its errors are ``BadParameter`` (exit 2)."""
    def load(path: Optional[str]) -> Optional[FileValue]:
        if path is None:
            return None
        from ..coturn import secrets
        from ..errors import UsageError

        try:
            value = FileValue(getattr(secrets, reader)(path, flag))
        except UsageError as exc:
            raise typer.BadParameter(exc.message) from None
        value.path, value.warning = path, secrets.loose_permissions(path, what)
        return value

    return load


def secret_option(*more: str, help: str) -> Any:
    """``--secret S`` (repeat ``more`` for a short form): accepted, with the ps warning in its help."""
    return typer.Option(None, "--secret", *more,
                        help=f"{help}; default ${SECRET_ENV}. On the command line it is visible to every local user in ps: "
                             "prefer --secret-file")


def secret_file_option(help: str = "file holding the REST shared secret: its first line (# comments skipped; keep it 0600)") -> Any:
    """``--secret-file FILE``: the value is the file's first secret (:func:`natkit.coturn.secrets.first_secret`)."""
    return typer.Option(None, "--secret-file", metavar="FILE", help=help, callback=_from_file("--secret-file", "first_secret", "secret"))


def password_option(*more: str, help: str) -> Any:
    """``--password P``: accepted, with the ps warning in its help."""
    return typer.Option(None, "--password", *more,
                        help=f"{help}; default ${PASSWORD_ENV}. On the command line it is visible to every local user in ps: "
                             "prefer --password-file")


def password_file_option(help: str = "file whose first line is the long-term password (keep it 0600)") -> Any:
    """``--password-file FILE``: the value is the file's first non-blank line (:func:`natkit.coturn.secrets.read_password_file`)."""
    return typer.Option(None, "--password-file", metavar="FILE", help=help,
                        callback=_from_file("--password-file", "read_password_file", "password"))


def _one_source(flag: str, given: Optional[str], from_file: Optional[str], env_var: str, environ) -> Optional[str]:
    from ..errors import UsageError

    if given is not None and from_file is not None:
        raise UsageError(f"{flag} and {flag}-file are two sources of the same {flag[2:]}", hint=f"use one; {flag}-file keeps it out of ps")
    if from_file is not None:
        warning = getattr(from_file, "warning", None)
        if warning:
            from .output import err

            err(f"natkit: warning: {warning}")
        return str(from_file)
    if given is not None:
        return given
    return (os.environ if environ is None else environ).get(env_var) or None


def turn_secret(secret: Optional[str], secret_file: Optional[str], environ=None) -> Optional[str]:
    """The REST secret: ``--secret``, ``--secret-file`` (the value read), else ``$NATKIT_TURN_SECRET``; None: none given.

    Both options at once raise :class:`~natkit.errors.UsageError` (exit 2).
    """
    return _one_source("--secret", secret, secret_file, SECRET_ENV, environ)


def turn_password(password: Optional[str], password_file: Optional[str], environ=None) -> Optional[str]:
    """The long-term password: ``--password``, ``--password-file``, else ``$NATKIT_TURN_PASSWORD``; None: none given."""
    return _one_source("--password", password, password_file, PASSWORD_ENV, environ)
