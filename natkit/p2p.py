"""What NAT behaviours mean for peer-to-peer connections: the expected-outcome matrix.

One vocabulary: the five behaviours the lab builds are pairs of
:class:`natkit.nat_classify.Mapping` and :class:`natkit.nat_classify.Filtering`
(RFC 4787 §4.1, §5), the words ``natkit nat`` measures. One matrix: the ICE
(RFC 8445) outcome between two peers behind two behaviours that both gather
host and server-reflexive candidates (and relay candidates with TURN), as
libwebrtc's P2P transport channel tests assert it (``P2PTransportChannelTest``,
its ``kMatrix``). :func:`expected_outcome` (the lab, the pytest marker) and
:func:`p2p_line` (``natkit nat``'s verdict) both read :data:`MATRIX`;
docs/lab.md explains it. Pure: no I/O.
"""

from __future__ import annotations

from .nat_classify import Filtering, Mapping

OPEN = "open"
FULL_CONE = "full_cone"
RESTRICTED = "restricted"
PORT_RESTRICTED = "port_restricted"
SYMMETRIC = "symmetric"

#: behaviour -> (mapping, filtering, classic RFC 3489 label)
BEHAVIOURS: dict[str, tuple[Mapping, Filtering, str]] = {
    OPEN: (Mapping.NONE, Filtering.NONE, "open (no NAT)"),
    FULL_CONE: (Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT, "full cone"),
    RESTRICTED: (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, "restricted cone"),
    PORT_RESTRICTED: (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, "port-restricted cone"),
    SYMMETRIC: (Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, "symmetric"),
}
#: the order rows and columns of the matrix use
MATRIX_BEHAVIOURS: tuple[str, ...] = (OPEN, FULL_CONE, RESTRICTED, PORT_RESTRICTED, SYMMETRIC)

DIRECT = "direct"  # any direct pair (host or server-reflexive candidates)
DIRECT_PRFLX = "direct (prflx)"  # direct, through a peer-reflexive candidate (RFC 8445 §7.3.1.3)
RELAY = "relay"  # only a TURN relay connects them; with STUN only: failed
FAILED = "failed"

#: The expected outcome with STUN + TURN, upper triangle in MATRIX_BEHAVIOURS order
#: (the matrix is symmetric). Written here once.
MATRIX: dict[tuple[str, str], str] = {
    (OPEN, OPEN): DIRECT, (OPEN, FULL_CONE): DIRECT, (OPEN, RESTRICTED): DIRECT,
    (OPEN, PORT_RESTRICTED): DIRECT, (OPEN, SYMMETRIC): DIRECT_PRFLX,
    (FULL_CONE, FULL_CONE): DIRECT, (FULL_CONE, RESTRICTED): DIRECT, (FULL_CONE, PORT_RESTRICTED): DIRECT,
    (FULL_CONE, SYMMETRIC): DIRECT_PRFLX,
    (RESTRICTED, RESTRICTED): DIRECT, (RESTRICTED, PORT_RESTRICTED): DIRECT, (RESTRICTED, SYMMETRIC): DIRECT_PRFLX,
    (PORT_RESTRICTED, PORT_RESTRICTED): DIRECT, (PORT_RESTRICTED, SYMMETRIC): RELAY,
    (SYMMETRIC, SYMMETRIC): RELAY,
}

_PEER_LABEL = {OPEN: "open", FULL_CONE: "full-cone", RESTRICTED: "restricted-cone",
               PORT_RESTRICTED: "port-restricted", SYMMETRIC: "symmetric"}


def expected_outcome(a: str, b: str, *, turn: bool) -> str:
    """The expected outcome between behaviours ``a`` and ``b`` (keys of :data:`BEHAVIOURS`):
    ``"direct"``, ``"direct (prflx)"``, ``"relay"``, or with STUN only (``turn=False``)
    ``"failed"`` where a relay would be needed. Raises KeyError for other names."""
    i, j = MATRIX_BEHAVIOURS.index(a), MATRIX_BEHAVIOURS.index(b)
    outcome = MATRIX[(a, b) if i <= j else (b, a)]
    return FAILED if outcome == RELAY and not turn else outcome


def behaviour_of(mapping: Mapping | str | None, filtering: Filtering | str | None) -> str | None:
    """The behaviour whose mapping and filtering these are, None when none of the five is."""
    for key, (m, f, _) in BEHAVIOURS.items():
        if (m, f) == (mapping, filtering):
            return key
    return None


def _ice_behaviour(mapping: Mapping, filtering: Filtering) -> str | None:
    """The matrix row a measured (mapping, filtering) behaves like in ICE: any
    destination-dependent mapping is symmetric (RFC 3489's word for it), a
    filtering firewall without NAT is the cone with the same filtering."""
    if mapping in (Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT):
        return SYMMETRIC
    if mapping is Mapping.NONE and filtering is not Filtering.NONE:
        mapping = Mapping.ENDPOINT_INDEPENDENT
    elif mapping is Mapping.ENDPOINT_INDEPENDENT and filtering is Filtering.NONE:
        filtering = Filtering.ENDPOINT_INDEPENDENT  # a NAT that filters nothing
    return behaviour_of(mapping, filtering)


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def p2p_line(mapping: Mapping | None, candidates: frozenset[Mapping], filtering: Filtering | None, udp_blocked: bool) -> str:
    """One line on what a measured behaviour means for peer-to-peer (ICE, RFC 8445)
    connections, read from :data:`MATRIX`. ``candidates``: the mappings still possible
    when ``mapping`` is unknown."""
    if udp_blocked:
        return "no UDP at all: peer-to-peer needs TURN over TCP or TLS (turn:?transport=tcp, turns:)"
    if candidates and Mapping.ENDPOINT_INDEPENDENT not in candidates and mapping is not Mapping.NONE:
        mapping = Mapping.ADDRESS_AND_PORT_DEPENDENT  # ADM or APDM: the same row
    if mapping is None:
        return "behaviour unknown: keep a TURN server available"
    if filtering is None:
        if mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT or mapping is Mapping.ADDRESS_DEPENDENT:
            rows = [SYMMETRIC]
        else:  # a cone (or no NAT) whose filtering is unknown: every cone row is possible
            rows = [FULL_CONE, RESTRICTED, PORT_RESTRICTED]
    else:
        row = _ice_behaviour(mapping, filtering)
        rows = [row] if row else []
    if not rows:
        return "behaviour unknown: keep a TURN server available"
    outcomes = {peer: {expected_outcome(r, peer, turn=True) for r in rows} for peer in MATRIX_BEHAVIOURS}
    relay = [p for p, o in outcomes.items() if o == {RELAY}]
    unsure = [p for p, o in outcomes.items() if len(o) > 1]
    if unsure:
        return (f"direct connections likely with cone-NAT peers; against {_join([_PEER_LABEL[p] for p in unsure])} NATs "
                "it depends on the unknown filtering: keep TURN available")
    if not relay:
        if mapping is Mapping.NONE and filtering is Filtering.NONE:
            return "direct connections expected with every peer: nothing translates or filters"
        return "direct connections likely with every peer, symmetric NATs included"
    if len(relay) == 1:
        return f"direct connections likely, except with peers behind {_PEER_LABEL[relay[0]]} NATs: those need TURN"
    direct = [p for p in MATRIX_BEHAVIOURS if p not in relay]
    return (f"direct only with {_join([_PEER_LABEL[p] for p in direct])} peers; "
            f"needs TURN against {_join([_PEER_LABEL[p] for p in relay])} peers")
