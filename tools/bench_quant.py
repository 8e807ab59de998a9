#!/usr/bin/env python
"""fp32 vs int8 on ONNX Runtime and LiteRT, accuracy from the files and latency on this host, in one run.

Every file is made by the library's own calls (`export_model`, then
`quantize.api.quantize_files`) on the host device (`get_device("host")`):

- `demo`: the demo model (Fashion-MNIST MobileNetV2). fp32, int8-static (ONNX scheme
  "auto": the candidates are timed on the host and the fastest within the accuracy
  budget is kept; TFLite full int8), int8-dynamic (both formats) and fp16 (TFLite).
  Calibration: Fashion-MNIST training images; the scheme choice and mixed precision score
  on validation images; the reported top-1 is each exported file run in its runtime over
  the 10k test split. Target: int8 within 0.5 point of fp32 on each format.
- `demo_pruned`: the demo model pruned to ~50% MACs (`prune_`, L2 importance, widths rounded
  to the device's preferred multiple), KD fine-tuned (`--epochs`), then int8-static; its
  size and latency are compared with the ORIGINAL fp32 files.
- `mobilenet_v2`, `resnet18`: torchvision at 224 px, random-init (no weights offline), so
  latency is meaningful and accuracy is not. Calibrated on random-normal images, on which
  BatchNorm statistics are re-estimated first (untrained running statistics give activation
  ranges LiteRT's int8 kernels refuse). The scheme choice scores agreement with the fp32
  file (no labels) under `--tv-budget`. Targets: ONNX Runtime int8 >= 1.45x (MobileNetV2) and
  >= 1.9x (ResNet-18) fp32 at 1 thread; LiteRT reported as measured.

All final latency figures come from ONE interleaved measurement: trial by trial, every
file at every thread count before the next trial of any (the torchvision files with
fewer runs per trial than the demo files); a figure is the median of the trials' p50s.

Writes OUT/bench_quant.json (every figure, settings, versions, the device fingerprint,
the command) and OUT/bench_quant.md, atomically, after each stage ("complete": false
until the end). Re-running the same command reuses every finished stage whose files are
still there (fine-tuning resumes from its last epoch) and then measures again.

    .venv/bin/python tools/bench_quant.py            # the full benchmark (about 20 minutes on 2 idle cores)
    .venv/bin/python tools/bench_quant.py --quick    # a smoke run: demo models, ONNX, small data
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "demo" / "fmnist_mobilenetv2.pt"
MODELS = ("demo", "demo_pruned", "mobilenet_v2", "resnet18")
TORCHVISION = {"mobilenet_v2": "MobileNetV2", "resnet18": "ResNet-18"}
#: the issue's ONNX Runtime speed-up targets at 1 thread (int8 with the automatically chosen scheme vs fp32)
ORT_TARGETS = {"mobilenet_v2": 1.45, "resnet18": 1.9}
FORMATS = ("onnx", "tflite")
RUNTIME_OF = {"onnx": "onnxruntime", "tflite": "litert"}
RUNTIME_NAME = {"onnx": "ONNX Runtime", "tflite": "LiteRT"}
TV_SHAPE = (3, 224, 224)
DEFAULTS = {"models": ",".join(MODELS), "formats": "onnx,tflite", "epochs": 1, "train_limit": None, "test_limit": None,
            "val_samples": 2000, "calib_batches": 10, "tv_calib_images": 256, "choice_runs": 50, "choice_trials": 3,
            "runs": 100, "tv_runs": 50, "trials": 5}
QUICK = {"models": "demo,demo_pruned", "formats": "onnx", "train_limit": 1000, "test_limit": 1000, "val_samples": 500,
         "calib_batches": 4, "tv_calib_images": 64, "choice_runs": 10, "choice_trials": 1, "runs": 20, "tv_runs": 10,
         "trials": 2}
#: settings that change what a stage builds: a re-run reuses stages only when these are unchanged
MEASURE_ONLY = ("models", "runs", "tv_runs", "trials", "warmup", "quick", "out")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ints(p: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        p.error(f"{flag} {text!r}: comma-separated integers, e.g. 1,2")
    if not values or min(values) < 1:
        p.error(f"{flag} {text!r}: thread counts must be >= 1")
    return list(dict.fromkeys(values))


def _names(p: argparse.ArgumentParser, flag: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        p.error(f"{flag} {bad[0] if bad else repr(text)}: choose from {', '.join(allowed)}")
    return [n for n in allowed if n in names]  # a fixed order: the demo model before its pruned copy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)} (default all; quick "
                   "demo,demo_pruned); demo_pruned needs demo (its ratios are against the original fp32 files)")
    p.add_argument("--formats", default=None, help="comma-separated subset of onnx,tflite (default both; quick onnx)")
    p.add_argument("--threads", default="1,2", help="thread counts of the scheme choice and the measurement (default 1,2)")
    p.add_argument("--budget", type=float, default=0.005, help="allowed top-1 drop of the demo models (default 0.005)")
    p.add_argument("--tv-budget", type=float, default=0.9,
                   help="allowed drop in agreement with fp32 for the random-init torchvision models' scheme choice "
                        "(default 0.9: their near-tied logits flip under any rounding, 1 to 45 points measured, so this "
                        "only rejects a broken file, one near the 0.1%% chance level, and the choice is by timing)")
    p.add_argument("--prune-target", default="macs=0.5", help="pruning budget of demo_pruned (default macs=0.5)")
    p.add_argument("--epochs", type=int, default=None, help="KD fine-tuning epochs of demo_pruned, 0 for none (default 1)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate (default 0.01)")
    p.add_argument("--train-limit", type=int, default=None, help="fine-tune on this many training images (default all)")
    p.add_argument("--test-limit", type=int, default=None, help="test on this many images (default all 10k)")
    p.add_argument("--val-samples", type=int, default=None, help="validation images of the scheme choice (default 2000)")
    p.add_argument("--calib-batches", type=int, default=None, help="demo calibration: batches of 32 training images (default 10)")
    p.add_argument("--tv-calib-images", type=int, default=None, help="random-normal calibration images, torchvision (default 256)")
    p.add_argument("--choice-runs", type=int, default=None, help="timed runs per trial of the scheme choice (default 50)")
    p.add_argument("--choice-trials", type=int, default=None, help="interleaved trials of the scheme choice (default 3)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per trial, demo files (default 100)")
    p.add_argument("--tv-runs", type=int, default=None, help="timed runs per trial, torchvision files (default 50)")
    p.add_argument("--trials", type=int, default=None, help="interleaved trials of the final measurement (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs per trial (default max(10, runs / 10))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench_quant")
    p.add_argument("--quick", action="store_true", help="a smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK.get(key, value) if args.quick else value)
    args.models = _names(p, "--models", args.models, MODELS)
    args.formats = _names(p, "--formats", args.formats, FORMATS)
    args.threads = _ints(p, "--threads", args.threads)
    if "demo_pruned" in args.models and "demo" not in args.models:
        p.error("--models demo_pruned needs demo too: the pruned model is compared with the original's fp32 files")
    for key in ("calib_batches", "tv_calib_images", "choice_runs", "choice_trials", "runs", "tv_runs", "trials",
                "val_samples", "train_limit", "test_limit"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)} must be >= 1")
    for key in ("epochs", "warmup"):
        if getattr(args, key) is not None and getattr(args, key) < 0:
            p.error(f"--{key} {getattr(args, key)} must be >= 0")
    for key in ("budget", "tv_budget"):
        if not 0 <= getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)} must be a top-1 drop as a fraction in [0, 1), e.g. 0.005")
    if args.lr <= 0:
        p.error(f"--lr {args.lr} must be > 0")
    metric, _, value = args.prune_target.partition("=")
    try:
        if metric.strip() not in ("macs", "params") or not 0 < float(value) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--prune-target {args.prune_target!r}: give a fraction of the original's MACs or params, e.g. macs=0.5")
    return args


def versions() -> dict[str, Any]:
    import edgecompress
    from edgecompress.export.runtimes import runtime_versions
    from edgecompress.versions import installed_version

    return {"python": platform.python_version(), "edgecompress": edgecompress.__version__, **runtime_versions(),
            "ai_edge_quantizer": installed_version("ai-edge-quantizer"), "torchvision": installed_version("torchvision")}


def write(report: dict[str, Any], out: Path) -> None:
    from edgecompress.fsutil import atomic_write_json, atomic_write_text

    atomic_write_json(out / "bench_quant.json", report)
    atomic_write_text(out / "bench_quant.md", render_markdown(report))


def subset(ds: Any, n: int | None, seed: int) -> Any:
    from edgecompress.data.calibration import calibration_subset

    return ds if n is None or n >= len(ds) else calibration_subset(ds, n, seed=seed)


# --------------------------------------------------------------------------- stages


def _by_thread(d: dict | None) -> dict[str, float]:
    return {str(k): v for k, v in (d or {}).items()}


def file_record(path: Path, out: Path, fmt: str, mode: str, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """One exported file: where it is (relative to OUT), what it is, and how quantize_files made it."""
    record = {"file": str(path.relative_to(out)), "format": fmt, "runtime": RUNTIME_OF[fmt], "mode": mode,
              "scheme": "fp32", "size_bytes": path.stat().st_size}
    if entry is not None:
        choice = entry["scheme_choice"]
        measured = choice.get("measured") or {}
        record.update(
            scheme=entry["scheme"], float_layers=len(entry["float_layers"] or {}),
            float_layer_reasons=dict(Counter((entry["float_layers"] or {}).values())), notes=entry["notes"],
            fp32_faster=entry["fp32_faster"], selection_accuracy=entry["accuracy"], quantize_seconds=entry["seconds"],
            scheme_choice={"requested": choice["requested"], "chosen": choice["chosen"], "reason": choice["reason"],
                           "fp32_p50_ms": _by_thread((measured.get("fp32") or {}).get("p50_ms")),
                           "candidates": [{"scheme": c["scheme"], "accuracy": c["accuracy"], "drop": c["drop"],
                                           "within_budget": c["within_budget"], "p50_ms": _by_thread(c["p50_ms"]),
                                           "speedup": _by_thread(c["speedup"])}
                                          for c in measured.get("candidates", [])]})
    return record


def quantize_all(model: Any, fp32: dict[str, Path], calib: Any, folder: Path, shape: tuple[int, ...], modes: list[str],
                 args: argparse.Namespace, dev: Any, evaluate: Any, budget: float) -> dict[str, dict]:
    """{"FORMAT:MODE": file record} of the fp32 files and every quantized one, through `quantize_files`."""
    from edgecompress.quantize.api import quantize_files

    files = {f"{fmt}:fp32": file_record(Path(path), args.out, fmt, "fp32") for fmt, path in fp32.items()}
    basenames = {"int8-static": "model_int8", "int8-dynamic": "model_int8_dynamic", "fp16": "model_fp16"}
    for mode in modes:
        formats = [f for f in fp32 if mode != "fp16" or f == "tflite"]  # fp16 is TFLite-only in edgecompress
        if not formats:
            continue
        log(f"  quantize {mode} ({', '.join(formats)})")
        entries = quantize_files(model, {f: fp32[f] for f in formats}, calib if mode == "int8-static" else None, folder,
                                 input_shape=shape, mode=mode, method="minmax", formats=formats, device=dev,
                                 evaluate=evaluate, budget=budget, scheme="auto", threads=args.threads,
                                 runs=args.choice_runs, trials=args.choice_trials, basename=basenames[mode])
        for fmt, entry in entries.items():
            files[f"{fmt}:{mode}"] = file_record(Path(entry["path"]), args.out, fmt, mode, entry)
    return files


def file_top1(files: dict[str, dict], loader: Any, out: Path) -> None:
    from edgecompress.export.artifact_eval import evaluate_artifact

    for key, record in files.items():
        record["test_top1"] = evaluate_artifact(out / record["file"], loader, threads=2, progress=False)["top1"]
        log(f"  {key}: test top-1 {record['test_top1']:.2%}")


def demo_data(args: argparse.Namespace, shape: tuple[int, ...]) -> tuple[Any, Any, Any, Any]:
    """(splits, calibration images, validation evaluator, test loader) of the demo model, built once."""
    from edgecompress.data.calibration import make_loader
    from edgecompress.data.fashion_mnist import fashion_mnist_splits
    from edgecompress.quantize.api import calibration_tensor, val_evaluator

    splits = fashion_mnist_splits(shape, val_size=5000, seed=0)  # the demo model's own held-out split
    calib = calibration_tensor(splits.train, args.calib_batches, args.seed)
    evaluate = val_evaluator(splits.val, args.val_samples, args.seed)
    test_loader = make_loader(subset(splits.test, args.test_limit, args.seed), batch_size=256, shuffle=False)
    return splits, calib, evaluate, test_loader


def stage_demo(args: argparse.Namespace, dev: Any, data: tuple) -> dict[str, Any]:
    from edgecompress.export import export_model
    from edgecompress.graph.cost import analyze
    from edgecompress.models.loading import load_model

    loaded = load_model(str(DEMO))
    model, shape = loaded.model.eval(), tuple(loaded.input_shape)
    _, calib, evaluate, test_loader = data
    folder = args.out / "demo"
    log(f"demo: export fp32 ({', '.join(args.formats)})")
    exported = export_model(model, calib[:1], folder, formats=args.formats, basename="model_fp32", parity_inputs=calib[:32])
    fp32 = {r.format: Path(r.path) for r in exported}
    files = quantize_all(model, fp32, calib, folder, shape, ["int8-static", "int8-dynamic", "fp16"], args, dev,
                         evaluate, args.budget)
    log(f"demo: test top-1 of {len(files)} files on {len(test_loader.dataset)} images")
    file_top1(files, test_loader, args.out)
    cost = analyze(model, shape)
    return {"spec": str(DEMO.relative_to(REPO)), "input_shape": list(shape), "macs": cost.total_macs,
            "params": cost.total_params, "random_init": False,
            "calibration": {"dataset": "fashion-mnist", "split": "train", "images": len(calib), "seed": args.seed},
            "selection": {"dataset": "fashion-mnist", "split": "val", "images": args.val_samples},
            "test_images": len(test_loader.dataset), "files": files}


def stage_demo_pruned(args: argparse.Namespace, dev: Any, data: tuple) -> dict[str, Any]:
    from edgecompress.data.calibration import make_loader
    from edgecompress.devices.profiles import preferred_round_to
    from edgecompress.distill import DistillConfig, finetune
    from edgecompress.export import export_model
    from edgecompress.models.loading import load_model
    from edgecompress.prune import PruneConfig, prune_
    from edgecompress.train import TrainConfig, seed_everything

    loaded = load_model(str(DEMO))
    original, shape = loaded.model.eval(), tuple(loaded.input_shape)
    splits, calib, evaluate, test_loader = data
    round_to = preferred_round_to(dev) or 1
    config = PruneConfig(target=args.prune_target, importance="l2", round_to=round_to)
    log(f"demo_pruned: prune to {args.prune_target} (L2, round_to {round_to})")
    model = copy.deepcopy(original)
    result = prune_(model, config, input_shape=shape)
    record: dict[str, Any] = {
        "spec": f"{DEMO.relative_to(REPO)} pruned", "input_shape": list(shape), "random_init": False,
        "prune": {"config": config.to_dict(), "macs_before": result.macs_before, "macs_after": result.macs_after,
                  "macs_ratio": result.macs_after / result.macs_before, "params_before": result.params_before,
                  "params_after": result.params_after, "params_ratio": result.params_after / result.params_before,
                  "setting": result.setting, "warnings": result.warnings},
        "macs": result.macs_after, "params": result.params_after, "finetune": None,
    }
    if args.epochs:
        seed_everything(args.seed)
        train_set = subset(splits.train, args.train_limit, args.seed)
        train_config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=128, seed=args.seed)
        distill = DistillConfig(temperature=4.0, alpha=0.9)
        log(f"demo_pruned: KD fine-tuning, {args.epochs} epoch(s) on {len(train_set)} images (T=4, alpha=0.9)")
        t0 = time.perf_counter()
        history = finetune(model, original, make_loader(train_set, train_config.batch_size, shuffle=True, seed=args.seed),
                           make_loader(subset(splits.val, 2000, args.seed), batch_size=512, shuffle=False),
                           train_config, distill=distill, checkpoint_dir=args.out / "demo_pruned" / "finetune",
                           progress=False)
        record["finetune"] = {"epochs": args.epochs, "lr": args.lr, "train_images": len(train_set),
                              "distill": distill.to_dict(), "seconds": round(time.perf_counter() - t0, 1),
                              "val_top1_epochs": [e.val_top1 for e in history.epochs]}
    model.eval()
    folder = args.out / "demo_pruned"
    log(f"demo_pruned: export fp32 ({', '.join(args.formats)})")
    exported = export_model(model, calib[:1], folder, formats=args.formats, basename="model_fp32", parity_inputs=calib[:32])
    fp32 = {r.format: Path(r.path) for r in exported}
    record["files"] = quantize_all(model, fp32, calib, folder, shape, ["int8-static"], args, dev, evaluate, args.budget)
    log(f"demo_pruned: test top-1 of {len(record['files'])} files")
    file_top1(record["files"], test_loader, args.out)
    record["test_images"] = len(test_loader.dataset)
    return record


def stage_torchvision(name: str, args: argparse.Namespace, dev: Any) -> dict[str, Any]:
    import torch
    import torchvision

    from edgecompress.export import export_model
    from edgecompress.graph.cost import analyze

    torch.manual_seed(args.seed)  # the same random weights every run
    model = getattr(torchvision.models, name)(weights=None).eval()
    calib = torch.randn(args.tv_calib_images, *TV_SHAPE, generator=torch.Generator().manual_seed(args.seed))
    log(f"{name}: re-estimating BatchNorm statistics on {len(calib)} random-normal images")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the batches, not an exponential one that remembers the init
    model.train()
    with torch.no_grad():
        for batch in calib.split(32):
            model(batch)
    model.eval()
    for bn in norms:
        bn.momentum = 0.1
    folder = args.out / name
    log(f"{name}: export fp32 ({', '.join(args.formats)})")
    exported = export_model(model, calib[:1], folder, formats=args.formats, basename="model_fp32", parity_inputs=calib[:8])
    fp32 = {r.format: Path(r.path) for r in exported}
    files = quantize_all(model, fp32, calib, folder, TV_SHAPE, ["int8-static"], args, dev, None, args.tv_budget)
    cost = analyze(model, TV_SHAPE)
    return {"spec": f"torchvision.models.{name}(weights=None)", "input_shape": list(TV_SHAPE), "macs": cost.total_macs,
            "params": cost.total_params, "random_init": True,
            "calibration": {"dataset": "random normal N(0, 1)", "images": len(calib), "seed": args.seed,
                            "bn_reestimated": True},
            "selection": {"scored_by": "agreement with the fp32 file's top-1 on the calibration images",
                          "budget": args.tv_budget},
            "files": files}


# --------------------------------------------------------------------------- measurement and figures


def measure(report: dict[str, Any], args: argparse.Namespace, dev: Any) -> None:
    """Every file of every model, one interleaved measurement: each trial runs every file at every
    thread count (the demo group with `runs`, the torchvision group with `tv_runs`) before the next."""
    from edgecompress.latency.interleave import measure_interleaved, merge_trials

    groups = []
    for small in (True, False):
        paths = [args.out / r["file"] for name, m in report["models"].items() if (name in TORCHVISION) != small
                 for r in m["files"].values()]
        if paths:
            groups.append((paths, args.runs if small else args.tv_runs))
    pooled: dict[tuple[Path, int], list] = {}
    n_files = sum(len(p) for p, _ in groups)
    load_before = os.getloadavg()
    log(f"measuring {n_files} files x threads {args.threads} x {args.trials} interleaved trials "
        f"(runs {', '.join(str(r) for _, r in groups)})")
    for trial in range(args.trials):
        log(f"  trial {trial + 1}/{args.trials}")
        for paths, runs in groups:
            warmup = args.warmup if args.warmup is not None else max(10, runs // 10)
            for key, res in measure_interleaved(dev, paths, args.threads, runs=runs, warmup=warmup, trials=1).items():
                pooled.setdefault(key, []).append(res)
    for name, m in report["models"].items():
        for key, r in m["files"].items():
            r["latency"] = {}
            for t in args.threads:
                res = merge_trials(pooled[(args.out / r["file"], t)])
                r["latency"][str(t)] = {
                    "p50_ms": statistics.median(res.trial_p50s_ms), "pooled_p50_ms": res.p50_ms, "p90_ms": res.p90_ms,
                    "trial_p50s_ms": res.trial_p50s_ms, "runs": res.runs, "warmup": res.warmup, "trials": res.trials,
                    "runtime": res.runtime, "runtime_version": res.runtime_version}
    report["measurement"] = {"threads": args.threads, "trials": args.trials, "runs_demo": args.runs,
                             "runs_torchvision": args.tv_runs, "warmup": args.warmup, "interleaved": True,
                             "figure": "median over trials of each trial's p50 (ms)",
                             "loadavg_before": [round(x, 2) for x in load_before],
                             "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def _p50(record: dict[str, Any] | None, t: str) -> float | None:
    return ((record or {}).get("latency") or {}).get(t, {}).get("p50_ms")


def derive(report: dict[str, Any]) -> None:
    """Speed-ups (fp32 p50 / other p50, same format) and the pruned model's ratios against the original fp32 files."""
    threads = [str(t) for t in report["settings"]["threads"]]
    for m in report["models"].values():
        for key, r in m["files"].items():
            base = m["files"].get(f"{r['format']}:fp32")
            r["speedup_vs_fp32"] = {t: _p50(base, t) / _p50(r, t) for t in threads if _p50(base, t) and _p50(r, t)}
            if base and "test_top1" in base and "test_top1" in r:
                r["test_drop_vs_fp32"] = base["test_top1"] - r["test_top1"]
    pruned, demo = report["models"].get("demo_pruned"), report["models"].get("demo")
    if pruned and demo:
        pruned["vs_original_fp32"] = {}
        for key, r in pruned["files"].items():
            orig = demo["files"].get(f"{r['format']}:fp32")
            if orig:
                pruned["vs_original_fp32"][key] = {
                    "size_ratio": r["size_bytes"] / orig["size_bytes"],
                    "speedup": {t: _p50(orig, t) / _p50(r, t) for t in threads if _p50(orig, t) and _p50(r, t)},
                    "latency_ratio": {t: _p50(r, t) / _p50(orig, t) for t in threads if _p50(orig, t) and _p50(r, t)},
                    "macs_ratio": pruned["prune"]["macs_ratio"],
                    "test_top1": r.get("test_top1"), "original_test_top1": orig.get("test_top1")}


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each met, missed or (LiteRT on this host) reported, with the figures that decide it."""
    s, models = report["settings"], report["models"]
    out = []
    demo = models.get("demo")
    for fmt in s["formats"] if demo else ():
        f, q = demo["files"].get(f"{fmt}:fp32"), demo["files"].get(f"{fmt}:int8-static")
        if f and q and "test_top1" in q:
            drop = f["test_top1"] - q["test_top1"]
            out.append({"target": f"demo {fmt} int8 top-1 within {s['budget'] * 100:.1f} point of fp32",
                        "met": drop <= s["budget"] + 1e-12,
                        "figures": f"test top-1 from the files ({demo['test_images']} images): fp32 {f['test_top1']:.2%}, "
                                   f"int8 {q['scheme']} {q['test_top1']:.2%}, drop {drop * 100:.2f} points"
                                   + (f", {q['float_layers']} layer(s) kept float" if q.get("float_layers") else "")})
    for name, label in TORCHVISION.items():
        m = models.get(name)
        if not m:
            continue
        ort = m["files"].get("onnx:int8-static")
        if ort and "1" in ort.get("speedup_vs_fp32", {}):
            x, goal = ort["speedup_vs_fp32"]["1"], ORT_TARGETS[name]
            out.append({"target": f"ONNX Runtime int8 (scheme auto) >= {goal}x fp32 on {label}, 1 thread",
                        "met": x >= goal,
                        "figures": f"{x:.2f}x with {ort['scheme']} (fp32 {_p50(m['files']['onnx:fp32'], '1'):.3f} ms, int8 "
                                   f"{_p50(ort, '1'):.3f} ms p50)" + _other_threads(ort)})
        lite = m["files"].get("tflite:int8-static")
        if lite and lite.get("speedup_vs_fp32"):
            out.append({"target": f"LiteRT full int8 vs fp32 on {label}: reported as measured (no target on this host)",
                        "met": None, "figures": ", ".join(f"{x:.2f}x at {t} thread(s)" for t, x in lite["speedup_vs_fp32"].items())
                        + " (LiteRT's XNNPACK on this x86 host; int8 can run slower than fp32 on x86)"})
    return out


def _other_threads(record: dict[str, Any]) -> str:
    rest = {t: x for t, x in record["speedup_vs_fp32"].items() if t != "1"}
    return "".join(f"; {x:.2f}x at {t} threads" for t, x in rest.items())


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from edgecompress.devices import get_device

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    previous = _previous(out / "bench_quant.json", settings)
    if isinstance(previous, str):
        print(f"bench_quant: {previous}", file=sys.stderr)
        return 2
    dev = get_device("host")
    report: dict[str, Any] = {
        "schema": "edgecompress.bench_quant/1", "complete": False,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]), "settings": settings,
        "device": {"name": dev.name, "fingerprint": dev.fingerprint(), "kind": "host CPU, not a phone"},
        "torch_threads": torch.get_num_threads(), "versions": versions(), "models": {}, "targets": [],
        "stage_seconds": {},
    }
    t_start = time.perf_counter()
    data = None
    for name in args.models:
        done = previous.get(name)
        if done and all((out / r["file"]).is_file() for r in done["files"].values()):
            log(f"{name}: reusing the finished stage in {out}")
            report["models"][name] = {**done, "reused": True}
            report["stage_seconds"][name] = 0.0
            continue
        t0 = time.perf_counter()
        if name in TORCHVISION:
            report["models"][name] = stage_torchvision(name, args, dev)
        else:
            if data is None:
                from edgecompress.models.loading import load_model

                data = demo_data(args, tuple(load_model(str(DEMO)).input_shape))
            report["models"][name] = (stage_demo if name == "demo" else stage_demo_pruned)(args, dev, data)
        report["stage_seconds"][name] = round(time.perf_counter() - t0, 1)
        write(report, out)
    t0 = time.perf_counter()
    measure(report, args, dev)
    report["stage_seconds"]["measurement"] = round(time.perf_counter() - t0, 1)
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    derive(report)
    report["targets"] = judge(report)
    report["complete"] = True
    write(report, out)
    print(render_markdown(report))
    return 0


def _previous(path: Path, settings: dict[str, Any]) -> dict[str, Any] | str:
    """{model: finished stage} of an earlier run in the same OUT with the same build settings; a message when they differ."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a report we cannot read is rebuilt
    before = {k: v for k, v in old.get("settings", {}).items() if k not in MEASURE_ONLY}
    now = {k: v for k, v in settings.items() if k not in MEASURE_ONLY}
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        return (f"{path.parent} holds a run with other settings ({', '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in changed)}); "
                "re-run with the same settings to resume it, or give another --out")
    return old.get("models", {})


