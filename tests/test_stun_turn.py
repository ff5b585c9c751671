"""natkit.stun.turn: the sans-I/O TURN client session against a scripted server (no sockets)."""

from __future__ import annotations

import pytest

from natkit.errors import (
    AllocationRefused,
    AuthenticationRefused,
    MalformedMessage,
    TurnError,
)
from natkit.model import TransportAddress as TA
from natkit.stun.codec import Class, Message, Method, decode, long_term_key
from natkit.stun.turn import (
    CHANNEL_LIFETIME,
    PERMISSION_LIFETIME,
    PeerData,
    Pending,
    Reply,
    TurnSession,
    error_for,
)

REALM, NONCE = "natkit.test", b"nonce-1"
RELAYED, MAPPED, PEER = TA("203.0.113.9", 50000), TA("198.51.100.2", 40000), TA("203.0.113.20", 6000)


def answer(pending: Pending, cls: int, attrs: list, key: bytes | None = None) -> Message:
    """What a server sends back for ``pending`` (decoded, as a driver would hand it over)."""
    req = decode(pending.data)
    return decode(Message(req.method, cls, req.transaction_id, attrs).encode(key, fingerprint=True))


def challenge(pending: Pending, nonce: bytes = NONCE) -> Message:
    return answer(pending, Class.ERROR, [("ERROR-CODE", (401, "Unauthorized")), ("REALM", REALM), ("NONCE", nonce)])


def allocated(s: TurnSession, now: float = 0.0) -> TurnSession:
    p = s.allocate()
    retry = s.handle(p, challenge(p), now)
    reply = s.handle(retry, answer(retry, Class.RESPONSE, [("XOR-RELAYED-ADDRESS", RELAYED), ("XOR-MAPPED-ADDRESS", MAPPED),
                                                             ("LIFETIME", 600)], s.key), now)
    assert reply.ok
    return s


def test_401_challenge_then_signed_success():
    s = TurnSession("user", "pw")
    first = s.allocate(lifetime=300)
    m = decode(first.data)
    assert not first.signed and "USERNAME" not in m and m["REQUESTED-TRANSPORT"] == 17 and m["LIFETIME"] == 300
    retry = s.handle(first, challenge(first), 0.0)
    assert isinstance(retry, Pending) and retry.attempt == 2 and retry.transaction_id != first.transaction_id
    key = long_term_key("user", REALM, "pw")
    assert s.key == key
    m2 = decode(retry.data)
    assert (m2["USERNAME"], m2["REALM"], m2["NONCE"]) == ("user", REALM, NONCE) and m2.check_integrity(key) is True
    reply = s.handle(retry, answer(retry, Class.RESPONSE, [("XOR-RELAYED-ADDRESS", RELAYED), ("XOR-MAPPED-ADDRESS", MAPPED),
                                                             ("LIFETIME", 300)], key), 10.0)
    assert isinstance(reply, Reply) and reply.ok and reply.signed is True and reply.attempts == 2
    assert reply.trail() == "401 Unauthorized → success" and reply.sent_bytes == len(retry.data)
    assert s.relayed_address == RELAYED and s.mapped == MAPPED and s.lifetime == 300 and s.expires_at == 310.0


def test_second_401_is_final_and_maps_to_authentication_refused():
    s = TurnSession("user", "wrong")
    p = s.handle(s.allocate(), challenge(s.allocate()), 0.0)
    reply = s.handle(p, challenge(p), 0.0)
    assert isinstance(reply, Reply) and reply.code == 401 and reply.signed is None
    with pytest.raises(AuthenticationRefused) as exc:
        reply.raise_for_error(server="turn:x")
    assert exc.value.exit_code == 5 and exc.value.error_code == 401 and exc.value.step == "allocate"


def test_unsigned_and_badly_signed_answers_are_visible():
    s = allocated(TurnSession("user", "pw"))
    p = s.create_permission(PEER)
    unsigned = s.handle(p, answer(p, Class.ERROR, [("ERROR-CODE", (400, "Bad Request"))]), 1.0)
    assert unsigned.signed is None and "(unsigned)" in unsigned.describe() and s.unsigned_replies == 1
    p = s.channel_bind(PEER)
    forged = s.handle(p, answer(p, Class.RESPONSE, [], key=b"not the key"), 1.0)
    assert forged.signed is False and s.bad_signatures == 1 and "bad MESSAGE-INTEGRITY" in forged.describe()


def test_stale_nonce_retries_are_bounded():
    s = allocated(TurnSession("user", "pw", max_nonce_retries=2))
    p = s.refresh(600)
    for i in range(2):
        p = s.handle(p, answer(p, Class.ERROR, [("ERROR-CODE", (438, "Stale Nonce")), ("REALM", REALM),
                                                ("NONCE", f"n{i}".encode())]), 1.0)
        assert isinstance(p, Pending) and decode(p.data)["NONCE"] == f"n{i}".encode()
    final = s.handle(p, answer(p, Class.ERROR, [("ERROR-CODE", (438, "Stale Nonce")), ("NONCE", b"n9")]), 1.0)
    assert isinstance(final, Reply) and final.code == 438


