"""The complaint-text language model: what it is built from, and which one is current.

The shipped default (`models/lm/default`, built by `minyin models setup`) is built only
from sources the product may ship:

- jieba's word dictionary (MIT): 349 000 words with frequencies, each word a sentence
  weighted by (frequency / 100) ** 0.5, so everyday characters and the characters of
  common words dominate without drowning everything else;
- the complaint vocabulary of pipeline/data/taxonomy.yaml and ticket_rules.yaml (every
  Chinese label, keyword and phrasing) and the sentences of pipeline/data/lm_phrases.txt;
- the deployment's place names (the dialect profiles' gazetteers, pipeline/data/
  places.yaml, and whatever names the caller adds).

A county adds its own text: a 12345 work-order export as JSONL (`{"title", "text"}` a
line) and the transcripts its staff approved (`Store.approved_documents`). Those are the
sentences callers really say, so each counts as much as a phrase of lm_phrases.txt.

The registry works like the Whisper one (pipeline/models.py): promotions are rows of
`model_promotions` with kind 'lm'; the newest wins, else MINYIN_LM. An LM is promoted
only when it loads and its card has a fitted rescoring CER (`rescoring.dev_cer.after`,
written by `minyin lm fit`) no worse than the current LM's; an LM without one (a fresh
build) needs `force`, because nothing says it helps yet. "none" (no LM) can always be
promoted: turning rescoring off is never refused.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from asr.lm import (
    LMError,
    NgramCounter,
    lm_sentences,
    lm_version,
    load_lm,
    read_card,
    utcnow_iso,
    write_lm_dir,
)
from asr.profiles import available_profiles, load_profile
from pipeline.config import Settings
from pipeline.store import ModelPromotion, Store

DEFAULT_LM = "lm/default"
NO_LM = "none"
LM_KIND = "lm"

# Weights, measured as perplexity on held-out 12345 messages (README): a general word
# of jieba frequency f counts (f / 100) ** 0.5; a complaint phrase, keyword or place
# name counts as a word of frequency ~ 40 000; a county's own sentence as much.
GENERAL_SCALE = 100.0
GENERAL_EXPONENT = 0.5
COMPLAINT_WEIGHT = 20.0
PLACE_WEIGHT = 5.0
HISTORY_WEIGHT = 20.0
JIONLP_WEIGHT = 0.5
# n-grams seen less often than this are pruned (per order, unigrams always kept). For
# order 4 on 2 cores: unpruned 41 MB, held-out perplexity 680; these 16 MB, 701;
# (0, 0, 1, 2) 9 MB, 713. Orders 3 and 5 (pruned alike): 883 and 691.
MIN_COUNTS = {3: (0, 0, 0.3), 4: (0, 0, 0.3, 0.6), 5: (0, 0, 0.3, 0.6, 1.0)}
# lexicon.tsv: general words a phonetic corrector may substitute in
LEXICON_MIN_HAN, LEXICON_MAX_HAN = 2, 4
LEXICON_MIN_FREQ = 50

_HAN = re.compile(r"[\u3400-\u9fff]")
_ALL_HAN = re.compile(r"^[\u3400-\u9fff]+$")


class LMBuildError(ValueError):
    """A source the LM cannot be built from; the message names the file and line."""


class LMRegistryError(ValueError):
    """A promotion or rollback refused; the message says why."""


# -- sources -------------------------------------------------------------------------------


def jieba_dictionary() -> Path:
    return Path(str(resources.files("jieba") / "dict.txt"))


def general_words(path: Path | None = None) -> Iterator[tuple[str, float]]:
    """jieba's dictionary: (word, frequency)."""
    path = path or jieba_dictionary()
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                try:
                    yield parts[0], float(parts[1])
                except ValueError:
                    continue


# jionlp's packaged dictionaries (Apache-2.0): the definitions and usage examples of
# its word and character dictionaries and its 歇后语 are the only running Chinese text
# the product may ship; they teach the LM which words follow which (晚餐丰盛, not 晚餐
# 风扇). Measured on the n-best of ../shared/audio-mandarin-read (825 characters): with
# jieba's words alone rescoring took CER 11.0% -> 10.8%; with these texts 10.2%.
_JIONLP_NUMBERING = re.compile(r"\[[^\]]*\]|\d+\.|〖|〗")


def _jionlp_lines(root: Path, name: str) -> Iterator[str]:
    """A jionlp dictionary's lines: the .txt jionlp unzips on its first import, else
    straight from the .zip the wheel ships (a fresh install has only that)."""
    txt = root / f"{name}.txt"
    if txt.is_file():
        with open(txt, encoding="utf-8") as f:
            yield from f
        return
    with zipfile.ZipFile(root / f"{name}.zip") as z, z.open(f"{name}.txt") as raw:
        yield from io.TextIOWrapper(raw, encoding="utf-8")


