"""turns: (TURN over TLS) through a real coturn with a self-signed certificate."""


import pytest

from natkit.coturn.config import CoturnConfig
from natkit.coturn.server import CoturnServer, free_port
from natkit.credentials import mint
from natkit.errors import ServerUnreachable
from natkit.probe import probe
from natkit.pytest_plugin import require_coturn
from natkit.relay import relay_check


def self_signed() -> tuple[bytes, bytes]:
    from natkit.tls import self_signed as make

    return make(["127.0.0.1", "localhost"], days=1)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    require_coturn()
    cert, key = self_signed()
    ca = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.write_bytes(cert)
    port, tls_port = free_port(), free_port()
    cfg = CoturnConfig(listening_port=port, tls_listening_port=tls_port, cert="cert.pem", pkey="key.pem",
                       static_auth_secrets=("tls-secret",), allow_loopback_peers=True, allowed_peer_ranges=("127.0.0.1",))
    # its own state directory: the module fixture must not change the session's environment
    server = CoturnServer(cfg, backend="native", name="tls", extra_files={"cert.pem": cert, "key.pem": key},
                          state_dir=tmp_path_factory.mktemp("tls-state"), ephemeral=True)
    info = server.start()
    try:
        yield info, tls_port, str(ca)
    finally:
        server.stop()


def test_turns_uri_is_advertised(tls_server):
    info, tls_port, _ = tls_server
    assert f"turns:127.0.0.1:{tls_port}" in info.uris


def test_relay_over_tls_verified_with_ca(tls_server):
    _, tls_port, ca = tls_server
    cred = mint("tls-secret", "u", 60)
    report = relay_check(f"turns:127.0.0.1:{tls_port}", username=cred.username, password=cred.password,
                         cafile=ca, messages=5, payload_bytes=100_000)
    assert report.ok and report.tls and report.transport == "tcp", report.failures
    assert set(report.path.selected) == {"offerer", "answerer"} and all(p.relayed for p in report.path.selected.values())


def test_untrusted_certificate_is_refused_unless_insecure(tls_server):
    _, tls_port, _ = tls_server
    cred = mint("tls-secret", "u", 60)
    with pytest.raises(ServerUnreachable, match="certificate"):
        relay_check(f"turns:127.0.0.1:{tls_port}", username=cred.username, password=cred.password, timeout=3)
    report = relay_check(f"turns:127.0.0.1:{tls_port}", username=cred.username, password=cred.password,
                         verify_tls=False, messages=3, payload_bytes=0)
    assert report.ok


def test_stuns_probe(tls_server):
    _, tls_port, _ = tls_server
    report = probe([f"stuns:127.0.0.1:{tls_port}"], verify_tls=False)
    assert report.ok and report.results[0].tls and report.results[0].mapped_address.host == "127.0.0.1"
