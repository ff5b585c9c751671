"""The stack's users under malformed answers (issue 9 §6) and their budgets: probe, nat, relay pre-flight,
coturn readiness. A tiny responder on loopback sends mutated answers; every command must end with one line,
within its --timeout, and count or report the malformed response instead of raising into the event loop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from stun_responder import REALM, Responder, attr, good, raw, turn_then

from natkit.errors import AuthenticationRefused, MalformedMessage, StunTimeout
from natkit.model import TransportAddress as TA
from natkit.probe import probe
from natkit.stun.codec import Class, Method, long_term_key
from natkit.uri import parse_turn_uri


def natkit(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "natkit.cli.app", *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "NATKIT_QUIET": "1"})
    return proc, time.monotonic() - started


def assert_one_line(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "Exception in callback" not in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr


def short_xor_mapped(req, kind):
    return raw(req, attr(0x8022, b"mutant") + attr(0x0020, b"\x00\x01"))  # a 2-byte XOR-MAPPED-ADDRESS


def huge_software(req, kind):
    return raw(req, attr(0x0020, b"\x00\x01\x00\x00\x7f\x00\x00\x01") + attr(0x8022, b"9" * 65_000))


def unpadded_true_length(req, kind):
    return raw(req, attr(0x8022, b"abcde", pad=False) + attr(0x0020, b"\x00\x01\x21\x13\x5e\x12\xa4\x43"))


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("mutate, attribute", [
    (short_xor_mapped, "XOR-MAPPED-ADDRESS"), (huge_software, "SOFTWARE"), (unpadded_true_length, None),
])
def test_probe_reports_a_malformed_answer_at_once(transport, mutate, attribute):
    with Responder(mutate) as r:
        started = time.monotonic()
        report = probe([f"127.0.0.1:{r.port}"], transport=transport, timeout=2)
        waited = time.monotonic() - started
    res = report.results[0]
    assert not res.ok and res.error_kind == "malformed_response"
    assert res.error.startswith(f"127.0.0.1:{r.port}: malformed response from 127.0.0.1:{r.port}:")
    if attribute:
        assert f"{attribute} at byte" in res.error
    else:
        assert "not a multiple of 4" in res.error
    assert waited < 1.0  # the answer fails the transaction: no waiting for the budget


def test_probe_cli_one_line_within_budget():
    with Responder(short_xor_mapped) as r:
        for transport in ("udp", "tcp"):
            proc, wall = natkit("probe", f"127.0.0.1:{r.port}", "--transport", transport, "--timeout", "2", "--json")
            assert_one_line(proc)
            doc = json.loads(proc.stdout)
            assert "malformed response" in doc["results"][0]["error"] and proc.returncode != 0
            assert wall < 2 + 1.5  # interpreter start-up included


# --------------------------------------------------------------------------- nat


def test_nat_records_malformed_answers_and_ends_in_time():
    from natkit.nat import discover_nat

    def short_fingerprint(req, kind):
        return raw(req, attr(0x0020, b"\x00\x01\x21\x13\x5e\x12\xa4\x43") + attr(0x8028, b"\x00\x01"))

    with Responder(short_fingerprint) as r:
        started = time.monotonic()
        report = discover_nat([f"127.0.0.1:{r.port}"], timeout=2, hairpin=True)
        waited = time.monotonic() - started
    first = report.observations.servers[0].exchanges[0]
    assert not first.answered and "malformed response from 127.0.0.1" in first.failure and "FINGERPRINT at byte" in first.failure
    assert report.status != "determined" and waited < 2.5


def test_nat_cli_has_no_traceback():
    with Responder(huge_software) as r:
        proc, wall = natkit("nat", f"127.0.0.1:{r.port}", "--timeout", "1", "--json")
    assert_one_line(proc)
    assert json.loads(proc.stdout)["status"] in ("udp_blocked", "no_usable_server", "inconclusive")
    assert wall < 1 + 2.5


# --------------------------------------------------------------------------- relay pre-flight


def _preflight(port: int, transport: str = "udp", timeout: float = 2.0, password: str = "pw"):
    from natkit.relay import preflight_allocate

    uri = parse_turn_uri(f"turn:127.0.0.1:{port}?transport={transport}")
    errors = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        return await preflight_allocate(uri, TA("127.0.0.1", port), "user", password, timeout=timeout)

    started = time.monotonic()
    try:
        return asyncio.run(main()), time.monotonic() - started
    finally:
        assert not errors, errors


def _signed_success(attrs_bytes: bytes):
    def mutate(req, kind):
        return raw(req, attrs_bytes)
    return mutate


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_preflight_malformed_allocate_answer(transport):
    body = attr(0x0016, b"\x00\x01\x21\x13\x5e\x12\xa4\x43") + attr(0x000D, b"\x00\x01")  # a 2-byte LIFETIME
    with Responder(turn_then(_signed_success(body))) as r:
        started = time.monotonic()
        with pytest.raises(MalformedMessage) as exc:
            _preflight(r.port, transport)
    assert exc.value.attribute == "LIFETIME" and "malformed response from 127.0.0.1" in str(exc.value)
    assert exc.value.server == f"turn:127.0.0.1:{r.port}?transport={transport}" or exc.value.server.startswith("turn:127.0.0.1")
    assert time.monotonic() - started < 1.0


def test_preflight_tcp_desync_ends_within_the_budget():
    """An unpadded attribute with the padded length in the header: the stream is 3 bytes short."""
    def desync(req, kind):
        good_answer = good(req, [("XOR-RELAYED-ADDRESS", ("127.0.0.1", 5000)), ("SOFTWARE", "abcde")],
                           key=long_term_key("user", REALM, "pw"))
        return good_answer[:-3]  # header still counts the padding that was not sent

    with Responder(turn_then(desync)) as r:
        started = time.monotonic()
        with pytest.raises(MalformedMessage, match="the rest never did") as exc:
            _preflight(r.port, "tcp", timeout=1.5)
    assert exc.value.attribute == "stream" and time.monotonic() - started < 1.5 + 0.3


def test_preflight_spends_one_budget_for_binding_and_allocate():
    """Binding answered after ~0.6 s, Allocate never: the whole pre-flight ends at --timeout, not twice it."""
    def slow_binding_silent_allocate(req, kind):
        if req.method == Method.BINDING:
            time.sleep(0.6)
            return good(req, [("XOR-MAPPED-ADDRESS", ("127.0.0.1", 1))])
        return None

    with Responder(slow_binding_silent_allocate) as r:
        started = time.monotonic()
        with pytest.raises(StunTimeout) as exc:
            _preflight(r.port, timeout=1.5)
        waited = time.monotonic() - started
    assert exc.value.step == "allocate" and exc.value.limit == "budget"
    assert exc.value.message.startswith("no Allocate answer within the 1.5 s budget")
    assert 1.4 < waited < 1.5 + 0.3


def test_silence_after_the_challenge_is_credentials_probably_refused():
    with Responder(turn_then(lambda req, kind: None)) as r, \
            pytest.raises(AuthenticationRefused, match="credentials probably refused") as exc:
        _preflight(r.port, timeout=1.0)
    assert exc.value.exit_code == 5


def test_unsigned_400_to_the_signed_allocate_is_credentials_probably_refused():
    def unsigned_400(req, kind):
        return good(req, [("ERROR-CODE", (400, "Bad Request"))], cls=Class.ERROR)

    with Responder(turn_then(unsigned_400)) as r, \
            pytest.raises(AuthenticationRefused, match="then an unsigned 400 Bad Request to the request carrying") as exc:
        _preflight(r.port)
    assert exc.value.exit_code == 5 and exc.value.error_code == 400


def test_relay_check_cli_malformed_is_one_line():
    body = attr(0x0016, b"\x00\x01\x21\x13") + attr(0x000D, b"\x00\x00\x02\x58")  # a 4-byte XOR-RELAYED-ADDRESS
    with Responder(turn_then(_signed_success(body))) as r:
        proc, wall = natkit("relay-check", f"turn:127.0.0.1:{r.port}", "--user", "u", "--password", "p", "--timeout", "2")
    assert_one_line(proc)
    assert "malformed response from 127.0.0.1" in proc.stderr and "XOR-RELAYED-ADDRESS" in proc.stderr
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) <= 3
    assert wall < 2 + 2.5


# --------------------------------------------------------------------------- coturn readiness


def test_readiness_polls_without_creating_event_loops(turn_server, monkeypatch):
    from natkit.coturn import server as srv

    def no_loops(*a, **k):
        raise AssertionError("readiness must not create an event loop per poll")

    monkeypatch.setattr(asyncio, "run", no_loops)
    monkeypatch.setattr(asyncio, "new_event_loop", no_loops)
    assert srv.wait_ready(turn_server.server.info, timeout=5) < 5


def test_tls_listener_with_non_pem_certificate_is_not_ready(tmp_path):
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port, list_servers
    from natkit.errors import ServerStartFailed
    from natkit.pytest_plugin import require_coturn

    require_coturn()
    port, tls_port = free_port(), free_port()
    cfg = CoturnConfig(listening_port=port, tls_listening_port=tls_port, cert="cert.pem", pkey="key.pem", static_auth_secrets=("s",))
    server = CoturnServer(cfg, backend="native", name="bad-tls",
                          extra_files={"cert.pem": b"this is not PEM\n", "key.pem": b"neither is this\n"})
    started = time.monotonic()
    with pytest.raises(ServerStartFailed, match=f"TLS listener 127.0.0.1:{tls_port}") as exc:
        server.start()
    assert "PEM" in exc.value.hint and time.monotonic() - started < 10
    assert list_servers() == []  # nothing left running or recorded


# --------------------------------------------------------------------------- budgets that cannot end


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
@pytest.mark.parametrize("command", ["probe", "nat"])
def test_timeout_must_be_finite_and_positive(command, value):
    proc, _ = natkit(command, "127.0.0.1:9", "--timeout", value)
    assert proc.returncode == 2, proc.stderr
    assert_one_line(proc)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0])
def test_library_refuses_budgets_that_cannot_end(value):
    from natkit.errors import UsageError
    from natkit.nat import discover_nat

    for call in (lambda: probe(["127.0.0.1:9"], timeout=value), lambda: discover_nat(["127.0.0.1:9"], timeout=value)):
        with pytest.raises(UsageError, match="timeout must be a positive number of seconds"):
            call()


def test_probe_of_one_closed_udp_port_ends_at_once():
    from natkit.coturn.server import free_port

    port = free_port()
    started = time.monotonic()
    report = probe([f"127.0.0.1:{port}"], timeout=3)
    assert time.monotonic() - started < 1.0  # ICMP port unreachable on the connected socket, not the 3 s budget
    res = report.results[0]
    assert not res.ok and res.error_kind == "unreachable" and "port unreachable" in res.error


def test_probe_imports_neither_aioice_nor_the_turn_session():
    with Responder(lambda req, kind: good(req, [("XOR-MAPPED-ADDRESS", ("127.0.0.1", 1))])) as r:
        code = (
            "import sys, runpy\n"
            f"sys.argv = ['natkit', 'probe', '127.0.0.1:{r.port}', '--json']\n"
            "try:\n    runpy.run_module('natkit.cli.app', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('aioice', 'natkit.stun.turn', 'natkit.stun.aio_turn', 'natkit._aioice')))\n"
            "print('LOADED', loaded, file=sys.stderr)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- the blocking driver under the same answers


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_blocking_driver_fails_a_malformed_answer_at_once(transport):
    from natkit.stun import codec, sync

    with Responder(short_xor_mapped) as r:
        started = time.monotonic()
        with pytest.raises(MalformedMessage, match="XOR-MAPPED-ADDRESS at byte"):
            sync.request(codec.binding_request(), TA("127.0.0.1", r.port), timeout=2, transport=transport)
    assert time.monotonic() - started < 1.0


def test_blocking_turn_client_tcp_desync_is_malformed_within_the_budget():
    from natkit.stun import sync

    def truncated(req, kind):
        return good(req, [("XOR-RELAYED-ADDRESS", ("127.0.0.1", 5000)), ("SOFTWARE", "abcde")],
                    key=long_term_key("user", REALM, "pw"))[:-3]

    with Responder(turn_then(truncated)) as r, \
            sync.SyncTurnClient(TA("127.0.0.1", r.port), transport="tcp", username="user", password="pw", timeout=1.0) as t:
        started = time.monotonic()
        with pytest.raises(MalformedMessage, match="the rest never did"):
            t.allocate()
        assert time.monotonic() - started < 1.3


def test_probe_tcp_answer_that_stops_inside_a_frame_is_malformed_within_the_budget():
    def padded_length_unpadded_bytes(req, kind):
        return good(req, [("XOR-MAPPED-ADDRESS", ("127.0.0.1", 1)), ("SOFTWARE", "abcde")])[:-3]

    with Responder(padded_length_unpadded_bytes) as r:
        started = time.monotonic()
        report = probe([f"127.0.0.1:{r.port}"], transport="tcp", timeout=1)
        waited = time.monotonic() - started
    res = report.results[0]
    assert res.error_kind == "malformed_response" and "the rest never did" in res.error
    assert waited < 1.3


def _fake_server(monkeypatch, running, answers):
    """wait_ready against scripted liveness and listener answers (the exec race cannot be forced on a real process)."""
    from natkit.coturn import server as srv

    running, answers = iter(running), iter(answers)
    monkeypatch.setattr(srv, "is_running", lambda info: next(running))
    monkeypatch.setattr(srv, "_listener_answers", lambda kind, addr: next(answers))
    monkeypatch.setattr(srv, "server_logs", lambda info, tail=None: ["log line"])
    return srv, srv.ServerInfo(name="fake", backend="native", listen=("127.0.0.1",), port=1, tls_port=None, realm="r",
                               secret=None, uris=(), stun_uris=(), created=0.0)


def test_readiness_survives_a_process_that_looks_down_once(monkeypatch):
    """Right after exec /proc/PID/cmdline may still be empty: one 'not running' is not an exit."""
    srv, info = _fake_server(monkeypatch, running=[False, True], answers=["refused", "refused", None, None])
    assert srv.wait_ready(info, timeout=5) < 1


def test_readiness_reports_a_process_that_stays_down(monkeypatch):
    from natkit.errors import ServerStartFailed

    srv, info = _fake_server(monkeypatch, running=[False, False], answers=["refused"] * 4)
    with pytest.raises(ServerStartFailed, match="exited during startup") as exc:
        srv.wait_ready(info, timeout=5)
    assert exc.value.details == ["log line"]
