"""The Docker backend: coturn in a hardened container, through the Docker SDK.

One container per natkit server, named ``natkit-<name>`` and labelled
``natkit.managed=1`` and ``natkit.name=<name>`` so leftovers can be found and
removed (:func:`reap_labelled`, ``natkit turn down --all``). The container:

- uses host networking (coturn's recommended deployment: relay ports need no
  publishing, and clients see the host's addresses);
- runs ``turnserver -c /etc/natkit/turnserver.conf`` (``entrypoint`` replaced,
  so the official image's detect-external-ip entrypoint script never runs);
- gets natkit's ``turnserver.conf`` (and any extra files of the server, e.g.
  TLS certificate and key) bind-mounted read-only, one file each, under
  ``/etc/natkit/``; the files stay 0600 and are chowned to the image's user
  (``nobody``, uid 65534, in the official image) when natkit runs as root,
  else the container runs as natkit's own uid;
- has a read-only root filesystem, a tmpfs at ``/var/tmp`` and ``/tmp`` for
  coturn's runtime files (``pidfile``, the sqlite ``userdb``), all
  capabilities dropped except ``NET_BIND_SERVICE``, ``no-new-privileges`` and
  a raised ``nofile`` ulimit (one descriptor per allocation and peer);
- is not auto-removed, so coturn's log (it logs to stdout,
  ``log-file=stdout``) survives a crash during startup; :func:`stop` removes it.

Images are never pulled implicitly (natkit's machines often have no registry,
and a pull would send traffic to one): a missing image is
:class:`BackendUnavailable`, with the hint to ``docker pull`` it or to build one
offline from the host's ``turnserver`` (:mod:`natkit.coturn.image`).

``import docker`` happens inside functions only: ``natkit probe`` never loads it.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import (
    BackendUnavailable,
    EnvironmentProblem,
    NatkitError,
    ServerStartFailed,
    UsageError,
)
from .server import LABEL, NAME_PREFIX

NAME = "docker"
NAME_LABEL = "natkit.name"
CONFIG_LABEL = "natkit.config"  # host path of the config: which state directory a container belongs to
CONFIG_DIR = "/etc/natkit"  # files of the server, mounted read-only, one by one
RUNTIME_DIR = "/var/tmp"  # tmpfs: pid file, sqlite userdb
PING_TIMEOUT = 3.0  # seconds, engine liveness (available, is_running, reap)
API_TIMEOUT = 60.0  # seconds, any other engine call
NOFILE = 65536  # RLIMIT_NOFILE soft and hard, per container (capped, see nofile_limit)
TMPFS_OPTIONS = "rw,nosuid,nodev,noexec,size=64m,mode=1777"
_NOT_MOUNTED = {"state.json", "turnserver.log"}  # natkit's own files in the server directory
_KNOWN_UIDS = {"": 0, "root": 0, "nobody": 65534}


def build_hint(image: str) -> str:
    """What to do about a missing image (one line)."""
    return (f"build one offline from the host's turnserver with `natkit turn image build` and pass --image natkit/coturn:local, "
            f"or `docker pull {image}` where a registry is reachable")


def describe(exc: BaseException) -> str:
    """One line for an engine/SDK exception (never a multi-line repr)."""
    text = getattr(exc, "explanation", None) or str(exc) or exc.__class__.__name__
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    line = " ".join(str(text).split())
    return line if len(line) <= 240 else line[:237] + "..."


def client(timeout: float = API_TIMEOUT):
    """A ``docker.DockerClient`` for the engine of the environment (``DOCKER_HOST`` or the local socket).

    The API version is negotiated with the engine. Raises
    :class:`BackendUnavailable` when the SDK is not installed or no engine
    answers within ``timeout`` seconds.
    """
    try:
        import docker
    except ImportError:
        raise BackendUnavailable("the docker Python SDK is not installed", hint="pip install docker") from None
    try:
        return docker.from_env(timeout=timeout, version="auto")
    except Exception as exc:  # docker.errors.DockerException, requests errors  # noqa: BLE001
        raise BackendUnavailable(f"no Docker engine answers: {describe(exc)}", hint="start dockerd, or set DOCKER_HOST") from None


def _image_present(c, image: str) -> bool:
    import docker.errors

    try:
        c.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as exc:
        if getattr(exc, "status_code", None) in (400, 404):  # malformed reference: not present either
            return False
        raise


def available(image: str | None = None) -> tuple[bool, str]:
    """(usable, reason): an engine answers ``ping`` within 3 s and, when ``image`` is given, the image is present locally.

    Never pulls and never raises.
    """
    try:
        c = client(PING_TIMEOUT)
    except NatkitError as exc:
        return False, exc.message
    try:
        c.ping()
        if image and not _image_present(c, image):
            return False, f"image {image} is not present locally ({build_hint(image)})"
        version = c.version().get("Version", "?")
        return True, f"Docker engine {version}"
    except Exception as exc:  # noqa: BLE001
        return False, f"Docker engine error: {describe(exc)}"
    finally:
        c.close()


def image_available(image: str) -> bool:
    """True when ``image`` (name:tag or id) is present in the local engine; False when not or no engine."""
    try:
        c = client(PING_TIMEOUT)
    except NatkitError:
        return False
    try:
        return _image_present(c, image)
    except Exception:  # noqa: BLE001
        return False
    finally:
        c.close()


def runtime_path(server_dir: Path, filename: str) -> str:
    """The path coturn in the container uses for ``filename`` of the server.

    A file natkit already wrote into ``server_dir`` (TLS ``cert``/``pkey`` from
    ``extra_files``) is mounted read-only: ``/etc/natkit/<filename>``. Anything
    else is a file coturn writes itself (``pidfile``, sqlite ``userdb``): the
    ``/var/tmp`` tmpfs, ``/var/tmp/<filename>``.
    """
    if filename not in _NOT_MOUNTED and (Path(server_dir) / filename).is_file():
        return mounted_path(filename)
    return f"{RUNTIME_DIR}/{filename}"


def mounted_path(filename: str) -> str:
    """Where a file of the server directory (config, TLS cert/key) appears in the container."""
    return f"{CONFIG_DIR}/{filename}"


def _uid_from_passwd(text: str, user: str) -> int | None:
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == user and fields[2].isdigit():
            return int(fields[2])
    return None


def _image_uid(c, image: str, user: str) -> int | None:
    """The uid the image's ``Config.User`` names; None when it cannot be resolved."""
    user = (user or "").split(":", 1)[0]
    if user.isdigit():
        return int(user)
    if user in _KNOWN_UIDS:
        return _KNOWN_UIDS[user]
    # a named user: read the image's /etc/passwd from a created (never started) container
    probe = None
    try:
        probe = c.containers.create(image, labels={LABEL: "1", NAME_LABEL: "uid-probe"}, network_mode="none", entrypoint=["/nonexistent"])
        stream, _ = probe.get_archive("/etc/passwd")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            f = tar.extractfile(member) if member else None
            return _uid_from_passwd(f.read().decode(errors="replace"), user) if f else None
    except Exception:  # noqa: BLE001
        return None
    finally:
        if probe is not None:
            try:
                probe.remove(force=True, v=True)
            except Exception:  # noqa: BLE001, S110
                pass


