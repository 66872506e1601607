"""Hotline batch throughput: `minyin batch` against plain faster-whisper, same files.

    .venv/bin/python bench/batch.py [--minutes 60] [--workers 1,2] [--skip-plain] [--int8]

Builds ``--minutes`` of generated hotline calls in ``bench/out/calls_<N>min/`` (kept for
reruns; deterministic): each call is 8 kHz stereo mu-law, the agent's turns on channel 1
and the caller's on channel 0, alternating with 0.5-2.5 s pauses, street noise at 15 dB
under the caller, phone band. The turns are the real clips of ``../shared/audio`` and
``samples/`` with their reference texts, so CER can be scored per call (reference: the
turns' texts in time order; hypothesis: the whole transcript).

Systems, one after the other on this machine:
- plain: ``WhisperModel(model, cpu_threads=cores).transcribe(file, beam_size=5)`` on
  each file in turn (what one would write first; it mixes the channels down);
- minyin W=1: ``minyin batch DIR --out OUT`` embedded (one model, all cores);
- minyin W=N: ``minyin batch --distributed`` with a private redis-server and
  ``minyin worker --concurrency N`` (cores split among the N processes);
- with ``--int8``: the last of those again with ``MINYIN_COMPUTE_TYPE=int8``.

Prints audio hours per wall hour, the ratio to plain, and CER; writes
``bench/out/batch.json``. Bounded and loopback-only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.normalize import to_simplified  # noqa: E402
from bench.audiogen import mix_at_snr, phone_band, street_noise  # noqa: E402
from pipeline.audio import decode_audio  # noqa: E402
from pipeline.evaluate import char_errors, load_manifest  # noqa: E402

OUT = ROOT / "bench" / "out"
SETS = [ROOT.parent / "shared" / "audio" / "manifest.jsonl", ROOT / "samples" / "manifest.jsonl"]
SR = 16000
MINYIN = [sys.executable, "-m", "api.cli"]


def _clips() -> list[tuple[np.ndarray, str]]:
    clips = []
    for manifest in SETS:
        if not manifest.is_file():
            continue
        for entry in load_manifest(manifest):
            decoded = decode_audio(entry.audio, split_channels=False)
            if decoded.source_channels == 1:  # the stereo sample call is a call already
                clips.append((decoded.mono, entry.text))
    return clips


def build_calls(minutes: float, seed: int = 11) -> tuple[Path, dict[str, str]]:
    """A folder of generated calls adding up to `minutes`, and each call's reference."""
    import av

    folder = OUT / f"calls_{minutes:g}min"
    refs_path = folder / "references.json"
    if refs_path.is_file():
        return folder, json.loads(refs_path.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = _clips()
    refs: dict[str, str] = {}
    total = 0.0
    n = 0
    while total < minutes * 60:
        turns = [clips[int(rng.integers(len(clips)))] for _ in range(int(rng.integers(2, 5)))]
        length = sum(len(a) for a, _ in turns) + int(SR * (0.5 + 2.5 * len(turns)))
        call = np.zeros((2, length), dtype=np.float32)
        pos = int(SR * rng.uniform(0.3, 1.0))
        text = []
        for k, (audio, words) in enumerate(turns):
            ch = 1 if k % 2 == 0 else 0  # the agent answers, the caller speaks
            call[ch, pos: pos + len(audio)] = audio
            text.append(words)
            pos += len(audio) + int(SR * rng.uniform(0.5, 2.5))
        call = call[:, :pos]
        call[0] = mix_at_snr(call[0], street_noise(call.shape[1], SR, rng), 15.0)
        call = np.stack([phone_band(c, SR) for c in call])
        call = (call / max(1e-6, float(np.abs(call).max())) * 0.7).astype(np.float32)
        name = f"call{n:04d}"
        with av.open(str(folder / f"{name}.wav"), "w", format="wav") as out:
            stream = out.add_stream("pcm_mulaw", rate=8000, layout="stereo")
            resampler = av.AudioResampler(format="s16", layout="stereo", rate=8000)
            frame = av.AudioFrame.from_ndarray(call, format="fltp", layout="stereo")
            frame.sample_rate = SR
            for rf in [*resampler.resample(frame), *resampler.resample(None)]:
                out.mux(stream.encode(rf))
            out.mux(stream.encode(None))
        refs[name] = "".join(text)
        total += call.shape[1] / SR
        n += 1
    refs_path.write_text(json.dumps(refs, ensure_ascii=False, indent=1), encoding="utf-8")
    return folder, refs


def cer(refs: dict[str, str], hyps: dict[str, str]) -> float:
    errors = chars = 0
    for name, ref in refs.items():
        e, c = char_errors(ref, hyps.get(name, ""))
        errors, chars = errors + e, chars + c
    return errors / max(1, chars)


def run_plain(folder: Path, cores: int) -> tuple[float, dict[str, str]]:
    from faster_whisper import WhisperModel

    from pipeline.config import Settings
    from pipeline.process import VoicePipeline

    model = WhisperModel(VoicePipeline(Settings()).model_ref.path, device="cpu",
                         cpu_threads=cores)
    files = sorted(folder.glob("*.wav"))
    model.transcribe(str(files[0]), beam_size=5)  # warm-up (the service gets one too)
    hyps = {}
    t0 = time.perf_counter()
    for f in files:
        segments, _ = model.transcribe(str(f), beam_size=5)
        hyps[f.stem] = "".join(s.text for s in segments)
    return time.perf_counter() - t0, hyps


def _hyps(out: Path) -> dict[str, str]:
    return {d.name: json.loads((d / "transcript.json").read_text(encoding="utf-8"))["text"]
            for d in out.iterdir() if (d / "transcript.json").is_file()}


def run_minyin(folder: Path, workers: int, cores: int,
               extra_env: dict[str, str] | None = None) -> tuple[float, dict[str, str]]:
    tmp = Path(tempfile.mkdtemp(prefix=f"minyin-batch-w{workers}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINYIN_")}
    env.update(MINYIN_DATA_DIR=str(tmp / "data"), PYTHONPATH=str(ROOT),
               MINYIN_CPU_THREADS=str(max(1, cores // workers)), **(extra_env or {}))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        args = [*MINYIN, "batch", str(folder), "--out", str(tmp / "out")]
        if workers > 1:
            port = _free_port()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                start_new_session=True))
            env.update(MINYIN_REDIS_URL=f"redis://127.0.0.1:{port}/0",
                       MINYIN_REDIS_PREFIX="bench")
            log = (tmp / "worker.log").open("wb")
            procs.append(subprocess.Popen(
                [*MINYIN, "worker", "--queues", "batch", "--concurrency", str(workers)],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
            args.append("--distributed")
            time.sleep(8)  # workers load their models; the batch intake overlaps anyway
        t0 = time.perf_counter()
        result = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if result.returncode not in (0, 1):
            raise RuntimeError(result.stderr[-3000:])
        return wall, _hyps(tmp / "out")
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--int8", action="store_true",
                    help="also run the last worker count with MINYIN_COMPUTE_TYPE=int8")
    args = ap.parse_args()
    folder, refs = build_calls(args.minutes)
    audio_s = sum(decode_audio(f, split_channels=False).duration
                  for f in folder.glob("*.wav"))
    print(f"{len(refs)} calls, {audio_s / 3600:.2f} audio hours in {folder}", flush=True)
    rows = []
    plain_speed = None
    if not args.skip_plain:
        wall, hyps = run_plain(folder, args.cores)
        plain_speed = audio_s / wall
        rows.append({"system": f"plain faster-whisper ({args.cores} threads)", "wall_s": wall,
                     "audio_h_per_h": plain_speed, "cer": cer(refs, hyps),
                     # what simplification alone would buy plain
                     "cer_t2s": cer(refs, {k: to_simplified(v) for k, v in hyps.items()})})
        print(rows[-1], flush=True)
    counts = [int(x) for x in args.workers.split(",")]
    runs = [(w, {}) for w in counts]
    if args.int8:
        runs.append((counts[-1], {"MINYIN_COMPUTE_TYPE": "int8"}))
    for w, extra in runs:
        wall, hyps = run_minyin(folder, w, args.cores, extra)
        label = ", int8" if extra else ""
        rows.append({"system": f"minyin batch, {w} worker process(es){label}", "wall_s": wall,
                     "audio_h_per_h": audio_s / wall, "cer": cer(refs, hyps),
                     "vs_plain": (audio_s / wall) / plain_speed if plain_speed else None})
        print(rows[-1], flush=True)
    print(f"\n{'system':42} {'wall s':>8} {'audio h/h':>10} {'vs plain':>9} {'CER':>7}")
    for r in rows:
        ratio = f"{r['vs_plain']:.2f}x" if r.get("vs_plain") else "1.00x"
        print(f"{r['system']:42} {r['wall_s']:8.1f} {r['audio_h_per_h']:10.2f} {ratio:>9} "
              f"{r['cer']:7.1%}" + (f"  (+OpenCC {r['cer_t2s']:.1%})" if "cer_t2s" in r
                                    else ""))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "batch.json").write_text(json.dumps(
        {"minutes": args.minutes, "calls": len(refs), "audio_s": audio_s, "rows": rows},
        indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
