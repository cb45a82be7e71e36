from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cotlib import cells, models, prompts
from cotlib.files import write_jsonl
from cotlib.schemas import SftConfig
from cotlib.stages import STAGES, run_cell
from cotlib.train import TrainError, check_method


def run_sft(cfg: SftConfig, cell: Path) -> dict:
    """An sft cell run as the notebook runs it, training on the generate cell its config names."""
    return run_cell("sft", cell, cfg, inputs={"train": cell.parents[1] / cfg.generate_cell})

pytestmark = pytest.mark.slow


def _gen_cell(root: Path, n: int = 6) -> str:
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "completion": f"{i} + {i} = {2 * i}.\nThe answer is {2 * i}"}
            for i in range(n)]
    write_jsonl(root / "generate" / "g" / "sft.jsonl", rows)
    return "generate/g"


def test_lora_steps_change_the_adapter_and_not_the_base(tmp_path, embedded_model_dir):
    cfg = SftConfig(generate_cell=_gen_cell(tmp_path), max_steps=3, batch_size=2, learning_rate=1e-3, max_length=128)
    cell = tmp_path / "sft" / "s"
    metrics = run_sft(cfg, cell)
    assert metrics["steps"] == 3 and metrics["n_train"] == 6 and metrics["too_long"] == 0
    weights = load_file(cell / "adapter" / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)  # only adapter weights are saved
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it

    base = models.load_model(models.EMBEDDED)
    tuned = models.load_model(models.EMBEDDED, adapter=cell / "adapter")
    base_sd = base.state_dict()
    for name, p in tuned.named_parameters():
        if "base_layer" in name:  # the frozen base weights are untouched
            key = name.replace("base_model.model.", "").replace("base_layer.", "")
            assert torch.equal(p, base_sd[key])
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(base(x).logits, tuned(x).logits)
    assert len(json.loads((cell / "loss.json").read_text())) == 3
    assert json.loads((cell / "provenance.json").read_text())["inputs"]["train"]["sha256"]


def test_the_fast_path_learns_what_the_old_path_learns_on_the_same_batches(tmp_path, embedded_model_dir, monkeypatch):
    """No gradient checkpointing and an LM head scoring only completion tokens change the work, not the
    result: on the same batches (data order) the per-step losses and the adapter agree with the old path's.
    (Length grouping changes which examples share a step, so it is left out of this comparison.)"""
    import trl.trainer.utils as trl_utils

    from cotlib import train

    if torch.cuda.is_available():
        pytest.skip("the completion-only LM head is the CPU path's (on CUDA trl already scores only labelled positions)")
    gen = _gen_cell(tmp_path)
    same = dict(generate_cell=gen, max_steps=3, batch_size=3, learning_rate=1e-3, max_length=128, group_by_length=False,
                precision="fp32")  # exactness of these two changes; bf16's own difference is the next test's
    fast = run_sft(SftConfig(**same, gradient_checkpointing=False), tmp_path / "sft" / "fast")
    assert fast["cpu_compact_lm_head"] is True and fast["gradient_checkpointing"] is False

    # the old path: checkpointing on, and trl's head scoring every position as it does off Triton devices
    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton.cotlib_original)
    monkeypatch.setattr(train, "_score_only_completion_tokens_on_cpu", lambda: False)
    old = run_sft(SftConfig(**same, gradient_checkpointing=True), tmp_path / "sft" / "old")
    assert old["gradient_checkpointing"] is True and old["cpu_compact_lm_head"] is False

    losses = {k: [e["loss"] for e in json.loads((tmp_path / "sft" / k / "loss.json").read_text())] for k in ("fast", "old")}
    assert len(losses["fast"]) == 3 and losses["fast"] == pytest.approx(losses["old"], rel=1e-3)
    a = load_file(tmp_path / "sft" / "fast" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "sft" / "old" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)


