"""A ticket's history -> its SLA clocks, the timer facts the escalation rules see, and the next instant
anything about it can change (DESIGN.md section 10).

`mailflow.sla` does the business-time arithmetic and the clock rules on plain events; this module
maps a ticket's recorded history onto those events (`clock_events`), adds the progress-update clock
("no public update for the next-response interval"), and says when the scheduler must look at the
ticket again (`next_wake`). Pure functions of (ticket, config, now).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

from mailflow import sla
from mailflow.clock import iso, parse_iso
from mailflow.config import Config

CLOCK_NAMES = (*sla.CLOCKS, "update")
# at one instant: a customer's mail and a staff answer before the status changes they caused
_RANK = {"created": 0, "targets": 1, "customer_mail": 2, "staff_public": 3, "pending_off": 4, "reopened": 5,
         "pending_on": 6, "resolved": 7, "closed": 8}
_PUBLIC = ("public_reply", "customer_update")  # history entries of what the customer heard from us
_THRESHOLDS = (0.8, 1.0, 2.0)  # reminders, breaches and twice the target: always worth a wake-up


def tier_of(t: dict, cfg: Config) -> str:
    return t.get("tier") or ("vip" if cfg.is_vip(t.get("customer_email") or "") else "standard")


def _initial(t: dict, kind: str) -> str | None:
    """The priority/category the ticket was created with (before any recorded change)."""
    for e in t.get("events", []):
        if e.get("kind") == "created" and e.get(kind):
            return e[kind]
    for e in t.get("events", []):
        if e.get("kind") == kind and "from" in e:
            return e["from"]
    return t.get(kind)


def clock_events(t: dict, cfg: Config) -> list[sla.ClockEvent]:
    """The ticket's history as the clocks see it: creation, customer mails, public staff answers,
    pending, resolve, reopen, close, and target changes (priority or category)."""
    policy = cfg.policy
    tier, mailbox = tier_of(t, cfg), t.get("mailbox")
    created = parse_iso(t.get("created_at"))
    if created is None:
        return []
    prio, cat = _initial(t, "priority"), _initial(t, "category")

    def targets(at: datetime) -> sla.ClockEvent:
        return sla.ClockEvent(at, "targets", targets=policy.targets(prio, tier, cat, mailbox),
                              calendar=policy.calendar_for(prio, mailbox))

    out = [sla.ClockEvent(created, "created", targets=policy.targets(prio, tier, cat, mailbox),
                          calendar=policy.calendar_for(prio, mailbox))]
    for e in t.get("events", []):
        at = parse_iso(e.get("at"))
        if at is None:
            continue
        k = e.get("kind")
        if k == "public_reply":
            out.append(sla.ClockEvent(at, "staff_public"))
        elif k == "customer_mail":
            out.append(sla.ClockEvent(at, "customer_mail"))
        elif k == "status":
            frm, to = e.get("from"), e.get("to")
            if frm == "pending" and to != "pending":
                out.append(sla.ClockEvent(at, "pending_off"))
            if e.get("reopen"):
                out.append(sla.ClockEvent(at, "reopened"))
            if to == "pending":
                out.append(sla.ClockEvent(at, "pending_on"))
            elif to == "resolved":
                out.append(sla.ClockEvent(at, "resolved"))
            elif to == "closed":
                out.append(sla.ClockEvent(at, "closed"))
        elif k == "priority" and e.get("to"):
            prio = e["to"]
            out.append(targets(at))
        elif k == "category" and e.get("to"):
            cat = e["to"]
            out.append(targets(at))
    out.sort(key=lambda ev: (ev.at, _RANK.get(ev.kind, 9)))
    return out


def calendar_of(t: dict, cfg: Config) -> sla.Calendar:
    return cfg.policy.calendar_for(t.get("priority"), t.get("mailbox"))


def _last(t: dict, kinds: tuple[str, ...]) -> datetime | None:
    for e in reversed(t.get("events", [])):
        if e.get("kind") in kinds:
            return parse_iso(e.get("at"))
    return None


def _count(t: dict, kinds: tuple[str, ...]) -> int:
    return sum(1 for e in t.get("events", []) if e.get("kind") in kinds)


def update_clock(t: dict, cfg: Config, now: datetime) -> sla.Clock:
    """Time since the customer last heard from us, against the next-response interval: counts while
    the ticket is new or open (a pending one waits for the customer; a resolved one for a rating)."""
    cal = calendar_of(t, cfg)
    target = cfg.policy.targets(t.get("priority"), tier_of(t, cfg), t.get("category"), t.get("mailbox"))[
        "next_response"]
    start = parse_iso(t.get("last_public_at")) or parse_iso(t.get("created_at")) or now
    cycle = int(t.get("public_updates") or 0) + 1
    running = t.get("status") in ("new", "open")
    elapsed = cal.between(start, now) if running else 0.0
    breached = running and elapsed >= target
    due = cal.add(start, target) if running else None
    state = ("overdue" if breached else "running") if running else "idle"
    return sla.Clock("update", cycle, state, start, due, target, elapsed, target - elapsed, (), None, None,
                     breached, due if breached else None, now, cal)


def clocks_of(t: dict, cfg: Config, now: datetime) -> dict[str, sla.Clock]:
    clocks = sla.compute_clocks(clock_events(t, cfg), now, calendar_of(t, cfg))
    clocks["update"] = update_clock(t, cfg, now)
    return clocks


def sla_record(t: dict, cfg: Config, now: datetime, clocks: dict[str, sla.Clock] | None = None) -> dict:
    """What the ticket stores under `sla`: the due times templates and `tickets show` use (ISO 8601),
    the targets in business hours, and every clock (`sla.to_json`)."""
    clocks = clocks or clocks_of(t, cfg, now)
    fr, rs, nr = clocks["first_response"], clocks["resolution"], clocks["next_response"]
    return {
        "first_response_due": iso(fr.due) if fr.due else None,
        "resolution_due": iso(rs.due) if rs.due else None,
        "next_response_due": iso(nr.due) if nr.due else None,
        "first_response_hours": round((fr.target_seconds or 0) / 3600, 2),
        "resolution_hours": round((rs.target_seconds or 0) / 3600, 2),
        "next_response_hours": round((nr.target_seconds or 0) / 3600, 2),
        "calendar": calendar_of(t, cfg).name,
        "clocks": {name: sla.to_json(c) for name, c in clocks.items() if name != "update"},
        "fp": policy_fingerprint(cfg),
    }


_FP: dict[int, tuple[Config, str]] = {}


def policy_parts(cfg: Config) -> list:
    """The SLA config as plain data, sets sorted: targets and tiers, the calendars and which applies
    where, the VIP list. What `policy_fingerprint` and the reports' `report_source.fingerprint` hash."""
    pol = cfg.policy
    cals = []
    for name in sorted(cfg.calendars):
        c = cfg.calendars[name]
        cals.append([c.name, c.timezone, sorted(c.workdays), list(c.hours), list(c.hours_by_day), c.country,
                     sorted(d.isoformat() for d in c.extra_holidays),
                     sorted(d.isoformat() for d in c.extra_workdays)])
    return [repr(pol.defaults), repr(sorted(pol.tiers.items())), repr(sorted(pol.categories.items())),
            sorted(pol.priority_calendars.items()), sorted(pol.mailbox_calendars.items()), cals,
            sorted(v.lower() for v in cfg.vip)]


