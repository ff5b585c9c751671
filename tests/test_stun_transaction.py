"""natkit.stun.transaction: the RFC 8489 §6.2 retransmission machine, driven by a fake clock (no sockets)."""

from __future__ import annotations

import pytest

from natkit.errors import StunTimeout, UsageError
from natkit.stun.transaction import (
    Action,
    ClientTransaction,
    Limit,
    Retransmission,
    TransactionTable,
)


def run(policy: Retransmission, answer_at: float | None = None, step: float = 0.001):
    """Drive a transaction with a fake clock; return (send times, final action, transaction)."""
    now = 0.0
    tx = ClientTransaction(policy, now)
    sends = []
    while True:
        action = tx.poll(now)
        if action is Action.SEND:
            sends.append(round(now, 6))
            continue
        if action is Action.TIMEOUT:
            return sends, action, tx
        nxt = tx.wakeup
        if answer_at is not None and answer_at <= nxt:
            now = answer_at
            tx.response(now)
            return sends, tx.poll(now), tx
        now = nxt


def test_rfc8489_default_schedule_is_39_5_seconds():
    p = Retransmission()
    assert p.schedule() == (0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5)
    assert p.lifetime() == 39.5
    sends, action, tx = run(p)
    assert sends == list(p.schedule())
    assert action is Action.TIMEOUT and tx.limit is Limit.RC and tx.sends == 7
    err = tx.timeout_error("192.0.2.1:3478")
    assert isinstance(err, StunTimeout) and err.limit == "rc" and "Rc=7" in err.message


def test_budget_cuts_the_schedule_and_says_so():
    sends, action, tx = run(Retransmission(rto=0.5, budget=3.0))
    assert sends == [0.0, 0.5, 1.5]
    assert action is Action.TIMEOUT and tx.limit is Limit.BUDGET
    assert tx.timeout_error().limit == "budget"
    assert "within the 3 s budget (3 sends)" in tx.describe_timeout()


def test_rc_before_budget():
    sends, _, tx = run(Retransmission(rto=0.1, rc=3, rm=2, budget=10.0))
    assert sends == [0.0, 0.1, 0.3] and tx.limit is Limit.RC  # ends at 0.3 + 2 * 0.1, well before the budget


def test_reliable_transport_sends_once_and_waits_ti_or_budget():
    sends, _, tx = run(Retransmission(reliable=True))
    assert sends == [0.0] and tx.limit is Limit.TI
    sends, _, tx = run(Retransmission(reliable=True, budget=2.0))
    assert sends == [0.0] and tx.limit is Limit.BUDGET


def test_response_stops_retransmission_and_measures_from_last_send():
    sends, action, tx = run(Retransmission(rto=0.5), answer_at=1.7)
    assert sends == [0.0, 0.5, 1.5] and action is Action.DONE
    assert tx.rtt == pytest.approx(0.2)
    assert tx.poll(100.0) is Action.DONE  # nothing more to send


@pytest.mark.parametrize("kw", [{"rto": 0}, {"rto": float("nan")}, {"budget": float("inf")}, {"budget": -1}, {"rc": 0}])
def test_bad_parameters(kw):
    with pytest.raises(UsageError):
        Retransmission(**kw)


def test_table_runs_many_transactions_on_one_clock():
    table = TransactionTable()
    table.start(b"a" * 12, Retransmission(rto=1.0, budget=2.5), 0.0)
    table.start(b"b" * 12, Retransmission(rto=0.5, rc=2, rm=1), 0.0)
    sends, expired = table.due(0.0)
    assert sorted(sends) == [b"a" * 12, b"b" * 12] and not expired
    assert table.wakeup == 0.5
    sends, expired = table.due(0.5)
    assert sends == [b"b" * 12]
    sends, expired = table.due(1.0)
    assert sends == [b"a" * 12] and [(t, tx.limit) for t, tx in expired] == [(b"b" * 12, Limit.RC)]
    tx = table.response(b"a" * 12, 1.25)
    assert tx.rtt == pytest.approx(0.25) and len(table) == 0
    assert table.response(b"zzzzzzzzzzzz", 2.0) is None
