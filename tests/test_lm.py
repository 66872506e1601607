"""The character n-gram LM (asr/lm.py) and its sources and registry
(pipeline/language_model.py), `minyin lm ...`.

Tiny LMs are built in tmp_path from a handful of words; one test builds the real
shipped default from jieba's dictionary and the complaint vocabulary."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

import pipeline.language_model as language_model
from asr.lm import CharLM, LMError, NgramCounter, lm_sentences, load_lm, update_card
from pipeline.blobs import BlobStore
from pipeline.config import Settings
from pipeline.language_model import (
    LMBuildError,
    LMRegistryError,
    approved_texts,
    build_lm,
    current_lm_spec,
    list_lms,
    lm_history,
    promote_lm,
    read_history,
    rollback_lm,
)
from pipeline.store import Store, upgrade

try:
    import kenlm  # noqa: F401

    HAVE_KENLM = True
except ImportError:
    HAVE_KENLM = False
requires_kenlm = pytest.mark.skipif(not HAVE_KENLM, reason="the kenlm wheel is not installed")

CORPUS = [("路灯坏了", 3.0), ("路灯不亮", 1.5), ("灯坏了", 0.3), ("垃圾没人清运", 1.0),
          ("坏了坏了", 1.0), ("小区门口的垃圾没人清运", 0.7), ("井盖坏了", 2.0)]
WORDS = [("路灯", 5000.0), ("井盖", 3000.0), ("垃圾", 8000.0), ("坏了", 2000.0),
         ("没人", 4000.0), ("清运", 500.0), ("小区", 9000.0), ("门口", 2500.0)]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "text" / "teddy2020c"


def tiny_arpa(tmp_path: Path, order: int = 3, min_counts: tuple[float, ...] = (0, 0, 1.0)
              ) -> Path:
    counter = NgramCounter(order)
    for text, weight in CORPUS:
        counter.add_text(text, weight)
    path = tmp_path / f"tiny{order}.arpa"
    counter.write_arpa(path, min_counts)
    return path


@pytest.fixture()
def small_general(monkeypatch: pytest.MonkeyPatch) -> None:
    """The general word list is a handful of words, not jieba's 349 000."""
    monkeypatch.setattr(language_model, "general_words", lambda path=None: iter(WORDS))


# -- tokenisation -----------------------------------------------------------------------


def test_lm_sentences_split_simplify_and_tokenise() -> None:
    assert lm_sentences("你好，路燈壞了！ 已經三天了。") == [
        list("你好"), list("路灯坏了"), list("已经三天了")]
    assert lm_sentences("3号楼 ABC室,WiFi没信号") == [list("3号楼"), list("abc室"),
                                                    list("wifi没信号")]
    # full-width digits and letters fold; symbols and empty pieces vanish
    assert lm_sentences("１２号　Ａ栋%%…") == [list("12号"), list("a栋")]
    assert lm_sentences(" ，。 ") == []


# -- the ARPA ---------------------------------------------------------------------------


def _vocab(lm: CharLM) -> list[str]:
    return [g for g in lm._table if len(g) == 1 and g != "\x02"]


@pytest.mark.parametrize("order,min_counts", [(2, (0, 0)), (3, (0, 0, 1.0)),
                                              (4, (0, 0, 1.0, 2.0))])
def test_every_context_sums_to_one(tmp_path: Path, order: int,
                                   min_counts: tuple[float, ...]) -> None:
    lm = CharLM(tiny_arpa(tmp_path, order, min_counts), use_kenlm=False)
    vocab = _vocab(lm)
    # every context in the model, and some it never saw
    contexts = {g for g in lm._table if len(g) < order} | {"", "亮亮", "门坏"}
    for context in contexts:
        if "\x03" in context or "\x01" in context:
            continue
        bos = context.startswith("\x02")
        history = list(context.lstrip("\x02"))
        base = lm.score_sentence(history, bos=bos, eos=False)
        total = 0.0
        for w in vocab:
            if w == "\x03":
                logp = lm.score_sentence(history, bos=bos, eos=True) - base
            elif w == "\x01":
                logp = lm.score_sentence([*history, "鬼"], bos=bos, eos=False) - base
            else:
                logp = lm.score_sentence([*history, w], bos=bos, eos=False) - base
            total += math.exp(logp)
        assert total == pytest.approx(1.0, abs=1e-4), repr(context)


def test_arpa_header_counts_and_unk(tmp_path: Path) -> None:
    text = tiny_arpa(tmp_path).read_text(encoding="utf-8")
    header = dict(line.split("=") for line in text.splitlines() if line.startswith("ngram "))
    for n in (1, 2, 3):
        section = text.split(f"\\{n}-grams:\n")[1].split("\n\n")[0].splitlines()
        assert int(header[f"ngram {n}"]) == len(section)
    assert "\t<unk>\n" in text and "-99.000000\t<s>\t" in text