def test_permissions_channels_refresh_and_release():
    s = allocated(TurnSession("user", "pw"))
    p = s.create_permission(PEER, TA("203.0.113.21", 1))
    assert decode(p.data).get_all("XOR-PEER-ADDRESS") == [PEER, TA("203.0.113.21", 1)]
    assert s.handle(p, answer(p, Class.RESPONSE, [], s.key), 5.0).ok
    assert s.permissions == {PEER.host: 5.0 + PERMISSION_LIFETIME, "203.0.113.21": 5.0 + PERMISSION_LIFETIME}
    p = s.channel_bind(PEER)
    assert decode(p.data)["CHANNEL-NUMBER"] == 0x4000
    assert s.channel_for(PEER) is None  # not confirmed yet: data still goes as Send indications
    assert decode(s.send(PEER, b"x")).method == Method.SEND
    assert s.handle(p, answer(p, Class.RESPONSE, [], s.key), 6.0).ok
    assert s.channel_for(PEER) == 0x4000 and s.channel_expiry[0x4000] == 6.0 + CHANNEL_LIFETIME
    assert s.send(PEER, b"hello") == b"\x40\x00\x00\x05hello"
    assert decode(s.channel_bind(PEER).data)["CHANNEL-NUMBER"] == 0x4000  # rebinding keeps the number
    assert decode(s.channel_bind(TA("203.0.113.22", 7)).data)["CHANNEL-NUMBER"] == 0x4001
    # refreshes due 60 s before each expiry: allocation at 600, permission (not covered by a channel) at 305
    due = s.refreshes_due(250.0)
    assert [d.method for d in due] == [Method.CREATE_PERMISSION]
    assert decode(due[0].data).get_all("XOR-PEER-ADDRESS") == [TA("203.0.113.21", 0)]
    assert {d.method for d in s.refreshes_due(560.0)} == {Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND}
    p = s.refresh(0)
    assert s.handle(p, answer(p, Class.RESPONSE, [("LIFETIME", 0)], s.key), 7.0).ok
    assert not s.allocated and not s.channels and not s.permissions


def test_data_path_receive():
    s = allocated(TurnSession("user", "pw"))
    p = s.channel_bind(PEER)
    s.handle(p, answer(p, Class.RESPONSE, [], s.key), 0.0)
    assert s.receive(b"\x40\x00\x00\x03abc\x00") == PeerData(PEER, b"abc", 0x4000)
    assert s.receive(b"\x40\x07\x00\x01z") == PeerData(None, b"z", 0x4007)
    ind = Message(Method.DATA, Class.INDICATION, None, [("XOR-PEER-ADDRESS", PEER), ("DATA", b"payload")]).encode()
    assert s.receive(ind) == PeerData(PEER, b"payload", None)
    with pytest.raises(MalformedMessage):
        s.receive(b"\x40\x00\x00\x09abc")
    stream = TurnSession("u", "p", stream=True)
    assert stream.channel_data(0x4000, b"abcde") == b"\x40\x00\x00\x05abcde\x00\x00\x00"


def test_allocate_options_and_rfc6062_requests():
    s = TurnSession()
    m = decode(s.allocate(transport=6, family=2, dont_fragment=True, even_port=True, lifetime=60).data)
    assert (m["REQUESTED-TRANSPORT"], m["REQUESTED-ADDRESS-FAMILY"], m["EVEN-PORT"]) == (6, 2, True)
    assert "DONT-FRAGMENT" in m and "USERNAME" not in m
    assert decode(s.connect(PEER).data).method == Method.CONNECT
    assert decode(s.connection_bind(7).data)["CONNECTION-ID"] == 7
    with pytest.raises(ValueError):
        s.allocate(transport=99)
    with pytest.raises(ValueError):
        s.allocate(family=3)


@pytest.mark.parametrize("code, cls, exit_code", [
    (401, AuthenticationRefused, 5), (441, AuthenticationRefused, 5),
    (403, AllocationRefused, 6), (437, AllocationRefused, 6), (440, AllocationRefused, 6),
    (442, AllocationRefused, 6), (486, AllocationRefused, 6), (508, AllocationRefused, 6),
    (400, TurnError, 1), (None, TurnError, 1),
])
def test_error_mapping_lives_here_once(code, cls, exit_code):
    err = error_for(code, "reason", server="turn:h")
    assert type(err) is cls and err.exit_code == exit_code and err.error_code == code and err.step == "allocate"
    assert error_for(403, "Forbidden", method=Method.CREATE_PERMISSION).message == "CreatePermission refused: 403 Forbidden"


def test_success_with_unknown_comprehension_required_attribute_fails():
    s = allocated(TurnSession("user", "pw"))
    p = s.create_permission(PEER)
    reply = s.handle(p, answer(p, Class.RESPONSE, [("0x0033", b"??")], s.key), 1.0)
    assert not reply.ok and not s.permissions
    with pytest.raises(TurnError, match=r"0x0033.*RFC 8489 §6.3.3"):
        reply.raise_for_error()
