"""The validated parameters of every stage: what a grid file may set, checked once, before any kernel starts.

Each model here is a cell's identity: its canonical dump (every field, defaults included) is hashed into
the cell's name, so a changed parameter makes a new cell instead of a stale "done". Keys the grid
expansion sets (the upstream cell a cell trains on or evaluates) are not grid keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from . import data, models, prompts
from .files import canonical_hash


def _no_bool(v: Any) -> Any:
    """YAML's `true` is not a number: pydantic would read it as 1."""
    if isinstance(v, bool):
        raise ValueError("expected a number, got a boolean")
    return v


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]

_CELL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")  # relative, no '..'
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
# Set by the grid expansion from the cells it wires together; a grid file naming them is refused.
EXPANSION_KEYS = ("generate_cell", "sft_cell", "evaluate_cells")


# A field that changes how a cell runs but not what it produces (timeouts, concurrency, memory shares):
# left out of the cell's identity, so tuning it never turns finished cells into new ones.
OPERATIONAL = {"operational": True}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def identity(self) -> dict[str, Any]:
        """What decides the cell's output: every field but the operational ones, defaults included."""
        operational = {k for k, f in type(self).model_fields.items() if (f.json_schema_extra or {}).get("operational")}
        out = self.model_dump(mode="json", exclude=operational)
        for name in out:
            if isinstance(value := getattr(self, name), Strict):  # a nested section leaves its operational keys out too
                out[name] = value.identity()
        return out


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


def _cell_name(v: str | None) -> str | None:
    """An upstream cell's name, relative to the grid's folder: never absolute, never climbing out with '..'."""
    if v is not None and (not _CELL_NAME.fullmatch(v) or ".." in v.split("/")):
        raise ValueError(f"{v!r} is not a cell name (<stage>/<slug>__<hash>, inside the grid's folder)")
    return v


def _subjects(dataset: str, subjects: list[str] | None) -> list[str] | None:
    """Subjects in their canonical spelling (the release writes 'CountingAndProbability')."""
    if subjects is None:
        return None
    return data.canonical_subjects(dataset, subjects)


@dataclass(frozen=True)
class Decoding:
    """How a model samples: one value object threaded through every generation backend."""

    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        return {"do_sample": not self.greedy, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}


class ApiConfig(Strict):
    """An OpenAI-compatible endpoint. The key is read from the variable `api_key_env` names."""

    base_url: str | None = None  # None: api.openai.com; e.g. http://127.0.0.1:8000/v1 for a vLLM server
    model: str | None = None  # the served model name; None: the registry's id for the teacher
    api_key_env: str | None = Field("OPENAI_API_KEY", json_schema_extra=OPERATIONAL)  # None: a local server needs no key
    concurrency: Int = Field(8, ge=1, le=1024, json_schema_extra=OPERATIONAL)
    requests_per_minute: Float | None = Field(None, gt=0, json_schema_extra=OPERATIONAL)
    max_retries: Int = Field(6, ge=0, le=50, json_schema_extra=OPERATIONAL)
    timeout_s: Float = Field(120.0, gt=0, json_schema_extra=OPERATIONAL)
    max_retry_after_s: Float = Field(120.0, ge=0, json_schema_extra=OPERATIONAL)  # a server's Retry-After is honoured up to this

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("must be the name of an environment variable (the key itself is never a parameter)")
        return v


