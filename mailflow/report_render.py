"""One `Metrics`, four renderers: text (the terminal), JSON (tools), CSV (spreadsheets, one row per
ticket), HTML (one self-contained page with inline SVG charts, from `templates/report/`).

The same numbers reach every format: renderers only read `Metrics.data` and `Metrics.rows`. Labels
are in the report's locale (zh, zh-Hant, en); the HTML shows the other language's label beside each
chart title. No renderer shows a customer address or message text; the CSV carries the customer's
address masked (``w***@customer.example``) unless `unmask` is given. Agent names are shown.

The HTML page comes from ``<templates dir>/report/html/report.html.j2`` and its chart macros
(``_charts.html.j2``), falling back file by file to the bundled templates (a templates directory made
by an older ``mailflow init`` has no ``report/``). It renders in the same sandbox and under the same
budget as every mail template (`mailflow.sandbox`), autoescaped; it references nothing outside the
file (no script, no font, no image), so it opens offline and prints on A4.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, select_autoescape

from mailflow import resources
from mailflow.cliutil import Column, format_table
from mailflow.privacy import mask
from mailflow.render import CATEGORY_LABELS, PRIORITY_LABELS, _bytecode_cache
from mailflow.report_metrics import CLOCKS, NONE, Metrics
from mailflow.sandbox import BudgetedEnvironment

HTML_TEMPLATE = "report/html/report.html.j2"
MAIL_TEMPLATE = "report/{locale}/mail.{part}.j2"
HTML_ROWS = 60  # team/agent/breakdown rows in the HTML page (JSON and CSV have all of them)

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Support report", "period": "Period", "timezone": "time zone", "generated": "Generated",
        "team": "Team", "figure": "Figure", "this": "This period", "previous": "Previous", "change": "Change",
        "tickets_new": "New tickets", "tickets_resolved": "Tickets resolved", "backlog_end": "Backlog at period end",
        "first_reply_median": "First reply, median", "first_reply_p90": "First reply, 90th percentile",
        "resolution_median": "Full resolution, median", "resolution_p90": "Full resolution, 90th percentile",
        "sla_first_response": "SLA first response", "sla_next_response": "SLA next response",
        "sla_resolution": "SLA resolution", "one_touch": "One-touch resolution", "reopen_rate": "Reopen rate",
        "escalations": "Escalations", "csat_pct": "CSAT (ratings 4-5)", "csat_mean": "Mean rating",
        "ratings": "Ratings", "response_rate": "Survey response rate",
        "by_category": "By category", "by_priority": "By priority", "by_mailbox": "By mailbox",
        "by_language": "By language", "daily": "Daily volume", "categories": "Categories",
        "sla_by_priority": "SLA attainment by priority", "csat_trend": "CSAT over the last 6 periods",
        "distribution": "First reply time distribution", "top_tags": "Top tags",
        "growth": "Categories that grew most", "by_team": "By team", "by_agent": "By agent",
        "by_tag": "By tag", "category": "Category", "priority": "Priority", "mailbox": "Mailbox",
        "language": "Language", "date": "Date", "new": "New", "resolved": "Resolved", "handled": "Handled",
        "backlog": "Backlog", "fr_median": "First reply median", "rs_median": "Resolution median",
        "sla_pct": "SLA met", "clock": "Clock", "achieved": "Met", "breached": "Breached", "pct": "Attainment",
        "period_col": "Period", "bucket": "Business hours", "count": "Tickets", "tag": "Tag", "agent": "Agent",
        "now": "Now", "before": "Before", "first_response": "First response", "next_response": "Next response",
        "resolution": "Resolution", "hours": "h", "no_tickets": "No tickets in this period.",
        "running": "The period is still running: figures up to {now}.", "none": "(none)",
        "more": "… and {n} more (see the JSON or CSV export)",
        "hours_note": "Times are business hours of each ticket's calendar; a ticket counts in the response "
                      "and resolution figures of the period it was resolved in. Change: this period minus the "
                      "previous one.",
    },
    "zh": {
        "title": "客服报告", "period": "统计周期", "timezone": "时区", "generated": "生成时间", "team": "团队",
        "figure": "指标", "this": "本期", "previous": "上期", "change": "变化",
        "tickets_new": "新工单", "tickets_resolved": "已解决工单", "backlog_end": "期末积压",
        "first_reply_median": "首次回复时间中位数", "first_reply_p90": "首次回复时间 P90",
        "resolution_median": "完全解决时间中位数", "resolution_p90": "完全解决时间 P90",
        "sla_first_response": "SLA 首次响应达成率", "sla_next_response": "SLA 后续响应达成率",
        "sla_resolution": "SLA 解决达成率", "one_touch": "一次解决率", "reopen_rate": "重开率",
        "escalations": "升级次数", "csat_pct": "满意度（4-5 分占比）", "csat_mean": "平均评分",
        "ratings": "评价数", "response_rate": "调查回复率",
        "by_category": "按分类", "by_priority": "按优先级", "by_mailbox": "按邮箱", "by_language": "按语言",
        "daily": "每日工单量", "categories": "工单分类", "sla_by_priority": "各优先级 SLA 达成率",
        "csat_trend": "近 6 期满意度", "distribution": "首次回复时间分布", "top_tags": "热门标签",
        "growth": "增长最多的分类", "by_team": "按团队", "by_agent": "按坐席", "by_tag": "按标签",
        "category": "分类", "priority": "优先级", "mailbox": "邮箱", "language": "语言", "date": "日期",
        "new": "新建", "resolved": "已解决", "handled": "处理量", "backlog": "积压",
        "fr_median": "首次回复中位数", "rs_median": "解决时间中位数", "sla_pct": "SLA 达成率", "clock": "时限",
        "achieved": "达成", "breached": "超时", "pct": "达成率", "period_col": "周期", "bucket": "工作小时",
        "count": "工单数", "tag": "标签", "agent": "坐席", "now": "本期", "before": "上期",
        "first_response": "首次响应", "next_response": "后续响应", "resolution": "解决", "hours": "小时",
        "no_tickets": "本期没有工单。", "running": "本期尚未结束，数据截至 {now}。", "none": "（无）",
        "more": "……另有 {n} 项（见 JSON 或 CSV 导出）",
        "hours_note": "时间均为各工单日历的工作小时；工单计入其解决所在周期的响应与解决指标。变化 = 本期 − 上期。",
    },
    "zh-Hant": {
        "title": "客服報告", "period": "統計週期", "timezone": "時區", "generated": "產生時間", "team": "團隊",
        "figure": "指標", "this": "本期", "previous": "上期", "change": "變化",
        "tickets_new": "新工單", "tickets_resolved": "已解決工單", "backlog_end": "期末積壓",
        "first_reply_median": "首次回覆時間中位數", "first_reply_p90": "首次回覆時間 P90",
        "resolution_median": "完全解決時間中位數", "resolution_p90": "完全解決時間 P90",
        "sla_first_response": "SLA 首次回應達成率", "sla_next_response": "SLA 後續回應達成率",
        "sla_resolution": "SLA 解決達成率", "one_touch": "一次解決率", "reopen_rate": "重開率",
        "escalations": "升級次數", "csat_pct": "滿意度（4-5 分佔比）", "csat_mean": "平均評分",
        "ratings": "評價數", "response_rate": "調查回覆率",
        "by_category": "按分類", "by_priority": "按優先級", "by_mailbox": "按郵箱", "by_language": "按語言",
        "daily": "每日工單量", "categories": "工單分類", "sla_by_priority": "各優先級 SLA 達成率",
        "csat_trend": "近 6 期滿意度", "distribution": "首次回覆時間分佈", "top_tags": "熱門標籤",
        "growth": "增長最多的分類", "by_team": "按團隊", "by_agent": "按客服人員", "by_tag": "按標籤",
        "category": "分類", "priority": "優先級", "mailbox": "郵箱", "language": "語言", "date": "日期",
        "new": "新建", "resolved": "已解決", "handled": "處理量", "backlog": "積壓",
        "fr_median": "首次回覆中位數", "rs_median": "解決時間中位數", "sla_pct": "SLA 達成率", "clock": "時限",
        "achieved": "達成", "breached": "逾時", "pct": "達成率", "period_col": "週期", "bucket": "工作小時",
        "count": "工單數", "tag": "標籤", "agent": "客服人員", "now": "本期", "before": "上期",
        "first_response": "首次回應", "next_response": "後續回應", "resolution": "解決", "hours": "小時",
        "no_tickets": "本期沒有工單。", "running": "本期尚未結束，資料截至 {now}。", "none": "（無）",
        "more": "……另有 {n} 項（見 JSON 或 CSV 匯出）",
        "hours_note": "時間均為各工單日曆的工作小時；工單計入其解決所在週期的回應與解決指標。變化 = 本期 − 上期。",
    },
}
LANGUAGE_NAMES = {"en": {"zh": "Chinese (simplified)", "zh-Hant": "Chinese (traditional)", "en": "English"},
                  "zh": {"zh": "简体中文", "zh-Hant": "繁体中文", "en": "英文"},
                  "zh-Hant": {"zh": "簡體中文", "zh-Hant": "繁體中文", "en": "英文"}}
HTML_LANG = {"zh": "zh-CN", "zh-Hant": "zh-TW", "en": "en"}


def locale_of(locale: str | None) -> str:
    return locale if locale in LABELS else "en"


def labels(locale: str) -> dict[str, str]:
    return LABELS[locale_of(locale)]


def other_locale(locale: str) -> str:
    """The second language shown beside chart titles: English for Chinese reports, Chinese otherwise."""
    return "en" if locale_of(locale) != "en" else "zh"


def category_label(cat: str, locale: str) -> str:
    return CATEGORY_LABELS.get(locale_of(locale), CATEGORY_LABELS["en"]).get(cat, cat)


def priority_label(prio: str, locale: str) -> str:
    return PRIORITY_LABELS.get(locale_of(locale), PRIORITY_LABELS["en"]).get(prio, prio)


def language_label(lang: str, locale: str) -> str:
    return LANGUAGE_NAMES[locale_of(locale)].get(lang, lang)


# ---------------------------------------------------------------------------------------------------
# value formatting (the same in text, HTML and the mail summary)


def fmt_num(v: Any) -> str:
    if v is None:
        return NONE
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.2f}".rstrip("0").rstrip(".")
    return str(v)


def fmt_pct(v: Any) -> str:
    return NONE if v is None else f"{v:.1f}%"


def fmt_hours(v: Any, locale: str = "en") -> str:
    return NONE if v is None else f"{fmt_num(float(v))} {labels(locale)['hours']}"


def fmt_delta(v: Any, unit: str = "") -> str:
    if v is None:
        return NONE
    s = fmt_num(abs(v) if isinstance(v, int) else round(abs(float(v)), 2))
    sign = "+" if v > 0 else ("−" if v < 0 else "±")
    return f"{sign}{s}{unit}"


# ---------------------------------------------------------------------------------------------------
# the headline figures, shared by text, HTML and the mail summary


def headline(m: Metrics) -> list[dict]:
    """[{key, label, now, previous, change, kind}] of the report's headline figures."""
    d, p, c = m.data, m.data["previous"], m.data["change"]
    rows = [
        ("tickets_new", d["tickets_new"], p["tickets_new"], c["tickets_new"], "count"),
        ("tickets_resolved", d["tickets_resolved"], p["tickets_resolved"], c["tickets_resolved"], "count"),
        ("backlog_end", d["backlog_end"], p["backlog_end"], c["backlog_end"], "count"),
        ("first_reply_median", d["first_reply_hours"]["median"], p["first_reply_hours"]["median"],
         c["first_reply_hours"]["median"], "hours"),
        ("first_reply_p90", d["first_reply_hours"]["p90"], p["first_reply_hours"]["p90"],
         c["first_reply_hours"]["p90"], "hours"),
        ("resolution_median", d["resolution_hours"]["median"], p["resolution_hours"]["median"],
         c["resolution_hours"]["median"], "hours"),
        ("resolution_p90", d["resolution_hours"]["p90"], p["resolution_hours"]["p90"],
         c["resolution_hours"]["p90"], "hours"),
        *((f"sla_{k}", d["sla"][k]["pct"], p["sla"][k]["pct"], c["sla"][k]["pct"], "pct") for k in CLOCKS),
        ("one_touch", d["one_touch_pct"], p["one_touch_pct"], c["one_touch_pct"], "pct"),
        ("reopen_rate", d["reopen_rate_pct"], p["reopen_rate_pct"], c["reopen_rate_pct"], "pct"),
        ("escalations", d["escalations"], p["escalations"], c["escalations"], "count"),
        ("csat_pct", d["csat"]["pct"], p["csat"]["pct"], c["csat"]["pct"], "pct"),
        ("csat_mean", d["csat"]["mean"], p["csat"]["mean"], c["csat"]["mean"], "count"),
        ("ratings", d["csat"]["ratings"], p["csat"]["ratings"], c["csat"]["ratings"], "count"),
        ("response_rate", d["csat"]["response_rate_pct"], p["csat"]["response_rate_pct"],
         c["csat"]["response_rate_pct"], "pct"),
    ]
    L = labels(m.locale)
    return [{"key": k, "label": L[k], "now": a, "previous": b, "change": ch, "kind": kind}
            for k, a, b, ch, kind in rows]


