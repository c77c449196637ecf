"""Report figures on hand-built tickets with known times (DESIGN.md section 11, README "Reports").

Default calendar: Asia/Shanghai, Mon-Fri 09:00-18:00, CN holidays; 2026-11-02 is a Monday. Default
SLA: first response urgent 1 h, high 4 h, normal 1 d (9 h), low 2 d; resolution urgent 4 h, high 1 d,
normal 3 d, low 10 d.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from mailflow import report
from mailflow.report_metrics import (
    Floats,
    PeriodError,
    Sample,
    compute,
    month_period,
    parse_period,
    percentile,
)
from mailflow.report_render import render_csv, render_html, render_json, render_text
from mailflow.store import Store
from tests.unit.test_summary import CFG, SH, Tk, at, cfg_with

NOV = month_period(2026, 11, "Asia/Shanghai")
DEC1 = datetime(2026, 12, 1, 10, tzinfo=SH)
ALICE = "alice@support.example"


def run(tks, period=NOV, now=DEC1, cfg=CFG, **kw):
    return compute([k.s(cfg) for k in tks], period, now, **kw)


def contract_tickets() -> list[Tk]:
    # A: created Mon 09:00, resolved at once 10:00 (first reply 1 h, one touch), rated 5 -> closed
    a = Tk("CWA", at(11, 2, 9), priority="high", category="fault").resolve(at(11, 2, 10)).rate(at(11, 2, 11), 5)
    # B: created Tue 09:00, resolved Wed 09:00 (first reply 9 h), rated 2 -> reopened, resolved again
    #    at 11:00 (full resolution 11 h, two public answers), rated 4 -> closed
    b = (Tk("CWB", at(11, 3, 9), priority="low", category="fault").resolve(at(11, 4, 9)).rate(at(11, 4, 9.5), 2)
         .resolve(at(11, 4, 11)).rate(at(11, 4, 12), 4))
    # C: created Thu, never answered, escalated: backlog
    c = Tk("CWC", at(11, 5, 9), category="inquiry", team="customer_service", assignee=ALICE).escalate(at(11, 6, 9))
    return [a, b, c]


def test_percentiles_interpolate_linearly():
    assert percentile([1.0, 9.0], 0.5) == 5.0 and percentile([1.0, 9.0], 0.9) == pytest.approx(8.2)
    assert percentile([4, 1, 3, 2], 0.9) == pytest.approx(3.7) and percentile([7.0], 0.9) == 7.0
    assert percentile([], 0.5) is None


_HOURS = hs.floats(min_value=-5, max_value=1e4, allow_nan=False)


@given(hs.lists(hs.lists(_HOURS, max_size=30), max_size=5), hs.lists(_HOURS, max_size=30))
def test_a_sample_of_kept_runs_and_new_values_has_the_percentiles_of_all_its_values(runs, new):
    """The warm report's selection between a kept run and the hot values equals sorting them all,
    and a packed Sample reads back with the same values."""
    s = Sample(new)
    for r in runs:
        part = Sample(r)
        s.merge(part)
    every = sorted([*new, *(x for r in runs for x in r)])
    assert len(s) == len(every)
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert s.percentile(q) == percentile(every, q)
    for edge in (0, 1, 8):
        assert s.count_below(edge) == sum(1 for x in every if x < edge)
    floats = Floats()
    ref = floats.put(s)
    doc, sample = Floats.unpack(floats.pack({"ref": ref}))
    back = sample(doc["ref"])
    assert list(back.settle()) == every
    back.append(3.0)
    assert back.percentile(0.5) == percentile([*every, 3.0], 0.5)


def test_a_kept_tally_cut_short_or_of_another_kind_is_refused():
    floats = Floats()
    ref = floats.put(Sample([1.0, 2.0, 3.0]))
    data = floats.pack({"ref": ref})
    doc, sample = Floats.unpack(data[:-8])
    with pytest.raises(ValueError):
        sample(doc["ref"])
    with pytest.raises(ValueError):
        Floats.unpack(b"JUNK" + data[4:])


def test_the_contract_figures():
    d = run(contract_tickets()).data
    assert d["period"] == {"from": "2026-11-01", "to": "2026-11-30", "timezone": "Asia/Shanghai", "kind": "month",
                           "label": "2026-11"}
    assert (d["tickets_new"], d["backlog_end"], d["tickets_resolved"]) == (3, 1, 2)
    assert d["by_category"] == {"fault": 2, "inquiry": 1}
    assert d["by_priority"] == {"high": 1, "normal": 1, "low": 1} and d["by_mailbox"] == {"support": 3}
    assert d["first_reply_hours"] == {"median": 5.0, "p90": 8.2, "count": 2}
    assert d["resolution_hours"] == {"median": 6.0, "p90": 10.0, "count": 2}
    assert d["sla"]["first_response"] == {"achieved": 2, "breached": 0, "pct": 100.0}
    assert d["sla"]["resolution"] == {"achieved": 2, "breached": 0, "pct": 100.0}
    assert (d["one_touch_pct"], d["reopen_rate_pct"], d["escalations"]) == (50.0, 50.0, 1)
    assert d["csat"] == {"pct": 100.0, "mean": 4.5, "ratings": 2, "response_rate_pct": 100.0,
                         "by_score": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 1}}
    assert d["previous"]["tickets_new"] == 0 and d["change"]["tickets_new"] == 3
    assert d["by_team"]["tech"]["handled"] == 2 and d["by_team"]["customer_service"]["backlog_end"] == 1
    assert d["by_agent"]["bob@support.example"]["first_reply_median"] == 5.0
    assert d["daily"][1] == {"date": "2026-11-02", "new": 1, "resolved": 1}
    assert [t["period"] for t in d["csat_trend"]] == ["2026-06", "2026-07", "2026-08", "2026-09", "2026-10", "2026-11"]
    assert d["csat_trend"][-1]["ratings"] == 2 and not d["empty"] and not d["running"]
    json.loads(render_json(run(contract_tickets())))  # one JSON object


def test_a_ticket_spanning_the_period_boundary():
    # created Fri 2026-10-30 17:00, resolved Mon 11-02 10:00: 1 h Friday + 1 h Monday
    k = Tk("CWX", at(10, 30, 17)).answer(at(11, 2, 9.5)).resolve(at(11, 2, 10))
    d = run([k]).data
    assert (d["tickets_new"], d["tickets_resolved"], d["backlog_end"]) == (0, 1, 0)
    assert d["resolution_hours"]["median"] == 2.0 and d["first_reply_hours"]["median"] == 1.5
    prev = d["previous"]
    assert (prev["tickets_new"], prev["tickets_resolved"], prev["backlog_end"]) == (1, 0, 1)
    assert prev["by_category"] == {"inquiry": 1}


def test_pending_counts_in_full_resolution_not_in_the_sla_clock():
    # high: resolution target 1 d = 9 h. Mon 09:00 created, 10:00 pending, Wed 09:00 the customer
    # answers, Wed 12:00 resolved: 21 business hours in all, the SLA clock used 1 + 3 = 4 h
    k = Tk("CWP", at(11, 2, 9), priority="high").pending(at(11, 2, 10)).customer(at(11, 4, 9)).resolve(at(11, 4, 12))
    d = run([k]).data
    assert d["resolution_hours"]["median"] == 21.0
    assert d["sla"]["resolution"] == {"achieved": 1, "breached": 0, "pct": 100.0}
    assert d["sla_by_priority"]["high"]["resolution"]["pct"] == 100.0


def test_breaches_per_clock_and_priority():
    late = Tk("CWL", at(11, 2, 9), priority="urgent").answer(at(11, 2, 11)).resolve(at(11, 2, 15))  # 2 h, 6 h
    ok = Tk("CWO", at(11, 2, 9), priority="urgent").resolve(at(11, 2, 9.5))
    d = run([late, ok]).data
    assert d["sla"]["first_response"] == {"achieved": 1, "breached": 1, "pct": 50.0}
    assert d["sla"]["resolution"] == {"achieved": 1, "breached": 1, "pct": 50.0}
    assert d["sla_by_priority"] == {"urgent": {"first_response": {"achieved": 1, "breached": 1, "pct": 50.0},
                                               "next_response": {"achieved": 0, "breached": 0, "pct": None},
                                               "resolution": {"achieved": 1, "breached": 1, "pct": 50.0}}}
    assert d["by_agent"]["bob@support.example"]["sla_pct"] == 50.0


def test_a_reopen_after_the_period_does_not_change_it():
    k = (Tk("CWR", at(11, 9, 9)).resolve(at(11, 10, 9)).reopen(at(12, 3, 9)).resolve(at(12, 4, 9)))
    later = datetime(2026, 12, 10, 9, tzinfo=SH)
    nov = run([k], now=later).data
    assert nov["tickets_resolved"] == 1 and nov["resolution_hours"]["median"] == 9.0 and nov["reopen_rate_pct"] == 0.0
    dec = run([k], period=month_period(2026, 12, "Asia/Shanghai"), now=later).data
    assert dec["running"] and dec["tickets_resolved"] == 1 and dec["reopen_rate_pct"] == 100.0
    assert dec["resolution_hours"]["median"] == 9.0 * 19  # creation -> the last resolve: Nov 9 -> Dec 4
    # and a ticket reopened before the month ended and still open is backlog, not resolved
    open_again = Tk("CWS", at(11, 9, 9)).resolve(at(11, 10, 9)).reopen(at(11, 20, 9))
    d = run([open_again], now=later).data
    assert (d["tickets_resolved"], d["backlog_end"]) == (0, 1)


def test_csat_is_the_last_rating_in_the_period_and_unrated_tickets_count_in_the_response_rate():
    rated = Tk("CW1", at(11, 2, 9)).resolve(at(11, 2, 10)).rate(at(11, 2, 11), 2)  # reopened
    rated.resolve(at(11, 3, 10)).rate(at(11, 3, 11), 5)
    unrated = Tk("CW2", at(11, 2, 9)).resolve(at(11, 2, 12))
    late = Tk("CW3", at(11, 27, 9)).resolve(at(11, 30, 10)).rate(at(12, 1, 9), 1)  # rated in December
    d = run([rated, unrated, late], now=datetime(2026, 12, 5, tzinfo=SH)).data
    assert d["csat"]["ratings"] == 1 and d["csat"]["mean"] == 5.0 and d["csat"]["pct"] == 100.0
    assert d["csat"]["response_rate_pct"] == pytest.approx(33.3)
    assert d["tickets_resolved"] == 3
    dec = run([rated, unrated, late], period=month_period(2026, 12, "Asia/Shanghai"),
              now=datetime(2026, 12, 5, tzinfo=SH)).data
    assert dec["csat"]["ratings"] == 1 and dec["csat"]["pct"] == 0.0 and dec["tickets_resolved"] == 0
    assert dec["backlog_end"] == 1  # the 1 reopened it


def test_a_time_zone_other_than_the_servers():
    ny = ZoneInfo("America/New_York")
    cfg = cfg_with(tickets={"timezone": "America/New_York"}, calendar={"country": "US"})
    assert report.timezone_of(cfg) == "America/New_York"
    # 2026-11-01 02:00 UTC is still Oct 31 in New York; 2026-12-01 03:00 UTC is still Nov 30
    early = Tk("CWE", datetime(2026, 11, 1, 2, tzinfo=UTC))
    late = Tk("CWF", datetime(2026, 12, 1, 3, tzinfo=UTC))
    nov = month_period(2026, 11, "America/New_York")
    d = run([early, late], period=nov, now=datetime(2026, 12, 2, tzinfo=ny), cfg=cfg).data
    assert d["tickets_new"] == 1 and d["daily"][-1] == {"date": "2026-11-30", "new": 1, "resolved": 0}
    assert d["previous"]["tickets_new"] == 1 and d["backlog_end"] == 2
    sh = run([early, late], now=datetime(2026, 12, 2, tzinfo=ny)).data  # the same tickets in Shanghai
    assert sh["tickets_new"] == 1 and sh["daily"][0]["new"] == 1


def test_team_filter_and_breakdowns():
    tks = contract_tickets()
    tech = run(tks, team="tech", by="category").data
    assert tech["tickets_new"] == 2 and tech["team"] == "tech" and list(tech["by_team"]) == ["tech"]
    assert tech["breakdown"]["by"] == "category" and tech["breakdown"]["rows"]["fault"]["handled"] == 2
    tags = run([Tk("CWT", at(11, 2, 9), tags=["refund", "vip"]), Tk("CWU", at(11, 2, 9), tags=["refund"])],
               by="tag").data
    assert tags["top_tags"] == [{"tag": "refund", "count": 2}, {"tag": "vip", "count": 1}]
    assert tags["breakdown"]["rows"]["refund"]["tickets_new"] == 2
    with pytest.raises(ValueError):
        run(tks, by="colour")


def test_growth_and_change_from_the_previous_period():
    oct_ = [Tk(f"CWo{i}", at(10, 12 + i, 10), category="fault") for i in range(2)]
    nov = [Tk(f"CWn{i}", at(11, 2 + i, 10), category=c) for i, c in enumerate(["fault", "complaint", "complaint"])]
    d = run(oct_ + nov).data
    assert d["categories_growth"] == [{"category": "complaint", "now": 2, "previous": 0, "change": 2,
                                       "change_pct": None}]
    assert d["change"]["tickets_new"] == 1 and d["change"]["backlog_end"] == 3


def test_merged_and_spam_tickets_are_volume_but_no_resolution():
    merged = Tk("CWM", at(11, 2, 9)).answer(at(11, 2, 10)).close(at(11, 2, 11), "merged")
    spam = Tk("CWZ", at(11, 2, 9)).close(at(11, 2, 9.2), "spam")
    d = run([merged, spam]).data
    assert (d["tickets_new"], d["tickets_resolved"], d["backlog_end"]) == (2, 0, 0)


def test_an_empty_period_says_so_in_every_format():
    m = compute([], NOV, DEC1, locale="en")
    assert m.empty and m.data["tickets_new"] == 0 and m.data["first_reply_hours"]["median"] is None
    assert "No tickets in this period." in render_text(m)
    assert "No tickets in this period." in render_html(m)
    assert render_csv(m).splitlines()[0].startswith("id,created_at,")
    assert "本期没有工单" in render_text(compute([], NOV, DEC1, locale="zh"))


def test_csv_one_row_per_ticket_customer_masked_unless_unmasked():
    m = run(contract_tickets(), rows=True)
    rows = list(csv.DictReader(io.StringIO(render_csv(m))))
    assert [r["id"] for r in rows] == ["CWA", "CWB", "CWC"]
    a = rows[0]
    assert a["customer"] == "w***@customer.example" and a["first_reply_hours"] == "1"
    assert a["created_at"] == "2026-11-02T09:00:00+08:00" and a["resolved_at"] == "2026-11-02T10:00:00+08:00"
    assert (a["sla_first_response"], a["sla_resolution"], a["rating"], a["status"]) == ("met", "met", "5", "closed")
    b, c = rows[1], rows[2]
    assert b["reopen_count"] == "1" and b["resolution_hours"] == "11" and b["rating"] == "4"
    assert c["open_at_end"] == "yes" and c["resolved_in_period"] == "no" and c["escalations"] == "1"
    assert c["sla_first_response"] == "breached"  # never answered: 9 h normal target long gone by Dec 1
    assert "wang@customer.example" in render_csv(m, unmask=True)


def test_no_customer_data_in_text_json_or_html():
    tks = contract_tickets()
    m = run(tks, locale="en")
    for out in (render_text(m), render_json(m), render_html(m)):
        assert "wang@customer.example" not in out and "customer.example" not in out
    assert "Support report 2026-11" in render_text(m)


def test_parse_period():
    now = datetime(2026, 12, 1, 1, tzinfo=UTC)  # 09:00 in Shanghai
    assert parse_period(now, "Asia/Shanghai").label == "2026-11"
    assert parse_period(datetime(2026, 11, 30, 17, tzinfo=UTC), "Asia/Shanghai").label == "2026-11"  # Dec 1 01:00
    w = parse_period(now, "Asia/Shanghai", week="2026-W48")
    assert (w.first.isoformat(), w.last.isoformat(), w.label) == ("2026-11-23", "2026-11-29", "2026-W48")
    r = parse_period(now, "Asia/Shanghai", date_from="2026-11-03", date_to="2026-11-09")
    assert r.previous().first.isoformat() == "2026-10-27" and r.label == "2026-11-03..2026-11-09"
    assert parse_period(now, "Asia/Shanghai", month="2026-12").label == "2026-12"  # running: allowed
    for kw, msg in (({"month": "2026-13"}, "not a month"), ({"month": "nov"}, "not a month"),
                    ({"month": "2027-01"}, "in the future"), ({"week": "2026-W60"}, "not an ISO week"),
                    ({"date_from": "2026-11-10", "date_to": "2026-11-01"}, "is after"),
                    ({"date_from": "2026-11-01"}, "go together"), ({"date_from": "x", "date_to": "y"}, "not a date"),
                    ({"month": "2026-11", "week": "2026-W48"}, "only one")):
        with pytest.raises(PeriodError, match=msg) as e:
            parse_period(now, "Asia/Shanghai", **kw)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------
# archived tickets: the month files, the summary cache, the newest copy, the hot copy


def _store_with(tmp_path, tks: list[Tk], archive_now: datetime) -> Store:
    st = Store(tmp_path / "data")
    with st.batch():
        for k in tks:
            st.add_ticket(dict(k.t))
        st.archive(3, now=archive_now)
    return st


def test_archived_tickets_count_like_hot_ones(tmp_path):
    cfg = cfg_with(storage={"data_dir": str(tmp_path / "data")})
    tks = contract_tickets()
    hot = report.build(None, cfg, NOV, DEC1)  # no store: nothing
    assert hot.empty
    st = _store_with(tmp_path, tks, DEC1)
    assert {t["id"] for t in st.all_tickets()} == {"CWC"}  # A and B closed on Nov 2/4: archived
    assert (tmp_path / "data" / "archive" / "2026-11.jsonl").exists()
    m = report.build(st, cfg, NOV, DEC1)
    assert m.data == run(tks, staff_names={}).data | {"generated_at": m.data["generated_at"]}
    cache = list((tmp_path / "data" / "archive" / "summaries").glob("2026-11.*.jsonl"))
    assert len(cache) == 1 and len(cache[0].read_bytes().splitlines()) == 2
    again = report.build(Store(tmp_path / "data", create=False), cfg, NOV, DEC1)  # from the cache
    assert again.data == m.data


def test_the_newest_archived_copy_and_the_hot_copy_win(tmp_path):
    cfg = cfg_with(storage={"data_dir": str(tmp_path / "data")})
    k = Tk("CWN", at(11, 2, 9)).resolve(at(11, 2, 10)).rate(at(11, 2, 11), 5)
    st = _store_with(tmp_path, [k], DEC1)
    assert report.build(st, cfg, NOV, DEC1).data["csat"]["mean"] == 5.0
    # a late reply reopens it (hot again), then it is closed and archived a second time
    with st.batch():
        t = st.unarchive("CWN")
    k.t = dict(t)
    k.customer(at(11, 16, 9)).resolve(at(11, 16, 10)).rate(at(11, 16, 11), 3)
    with st.batch():
        st.update_ticket("CWN", k.t)
    d = report.build(st, cfg, NOV, DEC1).data  # the hot copy beats the archived one
    assert d["csat"]["mean"] == 3.0 and d["tickets_new"] == 1 and d["reopen_rate_pct"] == 100.0
    with st.batch():
        st.archive(3, now=DEC1)
    assert len((tmp_path / "data" / "archive" / "2026-11.jsonl").read_bytes().splitlines()) == 2
    d = report.build(Store(tmp_path / "data", create=False), cfg, NOV, DEC1).data  # incremental cache
    assert d["csat"]["mean"] == 3.0 and d["tickets_new"] == 1 and d["tickets_resolved"] == 1


def test_a_torn_last_line_and_a_changed_policy(tmp_path):
    cfg = cfg_with(storage={"data_dir": str(tmp_path / "data")})
    k = Tk("CWQ", at(11, 2, 9), priority="high").resolve(at(11, 2, 15))  # 6 h: high's 4 h first response missed
    st = _store_with(tmp_path, [k.rate(at(11, 2, 16), 4)], DEC1)
    month = tmp_path / "data" / "archive" / "2026-11.jsonl"
    with open(month, "ab") as f:
        f.write(b'{"ticket": {"id": "CWHALF", "crea')  # the daemon is still appending
    d = report.build(st, cfg, NOV, DEC1).data
    assert d["tickets_new"] == 1 and d["sla"]["first_response"]["breached"] == 1
    relaxed = cfg_with(storage={"data_dir": str(tmp_path / "data")}, sla={"first_response_hours": {"high": 8}})
    d = report.build(st, relaxed, NOV, DEC1).data  # another policy: another cache, the old one is gone
    assert d["sla"]["first_response"]["achieved"] == 1
    assert len(list((tmp_path / "data" / "archive" / "summaries").glob("2026-11.*.jsonl"))) == 1


def test_the_response_rate_counts_a_rating_of_the_last_resolution_only():
    # rated 1 (reopened), resolved again and not rated again: that survey went unanswered
    k = Tk("CWV", at(11, 2, 9)).resolve(at(11, 2, 10)).rate(at(11, 2, 11), 1).resolve(at(11, 3, 10))
    d = run([k]).data
    assert d["tickets_resolved"] == 1 and d["csat"]["ratings"] == 1 and d["csat"]["response_rate_pct"] == 0.0


def test_the_bundled_report_templates_check_clean_and_a_broken_one_is_named(tmp_path):
    import shutil

    from mailflow import resources
    from mailflow.report_render import check_report_templates, render_mail_parts

    assert check_report_templates() == []
    tpl = tmp_path / "templates"
    shutil.copytree(resources.bundled_templates(), tpl)
    (tpl / "report" / "en" / "mail.txt.j2").write_text("{{ L.no_such_label }}\n", encoding="utf-8")
    [problem] = check_report_templates(tpl)
    assert "report/en/mail.*.j2" in problem and "no_such_label" in problem
    subject, text = render_mail_parts(run(contract_tickets(), locale="en"))
    assert subject == "Support report 2026-11" and "New tickets: 3 (previous 0, change +3)" in text
