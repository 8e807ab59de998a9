"""Search spaces as data: a MobileNet/ShuffleNet-block network whose blocks are chosen by a search.

    from edgecompress.search.spaces import load_space, list_spaces
    space = load_space("mobile")            # the bundled mobile.yaml; or a path to your YAML
    space.blocks()                          # one BlockSlot per searchable block
    space.allowed(space.blocks()[3])        # the choices that block may take

A space is a fixed skeleton and a list of choices. The skeleton: a 3x3 stem conv
(`stem.channels`, `stem.stride`), stages of `blocks` blocks each (`channels` out, the
first block of a stage carries its `stride`), a 1x1 head conv (`head.channels`), global
average pooling and a linear classifier. Input channels, input size and classes are not
part of the space: they come from the model being replaced when the network is built.

Choices (a space lists a subset, in any order; a stage may narrow it with its own
`choices`):
- `mb_k{3,5,7}_e{3,6}` and the same with `_se`: MobileNetV2 inverted residual with a
  k x k depthwise conv and expansion ratio e, with a MobileNetV3-style squeeze-excitation
  after the depthwise conv when `_se` (12 choices);
- `shuffle`: ShuffleNetV2 unit (needs even channel counts);
- `skip`: the identity. It is allowed only where the block keeps its input shape
  (stride 1, as many channels out as in): every block of a stage but the first, and
  the first too when its stage neither widens nor downsamples. Skipping blocks is how
  a search chooses depth: a stage that widens or downsamples keeps at least its first block.

YAML (the bundled mobile.yaml is the example):

    name: mobile
    stem: {channels: 16, stride: 1}
    stages:
      - {channels: 24, blocks: 2, stride: 2}
      - {channels: 40, blocks: 2, stride: 2, choices: [mb_k3_e3, mb_k5_e3, skip]}
    head: {channels: 256}
    choices: [mb_k3_e3, mb_k5_e6_se, shuffle, skip]

Every mistake in a file (empty, not a mapping, unknown or missing field, wrong type,
unknown choice, a choice that can never apply) is a UserError naming the file and the
field, e.g. `stages[2].blocks`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.errors import UserError, check_keys, suggest

_DIR = Path(__file__).resolve().parent
KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
#: every choice a space may list
CHOICES = (*(f"mb_k{k}_e{e}{se}" for k in KERNELS for e in EXPANSIONS for se in ("", "_se")), "shuffle", "skip")
_MB = re.compile(r"^mb_k(\d)_e(\d)(_se)?$")
_STRIDES = (1, 2)


@dataclass(frozen=True)
class ChoiceSpec:
    """What a choice name means: kind "mb" (kernel, expand, se), "shuffle" or "skip"."""

    name: str
    kind: str
    kernel: int = 0
    expand: int = 0
    se: bool = False


def parse_choice(name: str) -> ChoiceSpec:
    """The ChoiceSpec of `name` (ValueError for a name not in CHOICES, with a did-you-mean)."""
    if name not in CHOICES:
        raise ValueError(f"unknown choice {name!r}{suggest(str(name), CHOICES)}; valid: {', '.join(CHOICES)}")
    if name in ("shuffle", "skip"):
        return ChoiceSpec(name, name)
    k, e, se = _MB.match(name).groups()  # type: ignore[union-attr]
    return ChoiceSpec(name, "mb", int(k), int(e), se is not None)


@dataclass(frozen=True)
class Stage:
    """`blocks` blocks of `channels` output channels; the first has stride `stride`.
    `choices`: this stage's own subset of choices, or None for the space's list."""

    channels: int
    blocks: int
    stride: int
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BlockSlot:
    """One searchable block: its index over the whole network, its stage, channels in and
    out, stride, and whether it keeps its input shape (then `skip` may replace it)."""

    index: int
    stage: int
    cin: int
    cout: int
    stride: int

    @property
    def keeps_shape(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


@dataclass(frozen=True)
class MobileSpace:
    """A validated search space (see the module docstring); build with `from_dict` or `load_space`."""

    name: str
    stem_channels: int
    stem_stride: int
    stages: tuple[Stage, ...]
    head_channels: int
    choices: tuple[str, ...]

    def blocks(self, width_mult: float = 1.0) -> list[BlockSlot]:
        """The searchable blocks in order; channels scaled by `width_mult` (rounded to multiples of 8)."""
        slots: list[BlockSlot] = []
        cin = scale_channels(self.stem_channels, width_mult)
        for s, stage in enumerate(self.stages):
            cout = scale_channels(stage.channels, width_mult)
            for i in range(stage.blocks):
                slots.append(BlockSlot(len(slots), s, cin, cout, stage.stride if i == 0 else 1))
                cin = cout
        return slots

    def allowed(self, slot: BlockSlot) -> tuple[str, ...]:
        """The choices `slot` may take: its stage's list (or the space's), without `skip` where
        the block changes shape. Never empty (validated)."""
        names = self.stages[slot.stage].choices or self.choices
        return tuple(c for c in names if c != "skip" or slot.keeps_shape)

    def default_choices(self) -> list[str]:
        """One choice per block: block b takes the (b mod n)-th of its n allowed non-skip
        choices, so the default network holds several kinds of block."""
        out = []
        for slot in self.blocks():
            names = [c for c in self.allowed(slot) if c != "skip"]
            out.append(names[slot.index % len(names)])
        return out

    def check_choices(self, choices: Sequence[str], where: str = "choices") -> list[str]:
        """`choices` (one name per block) as a list; ValueError naming the first misfit."""
        slots = self.blocks()
        if isinstance(choices, str) or not isinstance(choices, Sequence):
            raise ValueError(f"{where} must be a list of {len(slots)} choice names, got {type(choices).__name__}")
        if len(choices) != len(slots):
            raise ValueError(f"{where} has {len(choices)} names, but space {self.name!r} has {len(slots)} blocks")
        for slot, name in zip(slots, choices):
            allowed = self.allowed(slot)
            if name not in allowed:
                if name == "skip" and "skip" in (self.stages[slot.stage].choices or self.choices):
                    why = (f"block {slot.index} changes shape ({slot.cin} -> {slot.cout} channels, stride "
                           f"{slot.stride}); skip is only allowed where a block keeps its input shape")
                else:
                    why = f"block {slot.index} takes one of {', '.join(allowed)}{suggest(str(name), allowed)}"
                raise ValueError(f"{where}[{slot.index}] = {name!r}: {why}")
        return list(choices)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML form; `from_dict(to_dict())` gives an equal space."""
        stages = []
        for st in self.stages:
            d: dict[str, Any] = {"channels": st.channels, "blocks": st.blocks, "stride": st.stride}
            if st.choices is not None:
                d["choices"] = list(st.choices)
            stages.append(d)
        return {"name": self.name, "stem": {"channels": self.stem_channels, "stride": self.stem_stride},
                "stages": stages, "head": {"channels": self.head_channels}, "choices": list(self.choices)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "search space") -> MobileSpace:
        """Validate `data` (the YAML's content); UserError '<source>: <field>: <problem>'."""
        return _parse(data, source)


