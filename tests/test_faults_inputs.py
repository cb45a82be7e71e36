"""Faults of issue 15 in what a user hands cotlib: grid files and parameters (item 9), the release files
and their downloads (items 6 and 10), notebooks run with papermill directly (item 11), and the cost of
expanding a large grid (item 12). Driven through `cotlib run`/`status` (in this process where nothing
but validation runs, else as a process), papermill's own command line, and local servers that hang or
serve damaged files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from cotlib import cli, released
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.test_faults import _private_cache, cotlib, write_grid  # noqa: F401 (an autouse fixture)

# ---------------------------------------------------------------- 9: grid files refused before anything runs


def _run_main(capsys, *argv: str) -> tuple[int, str]:
    """`cotlib ...` in this process: what the console script runs. A raw exception fails the test."""
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


_OPENAI = "{backend: openai, teacher: t, api: {api_key_env: null}}"


@pytest.mark.parametrize("text,expected", [
    # one with '../' made a base evaluation load an adapter from outside the grid
    ("generate: {level: 1}\nevaluate: {sft_cell: ../../elsewhere, dataset: demo-arith}\n",
     "evaluate.sft_cell: set by the grid expansion"),
    (b"generate: {backend: openai, teacher: \"caf\xe9\"}\n", "not UTF-8 text (byte 0xe9"),
    ("generate: {backend: openai, teacher: " + "t" * 300 + "}\n", "generate.teacher: a model name: up to 128"),
    ('generate: {backend: openai, teacher: "a\\0b"}\n', "generate.teacher: a model name"),
    ("generate: {level: 1, level: 2}\n", "key 'level' appears twice"),
    ("generate: {level: true}\n", "generate.level: expected a number, got a boolean"),
    ("generate: {backend: openai, teacher: t, api: {bogus: 1}}\n",
     "generate.api.bogus: unknown key (allowed: base_url, model, api_key_env, concurrency,"),
    ("output_dir: /sys/cotlib-fault-test\ngenerate: " + _OPENAI + "\n", "/sys/cotlib-fault-test/g is not writable"),
    ("generate: {backend: openai, teacher: t, api: {api_key_env: COTLIB_FAULT_UNSET_KEY}}\n",
     "the API key variable COTLIB_FAULT_UNSET_KEY is not set"),
], ids=["sft_cell", "latin-1", "long-teacher", "nul-teacher", "duplicate-key", "bool-level", "api-key", "read-only",
        "missing-key"])
@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_bad_grids_are_refused_with_a_message_not_a_traceback(tmp_project, capsys, monkeypatch, text, expected, dry):
    monkeypatch.delenv("COTLIB_FAULT_UNSET_KEY", raising=False)
    path = tmp_project / "params" / "g.yaml"
    body = text if isinstance(text, bytes) else text.encode()
    head = "name: g\n" + ("" if b"output_dir" in body else f"output_dir: {tmp_project / 'outputs'}\n")
    path.write_bytes(head.encode() + body)
    code, out = _run_main(capsys, "run", str(path), *(["--dry-run"] if dry else []))
    assert code == 2 and expected in out, out  # before: --dry-run passed a read-only folder or a missing key
    assert "Traceback" not in out and not (tmp_project / "outputs").exists()
    if "api.bogus" in expected:
        assert "dataset" not in out.split("allowed:")[1]  # the api section's keys, not the generate stage's


def test_status_of_a_damaged_cell_says_so_and_a_read_only_cell_keeps_its_own_error(tmp_project, capsys):
    grid = write_grid(tmp_project, "damaged", generate={"backend": "openai", "teacher": "t", "n_examples": 2,
                                                        "api": {"api_key_env": None, "base_url": "http://127.0.0.1:9/v1"}})
    code, out = _run_main(capsys, "status", str(grid), "--json")
    (row,) = json.loads(out)
    cell = tmp_project / "outputs" / "damaged" / row["cell"]
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text("[1, 2]")  # before: AttributeError in `cotlib status`
    (cell / "error.json").write_text('"not an object"')
    code, out = _run_main(capsys, "status", str(grid))
    assert code == 0 and "pending" in out and "metrics.json is damaged" in out, out

    # a folder the runner cannot write in: the cell's own error is kept, and why error.json is missing beside it
    (cell / "error.json").unlink()
    (cell / "error.json").mkdir()
    (cell / "executed.ipynb").mkdir()
    r = cotlib("run", grid)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "executed.ipynb" in r.stderr and "could not write" in r.stderr and "error.json" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- 6, 10: release files


@pytest.fixture
def release_data(tmp_path, monkeypatch) -> Path:
    """A data folder with the test sets and SVAMP's training questions, but none of the teachers' files."""
    root = tmp_path / "data"
    (root / "paper_sft").mkdir(parents=True)
    (root / "testsets").symlink_to(SHARED_DATA / "testsets")
    shutil.copy(SHARED_DATA / "paper_sft" / "SVAMP_only_ans.json.gz", root / "paper_sft")
    monkeypatch.setenv("COTLIB_DATA_DIR", str(root))
    return root / "paper_sft"


def _file(level: int) -> str:
    return f"SVAMP_ChatGPT_level{level}_ranked.json"


def _released_json(level: int) -> bytes:
    return gzip.decompress((SHARED_DATA / "paper_sft" / f"{_file(level)}.gz").read_bytes())


def _replay(levels: list[int]) -> dict:
    return {"backend": "replay", "dataset": "svamp", "source": "local", "teacher": "gpt-4o", "level": levels,
            "n_examples": 5}


class HangingServer:
    """Accepts connections and never answers: a network that hangs."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.accepted: list[float] = []
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/data/"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self._conns.append(conn)

    def __enter__(self) -> HangingServer:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