def _server_files(config_path: Path) -> list[Path]:
    """turnserver.conf first, then the server's other regular files (TLS cert/key, ...)."""
    files = [config_path]
    for p in sorted(config_path.parent.iterdir()):
        if p != config_path and p.name not in _NOT_MOUNTED and p.is_file() and not p.is_symlink():
            files.append(p)
    return files


def _file_access(files: list[Path], uid: int | None) -> str | None:
    """Make the 0600 ``files`` readable by the container's user; return a ``user`` override or None.

    As root: chown each file to the image's uid. Otherwise (or when the uid is
    unknown) the container runs as the files' owner instead.
    """
    me = os.geteuid()
    if uid is not None and all(p.stat().st_uid == uid for p in files):
        return None
    if uid is not None and me == 0:
        for p in files:
            os.chown(p, uid, -1)
        return None
    return f"{me}:{os.getegid()}"


def _get(c, ref: str):
    import docker.errors

    try:
        return c.containers.get(ref)
    except docker.errors.NotFound:
        return None


def _remove(container) -> None:
    """Force-remove a container and its anonymous volumes; already gone is fine."""
    import docker.errors

    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if getattr(exc, "status_code", None) != 409:  # 409: removal already in progress
            raise


def _clear_name(c, cname: str, name: str) -> None:
    """Remove an exited natkit container holding ``cname``; refuse to touch a running or foreign one."""
    existing = _get(c, cname)
    if existing is None:
        return
    labels = existing.labels or {}
    if labels.get(LABEL) != "1":
        raise UsageError(f"a container called {cname} exists and was not created by natkit", step="turn up", hint="remove it or pass another --name")
    if existing.status in ("running", "restarting", "paused"):
        raise UsageError(
            f"container {cname} is already running (a natkit server with another state directory?)",
            step="turn up", server=name, hint="natkit turn down --all removes every natkit container, or pass another --name",
        )
    _remove(existing)


