"""A CTranslate2 Whisper model back to Hugging Face weights, for fine-tuning.

No model hub is reachable here, so the only Whisper we have to fine-tune is the bundled
CTranslate2 one. `read_ct2` parses ``model.bin`` (the layout `ctranslate2.specs.
ModelSpec._serialize` writes: version, spec name, revision, variables, aliases) and
`ct2_to_hf` maps the `WhisperSpec` variables back to `WhisperForConditionalGeneration`:
the fused self-attention projection (q, k, v) and cross-attention projection (k, v)
are split again, and the key bias, which Whisper does not have and CTranslate2 stores
as zeros, is dropped. `export_hf` writes a directory `transformers` loads.

Needs the ``finetune`` extra (torch, transformers); imported only by those commands.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5


class ExportError(ValueError):
    pass


def read_ct2(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, variables with aliases resolved) of a CTranslate2 ``model.bin``."""
    with Path(path).open("rb") as fh:
        version = _u(fh, "I")
        if version < 5:
            raise ExportError(f"{path}: binary version {version} is too old to read")
        name = _string(fh)
        _u(fh, "I")  # spec revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(_u(fh, "I")):
            key = _string(fh)
            shape = [_u(fh, "I") for _ in range(_u(fh, "B"))]
            dtype, size = _u(fh, "B"), _u(fh, "I")
            data = fh.read(size)
            if dtype == _BFLOAT16:
                raw = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
                array = raw.view(np.float32)
            elif dtype in _DTYPES:
                array = np.frombuffer(data, dtype=_DTYPES[dtype])
            else:
                raise ExportError(f"{path}: variable {key} has unknown type {dtype}")
            variables[key] = array.reshape(shape)
        for _ in range(_u(fh, "I")):
            alias, target = _string(fh), _string(fh)
            variables[alias] = variables[target]
    return name, variables


def _u(fh: BinaryIO, fmt: str) -> int:
    return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]


def _string(fh: BinaryIO) -> str:
    return fh.read(_u(fh, "H"))[:-1].decode("utf-8")


