"""The `edgecompress` command line: a thin layer over the Python API.

Every command is one call into the package; heavy modules (torch's exporters,
onnxruntime, LiteRT, torchvision) are imported inside the commands, so
`edgecompress --help` starts instantly. A `UserError` anywhere becomes one line
on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgecompress import __version__
from edgecompress.errors import UserError

EXIT_USER_ERROR = 2


def _parse_input_size(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"--input-size {value!r} is not a list of integers; write it as C,H,W, e.g. 3,224,224") from None
    if len(dims) != 3 or min(dims) <= 0:
        raise UserError(f"--input-size {value!r} must be three positive integers C,H,W, e.g. 1,28,28")
    return dims


def _parse_threads(value: str) -> list[int]:
    try:
        threads = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--threads {value!r} is not a comma-separated list of integers, e.g. 1,2") from None
    bad = [t for t in threads if t <= 0]
    if not threads or bad:
        raise UserError(f"--threads {value!r}: thread counts must be positive integers, e.g. --threads 1,2")
    return threads


def _load(model: str, arch: str | None, trust: bool, input_size: str | None, num_classes: int | None = None):
    """Load MODEL and decide its input shape (from --input-size, the model, or an error).

    For architectures we build (zoo:, torchvision:, --arch), --input-size C,H,W also
    configures the model: C input channels, small-input stems for H <= 64.
    """
    from edgecompress.models.loading import load_model

    size = _parse_input_size(input_size)
    builds = model.startswith(("zoo:", "torchvision:")) or arch is not None
    loaded = load_model(
        model, arch=arch, trust_model_file=trust, num_classes=num_classes,
        in_channels=size[0] if size and builds else None, input_size=size[1] if size and builds else None,
    )
    shape = size or loaded.input_shape
    if shape is None:
        raise UserError(f"cannot tell the input size of {model!r}; pass --input-size C,H,W (e.g. 3,224,224)")
    return loaded, tuple(shape)


def model_options(f):
    f = click.option("--arch", default=None, help="Architecture for a state_dict file: zoo:NAME or torchvision:NAME.")(f)
    f = click.option(
        "--trust-model-file",
        is_flag=True,
        help="Allow unpickling a whole pickled nn.Module (runs code from the file: only for files you trust).",
    )(f)
    f = click.option("--input-size", default=None, metavar="C,H,W", help="Input shape without batch, e.g. 3,224,224.")(f)
    f = click.option("--num-classes", default=None, type=int, help="Classifier outputs, for architectures built here (zoo:, torchvision:, --arch).")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecompress")
def cli() -> None:
    """Compress PyTorch models for phones, with latency measured on the device.

    MODEL is zoo:NAME, torchvision:NAME, a .pt file (edgecompress checkpoint,
    TorchScript, a state_dict with --arch, or a pickled module with
    --trust-model-file) or package.module:function.
    """


@cli.command()
@click.argument("pattern", default="*")
def models(pattern: str) -> None:
    """List the model zoo (optionally filtered by a glob PATTERN)."""
    from edgecompress.models import list_models

    for name in list_models(pattern):
        click.echo(f"zoo:{name}")


@cli.command()
@click.argument("model")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON document.")
def analyze(model: str, arch: str | None, trust_model_file: bool, input_size: str | None, num_classes: int | None,
            as_json: bool) -> None:
    """Per-layer params, MACs and activation traffic of MODEL, and its coupled-channel groups."""
    from edgecompress.graph import analyze as run_analysis
    from edgecompress.graph import build_groups, describe_groups

    loaded, shape = _load(model, arch, trust_model_file, input_size, num_classes)
    result = run_analysis(loaded.model, shape)
    try:
        groups, groups_error = describe_groups(build_groups(loaded.model, shape)), None
    except UserError as e:  # cost analysis needs only a forward pass; groups need an fx trace
        groups, groups_error = None, str(e)
    if as_json:
        doc = result.to_dict()
        doc["model"] = model
        doc["groups"] = groups
        if groups_error:
            doc["groups_error"] = groups_error
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that layer names don't wrap
        console = Console(width=140)
    console.print(f"[bold]{model}[/]  input {'x'.join(map(str, shape))}")
    result.render_table(console=console)
    if groups is None:
        console.print(f"[yellow]channel groups unavailable:[/] {groups_error}")
        return
    table = Table(title=f"coupled-channel groups: {sum(g['prunable'] for g in groups)} of {len(groups)} prunable")
    for col in ("group", "channels", "cut by", "prunable", "producers (output channels)", "why not"):
        table.add_column(col, justify="right" if col in ("group", "channels", "cut by") else "left")
    for g in groups:
        # "cut by": channels one removable unit takes from a layer (a whole conv group, or
        # channels a shuffle or chunk ties together); 1 for most layers.
        table.add_row(str(g["id"]), str(g["channels"]), str(g["unit_size"]), "yes" if g["prunable"] else "no",
                      ", ".join(g["producers"]) or "(input)", g["reason"])
    console.print(table)


@cli.command()
@click.argument("model")
@model_options
@click.option("--format", "formats", default="onnx,tflite", show_default=True, help="Comma-separated: onnx, tflite.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--allow-mismatch", is_flag=True, help="Keep files whose parity check failed (loudly reported).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def export(model, arch, trust_model_file, input_size, num_classes, formats, out, allow_mismatch, force) -> None:
    """Export MODEL to ONNX/TFLite and check numeric parity in each runtime."""
    import torch

    from edgecompress.export import export_model
    from edgecompress.fsutil import atomic_directory, check_output_dir

    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    check_output_dir(out, force)  # fail before any expensive work
    loaded, shape = _load(model, arch, trust_model_file, input_size, num_classes)
    example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    with atomic_directory(out, force=force) as tmp:
        results = export_model(loaded.model, example, tmp, formats=fmts, allow_mismatch=allow_mismatch)
    for r in results:
        p = r.parity
        status = "ok" if p.passed else "MISMATCH (kept: --allow-mismatch)"
        click.echo(
            f"{r.format:7s} {out / r.path.name}  {r.size_bytes / 1e6:.2f} MB  "
            f"parity {status}: max|diff| {p.max_abs_diff:.2e}, top-1 agreement {p.top1_agreement:.1%} "
            f"({p.n_samples} inputs, {p.runtime})"
        )


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--device", "device_spec", default="host", show_default=True, help="host, adb:SERIAL or a profile name.")
@click.option("--threads", default="1", show_default=True, help="Comma-separated thread counts, e.g. 1,2.")
@click.option("--runs", default=50, show_default=True, help="Timed runs per trial.")
@click.option("--warmup", default=10, show_default=True, help="Untimed warm-up runs per trial.")
@click.option("--trials", default=3, show_default=True, help="Trials, each in a fresh process.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--adb", "adb", default=None, help="adb executable for adb:SERIAL devices [default: $ADB, else PATH].")
@click.option("--no-cache", is_flag=True, help="Measure again and do not store the result in the latency cache.")
def bench(artifact: Path, device_spec: str, threads: str, runs: int, warmup: int, trials: int, as_json: bool,
          adb: str | None, no_cache: bool) -> None:
    """Measure p50/p90 latency of an .onnx or .tflite file on a device (results are cached by
    artifact hash, device fingerprint, runtime version and settings; --no-cache measures again)."""
    thread_list = _parse_threads(threads)
    from edgecompress.devices import get_device
    from edgecompress.latency.cache import CachedDevice, LatencyCache

    device = get_device(device_spec, adb=adb)
    device = CachedDevice(device, LatencyCache() if not no_cache else None, enabled=not no_cache)
    results = [device.measure(artifact, threads=t, runs=runs, warmup=warmup, trials=trials) for t in thread_list]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{artifact.name} on {device.name}")
    for col in ("runtime", "threads", "p50 ms", "p90 ms", "mean ms", "std ms", "runs", "cache"):
        table.add_column(col, justify="right" if col != "runtime" else "left")
    for r in results:
        table.add_row(
            f"{r.runtime} {r.runtime_version}", str(r.threads), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}",
            f"{r.mean_ms:.3f}", f"{r.std_ms:.3f}", str(r.runs), str(r.runtime_info.get("cache", "")),
        )
    console = Console()
    console.print(table)
    notes = {r.runtime_info["percentiles_over"] for r in results if "percentiles_over" in r.runtime_info}
    for note in sorted(notes):
        console.print(f"p50/p90 over {note}")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the device list with fingerprints as JSON.")
@click.option("--adb", "adb", default=None, help="adb executable [default: $ADB, else adb on PATH].")
@click.pass_context
def devices(ctx: click.Context, as_json: bool, adb: str | None) -> None:
    """List the host, every phone adb sees (state, fingerprint) and the device profiles."""
    if ctx.invoked_subcommand is not None:
        return
    from edgecompress.devices import list_devices, list_profiles

    found = list_devices(adb)
    if as_json:
        click.echo(json.dumps({"devices": found, "profiles": list_profiles()}, indent=2))
        return
    for d in found:
        fp = d.get("fingerprint", {})
        if d["kind"] == "host":
            what = f"{fp.get('cpu_model', '?')} ({fp.get('logical_cores', '?')} cores)"
        else:
            what = (f"{fp.get('manufacturer', '')} {fp.get('model') or d.get('model', '')} {fp.get('soc', '')} "
                    f"{fp.get('abi', '')} Android {fp.get('android', '?')}, big cores {fp.get('big_core_mask', '?')}, "
                    f"runtimes: {', '.join(d.get('runtimes', [])) or 'none (run devices setup)'}" if fp else "")
        ident = f"  id {fp['id']}" if "id" in fp else ""
        click.echo(f"{d['name']:24s} {d['state']:13s} {what.strip()}{ident}")
        if d.get("note"):
            click.echo(f"{'':24s} note: {d['note']}")
    click.echo(f"profiles: {', '.join(list_profiles()) or 'none'}")


@devices.command("setup")
@click.argument("device_spec")
@click.option("--benchmark-model", "benchmark_model", type=click.Path(path_type=Path), default=None,
              help="LiteRT benchmark_model built for the phone (android_bench/README.md).")
@click.option("--ort-perf-test", "ort_perf_test", type=click.Path(path_type=Path), default=None,
              help="onnxruntime_perf_test built for the phone (android_bench/README.md).")
@click.option("--adb", "adb", default=None, help="adb executable [default: $ADB, else adb on PATH].")
def devices_setup(device_spec: str, benchmark_model: Path | None, ort_perf_test: Path | None, adb: str | None) -> None:
    """Push the runner and the benchmark binaries to a phone and check that they start."""
    from edgecompress.devices import get_device
    from edgecompress.errors import UserError

    device = get_device(device_spec, adb=adb)
    if not hasattr(device, "setup"):
        raise UserError(f"device {device_spec!r} is not a phone; setup pushes binaries to adb devices only")
    if benchmark_model is None and ort_perf_test is None:
        raise UserError("pass --benchmark-model PATH and/or --ort-perf-test PATH (android_bench/README.md says "
                        "where to get them)")
    installed = device.setup(benchmark_model=benchmark_model, ort_perf_test=ort_perf_test)
    for name, path in installed.items():
        click.echo(f"{name:24s} {path}")
    click.echo(f"{device.name}: runtimes ready: {', '.join(device.runtimes())}")


@cli.command()
@click.argument("model")
@model_options
@click.option("--target", default=None, help="Budget: macs=0.5, params=1.2M, latency=0.6 or latency=3ms (latency is measured on --device).")
@click.option("--ratio", default=None, type=float, help="Instead of --target: fraction of channels removed from every prunable group, in [0, 1).")
@click.option("--importance", default="l2", show_default=True, help="l1, l2, bn_scale, taylor, fpgm or random.")
@click.option("--ranking", default="uniform", show_default=True, help="uniform (one ratio everywhere) or global (one importance threshold).")
@click.option("--round-to", default=None, type=int, help="Kept channel counts are multiples of this [default: the device profile's, 8 for host].")
@click.option("--min-channels", default=8, show_default=True, help="No layer keeps fewer channels.")
@click.option("--ignore", multiple=True, metavar="REGEX", help="Leave layers whose name matches whole (repeatable).")
@click.option("--device", "device_spec", default="host", show_default=True, help="Device for latency targets and the default round-to.")
@click.option("--finetune-epochs", default=0, show_default=True, help="Fine-tune on the dataset afterwards (0: no fine-tuning).")
@click.option("--kd/--no-kd", default=True, show_default=True, help="Fine-tune with knowledge distillation from the original model.")
@click.option("--data-dir", default=None, type=click.Path(path_type=Path), help="Fashion-MNIST folder for fine-tuning and taylor.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory (model.pt, prune.json).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def prune(model, arch, trust_model_file, input_size, num_classes, target, ratio, importance, ranking, round_to,
          min_channels, ignore, device_spec, finetune_epochs, kd, data_dir, out, force) -> None:
    """Prune MODEL's channels physically (structured pruning) and save the smaller model."""
    from edgecompress.fsutil import check_output_dir

    check_output_dir(out, force)
    from edgecompress.prune.api import prune_command

    params = {"target": target, "ratio": ratio, "importance": importance, "ranking": ranking,
              "min_channels": min_channels, "ignore": list(ignore)}
    if round_to is not None:
        params["round_to"] = round_to
    params = {k: v for k, v in params.items() if v is not None}
    loaded, shape = _load(model, arch, trust_model_file, input_size, num_classes)
    report = prune_command(loaded, shape, params, device=device_spec, out=out, force=force,
                           finetune_epochs=finetune_epochs, kd=kd, data_dir=data_dir)
    for line in report["summary"]:
        click.echo(line)
    click.echo(f"written: {out}/model.pt, {out}/prune.json")


