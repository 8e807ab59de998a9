"""Search spaces as data (edgecompress/search/spaces): the bundled space, validation, the skip rule."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from support import TINY_SPACE

from edgecompress.errors import UserError
from edgecompress.models import create_model
from edgecompress.search.spaces import CHOICES, MobileSpace, list_spaces, load_space, parse_choice

torch.set_num_threads(1)

TINY = TINY_SPACE


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_choice_names():
    assert len(CHOICES) == 14 and CHOICES[-2:] == ("shuffle", "skip")
    assert sum(c.startswith("mb_") for c in CHOICES) == 12
    spec = parse_choice("mb_k5_e6_se")
    assert (spec.kind, spec.kernel, spec.expand, spec.se) == ("mb", 5, 6, True)
    assert parse_choice("mb_k7_e3").se is False
    with pytest.raises(ValueError, match=r"unknown choice 'mb_k4_e3' \(did you mean mb_k"):
        parse_choice("mb_k4_e3")


def test_bundled_mobile_space():
    assert "mobile" in list_spaces()
    space = load_space("mobile")
    assert space.name == "mobile" and space.choices == CHOICES
    assert (space.stem_channels, space.stem_stride, space.head_channels) == (16, 1, 256)
    assert [(s.channels, s.blocks, s.stride) for s in space.stages] == [(24, 2, 2), (40, 2, 2), (80, 3, 2), (96, 2, 1)]
    slots = space.blocks()
    assert len(slots) == 9
    # skip only where the shape is kept: never the first block of a stage here
    assert [s.keeps_shape for s in slots] == [False, True, False, True, False, True, True, False, True]
    assert "skip" not in space.allowed(slots[0]) and len(space.allowed(slots[0])) == 13
    assert space.allowed(slots[1]) == CHOICES
    assert (slots[7].cin, slots[7].cout, slots[7].stride) == (80, 96, 1)
    assert MobileSpace.from_dict(space.to_dict()) == space


def test_tiny_space_and_stage_choices(tmp_path):
    space = load_space(write(tmp_path, TINY))
    assert space.name == "tiny"
    # the first block of stage 0 neither widens nor downsamples (8 -> 8, stride 1): skip allowed
    assert [s.keeps_shape for s in space.blocks()] == [True, True, False, True]
    narrowed = load_space(write(tmp_path, TINY.replace("blocks: 2, stride: 2}", "blocks: 2, stride: 2, "
                                                        "choices: [mb_k3_e3, skip]}"), "n.yaml"))
    assert narrowed.allowed(narrowed.blocks()[2]) == ("mb_k3_e3",)
    assert narrowed.allowed(narrowed.blocks()[3]) == ("mb_k3_e3", "skip")
    assert MobileSpace.from_dict(narrowed.to_dict()) == narrowed
    no_name = load_space(write(tmp_path, TINY.replace("name: tiny\n", ""), "unnamed.yaml"))
    assert no_name.name == "unnamed"


@pytest.mark.parametrize("text,field,message", [
    ("", None, "is empty"),
    ("- 1\n- 2\n", "(top level)", "must be a mapping"),
    (TINY.replace("head:", "haed:"), "(top level)", "unknown field 'haed' (did you mean head"),
    (TINY.replace("head: {channels: 32}\n", ""), "(top level)", "missing head"),
    (TINY.replace("{channels: 16, blocks: 2,", "{channels: 16, blocks: two,"), "stages[1].blocks",
     "must be an integer >= 1, got 'two'"),
    (TINY.replace("{channels: 16, blocks: 2, stride: 2}", "{channels: 16, blocks: 2, stride: 3}"),
     "stages[1].stride", "must be one of 1, 2, got 3"),
    (TINY.replace("{channels: 16, blocks: 2,", "{channels: 16, blocks: 2, kernel: 3,"), "stages[1]",
     "unknown field 'kernel'"),
    (TINY.replace("stem: {channels: 8, stride: 2}", "stem: 8"), "stem", "must be a mapping"),
    (TINY.replace("head: {channels: 32}", "head: {channels: 32.5}"), "head.channels", "must be an integer"),
    (TINY.replace("mb_k5_e3_se", "mb_k5_e3_sq"), "choices[1]",
     "unknown choice 'mb_k5_e3_sq' (did you mean mb_k5_e3_se"),
    (TINY.replace("choices: [mb_k3_e3,", "choices: [mb_k3_e3, mb_k3_e3,"), "choices[1]", "listed twice"),
    (TINY.replace("{channels: 16, blocks: 2, stride: 2}",
                  "{channels: 16, blocks: 1, stride: 2, choices: [skip, mb_k3_e3]}"),
     "stages[1].choices", "skip can never apply: the stage's only block changes shape (8 -> 16 channels, stride 2)"),
    (TINY.replace("{channels: 16, blocks: 2,", "{channels: 15, blocks: 2,"), "stages[1].channels", "15 is odd"),
    (TINY.replace("stages:", "stages: []\nx:").split("  - ")[0], "(top level)", "unknown field 'x'"),
    ("stem: {channels: 8, stride: 2}\nstages: []\nhead: {channels: 8}\nchoices: [skip]\n", "choices",
     "lists only skip"),
    ("stem: {channels: 8, stride: 2}\nstages: []\nhead: {channels: 8}\nchoices: [mb_k3_e3]\n", "stages",
     "must be a non-empty list"),
])
def test_invalid_space_files_name_the_field(tmp_path, text, field, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_space(path)
    text = str(err.value)
    assert str(path) in text and message in text
    if field is not None:
        assert f": {field}: " in text


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(UserError, match=r"unknown search space 'mobil' \(did you mean mobile, mobile_small\?\)"):
        load_space("mobil")
    with pytest.raises(UserError, match="search space file .*nope.yaml' does not exist"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_space(write(tmp_path, "stem: [1, 2\n"))
    with pytest.raises(UserError, match=r"mobile_space_net space: stem.stride: must be one of 1, 2"):
        MobileSpace.from_dict({**load_space("mobile").to_dict(), "stem": {"channels": 16, "stride": 4}},
                              "mobile_space_net space")


def test_choices_of_a_child(tmp_path):
    space = load_space("mobile")
    good = space.default_choices()
    assert space.check_choices(good) == good and "skip" not in good
    with pytest.raises(ValueError, match=r"choices\[0\] = 'skip': block 0 changes shape \(16 -> 24 channels, "
                                         r"stride 2\); skip is only allowed where a block keeps its input shape"):
        space.check_choices(["skip", *good[1:]])
    with pytest.raises(ValueError, match=r"choices\[2\] = 'mb_k3_e5': block 2 takes one of"):
        space.check_choices([*good[:2], "mb_k3_e5", *good[3:]])
    with pytest.raises(ValueError, match="has 2 names, but space 'mobile' has 9 blocks"):
        space.check_choices(good[:2])
    with pytest.raises(UserError, match=r"zoo:mobile_space_net: choices\[7\] = 'skip'"):
        create_model("mobile_space_net", choices=[*good[:7], "skip", good[8]])


def test_child_skips_keep_module_names(tmp_path):
    space = load_space(write(tmp_path, TINY))
    model = create_model("mobile_space_net", space=space.to_dict(), choices=["skip", "shuffle", "mb_k5_e3_se", "skip"],
                         num_classes=3, in_channels=1, input_size=16).eval()
    assert [type(m).__name__ for m in model.features] == ["ConvBNAct", "Identity", "ShuffleUnitV2", "MBConv",
                                                          "Identity", "ConvBNAct"]
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    # the same space given as a path builds the same network
    again = create_model("mobile_space_net", space=str(tmp_path / "space.yaml"),
                         choices=["skip", "shuffle", "mb_k5_e3_se", "skip"], num_classes=3, in_channels=1,
                         input_size=16)
    assert [k for k, _ in again.state_dict().items()] == [k for k, _ in model.state_dict().items()]


def test_space_yaml_is_package_data():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "search/spaces/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["edgecompress"]
