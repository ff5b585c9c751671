import pytest

from natkit.errors import InvalidURI
from natkit.uri import parse_server, parse_turn_uri


@pytest.mark.parametrize(
    "text, scheme, host, port, transport",
    [
        ("example.org", "stun", "example.org", 3478, "udp"),
        ("example.org:19302", "stun", "example.org", 19302, "udp"),
        ("stun:127.0.0.1", "stun", "127.0.0.1", 3478, "udp"),
        ("stun:127.0.0.1:3479", "stun", "127.0.0.1", 3479, "udp"),
        ("STUN:Host.Example:1", "stun", "Host.Example", 1, "udp"),
        ("stuns:example.org", "stuns", "example.org", 5349, "tcp"),
        ("[::1]:3478", "stun", "::1", 3478, "udp"),
        ("::1", "stun", "::1", 3478, "udp"),
        ("stun:[2001:db8::1]:5000", "stun", "2001:db8::1", 5000, "udp"),
        ("turn:127.0.0.1", "turn", "127.0.0.1", 3478, "udp"),
        ("turn:127.0.0.1:3478?transport=tcp", "turn", "127.0.0.1", 3478, "tcp"),
        ("turns:turn.example:443", "turns", "turn.example", 443, "tcp"),
        ("turns:turn.example?transport=tcp", "turns", "turn.example", 5349, "tcp"),
    ],
)
def test_parse_valid(text, scheme, host, port, transport):
    uri = parse_server(text)
    assert (uri.scheme, uri.host, uri.port, uri.transport) == (scheme, host, port, transport)


def test_transport_option_applies_to_bare_host():
    assert parse_server("127.0.0.1", transport="tcp").transport == "tcp"
    assert parse_server("turn:h?transport=udp", transport="tcp").transport == "udp"  # the URI wins


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", "http://example.org", "stun://example.org", "stun:host:99999", "stun:host:0",
        "stun:host?transport=udp", "turn:host?transport=sctp", "turn:user:pw@host", "turns:host?transport=udp",
        "stun:[not-v6]:1", "stun:ho st", "1:2:3:zz",
    ],
)
def test_parse_invalid(text):
    with pytest.raises(InvalidURI):
        parse_server(text)


def test_turn_uri_rejects_stun():
    with pytest.raises(InvalidURI, match="STUN URI"):
        parse_turn_uri("stun:127.0.0.1")
    assert parse_turn_uri("127.0.0.1:3479").scheme == "turn"


def test_str_roundtrip():
    for text in ["turn:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp", "turns:h:5349", "stun:[::1]:3478"]:
        assert str(parse_server(text)) == text


@pytest.mark.parametrize("text", ["turn:[::1", "turn:[::1]:", "stun:", "turn:h:3478?transport="])
def test_parse_invalid_more(text):
    with pytest.raises(InvalidURI):
        parse_server(text)


def test_ice_url_needs_its_scheme():
    from natkit.uri import parse_ice_url

    assert str(parse_ice_url("turn:[::1]:3478")) == "turn:[::1]:3478"
    assert parse_ice_url("stuns:h").scheme == "stuns"
    for bad in ["h:3478", "https://h", "turn:[::1"]:
        with pytest.raises(InvalidURI):
            parse_ice_url(bad)


@pytest.mark.parametrize("seconds, text", [
    (0.05, "50 ms"), (0.9994, "999 ms"), (0.99998, "1 s"), (2.5, "2.5 s"), (2.99978, "3 s"), (9.99995, "10 s"),
    (59.96, "60 s"), (120.4, "120 s"),
])
def test_format_duration(seconds, text):
    from natkit.model import format_duration

    assert format_duration(seconds) == text