@cli.command()
@click.argument("model")
@model_options
@click.option("--method", default="spatial-svd", show_default=True, help="svd (Linear, 1x1), spatial-svd, tucker2 or cp.")
@click.option("--target", default=None, help="Budget on the whole model: macs=0.5, params=0.4 or latency=0.7 (timed on --device).")
@click.option("--rank", default=None, help="Instead of --target, for every layer: a ratio of the full rank (0.5), energy=0.9, or vbmf (tucker2).")
@click.option("--sensitivity", default="error", show_default=True, help="How the budget search ranks layers: error (weights) or accuracy (validation top-1).")
@click.option("--round-to", default=None, type=int, help="Ranks are multiples of this [default: the device profile's, 8 for host].")
@click.option("--ignore", multiple=True, metavar="REGEX", help="Leave layers whose name matches (repeatable).")
@click.option("--latency-check", default="onnxruntime", show_default=True,
              help="Runtime each layer is timed with, alone, before and after (a layer not faster stays whole); none: no timing.")
@click.option("--device", "device_spec", default="host", show_default=True, help="Device the layers are timed on.")
@click.option("--finetune-epochs", default=0, show_default=True, help="Fine-tune on the dataset afterwards (0: no fine-tuning).")
@click.option("--kd/--no-kd", default=True, show_default=True, help="Fine-tune with knowledge distillation from the original model.")
@click.option("--data-dir", default=None, type=click.Path(path_type=Path), help="Fashion-MNIST folder for fine-tuning and accuracy sensitivity.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory (model.pt, factorize.json).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def factorize(model, arch, trust_model_file, input_size, num_classes, method, target, rank, sensitivity, round_to, ignore,
              latency_check, device_spec, finetune_epochs, kd, data_dir, out, force) -> None:
    """Replace MODEL's large layers by low-rank factors (SVD, spatial SVD, Tucker-2, CP) and save it."""
    from edgecompress.fsutil import check_output_dir

    check_output_dir(out, force)
    from edgecompress.lowrank.steps import factorize_command

    params = {"method": method, "target": target, "sensitivity": sensitivity, "ignore": list(ignore),
              "latency_check": False if latency_check.lower() in ("none", "false", "off") else latency_check}
    if rank is not None:
        try:
            params["rank"] = float(rank)
        except ValueError:
            params["rank"] = rank
    if round_to is not None:
        params["round_to"] = round_to
    params = {k: v for k, v in params.items() if v is not None}
    loaded, shape = _load(model, arch, trust_model_file, input_size, num_classes)
    report = factorize_command(loaded, shape, params, device=device_spec, out=out, force=force,
                               finetune_epochs=finetune_epochs, kd=kd, data_dir=data_dir)
    for line in report["summary"]:
        click.echo(line)
    click.echo(f"written: {out}/model.pt, {out}/factorize.json")


