"""``natkit lab up|down|exec|list|matrix``: real NATs in network namespaces."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options, output

lab_app = typer.Typer(
    help="Real NATs in Linux network namespaces (root): build a lab, run commands in it, run the NAT x NAT outcome matrix.",
    no_args_is_help=True,
)



def _spec_from(arg: str):
    """A spec file (.toml/.json), ``matrix``, or behaviours separated by commas."""
    from pathlib import Path

    from ..errors import UsageError
    from ..lab.spec import LabSpec, load_spec

    if Path(arg).exists():
        return load_spec(arg)
    if arg == "matrix":
        return LabSpec.matrix()
    if arg.endswith((".toml", ".json")):
        raise UsageError(f"lab spec file {arg!r} does not exist")
    return LabSpec.peers(*[b for b in arg.split(",") if b.strip()])


@lab_app.command("up")
def up_cmd(
    spec: str = typer.Argument(..., metavar="SPEC", help="a lab spec file (.toml/.json), 'matrix', or behaviours separated by commas (symmetric,port_restricted)"),
    name: Optional[str] = typer.Option(None, "--name", help="lab name in namespace names (natkit-NAME-HOST); default: from the spec or random"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="measure every host's NAT before declaring the lab up"),
    turn: bool = typer.Option(True, "--turn/--no-turn", help="relay with coturn in the server namespace (--no-turn: STUN only, still verified)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Build a lab and leave it running (remove it with natkit lab down).

    Exit codes: 0 up, 2 bad spec, 3 no root/namespaces/coturn or a NAT that does not behave as declared.
    """

    def body() -> int:
        from ..lab.inventory import summary
        from ..lab.lab import NatLab
        from ..lab.matrix import render_checks

        lab_spec = _spec_from(spec)
        lab = NatLab(lab_spec, name=name, turn=turn, verify=verify, persistent=True, agents=False)
        output.progress(f"building lab {lab.name}: {len(lab.plan.namespaces)} namespaces")
        lab.up()
        info = summary(lab)
        if json_out:
            output.emit_json(info)
            return 0
        w = typer.echo
        w(f"lab {lab.name} is up ({lab.timings.get('build_ms', 0):.0f} ms to build)")
        for h, d in info.hosts.items():
            w(f"  host {h:<10} {d.address:<16} behind {' -> '.join(d.behind) or 'nothing (open)':<24} namespace {d.namespace}")
        if lab.turn:
            w(f"  server {', '.join(info.server.addresses)}: {info.server.stun}, {info.server.turn} (REST secret in {info.server.state_file})")
        if lab.checks:
            w(render_checks(lab.checks))
        w(f"run a command on a host:  natkit lab exec {lab.hosts[0] if lab.hosts else 'HOST'} --lab {lab.name} -- ip addr")
        w(f"remove it:                natkit lab down {lab.name}")
        return 0

    output.run(json_out, body)


