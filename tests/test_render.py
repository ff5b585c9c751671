"""Rendered deployments: committed examples are fresh, Kubernetes manifests validate
offline against the Kubernetes OpenAPI schemas, and the compose / systemd /
DaemonSet coturn command lines start for real (native turnserver on loopback,
free port) and answer STUN and authenticated Allocates.

Only loopback traffic here; the audit checks used are the ones that never ask
the server to relay (open-relay, credentials, quota, software, amplification).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:  # parsing the rendered YAML needs PyYAML (rendering does not)
    import yaml
except ImportError:  # pragma: no cover - depends on the test environment
    yaml = None

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML is not installed (pip install pyyaml kubernetes-validate)")

from natkit.coturn.profiles import build  # noqa: E402 - after the optional yaml import
from natkit.render import Deployment, examples, render, write  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAFE_CHECKS = ["open-relay", "credentials", "quota", "software", "amplification"]


def test_committed_examples_equal_a_fresh_render():
    fresh = examples()
    stale = [p for p, text in fresh.items() if not (REPO / p).exists() or (REPO / p).read_text() != text]
    assert stale == [], f"re-render the examples: python -c 'from natkit.render import examples, write' ... ({stale})"


def test_no_secret_in_rendered_files_nor_on_any_command_line():
    d = Deployment(build("recommended", secrets=("s3cr3t-value", "older-value"), listening_ips=("198.51.100.4",)).config, secret_count=2)
    for target in ("compose", "kubernetes", "systemd"):
        for name, text in render(target, d).items():
            assert "s3cr3t-value" not in text and "older-value" not in text, (target, name)
            # secrets reach coturn through a 0600 config written at start, never as an option
            assert "--static-auth-secret" not in text, (target, name)
            assert "static-auth-secret=" not in text or "static-auth-secret=%" in text, (target, name)


@needs_yaml
@pytest.mark.parametrize("target", ["compose", "kubernetes", "systemd"])
def test_every_secret_is_required(target, tmp_path):
    """An empty or missing TURN_SECRET_<i> stops the start script (exit 78) before
    turnserver runs: an empty static-auth-secret would be a known secret."""
    d = Deployment(build("recommended", secrets=("a", "b")).config, secret_count=2)
    files = render(target, d)
    for env in ({"TURN_SECRET_0": "new"}, {"TURN_SECRET_0": "new", "TURN_SECRET_1": ""}, {"TURN_SECRET_1": "old"}):
        argv = _start_argv(target, files, tmp_path, env, turnserver="/nonexistent/turnserver")
        r = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=10)
        missing = "TURN_SECRET_1" if "TURN_SECRET_0" in env else "TURN_SECRET_0"
        assert r.returncode == 78 and f"{missing} is empty or not set" in r.stderr, (env, r)
        assert not (tmp_path / "runtime.conf").exists()
    if target == "kubernetes":
        ds = yaml.safe_load(files["daemonset.yaml"])
        env = ds["spec"]["template"]["spec"]["containers"][0]["env"]
        assert all("optional" not in e.get("valueFrom", {}).get("secretKeyRef", {}) for e in env)
    if target == "systemd":
        assert "RestartPreventExitStatus=78" in files["natkit-coturn.service"]  # no restart loop on a missing secret


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
    for text in files.values():
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
#
# Each target's start command is expanded the way its runner does it (compose
# interpolation, the kubelet's $(VAR) expansion, systemd's specifiers, quoting
# and $VAR substitution), its container paths pointed into tmp_path, and run
# natively. The running turnserver must hold no secret in its argv or
# environment (any local user reads /proc/PID/cmdline; ps prints it).


def _compose_interpolate(word: str, env: dict) -> str:
    """docker compose's interpolation of one string: $$ -> $, ${VAR[:?msg]} and $VAR from the environment."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(3)
        value = env.get(name, "")
        if m.group(2) and not value:
            raise AssertionError(f"compose would refuse to start: {m.group(0)}")
        return value
    return re.sub(r"\$\$|\$\{(\w+)(:\?[^}]*)?\}|\$(\w+)", sub, word)


