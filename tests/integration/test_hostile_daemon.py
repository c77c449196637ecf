"""Nothing an admin mistypes or an attacker sends stops the running daemon (issue 15, cases 1, 2, 3, 5).

`mailflow run` as a subprocess over the Dovecot fixture and the SMTP sink. Unsafe rules and templates
are refused by `check`, at start (exit 2) and on reload (SIGHUP or file change: "reload ... rejected",
the running set stays); one that passes the checks but runs over its budget on real mail costs that
one message (quarantined, the rule or template and the budget named) while the mail behind it is
processed within seconds, and SIGTERM still ends the process within 30 s.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time

import pytest

from mailflow import resources
from tests.integration.helpers import mailflow, make_mail, tickets
from tests.integration.test_daemon import Notify, acks, config, daemon, mailbox_toml, user

pytestmark = pytest.mark.usefixtures("backend")  # every test on TinyDB and on PostgreSQL

STOP_WITHIN = 30.0


@pytest.fixture
def notify():
    n = Notify()
    yield n
    n.close()


def _setup(tmp_path, dovecot, smtp_port):
    a = user(dovecot)
    rules = tmp_path / "rules"
    tpl = tmp_path / "templates"
    shutil.copytree(resources.bundled_rules(), rules)
    shutil.copytree(resources.bundled_templates(), tpl)
    cfg = config(tmp_path, [mailbox_toml(a, dovecot.port)], smtp_port,
                 extra=f'[rules]\ndir = "{rules}"\n[templates]\ndir = "{tpl}"\n')
    return a, cfg, rules / "classify.yaml", tpl / "en" / "ack.txt.j2"


def _good_mails(start: int) -> list[bytes]:
    out = [make_mail(start + i, subject=f"good mail {start + i}", zh=False) for i in range(4)]
    out.append(make_mail(start + 4, sender="用户@例子.中国", subject=f"good mail {start + 4}", zh=True))  # RFC 6531
    return out


def _stop(run) -> float:
    t0 = time.monotonic()
    rc = run.stop(timeout=STOP_WITHIN + 5)
    took = time.monotonic() - t0
    assert rc == 0 and took < STOP_WITHIN, (rc, took, run.log[-3000:])
    return took


CATASTROPHIC_RULE = """
- name: evil-regex
  when: {text: {matches: '(a+)+$'}}
  then: [{tag: evil}]
"""
# accepted by the shape check (each repetition ends with '.'), but quadratic for a backtracking
# engine on a long run of "a." that fails at the end: the time budget stops it
SLOW_RULE = """
- name: domain-names
  when: {text: {matches: '(?:[a-z]+\\.)+com$'}}
  then: [{tag: domain}]
