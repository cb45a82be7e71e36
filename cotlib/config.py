"""Validated parameters for every stage and for the experiment grid; grid expansion into cells.

Everything a user can set is checked here, once, before any kernel starts: an unknown key or a
bad value is an error naming the file, the stage and the key.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import cells, data, models, prompts
from .files import canonical_hash

Stage = Literal["generate", "sft", "evaluate", "figures"]
STAGES: tuple[str, ...] = ("generate", "sft", "evaluate", "figures")


class GridError(ValueError):
    """The grid file is wrong; the message names the file, the stage and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known_dataset(v: str) -> str:
    if v not in data.DATASETS:
        raise ValueError(f"unknown dataset {v!r}; known: {', '.join(data.DATASETS)}")
    return v


def _known_model(v: str, role: str) -> str:
    if v not in models.REGISTRY:
        raise ValueError(f"unknown model {v!r}; registered: {', '.join(models.REGISTRY)}")
    if models.REGISTRY[v].role not in (role, "both"):
        raise ValueError(f"{v!r} is registered as a {models.REGISTRY[v].role}, not a {role}")
    return v


class ApiConfig(_Strict):
    """An OpenAI-compatible endpoint. The key is read from the variable `api_key_env` names."""

    base_url: str | None = None  # None: api.openai.com; e.g. http://127.0.0.1:8000/v1 for a vLLM server
    model: str | None = None  # the served model name; None: the registry's id for the teacher
    api_key_env: str | None = "OPENAI_API_KEY"  # None for a local server that needs no key
    concurrency: int = Field(8, ge=1, le=1024)
    requests_per_minute: float | None = Field(None, gt=0)
    max_retries: int = Field(6, ge=0, le=50)
    timeout_s: float = Field(120.0, gt=0)


REPLAY_TEACHERS = ("gpt-4o", "gemini-1.5-flash", "llama-3-70b", "human", "answer-only")


class GenerateConfig(_Strict):
    """One teacher-CoT set: dataset x teacher x granularity level x format."""

    dataset: str = "demo-arith"
    split: str = "train"
    source: Literal["auto", "local", "hub"] = "auto"
    n_examples: int | None = Field(None, ge=1)
    teacher: str = models.EMBEDDED
    backend: Literal["transformers", "openai", "vllm", "replay"] = "transformers"
    api: ApiConfig = ApiConfig()
    level: int | None = Field(3, ge=1, le=6)  # None only for replayed human / answer-only sets
    format: Literal["cot", "rar", "bsm", "sym"] = "cot"
    filter: Literal["keep_all", "keep_correct"] = "keep_correct"
    max_new_tokens: int = Field(256, ge=1, le=8192)
    batch_size: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0

    _dataset = field_validator("dataset")(_known_dataset)

    @model_validator(mode="after")
    def _teacher_fits_backend(self) -> GenerateConfig:
        if self.backend == "replay":
            if self.teacher not in REPLAY_TEACHERS:
                raise ValueError(f"teacher: replay has the paper's teachers {list(REPLAY_TEACHERS)}, not {self.teacher!r}")
        elif self.backend in ("transformers", "vllm"):
            _known_model(self.teacher, "teacher")
            if models.REGISTRY[self.teacher].api:
                raise ValueError(f"teacher: {self.teacher!r} is an API model; use backend: openai")
        if self.level is None and not (self.backend == "replay" and self.teacher in ("human", "answer-only")):
            raise ValueError("level: required (1..6) except for replayed human or answer-only sets")
        return self

    def identity_extra(self) -> dict[str, str]:
        """The prompt a teacher is sent: an edited level prompt makes a new cell, not a stale hit."""
        if self.backend == "replay":
            return {}
        return {"prompt": canonical_hash(prompts.teacher_messages("{question}", self.level or 3, self.format, self.dataset), 16)}

    def slug(self) -> str:
        level = f"L{self.level}" if self.level else "Lnone"
        return f"{self.dataset}__{self.teacher.replace('/', '-')}__{level}__{self.format}"


