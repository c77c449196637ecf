"""Staff subject-line commands: parsing (English and Chinese) and what is not a command."""

from __future__ import annotations

from mailflow.commands import authenticate, parse_commands
from mailflow.model import AuthResult
from mailflow.parse import parse_message


def names(subject, **kw):
    p = parse_commands(subject, **kw)
    return [(c.name, c.arg) for c in p.commands], p.errors


def test_commands_any_case_and_chinese():
    assert names("Re: [CW202611230001] [resolve] [Assign bob] [PRIORITY 紧急]") == (
        [("RESOLVE", ""), ("ASSIGN", "bob"), ("PRIORITY", "urgent")], [])
    assert names("回复: [CW202611230001] [解决] [标签 退款] [分类 故障]") == (
        [("RESOLVE", ""), ("TAG", "退款"), ("CATEGORY", "fault")], [])
    assert names("Re: [CW202611230001] 【备注】") == ([("NOTE", "")], [])


def test_unknown_and_malformed_commands_are_errors():
    cmds, errors = names("Re: [CW202611230001] [RESOLV] [PRIORITY soon] [ASSIGN] [MERGE 42] [NOTE x]")
    assert cmds == []
    assert len(errors) == 5 and "unknown command" in errors[0]


def test_notification_subjects_and_mail_system_tags_are_not_commands():
    # what a staff member's client makes of our own notification subjects
    assert names("Re: [CW202611230001] (Urgent) New ticket: hello") == ([], [])
    assert names("RE: [EXTERNAL] [CW202611230001] [High] ESCALATED") == ([], [])
    assert names("Re: [CW202611230001]（紧急）工单升级 [外部邮件]") == ([], [])
    # the customer's own bracketed subject, quoted in the notification, is cut out
    assert names("Re: [CW202611230001] New ticket: [HELP] site down [RESOLVE]",
                 ticket_subject="[HELP] site down") == ([("RESOLVE", "")], [])


def test_authentication_needs_signed_reference_or_trusted_dmarc():
    raw = (b"From: alice@support.example\r\nSubject: Re: [CW202611230001] [CLOSE]\r\n"
           b"In-Reply-To: <CW202611230001.abc.sig@support.example>\r\nMessage-ID: <s1@support.example>\r\n\r\nok\r\n")
    msg = parse_message(raw)
    good = lambda mid, who: "CW202611230001" if mid.startswith("CW202611230001.abc") and who == "alice@support.example" else None  # noqa: E731
    assert authenticate(msg, "alice@support.example", "CW202611230001", good, []) == "signed reference"
    assert authenticate(msg, "alice@support.example", "CW202611230002", good, []) is None
    assert authenticate(msg, "bob@support.example", "CW202611230001", good, []) is None
    msg.auth_results = [AuthResult("mx.support.example", dmarc="pass", dmarc_domain="support.example")]
    none = lambda mid, who: None  # noqa: E731
    assert authenticate(msg, "alice@support.example", "CW202611230001", none, ["mx.support.example"])
    assert authenticate(msg, "alice@support.example", "CW202611230001", none, ["other.example"]) is None
    msg.auth_results = [AuthResult("mx.support.example", dmarc="pass", dmarc_domain="evil.example")]
    assert authenticate(msg, "alice@support.example", "CW202611230001", none, ["mx.support.example"]) is None


def test_a_forged_authentication_results_below_ours_proves_nothing():
    raw = (b"Authentication-Results: mx.support.example; dmarc=fail header.from=support.example\r\n"
           b"Authentication-Results: mx.support.example; dmarc=pass header.from=support.example\r\n"
           b"From: alice@support.example\r\nSubject: Re: [CW202611230001] [CLOSE]\r\n"
           b"Message-ID: <s2@evil.example>\r\n\r\nok\r\n")
    msg = parse_message(raw)
    none = lambda mid, who: None  # noqa: E731
    assert authenticate(msg, "alice@support.example", "CW202611230001", none, ["mx.support.example"]) is None