@cli.command()
@click.argument("model")
@model_options
@click.option("--strategy", default="amc", show_default=True,
              help="amc, evolution, random, uniform (by candidate) or tas, snas, scas (by gradient).")
@click.option("--target", required=True, help="Budget: latency=0.5 (of the original) or latency=3ms, macs=0.5, params=1.2M.")
@click.option("--episodes", default=100, show_default=True, type=int, help="Candidates evaluated (the same budget for every strategy).")
@click.option("--reward", default="error", show_default=True, help="error (hard budget), error_log_macs or mnasnet (soft).")
@click.option("--device", "device_spec", default="host", show_default=True, help="Where latency is measured: host, adb:SERIAL or a profile.")
@click.option("--runtime", default="litert", show_default=True, help="litert or onnxruntime: what latency is measured with.")
@click.option("--threads", default=1, show_default=True, type=int, help="Threads for the latency measurements.")
@click.option("--latency", "latency_kind", default="measured", show_default=True, help="measured, predictor or macs.")
@click.option("--predictor", default=None, type=click.Path(path_type=Path), help="predictor.json for --latency predictor.")
@click.option("--val-samples", default=2000, show_default=True, type=int, help="Validation images per candidate.")
@click.option("--data-dir", default=None, type=click.Path(path_type=Path), help="Dataset folder (else $EDGECOMPRESS_DATA or the Debian package's).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Search directory (checkpoint, log, best policy, plot).")
@click.option("--epochs", default=10, show_default=True, type=int, help="Training passes of a gradient search (tas, snas, scas).")
@click.option("--search-images", default=10000, show_default=True, type=int,
              help="Training images a gradient search learns from (half weights, half architecture).")
