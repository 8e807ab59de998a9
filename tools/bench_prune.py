#!/usr/bin/env python
"""Our structured pruner against Torch-Pruning 1.6.1 at the same MAC budget, side by side.

For each model, four variants: `dense`; `ours` (edgecompress `prune_`, L2 importance,
widths rounded to the multiple this CPU's runtimes need: 16 with AVX-512F, 8 otherwise,
`edgecompress.devices.local.host_round_to`); `tp` (Torch-Pruning's BasePruner with L2
magnitude importance, no rounding: its generic call); `tp_rounded` (the same with
Torch-Pruning's round_to set to that multiple). Each
is exported to ONNX and TFLite (parity checked) and timed on this CPU at 1 and 2 threads,
all files of one model in one interleaved measurement, so every variant sees the same
background load. For the demo model (Fashion-MNIST) each pruned variant is also
fine-tuned with distillation from the dense model (same budget, config and seed) and its
test top-1 is reported before and after.

How the budget is met, for both pruners: a search on one uniform pruning ratio (ours:
prune_'s bisection; Torch-Pruning: a 0.05 scan, then bisection), every candidate counted
by the same MAC counter (edgecompress.graph.cost.analyze), keeping the smallest ratio
whose MACs are <= the budget. Torch-Pruning's own counter
(tp.utils.count_ops_and_params) is recorded beside it as a cross-check.

Writes OUT/bench_prune.json (every number, versions, host fingerprint, settings, the
command) and OUT/bench_prune.md (one table per model), each atomically, after every
model ("complete": false until the last); the exported files stay in OUT/artifacts/.

    .venv/bin/python tools/bench_prune.py                              # the full benchmark
    .venv/bin/python tools/bench_prune.py --models demo --quick        # about a minute
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecompress.versions import installed_version

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "out" / "bench_prune"
#: short name -> model spec for load_model; any zoo:/torchvision: spec is accepted too
MODELS = {
    "demo": str(REPO / "models" / "demo" / "fmnist_mobilenetv2.pt"),
    "mobilenet_v2": "torchvision:mobilenet_v2",
    "resnet18": "torchvision:resnet18",
}
VARIANTS = ("dense", "ours", "tp", "tp_rounded")
PRUNED = VARIANTS[1:]
FORMATS = ("onnx", "tflite")
RUNTIME_OF = {"onnx": "onnxruntime", "tflite": "litert"}
TP_VERSION = "1.6.1"
TP_SCAN = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95: coarse search for a ratio in budget
TP_BISECT_STEPS = 10  # then bisection from the 0.05-wide bracket: resolution 0.05 / 2**10 ~ 5e-5
BN_RECAL_IMAGES = 2048  # training images whose batches re-estimate BatchNorm statistics
SMALL_INPUT_PX = 64 * 64  # inputs up to this many pixels get the larger run count
QUICK = {"epochs": 1, "train_limit": 2000, "val_limit": 1000, "test_limit": 2000, "trials": 3, "runs": 50}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="demo,mobilenet_v2,resnet18",
                   help=f"comma-separated: {', '.join(MODELS)} or zoo:NAME / torchvision:NAME specs (default: all three)")
    p.add_argument("--macs", type=float, default=0.5, help="MAC budget as a fraction of the dense model's MACs (default: 0.5)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for bench_prune.json/.md and artifacts/ (default: out/bench_prune)")
    p.add_argument("--threads", default="1,2", help="runtime thread counts to measure (default: 1,2)")
    p.add_argument("--trials", type=int, default=None, help="interleaved trials per file and thread count (default 9, quick 3)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed runs per trial (default 300 for inputs up to 64x64 px, else 100; quick 50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per trial (default max(10, runs / 10))")
    p.add_argument("--epochs", type=int, default=None, help="KD fine-tuning epochs for the demo model (default 3, quick 1)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate, SGD with cosine decay (default: 0.01)")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch size (default: 128)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="fine-tune on a stratified subset of this many training images (quick 2000)")
    p.add_argument("--val-limit", type=int, default=None, help="validate on this many images (quick 1000)")
    p.add_argument("--test-limit", type=int, default=None, help="test on a stratified subset of this many images (quick 2000)")
    p.add_argument("--no-finetune", action="store_true", help="skip accuracy and fine-tuning for the demo model")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: $EDGECOMPRESS_DATA or the Debian path)")
    p.add_argument("--seed", type=int, default=0, help="data subsets, data order, random torchvision weights (default: 0)")
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads for pruning and fine-tuning (default: 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto", help="training bars: auto = on a terminal only (default: auto)")
    args = p.parse_args(argv)
    # Explicit options win over --quick, which wins over the full-run defaults.
    defaults = QUICK if args.quick else {"epochs": 3, "train_limit": None, "val_limit": None, "test_limit": None, "trials": 9, "runs": None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- checks and setup


def check_args(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """(model names, thread counts); UserError for the first bad option."""
    from edgecompress.errors import UserError, suggest

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise UserError(f"--models {args.models!r} names no model; use e.g. {','.join(MODELS)}")
    for name in names:
        if name not in MODELS and not name.startswith(("zoo:", "torchvision:")):
            raise UserError(f"unknown model {name!r}{suggest(name, MODELS)}; use {', '.join(MODELS)} or a zoo:/torchvision: spec")
    if len(set(names)) != len(names):
        raise UserError(f"--models {args.models!r} names a model twice; list each once")
    if not 0 < args.macs < 1:
        raise UserError(f"--macs {args.macs} must be a fraction in (0, 1), e.g. 0.5 for half the MACs")
    try:
        threads = sorted({int(t) for t in args.threads.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--threads {args.threads!r} must be comma-separated integers, e.g. 1,2") from None
    if not threads or threads[0] < 1:
        raise UserError(f"--threads {args.threads!r} must list thread counts >= 1, e.g. 1,2")
    for name in ("trials", "epochs", "batch_size", "torch_threads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    for name in ("runs", "warmup", "train_limit", "val_limit", "test_limit"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise UserError(f"--{name.replace('_', '-')} {value} must be >= {0 if name == 'warmup' else 1}")
    return names, threads


def import_torch_pruning() -> Any:
    from edgecompress.errors import UserError

    try:
        import torch_pruning as tp
    except ImportError:
        raise UserError("torch-pruning is not installed; run `make install` or pip install -e '.[bench]'") from None
    installed = installed_version("torch-pruning")
    if installed != TP_VERSION:
        log(f"warning: torch-pruning {installed} is installed; this benchmark was written for {TP_VERSION}")
    return tp


def versions(tp: Any) -> dict[str, str | None]:
    import torch

    import edgecompress

    return {
        "python": platform.python_version(),
        "edgecompress": edgecompress.__version__,
        "torch": torch.__version__,
        "torchvision": installed_version("torchvision"),
        # The distribution's version: torch_pruning.__version__ of 1.6.1 still says 1.6.0.
        "torch-pruning": installed_version("torch-pruning"),
        "torch_pruning.__version__": getattr(tp, "__version__", None),
        "onnx": installed_version("onnx"),
        "onnxruntime": installed_version("onnxruntime"),
        "onnxscript": installed_version("onnxscript"),
        "litert-torch": installed_version("litert-torch"),
        "ai-edge-litert": installed_version("ai-edge-litert"),
        "numpy": installed_version("numpy"),
    }



# ---------------------------------------------------------------- pruning


def classifier(model: Any) -> Any:
    """The output layer both pruners must leave whole: the last Linear, else the last Conv2d."""
    from torch import nn

    for kind in (nn.Linear, nn.Conv2d):
        layers = [m for m in model.modules() if isinstance(m, kind)]
        if layers:
            return layers[-1]
    raise ValueError("model has no Linear or Conv2d layer to treat as its classifier")


def cost(model: Any, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(MACs, params) by edgecompress's counter, the one yardstick for every variant."""
    from edgecompress.graph.cost import analyze

    result = analyze(model, input_shape)
    return result.total_macs, result.total_params


