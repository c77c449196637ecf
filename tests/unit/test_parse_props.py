"""Property tests: whatever bytes arrive, parse_message returns a well-formed Message or raises ParseError."""

from __future__ import annotations

import base64
import quopri
import re
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow.model import Attachment, AuthResult, Message
from mailflow.parse import ParseError, parse_message

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(raw: bytes) -> None:
    """The contract: a Message with sane field types, or ParseError, and nothing else."""
    try:
        m = parse_message(raw)
    except ParseError as exc:
        assert not str(exc).startswith("unparseable"), exc  # an internal crash, merely contained
        return
    assert isinstance(m, Message)
    assert m.size == len(raw)
    assert re.fullmatch(r"[0-9a-f]{64}", m.content_hash)
    assert m.message_id and isinstance(m.message_id, str)
    assert m.from_addr and m.from_addr == m.from_addr.lower()
    assert all(a == a.lower() and "@" in a for a in m.to + m.cc)
    assert m.language in ("zh", "zh-Hant", "en")
    assert m.auto_kind in (None, "auto-reply", "bounce", "list")
    assert m.date is None or (isinstance(m.date, datetime) and m.date.tzinfo is not None)
    assert isinstance(m.text, str) and isinstance(m.new_text, str) and isinstance(m.subject, str)
    assert m.html is None or isinstance(m.html, str)
    assert all(isinstance(a, Attachment) and a.size == len(a.data) and a.filename for a in m.attachments)
    assert all("/" not in a.filename and "\\" not in a.filename for a in m.attachments)
    assert all(isinstance(r, AuthResult) and r.authserv_id for r in m.auth_results)
    assert all(t == t.upper() for t in m.ticket_ids)
    assert all(isinstance(d, str) and not d.startswith("internal error") for d in m.defects), m.defects
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in m.headers.items())
    if m.auto_kind != "bounce":
        assert m.bounce_message_ids == [] and m.bounce_recipients == []


# ------------------------------------------------------------------------------------------- (1) raw bytes


@SETTINGS
@given(st.binary(max_size=3000))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@SETTINGS
@given(st.binary(max_size=2000), st.sampled_from([b"From: a@b.example\n", b"From: =?utf-8?B?5byg?= <A@B.example>\r\n",
                                                   b"Content-Type: multipart/mixed; boundary=x\nFrom: a@b.example\n\n"]))
def test_arbitrary_bytes_after_a_sender(tail: bytes, head: bytes) -> None:
    check(head + tail)


HEADERISH = st.text(alphabet=st.sampled_from(list("abcAB:;=?<>@\"'()\\ \t\r\n-_.%*0123456789中文回复")), max_size=200)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["From", "Subject", "Content-Type", "Content-Disposition", "Date",
                                            "Message-ID", "References", "Authentication-Results", "To",
                                            "Return-Path", "Content-Transfer-Encoding", "X-Spam-Status"]),
                          HEADERISH), max_size=12),
       st.binary(max_size=500))
def test_header_soup(headers: list[tuple[str, str]], body: bytes) -> None:
    raw = b"".join(f"{k}: {v}\n".encode("utf-8", "surrogatepass") for k, v in headers) + b"\n" + body
    check(raw)


# ------------------------------------------------------------------------------------------- (2) MIME fuzzer

CHARSETS = ["utf-8", "gb2312", "gbk", "GB18030", "big5", "big5-hkscs", "x-unknown", "us-ascii", "iso-8859-1",
            "utf-16", "base64", "", '"unterminated', "ut\xf0f-8", "idna", "undefined"]
ENCODE_AS = ["utf-8", "gbk", "big5", "utf-16", "latin-1"]
CTES = ["base64", "quoted-printable", "8bit", "7bit", "binary", "x-uuencode", "bogus", ""]
LEAF_TYPES = ["text/plain", "text/html", "image/png", "application/octet-stream", "message/delivery-status",
              "text/rfc822-headers", "text/calendar", "multipart/mixed", "message/rfc822", "application/pdf"]
TEXTS = ["客服态度很差，退款还没到。", "Outage! cannot log in.", "<p>你好&amp;<br>hi</p><script>x</script>",
         "ok\n-----原始邮件-----\nold", "Final-Recipient: rfc822; x@y\nAction: failed\n",
         "Message-ID: <m@x>\nFrom: a@b\n", "恒€嘅", ""]
FILENAMES = [None, "a.txt", "文件.pdf", "=?utf-8?B?5paH5Lu2LnBkZg==?=", "../../etc/passwd", "=?bogus?Q?=ZZ?=",
             "\udce4\udcb8\udcad.doc"]
EXTRA_HEADERS = ["Auto-Submitted: auto-replied", "Precedence: bulk", "List-Id: <l.x>", "X-Autoreply: yes",
                 "Authentication-Results: mx; dmarc=pass header.from=x.example; dkim=pass header.i=@x",
                 "Authentication-Results: (((", "Date: Mon, 99 Foo 2026", "Date: Mon, 23 Nov 2026 09:00:00 +0800",
                 "Message-ID: <<<>>>", "References: <a@b> <c@d", "Return-Path: <>", "X-Spam-Flag: YES",
                 "Subject: =?gbk?B?u9i4tA==?= [CW202611220001]", "Subject: =?utf-8?B?broken", "Subject: \xd6\xd0",
                 "Content-Type: multipart/report; report-type=delivery-status; boundary=zz"]


def to_bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


@st.composite
def body_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    text = draw(st.sampled_from(TEXTS)) * draw(st.integers(1, 3))
    return text.encode(draw(st.sampled_from(ENCODE_AS)), "replace")


