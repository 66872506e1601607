"""Guards against Whisper's known failures on Chinese audio.

Whisper was trained on subtitled video: on silence or noise it writes subtitle credits
("字幕由Amara.org社群提供") or channel outros ("请不吝点赞订阅"), it can loop on a
phrase until the window ends, and it can switch language. Each check here returns a
verdict the transcriber acts on: drop the segment, retry it, or trim it, and flag.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from asr.normalize import scoring_form, to_simplified


@dataclass(frozen=True)
class GuardConfig:
    compression_ratio_max: float = 2.4  # Whisper's own loop threshold (gzip ratio)
    no_speech_prob_max: float = 0.6
    logprob_silence_max: float = -1.0  # with high no_speech_prob: text on silence
    logprob_min: float = -1.5  # below this the text is a guess; retry, then flag
    min_repeats: int = 4  # a unit repeated this often in a row is a loop
    min_cjk_ratio: float = 0.5  # for Chinese output, share of CJK among letters


@lru_cache(maxsize=1)
def _phrases() -> tuple[tuple[str, ...], tuple[str, ...]]:
    path = resources.files("asr") / "data" / "hallucinations.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    norm = lambda items: tuple(scoring_form(to_simplified(p)) for p in items or ())  # noqa: E731
    return norm(data.get("phrases")), norm(data.get("weak_phrases"))


def is_hallucination(text: str, *, no_speech_prob: float = 0.0, avg_logprob: float = 0.0,
                     config: GuardConfig = GuardConfig()) -> bool:
    """True if the text is (mostly) a known subtitle/outro phrase, or filler on silence."""
    plain = scoring_form(to_simplified(text))
    if not plain:
        return False
    phrases, weak = _phrases()
    rest = plain
    for phrase in phrases:
        rest = rest.replace(phrase, "")
    if len(rest) <= max(2, 0.3 * len(plain)) and len(rest) < len(plain):
        return True
    doubtful_audio = no_speech_prob > 0.5 or avg_logprob < config.logprob_silence_max
    return doubtful_audio and plain in weak


def is_silence_text(no_speech_prob: float, avg_logprob: float,
                    config: GuardConfig = GuardConfig()) -> bool:
    """Whisper's own rule: the model thinks there is no speech and is unsure of its text."""
    return no_speech_prob > config.no_speech_prob_max and avg_logprob < config.logprob_silence_max


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


_LOOP = re.compile(r"(.{1,12}?)\1{3,}", re.DOTALL)


def find_loop(text: str, min_repeats: int = 4) -> re.Match[str] | None:
    """The first run of a 1-12 character unit repeated ``min_repeats`` or more times."""
    pattern = _LOOP if min_repeats == 4 else re.compile(
        rf"(.{{1,12}}?)\1{{{min_repeats - 1},}}", re.DOTALL)
    for match in pattern.finditer(text):
        unit = match.group(1)
        # "哈哈哈哈" or "......" can be genuine; a loop must carry a real word.
        if len(unit.strip("，。、 ")) >= 1 and not (len(unit) == 1 and unit in "哈啊呀嗯哦…."):
            return match
    return None


def is_looping(text: str, ratio: float | None = None,
               config: GuardConfig = GuardConfig()) -> bool:
    if ratio is None:
        ratio = compression_ratio(text)
    return ratio > config.compression_ratio_max or find_loop(text, config.min_repeats) is not None


def trim_loops(text: str, config: GuardConfig = GuardConfig()) -> str:
    """Collapse each looped run to a single occurrence of its unit."""
    while (match := find_loop(text, config.min_repeats)) is not None:
        text = text[: match.start()] + match.group(1) + text[match.end():]
    return text


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\uac00-\ud7af]")


def is_wrong_language(text: str, language: str, config: GuardConfig = GuardConfig()) -> bool:
    """For Chinese, text that is mostly not Chinese characters (English, kana, hangul)."""
    if language not in ("zh", "yue"):
        return False
    letters = _LETTER.findall(text)
    if len(letters) < 2:
        return False
    cjk = len(_CJK.findall(text))
    if _KANA_HANGUL.search(text) and cjk / len(letters) < 0.9:
        return True
    return cjk / len(letters) < config.min_cjk_ratio
