"""The typer app: one table of commands, each imported only when it runs.

Registration has one style: a row of :data:`COMMANDS` names the command and
where it lives (``module:attribute``, a command function or a typer sub-app).
``natkit probe`` imports typer and ``natkit.cli.probe`` only; ``--help`` and
the "did you mean" suggestions still know every command. A command module
that fails to import is loud (an internal error naming it), never a missing
command.

:func:`invoke` runs the app without click's standalone mode so that usage
errors follow natkit's rule: one line on stderr, exit 2, and with ``--json``
one JSON error document on stdout.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import MutableMapping
from typing import Any, Iterator, Sequence

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from ..errors import EXIT_BROKEN_PIPE
from . import output

# name -> ("module:attribute" of a command function or a typer.Typer sub-app, the one-line summary --help shows).
# --help lists them in this order; a test checks each summary against the command's own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("natkit.cli.check:check_cmd", "Check a TURN server end to end: STUN probe, then relay-only ICE with data echo."),
    "probe": ("natkit.cli.probe:probe_cmd", "Discover the public address with STUN Binding requests (RFC 8489), all servers at once."),
    "nat": ("natkit.cli.nat:nat_cmd", "Discover how the NAT between you and the STUN servers behaves (RFC 5780)."),
    "relay-check": ("natkit.cli.relay:relay_check_cmd",
                    "Prove that a TURN server relays: two aiortc peers, relay-only ICE, data-channel echo."),
    "doctor": ("natkit.cli.doctor:doctor_cmd",
               "Diagnose a TURN server: reachability per transport, authentication, allocations, relayed address, permissions, "
               "data both ways, TLS."),
    "creds": ("natkit.cli.creds:creds_cmd",
              'Mint a time-limited TURN credential: username "<expiry>:<user>", password base64(HMAC-SHA1(secret, username)).'),
    "turn": ("natkit.cli.turn:turn_app", "Provision coturn (Docker or the native turnserver) with a hardened configuration."),
    "lab": ("natkit.cli.lab:lab_app",
            "Real NATs in Linux network namespaces (root): build a lab, run commands in it, run the NAT x NAT outcome matrix."),
    "signal": ("natkit.cli.signal:signal_app", "WebSocket signaling server with rooms, and the browser test page."),
    "peer": ("natkit.cli.signal:peer_cmd", "Join a signaling room, connect to whoever is there, and check the path."),
    "monitor": ("natkit.cli.monitor:monitor_app", "Monitor TURN servers from outside: Prometheus metrics, /probe, /healthz; or one round."),
}


def load(name: str, target: str):
    """The click command for one row of :data:`COMMANDS` (imports its module)."""
    module_name, attr = target.split(":")
    obj = getattr(importlib.import_module(module_name), attr)
    command: Any
    if isinstance(obj, typer.Typer):
        command = typer.main.get_group(obj)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(obj)
        command = typer.main.get_command(single)
    command.name = name
    return command


class _LazyCommands(MutableMapping):
    """``TyperGroup.commands`` whose values are built on first access."""

    def __init__(self, table: dict[str, tuple[str, str]]) -> None:
        self._table = {name: target for name, (target, _) in table.items()}
        self._loaded: dict = {}

    def __getitem__(self, name: str):
        if name not in self._loaded:
            self._loaded[name] = load(name, self._table[name])
        return self._loaded[name]

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def __setitem__(self, name: str, command) -> None:
        self._table.setdefault(name, "")
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._table[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table


class NatkitGroup(TyperGroup):
    """The top-level group: commands from :data:`COMMANDS`, loaded on demand."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        lazy = _LazyCommands(COMMANDS)
        for name, command in self.commands.items():
            lazy[name] = command
        self.commands = self._lazy = lazy

    _listing = False  # formatting this group's --help: summaries suffice, no command module is imported

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)  # the names only: TyperGroup's items() would import every command

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands:
            return None
        if self._listing and cmd_name in COMMANDS and not self._lazy.loaded(cmd_name):
            return TyperCommand(name=cmd_name, help=COMMANDS[cmd_name][1])
        return self.commands[cmd_name]

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        """click's entry point: in standalone mode (the console script, ``CliRunner``) errors are natkit's one line."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = sys.argv[1:] if args is None else list(args)
        sys.exit(_run_group(self, argv, prog_name or "natkit", **extra))

    def format_help(self, ctx, formatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="natkit",
    cls=NatkitGroup,
    help="STUN/TURN toolkit: discover NATs, run hardened coturn, prove that relaying works.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors")) -> None:
    output.set_debug(debug)


def wants_json(args: list[str]) -> bool:
    """Whether ``--json`` was asked for (before a ``--`` that ends natkit's own options)."""
    own = args[: args.index("--")] if "--" in args else args
    return "--json" in own


def _click_exceptions():
    try:
        from typer._click import exceptions  # recent typer vendors click
    except ImportError:  # older typer: click itself
        from click import exceptions  # type: ignore[no-redef]  # the same module, from where older typer keeps it
    return exceptions


def usage_error(exc, json_mode: bool) -> int:
    """Print a click usage error natkit's way: one line (and a JSON document with --json); return 2."""
    from ..errors import UsageError

    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "natkit"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = " ".join(message.split())
    step = where.split(" ", 1)[1] if " " in where else None  # "natkit turn up" -> "turn up"
    error = UsageError(message, step=step, hint=f"{where} --help")
    if json_mode:
        output.emit_json({"ok": False, "error": error.to_dict()})
    output.err(f"natkit: error: {error.one_line()}")
    return error.exit_code


def _run_group(command, args: list[str], prog_name: str, **extra) -> int:
    exceptions = _click_exceptions()
    json_mode = wants_json(args)
    try:
        code = TyperGroup.main(command, args, prog_name=prog_name, standalone_mode=False, **extra)
    except exceptions.NoArgsIsHelpError as exc:
        exc.show()
        return exc.exit_code
    except exceptions.ClickException as exc:
        return usage_error(exc, json_mode)
    except typer.Abort:
        output.err("natkit: interrupted")
        return 130
    except SystemExit as exc:
        # typer's help (rich) and typer's own EPIPE handler exit 1 after pointing stdout at /dev/null
        if exc.code == 1 and _stdout_is_devnull():
            return EXIT_BROKEN_PIPE
        raise
    return code if isinstance(code, int) else 0


def _stdout_is_devnull() -> bool:
    import os

    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    except (OSError, ValueError):
        return False


def invoke(args: list[str]) -> int:
    """Run natkit with ``args``; return its exit code (see the README's table)."""
    try:
        typer.main.get_command(app).main(args, prog_name="natkit")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(invoke(sys.argv[1:]))
