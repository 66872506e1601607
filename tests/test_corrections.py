"""`minyin corrections export`: approved reviews as a speech dataset (issue 6, part 2).

Tickets are seeded on real sample recordings, reviewed and approved through the store
as the review API does it, then exported; the clips are checked against the decoded
recordings, the split against the callers, and the files against contact data."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.audio import SAMPLE_RATE, decode_audio
from pipeline.blobs import BlobStore
from pipeline.corrections import caller_group, export_corrections, side
from pipeline.review import TicketEdit, apply_edit
from pipeline.store import Store, utcnow
from tests.review_seed import SAMPLES, seed_ticket
from tests.service import MINYIN, ROOT, service_env


def review(store: Store, ticket_id: str, action: str, **edit: Any) -> None:
    row = store.get_ticket_row(ticket_id)
    assert row is not None
    body = TicketEdit(revision=row.revision, **edit)
    store.revise_ticket(
        ticket_id, base_revision=row.revision, author="alice", action=action,  # type: ignore[arg-type]
        edit=lambda t: apply_edit(t, body, author="alice", approve=action == "approve",
                                  now=utcnow()))


def read_splits(out: Path) -> dict[str, list[dict[str, Any]]]:
    return {split: [json.loads(line) for line in
                    (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
            for split in ("train", "validation")}


def side_of_ticket(out: Path) -> dict[str, str]:
    return {row["ticket_id"]: split for split, rows in read_splits(out).items() for row in rows}


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32767.0


@pytest.fixture()
def reviewed(tmp_path: Path) -> dict[str, Any]:
    store = Store.from_url(f"sqlite:///{tmp_path / 'minyin.db'}", migrate=True)
    blobs = BlobStore(tmp_path / "audio")
    tickets: dict[str, str] = {}
    # twelve callers; caller 0 phoned three times
    for n in range(12):
        phone = f"1390000{n:04d}"
        for k in range(3 if n == 0 else 1):
            row = seed_ticket(store, blobs, "rubbish" if n % 2 else "light", n=n * 3 + k,
                              phone=phone)
            review(store, row.id, "approve")
            tickets[f"{n}.{k}"] = row.id
    # corrected, discarded and masked segments, approved
    edited = tickets["1.0"]
    review(store, edited, "save", segments=[{"index": 0, "text": "小区门口的垃圾三天没有人清运了"}])
    review(store, edited, "approve", segments=[{"index": 1, "discard": True}])
    masked = tickets["2.0"]
    review(store, masked, "approve", segments=[{"index": 2, "text": "请回电13812345678"}])
    # saved but never approved: not training data
    pending = seed_ticket(store, blobs, "gas", n=90, phone="13911112222")
    review(store, pending.id, "save", fields={"summary": "煤气味"})
    # a two-party call: each party's clip from its own channel
    call = seed_ticket(store, blobs, "call", n=95, phone="13933334444")
    review(store, call.id, "approve")
    return {"store": store, "blobs": blobs, "tickets": tickets, "edited": edited,
            "masked": masked, "pending": pending.id, "call": call.id, "tmp": tmp_path}


def test_export_writes_clips_text_and_a_data_card(reviewed: dict[str, Any]) -> None:
    out = reviewed["tmp"] / "dataset"
    card = export_corrections(reviewed["store"], reviewed["blobs"], out,
                              validation_fraction=0.3)
    rows = read_splits(out)
    every = rows["train"] + rows["validation"]
    assert rows["train"] and rows["validation"]
    assert card.clips == {s: len(r) for s, r in rows.items()}
    assert card.tickets == 15  # 14 voice notes and a call; the pending one is not there
    assert reviewed["pending"] not in {r["ticket_id"] for r in every}
    assert card.skipped == {"discarded": 1, "masked_digits": 1}
    assert card.hours["train"] == pytest.approx(
        sum(r["duration_s"] for r in rows["train"]) / 3600, abs=1e-4)
    assert card.by_source == {"voice_note": len(every) - 2, "hotline": 2}
    assert json.loads((out / "data_card.json").read_text())["clips"] == card.clips

    # the corrected segment: verified text, what the model wrote, marked corrected
    edited = {r["segment"]: r for r in every if r["ticket_id"] == reviewed["edited"]}
    assert set(edited) == {0}  # segment 1 was discarded
    assert edited[0]["text"] == "小区门口的垃圾三天没有人清运了"
    assert edited[0]["machine_text"] == "小区门口的垃圾三天没人清运了"
    assert edited[0]["corrected"] is True and card.corrected_clips == 1
    assert edited[0]["approved_by"] == "alice" and edited[0]["dialect"] == "mandarin"
    assert 2 not in {r["segment"] for r in every if r["ticket_id"] == reviewed["masked"]}

    # each clip is the recording between the segment's times, at 16 kHz
    light = next(r for r in every if r["ticket_id"] == reviewed["tickets"]["0.0"]
                 and r["segment"] == 1)
    source = decode_audio(SAMPLES / "01_streetlight_heping_road.amr").mono
    clip = read_wav(out / light["audio"])
    assert clip.shape[0] == int(9.0 * SAMPLE_RATE) - int(4.0 * SAMPLE_RATE)
    assert np.allclose(clip, source[int(4.0 * SAMPLE_RATE):int(9.0 * SAMPLE_RATE)], atol=1e-3)
    # the call taker's clip comes from the call taker's channel
    agent = next(r for r in every if r["ticket_id"] == reviewed["call"] and r["segment"] == 0)
    assert agent["speaker"] == "agent" and agent["source"] == "hotline"
    tracks = decode_audio(SAMPLES / "07_hotline_call_manhole_8k_stereo.wav",
                          split_channels=True).tracks
    a, b = int(0.2 * SAMPLE_RATE), int(5.3 * SAMPLE_RATE)
    assert np.allclose(read_wav(out / agent["audio"]), tracks[1][a:b], atol=1e-3)

    # no contact data anywhere in the dataset's text files
    for path in [out / "train.jsonl", out / "validation.jsonl", out / "data_card.json"]:
        text = path.read_text(encoding="utf-8")
        assert "1390000" not in text and "client_ref" not in text and "phone" not in text


def test_each_caller_stays_on_one_side(reviewed: dict[str, Any]) -> None:
    out = reviewed["tmp"] / "dataset"
    export_corrections(reviewed["store"], reviewed["blobs"], out, validation_fraction=0.3)
    first = side_of_ticket(out)
    caller0 = {first[reviewed["tickets"][f"0.{k}"]] for k in range(3)}
    assert len(caller0) == 1  # three calls, one side
    # the side depends on the caller alone: the same number in any format
    assert side(caller_group("T1", "+86 139-0000-0000"), 0.3) == side(
        caller_group("T2", "13900000000"), 0.3)
    assert caller_group("T1", None) != caller_group("T2", None)
    # exporting again with more data never moves a caller
    more = seed_ticket(reviewed["store"], reviewed["blobs"], "light", n=99,
                       phone="13900000000")
    review(reviewed["store"], more.id, "approve")
    again = reviewed["tmp"] / "again"
    export_corrections(reviewed["store"], reviewed["blobs"], again, validation_fraction=0.3)
    second = side_of_ticket(again)
    assert all(second[t] == s for t, s in first.items())
    assert second[more.id] == first[reviewed["tickets"]["0.0"]]


def test_refuses_a_non_empty_directory_and_the_cli(reviewed: dict[str, Any]) -> None:
    out = reviewed["tmp"] / "dataset"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_corrections(reviewed["store"], reviewed["blobs"], out)
    export_corrections(reviewed["store"], reviewed["blobs"], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "data_card.json").exists()

    env = service_env(reviewed["tmp"],
                      MINYIN_DATABASE_URL=f"sqlite:///{reviewed['tmp'] / 'minyin.db'}")
    cli = subprocess.run([*MINYIN, "corrections", "export", "--out",
                          str(reviewed["tmp"] / "cli")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    card = json.loads(cli.stdout)
    assert card["tickets"] == 15 and card["format"] == "minyin-corrections/1"
    bad = subprocess.run([*MINYIN, "corrections", "export", "--out", str(out), "--since",
                          "2026-11-01T00:00:00"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "time zone" in bad.stderr
