"""Build a coturn Docker image offline, from the host's own ``turnserver``.

For machines without a registry: the image's root filesystem is the installed
``turnserver`` binary, ``/bin/sh`` (the rendered deployments' start script
writes the config with the REST secret at start, see :mod:`natkit.render`)
and ``turnutils_stunclient`` (their health check) when the host has it, every
shared library ``ldd`` lists for them (plus the dynamic loader and
``libgcc_s``, which glibc loads at run time for thread cancellation), minimal
``/etc/passwd``, ``/etc/group`` and ``/etc/nsswitch.conf`` (root and
nobody), and empty ``/tmp`` and ``/var/tmp``. No package manager, no other
tools. The tar is written to a temporary file and
imported through the Docker SDK (the ``docker import`` of the engine API); the
image runs as ``nobody`` (uid 65534), like the official ``coturn/coturn``
image, with ``ENTRYPOINT ["turnserver"]``.

coturn as nobody can bind ports >= 1024 with host networking; ports below
1024 (for example 443 for TURN over TLS) need root in the container or the
host's ``net.ipv4.ip_unprivileged_port_start`` lowered.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..errors import BackendUnavailable, EnvironmentProblem, NatkitError, UsageError

DEFAULT_TAG = "natkit/coturn:local"
IMAGE_USER = "65534:65534"  # nobody:nogroup
CONFIG_DIR = "/etc/natkit"  # where the docker backend mounts turnserver.conf
LIBRARY_PATH = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64:/lib:/usr/lib"

_PASSWD = "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"
_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
# glibc dlopen()s libgcc_s for pthread_cancel/pthread_exit unwinding; ldd does not list it
_RUNTIME_EXTRAS = ("libgcc_s.so.1",)
_LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def split_tag(tag: str) -> tuple[str, str]:
    """``"natkit/coturn:local"`` -> ``("natkit/coturn", "local")``; no tag means ``latest``.

    Raises :class:`UsageError` for an empty or digest reference.
    """
    if not tag or "@" in tag or any(c.isspace() for c in tag):
        raise UsageError(f"invalid image tag {tag!r}", hint="use REPOSITORY[:TAG], e.g. natkit/coturn:local")
    repo, sep, version = tag.rpartition(":")
    if not sep or "/" in version:  # no tag, or the colon belongs to a registry host:port
        return tag, "latest"
    return repo, version


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the shared objects ``ldd binary`` lists, the dynamic loader included.

    An empty list for a static binary. Raises :class:`EnvironmentProblem` when
    ``ldd`` is missing or reports a library as "not found".
    """
    try:
        proc = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise EnvironmentProblem("ldd is not installed", step="image build", hint="apt-get install libc-bin") from None
    if "not a dynamic executable" in (proc.stdout + proc.stderr):
        return []
    if proc.returncode != 0:
        raise EnvironmentProblem(f"ldd {binary} failed: {proc.stderr.strip() or proc.returncode}", step="image build")
    paths: list[str] = []
    for line in proc.stdout.splitlines():
        if "not found" in line:
            raise EnvironmentProblem(f"{binary} needs a library that is not installed: {line.strip()}", step="image build")
        m = _LDD_LINE.match(line)
        if m and m.group(2) not in paths:
            paths.append(m.group(2))
    return paths


def _extra_runtime_libraries(libs: list[str]) -> list[str]:
    dirs = list(dict.fromkeys(os.path.dirname(p) for p in libs)) or ["/lib/x86_64-linux-gnu"]
    out = []
    for name in _RUNTIME_EXTRAS:
        for d in dirs:
            p = os.path.join(d, name)
            if os.path.exists(p):
                out.append(p)
                break
    return out


def _add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, path: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, path: str, source: str, mode: int) -> None:
    """Add ``source`` (symlinks followed) as a regular file at ``path``."""
    with open(source, "rb") as f:
        st = os.fstat(f.fileno())
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size = st.st_size
        info.mode = mode
        tar.addfile(info, f)


# programs packed next to turnserver when the host has them: image path -> host path
COMPANIONS = {
    "/bin/sh": "/bin/sh",  # the rendered deployments' start script (natkit.render.start_script)
    "/usr/bin/turnutils_stunclient": "/usr/bin/turnutils_stunclient",  # their health check
}


