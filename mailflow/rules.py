"""Rule files (YAML) -> validated rules -> durable-rules rulesets; evaluation -> decisions.

Rules are data, never code. ``rules/`` holds one file per stage; for each incoming message the
stages run in order ``classify.yaml`` -> ``priority.yaml`` -> ``routing.yaml`` (``routing.py`` applies
the decisions of one stage before the next one runs), and ``escalation.yaml`` runs for SLA timer
events. A missing stage file is an empty stage. A file is a list of rules::

    - name: outage-is-urgent            # required, unique within the file
      when:                             # required: a condition (below)
        any:
          - text: {matches: "系统瘫痪|outage|数据丢失|data loss"}
          - customer.tier: {equals: vip}
      then:                             # required: a list of actions (below)
        - priority: urgent
        - tag: outage
      stop: true                        # optional: when this rule matches, the stage ends here
      description: free text            # optional, ignored

Within a file every matching rule fires, in file order; when two rules set the same thing the
later one wins; a matching rule with ``stop: true`` ends the stage (the rules after it do not fire,
even if they match).

Conditions
----------

``when`` is a mapping. ``all: [c, ...]`` is true when every condition is, ``any: [c, ...]`` when
at least one is, ``not: c`` negates. Any other key is a field; its value is a mapping of
operators, and a mapping with several fields (or several operators) means all of them.
``when: {}`` always matches. A plain value is short for ``equals`` (``customer.tier: vip``).

==============================  ==========================================================================
operator                        true when
==============================  ==========================================================================
``equals: V``                   the field equals V (text compared case-insensitively); for a list field
                                (``tags``, ``to``): V is one of its elements
``in: [V, ...]``                the field equals one of the values; list field: any element is one of them
``matches: "REGEX"``            Python ``re.search`` finds the pattern (Unicode, case-insensitive; give
                                ``{pattern: "...", case_sensitive: true}`` to respect case); a list of
                                patterns matches when any does; list field: any element matches.
                                Prefer single quotes: in double quotes YAML turns ``\b`` into a backspace.
                                Patterns whose shape backtracks catastrophically (``(a+)+``, ``(a|a)*``)
                                are rejected; each search has a time budget (see regexes.py)
``contains: W`` / ``[W, ...]``  the text contains any of the keywords (case-insensitive substring); list
                                field: any keyword is one of its elements
``exists: true|false``          the field is present and not empty (``false``: absent or empty)
``"<"`` ``"<="`` ``">"``        numeric comparison (number fields, and ``priority`` by level
``">="``                        low < normal < high < urgent); aliases ``lt`` ``le`` ``gt`` ``ge``
                                (``>`` must be quoted in YAML)
==============================  ==========================================================================

A field that is absent from the facts satisfies no operator except ``exists: false``.

==================================  ========  ================================================================
field                               type      meaning
==================================  ========  ================================================================
``subject``                         text      subject without Re:/Fwd: prefixes and ticket tags
``text``                            text      the customer's new words (quoted reply removed)
``content``                         text      ``subject`` + newline + ``text`` (handy for keyword rules)
``from``                            text      sender address (lowercase)
``to``                              list      recipient addresses (To + Cc)
``mailbox``                         text      name of the mailbox the mail arrived in
``language``                        text      ``zh`` (simplified), ``zh-Hant`` (traditional) or ``en``
``has_attachments``                 bool
``category``                        text      as set so far (by earlier rules or stages)
``priority``                        level     ``low`` ``normal`` ``high`` ``urgent`` (as set so far)
``tags``                            list      tags set so far
``team``                            text      team set so far
``customer.tier``                   text      ``vip`` or ``standard``
``customer.open_tickets``           number    the sender's open tickets
``customer.complaints_30d``         number    the sender's complaints in the last 30 days
``customer.spam_count``             number    the sender's tickets staff closed as spam
``sentiment``                       number    tone -1 (angry) .. 1 (happy), see ``features.py``
``guess.category``                  text      the learned guess at the category, see ``category_guess.py``
``guess.confidence``                number    its probability 0..1
``mentions_staff``                  bool      the mail names a staff member
``sla.first_response_breached``     bool      escalation stage only
``sla.resolution_breached``         bool      escalation stage only
``hours_since_update``              number    escalation stage only
``status``                          text      ``new`` ``open`` ``pending`` ``resolved`` ``closed``
==================================  ========  ================================================================

Actions
-------

``then`` is a list; each item is a one-key mapping (an item with several keys is several actions,
in order). Evaluating rules only records decisions; ``routing.py`` applies them.

=================================================  ==========================================================
action                                             effect
=================================================  ==========================================================
``category: NAME``                                 set the category (complaint, fault, inquiry, suggestion,
                                                   praise, or your own)
``priority: LEVEL``                                set the priority: ``low`` ``normal`` ``high`` ``urgent``
``priority: {raise: N}``                           raise by N levels (negative lowers), capped at urgent/low
``priority: {raise: N, max: LEVEL}``               raise by N (1..3) levels but not above LEVEL; never lowers
``priority: {at_least: LEVEL}``                    raise to LEVEL if lower, never lower it
``team: NAME``                                     set the team
``assignee: EMAIL``                                assign to this staff member (never to a staff member the
                                                   mail names: then one is picked from the team instead)
``assignee: {pick: round_robin|least_open}``       pick a member of the ticket's team (after the stage)
``tag: X`` / ``tag: [X, Y]``                       add tags (kept once, in order)
``notify: {to: TARGET, template: NAME}``           send a staff notification; TARGET is a staff email,
                                                   ``team:NAME`` (all members), ``team`` (the ticket's team),
                                                   ``lead`` (the team's leads) or any address; template
                                                   defaults to ``staff_notify``
``ack_template: NAME``                             acknowledge with this template instead of ``ack``
``no_ack: true``                                   send no acknowledgement
``escalate: true``                                 escalate to the leads of the ticket's team (or the
                                                   escalation chain when the team has no lead)
``escalate: {to: lead|chain|EMAIL}``               escalate to the team leads, to everyone in the configured
                                                   ``routing.escalation_chain``, or to one address
=================================================  ==========================================================

Checking and reloading
----------------------

``check_rules(dir)`` (``mailflow check``) compiles every file and returns every problem as
``file: rule: reason`` (``-`` when no rule is concerned, ``#N`` for a rule without a name). Compiling
and going live are separate: ``RuleSet.load`` raises `RuleError` with all problems and registers
nothing, so the caller keeps the old `RuleSet` running; a good load returns a new object (new
``version``) that the caller swaps in.

How durable-rules is used (and where Python takes over)
--------------------------------------------------------

durable-rules 2.0.28 is fast but has sharp edges (measured, see DESIGN.md section 7); this module
is built around them:

* **Text never reaches the engine.** Its regex dialect gives silent false negatives, so every leaf
  test (``matches``, ``contains``, ``equals`` on text, ``in``, comparisons...) is computed in Python
  into a boolean. The engine gets one small fact per evaluation chunk holding only these booleans
  and tests them (``m.c0_3 == True``), combining them with the rule's ``all/any/not`` structure
  (``not`` is pushed down to the leaves, so the engine sees ``$and``/``$or`` of
  ``prop == True/False``). So **the engine decides WHICH rules match; Python decides the ORDER**:
  the engine fires matching rules in its own order (and fires an ``$or`` rule once per true
  branch), so the fired rules are de-duplicated and sorted back into file order, and then ``stop``
  is applied (decisions of rules after the first matching stop rule are dropped).
* **Engine limits are respected at compile time.** The alpha network uses a fixed 64-entry stack
  per assert (error 303 when more alpha nodes match at once) and expressions have size limits
  (error 113). Rules are packed into chunks whose alpha cost (2 per leaf occurrence, 2 per ``$or``,
  2 per rule) stays <= 60, one fact per chunk with chunk-unique property names (checked for FNV-1a
  hash collisions, which the engine would not notice), and a rule whose condition is very large is
  collapsed into one Python-computed boolean. Facts are asserted one by one: ``assert_facts`` on a
  batch raises "not handled" when its last fact matches nothing and then skips the actions of the
  others.
* **One Host, one thread, fixed session.** The whole process has one engine Host, owned by one
  daemon thread (``mailflow-rules``); `RuleSet.evaluate` may be called from any thread and hands
  the engine part to that thread (leaf booleans are computed in the caller's thread). The stock
  ``Host`` starts two timer threads that poll every ruleset (``start_action``/``assert_timers``)
  from their own threads; they could take our pending actions and run them where the decisions get
  lost, and mailflow does not use engine timers (SLA timers live in the database), so our Host
  subclass does not start them. All facts use one fixed sid, get a unique id, and are retracted
  right after the evaluation (the session never accumulates facts).
* **The engine's answers are remembered.** What the engine fires for a chunk's fact depends only on
  the fact's booleans (facts match one at a time and are retracted), so each stage keeps
  ``(chunk, booleans) -> fired rules`` from the engine (at most ``_ENGINE_MEMO_MAX`` entries, then
  it starts over) and asserts only the facts whose booleans it has not seen. Mail repeats a few
  hundred combinations: on the benchmark corpus 2,000 mails needed 195 engine facts instead of
  14,000, which was half of the rules' cost per mail. An engine or action error is never remembered.
* **Actions are tiny and never swallow errors.** An action only appends ``(fact id, rule index)``
  to a list; the decisions are the rule's precompiled actions. The engine swallows exceptions
  raised inside actions, so the action catches them itself and `evaluate` raises `RuleEvalError`
  naming the rule; engine errors also become `RuleEvalError`.
* **Regexes stay fast and bounded.** Each ``matches`` pattern gets a literal prefilter derived from
  its parse tree (a set of fragments one of which every match contains); the real search runs only
  when a fragment occurs in the text. It can only say "maybe" wrongly, never "no" (property-tested).
  Patterns are written in ``re`` syntax but matched with the ``regex`` module under a time budget,
  and catastrophic shapes are rejected when the rules compile (`regexes.hazard`): a rule can cost
  one message its budget (`RuleEvalError` naming the rule; the message is quarantined), never the
  daemon its progress.
* **Patterns compile once per machine, not once per start.** `RuleSet.load` and `check_rules` take
  a pattern list that passed every check before (same text, flags, Python, ``regex`` and this code)
  from `regexes.PatternCache` with its prefilter: loading the bundled rules takes ~0.04 s instead of
  ~0.6 s. Rules given as data (`RuleSet.from_data`) are always compiled.
* **Versioned names.** A ruleset name cannot be registered twice, so each load registers
  ``mf_v<version>_<stage>``; when a `RuleSet` is garbage collected its rulesets are deleted from
  the engine.

`RuleSet.evaluate_pure` evaluates the same rules without the engine (used by the agreement test).
"""

