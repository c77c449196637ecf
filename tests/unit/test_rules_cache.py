"""The persistent pattern cache (regexes.PatternCache): same rules, same decisions, never trusted blindly."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest

from mailflow import regexes, resources
from mailflow.rules import RuleError, RuleSet, check_rules

FACTS = [{"subject": "投诉", "text": "系统瘫痪，所有用户都无法登录，紧急！"}, {"text": "Could you tell me how to get an invoice?"},
         {"text": "The app crashes when I open the orders page, this is unacceptable"}, {"text": "非常满意，点赞！"}]
STAGES = ("classify", "priority", "routing")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("MAILFLOW_CACHE_DIR", str(d))
    regexes._CACHES.clear()
    yield d
    regexes._CACHES.clear()


def _fresh_process() -> None:
    """What a new process sees: nothing in memory, only the file."""
    regexes._CACHES.clear()


def _decisions(rs: RuleSet) -> list:
    return [rs.evaluate_pure(stage, f) for f in FACTS for stage in STAGES]


def _file(d) -> os.PathLike:
    files = list(d.glob("patterns-*.pickle"))
    assert len(files) == 1
    return files[0]


def test_a_warm_start_builds_the_same_rules_without_compiling(cache_dir, monkeypatch):
    cold = RuleSet.load(resources.bundled_rules())
    path = _file(cache_dir)
    assert (path.stat().st_mode & 0o777) == 0o600 and (cache_dir.stat().st_mode & 0o777) == 0o700
    _fresh_process()
    monkeypatch.setattr(regexes, "compile_rx", lambda *a: pytest.fail("compiled although cached"))
    monkeypatch.setattr(regexes, "hazard", lambda *a: pytest.fail("checked although cached"))
    warm = RuleSet.load(resources.bundled_rules())
    assert _decisions(warm) == _decisions(cold)
    for stage in STAGES:
        a, b = cold._stages[stage], warm._stages[stage]
        assert [leaf.key for leaf in a.leaves] == [leaf.key for leaf in b.leaves]
        assert [leaf.pf[1] if leaf.pf else None for leaf in a.leaves] == [leaf.pf[1] if leaf.pf else None for leaf in b.leaves]


def test_bad_patterns_are_reported_every_time(cache_dir, tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "classify.yaml").write_text("- name: bad\n  when: {text: {matches: '(a+)+$'}}\n  then: [{tag: x}]\n"
                                     "- name: broken\n  when: {text: {matches: '(unclosed'}}\n  then: [{tag: y}]\n")
    for _ in range(2):
        _fresh_process()
        problems = check_rules(d)
        assert any("unsafe regex" in p for p in problems) and any("bad regex" in p for p in problems)
        with pytest.raises(RuleError):
            RuleSet.load(d)


def test_a_corrupted_file_is_ignored_and_rewritten(cache_dir):
    want = _decisions(RuleSet.load(resources.bundled_rules()))
    path = _file(cache_dir)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    _fresh_process()
    assert _decisions(RuleSet.load(resources.bundled_rules())) == want
    assert path.read_bytes() != bytes(blob)  # compiled again and written back whole
    path.write_bytes(path.read_bytes()[:100])  # torn
    _fresh_process()
    assert _decisions(RuleSet.load(resources.bundled_rules())) == want


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_file_with_code_in_it_is_never_run(cache_dir, tmp_path, monkeypatch):
    want = _decisions(RuleSet.load(resources.bundled_rules()))
    path = _file(cache_dir)
    payload = pickle.dumps({(("x",), 2): _Boom()})
    path.write_bytes(regexes._CACHE_MAGIC + hashlib.sha256(payload).digest() + payload)
    monkeypatch.chdir(tmp_path)
    _fresh_process()
    assert _decisions(RuleSet.load(resources.bundled_rules())) == want
    assert not (tmp_path / "pwned").exists()


def test_an_entry_for_other_text_is_not_used(cache_dir):
    """A rebuilt pattern must be the pattern asked for (a stale or swapped entry compiles afresh)."""
    RuleSet.load(resources.bundled_rules())
    cache = regexes.pattern_cache()
    entries = cache._load()
    (k1, v1), (k2, v2) = list(entries.items())[:2]
    entries[k1], entries[k2] = v2, v1
    assert cache.get(list(k1[0]), k1[1], k1[0][0] if len(k1[0]) == 1 else "|".join(f"(?:{x})" for x in k1[0])) is None


def test_no_cache_dir_or_an_unwritable_one_only_costs_time(tmp_path, monkeypatch):
    want = None
    for value in ("off", str(tmp_path / "file-not-dir" / "x")):
        (tmp_path / "file-not-dir").write_text("")
        monkeypatch.setenv("MAILFLOW_CACHE_DIR", value)
        _fresh_process()
        got = _decisions(RuleSet.load(resources.bundled_rules()))
        assert want is None or got == want
        want = got
    _fresh_process()
    assert regexes.cache_dir() is not None


def test_the_file_name_follows_the_code(cache_dir, monkeypatch):
    RuleSet.load(resources.bundled_rules())
    first = _file(cache_dir).name
    assert regexes._stamp() in first
    regexes._stamp.cache_clear()
    monkeypatch.setattr(regexes.sys, "version", regexes.sys.version + " (another build)")
    try:
        assert regexes._stamp() not in first
    finally:
        regexes._stamp.cache_clear()


def test_from_data_never_touches_the_cache(cache_dir):
    RuleSet.from_data({"classify": [{"name": "r", "when": {"text": {"matches": "abc+"}}, "then": [{"tag": "x"}]}]})
    assert not cache_dir.exists()


def test_the_default_cache_is_never_inside_the_data_dir(tmp_path, monkeypatch):
    """Under the systemd unit the user's home is the data dir: no cache there unless asked for."""
    monkeypatch.delenv("MAILFLOW_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "data"))
    monkeypatch.setenv("MAILFLOW_DATA_DIR", str(tmp_path / "data"))
    assert regexes.cache_dir() is None
    monkeypatch.setenv("MAILFLOW_DATA_DIR", str(tmp_path / "elsewhere"))
    assert regexes.cache_dir() == tmp_path / "data" / ".cache" / "mailflow"
    monkeypatch.setenv("MAILFLOW_CACHE_DIR", str(tmp_path / "data" / "cache"))  # asked for: used
    assert regexes.cache_dir() == tmp_path / "data" / "cache"


def test_files_other_versions_left_are_deleted_once_stale(cache_dir):
    cache_dir.mkdir()
    old = cache_dir / "patterns-0000000000000000dead.pickle"
    recent = cache_dir / "patterns-0000000000000000beef.pickle"
    old.write_bytes(b"x")
    recent.write_bytes(b"y")
    past = regexes.time.time() - (regexes.STALE_DAYS + 1) * 86400
    os.utime(old, (past, past))
    RuleSet.load(resources.bundled_rules())
    assert not old.exists() and recent.exists() and _file_named(cache_dir, regexes._stamp()).exists()


def _file_named(d, stamp):
    return d / f"patterns-{stamp}.pickle"
