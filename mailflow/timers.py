"""Time-driven decisions for one ticket: auto-close and the escalation rules (DESIGN.md section 10).

`decide(ticket, now)` computes the clocks and the timer facts, runs `escalation.yaml`, and returns a
`Plan` (like intake's) with the ticket changes, history entries and mails; the pipeline applies it
inside a batch. Exactly once: every firing writes its ledger key `(clock, cycle, rule)` into the
ticket's `sla_fired` in the same commit as its mail, so restarts, replays and catch-up after downtime
never repeat it; a new cycle of the clock (a reopen, a new customer mail, a new pending spell, the
next silence after a progress mail) may fire again. Rules without `anytime: true` wait for the
ticket calendar's working hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mailflow import routing, slaclock
from mailflow.clock import iso
from mailflow.config import Config
from mailflow.plan import Mail, Plan
from mailflow.rules import RuleSet, on_engine
from mailflow.tickets import Change, event, transition

_LABEL = {
    "zh": {"first_response": "首次响应", "next_response": "后续响应", "resolution": "解决", "update": "进展通报"},
    "zh-Hant": {"first_response": "首次回覆", "next_response": "後續回覆", "resolution": "解決", "update": "進度通報"},
    "en": {"first_response": "first response", "next_response": "next response", "resolution": "resolution",
           "update": "progress update"},
}


@dataclass
class TimerResult:
    plan: Plan
    fired: list[str] = field(default_factory=list)  # ledger keys written
    deferred: list[str] = field(default_factory=list)  # rules waiting for working hours
    wake_at: datetime | None = None


class Timers:
    def __init__(self, cfg: Config, rules: RuleSet):
        self.cfg = cfg
        self.rules = rules
        self.constants = rules.constants("escalation")
        self.rule_fields = rules.fields("escalation")
        self.anytime = rules.anytime("escalation")

        self.needed = set().union(*self.rule_fields.values()) if self.rule_fields else set()

    def decide(self, t: dict, now: datetime, clocks: dict | None = None) -> TimerResult:
        """What time has made due for `t` as of `now` (runs on the rules-engine thread)."""
        return on_engine(self._decide, t, now, clocks)

    def decide_many(self, tickets: list[tuple[dict, dict | None]], now: datetime) -> list[TimerResult | Exception]:
        """`decide` for many tickets in one hand-off to the rules-engine thread (a batch's tickets);
        a ticket whose decision fails gets its exception instead of a result."""
        def run() -> list[TimerResult | Exception]:
            out: list[TimerResult | Exception] = []
            for t, clocks in tickets:
                try:
                    out.append(self._decide(t, now, clocks))
                except Exception as e:  # noqa: BLE001 - reported per ticket by the caller
                    out.append(e)
            return out
        return on_engine(run)

    def _decide(self, t: dict, now: datetime, clocks: dict | None = None) -> TimerResult:
        tid = t["id"]
        res = TimerResult(Plan("timer", tid))
        plan = res.plan
        close_at = slaclock.auto_close_at(t, self.cfg)
        if close_at is not None and close_at <= now:
            ch = transition(t, "auto_close", "scheduler", now,
                            why=f"resolved and silent for {self.cfg.auto_close_days:g} days")
            if isinstance(ch, Change):
                plan.update(tid, ch.fields)
                for e in ch.events:
                    plan.event(tid, e)
                plan.mails.append(Mail(tid, "closed", quote_incoming=False, why="auto-close"))
                plan.route = "auto_close"
                t = dict(t, **ch.fields)
        if clocks is None or plan.updates:  # (clocks of this instant from the batch: only the update clock moved)
            clocks = slaclock.clocks_of(t, self.cfg, now)
        else:
            clocks = {**clocks, "update": slaclock.update_clock(t, self.cfg, now)}
        if t.get("status") == "closed" or not self.rule_fields:
            res.wake_at = slaclock.next_wake(t, self.cfg, clocks, now, self.constants)
            return res
        facts = slaclock.timer_facts(t, self.cfg, clocks, now, self.needed)
        stage = self.rules.evaluate("escalation", facts)
        cal = slaclock.calendar_of(t, self.cfg)
        working = cal.next_working_instant(now) == now
        done = set(t.get("sla_fired", []))
        keep: dict[str, str] = {}  # rule -> ledger key
        for name in stage.fired:
            clock = slaclock.rule_clock(self.rule_fields.get(name, set()))
            key = f"{clock}:{slaclock.cycle_of(t, clock, clocks)}:{name}"
            if key in done:
                continue
            if not working and name not in self.anytime:
                res.deferred.append(name)
                continue
            keep[name] = key
        wake = slaclock.next_wake(t, self.cfg, clocks, now, self.constants)
        if res.deferred:
            opens = cal.next_working_instant(now)
            wake = opens if wake is None or opens < wake else wake
        res.wake_at = wake
        if not keep:
            return res
        fields = routing.TicketFields(t.get("category"), t.get("priority") or "normal", t.get("team"),
                                      t.get("assignee"), list(t.get("tags", [])))
        acc = routing._Apply(fields)
        acc.apply("escalation", [n for n in stage.fired if n in keep],
                  [d for d in stage.decisions if d.rule in keep])
        out = acc.outcome(self.cfg.staff, {}, {}, set(t.get("mentioned_staff", [])), self.cfg.routing_strategy,
                          list(self.cfg.escalation_chain), auto_pick=False)
        self._plan(plan, t, out, keep, clocks, now)
        res.fired = list(keep.values())
        plan.update(tid, {"sla_fired": [*t.get("sla_fired", []), *res.fired]})
        return res

    def _plan(self, plan: Plan, t: dict, out: routing.Outcome, keep: dict[str, str], clocks: dict,
              now: datetime) -> None:
        tid, f = t["id"], out.fields
        changes: dict = {}
        for attr in ("priority", "category", "team", "assignee"):
            new, old = getattr(f, attr), t.get(attr)
            if new != old and new is not None:
                changes[attr] = new
                plan.event(tid, event(now, attr if attr in ("priority", "category") else "assigned", "scheduler",
                                      f"{old} -> {new} (escalation rules)", **{"from": old, "to": new}))
        if list(f.tags) != list(t.get("tags", [])):
            changes["tags"] = list(f.tags)
        plan.update(tid, changes)
        for name, key in keep.items():
            plan.event(tid, event(now, "timer_rule", "scheduler", f"{name} ({key.rsplit(':', 1)[0]})", rule=name,
                                  key=key))
        reason = self._reason(keep, clocks, t)
        for to, template in out.notify:
            plan.mails.append(Mail(tid, template, to=to, quote_incoming=False, why="timer notify",
                                   extra={"escalation": {"reason": reason}}))
        if out.escalate:
            plan.event(tid, event(now, "escalated", "scheduler", f"to {', '.join(out.escalate)}: {reason}",
                                  to=list(out.escalate)))
        for to in out.escalate:
            plan.mails.append(Mail(tid, "escalation", to=to, quote_incoming=False, why="timer escalate",
                                   extra={"escalation": {"reason": reason}}))
        for template in out.customer_updates:
            plan.event(tid, event(now, "customer_update", "scheduler", f"{template} mail to the customer"))
            plan.mails.append(Mail(tid, template, quote_incoming=False, why="timer customer update"))

    def _reason(self, keep: dict[str, str], clocks: dict, t: dict) -> str:
        """Why, in the staff's language: each clock the firing rules are about, how far it has run."""
        loc = self.cfg.default_locale if self.cfg.default_locale in _LABEL else "en"
        parts = []
        for name, key in keep.items():
            clock = key.split(":", 1)[0]
            c = clocks.get(clock)
            if c is None or not c.target_seconds:
                parts.append(name)
                continue
            used, tgt = c.elapsed_seconds / 3600, c.target_seconds / 3600
            due = c.due.astimezone(self.cfg.tz).strftime("%Y-%m-%d %H:%M") if c.due else "-"
            label = _LABEL[loc].get(clock, clock)
            if loc == "en":
                parts.append(f"{name}: {label} {used:.1f} of {tgt:g} business hours used ({used / tgt:.0%}), "
                             f"due {due}")
            else:
                parts.append(f"{name}：{label}时限已用 {used:.1f} / {tgt:g} 工作小时（{used / tgt:.0%}），截止 {due}"
                             .replace("时限", "時限" if loc == "zh-Hant" else "时限"))
        return "; ".join(parts)


def wake_iso(res: TimerResult) -> str | None:
    return iso(res.wake_at) if res.wake_at else None
