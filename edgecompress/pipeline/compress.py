"""The main job: model + recipe + device -> bundle.

Order of work: check every input cheaply first (bundle path, device, model, data)
so that bad input fails in a second with nothing written; then profile the
original model (accuracy, cost), apply the recipe's compression steps, export
both the original and the compressed model with parity checks, evaluate every
exported file in its own runtime, measure latency of all of them interleaved on
the device, and write the bundle atomically.
"""

from __future__ import annotations

import copy
import datetime as dt
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from edgecompress import __version__
from edgecompress.errors import UserError
from edgecompress.models.loading import LoadedModel
from edgecompress.pipeline.recipe import Recipe
from edgecompress.pipeline.steps import StepContext, get_step
from edgecompress.quantize.steps import plan_from_records

#: top-1 agreement an int8 file is held to against the float model on the parity images (informative: the
#: file's accuracy over the evaluation split is what the report shows); max |diff| relative to the logit scale
INT8_PARITY = {"atol": 0.1, "min_top1_agreement": 0.9}


def _console():
    from rich.console import Console

    # Progress and tables go to stderr/stdout of a real terminal; plain text in CI logs.
    return Console(stderr=True)


def _load_data(recipe: Recipe, input_shape: tuple[int, ...], data_dir: Path | None):
    if recipe.data.dataset == "fashion-mnist":
        from edgecompress.data.fashion_mnist import fashion_mnist_splits

        return fashion_mnist_splits(input_shape, data_dir=data_dir, val_size=recipe.data.val_size, seed=recipe.seed)
    from edgecompress.data.image_folder import image_folder_splits

    return image_folder_splits(recipe.data.path, input_shape, val_size=recipe.data.val_size, seed=recipe.seed)


def _eval_subset(recipe: Recipe, splits):
    ds = getattr(splits, recipe.evaluate.split)
    n = recipe.evaluate.max_samples
    if n is not None and n < len(ds):
        ds = torch.utils.data.Subset(ds, range(n))
    return ds


def _versions() -> dict[str, str | None]:
    from edgecompress.export.runtimes import runtime_versions

    return {"edgecompress": __version__, "python": platform.python_version(), **runtime_versions()}


def _profile_model(model: torch.nn.Module, input_shape, loader, console) -> dict[str, Any]:
    from edgecompress.graph import analyze
    from edgecompress.train import evaluate

    cost = analyze(model, input_shape)
    acc = evaluate(model, loader, progress=console.is_terminal)
    return {
        "params": cost.total_params,
        "macs": cost.total_macs,
        "act_bytes": cost.total_act_bytes,
        "accuracy": {"top1": acc.top1, "top5": acc.top5, "loss": acc.loss, "n": acc.n, "evaluated_on": "pytorch"},
        "artifacts": {},
    }


def _export_variant(model, input_shape, out_dir: Path, recipe: Recipe, loader, calib_inputs, console) -> dict[str, Any]:
    from edgecompress.export import export_model
    from edgecompress.export.artifact_eval import evaluate_artifact
    from edgecompress.prune.unstructured import gzip_size

    example = calib_inputs[:1]
    results = export_model(
        model, example, out_dir, formats=recipe.export.formats, allow_mismatch=recipe.export.allow_mismatch,
        parity_inputs=calib_inputs,
    )
    arts = {}
    for r in results:
        entry = {"file": r.path.name, "size_bytes": r.size_bytes, "gzip_bytes": gzip_size(r.path),
                 "parity": r.parity.to_dict(), "export_seconds": r.seconds}
        if recipe.export.evaluate_artifacts:
            console.log(f"evaluating {r.path.name} in {r.parity.runtime} over {len(loader.dataset)} images")
            entry["accuracy"] = evaluate_artifact(r.path, loader, progress=console.is_terminal)
        arts[r.format] = entry
    return arts


