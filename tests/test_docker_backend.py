"""The Docker backend against a real engine, with a coturn image built offline from the host's turnserver.

Every test uses its own server name (``pytest-<port>``) and checks by label
that nothing it created is left behind. Nothing is pulled: the only image is
the one :func:`natkit.coturn.image.build_local_image` imports.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from natkit.coturn import docker as backend
from natkit.coturn.config import CoturnConfig
from natkit.coturn.server import (
    CoturnServer,
    choose_backend,
    free_port,
    list_servers,
    stop_server,
)
from natkit.credentials import mint
from natkit.errors import BackendUnavailable, ServerStartFailed
from natkit.probe import probe
from natkit.pytest_plugin import require_coturn, require_docker

TAG = f"natkit/coturn:pytest-{os.getpid()}"  # one per test session: sessions run side by side on one engine
MISSING = "natkit/does-not-exist:never"


@pytest.fixture(scope="session")
def engine():
    """A Docker SDK client (skips without an engine; fails under NATKIT_REQUIRE_DOCKER=1)."""
    require_docker()
    c = backend.client()
    try:
        yield c
    finally:
        c.close()


class BuildRecord:
    """What one :func:`natkit.coturn.image.build_local_image` call did, seen through its own steps:
    ``staged`` the temporary tags it imported under, ``smoke`` ``(image, final tag present then)``
    per check run, ``image_ids`` the ids those runs used. Other sessions build on the same engine at the same time; a test of a build
    looks only at what that build created, never at the engine's global lists."""

    def __init__(self, monkeypatch) -> None:
        from natkit.coturn import image as image_mod

        self.staged: list[str] = []
        self.smoke: list[tuple[str, bool]] = []
        self.image_ids: list[str] = []
        self.final: str | None = None
        real_import, real_smoke = image_mod._import, image_mod._smoke_run

        def spy_import(client, binary, staging, changes):
            self.staged.append(staging)
            return real_import(client, binary, staging, changes)

        def spy_smoke(client, image, version):
            self.smoke.append((image, self.final is not None and backend.image_available(self.final)))
            self.image_ids.append(client.images.get(image).id)
            return real_smoke(client, image, version)

        monkeypatch.setattr(image_mod, "_import", spy_import)
        monkeypatch.setattr(image_mod, "_smoke_run", spy_smoke)

    def build(self, tag: str, turnserver: str | None = None) -> str:
        from natkit.coturn.image import build_local_image

        self.final = tag
        return build_local_image(tag, turnserver)


@pytest.fixture(scope="session")
def image_build(engine):
    """The coturn image built offline once per session from /usr/bin/turnserver (removed at the end),
    with the :class:`BuildRecord` of that build."""
    require_coturn()
    with pytest.MonkeyPatch.context() as mp:
        record = BuildRecord(mp)
        record.build(TAG)
    try:
        yield record
    finally:
        with contextlib.suppress(docker_errors().ImageNotFound):
            engine.images.remove(TAG, noprune=False)


@pytest.fixture(scope="session")
def image(image_build):
    """The session's coturn image tag (:func:`image_build`)."""
    return image_build.final


def docker_errors():
    import docker.errors

    return docker.errors


def _containers(engine, name: str) -> list:
    """Every container (running or not) natkit created for server ``name``."""
    return engine.containers.list(all=True, filters={"label": ["natkit.managed=1", f"natkit.name={name}"]})


def _config(port: int, **kw) -> CoturnConfig:
    return CoturnConfig(listening_port=port, static_auth_secrets=("docker-secret",), realm="natkit.test",
                        allow_loopback_peers=True, allowed_peer_ranges=("127.0.0.1",), **kw)


