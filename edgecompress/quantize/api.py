"""`edgecompress quantize` and the pipeline's int8 variant: quantized files from fp32 files, as one call.

    entries = quantize_files(model, {"onnx": "out/model.onnx", "tflite": "out/model.tflite"}, calib, "out/int8",
                             input_shape=(1, 28, 28), device=get_device("host"), evaluate=top1_evaluator(x, y))

`quantize_files` is the shared core: for each format it quantizes the fp32 file the
pipeline (or the command) has already exported and returns one entry per format (the
`QuantizedArtifact` as a dict, plus how the scheme was chosen, the accuracy of the file
and notes). ONNX int8-static with scheme "auto" builds each candidate scheme, times it
against fp32 on the device and keeps the fastest within the accuracy budget
(`select.choose_scheme`); when a drop exceeds the budget the most sensitive layers stay
float (`sensitivity.mixed_precision`) and TFLite is re-quantized with those same layers
excluded. `apply_plan` runs what a recipe's `quantize` step planned (PTQ through
`quantize_files`, or the QAT model's export). `quantize_command` is the CLI verb:
calibration, fp32 export, quantization, evaluation of every file on the test split and
interleaved latency, all written atomically with quant.json.

fp16 is TFLite-only here: ONNX Runtime's CPU kernels compute in float32, so an fp16 ONNX
file would only be a smaller download with casts around every layer. Asked for ONNX
alone it is a UserError; asked for both formats the ONNX entry is `{"skipped": why}`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from edgecompress.errors import UserError, suggest
from edgecompress.quantize.base import CALIBRATION_METHODS, MODES, CalibrationWarning, check_calibration, precision_label

FORMATS = ("onnx", "tflite")
SCHEMA = "edgecompress.quant/1"
#: images per calibration batch (--calib-batches N means N * 32 training images)
CALIBRATION_BATCH = 32
FP16_ONNX = ("fp16 is TFLite-only in edgecompress: ONNX Runtime's CPU kernels compute in float32, so an fp16 ONNX "
             "file only halves the download and adds casts around every layer")
#: QAT fine-tuning defaults: ~1/100 of a from-scratch SGD learning rate, AdamW, no decay (short, late training)
QAT_DEFAULTS = {"epochs": 1, "lr": 3e-4, "optimizer": "adamw", "weight_decay": 0.0, "batch_size": 128}

Evaluate = Callable[[Path], float]


# --------------------------------------------------------------------------- options


def check_options(*, mode: str, method: str = "minmax", formats: Iterable[str] | str = FORMATS,
                  scheme: str = "auto", budget: float = 0.005) -> tuple[str, ...]:
    """The formats as a tuple; ValueError naming the first bad option (with a did-you-mean).

    Shared by `quantize_files`, `quantize_command` and the recipe step's validator.
    """
    from edgecompress.quantize.onnx_quant import DYNAMIC_SCHEME, STATIC_SCHEMES
    from edgecompress.quantize.tflite_quant import TFLITE_METHODS

    if mode not in MODES:
        raise ValueError(f"mode {mode!r} must be one of {', '.join(MODES)}{suggest(str(mode), MODES)}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method {method!r} must be one of {', '.join(CALIBRATION_METHODS)}"
                         f"{suggest(str(method), CALIBRATION_METHODS)}")
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [str(f).strip().lower() for f in names if str(f).strip()]
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        name = bad[0] if bad else "(none)"
        raise ValueError(f"formats: {name!r} is not a format; give one or more of {', '.join(FORMATS)}{suggest(name, FORMATS)}")
    names = list(dict.fromkeys(names))
    if mode == "fp16" and names == ["onnx"]:
        raise ValueError(f"mode 'fp16' with formats [onnx]: {FP16_ONNX}; use formats [tflite] or an int8 mode")
    if mode == "int8-static" and "tflite" in names and method not in TFLITE_METHODS:
        raise ValueError(f"method {method!r} is ONNX-only (onnxruntime's calibrator); for TFLite use "
                         f"{' or '.join(TFLITE_METHODS)}, or formats [onnx]")
    allowed = {"int8-static": ("auto", "profile", *STATIC_SCHEMES),
               "int8-dynamic": ("auto", DYNAMIC_SCHEME)}.get(mode, ("auto",))
    if scheme not in allowed:
        every = ("auto", "profile", *STATIC_SCHEMES, DYNAMIC_SCHEME)
        hint = suggest(str(scheme), every) if scheme not in every else ""
        raise ValueError(f"scheme {scheme!r} does not fit mode {mode!r}{hint}; use {', '.join(allowed)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 <= float(budget) < 1.0:
        raise ValueError(f"budget {budget!r} must be an allowed top-1 drop as a fraction in [0, 1), e.g. 0.005 for half a point")
    return tuple(names)


def skipped_formats(mode: str, formats: Sequence[str]) -> dict[str, str]:
    """{format: why no quantized file is made} for the formats `mode` cannot produce."""
    return {"onnx": FP16_ONNX} if mode == "fp16" and "onnx" in formats else {}


def _options(**kw) -> tuple[str, ...]:
    try:
        return check_options(**kw)
    except ValueError as e:
        raise UserError(f"quantize: {e}") from None


def calibration_tensor(dataset, batches: int, seed: int = 0) -> torch.Tensor:
    """`batches` x 32 images of `dataset` (stratified by class, the same for the same seed) as one tensor."""
    from edgecompress.data.calibration import calibration_subset, make_loader

    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise UserError(f"calib_batches {batches!r} must be an integer >= 1 (batches of {CALIBRATION_BATCH} images; 4 or more advised)")
    n = min(batches * CALIBRATION_BATCH, len(dataset))
    subset = calibration_subset(dataset, n, seed=seed)
    return next(iter(make_loader(subset, batch_size=n, shuffle=False, seed=seed)))[0].float().contiguous()


# --------------------------------------------------------------------------- quantize_files


def quantize_files(
    model: torch.nn.Module | None,
    fp32: dict[str, str | Path],
    calib: Any,
    out_dir: str | Path,
    *,
    input_shape: Sequence[int],
    mode: str = "int8-static",
    method: str = "minmax",
    formats: Iterable[str] | str = FORMATS,
    device: Any = None,
    evaluate: Evaluate | None = None,
    budget: float = 0.005,
    scheme: str = "auto",
    threads: Sequence[int] = (1,),
    runs: int = 100,
    trials: int = 3,
    basename: str = "model_int8",
) -> dict[str, dict]:
    """Quantize each format's fp32 file into out_dir/<basename>.onnx|.tflite; {format: entry}.

    fp32: {"onnx": path, "tflite": path} of the exported float files; a format missing
    there (or None) is exported from `model` first, as out_dir/model_fp32.<format> (the
    float nn.Module; also checked not to be quantized already). calib: normalised calibration images (N, *input_shape), needed
    by int8-static. device: where scheme "auto" times the ONNX candidates (default:
    host). evaluate(path) -> top-1 in [0, 1] of a file; without it the scheme choice
    scores agreement with the fp32 file on the calibration images and nothing is kept
    float for accuracy. budget: allowed top-1 drop (fraction). scheme: "auto" or an ONNX
    scheme name (qdq-u8s8-per-channel, ...). threads/runs/trials: the scheme choice's
    latency measurement (ms, p50).

    An entry is the QuantizedArtifact dict plus fp32_file, scheme_choice {requested,
    chosen, reason, measured}, accuracy {fp32, quantized, drop, budget, within_budget,
    source} or None, mixed_precision (the report) or None, fp32_faster (True when no int8
    scheme beat fp32 on the device: the int8 file is kept, the notes say so). A format
    the mode cannot produce is `{"format", "mode", "skipped": why}` (fp16 ONNX).
    Files are built in a scratch dir beside out_dir and moved in only when all are done.
    """
    formats = _options(mode=mode, method=method, formats=formats, scheme=scheme, budget=budget)
    if mode == "qat":
        raise UserError("quantize: mode 'qat' needs training, which quantize_files does not do: use the recipe's "
                        "quantize step or `edgecompress quantize --mode qat` (qat_finetune, then export_qat_*)")
    if not basename or "/" in basename or os.sep in basename:
        raise UserError(f"basename {basename!r} must be a plain file name without directories, e.g. 'model_int8'")
    threads = _check_threads(threads)
    shape = tuple(int(s) for s in input_shape)
    skipped = skipped_formats(mode, formats)
    todo = [f for f in formats if f not in skipped]
    if model is not None:
        from edgecompress.quantize.tflite_quant import check_float_model

        check_float_model(model)
    sources = _fp32_sources(fp32, todo, model)
    images = None
    if mode == "int8-static":
        with warnings.catch_warnings():  # the quantizers check (and warn about) the same images again
            warnings.simplefilter("ignore", CalibrationWarning)
            images = check_calibration(calib, shape)
    out_dir = Path(out_dir)
    with _staging(out_dir, basename) as staging:
        exported = [fmt for fmt, source in sources.items() if source is None]
        for fmt in exported:  # no fp32 file given: export one from the model (kept beside the quantized one)
            sources[fmt] = _export_fp32(model, fmt, shape, images, staging)
        settings = {"mode": mode, "method": method, "budget": float(budget), "input_shape": shape, "evaluate": evaluate}
        entries: dict[str, dict] = {}
        if "onnx" in sources:
            entries["onnx"] = _quantize_onnx(sources["onnx"], images, staging / f"{basename}.onnx", scheme=scheme,
                                             device=device, threads=threads, runs=runs, trials=trials, **settings)
        if "tflite" in sources:
            entries["tflite"] = _quantize_tflite(sources["tflite"], images, staging / f"{basename}.tflite",
                                                 onnx_entry=entries.get("onnx"), **settings)
        for fmt, entry in entries.items():
            _move_in(entry, ("path", "fp32_file") if fmt in exported else ("path",), out_dir)
    for fmt, why in skipped.items():
        entries[fmt] = {"format": fmt, "mode": mode, "skipped": why}
    return {fmt: entries[fmt] for fmt in formats}


@contextlib.contextmanager
def _staging(out_dir: Path, basename: str) -> Iterator[Path]:
    """A scratch dir beside `out_dir` (same file system: moves are renames), removed on exit."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{basename}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_in(entry: dict[str, Any], keys: Sequence[str], out_dir: Path) -> None:
    """Move the files `entry[key]` names into `out_dir` (only once every file is built) and point the entry at them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for key in keys:
        final = out_dir / Path(entry[key]).name
        os.replace(entry[key], final)
        entry[key] = str(final)


def _check_threads(threads: Sequence[int]) -> list[int]:
    counts = list(dict.fromkeys(threads))
    if not counts or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in counts):
        raise UserError(f"threads {list(threads)} must be one or more integers >= 1, e.g. [1, 2]")
    return counts


def _fp32_sources(fp32: dict[str, str | Path], formats: Sequence[str], model) -> dict[str, Path | None]:
    """{format: existing fp32 file, or None to export from `model`}; UserError for a quantized or missing file."""
    from edgecompress.quantize.onnx_quant import is_quantized_onnx
    from edgecompress.quantize.tflite_quant import is_quantized_tflite

    unknown = [k for k in (fp32 or {}) if k not in FORMATS]
    if unknown:
        raise UserError(f"fp32 files: {unknown[0]!r} is not a format{suggest(str(unknown[0]), FORMATS)}; use keys {', '.join(FORMATS)}")
    sources: dict[str, Path | None] = {}
    for fmt in formats:
        given = (fp32 or {}).get(fmt)
        if given is None:
            if model is None:
                raise UserError(f"no fp32 {fmt} file given and no model to export one from; pass fp32={{'{fmt}': PATH}}")
            sources[fmt] = None
            continue
        path = Path(given)
        if not path.is_file() or path.suffix.lower() != f".{fmt}":
            raise UserError(f"fp32 {fmt} file {str(path)!r} does not exist or does not end in .{fmt}; export the model first")
        if (is_quantized_onnx if fmt == "onnx" else is_quantized_tflite)(path):
            raise UserError(f"{str(path)!r} is already quantized; pass the fp32 export of the model (quantizing twice "
                            "compounds the rounding error)")
        sources[fmt] = path
    return sources


def _export_fp32(model, fmt: str, shape: tuple[int, ...], images: torch.Tensor | None, staging: Path) -> Path:
    from edgecompress.export import export_model

    parity = images[:8] if images is not None else None
    (result,) = export_model(model.eval(), torch.zeros(1, *shape), staging / "fp32", formats=[fmt],
                             basename="model_fp32", parity_inputs=parity)
    return result.path


def _agreement_evaluator(fp32_onnx: Path, images: torch.Tensor) -> Evaluate:
    """top-1 agreement with the fp32 file's own predictions on `images` (a stand-in when no labels are given)."""
    from edgecompress.export.runtimes import run_onnx
    from edgecompress.quantize.sensitivity import top1_evaluator

    labels = run_onnx(fp32_onnx, images.numpy()).argmax(1)
    return top1_evaluator(images, labels)