@needs_shared_data
def test_a_hanging_mirror_fails_in_seconds_naming_every_missing_file(tmp_project, release_data, monkeypatch):
    with HangingServer() as mirror:
        url = mirror.url
        monkeypatch.setenv("COTLIB_RELEASE_BASE_URL", url)
        grid = write_grid(tmp_project, "hang", generate=_replay([4, 5, 6]))
        dry = cotlib("run", grid, "--dry-run")
        assert mirror.accepted == []  # a dry run downloads nothing
        t0 = time.monotonic()
        r = cotlib("run", grid)
        took = time.monotonic() - t0
        accepted = list(mirror.accepted)
    assert dry.returncode == 2 and all(_file(lv) in dry.stderr for lv in (4, 5, 6)), dry.stdout + dry.stderr
    assert r.returncode == 2, r.stdout + r.stderr
    assert all(_file(lv) in r.stderr for lv in (4, 5, 6)) and r.stderr.count("no answer within 10 s") == 3
    assert f"checking 3 released file(s) (missing ones are downloaded from {url}" in r.stdout  # said up front
    assert len(accepted) == 3 and max(accepted) - min(accepted) < 5  # all at once, not one after another
    assert took < 90, took  # before: 120 s per file, one after another, in silence (paper grid: ~36 minutes)
    assert not (tmp_project / "outputs" / "hang" / "generate").exists()