def policy_fingerprint(cfg: Config) -> str:
    """What a ticket's clocks depend on besides its history: the SLA targets and tiers, the calendars
    (business hours, holidays, make-up days) and which calendar applies where, and the VIP list (the
    tier). Stored with the `sla` record, so a reader can tell whether the record still holds under
    this config. Stable across runs; computed once per Config."""
    hit = _FP.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    fp = hashlib.sha1(json.dumps(policy_parts(cfg), default=str).encode()).hexdigest()[:12]
    if len(_FP) > 16:
        _FP.clear()
    _FP[id(cfg)] = (cfg, fp)
    return fp


def stored_clocks(t: dict, cfg: Config) -> dict[str, sla.Clock]:
    """The clocks as last stored on the ticket (as of its last change), ready to advance with `.at`."""
    return {name: sla.from_json(d, cfg.calendars) for name, d in ((t.get("sla") or {}).get("clocks") or {}).items()}


def record_holds(t: dict, cfg: Config, now: datetime) -> bool:
    """Whether the ticket's stored `sla` record still holds at `now`: it was made under this config
    (`fp`), every clock is as of a moment no later than `now`, and nothing happened to the ticket
    after it (its last event and `updated_at`). Then nothing can have changed but business time
    passing, which `Clock.at` adds."""
    rec = t.get("sla") or {}
    stored = rec.get("clocks")
    if not stored or rec.get("fp") != policy_fingerprint(cfg) or set(stored) != set(sla.CLOCKS):
        return False
    when = parse_iso(min((d.get("as_of") or "" for d in stored.values()), default=""))
    last = (t.get("events") or [{}])[-1].get("at")
    return when is not None and when <= now and _not_after(last, when) and _not_after(t.get("updated_at"), when)


