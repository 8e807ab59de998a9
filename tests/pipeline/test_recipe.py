from pathlib import Path

import pytest

from edgecompress.errors import UserError
from edgecompress.pipeline.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]


def test_demo_recipe_loads_and_round_trips():
    r = load_recipe(REPO / "recipes" / "demo.yaml")
    assert r.name == "demo-fashion-mnist"
    assert r.export.formats == ("onnx", "tflite")
    assert r.measure.threads == (1, 2)
    assert r.measure.runs == 200 and r.measure.trials == 3
    again = recipe_from_dict(r.to_dict())
    assert again.to_dict() == r.to_dict()


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"mesure": {}}, "unknown key 'mesure' (did you mean measure?)"),
        ({"measure": {"threads": [0]}}, "measure.threads [0] must be a list of positive integers"),
        ({"measure": {"trheads": [1]}}, "measure: unknown key 'trheads' (did you mean threads, trials?)"),
        ({"export": {"formats": ["coreml"]}}, "export.formats ['coreml']"),
        ({"steps": [{"prnue": {"ratio": 0.5}}]}, "'prnue' is not an available step (did you mean prune"),
        ({"schema": "edgecompress.recipe/9"}, "schema 'edgecompress.recipe/9' is not supported"),
        ({"seed": "zero"}, "seed 'zero' must be an integer"),
        ({"evaluate": {"split": "train"}}, "evaluate.split 'train' must be 'val' or 'test'"),
        ({"data": {"dataset": "image-folder"}}, "data.path is required"),
    ],
)
def test_bad_recipes_name_the_field(doc, fragment):
    with pytest.raises(UserError) as e:
        recipe_from_dict(doc, source="r.yaml")
    assert fragment in str(e.value)
    assert str(e.value).startswith("r.yaml")


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)
