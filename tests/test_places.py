"""Places in spoken and typed complaints (pipeline/tickets/places.py, gazetteer.py).

The region cases use a real county, 浙江省金华市浦江县, whose towns and villages come
from jionlp's packaged data; `region=""` means no region is set.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from pipeline.ticket_schema import Location
from pipeline.tickets import TicketContext, load_rules, parse_location

PUJIANG = "浙江省金华市浦江县"
UP = ("浙江省", "金华市", "浦江县")
SHA = hashlib.sha256(b"places").hexdigest()
GOLD = Path(__file__).parent / "data" / "places_gold.jsonl"
FIELDS = ("province", "city", "district", "street", "village", "road", "landmark")


def loc(text: str, region: str = PUJIANG, **form: object) -> Location:
    context = TicketContext(audio_sha256=SHA, **form)
    return parse_location(text, context, load_rules(), region=region)[0]


def parts(location: Location) -> tuple[str | None, ...]:
    return tuple(getattr(location, f) for f in FIELDS)


# (spoken text, street, village, road, landmark); the region fills province..county
REGION_CASES = [
    ("喂你好我想反映一下我们浦阳街道和平路口的路灯坏了一个星期了",
     "浦阳街道", None, "和平路口", None),
    ("那个浦阳街道人民路跟和平路交叉口的红绿灯不亮了",
     "浦阳街道", None, "人民路与和平路交叉口", None),
    ("就是黄宅镇上山村那个自来水发黄已经三天了", "黄宅镇", "上山村", None, None),
    ("白马镇嵩溪村的路面塌了一个大坑", "白马镇", "嵩溪村", None, None),
    ("浦南街道江滨社区楼下的井盖不见了", "浦南街道", "江滨社区", None, None),
    ("仙华街道翠湖小区三栋二单元的消防通道被堵了", "仙华街道", None, None, "翠湖小区"),
    ("岩头镇幸福新村那边有个工厂晚上偷偷排黑水", "岩头镇", "幸福新村", None, None),
    ("亚太大道上有个井盖松动了", None, None, "亚太大道", None),
    ("通济桥那边晚上有人跳广场舞声音太大了", None, None, "通济桥", None),
    ("浦江中学门口的红绿灯时间太短了", None, None, None, "浦江中学"),
    ("浦阳街道和平路十二号门口的树倒了压着电线", "浦阳街道", None, "和平路", None),
    ("我们黄宅那边的路灯坏了", "黄宅镇", None, None, None),  # the town as people call it
    # a village alone: its town from the region's data
    ("嵩溪村的路面塌了", "白马镇", "嵩溪村", None, None),
]


@pytest.mark.parametrize(("text", "street", "village", "road", "landmark"), REGION_CASES)
def test_region_levels(
    text: str, street: str | None, village: str | None, road: str | None, landmark: str | None
) -> None:
    got = loc(text)
    assert parts(got) == (*UP, street, village, road, landmark)
    assert got.parsed_from == "transcript"
    assert got.lat is None  # never guessed from speech


# heard with sound-alike characters -> the region's own spelling
HOMOPHONES = [
    ("那个普阳街道和平路的路灯不亮", "浦阳街道", None),
    ("黄寨镇何村的路灯坏了", "黄宅镇", "何村"),  # 何村: two characters, right after its town
    ("我是郑家屋镇吴店村的垃圾没人清运", "郑家坞镇", "吴店村"),
    ("郑宅镇前殿村的李子卖不出去", "郑宅镇", "前店村"),
]


@pytest.mark.parametrize(("text", "street", "village"), HOMOPHONES)
def test_region_homophones(text: str, street: str, village: str | None) -> None:
    got = loc(text)
    assert (got.street, got.village) == (street, village)
    assert got.district == "浦江县"
    assert street in (got.text or "")  # the text says it as it is spelt


def test_region_names_win_and_outside_stays_outside() -> None:
    # 普陀区 is in Zhejiang (舟山) and Shanghai: said with 上海 it is Shanghai's
    got = loc("上海普陀区有个垃圾站一直没人清运")
    assert (got.province, got.city, got.district) == ("上海市", "上海市", "普陀区")
    got = loc("我在杭州西湖区打工老板拖欠工资")
    assert (got.province, got.city, got.district) == ("浙江省", "杭州市", "西湖区")
    assert got.street is None


def test_whole_country_from_jionlp_without_region() -> None:
    got = loc("河南郑州金水区农业路有个井盖没了", region="")
    assert (got.province, got.city, got.district) == ("河南省", "郑州市", "金水区")
    assert got.road == "农业路"
    # 鼓楼区 is in four cities: no province, no city is made up
    got = loc("鼓楼区有个垃圾站", region="")
    assert (got.province, got.city) == (None, None)


def test_no_region_fills_only_what_was_said() -> None:
    got = loc("和平路口的红绿灯坏了", region="")
    assert (got.province, got.city, got.district, got.road) == (None, None, None, "和平路口")


def test_east_and_west_gate_villages_both_found() -> None:
    east = loc("城关镇东关村的自来水停了", region="")
    west = loc("城关镇西关村的自来水停了", region="")
    assert (east.street, east.village) == ("城关镇", "东关村")
    assert (west.street, west.village) == ("城关镇", "西关村")


@pytest.mark.parametrize(
    "text",
    [
        "我们小区门口的路灯坏了三天了",  # 小区 alone is no landmark, 路灯 no road
        "路灯不亮好几天了麻烦来修一下",
        "上个月十一号开始隔壁工地半夜施工",  # 十一号 is a date
        "我家楼下的垃圾桶满了",
        "这个小区的物业不管事",
    ],
)
def test_hard_negatives(text: str) -> None:
    got = loc(text)
    assert got.is_empty, got
    assert got.road is None and got.landmark is None


def test_name_starts_after_verbs_and_adverbs() -> None:
    # typed text runs on: "导致" is no part of the road's name (jieba's tags say so)
    assert loc("地铁施工导致万家丽路停电十次", region="").road == "万家丽路"
    assert loc("解放路的井盖没了", region="").road == "解放路"  # never cut below a name
    assert loc("建设路和胜利路交叉口堵车", region="").road == "建设路与胜利路交叉口"


def test_road_named_after_a_city_is_a_road() -> None:
    got = loc("北京路上的井盖没了", region="")
    assert got.road == "北京路" and got.province is None


def test_river_named_after_a_town_is_not_the_town() -> None:
    got = loc("有个工厂晚上偷偷往浦阳江里排污水")
    assert got.street is None and got.landmark == "浦阳江"


def test_typed_address_and_coordinates_kept() -> None:
    got = loc("门口的井盖没了在和平路十二号", address="浦阳街道月泉社区 13912345678",
              lat=29.4521, lon=119.8923)
    assert got.submitted_address is not None and "13912345678" not in got.submitted_address
    assert got.submitted_address.startswith("浦阳街道月泉社区")
    assert (got.lat, got.lon) == (29.4521, 119.8923)
    assert got.parsed_from == "both"
    assert (got.street, got.village, got.road) == ("浦阳街道", "月泉社区", "和平路")
    only_form = loc("井盖没了", address="白马镇嵩溪村")
    assert only_form.parsed_from == "form" and only_form.village == "嵩溪村"


def test_form_and_speech_disagree() -> None:
    context = TicketContext(audio_sha256=SHA, address="广东省佛山市顺德区大良街道")
    got, flags, _ = parse_location("黄宅镇的路灯坏了", context, load_rules(), region="")
    assert got.street == "大良街道" and "location_conflict" in flags


def test_full_address_in_order_without_repeats() -> None:
    got = loc("浦阳街道和平路十二号门口的树倒了")
    assert got.full_address() == "浙江省金华市浦江县浦阳街道和平路十二号"
    got = loc("黄宅镇上山村翠湖小区三栋")
    assert got.full_address() == "浙江省金华市浦江县黄宅镇上山村翠湖小区三栋"
    beijing = Location(province="北京市", city="北京市", district="朝阳区", road="建国路")
    assert beijing.full_address() == "北京市朝阳区建国路"
    assert Location(text="村口大树下").full_address() == "村口大树下"


def test_typed_message_text() -> None:
    got = loc("您好，我是浦阳街道塔山社区的居民，小区电梯经常坏。")
    assert (got.street, got.village) == ("浦阳街道", "塔山社区")


def test_gold_set_and_speed() -> None:
    """The written gold set (tests/data/places_gold.jsonl): every field, and fast."""
    rows = [json.loads(line) for line in GOLD.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 40
    loc(rows[0]["text"])  # region data loaded once
    start = time.perf_counter()
    right = {f: 0 for f in FIELDS}
    for row in rows:
        got = loc(row["text"])
        for f in FIELDS:
            right[f] += getattr(got, f) == row["gold"][f]
    per_call = (time.perf_counter() - start) / len(rows)
    assert all(n >= len(rows) - 2 for n in right.values()), right
    assert per_call < 0.010
