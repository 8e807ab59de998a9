#!/usr/bin/env python
"""The gradient searches (TAS, SNAS, SCAS) against AMC and uniform pruning, in one run.

`tools/bench_search.py --suite gradient` runs this (so does this file directly). On a
CIFAR-style ResNet-20 trained on Fashion-MNIST (`models/bench/fmnist_resnet20.pt`,
trained by `tools/train_demo_model.py --arch resnet20`), this host as the device:

- `tas`: TAS at the MAC budget (default macs=0.5), then KD fine-tuning from ResNet-20;
  `uniform` and `amc` at the same budget (the same channel rounding), fine-tuned the
  same way (same epochs, lr, images, seed); test top-1 on the 10k test images.
- `snas_latency`: SNAS over the bundled mobile space with the latency penalty, budget
  a fraction of ResNet-20's measured latency (default latency=0.5); `snas_macs`: the
  same search with a MACs penalty, its MAC budget set to the latency child's MACs
  (the same cost by the count, so the comparison is what each penalty buys in measured
  latency). Each child: accuracy with the supernet's weights (no retraining), then
  retrained from scratch for `--retrain-epochs` and tested.
- `scas`: SCAS at a final sparsity (default 0.7; or a nonzero-params budget); the sparse child
  is fine-tuned keeping its zeros, its dense twin (same cells, dense weights) the same
  way; params and MACs reduction of the sparse vs the dense network.
- One interleaved measurement (ONNX Runtime and LiteRT, 1 thread, several trials) of
  ResNet-20 and every child, so all see the same background load.

Writes OUT/bench_search_gradient.json and .md atomically after every stage
("complete": false until the end); searches checkpoint every epoch and fine-tuning every
epoch under OUT, so re-running the same command continues where it stopped.

    .venv/bin/python tools/bench_search.py --suite gradient            # the benchmark (~40 min on 2 cores)
    .venv/bin/python tools/bench_search.py --suite gradient --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import _p50, log, versions  # noqa: E402  (what the search benchmarks share)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "bench" / "fmnist_resnet20.pt"
PARTS = ("tas", "snas", "scas")
QUICK = {"search_images": 512, "snas_images": 512, "scas_images": 512, "tas_epochs": 1, "snas_epochs": 1, "scas_epochs": 1, "amc_episodes": 3,
         "ft_epochs": 1, "retrain_epochs": 1, "train_limit": 512, "test_limit": 500, "val_samples": 200, "trials": 2,
         "runs": 30}
DEFAULTS = {"search_images": 10000, "snas_images": 4000, "scas_images": 6000, "tas_epochs": 10, "snas_epochs": 5, "scas_epochs": 6, "amc_episodes": 40,
            "ft_epochs": 2, "retrain_epochs": 3, "train_limit": 20000, "test_limit": None, "val_samples": 1000,
            "trials": 5, "runs": 200}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="the ResNet-20 checkpoint (TAS, AMC, uniform; SNAS/SCAS budgets)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--tas-target", default="macs=0.5")
    p.add_argument("--snas-target", default="latency=0.5", help="of ResNet-20's measured latency")
    p.add_argument("--scas-target", default=None, help="a nonzero-params budget (e.g. params=0.25 of ResNet-20's); "
                   "default none: --scas-sparsity decides")
    p.add_argument("--scas-sparsity", type=float, default=0.7, help="SCAS's final sparsity without a target (default 0.7)")
    p.add_argument("--snas-space", default="mobile_small", help="SNAS's search space (default mobile_small: 6 choices "
                   "per block; `mobile`'s 14 cost 3x the time per epoch)")
    p.add_argument("--runtime", default="onnxruntime", choices=("litert", "onnxruntime"),
                   help="what SNAS's latency table and budget are measured with (default onnxruntime)")
    for key in DEFAULTS:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {DEFAULTS[key]}, quick {QUICK[key]}")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate (default 0.01)")
    p.add_argument("--retrain-lr", type=float, default=0.05, help="from-scratch retraining peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench_search_gradient")
    p.add_argument("--no-measure", action="store_true", help="skip the final interleaved latency measurement")
    p.add_argument("--quick", action="store_true", help="a smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    for key in DEFAULTS:
        if getattr(args, key) is None:
            setattr(args, key, (QUICK if args.quick else DEFAULTS)[key])
    args.parts = [s for s in args.parts.split(",") if s]
    bad = [s for s in args.parts if s not in PARTS]
    if bad or not args.parts:
        p.error(f"--parts {bad or args.parts}: choose from {', '.join(PARTS)}")
    for key, value in DEFAULTS.items():
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)} must be >= 1")
    return args


def write(report: dict[str, Any], out: Path) -> None:
    from edgecompress.fsutil import atomic_write_json, atomic_write_text

    atomic_write_json(out / "bench_search_gradient.json", report)
    atomic_write_text(out / "bench_search_gradient.md", render_markdown(report))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from edgecompress.data.calibration import calibration_subset, make_loader
    from edgecompress.data.fashion_mnist import fashion_mnist_splits
    from edgecompress.devices import get_device
    from edgecompress.distill import DistillConfig, finetune
    from edgecompress.graph.cost import analyze
    from edgecompress.latency.cache import LatencyCache
    from edgecompress.latency.source import MeasuredLatency
    from edgecompress.models.loading import load_model
    from edgecompress.search.gradient import SearchData, build_gradient, run_gradient_search
    from edgecompress.search.reward import Evaluator
    from edgecompress.search.runner import STATE_FILE, run_search
    from edgecompress.search.space import SearchSpace
    from edgecompress.train import TrainConfig, evaluate, seed_everything, train

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.model).is_file():
        raise SystemExit(f"{args.model} not found: train it with `.venv/bin/python tools/train_demo_model.py --arch "
                         f"resnet20 --width-mult 1.0 --epochs 3 --out {args.model}`")
    loaded = load_model(args.model)
    model, shape = loaded.model.eval(), tuple(loaded.input_shape)
    dev = get_device("host")
    splits = fashion_mnist_splits(shape, val_size=5000, seed=0)
    evaluator = Evaluator(splits.val, splits.train, val_samples=args.val_samples, bn_batches=10, seed=args.seed)
    cache = LatencyCache(out / "latency_cache.sqlite")  # private: this run's own timings
    source = MeasuredLatency(dev, args.runtime, 1, runs=100, warmup=20, cache=cache, work_dir=out)

    def pick(ds, n):
        return ds if n is None or n >= len(ds) else calibration_subset(ds, n, seed=args.seed)

    train_set = pick(splits.train, args.train_limit)
    test_loader = make_loader(pick(splits.test, args.test_limit), batch_size=512, shuffle=False)
    val_loader = make_loader(pick(splits.val, 2000), batch_size=512, shuffle=False)
    def search_data(images: int) -> SearchData:
        return SearchData.halves(splits.train, batch_size=128, seed=args.seed, samples=images)
    base = analyze(model, shape)
    report: dict[str, Any] = {
        "schema": "edgecompress.bench_search_gradient/1", "complete": False,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"spec": loaded.spec, "input_shape": list(shape), "macs": base.total_macs, "params": base.total_params},
        "device": {"name": dev.name, "fingerprint": dev.fingerprint()},
        "torch_threads": torch.get_num_threads(), "versions": versions(), "results": {}, "latency": {}, "targets": [],
    }
    models: dict[str, Any] = {"resnet20": model}
    distill = DistillConfig(temperature=4.0, alpha=0.9)
    ft_config = TrainConfig(epochs=args.ft_epochs, lr=args.lr, batch_size=128, seed=args.seed)
    report["results"]["resnet20"] = {"kind": "original", "test_top1": evaluate(model, test_loader, progress=False).top1,
                                     "macs": base.total_macs, "params": base.total_params}
    write(report, out)

    def test_top1(m) -> float:
        return evaluate(m.eval(), test_loader, progress=False).top1

    def tune(name: str, student, teacher, hooks=()) -> dict[str, Any]:
        log(f"fine-tune {name}: {args.ft_epochs} epoch(s), KD T=4 alpha=0.9 from ResNet-20")
        t0 = time.perf_counter()
        seed_everything(args.seed)
        history = finetune(student, teacher, make_loader(train_set, 128, shuffle=True, seed=args.seed), val_loader,
                           ft_config, distill=distill, hooks=hooks, checkpoint_dir=out / "finetune" / name,
                           progress=True)
        return {"test_top1": test_top1(student), "finetune_seconds": round(time.perf_counter() - t0, 1),
                "val_top1_epochs": [e.val_top1 for e in history.epochs]}

    def gradient(name: str, strategy: str, budget: str, epochs: int, images: int, options: dict, src=None) -> Any:
        folder = out / name
        resume = (folder / STATE_FILE).is_file()
        log(f"search {name}: {strategy}, {budget}, {epochs} epochs over {images} images"
            + (" (resuming)" if resume else ""))
        strat = build_gradient(strategy, options, reference=model, input_shape=shape, latency_source=src or source,
                               seed=args.seed)
        t0 = time.perf_counter()
        result = run_gradient_search(strat, search_data(images), evaluator, reference=model, input_shape=shape, budget=budget,
                                     latency_source=src or source, epochs=epochs, seed=args.seed, out_dir=folder,
                                     resume=resume, progress=True)
        best = result.best
        report["results"][name] = {
            "kind": strategy, "budget": budget, "epochs": epochs, "images": images, "options": options,
            "search_seconds": round(time.perf_counter() - t0, 1),
            "search_wall_s": round(sum(r["wall_s"] for r in result.log), 1),
            "inherited_val_top1": best["accuracy"], "macs": best["macs"], "params": best["params"],
            "search_latency_ms": best["latency_ms"], "feasible": best["feasible"], "limit": result.meta.get("limit"),
            "arch": best["arch"], "files": result.files,
        }
        write(report, out)
        return result

    # -- TAS vs uniform vs AMC on ResNet-20 ------------------------------------------------
    if "tas" in args.parts:
        tas = gradient("tas", "tas", args.tas_target, args.tas_epochs, args.search_images, {})
        child = tas.model
        report["results"]["tas"].update(tune("tas", child, model))
        models["tas"] = child
        space = SearchSpace.from_model(model, shape, round_to=4, min_keep=0.3, min_channels=4)
        for name, strategy, episodes in (("uniform", "uniform", args.amc_episodes), ("amc", "amc", args.amc_episodes)):
            folder = out / name
            log(f"search {name}: {strategy}, {args.tas_target}, {episodes} candidates")
            t0 = time.perf_counter()
            result = run_search(strategy, space, evaluator, latency_source=None, budget=args.tas_target,
                                episodes=episodes, seed=args.seed, out_dir=folder,
                                resume=(folder / STATE_FILE).is_file(), progress=True)
            if result.best_policy is None:
                report["results"][name] = {"kind": strategy, "error": "no candidate met the budget"}
                continue
            pruned = space.apply(result.best_policy)
            report["results"][name] = {"kind": strategy, "budget": args.tas_target, "episodes": len(result.log),
                                       "search_seconds": round(time.perf_counter() - t0, 1),
                                       "inherited_val_top1": result.best["accuracy"], "macs": result.best["macs"],
                                       "params": result.best["params"], "files": result.files}
            report["results"][name].update(tune(name, pruned, model))
            models[name] = pruned
            write(report, out)

    # -- SNAS: latency penalty vs MACs penalty ---------------------------------------------
    if "snas" in args.parts:
        lat = gradient("snas_latency", "snas", args.snas_target, args.snas_epochs, args.snas_images,
                       {"penalty": "latency", "space": args.snas_space})
        macs_budget = f"macs={lat.best['macs'] / base.total_macs * (1 + 1e-6):.6f}"
        mac = gradient("snas_macs", "snas", macs_budget, args.snas_epochs, args.snas_images,
                       {"penalty": "macs", "space": args.snas_space})
        for name, result in (("snas_latency", lat), ("snas_macs", mac)):
            models[name] = result.model
            scratch = copy.deepcopy(result.model)
            from edgecompress.models.blocks import init_weights

            init_weights(scratch)
            log(f"retrain {name} from scratch: {args.retrain_epochs} epoch(s)")
            seed_everything(args.seed)
            t0 = time.perf_counter()
            train(scratch, make_loader(train_set, 128, shuffle=True, seed=args.seed), val_loader,
                  TrainConfig(epochs=args.retrain_epochs, lr=args.retrain_lr, batch_size=128, seed=args.seed,
                              label_smoothing=0.1), checkpoint_dir=out / "retrain" / name, progress=True)
            report["results"][name].update(
                inherited_test_top1=test_top1(result.model), retrained_test_top1=test_top1(scratch),
                retrain_seconds=round(time.perf_counter() - t0, 1))
            models[f"{name}_retrained"] = scratch
            write(report, out)

    # -- SCAS: sparse vs dense searched network --------------------------------------------
    if "scas" in args.parts:
        from edgecompress.search import scas as scas_module

        result = gradient("scas", "scas", args.scas_target, args.scas_epochs, args.scas_images,
                          {} if args.scas_target else {"final_sparsity": args.scas_sparsity})
        sparse = result.model
        dense = scas_module.dense_twin(result.derived).model
        report["results"]["scas"].update(tune("scas", sparse, model, hooks=scas_module.sparse_finetune_hooks(sparse)))
        report["results"]["scas_dense"] = {"kind": "scas dense twin", **tune("scas_dense", dense, model),
                                           "params": analyze(dense, shape).total_params,
                                           "macs": analyze(dense, shape).total_macs}
        arch = result.best["arch"]
        report["results"]["scas"].update(nonzero_params=arch.get("nonzero_params"), sparse_macs=arch.get("sparse_macs"),
                                         dense_params=arch.get("dense_params"), dense_macs=arch.get("dense_macs"))
        models["scas_dense"] = dense
        write(report, out)

    # -- one interleaved measurement -------------------------------------------------------
    if not args.no_measure:
        from edgecompress.export import export_model
        from edgecompress.latency.interleave import measure_interleaved

        paths, example = {}, torch.zeros(1, *shape)
        for name, m in models.items():
            if name.endswith("_retrained") or name == "scas":  # same architecture as another file
                continue
            for r in export_model(copy.deepcopy(m).eval(), example, out / "artifacts" / name, formats=("onnx", "tflite")):
                paths[(name, r.format)] = Path(r.path)
        log(f"measuring {len(paths)} files x 1 thread x {args.trials} trials, {args.runs} runs each")
        measured = measure_interleaved(dev, list(paths.values()), [1], runs=args.runs, warmup=max(10, args.runs // 10),
                                       trials=args.trials)
        for (name, fmt), path in paths.items():
            res = measured[(path, 1)]
            report["latency"].setdefault(name, {})[f"{res.runtime}:1"] = {
                "p50_ms": res.p50_ms, "p90_ms": res.p90_ms, "trial_p50s_ms": res.trial_p50s_ms,
                "runtime_version": res.runtime_version}
    report["targets"] = judge(report, args)
    report["complete"] = True
    write(report, out)
    print(render_markdown(report))
    return 0


def judge(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's targets, each met or missed with the figures that decide it."""
    res = report["results"]
    out = []

    def acc(name: str) -> float | None:
        return res.get(name, {}).get("test_top1")

    if acc("tas") is not None:
        for other in ("uniform", "amc"):
            if acc(other) is not None:
                out.append({"target": f"TAS at least as accurate as {other} at {args.tas_target} after equal KD "
                                      "fine-tuning", "met": acc("tas") >= acc(other),
                            "figures": f"test top-1 TAS {acc('tas'):.2%} (MACs x{res['tas']['macs'] / report['model']['macs']:.3f}) "
                                       f"vs {other} {acc(other):.2%} (MACs x{res[other]['macs'] / report['model']['macs']:.3f})"})
        secs = max(res["tas"]["search_seconds"], res["tas"].get("search_wall_s") or 0)  # a resumed search: all its epochs
        out.append({"target": "TAS search under 30 CPU-minutes on this host (2 cores)", "met": secs < 1800,
                    "figures": f"{secs:.0f} s for {res['tas']['epochs']} epochs over {res['tas']['images']} images "
                               "(the paper: 3.8 GPU-hours for ResNet-32 on CIFAR-10)"})
    lat = res.get("snas_latency")
    if lat and lat.get("limit"):
        measured = _p50(report, "snas_latency", f"{args.runtime}:1")
        ref = _p50(report, "resnet20", f"{args.runtime}:1")
        if measured and ref:
            # a fraction is judged against ResNet-20 timed in the same interleaved run; ms as given
            fraction = None if args.snas_target.endswith("ms") else float(args.snas_target.split("=")[1])
            goal = fraction * ref if fraction is not None else lat["limit"]
            out.append({"target": "SNAS (latency penalty): the child's measured latency within ±10% of the budget",
                        "met": abs(measured / goal - 1) <= 0.10,
                        "figures": f"{args.runtime} 1T p50 {measured:.4f} ms vs budget {goal:.4f} ms "
                                   f"({measured / goal - 1:+.1%}; budget {args.snas_target} of ResNet-20's {ref:.4f} ms "
                                   "in the same interleaved run)"})
        if lat.get("inherited_test_top1") is not None and lat.get("retrained_test_top1") is not None:
            gap = lat["retrained_test_top1"] - lat["inherited_test_top1"]
            out.append({"target": "SNAS child without retraining within 1 point of the retrained child",
                        "met": gap <= 0.01,
                        "figures": f"inherited weights {lat['inherited_test_top1']:.2%} vs retrained from scratch "
                                   f"{lat['retrained_test_top1']:.2%} ({args.retrain_epochs} epochs)"})
        mac = res.get("snas_macs")
        m_lat = _p50(report, "snas_macs", f"{args.runtime}:1")
        if mac and measured and m_lat:
            out.append({"target": "SNAS latency penalty vs MACs penalty at the same MACs: faster when measured",
                        "met": measured < m_lat,
                        "figures": f"{args.runtime} 1T p50 {measured:.4f} vs {m_lat:.4f} ms; MACs {lat['macs']:,} vs "
                                   f"{mac['macs']:,}; inherited test top-1 {lat.get('inherited_test_top1', 0):.2%} vs "
                                   f"{mac.get('inherited_test_top1', 0):.2%}"})
    sc, dense = res.get("scas"), res.get("scas_dense")
    if sc and dense and sc.get("nonzero_params") and dense.get("test_top1") is not None:
        ratio = dense["params"] / sc["nonzero_params"]
        drop = dense["test_top1"] - sc["test_top1"]
        out.append({"target": "SCAS: at least 2x fewer params than the dense searched network, drop <= 1 point",
                    "met": ratio >= 2 and drop <= 0.01,
                    "figures": f"params {dense['params']:,} dense vs {sc['nonzero_params']:,} nonzero ({ratio:.2f}x); "
                               f"MACs {dense['macs']:,} vs {sc.get('sparse_macs') or 0:,.0f} sparse; test top-1 "
                               f"{dense['test_top1']:.2%} dense vs {sc['test_top1']:.2%} sparse ({-drop:+.2%})"})
    return out


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    fp = report["device"]["fingerprint"]
    m = report["model"]
    lines = [
        "# Gradient searches: TAS, SNAS, SCAS against AMC and uniform pruning",
        "",
        f"- reference: `{m['spec']}` ({m['macs']:,} MACs, {m['params']:,} params, input {m['input_shape']})",
        f"- device: **{report['device']['name']}** (host CPU, not a phone) — {fp.get('cpu_model', '?')}, "
        f"{fp.get('logical_cores', '?')} logical cores, fingerprint `{fp.get('id', '?')}`; torch threads "
        f"{report['torch_threads']}",
        f"- searches learn from {s['search_images']} (TAS), {s['snas_images']} (SNAS), {s['scas_images']} (SCAS) training "
        "images (half weights, half architecture); children are "
        f"scored on {s['val_samples']} validation images; fine-tuning: KD T=4 alpha=0.9, {s['ft_epochs']} epoch(s), lr "
        f"{s['lr']}, {s['train_limit'] or 'all'} training images; SNAS retraining from scratch: {s['retrain_epochs']} "
        f"epoch(s); test top-1 on {s['test_limit'] or 'all 10k'} test images",
        f"- command: `{report['command']}`; created {report['created_utc']}; "
        + ("complete" if report["complete"] else "**incomplete** (still running or interrupted)"),
        "",
        "## Results",
        "",
        "| network | how | budget | search s | val top-1 (search weights) | test top-1 | MACs | params | "
        "ORT 1T p50 ms | speed-up | LiteRT 1T p50 ms | speed-up |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_ort, base_lt = _p50(report, "resnet20", "onnxruntime:1"), _p50(report, "resnet20", "litert:1")

    def fmt(v: Any, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    for name, r in report["results"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['kind']} | – | – | – | {r['error']} | – | – | – | – | – | – |")
            continue
        top1 = r.get("test_top1", r.get("inherited_test_top1") if "retrained_test_top1" in r else None)
        if "retrained_test_top1" in r:
            top1_s = f"{r['inherited_test_top1']:.2%} inherited / {r['retrained_test_top1']:.2%} retrained"
        else:
            top1_s = fmt(top1, ".2%")
        params = r.get("nonzero_params") or r.get("params")
        ort, lt = _p50(report, name, "onnxruntime:1"), _p50(report, name, "litert:1")
        lines.append(
            f"| {name} | {r['kind']} | {r.get('budget', '–')} | {fmt(r.get('search_seconds'), '.0f')} | "
            f"{fmt(r.get('inherited_val_top1'), '.2%')} | {top1_s} | {r['macs'] / m['macs']:.3f}x | "
            f"{fmt(params, ',')}{' nonzero' if r.get('nonzero_params') else ''} | {fmt(ort, '.4f')} | "
            f"{'–' if not (ort and base_ort) else format(base_ort / ort, '.2f') + 'x'} | {fmt(lt, '.4f')} | "
            f"{'–' if not (lt and base_lt) else format(base_lt / lt, '.2f') + 'x'} |")
    lines += ["", f"Latency: one interleaved measurement of every file ({s['trials']} trials x {s['runs']} runs, median "
              "of the trials' p50s); a sparse network runs as fast as its dense twin on these dense runtimes, so only "
              "the twin is timed.", "", "## Targets", ""]
    for t in report.get("targets", []):
        lines.append(f"- **{'met' if t['met'] else 'missed'}**: {t['target']}. {t['figures']}")
    archs = [(n, r["arch"]) for n, r in report["results"].items() if r.get("arch")]
    if archs:
        lines += ["", "## Architectures found", ""]
        for name, arch in archs:
            brief = {k: arch[k] for k in ("widths", "depths", "choices", "genotype", "sparsity") if k in arch}
            lines.append(f"- {name}: `{json.dumps(brief)}`")
    plots = [f"`{n}/search.png`" for n, r in report["results"].items() if r.get("files", {}).get("plot")]
    lines += ["", f"Plots (each epoch's child, accuracy vs latency): {', '.join(plots) or '–'}", "", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in report["versions"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