@requires_kenlm
def test_kenlm_and_python_agree(tmp_path: Path) -> None:
    path = tiny_arpa(tmp_path, 4, (0, 0, 1.0, 2.0))
    fast, slow = CharLM(path, use_kenlm=True), CharLM(path, use_kenlm=False)
    assert (fast.backend, slow.backend) == ("kenlm", "python")
    for text in ["路灯坏了", "路登怀了", "小区门口垃圾坏了", "外星人来了", "井盖", "了"]:
        assert fast.score(text) == pytest.approx(slow.score(text), abs=1e-4), text
    for tokens, bos, eos in [(list("灯坏了"), False, True), (list("路灯"), True, False),
                             (list("鬼灯鬼"), False, False)]:
        assert fast.score_sentence(tokens, bos=bos, eos=eos) == pytest.approx(
            slow.score_sentence(tokens, bos=bos, eos=eos), abs=1e-4)
    assert fast.perplexity(["路灯坏了"]) == pytest.approx(slow.perplexity(["路灯坏了"]),
                                                         rel=1e-4)


def test_scores_prefer_seen_text_and_are_natural_log(tmp_path: Path) -> None:
    lm = CharLM(tiny_arpa(tmp_path), use_kenlm=False)
    assert lm.score("路灯坏了") > lm.score("路登怀了")
    # two sentences: the sum of each with its own <s> ... </s>
    assert lm.score("路灯坏了，井盖坏了") == pytest.approx(
        lm.score_sentence(list("路灯坏了")) + lm.score_sentence(list("井盖坏了")))
    assert lm.score("") == 0.0
    ppl = lm.perplexity(["路灯坏了"])
    assert ppl == pytest.approx(math.exp(-lm.score("路灯坏了") / 5))


def test_load_lm_caches_and_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(LMError, match=re.escape(str(tmp_path / "nothing"))):
        load_lm(tmp_path / "nothing")
    bad = tmp_path / "bad.arpa"
    bad.write_text("this is not an ARPA file\n", encoding="utf-8")
    with pytest.raises(LMError, match=r"bad\.arpa"):
        CharLM(bad, use_kenlm=False)
    path = tiny_arpa(tmp_path)
    assert load_lm(path) is load_lm(str(path))


# -- sources and building ---------------------------------------------------------------


def test_history_errors_name_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"title": "路灯", "text": "和平路路灯坏了"}\n\n{"text": "井盖没了"}\n',
                    encoding="utf-8")
    assert read_history(good) == ["路灯。和平路路灯坏了", "井盖没了"]
    for body, why in [('{"text": "好"}\n{"text": \n', "not JSON"),
                      ('{"text": "好"}\n["a list"]\n', "expected an object"),
                      ('{"title": 3, "text": "好"}\n{"text": "好"}\n', "title")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(body, encoding="utf-8")
        line = 1 if '"title": 3' in body else 2
        with pytest.raises(LMBuildError, match=rf"bad\.jsonl:{line}: .*{why}"):
            read_history(bad)
    with pytest.raises(LMBuildError, match=r"missing\.jsonl"):
        read_history(tmp_path / "missing.jsonl")


def test_build_writes_the_directory_whole(tmp_path: Path, small_general: None) -> None:
    history = tmp_path / "county.jsonl"
    history.write_text('{"title": "通江路", "text": "通江路菜市场门口井盖不见了"}\n'
                       '{"title": "通江路", "text": "通江路路灯不亮"}\n', encoding="utf-8")
    out = tmp_path / "models" / "lm" / "pujiang"
    card = build_lm(out, history_files=[history], place_names=["通江路"], order=3,
                    dev_texts=["路灯坏了没人修"])
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "lexicon.tsv", "lm.arpa"]
    assert [p.name for p in out.parent.iterdir()] == ["pujiang"]  # no temp left over
    assert json.loads((out / "card.json").read_text(encoding="utf-8")) == card
    assert card["format"] == "minyin-lm/1" and card["kind"] == "char-ngram"
    assert card["order"] == 3 and card["name"] == "pujiang"
    assert card["rescoring"] is None and card["correction"] is None
    assert card["perplexity"]["dev"] > 1
    assert {s["kind"] for s in card["sources"]} == {"general", "complaint", "place",
                                                    "history"}
    assert len(card["version"]) == len("2026-12-02T0715")
    lexicon = {w: src for w, _, src in (line.split("\t") for line in
               (out / "lexicon.tsv").read_text(encoding="utf-8").splitlines())}
    assert lexicon["路灯"] in ("general", "complaint") and lexicon["通江路"] == "place"
    assert lexicon["清运"] == "complaint"
    lm = load_lm(out)
    assert lm.card["sha256"] == card["sha256"] and lm.name == "pujiang"
    # the county's own words are in it
    assert lm.score("通江路井盖不见了") > lm.score("通疆鹿井盖不见了")

    with pytest.raises(LMError, match="exists"):
        build_lm(out, order=3)
    card2 = build_lm(out, order=3, overwrite=True)
    assert card2["sha256"] != card["sha256"]
    updated = update_card(out, rescoring={"dev_cer": {"before": 0.2, "after": 0.18}})
    assert json.loads((out / "card.json").read_text(encoding="utf-8")) == updated
    assert updated["sha256"] == card2["sha256"]