@click.option("--batch-size", default=128, show_default=True, type=int, help="Batch size of a gradient search.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A gradient search's own setting (repeatable), e.g. --option cost_weight=2 --option space=mobile.")
@click.option("--lowrank", default=None, metavar="METHOD",
              help="Also search a rank ratio per layer this method factorizes: svd, spatial-svd, tucker2 or cp.")
@click.option("--resume", is_flag=True, help="Continue the search saved in --out.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def search(model, arch, trust_model_file, input_size, num_classes, strategy, target, episodes, reward, device_spec,
           runtime, threads, latency_kind, predictor, val_samples, data_dir, seed, epochs, search_images, batch_size,
           options, lowrank, out, resume, force) -> None:
    """Search how much to prune each layer of MODEL (AMC, a baseline or TAS; with --lowrank also how far
    to factorize it), or a compact architecture to replace it (SNAS, SCAS), with latency measured on the device."""
    from edgecompress.search.api import search_command

    loaded, shape = _load(model, arch, trust_model_file, input_size, num_classes)
    report = search_command(loaded, shape, strategy=strategy, target=target, episodes=episodes, out=out,
                            device=device_spec, reward=reward, runtime=runtime, threads=threads, latency=latency_kind,
                            predictor=predictor, val_samples=val_samples, data_dir=data_dir, seed=seed, resume=resume,
                            force=force, epochs=epochs, search_images=search_images, batch_size=batch_size,
                            options=_key_values(options, "--option"), lowrank=lowrank)
    for line in report["summary"]:
        click.echo(line)
    written = [Path(v).name for k, v in report["files"].items() if k != "state"]
    click.echo(f"written: {out}/search.json, {', '.join(written)}")


