"""What coturn's own log says about a load test: pure parsing of its lines.

coturn 4.6 logs at start::

    Max number of open files/sockets allowed for this process: 20000
    max supported number of TURN Sessions possible is: 10000 (approximately)

and, with ``-v``/``verbose``, at the end of every session::

    session 001000000000000001: usage: realm=<r>, username=<u>, rp=14, rb=1392, sp=14, sb=1412
    session 001000000000000001: peer usage: realm=<r>, username=<u>, rp=10, rb=1000, sp=10, sb=1000
    session 001000000000000001: closed (2nd stage), user <u> realm <r> origin <>, local 127.0.0.1:3478, remote 127.0.0.1:50583, reason: ...

``usage`` counts what the session exchanged with the client (rp/rb:
packets/bytes received from the client, sp/sb: sent to it), ``peer usage``
what it exchanged with peers (rp: received from peers, sp: sent to peers).
:func:`sessions` joins the lines of one session id; :func:`startup_facts`
reads the limits.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

_SESSION = re.compile(r"session (\d+): (.*)$")
_USAGE = re.compile(r"^(peer )?usage: realm=<[^>]*>, username=<([^>]*)>, rp=(\d+), rb=(\d+), sp=(\d+), sb=(\d+)")
_REMOTE = re.compile(r"closed .*remote (\S+?), reason: (.*)$")
_FD_LIMIT = re.compile(r"Max number of open files/sockets allowed for this process: (\d+)")
_MAX_SESSIONS = re.compile(r"max supported number of TURN Sessions possible is: (\d+)")


@dataclasses.dataclass
class SessionUsage:
    """One coturn session's counters (None: that line was not logged)."""

    session_id: str
    username: str | None = None
    client_rp: int | None = None  # packets received from the client
    client_sp: int | None = None  # packets sent to the client
    peer_rp: int | None = None  # packets received from peers
    peer_sp: int | None = None  # packets sent to peers
    remote: str | None = None  # the client's transport address ("127.0.0.1:50583")
    close_reason: str | None = None


def sessions(lines: Iterable[str]) -> dict[str, SessionUsage]:
    """Every session id with usage or close lines, in order of appearance."""
    out: dict[str, SessionUsage] = {}
    for line in lines:
        m = _SESSION.search(line)
        if not m:
            continue
        sid, rest = m.groups()
        u = _USAGE.match(rest)
        c = _REMOTE.search(rest) if u is None else None
        if u is None and c is None:
            continue
        entry = out.setdefault(sid, SessionUsage(sid))
        if u is not None:
            peer, user, rp, _rb, sp, _sb = u.groups()
            entry.username = user
            if peer:
                entry.peer_rp, entry.peer_sp = int(rp), int(sp)
            else:
                entry.client_rp, entry.client_sp = int(rp), int(sp)
        elif c is not None:
            entry.remote, entry.close_reason = c.group(1), c.group(2)
    return out


@dataclasses.dataclass(frozen=True)
class StartupFacts:
    """Limits coturn announced at start (None: not in the log)."""

    fd_limit: int | None = None  # open files/sockets allowed for the process
    max_sessions: int | None = None  # coturn's own estimate from the fd limit


def startup_facts(lines: Iterable[str]) -> StartupFacts:
    fd = sessions_max = None
    for line in lines:
        if fd is None and (m := _FD_LIMIT.search(line)):
            fd = int(m.group(1))
        elif sessions_max is None and (m := _MAX_SESSIONS.search(line)):
            sessions_max = int(m.group(1))
        if fd is not None and sessions_max is not None:
            break
    return StartupFacts(fd, sessions_max)
