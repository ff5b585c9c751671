"""Rendered deployments: committed examples are fresh, Kubernetes manifests validate
offline against the Kubernetes OpenAPI schemas, and the compose / systemd /
DaemonSet coturn command lines start for real (native turnserver on loopback,
free port) and answer STUN and authenticated Allocates.

Only loopback traffic here; the audit checks used are the ones that never ask
the server to relay (open-relay, credentials, quota, software, amplification).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

try:  # parsing the rendered YAML needs PyYAML (rendering does not)
    import yaml
except ImportError:  # pragma: no cover - depends on the test environment
    yaml = None

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML is not installed (pip install pyyaml kubernetes-validate)")

from natkit.coturn.profiles import build
from natkit.render import Deployment, examples, render, write

REPO = Path(__file__).resolve().parent.parent
SAFE_CHECKS = ["open-relay", "credentials", "quota", "software", "amplification"]


def test_committed_examples_equal_a_fresh_render():
    fresh = examples()
    stale = [p for p, text in fresh.items() if not (REPO / p).exists() or (REPO / p).read_text() != text]
    assert stale == [], f"re-render the examples: python -c 'from natkit.render import examples, write' ... ({stale})"


def test_no_secret_in_rendered_files():
    d = Deployment(build("recommended", secrets=("s3cr3t-value", "older-value"), listening_ips=("198.51.100.4",)).config, secret_count=2)
    for target in ("compose", "kubernetes", "systemd"):
        for name, text in render(target, d).items():
            assert "s3cr3t-value" not in text and "older-value" not in text, (target, name)
            assert "static-auth-secret=" not in text or "--static-auth-secret=" in text


@needs_yaml
def test_every_secret_is_required():
    d = Deployment(build("recommended", secrets=("a", "b")).config, secret_count=2)
    compose = yaml.safe_load(render("compose", d)["docker-compose.yml"])
    cmd = compose["services"]["coturn"]["command"]
    assert "--static-auth-secret=${TURN_SECRET_1:?set TURN_SECRET_1 in turn.env}" in cmd
    unit = render("systemd", d)["natkit-coturn.service"]
    assert unit.count("ExecStartPre=/bin/sh -c 'test -n \"$$TURN_SECRET_") == 2
    ds = yaml.safe_load(render("kubernetes", d)["daemonset.yaml"])
    env = ds["spec"]["template"]["spec"]["containers"][0]["env"]
    assert all("optional" not in e.get("valueFrom", {}).get("secretKeyRef", {}) for e in env)


@needs_yaml
def test_compose_container_is_hardened():
    compose = yaml.safe_load(examples()["compose/docker-compose.yml"])
    svc = compose["services"]["coturn"]
    assert svc["network_mode"] == "host" and svc["read_only"] is True and svc["user"] == "nobody"
    assert svc["cap_drop"] == ["ALL"] and svc["cap_add"] == ["NET_BIND_SERVICE"]
    assert svc["ulimits"]["nofile"]["soft"] >= 65536 and "no-new-privileges:true" in svc["security_opt"]
    assert svc["healthcheck"]["test"][:2] == ["CMD", "turnutils_stunclient"]


def _validator():
    try:
        import kubernetes_validate
    except ImportError:
        # not in pyproject's test extra yet; NATKIT_REQUIRE_K8S_VALIDATE=1 forbids skipping
        if os.environ.get("NATKIT_REQUIRE_K8S_VALIDATE") == "1":
            pytest.fail("kubernetes-validate is not installed (pip install kubernetes-validate)")
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate


K8S_VERSION = "1.30.0"


@needs_yaml
@pytest.mark.parametrize("service_monitor", [False, True])
def test_kubernetes_manifests_validate_against_openapi_schemas(service_monitor):
    kv = _validator()
    cfg = build("recommended", secrets=("s",), tls_port=5349, cert="/c", pkey="/k", prometheus=True, prometheus_address="0.0.0.0").config
    files = render("kubernetes", Deployment(cfg, service_monitor=service_monitor))
    kinds = []
    for name, text in files.items():
        for doc in yaml.safe_load_all(text):
            kinds.append(doc["kind"])
            if doc["apiVersion"].startswith("monitoring.coreos.com") or doc["kind"] == "Kustomization":
                # CRD / kustomize file: not in the Kubernetes OpenAPI; check its shape
                assert doc["metadata"]["name"] if "metadata" in doc else doc["resources"]
                continue
            kv.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError
    expected = {"Namespace", "ConfigMap", "Secret", "DaemonSet", "PodDisruptionBudget", "Kustomization"}
    assert expected <= set(kinds)
    assert ("ServiceMonitor" in kinds) == service_monitor
    ds = next(yaml.safe_load(t) for n, t in files.items() if n == "daemonset.yaml")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["hostNetwork"] is True and c["readinessProbe"] and c["livenessProbe"]
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    kustom = yaml.safe_load(files["kustomization.yaml"])
    assert set(kustom["resources"]) == set(files) - {"kustomization.yaml"}


@needs_yaml
def test_kubernetes_validator_catches_a_broken_manifest():
    kv = _validator()
    ds = yaml.safe_load(examples()["deploy/kubernetes/daemonset.yaml"])
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(Exception, match="hostNetwrk"):
        kv.validate(ds, K8S_VERSION, strict=True)


# ---------------------------------------------------------------------------
# the rendered command lines, started for real


def _start(argv: list[str], workdir: Path) -> subprocess.Popen:
    log = open(workdir / "turnserver.log", "wb")
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()


def _wait_and_audit(proc: subprocess.Popen, host: str, port: int, secret: str, workdir: Path, tcp_port: int | None = None):
    from natkit.audit import audit
    from natkit.probe import probe

    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, (workdir / "turnserver.log").read_text()[-3000:]
        if probe([f"{host}:{port}"], timeout=0.3).ok:
            break
        assert time.monotonic() < deadline, (workdir / "turnserver.log").read_text()[-3000:]
        time.sleep(0.05)
    report = audit([f"turn:{host}:{port}"], secret=secret, checks=SAFE_CHECKS, flood_max=30)
    findings = {f.id: f for f in report.servers[0].findings}
    return report, findings


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _deployment(port: int, listen: str = "127.0.0.1") -> Deployment:
    cfg = build("recommended", secrets=("unused",), listening_ips=(listen,), port=port, min_port=40000, max_port=40999).config
    return Deployment(cfg)


def _localise(conf: str, workdir: Path) -> str:
    """Point the runtime paths of a rendered turnserver.conf into ``workdir``."""
    conf = re.sub(r"^pidfile=.*$", f"pidfile={workdir}/turnserver.pid", conf, flags=re.M)
    return re.sub(r"^userdb=.*$", f"userdb={workdir}/turndb", conf, flags=re.M)


def _assert_hardened_run(report, findings):
    assert report.servers[0].error is None
    assert all(f.status == "pass" for f in findings.values()), {k: (f.status, f.evidence) for k, f in findings.items()}
    assert findings["quota"].data["stopped_by"] == 486


@pytest.mark.integration
def test_systemd_unit_command_line_runs(tmp_path):
    from natkit.coturn.native import find_binary
    from natkit.coturn.server import free_port
    from natkit.credentials import new_secret
    from natkit.pytest_plugin import require_coturn

    require_coturn()
    port = free_port()
    files = render("systemd", dataclasses.replace(_deployment(port), turnserver=find_binary()))
    write(files, tmp_path)
    unit = files["natkit-coturn.service"]
    exec_start = next(l.split("=", 1)[1] for l in unit.splitlines() if l.startswith("ExecStart="))
    secret = new_secret()
    # what systemd does: ${VAR} from EnvironmentFile=, one word each
    conf_path = tmp_path / "turnserver.conf"
    conf_path.write_text(_localise(files["turnserver.conf"], tmp_path))
    argv = [w.replace("${TURN_SECRET_0}", secret).replace("/etc/natkit/coturn/turnserver.conf", str(conf_path)) for w in shlex.split(exec_start)]
    assert argv[0] == find_binary() and "-c" in argv
    # the ExecStartPre guard refuses an empty secret
    pre = next(l.split("=", 1)[1] for l in unit.splitlines() if l.startswith("ExecStartPre="))
    guard = shlex.split(pre.replace("$$", "$"))
    assert subprocess.run(guard, env={"TURN_SECRET_0": ""}, capture_output=True).returncode != 0
    assert subprocess.run(guard, env={"TURN_SECRET_0": secret}, capture_output=True).returncode == 0
    proc = _start(argv, tmp_path)
    try:
        _assert_hardened_run(*_wait_and_audit(proc, "127.0.0.1", port, secret, tmp_path))
    finally:
        _stop(proc)


@pytest.mark.integration
@needs_yaml
def test_compose_command_line_runs(tmp_path):
    from natkit.coturn.native import find_binary
    from natkit.coturn.server import free_port
    from natkit.credentials import new_secret
    from natkit.pytest_plugin import require_coturn

    require_coturn()
    port = free_port()
    files = render("compose", _deployment(port))
    compose = yaml.safe_load(files["docker-compose.yml"])
    svc = compose["services"]["coturn"]
    secret = new_secret()
    conf_path = tmp_path / "turnserver.conf"
    conf_path.write_text(_localise(files["turnserver.conf"], tmp_path))
    # the image's entrypoint is turnserver; compose interpolates ${VAR:?msg} from turn.env
    argv = [find_binary()] + [re.sub(r"\$\{TURN_SECRET_0(:\?[^}]*)?\}", secret, a).replace("/etc/coturn/turnserver.conf", str(conf_path))
                              for a in svc["command"]]
    assert not any("${" in a for a in argv)
    proc = _start(argv, tmp_path)
    try:
        _assert_hardened_run(*_wait_and_audit(proc, "127.0.0.1", port, secret, tmp_path))
        # the container health check is a real STUN Binding
        hc = svc["healthcheck"]["test"][1:]
        assert subprocess.run(hc, capture_output=True, timeout=10).returncode == 0
    finally:
        _stop(proc)


@pytest.mark.integration
@needs_yaml
def test_daemonset_args_run(tmp_path):
    from natkit.coturn.native import find_binary
    from natkit.coturn.server import free_port
    from natkit.credentials import new_secret
    from natkit.pytest_plugin import require_coturn

    require_coturn()
    port = free_port("127.0.0.2")
    files = render("kubernetes", _deployment(port, listen="0.0.0.0"))
    conf = yaml.safe_load(files["configmap.yaml"])["data"]["turnserver.conf"]
    assert "listening-ip=" not in conf and "relay-ip=" not in conf
    conf_path = tmp_path / "turnserver.conf"
    conf_path.write_text(_localise(conf, tmp_path))
    c = yaml.safe_load(files["daemonset.yaml"])["spec"]["template"]["spec"]["containers"][0]
    secret = new_secret()
    env = {"NODE_IP": "127.0.0.2", "TURN_SECRET_0": secret}  # what the kubelet expands $(VAR) with
    argv = [find_binary()] + [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a).replace("/etc/coturn/turnserver.conf", str(conf_path))
                              for a in c["args"]]
    proc = _start(argv, tmp_path)
    try:
        _assert_hardened_run(*_wait_and_audit(proc, "127.0.0.2", port, secret, tmp_path))
        probe_cmd = c["readinessProbe"]["exec"]["command"]
        assert probe_cmd[-1] == "127.0.0.1"
        assert subprocess.run(probe_cmd[:-2] + [str(port), "127.0.0.1"], capture_output=True, timeout=10).returncode == 0
    finally:
        _stop(proc)
