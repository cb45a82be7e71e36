"""Student SFT with trl's SFTTrainer on prompt-completion data: loss on the completion only, the
template's end token trained (it is the stop token at evaluation), resume from the last checkpoint.

One GPU (or the CPU) trains in the notebook's process; `num_gpus > 1` launches the same cell through
`accelerate launch` (`python -m cotlib.train <cell_dir>` in each process) and waits for it.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import cells, models
from .config import SftConfig, template_for
from .files import atomic_write_json, read_json, read_jsonl, write_jsonl

STAGE = "sft"


class TrainError(RuntimeError):
    """Training cannot start as configured; the message says why and what to change."""


def check_method(method: str, num_gpus: int = 1) -> None:
    """QLoRA needs CUDA and bitsandbytes, several GPUs need that many: say so before anything is loaded."""
    import torch

    if method == "qlora":
        if not torch.cuda.is_available():
            raise TrainError("method 'qlora' needs a CUDA GPU and none is visible; use method: lora on this machine")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainError("method 'qlora' needs bitsandbytes: pip install 'cotlib[gpu]'") from None
    if num_gpus > 1 and torch.cuda.device_count() < num_gpus:
        raise TrainError(f"num_gpus: {num_gpus} asked for, {torch.cuda.device_count()} visible")


def _train_file(cfg: SftConfig, cell_dir: Path) -> Path:
    path = cells.grid_root(cell_dir) / cfg.generate_cell / "sft.jsonl"
    if not path.exists():
        raise TrainError(f"training data {path} not found: run its generate cell {cfg.generate_cell!r} first")
    return path


def build_dataset(cfg: SftConfig, rows: list[dict], tokenizer) -> tuple[list[dict], int]:
    """Prompt-completion pairs in the student's template; over-long ones are dropped or refused."""
    template = template_for(cfg.student)
    stop = end_token(cfg, tokenizer.eos_token)[0]
    pairs, too_long = [], 0
    for r in rows:
        prompt, completion = template.render(r["question"]), r["completion"].strip() + stop
        n = len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"])
        if n > cfg.max_length:
            too_long += 1
            continue
        pairs.append({"prompt": prompt, "completion": completion})
    if too_long and cfg.too_long == "error":
        raise TrainError(f"{too_long} of {len(rows)} examples exceed max_length={cfg.max_length} tokens; "
                         f"raise max_length or set too_long: drop")
    return pairs, too_long


def precision() -> str:
    """bf16 where the GPU supports it, else fp16 on a GPU, fp32 on a CPU."""
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _load_student(cfg: SftConfig):
    import torch
    from transformers import AutoModelForCausalLM

    path = models.resolve_path(cfg.student)
    prec = precision()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[prec]
    kw: dict[str, Any] = {"attn_implementation": cfg.attn_implementation}
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=dtype, **kw)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    # full fine-tuning keeps fp32 master weights (the trainer's autocast does bf16); LoRA stores the frozen base in bf16
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if cfg.method == "full" else dtype, **kw)


def end_token(cfg: SftConfig, eos_token: str) -> tuple[str, str]:
    """The text every completion ends with (trained, and the stop token at evaluation), and why."""
    stop = template_for(cfg.student).stop
    if stop is None:
        return eos_token, "the template has no end token of its own: the tokenizer's EOS"
    base = not models.spec(cfg.student).instruct
    use_eos = cfg.end_token == "eos" or (cfg.end_token == "auto" and base and cfg.method != "full")
    if use_eos:
        return eos_token, (f"the tokenizer's EOS instead of the template's {stop!r}: a base model never learned "
                           f"{stop!r} and LoRA does not train embedding rows")
    why = "full fine-tuning trains its embedding" if base else "already trained (instruct model)"
    return stop, f"the template's {stop!r}: {why}"


