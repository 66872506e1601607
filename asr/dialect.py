"""Which Chinese variety was heard, and whether the machine text can be relied on.

Whisper base writes dialect speech as confident-looking Mandarin nonsense. Each window
is judged from what the model gives for free while it transcribes:

- `WindowSignals`: the language probabilities of the window's encoder output (one
  decoder step, no second encoder pass) and the encoder output averaged over the
  window's frames (the features a trained detector reads);
- the segment's own log-probability, compression ratio and no-speech probability;
- what the text looks like (characters that only a dialect's written form uses).

`RuleDetector` needs no training data; `TrainedDetector` is a small scikit-learn model
over the pooled encoder features, fitted by `minyin dialect train` from a county's
confirmed recordings (`fit_detector`). Both answer a `Judgement` per segment;
`judge_transcript` sums the segments into the transcript's variety.
"""

from __future__ import annotations

import json
import math
import pickle
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

VARIETIES = ("mandarin", "cantonese", "wu", "min", "hakka", "southwestern", "other", "unknown")
LABELS = {"mandarin": "普通话", "cantonese": "粤语", "wu": "吴语", "min": "闽语",
          "hakka": "客家话", "southwestern": "西南官话", "other": "其他方言", "unknown": "未知方言"}
# the names recordings come labelled with (manifests, other tools) -> a variety here
ALIASES = {"zh": "mandarin", "cmn": "mandarin", "putonghua": "mandarin", "yue": "cantonese",
           "minnan": "min", "mindong": "min", "nan": "min", "hokkien": "min",
           "teochew": "min", "fuzhou": "min", "shanghainese": "wu", "sichuanese": "southwestern",
           "hak": "hakka", "wuu": "wu"}

DETECTOR_KIND = "dialect"
RULES_NAME = "dialect-rules"
RULES_VERSION = "1"

# Characters of a dialect's own written form that written Mandarin does not use, so a
# transcript holding them is that dialect's text (Whisper writes them for clear
# Cantonese, and for Wu or Min now and then). Written here from the dialects' common
# orthographies.
DIALECT_CHARS = {
    "cantonese": set("嘅咗佢哋冇嘢啲喺乜嗰噉睇畀攞嚟諗啱餸嬲揾搵㗎喎啩"),
    "wu": set("侬伲覅弗"),
    "min": set("汝佇𪜶睏"),
    "hakka": set("𠊎"),
}
# words count double; only words that written Mandarin does not use (not 阿拉, which
# is also 阿拉伯, nor 要得 or 安逸)
DIALECT_WORDS = {
    "cantonese": ("唔該", "唔该", "咩事", "點解", "点解", "乜嘢", "係咪", "系咪", "唔係", "唔系"),
    "wu": ("侬好", "伐啦", "辰光", "交关", "勿要", "啥个", "阿拉屋里"),
    "min": ("阮兜", "汝好", "佇遮", "毋是", "按怎", "啥物"),
    "hakka": ("麼个", "係毋係", "系毋系"),
    "southwestern": ("啥子", "巴适", "晓得不", "莫得", "咋个", "要不得"),
}


@dataclass(frozen=True)
class WindowSignals:
    """What the transcriber measured on one window's encoder output."""

    languages: dict[str, float]  # Whisper language code -> probability (the top few)
    embedding: np.ndarray | None = None  # encoder output averaged over the window's frames

    @property
    def p_chinese(self) -> float:
        return self.languages.get("zh", 0.0) + self.languages.get("yue", 0.0)


@dataclass(frozen=True)
class Judgement:
    variety: str
    confidence: float  # 0..1, how sure the detector is of `variety`
    readable: bool


@dataclass(frozen=True)
class RuleThresholds:
    """The untrained default's cut-offs, from how Whisper behaves on speech it knows
    (Mandarin: the zh probability near 1, log-probabilities above about -0.6)."""

    p_chinese_min: float = 0.70  # below: not Mandarin as Whisper knows it
    logprob_min: float = -0.90  # a window decoded with less belief is not relied on
    compression_max: float = 2.4
    dialect_chars_min: int = 2  # dialect-only characters that name a variety