def _key_values(pairs: tuple[str, ...], option: str) -> dict:
    """KEY=VALUE strings as a dict, each value read as YAML (numbers, booleans, lists)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{option} {pair!r} must be KEY=VALUE, e.g. {option} cost_weight=2")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(f"{option} {pair!r}: the value does not parse ({exc})") from None
    return out


@cli.command()
@click.argument("model")
@model_options
@click.option("--mode", required=True, help="int8-static, int8-dynamic, fp16 or qat.")
@click.option("--calib-batches", default=8, show_default=True, type=int, help="Calibration batches of 32 training images.")
@click.option("--method", default="minmax", show_default=True, help="Activation ranges: minmax, percentile or entropy (ONNX).")
@click.option("--format", "formats", default="onnx,tflite", show_default=True, help="Comma-separated: onnx, tflite.")
@click.option("--device", "device_spec", default="host", show_default=True, help="Where the int8 schemes are timed.")
@click.option("--budget", default=0.005, show_default=True, type=float, help="Largest top-1 drop allowed (0.005 = 0.5 point).")
@click.option("--scheme", default="auto", show_default=True, help="auto (the fastest measured on --device within budget), profile (the device profile's stated answer) or a scheme name.")
@click.option("--threads", default="1,2", show_default=True, help="Thread counts for the latency measurements.")
@click.option("--test-samples", default=None, type=int, help="Test images for the files' top-1 (default: all).")
@click.option("--qat-epochs", default=1, show_default=True, type=int, help="Epochs of quantization-aware training (--mode qat).")
@click.option("--data-dir", default=None, type=click.Path(path_type=Path), help="Dataset folder (else $EDGECOMPRESS_DATA or the Debian package's).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory (fp32 + quantized files, quant.json).")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def quantize(model, arch, trust_model_file, input_size, num_classes, mode, calib_batches, method, formats, device_spec,
             budget, scheme, threads, test_samples, qat_epochs, data_dir, seed, out, force) -> None:
    """Quantize MODEL (int8 PTQ or QAT, fp16) to ONNX and TFLite; accuracy measured on the files, latency on the device."""
    from edgecompress.fsutil import check_output_dir
    from edgecompress.quantize.api import quantize_command

    check_output_dir(out, force)  # fail before any expensive work
    thread_list = _parse_threads(threads)
    loaded, shape = _load(model, arch, trust_model_file, input_size, num_classes)
    report = quantize_command(loaded, shape, mode=mode, calib_batches=calib_batches, out=out, device=device_spec,
                              method=method, formats=tuple(f for f in formats.split(",") if f), data_dir=data_dir,
                              budget=budget, scheme=scheme, test_samples=test_samples, force=force,
                              qat_epochs=qat_epochs, threads=tuple(thread_list), seed=seed, progress=True)
    for line in report["summary"]:
        click.echo(line)
    click.echo(f"written: {out}/quant.json and the model files")


@cli.command()
@click.argument("model")
@model_options
@click.option("--recipe", "recipe_path", required=True, type=click.Path(path_type=Path), help="Recipe YAML.")
@click.option("--device", "device_spec", default="host", show_default=True, help="Where latency is measured.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--data-dir", default=None, type=click.Path(path_type=Path), help="Dataset folder (else $EDGECOMPRESS_DATA or the Debian package's).")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
def compress(model, arch, trust_model_file, input_size, num_classes, recipe_path, device_spec, out, data_dir, force) -> None:
    """The main job: run RECIPE on MODEL and write a deployable bundle with its report."""
    from edgecompress.fsutil import check_output_dir
    from edgecompress.pipeline import load_recipe, run_compress

    recipe = load_recipe(recipe_path)
    check_output_dir(out, force)  # fail before any expensive work
    from edgecompress.devices import get_device

    get_device(device_spec)  # an unknown device fails before the model is loaded
    loaded, shape = _load(model, arch, trust_model_file, input_size, num_classes)
    run_compress(loaded, recipe, device=device_spec, out=out, data_dir=data_dir, input_shape=shape, force=force)


from edgecompress.latency.cache_cli import cache  # noqa: E402  (light: sqlite3, click)
from edgecompress.latency.profile_cli import profile  # noqa: E402  (light: click)

cli.add_command(cache)
cli.add_command(profile)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        rv = cli.main(args=argv, prog_name="edgecompress", standalone_mode=False)
    except UserError as e:
        click.echo(f"edgecompress: error: {e}", err=True)
        return e.exit_code if e.exit_code != UserError.exit_code else EXIT_USER_ERROR
    except click.exceptions.Abort:
        click.echo("edgecompress: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("edgecompress: interrupted; no incomplete output was left behind "
                   "(checkpoints are kept for resuming)", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
