"""Write tests/data/gold_tickets.jsonl: ASR-style complaints with gold 重复件 and 一类事.

    python -m bench.make_gold_tickets [OUT]

Templated from the phrase lists below (ours) and town/village names of 浦江县 and
义乌市 (jionlp's administrative data, written out here so the file never changes
with a package). Seeded: the same file every run. No punctuation, fillers (喂, 那个,
就是), spoken short town names (黄宅 for 黄宅镇) and sound-alike errors as Whisper
makes them (路登 for 路灯, 反应 for 反映).

Each line is a typed message as `minyin clusters` reads it ({"id", "title", "text",
"time", "phone" or "user"}) plus "gold": category (leaf code), object, county, town,
village, cluster (null: in no 一类事) and duplicate_of (the first ticket's id).

Scenarios: clusters of 3..9 callers per (town, matter) with repeat calls, one caller
phoning three times, singletons (at most two callers per town and matter), and the hard
negatives: 路灯 vs 红绿灯 in one town, the same caller and village with another problem,
the same problem a season later, 深一村 vs 深二村 (one town-level cluster, a caller
reporting both is no 重复件), and the same problem in another county.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "gold_tickets.jsonl"
CST = timezone(timedelta(hours=8))
START = datetime(2026, 6, 1, 8, 0, tzinfo=CST)

PUJIANG = "浦江县"
YIWU = "义乌市"
# town -> villages (a few of each, from jionlp's data)
TOWNS: dict[str, tuple[str, list[str]]] = {
    "黄宅镇": (PUJIANG, ["前一村", "前二村", "新华村", "古塘村", "横山村", "胜利村"]),
    "郑宅镇": (PUJIANG, ["深一村", "深二村", "东明村", "孝门村", "青山村"]),
    "白马镇": (PUJIANG, ["夏张村", "嵩溪村", "柳宅村", "联丰村", "高坪村"]),
    "浦阳街道": (PUJIANG, ["同乐村", "善庆村", "杨田村", "铜桥村"]),
    "仙华街道": (PUJIANG, ["登高村", "河山村", "曙光村", "马墅村"]),
    "浦南街道": (PUJIANG, ["宋溪村", "横塘村", "潘宅村", "金星村"]),
    "岩头镇": (PUJIANG, ["三红村", "和丰村", "朝阳村", "王店村"]),
    "郑家坞镇": (PUJIANG, ["吴店村", "杨家村", "江东村"]),
    "杭坪镇": (PUJIANG, ["东岭村", "杭坪村", "石宅村"]),
    "檀溪镇": (PUJIANG, ["下宅村", "平湖村", "寺前村"]),
    "虞宅乡": (PUJIANG, ["新光村", "智丰村", "马岭村"]),
    "花桥乡": (PUJIANG, ["光明村", "花桥村", "马宅村"]),
    "前吴乡": (PUJIANG, ["前吴村", "朱桥村", "桃源村"]),
    "佛堂镇": (YIWU, ["东山村", "云山村", "倍磊村"]),
}
SHORT = {"黄宅镇": "黄宅", "郑宅镇": "郑宅", "白马镇": "白马", "岩头镇": "岩头",
         "杭坪镇": "杭坪", "檀溪镇": "檀溪", "郑家坞镇": "郑家坞"}


@dataclass(frozen=True)
class Matter:
    category: str
    object: str
    title: str
    problems: tuple[str, ...]
    asks: tuple[str, ...]


MATTERS: dict[str, Matter] = {m.object: m for m in (
    Matter("city.street_light", "路灯", "路灯不亮",
           ("路灯坏了", "路灯不亮了", "路灯晚上一直不亮黑漆漆的", "好几盏路灯都坏掉了",
            "路灯一闪一闪的", "村口那排路灯全黑了", "路登不亮了晚上走路怕摔跤"),
           ("派人来修一下", "尽快修好路灯", "赶紧维修", "帮忙处理一下")),
    Matter("traffic.signals", "红绿灯", "红绿灯故障",
           ("十字路口红绿灯坏了车子乱开", "红绿灯不亮了", "信号灯一直闪黄灯",
            "红路灯坏掉了好危险"),
           ("派交警来看看", "尽快修好红绿灯", "赶紧处理")),
    Matter("utility.water", "自来水", "自来水问题",
           ("自来水发黄有股怪味", "停水两天了", "自来水水压太小楼上没水",
            "自来睡发黄不能喝"),
           ("尽快恢复供水", "派人查一下水管", "给个说法")),
    Matter("city.sanitation", "垃圾", "垃圾没人清运",
           ("垃圾没人清运堆在路边", "垃圾桶满了好几天没人倒", "拉鸡堆在那里臭死了"),
           ("安排人来清运", "尽快清理一下")),
    Matter("noise.construction", "噪音", "工地夜间施工",
           ("工地晚上施工太吵了", "半夜还在打桩噪音很大睡不着", "工地天天晚上施工吵得不行"),
           ("管一管不要晚上施工", "让他们晚上停工")),
    Matter("road.facilities", "井盖", "井盖破损",
           ("路上井盖坏了", "井盖缺了一块很危险", "紧盖翘起来了车子开过去咣咣响"),
           ("赶紧修一下井盖", "派人来换个井盖")),
    Matter("env.pollution", "污水", "污水排放",
           ("工厂往河里排黑水", "河里污水很臭", "有个厂偷偷排污水河水都黑了"),
           ("查一查这个厂", "派环保的来看看")),
    Matter("utility.power", "停电", "经常停电",
           ("经常停电一天停好几次", "又停电了冰箱里东西都坏了"),
           ("尽快恢复供电", "让供电所来看看")),
)}

FILLERS = ("喂", "喂你好", "你好", "那个", "就是", "喂喂", "嗯", "呃那个")
INTROS = ("我想反映一下", "我要反应个事情", "我跟你说一下", "就是我们这里", "我想问一下",
          "我反映个问题", "")
DURATIONS = ("好几天了", "一个多礼拜了", "已经半个月了", "以经好几天了", "两三天了", "")
CLOSERS = ("谢谢", "麻烦你们了", "好的谢谢", "")
# the caller says it again in other words: a repeat call
AGAIN = ("上次打过电话了", "我前几天反映过的", "又打来了", "还是没人管", "说了好几次了")


def place_phrase(rng: random.Random, town: str, village: str | None) -> str:
    spoken = SHORT.get(town, town) if rng.random() < 0.3 else town
    if village is None:
        return rng.choice((f"{spoken}这边", f"我们{spoken}", f"在{spoken}"))
    return rng.choice((f"我是{spoken}{village}的", f"{spoken}{village}",
                       f"我们{spoken}那个{village}", f"在{town}{village}村口"))


def utter(rng: random.Random, matter: Matter, town: str, village: str | None,
          *, again: bool = False) -> str:
    parts = [rng.choice(FILLERS), rng.choice(INTROS)]
    if again:
        parts.append(rng.choice(AGAIN))
    parts += [place_phrase(rng, town, village), rng.choice(("", "那个", "就是")),
              rng.choice(matter.problems), rng.choice(DURATIONS), "希望",
              rng.choice(matter.asks), rng.choice(CLOSERS)]
    return "".join(parts)


class Gen:
    def __init__(self, seed: int = 14) -> None:
        self.rng = random.Random(seed)
        self.rows: list[dict[str, object]] = []
        self.phones = 0
        self.clusters = 0

    def phone(self) -> str:
        self.phones += 1
        return f"1385790{self.phones:04d}"

    def ticket(self, matter: Matter, town: str, village: str | None, when: datetime,
               caller: str, *, cluster: str | None, duplicate_of: str | None = None,
               again: bool = False) -> str:
        tid = f"G{len(self.rows) + 1:04d}"
        county = TOWNS[town][0]
        row: dict[str, object] = {
            "id": tid,
            "title": matter.title if self.rng.random() < 0.6 else "",
            "text": utter(self.rng, matter, town, village, again=again),
            "time": when.isoformat(),
        }
        if caller.startswith("u:"):
            row["user"] = caller[2:]
        else:
            row["phone"] = caller
        row["gold"] = {"category": matter.category, "object": matter.object,
                       "county": county, "town": town, "village": village,
                       "cluster": cluster, "duplicate_of": duplicate_of}
        self.rows.append(row)
        return tid

    def at(self, day: float) -> datetime:
        return START + timedelta(days=day, minutes=self.rng.randrange(0, 600))

    def cluster(self, obj: str, town: str, callers: int, day: float, *,
                villages: list[str] | None = None, repeats: int = 1, spread: float = 20,
                phones: list[str] | None = None) -> tuple[str, list[tuple[str, str, str]]]:
        """`callers` people in one town on one matter within `spread` days; `repeats`
        of them call again (a repeat each) within the window."""
        self.clusters += 1
        cid = f"c{self.clusters:02d}"
        matter = MATTERS[obj]
        pool = villages or TOWNS[town][1]
        firsts: list[tuple[str, str, str]] = []  # (ticket id, caller, village)
        phones = list(phones or [])
        for i in range(callers):
            caller = phones[i] if i < len(phones) else (
                f"u:wx{self.phone()}" if self.rng.random() < 0.2 else self.phone())
            village = pool[i % len(pool)] if villages else self.rng.choice([*pool, None])
            when = self.at(day + spread * i / max(1, callers - 1))
            firsts.append((self.ticket(matter, town, village, when, caller, cluster=cid),
                           caller, village or ""))
        for first_id, caller, village in self.rng.sample(firsts, min(repeats, len(firsts))):
            first_row = next(r for r in self.rows if r["id"] == first_id)
            when = datetime.fromisoformat(str(first_row["time"])) + timedelta(
                days=self.rng.uniform(1, 8))
            self.ticket(matter, town, village or None, when, caller, cluster=cid,
                        duplicate_of=first_id, again=True)
        return cid, firsts


def generate(seed: int = 14) -> list[dict[str, object]]:
    g = Gen(seed)
    used: set[tuple[str, str]] = set()

    def cl(obj: str, town: str, *args: object, **kw: object) -> tuple[str, list]:
        used.add((town, obj))
        return g.cluster(obj, town, *args, **kw)  # type: ignore[arg-type]

    # hard negative: 路灯 and 红绿灯 in the same town, same weeks
    _, bm_lights = cl("路灯", "白马镇", 6, 2, repeats=2)
    cl("红绿灯", "白马镇", 3, 4, repeats=0)
    # a 路灯 caller also reports the 红绿灯: another matter, no repeat
    g.ticket(MATTERS["红绿灯"], "白马镇", None, g.at(12), bm_lights[0][1], cluster="c02")
    # 深一村 vs 深二村: one town-level cluster; a caller reporting both is no repeat
    _, zz = cl("路灯", "郑宅镇", 6, 5, villages=["深一村", "深二村"], repeats=1)
    g.ticket(MATTERS["路灯"], "郑宅镇", "深二村", g.at(16), zz[0][1], cluster="c03")
    # the same caller and village with another problem: a singleton, no repeat
    g.ticket(MATTERS["自来水"], "郑宅镇", "深一村", g.at(9), zz[0][1], cluster=None)
    used.add(("郑宅镇", "自来水"))
    # one caller phones three times (a first and two repeats)
    cid, hz = cl("路灯", "黄宅镇", 4, 1, repeats=0, spread=12)
    first_id, caller, village = hz[1]
    for k in (3, 9):
        g.ticket(MATTERS["路灯"], "黄宅镇", village or None, g.at(4 + k), caller, cluster=cid,
                 duplicate_of=first_id, again=True)
    # the same problem a season later: another cluster; June's caller again is no repeat
    cl("路灯", "黄宅镇", 4, 100, repeats=1, spread=15, phones=[hz[0][1]])
    # the same matter in another county
    cl("路灯", "佛堂镇", 3, 3, repeats=0)
    # ordinary clusters across towns and matters
    plan = [("自来水", "浦阳街道", 7), ("垃圾", "仙华街道", 5), ("噪音", "浦南街道", 6),
            ("井盖", "岩头镇", 3), ("污水", "郑家坞镇", 5), ("停电", "杭坪镇", 4),
            ("自来水", "黄宅镇", 5), ("垃圾", "白马镇", 4), ("路灯", "浦阳街道", 9),
            ("噪音", "仙华街道", 3), ("污水", "檀溪镇", 4), ("井盖", "浦南街道", 4),
            ("停电", "虞宅乡", 3), ("垃圾", "花桥乡", 5), ("红绿灯", "浦阳街道", 4),
            ("自来水", "前吴乡", 3), ("路灯", "岩头镇", 5)]
    for i, (obj, town, n) in enumerate(plan):
        cl(obj, town, n, 3 + 5 * (i % 10), repeats=1 + i % 3, spread=18)
    # singletons: at most two callers per town and matter, some of them calling twice
    pairs = [(t, o) for t in TOWNS for o in MATTERS if (t, o) not in used]
    g.rng.shuffle(pairs)
    for town, obj in pairs[:70]:
        matter = MATTERS[obj]
        village = g.rng.choice([*TOWNS[town][1], None])
        for _ in range(1 if g.rng.random() < 0.7 else 2):
            caller = g.phone()
            when = g.at(g.rng.uniform(0, 120))
            tid = g.ticket(matter, town, village, when, caller, cluster=None)
            if g.rng.random() < 0.15:
                g.ticket(matter, town, village, when + timedelta(days=g.rng.uniform(1, 10)),
                         caller, cluster=None, duplicate_of=tid, again=True)
    return g.rows


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else OUT
    rows = generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    clusters = {r["gold"]["cluster"] for r in rows if r["gold"]["cluster"]}  # type: ignore[index]
    dups = sum(1 for r in rows if r["gold"]["duplicate_of"])  # type: ignore[index]
    print(f"{out}: {len(rows)} tickets, {len(clusters)} clusters, {dups} repeats")


if __name__ == "__main__":
    main(sys.argv[1:])