def test_bf16_autocast_trains_like_fp32_where_bf16_is_native_and_is_refused_where_not(tmp_path, embedded_model_dir):
    """Where the device has native bf16, `precision: bf16` (what `auto` picks there) trains the adapter with
    a first-step loss within 2% of fp32's on the same batches (later steps within 10%), and the cell records bf16. Where bf16 would be
    emulated (~80x slower), asking for it is refused before the model is loaded."""
    from cotlib import hardware

    gen = _gen_cell(tmp_path, n=8)
    same = dict(generate_cell=gen, max_steps=4, batch_size=4, learning_rate=1e-3, max_length=128)
    native = hardware.native_bf16()
    if not native:
        with pytest.raises(TrainError, match="no native bf16.*use precision: auto or fp32"):
            run_sft(SftConfig(**same, precision="bf16"), tmp_path / "sft" / "bf16")
        assert not (tmp_path / "sft" / "bf16" / "adapter").exists()
        assert hardware.train_precision("auto") == "fp32"
        return
    assert hardware.train_precision("auto") == "bf16"
    bf16 = run_sft(SftConfig(**same, precision="bf16"), tmp_path / "sft" / "bf16")
    fp32 = run_sft(SftConfig(**same, precision="fp32"), tmp_path / "sft" / "fp32")
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert json.loads((tmp_path / "sft" / "bf16" / "provenance.json").read_text())["precision"] == "bf16"
    losses = {k: [e["loss"] for e in json.loads((tmp_path / "sft" / k / "loss.json").read_text())] for k in ("bf16", "fp32")}
    # step 1 sees the same weights, only the precision differs; later steps compound it (lr 1e-3 on toy data:
    # the benchmark's 50 real steps at lr 2e-4 hold the mean within 2%)
    assert len(losses["bf16"]) == 4 and losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.02)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.1)
    assert losses["bf16"][-1] < losses["bf16"][0] / 2 and losses["fp32"][-1] < losses["fp32"][0] / 2
    assert losses["bf16"] != losses["fp32"]  # it did compute in another precision
    lora_b = [v for k, v in load_file(tmp_path / "sft" / "bf16" / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)


def test_qlora_on_cpu_stops_before_loading_and_suggests_lora():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TrainError, match="needs a CUDA GPU.*use method: lora"):
        check_method("qlora")


def test_over_long_examples_are_refused_when_asked(tmp_path, embedded_model_dir):
    cfg = SftConfig(generate_cell=_gen_cell(tmp_path), max_steps=1, max_length=16, too_long="error")
    with pytest.raises(TrainError, match=r"6 of 6 examples exceed max_length=16"):
        run_sft(cfg, tmp_path / "sft" / "s")


def test_prompt_tokens_are_masked_and_the_end_token_is_learned(tmp_path, embedded_model_dir):
    from cotlib.train import build_dataset, make_trainer

    template_for = prompts.template_for

    cfg = SftConfig(generate_cell=_gen_cell(tmp_path), max_steps=1, max_length=128)
    tok = models.load_tokenizer(cfg.student)
    pairs, _ = build_dataset(cfg, [{"question": "What is 2 + 2?", "completion": "2 + 2 = 4.\nThe answer is 4"}], tok)
    trainer = make_trainer(cfg, pairs, tok, tmp_path / "ckpt")
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    prompt_len = len(tok(template_for(cfg.student).render("What is 2 + 2?"), add_special_tokens=False)["input_ids"])
    assert all(x == -100 for x in labels[:prompt_len])  # no loss on the prompt
    trained = [t for t in labels if t != -100]
    assert tok.decode(trained).startswith("2 + 2 = 4.")  # loss on the whole completion...
    stop_id = tok.convert_tokens_to_ids(template_for(cfg.student).stop)
    assert trained[-1] == stop_id and ids[-1] == stop_id  # ...through the end token, the stop token at evaluation


