"""features: sentiment score and staff mentions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailflow.config import StaffMember
from mailflow.features import mentioned_staff, sentiment


@pytest.mark.parametrize("text", ["", "   ", "请问发票怎么开？", "Hello, how do I reset my password?", "订单号 12345"])
def test_neutral_text_is_zero(text):
    assert sentiment(text) == 0.0


@pytest.mark.parametrize("text", [
    "非常满意，谢谢！", "服务很好，点赞", "服務很好，非常滿意", "Thank you, excellent support!", "I am very happy with it",
    "不错，满意",
])
def test_positive(text):
    assert sentiment(text) > 0.3


@pytest.mark.parametrize("text", [
    "我很失望，太差了，垃圾服务", "态度恶劣，无法接受", "服務很差，非常失望", "This is terrible, I'm very disappointed!",
    "Worst support ever. Unacceptable.", "客服态度非常差，我要投诉！",
])
def test_strongly_negative_reaches_the_bundled_threshold(text):
    assert sentiment(text) <= -0.5


def test_negation_flips_chinese_and_english():
    assert sentiment("满意") > 0 > sentiment("不满意")
    assert sentiment("不太满意") < 0
    assert sentiment("并不满意") < 0
    assert sentiment("没有很满意") < 0
    assert sentiment("happy") > 0 > sentiment("not happy")
    assert sentiment("I don't find it good") < 0
    assert sentiment("never satisfied") < 0
    # a negated negative word is mildly positive
    assert 0 < sentiment("not bad") < sentiment("good")
    assert sentiment("不差") >= 0


def test_negation_does_not_leak_across_words_or_clauses():
    assert sentiment("不错，满意") > sentiment("满意")  # "不" belongs to 不错, not to 满意
    assert sentiment("No. I am happy") > 0  # the negator is in the previous sentence


def test_intensifiers_strengthen():
    assert sentiment("非常失望") < sentiment("失望") < 0
    assert sentiment("very disappointed") < sentiment("disappointed") < 0


def test_more_negative_words_is_more_negative_and_clipped():
    one, many = sentiment("失望"), sentiment("失望，愤怒，垃圾，糟糕，恶心，骗子" * 20)
    assert -1.0 <= many < one < 0
    assert sentiment("完美，优秀，喜欢，感谢" * 50) <= 1.0


def test_mixed_language_and_case():
    assert sentiment("系统又崩溃了 TERRIBLE!!! 非常生气") <= -0.5
    assert sentiment("GREAT JOB") > 0


@pytest.mark.parametrize("text", [
    "你们到底什么时候给我开发票？？？等了一个月了，气死了！", "受够了，你们这是什么破服务！", "搞什么啊，三次都没送到，太不像话了！",
    "你們到底有沒有在處理？憑什麼這樣對客戶！", "真的受夠了，客服態度差到極點", "黑心商家，不靠谱！",
    "This is a joke. Incompetent service!!", "I'm sick of waiting, this is outrageous.", "Absolutely appalling. Nobody cares.",
    "What a rip-off!!!", "I am extremely dissatisfied with your support.", "Not good enough. I'm fed up!",
])
def test_exasperated_phrases_count_as_angry(text):
    """Customers write their anger as rhetorical questions and slang as often as with adjectives."""
    assert sentiment(text) <= -0.5


@pytest.mark.parametrize("text", [
    "请问发票怎么开？谢谢！", "订单什么时候发货？", "请问可以开专票吗？！", "建议增加夜间模式！！", "No rush!", "不急，有空看看就行",
    "The export fails with error 500.", "Is there an issue with the server??", "Hi! Quick question about the API!!",
])
def test_neutral_mail_stays_above_the_threshold_even_when_it_shouts(text):
    assert sentiment(text) > -0.5


def test_shouting_strengthens_only_a_negative_tone():
    assert sentiment("太失望了！！！") < sentiment("太失望了。") < 0
    assert sentiment("Terrible service!!") < sentiment("Terrible service.") < 0
    assert sentiment("请问什么时候发货？？？") == sentiment("请问什么时候发货？") == 0.0
    assert sentiment("Thanks!!") == sentiment("Thanks.") > 0


@given(st.text(max_size=300))
def test_always_in_range(text):
    s = sentiment(text)
    assert -1.0 <= s <= 1.0


STAFF = [
    StaffMember("wang.fang@corp.example", "王芳", ["customer_service"]),
    StaffMember("alice@corp.example", "Alice Chen", ["tech"]),
    StaffMember("al@corp.example", "Al", ["tech"]),  # local part and name too short
    StaffMember("li@corp.example", "李明", ["tech"]),
    StaffMember("bob.smith@corp.example", "Robert Smith", ["tech"]),
]


@pytest.mark.parametrize("text,expected", [
    ("客服王芳态度很差，挂了我电话", {"wang.fang@corp.example"}),
    ("Alice Chen was rude to me", {"alice@corp.example"}),
    ("alice说明天处理", {"alice@corp.example"}),  # local part next to Chinese
    ("ALICE@CORP.EXAMPLE never answered", {"alice@corp.example"}),
    ("I also called", set()),  # "al" is too short for a local part, and "Al" is not a word here
    ("write to al@corp.example", {"al@corp.example"}),  # a full address always counts
    ("malice aforethought", set()),  # whole words only
    ("李明和王芳都没回复", {"li@corp.example", "wang.fang@corp.example"}),
    ("robert  smith and bob.smith", {"bob.smith@corp.example"}),
    ("nobody in particular", set()),
    ("", set()),
])
def test_mentioned_staff(text, expected):
    assert mentioned_staff(text, STAFF) == expected


def test_mentioned_staff_without_staff():
    assert mentioned_staff("王芳", []) == set()
