"""Teacher generation against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/fake_openai.py)
and replay of the paper's released files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from cotlib import data, prompts, released, teachers
from cotlib.api import ApiError
from cotlib.files import iter_jsonl
from cotlib.schemas import GenerateConfig
from cotlib.stages import run_cell
from cotlib.teacher_backends import released_file
from tests.conftest import needs_shared_data
from tests.fake_openai import FakeOpenAI


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COTLIB_CACHE", str(tmp_path / "cache"))


def _cfg(url: str, n: int = 30, **api) -> GenerateConfig:
    return GenerateConfig.model_validate({
        "backend": "openai", "teacher": "fake-teacher", "n_examples": n, "filter": "keep_correct", "max_new_tokens": 64,
        "api": {"base_url": url, "api_key_env": None, "concurrency": 8, "max_retries": 3, "timeout_s": 1.0, **api},
    })


def _latest(cell: Path) -> dict[str, dict]:
    return {r["id"]: r for r in iter_jsonl(cell / "records.jsonl")}


def _kind(question: str) -> int:
    return zlib.crc32(question.encode()) % 6


def faulty(question: str, attempt: int) -> str:
    """Per question: 429 then ok; 500 twice then ok; too slow once; dropped once; always malformed; ok."""
    return {0: "429" if attempt == 1 else "ok", 1: "500" if attempt <= 2 else "ok", 2: "slow" if attempt == 1 else "ok",
            3: "drop" if attempt == 1 else "ok", 4: "malformed", 5: "ok"}[_kind(question)]


def test_faults_end_cached_or_recorded_and_rerun_sends_only_what_failed(tmp_path):
    cell = tmp_path / "generate" / "g"
    examples = data.load_examples("demo-arith", "train", 30)
    kinds = {ex.id: _kind(ex.question) for ex in examples}
    assert set(kinds.values()) == set(range(6))  # every fault kind occurs
    with FakeOpenAI(faulty, slow_s=2.5) as srv:
        m = run_cell("generate", cell, _cfg(srv.base_url))
        rows = _latest(cell)
        assert set(rows) == set(kinds)  # every example has a row
        for ex in examples:
            r = rows[ex.id]
            if kinds[ex.id] == 4:
                assert r["status"] == "failed" and "malformed reply" in r["reason"]
            else:
                assert r["status"] in ("ok", "filtered"), r
        assert m["failed"] == sum(k == 4 for k in kinds.values()) and m["requests"]["failed"] == m["failed"]
        retried = [r for r in rows.values() if r.get("attempts", 0) > 1]
        assert {kinds[r["id"]] for r in retried} >= {0, 1, 2, 3}  # 429, 500, timeout and drop were retried

        srv.actions.clear()  # a rerun sends requests only for the failed (malformed) examples
        m2 = run_cell("generate", cell, _cfg(srv.base_url))
        sent = {q for q, _ in srv.actions}
        assert sent == {ex.question.strip() for ex in examples if kinds[ex.id] == 4} or \
            sent == {ex.question for ex in examples if kinds[ex.id] == 4}
        assert m2["kept"] + m2["filtered"] == m["kept"] + m["filtered"]

    # a new run of the same requests elsewhere is served from the cache: no server at all
    other = tmp_path / "generate" / "h"
    with FakeOpenAI(lambda q, a: "500") as dead:
        m3 = run_cell("generate", other, _cfg(dead.base_url))
        assert m3["requests"]["cached"] == 30 - m["failed"] and m3["requests"]["sent"] == m["failed"]


def test_sft_set_and_llamafactory_export_hold_only_kept_rows(tmp_path):
    cell = tmp_path / "generate" / "g"
    with FakeOpenAI() as srv:
        m = run_cell("generate", cell, _cfg(srv.base_url, n=12))
    sft = [json.loads(x) for x in (cell / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == m["kept"] and all(prompts.ANSWER_PREFIX in r["completion"] for r in sft)
    info = json.loads((cell / "llamafactory" / "dataset_info.json").read_text())
    (name, entry), = info.items()
    assert entry["columns"] == {"prompt": "instruction", "response": "output"}
    lf = json.loads((cell / "llamafactory" / entry["file_name"]).read_text())
    assert [r["output"] for r in lf] == [r["completion"] for r in sft]


def test_a_reply_that_runs_on_after_its_answer_line_is_cut_there(tmp_path):
    cell = tmp_path / "generate" / "g"
    with FakeOpenAI(plan=lambda q, a: "loop") as srv:
        m = run_cell("generate", cell, _cfg(srv.base_url, n=6))
    rows = _latest(cell).values()
    assert len(rows) == 6 and m["kept"] == sum(r["status"] == "ok" for r in rows) >= 1
    for row in rows:
        assert row["cot"].count(prompts.ANSWER_PREFIX) == 1 and row["cut_chars"] > 0
        assert row["cot"].endswith(f"{prompts.ANSWER_PREFIX} {row['teacher_answer']}")
    for r in iter_jsonl(cell / "sft.jsonl"):
        assert r["completion"].count(prompts.ANSWER_PREFIX) == 1 and "And so on" not in r["completion"]


@pytest.mark.parametrize("reply,kept", [
    ("3 + 4 = 7.\nThe answer is 7", "3 + 4 = 7.\nThe answer is 7"),
    ("So x = 1/2.\nThe answer is\n\n$\\frac{1}{2}$\nNext question: ...", "So x = 1/2.\nThe answer is\n\n$\\frac{1}{2}$"),
    ("No answer line at all", "No answer line at all"),
])
def test_cut_after_answer_keeps_an_answer_on_its_own_line(reply, kept):
    assert teachers.cut_after_answer(reply) == kept


def test_missing_api_key_fails_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("COTLIB_TEST_KEY", raising=False)
    with FakeOpenAI() as srv:
        with pytest.raises(ApiError, match="COTLIB_TEST_KEY is not set"):
            run_cell("generate", tmp_path / "generate" / "g", _cfg(srv.base_url, api_key_env="COTLIB_TEST_KEY"))
        assert srv.actions == []
    monkeypatch.setenv("COTLIB_TEST_KEY", "sk-secret-value-123")
    with FakeOpenAI() as srv:
        run_cell("generate", tmp_path / "generate" / "k", _cfg(srv.base_url, n=3, api_key_env="COTLIB_TEST_KEY"))
    for p in (tmp_path).rglob("*"):  # the key is never written anywhere
        if p.is_file():
            assert b"sk-secret-value-123" not in p.read_bytes(), p


_CHILD = """
import sys
from cotlib.stages import run_cell
from cotlib.schemas import GenerateConfig
cfg = GenerateConfig.model_validate({"backend": "openai", "teacher": "fake-teacher", "n_examples": 40,
    "filter": "keep_all", "api": {"base_url": sys.argv[1], "api_key_env": None, "concurrency": 2}})
