"""Where a coturn REST secret (or a long-term password) comes from when it must not be on a command line.

Every local user can read every process's argv (``ps``, ``/proc/PID/cmdline``),
so a secret given as ``--secret S`` is visible while natkit runs. The other
sources are a file (``--secret-file``, one secret per line, newest first) and
the ``NATKIT_TURN_SECRET`` environment variable (whitespace-separated,
newest first); a process's environment is readable only by its own user and
root. The client commands' ``--secret-file`` takes the first secret of such a
file, their ``--password-file`` the first non-blank line (natkit.cli.options).
"""

from __future__ import annotations

import os
import stat

from ..errors import UsageError

ENV_VAR = "NATKIT_TURN_SECRET"
ARGV_WARNING = f"--secret is readable by every local user in ps while natkit runs; prefer --secret-file FILE or {ENV_VAR}"
MAX_FILE_BYTES = 64 * 1024


def read_text_file(path: str, what: str, flag: str, holds: str | None = None) -> str:
    """The UTF-8 text of the regular file ``path`` (at most 64 KiB); :class:`UsageError` otherwise.

    ``what`` names the file in messages ("secret file ..."), ``flag`` and ``holds`` make the hint
    ("``flag`` takes a file: ``holds``"; default: the ``what`` on its first line).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror}", hint=f"{flag} takes a file: {holds or f'the {what} on its first line'}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{what} file {path} is not a regular file")
        data = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"{what} file {path} is larger than {MAX_FILE_BYTES // 1024} KiB: not a {what} file")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{what} file {path} is not UTF-8 text") from None


def read_secret_file(path: str, flag: str = "--secret-file") -> tuple[str, ...]:
    """The secrets in ``path``: one per line, newest first; blank lines and ``#`` comments skipped.

    Raises :class:`UsageError` (exit 2) when the file cannot be read, is not
    a regular file, is larger than 64 KiB, holds no secret, or a line holds
    whitespace inside the secret. A command that uses one secret takes the
    first (``--secret-file`` of the client commands, :func:`first_secret`).
    """
    text = read_text_file(path, "secret", flag)
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


def first_secret(path: str, flag: str = "--secret-file") -> str:
    """The newest secret of ``path`` (its first secret line, :func:`read_secret_file`'s rule)."""
    return read_secret_file(path, flag)[0]


def read_password_file(path: str, flag: str = "--password-file") -> str:
    """A long-term password from ``path``: its first non-blank line, the line break (``\\n``, ``\\r\\n``) stripped.

    Spaces and ``#`` are part of a password, so the line is taken as written.
    Raises :class:`UsageError` (exit 2) as :func:`read_secret_file`, and when
    the file holds only blank lines.
    """
    for line in read_text_file(path, "password", flag).splitlines():
        if line.strip():
            return line
    raise UsageError(f"password file {path} is empty", hint="write the password on its first line")


def loose_permissions(path: str, what: str = "secret") -> str | None:
    """A warning when ``path`` is readable or writable by group or others, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o077:
        return f"{what} file {path} is mode {stat.S_IMODE(mode):04o}: other users may read it (chmod 600 {path})"
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