from __future__ import annotations

import difflib
import itertools
import math
import operator
import queue
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mailflow import regexes
from mailflow.errors import ProblemsError

try:  # the regex parser and compiler: one parse per pattern checks it and derives its prefilter
    from re import _compiler as _sre_compiler
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - before 3.11
    import sre_compile as _sre_compiler  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

__all__ = [
    "STAGES", "MESSAGE_STAGES", "PRIORITIES", "FIELDS", "ACTIONS", "RuleError", "RuleEvalError",
    "Decision", "StageResult", "RuleSet", "check_rules",
]

STAGES = ("classify", "priority", "routing", "escalation")
MESSAGE_STAGES = ("classify", "priority", "routing")
PRIORITIES = ("low", "normal", "high", "urgent")  # ascending
PRIORITY_RANK = {p: i for i, p in enumerate(PRIORITIES)}

# field -> kind: text | list | bool | number | level
FIELDS: dict[str, str] = {
    "subject": "text", "text": "text", "content": "text", "from": "text", "to": "list",
    "mailbox": "text", "language": "text", "has_attachments": "bool", "category": "text",
    "priority": "level", "tags": "list", "team": "text", "customer.tier": "text",
    "customer.open_tickets": "number", "customer.complaints_30d": "number", "customer.spam_count": "number",
    "sentiment": "number", "mentions_staff": "bool", "sla.first_response_breached": "bool",
    "guess.category": "text", "guess.confidence": "number",
    "sla.resolution_breached": "bool", "hours_since_update": "number", "status": "text",
    # escalation stage (timer facts, business time of the ticket's calendar)
    "sla.next_response_breached": "bool", "hours_since_customer": "number", "days_since_update": "number",
    "days_since_customer": "number", "hours_pending": "number", "days_pending": "number",
    "assignee": "text", "reopen_count": "number",
    **{f"sla.{c}.{k}": kind for c in ("first_response", "next_response", "resolution", "update")
       for k, kind in (("breached", "bool"), ("running", "bool"), ("cycle", "number"), ("remaining_hours", "number"),
                       ("elapsed_ratio", "number"), ("breached_hours", "number"), ("target_hours", "number"))},
}
TIMER_ONLY_ACTIONS = ("customer_update",)  # escalation.yaml only: the scheduler applies them
# fields whose values are a closed set: a rule testing another value is a mistake
FIELD_VALUES: dict[str, tuple[str, ...]] = {
    "priority": PRIORITIES,
    "customer.tier": ("vip", "standard"),
    "language": ("zh", "zh-Hant", "en"),
    "status": ("new", "open", "pending", "resolved", "closed"),
}
OPERATORS = ("equals", "in", "matches", "contains", "exists", "<", "<=", ">", ">=")
_OP_ALIASES = {"lt": "<", "le": "<=", "lte": "<=", "gt": ">", "ge": ">=", "gte": ">="}
ACTIONS = ("category", "priority", "team", "assignee", "tag", "notify", "ack_template", "no_ack",
           "escalate", "customer_update")
PICK_STRATEGIES = ("round_robin", "least_open")
RULE_KEYS = ("name", "when", "then", "stop", "description", "anytime")

# engine budgets (see module docstring)
_CHUNK_ALPHA_BUDGET = 60
_RULE_EXPR_BUDGET = 40
_SID = "0"
_ENGINE_MEMO_MAX = 4096  # remembered engine answers per stage (0: ask the engine every time)


class RuleError(ProblemsError):
    """Rules that do not compile: every problem as ``file: rule: reason``."""


class RuleEvalError(Exception):
    """A rule could not be evaluated; the caller quarantines the message."""

    def __init__(self, rule: str, stage: str, detail: str = ""):
        super().__init__(f"{stage}: {rule}: {detail}" if detail else f"{stage}: {rule}")
        self.rule = rule
        self.stage = stage
        self.detail = detail


@dataclass
class Decision:
    stage: str
    rule: str
    action: str  # one of ACTIONS
    value: Any  # normalised, see the action table


@dataclass
class StageResult:
    fired: list[str]  # rule names in file order (up to and including a stop rule)
    decisions: list[Decision]


# ---- facts --------------------------------------------------------------------------------------

_MISSING = object()


class _View:
    """Read access to the caller's facts: flat dotted keys or nested dicts, with per-call caches."""

    __slots__ = ("facts", "_raw", "_fold")

    def __init__(self, facts: dict):
        self.facts = facts
        self._raw: dict[str, Any] = {}
        self._fold: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        try:
            return self._raw[name]
        except KeyError:
            pass
        f = self.facts
        v = f.get(name, _MISSING)
        if v is _MISSING:
            if name == "content":
                s, t = f.get("subject"), f.get("text")
                parts = [x for x in (s, t) if isinstance(x, str)]
                v = "\n".join(parts) if parts else None
            elif "." in name:
                cur: Any = f
                for part in name.split("."):
                    cur = cur.get(part, _MISSING) if isinstance(cur, dict) else _MISSING
                    if cur is _MISSING:
                        break
                v = None if cur is _MISSING else cur
            else:
                v = None
        self._raw[name] = v
        return v

    def text(self, name: str) -> str | None:
        v = self.get(name)
        return v if isinstance(v, str) else None

    def folded(self, name: str) -> str | None:
        try:
            return self._fold[name]
        except KeyError:
            v = self.get(name)
            r = v.casefold() if isinstance(v, str) else None
            self._fold[name] = r
            return r

    def groups(self, name: str) -> frozenset[int]:
        """Ids of the prefilter groups (fragment sets) of which a fragment occurs in the field."""
        key = "%" + name
        try:
            return self._fold[key]
        except KeyError:
            r = _FRAGMENTS.groups_found(self.prefolded(name) or "")
            self._fold[key] = r
            return r

    def fragments(self, name: str) -> frozenset[int]:
        """The prefilter fragments that occur in the field (one automaton pass per field and view)."""
        key = "#" + name
        try:
            return self._fold[key]
        except KeyError:
            r = _FRAGMENTS.found(self.prefolded(name) or "")
            self._fold[key] = r
            return r

    def prefolded(self, name: str) -> str | None:
        """The text as the regex prefilters see it (see `_pf_fold`)."""
        key = "~" + name
        try:
            return self._fold[key]
        except KeyError:
            v = self.get(name)
            r = _pf_fold(v) if isinstance(v, str) else None
            self._fold[key] = r
            return r

    def items(self, name: str) -> list[str]:
        v = self.get(name)
        if isinstance(v, str):
            return [v]
        if isinstance(v, list | tuple | set | frozenset):
            return [x for x in v if isinstance(x, str)]
        return []

    def folded_items(self, name: str) -> list[str]:
        key = "[]" + name
        try:
            return self._fold[key]
        except KeyError:
            r = [x.casefold() for x in self.items(name)]
            self._fold[key] = r
            return r

    def number(self, name: str) -> float | None:
        v = self.get(name)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None
        return None if isinstance(v, float) and math.isnan(v) else v

    def flag(self, name: str) -> bool | None:
        v = self.get(name)
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        return None


# ---- compiled conditions ------------------------------------------------------------------------
# A condition tree is a tuple: ("all", [children]) | ("any", [children]) | ("not", child) |
# ("leaf", leaf_index). Leaves live in the stage's leaf table (shared between rules).

@dataclass
class _Leaf:
    key: tuple
    fn: Callable[[_View], bool]
    desc: str
    # a `matches` leaf with a prefilter: (field, its prefilter as sets of group ids, the search alone).
    # `_Stage.leaf_values` tests the prefilter with one subset test per alternative against the groups
    # that occur in the field (`_View.groups`) and runs the search only when it is met; `fn` does both.
    pf: tuple[str, tuple[frozenset[int], ...], Callable[[_View], bool]] | None = None


