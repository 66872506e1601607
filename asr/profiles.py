"""Dialect profiles: what to tell Whisper and how to map dialect words to standard ones.

A deployment's region (浙江省金华市浦江县) picks the default profile (asr/data/regions.yaml)
and adds its towns and villages, from jionlp, to the gazetteer of every profile used
there: `profile_for_region`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

import yaml

from asr.gazetteer import PlaceCorrector, region_names


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class DialectProfile:
    name: str
    label: str = ""
    language: str = "zh"  # the Whisper language token
    # the variety this profile is for (asr.dialect.VARIETIES): a detected variety picks
    # the profile for the second pass, and a region's profile is the likelier guess
    variety: str = "mandarin"
    initial_prompt: str | None = None
    hotwords: tuple[str, ...] = ()
    lexicon: dict[str, str] = field(default_factory=dict)  # dialect word -> standard word
    # local place names: a similar-sounding wrong name in the text is put right
    gazetteer: tuple[str, ...] = ()

    @property
    def hotwords_text(self) -> str | None:
        return " ".join(self.hotwords) if self.hotwords else None

    @cached_property
    def places(self) -> PlaceCorrector:
        return PlaceCorrector(self.gazetteer)

    def standard_form(self, text: str) -> str:
        """Dialect words to standard ones, then local names put right (both in order)."""
        from asr.normalize import apply_lexicon

        if self.lexicon:
            text = apply_lexicon(text, self.lexicon)
        return self.places.correct(text)


def _variety_of(name: str) -> str:
    """A profile's variety when its file does not say: from its name (pujiang_wu: wu)."""
    from asr.dialect import VARIETIES, normalise_variety

    for part in reversed(name.lower().replace("-", "_").split("_")):
        variety = normalise_variety(part)
        if variety in VARIETIES and variety not in ("other", "unknown"):
            return variety
    return "mandarin"


def _builtin_dir() -> Path:
    return Path(str(resources.files("asr") / "data" / "profiles"))


def available_profiles(extra_dir: Path | None = None) -> list[str]:
    names = {p.stem for p in _builtin_dir().glob("*.yaml")}
    if extra_dir and extra_dir.is_dir():
        names |= {p.stem for p in extra_dir.glob("*.yaml")}
    return sorted(names)


def parse_profile(data: dict, *, source: str) -> DialectProfile:
    if not isinstance(data, dict) or not data.get("name"):
        raise ProfileError(f"{source}: a profile needs at least a 'name'")
    lexicon = data.get("lexicon") or {}
    if not isinstance(lexicon, dict):
        raise ProfileError(f"{source}: 'lexicon' must map dialect words to standard words")
    return DialectProfile(
        name=str(data["name"]),
        label=str(data.get("label", "")),
        language=str(data.get("language", "zh")),
        variety=str(data.get("variety") or _variety_of(str(data["name"]))),
        initial_prompt=data.get("initial_prompt") or None,
        hotwords=tuple(str(w) for w in data.get("hotwords") or ()),
        lexicon={str(k): str(v) for k, v in lexicon.items()},
        gazetteer=tuple(str(w) for w in data.get("gazetteer") or ()),
    )


@lru_cache(maxsize=32)
def load_profile(name_or_path: str, extra_dir: Path | None = None) -> DialectProfile:
    """A built-in profile by name, one in ``extra_dir``, or a YAML file by path."""
    candidates = [Path(name_or_path)]
    if extra_dir:
        candidates.append(extra_dir / f"{name_or_path}.yaml")
    candidates.append(_builtin_dir() / f"{name_or_path}.yaml")
    for path in candidates:
        if path.suffix in (".yaml", ".yml") and path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
            return parse_profile(data, source=str(path))
    raise ProfileError(
        f"unknown dialect profile {name_or_path!r}; available: "
        f"{', '.join(available_profiles(extra_dir))}"
    )


# -- regions -----------------------------------------------------------------------

@dataclass(frozen=True)
class RegionDefaults:
    """A line of asr/data/regions.yaml."""

    prefix: str  # a region whose full name starts with this (浙江省金华市浦江县)
    profile: str  # its default dialect profile
    names: tuple[str, ...] = ()  # names jionlp does not have: roads, sights, agencies


@lru_cache(maxsize=1)
def region_table() -> tuple[str, tuple[RegionDefaults, ...]]:
    """(default profile, region entries longest prefix first) from regions.yaml."""
    path = Path(str(resources.files("asr") / "data" / "regions.yaml"))
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = []
    for item in data.get("regions") or ():
        if not isinstance(item, dict) or not item.get("prefix") or not item.get("profile"):
            raise ProfileError(f"{path}: every region needs a 'prefix' and a 'profile'")
        entries.append(RegionDefaults(
            prefix=str(item["prefix"]),
            profile=str(item["profile"]),
            names=tuple(str(n) for n in item.get("names") or ()),
        ))
    entries.sort(key=lambda e: len(e.prefix), reverse=True)
    return str(data.get("default") or "mandarin"), tuple(entries)


def region_defaults(region: str) -> RegionDefaults:
    """The regions.yaml entry for a region (its full name, as `region_names` gives it);
    an entry with the table's default profile and no names when none matches."""
    default, entries = region_table()
    return next((e for e in entries if region.startswith(e.prefix)),
                RegionDefaults(prefix="", profile=default))


@lru_cache(maxsize=32)
def profile_for_region(region: str | None, dialect: str | None,
                       extra_dir: Path | None = None) -> DialectProfile:
    """The profile an upload gets: the dialect it names if any, else the region's
    default (mandarin where the region has none, or no region is set). With a region,
    the profile's gazetteer gains the region's names: regions.yaml's and jionlp's
    towns and villages, full and spoken (浦阳街道, 浦阳), without repeats.

    An unknown region is a `GazetteerError` (a ValueError) naming it."""
    def load(name: str) -> DialectProfile:  # the same cached object load_profile(name) is
        return load_profile(name, extra_dir) if extra_dir else load_profile(name)

    if not region:
        return load(dialect or region_table()[0])
    places = region_names(region)
    defaults = region_defaults(places.name)
    profile = load(dialect or defaults.profile)
    names = tuple(dict.fromkeys((*profile.gazetteer, *defaults.names, *places.all_names())))
    return replace(profile, gazetteer=names)
