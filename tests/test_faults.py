"""Faults a hostile user meets, driven through the user's entry points: `cotlib run` and `cotlib status`
as processes, a local OpenAI-compatible server that injects failures (tests/fake_openai.py), real
SIGKILLs and real concurrent runs. Issue 15, items 1-5, 7 and 8; the other items are in
test_faults_inputs.py (validation, release files, papermill, expansion) and test_faults_serve.py
(load, and a real `vllm serve`).

No model is trained here: generate cells use the openai backend against the local server, and the one
sft cell (staleness) runs the real `stages.run_cell` with its training function swapped for a stub in
the notebook itself, so locks, provenance and sealing are the real ones.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from cotlib import data
from cotlib.files import iter_jsonl
from tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "cotlib.cli"]


# ---------------------------------------------------------------- helpers (the other fault files use them too)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test has its own response cache, so no reply is served from another test's."""
    monkeypatch.setenv("COTLIB_CACHE", str(tmp_path / "cache"))


def cotlib(*args: str | Path, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def spawn(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def status(grid: Path) -> dict[str, dict]:
    r = cotlib("status", grid, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    return {row["cell"]: row for row in json.loads(r.stdout)}


def write_grid(project: Path, name: str, **sections) -> Path:
    path = project / "params" / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "output_dir": str(project / "outputs"), **sections}))
    return path


def api_generate(url: str, n: int, **api) -> dict:
    """A generate section asking the local server; failures are not retried within a run unless asked."""
    return {"backend": "openai", "teacher": "fake-teacher", "n_examples": n, "filter": "keep_all", "max_new_tokens": 64,
            "api": {"base_url": url, "api_key_env": None, "concurrency": 2, "max_retries": 0, "timeout_s": 5.0, **api}}


def questions(n: int) -> list[str]:
    return [ex.question for ex in data.load_examples("demo-arith", "train", n)]


def cell_dirs(project: Path, grid: str, stage: str) -> list[Path]:
    root = project / "outputs" / grid / stage
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def rows(cell: Path) -> dict[str, dict]:
    return {r["id"]: r for r in iter_jsonl(cell / "records.jsonl")}


def every_line_parses(path: Path) -> bool:
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            json.loads(line)
        except ValueError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def wait_gone(pid: int, timeout: float = 30) -> None:
    """Until the process has exited: a kernel whose runner was killed sees its parent gone (ipykernel's
    parent poller, once a second) and exits; it must not go on writing beside the next run."""
    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
        except (FileNotFoundError, IndexError):
            return True

    wait_for(gone, timeout, f"process {pid} (an orphaned kernel) to exit")


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def notebook_plus(project: Path, name: str, stage_notebook: str, extra: str) -> str:
    """A copy of a real stage notebook with one more code cell at its end; the grid's `notebooks:` path to it."""
    nb = nbformat.read(project / "notebooks" / stage_notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(extra))
    (project / "stubs").mkdir(exist_ok=True)
    nbformat.write(nb, project / "stubs" / name)
    return f"../stubs/{name}"


class Gate:
    """Holds the fake server's replies (a run sits inside its cell) until opened."""

    def __init__(self, srv: FakeOpenAI):
        self.event = threading.Event()
        inner = srv.plan

        def plan(q: str, a: int) -> str:
            self.event.wait(120)
            return inner(q, a)

        srv.plan = plan

    def open(self) -> None:
        self.event.set()


# ---------------------------------------------------------------- 1, 2, 8: failed requests, empty replies, keys


def _key_quoting_message(key: str) -> str:
    """A 401 whose message quotes the key so that it straddles character 200 of the client's error text
    ("Error code: 401 - <message>"): cutting that text before masking would keep most of the key."""
    lead = "Incorrect API key provided: "
    return lead + "." * (200 - len("Error code: 401 - ") - len(lead) - 20) + key