def fmt_kind(v: Any, kind: str, locale: str) -> str:
    return fmt_pct(v) if kind == "pct" else fmt_hours(v, locale) if kind == "hours" else fmt_num(v)


def fmt_change(v: Any, kind: str, locale: str) -> str:
    unit = " pp" if kind == "pct" else (f" {labels(locale)['hours']}" if kind == "hours" else "")
    return fmt_delta(v, unit if v else "")


def title(m: Metrics) -> str:
    L = labels(m.locale)
    p = m.period
    team = f" · {L['team']} {m.team}" if m.team else ""
    return f"{m.company + ' ' if m.company else ''}{L['title']} {p.label}{team}"


def subtitle(m: Metrics) -> str:
    p = m.period
    return f"{p.first.isoformat()} – {p.last.isoformat()} ({p.timezone})"


def _agent_name(m: Metrics, key: str, row: dict | None = None) -> str:
    if key == NONE:
        return labels(m.locale)["none"]
    return (row or {}).get("name") or m.staff_names.get(key, key)


def _key_label(m: Metrics, dim: str, key: str) -> str:
    if key == NONE:
        return labels(m.locale)["none"]
    if dim == "category":
        return category_label(key, m.locale)
    if dim == "priority":
        return priority_label(key, m.locale)
    if dim == "language":
        return language_label(key, m.locale)
    return key


