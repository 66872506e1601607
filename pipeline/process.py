"""One voice note or call recording through every stage, in process.

decode -> (per channel) denoise where measured noise says so -> VAD windows ->
batched Whisper -> normalised transcript -> ticket. The worker task and the CLI are
thin wrappers around :class:`VoicePipeline`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from asr.dialect import Detector, judge_transcript
from asr.lm import LMError
from asr.model import ModelRef, forget_model, load_whisper, resolve_model, sha256_file
from asr.profiles import DialectProfile, load_profile
from asr.rescore import LanguageTools, load_language_tools
from asr.transcriber import TranscribeOptions, Transcriber
from asr.types import Segment, Transcript
from pipeline.audio import DecodedAudio, decode_audio
from pipeline.config import Settings, get_settings
from pipeline.denoise import NoiseEstimate, maybe_denoise
from pipeline.dialect import make_detector
from pipeline.language_model import DEFAULT_LM, lm_path, normal_lm_spec
from pipeline.segment import VadOptions, speech_windows
from pipeline.ticket_schema import Ticket
from pipeline.tickets import TicketContext, build_ticket

log = logging.getLogger(__name__)

ROLE_LABELS = {"caller": "来电人", "agent": "话务员"}


@dataclass
class ChannelReport:
    channel: int
    role: str | None
    noise: NoiseEstimate
    denoised: bool
    speech_s: float
    windows: int


@dataclass
class Outcome:
    transcript: Transcript
    decoded: DecodedAudio
    channels: list[ChannelReport]
    timings: dict[str, float] = field(default_factory=dict)
    sha256: str = ""

    @property
    def is_call(self) -> bool:
        return len(self.channels) > 1


def distinct_channels(tracks: np.ndarray, threshold: float = 0.9) -> bool:
    """A hotline call puts one party on each channel; a stereo phone memo duplicates one."""
    if tracks.shape[0] < 2:
        return False
    a, b = tracks[0], tracks[1]
    if not np.any(a) or not np.any(b):
        return True  # one side silent: still a two-party recording
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 1.0
    return corr < threshold


class VoicePipeline:
    """Holds the loaded model; everything else is per call."""

    def __init__(self, settings: Settings | None = None, *,
                 transcriber: Transcriber | None = None) -> None:
        self.settings = settings or get_settings()
        self._transcriber = transcriber
        self._model_ref: ModelRef | None = None
        self._spec = self.settings.model  # what to load: MINYIN_MODEL, or the registry's
        self._switch = threading.Lock()
        # MINYIN_LM, or the registry's, in the registry's form (lm/NAME; None: no LM), so
        # that the first job's use_lm(current_lm_spec(...)) does not load it again
        self._lm_spec: str | None = normal_lm_spec(self.settings.lm, self.settings)
        self._language: LanguageTools | None = None
        self._detector_spec = self.settings.detector
        self._detectors: dict[str, Detector] = {}

    # -- model ---------------------------------------------------------------------

    @property
    def model_ref(self) -> ModelRef:
        if self._model_ref is None:
            self._model_ref = resolve_model(self._spec, self.settings.models_dir)
        return self._model_ref

    def use_model(self, spec: str) -> bool:
        """Load `spec` (the registry's current model) if it is not the one loaded; True
        when it switched. A job already running keeps the model it started with."""
        if spec == self._spec:
            return False
        with self._switch:
            if spec == self._spec:
                return False
            ref = resolve_model(spec, self.settings.models_dir)
            old = self._model_ref
            self._spec, self._model_ref, self._transcriber = spec, ref, None
            self.transcriber  # noqa: B018 - load now, under the lock, with a clear error
            if old is not None and old.path != ref.path:
                forget_model(old)
            log.info("switched model to %s %s (%s)", ref.name, ref.version, ref.path)
        return True

    # -- language model --------------------------------------------------------------

    @property
    def language_tools(self) -> LanguageTools:
        """The LM's rescorer and corrector (empty for none), loaded once per spec."""
        if self._language is None:
            self._language = load_lm_tools(self._lm_spec, self.settings)
        return self._language

    def use_lm(self, spec: str | None) -> bool:
        """Switch to LM `spec` (the registry's current one; None or "none": no LM) if it
        is not the one in use; True when it switched."""
        spec = normal_lm_spec(spec, self.settings) if spec else None
        if spec == self._lm_spec:
            return False
        with self._switch:
            if spec == self._lm_spec:
                return False
            tools = load_lm_tools(spec, self.settings)
            self._lm_spec, self._language = spec, tools
            if self._transcriber is not None:
                self._transcriber.use_language_model(tools)
            log.info("switched language model to %s", spec or "none")
        return True

    @property
    def transcriber(self) -> Transcriber:
        if self._transcriber is None:
            s = self.settings
            ref = self.model_ref
            threads = s.cpu_threads or (os.cpu_count() or 1)
            model = load_whisper(ref, device=s.device, compute_type=s.compute_type,
                                 cpu_threads=threads)
            options = TranscribeOptions(language=s.language, beam_size=s.beam_size,
                                        batch_size=s.batch_size)
            transcriber = Transcriber(model, model_name=ref.name,
                                      model_version=ref.version, options=options)
            transcriber.use_language_model(self.language_tools)
            self._transcriber = transcriber
        return self._transcriber

    # -- dialect detector --------------------------------------------------------------

    def use_detector(self, spec: str | None) -> bool:
        """Judge varieties with detector `spec` (the registry's current one) from the next
        job on; True when it switched."""
        spec = spec or self.settings.detector
        if spec == self._detector_spec:
            return False
        make_detector(spec, self.settings)  # a clear error now, not on the next job
        with self._switch:
            self._detector_spec, self._detectors = spec, {}
        log.info("switched dialect detector to %s", spec)
        return True

    def detector(self, profile: DialectProfile) -> Detector:
        """The detector for a job in `profile` (its variety is the likelier guess for
        speech that is not Mandarin), loaded once."""
        key = profile.variety
        if key == "mandarin":
            # one dialect in the deployment: speech that is not Mandarin is most likely it
            others = {self.profile(n.strip()).variety
                      for n in self.settings.dialect_profiles.split(",") if n.strip()}
            others.discard("mandarin")
            key = others.pop() if len(others) == 1 else key
        found = self._detectors.get(key)
        if found is None:
            found = make_detector(self._detector_spec, self.settings, expected=key)
            self._detectors[key] = found
        return found

    def profile_for_variety(self, transcript: Transcript) -> str | None:
        """The deployment's profile (MINYIN_DIALECT_PROFILES) for the variety detected,
        where it is not the profile already used; None for none."""
        names = [n.strip() for n in self.settings.dialect_profiles.split(",") if n.strip()]
        if not names or transcript.variety in ("mandarin", "unknown", "other"):
            return None
        if transcript.variety_confidence < 0.5:
            return None
        for name in names:
            profile = self.profile(name)
            if profile.variety == transcript.variety:
                return None if profile.name == transcript.dialect else name
        return None

    def profile(self, name: str | None) -> DialectProfile:
        if self.settings.region:  # its default dialect, its towns and villages
            from asr.profiles import profile_for_region

            return profile_for_region(self.settings.region, name or None)
        return load_profile(name or self.settings.dialect)

    # -- stages --------------------------------------------------------------------

    def decode(self, source: str | os.PathLike | bytes, *, name: str | None = None) -> DecodedAudio:
        return decode_audio(source, name=name, split_channels=True,
                            max_seconds=self.settings.max_audio_seconds,
                            max_bytes=self.settings.max_upload_bytes)

    def transcribe(self, decoded: DecodedAudio, *, dialect: str | None = None,
                   roles: dict[int, str] | None = None) -> Outcome:
        s = self.settings
        profile = self.profile(dialect)
        detector = self.detector(profile)
        timings: dict[str, float] = {}
        split = distinct_channels(decoded.tracks)
        tracks = decoded.tracks if split else decoded.mono[np.newaxis, :]
        if split:
            roles = roles or {0: "caller", 1: "agent"}
        # In a call each party's turns are separate windows, so that the dialogue can be
        # interleaved by time; a voice note merges nearby speech into fuller windows.
        gap = min(s.merge_gap_seconds, 0.8) if split else s.merge_gap_seconds
        vad = VadOptions(aggressiveness=s.vad_aggressiveness, max_window_s=s.max_window_seconds,
                         max_gap_s=gap)
        segments: list[Segment] = []
        flags: set[str] = set()
        reports = []
        for ch, audio in enumerate(tracks):
            t0 = time.perf_counter()
            audio, noise, denoised = maybe_denoise(audio, s.denoise_below_snr_db,
                                                   s.denoise_strength)
            t1 = time.perf_counter()
            windows = speech_windows(audio, vad)
            t2 = time.perf_counter()
            role = roles.get(ch) if split else None
            for result in self.transcriber.transcribe(
                    audio, [w.spans() for w in windows], channel=ch,
                    speaker=role, profile=profile, detector=detector):
                segments.extend(result.segments)
                flags.update(result.flags)
            t3 = time.perf_counter()
            for key, value in (("denoise", t1 - t0), ("vad", t2 - t1), ("asr", t3 - t2)):
                timings[key] = round(timings.get(key, 0.0) + value, 4)
            reports.append(ChannelReport(ch, role, noise, denoised,
                                         round(sum(w.speech_s for w in windows), 2),
                                         len(windows)))
            if denoised:
                flags.add("denoised")
        segments.sort(key=lambda seg: (seg.start, seg.channel))
        text = "".join(seg.text for seg in segments)
        if not text:
            flags.add("empty_transcript")
        transcript = Transcript(
            text=text, segments=segments, language=profile.language, language_probability=1.0,
            duration=round(decoded.duration, 3), dialect=profile.name,
            model=self.transcriber.model_name, model_version=self.transcriber.model_version,
            lm=self.transcriber.language.name, lm_version=self.transcriber.language.version,
            flags=sorted(flags), detector=detector.name, detector_version=detector.version,
        )
        # the variety of the caller's speech (in a call, the agent's Mandarin does not
        # make the caller's Wu readable, nor the other way round)
        caller = [seg for seg in segments if seg.speaker in (None, "caller")] or segments
        judged = judge_transcript(caller)
        transcript.variety, transcript.variety_confidence = judged.variety, judged.confidence
        transcript.readable = judged.readable and bool(text)
        return Outcome(transcript, decoded, reports, timings)

    def process(self, source: str | os.PathLike | bytes, *, name: str | None = None,
                dialect: str | None = None, roles: dict[int, str] | None = None,
                sha256: str | None = None) -> Outcome:
        """`sha256`: the source's hash when the caller already knows it (a stored blob
        is named by it), so a large file is not read a second time to hash it."""
        t0 = time.perf_counter()
        decoded = self.decode(source, name=name)
        t1 = time.perf_counter()
        outcome = self.transcribe(decoded, dialect=dialect, roles=roles)
        chosen = None if dialect else self.profile_for_variety(outcome.transcript)
        if chosen is not None:
            # the detected variety picks the deployment's profile for it: a second pass
            # with its prompt, lexicon, gazetteer (and the detector's guess for it)
            log.info("%s: %s speech, second pass with profile %s", name or "audio",
                     outcome.transcript.variety, chosen)
            first = outcome
            outcome = self.transcribe(decoded, dialect=chosen, roles=roles)
            outcome.transcript.flags = sorted({*outcome.transcript.flags, "profile_auto"})
            for key, value in first.timings.items():
                outcome.timings[f"first_{key}"] = value
        outcome.sha256 = sha256 or content_sha256(source)
        outcome.timings["decode"] = round(t1 - t0, 4)
        outcome.timings["total"] = round(time.perf_counter() - t0, 4)
        return outcome


def load_lm_tools(spec: str | None, settings: Settings) -> LanguageTools:
    """The rescorer and corrector of LM `spec` (MINYIN_LM or the registry's); empty for
    none. A missing default (setup not run) is plain Whisper with a warning; a missing
    LM that was asked for by name is an error naming it."""
    path = lm_path(spec, settings) if spec else None
    if path is None:
        return LanguageTools()
    if not (path / "card.json").is_file():
        if path != lm_path(DEFAULT_LM, settings):
            raise LMError(f"language model {spec!r} not found at {path}; build it with "
                          "minyin lm build, or set MINYIN_LM=none")
        log.warning("the default language model is not built (run: minyin models setup); "
                    "transcribing without rescoring and correction")
        return LanguageTools()
    tools = load_language_tools(path)
    log.info("language model %s (%s) loaded from %s", tools.name, tools.version, path)
    return tools


def content_sha256(source: str | os.PathLike | bytes) -> str:
    """The audio's identity: the hash of the bytes as received."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha256(source).hexdigest()
    return sha256_file(Path(source))


def ticket_from_outcome(outcome: Outcome, *, phone: str | None = None,
                        address: str | None = None, lat: float | None = None,
                        lon: float | None = None, client_ref: str | None = None,
                        ticket_id: str | None = None, media_url: str | None = None,
                        submitted_at: datetime | None = None,
                        review_confidence_below: float | None = None) -> Ticket:
    """Build the ticket; a two-party call is a hotline ticket built from the caller's words."""
    decoded = outcome.decoded
    caller = next((c.channel for c in outcome.channels if c.role == "caller"), None)
    context = TicketContext(
        audio_sha256=outcome.sha256 or hashlib.sha256(decoded.tracks.tobytes()).hexdigest(),
        source="hotline" if outcome.is_call else "voice_note",
        phone=phone, client_ref=client_ref, address=address, lat=lat, lon=lon,
        duration_s=round(decoded.duration, 3), audio_format=decoded.format,
        codec=decoded.codec, channels=decoded.source_channels,
        sample_rate=decoded.source_sample_rate, caller_channel=caller, ticket_id=ticket_id,
        media_url=media_url, submitted_at=submitted_at,
    )
    return build_ticket(outcome.transcript, context,
                        review_confidence_below=review_confidence_below)


def dialogue_lines(transcript: Transcript) -> list[str]:
    """A two-party call as lines "来电人：..." in time order; a voice note as its text."""
    return speaker_lines(transcript.segments, transcript.text)


def speaker_lines(segments: Sequence[Any], text: str) -> list[str]:
    """`dialogue_lines` for any segments with `speaker` and `text` (stored tickets too)."""
    if not any(seg.speaker for seg in segments):
        return [text] if text else []
    lines: list[str] = []
    last = None
    for seg in segments:
        label = ROLE_LABELS.get(seg.speaker or "", seg.speaker or "")
        if label == last and lines:
            lines[-1] += seg.text
        else:
            lines.append(f"{label}：{seg.text}")
            last = label
    return lines
