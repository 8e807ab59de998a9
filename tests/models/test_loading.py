"""load_model over every spec form, save_checkpoint round trips, and refusal of untrusted pickles."""

from __future__ import annotations

import os
import sys
import textwrap
import zipfile

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.models import CHECKPOINT_FORMAT, LoadedModel, create_model, load_model, save_checkpoint
from edgecompress.models.loading import _torchvision_crop

torch.set_num_threads(1)


def same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> bool:
    x = torch.randn(2, *shape)
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5)


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so a load that silently skipped buffers would show."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model


# --- zoo: and torchvision: --------------------------------------------------------------


def test_zoo_spec_builds_in_eval_mode():
    loaded = load_model("zoo:mobilenet_v2", num_classes=10, in_channels=1, input_size=28)
    assert isinstance(loaded, LoadedModel)
    assert not loaded.model.training
    assert loaded.input_shape == (1, 28, 28)
    kwargs = {"num_classes": 10, "in_channels": 1, "input_size": 28}
    assert loaded.arch == {"spec": "zoo:mobilenet_v2", "kwargs": kwargs}
    assert loaded.model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_zoo_spec_unknown_name_suggests():
    with pytest.raises(UserError, match=r"unknown zoo model 'mobilenet_v3' \(did you mean mobilenet_v2"):
        load_model("zoo:mobilenet_v3")


def test_torchvision_spec():
    loaded = load_model("torchvision:resnet18", num_classes=10)
    assert loaded.input_shape == (3, 224, 224)
    assert loaded.model.fc.out_features == 10
    assert not loaded.model.training
    assert loaded.arch == {"spec": "torchvision:resnet18", "kwargs": {"num_classes": 10}}
    # input_size only describes the input for convnets with adaptive pooling.
    assert load_model("torchvision:squeezenet1_1", input_size=96).input_shape == (3, 96, 96)


def test_torchvision_default_sizes_come_from_weight_presets():
    assert _torchvision_crop("inception_v3") == 299
    assert _torchvision_crop("resnet18") == 224


def test_torchvision_errors():
    with pytest.raises(UserError, match=r"unknown torchvision classification model 'resnet19' \(did you mean resnet18"):
        load_model("torchvision:resnet19")
    with pytest.raises(UserError, match="takes 3 input channels"):
        load_model("torchvision:resnet18", in_channels=1)


# --- .pt files ---------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    model = randomize_bn(create_model("resnet20", num_classes=10, in_channels=1, input_size=28))
    path = tmp_path / "ckpt.pt"
    save_checkpoint(
        model, path, arch_spec="zoo:resnet20", arch_kwargs={"num_classes": 10, "in_channels": 1, "input_size": 28},
        input_shape=(1, 28, 28), meta={"accuracy": 0.91, "dataset": "fashion-mnist"},
    )
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)  # loadable without unpickling code
    assert raw["format"] == CHECKPOINT_FORMAT and raw["input_shape"] == [1, 28, 28]

    loaded = load_model(str(path))  # no --arch needed
    assert loaded.input_shape == (1, 28, 28)
    assert loaded.arch == {"spec": "zoo:resnet20", "kwargs": {"num_classes": 10, "in_channels": 1, "input_size": 28}}
    assert loaded.meta == {"accuracy": 0.91, "dataset": "fashion-mnist"}
    assert not loaded.model.training
    assert same_outputs(model, loaded.model, (1, 28, 28))


def test_checkpoint_of_narrower_model_adopts_saved_shapes(tmp_path):
    # A width-0.5 MobileNetV2 is the width-1.0 one with channels removed, like a pruned model
    # (depthwise convs included), so a checkpoint claiming the 1.0 arch must rebuild it exactly.
    narrow = randomize_bn(create_model("mobilenet_v2", num_classes=10, in_channels=1, input_size=28, width_mult=0.5))
    path = tmp_path / "pruned.pt"
    save_checkpoint(narrow, path, arch_spec="zoo:mobilenet_v2",
                    arch_kwargs={"num_classes": 10, "in_channels": 1, "input_size": 28}, input_shape=(1, 28, 28))
    loaded = load_model(str(path)).model
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in narrow.parameters())
    assert same_outputs(narrow, loaded, (1, 28, 28))


