"""What a load run does: :class:`LoadConfig`, the profiles and their traffic shapes. Pure.

Profiles (``natkit turn load URI --profile P``):

=========  ================================================================
``alloc``  allocations per second at a rising rate: Allocate (→ CreatePermission
           + ChannelBind with ``channel``) → Refresh LIFETIME 0, each on a
           fresh 5-tuple; steps until errors or latency break
``hold``   up to ``sessions`` concurrent allocations kept alive with Refresh
           (and a permission + channel each) for ``duration``; the ceiling
           reached and the server's reason (486, 508, timeouts)
``audio``  ``sessions`` calls of 50 packets/s x 200 B each way through the relay
``video``  ``sessions`` calls of 30 frames/s x 3 packets (90 packets/s) of
           1000-1200 B, sent as one burst per frame
``rate``   a fixed total rate of ``rate`` packets/s of ``size`` bytes
           spread over ``sessions`` allocations
=========  ================================================================
"""

from __future__ import annotations

import dataclasses
import math

from ..errors import UsageError
from ..model import TransportAddress
from . import packet

PROFILES = ("alloc", "hold", "audio", "video", "rate")
MEDIA_PROFILES = ("audio", "video", "rate")
PEERS = ("echo", "allocation")

HARD_MAX_PACKETS = 50_000_000  # no run sends more, whatever it is asked
HARD_MAX_TIME = 3600.0  # s: no run lasts longer
HARD_MAX_SESSIONS = 100_000


@dataclasses.dataclass(frozen=True)
class Traffic:
    """The packet pattern of one media session: ``packets_per_frame`` packets every
    ``frame_interval`` seconds, payloads of ``size_min``..``size_max`` bytes."""

    frame_interval: float
    packets_per_frame: int
    size_min: int
    size_max: int

    @property
    def pps(self) -> float:
        """Packets per second of one session, one way."""
        return self.packets_per_frame / self.frame_interval