class GenerateConfig(Strict):
    """One teacher-CoT set: dataset x teacher x granularity level x format."""

    dataset: str = "demo-arith"
    split: Literal["train", "test"] = "train"
    source: Literal["auto", "local", "hub"] = "auto"
    subjects: list[str] | None = None  # MATH: keep only these subjects
    n_examples: Int | None = Field(None, ge=1)
    teacher: str = models.EMBEDDED
    # auto: a local teacher through vLLM where its CPU build is installed (the same CoTs, faster), else transformers
    backend: Literal["auto", "transformers", "openai", "vllm", "replay"] = "auto"
    api: ApiConfig = ApiConfig()
    level: Int | None = Field(3, ge=1, le=6)  # None only for replayed human / answer-only sets
    format: Literal["cot", "rar", "bsm", "sym"] = "cot"
    filter: Literal["keep_all", "keep_correct"] = "keep_correct"
    max_new_tokens: Int = Field(256, ge=1, le=8192)
    batch_size: Int = Field(16, ge=1)
    temperature: Float = Field(0.0, ge=0.0)
    seed: Int = 0

    _dataset = field_validator("dataset")(_known_dataset)

    @field_validator("teacher")
    @classmethod
    def _teacher_name(cls, v: str) -> str:
        if not _MODEL_NAME.fullmatch(v):
            raise ValueError("a model name: up to 128 letters, digits and . _ : / - (no spaces or control characters)")
        return v

    @model_validator(mode="after")
    def _fits(self) -> GenerateConfig:
        from .teacher_backends import backend_for

        if not data.SPECS[self.dataset].has_train:
            raise ValueError(f"dataset {self.dataset!r} is for evaluation only (no training questions, no level "
                             f"targets): generate CoTs for one of {', '.join(d for d, s in data.SPECS.items() if s.has_train)}")
        backend_for(self).check(self)
        object.__setattr__(self, "subjects", _subjects(self.dataset, self.subjects))
        return self

    @property
    def decoding(self) -> Decoding:
        return Decoding(self.max_new_tokens, self.temperature, 1.0, self.seed)

    def identity(self) -> dict[str, Any]:
        """The parameters, with the API endpoint only where a request is sent, and the exact prompt a teacher
        is sent (an edited level prompt makes a new cell, not a stale hit)."""
        from .teacher_backends import backend_for

        out = super().identity()
        backend = backend_for(self)
        if not backend.uses_api:
            out.pop("api")
        if backend.sends_prompts:
            out["prompt"] = canonical_hash(prompts.teacher_messages("{question}", self.level or 3, self.format, self.dataset), 16)
        return out

    def lineage(self) -> dict[str, Any]:
        return {"teacher": self.teacher, "level": self.level, "format": self.format, "train_dataset": self.dataset}

    def slug(self) -> str:
        level = f"L{self.level}" if self.level else "Lnone"
        return f"{self.dataset}__{self.teacher.replace('/', '-')}__{level}__{self.format}"


# Per-method training defaults, the one place they live. `full` is the paper's LLaMA-Factory setup (lr 5e-5,
# 3 epochs, cosine, total batch 64, cutoff 4096, seed 100); `qlora` (the single-GPU default) and `lora` are
# our deviation. A key a grid sets wins over these.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {"learning_rate": 5e-5, "epochs": 3.0, "batch_size": 4, "grad_accum": 16, "max_length": 4096},
    "qlora": {"learning_rate": 2e-4, "epochs": 3.0, "batch_size": 16, "grad_accum": 4, "max_length": 4096},
    "lora": {"learning_rate": 2e-4, "epochs": 3.0, "batch_size": 8, "grad_accum": 1, "max_length": 1024},
}


class SftConfig(Strict):
    """One student fine-tuned on one generated set; unset training keys take the method's defaults."""

    generate_cell: str  # set by the expansion
    student: str = models.EMBEDDED
    method: Literal["lora", "qlora", "full"] = "lora"
    epochs: Float = Field(gt=0)
    max_steps: Int = -1
    learning_rate: Float = Field(gt=0)
    batch_size: Int = Field(ge=1)
    grad_accum: Int = Field(ge=1)
    lora_r: Int = Field(16, ge=1)
    lora_alpha: Int = Field(32, ge=1)
    lora_dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    max_length: Int = Field(ge=16)
    too_long: Literal["drop", "error"] = "drop"  # never truncate an answer silently
    merge: bool = False  # also save the LoRA-merged model (for engines without adapter support)
    num_gpus: Int = Field(1, ge=1)  # >1: the cell launches `accelerate launch` with that many processes
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    padding_free: bool = False  # needs flash_attention_2
    # auto: only where the activations of the longest batch would not fit in half the free memory
    gradient_checkpointing: Literal["auto"] | bool = "auto"
    group_by_length: bool = True  # batches of similar length: little padding (transformers' LengthGroupedSampler)
    # auto: bf16 autocast where the device has native bf16, else fp32 (fp16 on a GPU without bf16). Operational:
    # the precision a cell ran in is recorded in its metrics and provenance, not in its name, so pinning it
    # (a study resumed on machines of several kinds stays in one precision) renames no cell.
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", json_schema_extra=OPERATIONAL)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: Float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: Float = Field(0.0, ge=0.0)
    max_grad_norm: Float = Field(1.0, gt=0.0)
    # The token each completion ends with, which the student learns and evaluation stops at. A base
    # student never saw its template's end token (<|eot_id|>, <end_of_turn>) and LoRA leaves embedding
    # rows untouched, so "auto" uses the tokenizer's EOS for LoRA/QLoRA on base models, else the template's.
    end_token: Literal["auto", "template", "eos"] = "auto"
    save_steps: Int = Field(50, ge=1, json_schema_extra=OPERATIONAL)
    seed: Int = 100

    _generate_cell = field_validator("generate_cell")(_cell_name)

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict):
            method = values.get("method", "lora")
            values = {**METHOD_DEFAULTS.get(method, METHOD_DEFAULTS["lora"]), **values}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> SftConfig:
        if self.padding_free and self.attn_implementation != "flash_attention_2":
            raise ValueError("padding_free: needs attn_implementation: flash_attention_2 (other kernels would "
                             "attend across the packed examples)")
        if self.merge and self.method != "lora":
            raise ValueError(f"merge: only a LoRA adapter can be merged; method {self.method!r} "
                             + ("saves the whole model already" if self.method == "full" else
                                "trains on a 4-bit base (merge it after training, in bf16, yourself)"))
        return self

    @field_validator("student")
    @classmethod
    def _student(cls, v: str) -> str:
        return _known_model(v, "student")

    def slug(self) -> str:
        return f"{self.student}__{self.method}__{self.generate_cell.split('/')[-1].rsplit('__', 1)[0]}"