def test_save_checkpoint_rejects_non_plain_meta(tmp_path):
    with pytest.raises(ValueError, match="meta.when must hold only"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "x.pt", arch_spec="zoo:resnet20", arch_kwargs={},
                        input_shape=(3, 32, 32), meta={"when": object()})
    with pytest.raises(ValueError, match="arch_spec"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "x.pt", arch_spec="resnet20", arch_kwargs={},
                        input_shape=(3, 32, 32))
    assert not (tmp_path / "x.pt").exists()


def test_state_dict_needs_arch(tmp_path):
    model = randomize_bn(create_model("resnet20"))
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(UserError, match="is a state_dict; pass --arch zoo:NAME to say which architecture"):
        load_model(str(path))
    loaded = load_model(str(path), arch="zoo:resnet20")
    assert loaded.input_shape == (3, 32, 32)
    assert loaded.arch == {"spec": "zoo:resnet20", "kwargs": {}}
    assert same_outputs(model, loaded.model, (3, 32, 32))


def test_state_dict_nested_or_from_data_parallel(tmp_path):
    model = randomize_bn(create_model("resnet20"))
    nested = tmp_path / "train_state.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, nested)
    assert same_outputs(model, load_model(str(nested), arch="zoo:resnet20").model, (3, 32, 32))


def test_state_dict_mismatch_names_keys(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(create_model("resnet20").state_dict(), path)
    expected = r"do not fit zoo:resnet20: shape mismatch classifier.weight \(10, 64\) vs \(100, 64\)"
    with pytest.raises(UserError, match=expected):
        load_model(str(path), arch="zoo:resnet20", num_classes=100)
    with pytest.raises(UserError) as err:
        load_model(str(path), arch="zoo:mobilenet_v1")
    # The first three of each kind, then "...".
    missing = "missing keys features.1.dw.conv.weight, features.1.dw.bn.weight, features.1.dw.bn.bias ..."
    assert missing in str(err.value)
    assert "unexpected keys features.1.conv1.conv.weight" in str(err.value)
    assert "shape mismatch features.0.conv.weight (16, 3, 3, 3) vs (32, 3, 3, 3)" in str(err.value)


def test_torchvision_state_dict(tmp_path):
    import torchvision

    model = torchvision.models.squeezenet1_1(num_classes=5)
    path = tmp_path / "sq.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(str(path), arch="torchvision:squeezenet1_1", num_classes=5)
    assert same_outputs(model, loaded.model, (3, 64, 64))


@pytest.mark.filterwarnings("ignore:.*deprecated:FutureWarning")  # torch.jit.trace/save
def test_torchscript(tmp_path):
    model = randomize_bn(create_model("shufflenet_v2", num_classes=10, in_channels=1, input_size=28)).eval()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 28, 28)), path)
    loaded = load_model(str(path))  # no trust flag needed: TorchScript does not unpickle Python objects
    assert loaded.arch is None
    assert same_outputs(model, loaded.model, (1, 28, 28))
    assert load_model(str(path), input_size=32).input_shape == (1, 32, 32)  # channels read off the first conv
    with pytest.raises(UserError, match="drop --arch/--num-classes"):
        load_model(str(path), num_classes=3)


def test_pickled_module_needs_trust(tmp_path):
    model = randomize_bn(create_model("squeezenet", num_classes=10, in_channels=1, input_size=28))
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(UserError, match=r"pickled Python object .*--trust-model-file only for files you trust"):
        load_model(str(path))
    loaded = load_model(str(path), trust_model_file=True)
    assert loaded.input_shape == (1, 28, 28)  # the zoo model carried its input_shape attribute
    assert not loaded.model.training
    assert same_outputs(model, loaded.model, (1, 28, 28))


