"""Fine-tuning a Hugging Face Whisper on clips with verified text, and converting the
result to CTranslate2 (``minyin finetune``; `pipeline.finetune` runs the whole job).

transformers' `Trainer` does the training: the loop, AdamW with linear warm-up and
decay, checkpoints every ``save_steps`` (resumed from the newest one when a run is
started again), the progress bar and the loss. LoRA comes from peft: adapters on the
attention projections (q, k, v, out) and the feed-forward layers (fc1, fc2) of the
encoder and the decoder (or the decoder only), merged into the weights before
conversion so the result is a plain Whisper that CTranslate2 converts like any other.

Each example is trained the way the workers decode: ``<|startoftranscript|><|lang|>
<|transcribe|><|notimestamps|>`` and the text (the transcriber runs without
timestamps), after ``<|startofprev|>`` and the profile's initial prompt when it has
one. The loss covers the text and ``<|endoftext|>`` only.

Learning without forgetting: examples marked ``replay`` are general speech the base
already handles, with the base's own transcript as the target (no human text needed).
Each batch holds a fixed share of them (`TrainConfig.replay_share`), and on them the
loss adds ``kl_weight`` times the KL divergence from the base model's token
distribution to the model's (`distillation_kl`): the base itself is the teacher (LoRA's
adapters switched off, or a frozen copy for a full fine-tune).

Needs the ``finetune`` extra (torch, transformers, peft); imported only by that command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# files a Whisper directory carries besides the weights, kept through training
_SIDE_FILES = ("tokenizer.json", "vocabulary.json", "preprocessor_config.json",
               "minyin_export.json")


class FinetuneError(ValueError):
    """A fine-tuning run refused or failed; the message says why."""


@dataclass(frozen=True)
class Example:
    audio: Path  # 16 kHz mono speech, at most 30 s
    text: str
    prompt: str | None = None  # the dialect profile's initial prompt, if any
    # general speech with the base model's own transcript as `text`: replayed so the
    # model keeps what it could already do, and distilled towards the base on it
    replay: bool = False


@dataclass
class TrainConfig:
    method: Literal["lora", "full"] = "lora"
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float | None = None  # None: 1e-3 for LoRA, 1e-5 for full
    warmup: float = 0.1  # a fraction of the steps
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    encoder: bool = True  # adapt (or train) the encoder too, not only the decoder
    # the decoder's cross-attention (how it reads the audio); off keeps the base's
    # reading of voices unlike the training speakers (LoRA only)
    cross_attention: bool = True
    language: str = "zh"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch CPU threads; 0: torch's default
    save_steps: int = 50
    logging_steps: int = 5
    seed: int = 0
    # how much of the learned change goes into the merged model: 1 all of it, 0.5 half
    # way between base and fine-tuned weights (weight-space ensembling, WiSE-FT): keeps
    # more of the base's ear for speech unlike the training data. Applied after
    # training, so a finished run can be merged again at another scale by resuming it.
    merge_scale: float = 1.0
    # the share of each batch taken from the replay examples (when there are any)
    replay_share: float = 0.25
    # the weight of the KL term to the base's token distribution on replay examples;
    # 0 turns distillation off (replay then trains on the pseudo-labels alone)
    kl_weight: float = 1.0
    kl_temperature: float = 1.0

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.method == "lora" else 1e-5


@dataclass
class TrainResult:
    merged_dir: Path
    device: str
    steps: int
    epochs: float
    wall_s: float
    train_loss: float | None  # the last logged loss (of the whole run, resumed or not)
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) as logged
    resumed_from: str | None = None
    trainable_parameters: int = 0
    total_parameters: int = 0


def is_hf_whisper(path: Path) -> bool:
    """A Hugging Face Whisper directory (config.json of model_type whisper + weights)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "whisper" and any(
        (path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin",
                                       "model.safetensors.index.json"))


