"""Rule-evaluation benchmark: the bundled rules on a mixed Chinese/English corpus of ~2 KB mails.

Runs classify -> priority -> routing through `routing.evaluate_message` (durable-rules engine,
one Host, one engine thread) for N evaluations on one CPU core and reports messages per second
and the process RSS before and after (it must stay flat: facts are retracted after each
evaluation). The corpus is generated in-process from a fixed seed, so runs are comparable.

    python bench/bench_rules.py                 # 100,000 evaluations
    python bench/bench_rules.py -n 20000 --with-features

``--with-features`` also computes the sentiment and staff mentions for every message (what the
pipeline does before evaluating), so that figure is the whole rules step per message.
``--on-engine`` runs each message's three stages in one hand-off to the rules thread, as
`decide.Decider.evaluate` does (`rules.on_engine`); without it each stage hands off on its own.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailflow import category_guess, features, resources, routing  # noqa: E402
from mailflow.config import StaffMember  # noqa: E402
from mailflow.rules import RuleSet, on_engine  # noqa: E402

ZH = {
    "complaint": ["我要投诉你们的客服，态度非常差。", "快递一个星期还没到，太失望了。", "退款申请两周了还没到账，无法接受。",
                  "收到的商品有质量问题，要求赔偿。"],
    "fault": ["从早上开始系统瘫痪，所有用户都无法登录。", "App 一打开就闪退，报错代码 500。", "支付页面一直显示错误，付款失败。",
              "数据丢失了，昨天的订单全都不见了。"],
    "inquiry": ["请问上个月的订单可以开发票吗？", "想咨询一下年度会员的价格。", "請問保修期內的維修怎麼申請？", "諮詢：可以開立公司發票嗎？"],
    "suggestion": ["建议增加夜间模式，晚上屏幕太亮。", "希望订单列表可以导出成 Excel。", "建議優化搜索功能。"],
    "praise": ["表扬客服王芳，非常耐心，服务周到。", "非常满意，点赞！", "感谢你们的专业帮助。"],
}
EN = {
    "complaint": ["I want to file a complaint about your support agent, who was rude.", "This is unacceptable, I am very disappointed.",
                  "My refund has not arrived after two weeks.", "The parcel was damaged and the courier never called."],
    "fault": ["We have a complete outage: nobody can log in to the portal.", "The app crashes when I open the orders page.",
              "Payment fails with an error every time.", "We lost all our data after the update."],
    "inquiry": ["Hello, how much does the annual plan cost?", "Could you tell me how to get an invoice?",
                "I would like to know when my order ships."],
    "suggestion": ["It would be great if you could add a dark mode.", "Feature request: export orders to CSV."],
    "praise": ["Great job, kudos to your support team!", "Excellent service, thank you so much."],
}
FILLER_ZH = ["我的订单号是 DD20261109-5532，下单时间是上周二。", "附件是相关的截图，供参考。", "我们公司有一百多名员工在使用你们的产品。",
             "之前也联系过客服，当时说会尽快处理。", "麻烦尽快回复，谢谢。", "以下是之前的沟通记录。", "祝好。"]
FILLER_EN = ["My order number is DD20261109-5532, placed last Tuesday.", "The screenshots are attached for reference.",
             "About 120 people in our company use the product every day.", "I already contacted support once before.",
             "Please get back to me as soon as possible.", "Below is our earlier conversation.", "Best regards."]

STAFF = [
    StaffMember("tina@corp.example", "Tina", ["tech"], "lead"),
    StaffMember("tom@corp.example", "Tom", ["tech"]),
    StaffMember("wang.fang@corp.example", "王芳", ["customer_service"]),
    StaffMember("zhao@corp.example", "赵静", ["customer_service"]),
    StaffMember("sue@corp.example", "Sue", ["service_supervisor"], "lead"),
    StaffMember("sam@corp.example", "Sam", ["service_supervisor"]),
    StaffMember("pat@corp.example", "Pat", ["product"]),
]


def make_corpus(n: int, seed: int, size: int = 2048) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        zh = rnd.random() < 0.5
        lex, filler = (ZH, FILLER_ZH) if zh else (EN, FILLER_EN)
        cat = rnd.choice(list(lex))
        subject = rnd.choice(lex[cat])[:30]
        parts = [rnd.choice(lex[cat])]
        if rnd.random() < 0.3:  # mixed language mail: the same topic in the other language too
            parts.append(rnd.choice((EN if zh else ZH)[cat]))
        while len("\n".join(parts).encode()) < size:
            # neutral filler, sometimes in the other language; now and then the topic again
            pool = filler if rnd.random() < 0.85 else (FILLER_EN if zh else FILLER_ZH)
            parts.append(rnd.choice(pool) if rnd.random() < 0.95 else rnd.choice(lex[cat]))
        text = "\n".join(parts)
        out.append({
            "subject": subject, "text": text, "from": f"customer{i}@example.com", "to": ["support@corp.example"],
            "mailbox": "support", "language": "zh" if zh else "en", "has_attachments": rnd.random() < 0.2,
            "customer.tier": "vip" if rnd.random() < 0.1 else "standard",
            "customer.open_tickets": rnd.randint(0, 3), "customer.complaints_30d": rnd.randint(0, 3),
        })
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="evaluations (default 100000)")
    ap.add_argument("--corpus", type=int, default=2000, help="distinct generated messages (default 2000)")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--cpu", type=int, default=0, help="pin the process to this CPU core (default 0)")
    ap.add_argument("--with-features", action="store_true", help="also compute sentiment and mentions per message")
    ap.add_argument("--on-engine", action="store_true", help="one hand-off per message (as the daemon does)")
    ap.add_argument("--rules", type=Path, default=resources.bundled_rules())
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    corpus = make_corpus(args.corpus, args.seed)
    avg = sum(len((m["subject"] + m["text"]).encode()) for m in corpus) / len(corpus)
    for m in corpus:
        m["sentiment"] = features.sentiment(f"{m['subject']}\n{m['text']}")
        m["mentions_staff"] = bool(features.mentioned_staff(f"{m['subject']}\n{m['text']}", STAFF))
        m.update(category_guess.facts(m["subject"], m["text"]))
    rules = RuleSet.load(args.rules)
    counts = {"classify": len(rules.rule_names("classify")), "priority": len(rules.rule_names("priority")),
              "routing": len(rules.rule_names("routing"))}

    def one(m: dict, rr: dict[str, int]) -> routing.Outcome:
        mentioned: set[str] = set()
        if args.with_features:
            text = f"{m['subject']}\n{m['text']}"
            m = dict(m, sentiment=features.sentiment(text), **category_guess.facts(m["subject"], m["text"]))
            mentioned = features.mentioned_staff(text, STAFF)
            m["mentions_staff"] = bool(mentioned)
        if args.on_engine:
            return on_engine(routing.evaluate_message, rules, m, routing.TicketFields(None, "normal", None, None, []),
                             STAFF, open_counts, rr, mentioned, strategy="least_open")
        return routing.evaluate_message(rules, m, routing.TicketFields(None, "normal", None, None, []), STAFF,
                                        open_counts, rr, mentioned, strategy="least_open")

    open_counts: dict[str, int] = {}
    rr: dict[str, int] = {}
    for m in corpus[:500]:  # warm-up: regex caches, engine thread, allocator
        rr = one(m, rr).rr_state
    gc.collect()
    rss0 = rss_mb()
    cats: dict[str, int] = {}
    marks = []
    t0 = time.perf_counter()
    c0 = time.process_time()
    step = max(1, args.n // 5)
    for i in range(args.n):
        o = one(corpus[i % len(corpus)], rr)
        rr = o.rr_state
        cats[o.fields.category or "-"] = cats.get(o.fields.category or "-", 0) + 1
        if (i + 1) % step == 0:
            marks.append((i + 1, rss_mb()))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    gc.collect()
    rss1 = rss_mb()
    left = sum(len(rules._engine_facts_left(s)) for s in ("classify", "priority", "routing"))

    print(f"rules: {counts} (bundled: {args.rules})")
    print(f"corpus: {len(corpus)} messages, avg {avg:.0f} bytes subject+text, mixed zh/en, seed {args.seed}")
    print(f"mode: {'features + ' if args.with_features else ''}evaluate_message (3 stages, "
          f"{'one hand-off' if args.on_engine else 'a hand-off per stage'})")
    print(f"evaluations: {args.n} on CPU {args.cpu}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    print(f"throughput: {args.n / wall:.0f} messages/s ({wall / args.n * 1e3:.2f} ms per message)")
    print(f"RSS: {rss0:.1f} MB before, {rss1:.1f} MB after ({rss1 - rss0:+.1f} MB); "
          + ", ".join(f"{k // 1000}k: {v:.1f}" for k, v in marks))
    print(f"engine facts left after the run: {left}")
    print("categories: " + ", ".join(f"{k} {v}" for k, v in sorted(cats.items())))


if __name__ == "__main__":
    main()
