"""诉求概要 (pipeline/tickets/summary.py): five elements, at most 80 characters."""

from __future__ import annotations

import hashlib

import pytest

from asr.types import Segment, Transcript
from pipeline.ticket_schema import Location
from pipeline.tickets import TicketContext, build_ticket, load_rules, summarise

SHA = hashlib.sha256(b"summary").hexdigest()


def summary_of(text: str, **context: object) -> str:
    t = Transcript(
        text=text,
        segments=[Segment(start=0.0, end=3.0, text=text, avg_logprob=-0.2)],
        language="zh",
        language_probability=0.98,
        duration=3.0,
        model="whisper-base",
    )
    ticket = build_ticket(t, TicketContext(audio_sha256=SHA, **context),
                          review_confidence_below=0.45)
    return ticket.summary


# spoken (no punctuation, fillers) -> the whole line
FIVE_ELEMENTS = [
    (
        "喂你好我想反映一下我们浦阳街道和平路口的路灯坏了一个星期了晚上黑乎乎的",
        "来电人反映：浦阳街道和平路口路灯损坏一周，夜间出行不便；诉求：尽快维修。",
    ),
    (
        "那个黄宅镇上山村的自来水从上个月开始就发黄了不敢喝希望尽快处理一下",
        "来电人反映：黄宅镇上山村自上个月起自来水发黄浑浊，影响正常使用；诉求：尽快处理。",
    ),
    (
        "就是仙华街道翠湖小区的电梯坏了三天了老人上下楼很危险",
        "来电人反映：仙华街道翠湖小区电梯损坏三天，存在安全隐患；诉求：尽快维修。",
    ),
    (
        "我在超市买的猪肉是变质的要求退款",
        "来电人反映：猪肉质量问题；诉求：退款。",
    ),
]


@pytest.mark.parametrize(("text", "expected"), FIVE_ELEMENTS)
def test_five_elements(text: str, expected: str) -> None:
    assert summary_of(text) == expected


def test_request_defaults_from_kind_when_not_said() -> None:
    line = summary_of("白马镇嵩溪村那边的垃圾没人管")
    assert line.startswith("来电人反映：白马镇嵩溪村垃圾无人处理")
    assert line.endswith("；诉求：尽快处理。")


def test_typed_message_prefix() -> None:
    line = summary_of("您好，浦阳街道塔山社区的路灯不亮两天了，请尽快修好。", source="message")
    assert line == "网民反映：浦阳街道塔山社区路灯不亮两天；诉求：尽快维修。"


def test_urgent_is_marked() -> None:
    line = summary_of("我住在仙华街道翠湖小区。厨房里一股煤气味，好像漏气了。")
    assert line.startswith("【紧急】来电人反映：仙华街道翠湖小区煤气泄漏")


def test_heard_object_is_written_right() -> None:
    assert "井盖" in summary_of("有个紧盖不见了，很危险")


def test_never_over_80_never_empty_no_fillers() -> None:
    long_text = "我要投诉" + "隔壁工地半夜施工打桩机器声音特别特别大吵得老人小孩都睡不着" * 5
    line = summary_of(long_text)
    assert 0 < len(line) <= 80
    for text in ["嗯嗯那个", "", "喂喂喂", "我就是想说说这个事情你们看着办吧"]:
        line = summary_of(text)
        assert line and len(line) <= 80
        assert "喂" not in line and "那个" not in line


def test_fallback_is_the_clause_in_third_person() -> None:
    line = summary_of("我想问一下我家孩子明年上小学要准备什么材料")
    assert line.startswith("来电人反映：")
    assert "我" not in line and "其家孩子" in line
    assert line.endswith("。")


def test_summarise_directly_with_a_location() -> None:
    rules = load_rules()
    where = Location(street="郑宅镇", village="前店村")
    line = summarise("李子卖不出去了", rules, kind="求助", location=where)
    assert line == "来电人反映：郑宅镇前店村李子滞销；诉求：给予帮助。"
    assert summarise("", rules) == rules.rules.summary.empty_text


def test_message_title_stands_in_when_no_object_is_found() -> None:
    rules = load_rules()
    line = summarise("开发商一直不给办房产证，多次找了也没用。", rules, kind="投诉",
                     source="message", title="盛世花园小区房产证迟迟办不下来")
    assert line == "网民反映：盛世花园小区房产证迟迟办不下来；诉求：尽快处理。"
