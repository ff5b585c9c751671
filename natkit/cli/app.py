"""The ``natkit`` command's entry point: signals first, then the (lazy) typer app.

:func:`main` is the console script. Before anything slow happens it installs
the signal handlers (SIGTERM and SIGHUP take Ctrl-C's path, so every
``finally`` stops what natkit started), then imports typer and the one command
that was asked for (:mod:`natkit.cli.commands`). Ctrl-C or SIGTERM during the
imports is "interrupted", exit 130, never a traceback; a closed stdout
(``natkit ... | head -1``) ends quietly with exit 141, as for SIGPIPE.

``from natkit.cli.app import app`` still gives the typer app (for
``typer.testing.CliRunner``); importing this module stays cheap and installs
nothing.
"""

from __future__ import annotations

import os
import signal
import sys

from ..errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED  # a module without imports: cheap this early


def _terminate(signum, frame) -> None:
    """SIGTERM/SIGHUP: take Ctrl-C's path (asyncio.run cancels its main task on SIGINT)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started in the background by a shell, which ignores SIGINT for it
        raise KeyboardInterrupt
    os.kill(os.getpid(), signal.SIGINT)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP (closed terminal, ssh gone) clean up like Ctrl-C."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup: keep ignoring SIGHUP
            signal.signal(sig, _terminate)


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run(argv: list[str] | None = None) -> int:
    """Run the natkit command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        from .commands import invoke

        return invoke(args)
    except KeyboardInterrupt:
        try:
            print("natkit: interrupted", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def main() -> None:
    """The ``natkit`` console script."""
    install_signal_handlers()
    code = run()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = code or EXIT_BROKEN_PIPE
    except (OSError, ValueError):
        pass
    sys.exit(code)


def __getattr__(name: str):
    if name == "app":
        from .commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
