"""What labs exist on this machine, which one a command means, and what a built lab looks like.

Used by ``natkit lab up|down|list|exec``; the CLI only renders these values.

- :func:`labs` lists every lab (registered or only seen as namespaces) with
  its :class:`LabEntry` ``owner`` state: ``persistent`` (left up by ``lab up``),
  ``building`` (its builder still runs), ``running`` (owned by a live process,
  a test run or ``lab matrix``) or ``leftover`` (owner gone, build unfinished,
  or no state at all).
- :func:`default_lab` picks the one lab ``lab down`` means without a name.
- :func:`namespace_for` picks the namespace ``lab exec HOST`` means.
- :func:`summary` turns a :class:`~natkit.lab.lab.NatLab` that is up into a
  :class:`LabSummary` (the REST secret masked).
"""

from __future__ import annotations

import dataclasses

from ..errors import UsageError
from . import netns


@dataclasses.dataclass(frozen=True)
class LabEntry:
    """One lab on this machine (``natkit lab list``)."""

    lab: str
    namespaces: tuple[str, ...]
    hosts: tuple[str, ...]
    owner: str  # persistent | building | running | leftover
    owner_pid: int | None

    @property
    def owner_text(self) -> str:
        return {
            "persistent": "persistent (lab up)",
            "building": f"pid {self.owner_pid} (building)",
            "running": f"pid {self.owner_pid} (running)",
        }.get(self.owner, f"pid {self.owner_pid} (gone: leftover)" if self.owner_pid else "unknown: leftover")


def _owner(state: dict | None) -> tuple[str, int | None]:
    if not state:
        return "leftover", None
    pid = state.get("owner_pid")
    alive = netns.owner_alive(state)
    if state.get("persistent"):
        if state.get("complete", "complete" not in state):  # states written before "complete" existed: built
            return "persistent", None
        return ("building" if alive else "leftover"), pid
    return ("running" if alive else "leftover"), pid


def labs() -> list[LabEntry]:
    """Every lab: registered ones and those only seen as ``natkit-LAB-*`` namespaces."""
    namespaces = netns.list_namespaces()
    names = set(netns.registered_labs()) | {lab for lab in map(netns.lab_of_namespace, namespaces) if lab}
    out = []
    for lab in sorted(names):
        state = netns.read_state(lab)
        owner, pid = _owner(state)
        out.append(LabEntry(lab, tuple(ns for ns in namespaces if netns.lab_of_namespace(ns) == lab),
                            tuple(sorted((state or {}).get("hosts", {}))), owner, pid))
    return out


def default_lab() -> str:
    """The lab ``natkit lab down`` removes without a name: the only one left up by ``lab up``.

    Raises :class:`UsageError` when there is none or several.
    """
    persistent = [e.lab for e in labs() if e.owner == "persistent"]
    if not persistent:
        raise UsageError("no lab left up by natkit lab up", hint="natkit lab list shows every lab; --all removes leftovers")
    if len(persistent) > 1:
        raise UsageError(f"several labs are up: {', '.join(persistent)}", hint="name one, or use --all")
    return persistent[0]


def namespace_for(host: str, lab: str | None = None) -> str:
    """The namespace of ``host`` (a host, NAT box, ``server`` or ``internet``): in ``lab``, or in the only lab that has it.

    Raises :class:`UsageError` when no lab or several labs have it.
    """
    from .spec import namespace_name

    present = set(netns.list_namespaces())
    if lab is not None:
        candidates = [lab]
    else:
        candidates = sorted({lab_name for ns in present if ns.endswith(f"-{host}")
                             for lab_name in [netns.lab_of_namespace(ns)] if lab_name})
    found = [namespace_name(c, host) for c in candidates if namespace_name(c, host) in present]
    if not found:
        raise UsageError(f"no lab namespace for {host!r}" + (f" in lab {lab!r}" if lab else ""), hint="natkit lab list shows the labs")
    if len(found) > 1:
        raise UsageError(f"{host!r} exists in several labs: {', '.join(candidates)}", hint="pick one with --lab")
    return found[0]


@dataclasses.dataclass(frozen=True)
class HostSummary:
    """One host of a lab that is up: where it lives and what its NAT measured."""

    namespace: str
    address: str
    behind: tuple[str, ...]  # NAT boxes between the host and the internet, nearest first
    declared: str  # behaviour the spec declares
    measured: str | None  # what natkit nat measured (None: not verified)
    public: str | None  # the host's mapped address as the lab's STUN server saw it


@dataclasses.dataclass(frozen=True)
class NatSummary:
    namespace: str
    wan: str
    behaviour: str
    behind: str | None


@dataclasses.dataclass(frozen=True)
class ServerSummary:
    namespace: str
    addresses: tuple[str, ...]
    stun: str
    turn: str | None
    secret: str | None  # "***" when the lab runs coturn (the secret itself is in the lab's 0600 state file)
    state_file: str


@dataclasses.dataclass(frozen=True)
class LabSummary:
    """A lab that is up (``natkit lab up``; ``--json`` prints exactly this)."""

    ok: bool
    lab: str
    namespaces: tuple[str, ...]
    hosts: dict[str, HostSummary]
    nats: dict[str, NatSummary]
    server: ServerSummary
    checks: tuple
    timings: dict[str, float]


def summary(lab) -> LabSummary:
    """The :class:`LabSummary` of a :class:`~natkit.lab.lab.NatLab` that is up."""
    hosts = {}
    for h in lab.hosts:
        check = next((c for c in lab.checks if c.host == h), None)
        hosts[h] = HostSummary(
            namespace=lab.ns(h), address=lab.ip(h), behind=tuple(n.name for n in lab.spec.chain(h)),
            declared=lab.spec.behaviour_of(h), measured=check.measured_label if check else None,
            public=check.measured.get("public") if check else None,
        )
    nats = {n.name: NatSummary(lab.ns(n.name), lab.ip(n.name), n.behaviour, n.behind) for n in lab.spec.nats}
    server = ServerSummary(
        namespace=lab.ns("server"), addresses=tuple(lab.server_ips), stun=lab.stun_uri,
        turn=lab.turn_uri() if lab.turn else None, secret="***" if lab.turn and lab.secret else None,
        state_file=str(lab.dir / "state.json"),
    )
    return LabSummary(True, lab.name, tuple(lab.plan.namespaces), hosts, nats, server, tuple(lab.checks), dict(lab.timings))
