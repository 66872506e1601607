"""The category classifier: character n-gram TF-IDF and linear models over the caller's
words, a leaf model under a level-1 model.

    P(leaf | text) = P(level 1 | text) * P(leaf | level 1, text)

The leaf model learns from leaf-labelled text (the shipped phrasings, a county's
labelled history, staff corrections); the level-1 model learns from all of it plus text
labelled at level 1 only (a county's history often is), so such data still moves the
leaf ranking. `P(leaf | level 1)` is the leaf model's probability renormalised within
its level-1 group.

The shipped model (`models/classifier/default`) is trained by `minyin models setup` from
what the product owns: the taxonomy's labels and keywords and
`pipeline/data/category_phrases.yaml`. `minyin tickets train` adds a county's history.
Models are directories with `model.joblib` and `card.json`; the registry
(`model_promotions`, kind "category") says which one the builder uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.tickets.classify import category_scores
from pipeline.tickets.rules import CategoryRule, TicketRules, load_rules

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.store import ModelPromotion, Store

CLASSIFIER_DIR = "classifier"
DEFAULT_CLASSIFIER = "default"
REGISTRY_KIND = "category"  # model_promotions.kind (8 characters at most)
MODEL_FILE = "model.joblib"
CARD_FILE = "card.json"
FORMAT = "minyin-category-classifier/1"

# Chosen with bench/tickets.py --compare (README, "Ticket categories"): logistic
# regression over character 1-3-grams of the text.
NGRAM_RANGE = (1, 3)
C = 30.0
# shipped material's weight beside a county's history: its leaves stay learnable
# without drowning the county's own words
SHIPPED_WEIGHT = 1.0
KEYWORD_WEIGHT = 0.5


class ClassifierError(ValueError):
    """Training data or a model that cannot be used; the message names the file/line."""


@dataclass(frozen=True)
class Example:
    """One training text: labelled with a leaf code, or with a level-1 name only."""

    text: str
    leaf: str | None = None
    level1: str | None = None
    weight: float = 1.0
    source: str = "shipped"


# -- training material ----------------------------------------------------------------------


def _phrases_file() -> Path:
    return Path(str(resources.files("pipeline") / "data" / "category_phrases.yaml"))


def shipped_examples(rules: TicketRules | None = None) -> list[Example]:
    """The product's own material: each leaf's phrasings, its keywords and its labels."""
    rules = rules or load_rules(county_file=False)
    path = _phrases_file()
    phrases = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    frames = phrases.pop("_frames", None) or {}
    openings, closings = frames.get("open") or [""], frames.get("close") or [""]
    known = {c.code for c in rules.taxonomy.leaves}
    unknown = sorted(set(phrases) - known)
    if unknown:
        raise ClassifierError(f"{path}: unknown category code(s): {', '.join(unknown)}")
    out: list[Example] = []
    for cat in rules.taxonomy.leaves:
        for text in phrases.get(cat.code) or ():
            out.append(Example(str(text), leaf=cat.code, weight=SHIPPED_WEIGHT))
            # the same words inside a message's usual opening and closing
            h = int(hashlib.sha256(str(text).encode()).hexdigest()[:8], 16)
            framed = openings[h % len(openings)] + str(text) + closings[(h // 7) % len(closings)]
            out.append(Example(framed, leaf=cat.code, weight=SHIPPED_WEIGHT))
        # the labels and keywords: short texts that tie each n-gram to its leaf
        out.append(Example("".join(cat.path[1:]) + cat.label, leaf=cat.code,
                           weight=KEYWORD_WEIGHT))
        for word in cat.keywords:
            out.append(Example(word, leaf=cat.code, weight=KEYWORD_WEIGHT * 0.5))
    return out


def read_labelled(path: Path, rules: TicketRules | None = None) -> list[Example]:
    """A county's labelled history: JSONL lines {"text", "title"?, "category": leaf code}
    or {"text", "title"?, "label_l1": level-1 name}. ClassifierError naming file:line and
    the field for anything else."""
    rules = rules or load_rules()
    leaves = {c.code for c in rules.taxonomy.leaves}
    level1 = set(rules.taxonomy.level1)
    out: list[Example] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise ClassifierError(f"{where}: not JSON: {e}") from None
                if not isinstance(row, dict):
                    raise ClassifierError(f"{where}: expected a JSON object")
                text, title = row.get("text"), row.get("title")
                if not isinstance(text, str) or not text.strip():
                    raise ClassifierError(f"{where}: \"text\" must be a non-empty string")
                if title is not None and not isinstance(title, str):
                    raise ClassifierError(f"{where}: \"title\" must be a string")
                full = f"{title}。{text}" if title else text
                code, l1 = row.get("category"), row.get("label_l1")
                if code is not None:
                    if not isinstance(code, str) or code not in leaves:
                        raise ClassifierError(f"{where}: \"category\" {code!r} is not a leaf "
                                              "code of the taxonomy")
                    out.append(Example(full, leaf=code, source=str(path)))
                elif l1 is not None:
                    if not isinstance(l1, str) or l1 not in level1:
                        raise ClassifierError(f"{where}: \"label_l1\" {l1!r} is not a level-1 "
                                              f"name ({', '.join(rules.taxonomy.level1)})")
                    out.append(Example(full, level1=l1, source=str(path)))
                else:
                    raise ClassifierError(f"{where}: needs \"category\" (a leaf code) or "
                                          "\"label_l1\" (a level-1 name)")
    except OSError as e:
        raise ClassifierError(f"{path}: cannot read: {e}") from None
    except UnicodeDecodeError as e:
        raise ClassifierError(f"{path}: not UTF-8: {e}") from None
    return out


def store_examples(store: Store, rules: TicketRules | None = None) -> list[Example]:
    """Approved tickets whose category a reviewer corrected: the transcript with the
    category as approved."""
    rules = rules or load_rules()
    leaves = {c.code for c in rules.taxonomy.leaves}
    out = []
    for revision, _job in store.approved_documents():
        history = store.ticket_history(revision.ticket_id)
        if not any(c.target_kind == "field" and c.target == "category"
                   for entry in history for c in entry.corrections):
            continue
        doc = revision.document or {}
        code = (doc.get("category") or {}).get("code")
        text = ((doc.get("transcript") or {}).get("text") or "").strip()
        if code in leaves and text:
            title = doc.get("title")
            out.append(Example(f"{title}。{text}" if title else text, leaf=code,
                               source="store"))
    return out


# -- the model ----------------------------------------------------------------------------------


def _vectoriser(ngram_range: tuple[int, int] = NGRAM_RANGE) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=ngram_range, sublinear_tf=True,
                           min_df=1, dtype=__import__("numpy").float32)


def _linear(kind: str = "logreg", c: float = C) -> Any:
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, max_iter=2000)
    if kind == "svc":
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import LinearSVC

        return CalibratedClassifierCV(LinearSVC(C=c / 10), cv=3)
    if kind == "cnb":
        from sklearn.naive_bayes import ComplementNB

        return ComplementNB(alpha=0.3)
    raise ValueError(f"unknown model kind {kind!r}")


class CategoryClassifier:
    """A trained leaf + level-1 model. `predict` gives P(leaf) for every leaf it knows."""

    def __init__(self, vectoriser: Any, leaf_model: Any, l1_model: Any,
                 leaf_level1: dict[str, str], card: dict[str, Any]) -> None:
        self.vectoriser = vectoriser
        self.leaf_model = leaf_model
        self.l1_model = l1_model
        self.leaf_level1 = leaf_level1
        self.card = card
        self._leaves = [str(c) for c in leaf_model.classes_]
        self._level1 = [str(c) for c in l1_model.classes_]
        self._l1_index = {name: i for i, name in enumerate(self._level1)}

    @property
    def name(self) -> str:
        return str(self.card.get("name") or DEFAULT_CLASSIFIER)

    @property
    def version(self) -> str:
        return str(self.card.get("version") or "")

    @classmethod
    def train(cls, examples: Sequence[Example], rules: TicketRules, *,
              model: str = "logreg", ngram_range: tuple[int, int] = NGRAM_RANGE,
              c: float = C, card: dict[str, Any] | None = None) -> CategoryClassifier:
        import numpy as np

        leaf_level1 = {cat.code: cat.path[0] for cat in rules.taxonomy.leaves}
        leafed = [e for e in examples if e.leaf is not None and e.leaf in leaf_level1]
        if len({e.leaf for e in leafed}) < 2:
            raise ClassifierError("training needs leaf-labelled text of at least two leaves")
        vec = _vectoriser(ngram_range)
        vec.fit([e.text for e in examples])
        x_leaf = vec.transform([e.text for e in leafed])
        leaf_model = _linear(model, c)
        leaf_model.fit(x_leaf, [e.leaf for e in leafed],
                       sample_weight=np.array([e.weight for e in leafed]))
        l1_rows = [e for e in examples
                   if (e.leaf in leaf_level1) or (e.leaf is None and e.level1)]
        l1_labels = [leaf_level1[e.leaf] if e.leaf else e.level1 for e in l1_rows]
        l1_model = _linear(model, c)
        l1_model.fit(vec.transform([e.text for e in l1_rows]), l1_labels,
                     sample_weight=np.array([e.weight for e in l1_rows]))
        return cls(vec, leaf_model, l1_model, leaf_level1, dict(card or {}))

    def predict_many(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """P(leaf) per text: the level-1 probability times the leaf's share of its
        level-1 group in the leaf model."""
        x = self.vectoriser.transform(list(texts))
        leaf_p = self.leaf_model.predict_proba(x)
        l1_p = self.l1_model.predict_proba(x)
        out = []
        for row_leaf, row_l1 in zip(leaf_p, l1_p, strict=True):
            group_sum: dict[str, float] = {}
            for code, p in zip(self._leaves, row_leaf, strict=True):
                group = self.leaf_level1.get(code, "")
                group_sum[group] = group_sum.get(group, 0.0) + float(p)
            probs = {}
            for code, p in zip(self._leaves, row_leaf, strict=True):
                group = self.leaf_level1.get(code, "")
                i = self._l1_index.get(group)
                p_l1 = float(row_l1[i]) if i is not None else 0.0
                probs[code] = p_l1 * float(p) / group_sum[group] if group_sum[group] else 0.0
            total = sum(probs.values()) or 1.0  # level-1 groups without a leaf drop out
            out.append({code: p / total for code, p in probs.items()})
        return out

    def predict(self, text: str) -> dict[str, float]:
        return self.predict_many([text])[0]

    def level1_many(self, texts: Sequence[str]) -> list[str]:
        """The most probable level-1 name per text (the leaf-summed distribution)."""
        out = []
        for probs in self.predict_many(texts):
            by_l1: Counter[str] = Counter()
            for code, p in probs.items():
                by_l1[self.leaf_level1[code]] += p
            out.append(by_l1.most_common(1)[0][0])
        return out

    # -- files ------------------------------------------------------------------------------

    def save(self, out: Path) -> dict[str, Any]:
        import joblib

        out.mkdir(parents=True, exist_ok=True)
        joblib.dump({"format": FORMAT, "vectoriser": self.vectoriser,
                     "leaf_model": self.leaf_model, "l1_model": self.l1_model,
                     "leaf_level1": self.leaf_level1}, out / MODEL_FILE, compress=3)
        card = {**self.card, "format": FORMAT,
                "sizes": {**(self.card.get("sizes") or {}),
                          "features": len(self.vectoriser.vocabulary_),
                          "leaves": len(self._leaves), "level1": len(self._level1),
                          "bytes": (out / MODEL_FILE).stat().st_size}}
        (out / CARD_FILE).write_text(json.dumps(card, ensure_ascii=False, indent=2) + "\n",
                                     encoding="utf-8")
        self.card = card
        return card

    @classmethod
    def load(cls, path: Path) -> CategoryClassifier:
        import joblib

        path = Path(path)
        try:
            card = json.loads((path / CARD_FILE).read_text(encoding="utf-8"))
            blob = joblib.load(path / MODEL_FILE)
        except (OSError, ValueError, EOFError) as e:
            raise ClassifierError(f"{path}: not a category classifier: {e}") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ClassifierError(f"{path}/{MODEL_FILE}: not a {FORMAT} model")
        return cls(blob["vectoriser"], blob["leaf_model"], blob["l1_model"],
                   blob["leaf_level1"], card)


# -- training runs --------------------------------------------------------------------------


def _digest(examples: Iterable[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e.text}\t{e.leaf}\t{e.level1}\t{e.weight}\n".encode())
    return h.hexdigest()


def train_classifier(out: Path, *, history_files: Sequence[Path] = (),
                     store: Store | None = None, name: str | None = None,
                     rules: TicketRules | None = None, overwrite: bool = False,
                     version: str | None = None) -> dict[str, Any]:
    """Train on the shipped material plus the county's files and the store's corrected
    categories; write `out`; return its card."""
    rules = rules or load_rules()
    out = Path(out)
    if (out / CARD_FILE).exists() and not overwrite:
        raise ClassifierError(f"{out} exists; choose another --name or overwrite it")
    shipped = shipped_examples(rules)
    examples = list(shipped)
    data: list[dict[str, Any]] = [{"source": "shipped (taxonomy.yaml, category_phrases.yaml)",
                                   "examples": len(shipped)}]
    for path in history_files:
        rows = read_labelled(Path(path), rules)
        examples += rows
        data.append({"source": str(path), "examples": len(rows),
                     "leaf": sum(e.leaf is not None for e in rows),
                     "level1_only": sum(e.leaf is None for e in rows)})
    if store is not None:
        rows = store_examples(store, rules)
        examples += rows
        data.append({"source": "store (approved category corrections)", "examples": len(rows)})
    digest = _digest(examples)
    card = {"name": name or out.name,
            "version": version or datetime.now(timezone.utc).strftime("%Y%m%d.%H%M%S")
            + "-" + digest[:8],
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": {"features": f"char {NGRAM_RANGE[0]}-{NGRAM_RANGE[1]}-gram TF-IDF",
                      "classifier": "LogisticRegression", "C": C,
                      "hierarchy": "P(leaf) = P(level1) * P(leaf | level1)"},
            "data": data, "data_sha256": digest,
            "taxonomy": sorted(c.code for c in rules.taxonomy.leaves),
            "sizes": {"examples": len(examples)}}
    model = CategoryClassifier.train(examples, rules, card=card)
    return model.save(out)


def ensure_default_classifier(models_dir: Path, *, force: bool = False) -> Path:
    """models_dir/classifier/default from the shipped material, unless it is there, loads,
    and was trained on the same material (its data digest)."""
    rules = load_rules(county_file=False)
    out = Path(models_dir) / CLASSIFIER_DIR / DEFAULT_CLASSIFIER
    digest = _digest(shipped_examples(rules))
    if not force and (out / CARD_FILE).is_file():
        try:
            if CategoryClassifier.load(out).card.get("data_sha256") == digest:
                return out
        except ClassifierError:
            pass
    train_classifier(out, name=DEFAULT_CLASSIFIER, rules=rules, overwrite=True,
                     version=f"1.0.0+{digest[:8]}")
    return out


# -- the registry -----------------------------------------------------------------------------


def classifier_spec(spec: str, settings: Settings) -> tuple[str, Path]:
    """The spec as stored (classifier/NAME under models_dir, else the path) and its
    directory. A bare NAME is classifier/NAME."""
    path = Path(spec).expanduser()
    if not path.is_absolute():
        under = settings.models_dir / path
        path = under if under.exists() or "/" in spec else (
            settings.models_dir / CLASSIFIER_DIR / spec)
    path = path.resolve()
    try:
        return str(path.relative_to(settings.models_dir.resolve())), path
    except ValueError:
        return str(path), path


def current_classifier_spec(store: Store | None, settings: Settings) -> str:
    row = store.current_model(kind=REGISTRY_KIND) if store is not None else None
    return classifier_spec(row.model if row is not None else settings.classifier, settings)[0]


def list_classifiers(store: Store, settings: Settings) -> list[tuple[str, dict[str, Any], bool]]:
    """(spec, card, current) for every classifier under models_dir/classifier."""
    current = current_classifier_spec(store, settings)
    out = []
    for card in sorted((settings.models_dir / CLASSIFIER_DIR).glob(f"*/{CARD_FILE}")):
        spec = str(card.parent.relative_to(settings.models_dir))
        try:
            body = json.loads(card.read_text(encoding="utf-8"))
        except ValueError:
            body = {}
        out.append((spec, body, spec == current))
    return out


def promote_classifier(store: Store, settings: Settings, spec: str, *, author: str,
                       reason: str | None = None) -> ModelPromotion:
    stored, path = classifier_spec(spec, settings)
    if stored == current_classifier_spec(store, settings):
        raise ClassifierError(f"{stored} is already the current classifier")
    model = CategoryClassifier.load(path)  # it must load here, not first on a worker
    return store.record_promotion(kind=REGISTRY_KIND, model=stored, name=model.name,
                                  version=model.version, action="promote", author=author,
                                  reason=reason)


def rollback_classifier(store: Store, settings: Settings, *, author: str) -> ModelPromotion:
    history = store.model_history(kind=REGISTRY_KIND)
    default = classifier_spec(settings.classifier, settings)[0]
    if not history:
        raise ClassifierError(f"no classifier was promoted; the builder uses "
                              f"MINYIN_CLASSIFIER ({default})")
    current = history[0].model
    previous = next((row.model for row in history[1:] if row.model != current), default)
    if previous == current:
        raise ClassifierError(f"{current} is the only classifier there has been")
    card: dict[str, Any] = {}
    with contextlib.suppress(ClassifierError):
        card = CategoryClassifier.load(classifier_spec(previous, settings)[1]).card
    return store.record_promotion(kind=REGISTRY_KIND, model=previous,
                                  name=str(card.get("name") or previous),
                                  version=str(card.get("version") or ""), action="rollback",
                                  author=author, reason=f"rollback from {current}")


# -- the builder's classifier -------------------------------------------------------------------

_lock = threading.Lock()
_current: dict[str, str | None] = {"spec": None}


def use_classifier(spec: str | None) -> None:
    """The registry's current classifier for the builder from now on (the workers call
    this per job, as they do for the LM); None: MINYIN_CLASSIFIER."""
    _current["spec"] = spec


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> CategoryClassifier:
    return CategoryClassifier.load(Path(path))


def load_classifier(spec: str | Path | None = None) -> CategoryClassifier | None:
    """The classifier the builder uses: `spec`, else MINYIN_CLASSIFIER (the registry's
    current one is resolved by the workers and passed as `spec`). Trains the shipped
    default on first use when it is missing (a few seconds); None when it cannot be
    had, so a ticket is still built (from the keywords, flagged)."""
    from pipeline.config import get_settings

    settings = get_settings()
    _, path = classifier_spec(str(spec or _current["spec"] or settings.classifier), settings)
    card = path / CARD_FILE
    if not card.is_file():
        if path.name != DEFAULT_CLASSIFIER or path.parent.name != CLASSIFIER_DIR:
            return None
        with _lock:
            if not card.is_file():
                try:
                    ensure_default_classifier(path.parent.parent)
                except (OSError, ClassifierError):
                    return None
    try:
        return _load_cached(str(path), card.stat().st_mtime)
    except ClassifierError:
        return None


# -- choosing the category ------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryChoice:
    category: CategoryRule
    categorised: bool  # False: the fallback, for want of any evidence (`uncategorised`)
    confidence: float  # the combined probability of `category`
    unsure: bool  # below the taxonomy's `unsure_below` (`category_unsure`)


def choose_category(text: str, rules: TicketRules, classifier: CategoryClassifier | None,
                    *, homophones: bool = True,
                    model_probs: dict[str, float] | None = None) -> CategoryChoice:
    """The leaf for `text`: the model's probability and the keyword score combined,

        P = (1 - w) * P_model + w * P_keywords,   w = rule_weight * min(1, top / min_score)

    where P_keywords is each scoring leaf's share of the keyword scores. No model: the
    keyword scorer alone (its best share as the confidence). No evidence at all (no
    keyword reaches `min_score` and P below `uncategorised_below`): the fallback."""
    tax = rules.taxonomy
    fallback = rules.category(tax.fallback)
    if not text.strip():
        return CategoryChoice(fallback, False, 0.0, True)
    scored = [(s, c) for s, c in category_scores(text, rules, homophones=homophones)
              if c.code != tax.fallback]
    top = scored[0][0] if scored else 0.0
    total = sum(s for s, _ in scored) or 1.0
    p_rule = {c.code: s / total for s, c in scored}
    if model_probs is None and classifier is not None:
        model_probs = classifier.predict(text)
    known = {c.code for c in tax.leaves}
    p_model = {k: v for k, v in (model_probs or {}).items() if k in known}
    if p_model:
        w = tax.rule_weight * min(1.0, top / tax.min_score) if scored else 0.0
        combined = {k: (1 - w) * v for k, v in p_model.items()}
        for code, p in p_rule.items():
            combined[code] = combined.get(code, 0.0) + w * p
    elif top >= tax.min_score:
        combined = p_rule
    else:
        return CategoryChoice(fallback, False, 0.0, True)
    code = max(combined, key=lambda k: (combined[k], p_rule.get(k, 0.0)))
    confidence = combined[code]
    if top < tax.min_score and confidence < tax.uncategorised_below:
        return CategoryChoice(fallback, False, confidence, True)
    return CategoryChoice(rules.category(code), True, confidence, confidence < tax.unsure_below)
