"""Student SFT with trl's SFTTrainer on prompt-completion data: loss on the completion only, the
template's end token trained (it is the stop token at evaluation), resume from the last checkpoint.

One GPU (or the CPU) trains in the notebook's process; `num_gpus > 1` launches the same cell through
`accelerate launch` (`python -m cotlib.train <cell_dir>` in each process) and waits for it.
"""

from __future__ import annotations

import datetime as dt
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import hardware, models, prompts
from .cells import TRAIN_PROGRESS
from .schemas import SftConfig
from .stages import Context
from .files import atomic_write_json, read_json, read_jsonl, write_jsonl

class TrainError(RuntimeError):
    """Training cannot start as configured; the message says why and what to change."""


def check_method(method: str, num_gpus: int = 1, precision: str = "auto") -> None:
    """QLoRA needs CUDA and bitsandbytes, several GPUs need that many, bf16 needs native bf16: say so before
    anything is loaded."""
    import torch

    try:
        hardware.check_precision(precision)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if method == "qlora":
        if not torch.cuda.is_available():
            raise TrainError("method 'qlora' needs a CUDA GPU and none is visible; use method: lora on this machine")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainError("method 'qlora' needs bitsandbytes: pip install 'cotlib[gpu]'") from None
    if num_gpus > 1 and torch.cuda.device_count() < num_gpus:
        raise TrainError(f"num_gpus: {num_gpus} asked for, {torch.cuda.device_count()} visible")


def requirement(method: str, num_gpus: int, precision: str = "auto"):
    from .environment import Requirement

    return Requirement(("method", method, str(num_gpus), precision),
                       lambda dry_run: check_method(method, num_gpus, precision), on_device=True)


def build_dataset(cfg: SftConfig, rows: list[dict], tokenizer) -> tuple[list[dict], int]:
    """Prompt-completion pairs in the student's template; over-long ones are dropped or refused."""
    template = prompts.template_for(cfg.student)
    stop = end_token(cfg, tokenizer.eos_token)[0]
    pairs, too_long = [], 0
    for r in rows:
        prompt, completion = template.render(r["question"]), r["completion"].strip() + stop
        n = len(tokenizer(prompt + completion)["input_ids"])  # as trl tokenizes it, special tokens included
        if n > cfg.max_length:
            too_long += 1
            continue
        pairs.append({"prompt": prompt, "completion": completion})
    if too_long and cfg.too_long == "error":
        raise TrainError(f"{too_long} of {len(rows)} examples exceed max_length={cfg.max_length} tokens; "
                         f"raise max_length or set too_long: drop")
    return pairs, too_long


def _load_student(cfg: SftConfig, checkpointing: bool):
    import torch
    from transformers import AutoModelForCausalLM

    path = models.resolve_path(cfg.student)
    prec = hardware.train_precision(cfg.precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[prec]
    kw: dict[str, Any] = {"attn_implementation": cfg.attn_implementation}
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=dtype, **kw)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    return AutoModelForCausalLM.from_pretrained(path, dtype=_base_dtype(cfg.method, dtype), **kw)


def _base_dtype(method: str, dtype):
    """What the weights are stored in. Full fine-tuning keeps fp32 master weights (the trainer's autocast
    does the bf16 matmuls). LoRA on a GPU stores the frozen base in bf16 (memory is what runs out there); on a
    CPU it stays fp32 and only the matmuls are bf16: with a bf16 base the norms and the residual stream run
    in bf16 too, and Qwen2.5-Coder-0.5B diverged at lr 2e-3 (12 steps, loss 1.75 -> 3.60, against 0.00 in
    fp32) where the fp32 base with autocast spiked once (step 3) and came down to 0.004 as fp32 did
    (tests/test_train.py::test_real_students_learn_and_stop_at_their_end_token trains it so)."""
    import torch

    return dtype if method == "lora" and torch.cuda.is_available() else torch.float32


