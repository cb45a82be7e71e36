"""The paper's released SFT data (EIT-NLP/Distilling-CoT-Reasoning, data/): which file is which
dataset x teacher x level x format, and its rows with their gold answers."""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import data

RELEASE_REPO = "EIT-NLP/Distilling-CoT-Reasoning"
RELEASE_COMMIT = "cc33822"
RELEASE_URL = f"https://github.com/{RELEASE_REPO}/tree/{RELEASE_COMMIT}/data"
DOWNLOAD_TIMEOUT_S = 10.0  # per connect and per read: a server that accepts and never answers fails in seconds

_TEACHER = {"chatgpt": "gpt-4o", "gemini": "gemini-1.5-flash", "llama": "llama-3-70b"}
_FORMAT = {"bsm": "bsm", "rar": "rar", "sym": "sym", "symbolic": "sym"}


@dataclass(frozen=True)
class ReleasedFile:
    name: str  # file name in the release, without .gz
    dataset: str
    teacher: str  # gpt-4o, gemini-1.5-flash, llama-3-70b, human, answer-only
    level: int | None
    format: str  # cot, bsm, rar, sym, human, answer-only
    response: str  # the field that holds the teacher's text


def parse_name(name: str) -> ReleasedFile | None:
    """Classify a release file name; None for files that are not SFT sets (e.g. dataset_info.json)."""
    stem = re.sub(r"\.json(\.gz)?$", "", name)
    low = stem.lower()
    ds_key = re.match(r"(?:0_)?([a-z0-9]+)", low)
    dataset = data.release_dataset(ds_key.group(1)) if ds_key else None
    if dataset is None:
        return None
    level_m = re.search(r"level_?(\d)", low)
    level = int(level_m.group(1)) if level_m else None
    teacher_m = re.search(r"_(chatgpt|gemini|llama)_", low + "_")
    fmt_m = re.search(r"level\d(bsm|rar|sym)$|_(bsm|rar|symbolic)_level", low)
    fmt = _FORMAT[next(g for g in fmt_m.groups() if g)] if fmt_m else "cot"
    if "only" in low and "ans" in low:
        return ReleasedFile(stem, dataset, "answer-only", None, "answer-only", "output")
    if "human" in low or low.startswith("ecqa"):
        return ReleasedFile(stem, dataset, "human", None, "human", "solution" if dataset == "math" else "output")
    if low.startswith("math_mix"):
        return ReleasedFile(stem, "math", "gpt-4o", level, "cot", "chatgpt_output")
    if teacher_m is None or level is None:
        return None  # e.g. the 0-shot with/without-gt OBQA variants
    teacher = _TEACHER[teacher_m.group(1)]
    response = f"{teacher_m.group(1)}_output" if dataset == "math" else "output"
    return ReleasedFile(stem, dataset, teacher, level, fmt, response)


def release_dir() -> Path:
    return data.data_root() / "paper_sft"


def _base(name: str) -> str:
    return re.sub(r"(\.json)?(\.gz)?$", "", name) + ".json"


def find_file(name: str) -> Path:
    """The local copy of a release file, or a clear error naming it and where to get it."""
    base = _base(name)
    for cand in (release_dir() / base, release_dir() / f"{base}.gz"):
        if cand.exists():
            return cand
    raise data.DataError(
        f"released file {base!r} is not in {release_dir()}: download it from {RELEASE_URL}/{base} "
        f"into that folder (or set COTLIB_DATA_DIR to a folder whose paper_sft/ holds it)"
    )


_CATALOG = Path(__file__).resolve().parent / "resources" / "release_files.csv"


@functools.cache
def _catalog_rows() -> tuple[dict[str, str], ...]:
    with open(_CATALOG, newline="") as fh:
        return tuple(csv.DictReader(fh))


def catalog() -> list[ReleasedFile]:
    """Every SFT file of the release (its dataset_info.json), whether or not a copy is at hand."""
    return [ReleasedFile(r["file"].removesuffix(".json"), r["dataset"], r["teacher"],
                         int(r["level"]) if r["level"] else None, r["format"], r["response"])
            for r in _catalog_rows()]


def checksum(name: str) -> str | None:
    """The sha256 of a release file's JSON text, where it is known."""
    return next((r["sha256"] for r in _catalog_rows() if r["file"] in (name, f"{name}.json") and r["sha256"]), None)


_verified: dict[tuple[str, int, int], None] = {}