class Mirror(ThreadingHTTPServer):
    """Serves release files by name: whole, cut short (the connection closes mid-body), or changed."""

    daemon_threads = True

    def __init__(self, files: dict[str, tuple[bytes, str]]):
        self.files = files
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                if name not in outer.files:
                    self.send_error(404)
                    return
                blob, how = outer.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob[: len(blob) // 2] if how == "cut" else blob)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/data/"


@needs_shared_data
def test_release_files_are_verified_and_a_partial_download_never_counts_as_present(tmp_project, release_data, monkeypatch):
    tampered = _released_json(1).replace(b"The answer is", b"The answer is 1", 1)
    (release_data / f"{_file(1)}.gz").write_bytes(gzip.compress(tampered))
    whole = (SHARED_DATA / "paper_sft" / f"{_file(2)}.gz").read_bytes()
    (release_data / f"{_file(2)}.gz").write_bytes(whole[: len(whole) // 2])  # a truncated local copy
    changed = bytearray(_released_json(5))
    changed[len(changed) // 2] ^= 1
    mirror = Mirror({_file(3): (_released_json(3), "whole"), _file(4): (_released_json(4), "cut"),
                     _file(5): (bytes(changed), "whole")})
    monkeypatch.setenv("COTLIB_RELEASE_BASE_URL", mirror.url)
    try:
        grid = write_grid(tmp_project, "verify", generate=_replay([1, 2, 3, 4, 5]))
        r = cotlib("run", grid)
        dry = cotlib("run", grid, "--dry-run")
    finally:
        mirror.shutdown()
        mirror.server_close()
    assert r.returncode == 2, r.stdout + r.stderr  # before: the tampered file was used, the truncated one failed in a kernel
    problems = {lv: next((ln for ln in r.stderr.splitlines() if _file(lv) in ln), "") for lv in range(1, 6)}
    assert "is not the release's" in problems[1]
    assert "damaged or truncated" in problems[2]
    assert problems[3] == ""  # fetched, verified, saved
    assert "IncompleteRead" in problems[4] and "nothing was saved" in problems[4]
    assert "is not the catalog's" in problems[5] and "nothing was saved" in problems[5]
    saved = release_data / _file(3)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == released.checksum(_file(3))
    assert sorted(p.name for p in release_data.iterdir()) == sorted(
        ["SVAMP_only_ans.json.gz", f"{_file(1)}.gz", f"{_file(2)}.gz", _file(3)])  # no partial or temporary file
    # the next check still finds 4 and 5 missing, and 1 and 2 damaged (never replaced silently)
    assert dry.returncode == 2 and all(f"{_file(lv)}' is not in" in dry.stderr for lv in (4, 5)), dry.stderr
    assert all(_file(lv) in dry.stderr for lv in (1, 2)) and _file(3) not in dry.stderr
    assert not (tmp_project / "outputs" / "verify" / "generate").exists()  # no kernel started


# ---------------------------------------------------------------- 11: papermill, by hand


def _papermill(project: Path, notebook: str, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "papermill", str(project / "notebooks" / notebook), str(out),
                             "-k", "cotlib", "--cwd", str(project / "notebooks"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_papermill_users_are_told_which_parameter_is_wrong(tmp_project, tmp_path):
    runs = {  # started together: each is one kernel
        "cell_dir": _papermill(tmp_project, "01_generate.ipynb", tmp_path / "a.ipynb", "-p", "cell_dir", "5"),
        "sft_cell": _papermill(tmp_project, "03_evaluate.ipynb", tmp_path / "b.ipynb", "-y",
                               "config: {student: smollm2-135m, sft_cell: ../../elsewhere}"),
        "inputs": _papermill(tmp_project, "02_sft.ipynb", tmp_path / "c.ipynb", "-y", "inputs: {}"),
    }
    out = {k: p.communicate(timeout=300)[0] for k, p in runs.items()}
    assert all(p.returncode != 0 for p in runs.values())
    assert "evaluate.sft_cell: '../../elsewhere' is not a cell name" in out["sft_cell"], out["sft_cell"]
    assert "parameter inputs: the sft stage needs inputs['train']" in out["inputs"], out["inputs"]
    assert not (tmp_project.parent / "elsewhere").exists()
    # before: TypeError inside pathlib, naming no parameter
    assert "ParameterError" in out["cell_dir"], out["cell_dir"]
    assert "parameter cell_dir: expected the cell's folder as a path string, got int 5" in out["cell_dir"]


# ---------------------------------------------------------------- 12: expansion cost


def _hashes_for(tmp_path: Path, n_generate: int) -> tuple[int, int]:
    """Cells in a synthetic grid with n_generate generate cells (x2 students, trained and evaluated), and how
    many content hashes its expansion computed."""
    from cotlib import cells, expansion, files, schemas

    original, count = files.canonical_hash, [0]

    def counted(*a, **kw):
        count[0] += 1
        return original(*a, **kw)

    grid = {"name": "big", "generate": {"level": [1, 2, 3, 4, 5, 6], "n_examples": list(range(1, n_generate // 6 + 1))},
            "sft": {"student": ["smollm2-135m", "gemma-3-270m"]}, "evaluate": {"include_base": True}, "figures": {}}
    with pytest.MonkeyPatch.context() as mp:
        for mod in (cells, schemas, files):
            mp.setattr(mod, "canonical_hash", counted)
        g = expansion.expand(grid, tmp_path / "big.yaml", Path(__file__).resolve().parents[1])
    return len(g.cells), count[0]


def test_grid_expansion_hashes_each_cell_a_bounded_number_of_times(tmp_path):
    small_cells, small = _hashes_for(tmp_path, 60)
    big_cells, big = _hashes_for(tmp_path, 600)
    assert big_cells > 9 * small_cells
    # before: every cell re-hashed for every sft x generate pair (1.13 M hashes for 4,754 cells)
    assert big <= 3 * big_cells and big / small < 1.2 * big_cells / small_cells, (small_cells, small, big_cells, big)