def end_token(cfg: SftConfig, eos_token: str) -> tuple[str, str]:
    """The text every completion ends with (trained, and the stop token at evaluation), and why."""
    stop = prompts.template_for(cfg.student).stop
    if stop is None:
        return eos_token, "the template has no end token of its own: the tokenizer's EOS"
    base = not models.spec(cfg.student).instruct
    use_eos = cfg.end_token == "eos" or (cfg.end_token == "auto" and base and cfg.method != "full")
    if use_eos:
        return eos_token, (f"the tokenizer's EOS instead of the template's {stop!r}: a base model never learned "
                           f"{stop!r} and LoRA does not train embedding rows")
    why = "full fine-tuning trains its embedding" if base else "already trained (instruct model)"
    return stop, f"the template's {stop!r}: {why}"


def activation_bytes(model_config, batch_size: int, tokens: int) -> int:
    """What backward keeps of one batch's activations without gradient checkpointing, in fp32: about 8
    hidden-sized and 4 MLP-sized values per token and layer (measured: SmolLM2, 8 x 436 tokens, 3.1 GB
    against this estimate's 4.5 GB, so it errs on the side of checkpointing)."""
    cfg = model_config.get_text_config()
    per_token_layer = 8 * cfg.hidden_size + 4 * cfg.intermediate_size
    return 4 * per_token_layer * cfg.num_hidden_layers * batch_size * tokens


def use_checkpointing(cfg: SftConfig, model_config, longest: int) -> tuple[bool, str]:
    """Gradient checkpointing recomputes the forward pass in backward (a third more work); `auto` turns it
    on only where the activations of the longest batch would not fit in half the free memory."""
    if cfg.gradient_checkpointing != "auto":
        return bool(cfg.gradient_checkpointing), "set in the config"
    need, free = activation_bytes(model_config, cfg.batch_size, longest), hardware.available_memory_bytes()
    return need > free // 2, f"auto: activations ~{need / 2**30:.1f} GiB, free {free / 2**30:.1f} GiB"


def _score_only_completion_tokens_on_cpu() -> bool:
    """trl's fused LM head scores only the positions that have a label on Triton devices, and every position
    elsewhere, to keep tile shapes fixed for graph compilers (Neuron). Eager CPU training compiles nothing,
    and scoring the prompt and padding positions too cost about 40% of a SmolLM2 step here, so on a CPU the
    head scores the completion tokens only (the loss is the same: the others are masked out either way).
    Patched only where trl's code is the one this was checked against; else trl runs as it is."""
    import inspect

    import trl.trainer.utils as trl_utils

    if getattr(trl_utils._use_triton, "cotlib_cpu_compact", False):
        return True
    if "compact = _use_triton(hidden_states.device)" not in inspect.getsource(trl_utils.add_fused_lm_head):
        return False
    original = trl_utils._use_triton

    def compact_on_cpu(device) -> bool:
        return device.type == "cpu" or original(device)

    compact_on_cpu.cotlib_cpu_compact = True
    compact_on_cpu.cotlib_original = original  # what trl does untouched (the speed test compares both)
    trl_utils._use_triton = compact_on_cpu
    return True


def make_trainer(cfg: SftConfig, pairs: list[dict], tokenizer, output_dir: Path):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoConfig
    from trl import SFTConfig, SFTTrainer

    peft_config = None
    if cfg.method in ("lora", "qlora"):
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    prec = hardware.train_precision(cfg.precision)
    longest = max(len(tokenizer(p["prompt"] + p["completion"])["input_ids"]) for p in pairs)
    checkpointing, why = use_checkpointing(cfg, AutoConfig.from_pretrained(models.resolve_path(cfg.student)), longest)
    compact = _score_only_completion_tokens_on_cpu() if not torch.cuda.is_available() else None
    args = SFTConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,  # < 1: a share of the steps
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, logging_steps=1, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=1, report_to=[], seed=cfg.seed, data_seed=cfg.seed,
        max_length=cfg.max_length, completion_only_loss=True, eos_token=end_token(cfg, tokenizer.eos_token)[0],
        padding_free=cfg.padding_free, gradient_checkpointing=checkpointing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        use_cpu=not torch.cuda.is_available(), bf16=prec == "bf16", fp16=prec == "fp16", dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=_load_student(cfg, checkpointing), args=args, train_dataset=Dataset.from_list(pairs),
                         processing_class=tokenizer, peft_config=peft_config)
    trainer.cotlib_speed = {"gradient_checkpointing": checkpointing, "gradient_checkpointing_reason": why,
                            "group_by_length": cfg.group_by_length, "cpu_compact_lm_head": compact}
    trainer.data_collator = _TokenCount(trainer.data_collator)
    return trainer