def test_failed_requests_leave_the_cell_incomplete_and_the_next_run_retries_exactly_them(tmp_project, monkeypatch):
    key = "sk-" + secrets.token_hex(20)
    monkeypatch.setenv("COTLIB_FAULT_KEY", key)
    port = free_port()  # nothing listens here yet: every request fails to connect
    grid = write_grid(tmp_project, "flaky", generate=api_generate(f"http://127.0.0.1:{port}/v1", 6,
                                                                  api_key_env="COTLIB_FAULT_KEY"))
    first = cotlib("run", grid)
    assert first.returncode == 1, first.stdout + first.stderr  # before: exit 0, "all 1 cells done"
    assert "all 1 cells done" not in first.stdout
    assert "incomplete" in first.stderr and "6 rows failed" in first.stderr
    (cell,) = cell_dirs(tmp_project, "flaky", "generate")
    (st,) = status(grid).values()
    assert st["state"] == "incomplete" and "6 rows failed" in st["detail"]

    qs = questions(6)
    bad = {qs[0]: "401", qs[1]: "429", qs[2]: "empty"}  # a 401 quoting the key, a 429 beyond max_retries, a 200 with no text
    with FakeOpenAI(lambda q, a: bad.get(q, "ok") if a == 1 else "ok", port=port, key_message=_key_quoting_message) as srv:
        second = cotlib("run", grid)
        assert second.returncode == 1 and "3 rows failed" in second.stderr, second.stdout + second.stderr
        assert sorted(q for q, _ in srv.actions) == sorted(qs)  # every failed row was asked again, once
        reasons = {r["reason"] for r in rows(cell).values() if r["status"] == "failed"}
        assert any("401" in r for r in reasons) and any("429" in r for r in reasons) and "empty reply" in reasons

        srv.actions.clear()
        third = cotlib("run", grid)
        assert third.returncode == 0 and "all 1 cells done" in third.stdout, third.stdout + third.stderr
        # exactly the three failed rows were sent again; the empty reply was not served from the cache
        assert sorted(q for q, _ in srv.actions) == sorted(bad)
    assert {r["status"] for r in rows(cell).values()} == {"ok"} and len(rows(cell)) == 6
    assert json.loads((cell / "metrics.json").read_text())["retryable_failed"] == 0
    cached = [json.loads(p.read_text()) for p in (Path(os.environ["COTLIB_CACHE"]) / "responses").rglob("*.json")]
    assert len(cached) == 6 and all(c["response"]["text"].strip() for c in cached)  # no empty reply was ever cached

    # the key, or most of it, never reached a file or the console
    consoles = "".join(r.stdout + r.stderr for r in (first, second, third))
    for fragment in (key, key[:24]):
        assert fragment not in consoles
        for p in tmp_project.parent.rglob("*"):
            if p.is_file():
                assert fragment.encode() not in p.read_bytes(), p


# ---------------------------------------------------------------- 3: two runs of one grid


def test_a_second_run_of_a_grid_stops_naming_the_first_and_a_killed_runs_lock_does_not_block(tmp_project):
    with FakeOpenAI(latency_s=0.05) as srv:
        gate = Gate(srv)
        grid = write_grid(tmp_project, "twice", generate=api_generate(srv.base_url, 20, timeout_s=240.0))  # held, not failed
        first = spawn("run", grid)
        wait_for(lambda: srv.actions or srv.attempts, 180, "the first run's first request", first)  # it is inside its cell
        (cell,) = cell_dirs(tmp_project, "twice", "generate")
        in_flight = status(grid)[f"generate/{cell.name}"]  # `cotlib status` beside the run: the cell is running,
        kernel = json.loads((cell / ".cell.lock.holder").read_text())["pid"]  # in the first run's kernel

        second = cotlib("run", grid)
        # a papermill user running the same cell by hand meets the cell's own lock, held by the first run's kernel
        papermill = subprocess.run(
            [sys.executable, "-m", "papermill", str(tmp_project / "notebooks" / "01_generate.ipynb"),
             str(tmp_project / "by-hand.ipynb"), "-k", "cotlib", "-p", "cell_dir", str(cell),
             "-y", yaml.safe_dump({"config": {k: v for k, v in yaml.safe_load((cell / "config.yaml").read_text()).items()
                                              if k not in ("stage", "config_hash")}})],
            capture_output=True, text=True, timeout=300)
        gate.open()
        out, err = first.communicate(timeout=300)

    assert first.returncode == 0, out + err
    assert in_flight["state"] == "running", in_flight  # before: pending
    assert in_flight["detail"].startswith(f"pid {kernel} on {socket.gethostname()}, since "), in_flight
    assert second.returncode == 2, second.stdout + second.stderr  # before: both exited 0
    assert f"is in use by pid {first.pid} on {socket.gethostname()}, since " in second.stderr
    assert papermill.returncode != 0 and "is in use by pid" in papermill.stdout + papermill.stderr
    assert len(srv.actions) == 20 and set(srv.attempts.values()) == {1}  # every prompt paid for once
    assert lines(cell / "records.jsonl") == 20 and len(rows(cell)) == 20

    # a run killed mid-cell leaves its lock files behind; they do not block the next run, which resumes
    with FakeOpenAI(latency_s=0.3) as srv2:
        # another teacher: another cell, and prompts the response cache has not seen
        grid = write_grid(tmp_project, "twice", generate={**api_generate(srv2.base_url, 20), "teacher": "other-teacher"})
        killed = spawn("run", grid)
        wait_for(lambda: len(srv2.actions) >= 3, 180, "requests of the run to kill", killed)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        (new_cell,) = [c for c in cell_dirs(tmp_project, "twice", "generate") if c != cell]
        wait_gone(json.loads((new_cell / ".cell.lock.holder").read_text())["pid"])  # its orphaned kernel exits too
        assert (tmp_project / "outputs" / "twice" / ".grid.lock.holder").exists()  # left behind by the kill
        assert status(grid)[f"generate/{new_cell.name}"]["state"] == "pending"  # its holder file is dead, not running
        saved = {r["question"] for r in rows(new_cell).values()}
        again = cotlib("run", grid)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "in use" not in again.stderr
    assert len(rows(new_cell)) == 20 and every_line_parses(new_cell / "records.jsonl")
    assert all(srv2.attempts[q] == 1 for q in saved)  # nothing saved before the kill was paid for again