def test_image_rootfs_holds_turnserver_and_its_libraries():
    require_coturn()
    from natkit.coturn.image import shared_libraries, split_tag, write_rootfs
    from natkit.coturn.native import find_binary

    binary = os.path.realpath(find_binary())
    buf = io.BytesIO()
    files = write_rootfs(buf, binary)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        members = {m.name: m for m in tar.getmembers()}
    libs = shared_libraries(binary)
    assert any("ld-linux" in p for p in libs)
    # the rendered deployments' start script needs a shell, their health check turnutils_stunclient
    libs += [p for p in shared_libraries(os.path.realpath("/bin/sh")) if p not in libs]
    for path in ["/usr/bin/turnserver", "/bin/sh", "/usr/bin/turnutils_stunclient", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", *libs]:
        assert path in files and path.lstrip("/") in members, path
        assert members[path.lstrip("/")].isfile() and members[path.lstrip("/")].uid == 0
    assert members["tmp"].mode == 0o1777 and members["var/tmp"].mode == 0o1777
    assert split_tag("natkit/coturn:local") == ("natkit/coturn", "local")
    assert split_tag("localhost:5000/coturn") == ("localhost:5000/coturn", "latest")


def test_no_engine_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/natkit-test/docker.sock")
    ok, reason = backend.available()
    assert ok is False and "no Docker engine" in reason
    assert backend.image_available(TAG) is False
    assert backend.reap_labelled() == []
    assert backend.is_running({"container_id": "0" * 64}) is False
    assert backend.logs({"container_id": "0" * 64}) == []
    backend.stop({"name": "x", "config_path": "/nonexistent"})  # nothing recorded: nothing to do
    with pytest.raises(BackendUnavailable):
        backend.stop({"container_id": "0" * 64})  # a recorded container must not be forgotten silently


def test_available_requires_the_image_locally(image):
    from natkit.coturn import native

    assert backend.available()[0] is True
    assert backend.available(image)[0] is True
    ok, reason = backend.available(MISSING)
    assert ok is False and "not present locally" in reason and "natkit turn image build" in reason
    assert backend.image_available(image) is True
    assert backend.image_available(MISSING) is False
    assert choose_backend("auto", image) == "docker"
    assert choose_backend("docker", MISSING) == "docker"  # the missing image is reported by start, with its hint
    if native.available()[0]:
        assert choose_backend("auto", MISSING) == "native"


def test_container_serves_stun_and_is_hardened(engine, image):
    port = free_port()
    name = f"pytest-{port}"
    with CoturnServer(_config(port), backend="docker", image=image, name=name) as server:
        info = server.info
        assert info.backend == "docker" and info.image == image and info.container_id
        report = probe([f"stun:127.0.0.1:{port}"], timeout=2.0)
        result = report.results[0]
        assert result.ok, result.error
        assert result.mapped_address.host == "127.0.0.1"
        assert result.mapped_address.port == result.local_address.port

        attrs = engine.api.inspect_container(info.container_id)
        host, cfg = attrs["HostConfig"], attrs["Config"]
        assert attrs["Name"] == f"/natkit-{name}"
        assert cfg["Labels"]["natkit.managed"] == "1" and cfg["Labels"]["natkit.name"] == name
        assert cfg["Labels"]["natkit.config"] == info.config_path
        assert host["NetworkMode"] == "host"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["NET_BIND_SERVICE"]
        assert any(o.split(":")[0] == "no-new-privileges" and not o.endswith(":false") for o in host["SecurityOpt"])
        assert host["AutoRemove"] is False
        assert set(host["Tmpfs"]) == {"/var/tmp", "/tmp"}
        nofile = [u for u in host.get("Ulimits") or [] if u["Name"] == "nofile"]
        assert nofile and nofile[0]["Soft"] >= 4096
        assert cfg["Entrypoint"] == ["turnserver"] and cfg["Cmd"] == ["-c", "/etc/natkit/turnserver.conf"]
        mounts = attrs["Mounts"]
        assert [(m["Type"], m["Source"], m["Destination"], m["RW"]) for m in mounts] == [
            ("bind", info.config_path, "/etc/natkit/turnserver.conf", False)]
        # the secret-bearing config stays 0600, owned by the image's user (nobody) so coturn can read it
        st = os.stat(info.config_path)
        assert st.st_mode & 0o777 == 0o600
        if os.geteuid() == 0:
            assert st.st_uid == 65534 and cfg["User"] == "65534:65534"
        logs = server.logs()
        assert any("SQLite DB connection success: /var/tmp/turndb" in line for line in logs), logs[-10:]
    assert _containers(engine, name) == []
    assert list_servers() == []


def test_relay_check_through_the_container(engine, image):
    from natkit.relay import relay_check

    port = free_port()
    with CoturnServer(_config(port), backend="docker", image=image, name=f"pytest-{port}") as server:
        for uri in server.info.uris:  # UDP and TCP between client and server
            cred = mint("docker-secret", "pytest", 600)
            report = relay_check(uri, username=cred.username, password=cred.password, messages=5, payload_bytes=100_000, timeout=15)
            assert report.ok, report.failures
            assert report.path.selected_relay and report.path.all_relay
            assert report.preflight.relayed_address.host == "127.0.0.1"
            assert report.path.messages_echoed == 5 and report.path.echo_ok
    assert _containers(engine, f"pytest-{port}") == []


def _self_signed() -> tuple[bytes, bytes]:
    from natkit.tls import self_signed as make

    return make(["127.0.0.1", "localhost"], days=1)


def test_turns_with_extra_files_mounted_read_only(engine, image, tmp_path):
    from natkit.relay import relay_check

    cert, key = _self_signed()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(cert)
    port, tls_port = free_port(), free_port()
    cfg = _config(port, tls_listening_port=tls_port, cert="cert.pem", pkey="key.pem")
    with CoturnServer(cfg, backend="docker", image=image, name=f"pytest-{port}", extra_files={"cert.pem": cert, "key.pem": key}) as server:
        rendered = Path(server.info.config_path).read_text()
        assert "cert=/etc/natkit/cert.pem" in rendered and "pkey=/etc/natkit/key.pem" in rendered
        mounts = {m["Destination"]: m["RW"] for m in engine.api.inspect_container(server.info.container_id)["Mounts"]}
        assert mounts == {"/etc/natkit/turnserver.conf": False, "/etc/natkit/cert.pem": False, "/etc/natkit/key.pem": False}
        cred = mint("docker-secret", "pytest", 600)
        report = relay_check(f"turns:127.0.0.1:{tls_port}", username=cred.username, password=cred.password, cafile=str(ca),
                             messages=3, payload_bytes=0, timeout=15)
        assert report.ok and report.tls, report.failures
    assert _containers(engine, f"pytest-{port}") == []


def test_missing_image_is_backend_unavailable_and_leaves_nothing(engine, image):
    port = free_port()
    name = f"pytest-{port}"
    with pytest.raises(BackendUnavailable) as err:
        CoturnServer(_config(port), backend="docker", image=MISSING, name=name).start()
    assert MISSING in err.value.message
    assert "natkit turn image build" in err.value.hint
    assert _containers(engine, name) == []
    assert list_servers() == []


def test_coturn_exiting_during_startup_is_server_start_failed_with_its_log(engine, image):
    port = free_port()
    name = f"pytest-{port}"
    # coturn looks the user up before dropping privileges and exits (255) when it does not exist
    config = _config(port, extra=("proc-user=natkit-no-such-user",))
    with pytest.raises(ServerStartFailed) as err:
        CoturnServer(config, backend="docker", image=image, name=name, ready_timeout=10).start()
    assert "exited during startup" in err.value.message
    assert any("Unknown user name: natkit-no-such-user" in line for line in err.value.details), err.value.details
    assert _containers(engine, name) == []
    assert list_servers() == []


def test_interrupt_between_create_and_start_leaves_nothing(engine, image, monkeypatch):
    from docker.models.containers import Container

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Container, "start", interrupted)
    port = free_port()
    name = f"pytest-{port}"
    with pytest.raises(KeyboardInterrupt):
        CoturnServer(_config(port), backend="docker", image=image, name=name).start()
    assert _containers(engine, name) == []
    assert list_servers() == []