# --------------------------------------------------------------------------- markdown


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def render_markdown(report: dict[str, Any]) -> str:
    s, models = report["settings"], report["models"]
    fp = report["device"]["fingerprint"]
    threads = [str(t) for t in s["threads"]]
    lines = [
        "# Quantization benchmark: fp32 vs int8 on ONNX Runtime and LiteRT",
        "",
        f"- device: **{report['device']['name']}** (host CPU, not a phone) — {fp.get('cpu_model', '?')}, "
        f"{fp.get('logical_cores', '?')} logical cores, fingerprint `{fp.get('id', '?')}`. These are host CPU figures, "
        "not a phone: int8 speed on ARM phones (dot-product instructions) is a different story, so no phone's "
        "int8 gain should be read from this table.",
        "- every file made by `export_model` + `quantize_files` (ONNX int8-static scheme `auto`: candidates timed on "
        "this host, the fastest within the budget kept; TFLite full int8 via ai-edge-quantizer)",
        "- " + ("**incomplete** (still running or interrupted)" if not report["complete"] else "complete"),
        "",
    ]
    demo = models.get("demo")
    if demo:
        lines += [
            "## Demo model: accuracy of the exported files",
            "",
            f"`{demo['spec']}` ({demo['macs']:,} MACs). Top-1 of each file run in its runtime over "
            f"{demo['test_images']} Fashion-MNIST test images; calibration on {demo['calibration']['images']} training "
            f"images; the scheme choice and mixed precision scored on {demo['selection']['images']} validation images, "
            f"budget {s['budget'] * 100:.1f} point.",
            "",
            "| format | mode | scheme | size KB | test top-1 | drop vs fp32 (points) | layers float | within budget |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for key, r in demo["files"].items():
            drop = r.get("test_drop_vs_fp32")
            within = "–" if drop is None or r["mode"] == "fp32" else ("yes" if drop <= s["budget"] + 1e-12 else "**no**")
            lines.append(f"| {r['format']} | {r['mode']} | {r['scheme']} | {r['size_bytes'] / 1024:.1f} | "
                         f"{_pct(r.get('test_top1'))} | {'–' if drop is None else format(drop * 100, '.2f')} | "
                         f"{r.get('float_layers', 0)} | {within} |")
        lines.append("")
    lines += ["## Latency (one interleaved measurement)", ""]
    m_info = report.get("measurement")
    if m_info:
        lines.append(f"{m_info['trials']} trials, each running every file at every thread count ({m_info['runs_demo']} "
                     f"runs per trial for the 28 px demo files, {m_info['runs_torchvision']} for the 224 px torchvision "
                     "files); a figure is the median over trials of each trial's p50. Speed-up = fp32 p50 / this p50, "
                     "same format and threads.")
    else:
        lines.append("Not measured yet.")
    head = "".join(f" p50 ms {t}T | speed-up {t}T |" for t in threads)
    lines += ["", f"| model | runtime | file | scheme | size KB |{head}", "|---|---|---|---|---:|" + "---:|---:|" * len(threads)]
    for name, m in models.items():
        for key, r in m["files"].items():
            cells = "".join(f" {_ms(_p50(r, t))} | {_x(r.get('speedup_vs_fp32', {}).get(t))} |" for t in threads)
            lines.append(f"| {name} | {RUNTIME_NAME[r['format']]} | {r['mode']} | {r['scheme']} | "
                         f"{r['size_bytes'] / 1024:.1f} |{cells}")
    choices = [(name, r) for name, m in models.items() for r in m["files"].values() if r.get("scheme_choice", {}).get("candidates")]
    if choices:
        lines += ["", "## ONNX scheme choice (what `auto` measured on this host)", "",
                  "Each candidate timed against the fp32 file in the scheme choice's own interleaved measurement "
                  f"({s['choice_trials']} trial(s) x {s['choice_runs']} runs); drop: top-1 (demo models, validation "
                  "images) or agreement with fp32 (torchvision, calibration images).", "",
                  "| model | candidate | drop (points) | within budget |" + "".join(f" speed-up {t}T |" for t in threads) + " kept |",
                  "|---|---|---:|---|" + "---:|" * len(threads) + "---|"]
        for name, r in choices:
            for c in r["scheme_choice"]["candidates"]:
                cells = "".join(f" {_x(c['speedup'].get(t))} |" for t in threads)
                lines.append(f"| {name} | {c['scheme']} | {c['drop'] * 100:.2f} | {'yes' if c['within_budget'] else 'no'} |"
                             f"{cells} {'**yes**' if c['scheme'] == r['scheme_choice']['chosen'] else ''} |")
        lines += [""] + [f"- {name}: {r['scheme_choice']['reason']}" for name, r in choices]
    pruned = models.get("demo_pruned")
    if pruned and pruned.get("vs_original_fp32"):
        p, ft = pruned["prune"], pruned.get("finetune")
        lines += ["", "## Pruned + int8 demo model, against the ORIGINAL fp32 files", "",
                  f"Pruned to {p['config']['target']} with L2 importance, widths rounded to {p['config']['round_to']}: MACs "
                  f"x{p['macs_ratio']:.3f}, params x{p['params_ratio']:.3f}; "
                  + (f"KD fine-tuned {ft['epochs']} epoch(s) on {ft['train_images']} images (lr {ft['lr']})." if ft
                     else "not fine-tuned."), "",
                  "| runtime | file | size ratio |" + "".join(f" speed-up {t}T | latency ratio {t}T |" for t in threads)
                  + " test top-1 | original fp32 top-1 |",
                  "|---|---|---:|" + "---:|---:|" * len(threads) + "---:|---:|"]
        for key, v in pruned["vs_original_fp32"].items():
            r = pruned["files"][key]
            cells = "".join(f" {_x(v['speedup'].get(t))} | {'–' if t not in v['latency_ratio'] else format(v['latency_ratio'][t], '.3f')} |"
                            for t in threads)
            lines.append(f"| {RUNTIME_NAME[r['format']]} | pruned {r['mode']} ({r['scheme']}) | {v['size_ratio']:.3f} |{cells} "
                         f"{_pct(v['test_top1'])} | {_pct(v['original_test_top1'])} |")
        lines += ["", "Size ratio: this file's bytes / the original fp32 file's (same format); latency ratio: this p50 / "
                  "the original fp32 p50 (speed-up is its inverse)."]
    lines += ["", "## Targets", ""]
    for t in report.get("targets", []):
        verdict = "reported" if t["met"] is None else ("met" if t["met"] else "missed")
        lines.append(f"- **{verdict}**: {t['target']}. {t['figures']}")
    if not report.get("targets"):
        lines.append("- (judged when the run completes)")
    notes = []
    if any(m.get("random_init") for m in models.values()):
        notes.append("torchvision models are random-init (`weights=None`, no weights offline): their latency is "
                     "meaningful, their accuracy is not and is not reported. They are calibrated on "
                     f"{s['tv_calib_images']} random-normal images, on which BatchNorm statistics are re-estimated first "
                     "(untrained running statistics give activation ranges LiteRT refuses to run in int8). Their scheme "
                     f"choice scores agreement with the fp32 file under a {s['tv_budget'] * 100:.1f}-point budget: "
                     "near-tied random logits flip under any rounding, so agreement only rejects a broken file (one near the "
                     "0.1% chance level) and the choice is made by timing.")
    for name, m in models.items():
        if m.get("reused"):
            notes.append(f"{name}: files reused from an earlier run of the same command (only re-measured)")
        for key, r in m["files"].items():
            notes += [f"{name} {key}: {n}" for n in r.get("notes", []) if not n.startswith(("quantized by ", "input int8 ("))]
            notes += [f"{name} {key}: {n} layer(s) float: {why}" for why, n in r.get("float_layer_reasons", {}).items()]
    slower = [f"{name} {key}" for name, m in models.items() for key, r in m["files"].items()
              if len(threads) > 1 and _p50(r, threads[0]) and any((_p50(r, t) or 0) > 1.1 * _p50(r, threads[0]) for t in threads[1:])]
    if slower:
        notes.append(f"slower with more threads than with {threads[0]} (the machine is shared: another job may have held a "
                     f"core, so read those thread counts with care): {', '.join(slower)}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Run conditions", "",
              f"- command: `{report['command']}`",
              f"- created {report['created_utc']}" + (f"; took {report['total_seconds']:.0f} s" if report.get("total_seconds") else "")
              + "; stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["stage_seconds"].items()),
              f"- host CPU, not a phone: {fp.get('cpu_model', '?')}, {fp.get('logical_cores', '?')} logical / "
              f"{fp.get('physical_cores', '?')} physical cores, {fp.get('os', '?')}; fingerprint `{fp.get('id', '?')}`",
              f"- threads measured: {', '.join(threads)}; torch threads: {report['torch_threads']}; seed {s['seed']}"
              + (f"; load average (1/5/15 min) {m_info['loadavg_before']} before the measurement, "
                 f"{m_info['loadavg_after']} after" if m_info else "")]
    lines += [f"- {k}: {v}" for k, v in report["versions"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
