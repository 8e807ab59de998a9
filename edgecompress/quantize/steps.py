"""Recipe step `quantize`: the int8 (or fp16) variant of the compressed model.

```yaml
steps:
  - prune: {target: macs=0.5}
  - finetune: {epochs: 3}
  - quantize:
      mode: int8-static        # int8-static | int8-dynamic | fp16 | qat
      method: minmax           # calibration: minmax | percentile | entropy (ONNX only)
      calib_batches: 8         # x 32 training images
      formats: [onnx, tflite]  # default: the recipe's export formats
      budget: 0.005            # allowed top-1 drop; over it, the most sensitive layers stay float
      scheme: auto             # ONNX: chosen by timing u8s8/s8s8 on the device, profile (the device
                               # profile's stated answer, not measured), or a scheme name
      val_samples: 2000        # validation images the scheme choice and mixed precision score with
      qat: {epochs: 1, lr: 3.0e-4, kd: {temperature: 4, alpha: 0.9}}   # mode qat only
```

Post-training modes do not change the model: the step records a plan (the checked
parameters and the calibration images, drawn from the training split with the run's
seed) in `ctx.records["_quantize"]`, and the pipeline, once it has exported the fp32
files, calls `quantize.api.apply_plan(plan_from_records(ctx.records), ...)` to make the
quantized files. Mode qat fine-tunes a fake-quantized copy of the model here (KD from
the original model, resumable checkpoints in the step's work dir) and puts it in the
plan; the model handed on stays the float one (its fp32 files are the comparison).
Quantization is what gets exported, so `quantize` must be the last step, and appear once.
Only the main track is quantized: a forked baseline (the search step's uniform variant)
is compared in fp32, and its quantize step only says so.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from edgecompress.pipeline.steps import StepContext, register_recipe_check, register_step

PLAN_KEY = "_quantize"  # "_" keys of ctx.records stay out of report.json
DEFAULTS: dict[str, Any] = {"mode": "int8-static", "method": "minmax", "calib_batches": 8, "formats": None,
                            "budget": 0.005, "scheme": "auto", "val_samples": 2000, "qat": None}
QAT_KEYS = ("epochs", "lr", "kd", "batch_size", "train_samples")


def quantize_params(params: dict) -> dict[str, Any]:
    """The step's parameters with defaults filled in (qat expanded for mode qat); ValueError naming the first bad one."""
    from edgecompress.errors import check_keys
    from edgecompress.quantize.api import QAT_DEFAULTS, check_options

    check_keys("quantize parameter", params, DEFAULTS)
    p = {**DEFAULTS, **params}
    formats = p["formats"]
    if formats is not None and (isinstance(formats, str) or not isinstance(formats, (list, tuple))):
        raise ValueError(f"formats = {formats!r} must be a list such as [onnx, tflite] (or omitted: the export formats)")
    # Unset formats are checked as both: e.g. entropy calibration (ONNX-only) must say formats: [onnx].
    checked = check_options(mode=p["mode"], method=p["method"], formats=formats if formats is not None else ("onnx", "tflite"),
                            scheme=p["scheme"], budget=p["budget"])
    p["formats"] = list(checked) if formats is not None else None
    n = p["val_samples"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"val_samples = {n!r} must be a positive integer (validation images scoring the int8 files)")
    batches = p["calib_batches"]
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"calib_batches = {batches!r} must be an integer >= 1 (batches of 32 training images; 4 or more advised)")
    if p["mode"] != "qat":
        if p["qat"] is not None:
            raise ValueError(f"qat settings are for mode qat, not {p['mode']!r}; drop qat or set mode: qat")
        return p
    qat = p["qat"] if p["qat"] is not None else {}
    if not isinstance(qat, dict):
        raise ValueError(f"qat = {qat!r} must be a mapping such as {{epochs: 1, lr: 3.0e-4, kd: {{}}}}")
    check_keys("quantize.qat parameter", qat, QAT_KEYS)
    p["qat"] = {"epochs": QAT_DEFAULTS["epochs"], "lr": QAT_DEFAULTS["lr"], "batch_size": QAT_DEFAULTS["batch_size"],
                "kd": {}, "train_samples": None, **qat}
    _qat_parts(p["qat"], seed=0)
    return p


