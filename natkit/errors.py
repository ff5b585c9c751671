"""The one error tree of natkit.

Every error natkit raises derives from :class:`NatkitError`. Each class carries
the process exit code the CLI uses for it, so the mapping from failure to exit
code lives here and nowhere else:

====  =====================================================================
code  meaning
====  =====================================================================
0     success: the check passed / the command did what it was asked
1     a check ran and failed (echo mismatch, non-relay pair, ...)
2     usage: bad command line or malformed input (URI, port, TTL, ...)
3     environment: no coturn binary, no Docker engine, a local server that
      would not start, missing privileges
4     server unreachable: unknown host, connection refused, STUN timeout
5     authentication refused by the TURN server (401, 441)
6     allocation refused by the TURN server (486 quota, 508 capacity, ...)
7     relay candidates gathered, but ICE found no working pair
70    internal error: a bug in natkit, or an aioice/aiortc internal natkit
      relies on is missing or changed (never a verdict about the server
      checked; ``--debug`` shows the traceback)
130   interrupted (Ctrl-C, SIGTERM or SIGHUP); what natkit started is stopped
141   stdout closed early (``natkit ... | head -1``): stopped quietly, as for SIGPIPE
====  =====================================================================

Every feature's errors are defined here too (signaling, peer, lab), so the
exit code of each is visible in one file.

**One verdict policy.** A report does not raise for what it found; it lists
:class:`Failure` values (``kind``, ``step``, ``message``), and its
``exit_code`` is :func:`exit_code_for` of them: the code of the *most
severe* failure in :data:`SEVERITY` order. A failure that stopped a check
early hides what the check would have found, so it outranks the verdicts
after it: internal > usage > environment > unreachable > authentication >
allocation > connectivity > a failed assertion. Two URIs of which one gets a
401 and one fails an echo therefore exit 5, a dead server exits 4 whatever
else failed, and 1 means only "everything was checked, an assertion failed".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_UNREACHABLE = 4
EXIT_AUTH_REFUSED = 5
EXIT_ALLOCATION_REFUSED = 6
EXIT_NO_CONNECTIVITY = 7
EXIT_INTERNAL = 70  # sysexits EX_SOFTWARE: never confused with a verdict about a server
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

# exit codes, most severe first (see the module docstring)
SEVERITY: tuple[int, ...] = (
    EXIT_INTERRUPTED, EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_USAGE, EXIT_ENVIRONMENT, EXIT_UNREACHABLE, EXIT_AUTH_REFUSED,
    EXIT_ALLOCATION_REFUSED, EXIT_NO_CONNECTIVITY, EXIT_CHECK_FAILED, EXIT_OK,
)

# error kind -> exit code, filled in by every NatkitError subclass (see NatkitError.__init_subclass__)
_EXIT_BY_KIND: dict[str, int] = {}


class NatkitError(Exception):
    """Base of every natkit error.

    ``message`` says what failed; ``server`` and ``step`` say where;
    ``hint`` says what to try. ``details`` holds extra lines (for example a
    server's last log lines) that the CLI prints under the one-line error.
    """

    exit_code = EXIT_CHECK_FAILED
    kind = "error"

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        known = _EXIT_BY_KIND.get(cls.kind)
        if known is not None and known != cls.exit_code:
            raise TypeError(f"error kind {cls.kind!r} already has exit code {known}")
        _EXIT_BY_KIND[cls.kind] = cls.exit_code

    def __init__(
        self,
        message: str,
        *,
        server: str | None = None,
        step: str | None = None,
        hint: str | None = None,
        details: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.server = server
        self.step = step
        self.hint = hint
        self.details = list(details or [])

    def one_line(self) -> str:
        """Return the error as one line: ``[step] server: message (hint)``."""
        parts = []
        if self.step:
            parts.append(f"{self.step}:")
        if self.server:
            parts.append(f"{self.server}:")
        parts.append(self.message)
        line = " ".join(parts)
        if self.hint:
            line += f" ({self.hint})"
        return line

    def __str__(self) -> str:
        """:meth:`one_line`, then each of ``details`` on its own ``  | `` line.

        What a traceback or a failing test shows: the cause (a server's log, a
        program's stderr) is usually in ``details``, the way out in ``hint``.
        """
        return self.one_line() + "".join(f"\n  | {line}" for line in self.details)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "exit_code": self.exit_code,
            "message": self.message,
            "server": self.server,
            "step": self.step,
            "hint": self.hint,
            "details": self.details,
        }


_EXIT_BY_KIND[NatkitError.kind] = NatkitError.exit_code


_RANK = {code: float(i) for i, code in enumerate(SEVERITY)}


def most_severe(codes: Iterable[int]) -> int:
    """The most severe of ``codes`` in :data:`SEVERITY` order (0 for none).

    A code outside the table ranks just above :data:`EXIT_CHECK_FAILED`:
    still a failure, never mistaken for success.
    """
    return min(codes, key=lambda c: _RANK.get(c, _RANK[EXIT_CHECK_FAILED] - 0.5), default=EXIT_OK)


def exit_code_of(kind: str) -> int:
    """The exit code of an error ``kind`` (``NatkitError.kind``). Raises :class:`ValueError` for an unknown kind."""
    try:
        return _EXIT_BY_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown failure kind {kind!r}") from None


@dataclasses.dataclass(frozen=True)
class Failure:
    """One thing that did not hold, in a report (the structured form of a failed assertion or error).

    ``kind`` is an error kind of this module (``"check_failed"`` for a failed
    assertion, ``"auth_refused"``, ``"unreachable"``, ...); ``step`` says where
    (``"echo"``, ``"bulk"``, ``"selected_pair"``, ``"stun"``, ``"allocate"``,
    ...); ``server`` which server when a report covers several.
    ``exit_code`` follows from ``kind``.
    """

    kind: str
    step: str | None
    message: str
    server: str | None = None
    exit_code: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exit_code", exit_code_of(self.kind))

    @classmethod
    def check(cls, step: str, message: str, server: str | None = None) -> Failure:
        """A failed assertion (exit 1)."""
        return cls(CheckFailed.kind, step, message, server)

    @classmethod
    def from_error(cls, exc: NatkitError, server: str | None = None) -> Failure:
        """The failure an error stands for (same kind, step and exit code; message with its hint)."""
        message = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return cls(exc.kind, exc.step, message, server or exc.server)

    def one_line(self) -> str:
        """``step: server: message``, like :meth:`NatkitError.one_line`."""
        return " ".join([*(f"{p}:" for p in (self.step, self.server) if p), self.message])


def exit_code_for(failures: Iterable[Failure]) -> int:
    """The exit code of a report: 0 without failures, else the most severe failure's code."""
    return most_severe(f.exit_code for f in failures)


class CheckFailed(NatkitError):
    """A check ran to the end and its verdict is negative."""

    kind = "check_failed"


class StunErrorResponse(CheckFailed):
    """A server answered a STUN request with an error response (ERROR-CODE, RFC 8489 §14.8) where success was expected."""

    kind = "error_response"


class NoMappedAddress(CheckFailed):
    """A Binding success response without XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS): RFC 8489 §14.2 requires it."""

    kind = "no_mapped_address"


class InternalError(NatkitError):
    """natkit itself failed (a bug): never a verdict about the server checked."""

    exit_code = EXIT_INTERNAL
    kind = "internal"


class IncompatibleDependency(InternalError):
    """An aioice/aiortc internal that natkit reads or patches is missing or has changed.

    natkit pins the aioice and aiortc versions it is tested with
    (``pyproject.toml``); this error means another version is installed.
    """

    kind = "incompatible_dependency"


class Interrupted(NatkitError):
    """Ctrl-C, SIGTERM or SIGHUP: whatever natkit started has been stopped."""

    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"


class UsageError(NatkitError):
    """Bad input from the user: malformed URI, out-of-range option, ..."""

    exit_code = EXIT_USAGE
    kind = "usage"


class InvalidURI(UsageError):
    """A STUN/TURN server URI that does not parse (RFC 7064, RFC 7065)."""

    kind = "invalid_uri"


class EnvironmentProblem(NatkitError):
    """Something missing or broken on this machine, not on the remote server."""

    exit_code = EXIT_ENVIRONMENT
    kind = "environment"


class BackendUnavailable(EnvironmentProblem):
    """The requested coturn backend (docker or native) cannot be used here."""

    kind = "backend_unavailable"


class ServerStartFailed(EnvironmentProblem):
    """A coturn managed by natkit did not become ready; ``details`` has its log."""

    kind = "server_start_failed"


class UdpBlocked(EnvironmentProblem):
    """No UDP answer from any server while other evidence says they are up: this network blocks UDP."""

    kind = "udp_blocked"


class NoUsableServer(EnvironmentProblem):
    """No server given can answer RFC 5780's tests (OTHER-ADDRESS, CHANGE-REQUEST)."""

    kind = "no_usable_server"


class LocalBindFailed(EnvironmentProblem):
    """A local socket could not be bound (address not on this host, port in use, no permission)."""

    kind = "bind_failed"


class NotRunning(EnvironmentProblem):
    """No natkit-managed server matches the request."""

    kind = "not_running"


class ServerUnreachable(NatkitError):
    """The server cannot be reached: DNS, refused connection, or no answer."""

    exit_code = EXIT_UNREACHABLE
    kind = "unreachable"


class HostNotFound(ServerUnreachable):
    """The server's host name does not resolve."""

    kind = "host_not_found"


class StunTimeout(ServerUnreachable):
    """No STUN response within the time budget (RFC 8489 §6.2.1 schedule).

    ``limit`` names the limit that fired: ``"rc"`` (Rc sends and the final
    Rm x RTO wait exhausted), ``"ti"`` (the reliable-transport timeout Ti),
    ``"budget"`` (the caller's total time budget), or None when unknown.
    """

    kind = "timeout"

    def __init__(self, message: str, *, limit: str | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.limit = limit

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["limit"] = self.limit
        return d


class TurnError(NatkitError):
    """A TURN request was answered with an error response (RFC 8656 §18).

    ``error_code`` is the STUN ERROR-CODE number, ``reason`` its phrase.
    """

    def __init__(self, message: str, *, error_code: int | None = None, reason: str | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.error_code = error_code
        self.reason = reason

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["error_code"] = self.error_code
        d["reason"] = self.reason
        return d


class AuthenticationRefused(TurnError):
    """401 Unauthorized or 441 Wrong Credentials (RFC 8489 §14.8, RFC 8656 §18)."""

    exit_code = EXIT_AUTH_REFUSED
    kind = "auth_refused"


class AllocationRefused(TurnError):
    """Allocate refused: 486 Allocation Quota Reached, 508 Insufficient Capacity, ..."""

    exit_code = EXIT_ALLOCATION_REFUSED
    kind = "allocation_refused"


class MalformedMessage(NatkitError, ValueError):
    """A STUN/TURN message, ChannelData message or stream frame that does not parse.

    Raised by :mod:`natkit.stun.codec` and :mod:`natkit.stun.framing` on
    bytes from the network, and only there. ``attribute`` names the
    attribute at fault (its RFC name, ``0xHHHH`` for an unknown type, None for
    the header), ``offset`` its byte offset in the message, ``source`` who sent
    it (set by the drivers: "malformed response from 127.0.0.1:3478: ...").
    It is also a ``ValueError``, so callers written for other codecs keep
    working. Receive paths never let it escape into the event loop: they count
    it and report it on the transaction it answered.
    """

    kind = "malformed_response"

    def __init__(self, detail: str, *, attribute: str | None = None, offset: int | None = None,
                 source: str | None = None, **kw) -> None:
        where = " ".join(p for p in (attribute, f"at byte {offset}" if offset is not None else None) if p)
        text = f"{where}: {detail}" if where else detail
        if source:
            text = f"malformed response from {source}: {text}"
            kw.setdefault("server", source)
        super().__init__(text, **kw)
        self.detail = detail
        self.attribute = attribute
        self.offset = offset
        self.source = source

    def from_source(self, source: str, **kw) -> MalformedMessage:
        """A copy naming who sent the message (the original is left as it was)."""
        return MalformedMessage(self.detail, attribute=self.attribute, offset=self.offset, source=source, **kw)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(attribute=self.attribute, offset=self.offset, source=self.source)
        return d


class NoRelayConnectivity(CheckFailed):
    """Relay candidates were gathered but ICE found no working candidate pair."""

    exit_code = EXIT_NO_CONNECTIVITY
    kind = "no_connectivity"


# ---- signaling (natkit signal serve / natkit peer)


class SignalingError(NatkitError):
    """The signaling server answered with an error (``code`` is the protocol error code)."""

    kind = "signaling"

    def __init__(self, message: str, *, code: str | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.code = code

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["code"] = self.code
        return d


class ProtocolError(SignalingError, ValueError):
    """A signaling message that breaks the protocol (:mod:`natkit.signaling.protocol`).

    ``code`` is the protocol error code sent back (``bad-json``,
    ``bad-field``, ...), ``ref`` the type of the offending message if known.
    Malformed input: exit 2.
    """

    exit_code = EXIT_USAGE
    kind = "signaling_protocol"
    code: str  # always set: the code the server sends back

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message, code=code, step="signaling")
        self.ref = ref

    def to_message(self) -> dict:
        """The protocol's ``error`` message sent back: ``{"type": "error", "code", "message", "ref"}``."""
        return {"type": "error", "code": self.code, "message": self.message, "ref": self.ref}

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["ref"] = self.ref
        return d


class SignalingUnreachable(ServerUnreachable):
    """The signaling server cannot be reached, or closed the connection."""

    kind = "signaling_unreachable"


class SignalingAuthRefused(SignalingError):
    """The signaling server refused the token (``bad-token``)."""

    exit_code = EXIT_AUTH_REFUSED
    kind = "signaling_auth_refused"


class RoomFull(SignalingError):
    """The room already holds its maximum number of peers (``room-full``)."""

    exit_code = EXIT_ALLOCATION_REFUSED
    kind = "room_full"


class NoPeer(CheckFailed):
    """Nobody joined the room (or offered) within the wait."""

    kind = "no_peer"


# ---- network-scenario lab


class LabError(EnvironmentProblem):
    """Building, verifying or running a lab failed (``details`` has command output)."""

    kind = "lab"


class LabVerificationFailed(LabError):
    """A NAT box does not behave as its spec declares (``details`` lists how)."""

    kind = "lab_verification_failed"


class LabAgentError(NatkitError):
    """An agent in a lab namespace failed or stopped answering."""

    kind = "lab_agent"
