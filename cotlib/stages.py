"""The stage registry: each stage of the loop declared once — its config model, its notebook, its run
function, what it needs from the environment, what it asks of an executor, how its cells are wired to
the stage before, and when a finished cell counts as complete.

The runner, the executors, the CLI and the preflight iterate `STAGES` and know no stage by name; a new
stage is one more `Stage` here (and its notebook). `run_cell` is what every stage notebook calls.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from . import cells
from .environment import Requirement
from .files import read_json
from .schemas import EvaluateConfig, FiguresConfig, GenerateConfig, SftConfig, Strict

if TYPE_CHECKING:
    from .expansion import Builder, Cell


@dataclass(frozen=True)
class Context:
    """What a stage's run function is handed: its own folder, its upstream folders, its lineage."""

    dir: Path
    inputs: dict[str, Any] = field(default_factory=dict)  # role -> Path or list[Path]
    lineage: dict[str, Any] = field(default_factory=dict)
    deferred: bool = False  # under the runner: metrics are sealed only once the whole notebook ran

    def input(self, role: str) -> Path | None:
        v = self.inputs.get(role)
        return Path(v) if v is not None else None


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[Strict]
    notebook: str
    run: str  # "module:function", imported when a cell runs (the runner itself loads no model code)
    expand: Callable[[Builder, Any], list[Cell]]
    requirements: Callable[[Any], list[Requirement]] = lambda cfg: []
    gpus: Callable[[Any, float], float] = lambda cfg, per_stage: per_stage  # what a cell asks an executor for
    input_files: Callable[[Any, Context], dict[str, Path]] = lambda cfg, ctx: {}  # fingerprinted in provenance
    incomplete: Callable[[dict[str, Any]], str | None] = lambda metrics: None  # why a finished cell is not done
    progress: Callable[[Path], str | None] = lambda cell_dir: None  # how far a cell in flight has got (`cotlib status`)
    # what is wrong with the upstream folders a notebook was handed (run_cell), or None
    check_inputs: Callable[[Any, dict[str, Any]], str | None] = lambda cfg, inputs: None
    soft_deps: bool = False  # runs with whatever upstream cells finished
    one_cell: bool = False  # a single cell per grid, named by the stage alone
    default_gpus: float = 0.0  # the executor's default GPU share for a cell of this stage
    scored: bool = False  # its cells are the rows of the grid's results table
    # its output is only read by the cells downstream (trained weights): a cell that every reader of it has
    # done without it (evaluations restored from an export) is not run
    intermediate: bool = False

    def run_function(self) -> Callable[[Any, Context], dict[str, Any]]:
        module, fn = self.run.split(":")
        return getattr(importlib.import_module(module), fn)


# ---------------------------------------------------------------- generate


def _expand_generate(b: Builder, section: Any) -> list[Cell]:
    from .expansion import Cell

    cfgs = [b.build("generate", c) for c in b.combos("generate", section)]
    return [Cell("generate", cfg, lineage=cfg.lineage()) for cfg in cfgs]


def _generate_requirements(cfg: GenerateConfig) -> list[Requirement]:
    from . import data
    from .teacher_backends import backend_for

    return [data.requirement(cfg.dataset, cfg.split, cfg.source), *backend_for(cfg).requirements(cfg)]


def _generate_gpus(cfg: GenerateConfig, per_stage: float) -> float:
    from .teacher_backends import backend_for

    return backend_for(cfg).gpus(cfg, per_stage)


def _generate_files(cfg: GenerateConfig, ctx: Context) -> dict[str, Path]:
    from .teacher_backends import backend_for

    return backend_for(cfg).input_files(cfg)


def _generate_incomplete(m: dict[str, Any]) -> str | None:
    n = m.get("retryable_failed", 0)
    return f"{n} rows failed and are retried on the next run" if n else None


def _generate_progress(cell_dir: Path) -> str | None:
    try:
        with open(cell_dir / "records.jsonl", "rb") as f:
            n = sum(1 for line in f if line.strip())
    except OSError:
        return None
    return f"{n} rows saved"


# ---------------------------------------------------------------- sft