def conv_widths(model: Any) -> dict[str, int]:
    """How many convolutions have output widths the runtimes' fast kernels dislike."""
    from torch import nn

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    step = _round_to()
    return {"convs": len(convs), "round_to": step, "convs_out_not_multiple": sum(m.out_channels % step != 0 for m in convs)}


def _round_to() -> int:
    from edgecompress.devices.local import host_round_to

    return host_round_to()


def prune_ours(dense: Any, input_shape: tuple[int, int, int], budget: float) -> tuple[Any, dict]:
    from edgecompress.prune import PruneConfig, prune_

    config = PruneConfig(target=f"macs={budget:g}", importance="l2", round_to=_round_to())
    model = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = prune_(model, config, input_shape=input_shape)
    return model, {"config": config.to_dict(), "uniform_ratio": result.setting}


def prune_tp(tp: Any, dense: Any, input_shape: tuple[int, int, int], budget: float, round_to: int | None) -> tuple[Any, dict]:
    """Torch-Pruning one-shot at the smallest uniform pruning_ratio whose MACs fit `budget`.

    Each candidate ratio prunes a fresh copy of `dense` (BasePruner, MagnitudeImportance
    p=2, classifier ignored, one step); the ratio is found on MACs from `cost` by a 0.05 scan
    and then bisection inside the first bracket that crosses the budget.
    """
    import torch

    from edgecompress.errors import UserError

    dense_macs = cost(dense, input_shape)[0]
    example = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))

    def attempt(ratio: float) -> tuple[Any, float]:
        model = copy.deepcopy(dense).eval()
        pruner = tp.pruner.BasePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=[classifier(model)], round_to=round_to,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner.step()
        return model, cost(model, input_shape)[0] / dense_macs

    # A coarse scan first, then bisection: with round_to, a layer whose kept width rounds
    # to 0 is left whole by Torch-Pruning, so MACs rise again at high ratios and the
    # largest ratio is not a safe upper bound.
    lo, hi, best = 0.0, None, None
    for ratio in TP_SCAN:
        candidate = attempt(ratio)
        if candidate[1] <= budget:
            hi, best = ratio, candidate
            break
        lo = ratio
    if hi is None or best is None:
        raise UserError(f"Torch-Pruning (round_to={round_to}) cannot reach {budget:g} of the MACs at any ratio up to "
                        f"{TP_SCAN[-1]}; raise --macs")
    for _ in range(TP_BISECT_STEPS):
        mid = (lo + hi) / 2
        candidate = attempt(mid)
        if candidate[1] <= budget:
            hi, best = mid, candidate
        else:
            lo = mid
    config = {"pruner": "tp.pruner.BasePruner", "importance": "tp.importance.MagnitudeImportance(p=2)",
              "ignored_layers": "[classifier]", "round_to": round_to, "iterative_steps": 1}
    return best[0], {"config": config, "uniform_ratio": hi}