# ---------------------------------------------------------------------------------------------------
# text


def render_text(m: Metrics, width: int | None = None) -> str:
    """The report for a terminal or a text mail: headline figures with the previous period and the
    change, then the breakdowns, as aligned tables (CJK characters count two columns)."""
    L, loc, d = labels(m.locale), m.locale, m.data
    out = [title(m), subtitle(m)]
    if d.get("running"):
        out.append(L["running"].format(now=_local_time(d["generated_at"], m.period.timezone)))
    if m.empty:
        out += ["", L["no_tickets"]]
        return "\n".join(out) + "\n"

    def table(heading: str, rows: list, cols: list[Column]) -> None:
        if not rows:
            return
        out.extend(["", heading] if heading else [""])
        out.extend(format_table(rows, cols, width=width))

    num = "number"
    table("", [[h["label"], fmt_kind(h["now"], h["kind"], loc), fmt_kind(h["previous"], h["kind"], loc),
                         fmt_change(h["change"], h["kind"], loc)] for h in headline(m)],
          [Column("0", L["figure"]), Column("1", L["this"], num), Column("2", L["previous"], num),
           Column("3", L["change"], num)])
    for key, dim in (("by_category", "category"), ("by_priority", "priority"), ("by_mailbox", "mailbox"),
                     ("by_language", "language")):
        now, before = d[key], d["previous"][key]
        keys = list(dict.fromkeys([*now, *before]))
        table(L[key], [[_key_label(m, dim, k), now.get(k, 0), before.get(k, 0),
                        fmt_delta(now.get(k, 0) - before.get(k, 0))] for k in keys],
              [Column("0", L[dim]), Column("1", L["this"], num), Column("2", L["previous"], num),
               Column("3", L["change"], num)])
    table(L["sla_by_priority"], [[priority_label(p, loc), *(fmt_pct(v[c]["pct"]) for c in CLOCKS)]
                                 for p, v in d["sla_by_priority"].items()],
          [Column("0", L["priority"]), *(Column(str(i + 1), L[c], num) for i, c in enumerate(CLOCKS))])
    table(L["csat_trend"], [[t["period"], fmt_pct(t["pct"]), fmt_num(t["mean"]), t["ratings"]]
                            for t in d["csat_trend"]],
          [Column("0", L["period_col"]), Column("1", L["csat_pct"], num), Column("2", L["csat_mean"], num),
           Column("3", L["ratings"], num)])
    table(L["distribution"], [[b["label"], b["count"]] for b in d["first_reply_distribution"]],
          [Column("0", L["bucket"]), Column("1", L["count"], num)])
    table(L["top_tags"], [[t["tag"], t["count"]] for t in d["top_tags"]],
          [Column("0", L["tag"]), Column("1", L["count"], num)])
    table(L["growth"], [[category_label(g["category"], loc), g["previous"], g["now"], fmt_delta(g["change"])]
                        for g in d["categories_growth"]],
          [Column("0", L["category"]), Column("1", L["before"], num), Column("2", L["now"], num),
           Column("3", L["change"], num)])
    table(L["by_team"], _group_rows(m, "team", d["by_team"]), _group_cols(L, L["team"]))
    table(L["by_agent"], _group_rows(m, "agent", d["by_agent"]), _group_cols(L, L["agent"]))
    if d.get("breakdown") and d["breakdown"]["by"] not in ("team", "agent"):
        dim = d["breakdown"]["by"]
        table(L.get(f"by_{dim}", dim), _group_rows(m, dim, d["breakdown"]["rows"]), _group_cols(L, L[dim]))
    out += ["", L["hours_note"]]
    return "\n".join(out) + "\n"


