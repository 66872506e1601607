import pytest

from asr.profiles import ProfileError, available_profiles, load_profile
from asr.transcriber import TranscribeOptions


def test_builtin_mandarin():
    profile = load_profile("mandarin")
    assert profile.language == "zh"
    assert "mandarin" in available_profiles()


def test_custom_profile_file_applies_prompt_hotwords_lexicon(tmp_path):
    path = tmp_path / "pujiang.yaml"
    path.write_text(
        "name: pujiang\nlanguage: zh\ninitial_prompt: 浦江县浦阳街道\n"
        "hotwords: [浦阳街道, 仙华街道]\nlexicon: {侬: 你, 阿拉: 我们}\n", encoding="utf-8")
    profile = load_profile(str(path))
    assert profile.lexicon == {"侬": "你", "阿拉": "我们"}
    options = TranscribeOptions().with_profile(profile)
    assert options.initial_prompt == "浦江县浦阳街道"
    assert options.hotwords == "浦阳街道 仙华街道"


@pytest.mark.parametrize(("content", "message"), [
    ("name: [unclosed", "not valid YAML"),
    ("language: zh\n", "needs at least a 'name'"),
    ("name: x\nlexicon: [a, b]\n", "'lexicon' must map"),
])
def test_bad_profiles_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ProfileError, match=message):
        load_profile(str(path))


def test_unknown_profile():
    with pytest.raises(ProfileError, match="unknown dialect profile 'xiang'"):
        load_profile("xiang")


# --------------------------------------------------------------------------- shipped profiles


@pytest.mark.parametrize(("name", "places"), [
    ("pujiang_wu", {"浦阳街道", "黄宅镇", "前吴乡", "仙华山"}),
    ("cantonese", {"天河区", "顺德区", "北滘镇", "珠江新城"}),
])
def test_shipped_dialect_profiles(name, places):
    profile = load_profile(name)
    assert name in available_profiles()
    assert profile.language == "zh"  # Whisper base has no <|yue|> or Wu token
    assert places <= set(profile.gazetteer)
    assert profile.lexicon and not profile.hotwords  # measured: hotwords hurt (see the YAML)


@pytest.mark.parametrize(("profile", "heard", "standard"), [
    # Whisper's spellings of Pujiang names in the samples and in Wu speakers' mouths
    ("pujiang_wu", "我是普阳街道通江路这边的居民", "我是浦阳街道通江路这边的居民"),
    ("pujiang_wu", "黄寨镇有个井盖不见了", "黄宅镇有个井盖不见了"),
    ("pujiang_wu", "前无乡那边今朝又停水了", "前吴乡那边今天又停水了"),
    ("pujiang_wu", "阿拉屋里向的物事交关多", "我们家里的东西非常多"),
    ("pujiang_wu", "郑家务镇的路灯", "郑家坞镇的路灯"),
    # left alone: right names, ordinary words, two-character words
    ("pujiang_wu", "仙华街道和浦南街道都有", "仙华街道和浦南街道都有"),
    ("pujiang_wu", "中国人民银行门口", "中国人民银行门口"),
    ("pujiang_wu", "和平路的路灯", "和平路的路灯"),
    ("cantonese", "我哋喺天和区揾唔到佢", "我们在天河区找不到他"),
    ("cantonese", "番愚区嘅路灯冇着", "番禺区的路灯没有着"),
    ("cantonese", "唔该你哋快啲嚟", "谢谢你们快些来"),
    ("cantonese", "北角镇同乐从镇", "北滘镇同乐从镇"),
    ("cantonese", "系统关系", "系统关系"),
])
def test_standard_form_on_real_sentences(profile, heard, standard):
    assert load_profile(profile).standard_form(heard) == standard


def test_place_corrector_rules():
    from asr.gazetteer import PlaceCorrector, sound_key

    # the mergers: zh/z, n/l, f/h, -ng/-n
    assert sound_key("宅") == sound_key("寨") and sound_key("南") == sound_key("兰")
    assert sound_key("湖") == sound_key("福") and sound_key("明") == sound_key("民")
    places = PlaceCorrector(["黄宅镇", "王宅镇", "新光"])
    # a whole different word that sounds alike shares no character: left alone
    assert places.correct("皇寨阵") == "皇寨阵"
    # the best candidate shares the most characters
    assert places.correct("黄寨镇") == "黄宅镇"
    # two-character names are not used (too many ordinary words)
    assert places.correct("心慌") == "心慌" and not PlaceCorrector(["新光"])
    found = places.find("黄寨镇和王寨镇")
    assert [(c.heard, c.name) for c in found] == [("黄寨镇", "黄宅镇"), ("王寨镇", "王宅镇")]


def test_eval_compares_with_and_without_the_profile():
    import json
    import subprocess

    from tests.conftest import SHARED_DIALECT
    from tests.service import MINYIN, ROOT

    manifest = SHARED_DIALECT / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"{manifest} is not here")
    out = subprocess.run([*MINYIN, "eval", str(manifest), "--profile", "cantonese",
                          "--limit", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["profile"] == "cantonese" and summary["clips"] == 1
    comparison = summary["comparison"]
    assert set(comparison) == {"with_profile", "without (mandarin)"}
    for run in comparison.values():
        assert 0 <= run["cer"] <= 2 and 0 <= run["cer_standard_form"] <= 2
    assert "[mandarin]" in out.stderr and "[cantonese]" in out.stderr