def test_stop_removes_the_container_and_is_idempotent(engine, image):
    port = free_port()
    name = f"pytest-{port}"
    server = CoturnServer(_config(port), backend="docker", image=image, name=name)
    info = server.start()
    state = info.to_state()
    assert backend.is_running(state)
    assert len(_containers(engine, name)) == 1
    server.stop()
    assert _containers(engine, name) == []
    assert not backend.is_running(state)
    assert backend.logs(state) == []
    backend.stop(state)  # again: nothing to do, no error
    server.stop()


def test_exited_container_of_a_crashed_run_is_replaced(engine, image):
    port = free_port()
    name = f"pytest-{port}"
    stale = engine.containers.create(image, name=f"natkit-{name}", labels={"natkit.managed": "1", "natkit.name": name},
                                     network_mode="none", entrypoint=["turnserver"], command=["--version"])
    try:
        with CoturnServer(_config(port), backend="docker", image=image, name=name) as server:
            assert server.info.container_id != stale.id
            assert [c.id for c in _containers(engine, name)] == [server.info.container_id]
    finally:
        backend._remove(stale)
    assert _containers(engine, name) == []


def test_reap_labelled_removes_a_stray_container(engine, image):
    stray = f"natkit-stray-{uuid.uuid4().hex[:8]}"
    # a running container with natkit's label but no state file; no network at all, so it cannot send anything
    ct = engine.containers.run(
        image, name=stray, detach=True, network_mode="none", labels={"natkit.managed": "1", "natkit.name": stray},
        entrypoint=["turnserver"], command=["-n", "--no-cli", "--listening-ip=127.0.0.1", "--log-file=stdout",
                                             "--userdb=/var/tmp/db", "--pidfile=/var/tmp/pid", "--no-tls", "--no-dtls"],
    )
    try:
        # only= keeps the test from removing what other natkit sessions run on this engine
        assert backend.reap_labelled(only=[stray]) == [stray]
        assert engine.containers.list(all=True, filters={"name": stray}) == []
    finally:
        backend._remove(ct)