def _qat_parts(qat: dict, seed: int):
    """(TrainConfig, DistillConfig or None, train_samples) of the qat settings; ValueError naming a bad one."""
    from edgecompress.distill import DistillConfig
    from edgecompress.quantize.api import QAT_DEFAULTS
    from edgecompress.train import TrainConfig

    try:
        config = TrainConfig(**{**QAT_DEFAULTS, "epochs": qat["epochs"], "lr": qat["lr"], "batch_size": qat["batch_size"],
                                "seed": seed})
    except (ValueError, TypeError) as e:
        raise ValueError(f"qat: {e}") from None
    kd = qat["kd"]
    if kd is not False and kd is not None and not isinstance(kd, dict):
        raise ValueError(f"qat.kd = {kd!r} must be a mapping {{temperature, alpha}} or false (no distillation)")
    try:
        distill = None if kd is False or kd is None else DistillConfig.from_dict(kd)
    except ValueError as e:
        raise ValueError(f"qat.kd: {e}") from None
    n = qat["train_samples"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"qat.train_samples = {n!r} must be a positive integer (or omitted for the whole split)")
    return config, distill, n


def _validate(params: dict) -> None:
    quantize_params(params)


@register_recipe_check
def _check_order(steps: list[tuple[str, dict]]) -> None:
    """`quantize` is applied to what is exported: once, and as the last step."""
    found = [i for i, (name, _) in enumerate(steps) if name == "quantize"]
    if len(found) > 1:
        raise ValueError(f"steps[{found[1]}] quantize: only one quantize step is allowed (the recipe has {len(found)})")
    if found and found[0] != len(steps) - 1:
        later = steps[found[0] + 1][0]
        raise ValueError(f"steps[{found[0]}] quantize must be the last step ({later!r} comes after it): quantization is "
                         "applied to the model that is exported, so move it to the end")


@register_step("quantize", validate=_validate)
def quantize_step(model: nn.Module, params: dict[str, Any], ctx: StepContext) -> nn.Module:
    """Plan the quantized variant (post-training modes), or run QAT for mode qat; the model is returned unchanged."""
    from edgecompress.quantize.api import calibration_tensor

    p = quantize_params(params)
    if ctx.variant != "after":
        ctx.notes.append(f"quantize: the {ctx.variant} baseline is compared in fp32; only the main model is quantized")
        return model
    calib = calibration_tensor(ctx.splits.train, p["calib_batches"], ctx.seed)
    plan = {key: p[key] for key in ("mode", "method", "formats", "budget", "scheme", "calib_batches", "val_samples")}
    plan.update(calibration=calib, qat_model=None, seed=ctx.seed)
    record: dict[str, Any] = {"params": {k: v for k, v in p.items() if v is not None}, "calibration_images": int(len(calib))}
    if p["mode"] == "qat":
        from edgecompress.quantize.qat import qat_finetune

        config, distill, n = _qat_parts(p["qat"], ctx.seed)
        teacher = ctx.original if distill is not None else None
        qat = qat_finetune(model, ctx.loader("train", config.batch_size, True, n), ctx.loader("val", 256, False), config,
                           teacher=teacher, distill=distill, example=calib[:1], checkpoint_dir=ctx.step_dir("qat"))
        plan["qat_model"] = qat
        record["qat"] = {"train": config.to_dict(), "distill": distill.to_dict() if distill else None,
                         "train_images": n if n is not None else len(ctx.splits.train)}
        ctx.notes.append(f"quantize (qat): {config.epochs} epoch(s) of quantization-aware training"
                         f"{' with KD from the original model' if distill else ''}; the int8 files carry the learned ranges")
    else:
        what = {"int8-static": f"int8-static, {p['method']} calibration on {len(calib)} training images, scheme {p['scheme']}",
                "int8-dynamic": "int8-dynamic (no calibration)", "fp16": "fp16 weights (TFLite)"}[p["mode"]]
        ctx.notes.append(f"quantize ({what}, budget {p['budget'] * 100:.2f} points): applied to the exported fp32 files")
    ctx.records[PLAN_KEY] = plan
    ctx.records.setdefault("quantize", []).append(record)
    return model


def plan_from_records(records: dict[str, Any] | None) -> dict[str, Any] | None:
    """The quantize step's plan from a track's ctx.records, or None when the recipe has no quantize step.

    Keys: mode, method, formats (None: the export formats), budget, scheme,
    calib_batches, calibration (tensor (N, C, H, W)), qat_model (a trained QATModel for
    mode qat, else None), seed. Pass it to `quantize.api.apply_plan` after the fp32 export.
    """
    if not records:
        return None
    plan = records.get(PLAN_KEY)
    return dict(plan) if plan is not None else None