def _expand_sft(b: Builder, section: Any) -> list[Cell]:
    """Every sft combination trains on every generate cell, or on those its `train_on` selects."""
    from .expansion import Cell

    out = []
    for combo in b.combos("sft", section):
        train_on = combo.pop("train_on", None)
        if not b.cells["generate"]:
            raise b.fail("sft", "needs a generate section to train on")
        gens = [g for g in b.cells["generate"] if _selects(b, train_on, g.config, "sft")]
        if not gens:
            raise b.fail("sft", f"train_on {train_on} selects no generate cell")
        for g in gens:
            cfg = b.build("sft", {**combo, "generate_cell": g.name})
            out.append(Cell("sft", cfg, inputs={"train": g.name},
                            lineage={**g.lineage, "student": cfg.student, "method": cfg.method}))
    return out


def _selects(b: Builder, where: Any, cfg: Strict, stage: str) -> bool:
    """`train_on: {key: value or [values]}` over the generate cells' configs."""
    if where is None:
        return True
    if not isinstance(where, dict):
        raise b.fail(stage, "train_on: must map generate keys to a value or a list of values")
    for key, want in where.items():
        if key not in type(cfg).model_fields:
            raise b.fail(stage, f"train_on.{key}: not a generate key (keys: {', '.join(type(cfg).model_fields)})")
        if getattr(cfg, key) not in (want if isinstance(want, list) else [want]):
            return False
    return True


def _sft_requirements(cfg: SftConfig) -> list[Requirement]:
    from . import models, train

    return [models.requirement(cfg.student), train.requirement(cfg.method, cfg.num_gpus, cfg.precision)]


def _sft_inputs(cfg: SftConfig, inputs: dict[str, Any]) -> str | None:
    if not inputs.get("train"):
        return ("the sft stage needs inputs['train'], the generate cell folder it trains on "
                "(papermill: -y \"inputs: {train: outputs/my-grid/generate/...}\")")
    return None


def _sft_files(cfg: SftConfig, ctx: Context) -> dict[str, Path]:
    return {"train": ctx.input("train") / "sft.jsonl"}


def _sft_progress(cell_dir: Path) -> str | None:
    try:
        p = read_json(cell_dir / cells.TRAIN_PROGRESS)
        return f"step {p['step']} of {p['max_steps']}, loss {p['loss']:.3f}, at {p['when']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- evaluate


def _expand_evaluate(b: Builder, section: Any) -> list[Cell]:
    """An evaluate cell per trained student, plus one per base student (`include_base`); without a
    `dataset` key each student is tested on the dataset it was trained on."""
    from .expansion import Cell

    out, names = [], set()
    gens = {g.name: g for g in b.cells["generate"]}
    for combo in b.combos("evaluate", section):
        train_on = combo.pop("train_on", None)  # evaluate only the students trained on these generate cells
        sft_cells = [s for s in b.cells["sft"] if _selects(b, train_on, gens[s.inputs["train"]].config, "evaluate")]
        include_base = combo.pop("include_base", True)
        if train_on is not None and not sft_cells:
            continue  # a section for students this grid does not train (a base grid's MATH section, say)
        if not isinstance(include_base, bool):
            raise b.fail("evaluate", "include_base: must be true or false")
        explicit_student = combo.pop("student", None)
        same_dataset = "dataset" not in combo
        if same_dataset and not sft_cells:
            raise b.fail("evaluate", "dataset: required when the grid trains no student")
        trained = [s for s in sft_cells if not explicit_student or s.config.student == explicit_student]
        if include_base:
            if same_dataset:
                pairs = list(dict.fromkeys((s.config.student, s.lineage["train_dataset"]) for s in trained))
            else:
                students = dict.fromkeys(([explicit_student] if explicit_student else []) + [s.config.student for s in sft_cells])
                pairs = [(st, combo["dataset"]) for st in students]
            for student, ds in pairs:
                # a base model has no adapter: the `lora` axis would only repeat its cell
                cfg = b.build("evaluate", {**combo, "student": student, "dataset": ds, "lora": "adapter"})
                cell = Cell("evaluate", cfg, lineage={"student": student, "dataset": ds, "method": "base", "teacher": None,
                                                      "level": None, "format": None, "train_dataset": None})
                if cell.name not in names:
                    names.add(cell.name)
                    out.append(cell)
        for s in trained:
            ds = s.lineage["train_dataset"] if same_dataset else combo["dataset"]
            cfg = b.build("evaluate", {**combo, "dataset": ds, "student": s.config.student, "sft_cell": s.name})
            out.append(Cell("evaluate", cfg, inputs={"student": s.name}, lineage={**s.lineage, "dataset": ds}))
        if not include_base and not trained:
            raise b.fail("evaluate", "name a student, or add an sft section to evaluate")
    if section and not out:
        raise b.fail("evaluate", "no section selects a student to evaluate (check its train_on)")
    return out


