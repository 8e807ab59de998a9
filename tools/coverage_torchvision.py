#!/usr/bin/env python
"""Pruning coverage sweep: every torchvision classification model, ours vs Torch-Pruning.

For each (model, lib) one fresh worker process builds the model (random weights, its
default input size), removes 30% of the channels of every prunable group, checks the
forward pass (same output shape), measures the MACs cut, exports each format and runs
the file in ONNX Runtime / LiteRT against PyTorch (parity). Every stage is recorded
as ok | fail | timeout | skipped with the first line of its error and its time (s).

Results go to OUT/coverage.json (records + versions + host), OUT/coverage.csv and
OUT/coverage.md, rewritten atomically after every (model, lib), so an interrupted
sweep keeps what it did; `--resume` runs only the pairs coverage.json lacks.

    .venv/bin/python tools/coverage_torchvision.py                      # all 80, ~hours
    .venv/bin/python tools/coverage_torchvision.py --models resnet18,mobilenet_v2 --libs ours
    .venv/bin/python tools/coverage_torchvision.py --resume             # after Ctrl-C
    .venv/bin/python tools/coverage_torchvision.py --resume --retry-timeouts --timeout 900

Torch-Pruning (pip install torch-pruning; the `bench` extra) is called only from here,
through its documented generic API: BasePruner + MagnitudeImportance(p=2), the final
classifier(s) ignored. It gets no per-model hints, and neither does our pruner.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "out" / "coverage"
LIBS = ("ours", "tp")
LIB_TITLES = {"ours": "edgecompress", "tp": "Torch-Pruning"}
EXPORT_FORMATS = ("onnx", "tflite")
FORMAT_TITLES = {"onnx": "ONNX", "tflite": "TFLite"}
MARK = "@@coverage "  # prefixes the worker's JSON lines: libraries print to stdout too
VERSION_DISTS = ("torch", "torchvision", "torch-pruning", "onnxruntime", "ai-edge-litert", "litert-torch")
ERROR_CHARS = 300


def stages_for(formats: list[str] | tuple[str, ...]) -> list[str]:
    """Stage names in the order a worker runs them."""
    return ["build", "prune", "forward", "macs", *formats]


def first_line(exc: BaseException | str) -> str:
    """'TypeName: first line of the message', at most ERROR_CHARS characters."""
    if isinstance(exc, BaseException):
        text = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    else:
        text = exc.strip().splitlines()[0] if exc.strip() else ""
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


# --------------------------------------------------------------------------- worker


def _classifier_layers(model, num_classes: int) -> list:
    """Linear/Conv layers whose output width is the class count (main and aux heads)."""
    from torch import nn

    found = []
    for module in model.modules():
        width = module.out_features if isinstance(module, nn.Linear) else (
            module.out_channels if isinstance(module, nn.Conv2d) else None)
        if width == num_classes:
            found.append(module)
    return found


def _prune_ours(model, input_shape: tuple[int, int, int], ratio: float) -> dict:
    from edgecompress.prune.structured import PruneConfig, prune_

    result = prune_(model, PruneConfig(ratio=ratio, round_to=1, min_channels=1), input_shape=input_shape)
    cut = [g for g in result.groups if g.units_after < g.units_before]
    reasons = Counter(first_line(g.why_whole) for g in result.groups if g.units_after >= g.units_before)
    return {
        "groups_total": len(result.groups),
        "groups_cut": len(cut),
        "groups_whole": len(result.groups) - len(cut),
        "whole_reasons": dict(reasons.most_common(5)),
        "prune_warnings": [first_line(w) for w in result.warnings[:5]],
    }


def _prune_tp(model, input_shape: tuple[int, int, int], ratio: float, num_classes: int) -> dict:
    import torch
    import torch_pruning as tp

    example = torch.randn(1, *input_shape)
    ignored = _classifier_layers(model, num_classes)
    pruner = tp.pruner.BasePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=ignored,
    )
    pruner.step()
    return {"ignored_layers": len(ignored)}


def run_worker(model_name: str, lib: str, formats: list[str], ratio: float, work_dir: Path,
               parity_samples: int = 4, emit=None) -> dict:
    """Run every stage for one (model, lib) in this process and return the record.

    `emit(record)` is called after each stage (the subprocess prints it), so a parent
    that kills a worker on timeout knows which stage was running.
    """
    import warnings

    import torch

    from edgecompress.export import ParityWarning, export_model
    from edgecompress.graph.cost import analyze
    from edgecompress.models.loading import load_model

    emit = emit or (lambda record: None)
    record: dict = {"model": model_name, "lib": lib, "stages": {}}
    order = stages_for(formats)
    start_all = time.perf_counter()

    def stage(name: str, fn) -> bool:
        start = time.perf_counter()
        try:
            error = fn()
        except Exception as exc:  # noqa: BLE001 - every failure is a result of the sweep
            error = first_line(exc)
            record.setdefault("tracebacks", {})[name] = traceback.format_exc(limit=-3)[-2000:]
        entry = {"status": "fail" if error else "ok", "seconds": round(time.perf_counter() - start, 3)}
        if error:
            entry["error"] = error
        record["stages"][name] = entry
        emit(record)
        return not error

    state: dict = {}
    generator = torch.Generator().manual_seed(0)

    def build():
        loaded = load_model(f"torchvision:{model_name}")
        state["model"], state["shape"] = loaded.model.eval(), tuple(loaded.input_shape)
        record["input_shape"] = list(state["shape"])
        state["x"] = torch.randn((1, *state["shape"]), generator=generator)
        with torch.no_grad():
            state["y"] = state["model"](state["x"])
        base = analyze(state["model"], state["shape"])
        record["macs_before"], record["params_before"] = int(base.total_macs), int(base.total_params)

    def prune():
        if lib == "ours":
            record.update(_prune_ours(state["model"], state["shape"], ratio))
        else:
            record.update(_prune_tp(state["model"], state["shape"], ratio, state["y"].shape[-1]))
        state["model"].eval()

    def forward():
        with torch.no_grad():
            y = state["model"](state["x"])
        if tuple(y.shape) != tuple(state["y"].shape):
            return f"output shape changed: {tuple(state['y'].shape)} -> {tuple(y.shape)}"
        if not torch.isfinite(y).all():
            return "output has NaN or inf"
        return None

    def macs():
        after = analyze(state["model"], state["shape"])
        record["macs_after"], record["params_after"] = int(after.total_macs), int(after.total_params)
        record["macs_ratio"] = round(after.total_macs / record["macs_before"], 4) if record["macs_before"] else None
        record["params_ratio"] = round(after.total_params / record["params_before"], 4) if record["params_before"] else None
        if not after.total_macs < record["macs_before"]:
            return f"MACs not reduced: {record['macs_before']} -> {after.total_macs}"
        return None

    def export(fmt: str):
        parity_inputs = torch.randn((parity_samples, *state["shape"]), generator=torch.Generator().manual_seed(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ParityWarning)
            [result] = export_model(state["model"], state["x"], work_dir, formats=(fmt,),
                                    basename=f"{model_name}-{lib}", allow_mismatch=True, parity_inputs=parity_inputs)
        parity = result.parity
        record.setdefault("exports", {})[fmt] = {
            "size_bytes": result.size_bytes, "convert_seconds": round(result.seconds, 3), "runtime": parity.runtime,
            "max_abs_diff": parity.max_abs_diff, "tolerance": parity.tolerance,
            "top1_agreement": parity.top1_agreement, "parity_passed": parity.passed,
        }
        result.path.unlink(missing_ok=True)  # only the verdict is kept; 80 models x 2 libs of files is GBs
        return None if parity.passed else first_line(parity.summary())

    ok = stage("build", build) and stage("prune", prune)
    # MACs are counted on a forward pass, so they follow the forward check; exports need
    # only a model that runs, so a MACs "fail" (nothing cut) still exports.
    ran = ok and stage("forward", forward)
    if ran:
        stage("macs", macs)
        for fmt in formats:
            stage(fmt, lambda fmt=fmt: export(fmt))
    for name in order:
        record["stages"].setdefault(name, {"status": "skipped"})
    record["stages"] = {name: record["stages"][name] for name in order}
    record["worker_seconds"] = round(time.perf_counter() - start_all, 3)
    record["done"] = True
    emit(record)
    return record


def worker_main(args: argparse.Namespace) -> int:
    import resource

    import torch

    torch.set_num_threads(args.threads)

    def emit(record: dict) -> None:
        record["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(MARK + json.dumps(record, default=str), flush=True)

    run_worker(args.worker, args.libs, args.formats.split(","), args.ratio, Path(args.work_dir),
               args.parity_samples, emit)
    return 0


# --------------------------------------------------------------------------- parent


def close_record(partial: dict | None, model: str, lib: str, formats: list[str], status: str,
                 error: str) -> dict:
    """Finish the record of a worker that did not finish: the stage it was in gets
    `status` ("timeout" or "fail") with `error`, the stages after it "skipped"."""
    record = dict(partial or {"model": model, "lib": lib})
    stages = dict(record.get("stages") or {})
    hit = False
    for name in stages_for(formats):
        if name in stages:
            continue
        stages[name] = {"status": "skipped"} if hit else {"status": status, "error": error}
        hit = True
    if not hit:  # every stage had reported; the worker died while tidying up
        record.setdefault("note", error)
    record["stages"] = {name: stages[name] for name in stages_for(formats)}
    record["done"] = True
    return record


def _last_record(stdout: str) -> dict | None:
    record = None
    for line in stdout.splitlines():
        if line.startswith(MARK):
            try:
                record = json.loads(line[len(MARK):])
            except json.JSONDecodeError:
                pass  # a line cut short by a kill
    return record


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-1500:]


def run_pair(model: str, lib: str, formats: list[str], *, ratio: float, timeout: float, threads: int,
             parity_samples: int, work_root: Path) -> dict:
    """Run one (model, lib) in a fresh Python process, killed (with its children) after `timeout` s."""
    work_dir = work_root / f"{model}-{lib}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", model, "--libs", lib,
            "--formats", ",".join(formats), "--ratio", str(ratio), "--threads", str(threads),
            "--parity-samples", str(parity_samples), "--work-dir", str(work_dir)]
    thread_vars = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    env = {**os.environ, **dict.fromkeys(thread_vars, str(threads)), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out_path, err_path = work_root / f"{model}-{lib}.stdout", work_root / f"{model}-{lib}.stderr"
    start = time.perf_counter()
    status = error = None
    with open(out_path, "w+") as out, open(err_path, "w+") as err:
        # Own session: a timeout kills the worker's children too, and Ctrl-C reaches only us.
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                cwd=REPO, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status, error = "timeout", f"worker killed after {timeout:g} s"
            returncode = None
        finally:
            if proc.poll() is None or status == "timeout":
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    seconds = round(time.perf_counter() - start, 3)
    record = _last_record(stdout)
    if status is None and (returncode != 0 or record is None or not record.get("done")):
        how = f"signal {-returncode}" if returncode is not None and returncode < 0 else f"exit code {returncode}"
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        status, error = "fail", first_line(f"worker died: {how}{hint}; {first_line(_tail(stderr, 1)) or 'no stderr'}")
    if status is not None:
        record = close_record(record, model, lib, formats, status, error)
        record["stderr_tail"] = _tail(stderr)
    record["seconds"] = seconds
    shutil.rmtree(work_dir, ignore_errors=True)
    for path in (out_path, err_path):
        path.unlink(missing_ok=True)
    return record


def versions() -> dict:
    from edgecompress.versions import installed_versions

    return installed_versions(VERSION_DISTS)


def environment(threads: int, timeout: float) -> dict:
    from edgecompress.devices.local import host_fingerprint

    host = host_fingerprint()
    return {
        "versions": versions(),
        "python": host["python"],
        "host_cpu": host["cpu_model"],
        "cpu_flags": host["cpu_flags"],
        "cpus_available": host["cpus_available"],
        "threads": threads,
        "timeout_s": timeout,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def ok(record: dict, stage: str) -> bool:
    return record.get("stages", {}).get(stage, {}).get("status") == "ok"


def totals(records: list[dict], libs: list[str], formats: list[str]) -> list[dict]:
    """Per lib: models tried, pruned (step ran and MACs dropped), + forward ok, + each format ok."""
    rows = []
    for lib in libs:
        mine = [r for r in records if r["lib"] == lib]
        pruned = [r for r in mine if ok(r, "prune") and ok(r, "macs")]
        ran = [r for r in pruned if ok(r, "forward")]
        row = {"lib": lib, "models": len(mine), "pruned": len(pruned), "ran": len(ran)}
        for fmt in formats:
            row[fmt] = sum(ok(r, fmt) for r in ran)
        row["all_formats"] = sum(all(ok(r, f) for f in formats) for r in ran)
        ratios = sorted(r["macs_ratio"] for r in pruned if r.get("macs_ratio") is not None)
        row["median_macs_ratio"] = ratios[len(ratios) // 2] if ratios else None
        rows.append(row)
    return rows


CSV_FIELDS = ["model", "lib", "input_shape", "build", "prune", "forward", "macs", "onnx", "tflite",
              "macs_before", "macs_after", "macs_ratio", "params_before", "params_after", "params_ratio",
              "groups_cut", "groups_whole", "onnx_max_abs_diff", "tflite_max_abs_diff", "seconds",
              "max_rss_mb", "error_stage", "error"]


def render_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        stages = r.get("stages", {})
        failed = next(((n, s) for n, s in stages.items() if s.get("status") in ("fail", "timeout")), (None, {}))
        row = {k: r.get(k, "") for k in CSV_FIELDS}
        row["input_shape"] = "x".join(map(str, r.get("input_shape") or []))
        for name in ("build", "prune", "forward", "macs", *EXPORT_FORMATS):
            row[name] = stages.get(name, {}).get("status", "")
        for fmt in EXPORT_FORMATS:
            row[f"{fmt}_max_abs_diff"] = r.get("exports", {}).get(fmt, {}).get("max_abs_diff", "")
        row["error_stage"], row["error"] = failed[0] or "", failed[1].get("error", "")
        writer.writerow(row)
    return buf.getvalue()


CELL = {"ok": "ok", "fail": "**fail**", "timeout": "*timeout*", "skipped": "–"}


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_md(doc: dict) -> str:
    settings, env, records = doc["settings"], doc["environment"], doc["records"]
    libs, formats = [lib for lib in LIBS if any(r["lib"] == lib for r in records)], settings["formats"]
    v = env["versions"]
    lines = [
        "# Pruning coverage: torchvision classification models",
        "",
        f"Each model pruned by {', '.join(LIB_TITLES[lib] for lib in libs) or 'no library yet'}: "
        f"{settings['ratio']:.0%} of the channels of every prunable group removed (no rounding), "
        "then a forward pass (output shape unchanged), the MACs cut, and each export run in its runtime "
        "against PyTorch (ONNX: ONNX Runtime; TFLite: LiteRT).",
        "",
        "**Figures are from random weights (`weights=None`) at each model's default input size** "
        "(e.g. 3x224x224): they say whether pruning and export work, not what accuracy survives.",
        "",
        f"- date {env['date']}; host {env['host_cpu']}; {env['threads']} thread(s) per worker; "
        f"timeout {env['timeout_s']:g} s per model per library",
        "- versions: " + ", ".join(f"{k} {v[k]}" for k in VERSION_DISTS),
        "- Torch-Pruning: `BasePruner` with `MagnitudeImportance(p=2)`, `pruning_ratio="
        f"{settings['ratio']}`, the final classifier(s) ignored, no per-model settings. "
        f"edgecompress: `prune_(model, PruneConfig(ratio={settings['ratio']}, round_to=1, min_channels=1))`; "
        "it leaves whole the groups it cannot cut safely (column `cut/whole`).",
        "- *pruned* = the pruning step ran and MACs dropped; each later column counts models that also passed it.",
        "",
        "## Totals",
        "",
        "| library | models | pruned | + forward ok | " + " | ".join(f"+ {FORMAT_TITLES[f]} runs" for f in formats)
        + " | all formats | median MACs after/before |",
        "|---|" + "---:|" * (4 + len(formats)) + "---:|",
    ]
    for t in totals(records, libs, formats):
        n = t["models"]
        counts = [t["pruned"], t["ran"], *(t[f] for f in formats), t["all_formats"]]
        median = f"{t['median_macs_ratio']:.2f}" if t["median_macs_ratio"] is not None else "–"
        lines.append(f"| {LIB_TITLES[t['lib']]} | {n} | " + " | ".join(f"{c}/{n}" for c in counts) + f" | {median} |")

    stage_cols = ["prune", "forward", "macs", *formats]
    header = ["model", "input"]
    for lib in libs:
        header += [f"{lib} {s if s != 'macs' else 'MACs'}" for s in stage_cols]
        if lib == "ours":
            header.append("ours cut/whole")
        header.append(f"{lib} s")
    lines += ["", "## Per model", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(r["model"], r["lib"]): r for r in records}
    for model in dict.fromkeys(r["model"] for r in records):
        shape = next((by_key[(model, lib)].get("input_shape") for lib in libs if (model, lib) in by_key), None)
        cells = [f"`{model}`", "x".join(map(str, shape[1:])) if shape else "–"]
        for lib in libs:
            r = by_key.get((model, lib))
            if r is None:
                cells += ["not run"] + [""] * (len(stage_cols) - 1 + (lib == "ours") + 1)
                continue
            for s in stage_cols:
                status = r["stages"].get(s, {}).get("status", "skipped")
                if s == "macs" and r.get("macs_ratio") is not None:
                    cell = f"{r['macs_ratio']:.2f}" if status == "ok" else f"**{r['macs_ratio']:.2f}**"
                else:
                    cell = CELL.get(status, status)
                cells.append(cell)
            if lib == "ours":
                cells.append(f"{r['groups_cut']}/{r['groups_whole']}" if "groups_cut" in r else "–")
            cells.append(f"{r.get('seconds', 0):.0f}")
        lines.append("| " + " | ".join(cells) + " |")

    failures = [(r, name, s) for r in records for name, s in r["stages"].items() if s.get("status") in ("fail", "timeout")]
    lines += ["", "## Failures (first line of each error)", ""]
    if not failures:
        lines.append("None.")
    for r, name, s in failures:
        lines.append(f"- `{r['model']}` {r['lib']} {name} ({s['status']}): {_md(s.get('error', ''))}")
    whole = Counter()
    for r in records:
        if r["lib"] == "ours":
            whole.update(r.get("whole_reasons", {}))
    if whole:
        lines += ["", "## Why edgecompress left groups whole (groups, all models)", ""]
        lines += [f"- {count}: {_md(reason) or '(no reason given)'}" for reason, count in whole.most_common(12)]
    return "\n".join(lines) + "\n"


def write_results(out: Path, doc: dict) -> None:
    from edgecompress.fsutil import atomic_write_json, atomic_write_text

    atomic_write_json(out / "coverage.json", doc)
    atomic_write_text(out / "coverage.csv", render_csv(doc["records"]))
    atomic_write_text(out / "coverage.md", render_md(doc))


def _sort_records(records: list[dict], models: list[str]) -> list[dict]:
    rank = {m: i for i, m in enumerate(models)}
    return sorted(records, key=lambda r: (rank.get(r["model"], len(rank)), r["model"], LIBS.index(r["lib"])))


def _choose(value: str | None, allowed: list[str] | tuple[str, ...], what: str) -> list[str]:
    from edgecompress.errors import UserError, suggest

    if value is None:
        return list(allowed)
    names = list(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if not names:
        raise UserError(f"--{what} is empty; give a comma-separated list from: {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            listed = ", ".join(allowed) if len(allowed) <= 10 else f"the {len(allowed)} names of torchvision.models.list_models()"
            raise UserError(f"unknown {what[:-1]} {name!r}{suggest(name, allowed)}; choose from {listed}")
    return names


def load_previous(out: Path, settings: dict, env: dict, resume: bool, force: bool) -> list[dict]:
    """Records to keep from an earlier run in `out` ([] for a fresh sweep)."""
    from edgecompress.errors import UserError

    path = out / "coverage.json"
    if not path.exists() or force:
        return []
    if not resume:
        raise UserError(f"{path} already exists; pass --resume to continue that sweep or --force to start over")
    try:
        doc = json.loads(path.read_text())
        old_settings, old_versions, records = doc["settings"], doc["environment"]["versions"], doc["records"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot resume from {path}: {first_line(exc)}; pass --force to start over") from None
    for key in ("ratio", "formats"):
        if old_settings.get(key) != settings[key]:
            raise UserError(f"cannot resume {path}: it was run with {key}={old_settings.get(key)!r}, now {settings[key]!r}; "
                            "use the same options or another --out")
    if old_versions != env["versions"]:
        changed = ", ".join(k for k in VERSION_DISTS if old_versions.get(k) != env["versions"].get(k))
        raise UserError(f"cannot resume {path}: package versions changed ({changed}); use another --out for a new sweep")
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated torchvision names (default: all classification models)")
    p.add_argument("--libs", default=",".join(LIBS), help="comma-separated: ours, tp")
    p.add_argument("--formats", default=",".join(EXPORT_FORMATS), help="comma-separated: onnx, tflite")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per model per library (whole worker)")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of channels removed per group")
    p.add_argument("--threads", type=int, default=1, help="torch / runtime threads in each worker")
    p.add_argument("--parity-samples", type=int, default=4, help="random inputs compared per export")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for coverage.json/.csv/.md")
    p.add_argument("--resume", action="store_true", help="keep OUT/coverage.json and run only the pairs it lacks")
    p.add_argument("--retry-timeouts", action="store_true",
                   help="with --resume: run again the pairs that timed out (e.g. with a larger --timeout)")
    p.add_argument("--force", action="store_true", help="start over even if OUT/coverage.json exists")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar: auto = only on a terminal; plain lines otherwise")
    p.add_argument("--worker", metavar="MODEL", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _line(done: int, total: int, r: dict, formats: list[str]) -> str:
    parts = []
    for name in ("prune", "forward", "macs", *formats):
        status = r["stages"][name]["status"]
        parts.append(f"{name} {r['macs_ratio']:.2f}" if name == "macs" and r.get("macs_ratio") is not None and status == "ok"
                     else f"{name} {status}")
    return f"[{done}/{total}] {r['model']} {r['lib']}: " + ", ".join(parts) + f" ({r.get('seconds', 0):.0f} s)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args)

    from edgecompress.errors import UserError
    from edgecompress.train.progress import make_console, make_progress, progress_enabled

    try:
        import torchvision

        all_models = sorted(torchvision.models.list_models(module=torchvision.models))
        models = _choose(args.models, all_models, "models")
        libs = _choose(args.libs, LIBS, "libs")
        formats = _choose(args.formats, EXPORT_FORMATS, "formats")
        if not 0 < args.ratio < 1:
            raise UserError(f"--ratio {args.ratio} must be in (0, 1), e.g. 0.3")
        if not args.timeout > 0:
            raise UserError(f"--timeout {args.timeout} must be > 0 seconds, e.g. 240")
        if args.threads < 1 or args.parity_samples < 1:
            raise UserError(f"--threads {args.threads} and --parity-samples {args.parity_samples} must be >= 1")
        if args.resume and args.force:
            raise UserError("--resume and --force contradict each other; pass one")
        if "tp" in libs:
            from edgecompress.versions import installed_version

            if installed_version("torch-pruning") is None:
                raise UserError("Torch-Pruning is not installed; pip install torch-pruning (or pass --libs ours)") from None
        settings = {"ratio": args.ratio, "formats": formats, "libs": libs, "timeout_s": args.timeout,
                    "threads": args.threads, "parity_samples": args.parity_samples}
        env = environment(args.threads, args.timeout)
        if args.retry_timeouts and not args.resume:
            raise UserError("--retry-timeouts only makes sense with --resume")
        records = load_previous(args.out, settings, env, args.resume, args.force)
        if args.retry_timeouts:
            records = [r for r in records
                       if not any(s.get("status") == "timeout" for s in r.get("stages", {}).values())]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    have = {(r["model"], r["lib"]) for r in records}
    todo = [(m, lib) for m in models for lib in libs if (m, lib) not in have]
    started = env["date"]
    work_root = args.out / ".work"
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        env["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        env["started"] = started
        doc = {"tool": "tools/coverage_torchvision.py", "settings": settings, "environment": env,
               "records": _sort_records(records, all_models)}
        write_results(args.out, doc)

    mode = {"auto": True, "always": "always", "never": False}[args.progress]
    console = make_console(mode)
    bars = make_progress(console) if progress_enabled(mode) else None
    if len(have):
        console.print(f"resuming: {len(have)} (model, lib) pairs already in {args.out / 'coverage.json'}", highlight=False)
    task = bars.add_task("coverage", total=len(todo), info="") if bars else None
    try:
        if bars:
            bars.start()
        save()
        for i, (model, lib) in enumerate(todo, 1):
            if bars:
                bars.update(task, info=f"{model} ({lib})")
            record = run_pair(model, lib, formats, ratio=args.ratio, timeout=args.timeout, threads=args.threads,
                              parity_samples=args.parity_samples, work_root=work_root)
            records.append(record)
            save()
            console.print(_line(i, len(todo), record, formats), markup=False, highlight=False, soft_wrap=True)
            if bars:
                bars.update(task, completed=i)
    except KeyboardInterrupt:
        console.print(f"interrupted; {len(records)} records kept in {args.out}; rerun with --resume to continue",
                      highlight=False)
        return 130
    finally:
        if bars:
            bars.stop()
        shutil.rmtree(work_root, ignore_errors=True)
    console.print(f"wrote {args.out / 'coverage.md'}, coverage.csv, coverage.json", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
