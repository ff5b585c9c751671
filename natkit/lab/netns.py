"""Network namespaces for the lab: build a :class:`~natkit.lab.spec.Plan`, run
things inside it, and remove everything again.

System work is done with iproute2 (``ip -n NS -batch -``: one process per
namespace and phase), ``nft -f`` and ``sysctl`` through ``ip netns exec``;
nothing ever touches the host's own namespace, interfaces, routes or
nftables tables: every interface is created inside a lab namespace (veth
peers are created directly in their target namespace).

Every lab is registered in ``$NATKIT_LAB_DIR`` (default ``/run/natkit/labs``,
a tmpfs that disappears with ``/run/netns`` on reboot) as
``<lab>/state.json``: namespaces, owner process (PID + start time), and for
labs left running by ``natkit lab up`` the server's secret. :func:`down_all`
uses it to tell leftovers (owner gone) from labs in use.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import LabError, NatkitError, UsageError  # noqa: F401
from ..ownership import process_start_time
from .spec import NS_PREFIX, Plan

NETNS_DIR = Path("/run/netns")


# ------------------------------------------------------------------ registry

def lab_dir_root() -> Path:
    """Where lab state lives: ``$NATKIT_LAB_DIR`` or ``/run/natkit/labs``."""
    return Path(os.environ.get("NATKIT_LAB_DIR") or "/run/natkit/labs")


def lab_dir(lab: str) -> Path:
    return lab_dir_root() / lab


def owner_alive(state: dict) -> bool:
    """True when the process that owns a lab (a test run, ``lab matrix``) still runs."""
    pid = state.get("owner_pid")
    if not pid:
        return False
    start = process_start_time(int(pid))
    return start is not None and start == state.get("owner_start")


def write_state(lab: str, state: dict) -> Path:
    d = lab_dir(lab)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / "state.json"
    tmp = d / "state.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, path)
    return path


def read_state(lab: str) -> dict | None:
    try:
        return json.loads((lab_dir(lab) / "state.json").read_text())
    except (OSError, ValueError):
        return None


def registered_labs() -> list[str]:
    root = lab_dir_root()
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    except OSError:
        return []


def remove_state(lab: str) -> None:
    import shutil

    shutil.rmtree(lab_dir(lab), ignore_errors=True)


# ------------------------------------------------------------------ commands

def _run(argv: Sequence[str], *, input: str | None = None, step: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed", step=step, hint="apt-get install iproute2 nftables procps") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv[:4])} did not finish within {timeout:g}s", step=step) from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(
            f"{' '.join(argv[:5])} failed (exit {proc.returncode}): {lines[0] if lines else 'no output'}",
            step=step, details=lines[:20] + (["-- input:"] + input.splitlines()[:40] if input else []),
        )
    return proc


def list_namespaces(prefix: str = NS_PREFIX) -> list[str]:
    """Named network namespaces whose name starts with ``prefix``."""
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def _netns_inode(ns: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / ns).st_ino
    except OSError:
        return None


def namespace_pids(namespaces: Iterable[str]) -> dict[str, list[int]]:
    """PIDs of every process inside each namespace (like ``ip netns pids``, one /proc scan)."""
    inodes = {}
    for ns in namespaces:
        ino = _netns_inode(ns)
        if ino is not None:
            inodes[ino] = ns
    out: dict[str, list[int]] = {ns: [] for ns in inodes.values()}
    if not inodes:
        return out
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        owner = inodes.get(ino)
        if owner is not None:
            out[owner].append(int(entry))
    return out


def kill_pids(pids: Iterable[int], grace: float = 0.5) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left."""
    pids = [p for p in pids if p > 1]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if _alive(p)]
        if left:
            time.sleep(0.01)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 2.0  # SIGKILL is not instant: return once they are gone
    while left and time.monotonic() < deadline:
        left = [p for p in left if _alive(p)]
        if left:
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is as good as gone; reap it if it is our child
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ------------------------------------------------------------------ build / destroy

