"""Where a teacher's chains of thought come from: one class per backend, behind one protocol.

A backend says which teachers it serves (`check`), what it needs from the environment before any
kernel starts (`requirements`), how many GPUs a cell of it asks an executor for (`gpus`), whether its
prompt is part of a cell's identity, and produces the replies (`produce`). Adding a backend is one
class here and one entry in `BACKENDS`; the runner, the executors and the generate stage know none
by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import data, models, prompts, released
from .environment import Requirement

if TYPE_CHECKING:
    from .schemas import GenerateConfig

# save(example, reply): a reply is {"cot", "new_tokens", "hit_limit", ...} or {"error": reason, "retryable": bool}
Save = Callable[[data.Example, dict[str, Any]], None]

REPLAY_TEACHERS = ("gpt-4o", "gemini-1.5-flash", "llama-3-70b", "human", "answer-only")
UNLEVELLED = ("human", "answer-only")  # released sets with no granularity level or format


def messages(cfg: GenerateConfig, ex: data.Example) -> list[dict[str, str]]:
    return prompts.teacher_messages(ex.question, cfg.level or 3, cfg.format, cfg.dataset)


class TeacherBackend:
    name = ""
    sends_prompts = True  # the level prompt decides the output, so it is part of the cell's identity
    uses_api = False  # the endpoint (api.base_url, api.model) decides the output
    keeps_text = False  # True: the text is kept as it came (a release); else cut after its first answer line
    failures_retryable = False  # whether a failed row is worth asking again on the next run

    def check(self, cfg: GenerateConfig) -> None:
        """Raise ValueError where the teacher does not fit this backend (grid validation)."""
        if cfg.level is None:
            raise ValueError("level: required (1..6) except for replayed human or answer-only sets")

    def requirements(self, cfg: GenerateConfig) -> list[Requirement]:
        return []

    def gpus(self, cfg: GenerateConfig, per_stage: float) -> float:
        return 0.0

    def input_files(self, cfg: GenerateConfig) -> dict[str, Path]:
        """Files a cell's output depends on besides the dataset, recorded (with their sha256) in provenance."""
        return {}

    def produce(self, cfg: GenerateConfig, todo: list[data.Example], save: Save) -> dict[str, int]:
        raise NotImplementedError


class _LocalModel(TeacherBackend):
    """A registered model loaded here, generating in chunks so each finished chunk is saved."""

    engine = "transformers"

    def check(self, cfg: GenerateConfig) -> None:
        from .schemas import _known_model

        super().check(cfg)
        _known_model(cfg.teacher, "teacher")
        if models.REGISTRY[cfg.teacher].api:
            raise ValueError(f"teacher: {cfg.teacher!r} is an API model; use backend: openai")

    def requirements(self, cfg: GenerateConfig) -> list[Requirement]:
        return [models.requirement(cfg.teacher)]

    def gpus(self, cfg: GenerateConfig, per_stage: float) -> float:
        return per_stage

    def produce(self, cfg: GenerateConfig, todo: list[data.Example], save: Save) -> dict[str, int]:
        for ex, reply in self._replies(cfg, todo):
            save(ex, reply)
        return {}

    def _replies(self, cfg: GenerateConfig, todo: list[data.Example]) -> Iterator[tuple[data.Example, dict[str, Any]]]:
        from . import generation

        tok = models.load_tokenizer(cfg.teacher)
        texts = [tok.apply_chat_template(messages(cfg, ex), tokenize=False, add_generation_prompt=True) for ex in todo]
        engine = generation.open_engine(self.engine, cfg.teacher, tok, texts, cfg.decoding,
                                        batch_size=cfg.batch_size, desc=f"teacher L{cfg.level}")
        chunk = cfg.batch_size * 4
        try:
            for start in range(0, len(todo), chunk):
                for ex, g in zip(todo[start:start + chunk], engine.generate(texts[start:start + chunk])):
                    yield ex, {"cot": g.text, "new_tokens": g.new_tokens, "hit_limit": g.hit_limit, "engine": engine.name}
        finally:
            engine.close()


