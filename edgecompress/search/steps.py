"""Recipe step `search`: choose each group's keep ratio on the device, for a `prune` after it.

```yaml
steps:
  - search:
      strategy: amc            # amc | evolution | random | uniform
      target: latency=0.5      # of the original's latency on the --device; or latency=3ms, macs=0.5, params=1M
      episodes: 40             # candidates evaluated (each pruned, scored, timed)
      reward: error            # error (hard budget), mnasnet (soft), error_log_macs (no budget)
      latency: measured        # measured on the --device, through the latency cache | predictor | macs (none)
      runtime: litert          # what candidates are timed with: litert | onnxruntime
      threads: 1
      runs: 100                # timed runs per candidate (their median is the candidate's latency)
      val_samples: 1000        # validation images scoring each candidate (no fine-tuning)
      bn_batches: 10           # training batches re-estimating BN statistics per candidate
      compare_uniform: true    # also carry uniform pruning at the same budget through the later steps
      options: {}              # the strategy's own settings (AMCConfig fields, evolution population ...)
      lowrank: spatial-svd     # optional: also a rank ratio per layer it factorizes (svd | spatial-svd | tucker2 | cp)
  - prune: {policy: search}    # prune to the best policy found (and factorize, with lowrank)
  - finetune: {epochs: 3, kd: {temperature: 4, alpha: 0.9}}
```

The gradient searches (tas, snas, scas) train instead of evaluating candidates and
*replace* the model with their derived child, so no `prune` follows them:

```yaml
steps:
  - search: {strategy: tas, target: macs=0.5, epochs: 10, search_images: 10000, options: {cost_weight: 2}}
  - finetune: {epochs: 3, kd: {temperature: 4, alpha: 0.9}}   # TAS's KD training of the derived network
```

The search leaves its log, best policy and accuracy-vs-latency plot in the bundle
(`search/`). Its checkpoint lives in the run's work dir: re-running the same command
after an interruption (or after the phone went away) resumes it. With
`compare_uniform`, the uniform baseline at the same budget becomes the report's
`uniform` variant: pruned, fine-tuned, exported and measured exactly like the searched one.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from torch import nn

from edgecompress.pipeline.steps import StepContext, register_recipe_check, register_step

RUNTIMES = ("litert", "onnxruntime")
DEFAULTS: dict[str, Any] = {
    "strategy": "amc", "episodes": 40, "reward": "error", "latency": "measured", "runtime": "litert", "threads": 1,
    "runs": 100, "predictor": None, "val_samples": 1000, "bn_batches": 10, "compare_uniform": False, "options": {},
    "epochs": 10, "search_images": 10000, "batch_size": 128, "lowrank": None,
}
KEYS = {"target", *DEFAULTS}


def _positive_int(name: str, value: Any, least: int = 1) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
        raise ValueError(f"{name} = {value!r} must be an integer >= {least}")


def search_params(params: dict) -> dict[str, Any]:
    """The step's parameters with defaults filled in; ValueError naming the first bad one."""
    from edgecompress.errors import UserError, check_keys
    from edgecompress.prune.structured import Target
    from edgecompress.search.api import check_latency_kind, check_lowrank
    from edgecompress.search.gradient import GRADIENT_STRATEGIES, all_strategies
    from edgecompress.search.reward import list_rewards

    check_keys("search parameter", params, KEYS)
    p = {**DEFAULTS, **params}
    if p["strategy"] not in all_strategies():
        raise ValueError(f"strategy {p['strategy']!r} must be one of {', '.join(all_strategies())}")
    if p["strategy"] in GRADIENT_STRATEGIES:
        if p["compare_uniform"]:
            raise ValueError(f"compare_uniform: the {p['strategy']} search replaces the model with its child, so "
                             "there is no policy to fork a uniform baseline from; compare with a separate recipe")
        if "target" not in params:
            raise ValueError("target is required, e.g. target: macs=0.5 or latency=0.5 (of the original)")
        _positive_int("epochs", p["epochs"])
        _positive_int("batch_size", p["batch_size"])
        _positive_int("search_images", p["search_images"], 2 * p["batch_size"])
    if p["reward"] not in list_rewards():
        raise ValueError(f"reward {p['reward']!r} must be one of {', '.join(list_rewards())}")
    if p["reward"] != "error_log_macs":
        if "target" not in params:
            raise ValueError("target is required, e.g. target: latency=0.5 (of the original) or macs=0.5")
        try:
            Target.parse(p["target"])
        except (ValueError, UserError) as exc:
            raise ValueError(f"target: {exc}") from None
    _positive_int("episodes", p["episodes"])
    _positive_int("threads", p["threads"])
    _positive_int("runs", p["runs"])
    _positive_int("val_samples", p["val_samples"])
    _positive_int("bn_batches", p["bn_batches"], 0)
    check_latency_kind(p["latency"], p["predictor"], p.get("target"), option="latency:", predictor_option="predictor:")
    if p["runtime"] not in RUNTIMES:
        raise ValueError(f"runtime {p['runtime']!r} must be one of {', '.join(RUNTIMES)}")
    if not isinstance(p["compare_uniform"], bool):
        raise ValueError(f"compare_uniform = {p['compare_uniform']!r} must be true or false")
    if p["compare_uniform"] and (p["strategy"] == "uniform" or p["reward"] == "error_log_macs"):
        raise ValueError("compare_uniform needs a searching strategy (not uniform) and a budget (not error_log_macs)")
    if not isinstance(p["options"], dict):
        raise ValueError(f"options = {p['options']!r} must be a mapping of the strategy's settings")
    try:
        check_lowrank(p["lowrank"], p["strategy"], option="lowrank:")
    except UserError as exc:
        raise ValueError(str(exc)) from None
    return p


