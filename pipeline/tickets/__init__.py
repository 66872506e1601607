"""Ticket building: a transcript (or a typed message) plus what intake knows -> a
validated `Ticket`.

    ticket = build_ticket(transcript, TicketContext(audio_sha256=..., phone=...))

One module per concern, in the order the builder uses them:

- `rules`: the data files under `pipeline/data/` (taxonomy.yaml, ticket_rules.yaml,
  places.yaml), validated and compiled once by `load_rules()`;
- `sounds`: keywords also match their sound-alikes (没气 for 煤气: Whisper writes
  homophones), worked out once per text with `asr.phonetic`;
- `pii`: phone and ID-card numbers masked in every text, spoken digits included;
- `classify`: kind (投诉/咨询/...) and category;
- `urgency`: negation-aware safety rules;
- `gazetteer`, `places`: where it happened, from the words and the typed address;
- `summary`: 诉求概要;
- `build`: the caller's words (stereo calls: `caller_channel`), review flags, the ticket;
- `repeats`: 重复件 and 一类事 over built tickets (the store runs it when saving:
  `pipeline.store_clusters`; `minyin clusters`: `pipeline.clusters`).

Extraction routes and flags; a person reviews whatever it is unsure of.
"""

from pipeline.tickets.build import TicketContext, build_ticket
from pipeline.tickets.classify import category_scores, classify_category, classify_kind
from pipeline.tickets.common import DATA_DIR
from pipeline.tickets.gazetteer import Gazetteer, Place
from pipeline.tickets.pii import mask_pii, mask_pii_segments
from pipeline.tickets.places import SpokenPlace, find_places, parse_location
from pipeline.tickets.rules import TicketRules, load_rules
from pipeline.tickets.sounds import SoundHit, SoundIndex, sound_hits
from pipeline.tickets.summary import summarise
from pipeline.tickets.urgency import UrgencyFinding, assess_urgency

__all__ = [
    "DATA_DIR",
    "Gazetteer",
    "Place",
    "SoundHit",
    "SoundIndex",
    "SpokenPlace",
    "TicketContext",
    "TicketRules",
    "UrgencyFinding",
    "assess_urgency",
    "build_ticket",
    "category_scores",
    "classify_category",
    "classify_kind",
    "find_places",
    "load_rules",
    "mask_pii",
    "mask_pii_segments",
    "parse_location",
    "sound_hits",
    "summarise",
]