class _Tokens:
    """The label sequences, from the model's own ``tokenizer.json``."""

    def __init__(self, tokenizer_json: Path, language: str, max_length: int) -> None:
        from tokenizers import Tokenizer

        from asr.export_hf import ExportError, prompt_ids, special_ids

        if not tokenizer_json.is_file():
            raise FinetuneError(f"{tokenizer_json.parent} has no tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        ids = special_ids(tokenizer_json)
        try:
            self.start = prompt_ids(tokenizer_json, language)
        except ExportError as e:
            raise FinetuneError(str(e)) from None
        missing = [n for n in ("<|endoftext|>", "<|startofprev|>") if n not in ids]
        if missing:
            raise FinetuneError(f"{tokenizer_json} lacks {missing}")
        self.eot = ids["<|endoftext|>"]
        self.prev = ids["<|startofprev|>"]
        self.max_length = max_length

    def encode(self, text: str, prompt: str | None) -> tuple[list[int], list[int]]:
        """(decoder input ids, labels); labels are -100 where no loss is wanted."""
        context: list[int] = []
        if prompt and prompt.strip():
            # as faster-whisper sends an initial prompt: a space, then the prompt
            words = self.tokenizer.encode(" " + prompt.strip(), add_special_tokens=False).ids
            context = [self.prev, *words[-(self.max_length // 2 - 1):]]
        text_ids = self.tokenizer.encode(text.strip(), add_special_tokens=False).ids
        full = [*context, *self.start, *text_ids, self.eot]
        if len(full) > self.max_length:
            raise FinetuneError(f"text of {len(text_ids)} tokens does not fit Whisper's "
                                f"{self.max_length}-token window")
        skip = len(context) + len(self.start) - 1
        return full[:-1], [-100] * skip + full[skip + 1:]


class _Clips:
    """A torch-style dataset: log-mel features and label ids per example."""

    def __init__(self, examples: Sequence[Example], tokens: _Tokens, features: Any,
                 load_audio: Callable[[Path], np.ndarray]) -> None:
        self.examples, self.tokens, self.features = list(examples), tokens, features
        self.load_audio = load_audio
        # token errors surface before an hour of training, not in the middle of it
        self.encoded = [tokens.encode(e.text, e.prompt) for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        audio = self.load_audio(self.examples[i].audio)
        if len(audio) > 30 * SAMPLE_RATE:
            raise FinetuneError(f"{self.examples[i].audio} is longer than 30 s")
        feats = self.features(audio, sampling_rate=SAMPLE_RATE,
                              return_tensors="np").input_features[0]
        inputs, labels = self.encoded[i]
        return {"input_features": feats, "decoder_input_ids": inputs, "labels": labels,
                "replay": self.examples[i].replay}


def _collate(pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(b["decoder_input_ids"]) for b in batch)
        inputs = [b["decoder_input_ids"] + [pad_id] * (width - len(b["decoder_input_ids"]))
                  for b in batch]
        # padding comes after the end: the causal mask keeps it out of every real step
        labels = [b["labels"] + [-100] * (width - len(b["labels"])) for b in batch]
        return {"input_features": torch.from_numpy(np.stack([b["input_features"]
                                                             for b in batch])),
                "decoder_input_ids": torch.tensor(inputs), "labels": torch.tensor(labels),
                "replay": torch.tensor([bool(b.get("replay")) for b in batch])}
    return collate


def replay_per_batch(batch_size: int, share: float) -> int:
    """How many of a batch's rows are replay examples: at least one when replay is on,
    never the whole batch."""
    if share <= 0 or batch_size < 2:
        return 0
    return min(batch_size - 1, max(1, round(batch_size * share)))


def mixed_batches(n_train: int, n_replay: int, batch_size: int, share: float,
                  rng: np.random.Generator) -> list[list[int]]:
    """One epoch of batches over ``n_train`` examples (indices ``0..n_train-1``), each
    with `replay_per_batch` replay examples (indices ``n_train..``) drawn without
    replacement, reshuffled when used up. Every batch is full: the last one wraps
    round to the epoch's first training examples."""
    k = replay_per_batch(batch_size, share) if n_replay else 0
    m = batch_size - k
    order = [int(i) for i in rng.permutation(n_train)]
    pool: list[int] = []
    batches = []
    for start in range(0, n_train, m):
        rows = order[start:start + m]
        rows += order[:m - len(rows)]  # wrap round: every batch has the same mix
        for _ in range(k):
            if not pool:
                pool = [n_train + int(i) for i in rng.permutation(n_replay)]
            rows.append(pool.pop())
        batches.append(rows)
    return batches


class _MixedSampler:
    """A torch sampler yielding `mixed_batches` flattened, batch after batch; each pass
    (epoch) is shuffled anew."""

    def __init__(self, n_train: int, n_replay: int, batch_size: int, share: float,
                 seed: int) -> None:
        self.args = (n_train, n_replay, batch_size, share)
        self.seed, self.epoch = seed, 0
        self.length = len(mixed_batches(*self.args, np.random.default_rng(seed))) * batch_size

    def __len__(self) -> int:
        return self.length

    def __iter__(self):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        for batch in mixed_batches(*self.args, rng):
            yield from batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def distillation_kl(student_logits: Any, teacher_logits: Any, labels: Any,
                    temperature: float = 1.0) -> Any:
    """KL(teacher || student) of the next-token distributions, averaged over the
    positions that carry a label (not -100), scaled by T² as in Hinton et al. Zero when
    the student equals the teacher."""
    import torch.nn.functional as F

    mask = (labels != -100).to(student_logits.dtype)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_token = (teacher.exp() * (teacher - student)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1) * temperature ** 2


def _distilling_trainer(config: TrainConfig, n_train: int, n_replay: int,
                        teacher: Any | None) -> Any:
    """A transformers Trainer whose batches mix replay examples in and whose loss adds
    the KL term on them. `teacher`: a frozen base model for a full fine-tune; None for
    LoRA, whose base is the model with its adapters switched off."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class DistillingTrainer(Trainer):
        loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides for GA

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if not n_replay:
                return super()._get_train_sampler(train_dataset)
            return _MixedSampler(n_train, n_replay, self.args.per_device_train_batch_size,
                                 config.replay_share, self.args.seed)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            replay = inputs.pop("replay")
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                   ignore_index=-100)
            if config.kl_weight > 0 and bool(replay.any()):
                rows = {k: v[replay] for k, v in inputs.items()}
                unwrapped = self.accelerator.unwrap_model(model)
                switched_off = (unwrapped.disable_adapter() if teacher is None
                                else contextlib.nullcontext())
                with torch.no_grad(), switched_off:
                    reference = (teacher or unwrapped)(**rows).logits
                loss = loss + config.kl_weight * distillation_kl(
                    logits[replay], reference, labels[replay], config.kl_temperature)
            return (loss, outputs) if return_outputs else loss

    return DistillingTrainer


def pick_device(wanted: str) -> str:
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise FinetuneError("--device cuda, but torch sees no CUDA GPU (the CPU build "
                            "of torch is installed?)")
    return wanted


def run_fingerprint(base: Path, examples: Sequence[Example], config: TrainConfig) -> str:
    """What a checkpoint belongs to: resuming with other data or settings is refused."""
    settings = asdict(config)
    for volatile in ("device", "threads", "save_steps", "logging_steps", "merge_scale"):
        settings.pop(volatile)
    digest = hashlib.sha256(f"{base.resolve()}\n{json.dumps(settings, sort_keys=True)}\n"
                            .encode())
    for e in examples:
        digest.update(f"{e.audio}\t{e.text}\t{e.prompt}\n".encode())
    return digest.hexdigest()[:16]


def train(base: Path, examples: Sequence[Example], work: Path, config: TrainConfig, *,
          load_audio: Callable[[Path], np.ndarray], resume: bool = True,
          progress: bool = True, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Fine-tune the Hugging Face Whisper in ``base`` and write the merged model to
    ``work/merged``; checkpoints go to ``work/checkpoints``. `callbacks` are
    transformers ``TrainerCallback`` objects (progress reporting, early stop)."""
    import torch
    from transformers import (
        TrainingArguments,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )
    from transformers.trainer_utils import get_last_checkpoint

    if not is_hf_whisper(base):
        raise FinetuneError(f"{base} is not a Hugging Face Whisper directory")
    # the training examples first, then the replayed ones (`mixed_batches` indices)
    examples = [e for e in examples if not e.replay] + [e for e in examples if e.replay]
    n_replay = sum(e.replay for e in examples)
    n_train = len(examples) - n_replay
    if not n_train:
        raise FinetuneError("no training examples")
    if not 0 < config.merge_scale <= 1:
        raise FinetuneError(f"merge scale {config.merge_scale} is outside (0, 1]")
    if not 0 <= config.replay_share < 1 or config.kl_weight < 0 \
            or config.kl_temperature <= 0:
        raise FinetuneError("replay share must be in [0, 1), KL weight >= 0 and "
                            "temperature > 0")
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)

    model = WhisperForConditionalGeneration.from_pretrained(base)
    tokens = _Tokens(base / "tokenizer.json", config.language,
                     model.config.max_target_positions)
    features = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    dataset = _Clips(examples, tokens, features, load_audio)
    teacher = None
    if n_replay and config.kl_weight > 0 and config.method != "lora":
        teacher = WhisperForConditionalGeneration.from_pretrained(base).eval()
        teacher.requires_grad_(False)
    model = _make_trainable(model, config)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("training %s of %s parameters (%s)", f"{trainable:,}", f"{total:,}",
             config.method)

    work.mkdir(parents=True, exist_ok=True)
    checkpoints = work / "checkpoints"
    fingerprint = run_fingerprint(base, examples, config)
    stamp = work / "run.json"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last and resume:
        earlier = json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint") \
            if stamp.is_file() else None
        if earlier != fingerprint:
            raise FinetuneError(f"{checkpoints} holds checkpoints of another run (other "
                                "data, base or settings); use --restart or another --work")
    elif checkpoints.is_dir():
        shutil.rmtree(checkpoints)  # a restart: old checkpoints must not be resumed later
        last = None
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "config": asdict(config)},
                                indent=1), encoding="utf-8")

    use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(checkpoints), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
        num_train_epochs=config.epochs, max_steps=config.max_steps,
        warmup_steps=config.warmup, lr_scheduler_type="linear", weight_decay=0.0,
        logging_steps=config.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        report_to="none", use_cpu=device == "cpu", seed=config.seed,
        bf16=use_bf16, fp16=device == "cuda" and not use_bf16,
        remove_unused_columns=False, dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda", disable_tqdm=not progress,
        label_names=["labels"])
    if teacher is not None:
        teacher.to(device)
    trainer_class = _distilling_trainer(config, n_train, n_replay, teacher)
    trainer = trainer_class(model=model, args=args, train_dataset=dataset,
                            data_collator=_collate(tokens.eot), callbacks=list(callbacks))
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=last if resume else None)
    wall = time.perf_counter() - t0
    trainer.save_model(str(checkpoints / "final"))  # the adapter (or weights), as trained

    merged = work / "merged"
    if merged.exists():
        shutil.rmtree(merged)
    model = _merged(trainer.model, base, config)
    model.save_pretrained(merged)
    for name in _SIDE_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, merged / name)
    losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history
              if "loss" in e]
    return TrainResult(merged_dir=merged, device=device, steps=trainer.state.global_step,
                       epochs=round(float(trainer.state.epoch or 0), 3), wall_s=round(wall, 1),
                       train_loss=round(losses[-1][1], 4) if losses else None,
                       loss=losses, resumed_from=Path(last).name if last and resume else None,
                       trainable_parameters=trainable, total_parameters=total)


