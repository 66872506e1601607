"""Dialect detection: the variety and readability of each segment and transcript, the
ticket and queue event of speech the model cannot read, and the trained detector."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from asr.dialect import (
    VARIETIES,
    RuleDetector,
    WindowSignals,
    fit_detector,
    judge_transcript,
    load_detector,
    normalise_variety,
    text_cues,
)
from asr.types import Segment, Transcript
from pipeline.sinks import TicketEvent
from pipeline.ticket_schema import Ticket, Variety
from pipeline.tickets import TicketContext, build_ticket
from tests.audio_factory import write_wav
from tests.conftest import ROOT, SAMPLES

SOUTHERN = ROOT.parent / "shared" / "audio-southern-dialects"
CLEAR = {"avg_logprob": -0.2, "compression_ratio": 1.3, "no_speech_prob": 0.01}


def test_the_schema_names_every_variety() -> None:
    assert set(get_args(Variety)) == set(VARIETIES)
    assert normalise_variety("yue") == "cantonese" and normalise_variety("minnan") == "min"
    assert normalise_variety("klingon") == "other" and normalise_variety(None) == "unknown"


def test_rules_judge_from_whisper_signals_and_the_text() -> None:
    rules = RuleDetector()
    mandarin = rules.judge("我家门口的路灯坏了", signals=WindowSignals({"zh": 0.98}), **CLEAR)
    assert mandarin.variety == "mandarin" and mandarin.readable
    # Whisper is unsure this is Chinese at all
    odd = rules.judge("好好互惊午下咪喝", signals=WindowSignals({"zh": 0.3, "vi": 0.4}),
                      **CLEAR)
    assert odd.variety == "unknown" and not odd.readable
    # in a Wu county, speech that is not Mandarin is most likely Wu
    wu = RuleDetector(expected="wu").judge("好好互惊", signals=WindowSignals({"zh": 0.3}),
                                           **CLEAR)
    assert wu.variety == "wu" and not wu.readable
    # decoded with little belief: not relied on, whatever the language probability
    low = rules.judge("可心胜而相对来讲", signals=WindowSignals({"zh": 0.95}),
                      avg_logprob=-1.3, compression_ratio=1.2, no_speech_prob=0.0)
    assert not low.readable
    # Cantonese written as Cantonese
    assert text_cues("佢哋喺度睇緊")["cantonese"] >= 2
    yue = rules.judge("佢哋喺度睇緊嘢", signals=WindowSignals({"zh": 0.99}), **CLEAR)
    assert yue.variety == "cantonese" and not yue.readable
    # words Mandarin also uses do not make it a dialect (阿拉伯, 安逸, 要得到)
    plain = rules.judge("阿拉伯餐厅很安逸，要得到许可", signals=WindowSignals({"zh": 0.99}),
                        **CLEAR)
    assert plain.readable


def _seg(start: float, end: float, variety: str, readable: bool, speaker: str | None = None,
         text: str = "文字") -> Segment:
    return Segment(start=start, end=end, text=text, avg_logprob=-0.3, speaker=speaker,
                   variety=variety, variety_confidence=0.8, readable=readable)


def test_a_transcript_is_readable_only_when_every_segment_is() -> None:
    assert judge_transcript([_seg(0, 5, "mandarin", True)]).readable
    mixed = judge_transcript([_seg(0, 8, "mandarin", True), _seg(8, 10, "wu", False)])
    assert not mixed.readable and mixed.variety == "wu"
    assert judge_transcript([_seg(0, 3, "wu", False), _seg(3, 9, "min", False)]).variety == "min"
    assert not judge_transcript([]).readable


def _transcript(segments: list[Segment], variety: str, readable: bool) -> Transcript:
    return Transcript(text="".join(s.text for s in segments), segments=segments,
                      language="zh", language_probability=1.0, duration=10.0,
                      dialect="pujiang_wu", model="whisper-base", variety=variety,
                      variety_confidence=0.7, readable=readable, detector="dialect-rules",
                      detector_version="1")


def _context() -> TicketContext:
    return TicketContext(audio_sha256=hashlib.sha256(b"wu").hexdigest(), duration_s=10.0,
                         media_url="/v1/tickets/T1/audio")


def test_an_unreadable_ticket_says_so_everywhere() -> None:
    segs = [_seg(0, 6, "wu", False, text="家隔个机会奉奉响应隔一个老王弟已经洗他了")]
    ticket = build_ticket(_transcript(segs, "wu", False), _context(), classifier=False)
    assert ticket.transcript.variety == "wu" and ticket.transcript.readable is False
    assert ticket.transcript.segments[0].readable is False
    assert ticket.transcript.detector is not None
    assert ticket.transcript.detector.name == "dialect-rules"
    assert ticket.review.flags[0] == "dialect:wu" and ticket.review.needed
    assert ticket.summary == "方言语音（吴语），待人工听写"
    Ticket.model_validate_json(ticket.model_dump_json())  # the schema takes the flag

    event = TicketEvent.for_ticket(ticket)
    assert event.readable is False and event.audio_url == "/v1/tickets/T1/audio"
    body = json.loads(event.body(include_contact=False))
    assert body["readable"] is False and body["audio_url"] == "/v1/tickets/T1/audio"

    ok = build_ticket(_transcript([_seg(0, 6, "mandarin", True,
                                        text="和平路的路灯坏了一个星期了请尽快修")],
                                  "mandarin", True), _context(), classifier=False)
    assert ok.transcript.readable and not any(f.startswith("dialect:") for f in ok.review.flags)
    assert "待人工听写" not in ok.summary
    assert TicketEvent.for_ticket(ok).readable is True


def test_fit_and_load_a_detector(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for variety, centre in (("mandarin", 0.0), ("wu", 3.0)):
        for _ in range(30):
            emb = rng.normal(centre, 1.0, 16).astype(np.float32)
            rows.append((WindowSignals({"zh": 0.9}, emb), variety))
    card = fit_detector(rows, tmp_path / "det", name="t", version="1", source={})
    assert card["classes"] == ["mandarin", "wu"] and card["trained_on"]["windows"] == 60
    det = load_detector(tmp_path / "det")
    wu = det.judge("文字", signals=WindowSignals({"zh": 0.9}, np.full(16, 3.0, np.float32)),
                   **CLEAR)
    assert wu.variety == "wu" and not wu.readable
    mandarin = det.judge("文字", signals=WindowSignals({"zh": 0.9}, np.zeros(16, np.float32)),
                         **CLEAR)
    assert mandarin.variety == "mandarin" and mandarin.readable
    with pytest.raises(ValueError, match="two varieties"):
        fit_detector(rows[:30], tmp_path / "one", name="t", version="1", source={})


def _wu_clip() -> Path:
    manifest = SOUTHERN / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"{manifest} is not here (shared/ sits beside the repository)")
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return SOUTHERN / next(r["audio"] for r in rows if r["lang"] == "wu"
                           and r["audio"].startswith("Commentary"))


def test_real_speech_single_and_two_channel(pipeline, tmp_path: Path) -> None:
    mandarin = pipeline.process(SAMPLES / "01_streetlight_heping_road.amr").transcript
    assert mandarin.readable and mandarin.variety == "mandarin"
    assert all(s.readable for s in mandarin.segments) and mandarin.detector == "dialect-rules"

    wu_path = _wu_clip()
    wu = pipeline.process(wu_path).transcript
    assert not wu.readable and wu.variety != "mandarin"

    # a call: the caller (channel 0) speaks Wu, the call taker (channel 1) Mandarin
    caller = pipeline.decode(wu_path).mono
    agent = pipeline.decode(SAMPLES / "05_garbage_not_collected.wav").mono
    n = len(caller) + len(agent) + 16000
    stereo = np.zeros((n, 2), np.float32)
    stereo[: len(caller), 0] = caller
    stereo[len(caller) + 16000:, 1] = agent
    call = tmp_path / "call.wav"
    write_wav(call, np.ascontiguousarray(stereo.T), 16000)
    t = pipeline.process(call, roles={0: "caller", 1: "agent"}).transcript
    by_speaker = {s.speaker: s for s in t.segments}
    assert by_speaker["agent"].readable and by_speaker["agent"].variety == "mandarin"
    assert not by_speaker["caller"].readable
    assert not t.readable and t.variety != "mandarin"  # judged on the caller's speech


def test_dialect_train_command(tmp_path: Path) -> None:
    """`minyin dialect train --from` on a small manifest: a card, a registered model
    that the detect command then uses."""
    wu = _wu_clip()
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"audio": str(SAMPLES / name), "lang": "mandarin"} for name in (
        "01_streetlight_heping_road.amr", "05_garbage_not_collected.wav")]
    rows += [{"audio": str(wu), "lang": "wu"},
             {"audio": str(SOUTHERN / "m_001.mp3"), "lang": "minnan"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "MINYIN_DATA_DIR": str(tmp_path / "var"),
           "MINYIN_MODELS_DIR": str(tmp_path / "models"), "HOME": str(tmp_path)}
    # the Whisper model stays where setup put it
    env["MINYIN_MODEL"] = str(ROOT / "models" / "whisper-base")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "api.cli", "dialect", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)

    done = run("train", "--from", str(manifest), "--name", "county", "--version", "1",
               "--promote")
    assert done.returncode == 0, done.stderr
    card = json.loads(done.stdout)
    assert card["classes"] == ["mandarin", "min", "wu"] and card.get("promoted")
    assert (tmp_path / "models" / "detector" / "county" / "model.pkl").is_file()
    listed = [json.loads(line) for line in run("list").stdout.splitlines()]
    assert any(x["spec"] == "detector/county" and x["current"] for x in listed), listed

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "nowhere.wav", "lang": "wu"}\n', encoding="utf-8")
    done = run("train", "--from", str(bad))
    assert done.returncode == 2 and "bad.jsonl:1" in done.stderr and "nowhere.wav" in done.stderr


def test_a_dialect_reviewer_writes_what_was_said_and_its_meaning(tmp_path: Path) -> None:
    """The Wu text and the Mandarin meaning per segment: the ticket is rebuilt from the
    Mandarin, both go to corrections, and the export holds both with the variety."""
    from pipeline.blobs import BlobStore
    from pipeline.corrections import export_corrections
    from pipeline.store import Store
    from tests.review_seed import seed_ticket
    from tests.test_corrections import read_splits, review

    store = Store.from_url(f"sqlite:///{tmp_path / 'minyin.db'}", migrate=True)
    blobs = BlobStore(tmp_path / "audio")
    row = seed_ticket(store, blobs, "wu")
    before = store.get_ticket_row(row.id)
    assert before is not None
    doc = before.document
    assert doc["summary"] == "方言语音（吴语），待人工听写"
    assert "dialect:wu" in doc["review"]["flags"]

    # an approval without anyone's text: the machine's text is not training data
    review(store, row.id, "approve")
    out = tmp_path / "none"
    card = export_corrections(store, blobs, out)
    assert read_splits(out) == {"train": [], "validation": []}
    assert card.skipped == {"unreadable": 2}

    review(store, row.id, "approve", fields={"variety": "wu"}, segments=[
        {"index": 0, "dialect_text": "我屋里门口个路灯", "text": "我家门口的路灯"},
        {"index": 1, "dialect_text": "坏特一个礼拜了，夜到墨墨黑",
         "text": "坏了一个星期了，晚上很黑，请尽快维修"}])
    after = store.get_ticket_row(row.id)
    assert after is not None
    doc = after.document
    t = doc["transcript"]
    assert t["readable"] and t["variety"] == "wu" and t["variety_confirmed_by"] == "alice"
    assert [s["dialect_text"] for s in t["segments"]] == ["我屋里门口个路灯",
                                                         "坏特一个礼拜了，夜到墨墨黑"]
    assert t["text"].startswith("我家门口的路灯")
    # built again from the Mandarin
    assert "路灯" in doc["summary"] and "待人工听写" not in doc["summary"]
    assert "路灯" in doc["category"]["label"] or "照明" in "".join(doc["category"]["path"])
    assert not any(f.startswith("dialect:") for f in doc["review"]["flags"])
    entry = store.ticket_history(row.id)[0]
    targets = {c.target for c in entry.corrections}
    assert {"0", "1", "segments.0.dialect_text", "segments.1.dialect_text"} <= targets

    out = tmp_path / "export"
    card = export_corrections(store, blobs, out, validation_fraction=0.0)
    clips = read_splits(out)["train"]
    assert [c["dialect_text"] for c in clips] == ["我屋里门口个路灯", "坏特一个礼拜了，夜到墨墨黑"]
    assert clips[1]["text"] == "坏了一个星期了，晚上很黑，请尽快维修"
    assert all(c["variety"] == "wu" and c["variety_confirmed"] for c in clips)
    assert card.by_variety == {"wu": 2} and card.dialect_text_clips == 2


def test_the_detected_variety_picks_the_deployments_profile(pipeline) -> None:
    from pipeline.config import Settings
    from pipeline.process import VoicePipeline

    pipe = VoicePipeline(Settings(dialect_profiles="mandarin,pujiang_wu"),
                         transcriber=pipeline.transcriber)
    wu = pipe.process(_wu_clip())
    assert wu.transcript.dialect == "pujiang_wu" and "profile_auto" in wu.transcript.flags
    assert wu.transcript.variety == "wu" and not wu.transcript.readable
    # Mandarin speech keeps the default profile, in one pass
    plain = pipe.process(SAMPLES / "01_streetlight_heping_road.amr")
    assert plain.transcript.dialect == "mandarin" and "profile_auto" not in plain.transcript.flags
    # an upload that names its profile is not second-guessed
    named = pipe.process(_wu_clip(), dialect="mandarin")
    assert named.transcript.dialect == "mandarin" and "profile_auto" not in named.transcript.flags


def test_confirmed_varieties_are_training_data(tmp_path: Path) -> None:
    """--from-store: the recordings whose variety a person settled (confirmed, or
    approved as readable Mandarin); not the ones nobody looked at."""
    from pipeline.blobs import BlobStore
    from pipeline.dialect import confirmed_varieties, from_store
    from pipeline.store import Store
    from tests.review_seed import seed_ticket
    from tests.test_corrections import review

    store = Store.from_url(f"sqlite:///{tmp_path / 'minyin.db'}", migrate=True)
    blobs = BlobStore(tmp_path / "audio")
    wu = seed_ticket(store, blobs, "wu", n=0)
    light = seed_ticket(store, blobs, "light", n=1, phone="13900002222")
    seed_ticket(store, blobs, "rubbish", n=2, phone="13900003333")  # never reviewed
    assert confirmed_varieties(store) == []
    review(store, wu.id, "save", fields={"variety": "min"})  # saved: not yet settled
    review(store, wu.id, "approve", fields={"variety": "wu"})
    review(store, light.id, "approve")
    found = {(tid, v) for tid, _sha, v in confirmed_varieties(store)}
    assert found == {(wu.id, "wu"), (light.id, "mandarin")}
    items = from_store(store, blobs)
    assert {i.variety for i in items} == {"wu", "mandarin"}
    assert all(i.audio.is_file() for i in items)