@pytest.fixture()
def approved_store(tmp_path: Path) -> Store:
    from tests.review_seed import seed_ticket
    from tests.test_corrections import review

    store = Store.from_url(f"sqlite:///{tmp_path / 'minyin.db'}", migrate=True)
    blobs = BlobStore(tmp_path / "audio")
    approved = seed_ticket(store, blobs, "light", n=1)
    review(store, approved.id, "approve",
           segments=[{"index": 1, "text": "已经坏了一个星期了晚上黑灯瞎火"}])
    pending = seed_ticket(store, blobs, "gas", n=2)
    review(store, pending.id, "save", fields={"summary": "煤气味"})
    return store


def test_from_store_uses_approved_corrections(tmp_path: Path, approved_store: Store,
                                              small_general: None) -> None:
    texts = approved_texts(approved_store)
    assert len(texts) == 1 and "黑灯瞎火" in texts[0] and "煤气" not in texts[0]
    card = build_lm(tmp_path / "lm" / "county", store=approved_store, order=3)
    corrections = [s for s in card["sources"] if s["kind"] == "corrections"]
    assert corrections and corrections[0]["lines"] == 1
    lm = load_lm(tmp_path / "lm" / "county")
    assert lm.score("黑灯瞎火") > lm.score("黑登虾火")


# -- the registry ---------------------------------------------------------------------


@pytest.fixture()
def lm_registry(tmp_path: Path, small_general: None) -> dict[str, Any]:
    models = tmp_path / "models"
    for name in ("default", "county", "worse", "fresh"):
        build_lm(models / "lm" / name, order=2)
    update_card(models / "lm" / "default", rescoring={"dev_cer": {"after": 0.20}})
    update_card(models / "lm" / "county", rescoring={"dev_cer": {"after": 0.18}})
    update_card(models / "lm" / "worse", rescoring={"dev_cer": {"after": 0.25}})
    (models / "lm" / "broken").mkdir()
    (models / "lm" / "broken" / "card.json").write_text("{}", encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "data", models_dir=models)
    store = Store.from_settings(settings, migrate=True)
    return {"settings": settings, "store": store}


def test_lm_promotion_rules_and_rollback(lm_registry: dict[str, Any]) -> None:
    store, settings = lm_registry["store"], lm_registry["settings"]
    assert current_lm_spec(store, settings) == "lm/default"  # MINYIN_LM
    assert {e.spec: e.current for e in list_lms(store, settings)}["lm/default"] is True
    with pytest.raises(LMRegistryError, match="cannot be promoted"):
        promote_lm(store, settings, "lm/broken", author="ops")
    with pytest.raises(LMRegistryError, match="worse than"):
        promote_lm(store, settings, "lm/worse", author="ops")
    with pytest.raises(LMRegistryError, match="no fitted rescoring CER"):
        promote_lm(store, settings, "fresh", author="ops")
    with pytest.raises(LMRegistryError, match="already"):
        promote_lm(store, settings, "lm/default", author="ops")
    row = promote_lm(store, settings, "county", author="alice", reason="county history")
    assert (row.kind, row.model, row.validation_cer, row.forced) == ("lm", "lm/county",
                                                                      0.18, False)
    assert current_lm_spec(store, settings) == "lm/county"
    # the Whisper registry does not see it
    assert store.current_model() is None and store.model_history() == []
    forced = promote_lm(store, settings, "lm/fresh", author="bob", force=True)
    assert forced.forced and current_lm_spec(store, settings) == "lm/fresh"
    back = rollback_lm(store, settings, author="alice")
    assert (back.action, back.model) == ("rollback", "lm/county")
    off = promote_lm(store, settings, "none", author="ops")
    assert off.model == "none" and current_lm_spec(store, settings) is None
    assert [r.model for r in lm_history(store)] == ["none", "lm/county", "lm/fresh",
                                                   "lm/county"]
    assert store.current_model(kind="lm").model == "none"


def test_lm_rollback_with_nothing_promoted(lm_registry: dict[str, Any]) -> None:
    with pytest.raises(LMRegistryError, match="MINYIN_LM"):
        rollback_lm(lm_registry["store"], lm_registry["settings"], author="ops")
    settings = lm_registry["settings"].model_copy(update={"lm": "none"})
    assert current_lm_spec(lm_registry["store"], settings) is None