# ---------------------------------------------------------------- 4: torn lines, notebooks failing after the stage


def test_a_torn_last_line_is_repaired_and_a_notebook_failing_after_its_stage_is_not_done(tmp_project):
    nb = notebook_plus(tmp_project, "generate_then_fail.ipynb", "01_generate.ipynb",
                       "import os\nif os.environ.get('COTLIB_FAULT_FAIL_AFTER'):\n"
                       "    raise RuntimeError('injected: the notebook fails after its stage finished')\n")
    with FakeOpenAI(latency_s=0.4) as srv:
        grid = write_grid(tmp_project, "torn", generate=api_generate(srv.base_url, 8, concurrency=1),
                          notebooks={"generate": nb})
        run = spawn("run", grid)
        records = lambda: next(iter(cell_dirs(tmp_project, "torn", "generate")), Path("/nonexistent")) / "records.jsonl"  # noqa: E731
        wait_for(lambda: lines(records()) >= 4, 180, "four saved rows", run)
        run.send_signal(signal.SIGKILL)
        run.wait()
        path = records()
        wait_gone(json.loads((path.parent / ".cell.lock.holder").read_text())["pid"])
        written = lines(path)
        text = path.read_bytes()
        last = text.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        path.write_bytes(text[: len(text) - 1 - len(last) // 2])  # the last row cut in half, as a kill mid-write leaves it
        saved = {r["question"] for r in rows(path.parent).values()}
        assert 3 <= len(saved) == written - 1 < 8  # every whole row kept, the torn one not

        failing = cotlib("run", grid, env={"COTLIB_FAULT_FAIL_AFTER": "1"})
        assert failing.returncode == 1 and "injected: the notebook fails after" in failing.stderr, failing.stdout + failing.stderr
        assert every_line_parses(path) and len(rows(path.parent)) == 8  # the fragment was dropped, its row asked again
        assert all(srv.attempts[q] == 1 for q in saved)  # nothing saved was asked again
        # (the torn row's reply may come from the response cache: it was paid for once already)
        assert not (path.parent / "metrics.json").exists()  # before: metrics.json written, the cell "done"
        (st,) = status(grid).values()
        assert st["state"] == "failed" and "injected" in st["detail"]

        srv.actions.clear()
        fine = cotlib("run", grid)
        assert fine.returncode == 0, fine.stdout + fine.stderr
        assert srv.actions == []  # every row was saved: nothing asked twice
    m = json.loads((path.parent / "metrics.json").read_text())
    assert m["n_examples"] == 8 and m["failed"] == 0 and lines(path) == 8


# ---------------------------------------------------------------- 5: Retry-After


def test_retry_after_is_honoured_up_to_its_cap_and_pauses_every_worker(tmp_project):
    first = []

    def plan(q: str, a: int) -> str:  # the first request of the run is refused with Retry-After: 600
        first.append(q)
        return "429" if q == first[0] and a == 1 else "ok"

    with FakeOpenAI(plan, latency_s=0.3, retry_after="600") as srv:
        grid = write_grid(tmp_project, "patient", generate=api_generate(
            srv.base_url, 8, concurrency=4, max_retries=2, max_retry_after_s=3.0))
        r = cotlib("run", grid)
    assert r.returncode == 0, r.stdout + r.stderr
    t429 = next(t for t, q, a in srv.times if a == "429")
    retry = next(t for t, q, a in srv.times if q == first[0] and a == "ok")
    # the 429 went back after the 0.3 s latency; then 3 s (600 capped at max_retry_after_s), not a random backoff
    assert 3.2 <= retry - t429 < 6, retry - t429  # before: 0.0-2.5 s
    # every worker held back: nothing new started while the pause lasted (in-flight requests finish first)
    assert not [t - t429 for t, q, a in srv.times if t429 + 1.0 < t < t429 + 3.2]


# ---------------------------------------------------------------- 7: changed upstream


_STUB_SFT = """\
import dataclasses, os, sys, types
from pathlib import Path
from cotlib import stages

def _train(cfg, ctx):  # no model is trained in this suite: the stage reads its input and records that it ran
    with open(os.environ["COTLIB_FAULT_LOG"], "a") as fh:
        fh.write(ctx.dir.name + "\\n")
    return {"trained_on": len((ctx.input("train") / "sft.jsonl").read_text().splitlines())}

sys.modules["stub_train"] = types.SimpleNamespace(run_sft=_train)
stages.STAGES["sft"] = dataclasses.replace(stages.STAGES["sft"], run="stub_train:run_sft")
metrics = stages.run_cell("sft", cell_dir, config, inputs, lineage, seal)
"""


def _stub_sft_notebook(project: Path) -> str:
    nb = nbformat.read(project / "notebooks" / "02_sft.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    nb.cells = [params, nbformat.v4.new_code_cell(_STUB_SFT)]
    (project / "stubs").mkdir(exist_ok=True)
    nbformat.write(nb, project / "stubs" / "sft.ipynb")
    return "../stubs/sft.ipynb"


def test_a_changed_upstream_output_makes_its_downstream_cell_stale_and_run_redoes_it(tmp_project, monkeypatch):
    log = tmp_project / "trained.log"
    monkeypatch.setenv("COTLIB_FAULT_LOG", str(log))
    with FakeOpenAI() as srv:
        grid = write_grid(tmp_project, "chain", generate=api_generate(srv.base_url, 4), sft={"max_steps": 1},
                          notebooks={"sft": _stub_sft_notebook(tmp_project)})
        first = cotlib("run", grid)
        assert first.returncode == 0, first.stdout + first.stderr
        assert lines(log) == 1
        (gen,) = cell_dirs(tmp_project, "chain", "generate")
        (sft,) = cell_dirs(tmp_project, "chain", "sft")
        sft_jsonl = gen / "sft.jsonl"

        sft_jsonl.write_bytes(sft_jsonl.read_bytes())  # the same bytes written again: nothing changed
        assert {s["state"] for s in status(grid).values()} == {"done"}

        with open(sft_jsonl, "a") as fh:  # the upstream's output changed since the sft cell read it
            fh.write(json.dumps({"id": "extra", "question": "1 + 1?", "completion": "The answer is 2"}) + "\n")
        states = {s["stage"]: s for s in status(grid).values()}
        assert states["generate"]["state"] == "done"
        assert states["sft"]["state"] == "stale" and "train" in states["sft"]["detail"]  # before: done

        again = cotlib("run", grid)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "stale (its input changed since it ran: train), redoing" in again.stdout
    assert lines(log) == 2  # the sft cell ran again, on the changed set
    assert json.loads((sft / "metrics.json").read_text())["trained_on"] == 5
    assert {s["state"] for s in status(grid).values()} == {"done"}
