"""Requests per second of the API teacher backend at concurrency 1 and 32, against the local
OpenAI-compatible server (tests/fake_openai.py) with a fixed injected latency. Goal: >= 20x.

    python benchmarks/api_concurrency.py [--latency 0.2] [--requests 48]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cotlib.api import ApiSettings, run_requests  # noqa: E402
from cotlib.cache import ResponseCache  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402


def measure(url: str, concurrency: int, n: int, tag: str) -> float:
    settings = ApiSettings(base_url=url, model="fake", api_key_env=None, concurrency=concurrency, requests_per_minute=None,
                           max_retries=0, timeout_s=30, temperature=0.0, max_tokens=64, seed=0)
    items = [(str(i), [{"role": "user", "content": f"{tag} question {i}: 2 + {i}"}]) for i in range(n)]
    got: list[str] = []
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: every request goes to the server
        start = time.perf_counter()
        run_requests(settings, items, lambda i, r: got.append(i) if r["ok"] else None, ResponseCache(cache))
        elapsed = time.perf_counter() - start
    assert len(got) == n, f"{n - len(got)} requests failed"
    return n / elapsed


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each reply")
    p.add_argument("--requests", type=int, default=48, help="requests at concurrency 1 (x10 at 32)")
    a = p.parse_args()
    with FakeOpenAI(latency_s=a.latency) as srv:
        one = measure(srv.base_url, 1, a.requests, "c1")
        many = measure(srv.base_url, 32, a.requests * 10, "c32")
    print(f"server latency {a.latency * 1000:.0f} ms")
    print(f"concurrency  1: {one:7.1f} requests/s")
    print(f"concurrency 32: {many:7.1f} requests/s")
    print(f"speed-up: {many / one:.1f}x (goal >= 20x)")
    return 0 if many / one >= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