def _group_cols(L: dict, first: str) -> list[Column]:
    num = "number"
    return [Column("0", first, shrink=True), Column("1", L["new"], num), Column("2", L["handled"], num),
            Column("3", L["backlog"], num), Column("4", L["fr_median"], num), Column("5", L["rs_median"], num),
            Column("6", L["sla_pct"], num), Column("7", L["csat_pct"], num), Column("8", L["ratings"], num)]


def _group_rows(m: Metrics, dim: str, rows: dict, limit: int | None = None) -> list[list]:
    out = []
    for k, g in list(rows.items())[:limit]:
        name = _agent_name(m, k, g) if dim == "agent" else _key_label(m, dim, k)
        out.append([name, g["tickets_new"], g["handled"], g["backlog_end"], fmt_hours(g["first_reply_median"], m.locale),
                    fmt_hours(g["resolution_median"], m.locale), fmt_pct(g["sla_pct"]), fmt_pct(g["csat_pct"]),
                    g["ratings"]])
    return out


def _local_time(value: str | int | None, timezone: str) -> str:
    if value is None or value == "":
        return ""
    d = datetime.fromtimestamp(value, UTC) if isinstance(value, int) else datetime.fromisoformat(value)
    return d.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------------------------------------------
# JSON and CSV


def render_json(m: Metrics) -> str:
    """One JSON object (the fixed keys of the README's contract, and more)."""
    return json.dumps(m.data, ensure_ascii=False, indent=2) + "\n"