def _companions(turnserver: str) -> dict[str, str]:
    """COMPANIONS that exist here (turnutils next to a custom turnserver first), symlinks resolved."""
    found = {}
    for target, host in COMPANIONS.items():
        beside = os.path.join(os.path.dirname(turnserver), os.path.basename(host))
        for candidate in (beside, host) if target.startswith("/usr/bin/turnutils") else (host,):
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                found[target] = os.path.realpath(candidate)
                break
    return found


def write_rootfs(fileobj, turnserver: str) -> list[str]:
    """Write the image's root filesystem as an uncompressed tar to ``fileobj``.

    Returns the files it holds (absolute paths inside the image). Every entry
    is owned by root; ``/tmp`` and ``/var/tmp`` are mode 1777.
    """
    programs = {"/usr/bin/turnserver": turnserver, **_companions(turnserver)}
    libs: list[str] = []
    for program in programs.values():
        libs += [p for p in shared_libraries(program) if p not in libs]
    libs += [p for p in _extra_runtime_libraries(libs) if p not in libs]
    files: list[str] = []
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT) as tar:
        base = ("/bin", "/etc", "/usr", "/usr/bin", "/usr/sbin", "/lib", "/lib64", "/usr/lib", "/var", "/var/lib", "/proc", "/sys", "/dev",
                "/root", CONFIG_DIR, "/etc/coturn")
        for d in base:
            _add_dir(tar, d, 0o700 if d == "/root" else 0o755)
        _add_dir(tar, "/tmp", 0o1777)
        _add_dir(tar, "/var/tmp", 0o1777)
        made = set(base)
        for lib in libs:
            parent = os.path.dirname(lib)
            parts = Path(parent).parts
            for i in range(2, len(parts) + 1):
                sub = "/" + "/".join(parts[1:i])
                if sub not in made:
                    _add_dir(tar, sub)
                    made.add(sub)
            _add_file(tar, lib, lib, 0o755)
            files.append(lib)
        for target, source in programs.items():
            _add_file(tar, target, source, 0o755)
            files.append(target)
        for path, text in (("/etc/passwd", _PASSWD), ("/etc/group", _GROUP), ("/etc/nsswitch.conf", _NSSWITCH)):
            _add_bytes(tar, path, text.encode())
            files.append(path)
    return files


def turnserver_version(turnserver: str) -> str | None:
    """The version ``turnserver --version`` prints (e.g. "4.6.1"), None when it prints none."""
    try:
        proc = subprocess.run([turnserver, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"\d+\.\d+\.\d+\S*", proc.stdout + proc.stderr)
    return m.group(0) if m else None


_VERSION_ONLY = re.compile(r"^\d+\.\d+\.\d+\S*$")  # all coturn's --version prints


def validate_turnserver(path: str, error: type[NatkitError] = UsageError) -> str:
    """Check that ``path`` is coturn's ``turnserver``, runnable here with its libraries; return its version.

    An executable regular file, an ELF binary (the image has no interpreter
    for scripts), every library ``ldd`` lists present, and ``path --version``
    exiting 0 with nothing but a version ("4.6.1"), which is what coturn
    prints. Raises ``error`` (:class:`UsageError` for a path the user gave)
    saying which check failed; :class:`EnvironmentProblem` for a missing
    library.
    """
    if not os.path.isfile(path):
        raise error(f"{path} is not a file", step="image build", hint="pass the turnserver binary (apt-get install coturn: /usr/bin/turnserver)")
    if not os.access(path, os.X_OK):
        raise error(f"{path} is not executable", step="image build", hint="pass the turnserver binary (/usr/bin/turnserver)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}", step="image build") from None
    if magic != b"\x7fELF":
        raise error(f"{path} is not an ELF executable", step="image build", hint="the image runs the binary itself; pass coturn's turnserver, not a script")
    shared_libraries(path)
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"{path} --version did not run: {exc}", step="image build") from None
    out = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    if proc.returncode != 0 or len(out) != 1 or not _VERSION_ONLY.match(out[0]):
        raise error(f"{path} is not coturn's turnserver: `--version` exited {proc.returncode} and printed {(out or [''])[0][:60]!r}",
                    step="image build", hint="pass coturn's turnserver binary")
    return out[0]


