import pytest

from asr.normalize import (
    apply_lexicon,
    normalize_numbers,
    normalize_punctuation,
    normalize_text,
    scoring_form,
    to_simplified,
)


def test_traditional_to_simplified():
    assert to_simplified("換一首歌 這裡的路燈壞了") == "换一首歌 这里的路灯坏了"


@pytest.mark.parametrize(("spoken", "written"), [
    ("我家在三号楼二单元五零二室", "我家在3号楼2单元502室"),
    ("电话是一三九一二三四五六七八", "电话是13912345678"),
    ("幺三八零五七九二三四一二", "138057923412"),
    ("我的电话是139-057-912-34", "我的电话是13905791234"),
    ("电话1385 7912 346", "电话13857912346"),
    ("座机0579-84123456", "座机0579-84123456"),
    ("2024 3 5", "2024 3 5"),
    ("晚上十点以后还在施工", "晚上10点以后还在施工"),
    ("二零二四年三月五日", "2024年3月5日"),
    ("要交一百五十块钱", "要交150块钱"),
    ("住在一楼", "住在1楼"),
    # numerals that are words, not numbers, stay as they are
    ("一直没人管，一下雨就积水", "一直没人管，一下雨就积水"),
    ("已经一个多星期了", "已经一个多星期了"),
    ("万一出事怎么办", "万一出事怎么办"),
    ("干到凌晨一两点", "干到凌晨一两点"),
    ("已经三四天了", "已经三四天了"),
    ("快一点处理", "快一点处理"),
    ("十分感谢", "十分感谢"),
    ("第一次打电话", "第一次打电话"),
])
def test_numbers_as_spoken_in_complaints(spoken, written):
    assert normalize_numbers(spoken) == written


def test_punctuation_becomes_chinese():
    spoken = "你好 我想反映一个问题,路灯坏了"
    assert normalize_punctuation(spoken) == "你好，我想反映一个问题，路灯坏了。"
    assert normalize_punctuation("能不能快点修?") == "能不能快点修？"
    assert normalize_punctuation("谢谢。。") == "谢谢。"
    # ASCII between Latin letters or digits is left alone
    assert normalize_punctuation("Amara.org") == "Amara.org。"


def test_lexicon_longest_first():
    lexicon = {"佢": "他", "佢哋": "他们", "唔该": "谢谢"}
    assert apply_lexicon("佢哋话唔该", lexicon) == "他们话谢谢"


def test_whole_chain():
    raw = "喂 你好,我住在三號樓,樓道裡面有煤氣味"
    assert normalize_text(raw) == "喂，你好，我住在3号楼，楼道里面有煤气味。"


def test_scoring_form_keeps_traditional():
    assert scoring_form("換一首歌。") == "換一首歌"
    assert scoring_form(" 你好，世界！ OK ") == "你好世界ok"
