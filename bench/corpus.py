"""Deterministic benchmark corpus: support mail as Chinese and English customers really send it.

    from bench.corpus import build, generate
    raws = generate(1000, seed=1)          # list[bytes], the same bytes for the same (n, seed)
    mails = build(1000, seed=1)            # the same, with what each message is (kind, sender, ...)

Mix (exact counts, positions drawn from `seed`):
- about 20% replies: the same sender as an earlier corpus message, In-Reply-To/References naming
  that message (a third of them answer an earlier reply in the same thread), subject "Re: ..." or
  "回复: ...", new text above a quoted original;
- 2% auto-replies (out-of-office, `Auto-Submitted: auto-replied`) and 1% bounces (a
  multipart/report DSN from MAILER-DAEMON with `Return-Path: <>`), at least one of each from n = 20;
- the rest new requests: English, simplified Chinese (utf-8, gb2312, gbk) and traditional Chinese
  (big5, utf-8); text/plain, HTML-only, multipart/alternative, or multipart/mixed with a small
  attachment (1-6 KB); bodies quoted-printable, base64 or 8bit; headers as RFC 2047 encoded-words
  in the body's charset.

Every message has a unique Message-ID, a fixed Date and CRLF line ends. Expected tickets for a corpus:
`counts(mails)["new"]` (auto-replies, bounces and replies never open one).

CLI: `python -m bench.corpus --n 1000 --seed 1 --out DIR` writes DIR/00001.eml ... and prints the mix.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import quopri
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

SUPPORT = "support@support.example"
REPLY_SHARE, AUTO_SHARE, BOUNCE_SHARE = 0.20, 0.02, 0.01
EPOCH = datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC)

# ---- phrase banks (simplified phrases are all in GB2312, traditional ones all in Big5) ----------

ZH_SUBJECTS = [
    "订单{n}一直没有发货", "退款两周了还没到账", "无法登录账号，提示密码错误", "发票抬头开错了，请重新开具",
    "投诉：客服态度很差", "建议增加夜间模式", "感谢你们的耐心帮助", "App闪退，无法下单", "会员续费扣款两次",
    "收到的商品有破损", "请问如何修改收货地址", "优惠券无法使用", "物流信息一直不更新", "系统升级后数据丢失",
    "咨询企业版的价格", "紧急：支付页面打不开", "申请退货，订单号{n}", "账户被锁定了怎么办",
]
ZH_SENTENCES = [
    "您好，我在上周五下了订单{n}，到现在还没有收到任何发货通知。",
    "我已经联系过两次客服了，每次都说会尽快处理，但是一直没有结果。",
    "请帮忙查一下具体是什么原因，谢谢。",
    "附件是付款截图和订单详情，请查收。",
    "我们公司有二十多个同事都在用你们的系统，今天早上开始全部无法登录。",
    "退款申请是十一月三日提交的，系统显示已审核，但是银行卡一直没有收到钱。",
    "希望能尽快给我一个明确的答复，否则我只能去消费者协会投诉了。",
    "另外，能不能把发票抬头改成我们公司的全称？税号我放在下面了。",
    "你们的产品整体还是很好用的，就是手机版有时候会卡住。",
    "如果可以的话，建议在设置里增加一个导出订单的功能。",
    "上次的问题已经解决了，非常感谢你们的工程师。",
    "麻烦尽快处理，这个问题已经影响到我们的正常工作了。",
    "我的手机号是一三八开头的那个，账号绑定的邮箱就是这个地址。",
    "页面上一直显示正在加载，换了浏览器也是一样。",
    "收到的包裹外箱完好，但是里面的杯子碎了两个。",
    "请问周末有人值班吗？我们这边的业务不能停。",
]
ZH_NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄强", "周杰", "吴丽", "徐涛", "孙悦"]
GBK_ONLY_NAMES = ["王喆", "李堃", "张玥", "陈犇", "刘珺"]  # characters outside GB2312, inside GBK
ZH_CLOSINGS = ["谢谢！", "此致\n敬礼", "祝好", "期待您的回复。"]

HANT_SUBJECTS = [
    "訂單{n}一直沒有出貨", "退款兩週了還沒到帳", "無法登入帳號", "請問可以開立發票嗎？", "投訴：客服態度不好",
    "建議增加深色模式", "感謝你們的協助", "付款頁面打不開", "收到的商品有瑕疵", "咨詢企業方案的價格",
]
HANT_SENTENCES = [
    "您好，我上週訂購的商品到現在還沒有收到，訂單編號是{n}。",
    "已經聯絡過客服兩次了，但是一直沒有得到回覆。",
    "麻煩幫我查詢一下退款的進度，謝謝。",
    "附件是付款證明，請查收。",
    "我們公司的同事今天早上開始都無法登入系統。",
    "希望可以盡快處理，這已經影響到我們的工作了。",
    "另外想請問發票可以改成公司抬頭嗎？",
    "你們的服務整體來說很不錯，只是手機版有時候會當機。",
    "請問週末有人可以處理嗎？",
]
HANT_NAMES = ["陳美玲", "林志明", "黃淑芬", "張家豪", "李雅婷", "王建宏"]

EN_SUBJECTS = [
    "Order {n} has not arrived", "Refund still missing after two weeks", "Cannot log in to my account",
    "Please correct the invoice address", "Complaint about your support team", "Feature request: dark mode",
    "Thank you for the quick help", "App crashes when I check out", "Charged twice for my subscription",
    "Item arrived damaged", "How do I change my delivery address?", "Coupon code does not work",
    "URGENT: payment page is down", "Question about enterprise pricing", "Account locked after update",
]
EN_SENTENCES = [
    "Hello, I placed order {n} last Friday and I still have not received a shipping confirmation.",
    "I have already contacted your support twice and nobody has got back to me.",
    "Could you please look into this and let me know what is going on?",
    "I attached a screenshot of the payment and the order details.",
    "Since this morning none of the twenty people in our office can log in.",
    "The refund was approved on November 3rd but the money is still not on my card.",
    "If this is not resolved this week I will have to file a chargeback.",
    "Also, could you change the company name on the invoice? The tax number is below.",
    "Overall the product works well, but the mobile app freezes from time to time.",
    "It would be great to have an option to export all orders as a spreadsheet.",
    "The issue from last month is fixed, many thanks to your engineer.",
    "The page keeps showing a spinner, and it is the same in every browser I tried.",
    "The box looked fine but two of the glasses inside were broken.",
    "Is anyone available over the weekend? We cannot stop our business.",
]
EN_NAMES = ["John Smith", "Emily Davis", "Michael Brown", "Sarah Wilson", "David Lee", "Laura Martin",
            "James Taylor", "Anna Clark", "Robert King", "Maria Garcia"]
EN_CLOSINGS = ["Thanks,", "Best regards,", "Kind regards,", "Cheers,"]

DOMAINS = ["customer.example", "mail.example.cn", "corp.example.com", "shop.example.tw", "qq.example",
           "163.example", "outlook.example"]
MAILERS = ["Foxmail 7.2.25", "Microsoft Outlook 16.0", "iPhone Mail (21A329)", "Mozilla Thunderbird",
           "NetEase Mail", None, None]

# (language, charset) weights for new messages
_LANGS = [("en", "utf-8", 36), ("en", "us-ascii", 4), ("zh", "utf-8", 18), ("zh", "gb2312", 13),
          ("zh", "gbk", 11), ("zh-hant", "big5", 11), ("zh-hant", "utf-8", 7)]
_STRUCTS = [("plain", 50), ("html", 15), ("alternative", 20), ("attachment", 15)]
_CTES = [("quoted-printable", 45), ("base64", 45), ("8bit", 10)]


@dataclass
class Mail:
    raw: bytes
    kind: str  # new | reply | auto | bounce
    message_id: str
    sender: str
    lang: str = "en"
    charset: str = "utf-8"
    structure: str = "plain"
    cte: str = "8bit"
    subject: str = ""
    thread_of: str | None = None  # message id of the thread's first message (new and replies)
    refs: list[str] = field(default_factory=list)
    name: str = ""


@dataclass
class _Customer:
    addr: str
    name: str
    lang: str
    charset: str


def _pick(rng: random.Random, weighted: list[tuple]) -> tuple:
    total = sum(w[-1] for w in weighted)
    x = rng.random() * total
    for w in weighted:
        x -= w[-1]
        if x < 0:
            return w[:-1] if len(w) > 2 else w[0]
    last = weighted[-1]
    return last[:-1] if len(last) > 2 else last[0]


# ---- encoding helpers ---------------------------------------------------------------------------

def _is_ascii(s: str) -> bool:
    return all(ord(c) < 128 for c in s)


def encode_word(text: str, charset: str, rng: random.Random | None = None) -> str:
    """RFC 2047 encoded-words (B or Q) in `charset`, split on character boundaries, folded."""
    if _is_ascii(text):
        return text
    q = rng is not None and rng.random() < 0.3
    words, chunk, size = [], "", 0
    limit = 36 if not q else 20  # raw bytes per word: keeps each word under 75 characters
    for ch in text:
        n = len(ch.encode(charset))
        if chunk and size + n > limit:
            words.append(chunk)
            chunk, size = "", 0
        chunk += ch
        size += n
    if chunk:
        words.append(chunk)
    out = []
    for w in words:
        data = w.encode(charset)
        if q:
            enc = "".join(chr(b) if (chr(b).isalnum() and b < 128) else ("_" if b == 32 else f"={b:02X}")
                          for b in data)
            out.append(f"=?{charset}?Q?{enc}?=")
        else:
            out.append(f"=?{charset}?B?{base64.b64encode(data).decode()}?=")
    return "\r\n ".join(out)


def _addr(name: str, addr: str, charset: str, rng: random.Random) -> str:
    if _is_ascii(name):
        return f'"{name}" <{addr}>' if " " in name else f"{name} <{addr}>"
    return f"{encode_word(name, charset, rng)} <{addr}>"


def _crlf(b: bytes) -> bytes:
    return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _body(text: str, charset: str, cte: str) -> bytes:
    data = text.replace("\r\n", "\n").encode(charset)
    if cte == "base64":
        enc = base64.encodebytes(data)
    elif cte == "quoted-printable":
        enc = quopri.encodestring(data)
    else:
        enc = data
    return _crlf(enc.rstrip(b"\n") + b"\n")


def _leaf(content_type: str, text: str, charset: str, cte: str) -> bytes:
    if cte == "8bit" and _is_ascii(text):
        cte = "7bit"
    head = f"Content-Type: {content_type}; charset=\"{charset}\"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    return head.encode("ascii") + _body(text, charset, cte)


def _html(text: str, lang: str) -> str:
    paras = "\n".join(f"<p>{line}</p>" for line in text.split("\n") if line.strip())
    font = "Microsoft YaHei, SimSun" if lang.startswith("zh") else "Calibri, Arial"
    return (f"<html><head><meta http-equiv=\"Content-Type\" content=\"text/html\"></head>\n"
            f"<body style=\"font-family: {font}; font-size: 14px\">\n<div>\n{paras}\n</div>\n"
            "<div style=\"color:#888\">--<br>Sent from my mail client</div>\n</body></html>\n")


def _attachment(rng: random.Random, lang: str) -> tuple[str, str, bytes]:
    kind = rng.choice(["png", "pdf", "csv", "txt"])
    size = rng.randint(1024, 6 * 1024)
    if kind == "png":
        data = b"\x89PNG\r\n\x1a\n" + rng.randbytes(size)
        name, ctype = ("截图.png" if lang.startswith("zh") else "screenshot.png"), "image/png"
    elif kind == "pdf":
        data = b"%PDF-1.4\n" + rng.randbytes(size) + b"\n%%EOF\n"
        name, ctype = ("发票.pdf" if lang == "zh" else "invoice.pdf"), "application/pdf"
    elif kind == "csv":
        rows = [f"{i},{rng.randint(1, 9999)},{rng.random() * 500:.2f}" for i in range(size // 16)]
        data = ("order,item,amount\n" + "\n".join(rows) + "\n").encode()
        name, ctype = "orders.csv", "text/csv"
    else:
        data = ("log line %d: request failed with status 500\n" * (size // 44)).encode() % tuple(
            range(size // 44))
        name, ctype = "error-log.txt", "text/plain"
    return name, ctype, data


def _attachment_part(name: str, ctype: str, data: bytes) -> bytes:
    if _is_ascii(name):
        disp = f'attachment; filename="{name}"'
        ct = f'{ctype}; name="{name}"'
    else:  # RFC 2231 for the parameter, as Thunderbird and Outlook send it
        disp = f"attachment; filename*=utf-8''{quote(name)}"
        ct = f"{ctype}; name*=utf-8''{quote(name)}"
    head = f"Content-Type: {ct}\r\nContent-Disposition: {disp}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    return head.encode("ascii") + _crlf(base64.encodebytes(data))


def _multipart(subtype: str, parts: list[bytes], boundary: str) -> tuple[str, bytes]:
    body = b"This is a multi-part message in MIME format.\r\n\r\n"
    for p in parts:
        body += f"--{boundary}\r\n".encode() + p + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/{subtype};\r\n\tboundary=\"{boundary}\"", body


# ---- the generator -------------------------------------------------------------------------------

def _text_for(rng: random.Random, lang: str, charset: str, n: int, name: str) -> tuple[str, str]:
    if lang == "en":
        subj, sents, closing = rng.choice(EN_SUBJECTS), EN_SENTENCES, rng.choice(EN_CLOSINGS)
        greet = rng.choice(["Hi,", "Hello,", "Dear support team,", "Good morning,"])
    elif lang == "zh":
        subj, sents, closing = rng.choice(ZH_SUBJECTS), ZH_SENTENCES, rng.choice(ZH_CLOSINGS)
        greet = rng.choice(["您好，", "客服你好：", "你好！", "尊敬的客服："])
    else:
        subj, sents, closing = rng.choice(HANT_SUBJECTS), HANT_SENTENCES, "謝謝！"
        greet = rng.choice(["您好，", "客服您好："])
    k = rng.randint(3, 9)
    body = [greet, ""]
    for s in rng.sample(sents, min(k, len(sents))):
        body.append(s)
    body += ["", closing, name]
    order = f"{n:06d}" if lang == "en" else f"2026{n:06d}"
    text = "\n".join(body).replace("{n}", order) + "\n"
    return subj.replace("{n}", order), text


def _headers(h: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in h).encode("ascii")


def _message_id(seed: int, i: int, domain: str) -> str:
    tag = hashlib.sha1(f"{seed}/{i}".encode()).hexdigest()[:12]
    return f"{tag}.{i}.{seed}@{domain}"


def _customers(rng: random.Random, count: int) -> list[_Customer]:
    out = []
    for k in range(count):
        lang, charset = _pick(rng, _LANGS)
        domain = rng.choice(DOMAINS)
        if lang == "en":
            name = rng.choice(EN_NAMES)
        elif lang == "zh":
            name = rng.choice(GBK_ONLY_NAMES if charset == "gbk" and rng.random() < 0.3 else ZH_NAMES)
        else:
            name = rng.choice(HANT_NAMES)
        out.append(_Customer(f"cust{k:05d}@{domain}", name, lang, charset))
    return out


def _schedule(n: int, rng: random.Random) -> list[str]:
    kinds = ["new"] * n
    if n < 2:
        return kinds
    n_auto = max(1 if n >= 20 else 0, round(AUTO_SHARE * n))
    n_bounce = max(1 if n >= 20 else 0, round(BOUNCE_SHARE * n))
    n_reply = round(REPLY_SHARE * n)
    # the first message is always new; replies need an earlier new message, which index 0 is
    slots = rng.sample(range(1, n), min(n - 1, n_auto + n_bounce + n_reply))
    for j, i in enumerate(slots):
        kinds[i] = "auto" if j < n_auto else "bounce" if j < n_auto + n_bounce else "reply"
    return kinds


def build(n: int, seed: int = 1) -> list[Mail]:
    """n messages, the same bytes for the same (n, seed)."""
    rng = random.Random(seed)
    kinds = _schedule(n, rng)
    customers = _customers(rng, max(10, n // 3))  # repeat senders, as real mailboxes have
    mails: list[Mail] = []
    threads: dict[str, list[Mail]] = {}  # first message id -> thread messages (new + replies)
    new_ones: list[Mail] = []
    for i, kind in enumerate(kinds):
        date = EPOCH + timedelta(seconds=37 * i + rng.randint(0, 30))
        if kind == "reply":
            m = _reply(rng, seed, i, date, new_ones, threads)
            threads[m.thread_of or ""].append(m)
        elif kind == "auto":
            m = _auto(rng, seed, i, date, rng.choice(customers))
        elif kind == "bounce":
            m = _bounce(rng, seed, i, date)
        else:
            m = _new(rng, seed, i, date, rng.choice(customers))
            new_ones.append(m)
            threads[m.message_id] = [m]
        mails.append(m)
    return mails


def generate(n: int, seed: int = 1) -> list[bytes]:
    return [m.raw for m in build(n, seed)]


def counts(mails: list[Mail]) -> dict[str, int]:
    out = {"new": 0, "reply": 0, "auto": 0, "bounce": 0}
    for m in mails:
        out[m.kind] += 1
    return out


def _date(d: datetime) -> str:
    return d.strftime("%a, %d %b %Y %H:%M:%S +0000")


def _compose(rng: random.Random, head: list[tuple[str, str]], text: str, lang: str, charset: str,
             structure: str, cte: str, boundary: str) -> bytes:
    if structure == "plain":
        ctype_body = _leaf("text/plain", text, charset, cte)
        return _headers([*head, ("MIME-Version", "1.0")]) + ctype_body
    if structure == "html":
        return _headers([*head, ("MIME-Version", "1.0")]) + _leaf("text/html", _html(text, lang), charset, cte)
    alt_ct, alt_body = _multipart("alternative", [_leaf("text/plain", text, charset, cte),
                                                  _leaf("text/html", _html(text, lang), charset, cte)],
                                  boundary + "_alt")
    if structure == "alternative":
        ct, body = alt_ct, alt_body
    else:
        name, actype, data = _attachment(rng, lang)
        inner = f"Content-Type: {alt_ct}\r\n\r\n".encode("ascii") + alt_body
        ct, body = _multipart("mixed", [inner, _attachment_part(name, actype, data)], boundary + "_mix")
    return _headers([*head, ("MIME-Version", "1.0"), ("Content-Type", ct)]) + b"\r\n" + body


def _common(rng: random.Random, sender: str, name: str, charset: str, subject: str, date: datetime,
            mid: str) -> list[tuple[str, str]]:
    h = [("From", _addr(name, sender, charset, rng)), ("To", f"Support <{SUPPORT}>"),
         ("Subject", encode_word(subject, charset, rng)), ("Date", _date(date)), ("Message-ID", f"<{mid}>")]
    mailer = rng.choice(MAILERS)
    if mailer:
        h.append(("X-Mailer", mailer))
    return h


def _new(rng: random.Random, seed: int, i: int, date: datetime, c: _Customer) -> Mail:
    mid = _message_id(seed, i, c.addr.split("@")[1])
    subject, text = _text_for(rng, c.lang, c.charset, i, c.name)
    structure = _pick(rng, _STRUCTS)
    cte = _pick(rng, _CTES)
    if c.charset == "us-ascii":
        cte = "7bit" if cte == "8bit" else cte
    head = _common(rng, c.addr, c.name, c.charset, subject, date, mid)
    raw = _compose(rng, head, text, c.lang, c.charset, structure, cte, f"----=_Part_{seed}_{i}")
    return Mail(raw, "new", mid, c.addr, c.lang, c.charset, structure, cte, subject, mid, [], c.name)


def _reply(rng: random.Random, seed: int, i: int, date: datetime, new_ones: list[Mail],
           threads: dict[str, list[Mail]]) -> Mail:
    # favour recent tickets, as real follow-ups do
    orig = new_ones[max(0, len(new_ones) - 1 - int(rng.expovariate(1 / 40)))] if rng.random() < 0.8 \
        else rng.choice(new_ones)
    thread = threads[orig.message_id]
    parent = thread[-1] if len(thread) > 1 and rng.random() < 0.33 else orig
    refs = [m.message_id for m in thread[: thread.index(parent) + 1]]
    lang, charset = orig.lang, orig.charset
    name = orig.name
    prefix = "Re: " if lang == "en" else rng.choice(["回复: ", "回复：", "Re: "]) if lang == "zh" else \
        rng.choice(["回覆: ", "Re: "])
    subject = prefix + orig.subject
    if lang == "en":
        new = rng.choice(["Any update on this?", "I still have not heard back, please reply.",
                          "Here is the additional information you asked for.",
                          "Thanks, but the problem is still there."])
        quote_head = f"On {date.strftime('%a, %d %b %Y')}, Support <{SUPPORT}> wrote:"
    else:
        new = rng.choice(["请问有进展了吗？", "还是没有人回复我，麻烦尽快处理。", "补充一下信息，见下文。",
                          "谢谢，不过问题还是存在。"]) if lang == "zh" else \
            rng.choice(["請問有進度了嗎？", "補充一下資訊。", "謝謝，但問題還是存在。"])
        quote_head = f"在 {date.year}年{date.month}月{date.day}日，客服 <{SUPPORT}> 写道：" if lang == "zh" \
            else f"{date.year}年{date.month}月{date.day}日 客服 <{SUPPORT}> 寫道："
    quoted = "\n".join("> " + line for line in orig.subject.splitlines() + ["", "..."])
    text = f"{new}\n\n{name}\n\n{quote_head}\n{quoted}\n"
    mid = _message_id(seed, i, orig.sender.split("@")[1])
    head = _common(rng, orig.sender, name, charset, subject, date, mid)
    head += [("In-Reply-To", f"<{parent.message_id}>"), ("References", " ".join(f"<{r}>" for r in refs))]
    structure = "plain" if rng.random() < 0.7 else "alternative"
    cte = _pick(rng, _CTES)
    if charset == "us-ascii" and cte == "8bit":
        cte = "7bit"
    raw = _compose(rng, head, text, lang, charset, structure, cte, f"----=_Part_{seed}_{i}")
    return Mail(raw, "reply", mid, orig.sender, lang, charset, structure, cte, subject, orig.message_id, refs, name)


def _auto(rng: random.Random, seed: int, i: int, date: datetime, c: _Customer) -> Mail:
    mid = _message_id(seed, i, c.addr.split("@")[1])
    if c.lang == "en":
        subject = "Automatic reply: [CW202611200001] We have received your request"
        text = "I am out of the office until December 1st with limited access to email.\n"
    else:
        subject = "自动回复: [CW202611200001] 我们已收到您的问题" if c.lang == "zh" else "自動回覆: 已收到您的問題"
        text = "您好，我正在休假，12月1日返回，期间不能及时回复邮件。\n" if c.lang == "zh" else \
            "您好，我正在休假，12月1日返回。\n"
    head = _common(rng, c.addr, c.name, c.charset, subject, date, mid)
    head += [("Auto-Submitted", "auto-replied"), ("X-Autoreply", "yes"),
             ("In-Reply-To", f"<ack.{seed}.{i}@support.example>")]
    raw = _compose(rng, head, text, c.lang, c.charset, "plain", "base64", f"----=_Part_{seed}_{i}")
    return Mail(raw, "auto", mid, c.addr, c.lang, c.charset, "plain", "base64", subject)


def _bounce(rng: random.Random, seed: int, i: int, date: datetime) -> Mail:
    domain = rng.choice(DOMAINS)
    mid = _message_id(seed, i, f"mx.{domain}")
    rcpt = f"gone{i}@{domain}"
    boundary = f"dsn_{seed}_{i}"
    notice = (f"This is the mail system at host mx.{domain}.\r\n\r\nI'm sorry to have to inform you that your "
              f"message could not\r\nbe delivered to one or more recipients.\r\n\r\n<{rcpt}>: host mx.{domain} "
              "said: 550 5.1.1 User unknown\r\n")
    status = (f"Reporting-MTA: dns; mx.{domain}\r\nArrival-Date: {_date(date)}\r\n\r\n"
              f"Final-Recipient: rfc822; {rcpt}\r\nOriginal-Recipient: rfc822;{rcpt}\r\nAction: failed\r\n"
              "Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n")
    orig = (f"From: Support <{SUPPORT}>\r\nTo: {rcpt}\r\nSubject: [CW202611200001] We have received your "
            f"request\r\nMessage-ID: <ack.{seed}.{i}@support.example>\r\nAuto-Submitted: auto-replied\r\n")
    body = (f"This is a MIME-encapsulated message.\r\n\r\n--{boundary}\r\nContent-Description: Notification\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{notice}\r\n--{boundary}\r\n"
            f"Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n{status}\r\n"
            f"--{boundary}\r\nContent-Description: Undelivered Message Headers\r\n"
            f"Content-Type: text/rfc822-headers\r\n\r\n{orig}\r\n--{boundary}--\r\n")
    head = [("Return-Path", "<>"), ("From", f"Mail Delivery System <MAILER-DAEMON@mx.{domain}>"),
            ("To", SUPPORT), ("Subject", "Undelivered Mail Returned to Sender"), ("Date", _date(date)),
            ("Message-ID", f"<{mid}>"), ("Auto-Submitted", "auto-replied"), ("MIME-Version", "1.0"),
            ("Content-Type", f"multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"")]
    return Mail(_headers(head) + b"\r\n" + body.encode("ascii"), "bounce", mid, f"MAILER-DAEMON@mx.{domain}",
                "en", "us-ascii", "report", "7bit", "Undelivered Mail Returned to Sender")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the benchmark corpus as .eml files.")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="folder for 00001.eml ...")
    a = ap.parse_args(argv)
    mails = build(a.n, a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(a.n)))
    for i, m in enumerate(mails, 1):
        (a.out / f"{i:0{width}d}.eml").write_bytes(m.raw)
    c = counts(mails)
    size = sum(len(m.raw) for m in mails)
    print(f"wrote {a.n} messages ({size / 1024:.0f} KiB) to {a.out}: {c['new']} new (= expected tickets), "
          f"{c['reply']} replies, {c['auto']} auto-replies, {c['bounce']} bounces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
