"""A grid file (`params/*.yaml`) read, validated and expanded into cells.

A stage section maps keys to a value or a list; a list is an axis and the section stands for every
combination. A section may also be a list of such mappings: the union of their cells. Each stage's
registry entry (cotlib.stages) wires its cells to the cells of the stage before. The expansion hands
each cell its upstream cells (`inputs`) and what it was trained on (`lineage`), so no stage rebuilds
the folder layout or re-reads upstream configs.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from . import cells
from .schemas import EXPANSION_KEYS, Strict


class GridError(ValueError):
    """The grid file is wrong; the message names the file, the stage and the key."""


@dataclass(eq=False)
class Cell:
    """One papermill execution of one stage's notebook."""

    stage: str
    config: Strict
    inputs: dict[str, str | list[str]] = field(default_factory=dict)  # role -> upstream cell name(s)
    lineage: dict[str, Any] = field(default_factory=dict)  # what the cell's student was trained on
    soft_deps: bool = False  # runs with whatever upstream finished (figures)

    @functools.cached_property
    def deps(self) -> list[str]:
        out: list[str] = []
        for v in self.inputs.values():
            out += v if isinstance(v, list) else [v]
        return out

    @functools.cached_property
    def config_hash(self) -> str:
        return cells.config_hash(self.stage, self.config)

    @functools.cached_property
    def name(self) -> str:
        """`<stage>/<slug>__<hash>`; a stage with one cell per grid (figures) is named by the stage alone."""
        from .stages import STAGES

        if STAGES[self.stage].one_cell:
            return self.stage
        return f"{self.stage}/{self.config.slug()}__{self.config_hash}"


@dataclass
class Grid:
    name: str
    path: Path
    output_root: Path  # <output_dir>/<name>
    kernel: str
    notebooks: dict[str, Path]
    cells: list[Cell]

    @functools.cached_property
    def _by_name(self) -> dict[str, Cell]:
        return {c.name: c for c in self.cells}

    def by_name(self) -> dict[str, Cell]:
        return self._by_name

    def cell_dir(self, cell: Cell | str) -> Path:
        return self.output_root / (cell if isinstance(cell, str) else cell.name)

    def inputs_of(self, cell: Cell) -> dict[str, str | list[str]]:
        """A cell's upstream folders, as the notebook is handed them."""
        return {k: [str(self.cell_dir(x)) for x in v] if isinstance(v, list) else str(self.cell_dir(v))
                for k, v in cell.inputs.items()}


class GridFile(BaseModel):
    """The top level of a params/*.yaml grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    output_dir: str = "outputs"
    kernel: str = "cotlib"
    notebooks: dict[str, str] = {}
    generate: dict[str, Any] | list[dict[str, Any]] | None = None
    sft: dict[str, Any] | list[dict[str, Any]] | None = None
    evaluate: dict[str, Any] | list[dict[str, Any]] | None = None
    figures: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError("must be a folder-safe name: letters, digits, '.', '_' or '-' (at most 100)")
        return v

    @field_validator("notebooks")
    @classmethod
    def _stages(cls, v: dict[str, str]) -> dict[str, str]:
        from .stages import STAGES

        unknown = [k for k in v if k not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})")
        return v


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The (nested) model that owns the last key of an error location, e.g. ApiConfig for api.foo."""
    for part in loc[:-1]:
        f = model.model_fields.get(str(part))
        sub = getattr(f, "annotation", None) if f else None
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
        else:
            break
    return model


def format_error(where: str, prefix: str, model: type[BaseModel], err: ValidationError) -> str:
    """One line per problem: file, key, and for an unknown key the keys that are allowed there."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(section)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, e["loc"])
            allowed = [k for k in owner.model_fields if k not in EXPANSION_KEYS]
            msg = f"unknown key (allowed: {', '.join(allowed)})"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {prefix}{key}: {msg}")
    return "\n".join(lines)


def combos(section: dict[str, Any], list_keys: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Keys whose value is a list are axes; the cells are their cartesian product. A key whose value is
    itself a list (`subjects`) is an axis only when given a list of lists."""

    def is_axis(k: str, v: Any) -> bool:
        return isinstance(v, list) and (k not in list_keys or all(isinstance(x, list) for x in v))

    axes = {k: v for k, v in section.items() if is_axis(k, v)}
    fixed = {k: v for k, v in section.items() if not is_axis(k, v)}
    for k, v in axes.items():
        if not v:
            raise ValueError(f"axis {k!r} is an empty list")
    keys = list(axes)
    return [{**fixed, **dict(zip(keys, vals))} for vals in itertools.product(*(axes[k] for k in keys))]


def _list_fields(stage: str) -> frozenset[str]:
    """The keys of a stage whose values are lists, so a list given for one is a value, not an axis."""
    import typing

    from .stages import STAGES

    def listy(annotation: Any) -> bool:
        return annotation is list or typing.get_origin(annotation) is list or any(
            listy(a) for a in typing.get_args(annotation))

    return frozenset(k for k, f in STAGES[stage].config.model_fields.items() if listy(f.annotation))


