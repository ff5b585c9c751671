"""natkit doctor against pion/turn (tests/servers/pionturn): the same faults, a second implementation.

pion/turn v2 runs behind the lab's 1:1 cloud NAT (``-external-ip`` is the
address it tells clients while it binds the private one), with TURN over
TLS from Go's crypto/tls for the certificate faults. Two faults exist only
here, through pionturn's knobs: ChannelBind answers without
MESSAGE-INTEGRITY, and ChannelData dropped. Faults pion cannot express
(user quota, port exhaustion, a skewed clock for a static Go binary) are
coturn's only (``natkit.lab.faults.FAULTS[...].servers``).
"""

from __future__ import annotations

import json

import pytest

from natkit.doctor.causes import CAUSES
from natkit.lab import faults as F
from natkit.pytest_plugin import require_lab
from tests.servers import PionTurn, pion_binary

pytestmark = pytest.mark.integration

PION_FAULTS = [f for f in F.FAULTS.values() if "pion" in f.servers]


@pytest.fixture(scope="module")
def pion(pytestconfig):
    require_lab(turn=False)
    return pion_binary(pytestconfig)


def test_pion_faults_cover_the_network_tls_and_auth_causes():
    causes = {f.cause for f in PION_FAULTS}
    assert {"healthy", "external-ip-missing", "external-ip-wrong", "deny-list-own-relay", "relay-ports-blocked", "udp-blocked",
            "udp-blocked-no-fallback", "tls-cert-wrong-name", "tls-cert-expired", "tls-cert-self-signed", "auth-wrong-secret",
            "auth-credential-expired", "family-mismatch", "channel-bind-broken"} <= causes


def run_on_pion(binary, fault: F.FaultSpec) -> tuple[dict, int, str]:
    """Build ``fault`` with pion/turn as the server; run the doctor; ``(report, exit code, pion's log)``."""
    with F.FaultLab(fault, server="none") as lab:
        tls = (lab.tls["cert"], lab.tls["key"]) if lab.tls else None
        with PionTurn(binary, F.SERVER_IP, F.PORT, ns=lab.ns("server"), secret=lab.secret, args=F.pion_args(fault),
                      tcp=fault.tcp, tls=tls, tls_port=F.TLS_PORT, workdir=lab.dir) as srv:
            lab.start_holders()
            report, _, code = lab.run_doctor()
            return report, code, srv.log()


@pytest.mark.parametrize("fault", PION_FAULTS, ids=lambda f: f.id)
def test_pion_fault_matrix(pion, fault):
    report, code, log = run_on_pion(pion, fault)
    assert report["verdict"] == fault.cause, (json.dumps(report["findings"], indent=1), log)
    assert code == CAUSES[fault.cause].exit_code
    assert report["duration_ms"] <= (2000 if fault.cause == "healthy" else 10_000)


def test_unsigned_channelbind_evidence_is_the_post_mortems(pion):
    report, _, _ = run_on_pion(pion, F.FAULTS["channelbind-unsigned"])
    top = report["findings"][0]
    assert top["data"]["channel_bind"] and all(a == "unsigned success" for a in top["data"]["channel_bind"])
    assert "MESSAGE-INTEGRITY" in top["fix"]