def nofile_limit() -> int:
    """The ``nofile`` ulimit for the container: :data:`NOFILE`, capped at this process's hard limit.

    A container without ``CAP_SYS_RESOURCE`` cannot get more than the engine's
    own hard limit; natkit's limit is the best local guess of it (``start``
    retries without a ulimit if the engine still refuses).
    """
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return NOFILE if hard == resource.RLIM_INFINITY else max(1024, min(NOFILE, hard))


def _engine_errors() -> tuple[type[BaseException], ...]:
    """Exception classes that mean "the engine failed" (SDK errors and transport errors)."""
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def _create_and_start(c, image: str, create_args: dict):
    """Create and start a container; on any failure (Ctrl-C included) remove what was created, then re-raise."""
    name, cname = create_args["labels"][NAME_LABEL], create_args["name"]
    container = None
    try:
        container = c.containers.create(image, **create_args)
        container.start()
        return container
    except BaseException:
        # the create request may have reached the engine even when we never saw its answer (Ctrl-C)
        try:
            leftover = container or _get(c, cname)
            if leftover is not None and (leftover.labels or {}).get(NAME_LABEL) == name:
                _remove(leftover)
        except Exception:  # noqa: BLE001, S110
            pass
        raise


def _optional_setting(message: str, create_args: dict) -> str | None:
    """The create argument an engine refusal is about, when natkit can run without it."""
    if "rlimit" in message and "ulimits" in create_args:
        return "ulimits"  # the engine's own hard limit is lower, and the container lacks CAP_SYS_RESOURCE
    if "docker-init" in message and create_args.get("init"):
        return "init"  # no init binary in this engine: coturn is PID 1, stop() falls back to SIGKILL
    return None


