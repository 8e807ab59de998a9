#!/usr/bin/env python
"""Latency predictor fidelity: predicted vs measured p50 of pruned models on this host.

1. Profiles a per-op latency table (LUT) of the host (ONNX Runtime, 1 thread by
   default) over a grid (`cifar`: 2-32 px maps, as the zoo models see 32 px inputs).
2. Builds pruned variants of several zoo architectures: a FIT set (uniform ratios 0.05,
   0.25, 0.45, 0.65 and 2 random per-group variants) and a disjoint TEST set (uniform
   ratios 0.1 ... 0.7 and 5 random per-group variants), channel counts rounded to the
   device's multiple (`round_to`). A variant whose layer shapes equal an earlier one's
   (ratios that round to the same widths) is dropped, so no TEST model is a FIT model.
3. Measures every model's p50 on the host (export to ONNX, fresh processes).
4. Fits the predictor's correction and a MACs-proportional baseline (ms = k * MACs) on
   the FIT set only, and reports on the TEST set: share of predictions within +-10% of
   the measured p50, RMSE (ms), MAPE, per model and in total.

Writes OUT/report.json, OUT/report.md (with versions, threads and the host
fingerprint), OUT/lut.json and OUT/predictor.json. Everything measured is kept as it
comes (OUT/lut.json every 20 blocks, OUT/models.json after every model), so
`--resume` continues an interrupted run and only refits and rewrites the report.

    nice .venv/bin/python tools/bench_latency_predictor.py                # ~20 min on 2 cores
    .venv/bin/python tools/bench_latency_predictor.py --resume            # after Ctrl-C
    .venv/bin/python tools/bench_latency_predictor.py --archs resnet20 --grid small --test-ratios 0.3 \\
        --fit-ratios 0.2,0.6 --random-per-arch 0 --runs 10 --trials 1     # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "out" / "bench_latency_predictor"
# shufflenet_v1 is left out: its grouped convs and shuffles tie all channels into one
# group, so it has nothing to prune (every "pruned" variant would be the dense model).
DEFAULT_ARCHS = "mobilenet_v1,mobilenet_v2,resnet20,resnet56,shufflenet_v2,squeezenet"
VERSION_DISTS = ("edgecompress", "torch", "onnx", "onnxruntime", "ai-edge-litert", "litert-torch", "numpy")
WITHIN = 0.10  # the +-10% band of the headline figure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder [%(default)s]")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (keep what it measured)")
    p.add_argument("--archs", default=DEFAULT_ARCHS, help="comma-separated zoo architectures [%(default)s]")
    p.add_argument("--input-size", type=int, default=32, help="input H = W in px [%(default)s]")
    p.add_argument("--in-channels", type=int, default=3, help="input channels [%(default)s]")
    p.add_argument("--fit-ratios", default="0.05,0.25,0.45,0.65", help="uniform ratios of the FIT set [%(default)s]")
    p.add_argument("--test-ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7",
                   help="uniform ratios of the TEST set [%(default)s]")
    p.add_argument("--random-per-arch", type=int, default=5,
                   help="TEST models per architecture with random per-group ratios [%(default)s]")
    p.add_argument("--random-fit-per-arch", type=int, default=2,
                   help="FIT models per architecture with random per-group ratios [%(default)s]")
    p.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "litert"), help="[%(default)s]")
    p.add_argument("--threads", type=int, default=1, help="runtime threads [%(default)s]")
    p.add_argument("--grid", default="cifar", help="LUT grid: small, default, cifar or a .json/.yaml file [%(default)s]")
    p.add_argument("--lut-runs", type=int, default=30, help="timed runs per LUT block [%(default)s]")
    p.add_argument("--lut-trials", type=int, default=1, help="trials per LUT block [%(default)s]")
    p.add_argument("--runs", type=int, default=50, help="timed runs per trial of a whole model [%(default)s]")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per trial [%(default)s]")
    p.add_argument("--trials", type=int, default=5, help="trials (fresh processes) per whole model [%(default)s]")
    p.add_argument("--round-to", default="auto", help="channel multiple of pruned widths; auto = the device's")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and random ratios [%(default)s]")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto", help="progress bars")
    return p.parse_args(argv)


def floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if any(not 0 <= v < 1 for v in values):
        raise SystemExit(f"--{what} ratios must be in [0, 1), got {text!r}")
    return values


def versions() -> dict[str, str | None]:
    from edgecompress.versions import installed_versions

    return {"python": platform.python_version(), **installed_versions(VERSION_DISTS)}


# -- the models ---------------------------------------------------------------------------


def model_specs(args: argparse.Namespace) -> list[dict]:
    """Every model of the run: id, arch, split (fit/test), ratio or per-group seed.

    All FIT models come first, so that a TEST model whose channel counts equal a FIT
    model's is the one dropped as a duplicate.
    """
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    fit, test = [], []
    for arch in archs:
        for r in floats(args.fit_ratios, "fit-ratios"):
            fit.append({"id": f"{arch}-fit-r{r:g}", "arch": arch, "split": "fit", "ratio": r})
        for i in range(args.random_fit_per_arch):
            fit.append({"id": f"{arch}-fit-random{i}", "arch": arch, "split": "fit", "ratio": None,
                        "random": f"fit{i}"})
        for r in floats(args.test_ratios, "test-ratios"):
            test.append({"id": f"{arch}-test-r{r:g}", "arch": arch, "split": "test", "ratio": r})
        for i in range(args.random_per_arch):
            test.append({"id": f"{arch}-test-random{i}", "arch": arch, "split": "test", "ratio": None,
                         "random": f"test{i}"})
    return fit + test


def build_model(spec: dict, args: argparse.Namespace, round_to: int):
    """The pruned model of `spec` (deterministic) and a text describing its pruning, or
    (None, why) when the architecture has no prunable group."""
    import torch

    from edgecompress.graph.groups import build_groups
    from edgecompress.models import create_model
    from edgecompress.prune.structured import PruneConfig, prune_

    shape = (args.in_channels, args.input_size, args.input_size)
    torch.manual_seed(args.seed)
    model = create_model(spec["arch"], num_classes=10, in_channels=args.in_channels, input_size=args.input_size).eval()
    producers = [g.producers[0] for g in build_groups(model, shape) if g.prunable and g.producers]
    if not producers:
        return None, "no prunable channel group"
    if spec["ratio"] is not None:
        if spec["ratio"] > 0:
            prune_(model, PruneConfig(ratio=spec["ratio"], round_to=round_to), input_shape=shape)
        return model, f"uniform {spec['ratio']:g}"
    rng = random.Random(f"{args.seed}-{spec['arch']}-{spec['random']}")
    overrides = {f"^{re.escape(name)}$": round(rng.uniform(0.0, 0.75), 2) for name in producers}
    prune_(model, PruneConfig(overrides=overrides, round_to=round_to), input_shape=shape)
    ratios = list(overrides.values())
    return model, f"random per-group ({min(ratios):.2f}-{max(ratios):.2f})"


def arch_key(model) -> str:
    """Identifies a model's layer shapes: two pruned models with equal keys are the same network."""
    import hashlib

    shapes = [(name, tuple(p.shape)) for name, p in model.state_dict().items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


def measure_models(specs: list[dict], args: argparse.Namespace, device, lut, round_to: int, store: Path,
                   show: bool) -> dict[str, dict]:
    """Measured p50, MACs and table sums of every spec; kept in `store` after each model.

    A model whose layer shapes equal an earlier spec's (e.g. two ratios rounding to the
    same widths) is recorded as `duplicate_of` that spec and not measured; an
    architecture without prunable groups is recorded as `skipped`.
    """
    import torch

    from edgecompress.fsutil import atomic_write_json
    from edgecompress.latency.predictor import FEATURES, GROUPS, decompose, group_sums
    from edgecompress.latency.source import MeasuredLatency, model_macs

    done: dict[str, dict] = json.loads(store.read_text()) if store.exists() else {}
    source = MeasuredLatency(device, args.runtime, args.threads, runs=args.runs, warmup=args.warmup,
                             trials=args.trials)
    shape = (args.in_channels, args.input_size, args.input_size)
    seen: dict[str, str] = {}
    todo = [s for s in specs if s["id"] not in done]
    bar = _bar(show, len(todo), "measuring models")
    try:
        for spec in specs:
            rec = done.get(spec["id"])
            if rec is not None:
                if "arch_key" in rec and "duplicate_of" not in rec:
                    seen.setdefault(rec["arch_key"], spec["id"])
                continue
            if bar is not None:
                bar[0].update(bar[1], item=spec["id"])
            torch.set_num_threads(1)
            model, how = build_model(spec, args, round_to)
            if model is None:
                done[spec["id"]] = {**spec, "pruning": how, "skipped": how}
            elif arch_key(model) in seen:
                done[spec["id"]] = {**spec, "pruning": how, "arch_key": arch_key(model),
                                    "duplicate_of": seen[arch_key(model)]}
            else:
                key = arch_key(model)
                seen[key] = spec["id"]
                dec = decompose(model, shape, args.runtime, args.threads)
                p50 = source.latency_ms(model, shape)
                result = source.last_result
                done[spec["id"]] = {
                    **spec, "pruning": how, "arch_key": key, "macs": model_macs(model, shape),
                    "params": sum(p.numel() for p in model.parameters()),
                    "measured_ms": p50, "measured_p90_ms": result.p90_ms, "trial_p50s_ms": result.trial_p50s_ms,
                    "kernels": len(dec.kernels), "unknown_nodes": list(dec.unknown),
                    "table": group_sums(lut, dec), "lut_entries": len(lut),
                }
            atomic_write_json(store, done)
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    # A table that grew since (resume), or sums of an older layout: recompute from the current table.
    expected = {*GROUPS, *FEATURES, "total"}
    for spec in specs:
        rec = done[spec["id"]]
        if "measured_ms" in rec and (rec.get("table", {}).keys() != expected or rec.get("lut_entries") != len(lut)):
            torch.set_num_threads(1)
            model, _ = build_model(spec, args, round_to)
            rec["table"] = group_sums(lut, decompose(model, shape, args.runtime, args.threads))
            rec["lut_entries"] = len(lut)
    atomic_write_json(store, done)
    return {s["id"]: done[s["id"]] for s in specs}


def _bar(show: bool, total: int, title: str):
    if not show or total == 0:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[item]}"))
    progress.start()
    return progress, progress.add_task(title, total=total, item="")