def text_cues(text: str) -> Counter[str]:
    """How strongly the text is written in each dialect's own form (words count 2)."""
    votes: Counter[str] = Counter()
    for variety, chars in DIALECT_CHARS.items():
        n = sum(1 for ch in text if ch in chars)
        if n:
            votes[variety] += n
    for variety, words in DIALECT_WORDS.items():
        for word in words:
            if word in text:
                votes[variety] += 2 * text.count(word)
    return votes


def normalise_variety(name: str | None) -> str:
    """A label from a manifest or a reviewer as one of `VARIETIES` (else `other`)."""
    if not name:
        return "unknown"
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    return key if key in VARIETIES else "other"


@dataclass
class RuleDetector:
    """The out-of-the-box detector: Whisper's own signals and the text, no training."""

    thresholds: RuleThresholds = field(default_factory=RuleThresholds)
    # a deployment's expected variety (its region's profile): where the audio is not
    # Mandarin and nothing else names a variety, this is the likelier guess
    expected: str | None = None
    name: str = RULES_NAME
    version: str = RULES_VERSION

    def judge(self, text: str, *, avg_logprob: float, compression_ratio: float,
              no_speech_prob: float, signals: WindowSignals | None) -> Judgement:
        t = self.thresholds
        cues = text_cues(text)
        if cues:
            variety, n = cues.most_common(1)[0]
            if n >= t.dialect_chars_min:
                return Judgement(variety, round(min(0.95, 0.5 + 0.1 * n), 3), False)
        p_zh = signals.p_chinese if signals is not None else None
        doubts = []
        if p_zh is not None and p_zh < t.p_chinese_min:
            doubts.append(1.0 - p_zh / t.p_chinese_min)
        if avg_logprob < t.logprob_min:
            doubts.append(min(1.0, (t.logprob_min - avg_logprob) / 0.6))
        if compression_ratio > t.compression_max:
            doubts.append(0.5)
        if doubts:
            guess = self.expected if self.expected not in (None, "mandarin") else "unknown"
            confidence = 0.5 + 0.5 * max(doubts)
            return Judgement(guess or "unknown", round(min(0.95, confidence), 3), False)
        belief = math.exp(min(0.0, avg_logprob)) * (1.0 - no_speech_prob)
        confidence = belief * (p_zh if p_zh is not None else 1.0)
        return Judgement("mandarin", round(max(0.5, min(0.99, confidence)), 3), True)


class TrainedDetector:
    """A scikit-learn classifier over pooled encoder features (and the zh probability),
    with the rules' text cues and log-probability floor kept: a model that hears
    Mandarin does not make a window Whisper could not decode readable."""

    def __init__(self, model: Any, classes: Sequence[str], *, name: str, version: str,
                 rules: RuleDetector | None = None, mandarin_min: float = 0.5) -> None:
        self.model = model
        self.classes = list(classes)
        self.name = name
        self.version = version
        self.rules = rules or RuleDetector()
        self.mandarin_min = mandarin_min

    def judge(self, text: str, *, avg_logprob: float, compression_ratio: float,
              no_speech_prob: float, signals: WindowSignals | None) -> Judgement:
        ruled = self.rules.judge(text, avg_logprob=avg_logprob,
                                 compression_ratio=compression_ratio,
                                 no_speech_prob=no_speech_prob, signals=signals)
        if signals is None or signals.embedding is None:
            return ruled
        probs = self.model.predict_proba(features(signals)[np.newaxis, :])[0]
        best = int(np.argmax(probs))
        variety, p = self.classes[best], float(probs[best])
        if variety == "mandarin":
            p_mandarin = p
        else:
            p_mandarin = float(probs[self.classes.index("mandarin")]) \
                if "mandarin" in self.classes else 0.0
        if p_mandarin >= self.mandarin_min and variety == "mandarin":
            # the rules may still doubt the text itself (an undecodable window)
            if not ruled.readable and ruled.variety != "unknown":
                return ruled
            if not ruled.readable and avg_logprob < self.rules.thresholds.logprob_min:
                return Judgement("mandarin", round(p, 3), False)
            return Judgement("mandarin", round(p, 3), True)
        return Judgement(variety, round(p, 3), False)