def _kubelet_expand(word: str, env: dict) -> str:
    """The kubelet's expansion of command/args: $(VAR) from the container env, $$ -> $, else literal."""
    out, i = [], 0
    while i < len(word):
        if word[i] == "$" and i + 1 < len(word):
            nxt = word[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = word.find(")", i + 2)
                if end != -1:
                    name = word[i + 2:end]
                    out.append(env.get(name, f"$({name})"))
                    i = end + 1
                    continue
        out.append(word[i])
        i += 1
    return "".join(out)


def _systemd_exec_argv(line: str, env: dict) -> list[str]:
    """systemd's reading of an Exec line: specifiers (only %% here), quoting with C escapes, then $$, ${VAR}, $VAR."""
    assert re.fullmatch(r"(?:[^%]|%%)*", line), f"unexpected systemd specifier in {line!r}"
    line = line.replace("%%", "%")
    words, cur, quote, i, started = [], [], None, 0, False
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", " ": " "}
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            assert line[i + 1] in escapes, f"unknown escape in {line!r}"
            cur.append(escapes[line[i + 1]])
            i += 2
            started = True
            continue
        if quote:
            if ch == quote:
                quote = None
            else:
                cur.append(ch)
        elif ch in "'\"":
            quote, started = ch, True
        elif ch.isspace():
            if started:
                words.append("".join(cur))
                cur, started = [], False
        else:
            cur.append(ch)
            started = True
        i += 1
    assert quote is None, f"unbalanced quote in {line!r}"
    if started:
        words.append("".join(cur))

    def sub(m: re.Match) -> str:
        return "$" if m.group(0) == "$$" else env.get(m.group(1) or m.group(2), "")
    return [re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)", sub, w) for w in words]


def _start_argv(target: str, files: dict, workdir: Path, env: dict, *, turnserver: str, node_ip: str = "127.0.0.1") -> list[str]:
    """The command the target's runner would exec, with its paths pointed into ``workdir``:
    the config template at workdir/turnserver.conf, the runtime config at workdir/runtime.conf."""
    template, runtime = str(workdir / "turnserver.conf"), str(workdir / "runtime.conf")
    if target == "compose":
        svc = yaml.safe_load(files["docker-compose.yml"])["services"]["coturn"]
        argv = [_compose_interpolate(w, env) for w in [*svc["entrypoint"], *svc.get("command", [])]]
        paths = {"/etc/coturn/turnserver.conf": template, "/tmp/turnserver.conf": runtime, "exec turnserver ": f"exec {turnserver} "}
    elif target == "kubernetes":
        c = yaml.safe_load(files["daemonset.yaml"])["spec"]["template"]["spec"]["containers"][0]
        argv = [_kubelet_expand(w, dict(env, NODE_IP=node_ip)) for w in [*c["command"], *c["args"]]]
        paths = {"/etc/coturn/turnserver.conf": template, "/tmp/turnserver.conf": runtime, "exec turnserver ": f"exec {turnserver} "}
    else:
        unit = next(t for n, t in files.items() if n.endswith(".service"))
        exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
        argv = _systemd_exec_argv(exec_start, env)
        paths = {"/etc/natkit/coturn/turnserver.conf": template, "/run/natkit-coturn/turnserver.conf": runtime,
                 "exec /usr/bin/turnserver ": f"exec {turnserver} "}
    for secret in (v for k, v in env.items() if k.startswith("TURN_SECRET_") and v):
        assert not any(secret in w for w in argv), f"{target}: a secret reached the command line"
    for old, new in paths.items():
        argv = [w.replace(old, new) for w in argv]
    return argv


def _start(argv: list[str], workdir: Path, env: dict | None = None) -> subprocess.Popen:
    with open(workdir / "turnserver.log", "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=None if env is None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})


def _wait_and_audit(proc: subprocess.Popen, host: str, port: int, secret: str, workdir: Path):
    from natkit.audit import audit
    from natkit.pytest_plugin import wait_for_stun

    wait_for_stun(host, port, timeout=15, process=proc, log=workdir / "turnserver.log")
    report = audit([f"turn:{host}:{port}"], secret=secret, checks=SAFE_CHECKS, flood_max=30)
    findings = {f.id: f for f in report.servers[0].findings}
    return report, findings


def _assert_secret_not_exposed(proc: subprocess.Popen, binary: str, secrets: list[str], runtime: Path) -> None:
    """The running turnserver (the start script exec'd it: same PID) has no secret in
    /proc/PID/cmdline or /proc/PID/environ, nor has any other process's command line;
    the config it reads is 0600 and holds every secret, newest first."""
    exe = os.path.realpath(f"/proc/{proc.pid}/exe")
    assert exe == os.path.realpath(binary), f"pid {proc.pid} runs {exe}, not turnserver"
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
    assert b"-c\0" + str(runtime).encode() in cmdline, cmdline
    for secret in secrets:
        assert secret.encode() not in cmdline, "secret in turnserver's argv"
        assert secret.encode() not in environ, "secret in turnserver's environment"
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert not any(s.encode() in argv for s in secrets), f"secret in the command line of pid {pid}"
    assert runtime.stat().st_mode & 0o777 == 0o600
    lines = runtime.read_text().splitlines()
    assert [line for line in lines if line.startswith("static-auth-secret=")] == [f"static-auth-secret={s}" for s in secrets]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _deployment(port: int, listen: str = "127.0.0.1", **kw) -> Deployment:
    cfg = build("recommended", secrets=("unused",), listening_ips=(listen,), port=port, min_port=40000, max_port=40999).config
    return Deployment(cfg, **kw)


def _localise(conf: str, workdir: Path) -> str:
    """Point the runtime paths of a rendered turnserver.conf into ``workdir``."""
    conf = re.sub(r"^pidfile=.*$", f"pidfile={workdir}/turnserver.pid", conf, flags=re.MULTILINE)
    return re.sub(r"^userdb=.*$", f"userdb={workdir}/turndb", conf, flags=re.MULTILINE)


def _assert_hardened_run(report, findings):
    assert report.servers[0].error is None
    assert all(f.status == "pass" for f in findings.values()), {k: (f.status, f.evidence) for k, f in findings.items()}
    assert findings["quota"].data["stopped_by"] == 486


def _run_target(target: str, tmp_path: Path, *, listen: str = "127.0.0.1", host: str = "127.0.0.1", while_running=None):
    """Render ``target`` with two secrets (a rotation), start its command line natively and prove it;
    ``while_running(files, port)`` runs against the live server."""
    from natkit.coturn.native import find_binary
    from natkit.coturn.server import free_port
    from natkit.credentials import new_secret
    from natkit.pytest_plugin import require_coturn

    require_coturn()
    binary = find_binary()
    port = free_port(host)
    files = render(target, _deployment(port, listen=listen, secret_count=2))
    conf = yaml.safe_load(files["configmap.yaml"])["data"]["turnserver.conf"] if target == "kubernetes" else files["turnserver.conf"]
    (tmp_path / "turnserver.conf").write_text(_localise(conf, tmp_path))
    secrets = [new_secret(), new_secret()]
    env = {"TURN_SECRET_0": secrets[0], "TURN_SECRET_1": secrets[1]}
    argv = _start_argv(target, files, tmp_path, env, turnserver=binary, node_ip=host)
    proc = _start(argv, tmp_path, env)
    try:
        _assert_hardened_run(*_wait_and_audit(proc, host, port, secrets[1], tmp_path))  # the older secret is accepted too
        _assert_secret_not_exposed(proc, binary, secrets, tmp_path / "runtime.conf")
        if while_running is not None:
            while_running(files, port)
        return files, port
    finally:
        _stop(proc)


@pytest.mark.integration
@needs_yaml
def test_systemd_unit_command_line_runs(tmp_path):
    files, _ = _run_target("systemd", tmp_path)
    # systemd's own parser accepts the unit (quoting, specifiers, settings); Debian ships it with systemd
    if shutil.which("systemd-analyze"):
        unit_dir = tmp_path / "unit"
        unit_dir.mkdir()
        (unit_dir / "natkit-coturn.service").write_text(files["natkit-coturn.service"])
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_dir / "natkit-coturn.service")],
                           check=False, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr


