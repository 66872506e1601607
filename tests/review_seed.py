"""Tickets for the review tests without running the model: a stored recording (a real
sample), a done job and a ticket built by the real ticket builder from a transcript
whose segments fall on that recording."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from asr.types import Segment, Transcript
from pipeline.blobs import BlobStore
from pipeline.store import Store, TicketRow
from pipeline.tickets import TicketContext, build_ticket

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
T0 = datetime(2026, 11, 23, 1, 0, tzinfo=timezone.utc)

# (sample file, segment texts with (start, end, avg_logprob)); one has a doubtful segment
NOTES = {
    "light": ("01_streetlight_heping_road.amr",
              [(0.0, 4.0, "我要反映一下和平路的路灯", -0.15),
               (4.0, 9.0, "已经坏了一个星期了晚上很黑", -1.4),
               (9.0, 15.0, "老人走路很不方便请尽快来修", -0.3)]),
    "rubbish": ("05_garbage_not_collected.wav",
                [(0.0, 3.0, "小区门口的垃圾三天没人清运了", -0.2),
                 (3.0, 6.0, "臭得很希望尽快处理", -0.25)]),
    "gas": ("01_streetlight_heping_road.amr",
            [(0.0, 5.0, "楼道里闻到很大的煤气味", -0.3),
             (5.0, 10.0, "燃气泄漏了快来人", -0.9)]),
    # Wu speech as Whisper base writes it: nothing of it can be relied on
    "wu": ("01_streetlight_heping_road.amr",
           [(0.0, 5.0, "家隔个机会奉奉响应隔一个老王弟", -1.1),
            (5.0, 12.0, "已经洗他了夜到墨墨黑", -1.2)]),
    # a two-party call: (start, end, text, avg_logprob, channel)
    "call": ("07_hotline_call_manhole_8k_stereo.wav",
             [(0.2, 5.3, "您好这里是一二三四五热线请问有什么可以帮您", -0.3, 1),
              (4.8, 11.4, "你好浦阳街道通江路菜市场门口有个井盖不见了", -0.4, 0)]),
}


def seed_ticket(store: Store, blobs: BlobStore, kind: str, *, n: int = 0,
                created: datetime | None = None, phone: str = "13912345678") -> TicketRow:
    """A done job and its ticket (revision 1, status new)."""
    name, parts = NOTES[kind]
    sha = blobs.put(SAMPLES / name)
    created = created or T0 + timedelta(minutes=n)
    job, _ = store.create_job(audio_sha256=sha, client_ref=f"seed-{kind}-{uuid.uuid4().hex[:12]}",
                              audio_filename=name, now=created, dedup_window=None,
                              phone=phone)
    call = kind == "call"
    segments = [Segment(p[0], p[1], p[2], avg_logprob=p[3], no_speech_prob=0.02,
                        channel=p[4] if call else 0,
                        speaker=("caller" if p[4] == 0 else "agent") if call else None)
                for p in parts]
    transcript = Transcript(text="".join(p[2] for p in parts), segments=segments,
                            language="zh", language_probability=0.99,
                            duration=parts[-1][1], model="whisper-base", model_version="1")
    if kind == "wu":  # as the dialect detector judges it
        for seg in segments:
            seg.variety, seg.variety_confidence, seg.readable = "wu", 0.8, False
        transcript.variety, transcript.variety_confidence, transcript.readable = "wu", 0.8, False
        transcript.dialect, transcript.detector, transcript.detector_version = (
            "pujiang_wu", "dialect-rules", "1")
    context = TicketContext(audio_sha256=sha, phone=phone, client_ref=job.client_ref,
                            ticket_id=job.planned_ticket_id, source="hotline" if call
                            else "voice_note", caller_channel=0 if call else None,
                            media_url=f"/v1/tickets/{job.planned_ticket_id}/audio")
    ticket = build_ticket(transcript, context, review_confidence_below=0.45, now=created)
    claimed = store.claim_job(job.id, worker="seed")
    assert claimed is not None
    return store.finish_job(job.id, ticket, audio_seconds=parts[-1][1], now=created)
