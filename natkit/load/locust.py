"""Locust users that load a TURN server through natkit's TURN client (``pip install 'natkit[load]'``).

Locust runs users as gevent greenlets; :class:`natkit.stun.sync.SyncTurnClient`
(the blocking driver of the same sans-I/O :class:`~natkit.stun.turn.TurnSession`)
is cooperative under gevent's monkey-patched sockets. Locust brings its
distribution (``--master``/``--worker``, ``--processes``), headless runs,
CSV/HTML reports and the web UI; natkit brings the TURN side.

A locustfile (copy-paste; the URI is Locust's ``--host``, credentials come
from the environment so they are not in argv)::

    # locustfile.py
    from natkit.load.locust import TurnAllocationUser, TurnCallUser  # noqa: F401

    # NATKIT_TURN_SECRET=... locust -f locustfile.py --headless -u 100 -r 20 -t 60s \\
    #     --host turn:turn.example.org:3478 TurnCallUser

Environment: ``NATKIT_TURN_SECRET`` (REST secret; ``NATKIT_TURN_USER`` the
user part) or ``NATKIT_TURN_USER`` + ``NATKIT_TURN_PASSWORD`` (long-term);
``NATKIT_TURN_CA`` a CA bundle for ``turns:``; ``NATKIT_TURN_INSECURE=1``.

Events (Locust's ``request`` events, so its statistics, CSV and charts work):

=================  ================  ==========================================
request_type       name              response_time
=================  ================  ==========================================
``TURN``           ``Allocate``      ms to a final answer (401 challenge included)
``TURN``           ``ChannelBind``   ms
``TURN``           ``Refresh``       ms (``lifetime 0`` releases)
``MEDIA``          ``rtt``           a call's median round trip of the last second;
                                     ``response_length`` its packets returned
``MEDIA``          ``loss``          fired as a failure for every second with packets lost
``MEDIA``          ``behind``        a failure for every second in which the user fell more
                                     than ``max_behind`` (250 ms) behind and skipped packets
                                     (``response_length``): the generator's limit
=================  ================  ==========================================

With ``per_packet_events = True`` a :class:`TurnCallUser` fires one
``MEDIA packet`` event per returned packet instead (what
``docs/benchmarks.md`` measures: Locust's per-event cost caps the packet rate).
Every allocation is released (Refresh LIFETIME 0) when a user stops.
"""

from __future__ import annotations

import os
import time
from typing import Any

from locust import User, between, task

from ..errors import NatkitError
from ..model import TransportAddress
from . import packet
from .stats import Histogram


def _settings(host: str) -> dict[str, Any]:
    """Server address, transport and credentials for Locust's ``--host`` (a TURN URI) and the environment."""
    import socket

    from ..credentials import mint
    from ..errors import UsageError
    from ..uri import parse_turn_uri

    uri = parse_turn_uri(host)
    secret = os.environ.get("NATKIT_TURN_SECRET")
    user = os.environ.get("NATKIT_TURN_USER")
    password = os.environ.get("NATKIT_TURN_PASSWORD")
    if secret:
        cred = mint(secret, user or "natkit-locust", 3600)
        username, password = cred.username, cred.password
    elif user and password:
        username = user
    else:
        raise UsageError("set NATKIT_TURN_SECRET, or NATKIT_TURN_USER and NATKIT_TURN_PASSWORD")
    info = socket.getaddrinfo(uri.host, uri.port, type=socket.SOCK_DGRAM)[0][4]
    ssl = None
    if uri.secure:
        from ..stun.aio import client_ssl_context

        ssl = client_ssl_context(os.environ.get("NATKIT_TURN_INSECURE") != "1", os.environ.get("NATKIT_TURN_CA"))
    return {"server": TransportAddress(str(info[0]), int(info[1])), "transport": "tls" if uri.secure else uri.transport,
            "username": username, "password": password, "ssl": ssl, "server_hostname": uri.host if uri.secure else None}


class _TurnUser(User):
    abstract = True
    timeout = 3.0

    def on_start(self) -> None:
        self.turn = _settings(self.host or "")

    def client(self):
        from ..stun.sync import SyncTurnClient

        t = self.turn
        return SyncTurnClient(t["server"], transport=t["transport"], username=t["username"], password=t["password"],
                              ssl=t["ssl"], server_hostname=t["server_hostname"], timeout=self.timeout)

    def allocated(self):
        """``(client, ok)``: a new client and its Allocate, reported to Locust as one "Allocate".

        A 437 Allocation Mismatch on a brand-new socket means the kernel handed out a local port whose
        previous 5-tuple the server still remembers (RFC 8656 §7.3): like natkit's own workers
        (:func:`natkit.load.clients.allocated_client`), allocate once more from another socket, opened
        before the refused one is closed so the same port cannot come back.
        """
        holder = [self.client()]

        def attempt(check: bool = False):
            reply = holder[0].allocate(check=check)
            if not reply.ok and reply.code == 437:
                fresh = self.client()
                holder[0].close(release=False)
                holder[0] = fresh
                reply = fresh.allocate(check=check)
            return reply

        ok = self.timed("Allocate", attempt) is not None
        return holder[0], ok

    def timed(self, name: str, fn, *args, **kwargs):
        """Run one TURN request and report it to Locust; returns the Reply (None when it failed)."""
        t0 = time.perf_counter()
        exc: BaseException | None = None
        reply = None
        try:
            reply = fn(*args, check=False, **kwargs)
            if not reply.ok:
                exc = reply.error(server=str(self.turn["server"]))
        except NatkitError as err:
            exc = err
        self.environment.events.request.fire(request_type="TURN", name=name, response_time=(time.perf_counter() - t0) * 1000,
                                             response_length=0, exception=exc, context={})
        return reply if exc is None else None