@pytest.mark.integration
@needs_yaml
def test_compose_command_line_runs(tmp_path):
    def healthcheck(files, port):  # the container health check is a real STUN Binding
        hc = yaml.safe_load(files["docker-compose.yml"])["services"]["coturn"]["healthcheck"]["test"]
        assert hc[:2] == ["CMD", "turnutils_stunclient"] and hc[-3:] == ["-p", str(port), "127.0.0.1"]
        assert subprocess.run(hc[1:], check=False, capture_output=True, timeout=10).returncode == 0

    _run_target("compose", tmp_path, while_running=healthcheck)


@pytest.mark.integration
@needs_yaml
def test_daemonset_command_runs(tmp_path):
    def probes(files, port):  # readiness and liveness: a STUN Binding on the node's loopback listener
        c = yaml.safe_load(files["daemonset.yaml"])["spec"]["template"]["spec"]["containers"][0]
        for probe in ("readinessProbe", "livenessProbe"):
            cmd = c[probe]["exec"]["command"]
            assert cmd == ["turnutils_stunclient", "-p", str(port), "127.0.0.1"]
            assert subprocess.run(cmd, check=False, capture_output=True, timeout=10).returncode == 0

    files, _ = _run_target("kubernetes", tmp_path, listen="0.0.0.0", host="127.0.0.2", while_running=probes)
    conf = yaml.safe_load(files["configmap.yaml"])["data"]["turnserver.conf"]
    assert "listening-ip=" not in conf and "relay-ip=" not in conf