def _validate(params: dict) -> None:
    search_params(params)


def _gradient(params: dict) -> bool:
    from edgecompress.search.gradient import GRADIENT_STRATEGIES

    return params.get("strategy") in GRADIENT_STRATEGIES


@register_recipe_check
def _check_order(steps: list[tuple[str, dict]]) -> None:
    """`prune: {policy: search}` needs a policy search (AMC or a baseline) before it; one search
    may fork the uniform baseline; a gradient search's child needs no prune."""
    searched = forks = 0
    for i, (name, params) in enumerate(steps):
        if name == "search" and _gradient(params):
            searched = 0  # its child replaces the model: no policy for a later prune
            continue
        if name == "search":
            searched += 1
            forks += bool(params.get("compare_uniform"))
        if name == "prune" and params.get("policy") == "search" and not searched:
            raise ValueError(f"steps[{i}] prune: policy 'search' needs a search step before it (AMC, evolution, "
                             "random or uniform; a tas/snas/scas search leaves a network, not a policy)")
    if forks > 1:
        raise ValueError("only one search step may set compare_uniform (the uniform variant is one baseline)")
    last = max((i for i, (n, p) in enumerate(steps) if n == "search" and not _gradient(p)), default=None)
    if last is not None and not any(n == "prune" and p.get("policy") == "search" for n, p in steps[last + 1:]):
        raise ValueError(f"steps[{last}] search: nothing uses its result; add `- prune: {{policy: search}}` after it")




@register_step("search", validate=_validate)
def search_step(model: nn.Module, params: dict[str, Any], ctx: StepContext) -> nn.Module:
    """Search a keep ratio per group, and with `lowrank` a rank ratio per layer (the model is unchanged;
    `prune: {policy: search}` applies it)."""
    from edgecompress.errors import UserError
    from edgecompress.search.runner import STATE_FILE, run_search
    from edgecompress.search.space import SearchSpace

    p = search_params(params)
    if ctx.splits.val is None:
        raise UserError("the search step scores candidates on held-out images: set data.val_size > 0 in the recipe")
    if _gradient(p):
        return _gradient_step(model, p, ctx)
    space = SearchSpace.from_model(model.eval(), tuple(ctx.input_shape), round_to=ctx.round_to() or 1,
                                   lowrank=p["lowrank"])
    evaluate, source = _scoring(p, ctx)
    # Settings and model go into the checkpoint dir's name: a re-run with the same ones resumes.
    key = hashlib.sha256(json.dumps([p, space.signature(), ctx.seed, getattr(ctx.device, "name", None)],
                                    sort_keys=True, default=str).encode()).hexdigest()[:10]
    out = ctx.step_dir("search", key)
    target = params.get("target")

    def run(strategy: str, out_dir, options: dict) -> Any:
        resume = (out_dir / STATE_FILE).is_file()
        if resume:
            print(f"search {strategy}: resuming from {out_dir / STATE_FILE}")
        return run_search(strategy, space, evaluate, latency_source=source, budget=target, episodes=p["episodes"],
                          seed=ctx.seed, out_dir=out_dir, resume=resume, progress=True, reward=p["reward"],
                          strategy_options=options)

    t0 = time.perf_counter()
    result = run(p["strategy"], out, p["options"])
    if result.best_policy is None:
        raise UserError(f"search: none of the {len(result.log)} candidates met {target!r}; raise episodes or the budget")
    record = {"params": p, "space": {"groups": len(space.groups), "rank_layers": len(space.ranks),
                                     "signature": space.signature(), "round_to": space.round_to},
              "meta": {k: v for k, v in result.meta.items() if k not in ("space",)},
              "searched": {"strategy": p["strategy"], **result.summary(space.total_macs),
                           "seconds": round(time.perf_counter() - t0, 1)}}
    ctx.policy, ctx.search_space = result.best_policy, space
    _keep_files(ctx, p["strategy"], result)
    line = _line(p["strategy"], record["searched"], space)
    if p["compare_uniform"]:
        t0 = time.perf_counter()
        uniform = run("uniform", out / "uniform", {})
        if uniform.best_policy is None:
            raise UserError(f"search: the uniform baseline found no ratio within {target!r}")
        record["uniform"] = {"strategy": "uniform", **uniform.summary(space.total_macs), "seconds": round(time.perf_counter() - t0, 1)}
        ctx.forks["uniform"] = uniform.best_policy
        _keep_files(ctx, "uniform", uniform)
        line += "; " + _line("uniform", record["uniform"], space)
    ctx.records.setdefault("search", []).append(record)
    ctx.notes.append(f"search ({p['target'] if 'target' in params else p['reward']}, {p['reward']} reward, "
                     f"{source.name if source is not None else 'no latency'}): {line}. Accuracy here is on "
                     f"{p['val_samples']} validation images without fine-tuning.")
    return model


