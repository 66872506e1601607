"""Typed-message intake speed: building (ticket_from_message), POST /v1/messages
(in-process app, SQLite store, ticket + repeats check + outbox per request) and the
Open311 read-back.

    .venv/bin/python bench/messages.py FILE.jsonl [--limit N] [--api N]

FILE.jsonl: typed-message lines ({"id", "title", "text", ...}, as `minyin tickets
from-text` reads them). Prints per-ticket times; the input is not written anywhere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("messages", type=Path)
    ap.add_argument("--limit", type=int, default=1000, help="messages to build")
    ap.add_argument("--api", type=int, default=200, help="of those, POSTed to the API")
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from api.app import create_app
    from pipeline.config import Settings
    from pipeline.messages import read_message_lines, ticket_from_message
    from pipeline.tickets import load_rules
    from tests.test_review_api import NullDispatcher

    lines = [ln for ln in read_message_lines(args.messages) if ln.message is not None]
    lines = lines[: args.limit]
    rules = load_rules()
    ticket_from_message(lines[0].message, rules=rules)  # warm: classifier, gazetteer
    took = []
    for ln in lines:
        t0 = time.perf_counter()
        ticket_from_message(ln.message, rules=rules)
        took.append(time.perf_counter() - t0)
    print(f"build: {len(took)} messages, mean {statistics.mean(took) * 1e3:.1f} ms, "
          f"p95 {sorted(took)[int(0.95 * (len(took) - 1))] * 1e3:.1f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp), rate_limit="1000000/minute",
                                  upload_rate_limit="1000000/minute"),
                         dispatcher=NullDispatcher(), maintenance=False)
        with TestClient(app) as client:
            key = app.state.store.create_api_key("bench", "submitter")[0]
            auth = {"Authorization": f"Bearer {key}"}
            posted, ids = [], []
            for ln in lines[: args.api]:
                body = ln.message.model_dump(mode="json", exclude_none=True)
                t0 = time.perf_counter()
                r = client.post("/v1/messages", json=body, headers=auth)
                posted.append(time.perf_counter() - t0)
                assert r.status_code in (200, 201), r.text
                ids.append(r.json()["ticket_id"])
            t0 = time.perf_counter()
            r = client.get("/open311/v2/requests.json", headers={"X-Api-Key": key})
            listed = time.perf_counter() - t0
    print(f"POST /v1/messages: {len(posted)} requests, mean {statistics.mean(posted) * 1e3:.1f}"
          f" ms, p95 {sorted(posted)[int(0.95 * (len(posted) - 1))] * 1e3:.1f} ms")
    print(f"GET /open311/v2/requests.json: {len(r.json())} requests in {listed * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