run_cell("generate", sys.argv[2], cfg)
"""


def test_killed_run_resumes_without_redoing_or_losing_work(tmp_path):
    cell = tmp_path / "generate" / "g"
    with FakeOpenAI(latency_s=0.15) as srv:
        env = {**os.environ, "COTLIB_CACHE": str(tmp_path / "cache")}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, srv.base_url, str(cell)], env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if (cell / "records.jsonl").exists() and len((cell / "records.jsonl").read_text().splitlines()) >= 10:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        before = _latest(cell)
        assert 10 <= len(before) < 40
        answered_before = dict(srv.answered())
        m = run_cell("generate", cell, GenerateConfig.model_validate({
            "backend": "openai", "teacher": "fake-teacher", "n_examples": 40, "filter": "keep_all",
            "api": {"base_url": srv.base_url, "api_key_env": None, "concurrency": 2}}))
    assert m["n_examples"] == 40 and m["failed"] == 0
    saved = {before[i]["question"] for i in before}
    # nothing saved before the kill was asked for again; at most the 2 in flight were asked twice
    assert all(srv.answered()[q] == answered_before[q] for q in saved)
    assert sum(c - 1 for c in srv.answered().values() if c > 1) <= 2


@needs_shared_data
def test_replay_reads_the_papers_released_cots():
    cfg = GenerateConfig(backend="replay", dataset="svamp", teacher="gemini-1.5-flash", level=2, n_examples=700,
                         filter="keep_all")
    f = released_file(cfg)
    assert f.name == "SVAMP_gemini_level2_ranked"
    rows = {r["question"]: r["text"] for r in released.load_rows(f)}
    ex = data.load_examples("svamp", "train", 1, source="local")[0]
    assert rows[ex.question].strip().endswith("The answer is 145")


@needs_shared_data
def test_replay_generate_cell_filters_by_gold(tmp_path):
    cfg = GenerateConfig(backend="replay", dataset="svamp", teacher="gpt-4o", level=1, filter="keep_correct")
    m = run_cell("generate", tmp_path / "generate" / "r", cfg)
    # the released stats count 678 of 700 GPT-4o level-1 answers as matching gold by a plain check; the grader
    # also accepts 8 lines such as "The answer is 79 - (24 + 51) = 79 - 75 = 4", which state the answer last
    assert m["n_examples"] == 700 and m["kept"] == 691 and m["filtered"] + m["kept"] + m["failed"] == 700
    prov = json.loads((tmp_path / "generate" / "r" / "provenance.json").read_text())
    assert prov["inputs"]["release"]["sha256"]


def test_missing_release_file_says_which_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("COTLIB_DATA_DIR", str(tmp_path))
    (tmp_path / "paper_sft").mkdir()
    cfg = GenerateConfig(backend="replay", dataset="svamp", teacher="gpt-4o", level=4)
    with pytest.raises(data.DataError, match=r"SVAMP_ChatGPT_level4_ranked.json.*github.com/EIT-NLP/Distilling-CoT-Reasoning"):
        released.ensure_file(released_file(cfg).name)
    with pytest.raises(data.DataError, match="released no llama-3-70b set for svamp at level 6"):
        released_file(GenerateConfig(backend="replay", dataset="svamp", teacher="llama-3-70b", level=6))