def _parallel(jobs: list, fn) -> None:
    if not jobs:
        return
    errors: list[BaseException] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        for fut in [pool.submit(fn, *j) for j in jobs]:
            try:
                fut.result()
            except BaseException as exc:  # noqa: BLE001 - collected, first one re-raised
                errors.append(exc)
    if errors:
        raise errors[0]


def build(plan: Plan) -> None:
    """Create every namespace, link, address, route, sysctl and ruleset of ``plan``.

    On failure the caller tears down (``destroy(plan.namespaces)``); this
    function raises :class:`LabError` with the failing command's output.
    """
    existing = set(list_namespaces())
    clash = [ns for ns in plan.namespaces if ns in existing]
    if clash:
        raise LabError(f"namespaces already exist: {', '.join(clash)}", step="netns", hint="natkit lab down --all removes leftovers, or pick another lab name")
    # 1. namespaces (one ip process)
    _run(["ip", "-batch", "-"], input="".join(f"netns add {ns}\n" for ns in plan.namespaces), step="netns add")
    # 2. bridges and veth pairs, one batch per namespace that creates them
    batches: dict[str, list[str]] = {}
    for node in plan.nodes:
        for br in node.bridges:
            batches.setdefault(node.ns, []).append(f"link add {br} type bridge")
    for v in plan.veths:
        lines = batches.setdefault(v.a_ns, [])
        lines.append(f"link add {v.a_if} type veth peer name {v.b_if} netns {v.b_ns}")
        if v.a_master:
            lines.append(f"link set {v.a_if} master {v.a_master}")
        lines.append(f"link set {v.a_if} up")
    _parallel([(ns, lines) for ns, lines in batches.items()],
              lambda ns, lines: _run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", step=f"links in {ns}"))

    # 3. inside each namespace: rules, sysctls, addresses, routes
    def configure(node) -> None:
        lines = ["link set lo up"]
        for br in node.bridges:
            lines.append(f"link set {br} up")
        devs = list(dict.fromkeys(d for d, _ in node.addresses))
        for dev, cidr in node.addresses:
            lines.append(f"address add {cidr} dev {dev}")
        for dev in devs:
            if dev not in node.bridges:
                lines.append(f"link set {dev} up")
        for r in node.routes:
            lines.append(f"route add {r}")
        script = []
        if node.nft:
            script.append("nft -f - <<'NATKIT_EOF'\n" + node.nft + "NATKIT_EOF")
        if node.sysctls:
            script.append("sysctl -q -w " + " ".join(f"{k}={v}" for k, v in node.sysctls) + " >/dev/null")
        script.append("ip -batch - <<'NATKIT_EOF'\n" + "\n".join(lines) + "\nNATKIT_EOF")
        _run(["ip", "netns", "exec", node.ns, "sh", "-ec", "\n".join(script)], step=f"configure {node.name}")

    _parallel([(n,) for n in plan.nodes], configure)


def destroy(namespaces: Iterable[str], *, extra_pids: Iterable[int] = ()) -> list[str]:
    """Stop every process inside ``namespaces`` (and ``extra_pids``), then delete them.

    Deleting a namespace does not stop its processes, so they are found by a
    /proc scan and signalled first. Returns the namespaces that were deleted.
    Never raises for namespaces that are already gone.
    """
    namespaces = [ns for ns in namespaces if ns.startswith(NS_PREFIX)]
    pids = set(extra_pids)
    for _ in range(5):  # a process may fork while its siblings are stopped (a browser's helpers): scan again
        for found in namespace_pids(namespaces).values():
            pids.update(found)
        if not pids:
            break
        kill_pids(pids)
        pids = set()
    present = [ns for ns in namespaces if (NETNS_DIR / ns).exists()]
    if present:
        try:
            subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in present),
                           capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return present


def lab_of_namespace(ns: str) -> str | None:
    """``natkit-<lab>-<node>`` -> ``<lab>``."""
    parts = ns.split("-", 2)
    if len(parts) == 3 and parts[0] == NS_PREFIX:
        return parts[1]
    return None