def _quantized_variant(plan: dict[str, Any], model, reference: dict[str, Any], bundle: Path, shape, recipe: Recipe,
                       splits, dev, loader, calib_inputs, console, notes: list[str]) -> tuple[str, dict[str, Any]]:
    """(label, variant): the quantize step's files made from `reference`'s fp32 files (bundle/model_int8.<fmt>),
    each checked against the float model, evaluated as a file and described (scheme, how it was chosen, layers
    left float); params and MACs are the reference's; latency is added by the caller's measurement."""
    from edgecompress.export.artifact_eval import evaluate_artifact
    from edgecompress.export.parity import check_parity
    from edgecompress.prune.unstructured import gzip_size
    from edgecompress.quantize.api import apply_plan, val_evaluator
    from edgecompress.quantize.base import precision_label

    label = precision_label(plan["mode"])
    m = recipe.measure
    evaluate = None
    if splits.val is not None and len(splits.val):
        evaluate = val_evaluator(splits.val, plan["val_samples"], recipe.seed)
    else:
        notes.append("quantize: the recipe has no validation split (val_size 0): the int8 scheme was judged by agreement "
                     "with the fp32 file on the calibration images, and no layer was kept float for accuracy")
    console.log(f"quantize: {plan['mode']} files from the exported fp32 files"
                + (f", scheme {plan['scheme']} on {dev.name}" if plan["mode"] == "int8-static" else ""))
    fp32 = {fmt: bundle / art["file"] for fmt, art in reference["artifacts"].items()}
    entries = apply_plan(plan, model, fp32, bundle, input_shape=shape, device=dev, evaluate=evaluate,
                         threads=m.threads, runs=min(m.runs, 100), trials=m.trials, basename=f"model_{label}")
    arts: dict[str, Any] = {}
    for fmt, entry in entries.items():
        if "skipped" in entry:
            notes.append(f"quantize ({fmt}): no {label} file: {entry['skipped']}")
            continue
        path = Path(entry["path"])
        parity = check_parity(model, path, calib_inputs, **INT8_PARITY)
        art: dict[str, Any] = {"file": path.name, "size_bytes": path.stat().st_size, "gzip_bytes": gzip_size(path),
                               "parity": parity.to_dict(), "export_seconds": entry["seconds"],
                               "quantization": {k: v for k, v in entry.items() if k not in ("path", "fp32_file", "format")}}
        if recipe.export.evaluate_artifacts:
            console.log(f"evaluating {path.name} over {len(loader.dataset)} images")
            art["accuracy"] = evaluate_artifact(path, loader, progress=console.is_terminal)
        arts[fmt] = art
        notes.extend(f"quantize ({fmt}): {n}" for n in entry["notes"])
        expected = _profile_expectation(dev, fmt)
        if expected:
            notes.append(f"quantize ({fmt}): {expected}")
    costs = {k: reference[k] for k in ("params", "macs", "act_bytes")}
    return label, {"accuracy": None, "quantized": {"mode": plan["mode"], "from": "after"}, **costs, "artifacts": arts}


def _profile_expectation(dev, fmt: str) -> str | None:
    """What the device's profile states about int8 speed in `fmt` (a stated expectation, not a measurement)."""
    from edgecompress.devices.profiles import device_profile

    profile = device_profile(dev)
    stated = (profile.int8 if profile is not None else {}).get(fmt)
    if not stated or fmt != "tflite":
        return None
    what = "fp32 to be faster than int8" if stated == "fp32" else f"{stated} to be the fastest"
    return f"the device profile {profile.name!r} expects {what} on TFLite ({profile.int8['why']}); the latency rows measure it"


