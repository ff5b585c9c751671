"""``natkit turn up --external-ip auto`` behind the lab's 1:1 cloud NAT, checked by natkit doctor.

The STUN cross-check (natkit.coturn.profiles) must give ``PUBLIC/PRIVATE``
there: ``PUBLIC`` alone makes coturn check its own private relay address
against the deny list (the fault lab's ``deny-own-relay``). Two STUN servers
(Debian's stund, an independent RFC 3489 implementation, on two addresses)
sit on the lab's internet; coturn runs through the real ``natkit turn up``
inside the server's namespace.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

from natkit.coturn.profiles import detect_external_ip_value
from natkit.errors import CheckFailed, UsageError
from natkit.model import TransportAddress as TA


@dataclasses.dataclass
class _R:
    server: str
    ok: bool
    mapped: str | None = None
    local: str | None = None
    error: str | None = None

    @property
    def mapped_address(self):
        return TA(self.mapped, 1) if self.mapped else None

    @property
    def local_address(self):
        return TA(self.local, 2) if self.local else None


@dataclasses.dataclass
class _Report:
    results: tuple

    @property
    def ok(self):
        return any(r.ok for r in self.results)

    @property
    def public_ips(self):
        return tuple(dict.fromkeys(r.mapped for r in self.results if r.ok))


def _probe(*results, seen=None):
    def probe(servers, timeout, local_host=None):
        if seen is not None:
            seen.append(local_host)
        return _Report(tuple(results))
    return probe


def test_behind_a_one_to_one_nat_the_value_names_public_and_private():
    seen: list = []
    probe = _probe(_R("a", True, "203.0.113.10", "10.0.0.10"), _R("b", True, "203.0.113.10", "10.0.0.10"), seen=seen)
    assert detect_external_ip_value(["a", "b"], listening_ips=["10.0.0.10"], probe=probe) == "203.0.113.10/10.0.0.10"
    assert seen == ["10.0.0.10"]  # the probe leaves from the listening address


def test_no_nat_needs_no_external_ip():
    probe = _probe(_R("a", True, "203.0.113.10", "203.0.113.10"))
    assert detect_external_ip_value(["a"], listening_ips=["203.0.113.10"], probe=probe) is None


def test_wildcard_listening_takes_the_probe_local_address():
    probe = _probe(_R("a", True, "203.0.113.10", "172.31.5.6"))
    assert detect_external_ip_value(["a"], listening_ips=["0.0.0.0"], probe=probe) == "203.0.113.10/172.31.5.6"


def test_disagreeing_or_silent_servers_refuse_to_guess():
    with pytest.raises(CheckFailed, match="disagree"):
        detect_external_ip_value(["a", "b"], probe=_probe(_R("a", True, "203.0.113.10", "10.0.0.10"),
                                                          _R("b", True, "203.0.113.11", "10.0.0.10")))
    with pytest.raises(CheckFailed, match="no STUN server answered"):
        detect_external_ip_value(["a"], probe=_probe(_R("a", False, error="timeout")))
    with pytest.raises(UsageError):
        detect_external_ip_value([])


def test_auto_without_stun_is_a_usage_error():
    from natkit.cli.turn import resolve_external_ip

    with pytest.raises(UsageError, match="--stun"):
        resolve_external_ip("auto", [], ["10.0.0.10"])
    assert resolve_external_ip("198.51.100.1", [], ["10.0.0.10"]) == "198.51.100.1"


# ---------------------------------------------------------------- for real, in the fault lab

@pytest.mark.integration
@pytest.mark.parametrize("external", ["auto", None])
def test_turn_up_behind_the_cloud_nat(external, tmp_path):
    from natkit.lab import faults as F
    from natkit.lab import netns
    from natkit.pytest_plugin import require_coturn, require_lab

    require_lab(turn=True)
    require_coturn()
    if shutil.which("stund") is None:
        if os.environ.get("NATKIT_REQUIRE_NETNS") == "1":
            pytest.fail("stund (apt-get install stun-server) is needed here")
        pytest.skip("stund is not installed (apt-get install stun-server)")
    state = tmp_path / "state"
    with F.FaultLab("healthy", server="none", stun_servers=True) as lab:
        lab.popen("stun", ["stund", "-h", F.STUN_IPS[0], "-a", F.STUN_IPS[1]])
        env = netns.installation_env()
        env.update(NATKIT_STATE_DIR=str(state), NATKIT_QUIET="1", NATKIT_TURN_SECRET=lab.secret)  # never on argv
        argv = ["natkit", "turn", "up", "--backend", "native", "--listen", F.SERVER_IP, "--realm", F.REALM, "--name", "cloud", "--json"]
        if external:
            argv += ["--external-ip", external, "--stun", f"stun:{F.STUN_IPS[0]}", "--stun", f"stun:{F.STUN_IPS[1]}"]
        import subprocess

        up = subprocess.run(netns.netns_argv(lab.ns("server"), argv), env=env, capture_output=True, text=True, timeout=60, check=False)
        try:
            assert up.returncode == 0, up.stderr
            conf = next(state.rglob("turnserver.conf")).read_text()
            report, _, code = lab.run_doctor()
        finally:
            subprocess.run(netns.netns_argv(lab.ns("server"), ["natkit", "turn", "down", "--name", "cloud"]), env=env,
                           capture_output=True, timeout=30, check=False)
    causes = [f["cause"] for f in report["findings"]]
    relayed = report["facts"]["relayed"]["A"]
    if external == "auto":
        assert f"external-ip={F.PUBLIC_IP}/{F.SERVER_IP}\n" in conf
        assert relayed.startswith(F.PUBLIC_IP + ":")
        assert not {"external-ip-missing", "external-ip-wrong", "deny-list-own-relay"} & set(causes), json.dumps(report["findings"])
        assert report["facts"]["delivered"]["A→B"] and report["facts"]["delivered"]["B→A"]
        # the recommended profile denies the documentation ranges the lab's client lives in: only that is left
        assert set(causes) <= {"peer-denied"}
    else:
        assert "external-ip=" not in conf
        assert report["verdict"] == "external-ip-missing" and code == 7
        assert report["findings"][0]["fix"] == f"external-ip={F.PUBLIC_IP}/{F.SERVER_IP}"