class TurnAllocationUser(_TurnUser):
    """Allocate → CreatePermission + ChannelBind (to the server's own address; nothing is sent) → release, repeatedly."""

    wait_time = between(0.05, 0.2)

    @task
    def allocation_cycle(self) -> None:
        client, ok = self.allocated()
        try:
            if not ok:
                return
            peer = TransportAddress(self.turn["server"].host, 9)
            self.timed("ChannelBind", client.channel_bind, peer)
            self.timed("Refresh", client.refresh, 0)
            client.session._released()
        finally:
            client.close(release=False)


class TurnCallUser(_TurnUser):
    """A call through the relay between two allocations (as two browsers), ``pps`` packets/s of ``size`` bytes each way.

    The callee reflects every packet with its receive time (natkit's load
    payload); each second the caller reports the median RTT (``MEDIA rtt``)
    and, as a failure, the packets lost (``MEDIA loss``).
    """

    wait_time = between(0, 0)
    pps = 50
    size = 200
    seconds_per_task = 5.0
    per_packet_events = False
    max_behind = 0.25  # s behind schedule after which packets are skipped (MEDIA behind), not sent in a burst
    drain = 0.2  # s at the end of a task to wait for the packets still in flight

    def on_start(self) -> None:
        super().on_start()
        self.index = id(self) & 0x7FFFFFFF
        self.caller, ok = self.allocated()
        if ok:  # _release() closes whichever of the two exists
            self.callee, ok = self.allocated()
        if not ok:
            self._release()
            from locust.exception import StopUser

            raise StopUser()
        self.timed("ChannelBind", self.caller.channel_bind, self.callee.relayed)
        self.timed("ChannelBind", self.callee.channel_bind, self.caller.relayed)
        self.to_callee = self.caller.session.channel_for(self.callee.relayed)
        self.to_caller = self.callee.session.channel_for(self.caller.relayed)
        self.seq = 0
        import gevent

        self._reflector = gevent.spawn(self._reflect)

    def _reflect(self) -> None:
        while True:
            item = self.callee.recv(timeout=1.0)
            if item is not None and len(item.data) >= packet.HEADER_SIZE:
                try:
                    self.callee.send_channel(self.to_caller, bytes(packet.stamp(item.data, time.monotonic_ns())))
                except NatkitError:
                    pass

    @task
    def talk(self) -> None:
        """Send for ``seconds_per_task`` at ``pps``; report each second, the task's last (partial) one included."""
        interval = 1.0 / self.pps
        fire = self.environment.events.request.fire
        start = next_send = time.monotonic()
        second_end = start + 1.0
        sent = returned = skipped = 0
        rtt = Histogram()
        pad = bytes(max(0, self.size - packet.HEADER_SIZE))
        while (now := time.monotonic()) - start < self.seconds_per_task:
            if next_send < now - self.max_behind:  # a stall (the greenlet did not run): skip, never burst
                late = int((now - self.max_behind - next_send) / interval) + 1
                skipped += late
                next_send += late * interval
            while next_send <= now:
                head = packet.HEADER.pack(self.index, self.seq, 0, 0, time.monotonic_ns(), 0)
                self.caller.send_channel(self.to_callee, head + pad)
                self.seq += 1
                sent += 1
                next_send += interval
            returned += self._receive(fire, rtt, max(0.001, min(next_send, second_end) - time.monotonic()))
            if time.monotonic() >= second_end:
                self._report(fire, sent, returned, rtt, skipped)
                sent = returned = skipped = 0
                rtt = Histogram()
                second_end += 1.0
        drain_end = time.monotonic() + self.drain
        while returned < sent and (left := drain_end - time.monotonic()) > 0:  # the last packets in flight
            returned += self._receive(fire, rtt, left)
        if sent or skipped:
            self._report(fire, sent, returned, rtt, skipped)

    def _receive(self, fire, rtt: Histogram, timeout: float) -> int:
        """Wait up to ``timeout`` s for one returned packet; 1 when one came back (reported per packet or into ``rtt``)."""
        item = self.caller.recv(timeout=timeout)
        if item is None or len(item.data) < packet.HEADER_SIZE:
            return 0
        ts = packet.HEADER.unpack_from(item.data)[4]
        ms = (time.monotonic_ns() - ts) / 1e6
        if self.per_packet_events:
            fire(request_type="MEDIA", name="packet", response_time=ms, response_length=len(item.data), exception=None, context={})
        else:
            rtt.add(int(ms * 1000))
        return 1

    def _report(self, fire, sent: int, returned: int, rtt: Histogram, skipped: int = 0) -> None:
        if not self.per_packet_events and rtt.count:
            fire(request_type="MEDIA", name="rtt", response_time=(rtt.percentile(50) or 0) / 1000.0, response_length=returned,
                 exception=None, context={})
        if returned < sent - 1:  # one packet may still be in flight at the second's edge
            fire(request_type="MEDIA", name="loss", response_time=0, response_length=sent - returned,
                 exception=RuntimeError(f"{sent - returned} of {sent} packets not back within the second"), context={})
        if skipped:
            fire(request_type="MEDIA", name="behind", response_time=0, response_length=skipped,
                 exception=RuntimeError(f"{skipped} packets not sent: the user fell more than {self.max_behind * 1000:.0f} ms "
                                        "behind its schedule (the generator's limit, not the server's)"), context={})

    def on_stop(self) -> None:
        self._release()

    def _release(self) -> None:
        if getattr(self, "_reflector", None) is not None:
            self._reflector.kill()
        for client in (getattr(self, "caller", None), getattr(self, "callee", None)):
            if client is not None and client.session.allocated:
                self.timed("Refresh", client.refresh, 0)
                client.session._released()
            if client is not None:
                client.close(release=False)
