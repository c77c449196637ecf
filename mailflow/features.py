"""Computed features that rules can test: the tone of a message and the staff it names.

Both are plain functions of the text, cheap (well under a millisecond for a 2 KB mail),
deterministic and free of I/O.

`sentiment(text)` -> float in -1..1
    Lexicon based, Chinese (simplified and traditional) and English. Each lexicon hit has a weight
    (about -3..+3; words that only describe a problem, like "故障" or "crash", weigh little: tone is
    about how the customer feels, not what broke); an intensifier just before it ("非常", "太",
    "very", "extremely") multiplies it by 1.5; a negator just before it ("不", "没有", "並不", "not",
    "never", "don't") flips it: a negated positive word counts as negative ("不太满意", "not happy"),
    a negated negative word as mildly positive ("不差", "not bad"). Whole phrases win over their
    parts ("不满意" is one negative hit, not a negated "满意"; "不错" is positive). The sum is
    squashed into -1..1 with ``s / sqrt(s*s + 15)``, so one strongly negative word gives about
    -0.6 and a single mild one about -0.35. Shouting ("！！", "???", "?!") multiplies a negative sum by
    1.3; it never makes a neutral mail negative. The lexicon also holds the exasperated phrases
    customers write instead of adjectives (凭什么, 受够了, 这是什么服务, 到底有没有, a joke, sick of).
    The bundled rules raise the priority at ``sentiment <= -0.5``.

`mentioned_staff(text, staff)` -> set of staff emails
    A staff member is mentioned when their display name, their email address, or the local part of
    the address (only if it has at least 3 characters) appears in the text, case-insensitively.
    Latin names and local parts must stand as whole words ("al" does not match "also", "alice"
    matches "Alice说..."); Chinese names match as substrings ("王芳" in "客服王芳态度很差").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from functools import lru_cache

from mailflow.config import StaffMember

# ---- sentiment lexicon --------------------------------------------------------------------------

_ZH_NEG = {
    # complaint vocabulary and strong words (simplified / traditional)
    "不满意": -2.5, "不滿意": -2.5, "不满": -2.0, "不滿": -2.0, "失望": -2.5, "垃圾": -3.0,
    "糟糕": -2.5, "非常差": -3.0, "特别差": -3.0, "特別差": -3.0, "极差": -3.0, "極差": -3.0,
    "真差": -2.5, "好差": -2.5, "差劲": -2.5, "差勁": -2.5, "太差": -2.5, "很差": -2.5, "最差": -3.0,
    "差评": -2.0, "差評": -2.0, "愤怒": -3.0, "憤怒": -3.0, "生气": -2.5, "生氣": -2.5,
    "气愤": -3.0, "氣憤": -3.0, "恶心": -3.0, "惡心": -3.0, "噁心": -3.0, "骗子": -3.0,
    "騙子": -3.0, "欺骗": -3.0, "欺騙": -3.0, "坑人": -3.0, "无语": -2.0, "無語": -2.0,
    "投诉": -1.0, "投訴": -1.0, "烦死": -2.5, "煩死": -2.5, "很烦": -2.0, "很煩": -2.0,
    "太慢": -2.0, "很慢": -1.5, "敷衍": -2.5, "恶劣": -3.0, "惡劣": -3.0, "无法接受": -3.0,
    "無法接受": -3.0, "不能接受": -3.0, "忍无可忍": -3.0, "忍無可忍": -3.0, "难用": -2.0,
    "難用": -2.0, "着急": -1.0, "著急": -1.0, "急死": -2.5, "后悔": -2.0, "後悔": -2.0,
    "上当": -2.5, "上當": -2.5, "再也不": -2.0, "离谱": -2.5, "離譜": -2.5, "过分": -2.0,
    "過分": -2.0, "不负责任": -3.0, "不負責任": -3.0, "态度差": -2.5, "態度差": -2.5,
    "粗鲁": -2.5, "粗魯": -2.5, "冷漠": -2.0, "崩溃": -0.5, "崩潰": -0.5, "瘫痪": -0.5,
    "癱瘓": -0.5, "丢失": -0.5, "丟失": -0.5, "损失": -1.5, "損失": -1.5, "退款": -0.5,
    "问题": -0.3, "問題": -0.3, "故障": -0.5, "坏了": -0.75, "壞了": -0.75,
    # anger and exasperation as customers write it (rhetorical questions, slang)
    "气死": -3.0, "氣死": -3.0, "气人": -2.5, "氣人": -2.5, "火大": -2.5, "受够": -3.0, "受夠": -3.0,
    "凭什么": -2.5, "憑什麼": -2.5, "搞什么": -2.5, "搞什麼": -2.5, "算什么": -2.0, "算什麼": -2.0,
    "什么破": -2.5, "什麼破": -2.5, "破服务": -2.5, "破服務": -2.5, "这是什么服务": -2.5, "這是什麼服務": -2.5,
    "什么服务态度": -2.5, "什麼服務態度": -2.5, "到底有没有": -2.0, "到底有沒有": -2.0, "到底什么时候": -1.5,
    "到底什麼時候": -1.5, "到底怎么回事": -2.0, "到底怎麼回事": -2.0, "不像话": -2.5, "不像話": -2.5,
    "岂有此理": -3.0, "豈有此理": -3.0, "黑心": -3.0, "不靠谱": -2.0, "不靠譜": -2.0, "坑爹": -3.0,
    "太坑": -2.5, "骗人": -3.0, "騙人": -3.0, "忽悠": -2.5, "欺负": -2.5, "欺負": -2.5, "一拖再拖": -2.5,
    "踢皮球": -2.5, "推来推去": -2.5, "推來推去": -2.5, "推诿": -2.5, "推諉": -2.5, "推脱": -2.0,
    "推託": -2.0, "没人管": -2.0, "沒人管": -2.0, "没人理": -2.0, "沒人理": -2.0, "石沉大海": -2.0,
    "不耐烦": -2.0, "不耐煩": -2.0, "爱理不理": -2.5, "愛理不理": -2.5, "遗憾": -1.5, "遺憾": -1.5,
    "闹心": -2.0, "鬧心": -2.0, "心累": -2.0, "无奈": -1.5, "無奈": -1.5, "差到": -2.5, "太烂": -2.5,
    "太爛": -2.5, "很烂": -2.5, "很爛": -2.5, "烂透": -3.0, "爛透": -3.0, "耍人": -2.5, "态度恶劣": -3.0,
    "態度惡劣": -3.0, "欺诈": -3.0, "欺詐": -3.0, "虚假": -2.0, "虛假": -2.0, "不负责": -2.5, "不負責": -2.5,
    # feeling cheated, pestered, let down (as customers write it, not what broke)
    "推卸": -2.0, "侮辱": -3.0, "莫名其妙": -2.0, "骚扰": -2.5, "騷擾": -2.5, "烦人": -2.0, "煩人": -2.0,
    "套路": -2.0, "被坑": -2.5, "黑店": -3.0, "奸商": -3.0, "无良": -3.0, "無良": -3.0, "没良心": -3.0,
    "沒良心": -3.0, "欺人太甚": -3.0, "不讲理": -2.5, "不講理": -2.5, "霸王条款": -2.5, "霸王條款": -2.5,
    "耍赖": -2.5, "耍賴": -2.5, "倒霉": -2.0, "伤心": -2.0, "傷心": -2.0, "寒心": -2.5, "心寒": -2.5,
    "郁闷": -2.0, "鬱悶": -2.0, "窝火": -2.5, "窩火": -2.5, "恼火": -2.5, "惱火": -2.5, "不爽": -2.0,
    "难受": -1.5, "難受": -1.5, "折腾": -1.5, "折騰": -1.5, "浪费": -1.5, "浪費": -1.5, "无能": -2.5,
    "無能": -2.5, "难听": -2.0, "難聽": -2.0, "不舒服": -1.5, "还好意思": -2.5, "還好意思": -2.5, "有没有搞错": -2.5, "有沒有搞錯": -2.5,
}
_ZH_POS = {
    "满意": 2.0, "滿意": 2.0, "感谢": 1.5, "感謝": 1.5, "谢谢": 1.0, "謝謝": 1.0, "多谢": 1.0,
    "多謝": 1.0, "好评": 2.0, "好評": 2.0, "表扬": 2.0, "表揚": 2.0, "点赞": 2.0, "點讚": 2.0,
    "点个赞": 2.0, "赞": 1.5, "讚": 1.5, "棒": 2.0, "很好": 2.0, "不错": 1.5, "不錯": 1.5,
    "专业": 1.5, "專業": 1.5, "耐心": 1.5, "及时": 1.5, "及時": 1.5, "高效": 1.5, "贴心": 2.0,
    "貼心": 2.0, "周到": 2.0, "优秀": 2.5, "優秀": 2.5, "完美": 3.0, "喜欢": 2.0, "喜歡": 2.0,
    "开心": 2.0, "開心": 2.0, "高兴": 2.0, "高興": 2.0, "辛苦了": 1.5, "给力": 2.0, "給力": 2.0,
    "好用": 1.5, "方便": 1.0, "解决了": 1.5, "解決了": 1.5, "热情": 1.5, "熱情": 1.5,
    "暖心": 2.0, "细心": 1.5, "細心": 1.5, "热心": 1.5, "熱心": 1.5, "负责": 1.0, "負責": 1.0, "尽职": 1.5,
    "盡職": 1.5, "感动": 2.0, "感動": 2.0, "靠谱": 1.5, "靠譜": 1.5, "准时": 1.0, "準時": 1.0, "顺利": 1.5,
    "順利": 1.5, "用心": 1.5,
    # praise without a thank-you: beyond expectations, would recommend, carefully done
    "超出预期": 2.5, "超出預期": 2.5, "超乎预期": 2.5, "超乎預期": 2.5, "物超所值": 2.5, "越做越好": 2.0,
    "推荐": 1.5, "推薦": 1.5, "惊喜": 2.0, "驚喜": 2.0, "稳定": 1.0, "穩定": 1.0, "精致": 1.5, "精緻": 1.5,
    "漂亮": 1.5, "好吃": 2.0, "放心": 1.5, "省心": 1.5, "仔细": 1.5, "仔細": 1.5, "认真": 1.5, "認真": 1.5,
    "迅速": 1.5, "麻利": 1.5, "一流": 2.5, "到位": 1.5, "感恩": 2.0, "性价比很高": 2.5, "性價比很高": 2.5,
    "性价比高": 2.0, "性價比高": 2.0,
    "非常好": 2.5, "特别好": 2.5, "特別好": 2.5, "超好": 2.0, "太好了": 2.5, "礼貌": 1.5, "禮貌": 1.5,
    # not praise: a title and a polite formula that contain a praise word
    "负责人": 0.0, "負責人": 0.0,
}
_EN_NEG = {
    "terrible": -3.0, "awful": -3.0, "horrible": -3.0, "worst": -3.0, "disgusting": -3.0,
    "unacceptable": -3.0, "furious": -3.0, "outraged": -3.0, "angry": -2.5, "ridiculous": -2.5,
    "pathetic": -3.0, "useless": -2.5, "disappointed": -2.5, "disappointing": -2.5,
    "frustrated": -2.0, "frustrating": -2.0, "annoyed": -2.0, "annoying": -2.0, "upset": -2.0,
    "unhappy": -2.0, "poor": -1.5, "bad": -1.5, "rude": -2.5, "scam": -3.0, "fraud": -3.0,
    "waste": -2.0, "hate": -3.0, "never again": -2.5, "complaint": -1.0, "complain": -1.0,
    "broken": -0.5, "failed": -0.5, "fails": -0.5, "failure": -0.5, "crash": -0.5,
    "crashes": -0.5, "doesn't work": -0.75, "does not work": -0.75, "not working": -0.75,
    "slow": -1.0, "unprofessional": -2.5, "ignored": -2.0, "lost": -0.5, "refund": -0.5,
    "problem": -0.3, "issue": -0.3, "wrong": -1.0, "sucks": -3.0, "fed up": -2.5,
    "joke": -2.0, "incompetent": -3.0, "incompetence": -3.0, "sick of": -2.5, "tired of": -2.0,
    "outrageous": -3.0, "appalling": -3.0, "dreadful": -3.0, "shocking": -2.0, "disgrace": -3.0,
    "disgraceful": -3.0, "shameful": -3.0, "rip off": -3.0, "ripoff": -3.0, "dissatisfied": -2.5,
    "unhelpful": -2.0, "unreliable": -2.0, "misleading": -2.0, "lied": -2.5, "liar": -3.0, "liars": -3.0,
    "cheated": -3.0, "nightmare": -2.5, "nobody cares": -2.0, "no one cares": -2.0, "unresponsive": -2.0,
    "disrespectful": -2.5, "insulting": -2.5, "dismissive": -2.0, "condescending": -2.5, "livid": -3.0,
    "irritated": -2.0, "infuriating": -3.0, "infuriated": -3.0, "had enough": -2.5, "wtf": -3.0,
    "disgusted": -3.0, "unbelievable": -1.5,
    # let down, cheated, exasperated
    "expected better": -2.0, "bait and switch": -2.5, "thanks for nothing": -3.0, "you people": -1.5,
    "so called": -1.5, "not acceptable": -2.5, "sick and tired": -2.5, "last straw": -2.5, "final straw": -2.5,
    "sloppy": -2.0, "careless": -2.0, "lazy": -2.0, "clueless": -2.0, "rubbish": -2.5, "garbage": -2.5,
    "absurd": -2.5, "ludicrous": -2.5, "disaster": -2.0, "wasted": -2.0, "hassle": -1.0, "headache": -1.0,
}
_EN_POS = {
    "great": 2.0, "excellent": 3.0, "amazing": 3.0, "awesome": 3.0, "wonderful": 3.0,
    "fantastic": 3.0, "good": 1.5, "nice": 1.5, "happy": 2.0, "satisfied": 2.0, "pleased": 2.0,
    "thank": 1.0, "thanks": 1.0, "thank you": 1.5, "appreciate": 2.0, "appreciated": 2.0,
    "helpful": 2.0, "love": 2.5, "perfect": 3.0, "quick": 1.0, "fast": 1.0, "friendly": 2.0,
    "professional": 1.5, "resolved": 1.0, "kudos": 2.5, "well done": 2.5, "great job": 3.0,
    "patient": 1.5, "impressed": 2.5, "recommend": 1.5, "smooth": 1.5,
    "compliments": 2.0, "polite": 1.5, "careful": 1.0, "on time": 1.0, "reassuring": 1.5, "efficient": 1.5,
    "kind": 1.5, "lovely": 2.0, "brilliant": 2.5, "superb": 3.0, "outstanding": 2.5, "grateful": 2.0,
    "thrilled": 2.5, "delighted": 2.5, "reliable": 1.5, "responsive": 1.5, "knowledgeable": 1.5,
    "impressive": 2.5,
    # praise without a thank-you
    "much appreciated": 2.5, "ahead of schedule": 2.0, "exceeded": 2.0, "highly recommend": 2.5,
    "five stars": 2.5, "a pleasure": 2.0, "keep it up": 2.0, "perfectly": 2.0,
    "beautifully": 2.0, "spot on": 2.0, "top notch": 2.5, "flawless": 2.5, "seamless": 2.0, "painless": 2.0,
    "hassle free": 2.0, "smoothest": 2.5, "nailed it": 2.5,
    "many thanks": 2.0, "is the best": 2.5, "are the best": 2.5, "you're the best": 2.5,
    # not praise: formulas that contain a praise word
    "kind regards": 0.0, "outstanding balance": 0.0, "outstanding invoice": 0.0, "outstanding amount": 0.0,
    "outstanding payment": 0.0, "outstanding issue": 0.0, "outstanding issues": 0.0,
}
_ZH_INTENS = ("非常", "很", "太", "特别", "特別", "十分", "极其", "極其", "超级", "超級", "真", "好", "巨")
_EN_INTENS = ("very", "really", "extremely", "so", "totally", "absolutely", "incredibly", "super")
_ZH_NEGATORS = ("不", "没", "沒", "未", "别", "別", "毫无", "毫無", "并非", "並非")
_EN_NEGATORS = frozenset({"not", "no", "never", "hardly", "barely", "without", "nor", "isn't",
                          "wasn't", "aren't", "don't", "doesn't", "didn't", "can't", "cannot",
                          "won't", "couldn't", "wouldn't", "haven't", "hasn't", "neither"})

_ZH_TERMS: dict[str, float] = {**_ZH_NEG, **_ZH_POS}
_EN_TERMS: dict[str, float] = {**_EN_NEG, **_EN_POS}  # one to three words


def _trie_pattern(terms: Iterable[str], sep: str = " ") -> str:
    """One regex for a set of literal terms, factored by common prefix ("ab|ac" -> "a(?:b|c)").

    A flat alternation of a few hundred words is tried branch by branch at every position of the
    text (in English nearly every letter starts some term); the factored form fails after one or two
    characters, about 3.5x faster on a 2 KB mail. Greedy optional tails make the longest term win,
    as in a longest-first alternation, so a phrase beats its words ("不满意" over "满意"). A space in
    a term stands for `sep`.
    """
    trie: dict = {}
    for t in terms:
        node = trie
        for ch in t:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        branches = [(sep if ch == " " else re.escape(ch)) + build(node[ch]) for ch in sorted(node) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


_ZH_LEXICON = re.compile(_trie_pattern(_ZH_TERMS))
_ZH_STOP = re.compile(r"[，,。.!！?？;；:：、\s]")
_EN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_EN_STOP = re.compile(r"[.,!?;:。，！？；\n]")
_EN_SEP = r"[^a-z'.,!?;:。，！？；\n]+"  # what may stand between the words of a phrase (spaces, "-", ...)
# Whole words only, by letters rather than \b (Chinese characters are word characters to \b, and
# "app一直crash" has to find "crash"); the longest phrase wins over its words.
_EN_LEXICON = re.compile("(?<![a-z'])" + _trie_pattern(_EN_TERMS, _EN_SEP) + "(?![a-z])")
# "！！", "???", "?!": shouting makes a negative mail angrier (it never makes a neutral one negative)
_EMPHASIS = re.compile(r"[!！?？]{2,}")
_LATIN = re.compile("[a-z]")


def _zh_score(low: str) -> float:
    total = 0.0
    floor = 0
    for m in _ZH_LEXICON.finditer(low):
        w = _ZH_TERMS[m.group(0)]
        # look just before the hit (never into the previous hit or past punctuation)
        window = low[max(floor, m.start() - 4):m.start()]
        stops = list(_ZH_STOP.finditer(window))
        if stops:
            window = window[stops[-1].end():]
        if any(window.endswith(x) for x in _ZH_INTENS):
            w *= 1.5
        if any(n in window for n in _ZH_NEGATORS):
            w = -0.8 * w if w > 0 else -0.4 * w
        total += w
        floor = m.end()
    return total


def _en_score(low: str) -> float:
    total = 0.0
    floor = 0  # never look back past the previous hit
    for m in _EN_LEXICON.finditer(low):
        w = _EN_TERMS[" ".join(_EN_WORD.findall(m.group(0)))]
        # the (at most 3) words just before the hit, after the last punctuation
        before = low[max(floor, m.start() - 60):m.start()]
        stops = list(_EN_STOP.finditer(before))
        if stops:
            before = before[stops[-1].end():]
        window = _EN_WORD.findall(before)[-3:]
        if window and window[-1] in _EN_INTENS:
            w *= 1.5
        if any(x in _EN_NEGATORS or x.endswith("n't") for x in window):
            w = -0.8 * w if w > 0 else -0.4 * w
        total += w
        floor = m.end()
    return total


def sentiment(text: str) -> float:
    """Tone of `text` in -1 (very negative) .. 1 (very positive); 0.0 for neutral or empty text."""
    if not text:
        return 0.0
    low = text.casefold().replace("\u2019", "'").replace("\u2018", "'")
    total = _zh_score(low) + (_en_score(low) if _LATIN.search(low) else 0.0)
    if total < 0 and _EMPHASIS.search(low):
        total *= 1.3
    score = total / math.sqrt(total * total + 15.0)
    return max(-1.0, min(1.0, round(score, 4)))


# ---- staff mentions -----------------------------------------------------------------------------

_WORD_CHAR = re.compile(r"[a-z0-9_]")


def _found(low: str, needle: str, whole_word: bool) -> bool:
    """Is `needle` in `low` (both casefolded), as a whole word if asked (ASCII letters/digits)?"""
    start = low.find(needle)
    while start >= 0:
        if not whole_word:
            return True
        end = start + len(needle)
        before = low[start - 1] if start else ""
        after = low[end] if end < len(low) else ""
        if not (before and _WORD_CHAR.match(before)) and not (after and _WORD_CHAR.match(after)):
            return True
        start = low.find(needle, start + 1)
    return False


@lru_cache(maxsize=64)
def _staff_needles(key: tuple[tuple[str, str], ...]) -> tuple[tuple[str, tuple[tuple[str, bool], ...]], ...]:
    """Per staff email: (needle, whole_word) pairs, casefolded and whitespace-normalised."""
    out = []
    for email, name in key:
        needles: list[tuple[str, bool]] = []
        if email:
            needles.append((email.casefold(), False))  # a full address always counts
            local = email.split("@", 1)[0].casefold()
            if len(local) >= 3:
                needles.append((local, local.isascii()))
        name = " ".join(name.casefold().split())
        if len(name) >= 2:
            needles.append((name, name.isascii()))
        if needles:
            out.append((email, tuple(needles)))
    return tuple(out)


def mentioned_staff(text: str, staff: list[StaffMember]) -> set[str]:
    """Emails of the staff members whose name, address or address local part appears in `text`."""
    if not text or not staff:
        return set()
    low = " ".join(text.casefold().split())
    key = tuple((m.email.strip().lower(), (m.name or "").strip()) for m in staff)
    return {email for email, needles in _staff_needles(key)
            if any(_found(low, needle, whole) for needle, whole in needles)}
