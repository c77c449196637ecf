"""A compact, JSON-able record of one ticket with everything the reports need (DESIGN.md section 11).

Reports read months of history; re-reading whole tickets (events, messages) for that is what made
peers' reports slow. `summarize` boils one ticket down to a few hundred bytes once — the archive index
stores it beside the archived ticket, and hot tickets are summarized on the fly — and
`mailflow.report_metrics` computes every figure of any period from these records alone.

Times are whole seconds since the epoch (UTC): compact, and compared without parsing. The record
keeps the history the period figures need, not just the final state, so a period's figures are
computed from what was known at the period's end (a ticket resolved in November and reopened in
December still counts as resolved in November):

    v        VERSION of this layout (a store must re-summarize when it differs)
    id, cat, prio, team, agent, mb, lang, tags, tier, cust (customer address, raw), cal (calendar)
    created  creation instant; last: the latest instant anything happened to the ticket
    status, reason   the ticket's status and close reason now
    hist     [[at, status, note], ...] every status the ticket was in, from [created, "new", ""];
             note: "reopen" on a reopen, the close reason on a close
    fr       [at, business hours] of the first public staff answer, or None
    res      [[at, business hours since creation, public answers so far, first_response ok,
             resolution ok], ...] one entry per resolution: a move to resolved, or a close by staff
             of a ticket that was not resolved; ok is 1 (met), 0 (breached) or None (no target)
    nr       [[at, ok], ...] each finished next-response cycle (customer mail -> staff answer)
    fin      {clock: [state, due]} the clocks as of `last`: state met | missed | running | overdue |
             paused | idle, due the instant a running clock runs out (else None)
    rat      [[at, score], ...] every rating; esc: [at, ...] every escalation

Business hours are those of the ticket's calendar (`slaclock.calendar_of`); full resolution time is
creation -> resolve and includes pending time (the SLA resolution clock pauses, this does not).
"""

from __future__ import annotations

from datetime import UTC, datetime

from mailflow import sla, slaclock
from mailflow.clock import parse_iso
from mailflow.config import Config

VERSION = 1
CLOCKS = sla.CLOCKS  # first_response, next_response, resolution
NOT_RESOLVED = ("merged", "spam")  # closes that are no resolution


def epoch(value: str | datetime | None) -> int | None:
    """Whole seconds since the epoch of an ISO 8601 string or an aware datetime (None stays None)."""
    d = parse_iso(value) if isinstance(value, str) or value is None else value
    return int(d.timestamp()) if d is not None else None


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _history(t: dict, timed: list[tuple[int, dict]], created: int) -> list[list]:
    """[[at, status, note], ...] from the recorded status changes; tickets written before the lifecycle
    recorded them (no `status` events) get one made from their stamps."""
    hist: list[list] = [[created, "new", ""]]
    changes = [(at, e) for at, e in timed if e.get("kind") == "status" and e.get("to")]
    if changes:
        for at, e in changes:
            to = e["to"]
            note = "reopen" if e.get("reopen") else ((e.get("reason") or "") if to == "closed" else "")
            hist.append([max(at, created), to, note])
        return hist
    for key, status in (("first_response_at", "open"), ("resolved_at", "resolved"), ("closed_at", "closed")):
        at = epoch(t.get(key))
        if at is not None:
            hist.append([max(at, created), status, (t.get("close_reason") or "") if status == "closed" else ""])
    hist.sort(key=lambda h: h[0])
    return hist


def _ratings(t: dict, timed: list[tuple[int, dict]]) -> list[list[int]]:
    out = [[epoch(r.get("at")), int(r["score"])] for r in t.get("ratings") or []
           if isinstance(r, dict) and r.get("score") is not None]
    if not out:
        out = [[at, int(e["score"])] for at, e in timed if e.get("kind") == "rating" and e.get("score") is not None]
    if not out and t.get("rating") is not None:  # only the latest score, without a time
        out = [[epoch(t.get("closed_at") or t.get("resolved_at") or t.get("updated_at")), int(t["rating"])]]
    return sorted(([a, s] for a, s in out if a is not None and 1 <= s <= 5), key=lambda r: r[0])


def _ok(c: sla.Clock) -> int | None:
    """1 met, 0 breached, None when the clock has no target or has not finished unbreached."""
    if c.target_seconds is None:
        return None
    if c.state == "met":
        return 1
    if c.state == "missed" or c.breached:
        return 0
    return None


