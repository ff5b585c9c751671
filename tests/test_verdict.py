"""The one verdict and exit-code policy (natkit.errors): pure, no network."""

from __future__ import annotations

import inspect

import pytest

from natkit import errors
from natkit.errors import (
    EXIT_ALLOCATION_REFUSED,
    EXIT_AUTH_REFUSED,
    EXIT_CHECK_FAILED,
    EXIT_ENVIRONMENT,
    EXIT_INTERNAL,
    EXIT_NO_CONNECTIVITY,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Failure,
    NatkitError,
    exit_code_for,
    exit_code_of,
    most_severe,
)


def all_error_classes() -> list[type[NatkitError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, NatkitError)]


def test_every_error_kind_is_unique_and_maps_to_its_exit_code():
    classes = all_error_classes()
    assert len(classes) >= 25
    kinds = {}
    for cls in classes:
        assert cls.kind not in kinds or kinds[cls.kind] is cls or cls.kind == "error", (cls, kinds.get(cls.kind))
        kinds.setdefault(cls.kind, cls)
        assert exit_code_of(cls.kind) == cls.exit_code, cls


def test_a_kind_cannot_change_its_exit_code():
    with pytest.raises(TypeError, match="already has exit code 5"):
        class Clash(errors.CheckFailed):
            kind = "auth_refused"


def test_severity_order_earlier_steps_outrank_later_verdicts():
    ladder = [EXIT_INTERNAL, EXIT_USAGE, EXIT_ENVIRONMENT, EXIT_UNREACHABLE, EXIT_AUTH_REFUSED,
              EXIT_ALLOCATION_REFUSED, EXIT_NO_CONNECTIVITY, EXIT_CHECK_FAILED]
    for i, code in enumerate(ladder):
        for later in ladder[i + 1:]:
            assert most_severe([later, code, 0]) == code
            assert most_severe([code, later]) == code
    assert most_severe([]) == 0 and most_severe([0, 0]) == 0
    assert most_severe([0, 42]) == 42 and most_severe([1, 42]) == 42 and most_severe([7, 42]) == 7  # unknown: a failure


def test_failure_takes_its_exit_code_from_its_kind():
    assert Failure("auth_refused", "allocate", "401").exit_code == 5
    assert Failure.check("echo", "mismatch").exit_code == 1 and Failure.check("echo", "x").kind == "check_failed"
    with pytest.raises(ValueError, match="unknown failure kind 'nonsense'"):
        Failure("nonsense", None, "x")
    f = Failure.from_error(errors.AllocationRefused("486 Allocation Quota Reached", step="allocate", server="turn:a",
                                                    hint="quota"), server="turn:b")
    assert (f.kind, f.step, f.server, f.exit_code) == ("allocation_refused", "allocate", "turn:b", 6)
    assert f.message == "486 Allocation Quota Reached (quota)" and f.one_line() == "allocate: turn:b: 486 Allocation Quota Reached (quota)"


@pytest.mark.parametrize("kinds, code", [
    ((), 0),
    (("check_failed",), 1),
    (("check_failed", "auth_refused"), 5),  # one URI refused credentials, one failed an echo
    (("auth_refused", "auth_refused"), 5),  # wrong secret, UDP and TCP
    (("auth_refused", "timeout"), 4),  # a dead server outranks a refusal elsewhere
    (("no_connectivity", "allocation_refused", "check_failed"), 6),
    (("not_running", "timeout"), 3),
    (("incompatible_dependency", "auth_refused"), 70),
])
def test_exit_code_for_picks_the_most_severe(kinds, code):
    assert exit_code_for(Failure(k, None, k) for k in kinds) == code


def test_protocol_error_is_in_the_tree():
    from natkit.signaling import protocol as p

    with pytest.raises(NatkitError) as exc:
        p.parse_client_message("{", 1024)
    assert isinstance(exc.value, ValueError) and exc.value.exit_code == EXIT_USAGE
    assert exc.value.to_dict()["code"] == p.BAD_JSON and exc.value.to_dict()["kind"] == "signaling_protocol"


def test_probe_exit_code_by_failure():
    from natkit.model import TransportAddress
    from natkit.probe import BindingResult, ProbeReport

    def result(ok: bool, kind: str | None) -> BindingResult:
        addr = TransportAddress("127.0.0.1", 3478)
        return BindingResult("s", "stun:127.0.0.1:3478", "udp", False, addr, ok, addr if ok else None, None, 1.0, 1,
                             None, None, None, None if ok else "why", kind)

    def report(*results) -> ProbeReport:
        return ProbeReport("natkit.probe/1", "udp", results, None, (), None, None, 1.0)

    assert report(result(True, None), result(False, "timeout")).exit_code == 0
    assert report(result(False, "timeout"), result(False, "error_response")).exit_code == 4
    assert report(result(False, "no_mapped_address")).exit_code == 1  # answered, but unusably
    assert [f.kind for f in report(result(False, "timeout")).failures] == ["timeout"]


def test_nat_status_codes_come_from_the_error_tree():
    from natkit.nat import EXIT_BY_STATUS
    from natkit.nat_classify import STATUS_KINDS

    assert EXIT_BY_STATUS == {"determined": 0, "inconclusive": 1, "udp_blocked": 3, "no_usable_server": 3}
    assert all(exit_code_of(kind) == EXIT_BY_STATUS[status] for status, kind in STATUS_KINDS.items())


def test_bind_failure_is_environmental():
    """--local with an address this host does not have: nothing is sent, exit 3 (it was 4, 'unreachable')."""
    import json
    import subprocess

    from natkit.signaling.process import natkit_command

    proc = subprocess.run(natkit_command("probe", "--local", "203.0.113.77", "127.0.0.1:9", "--json"),
                          check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert result["error_kind"] == "bind_failed" and "cannot bind UDP 203.0.113.77" in result["error"]
