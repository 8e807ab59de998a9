#!/usr/bin/env python
"""AMC with measured latency in the reward, against uniform, random and evolution, in one run.

On the demo model (Fashion-MNIST MobileNetV2) with this host as the device: every
strategy searches per-group keep ratios under the same budget (default: 50% of the
original's measured latency, LiteRT, 1 thread), with the same evaluation budget (the
same number of candidates; uniform stops by itself once its bisection converges), the
same reward (AMC's error reward under the hard budget) and the same candidate scoring
(validation top-1 without fine-tuning after BN re-estimation). Candidate latency is
measured on the host through a latency cache private to this run, so the hit/miss
counts say how many distinct candidates were timed. Then:

- `amc_macs`: AMC targeted at MACs instead, with the MAC budget set to the MACs of the
  latency-targeted AMC's best candidate, and no latency in its loop: the comparison is
  "the same MACs, searched for latency or for MACs".
- Every strategy's best candidate is fine-tuned the same way (KD from the original,
  same epochs, learning rate, data and seed) and evaluated on the 10k test images.
- Every best candidate and the original are exported (ONNX and TFLite) and timed in one
  interleaved measurement (ONNX Runtime and LiteRT, each thread count, several trials),
  so they all see the same background load; the speed-ups are ratios from that run.

Writes OUT/bench_search.json (every figure, settings, versions, the device fingerprint,
the command) and OUT/bench_search.md, atomically, after each stage ("complete": false
until the end). Searches checkpoint every episode and fine-tuning every epoch under OUT,
so re-running the same command after an interruption continues where it stopped.

    .venv/bin/python tools/bench_search.py                     # the full benchmark (about an hour on 2 cores)
    .venv/bin/python tools/bench_search.py --quick             # a few minutes: 8 candidates, ORT, small data
    .venv/bin/python tools/bench_search.py --suite gradient    # TAS, SNAS, SCAS vs AMC and uniform (bench_search_gradient.py)
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "demo" / "fmnist_mobilenetv2.pt"
STRATEGIES = ("amc", "uniform", "random", "evolution")
QUICK = {"episodes": 8, "runtime": "onnxruntime", "epochs": 1, "train_limit": 2000, "test_limit": 2000, "trials": 3,
         "runs": 50, "val_samples": 500}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model spec or checkpoint (default: the demo model)")
    p.add_argument("--target", default="latency=0.5", help="budget of every search (default: latency=0.5)")
    p.add_argument("--runtime", default=None, choices=("litert", "onnxruntime"),
                   help="runtime candidates are timed with (default litert; quick onnxruntime)")
    p.add_argument("--threads", type=int, default=1, help="threads for candidate timing (default 1)")
    p.add_argument("--search-runs", type=int, default=200, help="timed runs per candidate, median taken (default 200)")
    p.add_argument("--episodes", type=int, default=None, help="candidates per strategy (default 60, quick 8)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated subset of {','.join(STRATEGIES)}")
    p.add_argument("--no-amc-macs", action="store_true", help="skip AMC targeted at MACs")
    p.add_argument("--val-samples", type=int, default=None, help="validation images per candidate (default 1000)")
    p.add_argument("--epochs", type=int, default=None, help="KD fine-tuning epochs for each best candidate (default 1)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate (default 0.01)")
    p.add_argument("--train-limit", type=int, default=None, help="fine-tune on this many training images (default all)")
    p.add_argument("--test-limit", type=int, default=None, help="test on this many images (default all 10k)")
    p.add_argument("--formats", default="onnx,tflite", help="files of the final measurement (default onnx,tflite)")
    p.add_argument("--measure-threads", default="1,2", help="thread counts of the final measurement (default 1,2)")
    p.add_argument("--trials", type=int, default=None, help="interleaved trials of the final measurement (default 7)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per trial (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench_search")
    p.add_argument("--quick", action="store_true", help="a smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    defaults = {"episodes": 60, "runtime": "litert", "epochs": 1, "train_limit": None, "test_limit": None, "trials": 7,
                "runs": 200, "val_samples": 1000}
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in defaults:
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.formats = [f for f in args.formats.split(",") if f]
    if not args.formats or any(f not in ("onnx", "tflite") for f in args.formats):
        p.error(f"--formats {args.formats}: choose from onnx, tflite")
    bad = [s for s in args.strategies if s not in STRATEGIES]
    if bad or not args.strategies:
        p.error(f"--strategies {bad or args.strategies}: choose from {', '.join(STRATEGIES)}")
    if "amc" not in args.strategies:
        args.no_amc_macs = True  # its MAC budget comes from the latency-targeted AMC
    try:
        args.measure_threads = [int(t) for t in args.measure_threads.split(",")]
    except ValueError:
        p.error(f"--measure-threads {args.measure_threads!r}: comma-separated integers")
    for key in ("episodes", "threads", "epochs", "trials", "runs", "val_samples", "search_runs"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)} must be >= 1")
    return args


def versions() -> dict[str, Any]:
    import edgecompress
    from edgecompress.export.runtimes import runtime_versions

    return {"python": platform.python_version(), "edgecompress": edgecompress.__version__, **runtime_versions()}


def write(report: dict[str, Any], out: Path) -> None:
    from edgecompress.fsutil import atomic_write_json, atomic_write_text

    atomic_write_json(out / "bench_search.json", report)
    atomic_write_text(out / "bench_search.md", render_markdown(report))


def subset(ds: Any, n: int | None, seed: int) -> Any:
    from edgecompress.data.calibration import calibration_subset

    return ds if n is None or n >= len(ds) else calibration_subset(ds, n, seed=seed)


def search_summary(result: Any, space: Any, seconds: float) -> dict[str, Any]:
    """The search's own summary (best candidate, latency-cache counts, wall_s: the candidates'
    time) plus this run's wall time, the latency model's probe time, files and notes."""
    return {**result.summary(space.total_macs), "search_seconds": round(seconds, 1),
            "latency_probe_seconds": result.meta.get("latency_probe_s"), "files": result.files,
            "notes": result.meta.get("notes", [])}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--suite" in argv:  # --suite amc (this file) | gradient (TAS, SNAS, SCAS: tools/bench_search_gradient.py)
        i = argv.index("--suite")
        suite = argv[i + 1] if i + 1 < len(argv) else ""
        del argv[i:i + 2]
        if suite == "gradient":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import bench_search_gradient

            return bench_search_gradient.main(argv)
        if suite != "amc":
            raise SystemExit(f"--suite {suite!r}: choose amc (AMC and its baselines) or gradient (TAS, SNAS, SCAS)")
    args = parse_args(argv)
    import torch

    from edgecompress.data.calibration import make_loader
    from edgecompress.data.fashion_mnist import fashion_mnist_splits
    from edgecompress.devices import get_device
    from edgecompress.distill import DistillConfig, finetune
    from edgecompress.export import export_model
    from edgecompress.latency.cache import LatencyCache
    from edgecompress.latency.interleave import measure_interleaved
    from edgecompress.latency.source import MeasuredLatency
    from edgecompress.models.loading import load_model
    from edgecompress.search.reward import Evaluator
    from edgecompress.search.runner import STATE_FILE, run_search
    from edgecompress.search.space import SearchSpace
    from edgecompress.train import TrainConfig, evaluate, seed_everything

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model)
    model, shape = loaded.model.eval(), tuple(loaded.input_shape)
    dev = get_device("host")
    splits = fashion_mnist_splits(shape, val_size=5000, seed=0)  # the demo model's own held-out split
    evaluator = Evaluator(splits.val, splits.train, val_samples=args.val_samples, bn_batches=10, seed=args.seed)
    space = SearchSpace.from_model(model, shape, round_to=dev.round_to())
    cache = LatencyCache(out / "latency_cache.sqlite")  # private: hits and misses are this run's own
    source = MeasuredLatency(dev, args.runtime, args.threads, runs=args.search_runs, warmup=20, cache=cache, work_dir=out)
    report: dict[str, Any] = {
        "schema": "edgecompress.bench_search/1", "complete": False,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"spec": loaded.spec, "input_shape": list(shape), "macs": space.total_macs, "params": space.total_params,
                  "groups": len(space), "round_to": space.round_to},
        "device": {"name": dev.name, "fingerprint": dev.fingerprint()},
        "torch_threads": torch.get_num_threads(),
        "versions": versions(), "searches": {}, "finetuned": {}, "latency": {}, "targets": [],
    }

    def search(name: str, strategy: str, budget: str, src: Any) -> Any:
        folder = out / name
        resume = (folder / STATE_FILE).is_file()
        log(f"search {name}: {strategy}, budget {budget}, {args.episodes} candidates" + (" (resuming)" if resume else ""))
        t0 = time.perf_counter()
        result = run_search(strategy, space, evaluator, latency_source=src, budget=budget, episodes=args.episodes,
                            seed=args.seed, out_dir=folder, resume=resume, progress=True)
        report["searches"][name] = {"strategy": strategy, "budget": budget, "latency_source": getattr(src, "name", None),
                                    **search_summary(result, space, time.perf_counter() - t0)}
        if resume:
            report["searches"][name]["resumed"] = True
        write(report, out)
        return result

    results = {}
    for strategy in args.strategies:
        results[strategy] = search(strategy, strategy, args.target, source)
    report["base_latency_ms"] = next(iter(results.values())).meta.get("base_latency_ms")
    if not args.no_amc_macs and results["amc"].best is None:
        log("amc_macs skipped: AMC found no candidate measured within the budget, so there are no MACs to match")
        report["skipped"] = {"amc_macs": "AMC found no candidate measured within the budget: no MACs to match"}
    elif not args.no_amc_macs:
        amc_macs = results["amc"].best["macs"] / space.total_macs
        budget = f"macs={amc_macs * (1 + 1e-6):.6f}"
        results["amc_macs"] = search("amc_macs", "amc", budget, None)

    # Equal fine-tuning of every best candidate.
    seed_everything(args.seed)
    train_set = subset(splits.train, args.train_limit, args.seed)
    test_loader = make_loader(subset(splits.test, args.test_limit, args.seed), batch_size=512, shuffle=False)
    val_loader = make_loader(subset(splits.val, 2000, args.seed), batch_size=512, shuffle=False)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=128, seed=args.seed)
    distill = DistillConfig(temperature=4.0, alpha=0.9)
    models: dict[str, Any] = {"original": model}
    report["finetuned"]["original"] = {"test_top1": evaluate(model, test_loader, progress=False).top1}
    for name, result in results.items():
        if result.best_policy is None:
            report["finetuned"][name] = {"error": "no candidate met the budget"}
            continue
        pruned = space.apply(result.best_policy)
        log(f"fine-tune {name}: {args.epochs} epoch(s), KD T=4 alpha=0.9")
        t0 = time.perf_counter()
        history = finetune(pruned, model, make_loader(train_set, config.batch_size, shuffle=True, seed=args.seed),
                           val_loader, config, distill=distill, checkpoint_dir=out / "finetune" / name)
        pruned.eval()
        report["finetuned"][name] = {"test_top1": evaluate(pruned, test_loader, progress=False).top1,
                                     "seconds": round(time.perf_counter() - t0, 1),
                                     "val_top1_epochs": [e.val_top1 for e in history.epochs]}
        models[name] = pruned
        write(report, out)

    # One interleaved measurement of every best candidate and the original.
    paths, example = {}, torch.zeros(1, *shape)
    for name, m in models.items():
        for r in export_model(copy.deepcopy(m).eval(), example, out / "artifacts" / name, formats=tuple(args.formats)):
            paths[(name, r.format)] = Path(r.path)
    log(f"measuring {len(paths)} files x threads {args.measure_threads} x {args.trials} trials, {args.runs} runs each")
    measured = measure_interleaved(dev, list(paths.values()), args.measure_threads, runs=args.runs,
                                   warmup=max(10, args.runs // 10), trials=args.trials)
    for (name, fmt), path in paths.items():
        for t in args.measure_threads:
            res = measured[(path, t)]
            report["latency"].setdefault(name, {})[f"{res.runtime}:{t}"] = {
                "p50_ms": res.p50_ms, "p90_ms": res.p90_ms, "trial_p50s_ms": res.trial_p50s_ms,
                "runtime_version": res.runtime_version, "runs": res.runs, "trials": res.trials}
    report["targets"] = judge(report, args)
    report["complete"] = True
    write(report, out)
    print(render_markdown(report))
    return 0


def _p50(report: dict[str, Any], name: str, key: str) -> float | None:
    return report["latency"].get(name, {}).get(key, {}).get("p50_ms")


def judge(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's targets, each met or missed with the figures that decide it."""
    key = f"{args.runtime}:{args.threads}"
    ft = report["finetuned"]
    acc = {n: v.get("test_top1") for n, v in ft.items()}
    lat = {n: _p50(report, n, key) for n in report["latency"]}
    out = []
    if acc.get("amc") is not None and acc.get("uniform") is not None:
        out.append({"target": "AMC (measured-latency reward) more accurate than uniform at the same budget",
                    "met": acc["amc"] > acc["uniform"],
                    "figures": f"test top-1 after equal fine-tuning: AMC {acc['amc']:.2%} vs uniform {acc['uniform']:.2%}; "
                               f"{key} p50 {lat.get('amc', 0):.4f} vs {lat.get('uniform', 0):.4f} ms"})
    for other in ("random", "evolution"):
        if acc.get("amc") is not None and acc.get(other) is not None:
            out.append({"target": f"AMC at least matches {other} search", "met": acc["amc"] >= acc[other],
                        "figures": f"AMC {acc['amc']:.2%} vs {other} {acc[other]:.2%} (test top-1 after equal fine-tuning)"})
    if acc.get("amc") is not None and acc.get("amc_macs") is not None and lat.get("amc") and lat.get("amc_macs"):
        base = lat.get("original")
        out.append({"target": "AMC targeted at latency is faster than AMC targeted at MACs (same MACs)",
                    "met": lat["amc"] < lat["amc_macs"],
                    "figures": f"{key} p50 {lat['amc']:.4f} vs {lat['amc_macs']:.4f} ms "
                               f"(speed-up {base / lat['amc']:.2f}x vs {base / lat['amc_macs']:.2f}x); test top-1 "
                               f"{acc['amc']:.2%} vs {acc['amc_macs']:.2%}" if base else ""})
    for name, s in report["searches"].items():
        seconds = max(s["search_seconds"], s["wall_s"])  # a resumed search: its candidates' own time
        out.append({"target": f"search {name} within 30 minutes on this host", "met": seconds < 1800,
                    "figures": f"{seconds:.0f} s over {s['episodes']} candidates "
                               f"(of which {s.get('latency_probe_seconds') or 0:.0f} s fitting the latency model) "
                               f"({s['latency_cache']['misses']} timed, {s['latency_cache']['hits']} from the cache)"})
    return out


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    fp = report["device"]["fingerprint"]
    key = f"{s['runtime']}:{s['threads']}"
    lines = [
        "# Search benchmark: AMC with measured latency vs uniform, random and evolution",
        "",
        f"- model: `{report['model']['spec']}` ({report['model']['macs']:,} MACs, {report['model']['groups']} searched "
        f"groups, round_to {report['model']['round_to']})",
        f"- device: **{report['device']['name']}** (host CPU, not a phone) — {fp.get('cpu_model', '?')}, "
        f"{fp.get('logical_cores', '?')} logical cores, fingerprint `{fp.get('id', '?')}`",
        f"- budget: `{s['target']}` of the original's {s['runtime']} {s['threads']}-thread latency"
        + (f" ({report['base_latency_ms']:.4f} ms when the searches started)" if report.get("base_latency_ms") else ""),
        f"- per strategy: {s['episodes']} candidates, each scored on {s['val_samples']} validation images without "
        "fine-tuning (BN re-estimated on 10 training batches), AMC's error reward under the hard budget",
        f"- then every best candidate: KD fine-tuning, {s['epochs']} epoch(s), lr {s['lr']}, "
        f"{'all' if s['train_limit'] is None else s['train_limit']} training images; test top-1 on "
        f"{'all 10k' if s['test_limit'] is None else s['test_limit']} test images",
        f"- command: `{report['command']}`; created {report['created_utc']}; "
        + ("complete" if report["complete"] else "**incomplete** (still running or interrupted)"),
        "",
        "## Results",
        "",
        f"| strategy | budget | candidates | search s | timed / cached | val top-1, no FT | test top-1 after FT | MACs | "
        f"{key} p50 ms (search) | LiteRT 1T p50 ms | speed-up | ORT 1T p50 ms | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_lt, base_ort = _p50(report, "original", "litert:1"), _p50(report, "original", "onnxruntime:1")
    orig = report["finetuned"].get("original", {})
    lt_s = "–" if base_lt is None else f"{base_lt:.4f}"
    ort_s = "–" if base_ort is None else f"{base_ort:.4f}"
    lines.append(f"| original | – | – | – | – | – | {orig.get('test_top1', 0):.2%} | 1.000 | – | {lt_s} | 1.00x | "
                 f"{ort_s} | 1.00x |")
    for name, r in report["searches"].items():
        b, ft = r["best"], report["finetuned"].get(name, {})
        lt, ort = _p50(report, name, "litert:1"), _p50(report, name, "onnxruntime:1")
        search_lat = "–" if b.get("latency_ms") is None else f"{b['latency_ms']:.4f}"
        lines.append(
            f"| {name} | `{r['budget']}` | {r['episodes']} | {max(r['search_seconds'], r['wall_s']):.0f} | "
            f"{r['latency_cache']['misses']} / {r['latency_cache']['hits']} | "
            f"{'–' if b.get('accuracy') is None else format(b['accuracy'], '.2%')} | "
            f"{'–' if ft.get('test_top1') is None else format(ft['test_top1'], '.2%')} | "
            f"{'–' if r['macs_ratio'] is None else format(r['macs_ratio'], '.3f')} | {search_lat} | "
            f"{'–' if lt is None else format(lt, '.4f')} | {'–' if not (lt and base_lt) else format(base_lt / lt, '.2f') + 'x'} | "
            f"{'–' if ort is None else format(ort, '.4f')} | {'–' if not (ort and base_ort) else format(base_ort / ort, '.2f') + 'x'} |")
    lines += ["", "Latency columns on the right: one interleaved measurement of all files after the searches "
              f"({s['trials']} trials x {s['runs']} runs, median), so they compare directly; the search column is what "
              "the search measured for that candidate at the time. 'timed / cached': candidates exported and timed vs "
              "served by the latency cache (identical exported bytes).", "", "## Targets", ""]
    for t in report.get("targets", []):
        lines.append(f"- **{'met' if t['met'] else 'missed'}**: {t['target']}. {t['figures']}")
    notes = sorted({n for r in report["searches"].values() for n in r.get("notes", [])})
    notes += [f"{name} skipped: {why}" for name, why in report.get("skipped", {}).items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    plots = [f"`{name}/search.png`" for name in report["searches"]]
    lines += ["", f"Plots (accuracy vs latency, Pareto front): {', '.join(plots)}", "", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in report["versions"].items()]
    lines.append(f"- torch threads during the search: {report['torch_threads']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
