"""Recipes: the YAML file that says what `edgecompress compress` does.

A recipe has fixed sections (data, evaluate, export, measure) and an ordered list
of compression `steps`. Each step is `{name: {params}}`; names resolve through
the step registry in `edgecompress.pipeline.steps`, so a new technique adds a
registered step, not a branch here. Unknown keys anywhere are errors: a typo in a
recipe must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.errors import UserError, suggest

SCHEMA = "edgecompress.recipe/1"
FORMATS = ("onnx", "tflite")


@dataclass(frozen=True)
class DataSection:
    dataset: str = "fashion-mnist"
    path: str | None = None  # image-folder root (dataset: image-folder)
    val_size: int = 5000

    def __post_init__(self) -> None:
        if self.dataset not in ("fashion-mnist", "image-folder"):
            raise ValueError(f"data.dataset {self.dataset!r} must be 'fashion-mnist' or 'image-folder'")
        if self.dataset == "image-folder" and not self.path:
            raise ValueError("data.path is required when data.dataset is 'image-folder'")
        if self.val_size < 0:
            raise ValueError(f"data.val_size {self.val_size} must be >= 0")


@dataclass(frozen=True)
class EvaluateSection:
    split: str = "test"
    max_samples: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.split not in ("val", "test"):
            raise ValueError(f"evaluate.split {self.split!r} must be 'val' or 'test'")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(f"evaluate.max_samples {self.max_samples} must be a positive integer or null")
        if self.batch_size <= 0:
            raise ValueError(f"evaluate.batch_size {self.batch_size} must be a positive integer")


@dataclass(frozen=True)
class ExportSection:
    formats: tuple[str, ...] = FORMATS
    parity_samples: int = 32
    evaluate_artifacts: bool = True
    allow_mismatch: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"export.formats {list(self.formats)} must be a non-empty subset of {list(FORMATS)}")
        if self.parity_samples <= 0:
            raise ValueError(f"export.parity_samples {self.parity_samples} must be a positive integer")


@dataclass(frozen=True)
class MeasureSection:
    threads: tuple[int, ...] = (1, 2)
    runs: int = 50
    warmup: int = 10
    trials: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "threads", tuple(self.threads))
        if not self.threads or any((not isinstance(t, int)) or t <= 0 for t in self.threads):
            raise ValueError(f"measure.threads {list(self.threads)} must be a list of positive integers")
        for name in ("runs", "trials"):
            if getattr(self, name) <= 0:
                raise ValueError(f"measure.{name} {getattr(self, name)} must be a positive integer")
        if self.warmup < 0:
            raise ValueError(f"measure.warmup {self.warmup} must be >= 0")


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    steps: tuple[tuple[str, dict], ...] = ()
    export: ExportSection = field(default_factory=ExportSection)
    measure: MeasureSection = field(default_factory=MeasureSection)
    source: str | None = None  # the file it came from, for messages

    def to_dict(self) -> dict[str, Any]:
        d = {"schema": SCHEMA, "name": self.name, "seed": self.seed}
        for sec in ("data", "evaluate"):
            d[sec] = dataclasses.asdict(getattr(self, sec))
        d["steps"] = [{name: dict(params)} for name, params in self.steps]
        d["export"] = {**dataclasses.asdict(self.export), "formats": list(self.export.formats)}
        d["measure"] = {**dataclasses.asdict(self.measure), "threads": list(self.measure.threads)}
        return d


_SECTIONS = {"data": DataSection, "evaluate": EvaluateSection, "export": ExportSection, "measure": MeasureSection}
_TOP_KEYS = {"schema", "name", "seed", "steps", *_SECTIONS}


def _section(where: str, cls: type, raw: Any):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise UserError(f"{where}: section must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}{suggest(unknown[0], known)}; valid keys: {', '.join(sorted(known))}")
    try:
        return cls(**raw)
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: {e}") from None


def recipe_from_dict(raw: Any, source: str = "<recipe>") -> Recipe:
    """Validate a parsed recipe document and build a `Recipe`."""
    from edgecompress.pipeline.steps import available_steps, validate_sequence, validate_step

    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping with keys like name, data, steps, export, measure")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r}{suggest(unknown[0], _TOP_KEYS)}")
    schema = raw.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise UserError(f"{source}: schema {schema!r} is not supported by this version; expected {SCHEMA!r}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{source}: seed {seed!r} must be an integer")
    steps = []
    for i, item in enumerate(raw.get("steps") or []):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise UserError(f"{source}: steps[{i}] must be a one-key mapping like '- prune: {{...}}', got {item!r}")
        (name, params), = item.items()
        known = available_steps()
        if name not in known:
            have = ", ".join(known) if known else "none yet in this version"
            raise UserError(f"{source}: steps[{i}] {name!r} is not an available step{suggest(name, known)}; available: {have}")
        if params is not None and not isinstance(params, dict):
            raise UserError(f"{source}: steps[{i}] {name}: its parameters must be a mapping, got {params!r}")
        try:
            validate_step(name, dict(params or {}))
        except ValueError as exc:
            raise UserError(f"{source}: steps[{i}] {name}: {exc}") from None
        steps.append((name, dict(params or {})))
    try:
        validate_sequence(steps)
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None
    sections = {k: _section(f"{source}: {k}", cls, raw.get(k)) for k, cls in _SECTIONS.items()}
    return Recipe(name=str(raw.get("name", Path(source).stem)), seed=seed, steps=tuple(steps), source=source, **sections)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {str(path)!r} not found; pass an existing YAML file (see recipes/demo.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"recipe {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    return recipe_from_dict(raw, source=str(path))