@dataclass
class Builder:
    """What a stage's expansion uses: validation with the grid's error messages, and the grid's cells so far."""

    path: Path
    cells: dict[str, list[Cell]] = field(default_factory=dict)  # stage -> its cells, in order

    def build(self, stage: str, values: dict[str, Any]) -> Strict:
        from .stages import STAGES

        model = STAGES[stage].config
        try:
            return model.model_validate(values)
        except ValidationError as err:
            raise GridError(format_error(str(self.path), f"{stage}.", model, err)) from None

    def combos(self, stage: str, section: dict[str, Any] | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """Each section's combinations, in order; a key the expansion sets is refused."""
        if not section:
            return []
        out = []
        for part in section if isinstance(section, list) else [section]:
            if not isinstance(part, dict):
                raise GridError(f"{self.path}: {stage}: each section must be a mapping of keys to values")
            owned = [k for k in part if k in EXPANSION_KEYS]
            if owned:
                raise GridError(f"{self.path}: {stage}.{owned[0]}: set by the grid expansion from the cells it "
                                f"wires together, not a grid key (sft: `train_on` selects generate cells; evaluate: "
                                f"`student` selects students)")
            try:
                out += combos(part, _list_fields(stage))
            except ValueError as err:
                raise GridError(f"{self.path}: {stage}: {err}") from None
        return out

    def fail(self, stage: str, message: str) -> GridError:
        return GridError(f"{self.path}: {stage}: {message}")


def expand(raw: dict[str, Any], path: Path, project_root: Path | None = None) -> Grid:
    """Validate a grid and expand it into cells, stage by stage in the registry's order."""
    from .stages import STAGES

    try:
        top = GridFile.model_validate(raw)
    except ValidationError as err:
        raise GridError(format_error(str(path), "", GridFile, err)) from None
    root = project_root or Path.cwd()
    b = Builder(path)
    all_cells: list[Cell] = []
    for name, stage in STAGES.items():
        b.cells[name] = stage.expand(b, getattr(top, name))
        all_cells += b.cells[name]
    if not all_cells:
        raise GridError(f"{path}: the grid has no stage sections ({', '.join(STAGES)})")
    seen: set[str] = set()
    dupes = sorted({c.name for c in all_cells if c.name in seen or seen.add(c.name)})
    if dupes:
        raise GridError(f"{path}: the grid expands to duplicate cells: {dupes}")

    notebooks = {n: root / "notebooks" / s.notebook for n, s in STAGES.items()}
    for stage, nb in top.notebooks.items():
        p = Path(nb)
        notebooks[stage] = p if p.is_absolute() else (path.parent / p)
    for stage in {c.stage for c in all_cells}:
        if not notebooks[stage].exists():
            raise GridError(f"{path}: notebook for stage {stage!r} not found at {notebooks[stage]}")
    out = Path(top.output_dir)
    out = out if out.is_absolute() else root / out
    return Grid(top.name, path, out / top.name, top.kernel, notebooks, all_cells)


def load_grid(path: str | Path, project_root: Path | None = None) -> Grid:
    """Read, validate and expand a grid YAML file."""
    path = Path(path)
    return expand(read_with_extends(path), path.resolve(), project_root or find_project_root(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            a, b = seen[key].start_mark, key_node.start_mark
            where = (f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}" if a.line == b.line
                     else f"lines {a.line + 1} and {b.line + 1}")
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice ({where}); keep one", b)
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise GridError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
                        f"save the file as UTF-8") from None
    except OSError as err:
        raise GridError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise GridError(f"{path}: not valid YAML: {err}") from None


def read_with_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A grid file with its `extends:` chain merged in: a stage section in the file overrides the
    same keys of the base's section; other top-level keys replace the base's."""
    from .stages import STAGES

    if not path.exists():
        raise GridError(f"grid file {path} not found")
    if path.resolve() in seen:
        raise GridError(f"{path}: `extends` loops back to itself")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise GridError(f"{path}: the top level must be a mapping with a 'name' and stage sections")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise GridError(f"{path}: extends: must name one grid file, relative to this one")
    base = read_with_extends(path.parent / base_name, (*seen, path.resolve()))
    if "output_dir" in base and "output_dir" not in raw and not Path(base["output_dir"]).is_absolute():
        raw["output_dir"] = base.pop("output_dir")  # relative to the project, whichever file named it
    merged = dict(base)
    for key, value in raw.items():
        merged[key] = _merge_section(base.get(key), value) if key in STAGES else value
    return merged


def _merge_section(base: Any, override: Any) -> Any:
    """A stage section over its base: keys override keys; a list of sections each takes the base's keys
    (and a base list takes an override mapping in each of its sections)."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **override}
    if isinstance(base, dict) and isinstance(override, list):
        return [{**base, **part} if isinstance(part, dict) else part for part in override]
    if isinstance(base, list) and isinstance(override, dict):
        return [{**part, **override} if isinstance(part, dict) else part for part in base]
    return override


def find_project_root(start: str | Path) -> Path:
    """The folder holding notebooks/ above a grid file (or the cwd)."""
    p = Path(start).resolve()
    for cand in [p, *p.parents]:
        if (cand / "notebooks" / "01_generate.ipynb").exists():
            return cand
    return Path.cwd()
