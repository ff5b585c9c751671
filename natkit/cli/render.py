"""``natkit turn render --target compose|kubernetes|systemd``: a deployment from the hardened profile."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options, output


def render_cmd(
    target: str = typer.Option(..., "--target", "-t", help="compose, kubernetes or systemd"),
    output_dir: Optional[str] = options.output_dir(None, "--output", "-o", help="write the files into DIR (default: print them)"),
    profile: str = typer.Option("recommended", "--profile", help="recommended or strict"),
    listen: List[str] = typer.Option(["0.0.0.0"], "--listen", "-l", help="listening IP (compose/systemd; Kubernetes uses each node's address)"),
    port: int = typer.Option(3478, "--port", "-p", help="listening port (UDP and TCP)"),
    tls_port: Optional[int] = typer.Option(None, "--tls-port", help="turns: port (certificate and key mounted from the target's TLS path)"),
    realm: str = typer.Option("natkit", "--realm"),
    external_ip: Optional[str] = typer.Option(None, "--external-ip", help="public address PUBLIC or PUBLIC/PRIVATE (also the one allowed-peer-ip exception)"),
    min_port: int = typer.Option(49152, "--min-port"),
    max_port: int = typer.Option(65535, "--max-port"),
    secrets: int = typer.Option(1, "--secrets", help="number of REST secrets passed from the environment (2 during a rotation)"),
    tcp_relay: bool = typer.Option(False, "--tcp-relay", help="allow RFC 6062 TCP relay (recommended profile only)"),
    prometheus: bool = typer.Option(False, "--prometheus", help="enable coturn's Prometheus exporter"),
    prometheus_address: str = typer.Option("127.0.0.1", "--prometheus-address", help="bind address of the exporter"),
    service_monitor: bool = typer.Option(False, "--service-monitor", help="Kubernetes: add a ServiceMonitor (needs --prometheus)"),
    image: Optional[str] = typer.Option(None, "--image", help="container image (default: the official coturn image, pinned)"),
    name: str = typer.Option("natkit-coturn", "--name", help="name prefix of the rendered objects"),
    namespace: str = typer.Option("natkit", "--namespace", help="Kubernetes namespace"),
    fd_limit: int = options.integer(65536, "--fd-limit", help="open-file limit of coturn (one per relayed socket); at most the container engine's own hard limit",
                                    low=1024, high=1 << 20),
    monitor: bool = typer.Option(False, "--monitor", help="add natkit monitor (compose service, Kubernetes Deployment/Service/ServiceMonitor/PrometheusRule, systemd unit)"),
    monitor_target: List[str] = typer.Option([], "--monitor-target", help="TURN URI the monitor probes (repeatable; default: the node itself, Kubernetes: the external-ip)"),
    monitor_image: str = typer.Option("natkit/monitor:0.1.0", "--monitor-image", help="container image with natkit (compose, Kubernetes)"),
    monitor_interval: float = options.seconds(15.0, "--monitor-interval", help="seconds between the monitor's probes", low=1, high=3600),
    json_out: bool = options.json_flag("print {ok, target, files: {name: text}} (with -o: {ok, target, written}, the paths)"),
) -> None:
    """Render a complete coturn deployment from natkit's hardened profile.

    Secrets are never written: each comes from the environment (turn.env,
    the Kubernetes Secret, systemd's EnvironmentFile) and reaches coturn
    through a 0600 config written at start, never on a command line.
    """

    def body() -> int:
        from ..coturn.profiles import build
        from ..errors import UsageError
        from ..render import DEFAULT_IMAGE, Deployment, render, write
        from ..uri import parse_turn_uri

        if secrets < 1 or secrets > 8:
            raise UsageError(f"--secrets must be 1..8, got {secrets}")
        # placeholders: every target renders the paths where it mounts the certificate and key
        cert, pkey = ("/unused/cert.pem", "/unused/key.pem") if tls_port else (None, None)
        prof = build(profile, secrets=tuple(f"placeholder-{i}" for i in range(secrets)), listening_ips=tuple(listen), port=port,
                     tls_port=tls_port, realm=realm, external_ip=external_ip, min_port=min_port, max_port=max_port,
                     tcp_relay=tcp_relay, prometheus=prometheus, prometheus_address=prometheus_address, cert=cert, pkey=pkey)
        dep = Deployment(config=prof.config, name=name, namespace=namespace, image=image or DEFAULT_IMAGE,
                         secret_count=secrets, service_monitor=service_monitor, fd_limit=fd_limit, monitor=monitor,
                         monitor_targets=tuple(str(parse_turn_uri(u)) for u in monitor_target), monitor_image=monitor_image,
                         monitor_interval=monitor_interval)
        files = render(target, dep)
        for w in prof.warnings:
            if "self-signed" not in w:
                output.err(f"natkit: warning: {w}")
        if output_dir:
            written = [str(p) for p in write(files, output_dir)]
            if json_out:
                output.emit_json({"ok": True, "target": target, "written": written})
            else:
                for p in written:
                    print(p)
        elif json_out:
            output.emit_json({"ok": True, "target": target, "files": dict(files)})
        else:
            for fname, text in files.items():
                print(f"# ---- {fname}")
                print(text, end="")
        return 0

    output.run(json_out, body)