def _accuracy(fp32_top1: float, top1: float, budget: float, source: str) -> dict[str, Any]:
    drop = fp32_top1 - top1
    return {"fp32": fp32_top1, "quantized": top1, "drop": drop, "budget": budget, "within_budget": drop <= budget,
            "source": source}


def _entry(artifact, fp32: Path | None, *, scheme_choice: dict, accuracy: dict | None, notes: Sequence[str] = (),
           mixed: dict | None = None, fp32_faster: bool | None = None) -> dict[str, Any]:
    entry = artifact.to_dict()
    entry["notes"] = [*entry["notes"], *notes]
    entry.update(fp32_file=str(fp32) if fp32 is not None else None, scheme_choice=scheme_choice, accuracy=accuracy,
                 mixed_precision=mixed, fp32_faster=fp32_faster)
    return entry


def _choice_dict(choice, kept: Path) -> dict[str, Any]:
    """choose_scheme's evidence without the scratch paths of the candidates it discarded."""
    d = choice.to_dict()
    d["path"] = kept.name
    for c in d["candidates"]:
        c["file"] = Path(c.pop("path")).name
    return d


def _quantize_onnx(fp32: Path, images, out: Path, *, mode: str, method: str, budget: float, input_shape, evaluate,
                   scheme: str, device, threads: list[int], runs: int, trials: int) -> dict[str, Any]:
    from edgecompress.quantize.onnx_quant import DYNAMIC_SCHEME, STATIC_SCHEMES, quantize_onnx_dynamic, quantize_onnx_static
    from edgecompress.quantize.sensitivity import mixed_precision

    source = "evaluate(path)"
    if mode == "int8-dynamic":
        artifact = quantize_onnx_dynamic(fp32, out)
        choice = {"requested": scheme, "chosen": DYNAMIC_SCHEME, "measured": None,
                  "reason": "mode int8-dynamic: int8 weights, activations quantized at run time (no calibration)"}
        accuracy = _accuracy(evaluate(fp32), evaluate(out), budget, source) if evaluate else None
        notes = []
        if accuracy and not accuracy["within_budget"]:
            notes.append(f"top-1 drop {accuracy['drop'] * 100:.2f} points exceeds the budget {budget * 100:.2f}; dynamic "
                         "quantization keeps no layer float by sensitivity: try int8-static or qat")
        return _entry(artifact, fp32, scheme_choice=choice, accuracy=accuracy, notes=notes)

    notes: list[str] = []
    fp32_faster = None
    stated = None
    if scheme == "profile":
        scheme, stated = profile_scheme(device)
    if scheme == "auto":
        artifact, choice, accuracy, fp32_faster, notes = _auto_scheme(
            fp32, images, out, method=method, budget=budget, input_shape=input_shape, evaluate=evaluate, device=device,
            threads=threads, runs=runs, trials=trials)
        chosen = artifact.scheme
    else:
        activations, per_channel = STATIC_SCHEMES[scheme]
        artifact = quantize_onnx_static(fp32, images, out, input_shape=input_shape, method=method,
                                        activations=activations, per_channel=per_channel)
        choice = {"requested": "profile" if stated else scheme, "chosen": scheme, "measured": None,
                  "reason": stated or "requested explicitly (not measured)"}
        accuracy = _accuracy(evaluate(fp32), evaluate(out), budget, source) if evaluate else None
        chosen = scheme
    mixed = None
    if evaluate is not None and accuracy is not None and not accuracy["within_budget"]:
        activations, per_channel = STATIC_SCHEMES[chosen]
        artifact, mixed = mixed_precision(fp32, images, evaluate, out, input_shape=input_shape, budget=budget,
                                          method=method, activations=activations, per_channel=per_channel)
        kept = [n for n, why in artifact.float_layers.items() if why.startswith("kept float")]
        notes.append(f"full {chosen} dropped {accuracy['drop'] * 100:.2f} points, over the budget {budget * 100:.2f}: "
                     f"kept float by sensitivity: {', '.join(kept) or 'none'}"
                     + ("; the scheme choice timed the full-int8 file, not this one" if scheme == "auto" else ""))
        accuracy = _accuracy(mixed["fp32_accuracy"], mixed["accuracy"], budget, source)
    return _entry(artifact, fp32, scheme_choice=choice, accuracy=accuracy, notes=notes, mixed=mixed,
                  fp32_faster=fp32_faster)


