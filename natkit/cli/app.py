"""The ``natkit`` command: one typer app, commands registered from their modules."""

from __future__ import annotations

import typer

from . import output
from .probe import probe_cmd

app = typer.Typer(
    name="natkit",
    help="STUN/TURN toolkit: discover NATs, run hardened coturn, prove that relaying works.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors")) -> None:
    output.set_debug(debug)


app.command("probe")(probe_cmd)


def _register_optional() -> None:
    # each module registers its own commands; kept in one place for --help order
    from . import check, creds, relay, turn

    app.command("creds")(creds.creds_cmd)
    app.command("relay-check")(relay.relay_check_cmd)
    app.command("check")(check.check_cmd)
    app.add_typer(turn.turn_app, name="turn")


_register_optional()

# Command groups of later features: natkit/cli/<module>.py exposing register(app).
# Listed explicitly (not discovered) so an import error is loud, not a missing command.
_FEATURE_MODULES = ("nat", "lab", "audit", "render", "signal")


def _register_features() -> None:
    import importlib
    import importlib.util

    for mod in _FEATURE_MODULES:
        if importlib.util.find_spec(f"natkit.cli.{mod}") is not None:
            importlib.import_module(f"natkit.cli.{mod}").register(app)


_register_features()


def _terminate(signum, frame) -> None:
    # SIGTERM takes Ctrl-C's path (asyncio.run cancels its main task cleanly on
    # SIGINT), so every finally block stops what natkit started
    import os
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started in the background by a shell, which ignores SIGINT for it
        raise KeyboardInterrupt
    os.kill(os.getpid(), signal.SIGINT)


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    main()