def _merged(model: Any, base: Path, config: TrainConfig) -> Any:
    """The plain Whisper to convert: LoRA adapters merged, `merge_scale` of the change."""
    import torch
    from transformers import WhisperForConditionalGeneration

    scale = config.merge_scale
    if config.method == "lora":
        if scale != 1:
            for module in model.modules():
                if isinstance(getattr(module, "scaling", None), dict):
                    module.scaling = {k: v * scale for k, v in module.scaling.items()}
        return model.merge_and_unload().to("cpu", dtype=torch.float32)
    model = model.to("cpu", dtype=torch.float32)
    if scale != 1:
        start = WhisperForConditionalGeneration.from_pretrained(base).state_dict()
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if tensor.is_floating_point():
                    tensor.copy_(start[name] + scale * (tensor - start[name]))
    return model


def merge_at(base: Path, full: Path, scale: float, out: Path) -> Path:
    """The weights ``scale`` of the way from ``base`` to the fine-tuned ``full`` (both
    Hugging Face Whisper directories) written to ``out``: WiSE-FT at any scale after
    one training, exact for LoRA too since its merge is linear in the scale."""
    import torch
    from transformers import WhisperForConditionalGeneration

    if not 0 < scale <= 1:
        raise FinetuneError(f"merge scale {scale} is outside (0, 1]")
    start = WhisperForConditionalGeneration.from_pretrained(base).state_dict()
    model = WhisperForConditionalGeneration.from_pretrained(full)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(start[name] + scale * (tensor - start[name]))
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    for name in _SIDE_FILES:
        if (full / name).is_file():
            shutil.copyfile(full / name, out / name)
    return out