def _eval_tree(node: tuple, view: _View, leaves: list[_Leaf]) -> bool:
    kind = node[0]
    if kind == "leaf":
        return bool(leaves[node[1]].fn(view))
    if kind == "all":
        return all(_eval_tree(c, view, leaves) for c in node[1])
    if kind == "any":
        return any(_eval_tree(c, view, leaves) for c in node[1])
    return not _eval_tree(node[1], view, leaves)


# ---- regex prefilters -----------------------------------------------------------------------------
# Python's re scans a big alternation ("投诉|投訴|...|\\bcomplain\\b") slowly: ~150 us per 2 KB mail,
# with or without IGNORECASE, because the branches defeat its first-character skip. A plain
# alternation of literals without flags is ~10x faster. So each `matches` pattern gets, where
# possible, a set of literal fragments of which EVERY match must contain one (derived from the
# parsed pattern: literal runs, alternations, groups, repeats with min >= 1). The prefilter looks
# for any fragment in a case-normalised copy of the text; only if one is there does the real
# re.search run. It can say "maybe" wrongly, never "no" wrongly:
# * text and fragments are normalised with `_pf_fold`: str.lower() plus the four non-ASCII
#   characters that re.IGNORECASE treats as ASCII letters (measured over all of Unicode on 3.11:
#   U+0130 U+0131 -> i, U+017F -> s, U+212A -> k), applied before lower() (U+0130 lowers to 2 chars);
# * fragments may only contain ASCII or caseless characters (CJK...), whose re.I equivalence
#   classes the normalisation maps exactly; a pattern needing anything else gets no prefilter.
# Case-sensitive patterns use the same (weaker) test, which stays a necessary condition.

_PF_EXTRA = (("\u0130", "i"), ("\u0131", "i"), ("\u017f", "s"), ("\u212a", "k"))
_PF_MAX = 64  # most fragments per prefilter


def _pf_fold(s: str) -> str:
    for a, b in _PF_EXTRA:  # str.replace is a fast C scan when `a` is absent (translate is not)
        if a in s:
            s = s.replace(a, b)
    return s.lower()


def _pf_char_ok(c: str) -> bool:
    return c.isascii() or c.lower() == c == c.upper()


def _score(cand: set[str]) -> tuple[int, int]:
    return min(len(f) for f in cand), -len(cand)


def _required(items: Any) -> set[str] | None:
    """Literal strings one of which every match of the parsed sequence `items` contains, or None."""
    found = _candidates(items)
    return max(found, key=_score) if found else None


def _candidates(items: Any) -> list[set[str]]:
    """Every usable fragment set the sequence `items` requires: each is needed on its own, so a match
    contains a fragment of every one of them."""
    P = _sre_parse
    found: list[set[str]] = []

    def consider(cand: set[str] | None) -> None:
        if not cand or "" in cand or len(cand) > _PF_MAX:
            return
        if not all(_pf_char_ok(ch) for frag in cand for ch in frag):
            return
        found.append(cand)

    run: set[str] = {""}
    for op, av in items:
        if op is P.LITERAL:
            run = {r + chr(av) for r in run}
            continue
        if op is P.IN and all(o is P.LITERAL for o, _ in av) and len(av) * len(run) <= _PF_MAX:
            run = {r + chr(c) for r in run for _, c in av}
            continue
        if run != {""}:
            consider(run)
        run = {""}
        if op is P.SUBPATTERN:
            consider(_required(av[-1]))
        elif op is P.BRANCH:
            alts = [_required(alt) for alt in av[1]]
            if all(a is not None for a in alts):
                consider(set().union(*alts))  # type: ignore[arg-type]
        elif op in (P.MAX_REPEAT, P.MIN_REPEAT, getattr(P, "POSSESSIVE_REPEAT", None)) and av[0] >= 1:
            consider(_required(av[2]))
        elif op is getattr(P, "ATOMIC_GROUP", None):
            consider(_required(av))
        # anything else (anchors, classes, ANY, lookarounds, backrefs) requires nothing literal
    if run != {""}:
        consider(run)
    return found


# A prefilter is an OR of ANDs: the pattern can match only if, for one alternative, the text holds a
# fragment of each of its sets. "nobody (ever )?(told|informed) me" needs "nobody " AND one of
# "told"/"informed" AND " me": requiring all of them, not only the best one, keeps the regex from
# running on every mail that says "told" (measured on the bundled rules: most prefilter hits of the
# English leaves were such false alarms, at 150-300 us a search).
_PF_AND = 3  # most sets required per alternative (the longest fragments)
_PF_ALTS = 12  # most alternatives kept apart; beyond that, the single best set of the whole pattern

Need = tuple[tuple[frozenset[int], ...], ...]


def _needs(items: Any) -> list[list[set[str]]] | None:
    """For each top-level alternative of the parsed pattern, the fragment sets it requires."""
    seq = list(items)
    if len(seq) == 1 and seq[0][0] is _sre_parse.BRANCH:
        alts: list[list[set[str]]] = []
        for alt in seq[0][1][1]:
            sub = _needs(alt)
            if sub is None:
                return None
            alts.extend(sub)
        return alts
    found = sorted(_candidates(seq), key=_score, reverse=True)[:_PF_AND]
    return [found] if found else None


def _prefilter(pattern: str, flags: int, trees: list | None = None) -> Need | None:
    """The prefilter of `pattern` as fragment ids in the process-wide index (None: the regex always
    runs). `trees`: the parsed alternatives that `pattern` joins with "|", when the caller has them."""
    return _register_need(_prefilter_sets(pattern, flags, trees))


def _register_need(sets: list[list[list[str]]] | None) -> Need | None:
    if sets is None:
        return None
    reg = _FRAGMENTS.register
    return tuple(tuple(reg(set(group)) for group in alt) for alt in sets)


def _prefilter_sets(pattern: str, flags: int, trees: list | None = None) -> list[list[list[str]]] | None:
    """The prefilter of `pattern` as plain data: alternatives of groups of `_pf_fold`ed fragments
    (sorted, so that the pattern cache stores it as it is)."""
    try:
        if trees is None:
            trees = [_sre_parse.parse(pattern, flags)]
        alts: list[list[set[str]]] = []
        for tree in trees:
            part = _needs(tree)
            if part is None:
                return None
            alts.extend(part)
    except Exception:  # pragma: no cover - the pattern compiled, so this is only belt and braces
        return None
    if not alts:
        return None
    singles = [a[0] for a in alts if len(a) == 1]
    shaped = [a for a in alts if len(a) > 1]
    if singles:  # (any of s1) or (any of s2) is any of their union
        union = set().union(*singles)
        if len(union) > _PF_MAX:
            return None
        shaped.append([union])
    if len(shaped) > _PF_ALTS:  # one set per alternative, merged: as the whole pattern's best set
        union = set().union(*(max(alt, key=_score) for alt in shaped))
        if len(union) > _PF_MAX:
            return None
        shaped = [[union]]
    return [[sorted({_pf_fold(f) for f in group}) for group in alt] for alt in shaped]


def _need_met(need: Need, present: frozenset[int]) -> bool:
    if len(need) == 1 and len(need[0]) == 1:
        return not need[0][0].isdisjoint(present)
    return any(all(not group.isdisjoint(present) for group in alt) for alt in need)


