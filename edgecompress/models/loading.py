"""Turn a MODEL spec into an eval-mode nn.Module, and save our own checkpoint format.

Spec forms:
  zoo:NAME              a registered zoo model (`list_models()`)
  torchvision:NAME      a torchvision classification model, random init (weights=None)
  FILE.pt / FILE.pth    our checkpoint (arch + weights), a state_dict (needs `arch`),
                        TorchScript, or a whole pickled nn.Module (needs `trust_model_file`)
  package.module:func   imported and called with no arguments; must return an nn.Module

Safety: .pt files are first read with `torch.load(weights_only=True)`, which cannot run
code. A file that needs full unpickling (a pickled module) is refused unless the caller
passes `trust_model_file=True`, because unpickling executes whatever the file says.
"""

from __future__ import annotations

import importlib
import inspect
import io
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.errors import UserError, first_line, suggest
from edgecompress.fsutil import atomic_write_bytes
from edgecompress.models.registry import create_model

CHECKPOINT_FORMAT = "edgecompress.checkpoint/1"

ACCEPTED_FORMS = (
    "zoo:NAME, torchvision:NAME, a .pt/.pth file (edgecompress checkpoint, state_dict with --arch, TorchScript, "
    "or a pickled nn.Module with --trust-model-file), or package.module:function"
)

_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# Keys under which training scripts commonly nest the state_dict inside a larger dict.
_NESTED_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model (in eval mode) and what is known about it.

    input_shape: default input (C, H, W) in px, or None when the source does not say.
    arch: {"spec": "zoo:NAME" | "torchvision:NAME", "kwargs": {...}} when the model was
    built from a known architecture (so it can be rebuilt), else None.
    meta: the checkpoint's free-form metadata, if it came from one.
    """

    model: nn.Module
    spec: str
    input_shape: tuple[int, int, int] | None
    arch: dict | None
    meta: dict | None = None


def load_model(
    spec: str,
    *,
    arch: str | None = None,
    trust_model_file: bool = False,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
) -> LoadedModel:
    """Load the model named by `spec` (see the module docstring) in eval mode.

    num_classes / in_channels / input_size are passed to the architecture when one is
    built (zoo:, torchvision:, or a state_dict with `arch`); for other forms in_channels
    and input_size only describe the input shape. Every bad input raises UserError.
    """
    build_kwargs = {
        k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels), ("input_size", input_size))
        if v is not None
    }
    if spec.startswith(("zoo:", "torchvision:")):
        if arch is not None:
            raise UserError(f"--arch {arch!r} is only for a .pt/.pth state_dict file, not for {spec!r}; drop --arch")
        model, arch_info, shape = build_arch(spec, build_kwargs)
        return _finish(model, spec, shape, arch_info)
    path = Path(spec)
    if path.suffix.lower() in (".pt", ".pth") or path.exists():
        return _load_file(path, spec, arch, trust_model_file, build_kwargs)
    if _CALLABLE_SPEC.match(spec):
        if arch is not None or num_classes is not None:
            raise UserError(f"--arch/--num-classes do not apply to {spec!r}: the function builds the model itself")
        model = _call_factory(spec)
        return _finish(model, spec, _describe_shape(model, None, in_channels, input_size), None)
    hint = f" (did you mean zoo:{spec}?)" if spec in _zoo_names() else ""
    raise UserError(f"model spec {spec!r} not understood{hint}; use one of: {ACCEPTED_FORMS}")


def build_arch(spec: str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, dict, tuple[int, int, int]]:
    """Build `zoo:NAME` or `torchvision:NAME` with `kwargs` -> (model, arch record, input shape)."""
    kind, _, name = spec.partition(":")
    kwargs = dict(kwargs)
    if kind == "zoo":
        model = create_model(name, **kwargs)
        shape = tuple(model.input_shape)
    elif kind == "torchvision":
        model, shape = _torchvision_model(name, kwargs)
    else:
        raise UserError(f"architecture {spec!r} must be zoo:NAME or torchvision:NAME")
    return model, {"spec": f"{kind}:{name}", "kwargs": kwargs}, shape


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    arch_spec: str,
    arch_kwargs: Mapping[str, Any],
    input_shape: tuple[int, int, int] | list[int],
    meta: Mapping[str, Any] | None = None,
    removed: Sequence[str] = (),
) -> Path:
    """Atomically write `model`'s weights with the architecture that rebuilds it.

    The file loads with `torch.load(weights_only=True)` (only tensors and plain values),
    so `load_model(path)` needs neither --arch nor --trust-model-file. Channel counts
    saved here may be smaller than `arch_spec` builds (a pruned model): the saved
    Conv2d/BatchNorm2d/Linear shapes win when the model is loaded. `removed` names
    submodules the model replaced by nn.Identity (blocks a depth search dropped); they
    are replaced the same way before the weights are loaded.
    """
    if not arch_spec.startswith(("zoo:", "torchvision:")):
        raise ValueError(f"arch_spec must be 'zoo:NAME' or 'torchvision:NAME', got {arch_spec!r}")
    shape = [int(v) for v in input_shape]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
    _check_plain("arch_kwargs", dict(arch_kwargs))
    _check_plain("meta", dict(meta or {}))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": {"spec": arch_spec, "kwargs": dict(arch_kwargs)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        # Grouped convs lose whole groups when pruned; the weight shape alone does not say how many.
        "conv_groups": {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d)},
        "input_shape": shape,
        "meta": dict(meta or {}),
        "removed": [str(n) for n in removed],
        # Layers replaced by low-rank chains: their structure, rebuilt before the weights load.
        "factorized": _factorized_specs(model),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


# --- architectures ---------------------------------------------------------------------


def _zoo_names() -> list[str]:
    from edgecompress.models.registry import list_models

    return list_models()


def _torchvision_model(name: str, kwargs: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise UserError(f"unknown torchvision classification model {name!r}{suggest(name, names)}")
    in_channels = kwargs.pop("in_channels", 3)
    if in_channels != 3:
        raise UserError(f"torchvision:{name} takes 3 input channels, got in_channels={in_channels}; use a zoo: model")
    input_size = kwargs.pop("input_size", None)
    if input_size is not None and name.startswith("vit_"):
        kwargs["image_size"] = input_size  # ViTs size their position embedding at build time
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"torchvision:{name} rejected {kwargs}: {e}") from e
    if input_size is None:
        built = getattr(model, "image_size", None)  # ViTs with weights=None are built for 224
        input_size = built if isinstance(built, int) else _torchvision_crop(name)
    return model, (3, input_size, input_size)


def _torchvision_crop(name: str) -> int:
    """Crop size (px) of the model's default weights: 224 for most, 299 for inception_v3."""
    import torchvision

    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0])
    except Exception:  # models without published weights, or presets without crop_size
        return 224