def make_trainer(cfg: SftConfig, pairs: list[dict], tokenizer, output_dir: Path):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    peft_config = None
    if cfg.method in ("lora", "qlora"):
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    prec = precision()
    args = SFTConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        report_to=[], seed=cfg.seed, data_seed=cfg.seed, max_length=cfg.max_length, completion_only_loss=True,
        eos_token=end_token(cfg, tokenizer.eos_token)[0], padding_free=cfg.padding_free,
        gradient_checkpointing=cfg.gradient_checkpointing, use_cpu=not torch.cuda.is_available(),
        bf16=prec == "bf16", fp16=prec == "fp16", dataloader_num_workers=0,
    )
    return SFTTrainer(model=_load_student(cfg), args=args, train_dataset=Dataset.from_list(pairs),
                      processing_class=tokenizer, peft_config=peft_config)


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def launch_command(cell_dir: str | Path, num_gpus: int, mixed_precision: str = "bf16") -> list[str]:
    """The multi-GPU command a cell runs: every process trains the same cell (data-parallel)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_gpus),
            "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
            "-m", "cotlib.train", str(cell_dir)]


def _train(cfg: SftConfig, cell_dir: Path, pairs: list[dict], too_long: int, tok) -> dict[str, Any]:
    ckpt_dir = cell_dir / "checkpoints"
    trainer = make_trainer(cfg, pairs, tok, ckpt_dir)
    # a checkpoint counts once its trainer_state.json (written last) is there: a kill mid-save leaves none
    checkpoints = sorted((p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                         key=lambda p: int(p.name.split("-")[-1]))
    first_step = int(checkpoints[-1].name.split("-")[-1]) if checkpoints else 0
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    seconds = time.perf_counter() - start
    peft = cfg.method in ("lora", "qlora")
    out = cell_dir / ("adapter" if peft else "model")
    log = [h for h in trainer.state.log_history if "loss" in h]
    stop, why = end_token(cfg, tok.eos_token)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        tok.save_pretrained(str(out))
        if cfg.merge and cfg.method == "lora":
            models.merged_model(cfg.student, cell_dir)
        atomic_write_json(cell_dir / "loss.json", log)
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    seen = min((trainer.state.global_step - first_step) * cfg.batch_size * cfg.grad_accum * cfg.num_gpus,
               len(lengths) * cfg.epochs)
    return {
        "method": cfg.method, "n_train": len(pairs), "too_long": too_long, "resumed": bool(checkpoints),
        "resumed_from_step": first_step, "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "final_loss": log[-1]["loss"] if log else None, "train_seconds": seconds,
        "tokens_per_second": seen * sum(lengths) / len(lengths) / seconds if seconds > 0 else None,
        "peak_memory_mb": _peak_memory_mb(), "precision": precision(),
        "quantization": "nf4" if cfg.method == "qlora" else None, "num_gpus": cfg.num_gpus,
        "stop_token": stop, "stop_strategy": why, "saved": out.name,
    }


def run_sft(cfg: SftConfig, cell_dir: str | Path) -> dict[str, Any]:
    """Fine-tune one student on one generated set; save the adapter (or model), loss curve and speed."""
    cell_dir = Path(cell_dir)
    check_method(cfg.method, cfg.num_gpus)
    train_file = _train_file(cfg, cell_dir)
    rows = read_jsonl(train_file)
    if not rows:
        raise TrainError(f"{train_file} holds no examples (all filtered?): set filter: keep_all or generate more")
    cells.start(cell_dir, STAGE, cfg, inputs={"train": train_file})
    tok = models.load_tokenizer(cfg.student)
    pairs, too_long = build_dataset(cfg, rows, tok)
    if not pairs:
        raise TrainError(f"every example exceeds max_length={cfg.max_length}; raise it")
    write_jsonl(cell_dir / "records.jsonl", pairs)
    if cfg.num_gpus == 1:
        return _train(cfg, cell_dir, pairs, too_long, tok)
    cmd = launch_command(cell_dir, cfg.num_gpus, {"fp32": "no"}.get(precision(), precision()))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise TrainError(f"multi-GPU training failed (exit {done.returncode}): {' '.join(cmd)}")
    return read_json(cell_dir / "train_metrics.json")


def _main(cell_dir: str) -> None:
    """Entry point of each process under `accelerate launch`: train the cell described by its config.yaml."""
    d = Path(cell_dir)
    raw = yaml.safe_load((d / "config.yaml").read_text())
    cfg = SftConfig.model_validate({k: v for k, v in raw.items() if k not in ("stage", "config_hash")})
    tok = models.load_tokenizer(cfg.student)
    pairs, too_long = build_dataset(cfg, read_jsonl(_train_file(cfg, d)), tok)
    metrics = _train(cfg, d, pairs, too_long, tok)
    from accelerate import PartialState

    if PartialState().is_main_process:
        atomic_write_json(d / "train_metrics.json", metrics)


if __name__ == "__main__":
    _main(sys.argv[1])
