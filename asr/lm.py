"""A character n-gram language model of complaint text: build, write as ARPA, query.

Whisper's n-best hypotheses and a phonetic corrector's candidate substitutions are
ranked by how plausible their characters are as complaint text. Chinese has no spaces,
and what Whisper gets wrong is single characters (路登 for 路灯), so the model is over
characters: every Han character, digit and Latin letter is one token.

`NgramCounter` accumulates weighted n-gram counts (a dictionary word of frequency f
counts f times, so weights are fractional) and writes a KenLM-compatible ARPA file with
interpolated Kneser-Ney smoothing: lower orders use continuation counts (how many
different characters precede an n-gram), each order one absolute discount estimated
from its counts-of-counts (Ney: n1 / (n1 + 2 n2)), counts pruned below a per-order
minimum with the pruned mass moved to the backoff, so every context still sums to 1.

`CharLM` reads that ARPA through the `kenlm` module (the `ufal.kenlm` wheel) when it
is importable, else through a pure-Python backoff reader of the same file; both give the
same scores (natural log; kenlm's log10 is converted).

Measured on the shipped default (order 4, 16 MB ARPA, 675 000 n-grams; 2 shared cores,
so +-30 %): load ufal.kenlm 0.3 s (kenlm-ex 0.3 s), pure Python 2.7 s; 50-character
sentences scored per second: ufal.kenlm 53 000-87 000 (kenlm-ex 65 000), pure Python
3 200-4 400.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asr.normalize import _PUNCT_CHARS, to_simplified

FORMAT = "minyin-lm/1"
ARPA_NAME = "lm.arpa"
CARD_NAME = "card.json"
LEXICON_NAME = "lexicon.tsv"
LEXICON_SOURCES = ("general", "complaint", "place", "history")

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# Inside the counter every token is one character, so an n-gram is a str of length n
# (much smaller and faster than tuples); the three markers get control characters.
_BOS, _EOS, _UNK = "\x02", "\x03", "\x01"
_TO_ARPA = {_BOS: BOS, _EOS: EOS, _UNK: UNK}
_FROM_ARPA = {v: k for k, v in _TO_ARPA.items()}

_LN10 = math.log(10.0)
_LOG10_ZERO = -99.0  # ARPA's "probability 0" (of <s>, which is never predicted)

_SPLIT = re.compile(r"[\s" + re.escape(_PUNCT_CHARS) + r"\u3000]+")


class LMError(Exception):
    """A language model that cannot be built, read or loaded; the message names it."""


def lm_sentences(text: str) -> list[list[str]]:
    """The LM's tokenisation: simplified, Latin lower-cased, full-width folded (NFKC),
    split into sentences at punctuation, whitespace and any other non-letter symbol;
    each character of a sentence one token."""
    text = unicodedata.normalize("NFKC", to_simplified(text)).lower()
    sentences = []
    for part in _SPLIT.split(text):
        run: list[str] = []
        for ch in part:
            if ch.isalnum():
                run.append(ch)
            elif run:  # a symbol that is no letter (%, #, an emoji) ends a sentence too
                sentences.append(run)
                run = []
        if run:
            sentences.append(run)
    return sentences


# -- building ---------------------------------------------------------------------------


class NgramCounter:
    """Weighted character n-gram counts of sentences padded with <s> ... </s>."""

    def __init__(self, order: int = 4) -> None:
        if not 1 <= order <= 9:
            raise ValueError("order must be between 1 and 9")
        self.order = order
        # counts[n][ngram] for n = 1..order (index 0 unused)
        self.counts: list[defaultdict[str, float]] = [defaultdict(float)
                                                      for _ in range(order + 1)]
        self.sentences = 0
        self.tokens = 0

    def add_sentence(self, tokens: Sequence[str], weight: float = 1.0, *,
                     bos: bool = True, eos: bool = True) -> None:
        """Count one sentence; without `bos`/`eos` it is a piece of a sentence (a
        dictionary word) whose edges are not a sentence's."""
        if weight <= 0 or not tokens:
            return
        if any(len(t) != 1 for t in tokens):
            raise ValueError("tokens of a character LM are single characters")
        padded = (_BOS if bos else "") + "".join(tokens) + (_EOS if eos else "")
        self.sentences += 1
        self.tokens += len(tokens)
        length = len(padded)
        for n in range(1, self.order + 1):
            counts = self.counts[n]
            for i in range(length - n + 1):
                counts[padded[i:i + n]] += weight

    def add_text(self, text: str, weight: float = 1.0) -> int:
        """Every sentence of `text` (see `lm_sentences`) with `weight`; how many."""
        sentences = lm_sentences(text)
        for tokens in sentences:
            self.add_sentence(tokens, weight)
        return len(sentences)

    def estimate(self, min_counts: Sequence[float] | None = None
                 ) -> list[dict[str, tuple[float, float]]]:
        """Interpolated Kneser-Ney: for each order a dict ngram -> (log10 p, log10 backoff).

        `min_counts[n-1]` is the least raw count an n-gram needs to be kept (unigrams are
        always kept); non-decreasing over the orders, so every kept n-gram's prefix and
        suffix are kept too, as ARPA readers expect.
        """
        order = self.order
        mins = list(min_counts or ())[:order] + [0.0] * (order - len(min_counts or ()))
        for n in range(2, order):
            mins[n] = max(mins[n], mins[n - 1])
        raw = self.counts
        if not raw[1]:
            raise LMError("no sentences to build a language model from")
        # adjusted counts: raw at the highest order and for n-grams that start at <s>
        # (nothing can precede them), else the number of different left extensions
        adjusted: list[dict[str, float]] = [{} for _ in range(order + 1)]
        adjusted[order] = raw[order]
        for n in range(order - 1, 0, -1):
            cont: Counter[str] = Counter(g[1:] for g in raw[n + 1])
            adjusted[n] = {g: (c if g[0] == _BOS else float(cont.get(g, 0)))
                           for g, c in raw[n].items()}
        kept = [set()] + [set(raw[1])] + [
            {g for g, c in raw[n].items() if c >= mins[n - 1]} for n in range(2, order + 1)]
        discounts = [0.0] + [_discount(adjusted[n].values()) for n in range(1, order + 1)]

        vocab = [g for g in raw[1] if g != _BOS] + [_UNK]
        result: list[dict[str, tuple[float, float]]] = [{} for _ in range(order + 1)]
        probs_lower: dict[str, float] = {}
        for n in range(1, order + 1):
            d = discounts[n]
            total: defaultdict[str, float] = defaultdict(float)
            kept_mass: defaultdict[str, float] = defaultdict(float)
            for g, a in adjusted[n].items():
                if n == 1 and g == _BOS:
                    continue
                total[g[:-1]] += a
                if g in kept[n]:
                    kept_mass[g[:-1]] += max(a - d, 0.0)
            # the mass each context leaves to its lower order: its backoff weight
            gamma = {h: 1.0 - kept_mass[h] / t if t > 0 else 1.0 for h, t in total.items()}
            probs: dict[str, float] = {}
            if n == 1:
                uniform = gamma[""] / len(vocab)
                for g in vocab:
                    a = adjusted[1].get(g, 0.0)
                    probs[g] = max(a - d, 0.0) / total[""] + uniform
            else:
                for g in kept[n]:
                    h = g[:-1]
                    t = total[h]  # 0 when nothing was seen after h in running text
                    probs[g] = ((max(adjusted[n][g] - d, 0.0) / t if t > 0 else 0.0)
                                + gamma[h] * probs_lower[g[1:]])
            if n > 1:
                # the backoff of each (n-1)-gram is the mass its children leave
                prev = result[n - 1]
                for h, (lp, _) in prev.items():
                    g_h = gamma.get(h, 1.0)
                    prev[h] = (lp, math.log10(g_h) if g_h > 0 else _LOG10_ZERO)
            result[n] = {g: (math.log10(p), 0.0) for g, p in probs.items()}
            if n == 1:
                result[1][_BOS] = (_LOG10_ZERO, 0.0)
            probs_lower = probs
        return result[1:]

    def write_arpa(self, path: Path, min_counts: Sequence[float] | None = None
                   ) -> dict[int, int]:
        """Write the model as ARPA; the number of n-grams per order."""
        tables = self.estimate(min_counts)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n\\data\\\n")
            for n, table in enumerate(tables, 1):
                f.write(f"ngram {n}={len(table)}\n")
            for n, table in enumerate(tables, 1):
                f.write(f"\n\\{n}-grams:\n")
                last = n == len(tables)
                lines = []
                for g in sorted(table):
                    lp, bo = table[g]
                    words = " ".join(_TO_ARPA.get(ch, ch) for ch in g)
                    if last or bo == 0.0:
                        lines.append(f"{lp:.6f}\t{words}\n")
                    else:
                        lines.append(f"{lp:.6f}\t{words}\t{bo:.6f}\n")
                f.writelines(lines)
            f.write("\n\\end\\\n")
        return {n: len(t) for n, t in enumerate(tables, 1)}