def profile_scheme(device) -> tuple[str, str]:
    """(ONNX scheme, reason) that `device`'s profile states (`int8: {onnx: ..., why: ...}`); UserError if it states none."""
    from edgecompress.devices.profiles import device_profile
    from edgecompress.quantize.onnx_quant import STATIC_SCHEMES

    profile = device_profile(device) if device is not None else None
    int8 = profile.int8 if profile is not None else {}
    name = getattr(device, "name", "no device")
    if static_scheme := int8.get("onnx"):
        if static_scheme not in STATIC_SCHEMES:
            raise UserError(f"scheme profile: {name}'s profile states {static_scheme!r} for ONNX, not a static int8 "
                            "scheme; use scheme auto (measured on the device) or name one")
        return static_scheme, f"stated by the device profile {profile.name!r} (not measured in this run): {int8['why']}"
    where = f"the device profile {profile.name!r} ({profile.path})" if profile is not None else f"{name} (it has no profile)"
    raise UserError(f"scheme profile: {where} states no int8 scheme for ONNX; add int8: {{onnx: SCHEME, why: ...}} to "
                    "the profile, or use scheme auto to measure the candidates on the device")


def _auto_scheme(fp32: Path, images, out: Path, *, method, budget, input_shape, evaluate, device, threads, runs, trials):
    """choose_scheme on the device; the kept candidate moved to `out`. (artifact, choice, accuracy, fp32_faster, notes)."""
    from edgecompress.quantize.select import choose_scheme

    notes = []
    if device is None:
        from edgecompress.devices import get_device

        device = get_device("host")
        notes.append("no device given: the scheme was chosen by timing on this host's CPU, not on a phone")
    judge = evaluate
    source = "evaluate(path)"
    if judge is None:
        judge = _agreement_evaluator(fp32, images)
        source = f"agreement with the fp32 file's top-1 on the {len(images)} calibration images (no evaluate given)"
    choice = choose_scheme(fp32, images, judge, device, out.parent / "candidates", input_shape=input_shape,
                           threads=threads, budget=budget, method=method, runs=runs, warmup=min(10, runs), trials=trials)
    fp32_faster = False
    if choice.scheme is not None:
        kept = next(c for c in choice.candidates if c.scheme == choice.scheme)
    else:
        accurate = [c for c in choice.candidates if c.within_budget]
        if accurate:  # int8 is accurate enough but not faster: keep it, and say so loudly
            kept = max(accurate, key=lambda c: c.mean_speedup)
            fp32_faster = True
            notes.append(f"WARNING: fp32 is faster than int8 on {choice.device}: {choice.reason}. The {kept.scheme} file "
                         f"is kept ({kept.mean_speedup:.2f}x the speed of fp32, smaller), but ship the fp32 file if "
                         "latency is what matters on this device")
        else:  # no scheme within budget: the least damaged one, for mixed precision (or the caller) to judge
            kept = min(choice.candidates, key=lambda c: (c.drop, -c.mean_speedup))  # a tie goes to the faster
            notes.append(f"{choice.reason}; kept {kept.scheme}, the least drop ({kept.drop * 100:.2f} points)"
                         + ("" if evaluate else ": no evaluate given, so no layer is kept float for accuracy"))
    os.replace(kept.path, out)
    artifact = dataclasses.replace(kept.artifact, path=out, size_bytes=out.stat().st_size)
    reason = choice.reason if choice.scheme is not None else f"{kept.scheme} kept although: {choice.reason}"
    info = {"requested": "auto", "chosen": kept.scheme, "reason": reason, "measured": _choice_dict(choice, out)}
    accuracy = _accuracy(choice.fp32_accuracy, kept.accuracy, budget, source)
    return artifact, info, accuracy, fp32_faster, notes