CSV_COLUMNS = ("id", "created_at", "first_reply_at", "resolved_at", "closed_at", "status", "close_reason",
               "category", "priority", "team", "assignee", "mailbox", "language", "tags", "customer",
               "first_reply_hours", "resolution_hours", "sla_first_response", "sla_next_response",
               "sla_resolution", "rating", "rated_at", "reopen_count", "escalations", "created_in_period",
               "resolved_in_period", "rated_in_period", "open_at_end")


def render_csv(m: Metrics, unmask: bool = False) -> str:
    """One row per ticket of the period (created, resolved or rated in it, escalated in it or open at
    its end); times in the report's time zone (ISO 8601 with offset), business hours, yes/no flags;
    the customer's address masked unless `unmask`."""
    tz = ZoneInfo(m.period.timezone)

    def when(ts: int | None) -> str:
        return datetime.fromtimestamp(ts, UTC).astimezone(tz).isoformat(timespec="seconds") if ts else ""

    def yn(v: bool) -> str:
        return "yes" if v else "no"

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for r in m.rows:
        cust = r["customer"]
        w.writerow([
            r["id"], when(r["created"]), when(r["first_reply_at"]), when(r["resolved_at"]), when(r["closed_at"]),
            r["status"] or "", r["close_reason"] or "", r["category"] or "", r["priority"] or "",
            r["team"] or "", r["assignee"] or "", r["mailbox"] or "", r["language"] or "", ";".join(r["tags"]),
            cust if unmask else (mask(cust) if cust else ""),
            "" if r["first_reply_hours"] is None else fmt_num(r["first_reply_hours"]),
            "" if r["resolution_hours"] is None else fmt_num(r["resolution_hours"]),
            r["sla"]["first_response"], r["sla"]["next_response"], r["sla"]["resolution"],
            "" if r["rating"] is None else r["rating"], when(r["rated_at"]), r["reopen_count"], r["escalations"],
            yn(r["created_in_period"]), yn(r["resolved_in_period"]), yn(r["rated_in_period"]), yn(r["open_at_end"]),
        ])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# HTML


