"""Hardened profiles, the open-relay test config, TLS material, new config fields (pure: no network)."""

from __future__ import annotations

import datetime
import ipaddress

import pytest

from natkit.coturn.config import CoturnConfig
from natkit.coturn.profiles import (
    DENIED_PEER_RANGES,
    LAB_RANGES,
    SPECIAL_PURPOSE_RANGES,
    build,
    container_hardening,
    detect_external_ip,
    lab_profile,
    open_relay_for_testing,
)
from natkit.errors import CheckFailed, UsageError
from natkit.tls import SELF_SIGNED_WARNING, cert_info, self_signed


def lines(cfg: CoturnConfig) -> list[str]:
    return [l for l in cfg.render().splitlines() if l and not l.startswith("#")]


def test_deny_list_covers_every_iana_special_purpose_block():
    nets = [ipaddress.ip_network(r) for r in DENIED_PEER_RANGES]
    # one address from each block in the IANA registries, and the bypass spellings
    for addr in ["0.0.0.0", "10.1.2.3", "100.64.0.1", "127.0.0.1", "169.254.169.254", "172.31.255.255", "192.0.0.8", "192.0.2.1",
                 "192.31.196.1", "192.52.193.1", "192.88.99.1", "192.168.1.1", "192.175.48.1", "198.18.0.1", "198.51.100.7",
                 "203.0.113.9", "224.0.0.251", "239.255.255.250", "240.0.0.1", "255.255.255.255",
                 "::", "::1", "::127.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1",
                 "100::1", "2001::1", "2001:2::1", "2001:db8::1", "2002:7f00:1::", "3fff::1", "5f00::1", "fc00::1", "fd12::1",
                 "fe80::1", "fec0::1", "ff02::1"]:
        a = ipaddress.ip_address(addr)
        assert any(a in n for n in nets if n.version == a.version), addr
    # and nothing ordinary
    for addr in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450::1"]:
        a = ipaddress.ip_address(addr)
        assert not any(a in n for n in nets if n.version == a.version), addr
    assert all(reason for _, reason in SPECIAL_PURPOSE_RANGES)


def test_recommended_profile_lines():
    p = build("recommended", secrets=("new", "old"), listening_ips=("198.51.100.4",), external_ip="198.51.100.4")
    out = lines(p.config)
    for expected in ["use-auth-secret", "static-auth-secret=new", "static-auth-secret=old", "realm=natkit", "no-cli",
                     "no-multicast-peers", "no-tcp-relay", "no-rfc5780", "user-quota=12", "total-quota=2000", "max-bps=3000000",
                     "no-software-attribute", "denied-peer-ip=169.254.0.0-169.254.255.255", "denied-peer-ip=::ffff:0:0-::ffff:ffff:ffff",
                     "external-ip=198.51.100.4"]:
        assert expected in out, expected
    # exactly one exception: the server's own public address, before the deny list
    assert [l for l in out if l.startswith("allowed-peer-ip=")] == ["allowed-peer-ip=198.51.100.4"]
    assert out.index("allowed-peer-ip=198.51.100.4") < out.index("denied-peer-ip=198.51.100.0-198.51.100.255")
    assert "allow-loopback-peers" not in out and "prometheus" not in out
    assert p.files == {}


def test_strict_profile_is_stricter():
    p = build("strict", secrets=("s",), listening_ips=("198.51.100.4",))
    out = lines(p.config)
    assert "user-quota=4" in out and "max-bps=1000000" in out and "stale-nonce=600" in out
    assert "no-stun-backward-compatibility" in out and "response-origin-only-with-rfc5780" in out and "no-tcp-relay" in out
    with pytest.raises(UsageError):
        build("strict", secrets=("s",), tcp_relay=True)


def test_options_that_open_features():
    p = build("recommended", secrets=("s",), listening_ips=("198.51.100.4", "198.51.100.5"), tcp_relay=True, nat_discovery=True,
              prometheus=True)
    out = lines(p.config)
    assert "no-tcp-relay" not in out and "no-rfc5780" not in out
    assert "prometheus" in out and "prometheus-address=127.0.0.1" in out  # metrics on loopback unless asked
    p = build("recommended", secrets=("s",), prometheus=True, prometheus_address="0.0.0.0")
    assert any("Prometheus" in w for w in p.warnings)