def test_trained_student_stops_at_its_end_token(tmp_path, embedded_model_dir):
    gen = _gen_cell(tmp_path, n=8)
    cfg = SftConfig(generate_cell=gen, max_steps=12, batch_size=4, learning_rate=2e-3, max_length=128)
    run_sft(cfg, tmp_path / "sft" / "s")
    rows = [{"question": f"What is {i} + {i}?"} for i in range(8)]
    from cotlib.generation import generate

    template_for = prompts.template_for

    tok = models.load_tokenizer(cfg.student)
    model = models.load_model(cfg.student, adapter=tmp_path / "sft" / "s" / "adapter")
    t = template_for(cfg.student)
    out = generate(model, tok, [t.render(r["question"]) for r in rows], max_new_tokens=60, stop=t.stop)
    assert not any(g.hit_limit for g in out)  # every answer ended with the end token
    assert sum(g.text.endswith(f"The answer is {2 * i}") for i, g in enumerate(out)) >= 6  # it learned the format


_KILL_CHILD = """
import sys
from pathlib import Path
from cotlib.schemas import SftConfig
from cotlib.stages import run_cell
cfg = SftConfig(generate_cell="generate/g", max_steps=8, batch_size=2, save_steps=2, learning_rate=1e-3, max_length=128)
run_cell("sft", sys.argv[1], cfg, inputs={"train": Path(sys.argv[1]).parents[1] / "generate" / "g"})
"""


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, embedded_model_dir):
    import signal
    import subprocess
    import sys
    import time

    _gen_cell(tmp_path, n=8)
    cell = tmp_path / "sft" / "s"
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(cell)])
    deadline = time.time() + 300
    while time.time() < deadline and not (cell / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        time.sleep(0.5)
    # in flight, the cell names who trains it and how far it has got (what `cotlib status` shows)
    holder, how_far = cells.holder(cell), STAGES["sft"].progress(cell)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert holder is not None and holder["pid"] == child.pid, holder
    assert how_far is not None and re.fullmatch(r"step [4-8] of 8, loss \d+\.\d{3}, at \S+", how_far), how_far
    assert cells.holder(cell) is None  # the killed holder's file is left behind, but nobody holds the cell
    assert (cell / ".cell.lock.holder").exists()
    assert list((cell / "checkpoints").glob("checkpoint-*")) and not (cell / "adapter").exists()
    cfg = SftConfig(generate_cell="generate/g", max_steps=8, batch_size=2, save_steps=2, learning_rate=1e-3, max_length=128)
    m = run_sft(cfg, cell)
    assert m["resumed"] and m["resumed_from_step"] >= 4 and m["steps"] == 8
    log = json.loads((cell / "loss.json").read_text())
    steps = [h["step"] for h in log]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # the loss curve continues; no step is done twice
    # the training figures are the whole training's, as if it had not been cut: the same tokens as a run
    # that never stopped, the seconds of both runs, the mean loss of all 8 steps (not only the last run's)
    whole = run_sft(cfg, tmp_path / "sft" / "uncut")
    assert m["train_tokens"] == whole["train_tokens"] > m["this_run"]["tokens"] > 0
    assert m["train_seconds"] > m["this_run"]["seconds"] > 0
    assert m["train_loss"] == pytest.approx(sum(h["loss"] for h in log) / 8, rel=1e-4)
    assert m["train_loss"] == pytest.approx(whole["train_loss"], rel=0.02)


def test_a_resume_from_a_checkpoint_without_the_progress_record_says_its_totals_are_unknown(tmp_path, embedded_model_dir):
    """A checkpoint written before cotlib recorded the whole training's seconds and tokens in it (or by another
    tool): the run resumes, and reports its own part as this_run, the whole as unknown rather than too small."""
    _gen_cell(tmp_path, n=8)
    cell = tmp_path / "sft" / "s"
    cfg = SftConfig(generate_cell="generate/g", max_steps=4, batch_size=2, save_steps=2, learning_rate=1e-3, max_length=128)
    run_sft(cfg, cell)
    ckpt = max((cell / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["stateful_callbacks"].pop("Progress")["attributes"]["totals"]["tokens"] > 0
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    (cell / "metrics.json").unlink()  # as if the run had been killed after this checkpoint
    shutil.rmtree(cell / "adapter")
    m = run_sft(cfg.model_copy(update={"max_steps": 6}), cell)
    assert m["resumed_from_step"] == 4 and m["steps"] == 6
    assert m["train_tokens"] is None and m["train_seconds"] is None and m["this_run"]["tokens"] > 0


def test_multi_gpu_runs_through_accelerate_launch(tmp_path, embedded_model_dir):
    import subprocess

    from cotlib.train import launch_command

    cell = tmp_path / "sft" / "s"
    cmd = launch_command(cell, 4, "bf16")
    assert cmd[1:] == ["-m", "accelerate.commands.launch", "--num_processes", "4", "--num_machines", "1",
                       "--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", "cotlib.train", str(cell)]
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="num_gpus: 2 asked for, 0 visible"):
            check_method("lora", num_gpus=2)
    # the entry point every process runs, launched for real through accelerate (one process here)
    cfg = SftConfig(generate_cell=_gen_cell(tmp_path), max_steps=2, batch_size=2, max_length=128, num_gpus=2)
    cells.write_config(cell, "sft", cfg)
    from cotlib.train import prepare

    prepare(cfg, tmp_path / "generate" / "g" / "sft.jsonl", cell, models.load_tokenizer(cfg.student))
    one = launch_command(cell, 1, "bf16" if torch.cuda.is_available() else "no")
    if not torch.cuda.is_available():
        one.insert(one.index("-m", 2), "--cpu")
    done = subprocess.run(one, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((cell / "train_metrics.json").read_text())
    assert m["steps"] == 2 and m["num_gpus"] == 2 and (cell / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("student,method,choice,expected", [
    ("llama-3.2-1b", "lora", "auto", "EOS"),  # base model + LoRA: <|eot_id|> was never trained
    ("llama-3.2-1b", "qlora", "auto", "EOS"),
    ("llama-3.2-1b", "full", "auto", "<|eot_id|>"),  # full fine-tuning trains the template token
    ("gemma-2b", "lora", "template", "<end_of_turn>"),  # an explicit choice wins
    ("bloom-560m", "lora", "auto", "EOS"),  # alpaca has no end token of its own
    ("smollm2-135m", "lora", "auto", "<|im_end|>"),  # instruct: its template token is trained
])
def test_end_token_strategy(student, method, choice, expected):
    from cotlib.train import end_token

    tok, why = end_token(SftConfig(generate_cell="g", student=student, method=method, end_token=choice), "EOS")
    assert tok == expected and why


@pytest.mark.parametrize("student,stop", [("gemma-3-270m", "<eos>"), ("qwen2.5-coder-0.5b", "<|im_end|>")])
def test_real_students_learn_and_stop_at_their_end_token(tmp_path, student, stop):
    """Gemma-3-270M is a base model in the paper's gemma template: its <end_of_turn> is untrained and LoRA
    cannot train it, so it learns the tokenizer's <eos>, which evaluation stops at (the paper's Gemma-2B
    case, for real); Qwen2.5-Coder is an instruct model and keeps its own <|im_end|>."""
    from cotlib.generation import generate

    if models.offline_status(student) == "not installed":
        pytest.skip(f"{student} is not installed here: run `cotlib models install {student}` (or `make models`)")
    cfg = SftConfig(generate_cell=_gen_cell(tmp_path, n=8), student=student, max_steps=12, batch_size=4,
                    learning_rate=2e-3, max_length=128)
    m = run_sft(cfg, tmp_path / "sft" / "s")
    losses = [h["loss"] for h in json.loads((tmp_path / "sft" / "s" / "loss.json").read_text())]
    assert m["stop_token"] == stop and losses[-1] < losses[0] / 2  # it learned
    tok = models.load_tokenizer(student)
    model = models.load_model(student, adapter=tmp_path / "sft" / "s" / "adapter")
    t = prompts.template_for(student)
    out = generate(model, tok, [t.render(f"What is {i} + {i}?") for i in range(8)], max_new_tokens=40, stop=m["stop_token"],
                   add_special_tokens=True)  # as evaluation tokenizes a student's prompt: Gemma's <bos> included
    assert sum(not g.hit_limit for g in out) >= 7  # it stops where it was trained to
    assert sum(g.text.endswith(f"The answer is {2 * i}") for i, g in enumerate(out)) >= 6