def tp_macs(tp: Any, model: Any, input_shape: tuple[int, int, int]) -> int:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))[0])


def build_variants(tp: Any, dense: Any, input_shape: tuple[int, int, int], budget: float) -> dict[str, tuple[Any, dict]]:
    """variant -> (model, facts); pruned models are new copies, `dense` is not changed."""
    steps: dict[str, Callable[[], tuple[Any, dict]]] = {
        "ours": lambda: prune_ours(dense, input_shape, budget),
        "tp": lambda: prune_tp(tp, dense, input_shape, budget, None),
        "tp_rounded": lambda: prune_tp(tp, dense, input_shape, budget, _round_to()),
    }
    macs0, params0 = cost(dense, input_shape)
    tp0 = tp_macs(tp, dense, input_shape)
    variants = {"dense": (dense, {"config": None, "uniform_ratio": 0.0, "prune_seconds": 0.0})}
    for name, step in steps.items():
        t0 = time.perf_counter()
        model, facts = step()
        facts["prune_seconds"] = round(time.perf_counter() - t0, 2)
        variants[name] = (model, facts)
    for name, (model, facts) in variants.items():
        macs, params = cost(model, input_shape)
        facts.update(macs=macs, params=params, macs_ratio=macs / macs0, params_ratio=params / params0,
                     tp_counter_macs_ratio=tp_macs(tp, model, input_shape) / tp0, **conv_widths(model))
        if name != "dense":
            log(f"  {name:9s} MACs {facts['macs_ratio']:.3f}  params {facts['params_ratio']:.3f}  "
                f"ratio {facts['uniform_ratio']:.4f}  convs not x{facts['round_to']} {facts['convs_out_not_multiple']}/{facts['convs']}  "
                f"({facts['prune_seconds']} s)")
    return variants