def _evaluate_requirements(cfg: EvaluateConfig) -> list[Requirement]:
    from . import data, evaluate, models

    return [data.requirement(cfg.dataset, cfg.split, cfg.source, cfg.subjects), models.requirement(cfg.student),
            *evaluate.requirements(cfg)]


def _evaluate_inputs(cfg: EvaluateConfig, inputs: dict[str, Any]) -> str | None:
    """A trained student's evaluation needs its sft folder, a base one has none: otherwise the base model
    would be scored under the trained one's name (or the other way round)."""
    if cfg.sft_cell is not None and not inputs.get("student"):
        return (f"config.sft_cell is {cfg.sft_cell!r}, so inputs['student'] must be that sft cell's folder "
                f"(papermill: -y \"inputs: {{student: outputs/my-grid/{cfg.sft_cell}}}\")")
    if cfg.sft_cell is None and inputs.get("student"):
        return ("inputs['student'] names a trained student, but config.sft_cell is null (a base evaluation): "
                "set config.sft_cell to that cell's name, or drop the input")
    return None


def _evaluate_files(cfg: EvaluateConfig, ctx: Context) -> dict[str, Path]:
    student = ctx.input("student")
    if student is None:
        return {}
    weights = next((student / d for d in ("adapter", "model") if (student / d).exists()), student)
    return {"student": weights}


# ---------------------------------------------------------------- figures


def _expand_figures(b: Builder, section: Any) -> list[Cell]:
    from .expansion import Cell

    if section is None:
        return []
    if not isinstance(section, dict):
        raise b.fail("figures", "must be one mapping (there is one figures cell per grid)")
    names = [c.name for c in b.cells["evaluate"]]
    for k in section:
        if k == "evaluate_cells":
            raise b.fail("figures", "evaluate_cells: set by the grid expansion (every evaluate cell of the grid)")
    return [Cell("figures", b.build("figures", {**section, "evaluate_cells": names}),
                 inputs={"evaluate": names, "generate": [c.name for c in b.cells["generate"]]}, soft_deps=True)]


def _figures_files(cfg: FiguresConfig, ctx: Context) -> dict[str, Path]:
    from .figures import input_files

    return input_files(cfg, ctx)


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("generate", GenerateConfig, "01_generate.ipynb", "cotlib.teachers:run_generate", _expand_generate,
          requirements=_generate_requirements, gpus=_generate_gpus, input_files=_generate_files,
          incomplete=_generate_incomplete, progress=_generate_progress, default_gpus=1.0),
    Stage("sft", SftConfig, "02_sft.ipynb", "cotlib.train:run_sft", _expand_sft, requirements=_sft_requirements,
          check_inputs=_sft_inputs, intermediate=True, progress=_sft_progress,
          gpus=lambda cfg, per_stage: cfg.num_gpus * per_stage, input_files=_sft_files, default_gpus=1.0),
    Stage("evaluate", EvaluateConfig, "03_evaluate.ipynb", "cotlib.evaluate:run_evaluate", _expand_evaluate,
          requirements=_evaluate_requirements, input_files=_evaluate_files, check_inputs=_evaluate_inputs,
          # vLLM claims its share of GPU memory up front
          gpus=lambda cfg, per_stage: max(per_stage, cfg.gpu_memory_utilization) if cfg.backend == "vllm" else per_stage,
          default_gpus=0.25, scored=True),
    Stage("figures", FiguresConfig, "04_figures.ipynb", "cotlib.figures:run_figures", _expand_figures,
          gpus=lambda cfg, per_stage: 0.0, input_files=lambda cfg, ctx: _figures_files(cfg, ctx),
          soft_deps=True, one_cell=True),
]}


