#!/usr/bin/env python3
"""Make templates/zh-Hant/ (traditional Chinese) from templates/zh/ (simplified) with OpenCC.

OpenCC's ``s2twp`` (simplified -> Taiwan standard, with Taiwan phrasing: 邮件->郵件, 信息->資訊,
创建->建立) is the usual choice for Taiwan; Hong Kong readers read it without trouble, while
``s2hk`` output (HK variant characters and phrasing) reads oddly in Taiwan. The converter gets some
things wrong, so REVIEW below holds the corrections made by reading the output, applied after it;
each must still match something, so a correction that no longer applies is noticed.

A dev tool (``pip install .[dev]``): mailflow itself never needs OpenCC. After changing a zh
template, run it and review the diff of templates/zh-Hant/:

    python3 tools/make_zh_hant.py            # rewrite templates/zh-Hant/
    python3 tools/make_zh_hant.py --check    # exit 1 if templates/zh-Hant/ is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SRC, DST = TEMPLATES / "zh", TEMPLATES / "zh-Hant"
CONFIG = "s2twp"

# what is not wording: include paths, the HTML language and fonts, and quotation marks (Taiwan
# writes 「」 and 『』)
STRUCTURE = [
    ('"zh/', '"zh-Hant/'),
    ('lang="zh-CN"', 'lang="zh-Hant"'),
    ("'PingFang SC', 'Microsoft YaHei'", "'PingFang TC', 'Microsoft JhengHei'"),
    ("“", "「"), ("”", "」"), ("‘", "『"), ("’", "』"),
]

# (converter output, what a Taiwanese reader expects)
REVIEW = [
    ("回複", "回覆"),            # 回复本邮件 was cut as 回 + 复本 (copy)
    ("請回復", "請回覆"),
    ("上回復", "上回覆"),        # "wrote on the ticket": a reply, not a restore
    ("當前狀態", "目前狀態"),
    ("併為您", "並為您"),        # 并 as "and", not 合併
    ("反饋", "回饋"),
    ("主題", "主旨"),            # a mail's subject line is 主旨 in Taiwan's mail clients
    ("主    題", "主    旨"),
    ("示例", "範例"),
    ("正文", "內文"),            # the body of a mail
    ("尊敬的客戶", "親愛的客戶"),
    ("優 先 級", "優先順序"),    # the label column is four characters wide
    ("[PRIORITY 級別]", "[PRIORITY 等級]"),
    ("處 理 人", "處理人員"),
    ("處理人：", "處理人員："),
    ("分配給您", "指派給您"),
    ("未分配", "未指派"),
    ("首次響應截止", "首次回覆期限"),
    ("解決截止", "解決期限"),
    ("處理進展", "處理進度"),
    ("當前優先順序", "目前優先順序"),
    ("訂單號", "訂單編號"),
    ("報錯資訊", "錯誤訊息"),
    ("定位原因", "找出原因"),
    ("敬請諒解", "敬請見諒"),
    ("說明發送給", "說明傳送給"),
    ("我們工作的支援", "我們工作的支持"),  # support as in backing, not technical support
    ("您的支援與理解", "您的支持與理解"),
    ("以便我們及時跟進", "以便我們及時追蹤處理"),
    ("我們會繼續跟進", "我們會繼續追蹤"),
    ("並會優先跟進處理", "並會優先處理"),
]


def convert(texts: dict[str, str]) -> dict[str, str]:
    import opencc

    cc = opencc.OpenCC(CONFIG)
    out = {}
    used: set[str] = set()
    for name, text in texts.items():
        t = cc.convert(text)
        for old, new in STRUCTURE:
            t = t.replace(old, new)
        for old, new in REVIEW:
            if old in t:
                used.add(old)
                t = t.replace(old, new)
        out[name] = t
    stale = [old for old, _ in REVIEW if old not in used]
    if stale:
        raise SystemExit(f"REVIEW corrections that no longer match anything: {stale}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if templates/zh-Hant/ is out of date")
    args = ap.parse_args()
    sources = {p.name: p.read_text(encoding="utf-8") for p in sorted(SRC.glob("*.j2"))}
    wanted = convert(sources)
    present = {p.name: p.read_text(encoding="utf-8") for p in sorted(DST.glob("*.j2"))} if DST.is_dir() else {}
    if args.check:
        stale = sorted(n for n in wanted.keys() | present.keys() if wanted.get(n) != present.get(n))
        for n in stale:
            print(f"{DST / n}: out of date")
        return 1 if stale else 0
    DST.mkdir(exist_ok=True)
    for name, text in wanted.items():
        (DST / name).write_text(text, encoding="utf-8")
    for name in present.keys() - wanted.keys():
        (DST / name).unlink()
    print(f"wrote {len(wanted)} templates to {DST} ({CONFIG} + {len(REVIEW)} reviewed corrections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