"""


def test_unsafe_rules_never_go_live_and_a_slow_one_costs_one_message(tmp_path, dovecot_server, smtp_sink, notify):
    a, cfg, classify, _ack = _setup(tmp_path, dovecot_server, smtp_sink.port)
    good = classify.read_text(encoding="utf-8")

    # check and start refuse the catastrophic rule
    classify.write_text(good + CATASTROPHIC_RULE, encoding="utf-8")
    chk = mailflow(cfg, "check", check=False)
    assert chk.returncode == 1 and re.search(r"classify\.yaml: evil-regex: .*unsafe regex '\(a\+\)\+\$'", chk.stdout +
                                             chk.stderr), chk.stdout + chk.stderr
    start = mailflow(cfg, "run", check=False, timeout=60)
    assert start.returncode == 2 and "evil-regex" in start.stderr, start.stderr

    classify.write_text(good, encoding="utf-8")
    with daemon(cfg, notify) as run:
        notify.wait("READY", "1")
        # a reload with it is rejected; the running rules stay
        classify.write_text(good + CATASTROPHIC_RULE, encoding="utf-8")
        run.signal(signal.SIGHUP)
        run.wait_log(r"reload \(SIGHUP\) rejected.*evil-regex.*unsafe regex")
        st = json.loads(mailflow(cfg, "status", "--json").stdout)["daemon"]  # status says it, and why
        assert st["running"] and st["last_reload"]["ok"] is False and "evil-regex" in st["last_reload"]["error"]
        assert "last reload rejected" in st["status"]
        dovecot_server.append(a, make_mail(1, subject="aaaa", body="a" * 40 + "b", zh=False))  # the trigger
        run.wait_log(r"new ticket=", n=1, timeout=20)

        # a rule that passes the checks but is slow on this mail: that message is quarantined
        classify.write_text(good + SLOW_RULE, encoding="utf-8")
        run.signal(signal.SIGHUP)
        run.wait_log(r"reloaded \(SIGHUP\)")
        dovecot_server.append(a, make_mail(2, subject="domains", body="a." * 40_000 + "com!", zh=False))
        dovecot_server.append_many(a, _good_mails(10))
        run.wait_log(r"quarantined .*domain-names: regex time budget \(100 ms\) exceeded", timeout=20)
        run.wait_log(r"new ticket=", n=6, timeout=20)
        assert smtp_sink.wait_for(6, timeout=20)
        # the same kind of mail once more, then SIGTERM while it is in flight
        dovecot_server.append(a, make_mail(3, subject="domains again", body="b." * 40_000 + "com!", zh=False))
        time.sleep(0.1)  # IDLE has it within milliseconds: it is being fetched or evaluated now
        _stop(run)
    log = run.log
    assert "Traceback" not in log
    ts = tickets(cfg)
    assert len(ts) == 6 and "用户@例子.中国" in {t["customer_email"] for t in ts}
    held = json.loads(mailflow(cfg, "quarantine", "list", "--json").stdout)
    assert 1 <= len(held) <= 2 and all("domain-names" in json.dumps(q, ensure_ascii=False) for q in held), held


RUNAWAY = "{% for x in message.text %}{% for y in message.text %}{% endfor %}{% endfor %}\n"  # text length squared


def test_broken_templates_never_go_live_and_a_runaway_render_costs_one_message(tmp_path, dovecot_server,
                                                                                smtp_sink, notify):
    a, cfg, _classify, ack = _setup(tmp_path, dovecot_server, smtp_sink.port)
    good = ack.read_text(encoding="utf-8")

    # case 2: a template that fails on the sample context: check, start and reload all refuse it
    ack.write_text(good + "{{ tickt.id }}\n", encoding="utf-8")
    chk = mailflow(cfg, "check", check=False)
    assert chk.returncode == 1 and re.search(r"en/ack\.txt\.j2:\d+: undefined: 'tickt' is undefined",
                                             chk.stdout + chk.stderr), chk.stdout + chk.stderr
    start = mailflow(cfg, "run", check=False, timeout=60)
    assert start.returncode == 2 and "tickt" in start.stderr, start.stderr

    ack.write_text(good, encoding="utf-8")
    with daemon(cfg, notify) as run:
        notify.wait("READY", "1")
        ack.write_text(good + "{{ tickt.id }}\n", encoding="utf-8")
        run.signal(signal.SIGHUP)
        run.wait_log(r"reload \(SIGHUP\) rejected.*ack\.txt\.j2:\d+: undefined")
        # case 3: a looping and a huge template arrive through the file watcher: rejected too
        ack.write_text(good + "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
                       encoding="utf-8")
        run.wait_log(r"reload \(rule or template files changed\) rejected.*render budget exceeded: more than 100,000",
                     timeout=20)
        ack.write_text(good + '{{ "x" * 30000000 }}\n', encoding="utf-8")
        run.wait_log(r"reload \(rule or template files changed\) rejected.*render budget exceeded: '\*' would be over",
                     timeout=20)
        dovecot_server.append(a, make_mail(1, subject="while broken", zh=False))
        run.wait_log(r"new ticket=", n=1, timeout=20)
        assert smtp_sink.wait_for(1, timeout=20)  # the running (good) templates answered it

        # a template that passes the checks but loops over real data: that one message is quarantined
        ack.write_text(good + RUNAWAY, encoding="utf-8")
        run.wait_log(r"reloaded \(rule or template files changed\)", timeout=20)
        dovecot_server.append(a, make_mail(2, subject="long one", body="x" * 2000, zh=False))
        dovecot_server.append_many(a, _good_mails(10))
        run.wait_log(r"quarantined .*ack\.txt\.j2:\d+: render budget exceeded", timeout=20)
        run.wait_log(r"new ticket=", n=6, timeout=20)
        assert smtp_sink.wait_for(6, timeout=20)
        # a good reload goes through at once (the store is never kept busy)
        ack.write_text(good, encoding="utf-8")
        t0 = time.monotonic()
        run.signal(signal.SIGHUP)
        run.wait_log(r"reloaded \(SIGHUP\)", timeout=20)
        assert time.monotonic() - t0 < 20
        _stop(run)
    log = run.log
    assert "store stayed busy" not in log and "Traceback" not in log
    got = acks(smtp_sink)
    assert len(got) == 6 and all(len(v) == 1 for v in got.values())
    assert max(len(d) for _f, _r, d in smtp_sink.messages) < 100_000  # no 41 MB acknowledgements