def run_compress(
    model: str | LoadedModel,
    recipe: Recipe,
    *,
    device: str = "host",
    out: str | Path,
    data_dir: str | Path | None = None,
    arch: str | None = None,
    trust_model_file: bool = False,
    input_shape: tuple[int, ...] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run `recipe` on `model` (a spec like 'zoo:resnet20' or a loaded model); write the bundle to `out`.

    Returns the report (also in the bundle as report.json).
    """
    from edgecompress.data.calibration import make_loader
    from edgecompress.devices import get_device
    from edgecompress.export.bundle import write_bundle_files
    from edgecompress.fsutil import atomic_directory, check_output_dir
    from edgecompress.latency.interleave import measure_interleaved
    from edgecompress.models.loading import load_model, save_checkpoint
    from edgecompress.train import seed_everything

    console = _console()
    out = Path(out)
    check_output_dir(out, force)
    dev = get_device(device)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, arch=arch, trust_model_file=trust_model_file)
    model_spec = loaded.spec
    shape = tuple(input_shape or loaded.input_shape or ())
    if not shape:
        raise UserError(f"cannot tell the input size of {model_spec!r}; pass --input-size C,H,W")
    splits = _load_data(recipe, shape, data_dir)
    seed_everything(recipe.seed)

    eval_ds = _eval_subset(recipe, splits)
    loader = make_loader(eval_ds, batch_size=recipe.evaluate.batch_size, shuffle=False, seed=recipe.seed)
    # Parity inputs are real images (not noise): that is what the deployed model sees.
    calib_inputs = next(iter(make_loader(splits.val or splits.test, batch_size=recipe.export.parity_samples,
                                         shuffle=True, seed=recipe.seed)))[0]
    work_dir = out.with_name(f".{out.name}.work")
    notes: list[str] = []

    with atomic_directory(out, force=force) as bundle:
        console.rule(f"[bold]edgecompress compress[/] {model_spec} — recipe {recipe.name} — device {dev.name}")
        model = loaded.model.eval()
        console.log("before: evaluating and analysing the original model")
        before = _profile_model(model, shape, loader, console)

        compressed = model
        applied: list[str] = []
        step_records: dict[str, Any] = {}
        forked: dict[str, tuple[torch.nn.Module, StepContext]] = {}  # extra variants, e.g. the uniform baseline
        replaced: dict[str, Any] = {}  # a step that replaced the architecture says how to rebuild it
        if recipe.steps:
            ctx = StepContext(input_shape=shape, seed=recipe.seed, splits=splits, device=dev, work_dir=work_dir,
                              original=model)
            compressed, forked = _run_steps(recipe, copy.deepcopy(model), ctx, console)
            applied = [name for name, _ in recipe.steps]
            replaced = dict(ctx.rebuild or {})
            notes.extend(ctx.notes)
            step_records = _public(ctx.records)
            for fork, (_, fctx) in forked.items():
                notes.extend(f"[{fork}] {n}" for n in fctx.notes)
                step_records.setdefault("variants", {})[fork] = _public(fctx.records)
            for rel, src in ctx.artifacts.items():
                (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, bundle / rel)
        # A quantize step leaves the float model as it is (its files come after the fp32 export).
        unchanged = not [name for name in applied if name != "quantize"]
        plan = plan_from_records(ctx.records) if recipe.steps else None

        console.log("exporting " + ", ".join(recipe.export.formats) + " with parity checks")
        variants: dict[str, dict[str, Any]] = {}  # forked variants, reported between before and after
        if unchanged:
            before["artifacts"] = _export_variant(model, shape, bundle, recipe, loader, calib_inputs, console)
            after = copy.deepcopy(before)
            notes.append("The recipe has no compression steps: 'after' is the original model, measured once.")
        else:
            before["artifacts"] = _export_variant(model, shape, bundle / "baseline", recipe, loader, calib_inputs, console)
            for art in before["artifacts"].values():
                art["file"] = f"baseline/{art['file']}"
            for fork, (fmodel, _) in forked.items():
                variants[fork] = _profile_model(fmodel, shape, loader, console)
                variants[fork]["artifacts"] = _export_variant(fmodel, shape, bundle / fork, recipe, loader, calib_inputs,
                                                              console)
                for art in variants[fork]["artifacts"].values():
                    art["file"] = f"{fork}/{art['file']}"
            after = _profile_model(compressed, shape, loader, console)
            after["artifacts"] = _export_variant(compressed, shape, bundle, recipe, loader, calib_inputs, console)
        quantized: dict[str, dict[str, Any]] = {}  # the quantize step's variant, reported after 'after'
        if plan is not None:
            label, quantized[label] = _quantized_variant(plan, compressed, before if unchanged else after, bundle, shape,
                                                         recipe, splits, dev, loader, calib_inputs, console, notes)

        m = recipe.measure
        paths = {}
        ordered = {"before": before, **variants, "after": after, **quantized}
        for vname, variant in ordered.items():
            if vname == "after" and unchanged:
                continue
            for fmt, art in variant["artifacts"].items():
                paths[(vname, fmt)] = bundle / art["file"]
        console.log(f"measuring latency on {dev.name}: {len(paths)} files x threads {list(m.threads)} x {m.trials} trials, "
                    f"{m.runs} runs each (interleaved)")
        results = measure_interleaved(
            dev, list(paths.values()), m.threads, runs=m.runs, warmup=m.warmup, trials=m.trials,
            on_trial=lambda a, t, i: console.log(f"  trial {i + 1}/{m.trials}: {a.name} @ {t} thread(s)"),
        )
        for (vname, fmt), path in paths.items():
            ordered[vname]["artifacts"][fmt]["latency"] = [
                {k: v for k, v in results[(path, t)].to_dict().items() if k not in ("samples_ms", "fingerprint")}
                for t in m.threads
            ]
        if unchanged:
            after = copy.deepcopy(before)
            ordered["after"] = after

        rebuild: dict[str, Any] | None = replaced
        if rebuild.get("spec") is None:  # the original's architecture (less any blocks a search removed)
            rebuild = ({"removed": loaded.arch.get("removed", []), **rebuild, "spec": loaded.arch["spec"],
                        "kwargs": loaded.arch.get("kwargs", {})} if loaded.arch is not None else None)
        if rebuild is not None:
            save_checkpoint(compressed, bundle / "model.pt", arch_spec=rebuild["spec"],
                            arch_kwargs=rebuild.get("kwargs", {}), input_shape=shape,
                            removed=rebuild.get("removed", ()), meta={"recipe": recipe.name, "steps": applied})
        else:
            notes.append(f"No model.pt in the bundle: {model_spec!r} has no recorded architecture to rebuild it from.")
        if dev.name == "host":
            notes.append("Latency was measured on the host CPU, not on a phone; int8 speed-ups in particular differ on ARM.")

        report = {
            "schema": "edgecompress.report/1",
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"spec": model_spec, "arch": loaded.arch, "input_shape": list(shape)},
            "recipe": recipe.to_dict(),
            "device": {"name": dev.name, "fingerprint": dev.fingerprint()},
            "dataset": {"name": recipe.data.dataset, "split": recipe.evaluate.split, "n": len(eval_ds)},
            "steps_applied": applied,
            "steps": step_records,
            "variants": ordered,
            "versions": _versions(),
            "notes": notes,
        }
        write_bundle_files(bundle, report, recipe.to_dict())

    shutil.rmtree(work_dir, ignore_errors=True)  # the bundle is complete: step checkpoints are no longer needed
    _print_table(report, out)
    return report


def _public(records: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in records.items() if not k.startswith("_")}


def _run_steps(recipe: Recipe, model: torch.nn.Module, ctx: StepContext, console):
    """Apply the recipe's steps to `model`; a step that forks a variant (the search step's
    uniform baseline) gets the remaining steps run on a copy too. Returns (model, forks)."""
    tracks: dict[str, tuple[torch.nn.Module, StepContext]] = {"after": (model, ctx)}
    for name, params in recipe.steps:
        for variant in list(tracks):
            current, tctx = tracks[variant]
            console.log(f"step {name} {params}" + ("" if variant == "after" else f"  ({variant} variant)"))
            current = get_step(name)(current, params, tctx).eval()
            tracks[variant] = (current, tctx)
            for fork, policy in tctx.forks.items():
                if fork in tracks:
                    raise UserError(f"step {name} forks a variant {fork!r} that already exists")
                tracks[fork] = (copy.deepcopy(current), tctx.fork(fork, policy))
            tctx.forks.clear()
    main, _ = tracks.pop("after")
    return main, tracks


def _print_table(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgecompress.export.bundle import comparison_header, comparison_rows

    table = Table(title=f"{report['model']['spec']} on {report['device']['name']}")
    metric, *cols = comparison_header(report)
    table.add_column(metric)
    for col in cols:
        table.add_column(col, justify="right")
    for row in comparison_rows(report):
        table.add_row(*row)
    console = Console()
    console.print(table)
    for note in report["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(f"bundle written to {out}/ (report.md, report.json, manifest.json)")