def transfer_encode(data: bytes, cte: str, breakage: int) -> bytes:
    if cte == "base64":
        out = base64.encodebytes(data)
        if breakage == 1:
            out = out[: max(0, len(out) - 3)] + b"!*"
        elif breakage == 2 and out:
            out = out[:-2]
        return out
    if cte == "quoted-printable":
        out = quopri.encodestring(data)
        return out + b"=Z" if breakage == 1 else out
    if cte == "x-uuencode":
        return b"begin 644 f\n" + data[:40] + (b"\nend\n" if breakage == 0 else b"")
    return data


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(LEAF_TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(CTES))
    fname = draw(st.sampled_from(FILENAMES))
    head = f"Content-Type: {ctype}"
    if charset or draw(st.booleans()):
        head += f"; charset={charset}"
    if fname is not None:
        head += f'; name="{fname}"'
    lines = [head]
    if cte:
        lines.append(f"Content-Transfer-Encoding: {cte}")
    disposition = draw(st.sampled_from([None, "attachment", "inline", "weird"]))
    if disposition:
        if draw(st.booleans()) and fname:
            lines.append(f"Content-Disposition: {disposition};\n filename*0*=utf-8''%E6%96%87%E4; filename*1*=%BB%B6%")
        else:
            lines.append(f'Content-Disposition: {disposition}; filename="{fname or ""}"')
    if ctype == "message/rfc822":
        body = draw(message(depth=2))
    else:
        body = transfer_encode(draw(body_bytes()), cte, draw(st.integers(0, 2)))
    return to_bytes("\n".join(lines)) + b"\n\n" + body


@st.composite
def part(draw: st.DrawFn, depth: int) -> bytes:
    if depth <= 0 or draw(st.integers(0, 2)) == 0:
        return draw(leaf())
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "report", "signed", "digest"]))
    boundary = draw(st.sampled_from(["b1", "==_b", "x" * 70, "", "b b", '"q"']))
    children = draw(st.lists(part(depth - 1), max_size=3))
    delimiter = boundary.strip('"').encode()
    out = to_bytes(f'Content-Type: multipart/{subtype}; boundary="{boundary.strip(chr(34))}"') + b"\n\n"
    out += draw(st.sampled_from([b"", b"preamble\n"]))
    for child in children:
        out += b"--" + delimiter + b"\n" + child + b"\n"
    ending = draw(st.integers(0, 3))
    if ending == 0:
        out += b"--" + delimiter + b"--\n"
    elif ending == 1:
        out += b"--" + delimiter + b"-"  # truncated close delimiter
    elif ending == 2:
        out += b"--wrong--\n"
    return out


@st.composite
def message(draw: st.DrawFn, depth: int = 3) -> bytes:
    sender = draw(st.sampled_from(["From: a@b.example", "From: =?gbk?B?1cXOsA==?= <Z@Customer.example>",
                                   "From: \xd5\xc5 <z@x.example>", "From: MAILER-DAEMON", "From: <>", "",
                                   "From: \"unterminated <a@b.example>", "From: a@b.example, c@d.example"]))
    extras = draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=4))
    head = "\n".join([h for h in [sender, *extras] if h])
    body = draw(part(depth))
    raw = to_bytes(head) + b"\n" + body
    if draw(st.booleans()):
        raw = raw.replace(b"\n", b"\r\n")
    return raw


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    raw = draw(message())
    mode = draw(st.integers(0, 3))
    if mode == 1 and raw:
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mode == 2 and raw:
        pos = draw(st.integers(0, len(raw) - 1))
        raw = raw[:pos] + draw(st.binary(min_size=1, max_size=8)) + raw[pos + 1:]
    elif mode == 3:
        raw = raw.replace(b"\n", b"\r", draw(st.integers(0, 5)))
    return raw


@SETTINGS
@given(message())
def test_mime_fuzz(raw: bytes) -> None:
    check(raw)


@SETTINGS
@given(damaged())
def test_mime_fuzz_damaged(raw: bytes) -> None:
    check(raw)


def test_absurd_nesting_degrades() -> None:
    depth = 400
    raw = b"From: a@b.example\n"
    for i in range(depth):
        raw += b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
    raw += b"Content-Type: text/plain\n\ndeep text\n"
    check(raw)


def _reference_hash(raw: bytes) -> str:
    """content_hash as milestone 1 computed it (whole-mail copies): the stored hashes depend on it."""
    import hashlib

    from mailflow.parse import _TRACE_HEADERS, _TRACE_PREFIXES, _WS_BYTES, _header_lines

    data = raw.replace(b"\r\n", b"\n")
    if data.startswith(b"From "):
        data = data.partition(b"\n")[2]
    head, sep, body = data.partition(b"\n\n")
    if not sep:
        head, body = data, b""
    h = hashlib.sha256()
    for line in _header_lines(head):
        name, colon, value = line.partition(b":")
        lname = name.strip().lower()
        if colon and (lname in _TRACE_HEADERS or lname.startswith(_TRACE_PREFIXES)):
            continue
        h.update(lname + colon + _WS_BYTES.sub(b" ", value).strip() + b"\n" if colon else line + b"\n")
    h.update(b"\n")
    h.update(body.rstrip(b"\n"))
    return h.hexdigest()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"From ", b": ", b" ", b"Received: x\n", b"xyz" * 5]),
                max_size=80), st.sampled_from([1, 2, 3, 7, 1 << 20]))
def test_content_hash_in_chunks_is_the_old_hash(pieces, step):
    import mailflow.parse as P

    raw = b"".join(pieces)
    old, P._HASH_STEP = P._HASH_STEP, step
    try:
        assert P.content_hash(raw) == _reference_hash(raw)
    finally:
        P._HASH_STEP = old