def summarize(t: dict, cfg: Config) -> dict:
    """The report record of one ticket (hot or archived); pure: reads only the ticket and the config."""
    timed = []
    for e in t.get("events") or []:
        at = epoch(e.get("at")) if isinstance(e, dict) else None
        if at is not None:
            timed.append((at, e))
    timed.sort(key=lambda p: p[0])
    created = epoch(t.get("created_at"))
    out: dict = {
        "v": VERSION, "id": t.get("id"), "created": created,
        "cat": t.get("category"), "prio": t.get("priority"), "team": t.get("team"), "agent": t.get("assignee"),
        "mb": t.get("mailbox"), "lang": t.get("locale"), "tags": list(t.get("tags") or []),
        "tier": slaclock.tier_of(t, cfg), "cust": t.get("customer_email") or "",
        "status": t.get("status"), "reason": t.get("close_reason"),
    }
    if created is None:  # not a ticket the reports can place in time
        out.update(last=None, hist=[], fr=None, res=[], nr=[], fin={}, rat=[], esc=[], cal=None)
        return out
    cal = slaclock.calendar_of(t, cfg)
    start = _dt(created)
    hist = _history(t, timed, created)
    publics = [at for at, e in timed if e.get("kind") == "public_reply"]
    fr_at = epoch(t.get("first_response_at")) or (publics[0] if publics else None)
    fr = [fr_at, round(cal.between(start, _dt(fr_at)) / 3600, 4)] if fr_at is not None else None

    # resolutions: into resolved, or closed by staff straight from new/open/pending
    res_at: list[int] = []
    prev = "new"
    for at, status, note in hist[1:]:
        if status == "resolved" and prev != "resolved":
            res_at.append(at)
        elif status == "closed" and prev not in ("resolved", "closed") and note not in NOT_RESOLVED:
            res_at.append(at)
        prev = status

    rat = _ratings(t, timed)
    esc = [at for at, e in timed if e.get("kind") == "escalated"]
    last = max(created, hist[-1][0], timed[-1][0] if timed else created, rat[-1][0] if rat else created)

    res, nr, fin = _clocks(t, cfg, cal, publics, res_at, hist, last)
    for r in res:
        r[1:1] = [round(cal.between(start, _dt(r[0])) / 3600, 4), sum(1 for a in publics if a <= r[0])]
    out.update(last=last, hist=hist, fr=fr, res=res, nr=nr, fin=fin, rat=rat, esc=esc, cal=cal.name)
    return out


def _clocks(t: dict, cfg: Config, cal: sla.Calendar, publics: list[int], res_at: list[int], hist: list[list],
            last: int) -> tuple[list[list], list[list[int]], dict[str, list]]:
    """SLA outcomes: [[at, first_response ok, resolution ok]] per resolution, the finished
    next-response cycles [[at, ok]], and the final clocks. Replaying the history costs most of a
    summary, so it is replayed to the end once, and again only up to the instants the end does not
    tell about: an earlier resolution (reopened later) and earlier next-response cycles."""
    cevents = slaclock.clock_events(t, cfg)
    final = sla.compute_clocks(cevents, _dt(last), cal)
    fin = {name: [c.state, epoch(c.due) if c.running else None] for name, c in final.items()}
    f_fr, f_nr = final["first_response"], final["next_response"]
    fr_stop = epoch(f_fr.stopped_at) if f_fr.stopped_at is not None else None
    reopens = [h[0] for h in hist if h[2] == "reopen"]
    res: list[list] = []
    for i, at in enumerate(res_at):
        settled = i == len(res_at) - 1 and not any(r > at for r in reopens) and \
            (f_fr.target_seconds is None or (fr_stop is not None and fr_stop <= at))
        clocks = final if settled else sla.compute_clocks(cevents, _dt(at), cal)
        res.append([at, _ok(clocks["first_response"]), _ok(clocks["resolution"])])
    cycles: dict[int, list[int]] = {}
    if f_nr.state in ("met", "missed") and _ok(f_nr) is not None and f_nr.stopped_at is not None:
        cycles[f_nr.cycle] = [epoch(f_nr.stopped_at), _ok(f_nr)]
    if f_nr.cycle > 1:  # earlier cycles ended at public answers before the last cycle began
        begun = epoch(f_nr.started_at) or last
        for p in publics[1:]:
            if p >= begun:
                break
            n = sla.compute_clocks(cevents, _dt(p), cal)["next_response"]
            ok = _ok(n)
            if n.state in ("met", "missed") and ok is not None and n.stopped_at is not None:
                cycles.setdefault(n.cycle, [epoch(n.stopped_at), ok])
    return res, sorted(cycles.values()), fin