def test_tls_without_cert_generates_a_self_signed_pair_with_a_warning():
    p = build("recommended", secrets=("s",), listening_ips=("198.51.100.4",), tls_port=5349, external_ip="203.0.113.7")
    assert SELF_SIGNED_WARNING in p.warnings
    out = lines(p.config)
    assert "tls-listening-port=5349" in out and "no-tlsv1" in out and "no-tlsv1_1" in out and "cert=turn_server_cert.pem" in out
    info = cert_info(p.files["turn_server_cert.pem"])
    assert info.self_signed and info.matches("203.0.113.7") and info.matches("198.51.100.4") and not info.matches("example.org")
    assert p.files["turn_server_pkey.pem"].startswith(b"-----BEGIN PRIVATE KEY-----")
    # with a certificate given: no generation, no warning
    p = build("recommended", secrets=("s",), tls_port=5349, cert="/etc/cert.pem", pkey="/etc/key.pem")
    assert p.files == {} and SELF_SIGNED_WARNING not in p.warnings


def test_lab_profile_allows_exactly_the_lab_ranges():
    p = lab_profile(("s",), listening_ips=("203.0.113.1",))
    allowed = [l for l in lines(p.config) if l.startswith("allowed-peer-ip=")]
    assert allowed == ["allowed-peer-ip=203.0.113.0-203.0.113.255", "allowed-peer-ip=198.51.100.0-198.51.100.255",
                       "allowed-peer-ip=2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"]
    assert set(LAB_RANGES) <= {r for r in ("203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32")}
    # everything else stays denied
    assert "denied-peer-ip=10.0.0.0-10.255.255.255" in lines(p.config)
    with pytest.raises(UsageError, match="too wide"):
        build("lab", secrets=("s",), allowed_peers=("10.0.0.0/8",))


@pytest.mark.parametrize("kwargs", [dict(profile="nope", secrets=("s",)), dict(secrets=()), dict(secrets=("s",), external_ip="host.example"),
                                    dict(secrets=("s",), allowed_peers=("not-a-net",))])
def test_profile_usage_errors(kwargs):
    with pytest.raises(UsageError):
        build(**kwargs)


def test_open_relay_for_testing_has_every_hole():
    out = lines(open_relay_for_testing(tls_port=5349, cert="c.pem", pkey="k.pem"))
    assert "no-auth" in out and "allow-loopback-peers" in out and "no-cli" in out
    assert not any(l.startswith("denied-peer-ip") for l in out)
    assert "no-tcp-relay" not in out and "no-tlsv1" not in out and "no-software-attribute" not in out
    assert "cipher-list=DEFAULT:@SECLEVEL=0" in out
    out = lines(open_relay_for_testing(cli_ip="203.0.113.20"))
    assert "cli-ip=203.0.113.20" in out and "no-cli" not in out and "allow-loopback-peers" not in out


def test_new_config_fields_render_nothing_by_default():
    base = CoturnConfig(static_auth_secrets=("a",)).render()
    for word in ("quota", "max-bps", "no-software-attribute", "prometheus", "stale-nonce", "backward", "response-origin"):
        assert word not in base
    tls = lines(CoturnConfig(static_auth_secrets=("a",), tls_listening_port=5349, cert="c", pkey="k", tls_min_version="1.3"))
    assert {"no-tlsv1", "no-tlsv1_1", "no-tlsv1_2"} <= set(tls)
    with pytest.raises(UsageError):
        CoturnConfig(static_auth_secrets=("a",), tls_min_version="0.9").render()
    with pytest.raises(UsageError):
        CoturnConfig(static_auth_secrets=("a",), user_quota=-1).render()
    with pytest.raises(UsageError):
        CoturnConfig(static_auth_secrets=("a",), prometheus=True, prometheus_address="any").render()


class _R:
    def __init__(self, server, ok, ip=None, error=None):
        self.server, self.ok, self.error = server, ok, error
        self.mapped = ip


