"""SmtpSender against a real SMTP server (aiosmtpd, tests/support/smtp_sink.py)."""

from __future__ import annotations

import asyncio
import email
import logging
import shutil
import socket
import ssl
import subprocess
import time
from email import policy

import pytest

from mailflow.config import Secret, SmtpConfig
from mailflow.render import Rendered, build_mail
from mailflow.send import OutMail, SendResult, SmtpSender, mask
from tests.support.smtp_sink import SmtpSink

SENDER = "support@example.com"


@pytest.fixture
def smtp_sink():
    with SmtpSink() as sink:
        yield sink


def cfg_for(sink: SmtpSink, **kw) -> SmtpConfig:
    kw.setdefault("tls", "none")
    kw.setdefault("timeout", 5.0)
    return SmtpConfig(host=sink.host, port=sink.port, **kw)


def mail(i: int, to: list[str] | None = None) -> OutMail:
    to = to or [f"customer{i}@customer.example"]
    r = Rendered(subject=f"[CW20261122{i:04d}] 我们已收到您的反馈", text=f"您好，第 {i} 封。\n", html=None)
    data = build_mail(r, from_addr=SENDER, from_name="客服", to=to, reply_to=SENDER,
                      message_id=f"mf.{i}.test@example.com", in_reply_to=None, references=[],
                      auto_submitted="auto-replied")
    return OutMail(key=f"row-{i}", sender=SENDER, recipients=to, data=data)


def run(coro):
    return asyncio.run(coro)


async def send(cfg: SmtpConfig, mails: list[OutMail], **kw) -> list[SendResult]:
    sender = SmtpSender(cfg, local_hostname="mailflow.test", **kw)
    try:
        return await sender.send_many(mails)
    finally:
        await sender.close()


def test_many_mails_arrive_with_distinct_message_ids(smtp_sink):
    n = 50
    res = run(send(cfg_for(smtp_sink), [mail(i) for i in range(n)]))
    assert [r.key for r in res] == [f"row-{i}" for i in range(n)]
    assert all(r.status == "sent" and not r.refused for r in res), res[:3]
    assert smtp_sink.wait_for(n)
    ids = set()
    for mail_from, rcpts, data in smtp_sink.messages:
        m = email.message_from_bytes(data, policy=policy.default)
        ids.add(m["Message-ID"])
        assert mail_from == SENDER and len(rcpts) == 1
        assert m["Subject"].endswith("我们已收到您的反馈")
    assert len(ids) == n


def test_throughput_over_one_connection(smtp_sink, capsys):
    n = 300
    mails = [mail(i) for i in range(n)]

    async def go():
        sender = SmtpSender(cfg_for(smtp_sink), local_hostname="mailflow.test")
        await sender.send_many(mails[:2])  # connect outside the timing
        t0 = time.perf_counter()
        res = await sender.send_many(mails)
        dt = time.perf_counter() - t0
        await sender.close()
        return res, dt

    res, dt = run(go())
    assert all(r.status == "sent" for r in res)
    rate = n / dt
    with capsys.disabled():
        print(f"\n[send] {n} mails over one connection: {rate:.0f} msg/s ({dt * 1000 / n:.2f} ms/mail)")
    assert rate > 20


def test_empty_batch_does_not_connect():
    cfg = SmtpConfig(host="127.0.0.1", port=_closed_port(), tls="none", timeout=1.0)
    assert run(send(cfg, [])) == []


@pytest.mark.parametrize(("code", "status"), [(451, "temp"), (452, "temp"), (550, "perm"), (554, "perm")])
def test_data_reply_code_decides(smtp_sink, code, status):
    smtp_sink.fail_code = code
    res = run(send(cfg_for(smtp_sink), [mail(1), mail(2)]))
    assert [r.status for r in res] == [status, status]
    assert res[0].detail.startswith(str(code))
    smtp_sink.fail_code = None
    assert run(send(cfg_for(smtp_sink), [mail(3)]))[0].status == "sent"


def test_one_of_two_recipients_refused(smtp_sink):
    to = ["good@customer.example", "gone@customer.example"]
    smtp_sink.refuse_rcpt["gone@customer.example"] = 550
    (r,) = run(send(cfg_for(smtp_sink), [mail(1, to)]))
    assert r.status == "sent"
    assert list(r.refused) == ["gone@customer.example"]
    assert r.refused["gone@customer.example"].startswith("550 ")
    assert r.deferred == {}
    assert smtp_sink.wait_for(1)
    assert smtp_sink.messages[0][1] == ["good@customer.example"]


