"""A tiny randomly initialised Whisper with the bundled model's tokenizer and generation
settings: fast enough to train and convert in a test, shaped like the real one."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ROOT

BUNDLED = ROOT / "models" / "whisper-base"


def tiny_whisper(path: Path) -> Path:
    """A Hugging Face Whisper directory (2+2 layers, d_model 64, the real vocabulary)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from asr.export_hf import generation_settings, special_ids

    ct2_config = json.loads((BUNDLED / "config.json").read_text(encoding="utf-8"))
    ct2_config["alignment_heads"] = [[1, 0], [1, 1]]  # within its 2 decoder layers
    tokens, generation = generation_settings(ct2_config, special_ids(BUNDLED / "tokenizer.json"),
                                             448)
    config = WhisperConfig(vocab_size=51865, d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4,
                           encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                           suppress_tokens=generation.suppress_tokens,
                           begin_suppress_tokens=generation.begin_suppress_tokens, **tokens)
    torch.manual_seed(7)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # no zero biases or unit norms: every tensor distinct
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.generation_config = generation
    model.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    (path / "tokenizer.json").write_bytes((BUNDLED / "tokenizer.json").read_bytes())
    return path