class _TokenCount:
    """Wraps the collator to count the tokens each batch holds, with and without padding."""

    def __init__(self, collate):
        self.collate, self.real, self.padded = collate, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        self.padded += batch["input_ids"].numel()
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        return batch


def _progress_callback(counter: _TokenCount, before: dict[str, float] | None, progress_file: Path):
    """A trainer callback whose state, saved inside each checkpoint's trainer_state.json (written last, so a
    checkpoint that counts has it), is the whole training's seconds and tokens so far: a run resumed from
    that checkpoint then reports the whole training, not only its own part. `before`: what the checkpoint
    resumed from says (None where it predates this record). Each logged step also rewrites `progress_file`
    (step, of how many, loss, when), which `cotlib status` shows beside a training cell in flight."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class Progress(TrainerCallback, ExportableState):
        def __init__(self) -> None:
            self.start = time.perf_counter()

        def totals(self) -> dict[str, float] | None:
            if before is None:
                return None
            return {"seconds": before["seconds"] + time.perf_counter() - self.start,
                    "tokens": before["tokens"] + counter.real, "padded": before["padded"] + counter.padded}

        def state(self) -> dict:
            return {"args": {}, "attributes": {"totals": self.totals()}}

        def on_train_begin(self, args, state, control, **kwargs):
            # a state resumed from an older checkpoint has no entry for this callback, which the trainer's
            # checkpointing then fails on (KeyError)
            state.stateful_callbacks.setdefault(type(self).__name__, self.state())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and state.is_world_process_zero:
                atomic_write_json(progress_file, {
                    "step": state.global_step, "max_steps": state.max_steps, "loss": logs["loss"],
                    "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})

    return Progress()


_NOTHING_YET = {"seconds": 0.0, "tokens": 0, "padded": 0}


def _progress_before(checkpoint: Path | None) -> dict[str, float] | None:
    """The whole training's seconds and tokens up to `checkpoint` (see `_progress_callback`); zeros for a
    fresh start, None for a checkpoint written before they were recorded."""
    if checkpoint is None:
        return dict(_NOTHING_YET)
    state = read_json(checkpoint / "trainer_state.json").get("stateful_callbacks") or {}
    saved = state.get("Progress") or {}
    return (saved.get("attributes") or {}).get("totals")


def _whole_loss(result_loss: float, log: list[dict], first_step: int, steps: int) -> float:
    """The mean training loss over all `steps`: transformers' own figure covers only the steps of the last
    run, so after a resume from `first_step` the earlier steps' logged losses (one per step) are added back."""
    if not first_step:
        return result_loss
    early = [h["loss"] for h in log if h["step"] <= first_step]
    if len(early) != first_step:  # not one log per step: the mean of what was logged
        return sum(h["loss"] for h in log) / len(log)
    return (sum(early) + result_loss * (steps - first_step)) / steps


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
    progress = _progress_callback(trainer.data_collator, _progress_before(checkpoints[-1] if checkpoints else None),
                                  cell_dir / TRAIN_PROGRESS)
    trainer.add_callback(progress)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    seconds = time.perf_counter() - start
    whole = progress.totals()  # None: resumed from a checkpoint that predates the record
    peft = cfg.method in ("lora", "qlora")
    out = cell_dir / ("adapter" if peft else "model")
    log = [h for h in trainer.state.log_history if "loss" in h]
    stop, why = end_token(cfg, tok.eos_token)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        tok.save_pretrained(str(out))
        if cfg.merge:
            models.merged_model(cfg.student, out, cell_dir / "merged")
        atomic_write_json(cell_dir / "loss.json", log)
    counted = trainer.data_collator
    steps = trainer.state.global_step
    return {
        "method": cfg.method, "n_train": len(pairs), "too_long": too_long, "resumed": bool(checkpoints),
        "resumed_from_step": first_step, "steps": steps,
        "train_loss": _whole_loss(result.training_loss, log, first_step, steps),
        "final_loss": log[-1]["loss"] if log else None,
        # the whole training's (None: unknown, resumed from an older checkpoint); `this_run` has the last run's
        "train_seconds": whole and whole["seconds"], "train_tokens": whole and whole["tokens"],
        "pad_share": 1 - whole["tokens"] / whole["padded"] if whole and whole["padded"] else None,
        **({"this_run": {"from_step": first_step, "seconds": seconds, "tokens": counted.real}} if checkpoints else {}),
        "tokens_per_second": counted.real * cfg.num_gpus / seconds if seconds > 0 else None,  # non-padding tokens, this run
        "peak_memory_mb": _peak_memory_mb(), "precision": hardware.train_precision(cfg.precision), **trainer.cotlib_speed,
        "quantization": "nf4" if cfg.method == "qlora" else None, "num_gpus": cfg.num_gpus,
        "stop_token": stop, "stop_strategy": why, "saved": out.name,
    }