def test_one_of_two_recipients_deferred(smtp_sink):
    to = ["good@customer.example", "full@customer.example"]
    smtp_sink.refuse_rcpt["full@customer.example"] = 452
    (r,) = run(send(cfg_for(smtp_sink), [mail(1, to)]))
    assert r.status == "sent" and r.refused == {}
    assert r.deferred["full@customer.example"].startswith("452 ")


def test_all_recipients_refused(smtp_sink):
    a, b = "a@customer.example", "b@customer.example"
    smtp_sink.refuse_rcpt.update({a: 550, b: 553})
    (r,) = run(send(cfg_for(smtp_sink), [mail(1, [a, b])]))
    assert r.status == "perm" and set(r.refused) == {a, b}
    smtp_sink.refuse_rcpt[b] = 450
    r1, r2 = run(send(cfg_for(smtp_sink), [mail(1, [a, b]), mail(2)]))
    assert r1.status == "temp" and set(r1.refused) == {a} and set(r1.deferred) == {b}
    assert r2.status == "sent"  # the session was reset and goes on


def test_8bit_data_and_utf8_addresses(smtp_sink):
    raw = "Subject: 原始 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n中文正文\r\n".encode()
    utf8 = OutMail("utf8", SENDER, ["用户@例子.测试"], b"Subject: x\r\n\r\nx\r\n")
    res = run(send(cfg_for(smtp_sink), [OutMail("8bit", SENDER, ["a@customer.example"], raw), utf8]))
    assert [r.status for r in res] == ["sent", "sent"]  # aiosmtpd offers 8BITMIME and SMTPUTF8
    assert smtp_sink.wait_for(2)
    assert smtp_sink.messages[0][2] == raw
    assert smtp_sink.messages[1][1] == ["用户@例子.测试"]


@pytest.mark.parametrize("bad_addr", ["not an address", "a@b.example>\r\nRCPT TO:<x@evil.example",
                                      "Name <a@b.example>", "nobody", "@b.example"])
def test_invalid_address_is_perm_and_does_not_stop_the_batch(smtp_sink, bad_addr):
    bad = OutMail("bad", SENDER, [bad_addr], b"Subject: x\r\n\r\nx\r\n")
    half = OutMail("half", SENDER, [bad_addr, "ok@customer.example"], b"Subject: x\r\n\r\nx\r\n")
    res = run(send(cfg_for(smtp_sink), [mail(1), bad, half, mail(2)]))
    assert [r.status for r in res] == ["sent", "perm", "sent", "sent"]
    assert res[1].refused == {bad_addr: "501 invalid address (not sent)"}
    assert list(res[2].refused) == [bad_addr]
    assert smtp_sink.wait_for(3)
    assert [rc for _, rc, _ in smtp_sink.messages] == [["customer1@customer.example"], ["ok@customer.example"],
                                                       ["customer2@customer.example"]]


def test_server_down_is_temp_for_all_and_never_raises(smtp_sink):
    cfg = cfg_for(smtp_sink, timeout=2.0)
    smtp_sink.stop()
    t0 = time.monotonic()
    res = run(send(cfg, [mail(i) for i in range(5)]))
    assert time.monotonic() - t0 < 2.0
    assert [r.status for r in res] == ["temp"] * 5
    assert all("connect" in r.detail for r in res)
    smtp_sink.start()  # same port
    res = run(send(cfg, [mail(i) for i in range(5)]))
    assert [r.status for r in res] == ["sent"] * 5
    assert smtp_sink.wait_for(5)


def test_one_sender_survives_outage_and_restart(smtp_sink):
    async def go():
        sender = SmtpSender(cfg_for(smtp_sink, timeout=2.0), local_hostname="mailflow.test")
        a = await sender.send_many([mail(1), mail(2)])
        smtp_sink.stop()  # kills the open connection too
        b = await sender.send_many([mail(3), mail(4)])
        smtp_sink.start()
        c = await sender.send_many([mail(5), mail(6)])
        await sender.close()
        return a, b, c

    a, b, c = run(go())
    assert [r.status for r in a] == ["sent", "sent"]
    assert [r.status for r in b] == ["temp", "temp"]
    assert [r.status for r in c] == ["sent", "sent"]
    assert smtp_sink.wait_for(2)


