"""`edgecompress search`: search per-group keep ratios for one model on one device, as one call."""

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
) -> dict[str, Any]:
    """Run `strategy` on `loaded.model` against `target` and leave the search in `out`.

    `out` holds the checkpoint (so `resume=True` continues an interrupted search), the
    search log, the best policy, the accuracy-vs-latency plot and search.json (the
    summary). Candidate latency comes from `latency`: "measured" on `device` (through the
    latency cache), "predictor" (a fitted predictor file; the best candidate is then
    re-measured on the device) or "macs" (no latency; for MACs/params targets).
    Accuracy is Fashion-MNIST validation top-1 without fine-tuning, after BN re-estimation.
    """
    from edgecompress.devices import get_device
    from edgecompress.devices.profiles import preferred_round_to
    from edgecompress.fsutil import atomic_write_json
    from edgecompress.search.reward import fashion_mnist_evaluator
    from edgecompress.search.runner import STATE_FILE, list_strategies, run_search
    from edgecompress.search.space import SearchSpace

    if strategy not in list_strategies():
        raise UserError(f"unknown search strategy {strategy!r}; valid: {', '.join(list_strategies())}")
    try:
        check_latency_kind(latency, predictor, target)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(out)
    has_state = (out / STATE_FILE).is_file()
    if resume and not has_state:
        raise UserError(f"nothing to resume in {str(out)!r} (no {STATE_FILE}); run without --resume")
    if out.exists() and not resume:
        if not force:
            raise UserError(f"output {str(out)!r} exists; pass --resume to continue that search or --force to replace it")
        shutil.rmtree(out)
    dev = get_device(device)
    space = SearchSpace.from_model(loaded.model.eval(), input_shape, round_to=preferred_round_to(dev) or 8)
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