# --- files -----------------------------------------------------------------------------


def _load_file(path: Path, spec: str, arch: str | None, trust: bool, build_kwargs: dict) -> LoadedModel:
    if not path.exists():
        raise UserError(f"model file {spec!r} does not exist")
    if not path.is_file():
        raise UserError(f"model path {spec!r} is not a file")
    if path.suffix.lower() in (".onnx", ".tflite"):
        raise UserError(
            f"{spec!r} is an exported model; MODEL must be PyTorch (bench exported files with `edgecompress bench`)"
        )
    in_channels, input_size = build_kwargs.get("in_channels"), build_kwargs.get("input_size")

    if _is_torchscript(path):
        _reject_build_options(spec, arch, build_kwargs, "TorchScript")
        try:
            with warnings.catch_warnings():  # torch 2.9+ flags TorchScript as deprecated on every load
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise UserError(f"cannot load TorchScript file {spec!r}: {first_line(e)}") from e
        return _finish(model, spec, _describe_shape(model, None, in_channels, input_size), None)

    obj = _torch_load(path, spec, trust)
    if isinstance(obj, Mapping) and str(obj.get("format", "")).startswith("edgecompress."):
        return _from_checkpoint(obj, spec, arch, build_kwargs)
    state_dict = _find_state_dict(obj)
    if state_dict is not None:
        if arch is None:
            raise UserError(f"{spec!r} is a state_dict; pass --arch zoo:NAME to say which architecture it belongs to")
        model, arch_info, shape = build_arch(arch, build_kwargs)
        _load_state_dict(model, state_dict, spec, arch, adopt_shapes=False)
        return _finish(model, spec, shape, arch_info)
    if isinstance(obj, nn.Module):
        _reject_build_options(spec, arch, build_kwargs, "a pickled nn.Module")
        return _finish(obj, spec, _describe_shape(obj, None, in_channels, input_size), None)
    raise UserError(f"{spec!r} holds a {type(obj).__name__}, not a model, checkpoint or state_dict")


def _is_torchscript(path: Path) -> bool:
    # torch.jit.save archives carry constants.pkl; torch.save archives never do.
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):  # not a zip: torch.load's checks report what it is
        return False