def _float(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.int8:
        raise ExportError(f"{name} is quantized (int8); export a float16/float32 model")
    return np.ascontiguousarray(array, dtype=np.float32)


def ct2_to_hf(variables: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(Hugging Face state dict, WhisperConfig keyword arguments)."""
    v = variables
    out: dict[str, np.ndarray] = {}

    def put(hf: str, ct2: str) -> None:
        out[hf] = _float(v[ct2], ct2)

    def norm(hf: str, ct2: str) -> None:
        put(f"{hf}.weight", f"{ct2}/gamma")
        put(f"{hf}.bias", f"{ct2}/beta")

    def linear(hf: str, ct2: str) -> None:
        put(f"{hf}.weight", f"{ct2}/weight")
        if f"{ct2}/bias" in v:
            put(f"{hf}.bias", f"{ct2}/bias")

    def fused(hfs: list[str | None], ct2: str) -> None:
        """Split a fused projection; None: a part whose bias Whisper does not have (k)."""
        weight = _float(v[f"{ct2}/weight"], ct2)
        bias = _float(v[f"{ct2}/bias"], ct2) if f"{ct2}/bias" in v else None
        parts = len(hfs)
        for i, hf in enumerate(hfs):
            name = hf or ""
            out[f"{name}.weight"] = np.split(weight, parts)[i]
            if bias is not None and not name.endswith("k_proj"):
                out[f"{name}.bias"] = np.split(bias, parts)[i]

    for side in ("encoder", "decoder"):
        put(f"model.{side}.embed_positions.weight", f"{side}/position_encodings/encodings")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")

    layers = {side: sorted({int(m.group(1)) for k in v
                            if (m := re.match(rf"{side}/layer_(\d+)/", k))})
              for side in ("encoder", "decoder")}
    for side in ("encoder", "decoder"):
        for i in layers[side]:
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            fused([f"{hf}.self_attn.q_proj", f"{hf}.self_attn.k_proj",
                   f"{hf}.self_attn.v_proj"], f"{ct}/self_attention/linear_0")
            linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            if side == "decoder":
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
                linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                fused([f"{hf}.encoder_attn.k_proj", f"{hf}.encoder_attn.v_proj"],
                      f"{ct}/attention/linear_1")
                linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")

    d_model = out["model.decoder.embed_tokens.weight"].shape[1]
    config = {
        "vocab_size": out["model.decoder.embed_tokens.weight"].shape[0],
        "d_model": d_model,
        "num_mel_bins": out["model.encoder.conv1.weight"].shape[1],
        "encoder_layers": len(layers["encoder"]),
        "decoder_layers": len(layers["decoder"]),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": out["model.encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": out["model.decoder.layers.0.fc1.weight"].shape[0],
        "max_source_positions": out["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": out["model.decoder.embed_positions.weight"].shape[0],
    }
    return out, config


def special_ids(tokenizer_json: Path) -> dict[str, int]:
    """Token ids of the added (special) tokens of a Whisper ``tokenizer.json``."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    return {t["content"]: t["id"] for t in data.get("added_tokens", [])}


def generation_settings(ct2_config: dict[str, Any], specials: dict[str, int],
                        max_length: int) -> tuple[dict[str, int], Any]:
    """(special token ids for WhisperConfig, GenerationConfig) carrying what a
    CTranslate2 Whisper ``config.json`` holds, which its converter reads back."""
    from transformers import GenerationConfig

    tokens = {}
    if "<|startoftranscript|>" in specials:
        eot = specials["<|endoftext|>"]
        tokens = {"decoder_start_token_id": specials["<|startoftranscript|>"],
                  "eos_token_id": eot, "pad_token_id": eot, "bos_token_id": eot}
    by_id = {i: t for t, i in specials.items()}
    generation = GenerationConfig(
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        alignment_heads=ct2_config.get("alignment_heads"),
        lang_to_id={by_id[i]: i for i in ct2_config.get("lang_ids") or [] if i in by_id}
        or None, max_length=max_length, **tokens)
    return tokens, generation


def export_hf(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face Whisper directory (safetensors, config, generation config,
    tokenizer, feature extractor) from a CTranslate2 one; `transformers` loads it with
    from_pretrained, and CTranslate2's converter turns it back into the same model.

    The generation config carries what the CTranslate2 ``config.json`` holds
    (suppressed tokens, alignment heads, language ids) and the special token ids, so a
    fine-tuned model converted back keeps them; ``minyin_export.json`` names the source.
    """
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    name, variables = read_ct2(ct2_dir / "model.bin")
    if name != "WhisperSpec":
        raise ExportError(f"{ct2_dir} holds a {name}, not a Whisper model")
    state, config_kwargs = ct2_to_hf(variables)
    ct2_config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    specials = special_ids(ct2_dir / "tokenizer.json") if (
        ct2_dir / "tokenizer.json").is_file() else {}
    tokens, generation = generation_settings(ct2_config, specials,
                                             config_kwargs["max_target_positions"])
    config = WhisperConfig(**config_kwargs, suppress_tokens=generation.suppress_tokens,
                           begin_suppress_tokens=generation.begin_suppress_tokens, **tokens)
    model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(a.copy()) for k, a in state.items()}
    tensors["proj_out.weight"] = tensors["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # the key projections have no bias in Whisper; nothing else may be missing
    if unexpected or [k for k in missing if not k.endswith("k_proj.bias")]:
        raise ExportError(f"weights do not fit: missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]}")
    model.generation_config = generation
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    for extra in ("tokenizer.json", "vocabulary.json"):
        if (ct2_dir / extra).is_file():
            shutil.copyfile(ct2_dir / extra, out_dir / extra)
    card = {}
    if (ct2_dir / "card.json").is_file():
        card = json.loads((ct2_dir / "card.json").read_text(encoding="utf-8"))
    (out_dir / "minyin_export.json").write_text(json.dumps(
        {"source": str(ct2_dir), "name": card.get("name") or ct2_dir.name,
         "version": str(card.get("version", ""))}, ensure_ascii=False, indent=1),
        encoding="utf-8")
    return out_dir


def prompt_ids(tokenizer_json: Path, language: str = "zh") -> list[int]:
    """<|startoftranscript|><|lang|><|transcribe|><|notimestamps|> as token ids."""
    ids = special_ids(tokenizer_json)
    names = ("<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>")
    missing = [n for n in names if n not in ids]
    if missing:
        raise ExportError(f"{tokenizer_json} lacks {missing}")
    return [ids[n] for n in names]


def greedy_pair(hf_dir: str | Path, ct2_dir: str | Path, clips: list[np.ndarray],
                language: str = "zh") -> list[tuple[list[int], list[int]]]:
    """(CTranslate2 tokens, Hugging Face tokens) of greedy decoding of each clip's first
    30 s, from the same log-mel features and prompt and with the same suppressed
    tokens: an exact export gives equal pairs."""
    import ctranslate2
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
    from transformers.generation import GenerationMixin

    hf_dir, ct2_dir = Path(hf_dir), Path(ct2_dir)
    hf = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    features = WhisperFeatureExtractor.from_pretrained(hf_dir)
    ct = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    prompt = prompt_ids(ct2_dir / "tokenizer.json", language)
    eot = prompt[0] - 1  # <|endoftext|> comes just before <|startoftranscript|>
    pairs = []
    for clip in clips:
        feats = features(clip[:30 * 16000], sampling_rate=16000,
                         return_tensors="np").input_features.astype(np.float32)
        ct_ids = ct.generate(ctranslate2.StorageView.from_array(feats), [prompt],
                             beam_size=1, max_length=448)[0].sequences_ids[0]
        with torch.no_grad():
            # the plain generation loop: Whisper's own generate() wants hub-style
            # generation settings this export does not invent
            out = GenerationMixin.generate(
                hf, input_features=torch.from_numpy(feats),
                decoder_input_ids=torch.tensor([prompt]), do_sample=False, num_beams=1,
                max_length=448, suppress_tokens=hf.config.suppress_tokens,
                begin_suppress_tokens=hf.config.begin_suppress_tokens, eos_token_id=eot,
                pad_token_id=eot)
        hf_ids = [t for t in out[0].tolist()[len(prompt):] if t != eot]
        pairs.append((list(ct_ids), hf_ids))
    return pairs