class _Report:
    def __init__(self, results):
        self.results = results
        self.public_ips = tuple(dict.fromkeys(r.mapped for r in results if r.ok))

    @property
    def ok(self):
        return any(r.ok for r in self.results)


def _fake(results):
    return lambda servers, timeout: _Report(results)


def test_detect_external_ip_cross_checks():
    agree = _fake([_R("a", True, "198.51.100.9"), _R("b", True, "198.51.100.9")])
    assert detect_external_ip(["a", "b"], probe=agree) == "198.51.100.9"
    assert detect_external_ip(["a", "b"], probe=agree, expected="198.51.100.9/10.0.0.2") == "198.51.100.9"
    with pytest.raises(CheckFailed, match="disagree"):
        detect_external_ip(["a", "b"], probe=_fake([_R("a", True, "198.51.100.9"), _R("b", True, "198.51.100.10")]))
    with pytest.raises(CheckFailed, match="STUN sees"):
        detect_external_ip(["a"], probe=agree, expected="203.0.113.1")
    with pytest.raises(CheckFailed, match="no STUN server answered"):
        detect_external_ip(["a"], probe=_fake([_R("a", False, error="timeout")]))
    with pytest.raises(UsageError):
        detect_external_ip([])


def test_cert_info_expiry_and_names():
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    cert, _ = self_signed(["turn.example.org", "*.example.net"], days=10, now=now)
    info = cert_info(cert, now=now + datetime.timedelta(days=11))
    assert info.days_left < 0 and info.key == "EC secp256r1" and info.signature_hash == "sha256"
    assert info.matches("turn.example.org") and info.matches("a.example.net") and not info.matches("a.b.example.net")
    with pytest.raises(UsageError):
        cert_info(b"garbage")
    with pytest.raises(UsageError):
        self_signed([])


def test_container_hardening_options():
    h = container_hardening()
    assert h["network_mode"] == "host" and h["read_only"] and h["cap_drop"] == ["ALL"] and h["cap_add"] == ["NET_BIND_SERVICE"]
    assert h["user"] == "nobody" and h["ulimits"][0]["soft"] >= 65536


def test_bare_public_external_ip_is_completed_with_the_private_relay_address():
    """Behind a 1:1 NAT a bare external-ip=PUBLIC makes coturn refuse its own relay
    addresses (403 on CreatePermission): the profile names the private part."""
    prof = build("recommended", secrets=("s",), listening_ips=("10.0.0.10",), external_ip="203.0.113.10")
    assert prof.config.external_ip == "203.0.113.10/10.0.0.10"
    assert "external-ip=203.0.113.10/10.0.0.10" in prof.config.render()
    assert any("completed to 203.0.113.10/10.0.0.10" in w for w in prof.warnings)
    assert "203.0.113.10" in prof.config.allowed_peer_ranges
    # relay-ip wins over the listening address; the same family only
    prof = build("recommended", secrets=("s",), listening_ips=("10.0.0.10", "2001:db8::10"), relay_ips=("10.0.1.10",),
                 external_ip="203.0.113.10")
    assert prof.config.external_ip == "203.0.113.10/10.0.1.10"
    # nothing to complete: already PUBLIC/PRIVATE, the public address is local, or a wildcard listener
    for listen, ext in ((("10.0.0.10",), "203.0.113.10/10.0.0.9"), (("203.0.113.10",), "203.0.113.10"),
                        (("0.0.0.0",), "203.0.113.10"), (("2001:db8::10",), "203.0.113.10")):
        prof = build("recommended", secrets=("s",), listening_ips=listen, external_ip=ext)
        assert prof.config.external_ip == ext, listen
        assert not any("completed" in w for w in prof.warnings)


def test_from_options_users_as_lists_become_pairs():
    """``turn up --user`` pairs may arrive as lists (JSON, typer); the config holds (name, password) tuples."""
    from natkit.coturn.profiles import from_options

    prof = from_options(users=[["alice", "pw1"], ("bob", "pw2")], secrets=["x" * 24])
    assert prof.config.auth == "long-term"
    assert prof.config.users == (("alice", "pw1"), ("bob", "pw2"))
    assert prof.config.static_auth_secrets == ()