def start(config_path: Path, log_path: Path, *, name: str, image: str, argv_prefix: Sequence[str] = ()) -> dict:
    """Create and start the coturn container; return the state fields ``{"container_id", "image"}``.

    ``config_path``: natkit's rendered turnserver.conf (mode 0600) in the
    server directory; ``argv_prefix`` must be empty (:class:`UsageError`);
    ``log_path`` is unused (coturn logs to the container's
    stdout, see :func:`logs`). ``name``: natkit's server name (container
    ``natkit-<name>``). ``image``: a local image reference; never pulled.

    Readiness is the caller's job (STUN Binding polling in ``server.wait_ready``).
    Raises :class:`BackendUnavailable` (no engine, image not present locally),
    :class:`UsageError` (another container holds the name),
    :class:`ServerStartFailed` (the engine refused to create or start it) or
    :class:`EnvironmentProblem` (other engine errors); on any failure, Ctrl-C
    included, no container is left behind.
    """
    import docker.errors
    from docker.types import Mount, Ulimit

    if argv_prefix:
        raise UsageError("the docker backend runs coturn with host networking; an argv prefix (a network namespace) needs the native backend",
                         server=name, step="turn up")
    cname = NAME_PREFIX + name
    c = client()
    try:
        try:
            img = c.images.get(image)
        except docker.errors.ImageNotFound:
            raise BackendUnavailable(f"Docker image {image} is not present locally", server=name, step="turn up", hint=build_hint(image)) from None
        except docker.errors.APIError as exc:
            if getattr(exc, "status_code", None) not in (400, 404):
                raise
            raise BackendUnavailable(f"Docker image {image!r} is not present locally ({describe(exc)})", server=name, step="turn up",
                                     hint=build_hint(image)) from None
        _clear_name(c, cname, name)
        files = _server_files(Path(config_path))
        user = _file_access(files, _image_uid(c, image, (img.attrs.get("Config") or {}).get("User", "")))
        # the security policy (host network, read-only root, capabilities,
        # no-new-privileges, nofile) is the one natkit also renders for compose/Kubernetes
        from .profiles import container_hardening

        policy = container_hardening(nofile_limit())
        create_args = dict(
            name=cname,
            entrypoint=["turnserver"],
            command=["-c", mounted_path(Path(config_path).name)],
            labels={LABEL: "1", NAME_LABEL: name, CONFIG_LABEL: str(config_path)},
            mounts=[Mount(target=mounted_path(p.name), source=str(p.resolve()), type="bind", read_only=True) for p in files],
            **{k: policy[k] for k in ("network_mode", "read_only", "cap_drop", "cap_add", "security_opt")},
            tmpfs={RUNTIME_DIR: TMPFS_OPTIONS, "/tmp": TMPFS_OPTIONS},
            ulimits=[Ulimit(**u) for u in policy["ulimits"]],
            user=user,
            working_dir=RUNTIME_DIR,
            init=True,  # docker-init as PID 1 forwards SIGTERM; coturn as PID 1 would ignore it
            auto_remove=False,
            stdin_open=False,
            tty=False,
        )
        while True:
            try:
                container = _create_and_start(c, image, create_args)
                break
            except docker.errors.APIError as exc:
                setting = _optional_setting(describe(exc), create_args)
                if setting is None:
                    raise ServerStartFailed(f"the Docker engine could not start container {cname}: {describe(exc)}", server=name, step="turn up") from None
                create_args.pop(setting)
        return {"container_id": container.id, "image": image}
    except NatkitError:
        raise
    except _engine_errors() as exc:
        raise EnvironmentProblem(f"Docker engine error while starting {cname}: {describe(exc)}", server=name, step="turn up") from None
    finally:
        c.close()


def _container(state: dict, c, *, by_name: bool = False):
    """The state's container, by id; with ``by_name`` (no id recorded yet), the
    ``natkit-<name>`` container whose config label is this state's config."""
    cid = state.get("container_id")
    if cid:
        return _get(c, cid)
    if by_name and state.get("name") and state.get("config_path"):
        ct = _get(c, NAME_PREFIX + state["name"])
        if ct is not None and (ct.labels or {}).get(CONFIG_LABEL) == str(state["config_path"]):
            return ct
    return None


def is_running(state: dict) -> bool:
    """True when the recorded container exists and its status is ``running`` (False without an engine)."""
    if not state.get("container_id"):
        return False
    try:
        c = client(PING_TIMEOUT)
    except NatkitError:
        return False
    try:
        ct = _container(state, c)
        return ct is not None and ct.status == "running"
    except Exception:  # noqa: BLE001
        return False
    finally:
        c.close()


