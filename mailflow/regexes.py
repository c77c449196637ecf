r"""Admin-written regexes that cannot stop the daemon: a shape check at compile time and a real time
budget at match time.

Python's ``re`` backtracks in C while holding the GIL: ``(a+)+$`` against ``'a' * 40 + 'b'`` runs for
hours and no other thread (not even the signal handler) gets to run, so no timeout *around* ``re``
is possible. Rule patterns are therefore matched with the ``regex`` module, which has the same
syntax and Unicode semantics as ``re`` for every pattern ``re`` accepts (``\w``, ``\d``, ``\b`` are
Unicode-aware, so fullwidth digits and CJK word boundaries behave as before), has a real
``timeout=`` checked inside its matching loop, and releases the GIL while matching a ``str``.

Two layers:

* `hazard` (used by ``check`` and ``RuleSet.load``): rejects the shapes that backtrack
  exponentially — a repeated group whose body holds a variable-length repeat that no mandatory
  delimiter closes (``(a+)+``, ``(\w+\s?)+$``, ``(.*a){20}``, ``(x+x+)+y``), and a repeated
  alternation whose alternatives can start alike (``(a|a)*``, ``(\w|\d)+``). A body like
  ``([a-z]+\.)+`` or ``(.*\n)+`` is accepted: every iteration ends at a character the inner repeat
  cannot consume, so the text splits into iterations one way only. It is a conservative
  heuristic, not a proof; the budget below is the guarantee.
* `search`: every search runs with ``timeout=`` = `budget_for(text)`; a search that runs out raises
  `BudgetExceeded`, and the caller quarantines that one message naming the rule.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import regex

try:  # the C half of `regex`: rebuilds a compiled pattern from its program (what its unpickling does)
    from regex import _regex as _regex_c
except ImportError:  # pragma: no cover
    _regex_c = None

try:  # the stdlib parser gives the parse tree the shape check walks (Python 3.11+: re._parser)
    from re import _parser as _sre
except ImportError:  # pragma: no cover
    import sre_parse as _sre  # type: ignore[no-redef]

__all__ = ["BUDGET", "BUDGET_PER_MB", "BudgetExceeded", "PatternCache", "budget_for", "cache_dir", "compile_rx",
           "describe_budget", "hazard", "pattern_cache", "prune_stale", "search"]

BUDGET = 0.1  # seconds per search for a short text ...
BUDGET_PER_MB = 0.25  # ... plus this per million characters (the slowest linear bundled pattern: ~0.13 s/MB)

_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT)
_POSSESSIVE = getattr(_sre, "POSSESSIVE_REPEAT", None)
_ATOMIC = getattr(_sre, "ATOMIC_GROUP", None)
_MAXREPEAT = _sre.MAXREPEAT


class BudgetExceeded(Exception):
    """A search ran out of its time budget (`str(e)` says which budget)."""


def budget_for(text: str) -> float:
    """Seconds a search over `text` may take: linear patterns stay far below it on any text."""
    return BUDGET + BUDGET_PER_MB * len(text) / 1e6


def describe_budget(text: str) -> str:
    b = budget_for(text)
    if len(text) < 100_000:
        return f"regex time budget ({BUDGET * 1000:.0f} ms) exceeded"
    return f"regex time budget ({b * 1000:.0f} ms for {len(text) / 1e6:.1f} M characters) exceeded"


def compile_rx(pattern: str, flags: int) -> regex.Pattern:
    """The pattern for `search`; `flags` are ``re`` flags (IGNORECASE, ...), the same values in ``regex``."""
    return regex.compile(pattern, flags | regex.VERSION0)


def search(rx: regex.Pattern, text: str) -> bool:
    """``rx.search(text) is not None`` within `budget_for(text)`; BudgetExceeded otherwise."""
    try:
        return rx.search(text, timeout=budget_for(text)) is not None
    except TimeoutError:
        raise BudgetExceeded(describe_budget(text)) from None


# ---- the shape check -------------------------------------------------------------------------------

def hazard(pattern: str, flags: int = 0, tree=None) -> str | None:
    """Why `pattern` can backtrack catastrophically, or None. The pattern must be valid ``re`` syntax;
    `tree` is its parse with `flags` when the caller already has it."""
    if tree is None:
        tree = _sre.parse(pattern, flags)
    return _Shape(flags | tree.state.flags).seq(list(tree))


def _rep_text(lo: int, hi: int) -> str:
    if hi == _MAXREPEAT:
        return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    if (lo, hi) == (0, 1):
        return "?"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


class _Shape:
    def __init__(self, flags: int):
        self.flags = flags

    # -- walking
    def seq(self, items: list) -> str | None:
        for op, av in items:
            why = self.item(op, av)
            if why:
                return why
        return None

    def item(self, op, av) -> str | None:
        if op in _REPEATS:
            lo, hi, body = av
            body = list(body)
            if hi > 1:
                why = self.repeated(body, _rep_text(lo, hi))
                if why:
                    return why
            return self.seq(body)
        if op is _POSSESSIVE:  # never backtracks into its body as a whole; its body still may
            return self.seq(list(av[2]))
        if op is _ATOMIC:
            return self.seq(list(av))
        if op is _sre.SUBPATTERN:
            return self.seq(list(av[-1]))
        if op is _sre.BRANCH:
            for alt in av[1]:
                why = self.seq(list(alt))
                if why:
                    return why
            return None
        if op in (_sre.ASSERT, _sre.ASSERT_NOT):
            return self.seq(list(av[1]))
        if op is _sre.GROUPREF_EXISTS:
            for part in av[1:]:
                if part is not None:
                    why = self.seq(list(part))
                    if why:
                        return why
        return None

    def repeated(self, body: list, outer: str) -> str | None:
        """`body` is repeated more than once: it must split any text into iterations one way only."""
        for rep, rest in _variable_repeats(body):
            lo, hi, inner = rep
            inner_chars = self.chars_of(list(inner))
            if not any(self.disjoint(inner_chars, d) for d in self.delimiters(rest)):
                return (f"a variable repeat '{_rep_text(lo, hi)}' inside a group repeated with '{outer}' "
                        f"(like (a+)+ or (\\w+\\s?)+): an unmatched text is retried in exponentially many "
                        f"splits; drop the inner or the outer quantifier, or end each repetition with a "
                        f"character the inner part cannot match")
        for alts in _branches(body):
            firsts = [self.first(list(a)) for a in alts]
            for i in range(len(firsts)):
                for j in range(i + 1, len(firsts)):
                    (ci, ni), (cj, nj) = firsts[i], firsts[j]
                    if (ni and nj) or not self.disjoint(ci, cj):
                        return (f"alternatives that can match the same text inside a group repeated with "
                                f"'{outer}' (like (a|a)* or (\\w|\\d)+): an unmatched text is retried in "
                                f"exponentially many ways; make the alternatives start differently "
                                f"(e.g. ab? instead of a|ab) or use one character class")
        return None

    # -- character sets: a tuple of class sources like ('[a-c]', '\\d', '.') whose union is the set
    def chars_of(self, items: list) -> tuple[str, ...]:
        out: list[str] = []
        for op, av in items:
            one = _class_source(op, av)
            if one is not None:
                out.append(one)
            elif op in _REPEATS or op is _POSSESSIVE:
                out.extend(self.chars_of(list(av[2])))
            elif op is _ATOMIC:
                out.extend(self.chars_of(list(av)))
            elif op is _sre.SUBPATTERN:
                out.extend(self.chars_of(list(av[-1])))
            elif op is _sre.BRANCH:
                for alt in av[1]:
                    out.extend(self.chars_of(list(alt)))
            elif op is _sre.GROUPREF_EXISTS:
                for part in av[1:]:
                    if part is not None:
                        out.extend(self.chars_of(list(part)))
            elif op is _sre.GROUPREF:
                out.append(".")  # a backreference can repeat anything (treated as any character)
                out.append("\n")
        return tuple(out)

    def delimiters(self, items: list) -> list[tuple[str, ...]]:
        """Single characters every iteration must match (outside optional parts), as classes."""
        out = []
        for op, av in items:
            one = _class_source(op, av)
            if one is not None:
                out.append((one,))
            elif op is _sre.SUBPATTERN:
                out.extend(self.delimiters(list(av[-1])))
            elif op in _REPEATS and av[0] >= 1 and not list(_variable_repeats(list(av[2]))):
                out.extend(self.delimiters(list(av[2])))
        return out

    def first(self, items: list) -> tuple[tuple[str, ...], bool]:
        """(characters a match of `items` can start with, whether it can match the empty string)."""
        out: list[str] = []
        for op, av in items:
            one = _class_source(op, av)
            if one is not None:
                out.append(one)
                return tuple(out), False
            if op in _REPEATS or op is _POSSESSIVE:
                c, n = self.first(list(av[2]))
                out.extend(c)
                if av[0] >= 1 and not n:
                    return tuple(out), False
            elif op is _sre.SUBPATTERN or op is _ATOMIC:
                c, n = self.first(list(av[-1] if op is _sre.SUBPATTERN else av))
                out.extend(c)
                if not n:
                    return tuple(out), False
            elif op is _sre.BRANCH:
                nullable = False
                for alt in av[1]:
                    c, n = self.first(list(alt))
                    out.extend(c)
                    nullable |= n
                if not nullable:
                    return tuple(out), False
            elif op is _sre.GROUPREF:
                out.extend((".", "\n"))
                return tuple(out), False
            # anchors, lookarounds: match no character, go on
        return tuple(out), True

    def disjoint(self, a: tuple[str, ...], b: tuple[str, ...]) -> bool:
        if not a or not b:
            return True
        sa = _members(a, self.flags & (re.IGNORECASE | re.DOTALL | re.ASCII))
        cb = _compiled(b, self.flags & (re.IGNORECASE | re.DOTALL | re.ASCII))
        return cb.search(sa) is None


def _variable_repeats(items: list):
    """(repeat args, the rest of the sequence around it) for each repeat of variable length that can
    backtrack (not possessive, not inside an atomic group), at any depth of plain groups."""
    for k, (op, av) in enumerate(items):
        rest = items[:k] + items[k + 1:]
        if op in _REPEATS:
            if av[0] != av[1]:
                yield av, rest
            else:
                for rep, inner_rest in _variable_repeats(list(av[2])):
                    yield rep, inner_rest + rest
        elif op is _sre.SUBPATTERN:
            for rep, inner_rest in _variable_repeats(list(av[-1])):
                yield rep, inner_rest + rest
        elif op is _sre.BRANCH:
            for alt in av[1]:
                for rep, inner_rest in _variable_repeats(list(alt)):
                    yield rep, inner_rest  # the other alternatives are not part of this iteration


def _branches(items: list):
    for op, av in items:
        if op is _sre.BRANCH:
            yield av[1]
            for alt in av[1]:
                yield from _branches(list(alt))
        elif op is _sre.SUBPATTERN:
            yield from _branches(list(av[-1]))
        elif op in _REPEATS and av[1] <= 1:
            yield from _branches(list(av[2]))


_CATS = {
    _sre.CATEGORY_DIGIT: r"\d", _sre.CATEGORY_NOT_DIGIT: r"\D", _sre.CATEGORY_SPACE: r"\s",
    _sre.CATEGORY_NOT_SPACE: r"\S", _sre.CATEGORY_WORD: r"\w", _sre.CATEGORY_NOT_WORD: r"\W",
}


def _esc(c: int) -> str:
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


def _class_source(op, av) -> str | None:
    """The source of a one-character item as a class ``[...]``/``.``, or None if it is not one."""
    if op is _sre.LITERAL:
        return _esc(av)
    if op is _sre.NOT_LITERAL:
        return f"[^{_esc(av)}]"
    if op is _sre.ANY:
        return "."
    if op is _sre.IN:
        parts = []
        neg = False
        for o, a in av:
            if o is _sre.NEGATE:
                neg = True
            elif o is _sre.LITERAL:
                parts.append(_esc(a))
            elif o is _sre.RANGE:
                parts.append(f"{_esc(a[0])}-{_esc(a[1])}")
            elif o is _sre.CATEGORY:
                parts.append(_CATS.get(a, r"\s\S"))
            else:  # pragma: no cover - anything else: assume it can be any character
                return "."
        return "[" + ("^" if neg else "") + "".join(parts) + "]"
    return None


@functools.lru_cache(maxsize=1)
def _alphabet() -> str:
    """Every character the sets are tested against: the BMP without surrogates, a sample of the rest."""
    return "".join(chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF) + \
        "".join(chr(c) for c in range(0x10000, 0x110000, 0x101))


@functools.lru_cache(maxsize=512)
def _compiled(classes: tuple[str, ...], flags: int) -> re.Pattern:
    return re.compile("|".join(classes), flags)


@functools.lru_cache(maxsize=512)
def _members(classes: tuple[str, ...], flags: int) -> str:
    return "".join(_compiled(classes, flags).findall(_alphabet()))


# ---- the compile cache -----------------------------------------------------------------------------
# Checking and compiling the bundled rules' 165 patterns is most of a start-up's rule loading (~0.6 s:
# the `regex` compiler 0.3 s, the `re` syntax check 0.17 s, parse, shape check and prefilter the rest),
# and the same patterns are compiled at every start. `PatternCache` keeps, per pattern list and flags
# that passed every check, what the checks derived (the prefilter's fragment sets) and the `regex`
# module's compiled program (the data its own pickling keeps: `Pattern._pickled_data`), so a later
# start rebuilds the pattern in C (~50 us) and skips the checks.
#
# It is a cache, never a source of truth: the file name carries a digest of the Python version, the
# `regex` version and the source of rules.py and regexes.py (any change to the checks, the prefilter
# or the engine starts a new file); the file holds a SHA-256 of its payload (a torn or corrupted file
# is ignored); it is unpickled with no globals allowed (plain containers, strings, bytes and numbers
# only); every failure (no cache dir, read-only home, a bad file, a rebuilt pattern that differs) falls
# back silently to compiling. The directory is created 0700: whoever can write it can change how
# patterns match, as whoever can write the rules directory can.

_CACHE_MAGIC = b"mailflow-pattern-cache 1\n"
_CACHE_MAX = 2000  # entries kept in the file (this process's first, then the most recent others)


def cache_dir() -> Path | None:
    """Where compiled rule patterns (and templates, render.py) are cached: ``$MAILFLOW_CACHE_DIR``
    (``off`` or empty: nowhere), else ``$XDG_CACHE_HOME/mailflow``, else ``~/.cache/mailflow`` -- but
    never a default inside ``$MAILFLOW_DATA_DIR`` (the systemd unit's user has the data dir as its
    home: a cache there would go into every backup and make an emptied data dir look used)."""
    env = os.environ.get("MAILFLOW_CACHE_DIR")
    if env is not None:
        return None if env.strip() in ("", "off", "0") else Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    try:
        d = Path(xdg) / "mailflow" if xdg else Path.home() / ".cache" / "mailflow"
    except (RuntimeError, KeyError):  # no home directory
        return None
    data = os.environ.get("MAILFLOW_DATA_DIR")
    if data:
        with contextlib.suppress(OSError, ValueError):
            if d.resolve().is_relative_to(Path(data).resolve()):
                return None
    return d


@functools.lru_cache(maxsize=1)
def _stamp() -> str:
    h = hashlib.sha256()
    h.update(sys.version.encode())
    h.update(str(getattr(regex, "__version__", "?")).encode())
    here = Path(__file__).resolve().parent
    for name in ("regexes.py", "rules.py"):
        try:
            h.update((here / name).read_bytes())
        except OSError:
            h.update(os.urandom(16))  # cannot tell which code wrote the file: never reuse one
    return h.hexdigest()[:20]


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed in the pattern cache")


class PatternCache:
    """Compiled rule patterns and their derived prefilters, persisted between runs (see above)."""

    def __init__(self, directory: Path | None):
        self.path = directory / f"patterns-{_stamp()}.pickle" if directory is not None else None
        self._entries: dict[tuple, tuple] | None = None
        self._used: set[tuple] = set()
        self._dirty = False

    def _load(self) -> dict[tuple, tuple]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None:
                try:
                    blob = self.path.read_bytes()
                    head, digest, payload = blob[:len(_CACHE_MAGIC)], blob[len(_CACHE_MAGIC):len(_CACHE_MAGIC) + 32], \
                        blob[len(_CACHE_MAGIC) + 32:]
                    if head == _CACHE_MAGIC and hashlib.sha256(payload).digest() == digest:
                        data = _NoGlobals(io.BytesIO(payload)).load()
                        if isinstance(data, dict):
                            self._entries = data
                except Exception:  # noqa: BLE001 - a cache: any failure means compiling
                    self._entries = {}
        return self._entries

    def get(self, patterns: list[str], flags: int, joined: str) -> tuple[regex.Pattern, Any] | None:
        """(compiled `joined`, the stored prefilter sets) for patterns that passed every check before."""
        key = (tuple(patterns), int(flags))
        entry = self._load().get(key)
        if entry is None:
            return None
        try:
            code, sets = entry
            rx = _regex_c.compile(*code)
            if rx.pattern != joined or not isinstance(rx, regex.Pattern):
                return None
        except Exception:  # noqa: BLE001
            return None
        self._used.add(key)
        return rx, sets

    def put(self, patterns: list[str], flags: int, rx: regex.Pattern, sets: Any) -> None:
        """Remember a pattern list that passed every check (`sets`: its prefilter's fragment sets)."""
        try:
            code = rx._pickled_data
        except AttributeError:  # pragma: no cover - a regex without its pickling data
            return
        key = (tuple(patterns), int(flags))
        self._load()[key] = (code, sets)
        self._used.add(key)
        self._dirty = True

    def save(self) -> None:
        """Write the file if this process compiled something new (atomically; failures are ignored)."""
        if not self._dirty or self.path is None or self._entries is None:
            return
        self._dirty = False
        keep = {k: v for k, v in self._entries.items() if k in self._used}
        for k, v in reversed(list(self._entries.items())):
            if len(keep) >= _CACHE_MAX:
                break
            keep.setdefault(k, v)
        tmp = None
        try:
            payload = pickle.dumps(keep, protocol=pickle.HIGHEST_PROTOCOL)
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".patterns-", dir=self.path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(_CACHE_MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, self.path)
            tmp = None
            prune_stale(self.path.parent, "patterns-*.pickle", self.path)
        except Exception:  # noqa: BLE001 - a cache: not writing it only costs the next start-up
            pass
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


STALE_DAYS = 14  # a cache file of another code version unused this long is deleted


def prune_stale(directory: Path, glob: str, current: Path) -> None:
    """Delete what other mailflow versions left under `directory` (matching `glob`, not `current`)
    and did not touch for STALE_DAYS: an upgrade starts a new file, the old one would stay forever.
    Another version still in use (a second install sharing the directory) keeps its own."""
    cutoff = time.time() - STALE_DAYS * 86400
    with contextlib.suppress(OSError):
        for p in directory.glob(glob):
            if p != current and p.stat().st_mtime < cutoff:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()


_CACHES: dict[Path | None, PatternCache] = {}


def pattern_cache() -> PatternCache:
    """The process's cache for the current `cache_dir()` (one file read per process and directory)."""
    d = cache_dir()
    c = _CACHES.get(d)
    if c is None:
        c = _CACHES[d] = PatternCache(d)
    return c
