import pytest

from natkit.coturn.config import DEFAULT_DENIED_PEER_RANGES, CoturnConfig, cidr_to_range
from natkit.errors import UsageError


def lines(cfg: CoturnConfig) -> list[str]:
    return [l for l in cfg.render().splitlines() if l and not l.startswith("#")]


def test_default_rest_config_is_hardened():
    out = lines(CoturnConfig(static_auth_secrets=("abc",)))
    for expected in [
        "listening-ip=127.0.0.1", "listening-port=3478", "relay-ip=127.0.0.1", "min-port=49152", "max-port=65535",
        "realm=natkit", "use-auth-secret", "static-auth-secret=abc", "fingerprint", "no-cli", "no-multicast-peers",
        "log-file=stdout", "no-tls", "no-dtls",
    ]:
        assert expected in out
    assert "allow-loopback-peers" not in out
    assert "no-auth" not in out and "lt-cred-mech" not in out
    # loopback, private, link-local (metadata), CGNAT and unique-local are denied
    for rng in ["127.0.0.0-127.255.255.255", "10.0.0.0-10.255.255.255", "172.16.0.0-172.31.255.255",
                "192.168.0.0-192.168.255.255", "169.254.0.0-169.254.255.255", "100.64.0.0-100.127.255.255",
                "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1", "::ffff:0:0-::ffff:ffff:ffff"]:
        assert f"denied-peer-ip={rng}" in out


def test_allowed_before_denied_and_loopback_exception():
    out = lines(CoturnConfig(static_auth_secrets=("a",), allow_loopback_peers=True, allowed_peer_ranges=("127.0.0.1",)))
    assert "allow-loopback-peers" in out
    assert out.index("allowed-peer-ip=127.0.0.1") < out.index("denied-peer-ip=127.0.0.0-127.255.255.255")


def test_long_term_and_external_ip_and_several_secrets():
    out = lines(CoturnConfig(auth="long-term", users=(("alice", "pw"),), external_ip="203.0.113.5/10.0.0.5"))
    assert "lt-cred-mech" in out and "user=alice:pw" in out and "external-ip=203.0.113.5/10.0.0.5" in out
    out = lines(CoturnConfig(static_auth_secrets=("new", "old")))
    assert out.count("use-auth-secret") == 1
    assert "static-auth-secret=new" in out and "static-auth-secret=old" in out


def test_two_listening_ips_and_explicit_relay():
    out = lines(CoturnConfig(static_auth_secrets=("a",), listening_ips=("127.0.0.1", "127.0.0.2"), relay_ips=("127.0.0.1",)))
    assert "listening-ip=127.0.0.2" in out
    assert [l for l in out if l.startswith("relay-ip=")] == ["relay-ip=127.0.0.1"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(static_auth_secrets=()),
        dict(static_auth_secrets=("a b",)),
        dict(static_auth_secrets=("a",), listening_ips=()),
        dict(static_auth_secrets=("a",), listening_ips=("not-an-ip",)),
        dict(static_auth_secrets=("a",), listening_port=0),
        dict(static_auth_secrets=("a",), min_port=60000, max_port=50000),
        dict(static_auth_secrets=("a",), auth="magic"),
        dict(auth="long-term"),
        dict(static_auth_secrets=("a",), tls_listening_port=5349),
        dict(static_auth_secrets=("a",), realm="has space"),
    ],
)
def test_invalid_configs_raise_usage_error(kwargs):
    with pytest.raises(UsageError):
        CoturnConfig(**kwargs).render()


def test_cidr_to_range():
    assert cidr_to_range("10.0.0.0/8") == "10.0.0.0-10.255.255.255"
    assert cidr_to_range("169.254.169.254") == "169.254.169.254"
    assert cidr_to_range("::1/128") == "::1"
    with pytest.raises(UsageError):
        cidr_to_range("nonsense")


def test_default_deny_list_covers_metadata_and_mapped_v6():
    import ipaddress

    nets = [ipaddress.ip_network(r) for r in DEFAULT_DENIED_PEER_RANGES]
    for addr in ["169.254.169.254", "127.0.0.1", "10.1.2.3", "100.64.0.1", "0.0.0.0", "::ffff:127.0.0.1", "fd00::1"]:
        a = ipaddress.ip_address(addr)
        assert any(a.version == n.version and a in n for n in nets), addr
