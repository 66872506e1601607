"""重复件 and 一类事 (pipeline.tickets.repeats, pipeline.clusters) against the gold fixture
tests/data/gold_tickets.jsonl (bench/make_gold_tickets.py), through the real builder."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.clusters import (
    analyse,
    bcubed,
    build_items,
    pairwise_scores,
    record_from_dict,
    repeat_groups,
)
from pipeline.tickets.repeats import (
    RepeatItem,
    RepeatRules,
    find_clusters,
    find_objects,
    find_repeats,
    repeat_rules,
)

GOLD = Path(__file__).resolve().parent / "data" / "gold_tickets.jsonl"
RULES = repeat_rules()


def gold_rows() -> list[dict]:
    return [json.loads(line) for line in GOLD.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built() -> tuple[list[RepeatItem], dict[str, dict]]:
    rows = gold_rows()
    records = [record_from_dict({k: v for k, v in r.items() if k != "gold"}, f"{GOLD}:{n}")
               for n, r in enumerate(rows, 1)]
    items = [item for item, _ in build_items(records)]
    return items, {r["id"]: r["gold"] for r in rows}


def gold_truth(gold: dict[str, dict]) -> tuple[list[set[str]], list[set[str]]]:
    clusters: dict[str, set[str]] = {}
    for tid, g in gold.items():
        if g["cluster"]:
            clusters.setdefault(g["cluster"], set()).add(tid)
    dups = repeat_groups({t: g["duplicate_of"] for t, g in gold.items() if g["duplicate_of"]})
    return list(clusters.values()), dups


def scores(items: list[RepeatItem], gold: dict[str, dict]) -> dict[str, float]:
    clusters, repeats = analyse(items, RULES)
    gold_clusters, gold_dups = gold_truth(gold)
    p, r = pairwise_scores(repeat_groups(repeats), gold_dups)
    _, _, f1 = bcubed([c.members for c in clusters], gold_clusters)
    return {"dup_precision": p, "dup_recall": r, "bcubed_f1": f1}


def with_gold(items: list[RepeatItem], gold: dict[str, dict]) -> list[RepeatItem]:
    return [replace(i, category=gold[i.id]["category"], county=gold[i.id]["county"],
                    town=gold[i.id]["town"], village=gold[i.id]["village"], road=None,
                    landmark=None) for i in items]


def test_fixture_is_big_enough_and_has_the_hard_cases() -> None:
    rows = gold_rows()
    assert len(rows) >= 250
    texts = " ".join(r["text"] for r in rows)
    assert "，" not in texts and "。" not in texts
    assert {"喂", "那个", "就是"} <= {w for w in ("喂", "那个", "就是") if w in texts}
    by_first: dict[str, int] = {}
    for r in rows:
        if r["gold"]["duplicate_of"]:
            by_first[r["gold"]["duplicate_of"]] = by_first.get(r["gold"]["duplicate_of"], 0) + 1
    assert max(by_first.values()) >= 2  # one caller phoning three times
    villages = {r["gold"]["village"] for r in rows}
    assert {"深一村", "深二村"} <= villages
    assert {r["gold"]["county"] for r in rows} >= {"浦江县", "义乌市"}


def test_gold_scores_with_the_real_builder(built) -> None:
    items, gold = built
    got = scores(items, gold)
    print("builder:", got)
    assert got["dup_precision"] >= 0.95
    assert got["dup_recall"] >= 0.85
    assert got["bcubed_f1"] >= 0.85


def test_gold_scores_with_gold_category_and_place(built) -> None:
    """Separates this module from the classifier's and the place parser's errors."""
    items, gold = built
    got = scores(with_gold(items, gold), gold)
    print("gold category+place:", got)
    assert got["dup_precision"] >= 0.95
    assert got["dup_recall"] >= 0.95
    assert got["bcubed_f1"] >= 0.95


@pytest.mark.parametrize("use_gold", [False, True])
def test_no_cluster_across_categories_or_counties(built, use_gold: bool) -> None:
    items, gold = built
    items = with_gold(items, gold) if use_gold else items
    by_id = {i.id: i for i in items}
    for cluster in find_clusters(items, RULES):
        members = [by_id[m] for m in cluster.members]
        assert len({m.county for m in members if m.county}) <= 1, cluster.description
        categories = {m.category for m in members}
        if len(categories) > 1:  # only a shared object may bridge categories
            home = {c for c, o in RULES.home_objects().items() if o == cluster.object}
            assert cluster.object and all(cluster.object in m.objects or m.category in home
                                          for m in members), cluster.description
        assert cluster.callers >= RULES.cluster_min_callers


def test_same_output_for_any_input_order(built) -> None:
    items, _ = built
    first = analyse(items, RULES)
    for seed in (1, 2):
        shuffled = list(items)
        random.Random(seed).shuffle(shuffled)
        again = analyse(shuffled, RULES)
        assert [c.as_dict() for c in again[0]] == [c.as_dict() for c in first[0]]
        assert again[1] == first[1]


# --- the hard negatives, one by one ---------------------------------------------------

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)


def item(n: int, *, day: float = 0, caller: str | None = None, category="city.street_light",
         town: str | None = "郑宅镇", village: str | None = None, text: str = "路灯坏了不亮",
         county: str = "浦江县") -> RepeatItem:
    return RepeatItem(id=f"T{n:04d}", time=T0 + timedelta(days=day),
                      caller=caller or f"p:1380000{n:04d}", category=category, county=county,
                      town=town, village=village, objects=find_objects(text, RULES), text=text,
                      label=category)


def test_street_light_is_not_traffic_light() -> None:
    assert find_objects("红绿灯坏了", RULES) == {"红绿灯"}
    assert find_objects("那个红路灯坏掉了", RULES) == {"红绿灯"}
    lights = [item(i, day=i) for i in range(3)]
    signals = [item(10 + i, day=i, category="traffic.signals", text="红绿灯不亮")
               for i in range(3)]
    clusters = find_clusters(lights + signals, RULES)
    assert sorted(sorted(c.members) for c in clusters) == [
        ["T0000", "T0001", "T0002"], ["T0010", "T0011", "T0012"]]


def test_a_season_later_is_another_cluster_and_no_repeat() -> None:
    june = [item(i, day=i) for i in range(3)]
    sept = [item(10 + i, day=95 + i) for i in range(3)]
    again = item(20, day=96, caller=june[0].caller)
    clusters = find_clusters([*june, *sept, again], RULES)
    assert len(clusters) == 2
    assert find_repeats([*june, again], RULES) == {}
    # while the first is still open it is a repeat, whatever its age
    assert find_repeats([replace(june[0], open=True), again], RULES)["T0020"].first == "T0000"


def test_neighbouring_villages_one_town_cluster_no_repeat() -> None:
    east = item(1, village="深一村")
    west = item(2, day=2, village="深二村", caller=east.caller)
    third = item(3, day=3, village="深二村")
    fourth = item(4, day=4, village="深一村")
    assert find_repeats([east, west], RULES) == {}
    [cluster] = find_clusters([east, west, third, fourth], RULES)
    assert cluster.town == "郑宅镇" and cluster.village is None
    assert cluster.callers == 3 and cluster.repeats == 1
    assert cluster.description == "郑宅镇 city.street_light（路灯） 3人反映，重复来电1次"


def test_same_village_another_problem_is_no_repeat() -> None:
    light = item(1, village="深一村")
    water = item(2, day=1, village="深一村", caller=light.caller, category="utility.water",
                 text="自来水发黄")
    assert find_repeats([light, water], RULES) == {}


def test_no_cluster_across_counties_or_without_enough_callers() -> None:
    a = [item(i, day=i, town="佛堂镇", county="义乌市") for i in range(2)]
    b = [item(10, day=1, town="佛堂镇", county="浦江县")]
    assert find_clusters(a + b, RULES) == []
    same_caller = [item(i, day=i, caller="p:13800000000") for i in range(5)]
    assert find_clusters(same_caller, RULES) == []


def test_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="cluster_min_callers"):
        RepeatRules(cluster_min_callers=1)
    with pytest.raises(ValueError, match="names must be unique"):
        RepeatRules(objects=[{"name": "路灯", "terms": ["路灯"]},
                             {"name": "路灯", "terms": ["灯"]}])


def test_bad_input_names_file_line_and_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"x.jsonl:3: text"):
        record_from_dict({"id": "a", "text": ""}, "x.jsonl:3")
    with pytest.raises(ValueError, match=r"x.jsonl:4: time"):
        record_from_dict({"id": "a", "text": "路灯坏了", "time": "yesterday"}, "x.jsonl:4")
    with pytest.raises(ValueError, match=r"x.jsonl:5: id"):
        record_from_dict({"text": "路灯坏了"}, "x.jsonl:5")