def _discount(counts: Iterable[float]) -> float:
    """Ney's absolute discount n1 / (n1 + 2 n2) from the counts-of-counts (fractional
    counts rounded), kept within (0.1, 0.95) for small or odd corpora."""
    n1 = n2 = 0
    for c in counts:
        r = round(c)
        if r == 1:
            n1 += 1
        elif r == 2:
            n2 += 1
    if n1 == 0:
        return 0.5
    return min(0.95, max(0.1, n1 / (n1 + 2 * n2)))


# -- querying ---------------------------------------------------------------------------


def _import_kenlm() -> Any:
    try:
        import kenlm
    except ImportError:
        return None
    return kenlm


class CharLM:
    """A character LM read from an ARPA file (and its directory's card.json)."""

    def __init__(self, path: Path, *, use_kenlm: bool | None = None) -> None:
        path = Path(path)
        self.dir = path if path.is_dir() else path.parent
        arpa = path / ARPA_NAME if path.is_dir() else path
        self.path = arpa
        if not arpa.is_file():
            raise LMError(f"{arpa}: no language model there (build one: minyin lm build)")
        card_path = self.dir / CARD_NAME
        self.card: dict[str, Any] = {}
        if path.is_dir():
            try:
                self.card = json.loads(card_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise LMError(f"{card_path}: unreadable card: {e}") from None
        self.name = str(self.card.get("name") or self.dir.name)
        self.version = str(self.card.get("version") or "")
        kenlm = _import_kenlm() if use_kenlm in (None, True) else None
        if use_kenlm and kenlm is None:
            raise LMError("the kenlm module is not installed (pip install ufal.kenlm)")
        self._kenlm = None
        self._table: dict[str, tuple[float, float]] = {}
        try:
            if kenlm is not None:
                config = kenlm.Config()
                config.show_progress = False
                self._kenlm = kenlm.Model(str(arpa), config)
                self.order = int(self._kenlm.order)
            else:
                self.order = self._read_arpa(arpa)
        except (OSError, ValueError, RuntimeError, UnicodeDecodeError) as e:
            raise LMError(f"{arpa}: not a readable ARPA language model: {e}") from None
        self.backend = "kenlm" if self._kenlm is not None else "python"

    def _read_arpa(self, arpa: Path) -> int:
        table = self._table
        order = 0
        section = 0
        with open(arpa, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                if line.startswith("\\"):
                    if line.endswith("-grams:"):
                        section = int(line[1:line.index("-")])
                        order = max(order, section)
                    elif line == "\\end\\":
                        break
                    continue
                if section == 0:
                    continue
                fields = line.split("\t") if "\t" in line else line.split()
                if "\t" in line:
                    words = fields[1].split(" ")
                    bo = float(fields[2]) if len(fields) > 2 else 0.0
                else:  # space-separated ARPA: logp w1 .. wn [backoff]
                    words = fields[1:1 + section]
                    bo = float(fields[1 + section]) if len(fields) > 1 + section else 0.0
                if len(words) != section:
                    raise ValueError(f"a {section}-gram line with {len(words)} words")
                key = "".join(_FROM_ARPA.get(w, w) for w in words)
                if len(key) != section:
                    raise ValueError(f"multi-character token in {words}")
                table[key] = (float(fields[0]), bo)
        if not order or _UNK not in table:
            raise ValueError("no n-grams (or no <unk>)")
        return order

    def score_sentence(self, tokens: Sequence[str], bos: bool = True, eos: bool = True
                       ) -> float:
        """Natural-log probability of one sentence of single-character tokens."""
        if self._kenlm is not None:
            return self._kenlm.score(" ".join(tokens), bos=bos, eos=eos) * _LN10
        table = self._table
        keep = self.order - 1
        history = _BOS if bos else ""
        total = 0.0
        words = [t if len(t) == 1 and t in table else _UNK for t in tokens]
        if eos:
            words.append(_EOS)
        for w in words:
            context = history[-keep:] if keep else ""
            while True:
                entry = table.get(context + w)
                if entry is not None:
                    total += entry[0]
                    break
                backoff = table.get(context)
                if backoff is not None:
                    total += backoff[1]
                context = context[1:]
            history += w
        return total * _LN10

    def score(self, text: str) -> float:
        """Natural-log probability of `text`: each of its sentences with <s> and </s>."""
        return sum(self.score_sentence(s) for s in lm_sentences(text))

    def perplexity(self, texts: Iterable[str]) -> float:
        """Per-token perplexity (each sentence's </s> a token) over `texts`."""
        log_prob = 0.0
        tokens = 0
        for text in texts:
            for sentence in lm_sentences(text):
                log_prob += self.score_sentence(sentence)
                tokens += len(sentence) + 1
        if tokens == 0:
            raise ValueError("no text to measure perplexity on")
        return math.exp(-log_prob / tokens)


_cache: dict[tuple[str, int], CharLM] = {}
_cache_lock = threading.Lock()


def load_lm(path: Path | str) -> CharLM:
    """The LM in directory `path` (or an ARPA file), loaded once per path and file
    version; thread-safe."""
    path = Path(path).expanduser()
    arpa = path / ARPA_NAME if path.is_dir() else path
    try:
        mtime = arpa.stat().st_mtime_ns
    except OSError:
        raise LMError(f"{path}: no language model there ({arpa.name} missing; build one: "
                      "minyin lm build)") from None
    key = (str(path.resolve()), mtime)
    with _cache_lock:
        lm = _cache.get(key)
        if lm is None:
            lm = CharLM(path)
            for old in [k for k in _cache if k[0] == key[0]]:
                del _cache[old]
            _cache[key] = lm
        return lm


# -- the LM directory ---------------------------------------------------------------------


def lm_version(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H%M")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_lm_dir(out: Path, counter: NgramCounter, *, card: dict[str, Any],
                 lexicon: Iterable[tuple[str, float, str]] = (),
                 min_counts: Sequence[float] | None = None,
                 dev_texts: Sequence[str] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Write `out` (lm.arpa, card.json, lexicon.tsv) whole or not at all: into a temp
    sibling, renamed into place. `card` gets format, kind, order, size, sha256 and the
    perplexity on `dev_texts` added; the finished card is returned."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LMError(f"{out} exists; pass overwrite (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        arpa = tmp / ARPA_NAME
        ngrams = counter.write_arpa(arpa, min_counts)
        with open(tmp / LEXICON_NAME, "w", encoding="utf-8", newline="\n") as f:
            for word, weight, source in lexicon:
                if source not in LEXICON_SOURCES:
                    raise ValueError(f"lexicon source {source!r}")
                f.write(f"{word}\t{weight:.6g}\t{source}\n")
        card = {"format": FORMAT, **card, "kind": "char-ngram", "order": counter.order,
                "size": {"ngrams": {str(n): c for n, c in ngrams.items()},
                         "bytes": arpa.stat().st_size},
                "sha256": sha256_file(arpa),
                "min_counts": list(min_counts or ())}
        card.setdefault("perplexity", None)
        card.setdefault("rescoring", None)
        card.setdefault("correction", None)
        if dev_texts:
            lm = CharLM(arpa)
            card["perplexity"] = {"dev": round(lm.perplexity(dev_texts), 3),
                                  "texts": len(dev_texts)}
        _write_json(tmp / CARD_NAME, card)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from workers of another user
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_card(path: Path) -> dict[str, Any]:
    """card.json of the LM directory `path`; LMError when missing or unreadable."""
    card_path = Path(path) / CARD_NAME
    try:
        return json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LMError(f"{card_path}: unreadable card: {e}") from None


def update_card(path: Path, **fields: Any) -> dict[str, Any]:
    """Set `fields` in the card of LM directory `path`, atomically (temp file +
    os.replace); the new card."""
    path = Path(path)
    card = read_card(path)
    card.update(fields)
    fd, tmp = tempfile.mkstemp(prefix=".card.", suffix=".json", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(card, ensure_ascii=False, indent=2) + "\n")
        os.replace(tmp, path / CARD_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return card


def read_lexicon(path: Path) -> list[tuple[str, float, str]]:
    """lexicon.tsv of the LM directory `path`: (word, weight, source) per line."""
    file = Path(path) / LEXICON_NAME
    rows = []
    try:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 3:
                    raise LMError(f"{file}:{number}: expected word<TAB>weight<TAB>source")
                rows.append((parts[0], float(parts[1]), parts[2]))
    except OSError as e:
        raise LMError(f"{file}: {e}") from None
    except ValueError as e:
        raise LMError(f"{file}: {e}") from None
    return rows


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