class EvaluateConfig(Strict):
    """A base or trained student on one test set."""

    student: str = models.EMBEDDED
    sft_cell: str | None = None  # set by the expansion; None: the base student
    dataset: str = "demo-arith"
    split: Literal["train", "test"] = "test"
    source: Literal["auto", "local", "hub"] = "auto"
    subjects: list[str] | None = None  # MATH: keep only these subjects (the paper's four: see README)
    n_examples: Int | None = Field(None, ge=1)
    max_new_tokens: Int = Field(256, ge=1, le=8192)
    batch_size: Int = Field(16, ge=1)
    temperature: Float = Field(0.0, ge=0.0)  # 0: greedy, as the paper's math evaluation
    top_p: Float = Field(1.0, gt=0.0, le=1.0)
    seed: Int = 0
    # auto: vLLM where its CPU build is installed on a CPU machine (the same outputs, measured 2.7x faster
    # here), else transformers
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    # A LoRA student as trained (the adapter on its base) or merged into the base first, for engines and
    # speed where an adapter is a cost. auto: merge where vLLM runs on a CPU (its CPU LoRA kernels
    # generated about 2x slower than the merged model in the demo), else the adapter (`evaluate.lora_mode`).
    lora: Literal["auto", "adapter", "merge"] = "auto"
    # vllm only: also generate the first parity_n examples with transformers and record how often the
    # two backends agree (parity.jsonl, metrics["parity"]).
    parity_n: Int = Field(0, ge=0, json_schema_extra=OPERATIONAL)
    gpu_memory_utilization: Float = Field(0.85, gt=0.0, le=1.0, json_schema_extra=OPERATIONAL)  # vllm on a GPU

    _dataset = field_validator("dataset")(_known_dataset)
    _sft_cell = field_validator("sft_cell")(_cell_name)

    @field_validator("student")
    @classmethod
    def _student(cls, v: str) -> str:
        return _known_model(v, "student")

    @model_validator(mode="after")
    def _consistent(self) -> EvaluateConfig:
        if self.parity_n and self.backend == "transformers":
            raise ValueError("parity_n: compares vLLM with transformers; set backend: vllm (or auto) or parity_n: 0")
        object.__setattr__(self, "subjects", _subjects(self.dataset, self.subjects))
        return self

    @property
    def decoding(self) -> Decoding:
        return Decoding(self.max_new_tokens, self.temperature, self.top_p, self.seed)

    def slug(self) -> str:
        trained = self.sft_cell.split("/")[-1].rsplit("__", 1)[0] if self.sft_cell else f"{self.student}__base"
        return f"{trained}__on-{self.dataset}"


class FiguresConfig(Strict):
    """Figures from whatever evaluate cells finished."""

    evaluate_cells: list[str] = []  # set by the expansion
    formats: list[Literal["png", "pdf"]] = ["png", "pdf"]

    @field_validator("evaluate_cells")
    @classmethod
    def _cells(cls, v: list[str]) -> list[str]:
        for name in v:
            _cell_name(name)
        return v

    def slug(self) -> str:
        return "figures"
