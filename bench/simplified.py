"""What makes Whisper write simplified Chinese? Prompt vs OpenCC, measured.

    .venv/bin/python bench/simplified.py

For every clip of ``../shared/audio``, ``../shared/audio-dialect`` and ``samples/``,
Whisper (minyin's decoding settings, language fixed to zh) is run without and with the
Mandarin profile's simplified-Chinese initial prompt. For each output we count the
characters that OpenCC would change (traditional characters) and the CER of the raw
output and of the output after OpenCC t2s.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.normalize import scoring_form, to_simplified  # noqa: E402
from asr.profiles import load_profile  # noqa: E402
from pipeline.evaluate import char_errors, load_manifest  # noqa: E402
from pipeline.process import VoicePipeline  # noqa: E402
from pipeline.segment import speech_windows  # noqa: E402

SETS = {
    "shared": ROOT.parent / "shared" / "audio" / "manifest.jsonl",
    "dialect": ROOT.parent / "shared" / "audio-dialect" / "manifest.jsonl",
    "samples": ROOT / "samples" / "manifest.jsonl",
}


def traditional_chars(text: str) -> int:
    return sum(1 for a, b in zip(text, to_simplified(text), strict=True) if a != b)


def main() -> None:
    pipe = VoicePipeline()
    tr = pipe.transcriber
    prompt = load_profile("mandarin").initial_prompt
    variants = {"no prompt": None, "prompt": prompt}
    rows = []
    for set_name, manifest in SETS.items():
        if not manifest.is_file():
            continue
        entries = load_manifest(manifest)
        stats = {v: {"chars": 0, "trad": 0, "clips_with_trad": 0, "err_raw": 0,
                     "err_t2s": 0, "ref": 0} for v in variants}
        for entry in entries:
            audio = pipe.decode(entry.audio).mono
            windows = [(w.start, w.end) for w in speech_windows(audio)]
            for name, initial_prompt in variants.items():
                opts = dataclasses.replace(tr.options, initial_prompt=initial_prompt)
                clips = [audio[int(a * 16000):int(b * 16000)] for a, b in windows]
                raw = "".join(seg.text for group in tr._batched(clips, opts)[0]
                              for seg in group)
                st = stats[name]
                trad = traditional_chars(raw)
                st["chars"] += len(scoring_form(raw))
                st["trad"] += trad
                st["clips_with_trad"] += trad > 0
                e_raw, n = char_errors(entry.text, raw)
                e_t2s, _ = char_errors(entry.text, to_simplified(raw))
                st["err_raw"] += e_raw
                st["err_t2s"] += e_t2s
                st["ref"] += n
        for name, st in stats.items():
            row = {"set": set_name, "variant": name, "clips": len(entries),
                   "traditional_chars": st["trad"], "output_chars": st["chars"],
                   "clips_with_traditional": st["clips_with_trad"],
                   "cer_raw": round(st["err_raw"] / st["ref"], 4),
                   "cer_after_opencc": round(st["err_t2s"] / st["ref"], 4)}
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), file=sys.stderr, flush=True)
    print("| set | prompt | clips with traditional | traditional chars | CER raw "
          "| CER after OpenCC |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['variant']} | {r['clips_with_traditional']}/{r['clips']} | "
              f"{r['traditional_chars']}/{r['output_chars']} | {r['cer_raw']:.1%} | "
              f"{r['cer_after_opencc']:.1%} |")


if __name__ == "__main__":
    main()