def sla_clocks(t: dict, cfg: Config, now: datetime, holds: bool | None = None) -> dict[str, sla.Clock]:
    """The three SLA clocks at `now`, as `clocks_of` gives them: from the stored record, advanced,
    when it still holds (`record_holds`, or `holds` when the caller asked it already; a clock is only
    advanced, never rewound), else replayed from the history (a record from before `fp`, an SLA
    config edit, a `--now` in the past)."""
    if record_holds(t, cfg, now) if holds is None else holds:
        clocks = stored_clocks(t, cfg)
        if all(c.calendar is not None or not c.running for c in clocks.values()):
            return {name: c.at(now) for name, c in clocks.items()}
    return sla.compute_clocks(clock_events(t, cfg), now, calendar_of(t, cfg))


def running_clocks(t: dict, cfg: Config, now: datetime, holds: bool | None = None
                   ) -> list[tuple[bool, datetime | None]]:
    """(breached, due) of each SLA clock counting at `now`: what `--overdue` and `--due-within` ask.
    Read straight from the stored record where it holds (`holds` as for `sla_clocks`; a counting
    clock is breached at `now` once its due has come, as `Clock.at` says; no business-time walk),
    else from a replay."""
    holds = record_holds(t, cfg, now) if holds is None else holds
    if holds:
        out = []
        for d in t["sla"]["clocks"].values():
            if d.get("state") in ("running", "overdue"):
                due = parse_iso(d.get("due"))
                out.append((bool(d.get("breached")) or (due is not None and due <= now), due))
        return out
    return [(c.breached, c.due) for c in sla_clocks(t, cfg, now, holds=False).values() if c.running]


def _not_after(stamp: str | None, when: datetime) -> bool:
    at = parse_iso(stamp) if stamp else None
    return at is None or at <= when


def _hours(cal: sla.Calendar, since: datetime | None, now: datetime) -> float:
    return round(cal.between(since, now) / 3600, 4) if since else 0.0


def timer_facts(t: dict, cfg: Config, clocks: dict[str, sla.Clock], now: datetime,
                need: set[str] | None = None) -> dict:
    """The facts the escalation rules see (business time of the ticket's calendar). `need`: the
    fields the rules test (the silences cost a calendar walk each, so unneeded ones are skipped)."""
    cal = calendar_of(t, cfg)
    day_h = cal.day_seconds() / 3600 or 24.0
    facts = sla.timer_facts({k: v for k, v in clocks.items() if k in sla.CLOCKS}, now)
    upd = clocks["update"]
    facts.update({"sla.update.breached": upd.breached, "sla.update.running": upd.running,
                  "sla.update.cycle": upd.cycle,
                  "sla.update.remaining_hours": round((upd.remaining_seconds or 0) / 3600, 4),
                  "sla.update.elapsed_ratio": round(upd.elapsed_seconds / upd.target_seconds, 4)
                  if upd.target_seconds else 0.0,
                  "sla.update.breached_hours": round(max(0.0, upd.elapsed_seconds - (upd.target_seconds or 0)) / 3600, 4)})
    for name, c in clocks.items():
        facts[f"sla.{name}.target_hours"] = round((c.target_seconds or 0) / 3600, 4)
    def wanted(*names: str) -> bool:
        return need is None or any(n in need for n in names)

    h_update = h_customer = h_pending = 0.0
    if wanted("hours_since_update", "days_since_update"):
        activity = max(filter(None, (_last(t, (*_PUBLIC, "customer_mail", "created")),
                                     parse_iso(t.get("last_public_at")))), default=None)
        h_update = _hours(cal, activity, now)
    if wanted("hours_since_customer", "days_since_customer"):
        h_customer = _hours(cal, _last(t, ("customer_mail", "created")), now)
    if wanted("hours_pending", "days_pending") and t.get("status") == "pending":
        h_pending = _hours(cal, _last_pending(t), now)
    facts.update({
        "hours_since_update": h_update, "days_since_update": round(h_update / day_h, 4),
        "hours_since_customer": h_customer, "days_since_customer": round(h_customer / day_h, 4),
        "hours_pending": h_pending, "days_pending": round(h_pending / day_h, 4),
        "status": t.get("status"), "priority": t.get("priority"), "category": t.get("category"),
        "team": t.get("team"), "tags": list(t.get("tags", [])), "assignee": t.get("assignee") or "",
        "customer.tier": tier_of(t, cfg), "mentions_staff": bool(t.get("mentioned_staff")),
        "reopen_count": int(t.get("reopen_count") or 0), "mailbox": t.get("mailbox") or "",
        "language": t.get("locale") or "", "from": t.get("customer_email") or "", "subject": t.get("subject") or "",
    })
    return facts


