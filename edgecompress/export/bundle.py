"""The artifact bundle: what `compress` hands the user.

A bundle is a directory with the exported models, `report.json` (versioned
schema), `report.md` (the same, readable), the recipe it ran and `manifest.json`
(sha256 and size of every file, versions, seeds, device fingerprint). The caller
writes it inside `fsutil.atomic_directory`, so a bundle either exists complete
or not at all; `manifest.json` is written last and `verify_bundle` checks it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecompress.fsutil import atomic_write_json, atomic_write_text, sha256_file

REPORT_SCHEMA = "edgecompress.report/1"
MANIFEST_SCHEMA = "edgecompress.manifest/1"
RUNTIME_LABEL = {"onnxruntime": "ORT", "litert": "LiteRT"}
FORMAT_LABEL = {"onnx": "ONNX", "tflite": "TFLite"}


def human(n: float | None, unit: str = "") -> str:
    """3 504 872 -> '3.50 M'; None -> '–'."""
    if n is None:
        return "–"
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:g}{' ' + unit if unit else ''}"


def _pct(acc: dict | None) -> str:
    return "–" if not acc else f"{100 * acc['top1']:.2f}%"


def _latency_keys(report: dict) -> list[tuple[str, str, int]]:
    """(format, runtime, threads) triples measured in either variant, in a stable order."""
    keys = set()
    for variant in report["variants"].values():
        for fmt, art in variant.get("artifacts", {}).items():
            for lat in art.get("latency", []):
                keys.add((fmt, lat["runtime"], lat["threads"]))
    return sorted(keys)


def _latency(variant: dict, fmt: str, threads: int, field: str) -> float | None:
    for lat in variant.get("artifacts", {}).get(fmt, {}).get("latency", []):
        if lat["threads"] == threads:
            return lat[field]
    return None


def comparison_pairs(report: dict) -> list[tuple[str, str]]:
    """(variant, reference) pairs the table gives ratios for: after against every fp32 variant
    (before, baselines such as uniform), and a quantized variant (int8, fp16) against before and
    against the fp32 model it was made from (after), when that differs from before."""
    variants = report["variants"]
    quantized = [n for n, v in variants.items() if "quantized" in v]
    floats = [n for n in variants if n not in quantized]
    changed = any(s != "quantize" for s in report.get("steps_applied") or [])
    pairs = [("after", n) for n in floats if n != "after"]
    if quantized:  # the fp32 'after' equals 'before' when quantize is the only step: no ratio for it
        pairs = pairs if changed else []
    for q in quantized:
        pairs += [(q, "before")] + ([(q, variants[q]["quantized"].get("from", "after"))] if changed else [])
    return pairs


def comparison_header(report: dict) -> list[str]:
    """Column names of the comparison table: the variants (before, any baseline such as
    uniform, after, a quantized int8) and the ratios of `comparison_pairs`."""
    return ["metric", *report["variants"], *(f"{a} vs {b}" for a, b in comparison_pairs(report))]


def comparison_rows(report: dict) -> list[tuple[str, ...]]:
    """Rows of the comparison table, one cell per column of `comparison_header`."""
    variants = report["variants"]
    names = list(variants)
    pairs = comparison_pairs(report)
    changed = any(s != "quantize" for s in report.get("steps_applied") or [])

    def same_model(a: str, b: str) -> bool:  # the same model twice: a ratio would say nothing
        return not changed and "quantized" not in variants[a] and "quantized" not in variants[b]

    def ratio(b: float | None, a: float | None, invert: bool = False) -> str:
        if not b or not a:
            return ""
        return f"{(b / a if invert else a / b):.2f}x"

    def speed(b: float | None, a: float | None) -> str:
        if not ratio(b, a):
            return ""
        return f"{b / a:.2f}x faster" if b >= a else f"{a / b:.2f}x slower"  # type: ignore[operator]

    def row(label: str, get, show, invert: bool = False, speedup: bool = False) -> tuple[str, ...]:
        values = [get(variants[n]) for n in names]
        cells = []
        for a, b in pairs:
            if same_model(a, b):
                cells.append("")
            elif speedup:
                cells.append(speed(get(variants[b]), get(variants[a])))
            else:
                cells.append(ratio(get(variants[b]), get(variants[a]), invert))
        return (label, *(show(v) for v in values), *cells)

    def acc(v: dict | None) -> float | None:
        return None if not v else v["top1"]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}%"

    def no_ratio(r: tuple[str, ...]) -> tuple[str, ...]:
        return (*r[:1 + len(names)], *([""] * len(pairs)))

    rows = [no_ratio(row("top-1, PyTorch", lambda v: acc(v.get("accuracy")), pct))]
    formats = sorted({fmt for v in variants.values() for fmt in v.get("artifacts", {})})
    for fmt in formats:
        rows.append(no_ratio(row(f"top-1, {FORMAT_LABEL.get(fmt, fmt)} file",
                                 lambda v, f=fmt: acc(v.get("artifacts", {}).get(f, {}).get("accuracy")), pct)))
    rows.append(row("params", lambda v: v.get("params"), human))
    rows.append(row("MACs", lambda v: v.get("macs"), human))
    for fmt in sorted(variants["before"].get("artifacts", {})):
        label = FORMAT_LABEL.get(fmt, fmt)
        rows.append(row(f"size, {label}", lambda v, f=fmt: v.get("artifacts", {}).get(f, {}).get("size_bytes"),
                        lambda x: human(x, "B")))
        gz = [variants[n].get("artifacts", {}).get(fmt, {}).get("gzip_bytes") for n in names]
        if all(gz):  # what unstructured zeros buy: a smaller download
            rows.append(row(f"gzip size, {label}", lambda v, f=fmt: v["artifacts"][f]["gzip_bytes"],
                            lambda x: human(x, "B")))
    for fmt, runtime, threads in _latency_keys(report):
        for field, label in (("p50_ms", "p50"), ("p90_ms", "p90")):
            rows.append(row(f"{label} ms, {RUNTIME_LABEL.get(runtime, runtime)} {threads}T",
                            lambda v, f=fmt, t=threads, k=field: _latency(v, f, t, k),
                            lambda x: "–" if x is None else f"{x:.3f}", invert=True,
                            speedup=field == "p50_ms"))
    return rows


def render_markdown(report: dict) -> str:
    """report.md: the before/after table, parity, latency details, device and notes."""
    m = report["model"]
    dev = report["device"]
    fp = dev.get("fingerprint", {})
    lines = [
        f"# edgecompress report: {report['recipe']['name']}",
        "",
        f"- model: `{m['spec']}`, input {'x'.join(map(str, m['input_shape']))}",
        f"- device: **{dev['name']}** — {fp.get('cpu_model', '?')}, {fp.get('logical_cores', '?')} logical cores, "
        f"fingerprint `{fp.get('id', '?')}`" + (" (host CPU measurements, not a phone)" if dev["name"] == "host" else ""),
        f"- accuracy on: {report['dataset']['name']} {report['dataset']['split']} split, {report['dataset']['n']} images",
        f"- steps applied: {', '.join(report['steps_applied']) or 'none'}",
        f"- created: {report['created_utc']} by edgecompress {report['versions'].get('edgecompress')}",
        "",
        "## Before / after",
        "",
    ]
    header = comparison_header(report)
    lines += ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in comparison_rows(report)]
    lines += ["", "## Exported files", "", "| variant | file | size | parity max abs diff | top-1 agreement | top-1 (file) |",
              "|---|---|---:|---:|---:|---:|"]
    for vname, variant in report["variants"].items():
        for fmt, art in variant.get("artifacts", {}).items():
            p = art["parity"]
            lines.append(f"| {vname} | `{art['file']}` | {human(art['size_bytes'], 'B')} | {p['max_abs_diff']:.2e} | "
                         f"{100 * p['top1_agreement']:.1f}% | {_pct(art.get('accuracy'))} |")
    lines += ["", "## Latency", "", "Median (p50) and p90 over all timed runs of all trials; each trial in a fresh process, "
              "variants interleaved trial by trial.", "",
              "| variant | file | runtime | threads | p50 ms | p90 ms | mean ms | std ms | runs x trials |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for vname, variant in report["variants"].items():
        for fmt, art in variant.get("artifacts", {}).items():
            for lat in art.get("latency", []):
                lines.append(f"| {vname} | `{art['file']}` | {lat['runtime']} {lat['runtime_version']} | {lat['threads']} | "
                             f"{lat['p50_ms']:.3f} | {lat['p90_ms']:.3f} | {lat['mean_ms']:.3f} | {lat['std_ms']:.3f} | "
                             f"{lat['runs']} x {lat['trials']} |")
    lines += _step_sections(report.get("steps") or {})
    lines += _quantized_sections(report["variants"])
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in sorted(report["versions"].items())]
    return "\n".join(lines) + "\n"


def _prune_title(run: dict[str, Any]) -> str:
    config = run["config"]
    if "policy" in config:
        return f"policy from the {config['from']}"
    return run.get("target") or f"ratio {config.get('ratio')}"


def _gradient_search_section(i: int, run: dict[str, Any]) -> list[str]:
    """A tas/snas/scas search step: what it trained on, its child and each epoch's child."""
    p, meta, r = run["params"], run["meta"], run["searched"]
    best = r["best"]
    lines = ["", f"## Step search #{i + 1}: {p['strategy']} (gradient search), target {p['target']}", "",
             f"{r['epochs']} epochs over {p['search_images']} training images (half for the weights, half for the "
             f"architecture), {r['seconds']:.0f} s; limit {meta.get('limit', float('nan')):,.4g} "
             f"({meta['budget']}); latency from {meta.get('latency_source') or 'nowhere (MACs only)'}. The child of "
             f"the last epoch replaces the model: MACs x{r['macs_ratio']:.3f}, params x{r['params_ratio']:.3f}, "
             f"top-1 {100 * best['accuracy']:.2f}% on {p['val_samples']} validation images with the weights it inherits "
             f"(TAS: the original's; SNAS, SCAS: the supernet's) before the steps after it{'' if best['feasible'] else ' — OVER the limit'}. Log and plot: "
             f"`search/{p['strategy']}/`.", ""]
    return lines + [f"- note: {n}" for n in meta.get("notes", [])]


