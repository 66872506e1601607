"""minyin finetune (issue 6, part 3): a 2-step fine-tune of a tiny random Whisper runs end
to end into a registered, loadable CTranslate2 model; training resumes from its newest
checkpoint; bad datasets are refused with the reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from asr.export_hf import export_hf, read_ct2  # noqa: E402
from asr.finetune import Example, FinetuneError, TrainConfig, convert, train  # noqa: E402
from pipeline.audio import decode_audio, write_wav  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.finetune import load_dataset, run_finetune  # noqa: E402
from pipeline.models import RegistryError, current_spec, list_models, promote  # noqa: E402
from pipeline.process import VoicePipeline  # noqa: E402
from pipeline.store import Store  # noqa: E402
from tests.conftest import SAMPLES, read_manifest, sample_subset  # noqa: E402
from tests.service import MINYIN  # noqa: E402
from tests.whisper_factory import tiny_whisper  # noqa: E402


@pytest.fixture
def one_retry_temperature(monkeypatch: pytest.MonkeyPatch) -> None:
    """The random tiny model loops on every window, so the guard's retry runs Whisper's
    whole temperature fallback (four temperatures, up to 448 tokens each) on each one:
    the fine-tuning tests need the path, not four turns of it."""
    import functools

    from asr.transcriber import TranscribeOptions

    monkeypatch.setattr(TranscribeOptions, "__init__", functools.partialmethod(
        TranscribeOptions.__init__, retry_temperatures=(0.2,)))


def make_dataset(root: Path, *, train: int = 4, validation: int = 2) -> Path:
    """Real sample speech cut at its reference segments, in the corrections layout."""
    rows: list[dict] = []
    for entry in read_manifest(SAMPLES / "manifest.jsonl"):
        if entry["channels"] != 1:
            continue
        audio = decode_audio(SAMPLES / entry["audio"]).mono
        for k, seg in enumerate(entry["segments"]):
            name = f"audio/{Path(entry['audio']).stem}_{k}.wav"
            clip = audio[int(seg["start_s"] * 16000): int(seg["end_s"] * 16000)]
            write_wav(root / name, clip)
            rows.append({"audio": name, "text": seg["text"], "dialect": "mandarin",
                         "source": "voice_note", "duration_s": len(clip) / 16000})
            if len(rows) == train + validation:
                break
        if len(rows) == train + validation:
            break
    for side, part in (("train", rows[:train]), ("validation", rows[train:])):
        (root / f"{side}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    (root / "data_card.json").write_text(json.dumps({
        "format": "minyin-corrections/1", "clips": {"train": train, "validation": validation}}),
        encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Whisper as a CTranslate2 model under a models directory (like whisper-base)."""
    root = tmp_path_factory.mktemp("tiny")
    hf = tiny_whisper(root / "hf")
    models = root / "models"
    convert(hf, models / "tiny-base", "float32")
    (models / "tiny-base" / "card.json").write_text(json.dumps(
        {"name": "tiny-base", "version": "1"}), encoding="utf-8")
    return models / "tiny-base"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_two_steps_end_to_end_into_a_registered_loadable_model(
        tmp_path: Path, tiny_ct2: Path, dataset: Path, one_retry_temperature: None) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_ct2, models / "tiny-base")
    settings = Settings(models_dir=models, data_dir=tmp_path / "var", model="tiny-base",
                        beam_size=1, cpu_threads=2)
    regression = sample_subset(tmp_path / "regression.jsonl", 4)
    lines: list[str] = []
    card = run_finetune(dataset, "tiny-base", models / "tiny" / "v1", settings,
                        TrainConfig(max_steps=2, batch_size=2, save_steps=1, logging_steps=1,
                                    device="cpu"),
                        regression=regression, progress=False, say=lines.append)

    out = models / "tiny" / "v1"
    assert (out / "model.bin").is_file() and (out / "int8" / "model.bin").is_file()
    assert not list(models.glob("tiny/.*"))  # the staging directory was renamed
    # the card: what the registry reads, and what the next planner needs
    assert json.loads((out / "card.json").read_text(encoding="utf-8")) == card
    assert card["name"] == "tiny" and card["version"] == "v1" and card["base"] == "tiny-base"
    assert card["training"]["steps"] == 2 and card["training"]["method"] == "lora"
    assert [step for step, _ in card["training"]["loss"]] == [1, 2]
    assert card["data"]["train_clips"] == 4 and card["data"]["validation_clips"] == 2
    for which in ("validation", "regression"):
        assert card["cer"][which]["before"] >= 0 and card["cer"][which]["after"] >= 0
        assert card["cer"][which]["after_detail"]["clips"] == (2 if which == "validation"
                                                               else 1)
    assert card["created_at"] and card["ctranslate2"] == {"float16": ".", "int8": "int8"}
    assert any("validation: CER" in line for line in lines)

    # the conversion kept what faster-whisper needs from the base
    base_config = json.loads((models / "tiny-base" / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == base_config
    assert (out / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()
    weights = read_ct2(out / "model.bin")[1]
    assert weights["decoder/layer_0/self_attention/linear_0/weight"].dtype.name == "float16"
    int8 = read_ct2(out / "int8" / "model.bin")[1]
    assert int8["decoder/layer_0/self_attention/linear_0/weight"].dtype.name == "int8"
    # LoRA on the decoder's projections changed them; the merged model differs from the base
    _, base_weights = read_ct2(models / "tiny-base" / "model.bin")
    key = "decoder/layer_1/ffn/linear_0/weight"
    assert not (weights[key].astype("float32") == base_weights[key]).all()

    # registered: listed once (the int8 variant is the card's, not a model of its own),
    # promoted, and loaded by a worker's pipeline by name and version
    store = Store.from_settings(settings, migrate=True)
    assert sorted(e.model for e in list_models(store, settings)) == ["tiny-base", "tiny/v1"]
    # a regression set of four sample notes is too small for the gate to trust
    with pytest.raises(RegistryError, match="at least 800 are needed"):
        promote(store, settings, "tiny/v1", author="test")
    promote(store, settings, "tiny/v1", author="test", force=True)
    pipe = VoicePipeline(settings)
    assert pipe.use_model(current_spec(store, settings))
    assert (pipe.model_ref.name, pipe.model_ref.version) == ("tiny", "v1")
    pipe.transcriber  # noqa: B018 - loads
    # the same run again does not overwrite the model
    with pytest.raises(FinetuneError, match="already holds a model"):
        run_finetune(dataset, "tiny-base", out, settings, TrainConfig(max_steps=1),
                     progress=False)


def test_training_resumes_from_the_newest_checkpoint(tmp_path: Path, tiny_ct2: Path,
                                                     dataset: Path) -> None:
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):  # an interrupted run: stops after step 2
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True
            return control

    hf = export_hf(tiny_ct2, tmp_path / "hf")
    rows = load_dataset(dataset)
    examples = rows.examples(rows.train)
    config = TrainConfig(max_steps=4, batch_size=2, save_steps=1, logging_steps=1,
                         device="cpu", method="full", learning_rate=1e-4)

    def load(p: Path):
        return decode_audio(p).mono

    first = train(hf, examples, tmp_path / "work", config, load_audio=load, progress=False,
                  callbacks=[StopAt()])
    assert first.steps == 2 and first.resumed_from is None
    assert (tmp_path / "work" / "checkpoints" / "checkpoint-2").is_dir()
    again = train(hf, examples, tmp_path / "work", config, load_audio=load, progress=False)
    assert again.resumed_from == "checkpoint-2" and again.steps == 4
    assert [step for step, _ in again.loss] == [1, 2, 3, 4]  # the history carried over

    # a finished run merged again at half scale, without training: half way (WiSE-FT)
    from transformers import WhisperForConditionalGeneration

    start = WhisperForConditionalGeneration.from_pretrained(hf).state_dict()
    full = WhisperForConditionalGeneration.from_pretrained(again.merged_dir).state_dict()
    halfway = train(hf, examples, tmp_path / "work", replace(config, merge_scale=0.5),
                    load_audio=load, progress=False)
    assert halfway.resumed_from == "checkpoint-4" and halfway.steps == 4
    half = WhisperForConditionalGeneration.from_pretrained(halfway.merged_dir).state_dict()
    key = "model.decoder.layers.0.fc1.weight"
    assert not torch.equal(start[key], full[key])
    assert torch.allclose(half[key], start[key] + 0.5 * (full[key] - start[key]), atol=1e-6)

    # other data with the old checkpoints: refused, not silently mixed
    other = [Example(e.audio, e.text + "。") for e in examples]
    with pytest.raises(FinetuneError, match="another run"):
        train(hf, other, tmp_path / "work", config, load_audio=load, progress=False)
    fresh = train(hf, other, tmp_path / "work", config, load_audio=load, progress=False,
                  resume=False)
    assert fresh.resumed_from is None and fresh.steps == 4


def test_lora_merge_scale_takes_that_share_of_the_change(tiny_ct2: Path, tmp_path: Path) -> None:
    from peft import get_peft_model  # noqa: F401 - the extra is there
    from transformers import WhisperForConditionalGeneration

    from asr.finetune import _make_trainable, _merged

    hf = export_hf(tiny_ct2, tmp_path / "hf")
    start = WhisperForConditionalGeneration.from_pretrained(hf).state_dict()
    merged = {}
    for scale in (1.0, 0.25):
        config = TrainConfig(merge_scale=scale)
        torch.manual_seed(3)  # the same adapter both times (A is drawn at creation)
        model = _make_trainable(WhisperForConditionalGeneration.from_pretrained(hf), config)
        with torch.no_grad():  # a trained adapter: B is no longer zero
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.1)
        merged[scale] = _merged(model, hf, config).state_dict()
    for key in ("model.encoder.layers.1.self_attn.q_proj.weight",
                "model.decoder.layers.0.encoder_attn.v_proj.weight",
                "model.decoder.layers.1.fc2.weight"):
        change = merged[1.0][key] - start[key]
        assert change.abs().max() > 0
        assert torch.allclose(merged[0.25][key] - start[key], 0.25 * change, atol=1e-6)
    with pytest.raises(FinetuneError, match="outside"):
        train(hf, [Example(tmp_path, "x")], tmp_path / "w", TrainConfig(merge_scale=1.5),
              load_audio=len)


def test_a_bad_dataset_is_refused_with_the_reason(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(FinetuneError, match="is not a directory"):
        load_dataset(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "audio" / sorted(p.name for p in (broken / "audio").iterdir())[0]).unlink()
    with pytest.raises(FinetuneError, match="is missing"):
        load_dataset(broken)
    empty = tmp_path / "empty"
    shutil.copytree(dataset, empty)
    (empty / "validation.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(FinetuneError, match=r"validation\.jsonl has no clips"):
        load_dataset(empty)
    (empty / "data_card.json").write_text('{"format": "other/9"}', encoding="utf-8")
    with pytest.raises(FinetuneError, match="not minyin-corrections/1"):
        load_dataset(empty)


def test_examples_are_laid_out_as_the_workers_decode(tiny_ct2: Path) -> None:
    """<|startofprev|> prompt, <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>,
    text, <|endoftext|>: the loss covers the text and the end only."""
    from asr.export_hf import special_ids
    from asr.finetune import _Tokens

    ids = special_ids(tiny_ct2 / "tokenizer.json")
    tokens = _Tokens(tiny_ct2 / "tokenizer.json", "zh", 448)
    inputs, labels = tokens.encode("路灯坏了", None)
    start = [ids[t] for t in ("<|startoftranscript|>", "<|zh|>", "<|transcribe|>",
                              "<|notimestamps|>")]
    assert inputs[:4] == start and len(inputs) == len(labels)
    text = inputs[4:]
    assert tokens.tokenizer.decode(text) == "路灯坏了"
    assert labels == [-100] * 3 + text + [ids["<|endoftext|>"]]
    inputs, labels = tokens.encode("路灯坏了", "浦江县")
    assert inputs[0] == ids["<|startofprev|>"] and inputs.index(start[0]) > 1
    assert labels[inputs.index(start[0]) + 3:] == [*text, ids["<|endoftext|>"]]
    assert set(labels[:inputs.index(start[0]) + 3]) == {-100}
    with pytest.raises(FinetuneError, match="does not fit"):
        tokens.encode("路灯坏了" * 200, None)


def test_the_finetune_command(tmp_path: Path, tiny_ct2: Path, dataset: Path) -> None:
    """The CLI: progress and loss on stderr, the card alone on stdout; bad input refused."""
    regression = sample_subset(tmp_path / "regression.jsonl", 0)
    env = {**os.environ, "MINYIN_DATA_DIR": str(tmp_path / "var"),
           "MINYIN_MODELS_DIR": str(tmp_path / "models"), "MINYIN_BEAM_SIZE": "1",
           "MINYIN_CPU_THREADS": "2"}
    out = tmp_path / "models" / "tiny" / "v2"
    run = subprocess.run([*MINYIN, "finetune", "--data", str(dataset), "--base", str(tiny_ct2),
                          "--out", str(out), "--max-steps", "1", "--batch-size", "2",
                          "--decoder-only", "--device", "cpu", "--regression", str(regression)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    card = json.loads(run.stdout)  # nothing but the card
    assert card["training"]["steps"] == 1 and card["training"]["encoder"] is False
    assert card["cer"]["regression"]["manifest"] == str(regression)
    assert "'loss'" in run.stderr and "validation: CER" in " ".join(run.stderr.split())
    assert (out / "card.json").is_file() and (out / "int8" / "card.json").is_file()

    run = subprocess.run([*MINYIN, "finetune", "--data", str(tmp_path / "nowhere"),
                          "--out", str(tmp_path / "models" / "x" / "v1")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2 and "is not a directory" in " ".join(run.stderr.split())
    run = subprocess.run([*MINYIN, "finetune", "--data", str(dataset), "--out",
                          str(tmp_path / "o"), "--method", "qlora"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2 and "--method is lora or full" in " ".join(run.stderr.split())


# ------------------------------------------------------------- learning without forgetting


def test_every_batch_mixes_in_its_share_of_replay() -> None:
    import numpy as np

    from asr.finetune import _MixedSampler, mixed_batches, replay_per_batch

    assert [replay_per_batch(8, s) for s in (0, 0.05, 0.25, 0.5, 0.99)] == [0, 1, 2, 4, 7]
    batches = mixed_batches(13, 5, 8, 0.25, np.random.default_rng(0))
    assert len(batches) == 3 and all(len(b) == 8 for b in batches)  # 13 / 6, rounded up
    assert all(sum(i >= 13 for i in b) == 2 for b in batches)
    train = [i for b in batches for i in b if i < 13]
    assert set(train) == set(range(13))  # an epoch covers every training example
    replay = [i for b in batches for i in b if i >= 13]
    assert set(replay[:5]) == set(range(13, 18))  # without replacement until used up
    assert mixed_batches(13, 0, 8, 0.25, np.random.default_rng(0)) == [
        b[:8] for b in mixed_batches(13, 0, 8, 0.25, np.random.default_rng(0))]
    assert all(i < 13 for b in mixed_batches(13, 0, 8, 0.25, np.random.default_rng(0))
               for i in b)
    sampler = _MixedSampler(13, 5, 8, 0.25, seed=1)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 24 and first != second  # each epoch reshuffled


def test_the_kl_term_is_zero_when_the_student_is_the_teacher() -> None:
    from asr.finetune import distillation_kl

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, 3, 4, 1, -100], [-100, -100, 2, 2, 7]])
    assert distillation_kl(logits, logits.clone(), labels).item() == pytest.approx(0, abs=1e-6)
    other = logits + torch.randn_like(logits)
    kl = distillation_kl(other, logits, labels)
    assert kl.item() > 0
    # positions without a label do not count
    noisy = other.clone()
    noisy[0, 0] += 100
    assert distillation_kl(noisy, logits, labels).item() == pytest.approx(kl.item(), rel=1e-5)
    # by hand, for one position
    t = torch.log_softmax(logits[1, 4], -1)
    s = torch.log_softmax(other[1, 4], -1)
    one = distillation_kl(other[1:, 4:], logits[1:, 4:], labels[1:, 4:])
    assert one.item() == pytest.approx((t.exp() * (t - s)).sum().item(), rel=1e-5)


def test_the_merge_scale_is_chosen_on_the_curve() -> None:
    from pipeline.finetune import choose_merge_scale

    base = {"validation": 0.123, "dev": 0.100}
    curve = [{"scale": 0.25, "validation": 0.10, "dev": 0.100},
             {"scale": 0.5, "validation": 0.08, "dev": 0.103},
             {"scale": 0.75, "validation": 0.06, "dev": 0.109},
             {"scale": 1.0, "validation": 0.04, "dev": 0.130}]
    scale, why = choose_merge_scale(curve, base)
    assert scale == 0.5 and "within 0.5 point" in why  # 0.75 costs the real set 0.9 point
    # all within: the largest gain; equal gains: the scale nearer the base
    assert choose_merge_scale([{**r, "dev": 0.1} for r in curve], base)[0] == 1.0
    assert choose_merge_scale([{"scale": 0.5, "validation": 0.05, "dev": 0.1},
                               {"scale": 1.0, "validation": 0.05, "dev": 0.1}], base)[0] == 0.5
    # none within: the least harmful, and said
    scale, why = choose_merge_scale([{**r, "dev": r["dev"] + 0.02} for r in curve], base)
    assert scale == 0.25 and "no scale kept" in why


def test_gains_come_with_a_bootstrap_interval() -> None:
    from pipeline.evaluate import bootstrap_gain

    before = [(3, 20)] * 60
    after = [(1, 20)] * 60
    assert bootstrap_gain(before, after) == (0.1, 0.1, 0.1)  # the same gain on every clip
    mixed = [(2, 20), (0, 20)] * 30  # half the clips better, half the same
    gain, low, high = bootstrap_gain([(2, 20)] * 60, mixed)
    assert gain == pytest.approx(0.05) and 0 < low < gain < high
    gain, low, high = bootstrap_gain([(1, 10), (0, 10)] * 2, [(0, 10), (1, 10)] * 2)
    assert gain == 0 and low < 0 < high  # noise
    with pytest.raises(ValueError):
        bootstrap_gain([(1, 2)], [])


def test_replay_and_distillation_end_to_end_with_the_merge_chosen(
        tmp_path: Path, tiny_ct2: Path, dataset: Path, one_retry_temperature: None) -> None:
    """The tiny model: replay clips pseudo-labelled by the base, batches mixed, the KL
    term on, the merge scale measured at two scales on a dev set and chosen; the card
    records it all."""
    from pipeline.finetune import gain

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    (data / "replay.jsonl").write_text("".join(
        json.dumps({"audio": r["audio"], "text": "", "voice": "x"}) + "\n" for r in rows[:3]),
        encoding="utf-8")
    models = tmp_path / "models"
    shutil.copytree(tiny_ct2, models / "tiny-base")
    settings = Settings(models_dir=models, data_dir=tmp_path / "var", model="tiny-base",
                        beam_size=1, cpu_threads=2)
    dev = sample_subset(tmp_path / "dev.jsonl", 1)
    lines: list[str] = []
    card = run_finetune(data, "tiny-base", models / "tiny" / "v1", settings,
                        TrainConfig(max_steps=2, batch_size=4, logging_steps=1, device="cpu",
                                    encoder=False, replay_share=0.25, kl_weight=0.5),
                        dev=dev, merge_scales=[0.5, 1.0], regression=dev, progress=False,
                        say=lines.append)
    replay = card["training"]["replay"]
    assert (replay["share"], replay["kl_weight"], replay["manifest"]) == (0.25, 0.5,
                                                                          "replay.jsonl")
    # the random tiny model may hear nothing in a clip: those are left out, not trained
    assert 0 <= replay["clips"] <= 3 and card["data"]["replay_clips"] == replay["clips"]
    merge = card["merge"]
    assert [r["scale"] for r in merge["curve"]] == [0.5, 1.0]
    assert merge["scale"] in (0.5, 1.0) and merge["chosen_by"]
    assert merge["dev"]["clips"] == 1 and card["training"]["merge_scale"] == merge["scale"]
    validation = card["cer"]["validation"]
    assert len(validation["before_detail"]["per_clip"]) == 2
    assert validation["gain"] == gain(validation["before_detail"], validation["after_detail"])
    low, high = validation["gain"]["interval"]
    assert low <= validation["gain"]["points"] <= high
    assert any(line.startswith("merge scale") for line in lines)
    with pytest.raises(FinetuneError, match="needs a real-speech development set"):
        run_finetune(data, "tiny-base", models / "tiny" / "v2", settings,
                     TrainConfig(max_steps=1), merge_scales=[0.5], progress=False)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_with_replay_runs_the_kl_term(tmp_path: Path, tiny_ct2: Path, dataset: Path,
                                               method: str) -> None:
    """Replay examples in the batches and the KL term on them, against the adapters
    switched off (LoRA) or a frozen copy of the base (full)."""
    import asr.finetune as ft

    hf = export_hf(tiny_ct2, tmp_path / "hf")
    rows = load_dataset(dataset)
    examples = rows.examples(rows.train)
    replayed = [Example(e.audio, "路灯", None, replay=True) for e in examples[:2]]
    calls: list[float] = []
    real = ft.distillation_kl

    def counted(*args: object, **kw: object) -> object:
        value = real(*args, **kw)  # type: ignore[arg-type]
        calls.append(float(value))
        return value

    ft.distillation_kl = counted  # type: ignore[assignment]
    try:
        result = train(hf, [*replayed, *examples], tmp_path / "work",
                       TrainConfig(method=method, max_steps=2, batch_size=4, logging_steps=1,
                                   device="cpu", learning_rate=1e-3, replay_share=0.5),
                       load_audio=lambda p: decode_audio(p).mono, progress=False)
    finally:
        ft.distillation_kl = real  # type: ignore[assignment]
    assert result.steps == 2 and len(calls) == 2  # every batch held replay rows
    assert calls[0] == pytest.approx(0, abs=1e-5)  # step 1: the student is still the base
    assert all(v >= 0 for v in calls)
