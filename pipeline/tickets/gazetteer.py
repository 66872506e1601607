"""The administrative gazetteer: place names (and aliases) -> `Place`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Place:
    name: str
    level: int  # 0 province, 1 city, 2 district/county, 3 street/town
    path: tuple[str, ...]  # full names, province first, ending with this one


class Gazetteer:
    """Administrative names -> places; finds them in text and picks the best one."""

    def __init__(self, places: Iterable[tuple[Place, Sequence[str]]]) -> None:
        self.by_name: dict[str, list[Place]] = {}
        for place, aliases in places:
            for name in (place.name, *aliases):
                bucket = self.by_name.setdefault(name, [])
                if place not in bucket:
                    bucket.append(place)
        names = sorted(self.by_name, key=len, reverse=True)  # longest name wins
        self._pattern = re.compile("|".join(map(re.escape, names))) if names else None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Gazetteer:
        found: list[tuple[Place, list[str]]] = []

        def walk(node: Any, parent: tuple[str, ...]) -> None:
            if node is None:
                return
            items: list[tuple[str, Any]]
            if isinstance(node, dict):
                items = list(node.items())
            elif isinstance(node, list):
                items = []
                for item in node:
                    if isinstance(item, dict):
                        items.extend(item.items())
                    else:
                        items.append((item, None))
            else:
                raise ValueError(f"places: unexpected entry {node!r}")
            for key, children in items:
                name, *aliases = [part.strip() for part in str(key).split("|")]
                if len(parent) > 3:
                    raise ValueError(f"places: {name} is deeper than street level")
                place = Place(name=name, level=len(parent), path=(*parent, name))
                found.append((place, aliases))
                walk(children, place.path)

        walk(data.get("provinces", {}), ())
        return cls(found)

    def find(self, text: str) -> list[tuple[int, int, list[Place]]]:
        if not text or self._pattern is None:
            return []
        return [(m.start(), m.end(), self.by_name[m.group()]) for m in self._pattern.finditer(text)]

    @staticmethod
    def resolve(
        hits: Sequence[tuple[int, int, list[Place]]], prefer: Sequence[str] = ()
    ) -> tuple[str, ...] | None:
        """The most specific place the hits agree on, as a path of full names.

        A candidate is supported by every hit naming it or one of its ancestors
        (金华 + 浦江 + 浦阳街道 all support 浦阳街道). Most support wins, then depth,
        then the deployment's preferred region. Candidates still tied (江北区 alone:
        宁波 or 重庆) give only what they share.
        """
        if not hits:
            return None
        scored: list[tuple[tuple[int, int, int], tuple[str, ...]]] = []
        for _, _, places in hits:
            for place in places:
                support = sum(
                    1
                    for _, _, others in hits
                    if any(place.path[: len(o.path)] == o.path for o in others)
                )
                preferred = int(any(p in place.path for p in prefer))
                scored.append(((support, place.level, preferred), place.path))
        best = max(score for score, _ in scored)
        tied = list(dict.fromkeys(path for score, path in scored if score == best))
        common: list[str] = []
        for level_names in zip(*tied, strict=False):
            if len(set(level_names)) != 1:
                break
            common.append(level_names[0])
        return tuple(common) or None
