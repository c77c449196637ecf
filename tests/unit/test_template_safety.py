"""Templates cannot stop the daemon: what `check` refuses never loads, and a render that loops, grows or
runs too long fails with the template and the budget named (issue 15, cases 2 and 3)."""

from __future__ import annotations

import os
import re
import shutil
import tracemalloc

import pytest

from mailflow import resources, sandbox
from mailflow.render import (
    CONTEXT_TEXT_MAX,
    TemplateError,
    Templates,
    cap_context,
    check_templates,
    sample_context,
)


@pytest.fixture
def tpl(tmp_path):
    d = tmp_path / "templates"
    shutil.copytree(resources.bundled_templates(), d)
    return d


def _append(path, text):
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


BAD = {
    "undefined": ("{{ tickt.id }}\n", r"en/ack\.txt\.j2:\d+: undefined: 'tickt' is undefined"),
    "nested range": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
                     r"en/ack\.txt\.j2:\d+: render budget exceeded: (more than 100,000 loop iterations|took longer)"),
    "loop over a string": ("{% for a in 'x' * 1000 %}{% for b in 'y' * 1000 %}{% endfor %}{% endfor %}\n",
                           r"en/ack\.txt\.j2:\d+: render budget exceeded: (more than 100,000|took longer)"),
    "huge string": ('{{ "x" * 30000000 }}\n', r"en/ack\.txt\.j2:\d+: render budget exceeded: '\*' would be over 256 KB"),
    "huge padding": ('{{ "x"|center(999999999) }}\n', r"render budget exceeded: filter center: argument 999,999,999 too large"),
    "huge method": ('{{ "x".ljust(99999999) }}\n', r"render budget exceeded: call of ljust: argument 99,999,999 too large"),
    "huge format": ('{{ "%099999999d" % 1 }}\n', r"render budget exceeded: '%': format width"),
    "replace growth": ("{{ ('x' * 1000)|replace('x', 'y' * 1000) }}\n", r"render budget exceeded: filter replace would be over"),
    "power": ("{{ 9 ** 99999999 }}\n", r"render budget exceeded: '\*\*': exponent"),
    "output": ("{% for i in range(90000) %}xxxxxxxxxx{% endfor %}\n", r"render budget exceeded: output over 256 KB"),
    "recursion": ("{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}\n", r"render budget exceeded: (recursion too deep|more than)"),
    "exponential macro": ("{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(40) }}\n",
                          # whichever budget runs out first on a loaded machine: the steps or the second
                          r"render budget exceeded: (more than 100,000 loop iterations and calls|took longer than 1 s)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_and_load_refuse_the_same_template(tpl, case):
    text, reason = BAD[case]
    _append(tpl / "en" / "ack.txt.j2", text)
    problems = check_templates(tpl)
    assert len(problems) == 1 and re.search(reason, problems[0]), problems
    with pytest.raises(TemplateError) as ei:
        Templates.load(tpl)
    # start and reload refuse exactly what check refuses (for the same reason, though on a loaded
    # machine the exponential macro may hit the time budget in one and the step budget in the other)
    assert len(ei.value.problems) == 1 and re.search(reason, ei.value.problems[0]), ei.value.problems
    assert ei.value.problems[0].split(": render budget")[0] == problems[0].split(": render budget")[0]


def test_a_huge_template_value_is_refused_before_it_is_built(tpl):
    _append(tpl / "en" / "ack.txt.j2", '{{ "x" * 30000000 }}\n')
    tracemalloc.start()
    try:
        check_templates(tpl)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, peak  # the 30 MB string was never made


def test_runtime_data_past_the_budget_fails_that_render_only(tpl):
    # passes check (the sample has two tags) but loops over the tags squared at run time
    _append(tpl / "en" / "ack.txt.j2", "{% for a in ticket.tags %}{% for b in ticket.tags %}{% endfor %}{% endfor %}\n")
    t = Templates.load(tpl)
    ctx = sample_context("en")
    ctx["ticket"]["tags"] = [f"t{i}" for i in range(1000)]
    with pytest.raises(TemplateError) as ei:
        t.render("en", "ack", ctx)
    (p,) = ei.value.problems
    assert p.startswith(f"{tpl / 'en' / 'ack.txt.j2'}:") and "render budget exceeded: more than 100,000" in p, p
    # the next render starts with a fresh budget
    assert t.render("en", "ack", sample_context("en")).subject.startswith("[CW202611220001]")


def test_the_budget_is_per_mail_not_per_part(tpl):
    loop = "{% for i in range(60000) %}{% endfor %}\n"
    _append(tpl / "en" / "ack.txt.j2", loop)
    assert check_templates(tpl) == []
    _append(tpl / "en" / "ack.html.j2", loop)  # 2 x 60,000 steps in one mail
    assert any("more than 100,000" in p for p in check_templates(tpl))


def test_long_customer_text_is_cut_in_the_context_not_refused(tpl):
    t = Templates.load(tpl)
    ctx = sample_context("en")
    ctx["message"]["text"] = "pasted log line\n" * 40_000  # 640 KB: over the output budget if quoted whole
    r = t.render("en", "staff_notify", ctx)
    assert "pasted log line" in r.text and "[…]" in r.text
    assert len(r.text) < sandbox.MAX_OUTPUT
    assert cap_context({"a": ["x" * (CONTEXT_TEXT_MAX + 5)]})["a"][0].endswith(" […]")
    assert cap_context({"a": ("ok", 1)}) == {"a": ("ok", 1)}


def test_the_bundled_templates_stay_within_every_budget():
    assert check_templates(resources.bundled_templates()) == []
    t = Templates.load(resources.bundled_templates())
    for loc in ("zh", "en"):
        for name in t.names():
            t.render(loc, name, sample_context(loc))


def test_budget_object_counts_steps_and_time():
    b = sandbox.Budget(seconds=60, steps=3)
    b.step()
    b.step(2)
    with pytest.raises(sandbox.BudgetError, match="loop iterations"):
        b.step()
    late = sandbox.Budget(seconds=-1)
    with pytest.raises(sandbox.BudgetError, match="took longer than"):
        late.tick()


@pytest.fixture
def template_cache(tmp_path, monkeypatch):
    from mailflow import render

    monkeypatch.setenv("MAILFLOW_CACHE_DIR", str(tmp_path / "cache"))
    render._bytecode_cache.cache_clear()
    yield tmp_path / "cache"
    render._bytecode_cache.cache_clear()


def test_templates_from_the_bytecode_cache_render_the_same_under_the_same_budget(tpl, template_cache, monkeypatch):
    from mailflow import render

    _append(tpl / "en" / "ack.txt.j2", "{% for a in ticket.tags %}{% for b in ticket.tags %}{% endfor %}{% endfor %}\n")
    cold = Templates.load(tpl)
    (d,) = template_cache.glob("templates-*")
    assert (d.stat().st_mode & 0o777) == 0o700 and len(list(d.glob("*.jinja"))) > 50
    render._bytecode_cache.cache_clear()  # as a new process
    monkeypatch.setattr(sandbox.BudgetedEnvironment, "_parse", lambda *a: pytest.fail("compiled although cached"))
    warm = Templates.load(tpl)
    for loc in ("zh", "en", "zh-Hant"):
        for name in ("ack", "resolved", "staff_notify"):
            assert warm.render(loc, name, sample_context(loc)) == cold.render(loc, name, sample_context(loc))
    ctx = sample_context("en")
    ctx["ticket"]["tags"] = [f"t{i}" for i in range(1000)]
    with pytest.raises(TemplateError) as ei:  # the loop budget is compiled in, and came back from the cache
        warm.render("en", "ack", ctx)
    assert "render budget exceeded: more than 100,000" in ei.value.problems[0]
    assert ei.value.problems[0].startswith(f"{tpl / 'en' / 'ack.txt.j2'}:")


def test_an_edited_template_is_compiled_again(tpl, template_cache):
    Templates.load(tpl)
    _append(tpl / "en" / "ack.txt.j2", "{{ tickt.id }}\n")
    with pytest.raises(TemplateError) as ei:
        Templates.load(tpl)
    assert "undefined: 'tickt' is undefined" in ei.value.problems[0]


def test_an_unusable_cache_dir_only_costs_time(tpl, tmp_path, monkeypatch):
    from mailflow import render

    (tmp_path / "a-file").write_text("")
    for value in ("off", str(tmp_path / "a-file" / "cache")):
        monkeypatch.setenv("MAILFLOW_CACHE_DIR", value)
        render._bytecode_cache.cache_clear()
        assert render._bytecode_cache() is None
        assert Templates.load(tpl).render("en", "ack", sample_context("en")).subject.startswith("[CW")
    render._bytecode_cache.cache_clear()


def test_the_template_cache_is_pruned(tmp_path):
    from mailflow import render

    for i in range(12):
        (tmp_path / f"{i}.jinja").write_bytes(b"x")
        os.utime(tmp_path / f"{i}.jinja", (i, i))
    render._prune(tmp_path, 5)
    assert sorted(int(p.stem) for p in tmp_path.glob("*.jinja")) == [7, 8, 9, 10, 11]
