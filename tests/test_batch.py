"""`minyin batch` on a night of generated hotline calls: 8 kHz stereo (caller and agent
on their own channels, mu-law) and mono (A-law, MP3), three of them broken. Run as the
operator runs it (a subprocess), embedded and distributed (a real `minyin worker`),
killed halfway and run again."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import redis

from pipeline.audio import decode_audio
from pipeline.batch import SourceError, read_source, safe_call_id
from tests.audio_factory import encode, write_mp3
from tests.service import MINYIN, PrivateRedis, Proc, service_env, wait_until
from tests.test_store import _postgres_schema_url

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SR = 16000
VOICES = ["01_streetlight_heping_road.amr", "02_gas_smell_stairwell.m4a",
          "03_fire_exit_ebikes.mp3", "05_garbage_not_collected.wav",
          "09_medical_insurance_question.mp3", "11_square_dance_noise.amr"]
CALLS = 12  # all three kinds: stereo mu-law, mono A-law (7), mono MP3 (3, 11)
BROKEN = {"broken_header.wav": b"RIFF\x10\x00\x00\x00WAVEfmt " + b"\x01" * 30,
          "not_audio.wav": "通话记录导出失败\n".encode() * 40,
          "empty.mp3": b""}


def _speech() -> list[np.ndarray]:
    return [decode_audio(SAMPLES / name, split_channels=False).mono for name in VOICES]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 calls in two folders, plus three broken files."""
    root = tmp_path_factory.mktemp("night")
    speech = _speech()
    for i in range(CALLS):
        voice = speech[i % len(speech)]
        start = int((i * 0.7) % (len(voice) / SR - 6) * SR)  # 4 s of speech, not the tail
        caller = voice[start: start + 4 * SR]
        folder = root / ("line-a" if i % 2 else "line-b")
        folder.mkdir(exist_ok=True)
        if i % 4 == 3:  # a mono recording: one speaker
            mono = caller[np.newaxis, :]
            if i % 8 == 3:
                write_mp3(folder / f"call{i:02d}.mp3", mono, SR)
            else:
                encode(folder / f"call{i:02d}.wav", mono, SR, container="wav",
                       codec="pcm_alaw", out_rate=8000)
            continue
        agent = speech[(i + 3) % len(speech)][: int(2.5 * SR)] * 0.8
        stereo = np.zeros((2, len(agent) + len(caller) + SR // 2), dtype=np.float32)
        stereo[1, : len(agent)] = agent  # the agent answers first
        stereo[0, len(agent) + SR // 2:] = caller
        encode(folder / f"call{i:02d}.wav", stereo, SR, container="wav", codec="pcm_mulaw",
               out_rate=8000)
    for name, data in BROKEN.items():
        (root / "line-a" / name).write_bytes(data)
    return root


def batch(env: dict[str, str], *args: str, timeout: float = 600
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MINYIN, "batch", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1])


def summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def check_outputs(out: Path) -> None:
    rows = summary(out)
    assert len(rows) == CALLS + len(BROKEN)
    assert len({r["call_id"] for r in rows}) == len(rows)  # each call once
    failed = {Path(r["path"]).name: r for r in rows if r["status"] == "failed"}
    assert set(failed) == set(BROKEN), failed
    assert failed["empty.mp3"]["error_code"] == "empty"
    assert failed["not_audio.wav"]["error_code"] == "not_audio"
    done = [r for r in rows if r["status"] == "done"]
    assert len(done) == CALLS
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in dirs] == sorted(r["call_id"] for r in done)
    tickets = set()
    for d in dirs:
        files = sorted(p.name for p in d.iterdir())
        assert files == ["ticket.json", "transcript.json", "transcript.srt",
                         "transcript.txt"], (d, files)  # no leftovers of a killed write
        ticket = json.loads((d / "ticket.json").read_text(encoding="utf-8"))
        tickets.add(ticket["id"])
        transcript = json.loads((d / "transcript.json").read_text(encoding="utf-8"))
        assert transcript["ticket_id"] == ticket["id"] and transcript["segments"]
        text = (d / "transcript.txt").read_text(encoding="utf-8")
        number = int(d.name[-2:])
        if number % 4 == 3:  # mono: one speaker, no labels
            assert ticket["audio"]["channels"] == 1
            assert "来电人" not in text and not any(s["speaker"] for s in transcript["segments"])
        else:
            assert ticket["source"] == "hotline" and ticket["audio"]["sample_rate"] == 8000
            assert text.startswith("话务员：") and "\n来电人：" in text, text
            assert {s["speaker"] for s in transcript["segments"]} == {"agent", "caller"}
            assert "-->" in (d / "transcript.srt").read_text(encoding="utf-8")
    assert len(tickets) == CALLS


def test_killed_halfway_then_run_again(night: Path, tmp_path: Path) -> None:
    env = service_env(tmp_path / "data")
    out = tmp_path / "out"
    proc = Proc([*MINYIN, "batch", str(night), "--out", str(out)], env, tmp_path / "b1.log")
    try:
        # kill it once a third of the calls are written
        wait_until(lambda: len(list(out.glob("*/ticket.json"))) >= CALLS // 3, 400, 0.2,
                   "a third of the calls")
        proc.kill(signal.SIGKILL)
    finally:
        proc.stop()
    partial = len(list(out.glob("*/ticket.json")))
    assert partial < CALLS and not (out / "summary.csv").exists()

    again = batch(env, str(night), "--out", str(out))
    assert again.returncode == 1, again.stderr  # 1: some calls failed (the broken files)
    report = json.loads(again.stdout.strip().splitlines()[-1])
    assert (report["done"], report["failed"], report["skipped"]) == (CALLS, 3, 0)
    # the real-time factor is over what this run transcribed, not what it found done
    assert 0 < report["audio_hours_this_run"] < report["audio_hours"]
    assert "broken_header" in again.stderr
    check_outputs(out)
    first_ids = {p.parent.name: json.loads(p.read_text())["id"]
                 for p in out.glob("*/ticket.json")}

    # a third run does no work and changes nothing
    third = batch(env, str(night), "--out", str(out))
    report = json.loads(third.stdout.strip().splitlines()[-1])
    assert report["done"] == CALLS and report["wall_s"] < 30
    assert report["audio_hours_this_run"] == 0 and report["realtime_factor"] is None
    assert {p.parent.name: json.loads(p.read_text())["id"]
            for p in out.glob("*/ticket.json")} == first_ids
    # the same recordings under another output directory: skipped by content hash
    other = batch(env, str(night), "--out", str(tmp_path / "out2"), "--glob", "call0*.wav")
    report = json.loads(other.stdout.strip().splitlines()[-1])
    assert report["skipped"] > 0 and report["done"] == 0
    # the tickets went to the complaint queue (the embedded sink)
    lines = (tmp_path / "data" / "tickets.jsonl").read_text(encoding="utf-8").splitlines()
    assert {json.loads(x)["ticket_id"] for x in lines} == set(first_ids.values())


def test_distributed_on_the_batch_queue(night: Path, tmp_path: Path) -> None:
    redis_server = PrivateRedis(tmp_path)
    schema = _postgres_schema_url()
    pg_url = next(schema)
    env = service_env(tmp_path / "data", MINYIN_REDIS_URL=redis_server.url,
                      MINYIN_DATABASE_URL=pg_url, MINYIN_REDIS_PREFIX="btest")
    worker = Proc([*MINYIN, "worker", "--queues", "batch"], env, tmp_path / "worker.log")
    try:
        out = tmp_path / "out"
        result = batch(env, str(night), "--out", str(out), "--distributed")
        assert result.returncode == 1, result.stderr + worker.tail()
        check_outputs(out)
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        assert client.xlen("btest:tickets") == CALLS
        client.close()
    finally:
        worker.stop()
        redis_server.stop()
        schema.close()


def test_manifest_with_call_fields(tmp_path: Path) -> None:
    speech = _speech()
    stereo = np.zeros((2, 7 * SR), dtype=np.float32)
    stereo[0, : 3 * SR] = speech[3][: 3 * SR] * 0.8  # channel 0 is the agent here
    stereo[1, int(3.5 * SR):] = speech[1][: int(3.5 * SR)]
    encode(tmp_path / "c1.wav", stereo, SR, container="wav", codec="pcm_mulaw", out_rate=8000)
    manifest = tmp_path / "calls.csv"
    manifest.write_text("path,call_id,caller,agent_id,started_at,caller_channel\n"
                        "c1.wav,2026-11-22/0001,13912345678,A07,2026-11-22T21:03:00,1\n",
                        encoding="utf-8")
    env = service_env(tmp_path / "data")
    out = tmp_path / "out"
    result = batch(env, str(manifest), "--out", str(out), "--include-contact")
    assert result.returncode == 0, result.stderr
    d = out / safe_call_id("2026-11-22/0001")
    ticket = json.loads((d / "ticket.json").read_text(encoding="utf-8"))
    assert ticket["submitter"]["phone"] == "13912345678"
    assert ticket["submitted_at"] == "2026-11-22T13:03:00Z"  # local time is UTC+8
    assert ticket["source"] == "hotline"
    lines = (d / "transcript.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("话务员：") and lines[-1].startswith("来电人：")


def test_read_source_rules(tmp_path: Path, night: Path) -> None:
    items = read_source(night)
    assert len(items) == CALLS + len(BROKEN)
    assert {it.call_id for it in items} >= {"line-a__call01", "line-b__call00"}
    assert len(read_source(night, "call0*.mp3")) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.wav", "call_id": "x"}\n{"path": "b.wav", "call_id": "x"}\n')
    with pytest.raises(SourceError, match="used twice"):
        read_source(bad)
    bad.write_text('{"path": "a.wav", "caller_channel": 2}\n')
    with pytest.raises(SourceError, match="caller_channel"):
        read_source(bad)
    bad.write_text("{not json\n")
    with pytest.raises(SourceError, match=r"bad\.jsonl:1"):
        read_source(bad)
    assert safe_call_id("../../etc/passwd") == "etc_passwd"