@lab_app.command("down")
def down_cmd(
    name: Optional[str] = typer.Argument(None, help="lab name (default: the only lab left up by natkit lab up)"),
    all_: bool = typer.Option(False, "--all", help="remove every natkit* namespace and lab whose owner is gone (leftovers of crashed runs too)"),
    force: bool = typer.Option(False, "--force", help="with --all: also remove labs whose owner (a test run) is still running"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Remove a lab: stop its processes (coturn, agents), delete its namespaces.

    Exit codes: 0 removed (or nothing to remove with --all), 2 no such lab / several labs and no name.
    """

    def body() -> int:
        from ..lab import netns

        if all_:
            res = netns.down_all(force=force)
            if json_out:
                output.emit_json({"ok": True, **res})
            else:
                typer.echo(f"removed {len(res['removed'])} namespaces" + (f" of labs {', '.join(res['labs'])}" if res["labs"] else ""))
                for lab in res["kept"]:
                    typer.echo(f"kept lab {lab}: its owner process is still running (--force removes it)")
            return 0
        from ..lab.inventory import default_lab

        lab = name or default_lab()
        removed = netns.down(lab)
        if json_out:
            output.emit_json({"ok": True, "lab": lab, "removed": removed})
        else:
            typer.echo(f"lab {lab} removed ({len(removed)} namespaces)")
        return 0

    output.run(json_out, body)


@lab_app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json")) -> None:
    """List labs and natkit namespaces on this machine."""

    def body() -> int:
        from ..lab.inventory import labs

        entries = labs()
        if json_out:
            output.emit_json({"ok": True, "labs": [{"lab": e.lab, "namespaces": list(e.namespaces), "hosts": list(e.hosts),
                                                    "owner": e.owner_text, "state": e.owner, "owner_pid": e.owner_pid}
                                                   for e in entries]})
        elif not entries:
            typer.echo("no labs")
        else:
            for e in entries:
                typer.echo(f"{e.lab:<12} {len(e.namespaces):>3} namespaces  hosts {', '.join(e.hosts) or '–'}  owner {e.owner_text}")
        return 0

    output.run(json_out, body)


@lab_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_cmd(
    host: str = typer.Argument(..., help="a host, NAT box, 'server' or 'internet' of the lab"),
    command: List[str] = typer.Argument(..., metavar="-- CMD...", help="the command to run inside that namespace"),
    lab: Optional[str] = typer.Option(None, "--lab", help="lab name (default: the only lab that has HOST)"),
) -> None:
    """Run a command inside a lab namespace (replaces this process; its exit code is the command's).

    Example: natkit lab exec sym1 -- natkit probe 203.0.113.10:3478

    No --json: natkit execs CMD in its place, so stdout, stderr and the exit code are CMD's own
    (give CMD its own --json). Errors before the exec (no such host or lab, CMD not found) are
    one line on stderr, exit 2; no namespaces or root: exit 3.
    """

    def body() -> int:
        import os

        from ..errors import UsageError
        from ..lab import netns
        from ..lab.inventory import namespace_for

        argv = netns.netns_argv(namespace_for(host, lab), command)
        try:
            os.execvpe(argv[0], argv, netns.installation_env())
        except OSError as exc:
            raise UsageError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None
        return 0

    output.run(False, body)


@lab_app.command("matrix")
def matrix_cmd(
    deadline: float = options.seconds(10.0, "--deadline", help="seconds per connection attempt", high=600),
    concurrency: int = options.integer(4, "--concurrency", "-j", help="attempts in flight at once", low=1, high=64),
    behaviours: Optional[str] = typer.Option(None, "--behaviours", help="comma-separated subset (default: open,full_cone,restricted,port_restricted,symmetric)"),
    mode: Optional[str] = typer.Option(None, "--mode", help="only 'stun' or only 'stun+turn' (default: both)"),
    agent: str = typer.Option("aiortc", "--agent", help="ICE agent: aiortc (natkit's adjusted aiortc), stock (aiortc with aioice as released), chromium (Debian's Chromium in every host), mixed (Chromium offers, aiortc answers), firefox (Debian's Firefox ESR over WebDriver BiDi)"),
    compare: Optional[str] = typer.Option(None, "--compare", help="run several agents on one lab and compare cell by cell, e.g. stock,aiortc,chromium,firefox"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Connect peers behind every pair of NAT behaviours, STUN only and STUN+TURN,
    and compare with the expected matrix (docs/lab.md: the one libwebrtc's transport tests assert).

    Exit codes: 0 every cell as expected, 1 a mismatch, 2 bad option, 3 no root/namespaces/coturn/Chromium or a NAT that does not behave as declared.
    """

    def body() -> int:
        from ..errors import UsageError
        from ..lab.matrix import AGENTS, MATRIX_BEHAVIOURS, MODES, render_checks, render_comparison, render_text, run_comparison, run_matrix

        bs = [b for b in behaviours.split(",") if b.strip()] if behaviours else list(MATRIX_BEHAVIOURS)
        modes = (mode,) if mode else MODES
        agents = [a.strip() for a in compare.split(",") if a.strip()] if compare else [agent]
        for a in agents:
            if a not in AGENTS:
                raise UsageError(f"unknown agent {a!r}", hint="one of " + ", ".join(AGENTS))

        def progress(cell) -> None:
            output.progress(f"{cell.a} x {cell.b} ({cell.mode}): {cell.outcome}{'' if cell.match else ' (expected ' + cell.expected + ')'}")

        output.progress(f"building a lab with two hosts per behaviour ({', '.join(bs)}); agents: {', '.join(agents)}")
        if compare:
            cmp = run_comparison(agents=agents, behaviours=bs, modes=modes, deadline=deadline, concurrency=concurrency, progress=progress)
            if json_out:
                output.emit_json(cmp)
            else:
                typer.echo(render_checks(cmp.reports[agents[0]].checks))
                typer.echo("")
                typer.echo(render_comparison(cmp))
            return 0 if cmp.ok else 1
        report = run_matrix(agent=agent, behaviours=bs, modes=modes, deadline=deadline, concurrency=concurrency, progress=progress)
        if json_out:
            output.emit_json(report)
        else:
            typer.echo(render_checks(report.checks))
            typer.echo("")
            typer.echo(render_text(report))
        return report.exit_code

    output.run(json_out, body)