def prepare(cfg: SftConfig, train_file: Path, cell_dir: Path, tok) -> tuple[list[dict], int]:
    """The training pairs, written to the cell's records.jsonl (what every training process reads)."""
    if not train_file.exists():
        raise TrainError(f"training data {train_file} not found: run its generate cell {cfg.generate_cell!r} first")
    rows = read_jsonl(train_file)
    if not rows:
        raise TrainError(f"{train_file} holds no examples (all filtered?): set filter: keep_all or generate more")
    pairs, too_long = build_dataset(cfg, rows, tok)
    if not pairs:
        raise TrainError(f"every example exceeds max_length={cfg.max_length}; raise it")
    write_jsonl(cell_dir / "records.jsonl", pairs)
    atomic_write_json(cell_dir / "prepared.json", {"n_train": len(pairs), "too_long": too_long})
    return pairs, too_long


def run_sft(cfg: SftConfig, ctx: Context) -> dict[str, Any]:
    """Fine-tune one student on one generated set; save the adapter (or model), loss curve and speed."""
    check_method(cfg.method, cfg.num_gpus, cfg.precision)
    tok = models.load_tokenizer(cfg.student)
    pairs, too_long = prepare(cfg, ctx.input("train") / "sft.jsonl", ctx.dir, tok)
    if cfg.num_gpus == 1:
        return _train(cfg, ctx.dir, pairs, too_long, tok)
    prec = hardware.train_precision(cfg.precision)
    cmd = launch_command(ctx.dir, cfg.num_gpus, {"fp32": "no"}.get(prec, prec))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise TrainError(f"multi-GPU training failed (exit {done.returncode}): {' '.join(cmd)}")
    return read_json(ctx.dir / "train_metrics.json")


def _main(cell_dir: str) -> None:
    """Entry point of each process under `accelerate launch`: train the cell its folder describes
    (config.yaml, and the pairs `prepare` wrote)."""
    d = Path(cell_dir)
    raw = yaml.safe_load((d / "config.yaml").read_text())
    cfg = SftConfig.model_validate({k: v for k, v in raw.items() if k not in ("stage", "config_hash")})
    tok = models.load_tokenizer(cfg.student)
    metrics = _train(cfg, d, read_jsonl(d / "records.jsonl"), read_json(d / "prepared.json")["too_long"], tok)
    from accelerate import PartialState

    if PartialState().is_main_process:
        atomic_write_json(d / "train_metrics.json", metrics)


if __name__ == "__main__":
    _main(sys.argv[1])