def _quantize_tflite(fp32: Path, images, out: Path, *, mode: str, method: str, budget: float, input_shape, evaluate,
                     onnx_entry: dict | None) -> dict[str, Any]:
    from edgecompress.quantize.onnx_quant import layer_label
    from edgecompress.quantize.tflite_quant import SCHEMES, quantize_tflite

    artifact = quantize_tflite(fp32, images, out, input_shape=input_shape, mode=mode, method=method)
    choice = {"requested": "auto", "chosen": SCHEMES[mode], "measured": None,
              "reason": f"mode {mode}: the TFLite scheme follows from the mode ({SCHEMES[mode]})"}
    if evaluate is None:
        return _entry(artifact, fp32, scheme_choice=choice, accuracy=None)
    fp32_top1 = evaluate(fp32)
    accuracy = _accuracy(fp32_top1, evaluate(out), budget, "evaluate(path)")
    notes: list[str] = []
    if accuracy["within_budget"]:
        return _entry(artifact, fp32, scheme_choice=choice, accuracy=accuracy)
    miss = f"top-1 drop {accuracy['drop'] * 100:.2f} points exceeds the budget {budget * 100:.2f}"
    sensitive = [layer_label(name) for name, why in ((onnx_entry or {}).get("float_layers") or {}).items()
                 if why.startswith("kept float")] if (onnx_entry or {}).get("mixed_precision") else []
    if mode != "int8-static":
        notes.append(f"{miss}; {mode} has no per-layer fix here: try int8-static with formats [onnx, tflite] or qat")
    elif not sensitive:
        notes.append(f"{miss} and could not be fixed: no layers were found sensitive (that needs the ONNX format in "
                     "formats and an evaluate function); try qat")
    else:
        retry = out.with_name(f"retry-{out.name}")
        try:
            again = quantize_tflite(fp32, images, retry, input_shape=input_shape, mode=mode, method=method, exclude=sensitive)
        except UserError as e:
            notes.append(f"{miss}; keeping the ONNX-sensitive layers {', '.join(sensitive)} float failed ({e}); not fixed")
        else:
            top1 = evaluate(retry)
            if top1 >= accuracy["quantized"]:
                os.replace(retry, out)
                artifact = dataclasses.replace(again, path=out, size_bytes=out.stat().st_size)
                accuracy = _accuracy(fp32_top1, top1, budget, "evaluate(path)")
                state = "now within budget" if accuracy["within_budget"] else "still over budget"
                notes.append(f"{miss} at full int8; kept float the layers ONNX sensitivity found ({', '.join(sensitive)}): "
                             f"drop now {accuracy['drop'] * 100:.2f} points, {state}")
            else:
                notes.append(f"{miss}; keeping {', '.join(sensitive)} float did not help (top-1 {top1:.2%}); not fixed")
    return _entry(artifact, fp32, scheme_choice=choice, accuracy=accuracy, notes=notes)


