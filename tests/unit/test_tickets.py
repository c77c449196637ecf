"""The whole transition table, every (event, status) pair: allowed or refused, and what is recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailflow import tickets
from mailflow.tickets import CLOSED, NEW, OPEN, PENDING, RESOLVED, Change, Refusal, transition

NOW = datetime(2026, 11, 24, 4, 0, tzinfo=UTC)
S = (NEW, OPEN, PENDING, RESOLVED, CLOSED)

# (event, status) -> expected: ("to", status, close_reason, reopen) | ("stay",) | ("record",)
# | ("refuse", words) | ("follow_up",)
EXPECTED = {
    "customer_reply": {NEW: ("stay",), OPEN: ("stay",), PENDING: ("to", OPEN, None, False),
                       RESOLVED: ("stay",), CLOSED: ("to", OPEN, None, True)},
    "customer_not_fixed": {NEW: ("stay",), OPEN: ("stay",), PENDING: ("to", OPEN, None, False),
                           RESOLVED: ("to", OPEN, None, True), CLOSED: ("to", OPEN, None, True)},
    "rating_good": {NEW: ("stay",), OPEN: ("stay",), PENDING: ("to", OPEN, None, False),
                    RESOLVED: ("to", CLOSED, "confirmed", False), CLOSED: ("record",)},
    "rating_bad": {NEW: ("stay",), OPEN: ("stay",), PENDING: ("to", OPEN, None, False),
                   RESOLVED: ("to", OPEN, None, True), CLOSED: ("record",)},
    "quote_only": {s: ("record",) for s in S},
    "staff_reply": {NEW: ("to", OPEN, None, False), OPEN: ("stay",), PENDING: ("stay",), RESOLVED: ("stay",),
                    CLOSED: ("stay",)},
    "RESOLVE": {NEW: ("to", RESOLVED, None, False), OPEN: ("to", RESOLVED, None, False),
                PENDING: ("to", RESOLVED, None, False), RESOLVED: ("refuse", "already resolved"),
                CLOSED: ("refuse", "closed")},
    "PENDING": {NEW: ("to", PENDING, None, False), OPEN: ("to", PENDING, None, False),
                PENDING: ("refuse", "already pending"), RESOLVED: ("refuse", "resolved"), CLOSED: ("refuse", "closed")},
    "REOPEN": {NEW: ("refuse", "not resolved"), OPEN: ("refuse", "not resolved"), PENDING: ("refuse", "not resolved"),
               RESOLVED: ("to", OPEN, None, True), CLOSED: ("to", OPEN, None, True)},
    "CLOSE": {**{s: ("to", CLOSED, "staff", False) for s in (NEW, OPEN, PENDING, RESOLVED)},
              CLOSED: ("refuse", "already closed")},
    "MERGE": {**{s: ("to", CLOSED, "merged", False) for s in (NEW, OPEN, PENDING, RESOLVED)},
              CLOSED: ("refuse", "already closed")},
    "SPAM": {**{s: ("to", CLOSED, "spam", False) for s in (NEW, OPEN, PENDING, RESOLVED)},
             CLOSED: ("refuse", "already closed")},
    **{c: {**{s: ("stay",) for s in (NEW, OPEN, PENDING, RESOLVED)}, CLOSED: ("refuse", "closed")}
       for c in ("ASSIGN", "PRIORITY", "CATEGORY", "TAG", "ESCALATE")},
    "NOTE": {s: ("stay",) for s in S},
    "auto_close": {**{s: ("refuse", "only a resolved ticket") for s in (NEW, OPEN, PENDING, CLOSED)},
                   RESOLVED: ("to", CLOSED, "auto", False)},
}


def _ticket(status: str, **kw) -> dict:
    closed_at = (NOW - timedelta(days=2)).isoformat() if status == CLOSED else None
    return {"id": "CW202611240001", "status": status, "reopen_count": 1, "closed_at": closed_at,
            "close_reason": "staff" if status == CLOSED else None, "resolved_at": None, **kw}


def test_every_event_and_status_is_in_the_table():
    assert set(EXPECTED) == set(tickets.TABLE) == set(tickets.EVENTS)
    for ev in tickets.EVENTS:
        assert set(tickets.TABLE[ev]) == set(S)


@pytest.mark.parametrize("event,status", [(e, s) for e in EXPECTED for s in S])
def test_transition_table(event, status):
    exp = EXPECTED[event][status]
    res = transition(_ticket(status), event, "alice@support.example", NOW, why="because")
    if exp[0] == "refuse":
        assert isinstance(res, Refusal), res
        assert exp[1] in res.reason
        assert f"status {status}" in res.message() and "allowed now:" in res.message()
        return
    assert isinstance(res, Change), res
    if exp[0] in ("stay", "record"):
        assert "status" not in res.fields and not res.events
        assert res.record_only == (exp[0] == "record")
        return
    _, to, reason, reopen = exp
    assert res.fields["status"] == to
    [ev] = res.events
    assert ev["kind"] == "status" and ev["from"] == status and ev["to"] == to
    assert ev["actor"] == "alice@support.example" and ev["at"] == "2026-11-24T04:00:00+00:00"
    if to == CLOSED:
        assert res.fields["close_reason"] == reason and ev["reason"] == reason
        assert res.fields["closed_at"] == ev["at"]
    if to == RESOLVED:
        assert res.fields["resolved_at"] == ev["at"] == res.fields["silence_from"]
    if reopen:  # counts once per reopen and forgets the old close
        assert res.fields["reopen_count"] == 2 and ev.get("reopen") is True
        assert res.fields["closed_at"] is None and res.fields["resolved_at"] is None
        assert res.fields["close_reason"] is None
    else:
        assert "reopen_count" not in res.fields


def test_closed_reply_depends_on_how_and_when_it_closed():
    recent = _ticket(CLOSED)
    assert transition(recent, "customer_reply", "customer", NOW).fields["status"] == OPEN
    old = _ticket(CLOSED, closed_at=(NOW - timedelta(days=31)).isoformat())
    late = transition(old, "customer_reply", "customer", NOW, reopen_within_days=30)
    assert isinstance(late, Change) and late.follow_up and "status" not in late.fields
    assert transition(old, "customer_reply", "customer", NOW, reopen_within_days=60).fields["status"] == OPEN
    spam = _ticket(CLOSED, close_reason="spam")
    res = transition(spam, "customer_not_fixed", "customer", NOW)
    assert res.record_only and not res.fields


def test_a_reply_on_a_resolved_ticket_restarts_the_silence_timer_and_tells_the_assignee():
    res = transition(_ticket(RESOLVED, silence_from="2026-11-20T00:00:00+00:00"), "customer_reply", "customer", NOW)
    assert res.fields == {"silence_from": "2026-11-24T04:00:00+00:00"} and res.tell == ("assignee",)
    bad = transition(_ticket(RESOLVED), "rating_bad", "customer", NOW)
    assert bad.tell == ("assignee", "lead")


def test_refusal_names_what_is_allowed():
    r = transition(_ticket(CLOSED), "PENDING", "bob@x", NOW)
    assert isinstance(r, Refusal)
    assert "REOPEN" in r.message() and "NOTE" in r.message() and "RESOLVE" not in r.message().split("allowed")[1]


def test_readme_shows_the_table():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert tickets.readme_table() in readme, "README's lifecycle table is out of date: paste tickets.readme_table()"


def test_readme_shows_the_staff_commands():
    from pathlib import Path

    from mailflow import commands

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert commands.readme_table() in readme, "README's staff command table is out of date"
