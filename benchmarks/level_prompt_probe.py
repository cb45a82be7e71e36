"""Try rewordings of a granularity level's instruction cheaply, before a full calibration run.

`level_calibration.py` measures one prompt set on many questions, a level per process: with a 1.5B
teacher on this CPU that is 10-30 minutes a level. This probe sends every variant for the first `--n`
training questions through ONE engine in one batch, so several rewordings cost about one small level.
Each variant replaces one level's instruction (cotlib.prompts.LEVELS) for its own prompts only; the
word target, exemplar and answer line stay as they are. The current instruction of each level named
is measured too, as the baseline on the same questions.

    python benchmarks/level_prompt_probe.py --teacher qwen2.5-coder-1.5b --n 20 \\
        --variant "2=In one or two short sentences, show only the main step and its calculation." \\
        --variant "5=Explain in seven or eight numbered steps: ..."

The small n makes this a screen, not a measurement: keep the variant that moves the mean where it
should, then measure it with level_calibration.py on 200 or more questions. The last line names the
variant whose mean lands closest to its level's word target.
"""

from __future__ import annotations

import argparse
import sys

from level_calibration import summarize  # the same figures as the full calibration

from cotlib import data, generation, models, prompts, teacher_backends, teachers
from cotlib.schemas import GenerateConfig


def parse_variant(text: str) -> tuple[int, str]:
    level, sep, instruction = text.partition("=")
    if not sep or not level.strip().isdigit() or int(level) not in prompts.LEVELS or not instruction.strip():
        raise argparse.ArgumentTypeError(f"--variant {text!r}: write LEVEL=INSTRUCTION with LEVEL in 1..6, "
                                         "e.g. --variant '2=In one or two short sentences, ...'")
    return int(level), instruction.strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="svamp")
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--backend", default="vllm", choices=["vllm", "transformers"])
    p.add_argument("--n", type=int, default=20, help="first N training questions")
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument("--variant", type=parse_variant, action="append", required=True, metavar="LEVEL=INSTRUCTION")
    a = p.parse_args()

    base = {"teacher": a.teacher, "dataset": a.dataset, "split": "train", "filter": "keep_all",
            "max_new_tokens": a.max_new_tokens, "backend": a.backend}
    examples = data.load_examples(a.dataset, "train", a.n)
    variants = [(lvl, prompts.LEVELS[lvl], "current") for lvl in sorted({lvl for lvl, _ in a.variant})]
    variants += [(lvl, text, f"variant {i + 1}") for i, (lvl, text) in enumerate(a.variant)]
    cfgs = [GenerateConfig.model_validate({**base, "level": lvl}) for lvl, _, _ in variants]
    tok = models.load_tokenizer(a.teacher)
    current = dict(prompts.LEVELS)
    texts = []
    try:  # each variant's prompts are rendered while its instruction stands in for its level's
        for (lvl, instruction, _), cfg in zip(variants, cfgs):
            prompts.LEVELS[lvl] = instruction
            texts += [tok.apply_chat_template(teacher_backends.messages(cfg, ex), tokenize=False, add_generation_prompt=True)
                      for ex in examples]
    finally:
        prompts.LEVELS.update(current)
    engine = generation.open_engine(a.backend, a.teacher, tok, texts, cfgs[0].decoding, batch_size=64, desc="probe")
    try:
        outs = engine.generate(texts)
    finally:
        engine.close()

    print(f"\n{a.teacher} on the first {a.n} {a.dataset} training questions; words per CoT (answer line included)")
    best: tuple[float, str] | None = None
    for i, ((lvl, instruction, label), cfg) in enumerate(zip(variants, cfgs)):
        # the generate stage's own row (cut after the answer line, graded), as the calibration counts it
        rows = [teachers._row(ex, {"cot": g.text, "new_tokens": g.new_tokens, "hit_limit": g.hit_limit}, cfg)
                for ex, g in zip(examples, outs[i * a.n:(i + 1) * a.n])]
        mean, half, correct, answer_line = summarize(rows)
        target = prompts.target_words(a.dataset, lvl)
        print(f"  L{lvl} {label:10s} {mean:6.1f} ± {half:4.1f} words (asked {target}), teacher correct {correct:4.0%}, "
              f"answer line {answer_line:4.0%}  | {instruction}")
        if label != "current" and (best is None or abs(mean - target) < best[0]):
            best = (abs(mean - target), f"L{lvl} {label}")
    print(f"closest to its target: {best[1]} ({best[0]:.1f} words off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
