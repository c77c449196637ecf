"""A data directory that looks like a long-running install: N closed tickets, archived.

Tickets are written straight through `mailflow.store.Store` (`add_ticket`, `add_message`) inside a few
big `with store.batch():` blocks of 25,000 tickets; each block ends with `store.archive(30)`, which
is what the daemon's housekeeping does: tickets closed more than 30 days ago move, with their
messages, to `archive/YYYY-MM.jsonl` and their Message-IDs to `archive/index.jsonl`. Tickets are
created 40-400 days ago and closed 1-30 days after that (so all of them end up archived); each has
the customer's first mail, the acknowledgement, an answer, and half of them a rating reply.
The shapes follow `mailflow.pipeline.Pipeline._new_ticket` / `_add_message` and `Outbox.enqueue`.

    path = cached_closed_dir(Path("bench/out"), 100_000)   # built once (about a minute), then reused

Customer addresses come from the same pool as the corpus's (`custNNNNN@<domain>`), so the new mail
of a benchmark run shares customers with old tickets.
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

VERSION = 1  # bump when the generated shape changes: the cache key includes it
CHUNK = 25_000
TZ = ZoneInfo("Asia/Shanghai")

_CATS = [("inquiry", "customer_service", "normal"), ("complaint", "service_supervisor", "high"),
         ("fault", "tech", "urgent"), ("billing", "finance", "normal"), ("suggestion", "product", "low"),
         ("praise", "customer_service", "low")]
_SUBJ = {"zh": ["订单{n}一直没有发货", "退款两周了还没到账", "无法登录账号", "发票抬头开错了"],
         "en": ["Order {n} has not arrived", "Refund still missing", "Cannot log in", "Invoice address wrong"]}
_TEXT = {"zh": "您好，我的订单{n}一直没有收到，已经联系过客服两次了，麻烦尽快帮我查一下是什么原因，谢谢。",
         "en": "Hello, my order {n} has still not arrived and I have contacted support twice already. "
               "Could you please look into it as soon as possible? Thanks."}
_ANSWER = {"zh": "您好，您的问题已经处理完毕：包裹已重新发出，预计三天内送达。如有其他问题请直接回复本邮件。",
           "en": "Hello, we have resolved your request: the parcel was sent again and should arrive within "
                 "three days. Reply to this mail if anything else comes up."}


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds")


def _ticket_and_messages(rng: random.Random, serials: dict[str, int], now: datetime, k: int):
    created = now - timedelta(days=rng.uniform(40, 400))
    closed = created + timedelta(days=rng.uniform(1, 30))
    closed = min(closed, now - timedelta(days=31))
    first_resp = created + timedelta(hours=rng.uniform(0.2, 20))
    resolved = max(first_resp, closed - timedelta(hours=rng.uniform(1, 48)))
    day = created.astimezone(TZ).strftime("%Y%m%d")
    serials[day] = serials.get(day, 0) + 1
    tid = f"CW{day}{serials[day]:04d}"
    lang = "zh" if rng.random() < 0.55 else "en"
    cat, team, prio = rng.choice(_CATS)
    cust = f"cust{rng.randrange(100_000):05d}@{rng.choice(['customer.example', 'mail.example.cn', 'qq.example'])}"
    subject = rng.choice(_SUBJ[lang]).replace("{n}", str(k))
    hours = {"urgent": (1, 4), "high": (4, 24), "normal": (24, 72), "low": (48, 336)}[prio]
    rating = rng.choice([None, 3, 4, 5, 5])
    ticket = {
        "id": tid, "status": "closed", "category": cat, "priority": prio, "team": team,
        "assignee": f"agent{rng.randrange(12)}@support.example", "tags": [cat],
        "customer_email": cust, "customer_name": "", "subject": subject, "locale": lang, "mailbox": "support",
        "created_at": _iso(created), "updated_at": _iso(closed), "first_response_at": _iso(first_resp),
        "resolved_at": _iso(resolved), "closed_at": _iso(closed), "participants": [],
        "sla": {"first_response_due": _iso(created + timedelta(hours=hours[0])),
                "resolution_due": _iso(created + timedelta(hours=hours[1])),
                "first_response_hours": float(hours[0]), "resolution_hours": float(hours[1])},
        "rules_fired": [["classify", f"category-{cat}"], ["priority", f"priority-{prio}"]],
        "events": [{"at": _iso(created), "kind": "created", "detail": "from mailbox support"},
                   {"at": _iso(created), "kind": "rules", "detail": f"classify/category-{cat}"},
                   {"at": _iso(resolved), "kind": "resolved", "detail": "by agent"},
                   {"at": _iso(closed), "kind": "rated" if rating else "closed",
                    "detail": f"satisfaction {rating}/5; closed" if rating else "closed after 7 days"}],
        "rating": rating, "reopen_count": 0, "auto_sent": 2,
        "failing_addresses": [], "mentioned_staff": [],
    }
    text = _TEXT[lang].replace("{n}", str(k))

    def msg(i: int, direction: str, kind: str, at: datetime, body: str, frm: str, to: list[str]) -> dict:
        return {"ticket_id": tid, "message_id": f"old{k}.{i}.{tid.lower()}@{frm.split('@')[1]}",
                "hash": f"{rng.getrandbits(64):016x}" if direction == "in" else "", "direction": direction,
                "kind": kind, "from": frm, "from_name": "", "to": to, "cc": [], "subject": subject,
                "date": _iso(at), "received_at": _iso(at), "text": body, "language": lang,
                "spool": f"{at:%Y/%m/%d}/{k}-{i}.eml" if direction == "in" else None, "mailbox": "support",
                "uid": k * 4 + i if direction == "in" else None, "attachments": []}

    sup = "support@support.example"
    msgs = [msg(0, "in", "customer", created, text, cust, [sup]),
            msg(1, "out", "ack", created, f"[{tid}] ack", sup, [cust]),
            msg(2, "out", "resolved", resolved, _ANSWER[lang], sup, [cust])]
    if rating:
        msgs.append(msg(3, "in", "customer", closed, str(rating), cust, [sup]))
    return ticket, msgs


def make_closed(data_dir: Path, count: int, seed: int = 7, now: datetime | None = None,
                log=print) -> dict:
    """Write `count` closed tickets into a fresh data dir, archived as a 30-day housekeeping would."""
    from mailflow.store import Store

    now = now or datetime.now(UTC)
    rng = random.Random(seed)
    store = Store(data_dir)
    serials: dict[str, int] = {}
    archived = messages = 0
    t0 = time.perf_counter()
    for start in range(0, count, CHUNK):
        with store.batch():
            for k in range(start, min(count, start + CHUNK)):
                t, msgs = _ticket_and_messages(rng, serials, now, k)
                store.add_ticket(t)
                for m in msgs:
                    store.add_message(m)
                messages += len(msgs)
            archived += store.archive(30, now=now)
        log(f"  closed tickets: {min(count, start + CHUNK)}/{count} written, {archived} archived "
            f"({time.perf_counter() - t0:.0f} s)")
    with store.batch():  # the daily serials a real install would have in its meta table
        for day, n in serials.items():
            store.set_meta(f"serial:CW:{day}", n)
    return {"tickets": count, "messages": messages, "archived": archived, "seconds": time.perf_counter() - t0}


def cached_closed_dir(out: Path, count: int, log=print) -> Path:
    """bench/out/closed-<count>-v<VERSION>/data, built on first use (a `.done` marker guards it)."""
    base = out / f"closed-{count}-v{VERSION}"
    data = base / "data"
    if (base / ".done").exists():
        return data
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log(f"building {count} closed tickets in {data} (once; cached for later runs)")
    info = make_closed(data, count, log=log)
    (base / ".done").write_text(f"{info}\n")
    return data


def copy_data_dir(src: Path, dst: Path) -> None:
    """A private copy for one run (the run writes into it)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(cached_closed_dir(Path(__file__).resolve().parent / "out", n))
