"""Recipe steps of the pruning engine: `prune`, `finetune`, `slim` and `sparsify`.

```yaml
steps:
  - slim:     {epochs: 2, penalty: 1.0e-4}          # optional: L1 on BN scales first
  - prune:    {target: macs=0.5, importance: l2}    # round_to from the device profile
  # or, after a `search` step: {policy: search}; or a saved policy: {policy: best_policy.json}
  - finetune: {epochs: 3, lr: 0.01, kd: {temperature: 4, alpha: 0.9}}
  - sparsify: {final_sparsity: 0.7, epochs: 2}      # unstructured, masks kept to the end
```

Training steps keep per-epoch checkpoints under the run's work dir, so re-running the
same command after an interruption resumes them (earlier steps are deterministic).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from edgecompress.pipeline.steps import StepContext, register_step

_TRAIN_EXTRA = {"kd", "train_samples"}
_PRUNE_EXTRA = {"taylor_batches", "latency_runtime"}
_DEFAULT_TRAIN = {"epochs": 3, "lr": 0.01, "batch_size": 128, "warmup_epochs": 0.0}


def _split(params: dict, own: set[str], step: str) -> tuple[dict, dict]:
    """(train-config keys, the step's own keys); ValueError for any other key."""
    from edgecompress.errors import check_keys
    from edgecompress.train import TrainConfig

    train_keys = {f.name for f in fields(TrainConfig)} | _TRAIN_EXTRA
    check_keys(f"{step} parameter", params, train_keys | own)
    return {k: v for k, v in params.items() if k in train_keys}, {k: v for k, v in params.items() if k in own}


def _train_parts(train_params: dict, seed: int):
    from edgecompress.distill import DistillConfig
    from edgecompress.train import TrainConfig

    cfg = {**_DEFAULT_TRAIN, "seed": seed, **{k: v for k, v in train_params.items() if k not in _TRAIN_EXTRA}}
    kd = train_params.get("kd", {})
    distill = None if kd is False or kd is None else DistillConfig.from_dict(kd if isinstance(kd, dict) else {})
    n = train_params.get("train_samples")
    if n is not None and not (isinstance(n, int) and n > 0):
        raise ValueError(f"train_samples = {n!r} must be a positive integer (or omitted for the whole split)")
    return TrainConfig.from_dict(cfg), distill, n


def _prune_config(params: dict, round_to: int | None = None):
    from edgecompress.prune.structured import PruneConfig

    own = {f.name for f in fields(PruneConfig)}
    from edgecompress.errors import check_keys

    check_keys("prune parameter", params, own | _PRUNE_EXTRA)
    cfg = {k: v for k, v in params.items() if k in own}
    if "ignore" in cfg:
        cfg["ignore"] = tuple(cfg["ignore"])
    if round_to is not None and "round_to" not in cfg:
        cfg["round_to"] = round_to
    return PruneConfig(**cfg)


def _validate_prune(params: dict) -> None:
    if "policy" in params:
        _policy_source(params)
    else:
        _prune_config(params)


def _policy_source(params: dict) -> str:
    """'search' or the path of a policy file, for `prune: {policy: ...}` (ValueError if misused)."""
    others = sorted(set(params) - {"policy"})
    if others:
        raise ValueError(f"prune with a policy takes no other parameter (got {', '.join(others)}): the policy fixes "
                         "every group's width; drop them, or drop policy to prune to a target")
    value = params["policy"]
    if value == "search":
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"policy = {value!r} must be 'search' (the best policy of the search step before) or the "
                         "path of a policy file (an `edgecompress search` best_policy.json)")
    from pathlib import Path

    if not Path(value).is_file():
        raise ValueError(f"policy file {value!r} does not exist; pass an `edgecompress search` best_policy.json "
                         "or 'search'")
    return value


def _prune_to_policy(model: nn.Module, source: str, ctx: StepContext) -> nn.Module:
    """Prune `model` to a searched policy: the search step's best (or the uniform baseline on that track) or a file."""
    from edgecompress.errors import UserError
    from edgecompress.search.space import Policy, SearchSpace

    if source == "search":
        policy, space = ctx.policy, ctx.search_space
        if policy is None:
            raise UserError("prune: {policy: search} needs a search step before it in the recipe")
        origin = "search step" if ctx.variant == "after" else f"{ctx.variant} baseline of the search step"
    else:
        policy = Policy.load(source)
        space = SearchSpace.from_model(model, tuple(ctx.input_shape), round_to=ctx.round_to() or 1,
                                       lowrank=policy.lowrank)
        origin = source
    pruned, result = space.prune(policy, model)
    ctx.records.setdefault("prune", []).append({"config": {"policy": policy.to_dict(), "from": origin,
                                                           "importance": space.importance, "round_to": space.round_to,
                                                           "ranking": "policy"}, **result.to_dict()})
    factorized = (f", then {len(result.factorized['layers'])} layers factorized with {policy.lowrank}"
                  if result.factorized else "")
    ctx.notes.append(f"prune (policy from the {origin}, round_to {space.round_to}){factorized}: MACs "
                     f"x{result.macs_ratio:.3f}, params x{result.params_ratio:.3f}")
    return pruned


def _validate_training(step: str, own: set[str]):
    def check(params: dict) -> None:
        train_params, _ = _split(params, own, step)
        _train_parts(train_params, 0)
    return check


