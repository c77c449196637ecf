"""Templates -> subject/text/html, check_templates, and build_mail's bytes."""

from __future__ import annotations

import copy
import email
import re
import shutil
import time
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailflow.render import (
    REQUIRED,
    Rendered,
    TemplateError,
    Templates,
    build_mail,
    check_templates,
    datefmt,
    sample_context,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
TAG = re.compile(r"\[CW\d{12,}\]")


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates.load(TEMPLATES)


@pytest.fixture
def tpl_copy(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    shutil.copytree(TEMPLATES, d)
    return d


def mail_kwargs(**over):
    kw = dict(from_addr="support@example.com", from_name="示例科技 客服中心", to=["wang.fang@customer.example"],
              reply_to="support+CW202611220001@example.com", message_id="mf.1.abc@example.com",
              in_reply_to="orig-1@customer.example", references=["root@customer.example", "<orig-1@customer.example>"],
              auto_submitted="auto-replied")
    kw.update(over)
    return kw


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)


def body(part) -> str:
    """Decoded text; base64 text is in canonical CRLF form (RFC 2046 4.1.1), so normalise."""
    return part.get_content().replace("\r\n", "\n")


# --------------------------------------------------------------------------------------------------
# the bundled templates


def test_bundled_templates_check_clean():
    assert check_templates(TEMPLATES) == []


def test_all_required_names_present(templates):
    assert set(REQUIRED) <= templates.names()
    for loc in ("zh", "en"):
        for name in REQUIRED:
            assert (TEMPLATES / loc / f"{name}.subject.j2").is_file()
            assert (TEMPLATES / loc / f"{name}.txt.j2").is_file()
        assert (TEMPLATES / loc / "ack.html.j2").is_file()


@pytest.mark.parametrize("locale", ["zh", "en"])
@pytest.mark.parametrize("name", REQUIRED)
def test_every_template_renders(templates, locale, name):
    ctx = sample_context(locale)
    r = templates.render(locale, name, ctx)
    assert TAG.search(r.subject), r.subject
    assert f"[{ctx['ticket']['id']}]" in r.subject
    assert "\n" not in r.subject and "\r" not in r.subject and r.subject == r.subject.strip()
    assert r.text.strip() and r.text.endswith("\n")
    assert (r.html is not None) == (name == "ack")
    if locale == "zh":
        assert re.search(r"[\u4e00-\u9fff]", r.text)


def test_ack_content_zh(templates):
    ctx = sample_context("zh")
    ctx["ticket"]["priority"], ctx["ticket"]["priority_label"] = "urgent", "紧急"
    ctx["sla"]["first_response_due"] = datetime(2026, 11, 23, 17, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    ctx["sla"]["first_response_hours"] = 1.0
    r = templates.render("zh", "ack", ctx)
    assert "您好" in r.text and "感谢您的反馈" in r.text
    assert "CW202611220001" in r.text
    assert "紧急" in r.text
    assert "2026-11-23 17:00 (Asia/Shanghai)" in r.text
    assert " 1 个工作小时" in r.text
    assert "2026-11-23 17:00 (Asia/Shanghai)" in r.html


def test_resolved_asks_for_rating_and_explains_reopen(templates):
    zh = templates.render("zh", "resolved", sample_context("zh")).text
    en = templates.render("en", "resolved", sample_context("en")).text
    for t in (zh, en):
        assert "1" in t and "5" in t
    assert "1-5" in zh and "未解决" in zh
    assert "1 to 5" in en and "not fixed" in en


@pytest.mark.parametrize("locale", ["zh", "en"])
def test_staff_notify_has_customer_text_and_commands(templates, locale):
    ctx = sample_context(locale)
    t = templates.render(locale, "staff_notify", ctx).text
    assert ctx["message"]["text"] in t
    for cmd in ("[RESOLVE]", "[ASSIGN", "[PRIORITY", "[NOTE]", "[PENDING]", "[CLOSE]"):
        assert cmd in t


def test_staff_notify_new_vs_assigned(templates):
    ctx = sample_context("en")
    assert "Assigned to you" in templates.render("en", "staff_notify", ctx).subject
    ctx["ticket"]["assignee"] = None
    ctx["ticket"]["assignee_name"] = None
    assert "New ticket" in templates.render("en", "staff_notify", ctx).subject


def test_html_autoescapes_customer_text_but_text_does_not(templates):
    ctx = sample_context("en")
    ctx["ticket"]["subject"] = "<script>alert(1)</script>"
    ctx["ticket"]["customer_name"] = '<img src=x onerror="steal()">'
    r = templates.render("en", "ack", ctx)
    assert "<script>" not in r.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.html
    assert "<img" not in r.html and "&lt;img" in r.html
    assert "<script>alert(1)</script>" in r.text  # plain text is not HTML: no escaping there


def test_customer_text_is_data_not_template(templates):
    ctx = sample_context("zh")
    ctx["message"]["text"] = "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__ }}"
    t = templates.render("zh", "staff_notify", ctx).text
    assert "{{ 7*7 }}" in t and "49" not in t


def test_subject_is_one_line_even_with_newlines_in_data(templates):
    ctx = sample_context("en")
    ctx["ticket"]["subject"] = "hello\r\nBcc: x@evil.example\n\tmore   spaces"
    r = templates.render("en", "progress", ctx)
    assert r.subject == "[CW202611220001] Update on your request: hello Bcc: x@evil.example more spaces"


def test_fallback_to_other_locale(tpl_copy):
    for part in ("subject", "txt"):
        (tpl_copy / "zh" / f"progress.{part}.j2").unlink()
    t = Templates.load(tpl_copy)
    r = t.render("zh", "progress", sample_context("zh"))
    assert r.subject.startswith("[CW202611220001] Update on your request")
    assert t.render("fr", "ack", sample_context("en")).subject.startswith("[CW202611220001] 我们已收到")
    with pytest.raises(TemplateError):
        t.render("zh", "no_such_template", sample_context("zh"))


def test_sandbox_blocks_unsafe_access(tpl_copy):
    # load refuses it (its sample render fails, as in check) ...
    (tpl_copy / "en" / "progress.txt.j2").write_text("{{ ticket.__class__.__mro__ }}\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="unsafe"):
        Templates.load(tpl_copy)
    # ... and where only real data reaches the unsafe branch, the render fails there
    (tpl_copy / "en" / "progress.txt.j2").write_text(
        "{% if message.text == 'x' %}{{ ticket.__class__.__mro__ }}{% endif %}\n", encoding="utf-8")
    t = Templates.load(tpl_copy)
    with pytest.raises(TemplateError):
        t.render("en", "progress", {**sample_context("en"), "ticket": _Obj(), "message": {"text": "x"}})


class _Obj:
    id = "CW202611220001"
    subject = "s"


def test_render_time_undefined_is_template_error_with_location(tpl_copy):
    t = Templates.load(tpl_copy)
    ctx = sample_context("en")
    del ctx["sla"]
    with pytest.raises(TemplateError) as ei:
        t.render("en", "ack", ctx)
    (problem,) = ei.value.problems
    assert re.match(r".*en/ack\.txt\.j2:\d+: undefined: 'sla' is undefined", problem), problem


# --------------------------------------------------------------------------------------------------
# check_templates and load errors


def test_check_reports_syntax_error_with_file_and_line(tpl_copy):
    (tpl_copy / "zh" / "progress.txt.j2").write_text("第一行\n第二行\n{% if ticket.id %}\n没有结束\n", encoding="utf-8")
    problems = check_templates(tpl_copy)
    assert len(problems) == 1, problems
    path, line, reason = problems[0].split(":", 2)
    assert path == str(tpl_copy / "zh" / "progress.txt.j2")
    assert line == "4"  # jinja reports where it noticed the missing endif (the last line)
    assert "syntax error" in reason and "endif" in reason


def test_check_reports_undefined_variable_with_file_and_line(tpl_copy):
    (tpl_copy / "en" / "closed.txt.j2").write_text(
        "Dear {{ ticket.customer_name }},\n\nline two\n{{ ticket.no_such_field }}\n", encoding="utf-8")
    (tpl_copy / "en" / "closed.subject.j2").write_text("[{{ ticket.id }}] {{ tikcet.subject }}\n",
                                                       encoding="utf-8")
    problems = check_templates(tpl_copy)
    assert f"{tpl_copy / 'en' / 'closed.txt.j2'}:4: undefined: 'dict object' has no attribute 'no_such_field'" \
        in problems, problems
    assert f"{tpl_copy / 'en' / 'closed.subject.j2'}:1: undefined: 'tikcet' is undefined" in problems, problems
    assert len(problems) == 2


def test_check_reports_undefined_inside_included_partial(tpl_copy):
    (tpl_copy / "zh" / "_commands.txt.j2").write_text("ok\n{{ nope }}\n", encoding="utf-8")
    problems = check_templates(tpl_copy)
    assert problems and all(p.startswith(f"{tpl_copy / 'zh' / '_commands.txt.j2'}:2: undefined") for p in problems)


def test_check_reports_subject_without_ticket_id(tpl_copy):
    (tpl_copy / "en" / "closed.subject.j2").write_text("Your ticket is closed\n", encoding="utf-8")
    problems = check_templates(tpl_copy)
    assert len(problems) == 1 and problems[0].startswith(f"{tpl_copy / 'en' / 'closed.subject.j2'}:1: ")
    assert "ticket.id" in problems[0]


def test_check_reports_missing_required_name(tpl_copy):
    for loc in ("zh", "en", "zh-Hant"):
        for part in ("subject", "txt"):
            (tpl_copy / loc / f"escalation.{part}.j2").unlink()
    problems = check_templates(tpl_copy)
    assert len(problems) == 1 and "missing required template 'escalation'" in problems[0]


def test_check_reports_half_template_and_bad_file_name(tpl_copy):
    (tpl_copy / "en" / "reopened.subject.j2").unlink()
    (tpl_copy / "en" / "ack.text.j2").write_text("x\n", encoding="utf-8")
    problems = check_templates(tpl_copy)
    assert any(p.startswith(f"{tpl_copy / 'en' / 'reopened.subject.j2'}:0: missing") for p in problems)
    assert any(p.startswith(f"{tpl_copy / 'en' / 'ack.text.j2'}:0: unknown template file") for p in problems)


def test_load_raises_all_problems(tpl_copy):
    (tpl_copy / "zh" / "ack.txt.j2").write_text("{{ ticket.id \n", encoding="utf-8")
    (tpl_copy / "en" / "ack.html.j2").write_text("<p>\n{% for %}\n", encoding="utf-8")
    with pytest.raises(TemplateError) as ei:
        Templates.load(tpl_copy)
    probs = ei.value.problems
    assert len(probs) == 2, probs
    assert any(p.startswith(f"{tpl_copy / 'zh' / 'ack.txt.j2'}:1: syntax error") for p in probs)
    assert any(p.startswith(f"{tpl_copy / 'en' / 'ack.html.j2'}:2: syntax error") for p in probs)


def test_datefmt():
    d = datetime(2026, 11, 23, 17, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert datefmt(d) == "2026-11-23 17:00 (Asia/Shanghai)"
    assert datefmt(datetime(2026, 1, 2, 3, 4, tzinfo=UTC)) == "2026-01-02 03:04 (UTC)"
    assert datefmt(datetime(2026, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=8)))) == "2026-01-02 03:04 (UTC+08:00)"
    assert datefmt(datetime(2026, 1, 2, 3, 4)) == "2026-01-02 03:04"
    assert datefmt(None) == "-"
    assert datefmt(d, "%m/%d") == "11/23 (Asia/Shanghai)"


# --------------------------------------------------------------------------------------------------
# build_mail


def test_build_mail_headers_and_chinese_subject(templates):
    r = templates.render("zh", "progress", sample_context("zh"))
    date = datetime(2026, 11, 23, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    data = build_mail(r, **mail_kwargs(), date=date, extra_headers={"X-Mailflow-Ticket": "CW202611220001"})
    assert data.isascii()
    assert all(len(line) <= 78 for line in data.split(b"\r\n")), "lines folded"
    assert b"\n" not in data.replace(b"\r\n", b"")
    m = parse(data)
    assert m["Subject"] == r.subject
    assert str(make_header(decode_header(m["Subject"]))) == r.subject
    assert m["Message-ID"] == "<mf.1.abc@example.com>"
    assert m["In-Reply-To"] == "<orig-1@customer.example>"
    assert m["References"].split() == ["<root@customer.example>", "<orig-1@customer.example>"]
    assert m["Auto-Submitted"] == "auto-replied"
    assert m["Reply-To"] == "support+CW202611220001@example.com"
    assert m["From"].addresses[0].display_name == "示例科技 客服中心"
    assert m["From"].addresses[0].addr_spec == "support@example.com"
    assert [a.addr_spec for a in m["To"].addresses] == ["wang.fang@customer.example"]
    assert m["Date"].datetime == date
    assert m["X-Mailflow-Ticket"] == "CW202611220001"
    assert m["MIME-Version"] == "1.0"
    assert m.get_content_type() == "text/plain" and m.get_content_charset() == "utf-8"
    assert m["Content-Transfer-Encoding"] == "base64"
    assert body(m) == r.text
    assert not m.defects


def test_build_mail_multipart_alternative(templates):
    r = templates.render("zh", "ack", sample_context("zh"))
    m = parse(build_mail(r, **mail_kwargs()))
    assert m.get_content_type() == "multipart/alternative"
    parts = list(m.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert body(parts[0]) == r.text
    assert body(parts[1]) == r.html
    assert all(not p.defects for p in m.walk())


def test_build_mail_ascii_body_is_7bit_and_crlf():
    r = Rendered(subject="[CW1] Hello", text="line one\nline two\r\n.leading dot\n", html=None)
    data = build_mail(r, **mail_kwargs(from_name="Support"))
    m = parse(data)
    assert m["Content-Transfer-Encoding"] == "7bit"
    assert m["Subject"] == "[CW1] Hello" and b"Subject: [CW1] Hello\r\n" in data
    assert m["From"] == "Support <support@example.com>"
    assert body(m) == "line one\nline two\n.leading dot\n"
    assert b"line one\r\nline two\r\n" in data


@pytest.mark.parametrize("evil", [
    "登录失败\r\nBcc: x@evil.example",
    "login failed\r\nBcc: x@evil.example",
    "login failed\nBcc: x@evil.example\n\nbody",
    "login failed\rBcc: x@evil.example",
    "x\u2028Bcc: x@evil.example",
    "x\x00\x0bBcc: x@evil.example",
])
def test_customer_subject_cannot_inject_headers(templates, evil):
    ctx = sample_context("en")
    ctx["ticket"]["subject"] = evil
    r = templates.render("en", "progress", ctx)
    # even a Rendered that skipped the template's whitespace collapsing must not inject
    for rendered in (r, Rendered(subject=f"[CW202611220001] {evil}", text=r.text, html=None)):
        data = build_mail(rendered, **mail_kwargs(from_name=evil), extra_headers={"X-Note": evil})
        m = parse(data)
        assert m["Bcc"] is None
        assert m.get_all("To") and len(m.get_all("To")) == 1
        assert "Bcc" in m["Subject"] and "\n" not in m["Subject"] and "\r" not in m["Subject"]
        assert body(m) == r.text
        headers = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        assert not any(h.lower().startswith(b"bcc") for h in headers)


def test_build_mail_rejects_bad_addresses_and_headers(templates):
    r = templates.render("en", "progress", sample_context("en"))
    with pytest.raises(ValueError):
        build_mail(r, **mail_kwargs(to=["a@b.example>, victim@x.example"]))
    with pytest.raises(ValueError):
        build_mail(r, **mail_kwargs(to=["a@b.example\r\nBcc: x@evil.example"]))
    with pytest.raises(ValueError):
        build_mail(r, **mail_kwargs(to=[]))
    with pytest.raises(ValueError):
        build_mail(r, **mail_kwargs(), extra_headers={"Bcc": "x@evil.example"})
    with pytest.raises(ValueError):
        build_mail(r, **mail_kwargs(), extra_headers={"X-A\r\nBcc": "x"})
    with pytest.raises(ValueError):
        build_mail(r, **mail_kwargs(), extra_headers={"Subject": "again"})


def test_build_mail_ids_are_sanitised(templates):
    r = templates.render("en", "progress", sample_context("en"))
    m = parse(build_mail(r, **mail_kwargs(message_id="<a b>\r\nX: y@z", in_reply_to=None, references=[])))
    assert m["Message-ID"] == "<abXy@z>"
    assert m["In-Reply-To"] is None and m["References"] is None
    assert m["X"] is None


def test_build_mail_long_subject_and_many_references(templates):
    ctx = sample_context("zh")
    ctx["ticket"]["subject"] = "很长的主题" * 60 + " with English words mixed in " * 5
    r = templates.render("zh", "progress", ctx)
    refs = [f"ref-{i}@customer.example" for i in range(40)]
    data = build_mail(r, **mail_kwargs(references=refs))
    assert all(len(line) <= 78 for line in data.split(b"\r\n"))
    m = parse(data)
    assert m["Subject"] == r.subject
    assert m["References"].split() == [f"<{x}>" for x in refs]
    ascii_long = Rendered(subject="[CW1] " + "word " * 100, text="x\n", html=None)
    m = parse(build_mail(ascii_long, **mail_kwargs()))
    assert m["Subject"] == ascii_long.subject.strip()


def test_build_mail_idn_domain_and_default_date(templates):
    r = templates.render("en", "progress", sample_context("en"))
    before = datetime.now(UTC).replace(microsecond=0)
    m = parse(build_mail(r, **mail_kwargs(to=["user@例子.测试"])))
    assert m["To"].addresses[0].domain == "xn--fsqu00a.xn--0zwm56d"
    assert before - timedelta(seconds=1) <= m["Date"].datetime <= datetime.now(UTC) + timedelta(seconds=1)


def test_build_mail_is_fast(templates):
    rendered = [templates.render(loc, n, sample_context(loc)) for loc in ("zh", "en") for n in ("ack", "progress")]
    kw = mail_kwargs()
    n = 400
    t0 = time.perf_counter()
    for i in range(n):
        build_mail(rendered[i % len(rendered)], **kw)
    per = (time.perf_counter() - t0) / n
    assert per < 0.001, f"build_mail took {per * 1e6:.0f} µs per message"


def test_sample_context_is_complete_and_independent():
    a, b = sample_context("zh"), sample_context("zh")
    a["ticket"]["id"] = "X"
    assert b["ticket"]["id"] == "CW202611220001"
    keys = {"company", "ticket", "sla", "message", "staff", "reply", "error", "commands", "escalation"}
    assert keys <= set(sample_context("en"))
    assert sample_context("fr")["ticket"]["locale"] == "en"
    copy.deepcopy(a)
