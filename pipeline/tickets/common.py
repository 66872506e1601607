"""Character classes and patterns the ticket modules share."""

from __future__ import annotations

import re
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# Spoken and full-width digits as they reach us from ASR: 幺 is how 1 is read out in
# phone numbers, 洞 is radio-style 0, 叉 is the X of an ID card.
_SPOKEN_DIGITS = {
    **{c: str(i) for i, c in enumerate("0123456789")},
    **{c: str(i) for i, c in enumerate("０１２３４５６７８９")},
    **{c: str(i) for i, c in enumerate("零一二三四五六七八九")},
    "〇": "0",
    "洞": "0",
    "幺": "1",
    "两": "2",
}
_DIGITS = "".join(_SPOKEN_DIGITS)
_TO_ARABIC = str.maketrans({**_SPOKEN_DIGITS, "叉": "X", "x": "X"})
_D = "[" + _DIGITS + "]"
_SEP = r"[ \-－—.·,，、]"
_NUMBER_RUN = re.compile(rf"\+?{_D}(?:{_SEP}{{0,2}}{_D})*(?:{_SEP}{{0,2}}[Xx叉])?")
_SENTENCE_END = re.compile(r"[。！？!?；;\n]+")
_CLAUSE_END = re.compile(r"[，,。！？!?；;：:\n]+|\s{2,}")
_MEANINGFUL = re.compile(r"[\u4e00-\u9fff0-9A-Za-z]")
_NAME_CHAR = r"[\u4e00-\u9fff0-9A-Za-z０-９]"
_BLANK = "\x00"
