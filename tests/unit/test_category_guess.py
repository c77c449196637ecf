"""The learned category guess: the shipped model is the one the corpus trains (retrain it when the
corpus changes), it never saw the held-out half, and any text gets an answer."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from mailflow import category_guess as cg
from tests.unit import test_policy

CATEGORIES = set(test_policy.CATEGORIES)


def test_the_shipped_model_is_what_the_corpus_trains_without_the_held_out_half():
    shipped = json.loads(cg.MODEL.read_text(encoding="utf-8"))
    assert shipped["held_out"] == sorted(test_policy.HELD_OUT)
    mails = [(f"{m.subject}\n{m.body}", m.category) for m in test_policy.MAILS if m.half not in test_policy.HELD_OUT]
    fresh = cg.train(mails)
    fresh["held_out"] = sorted(test_policy.HELD_OUT)
    assert fresh == shipped, ("the corpus changed: retrain with `PYTHONPATH=. python3 -m mailflow.category_guess "
                              "--train tests/data/policy --exclude h`")


def test_it_reads_what_the_words_leave_open():
    assert cg.guess("App\n打开app就闪退，重装了也一样，手机是华为。")[0] == "fault"
    assert cg.guess("Refund\nI returned the jacket three weeks ago and still have not got my money back.")[0] == \
        "complaint"
    assert cg.guess("Idea\nIt would be nice if the app could remember my last delivery address.")[0] == "suggestion"
    cat, conf = cg.guess("请问你们周末营业吗？营业时间是几点到几点？")
    assert cat == "inquiry" and 0.5 < conf <= 1.0
    facts = cg.facts("谢谢", "感谢王师傅，上门很准时，装得很仔细，非常满意！")
    assert facts["guess.category"] == "praise" and 0 < facts["guess.confidence"] <= 1


@given(st.text(max_size=400))
def test_any_text_gets_a_category_and_a_probability(text):
    cat, conf = cg.guess(text)
    assert cat in CATEGORIES and 0.0 < conf <= 1.0
