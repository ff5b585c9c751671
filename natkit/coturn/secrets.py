"""Where a coturn REST secret comes from when it must not be on a command line.

Every local user can read every process's argv (``ps``, ``/proc/PID/cmdline``),
so a secret given as ``--secret S`` is visible while natkit runs. The other
sources are a file (``--secret-file``, one secret per line, newest first) and
the ``NATKIT_TURN_SECRET`` environment variable (whitespace-separated,
newest first); a process's environment is readable only by its own user and
root.
"""

from __future__ import annotations

import os
import stat

from ..errors import UsageError

ENV_VAR = "NATKIT_TURN_SECRET"
ARGV_WARNING = f"--secret is readable by every local user in ps while natkit runs; prefer --secret-file FILE or {ENV_VAR}"
MAX_FILE_BYTES = 64 * 1024


def read_secret_file(path: str) -> tuple[str, ...]:
    """The secrets in ``path``: one per line, newest first; blank lines and ``#`` comments skipped.

    Raises :class:`UsageError` (exit 2) when the file cannot be read, is not
    a regular file, is larger than 64 KiB, holds no secret, or a line holds
    whitespace inside the secret.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise UsageError(f"cannot read secret file {path}: {exc.strerror}", hint="--secret-file takes a file with one secret per line") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"secret file {path} is not a regular file")
        data = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"secret file {path} is larger than {MAX_FILE_BYTES // 1024} KiB: not a secret file")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise UsageError(f"secret file {path} is not UTF-8 text") from None
    secrets = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(c.isspace() for c in line) or "#" in line:
            raise UsageError(f"secret file {path}, line {number}: a secret contains no whitespace or '#'")
        secrets.append(line)
    if not secrets:
        raise UsageError(f"secret file {path} holds no secret", hint="write one secret per line, newest first")
    return tuple(secrets)


def loose_permissions(path: str) -> str | None:
    """A warning when ``path`` is readable or writable by group or others, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o077:
        return f"secret file {path} is mode {stat.S_IMODE(mode):04o}: other users may read it (chmod 600 {path})"
    return None


def resolve(from_argv: tuple[str, ...] | list[str], secret_file: str | None, environ=None) -> tuple[tuple[str, ...], list[str]]:
    """The secrets to use, newest first, and warnings for the operator.

    Sources, one at a time: ``from_argv`` (``--secret``, repeatable; warned
    about), ``secret_file`` (``--secret-file``), else ``NATKIT_TURN_SECRET``
    from ``environ`` (default ``os.environ``; several separated by
    whitespace). ``--secret`` with ``--secret-file`` is a :class:`UsageError`,
    and so is ``NATKIT_TURN_SECRET`` set but empty (an empty secret is
    known to everybody). Returns ``((), [])`` when no source is given: the
    caller mints a fresh secret.
    """
    environ = os.environ if environ is None else environ
    if from_argv and secret_file:
        raise UsageError("--secret and --secret-file are two sources of the same secrets", hint="use one of them")
    if secret_file:
        loose = loose_permissions(secret_file)
        return read_secret_file(secret_file), [loose] if loose else []
    if from_argv:
        return tuple(from_argv), [ARGV_WARNING]
    if ENV_VAR in environ:
        secrets = tuple(environ[ENV_VAR].split())
        if not secrets:
            raise UsageError(f"{ENV_VAR} is set but empty", hint="unset it for a fresh random secret, or put the secret in it")
        return secrets, []
    return (), []