# Per-method defaults. `full` is the paper's LLaMA-Factory setup (lr 5e-5, 3 epochs, cosine, total
# batch 64, cutoff 4096, seed 100); `qlora` (the single-GPU default) and `lora` are our deviation.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {"learning_rate": 5e-5, "epochs": 3.0, "batch_size": 4, "grad_accum": 16, "max_length": 4096},
    "qlora": {"learning_rate": 2e-4, "epochs": 3.0, "batch_size": 16, "grad_accum": 4, "max_length": 4096},
    "lora": {"learning_rate": 2e-4, "epochs": 3.0, "batch_size": 8, "grad_accum": 1, "max_length": 1024},
}


class SftConfig(_Strict):
    """One student fine-tuned on one generated set; unset training keys take the method's defaults."""

    generate_cell: str
    student: str = models.EMBEDDED
    method: Literal["lora", "qlora", "full"] = "lora"
    epochs: float = Field(3.0, gt=0)
    max_steps: int = -1
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_length: int = Field(1024, ge=16)
    too_long: Literal["drop", "error"] = "drop"  # never truncate an answer silently
    merge: bool = False  # also save the LoRA-merged model (for engines without adapter support)
    num_gpus: int = Field(1, ge=1)  # >1: the cell launches `accelerate launch` with that many processes
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    padding_free: bool = False  # needs flash_attention_2
    gradient_checkpointing: bool = True
    # The token each completion ends with, which the student learns and evaluation stops at. A base
    # student never saw its template's end token (<|eot_id|>, <end_of_turn>) and LoRA leaves embedding
    # rows untouched, so "auto" uses the tokenizer's EOS for LoRA/QLoRA on base models, else the template's.
    end_token: Literal["auto", "template", "eos"] = "auto"
    save_steps: int = Field(50, ge=1)
    seed: int = 100

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict):
            method = values.get("method", "lora")
            values = {**METHOD_DEFAULTS.get(method, {}), **values}
        return values

    @model_validator(mode="after")
    def _padding_free_needs_flash(self) -> SftConfig:
        if self.padding_free and self.attn_implementation != "flash_attention_2":
            raise ValueError("padding_free: needs attn_implementation: flash_attention_2 (other kernels would "
                             "attend across the packed examples)")
        return self

    @field_validator("student")
    @classmethod
    def _student(cls, v: str) -> str:
        return _known_model(v, "student")

    def slug(self) -> str:
        return f"{self.student}__{self.method}__{self.generate_cell.split('/')[-1].rsplit('__', 1)[0]}"


class EvaluateConfig(_Strict):
    """A base or trained student on one test set."""

    student: str = models.EMBEDDED
    sft_cell: str | None = None
    dataset: str = "demo-arith"
    split: str = "test"
    source: Literal["auto", "local", "hub"] = "auto"
    n_examples: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(256, ge=1, le=8192)
    batch_size: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # 0: greedy, as the paper's math evaluation
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    backend: Literal["transformers", "vllm"] = "transformers"
    # A LoRA student as trained (the adapter on its base) or merged into the base first (saved once as
    # the sft cell's merged/), for engines and speed where an adapter is a cost.
    lora: Literal["adapter", "merge"] = "adapter"
    # vllm only: also generate the first parity_n examples with transformers and record how often the
    # two backends agree (parity.jsonl, metrics["parity"]).
    parity_n: int = Field(0, ge=0)
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)  # vllm on a GPU: the share it may claim

    _dataset = field_validator("dataset")(_known_dataset)

    @field_validator("student")
    @classmethod
    def _student(cls, v: str) -> str:
        return _known_model(v, "student")

    @model_validator(mode="after")
    def _parity_needs_vllm(self) -> EvaluateConfig:
        if self.parity_n and self.backend != "vllm":
            raise ValueError("parity_n: compares vLLM with transformers; set backend: vllm or parity_n: 0")
        return self

    def slug(self) -> str:
        trained = self.sft_cell.split("/")[-1].rsplit("__", 1)[0] if self.sft_cell else f"{self.student}__base"
        return f"{trained}__on-{self.dataset}"


class FiguresConfig(_Strict):
    """Figures from whatever evaluate cells finished."""

    evaluate_cells: list[str] = []
    formats: list[Literal["png", "pdf"]] = ["png", "pdf"]

    def slug(self) -> str:
        return "figures"