def down_all(*, force: bool = False, only_labs: Iterable[str] | None = None) -> dict:
    """Remove leftover labs: every ``natkit*`` namespace (with its processes)
    and every registered lab whose owner process is gone.

    Labs whose owner (a running ``natkit lab matrix`` or test session) is
    alive are kept unless ``force``; labs left up by ``natkit lab up`` have no
    owner and are removed. ``only_labs`` limits the sweep to those lab names
    (tests use it so as not to touch other labs on the machine). Returns ``{"removed": [...namespaces],
    "labs": [...], "kept": [...labs in use]}``.
    """
    namespaces = list_namespaces()
    labs = set(registered_labs()) | {lab for lab in map(lab_of_namespace, namespaces) if lab}
    if only_labs is not None:
        only = set(only_labs)
        labs &= only
        namespaces = [ns for ns in namespaces if lab_of_namespace(ns) in only]
    kept: list[str] = []
    chosen_labs: list[str] = []
    for lab in sorted(labs):
        state = read_state(lab)
        if state and owner_alive(state) and not force:
            kept.append(lab)
        else:
            chosen_labs.append(lab)
    chosen = [ns for ns in namespaces if lab_of_namespace(ns) not in kept]
    extra = []
    for lab in chosen_labs:
        state = read_state(lab) or {}
        extra += [int(p) for p in state.get("pids", {}).values() if isinstance(p, int) and _is_natkit_process(p, state)]
    removed = destroy(chosen, extra_pids=extra)
    for lab in chosen_labs:
        remove_state(lab)
    return {"removed": removed, "labs": chosen_labs, "kept": kept}


def _is_natkit_process(pid: int, state: dict) -> bool:
    # a recorded PID is only signalled when it still runs inside a lab namespace
    try:
        ino = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return False
    return any(_netns_inode(ns) == ino for ns in state.get("namespaces", []))


def down(lab: str) -> list[str]:
    """Remove one lab by name (namespaces, processes, state). Raises
    :class:`UsageError` when nothing of that name exists."""
    state = read_state(lab) or {}
    namespaces = sorted(set(state.get("namespaces", [])) | {ns for ns in list_namespaces() if lab_of_namespace(ns) == lab})
    if not namespaces and not state:
        raise UsageError(f"no lab named {lab!r}", hint="natkit lab down --all removes every leftover")
    removed = destroy(namespaces)
    remove_state(lab)
    return removed


# ------------------------------------------------------------------ running things inside

def installation_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``natkit``, ``python`` and ``python3`` resolved to the running
    installation (this interpreter and the ``natkit`` script beside it), so a
    command run in a lab namespace uses the same natkit whatever PATH says."""
    import sys

    argv = list(argv)
    if not argv:
        return argv
    if argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    if argv[0] == "natkit":
        script = Path(sys.executable).parent / "natkit"
        if os.access(script, os.X_OK):
            return [str(script), *argv[1:]]
        return [sys.executable, "-m", "natkit.cli.app", *argv[1:]]
    return argv


def installation_env(env: dict | None = None) -> dict:
    """A copy of ``env`` (default: this process's) with this interpreter's
    ``bin`` directory first on PATH, so ``sh -c 'natkit …'`` finds it too."""
    import sys

    env = dict(os.environ if env is None else env)
    bindir = str(Path(sys.executable).parent)
    path = env.get("PATH") or os.defpath
    if bindir not in path.split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + path
    return env


def netns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """``ip netns exec NS argv...`` (the process keeps its PID: ip execs into it).

    ``natkit`` and ``python`` in ``argv[0]`` mean the running installation
    (:func:`installation_argv`).
    """
    if not ns.startswith(NS_PREFIX):
        raise UsageError(f"refusing to run in namespace {ns!r}: not a natkit lab namespace")
    return ["ip", "netns", "exec", ns, *installation_argv(argv)]


def run_in(ns: str, argv: Sequence[str], *, timeout: float = 30.0, check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` inside ``ns`` and capture its output."""
    proc = subprocess.run(netns_argv(ns, argv), capture_output=True, text=True, timeout=timeout, input=input,
                          env=installation_env())
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed in {ns} (exit {proc.returncode})",
                       details=(proc.stderr or proc.stdout).strip().splitlines()[:20])
    return proc