class TransformersTeacher(_LocalModel):
    name = engine = "transformers"


class VllmTeacher(_LocalModel):
    name = engine = "vllm"

    def requirements(self, cfg: GenerateConfig) -> list[Requirement]:
        from . import vllm_backend

        return [*super().requirements(cfg), vllm_backend.requirement()]


class AutoLocalTeacher(_LocalModel):
    """A local teacher through the fastest engine that writes the same CoTs here (see generation.fastest_engine)."""

    name = engine = "auto"  # generation.open_engine resolves it for the prompts at hand


class OpenAITeacher(TeacherBackend):
    """Any OpenAI-compatible chat API: concurrency, rate limit, retries and a response cache (cotlib.api)."""

    name = "openai"
    failures_retryable = True
    uses_api = True

    def requirements(self, cfg: GenerateConfig) -> list[Requirement]:
        from . import api

        return [api.requirement(cfg.api.api_key_env)]

    def produce(self, cfg: GenerateConfig, todo: list[data.Example], save: Save) -> dict[str, int]:
        from .api import run_requests, settings_for

        by_id = {ex.id: ex for ex in todo}

        def on_result(item_id: str, result: dict[str, Any]) -> None:
            extra = {"attempts": result.get("attempts"), "cached": result.get("cached", False)}
            if result["ok"]:
                save(by_id[item_id], {"cot": result["text"], "new_tokens": result.get("completion_tokens"),
                                      "hit_limit": result.get("finish_reason") == "length", **extra})
            else:
                save(by_id[item_id], {"error": result["reason"], "retryable": True, **extra})

        return run_requests(settings_for(cfg), [(ex.id, messages(cfg, ex)) for ex in todo], on_result)


class ReplayTeacher(TeacherBackend):
    """The paper's released CoTs (EIT-NLP/Distilling-CoT-Reasoning @ cc33822), kept as released."""

    name = "replay"
    sends_prompts = False
    keeps_text = True

    def check(self, cfg: GenerateConfig) -> None:
        if cfg.teacher not in REPLAY_TEACHERS:
            raise ValueError(f"teacher: replay has the paper's teachers {list(REPLAY_TEACHERS)}, not {cfg.teacher!r}")
        if cfg.teacher not in UNLEVELLED:
            super().check(cfg)

    def requirements(self, cfg: GenerateConfig) -> list[Requirement]:
        return [released.requirement(released_file(cfg).name)]

    def input_files(self, cfg: GenerateConfig) -> dict[str, Path]:
        return {"release": released.ensure_file(released_file(cfg).name)}

    def produce(self, cfg: GenerateConfig, todo: list[data.Example], save: Save) -> dict[str, int]:
        f = released_file(cfg)
        texts = {data.norm_question(r["question"]): r["text"] for r in released.load_rows(f)}
        for ex in todo:
            text = texts.get(data.norm_question(ex.question))
            save(ex, {"cot": text, "new_tokens": None, "hit_limit": False} if text is not None
                 else {"error": f"question not in the released file {f.name}", "retryable": False})
        return {}


def released_file(cfg: GenerateConfig) -> released.ReleasedFile:
    """The paper's released file for this dataset x teacher x level x format."""
    unlevelled = cfg.teacher in UNLEVELLED
    want = (cfg.dataset, cfg.teacher, None if unlevelled else cfg.level, None if unlevelled else cfg.format)
    for f in released.catalog():
        if (f.dataset, f.teacher, f.level if not unlevelled else None, f.format if not unlevelled else None) == want:
            return f
    raise data.DataError(f"the paper released no {cfg.teacher} set for {cfg.dataset} at level {cfg.level} "
                         f"in format {cfg.format!r} (see cotlib/resources/release_files.csv)")


BACKENDS: dict[str, TeacherBackend] = {b.name: b for b in (
    AutoLocalTeacher(), TransformersTeacher(), VllmTeacher(), OpenAITeacher(), ReplayTeacher())}


def backend_for(cfg: GenerateConfig) -> TeacherBackend:
    return BACKENDS[cfg.backend]
