"""The report cache (mailflow/report_cache.py) gives exactly the figures of the straight pass.

A store with archived and hot tickets over several months, on both backends: every report of a
past period (months, a week, a team's) is made through the cache cold, then warm, and compared
figure for figure with `compute` over all summaries (`report_source.iter_summaries`, what `report`
did before the cache); then the archived set changes (more tickets archived, one brought back by a
reply, a customer erased, retention forgets old ones) and the config changes, and every report is
compared again.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from bench.scale import _ticket_and_messages
from mailflow import config, privacy, report, report_cache
from mailflow.clock import Clock
from mailflow.report_metrics import TREND, Period, _add_months, compute
from mailflow.report_source import iter_summaries
from mailflow.runtime import Runtime
from mailflow.storeapi import open_store
from tests.integration.helpers import storage_lines

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
PERIODS = [("month", "2026-11"), ("month", "2026-10"), ("week", "2026-W47")]
TEAMS = [None, "tech"]


def _straight(st, cfg, period, now, team, by="category"):
    """What `report.build` did before the cache: compute over every summary."""
    oldest = period.shifted(-(TREND - 1))
    first = _add_months(oldest.first, -cfg.reports.lookback_months)
    created_from = int(Period("range", first, first, period.timezone).start.timestamp())
    created_to = min(int(period.end.timestamp()), int(now.timestamp()) + 1)
    s = iter_summaries(st, cfg, created_from, created_to, skip_before=int(oldest.start.timestamp()),
                       full_from=int(period.shifted(-1).start.timestamp()))
    return compute(s, period, now, team=team, by=by).data


def _check_all(st, cfg, now=NOW) -> int:
    """Every report through the cache equals the straight pass; the number of reports the cache served."""
    served = 0
    tz = report.timezone_of(cfg)
    for kind, label in PERIODS:
        period = report.parse_period(now, tz, month=label if kind == "month" else None,
                                     week=label if kind == "week" else None)
        for team in TEAMS:
            want = _straight(st, cfg, period, now, team)
            got = report.build(st, cfg, period, now, team=team, by="category").data
            assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), (label, team)
            oldest = period.shifted(-(TREND - 1))
            first = _add_months(oldest.first, -cfg.reports.lookback_months)
            cf = int(Period("range", first, first, period.timezone).start.timestamp())
            if report_cache.cached_tally(st, cfg, period, now, cf, int(period.end.timestamp()), team=team):
                served += 1
    return served


def _fill(st, cfg, n: int = 400, seed: int = 7) -> list[dict]:
    """n tickets created June to November 2026, most closed (and so archived), some open."""
    rng = random.Random(seed)
    serials: dict[str, int] = {}
    start = datetime(2026, 6, 1, tzinfo=UTC)
    made = []
    with st.batch():
        for k in range(n):
            created = start + timedelta(seconds=rng.uniform(0, 180 * 86400))
            r = rng.random()
            if r < 0.1 and created > NOW - timedelta(days=40):
                t, msgs = _ticket_and_messages(rng, serials, k, created, None, rng.choice(["open", "resolved"]))
            else:
                t, msgs = _ticket_and_messages(rng, serials, k, created, min(created + timedelta(
                    hours=rng.uniform(5, 400)), NOW - timedelta(hours=1)))
            if rng.random() < 0.3:
                t["ratings"] = [*t["ratings"], {"at": t["created_at"], "score": rng.randint(1, 5)}]
                t["ratings"].sort(key=lambda x: x["at"])
            st.add_ticket(t)
            for m in msgs:
                st.add_message(m)
            made.append(t)
        st.archive(3.0, now=NOW - timedelta(days=20), cfg=cfg)  # the older ones first
    return made


def _config(tmp_path, extra: str = ""):
    path = tmp_path / "mailflow.toml"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n{storage_lines()}{extra}', encoding="utf-8")
    return path


@pytest.mark.usefixtures("backend")
def test_cached_reports_equal_the_straight_pass_through_every_change(tmp_path):
    path = _config(tmp_path)
    cfg = config.load(path)
    st = open_store(cfg)
    made = _fill(st, cfg)
    assert st.archived_count() > 200
    assert _check_all(st, cfg) == len(PERIODS) * len(TEAMS)  # cold: every part made and kept
    assert _check_all(st, cfg) == len(PERIODS) * len(TEAMS)  # warm: from the kept parts

    with st.batch():  # more tickets archived (the daily housekeeping)
        assert st.archive(3.0, now=NOW, cfg=cfg) > 0
    _check_all(st, cfg)

    archived = [t for t in made if st.archived_ticket(t["id"]) is not None and t["team"] == "tech"
                and t["created_at"] >= "2026-10-20"]
    back = archived[0]["id"]
    with st.batch():  # a reply brings one back (TinyDB: hot and still in the index)
        t = st.unarchive(back)
        st.update_ticket(back, {"status": "open", "updated_at": NOW.isoformat()})
        st.add_event(back, "status", "reopened by a reply", at=NOW - timedelta(hours=2))
    assert t is not None and st.ticket(back)["status"] == "open"
    _check_all(st, cfg)
    _check_all(st, cfg)

    st.close()  # a customer erased (privacy erase rewrites the archived tickets of that address)
    victim = next(t["customer_email"] for t in made if t["created_at"] >= "2026-10-01"
                  and t["status"] == "closed")
    privacy.erase(cfg, victim, now=NOW)
    st = open_store(cfg)
    _check_all(st, cfg)

    with st.batch():  # retention forgets the oldest archived tickets
        if hasattr(st, "forget_archived"):
            assert st.forget_archived("2026-07-15T00:00:00+00:00")
        else:
            from mailflow import retention

            assert retention.expire_closed(st, datetime(2026, 7, 15, tzinfo=UTC), cfg) > 0
    _check_all(st, cfg)
    st.close()

    # another SLA policy: another fingerprint, so nothing kept before is used
    path = _config(tmp_path, '[sla]\nfirst_response_hours = {urgent = 2, high = 5, normal = 10, low = 20}\n')
    cfg2 = config.load(path)
    st = open_store(cfg2)
    assert report_cache.cache_key(__import__("mailflow.report_source").report_source.fingerprint(cfg2),
                                  report.parse_period(NOW, report.timezone_of(cfg2)), 0, None) != \
        report_cache.cache_key(__import__("mailflow.report_source").report_source.fingerprint(cfg),
                               report.parse_period(NOW, report.timezone_of(cfg)), 0, None)
    _check_all(st, cfg2)
    st.close()


@pytest.mark.usefixtures("backend")
def test_a_change_re_reads_only_its_days_and_housekeeping_refreshes_the_kept_reports(tmp_path, monkeypatch):
    """After an archive run only the days it touched are read again, and `refresh` (what the
    daemon's housekeeping calls) does that work so the next report reads no archived ticket."""
    cfg = config.load(_config(tmp_path))
    st = open_store(cfg)
    _fill(st, cfg)
    read: list[int] = []
    be_cls = type(report_cache.backend_of(st))
    real = be_cls.summaries

    def counted(self, *a):
        for s in real(self, *a):
            read.append(s["created"])
            yield s

    monkeypatch.setattr(be_cls, "summaries", counted)
    oct_ = report.parse_period(NOW, report.timezone_of(cfg), month="2026-10")
    want = _straight(st, cfg, oct_, NOW, None)
    assert report.build(st, cfg, oct_, NOW, by="category").data == want
    cold = len(read)
    assert cold > 100
    read.clear()
    assert report.build(st, cfg, oct_, NOW, by="category").data == want and read == []  # warm: one row

    st.close()
    rt = Runtime.load(cfg, Clock(NOW))  # the daemon's housekeeping: archive, then the kept reports
    st = rt.store
    assert rt.pipeline.outbox.housekeeping(3.0, now=NOW, refresh_reports=True)[0] > 0
    assert 0 < len(read) < cold / 2  # the days the archive touched (and their neighbours), not all
    want = _straight(st, cfg, oct_, NOW, None)
    read.clear()
    assert report_cache.refresh(st, cfg, NOW) == 0 and read == []  # made again already: nothing changed since
    assert report.build(st, cfg, oct_, NOW, by="category").data == want and read == []
    st.close()


@pytest.mark.usefixtures("backend")
def test_a_running_period_and_the_csv_take_the_straight_pass(tmp_path):
    cfg = config.load(_config(tmp_path))
    st = open_store(cfg)
    _fill(st, cfg, n=120, seed=3)
    now = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    period = report.parse_period(now, report.timezone_of(cfg), month="2026-11")
    assert report_cache.cached_tally(st, cfg, period, now, 0, int(now.timestamp()) + 1, team=None) is None
    m = report.build(st, cfg, period, now)
    assert m.data["running"]
    assert json.dumps(m.data, sort_keys=True) == json.dumps(_straight(st, cfg, period, now, None, by=None),
                                                            sort_keys=True)
    past = report.parse_period(NOW, report.timezone_of(cfg))
    rows = report.build(st, cfg, past, NOW, rows=True).rows
    assert rows and rows == compute(iter_summaries(st, cfg), past, NOW, rows=True).rows
    st.close()
