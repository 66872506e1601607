"""Ticket extraction on real-sounding complaints (pipeline/tickets/, ticket_schema.py).

The sentences are what citizens of a county say to a 12345 line or into a voice note,
including what ASR does to them: no punctuation, spoken digits, wrong homophones.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from asr.types import Segment, Transcript
from pipeline.ticket_schema import SCHEMA_PATH, Ticket, mask_number, write_json_schema
from pipeline.tickets import (
    SoundIndex,
    TicketContext,
    TicketRules,
    assess_urgency,
    build_ticket,
    load_rules,
    mask_pii,
    mask_pii_segments,
    sound_hits,
)

SHA = hashlib.sha256(b"voice note").hexdigest()
NOW = datetime(2026, 11, 23, 7, 30, tzinfo=timezone.utc)
THRESHOLD = 0.45


def transcript(
    text: str,
    *,
    logprob: float = -0.2,
    flags: list[str] | None = None,
    language: str = "zh",
    segments: list[Segment] | None = None,
) -> Transcript:
    if segments is None:
        # one segment per sentence, as the VAD windows would give
        parts = [p for p in re.split(r"(?<=[。！？])", text) if p]
        segments, t = [], 0.0
        for part in parts or [text]:
            segments.append(Segment(start=t, end=t + 3.0, text=part, avg_logprob=logprob))
            t += 3.0
    return Transcript(
        text=text,
        segments=segments,
        language=language,
        language_probability=0.98,
        duration=max((s.end for s in segments), default=0.0),
        dialect="wu-pujiang",
        model="whisper-base",
        model_version="1.0.0",
        flags=flags or [],
    )


def context(**kw: Any) -> TicketContext:
    base: dict[str, Any] = {"audio_sha256": SHA, "audio_format": "amr", "sample_rate": 8000}
    base.update(kw)
    return TicketContext(**base)


def build(text: str, **kw: Any) -> Ticket:
    return build_ticket(transcript(text), context(**kw), review_confidence_below=THRESHOLD, now=NOW)


# --------------------------------------------------------------------------------------
# Kind, category, urgency on real sentences
# --------------------------------------------------------------------------------------

# (text, kind, category code, urgent rule names that must fire)
CASES: list[tuple[str, str, str, set[str]]] = [
    (
        "你好，浦阳街道人民路这边有根自来水管爆了，水一直往外冒，路上全是水，麻烦赶快来抢修。",
        "投诉",
        "utility.water",
        {"water_main_burst"},
    ),
    (
        "喂，你好，我想反映一下，我们浦阳街道和平路上的路灯坏了一个星期了，晚上黑乎乎的，"
        "老人走路很危险。",
        "投诉",
        "city.street_light",
        set(),
    ),
    (
        "我家厨房里闻到很大的煤气味，不知道哪里漏气了，快派人来看看。",
        "投诉",
        "safety.gas",
        {"gas_leak"},
    ),
    ("我闻到一股煤汽味好像是隔壁传过来的", "投诉", "safety.gas", {"gas_leak"}),  # ASR 汽
    ("物业没人管煤气一直在漏。", "投诉", "safety.gas", {"gas_leak"}),
    ("我想问一下煤气费怎么交，在哪里交？", "咨询", "utility.gas", set()),
    ("我想咨询一下天然气开户要带什么材料。", "咨询", "utility.gas", set()),
    (
        "浦江县仙华街道翠湖小区三栋二单元的消防通道被电瓶车堵死了，物业也不管。",
        "投诉",
        "safety.fire",
        {"fire_exit_blocked"},
    ),
    ("楼道里有人飞线给电瓶车充电，前天晚上已经着火过一次了。", "投诉", "safety.fire", {"fire"}),
    (
        "黄宅镇那边的河堤裂开了一个大口子，在渗水，下雨天很危险。",
        "投诉",
        "disaster.flood_geo",
        {"embankment_landslide"},
    ),
    (
        "岩头镇后山那边山体滑坡了，石头滚到路上了。",
        "投诉",
        "disaster.flood_geo",
        {"embankment_landslide"},
    ),
    (
        "我们村口的电线掉下来了，拖在地上，小孩子天天从那里走。",
        "投诉",
        "utility.power",
        {"live_wire"},
    ),
    ("有没有人管一下，是不是漏电了，那个电箱在冒火花。", "投诉", "utility.power", {"live_wire"}),
    (
        "和平路十二号门口的井盖没了，晚上骑车的人很容易掉下去。",
        "投诉",
        "road.facilities",
        {"manhole_open"},
    ),
    (
        "楼下邻居家的老太太一个人住，好几天没开门了，打电话也联系不上，担心她生病了。",
        "求助",
        "civil.elderly",  # 民政/社会服务: lone elderly people (not pensions)
        {"elderly_alone_ill"},
    ),
    ("电梯坏了，我妈被困在电梯里了，快来人啊！", "求助", "housing.property", {"person_in_danger"}),
    ("有没有人管，小孩掉到河里了", "求助", "emergency.transfer", {"person_in_danger"}),
    (
        "昨晚下暴雨，我们一楼家里进水了，水都没过膝盖了。",
        "求助",
        "disaster.flood_geo",
        {"flooding_home"},
    ),
    (
        "老小区的墙皮脱落了，砸到了停在下面的车",
        "投诉",
        "housing.safety",
        {"structure_collapse"},
    ),
    ("前面十字路口发生车祸了，有人躺在地上", "投诉", "emergency.transfer", {"traffic_accident"}),
    (
        "我反映一下，白马镇有个化工厂氯气泄漏，味道很刺鼻",
        "投诉",
        "env.pollution",
        {"hazmat_leak"},
    ),
    (
        "楼下烧烤店油烟太大了，每天晚上熏得我们窗户都不能开，我要投诉。",
        "投诉",
        "env.catering_fumes",
        set(),
    ),
    (
        "我要举报，有个工厂晚上偷偷往浦阳江里排污水，河水都发黑了。",
        "举报",
        "env.pollution",
        set(),
    ),
    (
        "我想表扬一下社区的王书记，上次帮我们解决了停水的问题，很负责。",
        "表扬",
        "utility.water",
        set(),
    ),
    (
        "建议在郑宅镇中心小学门口加装一个红绿灯，学生过马路太危险了。",
        "建议",
        "traffic.signals",
        set(),
    ),
    ("大畈乡的公交班次太少了，能不能多开几班", "建议", "traffic.transit", set()),
    ("我在工地干了半年，包工头拖欠工资三万多，到现在都不给。", "投诉", "labour.wages", set()),
    (
        "佛山顺德区大良街道有人天天晚上在小区广场跳广场舞，音响开得很大声，吵得睡不着。",
        "投诉",
        "noise.social",
        set(),
    ),
    (
        "上个月十一号开始，隔壁工地半夜施工打桩，吵得根本睡不着。",
        "投诉",
        "noise.construction",
        set(),
    ),
    (
        # raw ASR: no punctuation at all
        "喂你好我是浦南街道的居民我们这边的自来水已经停了两天了也没有人通知",
        "投诉",
        "utility.water",
        set(),
    ),
    ("仙华街道有一家超市卖过期的牛奶，孩子喝了拉肚子。", "投诉", "market.food_safety", set()),
    ("停电了，什么时候能来电？", "咨询", "utility.power", set()),
    ("我想举报有人在虞宅乡那边的山上乱埋乱葬", "举报", "civil.funeral", set()),
    (
        "是这样的，我爸的医保报销一直没到账，医院说要去医保局问",
        "投诉",
        "health.medical",
        set(),
    ),
    ("郑家坞镇那个村里的猪场臭得要命，污水直接排到溪里", "投诉", "rural.agriculture", set()),
    ("广州市天河区那个公交车司机态度很差，还拒载。", "投诉", "traffic.transit", set()),
]


@pytest.mark.parametrize(("text", "kind", "code", "urgent_rules"), CASES)
def test_real_complaints(text: str, kind: str, code: str, urgent_rules: set[str]) -> None:
    ticket = build(text)
    assert ticket.kind == kind
    assert ticket.category.code == code
    assert set(ticket.urgency.rules) >= urgent_rules
    if urgent_rules:
        assert ticket.urgency.level == "urgent"
        assert ticket.urgency.reasons and all(ticket.urgency.reasons)
        assert "urgent" in ticket.review.flags and ticket.review.needed
        assert ticket.summary.startswith("【紧急】来电人反映：")
    else:
        assert ticket.urgency.level == "normal", ticket.urgency
        assert ticket.summary.startswith("来电人反映：")
    assert len(ticket.summary) <= 80 and "诉求：" in ticket.summary


def test_every_urgency_rule_has_a_positive_case() -> None:
    names = {r.spec.name for r in load_rules().urgency_rules}
    covered = set().union(*(rules for *_, rules in CASES))
    assert names <= covered, names - covered


@pytest.mark.parametrize(
    "text",
    [
        "我想问一下煤气费怎么交，在哪里交？",  # about the gas bill, not a leak
        "燃气公司的人态度太差了。",
        "我们小区没有闻到煤气味，就是燃气灶打不着火，麻烦问一下怎么办。",
        "天然气管道没有泄漏，我就是想问一下开户需要什么材料。",
        "电线没有断，就是路灯不亮。",
        "厂里烟囱一直冒黑烟，呛得人受不了。",  # pollution, not a fire
        "我的电动车轮胎漏气了，路上全是钉子。",
        "楼上的人天天往楼下倒垃圾，说了也不听。",  # 倒 is not a collapse
        "我们这里停水三天了，家里也没有通知，自来水公司电话打不通。",
        "我们这里有个独居老人，想问问高龄补贴怎么申请",
        "河堤那边我看了，没有裂缝，也没有渗水，就是有人在钓鱼",
        "好在没有人受伤，就是车子被刮花了，想问问找谁赔。",
    ],
)
def test_not_urgent(text: str) -> None:
    ticket = build(text)
    assert ticket.urgency.level == "normal", ticket.urgency
    assert "urgent" not in ticket.review.flags


@pytest.mark.parametrize(
    "text",
    [
        "我们小区没有闻到煤气味，就是燃气灶打不着火。",
        "天然气管道没有泄漏吧，我也不确定。",
        "电线没有断，就是路灯不亮。",
        "闻到一股臭鸡蛋的味道",  # gas odorant, or a sewer: a person decides
        "楼道里堆满了杂物，过都过不去",
        "路上积水很深，车子开不过去",
    ],
)
def test_unconfirmed_hazards_reach_a_person(text: str) -> None:
    # a negation we read wrongly must not silence a hazard: it is flagged, not urgent
    ticket = build(text)
    assert ticket.urgency.level == "normal"
    assert ticket.urgency.possible
    assert "possible_urgent" in ticket.review.flags


@pytest.mark.parametrize(
    "text",
    [
        "有没有漏气我也不知道，反正一股煤气味。",  # question form is not a negation
        "是不是漏电了，碰一下热水器就麻。",
        "物业没人管，煤气一直在漏",  # 没 negates 人管, not the leak
        "家里的液化气罐漏了，嘶嘶响。",
        "燃气表那里有股味道，很呛。",
        "我们楼下的配电箱电线都裸露在外面，下雨天还在打火。",
        "江堤上冒水了，像是管涌，快来看看",
        "塘坝垮了一截",
        "我家隔壁冒出浓烟，好像着火了",
        "路口的窨井盖被人偷了，黑乎乎的看不见",
        "有个老人晕倒在菜场门口了",
        "涨大水了，水漫进屋里了",
        "家里有股臭鸡蛋味，是不是燃气漏了",
        "隔壁冒烟了",
        "后面山上着火了，烧得很大",
        "电线杆倒了，横在马路上",
        "电缆被挖断了",
        "水库水快漫过坝了",
        "后山的山坡在往下滑",
        "有人要跳河",
        "有个人躺在路边一动不动",
        "地下室有股很浓的汽油味",
    ],
)
def test_urgent_variants(text: str) -> None:
    assert build(text).urgency.level == "urgent"


def test_urgency_reasons_are_human_and_named() -> None:
    finding = assess_urgency("厨房里煤气漏了，门口消防通道还被堵了", load_rules())
    assert finding.rules[:1] == ["gas_leak"] and "fire_exit_blocked" in finding.rules
    assert all("\u4e00" <= r[0] <= "\u9fff" for r in finding.reasons)


# --------------------------------------------------------------------------------------
# Homophones: what Whisper base really wrote for our sample voice notes
# --------------------------------------------------------------------------------------

# (Whisper's text, kind, category, urgent rules, homophone_match expected)
WHISPER_CASES: list[tuple[str, str, str, set[str], bool]] = [
    # spoken 我担心是煤气泄漏 / 有很大一股煤气味: the gas leak must not be missed
    ("我担心是没气泄露，麻烦赶紧派人过来看看。", "投诉", "safety.gas", {"gas_leak"}, True),
    (
        "仙华街道江南花园小区的楼道里，有很大衣骨没气味，已经闻了半个多小时了。",
        "投诉",
        "safety.gas",
        {"gas_leak"},
        True,
    ),
    # the whole voice note as Whisper base wrote it (samples/README.md, 02, t2s)
    (
        "你好，我要紧急反应一个情况。先划街道将南华岩小区五号罗二单元的楼道里，有很大衣谷"
        "没气味，已经闻了半个多小时了。我担心是没气泄了，麻烦赶紧派人过来看看，我电话是"
        "13905791234。",
        "投诉",
        "safety.gas",
        {"gas_leak"},
        True,
    ),
    # spoken 有个井盖不见了，路中间一个大洞，很危险
    ("有个紧盖不见了，很微信", "投诉", "road.facilities", {"manhole_open"}, True),
    (
        "你好，普阳街道通江路菜市场门口有个景盖不见了，很危险。还没有，但是晚上路灯暗，"
        "旗电评车的很容易掉下去。好的，谢谢。",
        "投诉",
        "road.facilities",
        {"manhole_open"},
        True,
    ),
    # 消防通道被好多电瓶车堵住了: urgent as written already (消防通道 + 堵)
    (
        "我们楼的消防通道对好多电频车堵住了，物业也不管。",
        "投诉",
        "safety.fire",
        {"fire_exit_blocked"},
        False,
    ),
    # 垃圾桶, 环卫: the category comes from the sound-alike
    ("村口那几个拉基统已经五天没人来收了，臭得不得了", "投诉", "city.sanitation", set(), True),
    ("麻烦你们联系一下环位，早点来收一下", "投诉", "city.sanitation", set(), True),
    # 噪音 (with 吵/睡不着 written the category is noise.social either way)
    ("隔壁的造音太大了，吵得睡不着", "投诉", "noise.social", set(), False),
    # 咨询一下医保: kind and category both from sound-alikes
    ("我想资讯一下以保的问题", "咨询", "health.medical", set(), True),
]


@pytest.mark.parametrize(("text", "kind", "code", "urgent_rules", "flagged"), WHISPER_CASES)
def test_whisper_homophones(
    text: str, kind: str, code: str, urgent_rules: set[str], flagged: bool
) -> None:
    ticket = build(text)
    assert ticket.kind == kind
    assert ticket.category.code == code
    assert set(ticket.urgency.rules) == urgent_rules
    assert ticket.urgency.level == ("urgent" if urgent_rules else "normal")
    assert ("homophone_match" in ticket.review.flags) is flagged
    assert "uncategorised" not in ticket.review.flags


def test_homophone_urgency_says_what_was_heard() -> None:
    finding = assess_urgency("我担心是没气泄露", load_rules())
    assert finding.rules == ["gas_leak"] and finding.by_sound == ["gas_leak"]
    assert "没气≈煤气" in finding.reasons[0]
    assert finding.category == "safety.gas"
    ticket = build("有个紧盖不见了，很微信")
    assert "紧盖≈井盖" in ticket.urgency.reasons[0]
    assert {"urgent", "homophone_match"} <= set(ticket.review.flags)
    assert ticket.summary.startswith("【紧急】来电人反映：井盖")
    # written words alone: no homophone flag, reasons as before
    written = build("有个井盖不见了，很危险")
    assert "homophone_match" not in written.review.flags
    assert written.urgency.reasons == ["井盖缺失或破损（有人车坠落危险）"]


@pytest.mark.parametrize(
    "text",
    [
        "有的还在楼道里冲电，万一找火人都跑不出去",  # 着火 as 找火, nothing written beside it
        "楼道里找火了，好大的烟",
    ],
)
def test_lone_short_homophone_is_possible_not_urgent(text: str) -> None:
    # a two-character sound-alike alone is a lead (大人 would be 打人, 电视 电死):
    # a person sees it, dispatch does not
    ticket = build(text)
    assert ticket.urgency.level == "normal"
    assert any("找火≈着火" in p for p in ticket.urgency.possible)
    assert {"possible_urgent", "homophone_match"} <= set(ticket.review.flags)


@pytest.mark.parametrize(
    ("text", "code", "kind"),
    [
        # 红绿灯坏了: hong bi dou kuai vs hong lv deng huai, nothing to match on; the
        # classifier still reads 路口 + 黄灯 (and flags it unsure)
        ("路口的红币都快了，一直在闪黄灯", "traffic.signals", "投诉"),
        # 救护车: gu is not hu (g/h is not a confusion we merge); the classifier reads 快叫
        ("麻烦快叫一辆救骨车", "emergency.transfer", "投诉"),
        # 咨询一下医保: 衣宝 is yi bao = 医保, but 资许 is zi xu, not zi xun
        ("你好，我想资许一下衣宝的问题", "health.medical", "投诉"),
    ],
)
def test_homophones_not_caught(text: str, code: str, kind: str) -> None:
    """What sound matching cannot recover; the ticket still reaches a person."""
    ticket = build(text)
    assert (ticket.category.code, ticket.kind) == (code, kind)
    assert ticket.review.needed
    if code == "other":
        assert "uncategorised" in ticket.review.flags


# Realistic complaints, correctly written, full of words that sound like trigger words.
HOMOPHONE_NEGATIVES = [
    "虽然气味不大，但是垃圾站一直没人清运，苍蝇很多。",  # 然气 ~ 燃气
    "我的电瓶车轮胎没气了，修车铺说要换内胎，想问问哪里能修。",  # 没气 ~ 煤气
    "篮球场的篮球都没气了，也没人管。",
    "楼上天天看电视声音很大，吵得我们睡不着。",  # 电视 ~ 电死
    "声音很大人都睡不着，晚上十一点还在唱歌。",  # 大人 ~ 打人
    "大人小孩都被吵得睡不着觉。",
    "快递员拿到钱就走了，东西到现在也没送到。",  # 拿到 ~ 拿刀
    "大伙都说这个路口要装红绿灯。",  # 大伙 ~ 大火
    "小区进口那里的地砖掉了好几块，也没人修。",  # 进口 ~ 井口, 掉
    "他家的井水现在不能喝了，有股怪味。",  # 井水 ~ 进水
    "路灯的电线老化了，你们来的时候带点工具。",  # 带点 ~ 带电
    "厨房的烟囱冒起烟来呛得很，是楼下饭店的油烟。",  # 冒起 ~ 冒气
    "我们楼电梯又坏了，老人上下楼很不方便。",  # 楼电 ~ 漏电
    "楼道里全是烟了，有人在里面抽烟。",  # 烟了 ~ 淹了 (了 alone is no shared character)
    "小区管得太严了，进出都要登记。",  # 严了 ~ 淹了
    "我们这边一直没起色，路修了半年还没修好。",
    "每期的物业费都在涨，服务一点没改善。",  # 每期 ~ 煤气
    "美其名曰免费体检，其实是推销保健品，我要举报。",
    "从一楼到五楼的楼梯灯都不亮。",  # 楼到 ~ 楼道
    "他们在河边找伙伴钓鱼，留下很多垃圾。",  # 找伙 ~ 着火
    "早点先修一下吧，天天这样不是办法。",  # 点先 ~ 电线
    "我想问一下不可以在小区里遛狗吗？",  # 不可 ~ 补课
    "影响我们休息，能不能管一管。",  # 影响 ~ 音响
    "买了一包烟，小卖部多收了我五块钱。",  # 一包 ~ 医保
    "郑家坞镇那个村里的猪场臭得要命，污水直接排到溪里",  # 水直 ~ 水质
]


@pytest.mark.parametrize("text", HOMOPHONE_NEGATIVES)
def test_homophones_do_not_make_urgent(text: str) -> None:
    ticket = build(text)
    assert ticket.urgency.level == "normal", ticket.urgency
    assert not any("读音近似" in p for p in ticket.urgency.possible), ticket.urgency
    assert "homophone_match" not in ticket.review.flags


@pytest.mark.parametrize(
    "text",
    [
        "自来水有点黄，但是没气味，烧开了也没有沉淀。",
        "车胎没气了，是被人扎漏的，小区门口全是钉子。",
        "家里没气味了，谢谢你们来修",
    ],
)
def test_negation_shaped_homophone_is_only_possible(text: str) -> None:
    # 没气味 is 煤气味 or 没 + 气味: without 有/一股/闻到/担心 before it we cannot
    # tell, and a gas leak is the worst miss: a person looks, nobody is dispatched
    ticket = build(text)
    assert ticket.urgency.level == "normal"
    assert any("没气≈煤气" in p for p in ticket.urgency.possible)
    assert {"possible_urgent", "homophone_match"} <= set(ticket.review.flags)


def test_negated_homophone_is_possible_like_a_negated_word() -> None:
    # "井盖没有丢" is a possible_urgent; what Whisper writes for it is the same
    ticket = build("我去看了，那个紧盖没有丢，就是有点松")
    assert ticket.urgency.level == "normal"
    assert ticket.urgency.possible == ["井盖缺失或破损（有人车坠落危险）［读音近似：紧盖≈井盖］"]
    assert {"possible_urgent", "homophone_match"} <= set(ticket.review.flags)


def _rules_without_homophones() -> TicketRules:
    rules = load_rules()
    spec = rules.rules.homophones.model_copy(update={"enabled": False})
    plain = rules.rules.model_copy(update={"homophones": spec})
    return TicketRules.compile(rules.taxonomy, plain, rules.gazetteer)


def test_homophones_change_nothing_on_written_text() -> None:
    """Every correctly written sentence of this file (and the sample references) gets
    the same kind, category and urgency with sound matching as without it."""
    plain = _rules_without_homophones()
    refs = [
        json.loads(line)["text"]
        for line in (Path(__file__).parent.parent / "samples" / "manifest.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()
        if line.strip()
    ]
    texts = [c[0] for c in CASES] + refs + HOMOPHONE_NEGATIVES
    for text in texts:
        tickets = [
            build_ticket(
                transcript(text), context(), rules, review_confidence_below=THRESHOLD, now=NOW
            )
            for rules in (load_rules(), plain)
        ]
        a, b = (
            (t.kind, t.category.code, t.urgency.level, t.urgency.rules, t.urgency.possible)
            for t in tickets
        )
        assert a == b, text


def test_sound_index_rules() -> None:
    rules = load_rules()
    spec = rules.rules.homophones

    def heard(terms: list[str], text: str, **changes: Any) -> dict[str, list[str]]:
        index = SoundIndex(terms, spec.model_copy(update=changes))
        return {t: [h.heard for h in hs] for t, hs in index.find(text).items()}

    # equal toneless pinyin with a shared character
    assert heard(["噪音"], "造音太大") == {"噪音": ["造音"]}
    # fuzzy in/ing needs a shared character: 紧盖 yes, 今改 (jin gai) no
    assert heard(["井盖"], "紧盖丢了") == {"井盖": ["紧盖"]}
    assert heard(["井盖"], "今改好了") == {}
    assert heard(["井盖"], "紧盖丢了", finals={}) == {}  # without the in/ing pair
    # no shared character: only for long keywords or those listed in `loose`
    assert heard(["垃圾桶"], "拉基统") == {"垃圾桶": ["拉基统"]}
    assert heard(["医保"], "衣宝") == {"医保": ["衣宝"]}
    assert heard(["医保"], "衣宝", loose=[]) == {}
    assert heard(["医保"], "以保", loose=[]) == {"医保": ["以保"]}  # 保 is shared
    # written keywords and `ignore` words keep their characters
    assert heard(["淹了", "冒烟"], "冒烟了") == {}
    assert heard(["可疑"], "可以") == {}
    assert heard(["可疑"], "可以", ignore=[]) == {"可疑": ["可以"]}
    # single characters and regexes stay exact; so do `exact_only` terms
    assert heard(["漏", "掉(?:进|到)河"], "楼") == {}
    assert heard(["带电"], "带点") == {}
    assert heard(["带电"], "带点", exact_only=[]) == {"带电": ["带点"]}
    # 没气 reads as a negation too: weak unless a presence cue comes before it
    index = SoundIndex(["煤气"], spec)
    assert [h.weak for h in index.find("但是没气味")["煤气"]] == [True]
    assert [h.weak for h in index.find("有很大一股没气味")["煤气"]] == [False]
    assert [h.weak for h in index.find("我担心是没气泄露")["煤气"]] == [False]
    assert SoundIndex(["煤气"], spec.model_copy(update={"enabled": False})).find("没气") == {}


def test_sound_index_built_once_and_hits_cached() -> None:
    rules = load_rules()
    assert load_rules().sounds is rules.sounds
    assert "煤气" in rules.sounds.terms and "漏" not in rules.sounds.terms
    text = "我担心是没气泄露"
    assert sound_hits(text, rules) is sound_hits(text, rules)


def test_homophones_keep_tickets_fast() -> None:
    import time

    base = (
        "你好，我要紧急反映一个情况，仙华街道江南花园小区五号楼二单元的楼道里，有很大衣骨"
        "没气味，已经闻了半个多小时了，我担心是没气泄露，麻烦赶紧派人过来看看，谢谢你们。"
    )
    build(base)  # rules loaded, pypinyin warmed up
    start = time.perf_counter()
    for i in range(20):  # a new text each time: nothing comes from a cache
        build(f"{base}{i}")
    per_ticket = (time.perf_counter() - start) / 20
    assert per_ticket < 0.05, per_ticket


# --------------------------------------------------------------------------------------
# Location
# --------------------------------------------------------------------------------------


def test_location_from_speech_with_gazetteer() -> None:
    loc = build("我们浦阳街道和平路上的路灯坏了一个星期了").location
    assert (loc.province, loc.city, loc.district, loc.street) == (
        "浙江省",
        "金华市",
        "浦江县",
        "浦阳街道",
    )
    assert loc.text == "浦阳街道和平路"
    assert loc.parsed_from == "transcript"
    assert loc.lat is None and loc.lon is None  # never guessed from speech


def test_location_estate_building_unit() -> None:
    loc = build("浦江县仙华街道翠湖小区三栋二单元的消防通道被堵了").location
    assert loc.street == "仙华街道" and loc.district == "浦江县"
    assert loc.text == "浦江县仙华街道翠湖小区三栋二单元"


def test_location_guangdong() -> None:
    loc = build("佛山顺德区大良街道有人天天晚上跳广场舞").location
    assert (loc.province, loc.city, loc.district, loc.street) == (
        "广东省",
        "佛山市",
        "顺德区",
        "大良街道",
    )
    loc = build("广州市天河区那个公交车司机态度很差").location
    assert (loc.city, loc.district) == ("广州市", "天河区")


def test_location_river_is_not_a_city() -> None:
    # 浦阳江 contains 阳江 (a Guangdong city): it must stay a river
    loc = build("有个工厂晚上偷偷往浦阳江里排污水").location
    assert loc.city is None and loc.text == "浦阳江"


def test_ambiguous_district_prefers_deployment_region() -> None:
    loc = build("普陀区有个垃圾站一直没人清运").location
    assert (loc.province, loc.city) == ("浙江省", "舟山市")
    loc = build("上海普陀区有个垃圾站一直没人清运").location
    assert (loc.province, loc.district) == ("上海市", "普陀区")


def test_date_number_is_not_a_place() -> None:
    ticket = build("上个月十一号开始，隔壁工地半夜施工打桩，吵得根本睡不着。")
    assert ticket.location.text is None
    assert "no_location" in ticket.review.flags


def test_location_form_and_speech() -> None:
    ticket = build(
        "门口的井盖没了，在和平路十二号",
        address="浙江省金华市浦江县浦阳街道",
        lat=29.4521,
        lon=119.8923,
    )
    loc = ticket.location
    assert loc.parsed_from == "both"
    assert loc.street == "浦阳街道" and loc.city == "金华市"
    assert loc.text == "浙江省金华市浦江县浦阳街道；和平路十二号"
    assert (loc.lat, loc.lon) == (29.4521, 119.8923)
    assert "no_location" not in ticket.review.flags


def test_location_form_only_coordinates() -> None:
    ticket = build("路灯不亮好几天了", lat=23.0, lon=113.3)
    assert ticket.location.parsed_from == "form"
    assert "no_location" not in ticket.review.flags


def test_location_conflict_trusts_form_and_flags() -> None:
    ticket = build("黄宅镇的路灯坏了", address="广东省佛山市顺德区大良街道")
    assert ticket.location.street == "大良街道"
    assert "location_conflict" in ticket.review.flags


# --------------------------------------------------------------------------------------
# Personal data
# --------------------------------------------------------------------------------------

MOBILE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")
ID18 = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")
SPOKEN = re.compile(r"[零〇一二三四五六七八九幺]{7,}")


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("我电话一三九一二三四五六七八", "我电话139****5678"),
        ("手机是139 1234 5678", "手机是139****5678"),
        ("号码+86 139-1234-5678", "号码139****5678"),
        ("幺三九，幺二三四，五六七八", "139****5678"),
        ("身份证三三零七二六一九八零零一零一一二三四", "身份证330726********1234"),
        ("身份证号33072619800101123X", "身份证号330726********123X"),
        ("座机0579-84123456", "座机0579******56"),
        ("我电话是八四一二三四五六", "我电话是******56"),
        ("13912345678，3栋", "139****5678，3栋"),
        # not personal: left alone
        ("2026年11月23日12号", "2026年11月23日12号"),
        ("欠了三万二千块", "欠了三万二千块"),
        ("和平路128号3栋502室", "和平路128号3栋502室"),
    ],
)
def test_mask_pii(text: str, masked: str) -> None:
    assert mask_pii(text) == masked


def test_mask_number_keeps_most_hidden() -> None:
    assert mask_number("13912345678") == "139****5678"
    assert mask_number("12345", 3, 4).count("*") >= 4


def test_masking_reaches_every_field() -> None:
    phone_said = "一三九一二三四五六七八"
    text = (
        f"我是仙华街道的，我电话{phone_said}，身份证三三零七二六一九八零零一零一一二三四。"
        "我们小区门口的路灯坏了，你们打13812345678找我儿子也行。"
    )
    segs = [
        Segment(0, 4, "我是仙华街道的，我电话一三九一二三四", avg_logprob=-0.2),
        Segment(4, 8, "五六七八，身份证三三零七二六一九八零零一零一一二三四。", avg_logprob=-0.2),
        Segment(8, 12, "我们小区门口的路灯坏了，你们打13812345678找我儿子也行。", avg_logprob=-0.2),
    ]
    ticket = build_ticket(
        transcript(text, segments=segs),
        context(phone="139 1234 5678", address="仙华街道翠湖小区，电话13912345678"),
        review_confidence_below=THRESHOLD,
        now=NOW,
    )
    for form in (ticket.public_dict(), json.loads(ticket.public_json())):
        for s in _strings(form):
            assert not MOBILE.search(s), s
            assert not ID18.search(s), s
            assert not SPOKEN.search(s), s
    assert ticket.transcript.segments[0].text.endswith("*******")  # split across segments
    assert ticket.transcript.segments[1].text.startswith("****，身份证330726********1234")
    assert ticket.submitter.phone_masked == "139****5678"
    assert "139****5678" in ticket.transcript.text


def test_segment_masking_across_boundaries() -> None:
    assert mask_pii_segments(["电话一三九一二三四", "五六七八谢谢"]) == ["电话*******", "****谢谢"]


def test_submitter_phone_stored_but_never_shown() -> None:
    ticket = build("路灯坏了", phone="+86 139-1234-5678")
    assert ticket.submitter.phone == "13912345678"  # kept for the store
    assert ticket.public_dict()["submitter"] == {
        "phone": None,
        "phone_masked": "139****5678",
        "client_ref": None,
    }
    assert "13912345678" not in ticket.public_json()
    assert "13912345678" not in repr(ticket) and "13912345678" not in str(ticket)
    assert ticket.storage_dict()["submitter"]["phone"] == "13912345678"
    assert ticket.model_dump()["submitter"]["phone"] == "13912345678"  # store form
    assert ticket.submitter.masked().phone is None


# --------------------------------------------------------------------------------------
# Stereo hotline calls
# --------------------------------------------------------------------------------------


def _call(caller: int = 1) -> Transcript:
    agent = 1 - caller
    segs = [
        Segment(0.0, 2.5, "您好，12345热线，请问有什么可以帮您？", channel=agent),
        Segment(2.8, 7.0, "我们小区门口的井盖被人偷了，很危险。", channel=caller),
        Segment(7.2, 9.0, "请问具体地址是哪里？您家里有没有闻到煤气味？", channel=agent),
        Segment(9.1, 12.0, "对，有一点。在浦阳街道翠湖小区北门。", channel=caller),
        Segment(12.1, 14.0, "好的，我们咨询一下燃气公司，给您派单。", channel=agent),
    ]
    return transcript(" ".join(s.text for s in segs), segments=segs)


def test_caller_channel_builds_the_ticket() -> None:
    ticket = build_ticket(
        _call(caller=1),
        context(source="hotline", channels=2, caller_channel=1),
        review_confidence_below=THRESHOLD,
        now=NOW,
    )
    # the agent's "咨询" and "燃气公司" do not make it a gas consultation
    assert ticket.kind == "投诉"
    assert ticket.category.code == "road.facilities"
    assert ticket.urgency.rules == ["manhole_open"]
    # the agent asked about gas and the caller said "对": a person must look
    assert "possible_urgent" in ticket.review.flags
    assert any("燃气" in p for p in ticket.urgency.possible)
    assert ticket.location.street == "浦阳街道"
    speakers = {(s.channel, s.speaker) for s in ticket.transcript.segments}
    assert speakers == {(0, "agent"), (1, "caller")}
    assert len(ticket.transcript.segments) == 5  # reviewers still see the whole call


def test_caller_channel_zero_and_missing() -> None:
    ticket = build_ticket(
        _call(caller=0),
        context(source="hotline", channels=2, caller_channel=0),
        review_confidence_below=THRESHOLD,
        now=NOW,
    )
    assert ticket.category.code == "road.facilities"
    ticket = build_ticket(
        _call(caller=1),
        context(source="hotline", channels=2, caller_channel=3),
        review_confidence_below=THRESHOLD,
        now=NOW,
    )
    assert "caller_channel_missing" in ticket.review.flags


# --------------------------------------------------------------------------------------
# Review flags
# --------------------------------------------------------------------------------------


def test_low_confidence_and_asr_flags() -> None:
    segs = [
        Segment(0, 3, "路灯坏了", avg_logprob=-0.1),
        Segment(3, 6, "在和平路", avg_logprob=-1.6, flags=["repetition_trimmed"]),
    ]
    t = transcript("路灯坏了，在和平路", segments=segs, flags=["dropped_hallucination"])
    ticket = build_ticket(t, context(), review_confidence_below=THRESHOLD, now=NOW)
    flags = ticket.review.flags
    assert "low_confidence" in flags
    assert "asr_repetition_trimmed" in flags
    assert "asr_dropped_hallucination" in flags
    assert ticket.transcript.segments[1].flags == ["asr_repetition_trimmed"]
    assert ticket.transcript.segments[1].confidence < THRESHOLD
    assert ticket.review.needed


def test_confident_clear_ticket_needs_no_review() -> None:
    ticket = build("我们浦阳街道和平路上的路灯坏了一个星期了")
    assert ticket.review.flags == [] and not ticket.review.needed


def test_wrong_language_and_empty() -> None:
    t = transcript("嗯嗯那个", language="en", flags=["wrong_language"])
    ticket = build_ticket(t, context(), review_confidence_below=THRESHOLD, now=NOW)
    assert {"wrong_language", "empty_transcript", "uncategorised", "no_location"} <= set(
        ticket.review.flags
    )
    assert ticket.category.code == "other"
    assert ticket.summary == "（无有效语音内容）"
    empty = build_ticket(
        transcript("", segments=[]), context(), review_confidence_below=THRESHOLD, now=NOW
    )
    assert "empty_transcript" in empty.review.flags


def test_uncategorised() -> None:
    ticket = build("我就是想说说，这个事情你们看着办吧")
    assert ticket.category.code == "other"
    assert "uncategorised" in ticket.review.flags


# --------------------------------------------------------------------------------------
# Summary, id, Open311, schema
# --------------------------------------------------------------------------------------


def test_summary_is_extractive_and_short() -> None:
    text = (
        "喂，你好，我想反映一下，我们浦阳街道和平路上的路灯坏了一个星期了，晚上黑乎乎的，"
        "老人走路很危险。"
    )
    # where, object, problem, how long, impact; the request by default from the problem
    assert build(text).summary == (
        "来电人反映：浦阳街道和平路路灯损坏一周，夜间出行不便；诉求：尽快维修。"
    )
    assert build(text).summary == build(text).summary
    long_text = "我要投诉" + "，隔壁工地半夜施工打桩机器声音特别特别大吵得老人小孩都睡不着" * 3
    assert len(build(long_text).summary) <= 80
    # the place said in another sentence still goes in front
    gas = build("我住在仙华街道翠湖小区。厨房里一股煤气味，好像漏气了。")
    assert gas.summary.startswith("【紧急】来电人反映：仙华街道翠湖小区煤气泄漏")


def test_ticket_id_and_times() -> None:
    submitted = datetime(2026, 11, 23, 15, 30, 12, tzinfo=timezone(timedelta(hours=8)))
    a = build("路灯坏了", submitted_at=submitted, client_ref="app-1")
    b = build("路灯坏了", submitted_at=submitted, client_ref="app-1")
    assert a.id == b.id  # a retried job rebuilds the same ticket id
    assert re.fullmatch(r"T20261123-073012-[0-9a-f]{8}", a.id)
    assert a.created_at == NOW and a.created_at.tzinfo == timezone.utc
    assert a.submitted_at == submitted.astimezone(timezone.utc)
    fresh = build_ticket(transcript("路灯坏了"), context(), review_confidence_below=THRESHOLD)
    assert fresh.created_at.tzinfo is not None
    given = build("路灯坏了", ticket_id="T20261123-073012-0000abcd")
    assert given.id == "T20261123-073012-0000abcd"


def test_open311_mapping() -> None:
    ticket = build(
        "门口的井盖没了，在和平路十二号",
        address="浙江省金华市浦江县浦阳街道",
        lat=29.4521,
        lon=119.8923,
        media_url="https://example.invalid/a.amr",
        submitted_at=datetime(2026, 11, 23, 7, 0, tzinfo=timezone.utc),
        phone="13912345678",
    )
    req = ticket.to_open311()
    assert req["service_request_id"] == ticket.id
    assert req["service_code"] == "road.facilities"
    assert req["service_name"] == "市政道路与井盖"
    assert req["status"] == "open"
    assert req["lat"] == 29.4521 and req["long"] == 119.8923
    assert req["media_url"] == "https://example.invalid/a.amr"
    assert req["requested_datetime"] == "2026-11-23T07:00:00+00:00"
    assert req["address_string"].startswith("浙江省金华市浦江县浦阳街道")
    assert "和平路十二号" in req["address_string"]
    assert req["description"].startswith(ticket.summary)
    assert "13912345678" not in json.dumps(req, ensure_ascii=False)
    assert set(req) >= {
        "service_code",
        "description",
        "address_string",
        "lat",
        "long",
        "media_url",
        "requested_datetime",
    }


def test_json_round_trip() -> None:
    ticket = build("物业没人管煤气一直在漏", phone="13912345678", address="浦阳街道")
    assert Ticket.model_validate_json(ticket.storage_json()) == ticket
    assert Ticket.model_validate_json(ticket.model_dump_json()) == ticket
    shown = Ticket.model_validate_json(ticket.public_json())
    assert shown.submitter.phone is None
    assert shown.submitter.phone_masked == "139****5678"
    assert shown.public_dict() == ticket.public_dict()
    assert json.loads(ticket.public_json())["schema_version"] == 1


def test_committed_schema_is_current(tmp_path: Any) -> None:
    committed = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert committed == Ticket.model_json_schema(), "run python -m pipeline.ticket_schema"
    out = write_json_schema(tmp_path / "t.json")
    assert json.loads(out.read_text(encoding="utf-8")) == committed


def _valid_dict() -> dict[str, Any]:
    return build("路灯坏了", phone="13912345678").storage_dict()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("kind",), "抱怨"),
        (("urgency", "level"), "high"),
        (("urgency",), {"level": "urgent", "reasons": []}),  # urgent must say why
        (("source",), "email"),
        (("schema_version",), 2),
        (("id",), "123"),
        (("created_at",), "2026-11-23T07:30:00"),  # naive time
        (("review", "flags"), ["Low Confidence"]),
        (("location",), {"lat": 29.4}),  # lat without lon
        (("audio", "sha256"), "xyz"),
        (
            ("transcript", "segments"),
            [
                {
                    "start": 3,
                    "end": 1,
                    "text": "x",
                    "confidence": 0.5,
                    "avg_logprob": -0.1,
                    "no_speech_prob": 0.1,
                }
            ],
        ),
        (("surprise",), "field"),
    ],
)
def test_validation_errors(path: tuple[str, ...], value: Any) -> None:
    data = _valid_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValidationError):
        Ticket.model_validate(data)


def test_validate_assignment() -> None:
    ticket = build("路灯坏了")
    with pytest.raises(ValidationError):
        ticket.kind = "抱怨"  # type: ignore[assignment]


def test_rules_load_once_and_taxonomy_is_realistic() -> None:
    rules = load_rules()
    assert load_rules() is rules
    codes = [c.code for c in rules.categories]
    assert 60 <= len(codes) <= 120 and "other" in codes
    assert len(rules.taxonomy.level1) == 15
    for cat in rules.categories:
        assert cat.code == "other" or cat.keywords, cat.code
    # the gazetteer knows every provincial-level division and Pujiang's 15 towns
    provinces = {p.path[0] for places in rules.gazetteer.by_name.values() for p in places}
    assert len(provinces) == 34
    pujiang = {
        p.name
        for places in rules.gazetteer.by_name.values()
        for p in places
        if p.level == 3 and p.path[2] == "浦江县"
    }
    assert len(pujiang) == 15


def test_garbled_caller_id_keeps_the_complaint() -> None:
    ticket = build("路灯坏了", phone="anonymous")
    assert ticket.submitter.phone is None
    assert "invalid_phone" in ticket.review.flags


@pytest.mark.parametrize(("text", "urgent"), [
    ("浦阳街道人民路这边有根自来水管爆了，水一直往外冒，路上全是水", True),
    ("小区门口供水管道破裂，水往外喷，已经冒了一个多小时", True),
    ("我家水管有点漏水，想问问找谁修", False),
    ("我想问一下水管安装费怎么收", False),
])
def test_water_main_burst(text, urgent):
    finding = assess_urgency(text, load_rules())
    assert ("water_main_burst" in finding.rules) is urgent
