"""`tickets list --overdue` / `--due-within` on both backends: the stored SLA record answers while it
holds (nothing happened since, same SLA config), a replay answers when it does not, and both agree
with the clocks replayed from the history."""

from __future__ import annotations

import json
from datetime import datetime

from mailflow import config, slaclock
from mailflow.storeapi import open_store

from .helpers import mailflow, make_mail, write_config

MON = "2026-11-23T02:00:00+00:00"  # Monday 10:00 Shanghai


def _ids(cfg, now: str, *args: str) -> list[str]:
    return [t["id"] for t in json.loads(mailflow(cfg, "--now", now, "tickets", "list", "--json", *args).stdout)]


def _replayed(cfg, now: str, *, overdue: bool) -> list[str]:
    """What the clocks replayed from each ticket's whole history say (the old `--overdue`)."""
    c = config.load(cfg)
    at = datetime.fromisoformat(now)
    out = []
    for row in json.loads(mailflow(cfg, "tickets", "list", "--json").stdout):
        t = json.loads(mailflow(cfg, "tickets", "show", row["id"], "--json").stdout)
        running = [k for n, k in slaclock.clocks_of(t, c, at).items() if n != "update" and k.running]
        if (overdue and any(k.breached for k in running)) or (not overdue and any(
                k.due and 0 <= (k.due - at).total_seconds() <= 3600 for k in running)):
            out.append(t["id"])
    return out


def test_overdue_and_due_within_follow_the_clocks_and_a_config_edit(tmp_path, backend):
    cfg = write_config(tmp_path)
    mails = tmp_path / "m"
    mails.mkdir()
    (mails / "1.eml").write_bytes(make_mail(1, subject="紧急：系统宕机，所有用户无法登录", body="紧急！系统宕机了，所有用户都登录不了。"))
    (mails / "2.eml").write_bytes(make_mail(2, subject="Question about my invoice", body="Could you send me a copy?"))
    mailflow(cfg, "--now", MON, "ingest", str(mails))
    every = _ids(cfg, MON)
    assert len(every) == 2
    urgent = [t["id"] for t in json.loads(mailflow(cfg, "tickets", "list", "--json").stdout)
              if t["priority"] == "urgent"]
    assert len(urgent) == 1

    soon = "2026-11-23T02:30:00+00:00"  # 30 minutes in: nothing late, the urgent one due within the hour
    assert _ids(cfg, soon, "--overdue") == [] == _replayed(cfg, soon, overdue=True)
    assert _ids(cfg, soon, "--due-within", "1h") == urgent == _replayed(cfg, soon, overdue=False)
    late = "2026-11-24T03:00:00+00:00"  # a working day later: both first responses are late
    assert _ids(cfg, late, "--overdue") == sorted(every) == _replayed(cfg, late, overdue=True)
    assert _ids(cfg, late, "--overdue", "--status", "new") == sorted(every)
    assert _ids(cfg, late, "--overdue", "--status", "closed") == []
    c = config.load(cfg)
    store = open_store(c, create=False)
    try:  # the pipeline's records hold: the listing read them, it replayed nothing
        assert all(slaclock.record_holds(t, c, datetime.fromisoformat(late)) for t in store.all_tickets())
    finally:
        store.close()

    # an SLA edit: the stored records no longer hold, so the clocks are replayed under the new targets
    with open(cfg, "a", encoding="utf-8") as f:
        f.write('\n[sla]\nfirst_response_hours = { urgent = 1, high = 4, normal = 100, low = 100 }\n'
                'resolution_hours = { urgent = 4, high = 8, normal = 200, low = 200 }\n')
    assert _ids(cfg, late, "--overdue") == urgent == _replayed(cfg, late, overdue=True)