def jionlp_texts() -> Iterator[str]:
    """Definitions and examples from jionlp's dictionaries ("~" is the headword)."""
    # found, not imported: importing jionlp prints a banner and loads far more
    spec = importlib.util.find_spec("jionlp")
    if spec is None or not spec.submodule_search_locations:
        raise LMBuildError("the jionlp package is not installed: pip install jionlp")
    root = Path(next(iter(spec.submodule_search_locations))) / "dictionary"
    for line in _jionlp_lines(root, "chinese_word_dictionary"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 2:
            yield _JIONLP_NUMBERING.sub(" ", parts[1]).replace("~", parts[0])
    for line in _jionlp_lines(root, "chinese_char_dictionary"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 8:
            yield _JIONLP_NUMBERING.sub(" ", parts[7]).replace("~", parts[0])
    for line in _jionlp_lines(root, "xiehouyu"):
        yield line.replace("\t", "，")


def _data_file(name: str) -> Path:
    return Path(str(resources.files("pipeline") / "data" / name))


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _strings(item)


def complaint_terms() -> list[str]:
    """Every Chinese string of taxonomy.yaml and ticket_rules.yaml (labels, keywords,
    phrasings; a regular expression contributes its literal runs of characters)."""
    terms: dict[str, None] = {}
    for name in ("taxonomy.yaml", "ticket_rules.yaml"):
        data = yaml.safe_load(_data_file(name).read_text(encoding="utf-8"))
        for s in _strings(data):
            if not _HAN.search(s):
                continue
            for part in re.split(r"[^\w]+|\d+", s):  # regex syntax, digits as quantifiers
                if _HAN.search(part):
                    terms[part] = None
    return list(terms)


def complaint_phrases() -> list[str]:
    """The sentences and phrases of pipeline/data/lm_phrases.txt."""
    lines = _data_file("lm_phrases.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def default_place_names() -> list[str]:
    """The built-in dialect profiles' gazetteers and pipeline/data/places.yaml."""
    names: dict[str, None] = {}
    for profile in available_profiles():
        for name in load_profile(profile).gazetteer:
            names[name] = None
    places = yaml.safe_load(_data_file("places.yaml").read_text(encoding="utf-8"))
    for s in _strings(places):
        for name in s.split("|"):
            if _HAN.search(name):
                names[name.strip()] = None
    return list(names)


def read_history(path: Path) -> list[str]:
    """A work-order export: JSONL lines {"title": ..., "text": ...}; each line's title
    and text. LMBuildError naming the file and line for anything else."""
    texts = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise LMBuildError(f"{path}:{number}: not JSON: {e}") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise LMBuildError(f"{path}:{number}: expected an object with a "
                                       "\"text\" string (and an optional \"title\")")
                title = row.get("title")
                if title is not None and not isinstance(title, str):
                    raise LMBuildError(f"{path}:{number}: \"title\" must be a string")
                texts.append(f"{title}。{row['text']}" if title else row["text"])
    except OSError as e:
        raise LMBuildError(f"{path}: cannot read: {e}") from None
    except UnicodeDecodeError as e:
        raise LMBuildError(f"{path}: not UTF-8: {e}") from None
    return texts


def approved_texts(store: Store) -> list[str]:
    """The transcripts staff approved (the latest approval of each ticket)."""
    texts = []
    for revision, _job in store.approved_documents():
        transcript = (revision.document or {}).get("transcript") or {}
        text = transcript.get("text")
        if not text:
            text = "。".join(s.get("text", "") for s in transcript.get("segments") or ())
        if text:
            texts.append(text)
    return texts


# -- building -------------------------------------------------------------------------------


def build_lm(out: Path, *, history_files: Sequence[Path] = (), store: Store | None = None,
             place_names: Iterable[str] = (), order: int = 4, name: str | None = None,
             dev_texts: Sequence[str] | None = None, overwrite: bool = False,
             general: Iterable[tuple[str, float]] | None = None,
             min_counts: Sequence[float] | None = None,
             region: str | None = None) -> dict[str, Any]:
    """Build the LM directory `out` from the shipped sources plus a county's history and
    approved corrections; its card. `general` replaces jieba's dictionary (tests)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LMError(f"{out} exists; pass --overwrite to replace it")
    history = [(Path(p), read_history(Path(p))) for p in history_files]  # fail early
    corrections = approved_texts(store) if store is not None else []

    counter = NgramCounter(order)
    sources: list[dict[str, Any]] = []
    lexicon: dict[str, tuple[float, str]] = {}

    def add_source(entry: dict[str, Any], texts: Iterable[str], weight: float) -> None:
        lines = chars = 0
        for text in texts:
            for sentence in lm_sentences(text):
                counter.add_sentence(sentence, weight)
                chars += len(sentence)
            lines += 1
        sources.append({**entry, "lines": lines, "chars": chars, "weight": weight})

    words = chars = 0
    total_weight = 0.0
    general_package = "jieba" if general is None else "(given)"
    for word, freq in (general_words() if general is None else general):
        weight = (freq / GENERAL_SCALE) ** GENERAL_EXPONENT
        for sentence in lm_sentences(word):
            # a word with <s> and </s>: measured better (perplexity 701) than a word
            # as a piece of a sentence without them (885)
            counter.add_sentence(sentence, weight)
            chars += len(sentence)
        words += 1
        total_weight += weight
        if (LEXICON_MIN_HAN <= len(word) <= LEXICON_MAX_HAN and freq >= LEXICON_MIN_FREQ
                and _ALL_HAN.match(word)):
            lexicon[word] = (freq, "general")
    sources.append({"kind": "general", "package": general_package,
                    "path": "jieba/dict.txt" if general is None else None, "words": words,
                    "chars": chars, "weight": f"(frequency / {GENERAL_SCALE:g}) ** "
                                              f"{GENERAL_EXPONENT:g}",
                    "total_weight": round(total_weight, 1)})

    if general is None:
        add_source({"kind": "general", "package": "jionlp",
                    "path": "jionlp/dictionary: word and character definitions, 歇后语"},
                   jionlp_texts(), JIONLP_WEIGHT)

    terms = complaint_terms()
    add_source({"kind": "complaint", "path": "pipeline/data/taxonomy.yaml, "
                                             "pipeline/data/ticket_rules.yaml"},
               terms, COMPLAINT_WEIGHT)
    phrases = complaint_phrases()
    add_source({"kind": "complaint", "path": "pipeline/data/lm_phrases.txt"},
               phrases, COMPLAINT_WEIGHT)
    for term in terms:
        if _ALL_HAN.match(term) and len(term) >= 2:
            lexicon[term] = (COMPLAINT_WEIGHT, "complaint")

    places = list(dict.fromkeys([*default_place_names(), *place_names]))
    add_source({"kind": "place", "path": "dialect profiles, pipeline/data/places.yaml"
                                         " and the deployment's names"},
               places, PLACE_WEIGHT)
    for place in places:
        if _ALL_HAN.match(place) and len(place) >= 2:
            lexicon[place] = (PLACE_WEIGHT, "place")

    history_texts: list[str] = []
    for path, texts in history:
        add_source({"kind": "history", "path": str(path)}, texts, HISTORY_WEIGHT)
        history_texts += texts
    if store is not None:
        add_source({"kind": "corrections", "path": "store: approved transcripts"},
                   corrections, HISTORY_WEIGHT)
        history_texts += corrections
    for word, count in _history_words(history_texts, known=lexicon):
        lexicon[word] = (float(count), "history")

    now = utcnow_iso()
    card = {"name": name or out.name, "version": lm_version(), "created_at": now,
            "region": region, "sources": sources}
    return write_lm_dir(out, counter, card=card,
                        lexicon=((w, weight, src) for w, (weight, src) in sorted(lexicon.items())),
                        min_counts=min_counts if min_counts is not None
                        else MIN_COUNTS.get(order, (0, 0, 0.3, 0.6, 1.0, 1.0)),
                        dev_texts=dev_texts, overwrite=overwrite)


def _history_words(texts: Sequence[str], *, known: dict[str, Any], min_count: int = 2
                   ) -> list[tuple[str, int]]:
    """Words (jieba's segmentation) of the county's own text that are not in the
    lexicon yet and occur at least twice: local names and terms."""
    if not texts:
        return []
    import jieba

    jieba.setLogLevel(60)
    counts: dict[str, int] = {}
    for text in texts:
        for word in jieba.cut(text):
            if (LEXICON_MIN_HAN <= len(word) <= LEXICON_MAX_HAN and word not in known
                    and _ALL_HAN.match(word)):
                counts[word] = counts.get(word, 0) + 1
    return sorted((w, c) for w, c in counts.items() if c >= min_count)


def ensure_default_lm(models_dir: Path, *, force: bool = False,
                      region: str | None = None) -> Path:
    """models_dir/lm/default from the shipped sources and the region's place names,
    unless it is there, loads, and was built for the same region."""
    out = Path(models_dir) / DEFAULT_LM
    if not force and (out / "card.json").is_file():
        try:
            load_lm(out)
            if read_card(out).get("region") == region:
                return out
        except LMError:
            pass
    names: tuple[str, ...] = ()
    if region:
        from asr.gazetteer import region_names

        names = region_names(region).all_names()
    build_lm(out, name="default", overwrite=True, place_names=names, region=region)
    return out


# -- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LMEntry:
    spec: str  # "lm/NAME", relative to models_dir
    card: dict[str, Any]
    current: bool

    @property
    def dev_cer(self) -> float | None:
        return rescoring_cer(self.card)


def rescoring_cer(card: dict[str, Any], which: str = "after") -> float | None:
    """The dev CER with this LM's rescoring, from its card (`minyin lm fit` writes it)."""
    value = ((card.get("rescoring") or {}).get("dev_cer") or {}).get(which)
    return float(value) if isinstance(value, int | float) else None


def lm_spec(spec: str, settings: Settings) -> tuple[str, Path | None]:
    """The spec as stored (relative to models_dir where it is under it; a bare NAME is
    lm/NAME) and its directory; ("none", None) for no LM."""
    if spec.strip().lower() == NO_LM:
        return NO_LM, None
    path = Path(spec).expanduser()
    if not path.is_absolute():
        under = settings.models_dir / path
        path = under if under.exists() or "/" in spec else settings.models_dir / "lm" / spec
    path = path.resolve()
    try:
        return str(path.relative_to(settings.models_dir.resolve())), path
    except ValueError:
        return str(path), path


def lm_path(spec: str, settings: Settings) -> Path | None:
    return lm_spec(spec, settings)[1]


def normal_lm_spec(spec: str, settings: Settings) -> str | None:
    """`spec` as the registry stores it (lm/NAME, or a path outside models_dir); None
    for no LM."""
    stored, _ = lm_spec(spec, settings)
    return None if stored == NO_LM else stored


def current_lm_spec(store: Store, settings: Settings) -> str | None:
    """The LM the workers should use: the registry's current one, else MINYIN_LM; None
    for no LM."""
    row = store.current_model(kind=LM_KIND)
    return normal_lm_spec(row.model if row is not None else settings.lm, settings)


def _card_or_empty(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return read_card(path)
    except LMError:
        return {}


def list_lms(store: Store, settings: Settings) -> list[LMEntry]:
    current = current_lm_spec(store, settings)
    root = settings.models_dir
    entries = []
    for card in sorted((root / "lm").glob("*/card.json")):
        spec = str(card.parent.relative_to(root))
        entries.append(LMEntry(spec, _card_or_empty(card.parent), spec == current))
    return entries


def promote_lm(store: Store, settings: Settings, spec: str, *, author: str,
               force: bool = False, reason: str | None = None) -> ModelPromotion:
    stored, path = lm_spec(spec, settings)
    current = current_lm_spec(store, settings) or NO_LM
    if stored == current:
        raise LMRegistryError(f"{stored} is already the current language model")
    if path is None:
        return store.record_promotion(kind=LM_KIND, model=NO_LM, name=NO_LM, version="",
                                      action="promote", author=author, forced=force,
                                      reason=reason)
    try:
        lm = load_lm(path)  # it must load here, not first on a worker
    except LMError as e:
        raise LMRegistryError(f"{stored} cannot be promoted: {e}") from None
    candidate = rescoring_cer(_card_or_empty(path))  # read anew: lm fit rewrites it
    baseline = rescoring_cer(_card_or_empty(lm_path(current, settings)))
    if not force:
        if candidate is None:
            raise LMRegistryError(f"{stored} has no fitted rescoring CER in its card.json; "
                                  "fit it (minyin lm fit) or promote with --force")
        if baseline is not None and candidate > baseline:
            raise LMRegistryError(f"{stored} has rescoring dev CER {candidate:.2%}, worse "
                                  f"than the current LM {current} ({baseline:.2%}); "
                                  "promote with --force to use it anyway")
    return store.record_promotion(kind=LM_KIND, model=stored, name=lm.name,
                                  version=lm.version, action="promote", author=author,
                                  forced=force, validation_cer=candidate, reason=reason)


def rollback_lm(store: Store, settings: Settings, *, author: str) -> ModelPromotion:
    """Make the LM before the current one current again."""
    history = store.model_history(kind=LM_KIND)
    default, _ = lm_spec(settings.lm, settings)
    if not history:
        raise LMRegistryError(f"no language model was promoted; the workers use MINYIN_LM "
                              f"({default})")
    current = history[0].model
    previous = next((row.model for row in history[1:] if row.model != current), default)
    if previous == current:
        raise LMRegistryError(f"{current} is the only language model there has been")
    path = lm_path(previous, settings)
    card = _card_or_empty(path)
    return store.record_promotion(kind=LM_KIND, model=previous,
                                  name=str(card.get("name") or previous),
                                  version=str(card.get("version") or ""), action="rollback",
                                  author=author, validation_cer=rescoring_cer(card),
                                  reason=f"rollback from {current}")


def lm_history(store: Store) -> list[ModelPromotion]:
    return store.model_history(kind=LM_KIND)
