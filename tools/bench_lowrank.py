#!/usr/bin/env python
"""Low-rank factorization against channel pruning at one MAC budget, in one run.

For each model (`demo`: the bundled Fashion-MNIST MobileNetV2; `resnet20`: the CIFAR-style
ResNet-20 trained on Fashion-MNIST, `models/bench/fmnist_resnet20.pt`), at `--macs`
(default 0.5) of its MACs:

- `prune`: structured channel pruning (l2, uniform ratio, the host's channel rounding);
- one variant per method (svd, spatial-svd, tucker2, cp): `factorize_` to the budget, the
  ranks chosen greedily by validation-accuracy sensitivity (`--sensitivity`), no per-layer
  latency check (so every method is held to the same MACs, and what its factors do to
  latency shows up below); a method that cannot reach the budget on that model is
  reported with the reason;
- `prune+METHOD`: pruning to `--prune-part` of the MACs, then factorizing to the rest;
- every variant fine-tuned the same way (KD from the original, T = 4, alpha = 0.9, same
  epochs, images, lr and seed) and tested on the 10k test images;
- one interleaved latency measurement (ONNX Runtime and LiteRT, 1 thread) of every file.

Writes OUT/bench_lowrank.json and .md atomically after every variant ("complete": false
until the end). Each fine-tuned variant is saved (OUT/NAME/model.pt) and fine-tuning
checkpoints every epoch, so re-running the same command continues where it stopped.

    .venv/bin/python tools/bench_lowrank.py                 # the benchmark (~30 min on 2 cores)
    .venv/bin/python tools/bench_lowrank.py --quick         # a smoke run
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
from bench_search import log, versions  # noqa: E402  (what the benchmarks share)

REPO = Path(__file__).resolve().parent.parent
MODELS = {"demo": REPO / "models" / "demo" / "fmnist_mobilenetv2.pt", "resnet20": REPO / "models" / "bench" / "fmnist_resnet20.pt"}
METHODS = ("svd", "spatial-svd", "tucker2", "cp")
# AIMET's published spatial SVD + channel pruning at 50% MACs on ImageNet (top-1, %): original -> compressed.
AIMET = {"ResNet-18": (69.76, 68.56), "ResNet-50": (76.05, 75.75)}
QUICK = {"epochs": 1, "train_limit": 512, "test_limit": 500, "val_samples": 200, "trials": 2, "runs": 20}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="demo,resnet20", help="comma-separated: demo, resnet20 (default: both)")
    p.add_argument("--methods", default=",".join(METHODS), help="factorization methods (default: all four)")
    p.add_argument("--combined", default="svd,spatial-svd", help="methods also run after pruning (prune+METHOD)")
    p.add_argument("--macs", type=float, default=0.5, help="MAC budget, a fraction of the original (default 0.5)")
    p.add_argument("--prune-part", type=float, default=0.7, help="MACs fraction pruning takes in prune+METHOD (default 0.7)")
    p.add_argument("--sensitivity", default="accuracy", choices=("accuracy", "error"), help="rank selection (default accuracy)")
    p.add_argument("--epochs", type=int, default=2, help="KD fine-tuning epochs for every variant (default 2)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate (default 0.01)")
    p.add_argument("--train-limit", type=int, default=20000, help="fine-tuning images (default 20000)")
    p.add_argument("--test-limit", type=int, default=None, help="test images (default: all 10k)")
    p.add_argument("--val-samples", type=int, default=1000, help="validation images per sensitivity evaluation (default 1000)")
    p.add_argument("--formats", default="onnx,tflite", help="files measured (default onnx,tflite)")
    p.add_argument("--trials", type=int, default=5, help="interleaved trials per file (default 5)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per trial (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench_lowrank")
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in MODELS:
            p.error(f"--models: {m!r} is not one of {', '.join(MODELS)}")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.combined = [m.strip() for m in args.combined.split(",") if m.strip()]  # "" : no combined variant
    for m in [*args.methods, *args.combined]:
        if m not in METHODS:
            p.error(f"--methods/--combined: {m!r} is not one of {', '.join(METHODS)}")
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not (0 < args.macs < 1 and args.macs < args.prune_part < 1):
        p.error(f"--macs {args.macs} and --prune-part {args.prune_part} must satisfy 0 < macs < prune-part < 1")
    return args


def write(report: dict[str, Any], out: Path) -> None:
    from edgecompress.fsutil import atomic_write_json, atomic_write_text

    atomic_write_json(out / "bench_lowrank.json", report)
    atomic_write_text(out / "bench_lowrank.md", render_markdown(report))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from edgecompress.data.calibration import calibration_subset, make_loader
    from edgecompress.data.fashion_mnist import fashion_mnist_splits
    from edgecompress.devices import get_device
    from edgecompress.devices.local import host_round_to
    from edgecompress.distill import DistillConfig, finetune
    from edgecompress.errors import UserError
    from edgecompress.graph.cost import analyze
    from edgecompress.lowrank import LowRankConfig, factorize_
    from edgecompress.models.loading import load_model, save_checkpoint
    from edgecompress.prune import PruneConfig, prune_
    from edgecompress.train import TrainConfig, evaluate, seed_everything

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    previous = out / "bench_lowrank.json"
    old = json.loads(previous.read_text()) if previous.is_file() else {}
    if old and old.get("settings") != settings:
        log(f"{previous} was written with other settings: starting again")
        old = {}
    dev = get_device("host")
    round_to = host_round_to()
    report: dict[str, Any] = {
        "schema": "edgecompress.bench_lowrank/1", "complete": False,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]), "settings": settings,
        "device": {"name": dev.name, "fingerprint": dev.fingerprint()}, "round_to": round_to,
        "torch_threads": torch.get_num_threads(), "versions": versions(), "models": {}, "targets": [],
    }
    distill = DistillConfig(temperature=4.0, alpha=0.9)
    ft_config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=128, seed=args.seed)
    files: dict[tuple[str, str], Any] = {}  # (model, variant) -> nn.Module to export and time

    def pick(ds, n):
        return ds if n is None or n >= len(ds) else calibration_subset(ds, n, seed=args.seed)

    for model_name in args.models:
        if not MODELS[model_name].is_file():
            raise SystemExit(f"{MODELS[model_name]} not found (resnet20: `.venv/bin/python tools/train_demo_model.py "
                             f"--arch resnet20 --width-mult 1.0 --epochs 3 --out {MODELS[model_name]}`)")
        loaded = load_model(str(MODELS[model_name]))
        original, shape = loaded.model.eval(), tuple(loaded.input_shape)
        splits = fashion_mnist_splits(shape, val_size=5000, seed=0)
        test_loader = make_loader(pick(splits.test, args.test_limit), batch_size=512, shuffle=False)
        val_loader = make_loader(pick(splits.val, 2000), batch_size=512, shuffle=False)
        sens_loader = make_loader(pick(splits.val, args.val_samples), batch_size=512, shuffle=False)
        train_set = pick(splits.train, args.train_limit)
        base = analyze(original, shape)
        entry = old.get("models", {}).get(model_name) or {
            "spec": loaded.spec, "input_shape": list(shape), "macs": base.total_macs, "params": base.total_params,
            "variants": {"original": {"kind": "original", "macs_ratio": 1.0, "params_ratio": 1.0,
                                      "test_top1": evaluate(original, test_loader, progress=False).top1}}}
        report["models"][model_name] = entry
        files[(model_name, "original")] = original
        write(report, out)

        def evaluate_fn(m):
            return evaluate(m, sens_loader, progress=False).top1

        def factorize(model, method: str, target: str) -> dict[str, Any]:
            config = LowRankConfig(method=method, target=target, sensitivity=args.sensitivity, round_to=round_to)
            result = factorize_(model, config, input_shape=shape, evaluate=evaluate_fn)
            return {"layers_factorized": len(result.factorized), "layers": len(result.layers),
                    "mean_rel_error": sum(p.rel_error for p in result.factorized) / max(len(result.factorized), 1)}

        plan = [("prune", None, None)] + [(m, m, None) for m in args.methods] + [(f"prune+{m}", m, "prune") for m in args.combined]
        for variant, method, first in plan:
            folder = out / model_name / variant
            done = entry["variants"].get(variant)
            if done is not None and (done.get("skipped") or (folder / "model.pt").is_file()):
                if not done.get("skipped"):
                    files[(model_name, variant)] = load_model(str(folder / "model.pt")).model.eval()
                continue
            log(f"{model_name} {variant}: to macs={args.macs}")
            model = copy.deepcopy(original)
            t0 = time.perf_counter()
            info: dict[str, Any] = {"kind": "prune" if method is None else "factorize", "method": method}
            try:
                if method is None or first == "prune":
                    part = args.macs if method is None else args.prune_part
                    pruned = prune_(model, PruneConfig(target=f"macs={part}", round_to=round_to), input_shape=shape)
                    info["prune_macs_ratio"] = pruned.macs_ratio
                if method is not None:
                    # the factorization's own budget: what is left of args.macs after pruning
                    ratio = args.macs * base.total_macs / analyze(model, shape).total_macs
                    info.update(factorize(model, method, f"macs={min(ratio, 0.999):.6f}"))
            except UserError as exc:
                log(f"{model_name} {variant}: not reachable: {exc}")
                entry["variants"][variant] = {**info, "skipped": str(exc)}
                write(report, out)
                continue
            info["compress_seconds"] = round(time.perf_counter() - t0, 1)
            after = analyze(model, shape)
            info.update(macs_ratio=after.total_macs / base.total_macs, params_ratio=after.total_params / base.total_params,
                        test_top1_before_ft=evaluate(model, test_loader, progress=False).top1)
            log(f"{model_name} {variant}: MACs x{info['macs_ratio']:.3f}, top-1 before fine-tuning "
                f"{info['test_top1_before_ft']:.2%}; fine-tuning {args.epochs} epoch(s) with KD")
            seed_everything(args.seed)
            finetune(model, original, make_loader(train_set, 128, shuffle=True, seed=args.seed), val_loader, ft_config,
                     distill=distill, checkpoint_dir=folder / "finetune", progress=True)
            model.eval()
            info["test_top1"] = evaluate(model, test_loader, progress=False).top1
            save_checkpoint(model, folder / "model.pt", arch_spec=loaded.arch["spec"],
                            arch_kwargs=loaded.arch.get("kwargs", {}), input_shape=shape)
            entry["variants"][variant] = info
            files[(model_name, variant)] = model
            write(report, out)

    # -- one interleaved measurement of every file ---------------------------------------------
    from edgecompress.export import export_model
    from edgecompress.latency.interleave import measure_interleaved

    paths = {}
    for (model_name, variant), m in files.items():
        shape = tuple(report["models"][model_name]["input_shape"])
        for r in export_model(copy.deepcopy(m).eval(), torch.zeros(1, *shape), out / "artifacts" / model_name / variant,
                              formats=tuple(args.formats)):
            paths[(model_name, variant, r.format)] = Path(r.path)
    log(f"measuring {len(paths)} files x 1 thread x {args.trials} trials, {args.runs} runs each")
    measured = measure_interleaved(dev, list(paths.values()), [1], runs=args.runs, warmup=max(10, args.runs // 10),
                                   trials=args.trials)
    for (model_name, variant, fmt), path in paths.items():
        res = measured[(path, 1)]
        report["models"][model_name]["variants"][variant].setdefault("latency", {})[f"{res.runtime}:1"] = {
            "p50_ms": res.p50_ms, "p90_ms": res.p90_ms, "trial_p50s_ms": res.trial_p50s_ms,
            "runtime_version": res.runtime_version}
    report["targets"] = judge(report)
    report["complete"] = True
    write(report, out)
    print(render_markdown(report))
    return 0


def _lat(variant: dict[str, Any], runtime: str) -> float | None:
    return variant.get("latency", {}).get(f"{runtime}:1", {}).get("p50_ms")


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """AIMET's relative drop (spatial SVD + channel pruning at 50% MACs) as the bar; latency that MACs do not buy."""
    bar = max((a - b) / a for a, b in AIMET.values())  # ResNet-18's 1.72% relative is the looser of the two
    targets = []
    for model_name, entry in report["models"].items():
        variants = entry["variants"]
        top = variants["original"]["test_top1"]
        for name, v in variants.items():
            if name == "original" or v.get("skipped") or v.get("test_top1") is None:
                continue
            drop = (top - v["test_top1"]) / top
            if name.startswith("prune+") or name == "spatial-svd":
                targets.append({"target": f"{model_name} {name}: relative top-1 drop <= AIMET's ResNet-18 {bar:.2%}",
                                "met": drop <= bar,
                                "figures": f"{top:.2%} -> {v['test_top1']:.2%} ({drop:.2%} relative) at MACs x{v['macs_ratio']:.3f}"})
        for name, v in variants.items():
            if v.get("kind") != "factorize" or v.get("skipped"):
                continue
            for runtime in ("onnxruntime", "litert"):
                ms, ref = _lat(v, runtime), _lat(variants["original"], runtime)
                if ms is not None and ref is not None and ms >= ref:
                    targets.append({"target": f"{model_name} {name}: fewer MACs is not lower latency on {runtime}",
                                    "met": None, "figures": f"MACs x{v['macs_ratio']:.3f} but {ms:.4f} ms vs "
                                                            f"{ref:.4f} ms ({ref / ms:.2f}x)"})
    return targets