def _rank_text(rank: Any) -> str:
    return "x".join(map(str, rank)) if isinstance(rank, list) else str(rank)


def _step_sections(steps: dict[str, Any]) -> list[str]:
    """What each compression step did: widths per pruned layer, sparsity per layer, epochs of fine-tuning."""
    lines: list[str] = []
    for i, run in enumerate(steps.get("search", [])):
        p, meta = run["params"], run["meta"]
        if meta.get("kind") == "gradient":
            lines += _gradient_search_section(i, run)
            continue
        lines += ["", f"## Step search #{i + 1}: {p['strategy']}, target {p.get('target', 'none')}", "",
                  f"{meta.get('constraint', 'no budget')}; reward {p['reward']}; latency from "
                  f"{meta.get('latency_source') or 'nowhere (MACs only)'}. Candidates are scored on {p['val_samples']} "
                  f"validation images without fine-tuning, after re-estimating BN statistics on {p['bn_batches']} "
                  f"training batches; {run['space']['groups']} groups searched, round_to {run['space']['round_to']}.", ""]
        lines += [f"- note: {n}" for n in meta.get("notes", [])]
        lines += ["", "| strategy | candidates | best top-1 (no fine-tuning) | p50 ms | MACs | seconds | latency cache hits / misses | plot |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for key in ("searched", "uniform"):
            if key in run:
                r, b = run[key], run[key]["best"]
                lat = "–" if b.get("latency_ms") is None else f"{b['latency_ms']:.3f}"
                lines.append(f"| {r['strategy']} | {r['episodes']} | {100 * b['accuracy']:.2f}% | {lat} | "
                             f"x{r['macs_ratio']:.3f} | {r['seconds']:.0f} | {r['latency_cache']['hits']} / "
                             f"{r['latency_cache']['misses']} | `search/{r['strategy']}/search.png` |")
    for i, run in enumerate(steps.get("prune", [])):
        lines += ["", f"## Step prune #{i + 1}: {_prune_title(run)}", "",
                  f"MACs x{run['macs_ratio']:.3f}, params x{run['params_ratio']:.3f}; importance {run['config']['importance']}, "
                  f"ranking {run['config']['ranking']}, round_to {run['config']['round_to']}.", "",
                  "| layer (output channels) | channels before | after | left whole because |", "|---|---:|---:|---|"]
        for g in run["groups"]:
            if not g["producers"] or g["why_whole"] in ("network input", "network output"):
                continue
            more = f" (+{len(g['producers']) - 1} coupled)" if len(g["producers"]) > 1 else ""
            lines.append(f"| `{g['producers'][0]}`{more} | {g['width_before']} | {g['width_after']} | {g['why_whole']} |")
    for i, run in enumerate(steps.get("factorize", [])):
        cfg = run["config"]
        lines += ["", f"## Step factorize #{i + 1}: {cfg['method']}, {run.get('target') or 'rank ' + str(cfg['rank'])}", "",
                  f"MACs x{run['macs_ratio']:.3f}, params x{run['params_ratio']:.3f}; round_to {cfg['round_to']}, "
                  f"sensitivity {cfg['sensitivity']}; layers timed alone with "
                  f"{run.get('latency_check') or 'nothing (no latency check)'}.", "",
                  "| layer | kind | rank / full | weight error | MACs before | after | alone ms before / after | left whole because |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for p in run["layers"]:
            rank = "–" if p["rank"] is None else f"{_rank_text(p['rank'])} / {_rank_text(p['full_rank'])}"
            err = "–" if p["rel_error"] is None else f"{p['rel_error']:.3f}"
            ms = ("–" if p["latency_before_ms"] is None
                  else f"{p['latency_before_ms']:.4f} / {p['latency_after_ms']:.4f}")
            lines.append(f"| `{p['name']}` | {p['kind']} | {rank} | {err} | {p['macs_before']:,} | {p['macs_after']:,} | "
                         f"{ms} | {p['reason']} |")
    for i, run in enumerate(steps.get("sparsify", [])):
        sp = run["sparsity"]
        lines += ["", f"## Step sparsify #{i + 1}: {sp['sparsity']:.1%} of {sp['params']:,} weights are zero", "",
                  "Dense runtimes do not run faster on unstructured zeros; compare the gzip sizes above.", "",
                  "| tensor | params | zeros | sparsity |", "|---|---:|---:|---:|"]
        lines += [f"| `{x['name']}` | {x['params']:,} | {x['zeros']:,} | {x['sparsity']:.1%} |" for x in sp["layers"]]
    for name in ("slim", "finetune"):
        for i, run in enumerate(steps.get(name, [])):
            lines += ["", f"## Step {name} #{i + 1}", "", "| epoch | train loss | val top-1 | seconds |", "|---:|---:|---:|---:|"]
            for e in run["history"]["epochs"]:
                val = "–" if e.get("val_top1") is None else f"{100 * e['val_top1']:.2f}%"
                lines.append(f"| {e['epoch']} | {e['train_loss']:.4f} | {val} | {e['seconds']:.0f} |")
    for variant, records in steps.get("variants", {}).items():
        lines += [line.replace("## Step", f"## Variant {variant}: step") for line in _step_sections(records)]
    return lines


def _quantized_sections(variants: dict[str, Any]) -> list[str]:
    """Per quantized file: the scheme and why, the candidates timed on the device, the layers left float."""
    lines: list[str] = []
    for vname, variant in variants.items():
        if "quantized" not in variant:
            continue
        for fmt, art in variant.get("artifacts", {}).items():
            q = art["quantization"]
            choice = q["scheme_choice"]
            cal = q.get("calibration") or {}
            lines += ["", f"## Quantized {FORMAT_LABEL.get(fmt, fmt)} ({vname}): `{art['file']}`", "",
                      f"Mode {q['mode']}, scheme **{q['scheme']}** (asked: {choice['requested']}): {choice['reason']}."]
            if cal:
                lines.append(f"Calibration: {cal.get('method', '?')} over {cal.get('images', '?')} training images.")
            sel = q.get("accuracy")
            if sel:
                lines.append(f"Scored while choosing (validation images): fp32 {100 * sel['fp32']:.2f}%, quantized "
                             f"{100 * sel['quantized']:.2f}%, drop {100 * sel['drop']:.2f} points (budget "
                             f"{100 * sel['budget']:.2f}).")
            measured = choice.get("measured")
            if measured:
                threads = sorted({t for c in measured["candidates"] for t in c["speedup"]}, key=int)
                lines += ["", "| candidate | top-1 | drop (points) | " + " | ".join(f"speed-up {t}T" for t in threads)
                          + " | within budget |", "|---|---:|---:|" + "---:|" * len(threads) + "---|"]
                for c in measured["candidates"]:
                    lines.append(f"| {c['scheme']} | {100 * c['accuracy']:.2f}% | {100 * c['drop']:.2f} | "
                                 + " | ".join(f"{c['speedup'][t]:.2f}x" for t in threads)
                                 + f" | {'yes' if c['within_budget'] else 'no'} |")
            if q.get("float_layers"):
                lines += ["", "| layer left float | why |", "|---|---|"]
                lines += [f"| `{name}` | {why} |" for name, why in q["float_layers"].items()]
            lines += [f"- note: {n}" for n in q.get("notes", [])]
    return lines


def write_bundle_files(bundle_dir: Path, report: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """Write report.json, report.md, recipe.yaml and, last, manifest.json into `bundle_dir`."""
    import yaml

    bundle_dir = Path(bundle_dir)
    atomic_write_json(bundle_dir / "report.json", report)
    atomic_write_text(bundle_dir / "report.md", render_markdown(report))
    atomic_write_text(bundle_dir / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    files = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file() and p.name != "manifest.json"):
        rel = path.relative_to(bundle_dir).as_posix()
        files[rel] = {"sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "files": files,
        "versions": report["versions"],
        "recipe": recipe,
        "seed": recipe.get("seed"),
        "device": report["device"],
        "created_utc": report["created_utc"],
    }
    atomic_write_json(bundle_dir / "manifest.json", manifest)
    return manifest


def verify_bundle(bundle_dir: str | Path) -> list[str]:
    """Problems found in a bundle (missing files, wrong sizes or hashes); empty when intact."""
    bundle_dir = Path(bundle_dir)
    mpath = bundle_dir / "manifest.json"
    if not mpath.is_file():
        return [f"{mpath} missing: not a complete bundle"]
    manifest = json.loads(mpath.read_text())
    problems = []
    for rel, meta in manifest["files"].items():
        path = bundle_dir / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != meta["size_bytes"] or sha256_file(path) != meta["sha256"]:
            problems.append(f"{rel}: content differs from the manifest")
    return problems
