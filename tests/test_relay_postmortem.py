"""relay-check (and check's pre-flight) against pion/turn: right verdicts for a server that is not coturn.

pionturn (tests/servers) runs in a namespace with no route out (SAFETY: the
post-mortem relays only between two allocations of that server, but a server
without a peer ACL must never be able to send anywhere). relay-check runs in
the same namespace through the real CLI.

Behaviours asserted here (see tests/test_audit.py for what pion does
differently from coturn): pion answers a wrong password with an *unsigned*
400 after the 401 challenge, which aioice discards (RFC 8489 §9.2.5), so
relay-check used to report "unreachable" (exit 4); with ``-unsigned-channelbind
-ignore-channeldata`` it behaves like a server whose ChannelBind answers
aioice cannot accept and that drops client ChannelData (browsers still relay
through it with Send indications), which used to give exit 7 with a hint
blaming the peer ACL; pion's own REST handler takes a bare ``<expiry>``
username only, which ``--user ''`` must give, as ``natkit creds`` does.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import subprocess
import sys
import time

import pytest
from servers import PionTurn, pion_binary

SECRET = pysecrets.token_urlsafe(24)
ADDRS = tuple(f"203.0.113.{n}" for n in range(60, 70))


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def sealed_ns():
    from natkit.pytest_plugin import require_root_netns

    require_root_netns()
    ns = f"natkit-pm-{os.getpid()}-{pysecrets.token_hex(3)}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        for addr in ADDRS:
            _ip("-n", ns, "addr", "add", f"{addr}/32", "dev", "lo")
        routes = _ip("-n", ns, "route", "show").stdout + _ip("-n", ns, "-6", "route", "show").stdout
        assert "default" not in routes and "via" not in routes, routes  # the safety precondition
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def pion(sealed_ns, request, tmp_path):
    import contextlib

    binary = pion_binary(request.config)
    free = list(ADDRS)
    with contextlib.ExitStack() as stack:
        def start(*flags: str, users: dict | None = None) -> PionTurn:
            return stack.enter_context(PionTurn(binary, free.pop(0), ns=sealed_ns, secret=SECRET, users=users, args=flags,
                                                workdir=tmp_path))
        yield start


def _natkit(ns: str, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, dict]:
    code = "import sys; from natkit.cli.app import main; sys.argv = ['natkit'] + sys.argv[1:]; main()"
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args, "--json"], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, NATKIT_QUIET="1"), check=False)
    assert "Traceback" not in r.stderr and "Exception in callback" not in r.stderr, r.stderr[-3000:]
    try:
        return r, json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (exit {r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}") from None


@pytest.mark.integration
def test_relay_check_through_pion_passes(sealed_ns, pion):
    srv = pion()
    r, doc = _natkit(sealed_ns, "relay-check", srv.uri, "--secret", SECRET, "--payload", "20000", "-n", "5")
    assert r.returncode == 0, doc
    assert doc["path"]["selected_relay"] is True and doc["path"]["messages_echoed"] == 5
    assert doc["preflight"]["relayed_address"].startswith(srv.host + ":")


@pytest.mark.integration
def test_unsigned_channelbind_and_ignored_channeldata_are_diagnosed(sealed_ns, pion):
    """Before: exit 7 with "the server may refuse to relay to its own relayed addresses (denied-peer-ip ...)"."""
    srv = pion("-unsigned-channelbind", "-ignore-channeldata")
    started = time.monotonic()
    r, doc = _natkit(sealed_ns, "relay-check", srv.uri, "--secret", SECRET, "--timeout", "6")
    elapsed = time.monotonic() - started
    assert r.returncode == 7
    err = doc["error"]
    assert err["kind"] == "no_connectivity" and err["step"] == "connectivity"
    assert "ChannelBind never confirmed: 3 attempts (3 unsigned success)" in err["message"]
    assert "the server did not relay ChannelData" in err["message"]
    assert "Send indications are relayed" in err["message"]
    assert "browsers relay through such a server with Send indications" in err["hint"]
    assert "denied-peer-ip" not in err["hint"] and "allowed-peer-ip" not in err["hint"]
    assert "ChannelData A→B on 0x4000: NOT relayed" in err["details"]
    assert elapsed < 6 + 2  # the post-mortem runs inside --timeout (plus process start-up)


@pytest.mark.integration
def test_unsigned_channelbind_alone_is_named(sealed_ns, pion):
    srv = pion("-unsigned-channelbind")
    r, doc = _natkit(sealed_ns, "relay-check", srv.uri, "--secret", SECRET, "--timeout", "5")
    assert r.returncode == 7
    err = doc["error"]
    assert "ChannelBind never confirmed" in err["message"] and "did not relay ChannelData" not in err["message"]
    assert "ChannelData A→B on 0x4000: relayed" in err["details"]  # pion did bind the channel; aioice cannot know
    assert "MESSAGE-INTEGRITY" in err["hint"]


@pytest.mark.integration
def test_acl_refusing_its_own_relay_addresses_is_named_with_evidence(sealed_ns, pion):
    srv = pion("-deny", "203.0.113.0/24")
    r, doc = _natkit(sealed_ns, "relay-check", srv.uri, "--secret", SECRET, "--timeout", "5")
    assert r.returncode == 7
    err = doc["error"]
    assert "the server refuses its own relayed addresses as peers" in err["message"]
    assert "allowed-peer-ip" in err["hint"]
    assert any(line.startswith("CreatePermission A→B error without ERROR-CODE") for line in err["details"])


@pytest.mark.integration
@pytest.mark.parametrize("command", ["relay-check", "check"])
def test_wrong_password_answered_with_unsigned_400_is_exit_5(sealed_ns, pion, command):
    """Before: "no Allocate answer" (exit 4), though the server answered the Binding and the 401."""
    srv = pion(users={"alice": "wonderland"})
    flag = "--turn" if command == "check" else None
    args = [command, *([flag] if flag else []), srv.uri, "--user", "alice", "--password", "not-it", "--timeout", "3"]
    started = time.monotonic()
    r, _ = _natkit(sealed_ns, *args)
    assert r.returncode == 5, (r.stdout[-2000:], r.stderr[-2000:])
    assert time.monotonic() - started < 3 + 2
    said = r.stdout + r.stderr  # check --json reports the failure in its JSON, relay-check as the error
    assert "credentials probably refused" in said
    assert "unsigned" in said and "400" in said


@pytest.mark.integration
def test_empty_user_part_is_one_rule_for_creds_and_relay_check(sealed_ns, pion):
    """Before: relay-check --user '' sent "<expiry>:natkit" while creds --user '' gave a bare "<expiry>"."""
    r, doc = _natkit(sealed_ns, "creds", "--secret", SECRET, "--user", "")
    assert r.returncode == 0 and doc["username"].isdigit()
    srv = pion("-pion-rest")  # pion's own REST handler: a bare <expiry> username only
    r, doc = _natkit(sealed_ns, "relay-check", srv.uri, "--secret", SECRET, "--user", "", "--payload", "0", "-n", "2")
    assert r.returncode == 0, (doc, r.stderr[-2000:])
    assert doc["username"].isdigit()
    r, doc = _natkit(sealed_ns, "relay-check", srv.uri, "--secret", SECRET, "--payload", "0", "-n", "2", "--timeout", "3")
    assert r.returncode == 5  # "<expiry>:natkit" is refused by pion's handler, and said so


def test_reserve_is_a_bounded_slice_of_the_budget():
    from natkit.relay_postmortem import reserve

    assert reserve(10) == 2.5 and reserve(100) == 3.0 and reserve(1) == 0.3 and reserve(0.4) == 0.2


def test_coturn_denying_its_own_loopback_relay_is_named(tmp_path):
    """The same diagnosis against coturn: a loopback server that denies loopback peers (its own relay addresses)."""
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.credentials import mint
    from natkit.errors import NoRelayConnectivity
    from natkit.pytest_plugin import require_coturn
    from natkit.relay import relay_check

    require_coturn()
    port = free_port()
    with CoturnServer(CoturnConfig(listening_port=port, static_auth_secrets=("s",)), backend="native", name="pm-deny") as srv:
        cred = mint("s", "u", 60)
        with pytest.raises(NoRelayConnectivity) as exc:
            relay_check(srv.info.uris[0], username=cred.username, password=cred.password, timeout=3)
    err = exc.value
    assert "the server refuses its own relayed addresses as peers" in err.message
    assert any(line.startswith("CreatePermission A→B 403") for line in err.details), err.details
    assert "allowed-peer-ip" in err.hint