def render_markdown(report: dict[str, Any]) -> str:
    s, fp = report["settings"], report["device"]["fingerprint"]
    lines = ["# bench_lowrank: low-rank factorization vs channel pruning", "",
             f"- command: `{report['command']}`", f"- created: {report['created_utc']}"
             + ("" if report["complete"] else " (**incomplete**: re-run the command to continue)"),
             f"- device: **host CPU, not a phone** — {fp.get('cpu_model', '?')}, {fp.get('logical_cores', '?')} "
             f"logical cores, fingerprint `{fp.get('id', '?')}`; torch threads {report['torch_threads']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(report["versions"].items())),
             f"- budget: macs={s['macs']} of each original; prune+METHOD prunes to {s['prune_part']} first; ranks by "
             f"{s['sensitivity']} sensitivity on {s['val_samples']} validation images; channels and ranks rounded "
             f"to {report['round_to']}",
             f"- every variant: KD (T=4, alpha=0.9) from the original, {s['epochs']} epoch(s) on {s['train_limit']} "
             f"training images, lr {s['lr']}, seed {s['seed']}; test top-1 on "
             f"{s['test_limit'] or 'all 10k'} test images",
             f"- latency: one interleaved measurement of every file, {s['trials']} trials x {s['runs']} runs, 1 thread, "
             "median (p50)", ""]
    for model_name, entry in report["models"].items():
        variants = entry["variants"]
        ref = {r: _lat(variants["original"], r) for r in ("onnxruntime", "litert")}
        lines += [f"## {model_name} (`{entry['spec']}`, {entry['macs']:,} MACs, {entry['params']:,} params)", "",
                  "| variant | MACs | params | layers factorized | top-1 before FT | top-1 after FT | ORT p50 ms (speed-up) | LiteRT p50 ms (speed-up) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, v in variants.items():
            if v.get("skipped"):
                lines.append(f"| {name} | not reachable: {v['skipped'][:160]} | | | | | | |")
                continue
            lat = []
            for r in ("onnxruntime", "litert"):
                ms = _lat(v, r)
                lat.append("–" if ms is None else f"{ms:.4f} ({ref[r] / ms:.2f}x)" if ref[r] else f"{ms:.4f}")
            layers = f"{v['layers_factorized']} / {v['layers']}" if "layers" in v else "–"
            before = "–" if v.get("test_top1_before_ft") is None else f"{v['test_top1_before_ft']:.2%}"
            lines.append(f"| {name} | x{v['macs_ratio']:.3f} | x{v['params_ratio']:.3f} | {layers} | {before} | "
                         f"{v['test_top1']:.2%} | {lat[0]} | {lat[1]} |")
        lines.append("")
    lines += ["## Targets", "", f"AIMET (published, ImageNet, spatial SVD + channel pruning at 50% MACs): "
              + "; ".join(f"{k} {a} -> {b} ({(a - b) / a:.2%} relative)" for k, (a, b) in AIMET.items()), ""]
    for t in report["targets"]:
        mark = {True: "met", False: "missed", None: "noted"}[t["met"]]
        lines.append(f"- **{mark}**: {t['target']} — {t['figures']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