# -- scoring ------------------------------------------------------------------------------


def metrics(measured: list[float], predicted: list[float]) -> dict[str, float]:
    """within10 (share of |err| <= 10%), rmse_ms, mape (%), max_abs_err (%) and bias (mean signed %)."""
    errs = [(p - m) / m for m, p in zip(measured, predicted)]
    n = len(errs)
    return {
        "n": n,
        "within10": sum(abs(e) <= WITHIN + 1e-12 for e in errs) / n,
        "rmse_ms": math.sqrt(sum((p - m) ** 2 for m, p in zip(measured, predicted)) / n),
        "mape": 100 * sum(abs(e) for e in errs) / n,
        "max_abs_err": 100 * max(abs(e) for e in errs),
        "bias": 100 * sum(errs) / n,
    }


def evaluate(records: dict[str, dict], lut) -> tuple[dict, list[dict], Any]:
    from edgecompress.errors import UserError
    from edgecompress.latency.predictor import Correction, LatencyPredictor, fit_correction
    from edgecompress.latency.source import MacsLatency

    measured = [r for r in records.values() if "measured_ms" in r]
    fit = [r for r in measured if r["split"] == "fit"]
    test = [r for r in measured if r["split"] == "test"]
    if len(fit) < 2 or not test:
        raise UserError(f"{len(fit)} distinct FIT and {len(test)} distinct TEST models were measured; "
                        "add ratios, random variants or architectures")
    y_fit = [r["measured_ms"] for r in fit]
    auto = fit_correction([r["table"] for r in fit], y_fit, "auto")
    linear = fit_correction([r["table"] for r in fit], y_fit, "linear")
    macs = MacsLatency.fit([r["macs"] for r in fit], y_fit)
    methods = {
        "predictor": auto.apply,
        "predictor_linear": linear.apply,
        "lut_sum": lambda s: s["total"],
        "macs_baseline": None,
    }
    rows = []
    for r in test:
        row = {k: r[k] for k in ("id", "arch", "pruning", "macs", "params", "kernels", "measured_ms")}
        for name, fn in methods.items():
            row[f"{name}_ms"] = macs.ms_per_mac * r["macs"] if fn is None else max(0.0, fn(r["table"]))
            row[f"{name}_err"] = (row[f"{name}_ms"] - r["measured_ms"]) / r["measured_ms"]
        rows.append(row)
    measured = [r["measured_ms"] for r in rows]
    summary = {name: metrics(measured, [r[f"{name}_ms"] for r in rows]) for name in methods}
    per_arch = {}
    for arch in sorted({r["arch"] for r in rows}):
        sub = [r for r in rows if r["arch"] == arch]
        per_arch[arch] = {name: metrics([r["measured_ms"] for r in sub], [r[f"{name}_ms"] for r in sub])
                          for name in ("predictor", "macs_baseline")}
    fit_rows = [max(0.0, auto.apply(r["table"])) for r in fit]
    fitted = {
        "correction": auto.to_dict(), "correction_linear": linear.to_dict(), "ms_per_mac": macs.ms_per_mac,
        "fit_models": [r["id"] for r in fit], "fit_metrics": metrics(y_fit, fit_rows),
    }
    predictor = LatencyPredictor(lut, Correction.from_dict(auto.to_dict()))
    return {"summary": summary, "per_arch": per_arch, "fitted": fitted}, rows, predictor