# ---------------------------------------------------------------------------
# the rendered compose file, run for real by a compose implementation against the engine


def _compose_cli() -> list[str]:
    """``docker compose`` (the plugin) when the engine's CLI has it, else Compose v1's ``docker-compose``."""
    from natkit.pytest_plugin import _require

    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], check=False, capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    _require("NATKIT_REQUIRE_DOCKER", found is not None, "no compose implementation (apt-get install docker-compose)")
    return [found]


def _compose_leftovers(engine, project_dir: Path) -> list[str]:
    """Containers, networks and volumes compose made for the project in ``project_dir``."""
    label = f"com.docker.compose.project.working_dir={project_dir}"
    out = [f"container {c.name}" for c in engine.containers.list(all=True, filters={"label": label})]
    out += [f"network {n.name}" for n in engine.networks.list(filters={"label": label})]
    out += [f"volume {v.name}" for v in engine.volumes.list(filters={"label": label})]
    project = next((c.labels.get("com.docker.compose.project") for c in engine.containers.list(all=True, filters={"label": label})), None)
    if project:
        out += [f"network {n.name}" for n in engine.networks.list(names=[f"{project}_default"])]
    return out


@pytest.mark.integration
@needs_yaml
def test_compose_file_runs_for_real_with_the_documented_steps(tmp_path):
    """The documented user steps, run as written in the rendered directory by a real compose
    against the real engine (the image built offline from this host's turnserver: no registry);
    the running server answers STUN, allocates with a credential minted from turn.env's secret,
    passes its own health check and has no secret on its command line; `down` leaves nothing."""
    import uuid

    from natkit.coturn import docker as backend
    from natkit.coturn.image import build_local_image
    from natkit.coturn.server import free_port
    from natkit.credentials import mint, new_secret
    from natkit.pytest_plugin import require_coturn, require_docker
    from natkit.render import compose_steps, example_deployment

    require_docker()
    require_coturn()
    compose = _compose_cli()
    engine = backend.client()
    tag = f"natkit/coturn:compose-{uuid.uuid4().hex[:8]}"
    port = free_port()
    project = tmp_path / f"natkit-compose-{port}"
    steps: tuple[str, ...] = ()
    try:
        build_local_image(tag)
        cfg = build("recommended", secrets=("unused",), port=port, min_port=42000, max_port=42099).config
        d = Deployment(cfg, name=f"natkit-compose-{port}", image=tag, fd_limit=backend.nofile_limit())
        files = render("compose", d)
        write(files, project)
        steps = compose_steps(d)
        # the steps are the ones the compose file's header and docs/deploy.md show
        header = [line[4:] for line in files["docker-compose.yml"].splitlines() if line.startswith("#   ")]
        assert tuple(header) == steps
        docs = (REPO / "docs" / "deploy.md").read_text()
        assert all(step in docs for step in compose_steps(example_deployment())), "docs/deploy.md shows other steps"
        secret = new_secret()
        for step in steps:
            if step.startswith("edit turn.env"):  # what the user does in an editor
                env_file = project / "turn.env"
                assert env_file.stat().st_mode & 0o777 == 0o600, "turn.env must start out 0600"
                env_file.write_text(re.sub(r"^TURN_SECRET_0=$", f"TURN_SECRET_0={secret}", env_file.read_text(), flags=re.MULTILINE))
                continue
            if step.startswith("natkit probe"):
                _check_compose_server(engine, compose, project, step, port, secret, mint)
                continue
            argv = shlex.split(step)
            if argv[:2] == ["docker", "compose"]:
                argv = [*compose, *argv[2:]]
            r = subprocess.run(argv, cwd=project, check=False, capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, f"{step}: {r.stdout[-2000:]} {r.stderr[-2000:]}"
        assert _compose_leftovers(engine, project) == []
        assert not any(b"-c\0/tmp/turnserver.conf" in Path(f"/proc/{p}/cmdline").read_bytes() and str(port) in _conf_of(p)
                       for p in _pids("turnserver"))
    finally:
        if project.exists():
            subprocess.run([*compose, "down", "--timeout", "2"], cwd=project, check=False, capture_output=True, timeout=120)
        for c in engine.containers.list(all=True, filters={"label": f"com.docker.compose.project.working_dir={project}"}):
            c.remove(force=True)
        if any(tag in (i.tags or []) for i in engine.images.list(name=tag.split(":")[0])):
            engine.images.remove(tag)
        engine.close()


def _pids(comm: str) -> list[int]:
    out = []
    for p in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if Path(f"/proc/{p}/comm").read_text().strip() == comm:
                out.append(int(p))
        except OSError:
            continue
    return out


def _conf_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/root/tmp/turnserver.conf").read_text()
    except OSError:
        return ""


def _check_compose_server(engine, compose: list[str], project: Path, step: str, port: int, secret: str, mint) -> None:
    """The probe step (natkit's own CLI, as written), then an allocation, the health check and the secret's whereabouts."""
    import asyncio
    import sys

    from natkit.model import TransportAddress
    from natkit.relay import preflight_allocate
    from natkit.uri import parse_turn_uri

    deadline = time.monotonic() + 30
    while True:  # up -d returns once the container started; coturn needs a moment to listen
        r = subprocess.run([sys.executable, "-m", "natkit.cli.app", *shlex.split(step)[1:], "--timeout", "0.5"],
                           check=False, capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            break
        logs = subprocess.run([*compose, "logs", "--no-color"], cwd=project, check=False, capture_output=True, text=True, timeout=60)
        assert time.monotonic() < deadline, f"{step}: exit {r.returncode} {r.stderr} / {logs.stdout[-3000:]}"
        time.sleep(0.2)
    assert f"127.0.0.1:{port}" in r.stdout
    cred = mint(secret, "compose", 600)
    _, relayed, mapped = asyncio.run(preflight_allocate(parse_turn_uri(f"turn:127.0.0.1:{port}"), TransportAddress("127.0.0.1", port),
                                                         cred.username, cred.password, timeout=3))
    assert relayed.host == "127.0.0.1" and 42000 <= relayed.port <= 42099 and mapped.host == "127.0.0.1"
    # the container's own health check command, run in the container
    svc = yaml.safe_load((project / "docker-compose.yml").read_text())["services"]["coturn"]
    hc = subprocess.run([*compose, "exec", "-T", "coturn", *svc["healthcheck"]["test"][1:]], cwd=project, check=False,
                        capture_output=True, text=True, timeout=60)
    assert hc.returncode == 0 and "UDP reflexive addr: 127.0.0.1:" in hc.stdout, hc
    # the containerised turnserver: no secret in argv or environment; its config is 0600 and has it
    (container,) = engine.containers.list(filters={"label": f"com.docker.compose.project.working_dir={project}"})
    pid = container.attrs["State"]["Pid"]
    turnservers = [p for p in _pids("turnserver") if str(port) in _conf_of(p)]
    assert turnservers, "no turnserver of this project found"
    for p in [pid, *turnservers]:
        for what in ("cmdline", "environ"):
            assert secret.encode() not in Path(f"/proc/{p}/{what}").read_bytes(), f"secret in /proc/{p}/{what}"
    conf = Path(f"/proc/{turnservers[0]}/root/tmp/turnserver.conf")
    assert conf.stat().st_mode & 0o777 == 0o600 and f"static-auth-secret={secret}" in conf.read_text()


def test_render_output_into_a_bad_path_is_a_usage_error(tmp_path):
    from natkit.errors import UsageError

    in_the_way = tmp_path / "file"
    in_the_way.write_text("")
    files = render("compose", example_deployment_for_test())
    for bad in (in_the_way, in_the_way / "below", Path("/proc/1/natkit-render")):
        with pytest.raises(UsageError, match=f"cannot write the deployment into {re.escape(str(bad))}"):
            write(files, bad)
        r = subprocess.run([sys.executable, "-m", "natkit.cli.app", "turn", "render", "--target", "compose", "-o", str(bad)],
                           check=False, capture_output=True, text=True, timeout=60)
        # the CLI refuses the path before rendering (its --output check), the library when writing
        assert r.returncode == 2 and str(bad) in r.stderr and "internal error" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # and the files it writes: secrets' template 0600 from the first byte, the rest 0644
    out = tmp_path / "ok"
    write(files, out)
    assert (out / "turn.env.example").stat().st_mode & 0o777 == 0o600
    assert (out / "docker-compose.yml").stat().st_mode & 0o777 == 0o644


def example_deployment_for_test() -> Deployment:
    return Deployment(build("recommended", secrets=("s",)).config)
