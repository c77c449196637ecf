"""Traditional Chinese: zh-Hant templates and labels, the fallback to zh, and telling traditional
from simplified mail (detect_language)."""

from __future__ import annotations

import shutil
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import nodes

from mailflow.hanzi import SIMPLIFIED_ONLY, TRADITIONAL_ONLY, script_counts
from mailflow.parse import detect_language
from mailflow.render import (
    CATEGORY_LABELS,
    LOCALES,
    PRIORITY_LABELS,
    REQUIRED,
    STATUS_LABELS,
    Templates,
    sample_context,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
ZH, HANT = TEMPLATES / "zh", TEMPLATES / "zh-Hant"
ZH_FILES = sorted(p.name for p in ZH.glob("*.j2"))


def usage(path: Path) -> dict[str, set[str]]:
    """What a template uses besides its wording: variable paths, filters, tests, includes, blocks."""
    env = jinja2.Environment()
    ast = env.parse(path.read_text(encoding="utf-8"))

    def dotted(n: nodes.Node) -> str | None:
        if isinstance(n, nodes.Name):
            return n.name
        if isinstance(n, nodes.Getattr):
            base = dotted(n.node)
            return f"{base}.{n.attr}" if base else None
        return None

    out: dict[str, set[str]] = {"vars": set(), "filters": set(), "tests": set(), "includes": set(),
                                "statements": set()}
    for n in ast.find_all((nodes.Name, nodes.Getattr)):
        d = dotted(n)
        if d:
            out["vars"].add(d)
    out["filters"] = {f.name for f in ast.find_all(nodes.Filter)}
    out["tests"] = {t.name for t in ast.find_all(nodes.Test)}
    out["includes"] = {i.template.value.split("/", 1)[1] for i in ast.find_all(nodes.Include)
                       if isinstance(i.template, nodes.Const)}
    out["statements"] = {type(s).__name__ + str(i) for i, s in
                         enumerate(ast.find_all((nodes.If, nodes.For, nodes.Include)))}
    return out


def test_every_zh_template_has_a_zh_hant_twin():
    assert ZH_FILES and sorted(p.name for p in HANT.glob("*.j2")) == ZH_FILES


@pytest.mark.parametrize("name", ZH_FILES)
def test_the_twin_uses_the_same_variables(name):
    assert usage(HANT / name) == usage(ZH / name)


@pytest.mark.parametrize("name", ZH_FILES)
def test_the_twin_is_traditional_and_includes_its_own_partials(name):
    text = (HANT / name).read_text(encoding="utf-8")
    hans, hant = script_counts(text)
    assert hans == 0, [c for c in text if c in SIMPLIFIED_ONLY]
    zh = (ZH / name).read_text(encoding="utf-8")
    # converted wherever the simplified text had simplified-only characters (复 -> 覆 is a character
    # both scripts share, so "converted" does not always mean "traditional-only characters appear")
    assert hant > 0 or not script_counts(zh)[0] or text != zh
    assert '"zh/' not in text
    assert "“" not in text and "”" not in text  # Taiwan quotes with 「」


@pytest.mark.parametrize("name", REQUIRED)
def test_rendered_mail_is_detected_as_its_own_script(name):
    t = Templates.load(TEMPLATES)
    for loc in ("zh", "zh-Hant"):
        ctx = sample_context("zh")  # the same Chinese customer text in both
        ctx["ticket"]["priority_label"] = PRIORITY_LABELS[loc]["high"]
        ctx["ticket"]["category_label"] = CATEGORY_LABELS[loc]["fault"]
        ctx["message"]["text"] = ctx["reply"]["text"] = ""
        ctx["ticket"]["subject"] = ctx["message"]["subject"] = "登录"
        ctx["ticket"]["customer_name"] = ""
        r = t.render(loc, name, ctx)
        assert detect_language(r.subject + "\n" + r.text) == loc, (loc, r.text)


def test_labels_for_every_locale_and_traditional_ones_are_traditional():
    assert "zh-Hant" in LOCALES and LOCALES[0] == "zh"
    for labels in (PRIORITY_LABELS, CATEGORY_LABELS, STATUS_LABELS):
        assert set(labels) == set(LOCALES)
        for loc in LOCALES:
            assert set(labels[loc]) == set(labels["en"])
        assert all(script_counts(v)[0] == 0 for v in labels["zh-Hant"].values())
    assert STATUS_LABELS["zh-Hant"]["resolved"] == "已解決" and CATEGORY_LABELS["zh-Hant"]["inquiry"] == "諮詢"


def test_zh_hant_falls_back_to_zh_then_en(tmp_path):
    d = tmp_path / "templates"
    shutil.copytree(TEMPLATES, d)
    ctx = sample_context("zh")
    assert "我們已收到" in Templates.load(d).render("zh-Hant", "ack", ctx).subject
    shutil.rmtree(d / "zh-Hant")  # a templates dir from an older `mailflow init`
    assert "我们已收到" in Templates.load(d).render("zh-Hant", "ack", ctx).subject
    shutil.rmtree(d / "zh")
    assert "received" in Templates.load(d).render("zh-Hant", "ack", ctx).subject.lower()
    assert Templates.load(TEMPLATES).render("zh", "ack", ctx).subject.startswith("[CW202611220001] 我们")


# ---- detect_language --------------------------------------------------------------------------


@pytest.mark.parametrize("text, charset, lang", [
    ("请问上个月的订单可以开发票吗？", None, "zh"),
    ("請問上個月的訂單可以開立發票嗎？", None, "zh-Hant"),
    ("請問上個月的訂單可以開立發票嗎？", "utf-8", "zh-Hant"),
    ("恒生銀行的帳戶無法登入", None, "zh-Hant"),  # Hong Kong: one simplified-looking 恒, three traditional
    ("著名品牌，产品质量太差", None, "zh"),  # 著 is simplified too
    ("你好，可以", None, "zh"),  # shared characters only: nothing to go by
    ("你好，可以", "big5", "zh-Hant"),
    ("你好，可以", "Big5-HKSCS", "zh-Hant"),
    ("你好，可以", "cp950", "zh-Hant"),
    ("你好，可以", "x-x-big5", "zh-Hant"),
    ("你好，可以", "gb2312", "zh"),
    ("这个问题请尽快处理", "big5", "zh"),  # a "big5" label on simplified text is a wrong label
    ("Please check my order, thanks a lot", "big5", "en"),
    ("請盡快處理 order DD20261109 refund", None, "zh-Hant"),
    ("", "big5", "en"),
])
def test_detect_language(text, charset, lang):
    assert detect_language(text, charset) == lang


def test_detect_language_keeps_its_old_answers_without_charset():
    assert detect_language("请尽快处理 order DD20261109 refund") == "zh"
    assert detect_language("Please check my order, the 退款 is late and I am waiting for weeks now") == "en"
    assert detect_language("12345 !!!") == "en"


def test_character_sets():
    assert not set(SIMPLIFIED_ONLY) & set(TRADITIONAL_ONLY)
    for ch in "发这国们说时对会还请问题处订单邮账号录":
        assert ch in SIMPLIFIED_ONLY, ch
    for ch in "發這國們說時對會還請問題處訂單郵帳號錄":
        assert ch in TRADITIONAL_ONLY, ch
    for ch in "的人你好可以理件登著後乾":  # shared, or used in simplified text as well
        assert ch not in SIMPLIFIED_ONLY and ch not in TRADITIONAL_ONLY, ch
    for ch in TRADITIONAL_ONLY:  # GB2312 is what simplified text is written in
        with pytest.raises(UnicodeEncodeError):
            ch.encode("gb2312")


_SHARED = "的一是了人我在有他中大上你可以好不"


@settings(max_examples=200, deadline=None)
@given(shared=st.text(alphabet=_SHARED, max_size=40),
       trad=st.text(alphabet=TRADITIONAL_ONLY[:500], min_size=1, max_size=20),
       simp=st.text(alphabet=SIMPLIFIED_ONLY[:500], max_size=20))
def test_the_majority_script_wins(shared, trad, simp):
    text = shared + trad + simp
    t, s = len(set(trad)), len(set(simp))  # distinct characters count
    expected = "zh-Hant" if t > s else "zh" if s > t else None
    got = detect_language(text)
    if expected:
        assert got == expected
    assert detect_language(shared + trad) == "zh-Hant"