def scale_channels(channels: int, width_mult: float) -> int:
    """`channels` at `width_mult`: unchanged at 1.0 (a space's numbers are kept as written),
    else rounded to a multiple of 8 (`make_divisible`)."""
    if width_mult == 1.0:
        return channels
    from edgecompress.models.blocks import make_divisible

    return make_divisible(channels * width_mult)


def list_spaces() -> list[str]:
    """Names of the bundled spaces (the YAML files next to this module)."""
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path | MobileSpace) -> MobileSpace:
    """A bundled space by name ("mobile") or a user's YAML file by path."""
    import yaml

    if isinstance(name_or_path, MobileSpace):
        return name_or_path
    text = str(name_or_path)
    path = _DIR / f"{text}.yaml" if text in list_spaces() else Path(text)
    if not path.is_file():
        if path.suffix.lower() not in (".yaml", ".yml") and not path.parent.name:
            raise UserError(f"unknown search space {text!r}{suggest(text, list_spaces())}; bundled: "
                            f"{', '.join(list_spaces())}, or pass the path of a space YAML file")
        raise UserError(f"search space file {text!r} does not exist; pass a YAML file or one of the bundled "
                        f"spaces ({', '.join(list_spaces())})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"search space {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(raw, Mapping) and "name" not in raw:
        raw = {**raw, "name": path.stem}
    return _parse(raw, f"search space {str(path)!r}")


# -- validation -------------------------------------------------------------------------


def _parse(raw: Any, source: str) -> MobileSpace:
    def fail(field: str, problem: str) -> UserError:
        return UserError(f"{source}: {field}: {problem}")

    def fields(value: Any, field: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Mapping:
        if not isinstance(value, Mapping):
            raise fail(field, f"must be a mapping with {', '.join(required)}, got {_kind(value)}")
        try:
            check_keys("field", value, (*required, *optional))
        except ValueError as exc:
            raise fail(field, str(exc)) from None
        missing = [k for k in required if k not in value]
        if missing:
            raise fail(field, f"missing {', '.join(missing)}")
        return value

    def integer(value: Any, field: str, allowed: tuple[int, ...] | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(field, f"must be an integer >= 1, got {value!r}")
        if allowed is not None and value not in allowed:
            raise fail(field, f"must be one of {', '.join(map(str, allowed))}, got {value}")
        return value

    def names(value: Any, field: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise fail(field, f"must be a non-empty list of choice names, got {_kind(value)}")
        for i, name in enumerate(value):
            if not isinstance(name, str):
                raise fail(f"{field}[{i}]", f"must be a choice name (text), got {name!r}")
            try:
                parse_choice(name)
            except ValueError as exc:
                raise fail(f"{field}[{i}]", str(exc)) from None
            if name in value[:i]:
                raise fail(f"{field}[{i}]", f"{name!r} is listed twice")
        if value == ["skip"]:
            raise fail(field, "lists only skip; a block needs at least one choice that computes something")
        return tuple(value)

    if raw is None:
        raise UserError(f"{source} is empty; it needs name, stem, stages, head and choices")
    top = fields(raw, "(top level)", ("stem", "stages", "head", "choices"), ("name",))
    name = top.get("name", "space")
    if not isinstance(name, str) or not name:
        raise fail("name", f"must be a non-empty text, got {name!r}")
    stem = fields(top["stem"], "stem", ("channels", "stride"))
    stem_channels = integer(stem["channels"], "stem.channels")
    stem_stride = integer(stem["stride"], "stem.stride", _STRIDES)
    head = fields(top["head"], "head", ("channels",))
    head_channels = integer(head["channels"], "head.channels")
    choices = names(top["choices"], "choices")
    if not isinstance(top["stages"], list) or not top["stages"]:
        raise fail("stages", f"must be a non-empty list of stages, got {_kind(top['stages'])}")
    stages = []
    cin = stem_channels
    for i, item in enumerate(top["stages"]):
        where = f"stages[{i}]"
        st = fields(item, where, ("channels", "blocks", "stride"), ("choices",))
        stage = Stage(integer(st["channels"], f"{where}.channels"), integer(st["blocks"], f"{where}.blocks"),
                      integer(st["stride"], f"{where}.stride", _STRIDES),
                      names(st["choices"], f"{where}.choices") if "choices" in st else None)
        own = stage.choices or choices
        first_keeps = stage.stride == 1 and cin == stage.channels
        if stage.choices and "skip" in stage.choices and stage.blocks == 1 and not first_keeps:
            raise fail(f"{where}.choices", f"skip can never apply: the stage's only block changes shape ({cin} "
                       f"-> {stage.channels} channels, stride {stage.stride}); skip is allowed only where a block "
                       "keeps its input shape")
        if "shuffle" in own and stage.channels % 2:
            raise fail(f"{where}.channels", f"{stage.channels} is odd; the shuffle choice splits channels in "
                       "halves, so its stages need even channel counts")
        if "shuffle" in own and first_keeps and cin % 2:
            raise fail("stem.channels", f"{cin} is odd; a shuffle unit at stride 1 needs even channels in")
        stages.append(stage)
        cin = stage.channels
    space = MobileSpace(name, stem_channels, stem_stride, tuple(stages), head_channels, choices)
    uses_list = [slot for slot in space.blocks() if space.stages[slot.stage].choices is None]
    if "skip" in choices and uses_list and not any(slot.keeps_shape for slot in uses_list):
        raise fail("choices", "skip can never apply: every block that takes this list changes shape; skip is "
                   "allowed only where a block keeps its input shape (give a stage more than one block)")
    return space


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:60]


__all__ = ["CHOICES", "BlockSlot", "ChoiceSpec", "MobileSpace", "Stage", "list_spaces", "load_space", "parse_choice",
           "scale_channels"]