def test_migration_adds_kind_to_an_existing_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0006_models")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO model_promotions (model, name, version, action, author, forced, "
            "created_at) VALUES ('pujiang/v2', 'pujiang', 'v2', 'promote', 'ops', 0, "
            "'2026-11-30 10:00:00.000000')"))
    engine.dispose()
    store = Store.from_url(url, migrate=True)
    assert store.current_model().model == "pujiang/v2"
    assert store.current_model().kind == "asr"
    assert store.current_model(kind="lm") is None
    store.record_promotion(kind="lm", model="lm/default", name="default", version="v",
                           action="promote", author="ops")
    assert store.current_model().model == "pujiang/v2"
    assert [r.model for r in store.model_history(kind="lm")] == ["lm/default"]


# -- the command line -------------------------------------------------------------------


def test_cli_lm_build_list_promote(tmp_path: Path, small_general: None,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from api.cli import app
    from pipeline.config import get_settings

    monkeypatch.setenv("MINYIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MINYIN_MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    runner = CliRunner()
    history = tmp_path / "county.jsonl"
    history.write_text('{"title": "路灯", "text": "通江路路灯不亮"}\n', encoding="utf-8")
    out = tmp_path / "models" / "lm" / "county"
    try:
        result = runner.invoke(app, ["lm", "build", "--out", str(out), str(history),
                                     "--order", "3"])
        assert result.exit_code == 0, result.output
        card = json.loads(result.stdout)
        assert card["name"] == "county" and card["order"] == 3
        again = runner.invoke(app, ["lm", "build", "--out", str(out), str(history)])
        assert again.exit_code == 2 and "exists" in again.output
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "好"}\n{"text": 5}\n', encoding="utf-8")
        failed = runner.invoke(app, ["lm", "build", "--out", str(tmp_path / "x"), str(bad)])
        assert failed.exit_code == 2 and "bad.jsonl:2" in failed.output
        assert not (tmp_path / "x").exists()
        listed = runner.invoke(app, ["lm", "list"])
        assert json.loads(listed.stdout.splitlines()[0])["path"] == "lm/county"
        refused = runner.invoke(app, ["lm", "promote", "lm/county"])
        assert refused.exit_code == 1 and "fitted" in refused.output
        promoted = runner.invoke(app, ["lm", "promote", "lm/county", "--force", "--by", "ann"])
        assert promoted.exit_code == 0, promoted.output
        history_out = runner.invoke(app, ["lm", "history"])
        row = json.loads(history_out.stdout.splitlines()[0])
        assert (row["model"], row["author"], row["forced"]) == ("lm/county", "ann", True)
    finally:
        get_settings.cache_clear()


# -- the real shipped sources -----------------------------------------------------------


@pytest.fixture(scope="module")
def default_lm(tmp_path_factory: pytest.TempPathFactory) -> CharLM:
    # the one the setup command built (a minute to build), else built here
    built = Path(__file__).resolve().parents[1] / "models" / "lm" / "default"
    if (built / "card.json").is_file():
        return load_lm(built)
    out = tmp_path_factory.mktemp("lm") / "default"
    build_lm(out, name="default")
    return load_lm(out)


def test_the_shipped_default_prefers_real_text(default_lm: CharLM) -> None:
    card = default_lm.card
    assert card["order"] == 4 and card["size"]["bytes"] < 48_000_000
    for right, wrong in [("路灯坏了", "路登怀了"), ("苍蝇蚊子", "苍营文字"),
                         ("窨井盖破损", "音井盖破孙"), ("拖欠工资", "拖欠工姿"),
                         ("希望有关部门尽快处理", "希望有关部门进快处理"),
                         ("煤气味很大", "没气味很大")]:
        assert default_lm.score(right) > default_lm.score(wrong), (right, wrong)
    lexicon = {}
    for line in (default_lm.dir / "lexicon.tsv").read_text(encoding="utf-8").splitlines():
        word, weight, source = line.split("\t")
        lexicon[word] = (float(weight), source)
    assert 20_000 < len(lexicon) < 100_000
    assert lexicon["路灯"][1] == "complaint" and lexicon["浦江县"][1] == "place"
    assert lexicon["天气"][1] == "general"
    assert {source for _, source in lexicon.values()} == {"general", "complaint", "place"}


@pytest.mark.skipif(not (SHARED / "replied_messages.jsonl").is_file(),
                    reason="the shared 12345 message corpus is not here")
def test_default_perplexity_on_12345_messages(default_lm: CharLM) -> None:
    lines = (SHARED / "replied_messages.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines[::50]]
    assert default_lm.perplexity(texts) < 1000