def _last_pending(t: dict) -> datetime | None:
    for e in reversed(t.get("events", [])):
        if e.get("kind") == "status" and e.get("to") == "pending":
            return parse_iso(e.get("at"))
    return None


# which clock a rule is about, for its ledger key (ticket, clock, cycle, rule)
_FIELD_CLOCK = (("hours_pending", "pending"), ("days_pending", "pending"), ("hours_since_customer", "customer"),
                ("days_since_customer", "customer"), ("hours_since_update", "activity"),
                ("days_since_update", "activity"))


def rule_clock(fields: set[str]) -> str:
    """The clock a rule's conditions are about: the first `sla.<clock>.*` field, else the silence it
    measures (pending, customer, activity), else the ticket itself."""
    for name in CLOCK_NAMES:
        if any(f.startswith(f"sla.{name}.") or f == f"sla.{name}_breached" for f in fields):
            return name
    for f, clock in _FIELD_CLOCK:
        if f in fields:
            return clock
    return "ticket"


def cycle_of(t: dict, clock: str, clocks: dict[str, sla.Clock]) -> int:
    """The cycle a firing belongs to: a new breach of the same clock (a reopen, a new customer mail,
    a new pending spell) is a new cycle and may fire again; the same breach never does."""
    if clock in clocks:
        return clocks[clock].cycle
    if clock == "pending":
        return sum(1 for e in t.get("events", []) if e.get("kind") == "status" and e.get("to") == "pending")
    if clock == "customer":
        return _count(t, ("customer_mail",)) + 1
    if clock == "activity":
        return _count(t, ("customer_mail",)) + int(t.get("public_updates") or 0) + 1
    return 1


def auto_close_at(t: dict, cfg: Config) -> datetime | None:
    """When a resolved ticket closes by itself: `auto_close_days` calendar days of silence."""
    if t.get("status") != "resolved":
        return None
    since = parse_iso(t.get("silence_from") or t.get("resolved_at"))
    return since + timedelta(days=cfg.auto_close_days) if since else None


def next_wake(t: dict, cfg: Config, clocks: dict[str, sla.Clock], now: datetime,
              constants: dict[str, set[float]]) -> datetime | None:
    """The first instant after `now` at which a timer fact of this ticket can cross a number a rule
    compares it with (or a reminder/breach/twice-target ratio), or it auto-closes. None: never."""
    cands: list[datetime] = []
    close = auto_close_at(t, cfg)
    if close is not None and close > now:
        cands.append(close)
    for name, c in clocks.items():
        if not c.running or not c.target_seconds or c.calendar is None:
            continue
        if now > c.as_of:
            c = c.at(now)
        tgt, el = c.target_seconds, c.elapsed_seconds
        wants = {r * tgt for r in (*_THRESHOLDS, *constants.get(f"sla.{name}.elapsed_ratio", ()))}
        wants |= {tgt - h * 3600 for h in constants.get(f"sla.{name}.remaining_hours", ())}
        wants |= {tgt + h * 3600 for h in constants.get(f"sla.{name}.breached_hours", ())}
        ahead = [w - el for w in wants if w - el > 0]
        if ahead:
            cands.append(c.calendar.add(now, min(ahead)))
    cal = calendar_of(t, cfg)
    day = cal.day_seconds() or 86400.0
    bases = {"update": max(filter(None, (_last(t, (*_PUBLIC, "customer_mail", "created")),
                                          parse_iso(t.get("last_public_at")))), default=None),
             "customer": _last(t, ("customer_mail", "created")),
             "pending": _last_pending(t) if t.get("status") == "pending" else None}
    for field, base, unit in (("hours_since_update", "update", 3600), ("days_since_update", "update", day),
                              ("hours_since_customer", "customer", 3600), ("days_since_customer", "customer", day),
                              ("hours_pending", "pending", 3600), ("days_pending", "pending", day)):
        since = bases[base]
        if since is None or field not in constants:
            continue
        used = cal.between(since, now)
        ahead = [v * unit - used for v in constants[field] if v * unit - used > 0]
        if ahead:
            cands.append(cal.add(now, min(ahead)))
    return min(cands) if cands else None
