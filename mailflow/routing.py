"""Applying rule decisions to a ticket's fields; picking assignees; expanding staff targets.

`evaluate_message` runs the message stages (classify -> priority -> routing), applying each stage's
decisions before the next stage runs, so later stages see the category, priority, team and tags
set so far (the facts are refreshed between stages). `evaluate_timer` runs the escalation stage.
Both are pure: they return an `Outcome` and change nothing; the caller stores it.

Applying decisions (in rule order; later settings win):

* ``category``, ``team``, ``ack_template``, ``no_ack``: set.
* ``priority``: a level sets it; ``{raise: N}`` moves it N levels (capped at low/urgent);
  ``{raise: N, max: L}`` raises it N levels but not above L, and never lowers it (a ticket already
  above L stays where it is); ``{at_least: L}`` raises it to L if it is lower.
* ``assignee``: an email sets it; ``{pick: STRATEGY}`` asks for a pick from the ticket's team once
  all decisions are applied (so the final team counts). The last assignee decision wins.
* ``tag``: added once, in order.
* ``notify``: collected; targets are expanded at the end: ``team:NAME`` -> every member of NAME,
  ``team`` -> every member of the ticket's team, ``lead`` -> the team's leads, else the address.
* ``escalate``: collected; ``lead`` -> the team's leads (the escalation chain when the team has
  none), ``chain`` -> everyone in the configured escalation chain, else the address.

Assignment: after the message stages, a ticket with a team but no assignee gets one picked by
`strategy`. ``round_robin`` takes the next member of the team after the team's pointer in
``rr_state`` (members in config order); ``least_open`` takes the member with the fewest open
tickets in ``open_counts``, ties broken round-robin. A staff member the mail names (``mentioned``)
is never assigned: an explicit assignee who is mentioned is replaced by a pick, and picks skip
them. A team with no eligible member leaves the ticket unassigned (in the team queue).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from mailflow.config import StaffMember
from mailflow.rules import MESSAGE_STAGES, PRIORITIES, Decision, RuleSet

__all__ = ["TicketFields", "Outcome", "evaluate_message", "evaluate_timer", "apply_priority", "pick_assignee"]

_RANK = {p: i for i, p in enumerate(PRIORITIES)}


@dataclass
class TicketFields:
    category: str | None = None
    priority: str = "normal"
    team: str | None = None
    assignee: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """The result of running the message stages (or the escalation stage) for one ticket."""

    fields: TicketFields
    fired: list[tuple[str, str]]  # (stage, rule)
    notify: list[tuple[str, str]]  # (recipient email, template)
    ack_template: str = "ack"
    no_ack: bool = False
    escalate: list[str] = field(default_factory=list)  # escalation recipient emails
    rr_state: dict[str, int] = field(default_factory=dict)  # updated round-robin pointers per team
    decisions: list[Decision] = field(default_factory=list)  # everything the rules decided, in order
    customer_updates: list[str] = field(default_factory=list)  # templates to mail the customer (timers)


def apply_priority(current: str, value: str | dict) -> str:
    """The priority after one priority decision."""
    rank = _RANK.get(current, _RANK["normal"])
    if isinstance(value, str):
        return value if value in _RANK else current
    if "raise" in value and "max" in value:
        # a capped raise ("VIP: one level up, but never to urgent by itself") never lowers either
        rank = max(rank, min(rank + int(value["raise"]), _RANK.get(value["max"], len(PRIORITIES) - 1)))
    elif "raise" in value:
        rank = max(0, min(len(PRIORITIES) - 1, rank + int(value["raise"])))
    elif "at_least" in value:
        rank = max(rank, _RANK.get(value["at_least"], rank))
    return PRIORITIES[rank]


def _members(staff: Iterable[StaffMember], team: str | None) -> list[StaffMember]:
    if not team:
        return []
    return [m for m in staff if team in (m.teams or [])]


def pick_assignee(team: str | None, strategy: str, staff: list[StaffMember], open_counts: dict[str, int],
                  rr_state: dict[str, int], exclude: set[str]) -> str | None:
    """Pick a member of `team` (not in `exclude`); updates `rr_state[team]` in place."""
    members = _members(staff, team)
    if not members or team is None:
        return None
    n = len(members)
    start = rr_state.get(team, -1)
    # members in round-robin order: the one after the pointer first
    order = [((start + 1 + k) % n) for k in range(n)]
    eligible = [i for i in order if members[i].email.lower() not in exclude]
    if not eligible:
        return None
    if strategy == "least_open":
        best = min(open_counts.get(members[i].email.lower(), 0) for i in eligible)
        chosen = next(i for i in eligible if open_counts.get(members[i].email.lower(), 0) == best)
    else:
        chosen = eligible[0]
    rr_state[team] = chosen
    return members[chosen].email.lower()


class _Apply:
    """Accumulates decisions over the stages of one evaluation."""

    def __init__(self, fields: TicketFields):
        self.f = replace(fields, tags=list(fields.tags or []))
        if self.f.priority not in _RANK:
            self.f.priority = "normal"
        self.fired: list[tuple[str, str]] = []
        self.notify: list[tuple[str, str]] = []  # raw targets
        self.escalate: list[str] = []  # raw targets
        self.ack_template = "ack"
        self.no_ack = False
        self.pick: str | None = None  # strategy requested by a rule
        self.decisions: list[Decision] = []
        self.customer_updates: list[str] = []

    def facts(self, facts: dict) -> dict:
        out = dict(facts)
        out["category"] = self.f.category
        out["priority"] = self.f.priority
        out["team"] = self.f.team
        out["tags"] = list(self.f.tags)
        return out

    def apply(self, stage: str, fired: list[str], decisions: list[Decision]) -> None:
        self.fired.extend((stage, r) for r in fired)
        self.decisions.extend(decisions)
        f = self.f
        for d in decisions:
            a, v = d.action, d.value
            if a == "category":
                f.category = v
            elif a == "priority":
                f.priority = apply_priority(f.priority, v)
            elif a == "team":
                f.team = v
            elif a == "assignee":
                if isinstance(v, dict):
                    self.pick = v["pick"]
                    f.assignee = None
                else:
                    self.pick = None
                    f.assignee = v
            elif a == "tag":
                if v not in f.tags:
                    f.tags.append(v)
            elif a == "notify":
                self.notify.append((v["to"], v["template"]))
            elif a == "ack_template":
                self.ack_template = v
            elif a == "no_ack":
                self.no_ack = bool(v)
            elif a == "escalate":
                self.escalate.append(v)
            elif a == "customer_update":
                if v not in self.customer_updates:
                    self.customer_updates.append(v)

    def outcome(self, staff: list[StaffMember], open_counts: dict[str, int], rr_state: dict[str, int],
                mentioned: set[str], strategy: str, chain: list[str], auto_pick: bool) -> Outcome:
        f = self.f
        rr = dict(rr_state)
        excluded = {m.lower() for m in mentioned}
        if f.assignee and f.assignee.lower() in excluded:
            f.assignee = None
            self.pick = self.pick or strategy
        if f.assignee is None and f.team and (self.pick or auto_pick):
            f.assignee = pick_assignee(f.team, self.pick or strategy, staff, open_counts, rr, excluded)
        team_members = [m.email.lower() for m in _members(staff, f.team)]
        leads = [m.email.lower() for m in _members(staff, f.team) if m.role == "lead"]
        managers = [m.email.lower() for m in staff if m.role == "manager"]

        notify: list[tuple[str, str]] = []
        for to, template in self.notify:
            if to.startswith("team:"):
                emails = [m.email.lower() for m in _members(staff, to[5:].strip())]
            elif to == "team":
                emails = team_members
            elif to == "lead":
                emails = leads
            elif to == "assignee":
                emails = [f.assignee.lower()] if f.assignee else (leads or [c.lower() for c in chain[:1]])
            elif to == "manager":
                emails = managers or [c.lower() for c in chain]
            else:
                emails = [to.lower()]
            for e in emails:
                if (e, template) not in notify:
                    notify.append((e, template))

        escalate: list[str] = []
        for target in self.escalate:
            if target == "lead":
                emails = leads or [c.lower() for c in chain]
            elif target == "chain":
                emails = [c.lower() for c in chain]
            elif target == "manager":
                emails = managers or [c.lower() for c in chain]
            else:
                emails = [target.lower()]
            for e in emails:
                if e not in escalate:
                    escalate.append(e)
        return Outcome(fields=f, fired=self.fired, notify=notify, ack_template=self.ack_template,
                       no_ack=self.no_ack, escalate=escalate, rr_state=rr, decisions=self.decisions,
                       customer_updates=self.customer_updates)


def evaluate_message(rules: RuleSet, facts: dict, fields: TicketFields, staff: list[StaffMember],
                     open_counts: dict[str, int], rr_state: dict[str, int], mentioned: set[str],
                     strategy: str = "least_open", escalation_chain: Iterable[str] = ()) -> Outcome:
    """classify -> apply -> priority -> apply -> routing -> apply, then pick an assignee if needed.

    Raises RuleEvalError (from the rules) if a rule cannot be evaluated; nothing is half-applied
    because nothing is applied outside the returned Outcome.
    """
    acc = _Apply(fields)
    for stage in MESSAGE_STAGES:
        res = rules.evaluate(stage, acc.facts(facts))
        acc.apply(stage, res.fired, res.decisions)
    return acc.outcome(staff, open_counts, rr_state, set(mentioned), strategy, list(escalation_chain),
                       auto_pick=True)


def evaluate_timer(rules: RuleSet, facts: dict, fields: TicketFields, staff: list[StaffMember],
                   open_counts: dict[str, int] | None = None, rr_state: dict[str, int] | None = None,
                   mentioned: set[str] | frozenset[str] = frozenset(), strategy: str = "least_open",
                   escalation_chain: Iterable[str] = ()) -> Outcome:
    """The escalation stage for one SLA timer event (facts: sla.*, hours_since_update, status...).

    Only an explicit ``assignee: {pick: ...}`` assigns here; a ticket left in its team's queue
    stays there.
    """
    acc = _Apply(fields)
    res = rules.evaluate("escalation", acc.facts(facts))
    acc.apply("escalation", res.fired, res.decisions)
    return acc.outcome(staff, open_counts or {}, rr_state or {}, set(mentioned), strategy,
                       list(escalation_chain), auto_pick=False)