def _torch_load(path: Path, spec: str, trust: bool) -> Any:
    """weights_only load; full unpickling only with `trust`, with a precise refusal otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = first_line(e)
    is_zip = zipfile.is_zipfile(path)
    unsafe: list[str] = []
    if is_zip:
        try:  # lists the classes/functions the pickle would import, without unpickling it
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as e:
            raise UserError(f"model file {spec!r} is corrupt or not a PyTorch file: {first_line(e)}") from e
        if not unsafe:
            raise UserError(f"model file {spec!r} is corrupt: {reason}")
    elif not _starts_with(path, b"\x80"):  # neither a zip archive nor a (legacy) pickle
        raise UserError(f"model file {spec!r} is not a PyTorch file (corrupt, truncated, or another format)")
    if not trust:
        what = f"a pickled Python object (it references {', '.join(unsafe[:3])})" if unsafe else (
            f"not readable as plain weights ({reason})"
        )
        raise UserError(
            f"{spec!r} is {what}; unpickling it runs code stored in the file, so it is refused. "
            "Pass --trust-model-file only for files you trust, or re-save the model as TorchScript or a state_dict"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        reason = f"{type(e).__name__}: {first_line(e)}"
        raise UserError(f"cannot load {spec!r} even with --trust-model-file: {reason}") from e


def _from_checkpoint(ckpt: Mapping, spec: str, arch: str | None, build_kwargs: dict) -> LoadedModel:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{spec!r} has checkpoint format {ckpt.get('format')!r}; this edgecompress reads {CHECKPOINT_FORMAT!r} "
            "(upgrade edgecompress)"
        )
    try:
        arch_info, state_dict = ckpt["arch"], ckpt["state_dict"]
        arch_spec, arch_kwargs = arch_info["spec"], dict(arch_info.get("kwargs") or {})
    except (KeyError, TypeError) as e:
        raise UserError(f"checkpoint {spec!r} is incomplete: missing {e}") from e
    if arch is not None and arch != arch_spec:
        raise UserError(f"checkpoint {spec!r} was saved for {arch_spec}, not --arch {arch}; drop --arch")
    if "num_classes" in build_kwargs:
        raise UserError(f"checkpoint {spec!r} fixes its number of classes; drop --num-classes")
    model, _, _ = build_arch(arch_spec, arch_kwargs)
    for name in ckpt.get("removed") or ():
        try:
            model.get_submodule(name)
        except AttributeError:
            raise UserError(f"checkpoint {spec!r} removes module {name!r}, which {arch_spec} does not have") from None
        model.set_submodule(name, nn.Identity())
    _rebuild_factorized(model, ckpt.get("factorized") or {}, spec, arch_spec)
    _load_state_dict(model, state_dict, spec, arch_spec, adopt_shapes=True, conv_groups=ckpt.get("conv_groups") or {})
    stored = ckpt.get("input_shape")
    known = tuple(int(v) for v in stored) if stored is not None else None
    shape = _describe_shape(model, known, build_kwargs.get("in_channels"), build_kwargs.get("input_size"))
    arch_info = {"spec": arch_spec, "kwargs": arch_kwargs}
    if ckpt.get("removed"):  # so a step that saves this model again can record them too
        arch_info["removed"] = list(ckpt["removed"])
    return _finish(model, spec, shape, arch_info, dict(ckpt.get("meta") or {}))


def _factorized_specs(model: nn.Module) -> dict[str, dict]:
    from edgecompress.lowrank.decomposition import LowRank

    return {name: m.spec() for name, m in model.named_modules() if isinstance(m, LowRank)}


def _rebuild_factorized(model: nn.Module, specs: Mapping[str, Any], spec: str, arch_spec: str) -> None:
    if not specs:
        return
    from edgecompress.lowrank.decomposition import LowRank

    for name, layer_spec in specs.items():
        try:
            model.get_submodule(name)
        except AttributeError:
            raise UserError(f"checkpoint {spec!r} factorizes module {name!r}, which {arch_spec} does not have") from None
        try:
            model.set_submodule(name, LowRank.from_spec(layer_spec))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"checkpoint {spec!r}: the low-rank structure of {name!r} is unreadable ({exc})") from None


def _find_state_dict(obj: Any) -> Mapping[str, torch.Tensor] | None:
    def is_state_dict(d: Any) -> bool:
        return isinstance(d, Mapping) and len(d) > 0 and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items()
        )

    if is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in _NESTED_STATE_DICT_KEYS:
            if is_state_dict(obj.get(key)):
                return obj[key]
    return None


def _load_state_dict(model: nn.Module, state_dict: Mapping, spec: str, arch: str, adopt_shapes: bool,
                     conv_groups: Mapping[str, int] | None = None) -> None:
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):  # saved from DataParallel
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if adopt_shapes:
        _adopt_shapes(model, state_dict, conv_groups or {})
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        kinds = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
        parts = [f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}" for label, items in kinds if items]
        raise UserError(
            f"weights in {spec!r} do not fit {arch}: {'; '.join(parts)}; pass the --arch (and --num-classes, "
            "--in-channels) the weights were trained with"
        )
    model.load_state_dict(state_dict)


def _adopt_shapes(model: nn.Module, state_dict: Mapping[str, torch.Tensor], conv_groups: Mapping[str, int]) -> None:
    """Resize Conv2d/BatchNorm/LayerNorm/Linear layers to the saved shapes (channels removed by pruning)."""
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state_dict.get(f"{prefix}weight")
        if weight is None or getattr(m, "weight", None) is None or weight.shape == m.weight.shape:
            continue
        if isinstance(m, nn.Conv2d) and weight.dim() == 4:
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            m.groups = int(conv_groups.get(name, weight.shape[0] if depthwise else m.groups))
            m.out_channels, m.in_channels = weight.shape[0], weight.shape[1] * m.groups
        elif isinstance(m, nn.Linear) and weight.dim() == 2:
            m.out_features, m.in_features = weight.shape
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and weight.dim() == 1:
            m.num_features = weight.shape[0]
            for buf in ("running_mean", "running_var"):
                if getattr(m, buf, None) is not None:
                    setattr(m, buf, torch.empty_like(weight))
        elif isinstance(m, nn.LayerNorm) and weight.dim() == 1:
            m.normalized_shape = (weight.shape[0],)
        else:
            continue
        m.weight = nn.Parameter(torch.empty_like(weight))
        if getattr(m, "bias", None) is not None:
            m.bias = nn.Parameter(torch.empty(weight.shape[0]))
    # Per-channel tensors used directly in forward (a layer scale) are cut with their channels too.
    layers = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
    for name, m in model.named_modules():
        if isinstance(m, layers):
            continue
        for attr, p in list(m.named_parameters(recurse=False)):
            saved = state_dict.get(f"{name}.{attr}" if name else attr)
            if saved is not None and saved.shape != p.shape and saved.dim() == p.dim():
                setattr(m, attr, nn.Parameter(torch.empty_like(saved), requires_grad=p.requires_grad))


# --- module:function ------------------------------------------------------------------


def _call_factory(spec: str) -> nn.Module:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # The console script does not put the working directory on sys.path; `python -m` would.
        if e.name != module_name.split(".")[0] or os.getcwd() in sys.path:
            raise UserError(f"cannot import module {module_name!r} for {spec!r}: {e}") from e
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e2:
            raise UserError(f"cannot import module {module_name!r} for {spec!r}: {e2}; is it on PYTHONPATH?") from e2
    except ImportError as e:
        raise UserError(f"cannot import module {module_name!r} for {spec!r}: {e}") from e
    factory = getattr(module, func_name, None)
    if factory is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise UserError(f"module {module_name!r} has no function {func_name!r}{suggest(func_name, public)}")
    if not callable(factory):
        raise UserError(f"{spec!r} is a {type(factory).__name__}, not a function returning an nn.Module")
    try:
        required = [
            p.name for p in inspect.signature(factory).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
    except (TypeError, ValueError):  # builtins without a signature: just call it
        required = []
    if required:
        raise UserError(
            f"{spec!r} is called with no arguments but requires {', '.join(required)}; wrap it in a function"
        )
    model = factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


# --- helpers ---------------------------------------------------------------------------


def _reject_build_options(spec: str, arch: str | None, build_kwargs: dict, what: str) -> None:
    if arch is not None or "num_classes" in build_kwargs:
        raise UserError(f"{spec!r} is {what} with its architecture fixed; drop --arch/--num-classes")


def _describe_shape(
    model: nn.Module, known: tuple[int, ...] | None, in_channels: int | None, input_size: int | None
) -> tuple[int, int, int] | None:
    """Input shape (C, H, W): what the source says, with the caller's in_channels/input_size on top."""
    if known is None:
        attr = getattr(model, "input_shape", None)
        if isinstance(attr, (tuple, list)) and len(attr) == 3 and all(isinstance(v, int) and v > 0 for v in attr):
            known = tuple(attr)
    if in_channels is None and input_size is None:
        return known  # type: ignore[return-value]
    channels = in_channels or (known[0] if known else _first_conv_in_channels(model)) or 3
    size = (input_size, input_size) if input_size else (tuple(known[1:]) if known else (224, 224))
    return (channels, *size)  # type: ignore[return-value]


def _first_conv_in_channels(model: nn.Module) -> int | None:
    for p in model.parameters():
        if p.dim() == 4:  # the first conv weight (out, in/groups, kh, kw); stems are not grouped
            return int(p.shape[1])
    return None


def _finish(
    model: nn.Module, spec: str, shape: tuple | None, arch: dict | None, meta: dict | None = None
) -> LoadedModel:
    model.eval()
    return LoadedModel(model=model, spec=spec, input_shape=tuple(shape) if shape else None, arch=arch, meta=meta)


def _check_plain(field: str, value: Any) -> None:
    """ValueError unless `value` holds only what torch.load(weights_only=True) accepts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(field, item)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{field} keys must be str, got {k!r}")
            _check_plain(f"{field}.{k}", v)
        return
    raise ValueError(f"{field} must hold only str/int/float/bool/None/list/dict, got {type(value).__name__}")


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(prefix)) == prefix