def test_stale_connection_is_replaced_silently(smtp_sink):
    async def go():
        sender = SmtpSender(cfg_for(smtp_sink), local_hostname="mailflow.test")
        a = await sender.send_many([mail(1)])
        smtp_sink.stop()
        smtp_sink.start()  # the server restarted between batches
        await asyncio.sleep(0.05)
        b = await sender.send_many([mail(2), mail(3)])
        await sender.close()
        return a + b

    assert [r.status for r in run(go())] == ["sent"] * 3
    assert smtp_sink.wait_for(3)


def test_dropped_connection_mid_batch_reconnects_once(smtp_sink):
    smtp_sink.drop_data = 1
    res = run(send(cfg_for(smtp_sink), [mail(i) for i in range(4)]))
    assert [r.status for r in res] == ["sent"] * 4
    assert smtp_sink.wait_for(4)
    assert sorted(email.message_from_bytes(d)["Message-ID"] for _, _, d in smtp_sink.messages) == \
        sorted(f"<mf.{i}.test@example.com>" for i in range(4))


def test_dropped_twice_in_a_row_gives_temp_for_the_rest(smtp_sink):
    smtp_sink.drop_data = 2
    res = run(send(cfg_for(smtp_sink), [mail(i) for i in range(4)]))
    assert [r.status for r in res] == ["temp"] * 4
    assert all("connection lost" in r.detail for r in res)


def test_reconnect_budget_renews_after_a_delivery(smtp_sink):
    async def go():
        sender = SmtpSender(cfg_for(smtp_sink), local_hostname="mailflow.test")
        out = []
        for i in range(3):
            smtp_sink.drop_data = 1  # every batch loses its connection once
            out += await sender.send_many([mail(2 * i), mail(2 * i + 1)])
        await sender.close()
        return out

    assert [r.status for r in run(go())] == ["sent"] * 6


def test_connection_refused_is_temp():
    cfg = SmtpConfig(host="127.0.0.1", port=_closed_port(), tls="none", timeout=2.0)
    res = run(send(cfg, [mail(1), mail(2)]))
    assert [r.status for r in res] == ["temp", "temp"]


def test_silent_server_times_out_as_temp():
    with socket.socket() as s:  # accepts TCP (backlog) but never greets
        s.bind(("127.0.0.1", 0))
        s.listen(5)
        cfg = SmtpConfig(host="127.0.0.1", port=s.getsockname()[1], tls="none", timeout=0.5)
        t0 = time.monotonic()
        res = run(send(cfg, [mail(1), mail(2)]))
        assert time.monotonic() - t0 < 3
    assert [r.status for r in res] == ["temp", "temp"]
    assert "timed out" in res[0].detail.lower()


def test_concurrent_batches_share_the_connection_in_turn(smtp_sink):
    async def go():
        sender = SmtpSender(cfg_for(smtp_sink), local_hostname="mailflow.test")
        a, b = await asyncio.gather(sender.send_many([mail(i) for i in range(10)]),
                                    sender.send_many([mail(i) for i in range(10, 20)]))
        await sender.close()
        return a + b

    assert [r.status for r in run(go())] == ["sent"] * 20
    assert smtp_sink.wait_for(20)


# --------------------------------------------------------------------------------------------------
# authentication


def test_password_auth_and_no_secrets_in_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="mailflow.send")
    with SmtpSink(users={"mailer": "s3cret-pw"}) as sink:
        ok = run(send(cfg_for(sink, user="mailer", password=Secret(value="s3cret-pw")), [mail(1)]))
        bad = run(send(cfg_for(sink, user="mailer", password=Secret(value="wrong-pw")), [mail(2), mail(3)]))
        assert sink.wait_for(1)
        assert sink.logins and sink.logins[0][1] == "mailer"
    assert ok[0].status == "sent"
    assert [r.status for r in bad] == ["temp", "temp"]
    assert "authentication failed: 535" in bad[0].detail
    assert "s3cret-pw" not in caplog.text and "wrong-pw" not in caplog.text
    assert "customer1@customer.example" not in caplog.text  # addresses are masked
    assert "您好" not in caplog.text  # no bodies


def test_xoauth2(caplog):
    caplog.set_level(logging.DEBUG, logger="mailflow.send")
    with SmtpSink(users={"mailer@example.com": "ya29.token"}) as sink:
        cfg = cfg_for(sink, user="mailer@example.com", auth="xoauth2", token=Secret(value="ya29.token"))
        ok = run(send(cfg, [mail(1)]))
        cfg.token = Secret(value="expired")
        bad = run(send(cfg, [mail(2)]))
        assert ("XOAUTH2", "mailer@example.com") in sink.logins
    assert ok[0].status == "sent"
    assert bad[0].status == "temp" and "authentication failed" in bad[0].detail
    assert "ya29.token" not in caplog.text