# --------------------------------------------------------------------------- QAT export and plans


def export_qat_files(qat_model, out_dir: str | Path, *, input_shape: Sequence[int], formats: Iterable[str] = FORMATS,
                     basename: str = "model_int8") -> dict[str, dict]:
    """Export a trained QATModel to out_dir/<basename>.tflite|.onnx (all or nothing); entries as `quantize_files`."""
    from edgecompress.quantize.qat import export_qat_onnx, export_qat_tflite

    formats = _options(mode="qat", formats=formats)
    example = torch.zeros(1, *(int(s) for s in input_shape))
    exporters = {"onnx": export_qat_onnx, "tflite": export_qat_tflite}
    with _staging(Path(out_dir), basename) as staging:
        entries = {}
        for fmt in formats:
            artifact = exporters[fmt](qat_model, example, staging / f"{basename}.{fmt}")
            choice = {"requested": "auto", "chosen": artifact.scheme, "measured": None,
                      "reason": "quantization-aware training: the file carries the ranges learned while training"}
            entries[fmt] = _entry(artifact, None, scheme_choice=choice, accuracy=None)
        for entry in entries.values():
            _move_in(entry, ("path",), Path(out_dir))
        return entries



def apply_plan(plan: dict[str, Any], model: torch.nn.Module | None, fp32: dict[str, str | Path], out_dir: str | Path, *,
               input_shape: Sequence[int], device: Any = None, evaluate: Evaluate | None = None,
               threads: Sequence[int] = (1,), runs: int = 100, trials: int = 3,
               basename: str = "model_int8") -> dict[str, dict]:
    """Make the quantized files a recipe's `quantize` step planned (see quantize.steps.plan_from_records).

    fp32: the exported fp32 files of the model, by format; the plan's formats (default:
    those of `fp32`) are made. QAT plans export the trained QAT model; others run
    `quantize_files` with the plan's mode, method, budget, scheme and calibration images.
    """
    formats = plan.get("formats") or [f for f in FORMATS if f in fp32]
    if plan.get("qat_model") is not None:
        return export_qat_files(plan["qat_model"], out_dir, input_shape=input_shape, formats=formats, basename=basename)
    return quantize_files(model, fp32, plan.get("calibration"), out_dir, input_shape=input_shape, mode=plan["mode"],
                          method=plan["method"], formats=formats, device=device, evaluate=evaluate,
                          budget=plan["budget"], scheme=plan["scheme"], threads=threads, runs=runs, trials=trials,
                          basename=basename)


