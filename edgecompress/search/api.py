"""`edgecompress search`: search per-group keep ratios (and rank ratios) for one model on one device, as one call."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from edgecompress.errors import UserError

LATENCY_KINDS = ("measured", "predictor", "macs")


def check_latency_kind(kind: str, predictor: Any, target: Any, option: str = "--latency",
                       predictor_option: str = "--predictor") -> None:
    """ValueError if candidate latency `kind` cannot serve `target` (option names as the caller spells them)."""
    if kind not in LATENCY_KINDS:
        raise ValueError(f"{option} {kind!r} must be one of {', '.join(LATENCY_KINDS)}")
    if kind == "predictor" and not predictor:
        raise ValueError(f"{option} predictor needs {predictor_option} PATH (a predictor.json fitted on the device)")
    if kind == "macs" and str(target or "").startswith("latency"):
        raise ValueError(f"target {target!r} is a latency: use {option} measured or predictor")


def check_lowrank(lowrank: str | None, strategy: str, option: str = "--lowrank") -> None:
    """UserError if `lowrank` is not a low-rank method, or `strategy` cannot search rank ratios."""
    from edgecompress.errors import suggest
    from edgecompress.lowrank.decomposition import METHODS
    from edgecompress.search.gradient import GRADIENT_STRATEGIES

    if lowrank is None:
        return
    if lowrank not in METHODS:
        raise UserError(f"{option} {lowrank!r} is not a low-rank method{suggest(str(lowrank), METHODS)}; "
                        f"valid: {', '.join(METHODS)}")
    if strategy in GRADIENT_STRATEGIES:
        raise UserError(f"{option} adds rank ratios to a candidate search (amc, evolution, random, uniform); "
                        f"{strategy} trains a network instead")


def search_latency(kind: str, device: Any, runtime: str, threads: int, *, runs: int = 50, predictor: Any = None,
                   work_dir: Any = None) -> Any:
    """The LatencySource candidates are timed with: measured on `device` through the latency
    cache, a fitted predictor checked against `device`, or None ("macs": no latency)."""
    from edgecompress.latency.cache import LatencyCache
    from edgecompress.latency.source import MeasuredLatency, make_latency_source

    if kind == "macs":
        return None
    if kind == "predictor":
        return make_latency_source("predictor", predictor=predictor, device=device)
    return MeasuredLatency(device, runtime, threads, runs=runs, cache=LatencyCache(), work_dir=work_dir)


def search_command(
    loaded,
    input_shape: tuple[int, int, int],
    *,
    strategy: str,
    target: str,
    episodes: int,
    out: str | Path,
    device: str = "host",
    reward: str = "error",
    runtime: str = "litert",
    threads: int = 1,
    latency: str = "measured",
    predictor: str | Path | None = None,
    val_samples: int = 2000,
    data_dir: str | Path | None = None,
    seed: int = 0,
    resume: bool = False,
    force: bool = False,
    progress: bool | str = True,
    epochs: int = 10,
    search_images: int = 10000,
    batch_size: int = 128,
    options: dict[str, Any] | None = None,
    lowrank: str | None = None,
) -> dict[str, Any]:
    """Run `strategy` on `loaded.model` against `target` and leave the search in `out`.

    `out` holds the checkpoint (so `resume=True` continues an interrupted search), the
    search log, the best policy, the accuracy-vs-latency plot and search.json (the
    summary). Candidate latency comes from `latency`: "measured" on `device` (through the
    latency cache), "predictor" (a fitted predictor file; the best candidate is then
    re-measured on the device) or "macs" (no latency; for MACs/params targets).
    Accuracy is Fashion-MNIST validation top-1 without fine-tuning, after BN re-estimation.

    The gradient strategies (tas, snas, scas) train for `epochs` passes over
    `search_images` training images (half for the weights, half for the architecture)
    instead of evaluating `episodes` candidates; their child network is written to
    `out/child.pt` (loadable like any model). `options` are the strategy's own settings.

    `lowrank` (svd | spatial-svd | tucker2 | cp) makes the space joint: a rank ratio per
    layer that method factorizes, searched with the keep ratios (candidate strategies only).
    """
    from edgecompress.devices import get_device
    from edgecompress.devices.profiles import preferred_round_to
    from edgecompress.fsutil import atomic_write_json
    from edgecompress.search.reward import fashion_mnist_evaluator
    from edgecompress.errors import suggest
    from edgecompress.search.gradient import GRADIENT_STRATEGIES, all_strategies
    from edgecompress.search.runner import STATE_FILE, run_search
    from edgecompress.search.space import SearchSpace

    if strategy not in all_strategies():
        raise UserError(f"unknown search strategy {strategy!r}{suggest(str(strategy), all_strategies())}; "
                        f"valid: {', '.join(all_strategies())}")
    if options and strategy not in GRADIENT_STRATEGIES:
        raise UserError(f"--option applies to the gradient searches ({', '.join(sorted(GRADIENT_STRATEGIES))}); "
                        f"{strategy} takes none here")
    check_lowrank(lowrank, strategy)
    try:
        check_latency_kind(latency, predictor, target)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(out)
    has_state = (out / STATE_FILE).is_file()
    if resume and not has_state:
        raise UserError(f"nothing to resume in {str(out)!r} (no {STATE_FILE}); run without --resume")
    if out.exists() and not resume and not force:
        raise UserError(f"output {str(out)!r} exists; pass --resume to continue that search or --force to replace it")
    dev = get_device(device)
    if strategy in GRADIENT_STRATEGIES:
        return _gradient_command(loaded, input_shape, strategy=strategy, target=target, out=out, dev=dev,
                                 runtime=runtime, threads=threads, latency=latency, predictor=predictor,
                                 val_samples=val_samples, data_dir=data_dir, seed=seed, resume=resume,
                                 progress=progress, epochs=epochs, search_images=search_images,
                                 batch_size=batch_size, options=dict(options or {}))
    if out.exists() and not resume:
        shutil.rmtree(out)
    space = SearchSpace.from_model(loaded.model.eval(), input_shape, round_to=preferred_round_to(dev) or 8,
                                   lowrank=lowrank)
    evaluate = fashion_mnist_evaluator(input_shape, data_dir, val_samples=val_samples, seed=seed)
    source = search_latency(latency, dev, runtime, threads, predictor=predictor)
    # The final candidate is always measured on the device, whatever the search used.
    measured = source if latency == "measured" else search_latency("measured", dev, runtime, threads)
    result = run_search(strategy, space, evaluate, latency_source=source, budget=target, episodes=episodes, seed=seed,
                        out_dir=out, resume=resume, progress=progress, reward=reward)
    if result.best_policy is None:
        raise UserError(f"no candidate of the {len(result.log)} evaluated met {target!r}; raise --episodes or the budget")
    best = dict(result.best or {})
    pruned = space.apply(result.best_policy)
    original_ms = measured.latency_ms(loaded.model.eval(), input_shape)
    original_info = dict(measured.last_result.runtime_info) if measured.last_result else {}
    best_ms = measured.latency_ms(pruned, input_shape)
    summary = {
        "schema": "edgecompress.search/1",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"spec": loaded.spec, "input_shape": list(input_shape)},
        "device": dev.name,
        "strategy": strategy,
        "reward": reward,
        "target": target,
        "lowrank": lowrank,
        "episodes": len(result.log),
        "latency_source": getattr(source, "name", None),
        "best": best,
        "best_measured": {"runtime": runtime, "threads": threads, "original_p50_ms": original_ms,
                          "best_p50_ms": best_ms, "speedup": original_ms / best_ms if best_ms else None,
                          "runtime_info": original_info},
        "latency_cache": result.latency_cache_counts(),
        "files": {k: str(v) for k, v in (result.files or {}).items()},
        "summary": [
            f"{strategy}: best of {len(result.log)} candidates: top-1 {best.get('accuracy', float('nan')):.2%} "
            f"(no fine-tuning), MACs {best.get('macs', 0) / space.macs(space.full_policy()):.2f}x, "
            f"measured p50 {original_ms:.3f} -> {best_ms:.3f} ms ({original_ms / best_ms:.2f}x) on {dev.name} "
            f"({runtime}, {threads} thread{'s' if threads > 1 else ''})",
        ],
    }
    atomic_write_json(out / "search.json", summary)
    return summary


def _gradient_command(loaded, input_shape: tuple[int, int, int], *, strategy: str, target: str, out: Path, dev: Any,
                      runtime: str, threads: int, latency: str, predictor: Any, val_samples: int, data_dir: Any,
                      seed: int, resume: bool, progress: bool | str, epochs: int, search_images: int,
                      batch_size: int, options: dict[str, Any]) -> dict[str, Any]:
    """`search_command` for TAS, SNAS and SCAS: train, derive, save and time the child."""
    from edgecompress.data.fashion_mnist import fashion_mnist_splits
    from edgecompress.fsutil import atomic_write_json
    from edgecompress.models.loading import save_checkpoint
    from edgecompress.search.gradient import SearchData, build_gradient, run_gradient_search
    from edgecompress.search.reward import fashion_mnist_evaluator

    for name, value, least in (("--epochs", epochs, 1), ("--search-images", search_images, 2 * batch_size),
                               ("--batch-size", batch_size, 1)):
        if not (isinstance(value, int) and value >= least):
            raise UserError(f"{name} {value!r} must be an integer >= {least}")
    model = loaded.model.eval()
    source = search_latency(latency, dev, runtime, threads, predictor=predictor)
    measured = source if latency == "measured" else search_latency("measured", dev, runtime, threads)
    splits = fashion_mnist_splits(input_shape, data_dir, val_size=5000, seed=0)
    data = SearchData.halves(splits.train, batch_size=batch_size, seed=seed, samples=min(search_images, len(splits.train)))
    evaluate = fashion_mnist_evaluator(input_shape, data_dir, val_samples=val_samples, seed=seed)
    strat = build_gradient(strategy, options, reference=model, input_shape=input_shape, latency_source=source, seed=seed)
    if out.exists() and not resume:  # --force, now that the settings are known to be valid
        shutil.rmtree(out)
    result = run_gradient_search(strat, data, evaluate, reference=model, input_shape=input_shape, budget=target,
                                 latency_source=source, epochs=epochs, seed=seed, out_dir=out, resume=resume,
                                 progress=progress)
    derived = result.derived
    best = dict(result.best or {})
    if not best.get("feasible", True):
        print(f"WARNING: the {strategy} child is over the budget {target!r} "
              f"({_over(best, result.meta)}); raise the cost weight or lower the target", flush=True)
    spec, kwargs = derived.spec, derived.kwargs
    if spec is None and loaded.arch:
        spec, kwargs = loaded.arch["spec"], dict(loaded.arch.get("kwargs") or {})
    files = dict(result.files or {})
    if spec is not None:
        files["child"] = str(save_checkpoint(derived.model, out / "child.pt", arch_spec=spec, arch_kwargs=kwargs,
                                             input_shape=input_shape, removed=derived.removed,
                                             meta={"search": strategy, "target": target}))
    original_ms = measured.latency_ms(model, input_shape)
    original_info = dict(measured.last_result.runtime_info) if measured.last_result else {}
    child_ms = measured.latency_ms(derived.model.eval(), input_shape)
    ref_macs = result.meta["reference_macs"]
    summary = {
        "schema": "edgecompress.search/1",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"spec": loaded.spec, "input_shape": list(input_shape)},
        "device": dev.name, "strategy": strategy, "target": target, "epochs": len(result.log),
        "search_images": search_images, "latency_source": getattr(source, "name", None), "options": options,
        "best": best,
        "best_measured": {"runtime": runtime, "threads": threads, "original_p50_ms": original_ms,
                          "best_p50_ms": child_ms, "speedup": original_ms / child_ms if child_ms else None,
                          "runtime_info": original_info},
        "latency_cache": result.latency_cache_counts(),
        "wall_s": round(sum(r.get("wall_s", 0.0) for r in result.log), 1),
        "files": files,
        "summary": [
            f"{strategy}: child after {len(result.log)} epochs: top-1 {best.get('accuracy', float('nan')):.2%} "
            f"(inherited weights, no fine-tuning), MACs {best.get('macs', 0) / ref_macs:.2f}x, params "
            f"{best.get('params', 0) / result.meta['reference_params']:.2f}x, measured p50 {original_ms:.3f} -> "
            f"{child_ms:.3f} ms ({original_ms / child_ms:.2f}x) on {dev.name} ({runtime}, {threads} "
            f"thread{'s' if threads > 1 else ''})",
        ],
    }
    atomic_write_json(out / "search.json", summary)
    return summary


def _over(best: dict[str, Any], meta: dict[str, Any]) -> str:
    metric = str(meta.get("budget", "")).split("=")[0]
    value = {"macs": best.get("macs"), "params": best.get("params"), "latency": best.get("latency_ms")}.get(metric)
    return f"{metric} {value:,.4g} vs limit {meta.get('limit', float('nan')):,.4g}" if value is not None else "over"