# ---------------------------------------------------------------- accuracy (demo model)


def demo_data(args: argparse.Namespace, input_shape: tuple[int, int, int]) -> tuple[Any, Any, Any]:
    """(train, val, test) datasets; limited splits are stratified subsets fixed by --seed."""
    from edgecompress.data.calibration import calibration_subset
    from edgecompress.data.fashion_mnist import fashion_mnist_splits

    splits = fashion_mnist_splits(input_shape, args.data_dir, val_size=5000, seed=args.seed, augment=True)

    def limit(ds: Any, n: int | None) -> Any:
        return ds if n is None or n >= len(ds) else calibration_subset(ds, n, seed=args.seed)

    return limit(splits.train, args.train_limit), limit(splits.val, args.val_limit), limit(splits.test, args.test_limit)


def recalibrated_top1(model: Any, train_set: Any, test_loader: Any, args: argparse.Namespace) -> float:
    """Test top-1 of a copy of `model` whose BatchNorm statistics are re-estimated on
    BN_RECAL_IMAGES training images (no weight changes).

    One-shot pruning leaves every BatchNorm with the statistics of the dense layer
    before it, which alone can drop a pruned net to chance; with fresh statistics the
    number says how good the kept channels are, before any training.
    """
    import torch
    from torch import nn

    from edgecompress.data.calibration import make_loader
    from edgecompress.train import evaluate

    model = copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches seen
    loader = make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    seen = 0
    model.train()
    with torch.no_grad():
        for x, _ in loader:
            model(x)
            seen += len(x)
            if seen >= BN_RECAL_IMAGES:
                break
    model.eval()
    return evaluate(model, test_loader, progress=False).top1


def accuracy(variants: dict[str, tuple[Any, dict]], args: argparse.Namespace, input_shape: tuple[int, int, int]) -> dict:
    """Test top-1 of every variant, and of each pruned one after KD fine-tuning from dense.

    Every pruned variant is fine-tuned from the same state of the data pipeline: a new
    loader with the same seed, so all see the same batches in the same order.
    """
    from edgecompress.data.calibration import make_loader
    from edgecompress.distill import DistillConfig, finetune
    from edgecompress.train import TrainConfig, evaluate

    train_set, val_set, test_set = demo_data(args, input_shape)
    val_loader, test_loader = make_loader(val_set, 500, shuffle=False), make_loader(test_set, 500, shuffle=False)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         optimizer="sgd", schedule="cosine", momentum=0.9, nesterov=True, weight_decay=5e-4,
                         restore_best=True)
    distill = DistillConfig(temperature=4.0, alpha=0.9)
    progress = {"auto": True, "always": "always", "never": False}[args.progress]
    dense = variants["dense"][0]
    summary = {"train_config": config.to_dict(), "distill": distill.to_dict(), "train_images": len(train_set),
               "val_images": len(val_set), "test_images": len(test_set),
               "bn_recal_images": min(BN_RECAL_IMAGES, len(train_set))}
    top1 = evaluate(dense, test_loader, progress=False).top1
    variants["dense"][1]["accuracy"] = {"test_top1": top1}
    log(f"  dense     test top-1 {top1:.2%}")
    for name in PRUNED:
        model, facts = variants[name]
        before = evaluate(model, test_loader, progress=False).top1
        recal = recalibrated_top1(model, train_set, test_loader, args)
        log(f"  {name:9s} test top-1 {before:.2%} after pruning, {recal:.2%} with BN re-estimated; "
            f"fine-tuning {args.epochs} epoch(s) on {len(train_set)} images")
        train_loader = make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed)
        history = finetune(model, dense, train_loader, val_loader, config, distill=distill, progress=progress)
        model.eval()
        after = evaluate(model, test_loader, progress=False).top1
        facts["accuracy"] = {"test_top1_pruned": before, "test_top1_bn_recal": recal, "test_top1_finetuned": after,
                             "dense_test_top1": top1, "best_epoch": history.best_epoch,
                             "best_val_top1": history.best_val_top1, "finetune_seconds": round(history.seconds, 1)}
        log(f"  {name:9s} test top-1 {after:.2%} after fine-tuning (dense {top1:.2%}, {history.seconds:.0f} s)")
    return summary