def _scoring(p: dict[str, Any], ctx: StepContext) -> tuple[Any, Any]:
    """The evaluator (held-out images, BN re-estimated) and the latency source every search step scores with."""
    from edgecompress.search.api import search_latency
    from edgecompress.search.reward import Evaluator

    evaluate = Evaluator(ctx.splits.val, ctx.splits.train, val_samples=p["val_samples"], bn_batches=p["bn_batches"],
                         seed=ctx.seed)
    if p["latency"] == "measured":
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
    source = search_latency(p["latency"], ctx.device, p["runtime"], p["threads"], runs=p["runs"],
                            predictor=p["predictor"], work_dir=ctx.work_dir)
    return evaluate, source


def _keep_files(ctx: StepContext, strategy: str, result) -> None:
    """Put the search's log, best policy and plot into the bundle (not the checkpoint)."""
    for name, path in (result.files or {}).items():
        if name != "state":
            ctx.artifacts[f"search/{strategy}/{Path(path).name}"] = Path(path)


def _line(strategy: str, summary: dict[str, Any], space) -> str:
    best = summary["best"]
    lat = f", {best['latency_ms']:.3f} ms" if best.get("latency_ms") is not None else ""
    cache = summary["latency_cache"]
    return (f"{strategy} best of {summary['episodes']} top-1 {best['accuracy']:.2%}{lat}, MACs x{summary['macs_ratio']:.3f} "
            f"({summary['wall_s']:.0f} s, latency cache {cache['hits']} hits / {cache['misses']} misses)")


def _gradient_step(model: nn.Module, p: dict[str, Any], ctx: StepContext) -> nn.Module:
    """A tas/snas/scas search: train, derive, and hand the child network to the next steps."""
    from edgecompress.search.gradient import SearchData, build_gradient, run_gradient_search
    from edgecompress.search.runner import STATE_FILE

    evaluate, source = _scoring(p, ctx)
    key = hashlib.sha256(json.dumps([p, ctx.seed, getattr(ctx.device, "name", None)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:10]
    out = ctx.step_dir("search", key)
    resume = (out / STATE_FILE).is_file()
    if resume:
        print(f"search {p['strategy']}: resuming from {out / STATE_FILE}")
    reference = model.eval()
    shape = tuple(ctx.input_shape)
    strategy = build_gradient(p["strategy"], p["options"], reference=reference, input_shape=shape,  # type: ignore[arg-type]
                              latency_source=source, seed=ctx.seed)
    data = SearchData.halves(ctx.splits.train, batch_size=p["batch_size"], seed=ctx.seed,
                             samples=min(p["search_images"], len(ctx.splits.train)))
    t0 = time.perf_counter()
    result = run_gradient_search(strategy, data, evaluate, reference=reference, input_shape=shape,  # type: ignore[arg-type]
                                 budget=p["target"], latency_source=source, epochs=p["epochs"], seed=ctx.seed,
                                 out_dir=out, resume=resume, progress=True)
    derived, best = result.derived, result.best
    meta = result.meta
    ctx.rebuild = {"spec": derived.spec, "kwargs": dict(derived.kwargs), "removed": list(derived.removed)}
    _keep_files(ctx, p["strategy"], result)
    seconds = round(time.perf_counter() - t0, 1)
    record = {"params": p, "meta": {k: v for k, v in meta.items()},
              "searched": {"strategy": p["strategy"], "epochs": len(result.log), "best": best, "seconds": seconds,
                           "macs_ratio": best["macs"] / meta["reference_macs"],
                           "params_ratio": best["params"] / meta["reference_params"]}}
    ctx.records.setdefault("search", []).append(record)
    lat = f", {best['latency_ms']:.3f} ms" if best.get("latency_ms") is not None else ""
    over = "" if best["feasible"] else f" WARNING: the child is over the target {p['target']}."
    ctx.notes.append(f"search {p['strategy']} ({p['target']}, {len(result.log)} epochs over {p['search_images']} "
                     f"training images, {seconds:.0f} s): child top-1 {best['accuracy']:.2%} with the weights it "
                     f"inherits, before fine-tuning, on {p['val_samples']} validation images; MACs "
                     f"x{record['searched']['macs_ratio']:.3f}, params x{record['searched']['params_ratio']:.3f}{lat}."
                     f"{over}")
    if not best["feasible"]:
        print(f"WARNING: {p['strategy']}: the derived child is over the target {p['target']}", flush=True)
    return derived.model