def test_cli_turn_up_status_logs_down(engine, image):
    from typer.testing import CliRunner

    from natkit.cli.app import app

    runner = CliRunner()
    port = free_port()
    name = f"pytest-cli-{port}"
    try:
        up = runner.invoke(app, ["turn", "up", "--backend", "docker", "--image", image, "--port", str(port), "--name", name])
        assert up.exit_code == 0, up.output
        assert "coturn is running (docker, container " in up.stdout
        assert f"turn:127.0.0.1:{port}" in up.stdout

        status = runner.invoke(app, ["turn", "status", "--json"])
        assert status.exit_code == 0, status.output
        doc = json.loads(status.stdout)
        assert doc["ok"] is True
        [srv] = doc["servers"]
        assert srv["name"] == name and srv["backend"] == "docker" and srv["running"] is True
        assert srv["image"] == image and srv["secret"] == "***"
        assert [c.id for c in _containers(engine, name)] == [srv["container_id"]]

        logs = runner.invoke(app, ["turn", "logs"])
        assert logs.exit_code == 0, logs.output
        assert "Relay ports initialization done" in logs.stdout
        tail = runner.invoke(app, ["turn", "logs", "-n", "3"])
        assert tail.exit_code == 0 and len(tail.stdout.splitlines()) == 3

        down = runner.invoke(app, ["turn", "down"])
        assert down.exit_code == 0, down.output
        assert f"stopped: {name}" in down.stdout
        assert _containers(engine, name) == []

        after = runner.invoke(app, ["turn", "status", "--json"])
        assert after.exit_code == 0 and json.loads(after.stdout)["servers"] == []
        again = runner.invoke(app, ["turn", "down"])
        assert again.exit_code == 3  # NotRunning
    finally:
        for info in list_servers():
            stop_server(info)
        assert _containers(engine, name) == []


def test_cli_turn_up_with_a_missing_image_exits_3(engine, image):
    from typer.testing import CliRunner

    from natkit.cli.app import app

    port = free_port()
    result = CliRunner().invoke(app, ["turn", "up", "--backend", "docker", "--image", MISSING, "--port", str(port), "--name", f"pytest-{port}"])
    assert result.exit_code == 3, result.output
    assert "not present locally" in result.stderr and "natkit turn image build" in result.stderr
    assert "Traceback" not in result.output
    assert _containers(engine, f"pytest-{port}") == []


def test_image_build_refuses_what_is_not_coturns_turnserver(engine, tmp_path, monkeypatch):
    """A file that is not coturn's turnserver (not executable, a script, another ELF program)
    is refused before anything is imported: one line, exit 2, no image left behind (this build's
    own tag absent, nothing imported; other sessions' builds on the engine are theirs)."""
    import shutil

    from typer.testing import CliRunner

    from natkit.cli.app import app
    from natkit.errors import UsageError

    script = tmp_path / "turnserver"
    script.write_text("#!/bin/sh\necho 4.6.1\n")
    script.chmod(0o755)
    text = tmp_path / "hostname"
    shutil.copy("/etc/hostname", text)
    text.chmod(0o644)
    executable_text = tmp_path / "hostname-x"
    shutil.copy("/etc/hostname", executable_text)
    executable_text.chmod(0o755)
    cases = [("/etc/hostname", "not executable|not an ELF executable"), (str(text), "not executable"),
             (str(executable_text), "not an ELF executable"), (str(script), "not an ELF executable"),
             (shutil.which("true"), "is not coturn's turnserver"), (str(tmp_path / "missing"), "is not a file")]
    record = BuildRecord(monkeypatch)
    for path, message in cases:
        tag = f"natkit/coturn:refused-{uuid.uuid4().hex[:8]}"
        with pytest.raises(UsageError, match=message):
            record.build(tag, path)
        assert not backend.image_available(tag)
    tag = f"natkit/coturn:refused-{uuid.uuid4().hex[:8]}"
    r = CliRunner().invoke(app, ["turn", "image", "build", "--turnserver", "/etc/hostname", "-t", tag])
    assert r.exit_code == 2 and "/etc/hostname is not" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not backend.image_available(tag)
    assert record.staged == [] and record.smoke == [], "a refused build imported an image"