# --------------------------------------------------------------------------- the command


def quantize_command(
    loaded,
    input_shape: tuple[int, int, int],
    *,
    mode: str,
    calib_batches: int,
    out: str | Path,
    device: str = "host",
    method: str = "minmax",
    formats: Iterable[str] | str = FORMATS,
    data_dir: str | Path | None = None,
    budget: float = 0.005,
    scheme: str = "auto",
    test_samples: int | None = None,
    force: bool = False,
    qat_epochs: int = 1,
    threads: Sequence[int] = (1, 2),
    runs: int = 50,
    warmup: int = 10,
    trials: int = 3,
    val_samples: int = 2000,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Quantize `loaded.model` and write out/ (fp32 and quantized files + quant.json); return quant.json's content.

    Calibration: `calib_batches` x 32 Fashion-MNIST training images (fewer than 4 batches
    warn). The scheme choice and mixed precision score on `val_samples` validation
    images; the report's top-1 of every file (fp32 and quantized, run in its runtime) is
    on the test split (`test_samples` images, default all 10000). Latency: every file on
    `device` at each of `threads`, trial by trial interleaved (`runs`, `warmup`,
    `trials` per measurement); speedup = fp32 p50 / quantized p50 (ms). qat: `qat_epochs`
    of fine-tuning with fake quantization and KD from the float model on the train split.
    Bad input raises UserError before anything is written; a failure leaves no `out`.
    """
    from edgecompress.devices import get_device
    from edgecompress.fsutil import atomic_directory, atomic_write_json, check_output_dir
    from edgecompress.quantize.tflite_quant import check_float_model

    formats = _options(mode=mode, method=method, formats=formats, scheme=scheme, budget=budget)
    if isinstance(calib_batches, bool) or not isinstance(calib_batches, int) or calib_batches < 1:
        raise UserError(f"--calib-batches {calib_batches!r} must be an integer >= 1 (batches of {CALIBRATION_BATCH} "
                        "training images; 4 or more advised)")
    if mode == "qat" and (isinstance(qat_epochs, bool) or not isinstance(qat_epochs, int) or qat_epochs < 1):
        raise UserError(f"--qat-epochs {qat_epochs!r} must be an integer >= 1")
    for name, value in (("--test-samples", test_samples), ("--val-samples", val_samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{name} {value!r} must be a positive integer")
    threads = _check_threads(threads)
    shape = tuple(int(s) for s in input_shape)
    out = Path(out)
    check_output_dir(out, force)
    check_float_model(loaded.model)
    dev = get_device(device)
    from edgecompress.data.fashion_mnist import fashion_mnist_splits

    splits = fashion_mnist_splits(shape, data_dir=data_dir, val_size=5000, seed=seed)
    # Fewer than 4 batches (< 100 images) warn through check_calibration when int8-static calibrates.
    calib = calibration_tensor(splits.train, calib_batches, seed)
    skipped = skipped_formats(mode, formats)
    todo = [f for f in formats if f not in skipped]
    model = loaded.model.eval()
    basename = f"model_{precision_label(mode)}"
    work = out.with_name(f".{out.name}.work")

    with atomic_directory(out, force=force) as tmp:
        from edgecompress.export import export_model

        exported = export_model(model, calib[:1], tmp, formats=todo, basename="model_fp32", parity_inputs=calib[:32])
        fp32 = {r.format: r.path for r in exported}
        if mode == "qat":
            qat = _qat_model(model, splits, calib, qat_epochs, work / "qat", seed, progress)
            entries = export_qat_files(qat, tmp, input_shape=shape, formats=todo, basename=basename)
        else:
            evaluate = val_evaluator(splits.val, val_samples, seed)
            entries = quantize_files(model, fp32, calib, tmp, input_shape=shape, mode=mode, method=method,
                                     formats=todo, device=dev, evaluate=evaluate, budget=budget, scheme=scheme,
                                     threads=threads, runs=runs, trials=trials, basename=basename)
        report = _report(loaded, shape, dev, fp32, entries, skipped, splits, calib, mode=mode, method=method,
                         calib_batches=calib_batches, budget=budget, scheme=scheme, test_samples=test_samples,
                         threads=threads, runs=runs, warmup=warmup, trials=trials, seed=seed, progress=progress)
        atomic_write_json(tmp / "quant.json", report)
    shutil.rmtree(work, ignore_errors=True)
    return report


def _qat_model(model, splits, calib, epochs: int, checkpoint_dir: Path, seed: int, progress: bool):
    from edgecompress.data.calibration import make_loader
    from edgecompress.distill import DistillConfig
    from edgecompress.quantize.qat import qat_finetune
    from edgecompress.train import TrainConfig

    config = TrainConfig(**{**QAT_DEFAULTS, "epochs": epochs, "seed": seed})
    train_loader = make_loader(splits.train, config.batch_size, shuffle=True, seed=seed)
    val_loader = make_loader(splits.val, 256, shuffle=False, seed=seed) if splits.val is not None and len(splits.val) else None
    return qat_finetune(model, train_loader, val_loader, config, teacher=model, distill=DistillConfig(),
                        example=calib[:1], checkpoint_dir=checkpoint_dir, progress=progress)


def val_evaluator(dataset, n: int, seed: int) -> Evaluate:
    """top-1 of a file over `n` images of `dataset` (the validation split) held in memory: what the scheme
    choice and mixed precision score with (the report's accuracy is on the test split, not this)."""
    from edgecompress.data.calibration import calibration_subset, make_loader
    from edgecompress.quantize.sensitivity import top1_evaluator

    subset = calibration_subset(dataset, min(n, len(dataset)), seed=seed)
    x, y = next(iter(make_loader(subset, batch_size=len(subset), shuffle=False, seed=seed)))
    return top1_evaluator(x, y, threads=1)


def _report(loaded, shape, dev, fp32: dict[str, Path], entries: dict[str, dict], skipped: dict[str, str], splits,
            calib: torch.Tensor, *, mode, method, calib_batches, budget, scheme, test_samples, threads,
            runs, warmup, trials, seed, progress) -> dict[str, Any]:
    """quant.json: per format fp32 vs quantized top-1 (test split), size, latency, speedup, scheme and float layers."""
    from edgecompress import __version__
    from edgecompress.data.calibration import make_loader
    from edgecompress.export.artifact_eval import evaluate_artifact
    from edgecompress.export.runtimes import runtime_versions
    from edgecompress.latency.interleave import measure_interleaved
    from edgecompress.versions import installed_version

    test = splits.test
    if test_samples is not None and test_samples < len(test):
        test = torch.utils.data.Subset(test, range(test_samples))
    loader = make_loader(test, batch_size=256, shuffle=False, seed=seed)
    files = {(fmt, kind): Path(path) for fmt in entries for kind, path in
             (("fp32", fp32.get(fmt)), ("quantized", entries[fmt].get("path"))) if path}
    top1 = {key: evaluate_artifact(path, loader, threads=2, progress=progress)["top1"] for key, path in files.items()}
    latency = measure_interleaved(dev, list(files.values()), threads, runs=runs, warmup=warmup, trials=trials)
    label = precision_label(mode)

    def side(key) -> dict[str, Any]:
        path = files[key]
        return {"file": path.name, "size_bytes": path.stat().st_size, "top1": top1[key],
                "latency": {str(t): {"p50_ms": latency[(path, t)].p50_ms, "p90_ms": latency[(path, t)].p90_ms}
                            for t in threads}}

    per_format: dict[str, Any] = {}
    summary = []
    for fmt, entry in entries.items():
        f, q = side((fmt, "fp32")), side((fmt, "quantized"))
        speedup = {str(t): f["latency"][str(t)]["p50_ms"] / q["latency"][str(t)]["p50_ms"] for t in threads}
        faster = all(s <= 1.0 for s in speedup.values())
        notes = list(entry["notes"])
        if faster:
            notes.append(f"fp32 is faster than {label} on {dev.name} at every thread count measured: ship {f['file']} "
                         "if latency is what matters on this device")
        per_format[fmt] = {
            "fp32": f, "quantized": q, "drop": f["top1"] - q["top1"], "speedup": speedup,
            "size_ratio": q["size_bytes"] / f["size_bytes"], "fp32_faster": faster,
            "mode": entry["mode"], "scheme": entry["scheme"], "scheme_reason": entry["scheme_choice"]["reason"],
            "scheme_choice": entry["scheme_choice"], "calibration": entry["calibration"],
            "float_layers": entry["float_layers"], "mixed_precision": entry["mixed_precision"],
            "selection_accuracy": entry["accuracy"], "quantize_seconds": entry["seconds"], "notes": notes,
        }
        speeds = ", ".join(f"{s:.2f}x at {t} thread{'s' if t != '1' else ''}" for t, s in speedup.items())
        t0 = str(threads[0])
        summary.append(
            f"{fmt}: fp32 {f['top1']:.2%}, {f['size_bytes'] / 1e6:.2f} MB, p50 {f['latency'][t0]['p50_ms']:.3f} ms -> "
            f"{label} {entry['scheme']} {q['top1']:.2%}, {q['size_bytes'] / 1e6:.2f} MB, p50 {q['latency'][t0]['p50_ms']:.3f} ms "
            f"({speeds} on {dev.name})" + ("; fp32 is faster here" if faster else "")
            + (f"; {len(entry['float_layers'])} layer(s) float" if entry["float_layers"] else ""))
    for fmt, why in skipped.items():
        per_format[fmt] = {"skipped": why}
        summary.append(f"{fmt}: skipped ({why})")
    return {
        "schema": SCHEMA,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"spec": loaded.spec, "arch": loaded.arch, "input_shape": list(shape)},
        "mode": mode, "method": method, "scheme": scheme, "budget": float(budget),
        "calibration": {"dataset": "fashion-mnist", "split": "train", "batches": calib_batches,
                        "batch_size": CALIBRATION_BATCH, "images": int(len(calib)), "seed": seed},
        "evaluation": {"dataset": "fashion-mnist", "split": "test", "n": len(test), "evaluated_on": "each file in its runtime"},
        "measure": {"threads": list(threads), "runs": runs, "warmup": warmup, "trials": trials, "interleaved": True},
        "device": {"name": dev.name, "fingerprint": dev.fingerprint()},
        "formats": per_format,
        "versions": {"edgecompress": __version__, "python": platform.python_version(), **runtime_versions(),
                     "ai_edge_quantizer": installed_version("ai-edge-quantizer")},
        "summary": summary,
    }