def test_token_command_failure_is_temp(smtp_sink):
    cfg = cfg_for(smtp_sink, user="u@example.com", auth="xoauth2", token=Secret(command="exit 3"))
    (r,) = run(send(cfg, [mail(1)]))
    assert r.status == "temp" and "cannot connect" in r.detail


# --------------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    client = ssl.create_default_context(cafile=str(d / "cert.pem"))
    return server, client


def _tls_used(sender: SmtpSender) -> bool:
    return sender._smtp is not None and sender._smtp.get_transport_info("cipher") is not None


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_tls_modes(certs, mode):
    server_ctx, client_ctx = certs
    kw = {"tls_context": server_ctx} if mode == "implicit" else {"starttls_context": server_ctx}

    async def go(sink):
        sender = SmtpSender(cfg_for(sink, tls=mode, user="mailer", password=Secret(value="pw")),
                            tls_context=client_ctx, local_hostname="mailflow.test")
        res = await sender.send_many([mail(1), mail(2)])
        used = _tls_used(sender)
        await sender.close()
        return res, used

    with SmtpSink(users={"mailer": "pw"}, **kw) as sink:
        res, used = run(go(sink))
        assert sink.wait_for(2)
    assert [r.status for r in res] == ["sent", "sent"]
    assert used


def test_tls_none_does_not_upgrade_even_when_offered(certs):
    server_ctx, _ = certs

    async def go(sink):
        sender = SmtpSender(cfg_for(sink, tls="none"), local_hostname="mailflow.test")
        res = await sender.send_many([mail(1)])
        used = _tls_used(sender)
        await sender.close()
        return res, used

    with SmtpSink(starttls_context=server_ctx) as sink:
        res, used = run(go(sink))
    assert res[0].status == "sent" and not used


def test_untrusted_certificate_is_temp(certs):
    server_ctx, _ = certs
    with SmtpSink(tls_context=server_ctx) as sink:
        res = run(send(cfg_for(sink, tls="implicit"), [mail(1)]))  # system CAs do not know our cert
    assert res[0].status == "temp" and "cannot connect" in res[0].detail


def test_starttls_required_but_not_offered_is_temp(smtp_sink):
    res = run(send(cfg_for(smtp_sink, tls="starttls"), [mail(1)]))
    assert res[0].status == "temp"


def test_mask():
    assert mask("550 5.1.1 <wang.fang@customer.example>: no such user") == \
        "550 5.1.1 <w***@customer.example>: no such user"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_9_during_a_flush_of_1000_mails_duplicates_at_most_one_per_kill(tmp_path, smtp_sink):
    """The documented crash window: a result is journaled (fsynced) before the next mail goes out, so
    a kill can re-send only the one mail the server had accepted but the journal not yet recorded."""
    import email
    import os
    import random
    import signal
    import subprocess
    import sys

    from tests.integration.helpers import REPO, mailflow, make_mail

    n = 1000
    mails = tmp_path / "in"
    mails.mkdir()
    for i in range(n):
        (mails / f"{i:04d}.eml").write_bytes(make_mail(i, sender=f"k{i}@customer.example", zh=False))
    data = tmp_path / "data"
    base = f'[storage]\ndata_dir = "{data}"\n'
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(base, encoding="utf-8")
    mailflow(cfg, "ingest", str(mails), timeout=600)  # no [smtp] yet: 1000 acknowledgements wait
    cfg.write_text(base + f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\ntls = "none"\ntimeout = 5\n',
                   encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(11)
    kills = 0
    for _ in range(8):
        # killed once the sink has taken a random share of what is left: always in the middle of a flush
        before = len(smtp_sink.messages)
        at = before + rng.randint(20, 120)
        p = subprocess.Popen([sys.executable, "-m", "mailflow", "--config", str(cfg), "run", "--once"], env=env,
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and len(smtp_sink.messages) < at:
            time.sleep(0.005)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
    mailflow(cfg, "run", "--once", timeout=600)
    ids = [email.message_from_bytes(d)["Message-ID"] for _f, _r, d in smtp_sink.messages]
    assert len(set(ids)) == n, (len(set(ids)), kills)  # every mail arrived
    assert len(ids) - n <= kills, (len(ids) - n, kills)  # at most one duplicate per kill
    assert kills >= 3