def _make_trainable(model: Any, config: TrainConfig) -> Any:
    """The model to train: wrapped with LoRA adapters (peft), or itself with every
    weight of the chosen parts trainable (full)."""
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        parts = "model\\.(encoder|decoder)" if config.encoder else "model\\.decoder"
        blocks = "(self_attn|encoder_attn)" if config.cross_attention else "self_attn"
        target = (f"{parts}\\.layers\\.\\d+\\.({blocks}\\.(q_proj|k_proj|v_proj|out_proj)"
                  "|fc1|fc2)")
        return get_peft_model(model, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=target, bias="none"))
    if config.method != "full":
        raise FinetuneError(f"unknown method {config.method!r} (lora or full)")
    if not config.encoder:
        for p in model.model.encoder.parameters():
            p.requires_grad = False
    return model


def convert(hf_dir: Path, out: Path, quantization: str) -> Path:
    """CTranslate2 model in ``out`` (quantization: float16, int8, float32, ...) with
    the tokenizer and feature settings faster-whisper reads."""
    from ctranslate2.converters import TransformersConverter

    files = [f for f in ("tokenizer.json", "preprocessor_config.json")
             if (hf_dir / f).is_file()]
    TransformersConverter(str(hf_dir), copy_files=files).convert(
        str(out), quantization=quantization, force=True)
    return out