def stop(state: dict, timeout: float = 5) -> None:
    """Stop the container (SIGTERM, SIGKILL after ``timeout`` seconds) and remove it with its anonymous volumes.

    Without a recorded ``container_id`` (interrupted right after creation), the
    container named ``natkit-<name>`` is removed only when its
    ``natkit.config`` label is this state's ``config_path``.

    Idempotent: a container already gone is fine. Raises
    :class:`BackendUnavailable` when a container is recorded but no engine
    answers (it stays labelled for ``natkit turn down --all``), and
    :class:`EnvironmentProblem` when the engine refuses to remove it.
    """
    import docker.errors

    try:
        c = client()
    except BackendUnavailable:
        if state.get("container_id"):
            raise
        return
    try:
        ct = _container(state, c, by_name=True)
        if ct is None:
            return
        try:
            if ct.status == "running":
                ct.stop(timeout=int(max(0, round(timeout))))
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            pass  # remove(force=True) below kills it
        _remove(ct)
    except _engine_errors() as exc:
        raise EnvironmentProblem(f"could not remove container {(state.get('container_id') or NAME_PREFIX + str(state.get('name')))[:24]}: {describe(exc)}",
                                 server=state.get("name"), step="turn down") from None
    finally:
        c.close()


def logs(state: dict, tail: int | None = None) -> list[str]:
    """coturn's log lines (its stdout and stderr; the last ``tail`` when given); [] when the container is gone."""
    try:
        c = client()
    except NatkitError:
        return []
    try:
        ct = _container(state, c)
        if ct is None:
            return []
        raw = ct.logs(stdout=True, stderr=True, tail=tail if tail else "all")
        return raw.decode(errors="replace").splitlines()
    except Exception:  # noqa: BLE001
        return []
    finally:
        c.close()


IMAGE_CHECK_LABEL = "natkit.image-check"  # the short-lived container natkit turn image build runs its image in
IMAGE_CHECK_STALE = 120.0  # s after which such a container is a leftover of a killed build


def _stale_image_checks(c) -> list:
    """Image-check containers older than :data:`IMAGE_CHECK_STALE` (a build in progress keeps its own)."""
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    out = []
    for ct in c.containers.list(all=True, filters={"label": f"{IMAGE_CHECK_LABEL}=1"}):
        try:
            # "2026-12-01T09:21:49.612775581Z": the engine's UTC time, to the second
            created = datetime.datetime.fromisoformat(ct.attrs["Created"][:19]).replace(tzinfo=datetime.UTC)
        except (KeyError, ValueError):
            continue
        if (now - created).total_seconds() > IMAGE_CHECK_STALE:
            out.append(ct)
    return out


def _belongs_elsewhere(ct, root: Path | None) -> bool:
    """True when ``ct`` is the server of another state directory that still has its config."""
    config = (ct.labels or {}).get(CONFIG_LABEL)
    if root is None or not config or not os.path.exists(config):
        return False
    return not Path(config).resolve().is_relative_to(Path(root).resolve())


def reap_labelled(only: Iterable[str] | None = None, root: Path | None = None) -> list[str]:
    """Remove every container labelled ``natkit.managed=1`` (running or not), and image-check
    containers a killed ``image build`` left (older than two minutes); return their names.

    ``root``: a state directory; a container whose ``natkit.config`` file
    still exists in another state directory is that natkit's live server and
    is spared (its own ``turn down`` stops it), while one whose config is
    gone is a leftover and goes. ``only``: container names to restrict it to
    (tests on a shared engine). Returns [] quietly when there is no SDK or no engine.
    """
    wanted = None if only is None else set(only)
    try:
        c = client(PING_TIMEOUT)
    except NatkitError:
        return []
    names = []
    try:
        found = [*c.containers.list(all=True, filters={"label": f"{LABEL}=1"}), *_stale_image_checks(c)]
        for ct in (ct for ct in found if (wanted is None or ct.name in wanted) and not _belongs_elsewhere(ct, root)):
            try:
                _remove(ct)
                names.append(ct.name)
            except Exception:  # noqa: BLE001, S112
                continue
    except Exception:  # noqa: BLE001
        return names
    finally:
        c.close()
    return names