AUDIO = Traffic(0.020, 1, 200, 200)  # 50 pps x 200 B (Opus 20 ms frames + RTP/SRTP headers)
VIDEO = Traffic(1 / 30, 3, 1000, 1200)  # 30 fps x 3 packets of ~1.1 kB: ~90 pps, ~800 kbit/s


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """One load run. Times in seconds, rates in packets (or allocations) per second, sizes in bytes.

    ``sessions``: concurrent calls (audio/video), allocations to hold (hold),
    allocations sharing the rate (rate), allocations in flight at most (alloc).
    ``rate``: total packets/s (rate), first step's allocations/s (alloc),
    allocations/s while opening (hold; None: as fast as answers come).
    ``ramp``: raise ``sessions`` step by step until loss exceeds ``max_loss`` %.
    ``peer``: "echo" (a UDP echo on this host reflects every packet) or
    "allocation" (a second allocation per session, as browsers do).
    Credentials: ``username``/``password``, or ``secret`` (TURN REST): then
    every allocation is a user of its own (``<user>-<n>``), as browsers of
    different people are, unless ``same_user``.
    """

    profile: str
    server: TransportAddress
    transport: str = "udp"  # udp, tcp or tls
    uri: str = ""
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    secret: str | None = dataclasses.field(default=None, repr=False)  # REST secret: every allocation gets its own user
    user: str = "natkit-load"  # the user part of minted REST usernames ("<expiry>:<user>-<n>")
    same_user: bool = False  # with a secret: one user for every allocation (to meet a per-user quota)
    sessions: int = 10
    duration: float = 10.0
    rate: float | None = None
    size: int = 200
    ramp: bool = False
    max_loss: float = 1.0  # percent
    max_latency_ms: float = 250.0  # alloc: p99 above this ends the rising rate
    peer: str = "echo"
    send_indications: bool = False
    channel: bool = True  # alloc: also CreatePermission + ChannelBind
    workers: int | None = None  # None: chosen from the offered load
    max_packets: int = 10_000_000
    max_time: float = 600.0
    timeout: float = 3.0  # per request, 401 challenge included
    lifetime: int | None = None  # hold: LIFETIME asked for
    refresh_interval: float = 60.0  # hold: seconds between Refreshes of one allocation
    step_duration: float = 3.0  # ramp / alloc: seconds per step
    ramp_factor: float = 1.5  # ramp / alloc: next step = previous x factor (then bisection)
    max_steps: int = 12
    echo_host: str = "127.0.0.1"
    local_host: str | None = None  # address the client sockets bind (None: the wildcard address)
    verify_tls: bool = True
    cafile: str | None = None
    server_hostname: str | None = None
    rcvbuf: int = 4 << 20
    server_pid: int | None = None  # a local server to measure (CPU, socket drops)
    server_log: str | None = None  # its log file (fd limit, usage lines)
    server_port_range: tuple[int, int] | None = None  # its relay port range, when known
    server_quotas: tuple[int | None, int | None] = (None, None)  # (user-quota, total-quota), when known

    def validate(self) -> None:
        """Raise :class:`UsageError` for a run that cannot be done or is not bounded."""
        if self.profile not in PROFILES:
            raise UsageError(f"unknown profile {self.profile!r}", hint="use " + ", ".join(PROFILES))
        if self.transport not in ("udp", "tcp", "tls"):
            raise UsageError(f"unknown transport {self.transport!r}", hint="use udp, tcp or tls")
        if self.peer not in PEERS:
            raise UsageError(f"unknown peer {self.peer!r}", hint="use echo or allocation")
        for name in ("duration", "max_time", "timeout", "step_duration", "refresh_interval"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise UsageError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")
        if not 1 <= self.sessions <= HARD_MAX_SESSIONS:
            raise UsageError(f"--sessions must be 1..{HARD_MAX_SESSIONS}, got {self.sessions}")
        if self.rate is not None and not (0 < self.rate < math.inf):
            raise UsageError(f"--rate must be a positive number, got {self.rate}")
        if self.profile == "rate" and self.rate is None:
            raise UsageError("the rate profile needs --rate PACKETS_PER_SECOND")
        if not packet.MIN_SIZE <= self.size <= packet.MAX_SIZE:
            raise UsageError(f"--size must be {packet.MIN_SIZE}..{packet.MAX_SIZE} bytes, got {self.size}")
        if not 0 <= self.max_loss <= 100:
            raise UsageError(f"--max-loss is a percentage, got {self.max_loss}")
        if not 1 <= self.max_packets <= HARD_MAX_PACKETS:
            raise UsageError(f"--max-packets must be 1..{HARD_MAX_PACKETS}")
        if self.max_time > HARD_MAX_TIME:
            raise UsageError(f"--max-time is at most {HARD_MAX_TIME:g} s")
        if self.ramp and self.profile not in ("audio", "video"):
            raise UsageError("--ramp is for the audio and video profiles")
        if self.ramp_factor <= 1.0:
            raise UsageError("the ramp factor must be above 1")
        if self.workers is not None and not 1 <= self.workers <= 64:
            raise UsageError("--workers must be 1..64")
        if self.lifetime is not None and self.lifetime <= 0:
            raise UsageError("--lifetime must be positive (0 would release the allocation)")

    @property
    def traffic(self) -> Traffic:
        """The per-session packet pattern of a media profile."""
        if self.profile == "audio":
            return AUDIO
        if self.profile == "video":
            return VIDEO
        if self.profile == "rate":
            assert self.rate is not None
            return Traffic(self.sessions / self.rate, 1, self.size, self.size)
        raise ValueError(f"the {self.profile} profile sends no media")

    def offered_pps(self, sessions: int | None = None) -> float:
        """Packets per second the generator sends toward the relay (one way)."""
        if self.profile not in MEDIA_PROFILES:
            return 0.0
        n = self.sessions if sessions is None else sessions
        return self.traffic.pps * n if self.profile != "rate" else float(self.rate or 0)

    def worker_count(self, cpus: int) -> int:
        """``workers``, or as many as the offered load needs (~15,000 packets/s each), at most one per CPU
        and, when the server runs on this host (``server_pid`` or a loopback address), one CPU left to it."""
        if self.workers is not None:
            return self.workers
        if self.profile in MEDIA_PROFILES:
            local = self.server_pid is not None or self.server.host.startswith("127.") or self.server.host == "::1"
            peak = self.offered_pps(self.sessions * (4 if self.ramp else 1))
            return max(1, min(cpus - 1 if local else cpus, math.ceil(peak / 15_000)))
        return 1

    def public(self) -> dict:
        """The configuration as the report shows it (no password)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("password", "secret")}
        d["server"] = str(self.server)
        return d