def verify(path: Path) -> Path:
    """A local copy is the released file: its JSON text has the catalog's sha256 (a tampered or truncated
    copy is refused, naming the file). Checked once per file version per process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return path
    want = checksum(path.name.removesuffix(".gz"))
    if want is not None:
        try:
            blob = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError, zlib.error) as err:
            raise data.DataError(f"{path}: damaged or truncated ({type(err).__name__}: {err}); replace it with the "
                                 f"released file from {RELEASE_URL}/{_base(path.name)}") from None
        got = hashlib.sha256(blob).hexdigest()
        if got != want:
            raise data.DataError(f"{path}: sha256 {got} is not the release's {want}: the file was changed or damaged; "
                                 f"replace it with the released file from {RELEASE_URL}/{_base(path.name)}")
    _verified[key] = None
    return path


RAW_BASE_URL = f"https://raw.githubusercontent.com/{RELEASE_REPO}/{RELEASE_COMMIT}/data/"


def base_url() -> str:
    """Where release files are fetched from: $COTLIB_RELEASE_BASE_URL (a mirror, or a local server in
    the tests; the folder that holds the files), else the release at its pinned commit on GitHub."""
    url = os.environ.get("COTLIB_RELEASE_BASE_URL") or RAW_BASE_URL
    return url if url.endswith("/") else url + "/"


def download(name: str, dest: Path | None = None, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch a release file, check it against the catalog's checksum, and write it atomically (a partial
    download never counts as present). `timeout_s` bounds connecting and each read, so a hanging network
    fails in seconds, not minutes. Any failure is a DataError naming the file and the URL."""
    import http.client
    import urllib.request

    from .files import atomic_write_bytes

    base = _base(name)
    dest = dest or release_dir() / base
    url = base_url() + base
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (https, or a mirror the user set)
            blob = resp.read()
    except (OSError, http.client.HTTPException, ValueError) as err:  # a timeout is an OSError; a cut body, HTTPException
        raise data.DataError(f"download of {url} failed ({_why(err, timeout_s)}); nothing was saved") from None
    want = checksum(base)
    got = hashlib.sha256(blob).hexdigest()
    if want and got != want:
        raise data.DataError(f"download of {url}: sha256 {got} is not the catalog's {want} (truncated or "
                             f"changed on the way); nothing was saved")
    return atomic_write_bytes(dest, blob)


def _why(err: BaseException, timeout_s: float) -> str:
    if isinstance(err, TimeoutError) or "timed out" in str(err):
        return f"no answer within {timeout_s:.0f} s"
    return f"{type(err).__name__}: {err}"


def ensure_file(name: str, download_missing: bool = True) -> Path:
    """The verified local copy, downloading it (checksum-verified) when it is missing; a clear error otherwise."""
    try:
        return verify(find_file(name))
    except data.DataError as missing:
        if "is not in" not in str(missing):
            raise  # present but damaged: never replaced silently
        if not download_missing:
            raise data.DataError(f"{missing}; `cotlib run` will try to download it") from None
        try:
            return download(name)
        except data.DataError as err:
            raise data.DataError(f"{missing}; {err}") from None


def requirement(name: str):
    """A replayed file must be here and intact, or downloadable (not tried in a dry run)."""
    from .environment import Requirement

    return Requirement(("release", name), lambda dry_run: ensure_file(name, download_missing=not dry_run))


def local_files() -> list[ReleasedFile]:
    out = []
    for p in sorted(release_dir().glob("*.json*")):
        f = parse_name(p.name)
        if f is not None:
            out.append(f)
    return out


def load_rows(f: ReleasedFile) -> list[dict]:
    """Rows {question, text, gold, answer_type, choices} with gold answers aligned by question text."""
    rows = data.read_json_records(ensure_file(f.name))
    kind = data.spec(f.dataset).answer_type
    if f.dataset == "math":
        return [{"question": r["problem"], "text": str(r.get(f.response, "")), "gold": data.math_gold(r),
                 "answer_type": kind, "choices": None} for r in rows]
    gold_by_q: dict[str, data.Example] = {}
    golds = data.load_examples(f.dataset, "train", source="local")
    if f.dataset == "strategyqa":  # the human file also holds the 290 test questions
        golds = golds + data.load_examples(f.dataset, "test", source="local")
    for ex in golds:
        gold_by_q.setdefault(data.norm_question(ex.question), ex)
    out = []
    for r in rows:
        ex = gold_by_q.get(data.norm_question(r["instruction"]))
        if ex is None:
            continue
        out.append({"question": r["instruction"], "text": str(r.get(f.response, "")), "gold": ex.answer,
                    "answer_type": kind, "choices": ex.choices})
    return out


def level_bands(dataset: str) -> dict[int, tuple[float, float]]:
    """Per granularity level, the range over the paper's LLM teachers of mean words per plain CoT in
    the release files at hand: what a level prompt is calibrated against."""
    means: dict[int, list[float]] = {}
    for f in local_files():
        if f.dataset == dataset and f.level and f.format == "cot" and f.teacher not in ("human", "answer-only"):
            rows = load_rows(f)
            means.setdefault(f.level, []).append(sum(len(r["text"].split()) for r in rows) / len(rows))
    return {level: (min(v), max(v)) for level, v in sorted(means.items())}