def test_image_build_runs_the_image_before_tagging_it(engine, image_build):
    """The session's build ran turnserver --version through the image's /bin/sh in the engine,
    under its temporary tag and before the image had its own; that temporary tag and that check
    container are gone (only this build's: other sessions build on the same engine)."""
    from natkit.coturn.image import turnserver_version
    from natkit.coturn.native import find_binary

    img = engine.images.get(image_build.final)
    assert img.labels["natkit.turnserver.version"] == turnserver_version(os.path.realpath(find_binary()))
    [staging] = image_build.staged
    assert staging.startswith("natkit/coturn-build:") and staging != image_build.final
    assert image_build.smoke == [(staging, False)], "the check ran on the temporary tag, before the image got its tag"
    assert not backend.image_available(staging), "this build left its temporary tag"
    # sparse: the list's own fields (no inspect of a container another build removes meanwhile); ImageID is this build's image
    assert image_build.image_ids == [img.id]
    checks = engine.containers.list(all=True, sparse=True, filters={"label": f"{backend.IMAGE_CHECK_LABEL}=1"})
    assert [c.id for c in checks if c.attrs.get("ImageID") == img.id] == [], "this build left its check container"


def test_orphaned_ephemeral_container_is_reaped_by_the_next_start(engine, image, tmp_path):
    """An ephemeral server whose owner is gone (here: its recorded start time no longer matches,
    as after a SIGKILL and PID reuse) is shown as orphaned and removed, container and all,
    by the next server start."""
    import json

    from natkit.coturn.server import reap_orphans

    port = free_port()
    name = f"pytest-{port}"
    server = CoturnServer(_config(port), backend="docker", image=image, name=name, ephemeral=True, state_dir=tmp_path)
    info = server.start()
    try:
        state_file = Path(info.config_path).parent / "state.json"
        state = json.loads(state_file.read_text())
        assert state["owner_pid"] == os.getpid() and not list_servers(tmp_path)[0].orphaned
        state_file.write_text(json.dumps(dict(state, owner_start=state["owner_start"] + 1)))
        assert list_servers(tmp_path)[0].orphaned
        other = CoturnServer(_config(free_port()), backend="native", name="next", state_dir=tmp_path)
        with other:  # the next start reaps the orphan first
            assert [s.name for s in list_servers(tmp_path)] == ["next"]
            assert _containers(engine, name) == []
        assert reap_orphans(tmp_path) == []
    finally:
        server.info = None  # already reaped; never touch it twice
        for c in _containers(engine, name):
            c.remove(force=True)


def test_turn_down_all_spares_a_running_image_check_but_reaps_a_stale_one(engine, image):
    """The image build's check container is not natkit.managed (another natkit's turn down --all
    must not remove it mid-check), but one a killed build left is reaped once it is stale."""
    from natkit.coturn import docker as backend

    fresh = engine.containers.create(image, entrypoint=["/bin/sh", "-c", "exit 0"], network_mode="none",
                                     labels={backend.IMAGE_CHECK_LABEL: "1"})
    try:
        assert backend.reap_labelled(only=[fresh.name]) == []
        assert engine.containers.get(fresh.id)
        old = backend.IMAGE_CHECK_STALE
        backend.IMAGE_CHECK_STALE = -1.0  # as if created long ago
        try:
            assert backend.reap_labelled(only=[fresh.name]) == [fresh.name]
        finally:
            backend.IMAGE_CHECK_STALE = old
        assert not engine.containers.list(all=True, filters={"id": fresh.id})
    finally:
        with contextlib.suppress(docker_errors().NotFound):
            fresh.remove(force=True)


def test_turn_down_all_spares_another_state_directorys_live_container(engine, image, tmp_path):
    """stop_all (turn down --all) reaps leftovers, not another natkit's live server: a labelled
    container whose config still exists in another state directory stays."""
    from natkit.coturn.server import stop_all

    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    port = free_port()
    name = f"pytest-{port}"
    server = CoturnServer(_config(port), backend="docker", image=image, name=name, state_dir=theirs)
    server.start()
    try:
        assert name not in stop_all(mine)
        assert [c.status for c in _containers(engine, name)] == ["running"]
        assert stop_all(theirs) == [name]
        assert _containers(engine, name) == []
    finally:
        server.stop()