Detector = RuleDetector | TrainedDetector


def features(signals: WindowSignals) -> np.ndarray:
    """A window's detector input: the pooled encoder output and log P(zh)."""
    assert signals.embedding is not None
    p = max(1e-6, signals.p_chinese)
    return np.concatenate([np.asarray(signals.embedding, np.float32),
                           np.array([math.log(p)], np.float32)])


def judge_transcript(segments: Sequence[Any]) -> Judgement:
    """The transcript's variety: the segments' varieties weighted by duration, readable
    only when every segment of the caller's speech is (one unreadable stretch means a
    person must listen)."""
    if not segments:
        return Judgement("unknown", 0.0, False)
    weight: Counter[str] = Counter()
    belief: dict[str, float] = {}
    for seg in segments:
        d = max(0.1, float(seg.end) - float(seg.start))
        weight[seg.variety] += d
        belief[seg.variety] = belief.get(seg.variety, 0.0) + d * seg.variety_confidence
    variety, total = weight.most_common(1)[0]
    readable = all(seg.readable for seg in segments)
    if readable:
        variety = "mandarin"
        total = weight["mandarin"]
    elif variety == "mandarin":  # mostly Mandarin, but a stretch is not: name that one
        others = [(v, w) for v, w in weight.most_common() if v != "mandarin"]
        variety, total = others[0] if others else (variety, total)
    confidence = belief.get(variety, 0.0) / total if total else 0.0
    return Judgement(variety, round(confidence, 3), readable)


# --------------------------------------------------------------------------------------
# The trained detector on disk: DIR/card.json + DIR/model.pkl
# --------------------------------------------------------------------------------------


def load_detector(path: Path, *, expected: str | None = None) -> TrainedDetector:
    card = json.loads((path / "card.json").read_text(encoding="utf-8"))
    with open(path / "model.pkl", "rb") as f:
        model = pickle.load(f)  # our own registered model file, never an upload
    return TrainedDetector(model, card["classes"], name=card["name"], version=card["version"],
                           rules=RuleDetector(expected=expected),
                           mandarin_min=float(card.get("mandarin_min", 0.5)))


def fit_detector(rows: Iterable[tuple[WindowSignals, str]], out: Path, *, name: str,
                 version: str, source: dict[str, Any], c: float = 0.1,
                 mandarin_min: float = 0.5) -> dict[str, Any]:
    """Fit a logistic regression on (signals, variety) pairs, write DIR/model.pkl and
    DIR/card.json, and return the card."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs, ys = [], []
    for signals, variety in rows:
        if signals.embedding is None:
            continue
        xs.append(features(signals))
        ys.append(normalise_variety(variety))
    counts = Counter(ys)
    if len(counts) < 2:
        raise ValueError("a detector needs recordings of at least two varieties "
                         f"(got {dict(counts) or 'none'})")
    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=c, max_iter=3000, class_weight="balanced"))
    model.fit(np.stack(xs), ys)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.pkl.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(model, f)
    tmp.replace(out / "model.pkl")
    card = {"kind": DETECTOR_KIND, "name": name, "version": version,
            "classes": [str(k) for k in model.classes_], "mandarin_min": mandarin_min,
            "trained_on": {"windows": len(ys), "per_variety": dict(counts), **source},
            "features": "whisper encoder output mean-pooled over the window + log P(zh)",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (out / "card.json").write_text(json.dumps(card, ensure_ascii=False, indent=2) + "\n",
                                   encoding="utf-8")
    return card
