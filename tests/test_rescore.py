"""N-best rescoring, the unsure mask, phonetic correction and number-canonical CER, on
real sentences with small LMs built here (no Whisper model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr.correct import CorrectionOptions, PhoneticCorrector
from asr.lm import NgramCounter, load_lm, write_lm_dir
from asr.normalize import canonical_numbers
from asr.rescore import (
    LanguageTools,
    RescoreWeights,
    load_language_tools,
    rescore,
    unsure_mask,
)
from asr.types import Hypothesis, Segment
from pipeline.evaluate import best_of_beam, char_errors

# complaint sentences as a county's past work orders would have them
HISTORY = [
    "小区门口的护栏倒了好几天了没人修",
    "路边的护栏被车撞坏了希望尽快修好",
    "晚上打电话到社区没有值班人员接听",
    "社区值班人员态度很差",
    "垃圾站旁边苍蝇蚊子特别多",
    "夏天苍蝇蚊子到处都是",
    "楼道里有一股煤气味很危险",
    "闻到一股煤气味赶紧打电话",
    "我想回县城看病但是没有公交车",
    "从村里到县城的路坏了",
    "窨井盖丢了很危险",
    "路口的窨井盖破损了",
]
WORDS = ["护栏", "护兰", "值班", "直班", "苍蝇", "蚊子", "文字", "煤气", "没气", "县城",
         "现成", "窨井盖", "小区", "门口", "社区", "垃圾站"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    counter = NgramCounter(order=3)
    for text in HISTORY:
        counter.add_text(text, 3.0)
    for word in WORDS:
        counter.add_text(word, 1.0)
    out = tmp_path_factory.mktemp("lm") / "tiny"
    write_lm_dir(out, counter, card={"name": "tiny", "version": "t1"},
                 lexicon=[(w, 1.0, "complaint") for w in WORDS])
    return out


def test_the_lm_preferred_hypothesis_wins_on_a_built_nbest(lm_dir):
    lm = load_lm(lm_dir)
    # Whisper's beam: the wrong text first (better acoustic score), the right one second
    hyps = [Hypothesis("小区门口的护兰倒了", -4.0, 9),
            Hypothesis("小区门口的护栏倒了", -4.6, 9),
            Hypothesis("小区门口的护栏倒", -4.4, 8)]
    best, scores = rescore(hyps, lm, RescoreWeights(alpha=0.5, beta=0.5))
    assert best == 1 and len(scores) == 3
    # with no LM weight the acoustic order stands
    assert rescore(hyps, lm, RescoreWeights(alpha=0.0, beta=0.0))[0] == 0


def test_rescoring_a_segment_flags_it_and_keeps_the_first_when_it_is_best(lm_dir):
    tools = load_language_tools(lm_dir)
    seg = Segment(0, 2, "社区没有直班人员", raw_text="社区没有直班人员", hypotheses=[
        Hypothesis("社区没有直班人员", -3.0, 8), Hypothesis("社区没有值班人员", -3.3, 8)])
    tools.rescore(seg)
    assert seg.text == "社区没有值班人员" and "lm_rescored" in seg.flags
    same = Segment(0, 2, "社区值班人员", hypotheses=[Hypothesis("社区值班人员", -1.0, 6),
                                                   Hypothesis("社区值班人", -1.5, 5)])
    tools.rescore(same)
    assert same.text == "社区值班人员" and same.flags == []


def test_no_language_model_changes_nothing():
    seg = Segment(0, 1, "护兰", hypotheses=[Hypothesis("护兰", -1, 2), Hypothesis("护栏", -2, 2)])
    tools = LanguageTools()
    tools.rescore(seg)
    tools.correct(seg, lambda t: t)
    assert seg.text == "护兰" and seg.flags == []


def test_unsure_mask_marks_where_the_beam_disagrees():
    mask = unsure_mask("门口的护兰倒了", ["门口的护栏倒了", "门口的护兰倒了"])
    assert [i for i, m in enumerate(mask) if m] == [4]
    assert not any(unsure_mask("值班", ["值班", "值班"]))
    # an insertion in another hypothesis marks its neighbours
    assert unsure_mask("苍蝇蚊子", ["苍蝇的蚊子"]) == [False, True, True, False]


@pytest.mark.parametrize(("heard", "right"), [
    ("垃圾站旁边苍营文字特别多", "垃圾站旁边苍蝇蚊子特别多"),
    ("楼道里有一股没气味很危险", "楼道里有一股煤气味很危险"),
    ("小区门口的护兰倒了", "小区门口的护栏倒了"),
    ("晚上没有直班人员", "晚上没有值班人员"),
])
def test_phonetic_correction_puts_sound_alikes_right(lm_dir, heard, right):
    corrector = PhoneticCorrector(load_lm(lm_dir), WORDS, CorrectionOptions(2.0, 0.5))
    text, corrections = corrector.correct(heard)
    assert text == right
    assert all(c.gain > 2.0 for c in corrections)


def test_correction_leaves_sure_text_and_right_text_alone(lm_dir):
    corrector = PhoneticCorrector(load_lm(lm_dir), WORDS, CorrectionOptions(2.0, 0.5))
    # right already: nothing to gain
    assert corrector.correct("小区门口的护栏倒了")[1] == []
    # the beam agreed on every character: nothing may change
    heard = "小区门口的护兰倒了"
    assert corrector.correct(heard, [False] * len(heard)) == (heard, [])
    # unsure only at 兰: the word covering it may change
    unsure = [i == 6 for i in range(len(heard))]
    assert corrector.correct(heard, unsure)[0] == "小区门口的护栏倒了"
    # a high threshold turns it off
    strict = PhoneticCorrector(load_lm(lm_dir), WORDS, CorrectionOptions(50.0, 5.0))
    assert strict.correct(heard)[1] == []


def test_segment_correction_goes_by_window_confidence(lm_dir):
    tools = load_language_tools(lm_dir)
    tools.unsure_below = -0.5
    # a confident window whose beam agreed: left alone
    sure = Segment(0, 1, "晚上没有直班人员。", avg_logprob=-0.1,
                   hypotheses=[Hypothesis("晚上没有直班人员", -1, 8)])
    tools.correct(sure, lambda t: t + "。")
    assert sure.text == "晚上没有直班人员。"
    # a doubtful window: corrected anywhere, and flagged
    doubtful = Segment(0, 1, "晚上没有直班人员。", avg_logprob=-0.9,
                       hypotheses=[Hypothesis("晚上没有直班人员", -1, 8)])
    tools.correct(doubtful, lambda t: t + "。")
    assert doubtful.text == "晚上没有值班人员。" and "phonetic_corrected" in doubtful.flags


def test_fitted_weights_come_from_the_card(lm_dir, tmp_path):
    assert RescoreWeights.from_card({"rescoring": None}) is None
    assert RescoreWeights.from_card({"rescoring": {"alpha": 0.3, "beta": 1.5}}) == \
        RescoreWeights(0.3, 1.5)
    assert CorrectionOptions.from_card({"correction": {"threshold": 6, "per_char": 2}}) == \
        CorrectionOptions(6.0, 2.0)


@pytest.mark.parametrize(("ref", "hyp", "raw", "canonical"), [
    ("十一、十二、十三", "11、12、13", 6, 0),
    ("一百五十元", "150元", 4, 0),
    ("3号楼2单元", "三号楼二单元", 2, 0),
    ("电话13812345678", "电话幺三八一二三四五六七八", 11, 0),
    ("二〇二六年", "2026年", 4, 0),
    ("一样的问题", "依样的问题", 1, 1),  # not a number: an error either way
])
def test_number_canonical_cer(ref, hyp, raw, canonical):
    assert char_errors(ref, hyp)[0] == raw
    assert char_errors(ref, hyp, numbers=True)[0] == canonical


def test_canonical_numbers_keeps_what_is_not_one_number():
    assert canonical_numbers("万一") == "万1"
    assert canonical_numbers("１２号") == "12号"
    assert canonical_numbers("没有数字") == "没有数字"


def test_best_of_beam_picks_per_window():
    ref = "路灯坏了窨井盖丢了"
    windows = [["路登坏了", "路灯坏了"], ["寻寻盖丢了", "窨井盖丢了", "窨井丢了"]]
    assert best_of_beam(ref, windows) == ref
    assert best_of_beam(ref, [["路登坏了"], ["窨井盖丢了"]]) == "路登坏了窨井盖丢了"


def test_a_missing_lm_is_an_error_unless_it_is_the_unbuilt_default(tmp_path):
    from asr.lm import LMError
    from pipeline.config import Settings
    from pipeline.process import load_lm_tools

    settings = Settings(models_dir=tmp_path)
    assert load_lm_tools("none", settings).rescorer is None
    assert load_lm_tools("default", settings).rescorer is None  # setup not run: a warning
    with pytest.raises(LMError, match="county"):
        load_lm_tools("lm/county", settings)


@pytest.mark.slow
def test_the_pipeline_rescores_with_the_lm_and_records_it(tmp_path):
    """A real sample through the real model with a small LM, then with none."""
    from pipeline.config import Settings
    from pipeline.process import VoicePipeline, ticket_from_outcome
    from tests.conftest import SAMPLES

    models = tmp_path / "models"
    (models / "lm").mkdir(parents=True)
    counter = NgramCounter(order=3)
    for text in HISTORY:
        counter.add_text(text, 3.0)
    write_lm_dir(models / "lm" / "county", counter, card={"name": "county", "version": "v7"},
                 lexicon=[(w, 1.0, "complaint") for w in WORDS])
    real = Settings().models_dir
    (models / "whisper-base").symlink_to(real / "whisper-base")
    pipe = VoicePipeline(Settings(models_dir=models, lm="county", cpu_threads=2))
    sample = SAMPLES / "01_streetlight_heping_road.amr"
    outcome = pipe.process(sample)
    segments = outcome.transcript.segments
    assert segments and all(len(s.hypotheses) > 1 for s in segments)
    ticket = ticket_from_outcome(outcome)
    assert ticket.language_model is not None
    assert (ticket.language_model.name, ticket.language_model.version) == ("county", "v7")

    assert pipe.use_lm("none") and not pipe.use_lm("none")
    plain = pipe.process(sample)
    assert all(not s.hypotheses for s in plain.transcript.segments)
    assert ticket_from_outcome(plain).language_model is None


def test_rescored_and_corrected_segments_are_no_reason_for_review():
    from asr.types import Transcript
    from pipeline.tickets import TicketContext, build_ticket

    seg = Segment(0.0, 3.0, "小区门口的护栏倒了好几天了。", avg_logprob=-0.2,
                  flags=["lm_rescored", "phonetic_corrected"])
    transcript = Transcript(text=seg.text, segments=[seg], language="zh",
                            language_probability=1.0, duration=3.0, model="whisper-base",
                            model_version="1", lm="default", lm_version="v1")
    ticket = build_ticket(transcript, TicketContext(audio_sha256="0" * 64,
                                                    address="浦阳街道和平路"))
    assert ticket.transcript.segments[0].flags == ["asr_lm_rescored",
                                                   "asr_phonetic_corrected"]
    assert not any("rescored" in f or "corrected" in f for f in ticket.review.flags)
    assert ticket.language_model.name == "default"
