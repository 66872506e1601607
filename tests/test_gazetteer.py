"""A deployment's region: its towns and villages from jionlp, its default dialect profile,
and misheard local names put right."""

from __future__ import annotations

import time

import pytest

from asr.gazetteer import GazetteerError, PlaceCorrector, region_names
from asr.profiles import load_profile, profile_for_region, region_defaults

PUJIANG = "浙江省金华市浦江县"


def test_pujiang_towns_and_villages_come_from_jionlp() -> None:
    places = region_names(PUJIANG)
    assert (places.province, places.city, places.county) == ("浙江省", "金华市", "浦江县")
    assert places.name == PUJIANG and places.code == "330726"
    # 3 subdistricts, 7 towns, 5 townships; villages and communities after the mergers
    assert len(places.towns) == 15
    assert {"浦阳街道", "仙华街道", "黄宅镇", "郑家坞镇", "前吴乡"} <= set(places.towns)
    assert len(places.villages) == 244
    assert {"嵩溪村", "五善塘村", "七里社区"} <= set(places.villages)
    # the spoken forms: 浦阳 for 浦阳街道, 黄宅 for 黄宅镇, 七里 for 七里社区
    assert {"浦阳", "黄宅", "郑家坞", "七里", "五善塘"} <= set(places.spoken)
    names = places.all_names()
    assert len(names) == len(set(names))
    assert {PUJIANG[:3], "金华市", "浦江县", "浦阳街道", "浦阳", "嵩溪村"} <= set(names)


def test_a_region_may_be_written_shorter() -> None:
    assert region_names("浦江县").name == PUJIANG
    assert region_names("浙江金华浦江").name == PUJIANG
    assert region_names("浙江省 金华市 浦江县").name == PUJIANG
    assert region_names("上海市嘉定区").name == "上海市嘉定区"  # municipality: no city level


def test_a_city_gives_its_counties_and_towns_but_no_villages() -> None:
    city = region_names("广东省广州市")
    assert city.county is None and "天河区" in city.counties and "番禺区" in city.counties
    assert len(city.towns) > 100 and city.villages == ()
    # a city without counties (东莞) is a county of its own: villages too
    dongguan = region_names("广东省东莞市")
    assert dongguan.towns and dongguan.villages and "市直辖行政区划" not in dongguan.all_names()


def test_unknown_province_and_ambiguous_regions_are_refused() -> None:
    with pytest.raises(GazetteerError, match="普江县") as err:
        region_names("浙江省金华市普江县")
    assert PUJIANG in str(err.value)  # the close match is suggested
    with pytest.raises(GazetteerError, match="unknown region"):
        region_names("火星县")
    with pytest.raises(GazetteerError, match="province"):
        region_names("浙江省")
    with pytest.raises(GazetteerError, match="ambiguous"):
        region_names("鼓楼区")  # Nanjing, Xuzhou, Kaifeng, Fuzhou
    with pytest.raises(GazetteerError):
        profile_for_region("浙江省金华市普江县", None)


def test_the_regions_default_profile() -> None:
    assert region_defaults(PUJIANG).profile == "pujiang_wu"
    assert profile_for_region(PUJIANG, None).name == "pujiang_wu"
    assert profile_for_region("广东省广州市天河区", None).name == "cantonese"
    assert profile_for_region("广东省佛山市顺德区", None).name == "cantonese"
    assert profile_for_region("广东省深圳市南山区", None).name == "mandarin"
    assert profile_for_region("北京市朝阳区", None).name == "mandarin"
    assert profile_for_region(None, None).name == "mandarin"
    assert profile_for_region(None, "cantonese") is load_profile("cantonese")


def test_the_uploads_profile_wins_and_gets_the_regions_names() -> None:
    profile = profile_for_region(PUJIANG, "mandarin")
    assert profile.name == "mandarin"
    assert profile.lexicon == load_profile("mandarin").lexicon
    gazetteer = set(profile.gazetteer)
    assert {"浦阳街道", "嵩溪村", "五善塘村"} <= gazetteer  # jionlp's
    assert {"仙华山", "通济湖"} <= gazetteer  # regions.yaml's
    assert len(profile.gazetteer) == len(gazetteer)
    # the region's own profile keeps its names, jionlp's join them without repeats
    wu = profile_for_region(PUJIANG, None)
    assert set(load_profile("pujiang_wu").gazetteer) <= set(wu.gazetteer)
    assert len(wu.gazetteer) == len(set(wu.gazetteer))
    assert profile_for_region(PUJIANG, None) is wu  # cached


def test_region_names_correct_a_misheard_village() -> None:
    # 五善塘村 (仙华街道) and 雅湖畈村 (中余乡) are in no profile: only jionlp has them
    plain = load_profile("mandarin")
    local = profile_for_region(PUJIANG, "mandarin")
    heard = "我家在五善堂村，亲戚在雅胡畈村"
    assert plain.standard_form(heard) == heard
    assert local.standard_form(heard) == "我家在五善塘村，亲戚在雅湖畈村"
    # a spoken form of three characters is a name too; of two it is never a target
    assert local.standard_form("在五善堂那边") == "在五善塘那边"
    assert local.standard_form("去普阳买菜") == "去普阳买菜"
    # the Pujiang profile's own corrections are unchanged by the region's names
    wu = profile_for_region(PUJIANG, None)
    assert wu.standard_form("我是普阳街道通江路这边的居民") == "我是浦阳街道通江路这边的居民"
    assert wu.standard_form("黄寨镇有个井盖不见了") == "黄宅镇有个井盖不见了"
    assert wu.standard_form("这个村的路灯不亮，红旗村也是") == "这个村的路灯不亮，红旗村也是"


def test_place_corrector_reads_heteronyms_both_ways() -> None:
    # 长 is zhang first, chang in 长乐: a name is found under either reading
    places = PlaceCorrector(["长乐镇"])
    assert places.correct("昌乐镇") == "长乐镇"


def test_loading_a_county_is_fast() -> None:
    from asr import gazetteer

    gazetteer._divisions.cache_clear()
    gazetteer._location_bytes.cache_clear()
    region_names.cache_clear()
    started = time.perf_counter()
    region_names(PUJIANG)  # reads and indexes the whole file first
    first = time.perf_counter() - started
    started = time.perf_counter()
    places = region_names("浙江省金华市义乌市")
    other = time.perf_counter() - started
    assert places.towns and places.villages
    # measured: about 0.3 s and 10 ms on 2 shared cores
    assert first < 2.0 and other < 0.5, (first, other)


def test_the_pipeline_uses_the_region() -> None:
    from pipeline.config import Settings
    from pipeline.process import VoicePipeline

    pipe = VoicePipeline(Settings(region=PUJIANG, dialect="mandarin"))
    assert pipe.profile(None).name == "pujiang_wu"
    assert pipe.profile("cantonese").name == "cantonese"
    assert "五善塘村" in pipe.profile("cantonese").gazetteer
    plain = VoicePipeline(Settings(region=None, dialect="cantonese"))
    assert plain.profile(None) is load_profile("cantonese")