class _FragmentIndex:
    """Every prefilter fragment of every rule set, in one Aho-Corasick automaton: one pass over a
    mail's text tells which fragments occur, for all leaves of all stages at once (a regex alternation
    per leaf scanned the text ~60 times per mail). Ids are stable; the automaton is rebuilt when a
    rule load adds fragments. Without pyahocorasick, one compiled alternation per leaf is used."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._built: tuple[Any, dict[str, frozenset[int]]] | None = None  # automaton, its recent answers
        self._fallback: dict[frozenset[int], re.Pattern] = {}
        self._gids: dict[frozenset[int], int] = {}  # group (a registered fragment set) -> group id
        self._frag_groups: dict[int, list[int]] = {}  # fragment id -> ids of the groups holding it
        self._recent_groups: tuple[Any, dict[str, frozenset[int]]] = (None, {})

    def register(self, frags: set[str]) -> frozenset[int]:
        with self._lock:
            ids = []
            for f in frags:
                if f not in self._ids:
                    self._ids[f] = len(self._ids)
                    self._built = None
                ids.append(self._ids[f])
            key = frozenset(ids)
            if key not in self._gids:
                gid = self._gids[key] = len(self._gids)
                for i in key:
                    self._frag_groups.setdefault(i, []).append(gid)
                self._recent_groups = (None, {})  # answers computed without this group are stale
            if _ahocorasick is None and key not in self._fallback:
                folded = sorted(frags, key=lambda f: (-len(f), f))
                self._fallback[key] = re.compile("|".join(re.escape(f) for f in folded))
            return key

    def _automaton(self) -> tuple[Any, dict[str, frozenset[int]]]:
        built = self._built
        if built is None:
            with self._lock:
                if self._built is None:
                    a = _ahocorasick.Automaton()
                    for f, i in self._ids.items():
                        a.add_word(f, i)
                    a.make_automaton()
                    self._built = (a, {})
                built = self._built
        return built

    def found(self, text: str) -> frozenset[int]:
        """Ids of the fragments that occur in `text` (already `_pf_fold`ed). The last few answers are
        kept with the automaton that gave them: a mail's stages (classify, priority, routing) ask
        about the same text, and a rule load that adds fragments starts a new automaton and cache."""
        if not text:
            return frozenset()
        auto, recent = self._automaton()
        got = recent.get(text)
        if got is None:
            got = frozenset(map(_second, auto.iter(text)))
            if len(recent) >= 16:
                recent.clear()
            recent[text] = got
        return got

    def group_alts(self, need: Need) -> tuple[frozenset[int], ...]:
        """`need` as group ids: it is met when, for one alternative, all its groups occur."""
        return tuple(frozenset(self._gids[g] for g in alt) for alt in need)

    def groups_found(self, text: str) -> frozenset[int]:
        """Ids of the groups of which a fragment occurs in `text` (already `_pf_fold`ed)."""
        if not text:
            return frozenset()
        present = self.found(text)
        auto, recent = self._recent_groups
        if auto is not self._built:  # a new automaton or a new group (see register)
            auto, recent = self._recent_groups = (self._built, {})
        got = recent.get(text)
        if got is None:
            hit: set[int] = set()
            fg = self._frag_groups
            for i in present:
                hit.update(fg[i])
            got = frozenset(hit)
            if len(recent) >= 16:
                recent.clear()
            recent[text] = got
        return got

    def _fallback_met(self, need: Need, text: str) -> bool:
        return any(all(self._fallback[g].search(text) is not None for g in alt) for alt in need)

    def matches(self, need: Need, text: str) -> bool:
        """Whether `text` (already `_pf_fold`ed) meets the prefilter `need`."""
        if _ahocorasick is None:
            return self._fallback_met(need, text)
        return _need_met(need, self.found(text))

    def any_in(self, need: Need, view: _View, field: str) -> bool:
        """`matches` on a mail's field, with the automaton's pass cached per field on the view."""
        text = view.prefolded(field)
        if text is None:
            return False
        if _ahocorasick is None:
            return self._fallback_met(need, text)
        return _need_met(need, view.fragments(field))


try:  # a C Aho-Corasick automaton: the prefilters' one pass per mail
    import ahocorasick as _ahocorasick
except ImportError:  # pragma: no cover - the regex fallback gives the same answers, slower
    _ahocorasick = None
_FRAGMENTS = _FragmentIndex()
_second = operator.itemgetter(1)


def _search_fn(field: str, rx: Any) -> Callable[[_View], bool]:
    """The search of a text `matches` leaf without its prefilter (the caller has tested it)."""
    search = regexes.search

    def text_search(v: _View) -> bool:
        x = v.text(field)
        return x is not None and search(rx, x)
    return text_search


def _make_leaf_fn(field: str, kind: str, op: str, value: Any) -> Callable[[_View], bool]:
    """The Python test for one (field, operator, value); `value` is already validated."""
    if op == "exists":
        want = bool(value)

        def exists(v: _View) -> bool:
            x = v.get(field)
            present = x is not None and not (isinstance(x, str | list | tuple | set | dict) and len(x) == 0)
            return present is want
        return exists

    if op in ("<", "<=", ">", ">="):
        cmp = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
               ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}[op]
        if kind == "level":
            target = PRIORITY_RANK[value]

            def level_cmp(v: _View) -> bool:
                x = v.folded(field)
                return x in PRIORITY_RANK and cmp(PRIORITY_RANK[x], target)
            return level_cmp

        def num_cmp(v: _View) -> bool:
            x = v.number(field)
            return x is not None and cmp(x, value)
        return num_cmp

    if op in ("equals", "in"):
        values = [value] if op == "equals" else list(value)
        if kind == "bool":
            wanted_b = frozenset(values)

            def flag_in(v: _View) -> bool:
                x = v.flag(field)
                return x is not None and x in wanted_b
            return flag_in
        if kind == "number":
            wanted_n = frozenset(values)

            def num_in(v: _View) -> bool:
                x = v.number(field)
                return x is not None and x in wanted_n
            return num_in
        wanted = frozenset(s.casefold() for s in values)
        if kind == "list":
            def list_in(v: _View) -> bool:
                return any(x in wanted for x in v.folded_items(field))
            return list_in

        def text_in(v: _View) -> bool:
            return v.folded(field) in wanted
        return text_in

    if op == "matches":
        # a `regex` pattern (time-bounded search, see regexes.py) and its prefilter (text fields only)
        rx, pf = value
        search = regexes.search
        if kind == "list":
            def list_matches(v: _View) -> bool:
                return any(search(rx, x) for x in v.items(field))
            return list_matches

        if pf is None:
            def text_matches(v: _View) -> bool:
                x = v.text(field)
                return x is not None and search(rx, x)
            return text_matches

        any_in = _FRAGMENTS.any_in

        def text_matches_pf(v: _View) -> bool:
            x = v.text(field)
            if x is None or not any_in(pf, v, field):
                return False
            return search(rx, x)
        return text_matches_pf

    if op == "contains":
        words = tuple(dict.fromkeys(w.casefold() for w in value))
        if kind == "list":
            wset = frozenset(words)

            def list_contains(v: _View) -> bool:
                return any(x in wset for x in v.folded_items(field))
            return list_contains

        def text_contains(v: _View) -> bool:
            x = v.folded(field)
            return x is not None and any(w in x for w in words)
        return text_contains

    raise AssertionError(op)  # pragma: no cover - validated before


def _const_fn(value: bool) -> Callable[[_View], bool]:
    def const(v: _View) -> bool:
        return value
    return const


# ---- validation ---------------------------------------------------------------------------------

def _suggest(word: str, choices) -> str:
    m = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and not (isinstance(x, float) and math.isnan(x))


def _describe(x: Any) -> str:
    if x is None:
        return "nothing"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, int | float):
        return "a number"
    if isinstance(x, str):
        return "text"
    if isinstance(x, list):
        return "a list"
    if isinstance(x, dict):
        return "a mapping"
    return type(x).__name__


class _Compiler:
    """Compiles one stage file; collects problems instead of stopping at the first."""

    def __init__(self, stage: str, fname: str, problems: list[str], cache: regexes.PatternCache | None = None):
        self.stage = stage
        self.fname = fname
        self.problems = problems
        self.cache = cache
        self.leaves: list[_Leaf] = []
        self._leaf_index: dict[tuple, int] = {}
        self._rule = "-"

    def err(self, reason: str, rule: str | None = None) -> None:
        self.problems.append(f"{self.fname}: {rule or self._rule}: {reason}")

    # leaves are shared by identical tests within a stage
    def leaf(self, key: tuple, fn: Callable[[_View], bool], desc: str,
             pf: tuple[str, frozenset[int]] | None = None) -> tuple:
        i = self._leaf_index.get(key)
        if i is None:
            i = len(self.leaves)
            self.leaves.append(_Leaf(key, fn, desc, pf))
            self._leaf_index[key] = i
        return ("leaf", i)

    def const(self, value: bool) -> tuple:
        return self.leaf(("const", value), _const_fn(value), "always" if value else "never")

    # -- conditions
    def condition(self, c: Any, path: str) -> tuple | None:
        if c is True:
            return self.const(True)
        if not isinstance(c, dict):
            self.err(f"{path}: a condition must be a mapping (all/any/not or field: {{operator: value}}), "
                     f"got {_describe(c)}")
            return None
        parts: list[tuple] = []
        ok = True
        for key, val in c.items():
            sub = f"{path}.{key}"
            if key in ("all", "any"):
                if not isinstance(val, list):
                    self.err(f"{sub}: must be a list of conditions, got {_describe(val)}")
                    ok = False
                    continue
                kids = [self.condition(x, f"{sub}[{i}]") for i, x in enumerate(val)]
                if any(k is None for k in kids):
                    ok = False
                    continue
                if not kids:  # all: [] is always true, any: [] never
                    parts.append(self.const(key == "all"))
                else:
                    parts.append((key, kids))
            elif key == "not":
                if isinstance(val, list):
                    kids = [self.condition(x, f"{sub}[{i}]") for i, x in enumerate(val)]
                    if any(k is None for k in kids):
                        ok = False
                        continue
                    parts.append(("not", ("all", kids)))
                else:
                    kid = self.condition(val, sub)
                    if kid is None:
                        ok = False
                        continue
                    parts.append(("not", kid))
            elif not isinstance(key, str) or key not in FIELDS:
                self.err(f"{path}: unknown field '{key}'{_suggest(key, [*FIELDS, 'all', 'any', 'not'])}")
                ok = False
            else:
                tests = self.field_tests(key, val, sub)
                if tests is None:
                    ok = False
                else:
                    parts.extend(tests)
        if not ok:
            return None
        if not parts:  # when: {} always matches
            return self.const(True)
        return parts[0] if len(parts) == 1 else ("all", parts)

    def field_tests(self, field: str, spec: Any, path: str) -> list[tuple] | None:
        if not isinstance(spec, dict):
            if isinstance(spec, list):
                self.err(f"{path}: give an operator, e.g. {{in: [...]}} or {{contains: [...]}}")
                return None
            spec = {"equals": spec}
        if not spec:
            self.err(f"{path}: no operator given (one of {', '.join(OPERATORS)})")
            return None
        out: list[tuple] = []
        ok = True
        for op, val in spec.items():
            op_name = _OP_ALIASES.get(op, op) if isinstance(op, str) else op
            if op_name not in OPERATORS:
                self.err(f"{path}: unknown operator '{op}'{_suggest(op, [*OPERATORS, *_OP_ALIASES])}")
                ok = False
                continue
            t = self.field_test(field, op_name, val, f"{path}.{op}")
            if t is None:
                ok = False
            else:
                out.append(t)
        return out if ok else None

    def _scalar_ok(self, field: str, kind: str, v: Any, path: str) -> bool:
        if kind == "bool":
            if not isinstance(v, bool):
                self.err(f"{path}: '{field}' is true/false, got {_describe(v)} {v!r}")
                return False
            return True
        if kind == "number":
            if not _is_number(v):
                self.err(f"{path}: '{field}' is a number, got {_describe(v)} {v!r}")
                return False
            return True
        if not isinstance(v, str):
            hint = " (quote it)" if isinstance(v, bool | int | float) else " (use 'in' for several values)" if isinstance(v, list) else ""
            self.err(f"{path}: '{field}' is text, got {_describe(v)} {v!r}{hint}")
            return False
        allowed = FIELD_VALUES.get(field)
        if allowed and v.casefold() not in allowed:
            what = "priority" if field == "priority" else f"value for '{field}'"
            self.err(f"{path}: unknown {what} '{v}' (one of {', '.join(allowed)})")
            return False
        return True

    def field_test(self, field: str, op: str, val: Any, path: str) -> tuple | None:
        kind = FIELDS[field]
        if op == "exists":
            if not isinstance(val, bool):
                self.err(f"{path}: must be true or false, got {_describe(val)}")
                return None
            key: tuple = (field, op, val)
            return self.leaf(key, _make_leaf_fn(field, kind, op, val), f"{field} exists {val}")
        if op in ("<", "<=", ">", ">="):
            if kind == "level":
                if not isinstance(val, str) or val.casefold() not in PRIORITIES:
                    self.err(f"{path}: unknown priority {val!r} (one of {', '.join(PRIORITIES)})")
                    return None
                val = val.casefold()
            elif kind != "number":
                self.err(f"{path}: '{op}' compares numbers; '{field}' is {kind}")
                return None
            elif not _is_number(val):
                self.err(f"{path}: '{op}' needs a number, got {_describe(val)} {val!r}")
                return None
            return self.leaf((field, op, val), _make_leaf_fn(field, kind, op, val), f"{field} {op} {val}")
        if op in ("equals", "in"):
            scalar_kind = "text" if kind in ("list", "level") else kind
            if op == "in":
                if not isinstance(val, list) or not val:
                    self.err(f"{path}: must be a non-empty list of values, got {_describe(val)}")
                    return None
                if not all([self._scalar_ok(field, scalar_kind, x, path) for x in val]):
                    return None
                key = (field, "in", tuple(sorted({str(x).casefold() if isinstance(x, str) else repr(x) for x in val})))
            else:
                if not self._scalar_ok(field, scalar_kind, val, path):
                    return None
                key = (field, "in", (val.casefold() if isinstance(val, str) else repr(val),))
            return self.leaf(key, _make_leaf_fn(field, kind, op, val), f"{field} {op} {val!r}")
        if op == "matches":
            if kind not in ("text", "list"):
                self.err(f"{path}: 'matches' works on text fields; '{field}' is {kind}")
                return None
            case_sensitive = False
            pattern = val
            if isinstance(val, dict):
                unknown = set(val) - {"pattern", "case_sensitive"}
                if unknown:
                    self.err(f"{path}: unknown key(s) {', '.join(map(str, sorted(unknown, key=str)))} "
                             f"(use pattern, case_sensitive)")
                    return None
                pattern = val.get("pattern")
                case_sensitive = val.get("case_sensitive", False)
                if not isinstance(case_sensitive, bool):
                    self.err(f"{path}.case_sensitive: must be true or false")
                    return None
            patterns = pattern if isinstance(pattern, list) else [pattern]
            if not patterns or not all(isinstance(x, str) and x for x in patterns):
                self.err(f"{path}: needs a regular expression (text) or a list of them, got {_describe(pattern)}")
                return None
            bad_ctl = next((x for x in patterns if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in x)), None)
            if bad_ctl is not None:
                self.err(f"{path}: pattern {bad_ctl!r} contains a control character; in double quotes YAML "
                         f"reads \\b as a backspace: write \\\\b or use single quotes")
                return None
            flags = 0 if case_sensitive else re.IGNORECASE
            pattern = patterns[0] if len(patterns) == 1 else "|".join(f"(?:{x})" for x in patterns)
            hit = self.cache.get(patterns, flags, pattern) if self.cache is not None else None
            if hit is not None:  # these patterns passed every check below before (regexes.PatternCache)
                rx, sets = hit
            else:
                got = self._checked_regex(patterns, pattern, flags, path)
                if got is None:
                    return None
                rx, sets = got
            need = _register_need(sets) if kind == "text" else None
            quick = (field, _FRAGMENTS.group_alts(need), _search_fn(field, rx)) \
                if need is not None and _ahocorasick is not None else None
            return self.leaf((field, "matches", pattern, case_sensitive),
                             _make_leaf_fn(field, kind, op, (rx, need)), f"{field} matches {pattern!r}", quick)
        if op == "contains":
            if kind not in ("text", "list"):
                self.err(f"{path}: 'contains' works on text fields; '{field}' is {kind}")
                return None
            words = [val] if isinstance(val, str) else val
            if not isinstance(words, list) or not words:
                self.err(f"{path}: needs a keyword or a non-empty list of keywords, got {_describe(val)}")
                return None
            bad = [w for w in words if not isinstance(w, str) or not w]
            if bad:
                self.err(f"{path}: keywords must be non-empty text, got {bad[0]!r} (quote it)")
                return None
            key = (field, "contains", tuple(sorted({w.casefold() for w in words})))
            return self.leaf(key, _make_leaf_fn(field, kind, op, words), f"{field} contains {words!r}")
        raise AssertionError(op)  # pragma: no cover

    def _checked_regex(self, patterns: list[str], pattern: str, flags: int, path: str) -> tuple[Any, Any] | None:
        """Check and compile the patterns of one `matches` (joined as `pattern`); None after an error."""
        trees = []
        for x in patterns:
            try:  # parsed once: the syntax check, the shape check and the prefilter share it
                tree = _sre_parse.parse(x, flags)
                _sre_compiler.compile(tree, flags)
            except re.error as e:
                where = f" at position {e.pos}" if e.pos is not None else ""
                self.err(f"{path}: bad regex {x!r}: {e.msg}{where}")
                return None
            why = regexes.hazard(x, flags, tree)
            if why:
                self.err(f"{path}: unsafe regex {x!r}: {why}")
                return None
            trees.append(tree)
        try:
            rx = regexes.compile_rx(pattern, flags)
        except Exception as e:  # noqa: BLE001 - valid for re but not for the bounded engine
            self.err(f"{path}: regex {pattern!r} is not supported: {e}")
            return None
        sets = _prefilter_sets(pattern, flags, trees)
        if self.cache is not None:
            self.cache.put(patterns, flags, rx, sets)
        return rx, sets

    # -- actions
    def actions(self, then: Any) -> list[tuple[str, Any]] | None:
        items = then if isinstance(then, list) else [then] if isinstance(then, dict) else None
        if items is None:
            self.err(f"then: must be a list of actions, got {_describe(then)}")
            return None
        out: list[tuple[str, Any]] = []
        ok = True
        for i, item in enumerate(items):
            path = f"then[{i}]"
            if isinstance(item, str) and item in ("no_ack", "escalate"):
                item = {item: True}
            if not isinstance(item, dict) or not item:
                self.err(f"{path}: an action is a mapping like 'priority: high', got {_describe(item)}"
                         + (f" {item!r}" if isinstance(item, str) else ""))
                ok = False
                continue
            for name, val in item.items():
                r = self.action(name, val, f"{path}.{name}")
                if r is None:
                    ok = False
                else:
                    out.extend(r)
        return out if ok else None

    def _name(self, val: Any, path: str, what: str) -> str | None:
        if not isinstance(val, str) or not val.strip():
            self.err(f"{path}: needs {what} (text), got {_describe(val)}")
            return None
        return val.strip()

    def action(self, name: Any, val: Any, path: str) -> list[tuple[str, Any]] | None:
        if name not in ACTIONS:
            self.err(f"unknown action '{name}'{_suggest(name, ACTIONS)} (one of {', '.join(ACTIONS)})")
            return None
        if name in ("category", "team", "ack_template"):
            v = self._name(val, path, "a name")
            return None if v is None else [(name, v)]
        if name == "priority":
            if isinstance(val, str):
                if val.casefold() not in PRIORITIES:
                    self.err(f"{path}: unknown priority '{val}' (one of {', '.join(PRIORITIES)})")
                    return None
                return [(name, val.casefold())]
            if isinstance(val, dict) and set(val) == {"raise", "max"}:  # a capped raise
                v, cap = val["raise"], val["max"]
                if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 3:
                    self.err(f"{path}.raise: with max, needs a raise of 1..3 levels, got {v!r}")
                    return None
                if not isinstance(cap, str) or cap.casefold() not in PRIORITIES:
                    self.err(f"{path}.max: unknown priority {cap!r} (one of {', '.join(PRIORITIES)})")
                    return None
                return [(name, {"raise": v, "max": cap.casefold()})]
            if isinstance(val, dict) and len(val) == 1:
                (k, v), = val.items()
                if k == "raise":
                    if not isinstance(v, int) or isinstance(v, bool) or v == 0 or abs(v) > 3:
                        self.err(f"{path}.raise: needs a whole number of levels (1..3, negative lowers), got {v!r}")
                        return None
                    return [(name, {"raise": v})]
                if k == "at_least":
                    if not isinstance(v, str) or v.casefold() not in PRIORITIES:
                        self.err(f"{path}.at_least: unknown priority {v!r} (one of {', '.join(PRIORITIES)})")
                        return None
                    return [(name, {"at_least": v.casefold()})]
                self.err(f"{path}: unknown key '{k}'{_suggest(k, ['raise', 'at_least'])} (use raise or at_least)")
                return None
            self.err(f"{path}: give a level ({', '.join(PRIORITIES)}), {{raise: N}}, {{raise: N, max: LEVEL}}"
                     " or {at_least: LEVEL}")
            return None
        if name == "assignee":
            if isinstance(val, str):
                if "@" not in val:
                    self.err(f"{path}: not an email address: {val!r}")
                    return None
                return [(name, val.strip().lower())]
            if isinstance(val, dict) and set(val) == {"pick"}:
                if val["pick"] not in PICK_STRATEGIES:
                    self.err(f"{path}.pick: unknown strategy {val['pick']!r} (one of {', '.join(PICK_STRATEGIES)})")
                    return None
                return [(name, {"pick": val["pick"]})]
            self.err(f"{path}: give an email address or {{pick: round_robin|least_open}}")
            return None
        if name == "tag":
            tags = [val] if isinstance(val, str) else val
            if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t.strip() for t in tags):
                self.err(f"{path}: needs a tag or a list of tags (text), got {_describe(val)}")
                return None
            return [(name, t.strip()) for t in tags]
        if name == "notify":
            spec = {"to": val} if isinstance(val, str) else val
            if not isinstance(spec, dict):
                self.err(f"{path}: give {{to: TARGET, template: NAME}}")
                return None
            unknown = set(spec) - {"to", "template"}
            if unknown:
                self.err(f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (use to, template)")
                return None
            to = spec.get("to")
            if not isinstance(to, str) or not to.strip():
                self.err(f"{path}.to: needs a target: a staff email, team:NAME, team, lead, assignee, manager "
                         "or an address")
                return None
            to = to.strip()
            if to.startswith("team:"):
                if not to[5:].strip():
                    self.err(f"{path}.to: 'team:' needs a team name")
                    return None
            elif to not in ("team", "lead", "assignee", "manager") and "@" not in to:
                self.err(f"{path}.to: {to!r} is not an address, team:NAME, team, lead, assignee or manager")
                return None
            template = spec.get("template", "staff_notify")
            if not isinstance(template, str) or not template.strip():
                self.err(f"{path}.template: needs a template name")
                return None
            return [(name, {"to": to if "@" not in to else to.lower(), "template": template.strip()})]
        if name == "customer_update":
            if self.stage != "escalation":
                self.err(f"{path}: customer_update works in escalation.yaml only (mail sent by the scheduler)")
                return None
            v = self._name(val, path, "a template name")
            return None if v is None else [(name, v)]
        if name == "no_ack":
            if not isinstance(val, bool):
                self.err(f"{path}: must be true or false, got {_describe(val)}")
                return None
            return [(name, val)]
        if name == "escalate":
            if val is True:
                return [(name, "lead")]
            target = val.get("to") if isinstance(val, dict) and set(val) == {"to"} else val
            if isinstance(target, str) and (target in ("lead", "chain", "manager") or "@" in target):
                return [(name, target.strip().lower())]
            self.err(f"{path}: give true or {{to: lead|chain|manager|EMAIL}}, got {val!r}")
            return None
        raise AssertionError(name)  # pragma: no cover

    # -- rules
    def rules(self, data: Any) -> list[_Rule]:
        if data is None:
            return []
        if not isinstance(data, list):
            self.err(f"a rule file is a list of rules ('- name: ...'), got {_describe(data)}", rule="-")
            return []
        out: list[_Rule] = []
        seen: dict[str, int] = {}
        for i, r in enumerate(data, 1):
            self._rule = f"#{i}"
            if not isinstance(r, dict):
                self.err(f"a rule is a mapping with name, when and then, got {_describe(r)}")
                continue
            name = r.get("name")
            named = isinstance(name, str) and bool(name.strip())
            if named:
                self._rule = name.strip()
            elif "name" not in r:
                self.err("missing 'name'")
            else:
                self.err(f"'name' must be non-empty text, got {_describe(name)}")
            ok = True
            for k in r:
                if k not in RULE_KEYS:
                    self.err(f"unknown key '{k}'{_suggest(k, RULE_KEYS)} (rule keys: {', '.join(RULE_KEYS)})")
                    ok = False
            if named and self._rule in seen:
                self.err(f"duplicate rule name (first used by rule #{seen[self._rule]})")
                ok = False
            elif named:
                seen[self._rule] = i
            for k in ("when", "then"):
                if k not in r:
                    self.err(f"missing '{k}'")
                    ok = False
            stop = r.get("stop", False)
            if not isinstance(stop, bool):
                self.err(f"stop: must be true or false, got {_describe(stop)}")
                ok = False
            anytime = r.get("anytime", False)
            if not isinstance(anytime, bool):
                self.err(f"anytime: must be true or false, got {_describe(anytime)}")
                ok = False
            elif anytime and self.stage != "escalation":
                self.err("anytime: only escalation rules wait for working hours, so only they take it")
                ok = False
            cond = self.condition(r["when"], "when") if "when" in r else None
            acts = self.actions(r["then"]) if "then" in r else None
            if acts is not None and not acts and not stop:
                self.err("then: no actions (a rule without actions only makes sense with stop: true)")
                ok = False
            if ok and named and cond is not None and acts is not None:
                out.append(_Rule(self._rule, len(out), cond, tuple(acts), stop, anytime))
        self._rule = "-"
        return out


@dataclass(frozen=True)
class _Rule:
    name: str
    index: int
    cond: tuple
    actions: tuple[tuple[str, Any], ...]
    stop: bool
    anytime: bool = False


# ---- engine shape (NNF, costs, chunks) ----------------------------------------------------------

def _nnf(node: tuple, neg: bool = False) -> tuple:
    """Push `not` down to the leaves: ("and"|"or", [..]) or ("lit", leaf, positive)."""
    kind = node[0]
    if kind == "leaf":
        return ("lit", node[1], not neg)
    if kind == "not":
        return _nnf(node[1], not neg)
    op = {"all": "and", "any": "or"}[kind]
    if neg:
        op = "or" if op == "and" else "and"
    kids = []
    for c in node[1]:
        n = _nnf(c, neg)
        if n[0] == op:
            kids.extend(n[1])
        else:
            kids.append(n)
    if len(kids) == 1:
        return kids[0]
    return (op, kids)


def _expr_cost(n: tuple) -> int:
    return 1 if n[0] == "lit" else 2 + sum(_expr_cost(c) for c in n[1])


def _alpha_cost(n: tuple) -> int:
    if n[0] == "lit":
        return 2
    return (2 if n[0] == "or" else 0) + sum(_alpha_cost(c) for c in n[1])


def _fnv1a32(s: str) -> int:
    h = 0x811C9DC5
    for b in s.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


@dataclass
class _Chunk:
    props: list[tuple[str, int]]  # (property name, leaf index)


@dataclass
class _Stage:
    name: str
    file: str
    rules: list[_Rule]
    leaves: list[_Leaf]
    rule_nnf: list[tuple]  # per rule, over chunk property names: ("lit", prop, pos) | ("and"/"or", ...)
    chunks: list[_Chunk]
    engine_name: str | None = None
    # (chunk index, its fact's booleans) -> the rule indexes the engine fired for that fact (see
    # `RuleSet.evaluate`); bounded by _ENGINE_MEMO_MAX, cleared when full
    memo: dict[tuple, tuple[int, ...]] = field(default_factory=dict)

    def leaf_values(self, view: _View) -> list[bool]:
        values: list[bool] = []
        append = values.append
        groups = view.groups
        try:
            for leaf in self.leaves:
                pf = leaf.pf
                if pf is None:
                    append(bool(leaf.fn(view)))
                    continue
                hit = groups(pf[0])
                for alt in pf[1]:
                    if alt <= hit:  # the prefilter is met: the search decides
                        append(bool(pf[2](view)))
                        break
                else:
                    append(False)  # what leaf.fn returns when its prefilter is not met
        except Exception as e:
            raise self.leaf_error(len(values), e) from e
        return values

    def leaf_error(self, i: int, e: Exception) -> RuleEvalError:
        """The RuleEvalError for leaf `i` raising `e`: names the rule, and for a regex the budget."""
        leaf = self.leaves[i]
        if isinstance(e, regexes.BudgetExceeded):
            return RuleEvalError(self._rule_using(i), self.name, f"{e} ({leaf.desc}, {Path(self.file).name or self.name})")
        return RuleEvalError(self._rule_using(i), self.name, f"{leaf.desc}: {e!r}")

    def _rule_using(self, leaf: int) -> str:
        key = self.leaves[leaf].key
        if key[0] == "rule":  # the Python-computed condition of a rule too big for the engine
            return self.rules[key[2]].name
        def uses(node: tuple) -> bool:
            if node[0] == "leaf":
                return node[1] == leaf
            if node[0] == "not":
                return uses(node[1])
            return any(uses(c) for c in node[1])
        return next((r.name for r in self.rules if uses(r.cond)), "-")

    def result(self, fired: list[int]) -> StageResult:
        names: list[str] = []
        decisions: list[Decision] = []
        for i in fired:
            rule = self.rules[i]
            names.append(rule.name)
            for action, value in rule.actions:
                decisions.append(Decision(self.name, rule.name, action,
                                          dict(value) if isinstance(value, dict) else value))
            if rule.stop:
                break
        return StageResult(names, decisions)


def _shape(stage: str, fname: str, rules: list[_Rule], leaves: list[_Leaf]) -> _Stage:
    """Give each rule its engine expression and pack the rules into chunks (one fact each)."""
    leaves = list(leaves)
    shapes: list[tuple] = []
    for r in rules:
        n = _nnf(r.cond)
        if _expr_cost(n) > _RULE_EXPR_BUDGET or _alpha_cost(n) + 2 > _CHUNK_ALPHA_BUDGET:
            # too big for the engine's fixed-size structures: one Python-computed boolean
            fn = _whole_rule_fn(r.cond, leaves)
            leaves.append(_Leaf(("rule", stage, r.index), fn, f"condition of rule {r.name}"))
            n = ("lit", len(leaves) - 1, True)
        shapes.append(n)
    chunks: list[_Chunk] = []
    rule_nnf: list[tuple] = []
    cost = _CHUNK_ALPHA_BUDGET + 1
    names: dict[int, str] = {}
    for n in shapes:
        c = _alpha_cost(n) + 2
        if cost + c > _CHUNK_ALPHA_BUDGET:
            chunks.append(_Chunk([]))
            names = {}
            cost = 0
        cost += c
        rule_nnf.append(_rename(n, chunks[-1], len(chunks) - 1, names))
    return _Stage(stage, fname, rules, leaves, rule_nnf, chunks)


def _rename(node: tuple, chunk: _Chunk, ci: int, names: dict[int, str]) -> tuple:
    """Replace leaf indexes by the chunk's property names (adding properties as needed)."""
    if node[0] == "lit":
        prop = names.get(node[1])
        if prop is None:
            prop = _prop_name(ci, node[1], {p for p, _ in chunk.props})
            names[node[1]] = prop
            chunk.props.append((prop, node[1]))
        return ("lit", prop, node[2])
    return (node[0], [_rename(k, chunk, ci, names) for k in node[1]])