class _WritesMarker:
    """Unpickling this calls open(marker, 'w'): code execution, made visible as a new file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_security_crafted_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "innocent_model.pt"
    torch.save({"model": _WritesMarker(str(marker))}, path)
    assert not marker.exists()  # saving does not run the payload
    with pytest.raises(UserError, match=r"references io\.open\).*refused.*--trust-model-file"):
        load_model(str(path))
    with pytest.raises(UserError):
        load_model(str(path), arch="zoo:resnet20")
    assert not marker.exists()


def test_missing_directory_and_wrong_kind_of_file(tmp_path):
    with pytest.raises(UserError, match=r"model file '.*nope\.pt' does not exist"):
        load_model(str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="is not a file"):
        load_model(str(tmp_path))
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(UserError, match="is an exported model"):
        load_model(str(tmp_path / "m.onnx"))
    torch.save({"epochs": 3, "lr": 0.1}, tmp_path / "notes.pt")
    with pytest.raises(UserError, match="holds a dict, not a model"):
        load_model(str(tmp_path / "notes.pt"))


@pytest.mark.parametrize("trust", [False, True])
def test_corrupt_files(tmp_path, trust):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(512).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    with pytest.raises(UserError, match=r"garbage\.pt' is not a PyTorch file"):
        load_model(str(garbage), trust_model_file=trust)

    good = tmp_path / "good.pt"
    torch.save(create_model("resnet20").state_dict(), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"truncated\.pt'"):
        load_model(str(truncated), arch="zoo:resnet20", trust_model_file=trust)

    # A valid zip whose pickle is damaged.
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            body = src.read(item)
            dst.writestr(item, body[:10] if item.filename.endswith("data.pkl") else body)
    with pytest.raises(UserError, match=r"damaged\.pt"):
        load_model(str(damaged), arch="zoo:resnet20", trust_model_file=trust)


# --- module:function and bad specs ---------------------------------------------------------


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "ec_test_factories.py").write_text(textwrap.dedent("""
        from torch import nn

        def build():
            return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())

        def not_a_model():
            return 42

        def needs_args(width):
            return nn.Linear(width, 2)

        NOT_CALLABLE = 3
    """))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "ec_test_factories", raising=False)
    return tmp_path


def test_callable_spec(factory_module, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_module))
    loaded = load_model("ec_test_factories:build")
    assert isinstance(loaded.model, nn.Sequential) and not loaded.model.training
    assert loaded.input_shape is None and loaded.arch is None
    assert load_model("ec_test_factories:build", input_size=28).input_shape == (1, 28, 28)
    with pytest.raises(UserError, match="returned a int, not a torch.nn.Module"):
        load_model("ec_test_factories:not_a_model")
    with pytest.raises(UserError, match="requires width"):
        load_model("ec_test_factories:needs_args")
    with pytest.raises(UserError, match="is a int, not a function"):
        load_model("ec_test_factories:NOT_CALLABLE")
    with pytest.raises(UserError, match=r"has no function 'bulid' \(did you mean build"):
        load_model("ec_test_factories:bulid")


def test_callable_spec_found_in_working_directory(factory_module, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(factory_module))])
    monkeypatch.chdir(factory_module)
    assert isinstance(load_model("ec_test_factories:build").model, nn.Sequential)


def test_callable_spec_import_errors():
    with pytest.raises(UserError, match="cannot import module 'no_such_pkg_xyz.models'"):
        load_model("no_such_pkg_xyz.models:build")


def test_unrecognised_specs():
    with pytest.raises(UserError, match=r"not understood \(did you mean zoo:mobilenet_v2\?\); use one of: zoo:NAME"):
        load_model("mobilenet_v2")
    with pytest.raises(UserError, match="use one of: zoo:NAME, torchvision:NAME"):
        load_model("some model")
    with pytest.raises(UserError, match="--arch 'zoo:resnet20' is only for a .pt/.pth state_dict"):
        load_model("zoo:resnet32", arch="zoo:resnet20")


def test_legacy_format_state_dict_and_future_checkpoint(tmp_path):
    model = randomize_bn(create_model("resnet20"))
    legacy = tmp_path / "legacy.pt"
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert same_outputs(model, load_model(str(legacy), arch="zoo:resnet20").model, (3, 32, 32))
    future = tmp_path / "future.pt"
    torch.save({"format": "edgecompress.checkpoint/9", "state_dict": model.state_dict()}, future)
    with pytest.raises(UserError, match=r"checkpoint format 'edgecompress.checkpoint/9'.*upgrade edgecompress"):
        load_model(str(future))