class ParameterError(ValueError):
    """A notebook was handed a parameter of the wrong kind; the message names it and what it expects."""


def cell_folder(cell_dir: Any, stage: str = "<stage>") -> Path:
    """The notebook parameter `cell_dir` as a folder, or a ParameterError naming it: for whatever in a
    notebook touches the folder before `run_cell` does (a papermill user's `-p cell_dir 5` would otherwise
    fail inside pathlib)."""
    if not isinstance(cell_dir, (str, Path)) or not str(cell_dir).strip():
        raise ParameterError(f"parameter cell_dir: expected the cell's folder as a path string, got "
                             f"{type(cell_dir).__name__} {cell_dir!r} (papermill: -p cell_dir outputs/my-grid/{stage}/x)")
    return Path(cell_dir)


def _check_parameters(stage: str, cell_dir: Any, config: Any, inputs: Any, lineage: Any, seal: Any) -> None:
    if stage not in STAGES:
        raise ParameterError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    cell_folder(cell_dir, stage)
    if not isinstance(config, dict):
        raise ParameterError(f"parameter config: expected a mapping of {stage} keys, got {type(config).__name__} "
                             f"(papermill: -y 'config: {{...}}')")
    if inputs is not None and (not isinstance(inputs, dict) or
                               not all(isinstance(v, (str, Path, list)) for v in inputs.values())):
        raise ParameterError("parameter inputs: expected a mapping of role -> upstream cell folder(s)")
    if lineage is not None and not isinstance(lineage, dict):
        raise ParameterError(f"parameter lineage: expected a mapping, got {type(lineage).__name__}")
    if seal not in ("now", "deferred"):
        raise ParameterError(f"parameter seal: expected 'now' (write metrics.json at once) or 'deferred' (the runner "
                             f"seals it), got {seal!r}")


def run_cell(stage: str, cell_dir: str | Path, config: dict[str, Any] | Strict, inputs: dict[str, Any] | None = None,
             lineage: dict[str, Any] | None = None, seal: str = "now") -> dict[str, Any]:
    """Run one cell of `stage` in `cell_dir`: validate its parameters, open it (config, provenance with
    fingerprints of what it reads), run the stage, and write its metrics. `seal="deferred"` (the runner):
    metrics wait for the runner to seal them once the whole notebook has run."""
    if isinstance(config, Strict):  # from Python: a validated config is as good as its parameters
        config = config.model_dump(mode="json")
    _check_parameters(stage, cell_dir, config, inputs, lineage, seal)
    spec = STAGES[stage]
    try:
        cfg = spec.config.model_validate(config)
    except ValidationError as err:
        from .expansion import format_error

        raise ParameterError(format_error("parameter config", f"{stage}.", spec.config, err)) from None
    problem = spec.check_inputs(cfg, inputs or {})
    if problem:
        raise ParameterError(f"parameter inputs: {problem}")
    ctx = Context(Path(cell_dir), {k: [Path(x) for x in v] if isinstance(v, list) else Path(v)
                                   for k, v in (inputs or {}).items()}, dict(lineage or {}), seal == "deferred")
    ctx.dir.mkdir(parents=True, exist_ok=True)
    with cells.cell_lock(ctx.dir):
        cells.start(ctx.dir, stage, cfg, inputs=spec.input_files(cfg, ctx))
        metrics = spec.run_function()(cfg, ctx)
        if "precision" in metrics:  # chosen at run time from the device: part of what produced the cell
            cells.update_provenance(ctx.dir, precision=metrics["precision"])
        if ctx.lineage:
            metrics = {**metrics, "lineage": {**metrics.get("lineage", {}), **ctx.lineage}}
        return cells.finish(ctx.dir, stage, cfg, metrics, deferred=ctx.deferred)
