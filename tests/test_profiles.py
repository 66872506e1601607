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
