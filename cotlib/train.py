"""Student SFT with trl's SFTTrainer on prompt-completion data: loss on the completion only, the
template's end token trained (it is the stop token at evaluation), resume from the last checkpoint."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

from . import cells, models
from .config import SftConfig, template_for
from .files import atomic_write_json, read_jsonl, write_jsonl

STAGE = "sft"


class TrainError(RuntimeError):
    """Training cannot start as configured; the message says why and what to change."""


def check_method(method: str) -> None:
    """QLoRA needs CUDA and bitsandbytes: say so before anything is loaded."""
    if method != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise TrainError("method 'qlora' needs a CUDA GPU and none is visible; use method: lora on this machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TrainError("method 'qlora' needs bitsandbytes: pip install 'cotlib[gpu]'") from None


def _train_file(cfg: SftConfig, cell_dir: Path) -> Path:
    path = cells.grid_root(cell_dir) / cfg.generate_cell / "sft.jsonl"
    if not path.exists():
        raise TrainError(f"training data {path} not found: run its generate cell {cfg.generate_cell!r} first")
    return path


def build_dataset(cfg: SftConfig, rows: list[dict], tokenizer) -> tuple[list[dict], int]:
    """Prompt-completion pairs in the student's template; over-long ones are dropped or refused."""
    template = template_for(cfg.student)
    stop = template.stop or tokenizer.eos_token
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


def _precision() -> dict[str, bool]:
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": not torch.cuda.is_bf16_supported()}
    return {"bf16": False, "fp16": False}


def _load_student(cfg: SftConfig):
    import torch
    from transformers import AutoModelForCausalLM

    path = models.resolve_path(cfg.student)
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=compute)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=compute)
        return prepare_model_for_kbit_training(model)
    dtype = torch.float32 if not torch.cuda.is_available() or cfg.method == "full" else torch.bfloat16
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sft(cfg: SftConfig, cell_dir: str | Path) -> dict[str, Any]:
    """Fine-tune one student on one generated set; save the adapter (or model), loss curve and speed."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    cell_dir = Path(cell_dir)
    check_method(cfg.method)
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
    template = template_for(cfg.student)
    model = _load_student(cfg)
    peft_config = None
    if cfg.method in ("lora", "qlora"):
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    ckpt_dir = cell_dir / "checkpoints"
    args = SFTConfig(
        output_dir=str(ckpt_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
        logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        report_to=[], seed=cfg.seed, data_seed=cfg.seed, max_length=cfg.max_length,
        completion_only_loss=True, eos_token=template.stop or tok.eos_token, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, disable_tqdm=False, **_precision(),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                         processing_class=tok, peft_config=peft_config)
    checkpoints = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    resume = bool(checkpoints)
    first_step = int(checkpoints[-1].name.split("-")[-1]) if checkpoints else 0
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start
    out = cell_dir / ("adapter" if peft_config else "model")
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    if cfg.merge and peft_config is not None and cfg.method == "lora":
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(str(cell_dir / "merged"))
        tok.save_pretrained(str(cell_dir / "merged"))
    log = [h for h in trainer.state.log_history if "loss" in h]
    atomic_write_json(cell_dir / "loss.json", log)
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    seen = min((trainer.state.global_step - first_step) * cfg.batch_size * cfg.grad_accum, len(lengths) * cfg.epochs)
    n_tokens = seen * sum(lengths) / len(lengths)
    return {
        "method": cfg.method, "n_train": len(pairs), "too_long": too_long, "resumed": resume,
        "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "final_loss": log[-1]["loss"] if log else None, "train_seconds": seconds,
        "tokens_per_second": n_tokens / seconds if seconds > 0 else None,
        "peak_memory_mb": _peak_memory_mb(), "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "saved": out.name,
    }
