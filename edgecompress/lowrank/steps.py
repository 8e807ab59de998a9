"""The recipe step `factorize`, and `edgecompress factorize` (one model, one call).

```yaml
steps:
  - prune:     {target: macs=0.7}                       # optional: channels first
  - factorize: {method: spatial-svd, target: macs=0.7}  # fraction of the model entering the step
  - finetune:  {epochs: 3, kd: {temperature: 4, alpha: 0.9}}
  - quantize:  {mode: int8}
```

Parameters: LowRankConfig's (method, rank, target, sensitivity, ratios, round_to,
ignore, overrides, min_speedup) and
- latency_check: runtime (onnxruntime | litert) the layers are timed with before and
  after, alone, on the run's device; a layer not `min_speedup` faster stays whole.
  false: no timing (then a factorization that is slower on the device goes unnoticed).
  Default onnxruntime. A latency target is timed with it too.
- val_samples: validation images per evaluation for `sensitivity: accuracy` (default 1000).
round_to defaults to the device profile's channel multiple.
"""

from __future__ import annotations

import copy
import datetime as dt
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn

from edgecompress.pipeline.steps import StepContext, register_step

_EXTRA = {"latency_check", "val_samples"}


def lowrank_config(params: dict, round_to: int | None = None):
    """LowRankConfig from a step's parameters (ValueError naming a bad key or value)."""
    from edgecompress.errors import check_keys
    from edgecompress.lowrank.factorize import LowRankConfig

    own = {f.name for f in fields(LowRankConfig)}
    check_keys("factorize parameter", params, own | _EXTRA)
    cfg = {k: v for k, v in params.items() if k in own}
    for key in ("ignore", "ratios"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    if round_to is not None and "round_to" not in cfg:
        cfg["round_to"] = round_to
    check = params.get("latency_check", "onnxruntime")
    if check not in (False, None, "onnxruntime", "litert"):
        raise ValueError(f"latency_check = {check!r} must be onnxruntime, litert or false")
    n = params.get("val_samples", 1000)
    if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        raise ValueError(f"val_samples = {n!r} must be a positive integer")
    return LowRankConfig(**cfg)


def _validate(params: dict) -> None:
    lowrank_config(params)


@register_step("factorize", validate=_validate)
def factorize_step(model: nn.Module, params: dict[str, Any], ctx: StepContext) -> nn.Module:
    """Low-rank factorization in place (see edgecompress.lowrank.factorize); per-layer lines are printed."""
    from edgecompress.errors import UserError
    from edgecompress.lowrank.factorize import factorize_

    try:
        config = lowrank_config(params, ctx.round_to())
    except ValueError as exc:
        raise UserError(f"factorize: {exc}") from None
    evaluate = None
    if config.sensitivity == "accuracy" and config.target is not None:
        evaluate = _evaluator(ctx, int(params.get("val_samples", 1000)))
    timer = None
    runtime = params.get("latency_check", "onnxruntime")
    if runtime:
        from edgecompress.latency.cache import LatencyCache
        from edgecompress.lowrank.timing import LayerTimer

        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        timer = LayerTimer(ctx.device, runtime, 1, cache=LatencyCache(), work_dir=ctx.work_dir)
    result = factorize_(model, config, input_shape=tuple(ctx.input_shape), evaluate=evaluate, timer=timer)
    ctx.records.setdefault("factorize", []).append({"config": config.to_dict(), "latency_check": runtime or None,
                                                    **result.to_dict()})
    what = config.target or f"rank {config.rank}"
    ctx.notes.append(f"factorize ({config.method}, {what}, round_to {config.round_to}): {result.summary()}")
    ctx.notes.extend(result.notes)
    for plan in result.layers:
        print("  " + plan.line())
    return model


def _evaluator(ctx: StepContext, n: int):
    from edgecompress.train.evaluate import evaluate

    loader = ctx.loader("val", 256, shuffle=False, n=n)
    if loader is None:
        from edgecompress.errors import UserError

        raise UserError("factorize with sensitivity accuracy needs a validation split; use sensitivity error")
    return lambda m: evaluate(m, loader, progress=False).top1


def factorize_command(loaded, input_shape: tuple[int, int, int], params: dict[str, Any], *, device: str = "host",
                      out: str | Path, force: bool = False, finetune_epochs: int = 0, kd: bool = True,
                      data_dir: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Factorize `loaded.model` with the step's `params`, fine-tune if asked, write out/model.pt + factorize.json.

    Bad parameters raise UserError before anything is written; a failed run writes nothing.
    """
    from edgecompress.devices import get_device
    from edgecompress.errors import UserError
    from edgecompress.fsutil import atomic_directory, atomic_write_json
    from edgecompress.models.loading import save_checkpoint
    from edgecompress.prune.steps import finetune_step

    try:
        lowrank_config(params)
    except ValueError as exc:
        raise UserError(f"factorize: {exc}") from None
    if finetune_epochs < 0:
        raise UserError(f"--finetune-epochs {finetune_epochs} must be >= 0")
    if loaded.arch is None:
        raise UserError(f"{loaded.spec!r} has no recorded architecture, so a factorized copy could not be saved "
                        "to reload; pass a zoo:/torchvision: model or an edgecompress checkpoint")
    dev = get_device(device)
    splits = None
    if finetune_epochs > 0 or params.get("sensitivity") == "accuracy":
        from edgecompress.data.fashion_mnist import fashion_mnist_splits

        splits = fashion_mnist_splits(input_shape, data_dir=data_dir, val_size=5000, seed=seed)
    model = loaded.model.eval()
    out = Path(out)
    work = out.with_name(f".{out.name}.work")
    ctx = StepContext(input_shape=tuple(input_shape), seed=seed, splits=splits, device=dev, work_dir=work,
                      original=copy.deepcopy(model))
    with atomic_directory(out, force=force) as tmp:
        factorize_step(model, params, ctx)
        if finetune_epochs:
            finetune_step(model, {"epochs": finetune_epochs, "kd": {} if kd else False}, ctx)
        model.eval()
        record = ctx.records["factorize"][-1]
        save_checkpoint(model, tmp / "model.pt", arch_spec=loaded.arch["spec"],
                        arch_kwargs=loaded.arch.get("kwargs", {}), input_shape=input_shape,
                        removed=loaded.arch.get("removed", ()),
                        meta={"factorized": record["config"]})
        report = {
            "schema": "edgecompress.factorize/1",
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"spec": loaded.spec, "arch": loaded.arch, "input_shape": list(input_shape)},
            "device": dev.name,
            "factorize": record,
            "finetune": ctx.records.get("finetune", []),
            "summary": list(ctx.notes),
        }
        atomic_write_json(tmp / "factorize.json", report)
    shutil.rmtree(work, ignore_errors=True)
    return report
