"""asr.phonetic on real words: what Whisper writes for what was said."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from asr.phonetic import (
    EXACT,
    SOUTHERN,
    Mergers,
    PhoneticIndex,
    fold,
    readings,
    sound_key,
    syllables,
    text_key,
)

# (heard, meant): Whisper's homophones in complaint transcripts; same toneless pinyin
HOMOPHONES = [
    ("护兰", "护栏"),  # hu lan
    ("直班", "值班"),  # zhi ban
    ("现成", "县城"),  # xian cheng
    ("苍营", "苍蝇"),  # cang ying
    ("文字", "蚊子"),  # wen zi (tones differ)
    ("没气", "煤气"),  # mei qi
    ("普洋", "浦阳"),  # pu yang: p is p, yang is yang
]


@pytest.mark.parametrize(("heard", "meant"), HOMOPHONES)
def test_homophones_have_one_key(heard: str, meant: str) -> None:
    assert text_key(heard, EXACT) == text_key(meant, EXACT)
    assert text_key(heard) == text_key(meant)
    assert PhoneticIndex([meant], EXACT).lookup(heard) == [meant]


def test_syllables_and_readings() -> None:
    assert syllables("浦阳街道") == ["pu", "yang", "jie", "dao"]
    assert syllables("绿A窨井") == ["lv", "", "xun", "jing"]  # ü as v, '' for non-Han
    assert syllables("着火了") == ["zhao", "huo", "le"]  # read in context
    assert syllables("") == []
    assert readings("窨") == ("xun", "yin")  # the most common first
    assert readings("长")[:2] == ("zhang", "chang")
    assert readings("A") == () and readings("") == ()


def test_tones_do_not_count() -> None:
    assert text_key("妈", EXACT) == text_key("马", EXACT) == text_key("骂", EXACT)
    assert text_key("买卖", EXACT) == ("mai", "mai")
    assert PhoneticIndex(["买卖"], EXACT).lookup("埋麦") == ["买卖"]


def test_heteronym_indexed_under_each_reading() -> None:
    # 窨井 is yin jing; pypinyin reads 窨 as xun first (窨茶), and Whisper writes 音井
    index = PhoneticIndex(["窨井"], EXACT)
    assert index.lookup("音井") == ["窨井"]
    assert index.lookup("寻井") == ["窨井"]
    assert index.lookup("窨井") == []  # what was heard is not its own correction
    assert index.lookup("音紧") == []  # jin is not jing exactly ...
    assert PhoneticIndex(["窨井"]).lookup("音紧") == ["窨井"]  # ... but -n/-ng in the south


def test_southern_mergers() -> None:
    # n/l: 牛奶 heard as 刘奶
    assert text_key("牛奶") == text_key("刘奶")
    # -n/-ng: 人民/人名, 金/京, 陈/程, and iang/ian, uang/uan
    assert text_key("人民") == text_key("人名")
    assert sound_key("金") == sound_key("京") and sound_key("陈") == sound_key("程")
    assert fold("niang") == fold("lian") == "lian" and fold("huang") == fold("huan")
    # zh/z, ch/c, sh/s, f/h, r/l
    assert sound_key("知") == sound_key("资") and sound_key("吃") == sound_key("疵")
    assert sound_key("诗") == sound_key("思") and sound_key("湖") == sound_key("福")
    assert sound_key("热") == sound_key("乐")
    # -ong keeps its ng: 东 is not 蹲
    assert sound_key("东") != sound_key("蹲")
    # a non-Han character is its own key
    assert sound_key("A") == "A" and text_key("A1") == ("A", "1")


def test_exact_and_southern_differ() -> None:
    for a, b in [("牛奶", "刘奶"), ("人民", "人名"), ("知道", "资道"), ("湖南", "福南")]:
        assert text_key(a, EXACT) != text_key(b, EXACT)
        assert text_key(a, SOUTHERN) == text_key(b, SOUTHERN)
        assert PhoneticIndex([a], EXACT).lookup(b) == []
        assert PhoneticIndex([a], SOUTHERN).lookup(b) == [a]
    assert fold("zhang", EXACT) == "zhang" and fold("zhang") == "zan"


def test_mergers_from_rule_settings() -> None:
    # ticket_rules.yaml's form: initials replaced whole, finals by their ending
    rules = Mergers.of({"zh": "z", "l": "n"}, {"ing": "in"})
    assert rules == Mergers((("zh", "z"), ("l", "n")), (("ing", "in"),))
    assert fold("zhing", rules) == "zin" and fold("ling", rules) == "nin"
    assert fold("xiang", rules) == "xiang"  # no ang pair here
    assert fold("er", rules) == "er" and fold("n", rules) == "n"  # no initial


def test_index_shape() -> None:
    index = PhoneticIndex(["值班", "值班", "浦阳街道", "黄宅镇", "A座", "长", "江南第一家园区"],
                          min_chars=2, max_chars=6)
    assert len(index) == 3  # repeats, non-Han, too short and too long are left out
    assert index.lengths == (4, 3, 2)
    assert index.lookup("普阳街道") == ["浦阳街道"]
    assert index.lookup("黄寨镇") == ["黄宅镇"]
    assert index.lookup("直班的") == []  # only terms of the same length
    assert not PhoneticIndex([]) and PhoneticIndex([]).lookup("值班") == []


def _jieba_words(min_freq: int = 0) -> list[str]:
    spec = importlib.util.find_spec("jieba")
    assert spec and spec.origin
    lines = (Path(spec.origin).parent / "dict.txt").read_text(encoding="utf-8").splitlines()
    return [p[0] for p in (line.split() for line in lines) if len(p) >= 2 and int(p[1]) >= min_freq]


def test_index_over_a_real_dictionary_finds_what_was_meant() -> None:
    words = _jieba_words(min_freq=30)  # about 60k words
    started = time.process_time()
    index = PhoneticIndex(words)
    built = time.process_time() - started
    assert len(index) > 50_000
    # the whole 349k-word dictionary takes about 3 s of CPU time (see PhoneticIndex)
    assert built < 3.0, built
    for heard, meant in HOMOPHONES[:6]:
        assert meant in index.lookup(heard), heard
    started = time.process_time()
    for _ in range(200):
        for heard, _meant in HOMOPHONES:
            index.lookup(heard)
    per_lookup = (time.process_time() - started) / (200 * len(HOMOPHONES))
    assert per_lookup < 200e-6, per_lookup