def _env(templates_dir: Path | None) -> BudgetedEnvironment:
    dirs = [str(p) for p in (templates_dir, resources.bundled_templates()) if p is not None]
    env = BudgetedEnvironment(
        bytecode_cache=_bytecode_cache("report-templates", ("render.py", "sandbox.py", "report_render.py")),
        loader=ChoiceLoader([FileSystemLoader(d) for d in dict.fromkeys(dirs)]),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2", "htm.j2"), default_for_string=False,
                                     default=False),
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, auto_reload=False,
    )
    # functions, not filters: `mailflow check` compiles these files in the mail templates' environment,
    # where an unknown filter is a syntax error (an unknown name is only looked up when rendering)
    env.globals.update(num=fmt_num, pct=fmt_pct, delta=fmt_delta, nice_max=nice_max)
    env.globals["palette"] = PALETTE
    return env


PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#64748b")


def nice_max(v: float | None, steps: int = 4) -> float:
    """A round axis maximum >= v: `steps` steps of 1, 2 or 5 times a power of ten, at least 1 each
    (the charts count tickets: the ticks stay whole numbers)."""
    if not v or v <= 0:
        return steps
    x = v / steps
    exp = 10 ** max(0, math.floor(math.log10(x)))
    for f in (1, 2, 5, 10):
        if x <= f * exp:
            return steps * f * exp
    return steps * 10 * exp


