"""Text normalisation of Whisper output for Chinese tickets.

Whisper often answers Chinese in traditional characters, with ASCII punctuation or bare
spaces where the speaker paused, and with numbers spelled out. Tickets want simplified
characters, Chinese punctuation, and digits where a number is an address, a time, a
phone number or an amount (staff search for "3号楼", not "三号楼").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

import cn2an
import opencc


@lru_cache(maxsize=4)
def _converter(config: str) -> opencc.OpenCC:
    return opencc.OpenCC(config)


def to_simplified(text: str, config: str = "t2s") -> str:
    return _converter(config).convert(text)


_CJK = r"\u3400-\u9fff\uf900-\ufaff"
_ASCII_TO_CJK_PUNCT = {",": "，", "?": "？", "!": "！", ":": "：", ";": "；", "(": "（", ")": "）"}
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])")
_ASCII_PUNCT_NEAR_CJK = re.compile(rf"(?<=[{_CJK}])\s*([,?!:;])\s*|\s*([,?!:;])\s*(?=[{_CJK}])")
_PERIOD_AFTER_CJK = re.compile(rf"(?<=[{_CJK}])\.(?!\d)")
_REPEATED_PUNCT = re.compile(r"([，。？！；：、])[，。？！；：、]+")
_TERMINAL = "。？！…"
_PUNCT_CHARS = "，。？！；：、（）《》“”‘’「」『』…—·,.?!;:()[]\"'-~"

_DIGITS = "零〇一二三四五六七八九幺"
_DIGIT_MAP = str.maketrans({"零": "0", "〇": "0", "一": "1", "二": "2", "三": "3", "四": "4",
                            "五": "5", "六": "6", "七": "7", "八": "8", "九": "9", "幺": "1"})
# Three or more digits read one by one: phone numbers, room numbers, plate numbers.
_DIGIT_RUN = re.compile(rf"[{_DIGITS}]{{3,}}")
_NUMERAL = "零〇一二两三四五六七八九十百千万"
# A spelled-out number before a unit that makes it an address, time, date or amount.
# A lone 一 is left alone except before address units: 一点 is "a little", 一天 is idiom.
_ADDRESS_UNITS = "号楼|号|栋|幢|单元|层|楼|室|弄|组|排"
_COUNTED_UNITS = "点|点钟|岁|元|块钱|块|米|公里|个小时|小时|分钟|年|月|日|户|平方|吨|度"
_NUMBER_BEFORE_ADDRESS = re.compile(rf"[{_NUMERAL}]+(?=(?:{_ADDRESS_UNITS}))")
_NUMBER_BEFORE_COUNTED = re.compile(rf"[{_NUMERAL}]{{2,}}(?=(?:{_COUNTED_UNITS}))"
                                    rf"|[二两三四五六七八九十](?=(?:{_COUNTED_UNITS}))")
# Words whose numerals are not numbers.
_IDIOMS = ("一一", "十分", "万一", "一点点", "十足", "百姓", "千万", "三番五次", "七八糟",
           "一五一十")


# Neighbouring numerals are an estimate ("凌晨一两点", "三四天"), not a number.
_APPROXIMATE = re.compile(r"一两|两三|三四|四五|五六|六七|七八|八九")


def _spell_to_int(match: re.Match[str]) -> str:
    word = match.group(0)
    start = match.start()
    context = match.string[max(0, start - 2): match.end() + 2]
    if any(idiom in context for idiom in _IDIOMS) or _APPROXIMATE.search(word):
        return word
    if all(ch in _DIGITS for ch in word) and len(word) >= 2:
        return word.translate(_DIGIT_MAP)
    try:
        return str(cn2an.cn2an(word, "smart"))
    except (ValueError, KeyError):
        return word


# Whisper writes a phone number read in groups as "139-057-912-34" or "1385 7912 346".
_GROUPED_DIGITS = re.compile(r"(?<![\d-])\d{2,5}(?:[-\s]\d{2,5}){1,4}(?![\d-])")


def _join_phone_groups(match: re.Match[str]) -> str:
    digits = re.sub(r"[-\s]", "", match.group(0))
    # Mobile numbers and ID-card numbers are written solid; a landline keeps its "0579-".
    is_mobile = len(digits) == 11 and digits.startswith("1")
    return digits if is_mobile or len(digits) == 18 else match.group(0)


def normalize_numbers(text: str) -> str:
    text = _DIGIT_RUN.sub(lambda m: m.group(0).translate(_DIGIT_MAP), text)
    text = _GROUPED_DIGITS.sub(_join_phone_groups, text)
    text = _NUMBER_BEFORE_ADDRESS.sub(_spell_to_int, text)
    return _NUMBER_BEFORE_COUNTED.sub(_spell_to_int, text)


def normalize_punctuation(text: str, *, terminal: bool = True) -> str:
    text = text.strip()
    text = _ASCII_PUNCT_NEAR_CJK.sub(lambda m: _ASCII_TO_CJK_PUNCT[m.group(1) or m.group(2)], text)
    text = _PERIOD_AFTER_CJK.sub("。", text)
    text = _SPACE_BETWEEN_CJK.sub("，", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    if terminal and text and text[-1] not in _TERMINAL:
        text = text.rstrip("，、；：,;:") + "。"
    return text


def apply_lexicon(text: str, lexicon: Mapping[str, str]) -> str:
    """Replace dialect words by their standard forms, longest first."""
    for word in sorted(lexicon, key=len, reverse=True):
        text = text.replace(word, lexicon[word])
    return text


def normalize_text(text: str, *, lexicon: Mapping[str, str] | None = None,
                   terminal: bool = True) -> str:
    """The whole chain for one segment of Whisper output."""
    text = to_simplified(text)
    if lexicon:
        text = apply_lexicon(text, lexicon)
    text = normalize_numbers(text)
    return normalize_punctuation(text, terminal=terminal)


# Numbers as spoken or as digits, for scoring only: 一百五十 and 150, 十一 and 11,
# 幺三八 and 138 are one form on both sides of a comparison.
_NUMERAL_RUN = re.compile(r"[零〇一二两三四五六七八九十百千万亿幺]+")
_FULLWIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")
_DIGIT_MAP_ALL = str.maketrans({**{k: v for k, v in zip("零〇一二三四五六七八九幺",
                                                        "00123456789" + "1", strict=True)},
                                "两": "2"})


def _numeral_to_digits(match: re.Match[str]) -> str:
    run = match.group(0)
    if any(ch in run for ch in "十百千万亿"):
        try:
            value = cn2an.cn2an(run, "smart")
            return str(int(value)) if float(value).is_integer() else str(value)
        except (ValueError, KeyError, TypeError):
            pass  # not one number (万一, 十十): read digit by digit below
    return run.translate(_DIGIT_MAP_ALL)


def canonical_numbers(text: str) -> str:
    """Every number in digits (the same rule on both sides, so idioms such as 一样
    become 1样 in reference and hypothesis alike and cost nothing)."""
    return _NUMERAL_RUN.sub(_numeral_to_digits, text.translate(_FULLWIDTH_DIGITS))


_STRIP_FOR_SCORING = re.compile(r"[\s" + re.escape(_PUNCT_CHARS) + r"\u3000]+")


def scoring_form(text: str) -> str:
    """The form CER is computed on: no punctuation, no spaces, Latin lower-cased.

    Deliberately *not* converted to simplified: a hypothesis in traditional characters
    is scored as the user would read it (the reference is simplified).
    """
    return _STRIP_FOR_SCORING.sub("", text).lower()
