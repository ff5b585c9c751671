"""Rendering and error handling shared by every command.

Rules: ``--json`` prints exactly one JSON document on stdout (the report, or
``{"ok": false, "error": {...}}``); human text goes to stdout, progress and
errors to stderr. A :class:`~natkit.errors.NatkitError` becomes one line on
stderr and its exit code; ``--debug`` (or ``NATKIT_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from ..errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    InternalError,
    Interrupted,
    NatkitError,
)

DEBUG = bool(os.environ.get("NATKIT_DEBUG"))


def set_debug(value: bool) -> None:
    global DEBUG
    DEBUG = DEBUG or value


def err(line: str) -> None:
    """One line to stderr."""
    print(line, file=sys.stderr, flush=True)


def progress(line: str) -> None:
    """A progress line on stderr (silent when stderr is not wanted)."""
    if not os.environ.get("NATKIT_QUIET"):
        print(f"… {line}", file=sys.stderr, flush=True)


_EMITTED = False  # a JSON document is already on stdout (a server's "listening" document, say)


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout (``--json`` prints exactly one per run)."""
    import json

    global _EMITTED
    _EMITTED = True

    from ..model import to_jsonable

    sys.stdout.write(json.dumps(to_jsonable(document), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def report(json_mode: bool, document: Any, render: Callable[[Any], None]) -> int:
    """A command's report on stdout — one JSON document with ``--json``, else ``render(document)`` — and its
    ``exit_code`` (the documented code of its most severe failure)."""
    if json_mode:
        emit_json(document)
    else:
        render(document)
    return document.exit_code


def console():
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit 1 here; natkit's rule is "stop quietly, exit 141" (see run)
            raise BrokenPipeError

    return _Console(highlight=False, soft_wrap=False)


def table(title: str | None, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["–" if v is None else str(v) for v in r])
    return t


def run(json_mode: bool, body: Callable[[], int | None]) -> None:
    """Run a command body, mapping errors to one line and an exit code.

    ``body`` returns the exit code (None means 0).
    """
    import typer

    try:
        code = body() or 0
    except NatkitError as exc:
        if DEBUG:
            import traceback

            traceback.print_exc()
        if json_mode:
            emit_json({"ok": False, "error": exc.to_dict()})
        err(f"natkit: error: {exc.one_line()}")
        for line in exc.details:
            err(f"  | {line}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if json_mode and not _EMITTED:  # a server that printed its document ends normally with Ctrl-C
            emit_json({"ok": False, "error": Interrupted("interrupted").to_dict()})
        err("natkit: interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # the reader went away (natkit ... | head -1): stop quietly, as a SIGPIPE'd tool would
        from .app import _silence_stdout

        _silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as exc:  # a bug: still one line, traceback with --debug
        if DEBUG:
            import traceback

            traceback.print_exc()
        if json_mode:
            emit_json({"ok": False, "error": InternalError(f"{exc.__class__.__name__}: {exc}").to_dict()})
        err(f"natkit: internal error: {exc.__class__.__name__}: {exc} (a natkit bug; rerun with --debug for the traceback)")
        raise typer.Exit(EXIT_INTERNAL) from None
    raise typer.Exit(code)


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"
