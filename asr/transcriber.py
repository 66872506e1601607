"""Batched Whisper inference over speech windows, with guards and normalisation.

The caller (pipeline) has already cut the audio into speech windows of at most 30 s;
here they are decoded in batches with faster-whisper's ``BatchedInferencePipeline``
(no conditioning on previous text, so one bad window cannot poison the next). Windows
whose output looks like a known Whisper failure are retried once on the sequential
path with temperature fallback; what still fails is dropped or trimmed and flagged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from faster_whisper import BatchedInferencePipeline

from asr import guards
from asr.dialect import Detector, RuleDetector, WindowSignals
from asr.guards import GuardConfig
from asr.normalize import normalize_text
from asr.profiles import DialectProfile
from asr.rescore import LanguageTools
from asr.types import Hypothesis, Segment

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000

Window = Sequence[tuple[float, float]]  # pieces of the source audio, seconds, in order


# Silence put between packed speech regions: without it Whisper ran sentences of
# different callers together (bench/compare.py, long set: CER 24.2% joined bare, 22.2%
# with 0.3 s, 21.7% unpacked at 18% more time).
JOIN_SILENCE_S = 0.3


def _join(audio: np.ndarray, pieces: Window) -> np.ndarray:
    """The pieces with a short true silence between them, a boundary Whisper can hear."""
    gap = np.zeros(int(JOIN_SILENCE_S * SAMPLE_RATE), np.float32)
    parts: list[np.ndarray] = []
    for a, b in pieces:
        if parts:
            parts.append(gap)
        parts.append(audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)].astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _to_source(t: float, pieces: Window, *, at_end: bool = False) -> float:
    """Map a time in the joined clip back to the source audio."""
    elapsed = 0.0
    for a, b in pieces:
        length = b - a
        if t < elapsed + length or (at_end and t <= elapsed + length):
            return round(a + max(0.0, t - elapsed), 3)
        elapsed += length + JOIN_SILENCE_S
        if t < elapsed:  # inside the inserted silence: snap to the next piece
            return round(b if at_end else a + length, 3)
    return round(pieces[-1][1], 3) if pieces else 0.0


@dataclass(frozen=True)
class TranscribeOptions:
    language: str = "zh"
    beam_size: int = 5
    batch_size: int = 8
    # Timestamp tokens would give sentence-sized segments, but in batched mode Whisper
    # then drops speech after its last timestamp pair: measured on samples/, CER 17.2%
    # with timestamps against 13.3% without. A segment is therefore one VAD window.
    without_timestamps: bool = True
    initial_prompt: str | None = None
    hotwords: str | None = None
    # hypotheses kept per window (at most beam_size); more than one only pays off with
    # a language model to choose among them
    num_hypotheses: int = 1
    retry_temperatures: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    # windows handed to the batched pipeline at once: bounds feature memory on long audio
    windows_per_call: int = 32
    guard: GuardConfig = field(default_factory=GuardConfig)

    def with_profile(self, profile: DialectProfile | None) -> TranscribeOptions:
        if profile is None:
            return self
        return replace(
            self,
            language=profile.language or self.language,
            initial_prompt=profile.initial_prompt or self.initial_prompt,
            hotwords=profile.hotwords_text or self.hotwords,
        )


@dataclass
class WindowResult:
    segments: list[Segment]
    flags: list[str]


def window_signals(model, encoded, durations: Sequence[float]) -> list[WindowSignals]:
    """Language probabilities and the pooled encoder output of each window of a batch,
    from the encoder output the decoding already made (CTranslate2's language detection
    takes it as it is: one decoder step, no second encoder pass)."""
    try:
        languages = model.detect_language(encoded)
    except Exception as e:  # an old CTranslate2 or a model without language tokens
        log.debug("no language probabilities: %s", e)
        languages = [[] for _ in durations]
    try:
        import ctranslate2

        view = encoded
        if getattr(view, "device", "cpu") != "cpu":
            view = view.to_device(ctranslate2.Device.cpu)
        if str(getattr(view, "dtype", "float32")) not in ("float32", "DataType.float32"):
            view = view.to(ctranslate2.DataType.float32)
        frames = np.asarray(view, dtype=np.float32)
    except Exception as e:
        log.debug("no encoder features: %s", e)
        frames = None
    out = []
    for i, duration in enumerate(durations):
        probs = {str(code).strip("<|>"): round(float(p), 4) for code, p in languages[i][:5]}
        emb = None
        if frames is not None:
            # 50 encoder frames a second; the rest of the 30 s is padding
            n = max(1, min(frames.shape[1], round(duration * 50)))
            emb = frames[i, :n].mean(axis=0)
        out.append(WindowSignals(probs, emb))
    return out


class NBestPipeline(BatchedInferencePipeline):
    """faster-whisper's batched pipeline, keeping CTranslate2's n best per window.

    `BatchedInferencePipeline.generate_segment_batched` asks for one hypothesis; this
    one asks for `num_hypotheses` and leaves them, by the window's start offset, in
    `nbest` while the pipeline carries on with the first. One instance per call, so the
    stash is never shared by two jobs.
    """

    def __init__(self, model, num_hypotheses: int = 1) -> None:
        super().__init__(model)
        self.num_hypotheses = num_hypotheses
        self.nbest: dict[float, list[Hypothesis]] = {}
        self.signals: dict[float, WindowSignals] = {}
        self._last: list[list[Hypothesis]] = []
        self._encoded = None

    def forward(self, features, tokenizer, chunks_metadata, options):
        out = super().forward(features, tokenizer, chunks_metadata, options)
        for meta, hyps in zip(chunks_metadata, self._last, strict=True):
            self.nbest[round(float(meta["offset"]), 3)] = hyps
        if self._encoded is not None:
            for meta, signals in zip(chunks_metadata, window_signals(
                    self.model.model, self._encoded,
                    [float(m["duration"]) for m in chunks_metadata]), strict=True):
                self.signals[round(float(meta["offset"]), 3)] = signals
            self._encoded = None
        return out

    def generate_segment_batched(self, features, tokenizer, options):
        # faster-whisper 1.x's method plus num_hypotheses (monolingual prompts only:
        # minyin always names the language)
        prompt = self.model.get_prompt(
            tokenizer,
            previous_tokens=(tokenizer.encode(options.initial_prompt)
                             if options.initial_prompt is not None else []),
            without_timestamps=options.without_timestamps, hotwords=options.hotwords)
        max_length = (len(prompt) + options.max_new_tokens
                      if options.max_new_tokens is not None else self.model.max_length)
        encoder_output = self.model.encode(features)
        n = max(1, min(self.num_hypotheses, options.beam_size))
        results = self.model.model.generate(
            encoder_output, [list(prompt) for _ in range(features.shape[0])],
            beam_size=options.beam_size, patience=options.patience,
            num_hypotheses=n, length_penalty=options.length_penalty,
            max_length=max_length, suppress_blank=options.suppress_blank,
            suppress_tokens=options.suppress_tokens, return_scores=True,
            return_no_speech_prob=True, sampling_temperature=options.temperatures[0],
            repetition_penalty=options.repetition_penalty,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
        )
        self._encoded = encoder_output
        output, self._last = [], []
        for result in results:
            hyps = []
            for ids, score in zip(result.sequences_ids, result.scores, strict=True):
                # CTranslate2's score is the log-probability over length ** penalty
                cum = score * (len(ids) ** options.length_penalty)
                hyps.append(Hypothesis(tokenizer.decode(ids).strip(), cum, len(ids)))
            self._last.append(hyps)
            seq_len = len(result.sequences_ids[0])
            output.append(dict(avg_logprob=hyps[0].logprob / (seq_len + 1),
                               no_speech_prob=result.no_speech_prob,
                               tokens=result.sequences_ids[0]))
        return encoder_output, output


class Transcriber:
    """One loaded Whisper model and the way minyin asks it for Chinese text."""

    def __init__(self, model, *, model_name: str = "", model_version: str = "",
                 options: TranscribeOptions | None = None) -> None:
        self.model = model
        self.model_name = model_name
        self.model_version = model_version
        self.options = options or TranscribeOptions()
        self.language = LanguageTools()
        self.detector: Detector = RuleDetector()

    def use_detector(self, detector: Detector) -> None:
        """Judge each window's variety and readability with `detector` from now on."""
        self.detector = detector

    def use_language_model(self, tools: LanguageTools) -> None:
        """Rescore and correct with `tools` from the next window on (LanguageTools()
        for none); the beam then returns as many hypotheses as it searches."""
        self.language = tools
        self.options = replace(self.options, num_hypotheses=(
            self.options.beam_size if tools.rescorer is not None else 1))

    def transcribe(self, audio: np.ndarray, windows: Sequence[Window], *,
                   channel: int = 0, speaker: str | None = None,
                   profile: DialectProfile | None = None,
                   detector: Detector | None = None) -> Iterator[WindowResult]:
        """Yield one result per window, in order, times in seconds of ``audio``.

        A window is a list of ``(start, end)`` pieces of ``audio`` (speech regions) whose
        total is at most 30 s; the pieces are joined without the pauses between them,
        so each Whisper pass reads as much speech as it can hold.
        """
        opts = self.options.with_profile(profile)
        detector = detector or self.detector
        lexicon = profile.lexicon if profile else {}
        places = profile.places if profile else None
        for first in range(0, len(windows), opts.windows_per_call):
            group = [list(w) for w in windows[first:first + opts.windows_per_call]]
            clips = [_join(audio, pieces) for pieces in group]
            raw, signals = self._batched(clips, opts)
            for pieces, clip, segs, sig in zip(group, clips, raw, signals, strict=True):
                for seg in segs:
                    self.language.rescore(seg)
                result = self._guard_window(clip, segs, opts)
                for seg in result.segments:
                    judged = detector.judge(
                        seg.raw_text or seg.text, avg_logprob=seg.avg_logprob,
                        compression_ratio=seg.compression_ratio,
                        no_speech_prob=seg.no_speech_prob, signals=sig)
                    seg.variety, seg.variety_confidence = judged.variety, judged.confidence
                    seg.readable = judged.readable
                    seg.start = _to_source(seg.start, pieces)
                    seg.end = _to_source(seg.end, pieces, at_end=True)
                    seg.channel = channel
                    seg.speaker = speaker
                    seg.raw_text = seg.raw_text or seg.text
                    seg.text = normalize_text(seg.text, lexicon=lexicon)
                    if places:
                        seg.text = places.correct(seg.text)
                    self.language.correct(seg, lambda t: normalize_text(t, lexicon=lexicon))
                result.segments = [s for s in result.segments if s.text.strip("。，")]
                yield result

    # -- decoding -------------------------------------------------------------------

    def _batched(self, clips: list[np.ndarray], opts: TranscribeOptions
                 ) -> tuple[list[list[Segment]], list[WindowSignals | None]]:
        """Decode clips together; segment times are relative to each clip. With them,
        each clip's signals for the dialect detector (None where none were measured)."""
        bounds, offset = [], 0
        for clip in clips:
            bounds.append((offset / SAMPLE_RATE, (offset + len(clip)) / SAMPLE_RATE))
            offset += len(clip)
        joined = np.concatenate(clips) if clips else np.zeros(0, np.float32)
        out: list[list[Segment]] = [[] for _ in clips]
        batched = NBestPipeline(self.model, opts.num_hypotheses)
        seg_iter, _info = batched.transcribe(
            joined, language=opts.language, beam_size=opts.beam_size,
            batch_size=opts.batch_size, vad_filter=False,
            clip_timestamps=[{"start": a, "end": b} for a, b in bounds],
            initial_prompt=opts.initial_prompt, hotwords=opts.hotwords,
            without_timestamps=opts.without_timestamps,
        )
        index = 0
        for fs in seg_iter:
            # Segments come in clip order; move on when one starts past the clip's end.
            while index < len(clips) - 1 and fs.start >= bounds[index][1] - 1e-3:
                index += 1
            seg = self._from_fw(fs, window_end=bounds[index][1])
            seg.start = round(max(0.0, seg.start - bounds[index][0]), 3)
            seg.end = round(max(seg.start, seg.end - bounds[index][0]), 3)
            if opts.num_hypotheses > 1:
                seg.hypotheses = batched.nbest.get(round(bounds[index][0], 3), [])
            out[index].append(seg)
        signals = [batched.signals.get(round(a, 3)) for a, _b in bounds]
        return out, signals

    def _sequential(self, clip: np.ndarray, opts: TranscribeOptions) -> list[Segment]:
        """The retry path: one clip, with Whisper's temperature fallback."""
        seg_iter, _info = self.model.transcribe(
            clip, language=opts.language, beam_size=opts.beam_size,
            temperature=opts.retry_temperatures, condition_on_previous_text=False,
            initial_prompt=opts.initial_prompt, hotwords=opts.hotwords,
            compression_ratio_threshold=opts.guard.compression_ratio_max,
            log_prob_threshold=opts.guard.logprob_silence_max,
            no_speech_threshold=opts.guard.no_speech_prob_max,
            without_timestamps=opts.without_timestamps, vad_filter=False,
        )
        return [self._from_fw(fs, window_end=len(clip) / SAMPLE_RATE) for fs in seg_iter]

    @staticmethod
    def _from_fw(fs, *, window_end: float) -> Segment:
        return Segment(
            start=round(float(fs.start), 3), end=round(min(float(fs.end), window_end), 3),
            text=fs.text.strip(), avg_logprob=float(fs.avg_logprob),
            no_speech_prob=float(fs.no_speech_prob),
            compression_ratio=float(fs.compression_ratio), raw_text=fs.text.strip(),
        )

    # -- guards ---------------------------------------------------------------------

    def _problems(self, segs: list[Segment], opts: TranscribeOptions) -> set[str]:
        text = "".join(s.text for s in segs)
        problems = set()
        if guards.is_looping(text, config=opts.guard) or any(
                s.compression_ratio > opts.guard.compression_ratio_max for s in segs):
            problems.add("loop")
        if guards.is_wrong_language(text, opts.language, opts.guard):
            problems.add("wrong_language")
        if segs and min(s.avg_logprob for s in segs) < opts.guard.logprob_min:
            problems.add("low_logprob")
        return problems

    def _clean(self, segs: list[Segment], opts: TranscribeOptions) -> tuple[list[Segment], set]:
        kept, flags = [], set()
        for seg in segs:
            if guards.is_silence_text(seg.no_speech_prob, seg.avg_logprob, opts.guard):
                flags.add("dropped_no_speech")
            elif guards.is_hallucination(seg.text, no_speech_prob=seg.no_speech_prob,
                                         avg_logprob=seg.avg_logprob, config=opts.guard):
                flags.add("dropped_hallucination")
            else:
                kept.append(seg)
        return kept, flags

    def _guard_window(self, clip: np.ndarray, segs: list[Segment],
                      opts: TranscribeOptions) -> WindowResult:
        segs, flags = self._clean(segs, opts)
        problems = self._problems(segs, opts)
        if problems:
            retry, retry_flags = self._clean(self._sequential(clip, opts), opts)
            retry_problems = self._problems(retry, opts)
            log.info("window of %.1f s: %s; retried: %s", len(clip) / SAMPLE_RATE,
                     sorted(problems), sorted(retry_problems) or "clean")
            if len(retry_problems) < len(problems) or not retry_problems:
                segs, flags, problems = retry, retry_flags, retry_problems
                flags.add("retried")
        if "loop" in problems:
            for seg in segs:
                trimmed = guards.trim_loops(seg.text, opts.guard)
                if trimmed != seg.text:
                    seg.text = trimmed
                    seg.flags.append("repetition_trimmed")
            flags.add("repetition_trimmed")
        if "wrong_language" in problems:
            segs = []
            flags.add("dropped_wrong_language")
        if "low_logprob" in problems:
            for seg in segs:
                if seg.avg_logprob < opts.guard.logprob_min:
                    seg.flags.append("low_confidence")
        return WindowResult(segs, sorted(flags))