def build_local_image(tag: str = DEFAULT_TAG, turnserver: str | None = None) -> str:
    """Build a coturn image from the host's ``turnserver`` without any registry; return ``tag``.

    ``turnserver``: the binary to pack (default: the one the native backend
    would run, ``$NATKIT_TURNSERVER`` or PATH), checked first
    (:func:`validate_turnserver`). The image runs as nobody (65534:65534)
    with ``ENTRYPOINT ["turnserver"]``, labels ``natkit.image=1`` and
    ``natkit.turnserver.version``. It is imported under a temporary tag and
    must run ``turnserver --version`` through its ``/bin/sh`` in the engine
    (no network) before it gets ``tag``; an existing image with that tag is
    then replaced (the old one keeps its id, untagged), and a broken build
    never replaces it.

    Raises :class:`BackendUnavailable` without a Docker engine or an
    installed ``turnserver``, :class:`UsageError` for a bad tag or a
    ``turnserver`` argument that is not coturn's binary,
    :class:`EnvironmentProblem` when a library is missing, the engine
    refuses the import or the image does not run.
    """
    from . import docker as docker_backend
    from .native import find_binary

    repository, version_tag = split_tag(tag)
    if turnserver:
        version = validate_turnserver(turnserver, UsageError)
        binary = os.path.realpath(turnserver)
    else:
        found = find_binary()
        if not found:
            raise BackendUnavailable("no turnserver binary to pack", step="image build", hint="apt-get install coturn, or pass --turnserver PATH")
        version = validate_turnserver(found, EnvironmentProblem)
        binary = os.path.realpath(found)
    changes = [
        f"USER {IMAGE_USER}",
        'ENTRYPOINT ["turnserver"]',
        f'CMD ["-c", "{CONFIG_DIR}/turnserver.conf"]',
        f"ENV LD_LIBRARY_PATH={LIBRARY_PATH}",
        "WORKDIR /var/tmp",
        "LABEL natkit.image=1",
        f"LABEL natkit.turnserver.version={version}",
    ]
    client = docker_backend.client()
    staging = f"natkit/coturn-build:{secrets.token_hex(6)}"
    try:
        _import(client, binary, staging, changes)
        _smoke_run(client, staging, version)
        client.images.get(staging).tag(repository, version_tag)
    finally:
        # only the tag once the image has its real one, else the broken image; gone already is fine
        with contextlib.suppress(Exception):
            client.images.remove(staging, noprune=False)
        client.close()
    if not docker_backend.image_available(tag):
        raise EnvironmentProblem(f"image build finished but {tag} is not in the engine", step="image build")
    return tag


def _import(client, binary: str, staging: str, changes: list[str]) -> None:
    from . import docker as docker_backend

    repository, version_tag = split_tag(staging)
    with tempfile.TemporaryFile(prefix="natkit-rootfs-", suffix=".tar") as tmp:
        write_rootfs(tmp, binary)
        tmp.flush()
        tmp.seek(0)
        try:
            result = client.api.import_image(src=tmp, repository=repository, tag=version_tag, changes=changes)
        except docker_backend._engine_errors() as exc:
            raise EnvironmentProblem(
                f"the Docker engine refused the image import: {docker_backend.describe(exc)}", step="image build"
            ) from None
    for message in _import_messages(result):
        if message.get("error"):
            raise EnvironmentProblem(f"image import failed: {message['error']}", step="image build")


def _smoke_run(client, image: str, version: str) -> None:
    """Run ``/bin/sh -c 'exec turnserver --version'`` in ``image`` (no network, removed after); it must print ``version``."""
    from . import docker as docker_backend

    # not natkit.managed: another natkit's `turn down --all` must not remove it mid-check
    # (docker.reap_labelled removes one only once it is a leftover of a killed build)
    container = None
    try:
        container = client.containers.create(image, entrypoint=["/bin/sh", "-c", "exec turnserver --version"], network_mode="none",
                                             labels={docker_backend.IMAGE_CHECK_LABEL: "1"})
        container.start()
        status = container.wait(timeout=30).get("StatusCode")
        out = container.logs(stdout=True, stderr=True).decode(errors="replace").strip()
    except Exception as exc:  # noqa: BLE001 - engine errors and timeouts alike: the image is unusable
        raise EnvironmentProblem(f"the built image does not run: {docker_backend.describe(exc)}", step="image build") from None
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True)
    if status != 0 or out != version:
        raise EnvironmentProblem(f"the built image does not run turnserver: exit {status}, output {out[-200:]!r}", step="image build",
                                 hint="a library the binary loads at run time may be missing from the image")


def _import_messages(result) -> list[dict]:
    """The JSON objects of an import response (one per line)."""
    import json

    text = result.decode(errors="replace") if isinstance(result, bytes) else str(result or "")
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out
