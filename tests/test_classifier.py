"""The three-level taxonomy, county overrides and the category classifier (issue 14,
items 1 and 2): training, the level-1 model, review flags, the safety overrides, the
`minyin tickets train|classifiers|promote|rollback` commands and --from-store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.blobs import BlobStore
from pipeline.review import TicketEdit, apply_edit
from pipeline.store import Store, utcnow
from pipeline.tickets import build_ticket, load_rules
from pipeline.tickets.classifier import (
    CategoryClassifier,
    ClassifierError,
    Example,
    choose_category,
    load_classifier,
    read_labelled,
    shipped_examples,
    store_examples,
)
from pipeline.tickets.rules import CountyFileError
from tests.review_seed import seed_ticket
from tests.test_tickets import build, context, transcript

LEVEL1 = ["城乡建设", "党务政务", "国土资源", "环境保护", "纪检监察", "交通运输", "经济管理",
          "科技与信息产业", "民政", "农村农业", "商贸旅游", "卫生计生", "政法", "教育文体",
          "劳动和社会保障"]


# -- the taxonomy -------------------------------------------------------------------------


def test_taxonomy_three_levels() -> None:
    tax = load_rules().taxonomy
    assert tax.level1 == LEVEL1
    codes = [c.code for c in tax.categories]
    assert len(codes) == len(set(codes))
    for cat in tax.categories:
        assert len(cat.path) == 3 and all(cat.path), cat.code
        assert cat.label == cat.path[2]
        assert cat.department and 1 <= cat.time_limit_days <= 60, cat.code
    assert {c.path[0] for c in tax.leaves} == set(LEVEL1)
    assert tax.fallback == "other" and "other" not in {c.code for c in tax.leaves}


@pytest.mark.parametrize(("text", "code"), [
    ("我们村口的路灯坏了好几天了", "city.street_light"),
    ("家里自来水放出来是黄的", "utility.water"),
    ("那个工厂往河里排黑水", "env.pollution"),
    ("菜市场买的猪肉是臭的", "market.food_safety"),
    ("我们村手机一点信号都没有", "tech.telecom"),
    ("楼顶上有人搭了个铁皮房", "city.illegal_building"),
    ("今年种的李子滞销了卖不出去", "rural.produce"),
    ("健身房关门了我办的卡钱不退", "market.consumer"),
    ("小区门口的旧衣回收箱满了没人管", "city.recycling"),
    ("希望在我们小区附近建个公园", "city.public_space"),
    ("村支书贪污扶贫款", "discipline.corruption"),
    ("孩子的户口怎么迁过来", "law.household"),
])
def test_real_matters_get_real_categories(text: str, code: str) -> None:
    ticket = build(text)
    assert ticket.category.code == code
    assert "uncategorised" not in ticket.review.flags


def test_ticket_carries_path_time_limit_confidence_and_classifier() -> None:
    ticket = build("喂你好我们浦阳街道和平路上的路灯坏了一个星期了")
    cat = ticket.category
    assert cat.path == ["城乡建设", "城市建设和市政管理", "路灯照明"]
    assert cat.time_limit_days == 3 and cat.department
    assert cat.confidence is not None and cat.confidence >= 0.35
    model = load_classifier()
    assert model is not None
    assert ticket.classifier is not None
    assert (ticket.classifier.name, ticket.classifier.version) == (model.name, model.version)
    keywords_only = build_ticket(transcript("路灯坏了"), context(), now=None, classifier=False)
    assert keywords_only.classifier is None and keywords_only.category.code == "city.street_light"


# -- county overrides ---------------------------------------------------------------------


def test_county_file_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import get_settings

    county = tmp_path / "county.yaml"
    county.write_text("categories:\n  city.street_light:\n    department: 浦江县路灯所\n"
                      "    time_limit_days: 2\n    keywords: {灯泡坏: 4}\n", encoding="utf-8")
    rules = load_rules(county_file=county)
    cat = rules.category("city.street_light")
    assert (cat.department, cat.time_limit_days, cat.keywords["灯泡坏"]) == ("浦江县路灯所", 2, 4)
    assert cat.keywords["路灯"] == 4  # the shipped keywords stay
    assert load_rules().category("city.street_light").department != "浦江县路灯所"
    # the setting: load_rules() applies it
    monkeypatch.setenv("MINYIN_COUNTY_FILE", str(county))
    get_settings.cache_clear()
    try:
        assert load_rules().category("city.street_light").time_limit_days == 2
        ticket = build("路灯坏了好几天")
        assert (ticket.category.department, ticket.category.time_limit_days) == ("浦江县路灯所", 2)
    finally:
        get_settings.cache_clear()


def test_county_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("categories:\n  city.street_lamp:\n    time_limit_days: 2\n", encoding="utf-8")
    with pytest.raises(CountyFileError, match=r"bad\.yaml.*city\.street_lamp"):
        load_rules(county_file=bad)
    worse = tmp_path / "worse.yaml"
    worse.write_text("categories:\n  city.street_light:\n    time_limit_days: 0\n",
                     encoding="utf-8")
    with pytest.raises(CountyFileError, match=r"(?s)worse\.yaml.*time_limit_days"):
        load_rules(county_file=worse)


# -- training and prediction ----------------------------------------------------------------

TINY = [Example("路灯坏了晚上很黑", leaf="city.street_light"),
        Example("路灯不亮了", leaf="city.street_light"),
        Example("停水了没有自来水", leaf="utility.water"),
        Example("自来水发黄", leaf="utility.water"),
        Example("老板拖欠工资", leaf="labour.wages"),
        Example("工资三个月没发", leaf="labour.wages"),
        Example("学校老师布置作业太多", leaf="education")]


def test_tiny_train_predict_save_load(tmp_path: Path) -> None:
    rules = load_rules()
    model = CategoryClassifier.train(TINY, rules, card={"name": "tiny", "version": "1"})
    probs = model.predict("晚上路灯不亮")
    assert max(probs, key=probs.get) == "city.street_light"
    assert abs(sum(probs.values()) - 1) < 1e-6
    card = model.save(tmp_path / "tiny")
    assert card["sizes"]["leaves"] == 4 and card["sizes"]["features"] > 10
    again = CategoryClassifier.load(tmp_path / "tiny")
    assert again.predict("晚上路灯不亮") == pytest.approx(probs)
    with pytest.raises(ClassifierError, match="not a category classifier"):
        CategoryClassifier.load(tmp_path)


def test_level1_only_data_moves_level1() -> None:
    rules = load_rules()
    text = "食堂的饭菜太贵了"
    before = CategoryClassifier.train(TINY, rules)
    assert before.level1_many([text]) != ["教育文体"]
    # a county's history labelled at level 1 only
    taught = [*TINY, *(Example(t, level1="教育文体") for t in
                       ("食堂饭菜太贵", "食堂收费太贵", "食堂的饭菜不好吃", "饭菜贵"))]
    after = CategoryClassifier.train(taught, rules)
    assert after.level1_many([text]) == ["教育文体"]
    # and the leaf ranking follows: P(leaf) = P(level 1) P(leaf | level 1)
    probs = after.predict(text)
    assert max(probs, key=probs.get) == "education" and probs["education"] > 0.5


def test_shipped_material_covers_every_leaf() -> None:
    rules = load_rules()
    examples = shipped_examples(rules)
    per_leaf = {c.code: 0 for c in rules.taxonomy.leaves}
    for e in examples:
        if e.weight == 1.0:
            per_leaf[e.leaf] += 1
    assert min(per_leaf.values()) >= 8, per_leaf  # 4+ phrasings, each framed once more
    assert sum(per_leaf.values()) >= 800


# -- review flags and overrides ------------------------------------------------------------------


def test_low_confidence_is_a_flag_not_a_silent_other() -> None:
    vague = build("我就是想说说，这个事情你们看着办吧")
    assert vague.category.code == "other" and "uncategorised" in vague.review.flags
    rules = load_rules()
    model = load_classifier()
    # a guess from weak evidence: a real leaf, flagged for a person
    choice = choose_category("那边的东西坏了好久了也没人来修", rules, model)
    assert choice.categorised and choice.unsure and choice.category.code != "other"
    ticket = build("那边的东西坏了好久了也没人来修")
    assert "category_unsure" in ticket.review.flags and ticket.review.needed
    assert ticket.category.confidence is not None
    assert ticket.category.confidence < rules.taxonomy.unsure_below


def test_safety_rules_override_the_classifier() -> None:
    rules = load_rules()
    text = "物业那边一直不管，小区物业费照收，楼道里的煤气一直在漏"
    assert choose_category(text, rules, load_classifier()).category.code == "housing.property"
    ticket = build(text)
    assert ticket.category.code == "safety.gas" and ticket.category.confidence == 1.0
    assert "gas_leak" in ticket.urgency.rules


def test_building_stays_fast() -> None:
    import time

    build("预热")
    text = "喂你好我想反映一下我们浦阳街道和平路上的路灯坏了一个星期了晚上黑乎乎的老人走路很危险"
    t0 = time.perf_counter()
    for _ in range(20):
        build(text)
    assert (time.perf_counter() - t0) / 20 < 0.05


# -- training data files ------------------------------------------------------------------------


def test_read_labelled_lines_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"title": "路灯", "text": "不亮", "category": "city.street_light"}\n\n'
                    '{"text": "学费太贵", "label_l1": "教育文体"}\n', encoding="utf-8")
    rows = read_labelled(good)
    assert [(r.text, r.leaf, r.level1) for r in rows] == [
        ("路灯。不亮", "city.street_light", None), ("学费太贵", None, "教育文体")]
    cases = {'{"text": "x", "category": "city.lamp"}': "category",
             '{"text": "x", "label_l1": "城建"}': "label_l1",
             '{"text": "", "category": "city.street_light"}': "text",
             '{"text": "x"}': "category",
             "not json": "not JSON"}
    for line, field in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "好", "category": "utility.water"}\n' + line + "\n",
                       encoding="utf-8")
        with pytest.raises(ClassifierError, match=rf"bad\.jsonl:2: .*{field}"):
            read_labelled(bad)


# -- the command line and the registry ----------------------------------------------------------


def test_cli_train_list_promote_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.cli import app
    from pipeline.config import get_settings

    monkeypatch.setenv("MINYIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MINYIN_MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    runner = CliRunner()
    history = tmp_path / "county.jsonl"
    history.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in [
            {"title": "桃形李", "text": "桃形李今年卖不掉", "category": "rural.produce"},
            {"text": "学校食堂饭菜太贵", "label_l1": "教育文体"}]), encoding="utf-8")
    try:
        result = runner.invoke(app, ["tickets", "train", "--from", str(history),
                                     "--name", "pujiang"])
        assert result.exit_code == 0, result.output
        card = json.loads(result.stdout)
        assert card["name"] == "pujiang" and card["sizes"]["leaves"] == 79
        assert card["data"][1] == {"source": str(history), "examples": 2, "leaf": 1,
                                   "level1_only": 1}
        assert (tmp_path / "models" / "classifier" / "pujiang" / "model.joblib").is_file()
        again = runner.invoke(app, ["tickets", "train", "--from", str(history),
                                    "--name", "pujiang"])
        assert again.exit_code == 2 and "exists" in again.output
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "好", "category": "utility.water"}\n{"text": 5}\n',
                       encoding="utf-8")
        failed = runner.invoke(app, ["tickets", "train", "--from", str(bad), "--name", "x"])
        assert failed.exit_code == 2 and "bad.jsonl:2" in failed.output
        assert '"text"' in failed.output
        assert not (tmp_path / "models" / "classifier" / "x").exists()

        promoted = runner.invoke(app, ["tickets", "promote", "pujiang", "--by", "ann"])
        assert promoted.exit_code == 0, promoted.output
        listed = [json.loads(line) for line in
                  runner.invoke(app, ["tickets", "classifiers"]).stdout.splitlines()]
        assert [(e["path"], e["current"]) for e in listed] == [("classifier/pujiang", True)]
        twice = runner.invoke(app, ["tickets", "promote", "classifier/pujiang"])
        assert twice.exit_code == 1 and "already" in twice.output
        back = runner.invoke(app, ["tickets", "rollback"])
        assert back.exit_code == 0 and "classifier/default" in back.output
        store = Store.from_settings(get_settings(), migrate=True)
        from pipeline.tickets.classifier import current_classifier_spec

        assert current_classifier_spec(store, get_settings()) == "classifier/default"
        # the builder uses the classifier it is told to use
        model = load_classifier("pujiang")
        assert model is not None and model.name == "pujiang"
        ticket = build_ticket(transcript("桃形李卖不掉了"), context(), classifier="pujiang")
        assert ticket.classifier is not None and ticket.classifier.name == "pujiang"
        assert ticket.category.code == "rural.produce"
    finally:
        get_settings.cache_clear()


def _review(store: Store, ticket_id: str, action: str, **edit: Any) -> None:
    row = store.get_ticket_row(ticket_id)
    assert row is not None
    body = TicketEdit(revision=row.revision, **edit)
    store.revise_ticket(
        ticket_id, base_revision=row.revision, author="alice", action=action,  # type: ignore[arg-type]
        edit=lambda t: apply_edit(t, body, author="alice", approve=action == "approve",
                                  now=utcnow()))


def test_store_examples_are_corrected_approved_categories(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'minyin.db'}", migrate=True)
    blobs = BlobStore(tmp_path / "audio")
    corrected = seed_ticket(store, blobs, "rubbish", n=0)
    untouched = seed_ticket(store, blobs, "light", n=1)
    unapproved = seed_ticket(store, blobs, "gas", n=2)
    _review(store, corrected.id, "approve", fields={"category": "city.recycling"})
    _review(store, untouched.id, "approve")
    _review(store, unapproved.id, "save", fields={"category": "utility.gas"})
    rows = store_examples(store)
    assert [(r.leaf, r.source) for r in rows] == [("city.recycling", "store")]
    assert "垃圾" in rows[0].text
    doc = store.get_ticket_row(corrected.id).document
    assert doc["category"]["path"] == ["城乡建设", "城市建设和市政管理", "回收设施与废品回收"]