STAGE_MODELS: dict[str, type[_Strict]] = {
    "generate": GenerateConfig,
    "sft": SftConfig,
    "evaluate": EvaluateConfig,
    "figures": FiguresConfig,
}


class GridFile(_Strict):
    """The top level of a params/*.yaml grid; each stage section maps keys to a value or a list (an axis)."""

    name: str
    output_dir: str = "outputs"
    kernel: str = "cotlib"
    notebooks: dict[Stage, str] = {}
    generate: dict[str, Any] | None = None
    sft: dict[str, Any] | None = None
    evaluate: dict[str, Any] | None = None
    figures: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("must be a folder-safe name: letters, digits, '.', '_' or '-'")
        return v


@dataclass
class Cell:
    """One papermill execution of one stage's notebook."""

    stage: str
    config: _Strict
    deps: list[str] = field(default_factory=list)
    soft_deps: bool = False  # runs with whatever deps finished (figures)

    @property
    def config_hash(self) -> str:
        return cells.config_hash(self.stage, self.config)

    @property
    def name(self) -> str:
        if self.stage == "figures":
            return "figures"
        return f"{self.stage}/{self.config.slug()}__{self.config_hash}"


@dataclass
class Grid:
    name: str
    path: Path
    output_root: Path  # <output_dir>/<name>
    kernel: str
    notebooks: dict[str, Path]
    cells: list[Cell]

    def by_name(self) -> dict[str, Cell]:
        return {c.name: c for c in self.cells}


def _fmt_error(path: Path, prefix: str, model: type[BaseModel], err: ValidationError) -> str:
    """One line per problem: file, key, and for an unknown key the keys that are allowed."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(section)"
        msg = f"unknown key (allowed: {', '.join(model.model_fields)})" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{path}: {prefix}{key}: {msg}")
    return "\n".join(lines)


def _combos(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Keys whose value is a list are axes; the cells are their cartesian product."""
    axes = {k: v for k, v in section.items() if isinstance(v, list)}
    fixed = {k: v for k, v in section.items() if not isinstance(v, list)}
    for k, v in axes.items():
        if not v:
            raise ValueError(f"axis {k!r} is an empty list")
    keys = list(axes)
    return [{**fixed, **dict(zip(keys, vals))} for vals in itertools.product(*(axes[k] for k in keys))]


def _build(path: Path, stage: str, values: dict[str, Any]) -> _Strict:
    try:
        return STAGE_MODELS[stage].model_validate(values)
    except ValidationError as err:
        raise GridError(_fmt_error(path, f"{stage}.", STAGE_MODELS[stage], err)) from None