def _prop_name(chunk: int, leaf: int, taken: set[str]) -> str:
    """A property name unique in its chunk whose engine hash collides with no other property."""
    hashes = {_fnv1a32(p) for p in taken} | {_fnv1a32("id"), _fnv1a32("sid")}
    for salt in range(1000):
        p = f"c{chunk}_{leaf}" + (f"_{salt}" if salt else "")
        if _fnv1a32(p) not in hashes:
            return p
    raise AssertionError("no free property name")  # pragma: no cover


def _whole_rule_fn(cond: tuple, leaves: list[_Leaf]) -> Callable[[_View], bool]:
    def whole(view: _View) -> bool:
        return _eval_tree(cond, view, leaves)
    return whole


def _engine_expr(n: tuple) -> dict:
    if n[0] == "lit":
        return {n[1]: n[2]}
    return {"$" + n[0]: [_engine_expr(k) for k in n[1]]}


# ---- the engine: one Host, one thread ------------------------------------------------------------

class _Job:
    __slots__ = ("fn", "args", "done", "result", "error")

    def __init__(self, fn: Callable, args: tuple):
        self.fn = fn
        self.args = args
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None


def on_engine(fn: Callable, *args: Any, **kw: Any) -> Any:
    """Run fn on the rules-engine thread: a whole message's stages cost one thread hand-off
    instead of one per stage (the hand-off, not the engine, was the cost: ~0.1 ms each)."""
    return _ENGINE.call(lambda: fn(*args, **kw))


