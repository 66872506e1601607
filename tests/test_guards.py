"""Whisper's known failures on Chinese audio, caught and handled."""

import numpy as np
import pytest

from asr import guards
from asr.dialect import RuleDetector
from asr.rescore import LanguageTools
from asr.transcriber import TranscribeOptions, Transcriber
from asr.types import Segment


@pytest.mark.parametrize("text", [
    "字幕由Amara.org社群提供",
    "請不吝點贊訂閱轉發打賞支持明鏡與點點欄目",
    "谢谢观看",
    "中文字幕志愿者",
    "优优独播剧场——YoYo Television Series Exclusive",
])
def test_subtitle_credits_are_hallucinations(text):
    assert guards.is_hallucination(text)


@pytest.mark.parametrize("text", [
    "我家楼下的路灯坏了一个多星期了，谢谢。",
    "我想咨询一下医保怎么报销",
    "小区门口的垃圾好几天没人收了",
])
def test_real_complaints_are_not_hallucinations(text):
    assert not guards.is_hallucination(text, no_speech_prob=0.05, avg_logprob=-0.3)


def test_filler_only_dropped_when_audio_is_doubtful():
    assert guards.is_hallucination("谢谢", no_speech_prob=0.8, avg_logprob=-1.2)
    assert not guards.is_hallucination("谢谢", no_speech_prob=0.05, avg_logprob=-0.2)


def test_loops_found_and_trimmed():
    looped = "我要投诉" * 8
    assert guards.is_looping(looped)
    assert guards.trim_loops("楼上" + looped + "太吵了") == "楼上我要投诉太吵了"
    assert guards.trim_loops("好的好的好的好的好的好的") == "好的"
    assert not guards.is_looping("小区门口的路灯坏了一个星期了没人修，晚上走路很危险")
    # laughter and ellipses are not loops
    assert not guards.is_looping("哈哈哈哈哈")


@pytest.mark.parametrize(("text", "wrong"), [
    ("Thank you for watching!", True),
    ("ご視聴ありがとうございました", True),
    ("시청해 주셔서 감사합니다", True),
    ("我住在A栋3单元", False),
    ("WiFi信号不好，电信的宽带老是断", False),
])
def test_wrong_language(text, wrong):
    assert guards.is_wrong_language(text, "zh") is wrong


class ScriptedTranscriber(Transcriber):
    """A Transcriber whose model answers are scripted: exercises the guard logic."""

    def __init__(self, batched_text, sequential_text, **seg_kwargs):
        self.options = TranscribeOptions()
        self.model_name, self.model_version = "scripted", "0"
        self.language = LanguageTools()  # no LM: the guards alone
        self.detector = RuleDetector()
        self.batched_text, self.sequential_text = batched_text, sequential_text
        self.seg_kwargs = seg_kwargs
        self.retries = 0

    def _seg(self, text, start, end):
        kwargs = {"avg_logprob": -0.3, "no_speech_prob": 0.05} | self.seg_kwargs
        return Segment(start, end, text, compression_ratio=guards.compression_ratio(text),
                       **kwargs)

    def _batched(self, clips, opts):
        return ([[self._seg(self.batched_text, 0.0, len(c) / 16000)] for c in clips],
                [None for _ in clips])

    def _sequential(self, clip, opts):
        self.retries += 1
        end = len(clip) / 16000
        return [self._seg(self.sequential_text, 0.0, end)] if self.sequential_text else []


AUDIO = np.zeros(16000 * 10, dtype=np.float32)


def test_loop_is_retried_and_retry_wins():
    tr = ScriptedTranscriber("路灯坏了" * 10, "路灯坏了一个星期")
    (result,) = tr.transcribe(AUDIO, [[(0.0, 8.0)]])
    assert tr.retries == 1
    assert [s.text for s in result.segments] == ["路灯坏了一个星期。"]
    assert "retried" in result.flags


def test_loop_that_survives_retry_is_trimmed_and_flagged():
    tr = ScriptedTranscriber("路灯坏了" * 10, "路灯坏了" * 9)
    (result,) = tr.transcribe(AUDIO, [[(0.0, 8.0)]])
    assert [s.text for s in result.segments] == ["路灯坏了。"]
    assert "repetition_trimmed" in result.flags
    assert "repetition_trimmed" in result.segments[0].flags


def test_subtitle_credit_dropped_without_retry():
    tr = ScriptedTranscriber("字幕由Amara.org社群提供", "")
    (result,) = tr.transcribe(AUDIO, [[(0.0, 5.0)]])
    assert result.segments == []
    assert result.flags == ["dropped_hallucination"]


def test_text_on_silence_dropped():
    tr = ScriptedTranscriber("我们下次再聊", "", no_speech_prob=0.9, avg_logprob=-1.4)
    (result,) = tr.transcribe(AUDIO, [[(0.0, 5.0)]])
    assert result.segments == []
    assert "dropped_no_speech" in result.flags


def test_wrong_language_retried_then_dropped():
    tr = ScriptedTranscriber("Thank you for watching", "Please subscribe to my channel")
    (result,) = tr.transcribe(AUDIO, [[(0.0, 5.0)]])
    assert tr.retries == 1
    assert result.segments == []
    assert "dropped_wrong_language" in result.flags


def test_segment_times_map_back_through_packed_pieces():
    tr = ScriptedTranscriber("路灯坏了", "")
    (result,) = tr.transcribe(AUDIO, [[(1.0, 2.5), (4.0, 6.0)]])
    (seg,) = result.segments
    assert (seg.start, seg.end) == (1.0, 6.0)


def test_traditional_output_normalised():
    tr = ScriptedTranscriber("樓道裡有煤氣味,請儘快處理", "")
    (result,) = tr.transcribe(AUDIO, [[(0.0, 5.0)]])
    assert result.segments[0].text == "楼道里有煤气味，请尽快处理。"
    assert result.segments[0].raw_text == "樓道裡有煤氣味,請儘快處理"