# -- report ---------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    s, m = report["settings"], report["results"]["summary"]
    fp = report["host"]
    lines = [
        "# Latency predictor fidelity (host)",
        "",
        f"Measured {report['finished']} on `{fp.get('cpu_model')}` (fingerprint `{fp.get('id')}`, "
        f"{fp.get('logical_cores')} logical cores, flags {', '.join(fp.get('cpu_flags', []))}); "
        f"{s['runtime']} {report['runtime_version']}, {s['threads']} thread(s). "
        f"Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + ".",
        "",
        f"Per-op table: grid `{s['grid']}`, {report['lut']['entries']} blocks ({s['lut_runs']} runs x "
        f"{s['lut_trials']} trial per block, per-invoke overhead subtracted). Whole models: {s['runs']} runs x "
        f"{s['trials']} trials, p50. Inputs {s['in_channels']}x{s['input_size']}x{s['input_size']}, "
        f"pruned widths rounded to multiples of {s['round_to']}. The correction and the MACs baseline were "
        f"fitted on {len(report['results']['fitted']['fit_models'])} FIT models; every figure below is on "
        f"{m['predictor']['n']} TEST models none of them was fitted on ({len(report['not_measured'])} variants "
        f"whose channel counts equalled an earlier model's, or with nothing to prune, were dropped).",
        "",
        "| method | within ±10% | RMSE (ms) | MAPE | max abs err | mean signed err |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    chosen = report["results"]["fitted"]["correction"]["mode"]
    titles = {"predictor": f"LUT + correction ({chosen}, chosen by leave-one-out on the FIT set): the predictor",
              "predictor_linear": "LUT + linear correction",
              "lut_sum": "LUT sum, uncorrected", "macs_baseline": "MACs-proportional baseline (k x MACs)"}
    for name, title in titles.items():
        x = m[name]
        lines.append(f"| {title} | {100 * x['within10']:.1f}% | {x['rmse_ms']:.4f} | {x['mape']:.1f}% | "
                     f"{x['max_abs_err']:.1f}% | {x['bias']:+.1f}% |")
    lines += ["", "Per architecture (TEST models):", "",
              "| arch | models | predictor within ±10% | predictor MAPE | baseline within ±10% | baseline MAPE |",
              "|---|---:|---:|---:|---:|---:|"]
    for arch, x in report["results"]["per_arch"].items():
        p, b = x["predictor"], x["macs_baseline"]
        lines.append(f"| {arch} | {p['n']} | {100 * p['within10']:.0f}% | {p['mape']:.1f}% | "
                     f"{100 * b['within10']:.0f}% | {b['mape']:.1f}% |")
    c = report["results"]["fitted"]["correction"]
    scales = ", ".join(f"{g} {v:.2f}" for g, v in c["scales"].items())
    cv = ", ".join(f"{m} {v:.1f}%" for m, v in c.get("cv_mape", {}).items())
    units = {"kernels": "µs per kernel", "mb": "µs per MB moved", "conv_kernels": "µs per conv kernel",
             "conv_act_mb": "µs per MB of conv activations", "weight_mb": "µs per MB of weights"}
    offsets = "".join(f"{1000 * v:+.2f} {units.get(f, f)}; " for f, v in c["offsets"].items())
    lines += ["", f"Fitted correction ({c['mode']}; leave-one-out MAPE on the FIT set: {cv or 'n/a'}): scales "
              f"{scales}; {offsets}intercept {1000 * c['intercept_ms']:+.1f} µs. Baseline: "
              f"{report['results']['fitted']['ms_per_mac'] * 1e9:.3f} ms per GMAC.", "",
              "| model | arch | pruning | MACs (M) | measured p50 (ms) | predicted (ms) | error | baseline (ms) "
              "| baseline error |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["models"]:
        lines.append(f"| {r['id']} | {r['arch']} | {r['pruning']} | {r['macs'] / 1e6:.2f} | {r['measured_ms']:.4f} | "
                     f"{r['predictor_ms']:.4f} | {100 * r['predictor_err']:+.1f}% | {r['macs_baseline_ms']:.4f} | "
                     f"{100 * r['macs_baseline_err']:+.1f}% |")
    lines += ["", f"This invocation took {report['seconds'] / 60:.1f} min ({report['lut_seconds'] / 60:.1f} min of it "
              f"profiling; a resumed run only profiles and measures what is missing). Reproduce: "
              f"`{report['command']}`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    import torch

    from edgecompress.devices import LocalDevice
    from edgecompress.errors import UserError
    from edgecompress.fsutil import atomic_write_json, atomic_write_text
    from edgecompress.latency.lut import load_grid, profile_lut

    torch.set_num_threads(1)
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.resume:
        print(f"{out} already holds a run; pass --resume to continue it or choose another --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    specs = model_specs(args)
    if not any(s["split"] == "fit" for s in specs) or not any(s["split"] == "test" for s in specs):
        print("need at least one FIT ratio and one TEST model", file=sys.stderr)
        return 2
    try:
        device = LocalDevice()
        round_to = device.round_to() if args.round_to == "auto" else int(args.round_to)
        grid = load_grid(args.grid)
        lut = profile_lut(device, grid, runtime=args.runtime, threads=args.threads, runs=args.lut_runs,
                          warmup=5, trials=args.lut_trials, out=out / "lut.json", resume=True, progress=show)
        lut_seconds = time.time() - start
        records = measure_models(specs, args, device, lut, round_to, out / "models.json", show)
        results, rows, predictor = evaluate(records, lut)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predictor.save(out / "predictor.json")
    report = {
        "schema": "edgecompress.bench-latency-predictor/1",
        "finished": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.time() - start,
        "lut_seconds": lut_seconds,
        "command": " ".join(["python", "tools/bench_latency_predictor.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "round_to": round_to, "grid": grid.name},
        "host": device.fingerprint(),
        "runtime_version": lut.runtime_version,
        "versions": versions(),
        "lut": {"entries": len(lut), "grid": grid.name, "overheads_ms": lut.overheads},
        "results": results,
        "models": rows,
        "fit_models": [r for r in records.values() if r["split"] == "fit" and "measured_ms" in r],
        "not_measured": {k: r.get("duplicate_of") or r.get("skipped") for k, r in records.items()
                         if "measured_ms" not in r},
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    s = results["summary"]
    print(f"{s['predictor']['n']} test models: predictor {100 * s['predictor']['within10']:.1f}% within ±10% "
          f"(MAPE {s['predictor']['mape']:.1f}%, RMSE {s['predictor']['rmse_ms']:.4f} ms); MACs baseline "
          f"{100 * s['macs_baseline']['within10']:.1f}% (MAPE {s['macs_baseline']['mape']:.1f}%). "
          f"Report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