def context(m: Metrics) -> dict:
    """What the report templates see (HTML page and mail text): the figures and their labels."""
    loc = locale_of(m.locale)
    d = m.data
    L = labels(loc)
    rows_of = {"team": d["by_team"], "agent": d["by_agent"]}
    groups: dict[str, dict | None] = {
        dim: {"rows": _group_rows(m, dim, rows, HTML_ROWS), "more": max(0, len(rows) - HTML_ROWS)}
        for dim, rows in rows_of.items()}
    groups["breakdown"] = None
    if d.get("breakdown") and d["breakdown"]["by"] not in rows_of:
        dim, rows = d["breakdown"]["by"], d["breakdown"]["rows"]
        groups["breakdown"] = {"rows": _group_rows(m, dim, rows, HTML_ROWS), "more": max(0, len(rows) - HTML_ROWS),
                               "title": L.get(f"by_{dim}", dim), "first": L[dim]}
    counts = {}
    for key, dim in (("by_category", "category"), ("by_priority", "priority"), ("by_mailbox", "mailbox"),
                     ("by_language", "language")):
        now, before = d[key], d["previous"][key]
        counts[key] = [{"key": k, "label": _key_label(m, dim, k), "now": now.get(k, 0), "previous": before.get(k, 0),
                        "change": now.get(k, 0) - before.get(k, 0)} for k in dict.fromkeys([*now, *before])]
    return {
        "company": {"name": m.company},
        "report": d, "L": L, "L2": labels(other_locale(loc)), "lang": HTML_LANG.get(loc, "en"),
        "title": title(m), "subtitle": subtitle(m), "team": m.team,
        "running": L["running"].format(now=_local_time(d["generated_at"], m.period.timezone)) if d.get("running") else "",
        "generated": _local_time(d["generated_at"], m.period.timezone),
        "headline": [dict(h, now_text=fmt_kind(h["now"], h["kind"], loc),
                          previous_text=fmt_kind(h["previous"], h["kind"], loc),
                          change_text=fmt_change(h["change"], h["kind"], loc)) for h in headline(m)],
        "counts": counts,
        "daily": [{"label": x["date"][5:], "date": x["date"], "value": x["new"], "resolved": x["resolved"]}
                  for x in d["daily"]],
        "categories": [{"label": c["label"], "value": c["now"], "previous": c["previous"]}
                       for c in counts["by_category"] if c["now"] or c["previous"]],
        "sla_prio": [{"label": priority_label(p, loc) if p != NONE else L["none"],
                      "values": [v[c]["pct"] for c in CLOCKS], "cells": [v[c] for c in CLOCKS]}
                     for p, v in d["sla_by_priority"].items()],
        "clocks": [L[c] for c in CLOCKS],
        "trend": [{"label": t["period"], "value": t["pct"], "mean": t["mean"], "ratings": t["ratings"]}
                  for t in d["csat_trend"]],
        "distribution": [{"label": b["label"], "value": b["count"]} for b in d["first_reply_distribution"]],
        "growth": [dict(g, label=category_label(g["category"], loc)) for g in d["categories_growth"]],
        "groups": groups, "empty": m.empty,
    }


def render_html(m: Metrics, templates_dir: Path | None = None) -> str:
    """One self-contained HTML page (inline CSS and SVG, nothing fetched from anywhere)."""
    env = _env(templates_dir)
    t = env.get_template(HTML_TEMPLATE)
    with env.budget():
        return env.render_capped(t, context(m))


def render_mail_parts(m: Metrics, templates_dir: Path | None = None) -> tuple[str, str]:
    """(subject, text) of the report mail from ``report/<locale>/mail.subject.j2`` and ``mail.txt.j2``."""
    env = _env(templates_dir)
    ctx = context(m)
    loc = locale_of(m.locale)
    parts = []
    with env.budget():
        for part in ("subject", "txt"):
            t = env.get_template(MAIL_TEMPLATE.format(locale=loc, part=part))
            parts.append(env.render_capped(t, ctx))
    subject = " ".join(parts[0].split())
    return subject, parts[1]


def check_report_templates(templates_dir: Path | None = None) -> list[str]:
    """`file:line: reason` for every report template that does not render a sample report (for
    `mailflow check`); [] when they all do."""
    from mailflow.report_metrics import compute, month_period

    problems = []
    now = datetime(2026, 12, 1, 9, tzinfo=UTC)
    for loc in LABELS:
        m = compute([], month_period(2026, 11, "Asia/Shanghai"), now, locale=loc, company="Example Co.")
        for what, fn in (("html", lambda m=m: render_html(m, templates_dir)),
                         ("mail", lambda m=m: render_mail_parts(m, templates_dir))):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - any failure in a template is a template problem
                name = HTML_TEMPLATE if what == "html" else MAIL_TEMPLATE.format(locale=loc, part="*")
                line = getattr(e, "lineno", 0) or 0
                problems.append(f"{Path(templates_dir or resources.bundled_templates()) / name}:{line}: "
                                f"{type(e).__name__}: {e}")
    return sorted(set(problems))
