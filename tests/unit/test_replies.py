"""Reply extraction on the whole corpus (constructed cases + the public email-reply-parser mails).

Two kinds of assertion: agreement with the hand-judged new text (>= 95% exact, trailing whitespace
normalised), and for EVERY case, also the ones that disagree, that nothing quoted leaks: no quoted
snippet, no '>' line, no separator line, no mailflow notification content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.parse import extract_new_text, html_to_text, parse_message
from mailflow.replies import ROWS, Extraction, explain_message, extract, looks_like_reply

DATA = Path(__file__).resolve().parents[1] / "data" / "replies"

# What a quoted mailflow notification (templates/*/staff_notify, ack, resolved) brings along.
NOTIFICATION_MARKERS = ("内部通知", "工单编号：", "客户来信（", "处理方式：直接回复本邮件", "首次响应截止", "优 先 级：", "处 理 人：",
                        "The customer wrote (", "How to answer: reply to this email", "First response due",
                        "Resolution due:", "  Assignee:   ", "诚邀您对本次服务进行评价")
# Separator lines, written independently of replies.py so the test does not grade itself.
SEPARATOR = re.compile(
    r"^\s*(?:-{2,}\s*(?:original message|original|原始邮件|原始郵件|邮件原件|回复的原邮件|回覆的原郵件|replied message)\s*-{2,}"
    r"|_{20,}|(?:from|发件人|寄件者)\s*[:：].*@.*|.*(?:\bwrote|写道|寫道)\s*[:：]|sent from my \w+|发自我的\s*\w+|"
    r"来自网易邮箱大师)\s*$", re.I)


@dataclass
class Case:
    name: str
    raw: str  # what the extraction saw (for the leak checks)
    expected: str
    got: str
    rule: str | None
    quoted: tuple[str, ...]
    layout: str


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in (text or "").strip().split("\n")).strip()


def _constructed() -> list[Case]:
    out = []
    for path in sorted((DATA / "cases").glob("*.yaml")):
        c = yaml.safe_load(path.read_text(encoding="utf-8"))
        if "eml" in c:
            m = parse_message((DATA / "cases" / c["eml"]).read_bytes())
            raw, got, rule = m.text, m.new_text, m.quote_rule
        else:
            html = c.get("html")
            raw = c.get("text") or (html_to_text(html) if html else "")
            ex = extract(raw, html, c["is_reply"])
            got, rule = ex.new_text, ex.rule
        out.append(Case(path.name, raw, c["expected"], got, rule, tuple(c.get("quoted") or ()), c.get("layout", "")))
    return out


def _public() -> list[Case]:
    cases = yaml.safe_load((DATA / "public" / "expected.yaml").read_text(encoding="utf-8"))["cases"]
    out = []
    for name, c in cases.items():
        raw = (DATA / "public" / name).read_text(encoding="utf-8")
        ex = extract(raw, None, True)
        out.append(Case(name, raw, c["expected"], ex.new_text, ex.rule, (), "public"))
    return out


CASES = _constructed() + _public()


def _table(cases: list[Case]) -> str:
    rows = [f"{'case':58} {'ok':3} rule"]
    for c in cases:
        ok = _norm(c.got) == _norm(c.expected)
        rows.append(f"{c.name[:58]:58} {'yes' if ok else 'NO':3} {c.rule}")
        if not ok:
            rows.append(f"    got:      {_norm(c.got)[:160]!r}\n    expected: {_norm(c.expected)[:160]!r}")
    return "\n".join(rows)


def test_corpus_is_big_enough() -> None:
    constructed = [c for c in CASES if c.layout != "public"]
    assert len(constructed) >= 60
    assert len(CASES) - len(constructed) >= 40
    layouts = {c.layout for c in constructed}
    assert {"top-posted", "bottom-posted", "inline", "quote-only", "first-mail", "staff-reply"} <= layouts


def test_agreement_at_least_95_percent() -> None:
    agree = sum(_norm(c.got) == _norm(c.expected) for c in CASES)
    assert agree / len(CASES) >= 0.95, f"{agree}/{len(CASES)} agree\n" + _table(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_nothing_quoted_leaks(case: Case) -> None:
    got = _norm(case.got)
    expected = _norm(case.expected)
    got_lines = set(got.split("\n"))
    for snippet in case.quoted:
        assert snippet not in got, f"{case.name}: quoted {snippet!r} reached the new text:\n{got}"
    for marker in NOTIFICATION_MARKERS:
        if marker not in expected:
            assert marker not in got, f"{case.name}: notification content {marker!r} leaked:\n{got}"
    expected_lines = set(expected.split("\n"))
    for line in case.raw.split("\n"):
        body = line.lstrip(" \t>").strip()
        if line.lstrip().startswith(">") and len(body) >= 6 and not {line.rstrip(), body} & expected_lines:
            assert line.rstrip() not in got_lines and body not in got_lines, f"{case.name}: quoted line {line!r} leaked"
    for line in got.split("\n"):
        if line not in expected_lines:
            assert not SEPARATOR.match(line), f"{case.name}: separator {line!r} in the new text"


@pytest.mark.parametrize("case", [c for c in CASES if c.layout == "quote-only"], ids=lambda c: c.name)
def test_quote_only_replies_stay_empty(case: Case) -> None:
    assert case.got == ""


def test_mailmaster_thanks_is_exactly_that_line() -> None:
    [case] = [c for c in CASES if c.name == "10-mailmaster-thanks-refund.yaml"]
    assert case.got == "谢谢，已经收到退款了！"


# ----------------------------------------------------------------------------------------- contract


def test_extraction_fields_and_explain() -> None:
    text = "Hi,\n\nOn Mon, Nov 30, 2026 at 10:15 AM Support <s@helpdesk.example> wrote:\n> question?\n\nanswer\n-- \nJo\n"
    ex = extract(text, None, True)
    assert isinstance(ex, Extraction)
    assert ex.new_text == "Hi,\n\nanswer"
    assert ex.quoted is True
    assert ex.rule == "signature-dashdash" and ex.cut_line == 6
    assert ex.segments == [(0, 2), (4, 6)]
    report = ex.explain()
    assert "cut here by signature-dashdash" in report
    assert "attribution: gmail-en" in report
    assert "   4 > | > question?" in report
    assert report.rstrip().endswith("answer")


def test_quote_only_is_empty_not_the_body() -> None:
    text = "在 2026/11/30 10:15, 客服中心 写道:\n> 请问还有问题吗？\n"
    ex = extract(text, None, True)
    assert ex.new_text == "" and ex.quoted and ex.rule == "thunderbird-zh"
    assert extract_new_text(text) == ""


def test_signature_alone_is_not_a_quote() -> None:
    ex = extract("Thanks!\n\nSent from my iPhone\n", None, True)
    assert ex.new_text == "Thanks!" and ex.rule == "mobile-iphone" and ex.quoted is False


def test_html_rule_is_reported_and_plain_wording_kept_when_they_agree() -> None:
    html = ('<div>Fine&nbsp;by me.</div><div class="gmail_quote"><div class="gmail_attr">On Mon, Nov 30, 2026 at 10:15'
            ' AM S &lt;s@x.example&gt; wrote:</div><blockquote class="gmail_quote">old</blockquote></div>')
    plain = "Fine by me.\n\nOn Mon, Nov 30, 2026 at 10:15 AM S <s@x.example> wrote:\n> old\n"
    ex = extract(plain, html, True)
    assert ex.source == "text" and ex.new_text == "Fine by me."
    html_only = extract("", html, True)
    assert html_only.new_text == "Fine by me." and html_only.source == "html"
    assert html_only.rule in ("html:gmail-attr", "html:gmail-quote")


def test_html_structure_wins_over_a_plain_part_that_misses_the_quote() -> None:
    html = ('<div>好的</div><div id="appendonsend"></div><div id="divRplyFwdMsg"><b>发件人:</b> 客服</div>'
            '<div>工单编号：CW202611300001 内部通知</div>')
    plain = "好的\n\n工单编号：CW202611300001 内部通知\n"  # a client whose plain part lost the header
    ex = extract(plain, html, True)
    assert ex.new_text == "好的" and ex.rule == "html:outlook-appendonsend" and ex.source == "html"


def test_first_mail_is_cut_less_eagerly() -> None:
    text = "好的\n发件人: 客服\n发送时间: 2026年11月22日\n\n旧"
    assert extract(text, None, True).new_text == "好的"
    assert extract(text, None, False).new_text == text  # two header lines are not enough in a first mail
    gt = "Repro:\n>>> run()\nError\n"
    assert extract(gt, None, False).new_text == "Repro:\n>>> run()\nError"
    assert extract(gt, None, True).new_text == "Repro:\nError"


def test_forwarded_header_block_is_content() -> None:
    text = ("FYI\n\n---------- Forwarded message ---------\nFrom: Shop <o@shop.example>\nDate: Sun, Nov 29, 2026\n"
            "Subject: Order\nTo: <me@x.example>\n\nOrder 5521 confirmed.\n")
    assert extract(text, None, False).new_text.endswith("Order 5521 confirmed.")


def test_looks_like_reply() -> None:
    assert looks_like_reply("Re: [CW202611300001] x")
    assert looks_like_reply("回复：退款")
    assert looks_like_reply("答复: 账号")
    assert looks_like_reply("hello", in_reply_to=["a@b"])
    assert looks_like_reply("hello", references=["a@b"])
    assert not looks_like_reply("Fw: order")
    assert not looks_like_reply("转发：订单")
    assert not looks_like_reply("Reason for complaint")


def test_parse_sets_quote_fields_and_explain_message() -> None:
    raw = ("From: a@customer.example\nTo: s@helpdesk.example\nSubject: Re: [CW202611300001] x\n"
           "Message-ID: <q@customer.example>\nContent-Type: text/plain; charset=utf-8\n\n"
           "\n\n------------------ 原始邮件 ------------------\n发件人: s@helpdesk.example\n\n旧\n").encode()
    m = parse_message(raw)
    assert m.new_text == "" and m.quoted is True and m.quote_rule == "qq-original-zh-CN"
    assert "cut here by qq-original-zh-CN" in explain_message(m)


def test_rows_have_unique_names() -> None:
    names = [r.name for r in ROWS]
    assert len(names) == len(set(names))


# ----------------------------------------------------------------------------------------- properties

TRICKY_LINES = st.sampled_from([
    "", " ", "> quoted", ">", ">> deeper", "-- ", "--", "------------------ 原始邮件 ------------------",
    "-----Original Message-----", "---- 回复的原邮件 ----", "________________________________",
    "From: Support <s@helpdesk.example>", "Sent: Monday, November 30, 2026 10:15 AM", "发件人: 客服中心",
    "发送时间: 2026年11月30日 10:15", "To: me", "主题: 退款", "寄件人：李四", "时间：2026-11-23 14:30",
    "On Mon, Nov 30, 2026 at 10:15 AM Support <s@helpdesk.example> wrote:", "客服中心 <s@h.example> 于2026年11月30日周一",
    "上午10:15写道：", "wrote:", "Sent from my iPhone", "来自网易邮箱大师", "| 发件人 | 客服<s@h.example> |",
    "工单 [CW202611300007] 已分配给您，请及时处理。", "CAUTION: external", "Thanks,", "Disclaimer",
    "---------- Forwarded message ---------", "         Original", "好的，谢谢", "Hi,", "answer",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(TRICKY_LINES, st.text(max_size=40)), max_size=40), st.booleans())
def test_never_raises_and_keeps_only_input_lines(lines: list[str], is_reply: bool) -> None:
    text = "\n".join(lines)
    ex = extract(text, None, is_reply)
    assert isinstance(ex.new_text, str)
    flat = text.replace("\r\n", "\n").replace("\r", "\n")
    for line in ex.new_text.split("\n"):
        assert line in flat, (line, text)
    if ex.cut_line is not None:
        assert 0 <= ex.cut_line <= len(ex.lines)
    assert isinstance(ex.explain(), str)


HTML_BITS = st.sampled_from([
    "<div>", "</div>", "<blockquote>", "</blockquote>", '<blockquote type="cite">', '<div class="gmail_quote">',
    '<div class="gmail_attr">', '<div id="divRplyFwdMsg">', '<div id="appendonsend">', '<hr id="replySplit">',
    '<div id="spnEditorSign">', '<div class="ntes-mailmaster-quote">', "<br>", "<p>", "</p>", "<table><tr><td>",
    "</td><td>", "</td></tr></table>", "发件人", "From:", "---- 回复的原邮件 ----", "<!--", "-->", "<", ">", "&nbsp;",
    "好的", "wrote:", "<script>x</script>", "<b>", "</b>",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(HTML_BITS, st.text(max_size=20)), max_size=40), st.text(max_size=200), st.booleans())
def test_html_never_raises(bits: list[str], text: str, is_reply: bool) -> None:
    ex = extract(text, "".join(bits), is_reply)
    assert isinstance(ex.new_text, str)
    for line in ex.new_text.split("\n"):
        assert line in "\n".join(ex.lines) or line in text