# ---------------------------------------------------------------- export and latency


def export_variants(variants: dict[str, tuple[Any, dict]], input_shape: tuple[int, int, int], out_dir: Path) -> dict[str, dict[str, Path]]:
    import torch

    from edgecompress.export import export_model
    from edgecompress.fsutil import sha256_file

    example = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    paths: dict[str, dict[str, Path]] = {}
    for name, (model, facts) in variants.items():
        t0 = time.perf_counter()
        model.eval()
        results = export_model(model, example, out_dir, formats=FORMATS, basename=name)
        paths[name] = {r.format: r.path for r in results}
        facts["artifacts"] = {
            r.format: {"path": str(r.path), "size_bytes": r.size_bytes, "sha256": sha256_file(r.path),
                       "convert_seconds": round(r.seconds, 2), "parity": r.parity.to_dict()}
            for r in results
        }
        log(f"  exported {name} ({time.perf_counter() - t0:.1f} s)")
    return paths


def measure(paths: dict[str, dict[str, Path]], variants: dict[str, tuple[Any, dict]], threads: list[int],
            runs: int, warmup: int, trials: int) -> None:
    """Time every file of one model in one interleaved call; store p50s and speedups in the facts."""
    from edgecompress.devices import get_device
    from edgecompress.latency.interleave import measure_interleaved

    device = get_device("host")
    files = [paths[v][f] for v in variants for f in FORMATS]
    total = len(files) * len(threads) * trials
    done = [0]
    t0 = time.perf_counter()

    def on_trial(artifact: Path, t: int, trial: int) -> None:
        done[0] += 1
        if done[0] == 1 or done[0] % max(1, total // 10) == 0:
            log(f"  latency {done[0]}/{total}: trial {trial + 1}/{trials}, {artifact.name} at {t} thread(s) "
                f"({time.perf_counter() - t0:.0f} s)")

    results = measure_interleaved(device, files, threads, runs=runs, warmup=warmup, trials=trials, on_trial=on_trial)
    for name, (_, facts) in variants.items():
        facts["latency"], facts["speedup"] = {}, {}
        for fmt in FORMATS:
            runtime = RUNTIME_OF[fmt]
            facts["latency"][runtime], facts["speedup"][runtime] = {}, {}
            for t in threads:
                r = results[(paths[name][fmt], t)]
                dense_p50 = results[(paths["dense"][fmt], t)].p50_ms
                facts["latency"][runtime][str(t)] = {
                    "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "mean_ms": r.mean_ms, "std_ms": r.std_ms, "min_ms": r.min_ms,
                    "trial_p50s_ms": r.trial_p50s_ms, "runs": r.runs, "warmup": r.warmup, "trials": r.trials,
                    "runtime_version": r.runtime_version, "runtime_info": r.runtime_info,
                }
                facts["speedup"][runtime][str(t)] = dense_p50 / r.p50_ms


def runs_for(args: argparse.Namespace, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(runs, warmup) per trial: small inputs run fast, so they get more runs for the same time."""
    runs = args.runs if args.runs is not None else (300 if input_shape[1] * input_shape[2] <= SMALL_INPUT_PX else 100)
    warmup = args.warmup if args.warmup is not None else max(10, runs // 10)
    return runs, warmup


# ---------------------------------------------------------------- one model


def bench_model(tp: Any, name: str, args: argparse.Namespace, threads: list[int]) -> dict:
    import torch

    from edgecompress.models.loading import load_model
    from edgecompress.train import seed_everything

    spec = MODELS.get(name, name)
    log(f"{name}: loading {spec}")
    seed_everything(args.seed, deterministic=False)  # random torchvision weights are the same every run
    loaded = load_model(spec)
    dense, input_shape = loaded.model.eval(), loaded.input_shape
    if input_shape is None:
        from edgecompress.errors import UserError

        raise UserError(f"model {spec!r} does not say its input shape; use a zoo:, torchvision: or edgecompress checkpoint")
    log(f"{name}: pruning to {args.macs:g} of the MACs")
    variants = build_variants(tp, dense, input_shape, args.macs)
    shown = str(Path(spec).relative_to(REPO)) if Path(spec).is_absolute() and Path(spec).is_relative_to(REPO) else spec
    record: dict[str, Any] = {"spec": shown, "input_shape": list(input_shape)}
    if name == "demo" and not args.no_finetune:
        log(f"{name}: accuracy and KD fine-tuning")
        record["finetune"] = accuracy(variants, args, input_shape)
    log(f"{name}: exporting {len(variants)} variants to {', '.join(FORMATS)}")
    paths = export_variants(variants, input_shape, args.out / "artifacts" / name.replace(":", "_"))
    runs, warmup = runs_for(args, input_shape)
    log(f"{name}: measuring {len(variants) * len(FORMATS)} files at threads {threads}, "
        f"{args.trials} interleaved trials of {runs} runs (+{warmup} warm-up)")
    measure(paths, variants, threads, runs, warmup, args.trials)
    record["latency_settings"] = {"runs": runs, "warmup": warmup, "trials": args.trials, "threads": threads}
    record["variants"] = {v: facts for v, (_, facts) in variants.items()}
    for v in PRUNED:
        s = record["variants"][v]["speedup"]
        log(f"  {v:9s} speedup " + "  ".join(f"{rt} {t}t {s[rt][str(t)]:.2f}x" for rt in s for t in threads))
    torch.set_num_threads(args.torch_threads)  # in case a library changed it
    return record


# ---------------------------------------------------------------- report


def render_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# Structured pruning: edgecompress vs Torch-Pruning {report['versions'].get('torch-pruning')}",
        "",
        f"{report['date']} on {report['host'].get('cpu_model')} ({report['host'].get('logical_cores')} logical cores, "
        f"host id {report['host'].get('id')}); budget {s['macs']:g} of the dense MACs"
        + ("" if report["complete"] else "; **incomplete run**") + ".",
        "",
        f"`{report['command']}`",
        "",
        f"- ours: `prune_(model, PruneConfig(target='macs=…', importance='l2', round_to={_round_to()}))` "
        "(this CPU's NCHWc block: 16 with AVX-512F, 8 otherwise).",
        "- tp: Torch-Pruning `BasePruner`, `MagnitudeImportance(p=2)`, classifier ignored, one step; "
        f"tp_rounded: the same with `round_to={_round_to()}`.",
        f"- {s['budget_method']}",
        "- Latency: p50 ms of ONNX Runtime (.onnx) and LiteRT (.tflite) on this CPU, every file of a model measured "
        "in one interleaved run; (x) = dense p50 / variant p50 for the same runtime and threads.",
        "",
    ]
    for name, m in report["models"].items():
        v = m["variants"]
        ls = m["latency_settings"]
        threads = ls["threads"]
        lines += [f"## {name} (`{m['spec']}`, input {'x'.join(map(str, m['input_shape']))})", "",
                  f"{ls['trials']} trials x {ls['runs']} runs (+{ls['warmup']} warm-up) per file and thread count; "
                  f"dense: {v['dense']['macs'] / 1e6:.1f} M MACs, {v['dense']['params'] / 1e6:.2f} M params.", ""]
        has_acc = "finetune" in m
        head = ["variant", "MACs", "params", f"convs not x{_round_to()}"]
        head += [f"{'ORT' if rt == 'onnxruntime' else 'LiteRT'} {t}t" for rt in ("onnxruntime", "litert") for t in threads]
        if has_acc:
            head += ["top-1 pruned", "top-1 BN re-est.", "top-1 fine-tuned"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for variant, f in v.items():
            row = [variant, f"{f['macs_ratio']:.3f}", f"{f['params_ratio']:.3f}",
                   f"{f['convs_out_not_multiple']}/{f['convs']}"]
            for rt in ("onnxruntime", "litert"):
                for t in threads:
                    row.append(f"{f['latency'][rt][str(t)]['p50_ms']:.3f} ({f['speedup'][rt][str(t)]:.2f}x)")
            if has_acc:
                acc = f.get("accuracy", {})
                if variant == "dense":
                    row += [f"{acc['test_top1']:.2%}", "—", "—"]
                else:
                    row += [f"{acc[k]:.2%}" for k in ("test_top1_pruned", "test_top1_bn_recal", "test_top1_finetuned")]
            lines.append("| " + " | ".join(row) + " |")
        if has_acc:
            ft = m["finetune"]
            tc = ft["train_config"]
            lines += ["", f"Fine-tuning: {tc['epochs']} epoch(s) on {ft['train_images']} training images, SGD lr {tc['lr']:g} cosine, "
                      f"batch {tc['batch_size']}, seed {tc['seed']}, KD from dense (T={ft['distill']['temperature']:g}, "
                      f"alpha={ft['distill']['alpha']:g}), best of {ft['val_images']} validation images; "
                      f"top-1 on {ft['test_images']} test images. \"BN re-est.\": the pruned model with its BatchNorm "
                      f"statistics re-estimated on {ft['bn_recal_images']} training images, no training."]
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    from edgecompress.fsutil import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench_prune.json", report)
    atomic_write_text(out / "bench_prune.md", render_markdown(report))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "tools/bench_prune.py", *(sys.argv[1:] if argv is None else argv)])
    from edgecompress.errors import UserError

    try:
        names, threads = check_args(args)
        import torch

        from edgecompress.devices.local import host_fingerprint

        torch.set_num_threads(args.torch_threads)
        tp = import_torch_pruning()
        report: dict[str, Any] = {
            "tool": "tools/bench_prune.py",
            "complete": False,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "settings": {
                "models": names, "macs": args.macs, "threads": threads, "trials": args.trials, "runs": args.runs,
                "warmup": args.warmup, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                "train_limit": args.train_limit, "val_limit": args.val_limit, "test_limit": args.test_limit,
                "finetune": not args.no_finetune, "seed": args.seed, "torch_threads": args.torch_threads, "quick": args.quick,
                "budget_method": (
                    "Budget: for both pruners, bisection on one uniform pruning ratio, every candidate counted by "
                    "edgecompress.graph.cost.analyze; the smallest ratio with MACs <= budget is kept (Torch-Pruning: a scan "
                    f"of ratios in steps of 0.05, then {TP_BISECT_STEPS} bisection steps inside the first bracket that "
                    "crosses the budget, each candidate a fresh one-step prune of the dense model; Torch-Pruning's own "
                    "count_ops_and_params ratio is in tp_counter_macs_ratio)."
                ),
            },
            "versions": versions(tp),
            "host": host_fingerprint(),
            "models": {},
        }
        t0 = time.perf_counter()
        for name in names:
            report["models"][name] = bench_model(tp, name, args, threads)
            report["complete"] = name == names[-1]
            report["seconds"] = round(time.perf_counter() - t0, 1)
            write_report(report, args.out)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log(f"wrote {args.out / 'bench_prune.json'} and {args.out / 'bench_prune.md'} ({report['seconds']:.0f} s)")
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