def _section(path: Path, stage: str, section: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not section:
        return []
    try:
        return _combos(section)
    except ValueError as err:
        raise GridError(f"{path}: {stage}: {err}") from None


def expand(raw: dict[str, Any], path: Path, project_root: Path | None = None) -> Grid:
    """Validate a grid and expand it into cells with dependencies (generate -> sft -> evaluate -> figures)."""
    try:
        top = GridFile.model_validate(raw)
    except ValidationError as err:
        raise GridError(_fmt_error(path, "", GridFile, err)) from None
    root = project_root or Path.cwd()
    all_cells: list[Cell] = []

    gen_cells = [Cell("generate", _build(path, "generate", c)) for c in _section(path, "generate", top.generate)]
    all_cells += gen_cells

    sft_cells = []
    for combo in _section(path, "sft", top.sft):
        if not gen_cells:
            raise GridError(f"{path}: sft: needs a generate section to train on")
        for g in gen_cells:
            sft_cells.append(Cell("sft", _build(path, "sft", {**combo, "generate_cell": g.name}), [g.name]))
    all_cells += sft_cells

    eval_cells = []
    train_dataset = {s.name: g.config.dataset for s in sft_cells for g in gen_cells if g.name == s.config.generate_cell}
    for combo in _section(path, "evaluate", top.evaluate):
        include_base = combo.pop("include_base", True)
        if not isinstance(include_base, bool):
            raise GridError(f"{path}: evaluate.include_base: must be true or false")
        explicit_student = combo.pop("student", None)
        same_dataset = "dataset" not in combo  # no dataset: test each student on the dataset it trained on
        if same_dataset and not sft_cells:
            raise GridError(f"{path}: evaluate.dataset: required when the grid trains no student")
        trained = [s for s in sft_cells if not explicit_student or s.config.student == explicit_student]
        if include_base:
            students = list(dict.fromkeys(([explicit_student] if explicit_student else []) + [s.config.student for s in sft_cells]))
            if same_dataset:
                pairs = list(dict.fromkeys((s.config.student, train_dataset[s.name]) for s in trained))
            else:
                pairs = [(st, combo["dataset"]) for st in students]
            for student, ds in pairs:
                # a base model has no adapter: the `lora` axis would only repeat its cell
                base = Cell("evaluate", _build(path, "evaluate", {**combo, "student": student, "dataset": ds, "lora": "adapter"}))
                if all(c.name != base.name for c in eval_cells):
                    eval_cells.append(base)
        for s in trained:
            ds = train_dataset[s.name] if same_dataset else combo["dataset"]
            cfg = _build(path, "evaluate", {**combo, "dataset": ds, "student": s.config.student, "sft_cell": s.name})
            eval_cells.append(Cell("evaluate", cfg, [s.name]))
        if not include_base and not trained:
            raise GridError(f"{path}: evaluate: name a student, or add an sft section to evaluate")
    all_cells += eval_cells

    if top.figures is not None:
        fig = _build(path, "figures", {**top.figures, "evaluate_cells": [c.name for c in eval_cells]})
        all_cells.append(Cell("figures", fig, [c.name for c in eval_cells], soft_deps=True))

    if not all_cells:
        raise GridError(f"{path}: the grid has no stage sections (generate, sft, evaluate, figures)")
    names = [c.name for c in all_cells]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise GridError(f"{path}: the grid expands to duplicate cells: {sorted(dupes)}")

    notebooks = {s: root / "notebooks" / f for s, f in zip(STAGES, ("01_generate.ipynb", "02_sft.ipynb", "03_evaluate.ipynb", "04_figures.ipynb"))}
    for stage, nb in top.notebooks.items():
        p = Path(nb)
        notebooks[stage] = p if p.is_absolute() else (path.parent / p)
    for stage in {c.stage for c in all_cells}:
        if not notebooks[stage].exists():
            raise GridError(f"{path}: notebook for stage {stage!r} not found at {notebooks[stage]}")
    out = Path(top.output_dir)
    out = out if out.is_absolute() else root / out
    return Grid(top.name, path, out / top.name, top.kernel, notebooks, all_cells)


def load_grid(path: str | Path, project_root: Path | None = None) -> Grid:
    """Read, validate and expand a grid YAML file."""
    path = Path(path)
    return expand(_read_with_extends(path), path.resolve(), project_root or find_project_root(path))


def _read_with_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A grid file with its `extends:` chain merged in: a stage section in the file overrides the
    same keys of the base's section; other top-level keys replace the base's."""
    if not path.exists():
        raise GridError(f"grid file {path} not found")
    if path.resolve() in seen:
        raise GridError(f"{path}: `extends` loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise GridError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: the top level must be a mapping with a 'name' and stage sections")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base = _read_with_extends(path.parent / base_name, (*seen, path.resolve()))
    if "output_dir" in base and "output_dir" not in raw and not Path(base["output_dir"]).is_absolute():
        raw["output_dir"] = base.pop("output_dir")  # relative to the project, whichever file named it
    merged = dict(base)
    for key, value in raw.items():
        if key in STAGES and isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **value}
        else:
            merged[key] = value
    return merged


def find_project_root(start: str | Path) -> Path:
    """The folder holding notebooks/ above a grid file (or the cwd)."""
    p = Path(start).resolve()
    for cand in [p, *p.parents]:
        if (cand / "notebooks" / "01_generate.ipynb").exists():
            return cand
    return Path.cwd()


def template_for(student: str) -> prompts.StudentTemplate:
    return prompts.TEMPLATES[models.spec(student).template]
