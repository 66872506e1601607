"""When does denoising help Whisper? CER with and without it across noise levels.

    .venv/bin/python bench/denoise_threshold.py [--clips 5]

Mono samples (clean TTS complaints) are mixed with street noise or babble at known
SNRs; each mix is transcribed with the denoiser off and on. The table also shows the
pipeline's own SNR estimate for each mix, which is what the threshold
(``MINYIN_DENOISE_BELOW_SNR_DB``) is compared with at run time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.audiogen import babble_noise, mix_at_snr, street_noise  # noqa: E402
from pipeline.audio import DecodedAudio, decode_audio  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.denoise import denoise, estimate_noise  # noqa: E402
from pipeline.evaluate import char_errors, load_manifest  # noqa: E402
from pipeline.process import VoicePipeline  # noqa: E402

SR = 16000


def as_decoded(audio: np.ndarray) -> DecodedAudio:
    return DecodedAudio(tracks=audio[np.newaxis, :], sample_rate=SR, format="wav",
                        codec="pcm_f32le", source_sample_rate=SR, source_channels=1,
                        duration=len(audio) / SR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--snrs", default="0,5,10,15,20")
    parser.add_argument("--strength", type=float, default=0.8,
                        help="noisereduce prop_decrease for the 'on' column")
    parser.add_argument("--noises", default="street,babble")
    args = parser.parse_args()
    rng = np.random.default_rng(11)
    entries = [e for e in load_manifest(ROOT / "samples" / "manifest.jsonl")
               if e.extra.get("channels", 1) == 1 and e.extra.get("noise", "none") == "none"]
    entries = entries[: args.clips]
    speech = [decode_audio(e.audio).mono for e in entries]
    # transcribe with the denoiser never triggered, so that only the forced mix differs
    pipe = VoicePipeline(Settings(denoise_below_snr_db=-100.0))
    rows = []
    for noise_kind in args.noises.split(","):
        for snr in [float(s) for s in args.snrs.split(",")]:
            totals = {"off": [0, 0], "on": [0, 0]}
            estimates = []
            for i, (entry, clean) in enumerate(zip(entries, speech, strict=True)):
                if noise_kind == "street":
                    noise = street_noise(len(clean), SR, rng)
                else:
                    others = [s for j, s in enumerate(speech) if j != i]
                    noise = babble_noise(others, len(clean), SR, rng)
                mixed = mix_at_snr(clean, noise, snr).astype(np.float32)
                estimates.append(estimate_noise(mixed).snr_db)
                for mode, audio in (("off", mixed),
                                    ("on", denoise(mixed, strength=args.strength))):
                    text = pipe.transcribe(as_decoded(audio)).transcript.text
                    e, n = char_errors(entry.text, text)
                    totals[mode][0] += e
                    totals[mode][1] += n
            row = {"noise": noise_kind, "snr_db": snr,
                   "estimated_snr_db": round(float(np.median(estimates)), 1),
                   "cer_off": round(totals["off"][0] / totals["off"][1], 4),
                   "cer_on": round(totals["on"][0] / totals["on"][1], 4)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print("| noise | true SNR | estimated SNR | CER without denoise | CER with denoise |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['noise']} | {r['snr_db']:g} dB | {r['estimated_snr_db']:g} dB | "
              f"{r['cer_off']:.1%} | {r['cer_on']:.1%} |")


if __name__ == "__main__":
    main()