@register_step("prune", validate=_validate_prune)
def prune_step(model: nn.Module, params: dict[str, Any], ctx: StepContext) -> nn.Module:
    """Structured channel pruning, in place (see PruneConfig for the parameters), or to a searched policy."""
    if "policy" in params:
        return _prune_to_policy(model, _policy_source(params), ctx)
    from edgecompress.prune.importance import accumulate_gradients
    from edgecompress.prune.structured import describe_result, prune_

    config = _prune_config(params, ctx.round_to())
    if config.importance == "taylor":
        loader = ctx.loader("train", 64, shuffle=True)
        accumulate_gradients(model, loader, batches=int(params.get("taylor_batches", 8)))
    latency_fn = None
    if config.target and config.target.startswith("latency"):
        from edgecompress.latency.cache import CachedDevice, LatencyCache
        from edgecompress.latency.source import measured_latency_fn

        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        # Candidates are measured through the latency cache: a re-run (or a resumed run)
        # measures only the widths it has not seen on this device.
        device = ctx.device if isinstance(ctx.device, CachedDevice) else CachedDevice(ctx.device, LatencyCache())
        latency_fn = measured_latency_fn(device, ctx.input_shape, runtime=params.get("latency_runtime", "onnxruntime"),
                                         work_dir=ctx.work_dir)
    result = prune_(model, config, input_shape=tuple(ctx.input_shape), latency_fn=latency_fn)
    model.zero_grad(set_to_none=True)
    ctx.records.setdefault("prune", []).append({"config": config.to_dict(), **result.to_dict()})
    lines = describe_result(result)
    ctx.notes.append(f"prune ({config.target or f'ratio {config.ratio}'}, {config.importance}, round_to "
                     f"{config.round_to}): {lines[0]}")
    for line in lines[1:]:
        print(line)
    return model


@register_step("finetune", validate=_validate_training("finetune", set()))
def finetune_step(model: nn.Module, params: dict[str, Any], ctx: StepContext) -> nn.Module:
    """Fine-tune with KD from the original model (kd: false for plain cross-entropy)."""
    from edgecompress.distill import finetune

    config, distill, n = _train_parts(params, ctx.seed)
    history = finetune(model, ctx.original if distill else None, ctx.loader("train", config.batch_size, True, n),
                       ctx.loader("val", 256, False), config, distill=distill, checkpoint_dir=ctx.step_dir("finetune"))
    ctx.records.setdefault("finetune", []).append({"config": config.to_dict(), "distill": distill.to_dict() if distill else None,
                                                   "history": history.to_dict()})
    return model


@register_step("slim", validate=_validate_training("slim", {"penalty", "include"}))
def slim_step(model: nn.Module, params: dict[str, Any], ctx: StepContext) -> nn.Module:
    """Network-slimming training (L1 on BatchNorm scales) before a `prune` with importance bn_scale."""
    from edgecompress.distill import finetune
    from edgecompress.prune.slimming import SlimmingHook, bn_l1

    train_params, own = _split(params, {"penalty", "include"}, "slim")
    config, distill, n = _train_parts(train_params, ctx.seed)
    hook = SlimmingHook(penalty=float(own.get("penalty", 1e-4)), include=own.get("include"))
    before = bn_l1(model)
    history = finetune(model, ctx.original if distill else None, ctx.loader("train", config.batch_size, True, n),
                       ctx.loader("val", 256, False), config, distill=distill, hooks=[hook],
                       checkpoint_dir=ctx.step_dir("slim"))
    ctx.records.setdefault("slim", []).append({"penalty": hook.penalty, "bn_l1_before": before, "bn_l1_after": bn_l1(model),
                                               "history": history.to_dict()})
    return model


_GMP_KEYS = {"final_sparsity", "initial_sparsity", "begin_step", "end_step", "frequency", "scope", "include", "ignore"}


def _validate_sparsify(params: dict) -> None:
    from edgecompress.prune.unstructured import GMPConfig

    train_params, own = _split(params, _GMP_KEYS, "sparsify")
    _train_parts(train_params, 0)
    GMPConfig.from_dict(own)


@register_step("sparsify", validate=_validate_sparsify)
def sparsify_step(model: nn.Module, params: dict[str, Any], ctx: StepContext) -> nn.Module:
    """Unstructured gradual magnitude pruning with masked fine-tuning (Zhu & Gupta's cubic schedule)."""
    import dataclasses

    from edgecompress.distill import finetune
    from edgecompress.prune.unstructured import GMPConfig, GradualMagnitudePruner

    train_params, own = _split(params, _GMP_KEYS, "sparsify")
    config, distill, n = _train_parts(train_params, ctx.seed)
    # The best-validation epoch may be a less sparse one: keep the last (fully sparse) weights.
    config = dataclasses.replace(config, restore_best=False)
    loader = ctx.loader("train", config.batch_size, True, n)
    pruner = GradualMagnitudePruner(model, GMPConfig.from_dict(own), total_steps=config.epochs * len(loader))
    history = finetune(model, ctx.original if distill else None, loader, ctx.loader("val", 256, False), config,
                       distill=distill, hooks=[pruner], checkpoint_dir=ctx.step_dir("sparsify"))
    report = pruner.finalize()
    ctx.records.setdefault("sparsify", []).append({"gmp": pruner.config.to_dict(), "sparsity": report.to_dict(),
                                                   "history": history.to_dict()})
    ctx.notes.append(f"sparsify: {report.sparsity:.1%} of {report.params:,} conv/linear weights are zero. Dense runtimes "
                     "(ONNX Runtime, LiteRT/XNNPACK) do not run faster on unstructured zeros; the gzip size of each "
                     "file shows the smaller download.")
    return model