class _Engine:
    """The process's single durable-rules Host, owned and driven by one daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.host: Any = None
        self.sink: list | None = None
        self.errors: list | None = None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            ready = threading.Event()
            failure: list[BaseException] = []
            t = threading.Thread(target=self._loop, args=(ready, failure), name="mailflow-rules", daemon=True)
            t.start()
            ready.wait()
            if failure:
                raise failure[0]
            self._thread = t

    def _loop(self, ready: threading.Event, failure: list) -> None:
        try:
            from durable import engine as dengine

            class _QuietHost(dengine.Host):
                """A Host without the two polling timer threads (see module docstring)."""

                def _run(self) -> None:
                    pass

            self._not_handled = dengine.MessageNotHandledException
            self.host = _QuietHost()
        except BaseException as e:  # pragma: no cover - durable-rules missing or broken
            failure.append(e)
            ready.set()
            return
        ready.set()
        while True:
            job = self._queue.get()
            try:
                job.result = job.fn(*job.args)
            except BaseException as e:
                job.error = e
            finally:
                job.done.release()

    def call(self, fn: Callable, *args: Any) -> Any:
        """Run fn(*args) on the engine thread and return its result (or raise its exception)."""
        if self._thread is None:
            self._start()
        if threading.current_thread() is self._thread:
            return fn(*args)
        job = _Job(fn, args)
        self._queue.put(job)
        job.done.acquire()
        if job.error is not None:
            raise job.error
        return job.result

    def post(self, fn: Callable, *args: Any) -> None:
        """Queue fn(*args) for the engine thread without waiting (used by finalizers)."""
        if self._thread is not None:
            self._queue.put(_Job(fn, args))

    # -- the following run on the engine thread only
    def register(self, definitions: dict[str, dict]) -> None:
        done: list[str] = []
        try:
            for name, rules in definitions.items():
                self.host.register_rulesets({name: rules})
                done.append(name)
        except BaseException:
            self.drop(done)
            raise

    def drop(self, names: list[str]) -> None:
        import durable_rules_engine

        for name in names:
            rs = self.host._ruleset_directory.pop(name, None)
            if rs is None:
                continue
            try:
                self.host._ruleset_list.remove(rs)
            except ValueError:  # pragma: no cover
                pass
            durable_rules_engine.delete_ruleset(rs._handle)

    def run(self, name: str, facts: list[dict]) -> tuple[list[tuple[int, int]], list[tuple[int, str]]]:
        """Assert each fact (one per chunk), collect fired (fact id, rule index), retract them all."""
        host = self.host
        sink: list[tuple[int, int]] = []
        errors: list[tuple[int, str]] = []
        self.sink, self.errors = sink, errors
        try:
            for i, fact in enumerate(facts):
                try:
                    host.assert_fact(name, fact)
                except self._not_handled:
                    pass  # no rule's condition holds for this fact
                except BaseException:
                    self._retract(name, facts[:i + 1])
                    raise
            self._retract(name, facts)
        finally:
            self.sink = self.errors = None
        return sink, errors

    def _retract(self, name: str, facts: list[dict]) -> None:
        for fact in facts:
            try:
                self.host.retract_fact(name, fact)
            except self._not_handled:
                pass  # never stored (it matched nothing)

    def facts_left(self, name: str) -> list:
        return self.host.get_facts(name, _SID)


_ENGINE = _Engine()
_fact_ids = itertools.count(1)
_versions = itertools.count(1)


def _record(c: Any, index: int) -> None:
    _ENGINE.sink.append((c._m["m"]["id"], index))


def _make_action(index: int) -> Callable:
    """The engine-side action of rule `index`: record that it fired, nothing else."""
    def action(c: Any) -> None:
        try:
            _record(c, index)
        except BaseException as e:  # the engine would swallow it: record it for evaluate()
            errors = _ENGINE.errors
            if errors is not None:
                errors.append((index, repr(e)))
    return action


# ---- loading ------------------------------------------------------------------------------------

class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one). libyaml's parser
    where PyYAML has it (Debian's and the wheels do): the bundled rules parse in 10 ms instead of 0.1 s
    of every start-up, with the same line numbers in errors."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:
            continue
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _stage_files(rules_dir: Path, problems: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if not rules_dir.is_dir():
        problems.append(f"{rules_dir}: -: not a directory")
        return files
    expected = ", ".join(f"{s}.yaml" for s in STAGES)
    for p in sorted(rules_dir.iterdir()):
        if p.suffix not in (".yaml", ".yml") or p.name.startswith("."):
            continue
        if p.stem not in STAGES:
            problems.append(f"{p}: -: not a stage file (expected {expected}){_suggest(p.name, [f'{s}.yaml' for s in STAGES])}")
            continue
        if p.stem in files:
            problems.append(f"{p}: -: both {files[p.stem].name} and {p.name} exist; keep one")
            continue
        files[p.stem] = p
    return files


def _read_yaml(path: Path, problems: list[str]) -> tuple[bool, Any]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        problems.append(f"{path}: -: cannot read: {e.strerror or e}")
        return False, None
    except UnicodeDecodeError as e:
        problems.append(f"{path}: -: not UTF-8 (byte {e.start})")
        return False, None
    try:
        return True, yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e)
        ctx = getattr(e, "context", None)
        problems.append(f"{path}: -: YAML syntax error{where}: {what}" + (f" ({ctx})" if ctx else ""))
        return False, None


def _compile_data(data: dict[str, tuple[str, Any]], problems: list[str],
                  cache: regexes.PatternCache | None = None) -> dict[str, _Stage]:
    """data: stage -> (file name for messages, parsed YAML). Returns shaped stages. `cache`: where
    patterns that passed every check before are taken from (rules directories only)."""
    stages: dict[str, _Stage] = {}
    for stage in STAGES:
        if stage not in data:
            stages[stage] = _Stage(stage, "", [], [], [], [])
            continue
        fname, parsed = data[stage]
        comp = _Compiler(stage, fname, problems, cache)
        rules = comp.rules(parsed)
        stages[stage] = _shape(stage, fname, rules, comp.leaves)
    return stages


def _compile_dir(rules_dir: Path) -> tuple[dict[str, Path], dict[str, _Stage], list[str]]:
    problems: list[str] = []
    rules_dir = Path(rules_dir)
    files = _stage_files(rules_dir, problems)
    data: dict[str, tuple[str, Any]] = {}
    for stage, path in files.items():
        ok, parsed = _read_yaml(path, problems)
        if ok:
            data[stage] = (str(path), parsed)
    cache = regexes.pattern_cache()
    stages = _compile_data(data, problems, cache)
    cache.save()
    return files, stages, problems


def check_rules(rules_dir: Path) -> list[str]:
    """Compile every rule file in `rules_dir`; all problems as ``file: rule: reason`` ([] if fine)."""
    return _compile_dir(Path(rules_dir))[2]


class RuleSet:
    """A compiled, live set of rules for all stages. Immutable; reload = load a new one and swap."""

    files: dict[str, Path]
    version: int

    def __init__(self, stages: dict[str, _Stage], files: dict[str, Path], rules_dir: Path | None):
        self._stages = stages
        self.files = files
        self.rules_dir = rules_dir
        self.version = next(_versions)
        definitions: dict[str, dict] = {}
        for st in stages.values():
            if not st.rules:
                continue
            st.engine_name = f"mf_v{self.version}_{st.name}"
            definitions[st.engine_name] = {
                f"r{i}": {"all": [{"m": _engine_expr(n)}], "run": _make_action(i)}
                for i, n in enumerate(st.rule_nnf)
            }
        try:
            _ENGINE.call(_ENGINE.register, definitions)
        except Exception as e:
            raise RuleError([f"{rules_dir or '<rules>'}: -: the rule engine rejected the rules: {e}"]) from e
        names = list(definitions)
        if names:
            fin = weakref.finalize(self, _ENGINE.post, _ENGINE.drop, names)
            fin.atexit = False

    @classmethod
    def load(cls, rules_dir: Path) -> RuleSet:
        """Compile all stage files in `rules_dir`; RuleError lists every problem (nothing goes live)."""
        files, stages, problems = _compile_dir(Path(rules_dir))
        if problems:
            raise RuleError(problems)
        return cls(stages, files, Path(rules_dir))

    @classmethod
    def from_data(cls, data: dict[str, Any], origin: str = "<memory>") -> RuleSet:
        """Compile rules given as Python data: {stage: [rule, ...]} (tests, simulations)."""
        problems: list[str] = []
        unknown = [s for s in data if s not in STAGES]
        for s in unknown:
            problems.append(f"{origin}/{s}: -: unknown stage (one of {', '.join(STAGES)})")
        stages = _compile_data({s: (f"{origin}/{s}.yaml", v) for s, v in data.items() if s in STAGES}, problems)
        if problems:
            raise RuleError(problems)
        return cls(stages, {}, None)

    # -- introspection
    def rule_names(self, stage: str) -> list[str]:
        return [r.name for r in self._get(stage).rules]

    def _get(self, stage: str) -> _Stage:
        try:
            return self._stages[stage]
        except KeyError:
            raise ValueError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})") from None

    # -- evaluation
    def evaluate(self, stage: str, facts: dict) -> StageResult:
        """Run one stage against `facts` through durable-rules; thread-safe.

        The engine decides which rules match; the fired rules are then put back into file order
        and ``stop`` is applied. Raises RuleEvalError (naming the rule) if anything goes wrong.
        """
        st = self._get(stage)
        if not st.rules:
            return StageResult([], [])
        values = st.leaf_values(_View(facts))
        memo = st.memo
        fired_set: set[int] = set()
        engine_facts = []
        asked: dict[int, tuple] = {}  # fact id -> its memo key
        for ci, chunk in enumerate(st.chunks):
            key = (ci, tuple([values[leaf] for _, leaf in chunk.props]))
            known = memo.get(key)
            if known is not None:
                fired_set.update(known)
                continue
            fact: dict[str, Any] = {"id": next(_fact_ids), "sid": _SID}
            for prop, leaf in chunk.props:
                fact[prop] = values[leaf]
            engine_facts.append(fact)
            asked[fact["id"]] = key
        if engine_facts:
            try:
                hits, errors = _ENGINE.call(_ENGINE.run, st.engine_name, engine_facts)
            except RuleEvalError:
                raise
            except Exception as e:
                raise RuleEvalError("-", stage, f"rule engine error: {e!r}") from e
            if errors:
                idx, detail = errors[0]
                raise RuleEvalError(st.rules[idx].name, stage, f"action failed: {detail}")
            answers: dict[tuple, set[int]] = {key: set() for key in asked.values()}
            for fid, idx in hits:
                key = asked.get(fid)
                if key is not None:
                    answers[key].add(idx)
            if _ENGINE_MEMO_MAX > 0:
                if len(memo) + len(answers) > _ENGINE_MEMO_MAX:
                    memo.clear()
                for key, got in answers.items():
                    memo[key] = tuple(sorted(got))
            for got in answers.values():
                fired_set.update(got)
        return st.result(sorted(fired_set))

    def templates_used(self) -> list[tuple[str, str, str]]:
        """(stage file, rule, template) for every template a rule names (notify, ack_template,
        customer_update): `check` makes sure each exists."""
        out = []
        for st in self._stages.values():
            for r in st.rules:
                for action, value in r.actions:
                    name = value.get("template") if isinstance(value, dict) else value
                    if action in ("notify", "ack_template", "customer_update") and isinstance(name, str):
                        out.append((st.file, r.name, name))
        return out

    def anytime(self, stage: str) -> set[str]:
        """Rules of `stage` that may act outside working hours (`anytime: true`)."""
        return {r.name for r in self._get(stage).rules if r.anytime}

    def fields(self, stage: str) -> dict[str, set[str]]:
        """{rule name: the fields its conditions test} (the scheduler's ledger keys follow them)."""
        st = self._get(stage)

        def walk(node: tuple, out: set[str]) -> set[str]:
            if node[0] == "leaf":
                key = st.leaves[node[1]].key
                if key and isinstance(key[0], str) and key[0] in FIELDS:
                    out.add(key[0])
            elif node[0] in ("all", "any"):
                for c in node[1]:
                    walk(c, out)
            else:
                walk(node[1], out)
            return out

        return {r.name: walk(r.cond, set()) for r in st.rules}

    def constants(self, stage: str) -> dict[str, set[float]]:
        """Every number a rule of `stage` compares a number field with ({field: {values}}): the
        scheduler wakes exactly when a timer fact may cross one of them."""
        out: dict[str, set[float]] = {}
        for leaf in self._get(stage).leaves:
            k = leaf.key
            if len(k) == 3 and k[1] in ("<", "<=", ">", ">=") and FIELDS.get(k[0]) == "number" and _is_number(k[2]):
                out.setdefault(k[0], set()).add(float(k[2]))
        return out

    def evaluate_pure(self, stage: str, facts: dict) -> StageResult:
        """The same stage evaluated in plain Python, no engine (reference for the agreement test)."""
        st = self._get(stage)
        view = _View(facts)
        fired: list[int] = []
        for r in st.rules:
            try:
                hit = _eval_tree(r.cond, view, st.leaves)
            except regexes.BudgetExceeded as e:
                raise RuleEvalError(r.name, stage, f"{e} ({Path(st.file).name or stage})") from e
            if hit:
                fired.append(r.index)
                if r.stop:
                    break
        return st.result(fired)

    def _engine_facts_left(self, stage: str) -> list:
        """Facts still stored in the engine session for `stage` (always [] between evaluations)."""
        st = self._get(stage)
        if st.engine_name is None:
            return []
        return _ENGINE.call(_ENGINE.facts_left, st.engine_name)

    def _chunks(self, stage: str) -> int:
        return len(self._get(stage).chunks)
