"""The host CPU as a device: ONNX Runtime and LiteRT, one fresh subprocess per trial.

The parent never imports a runtime: each trial runs `edgecompress.devices._bench_worker`
in a new interpreter (argv list, timeout, JSON on stdout), so thread pools, allocator
arenas and caches of one trial cannot speed up or slow down the next, and a crashing
model cannot take the caller down with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from edgecompress.devices.base import THREAD_ENV_VARS, LatencyResult, check_measure_args, resolve_runtime
from edgecompress.errors import UserError
from edgecompress.versions import installed_version
from edgecompress.fsutil import sha256_file
from edgecompress.latency.stats import percentile, summarize

#: runtime -> distributions that provide it, first found wins
RUNTIME_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "litert": ("ai-edge-litert", "ai-edge-litert-nightly", "tflite-runtime"),
}
RUNTIME_INSTALL_HINT = {"onnxruntime": "pip install onnxruntime", "litert": "pip install ai-edge-litert"}

#: CPU features that decide which kernels a runtime picks (x86 and ARM spellings)
FLAGS_OF_INTEREST = (
    "sse4_2", "fma", "f16c", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "avxvnni", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2",
)

#: fingerprint fields that change the speed of a model; `id` hashes only these so that
#: a kernel or Python update does not throw away the latency cache
STABLE_FIELDS = ("cpu_model", "cpu_flags", "logical_cores", "physical_cores", "arch", "os", "runtimes")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _cpuinfo_fields(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per processor block."""
    blocks = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def _physical_cores(blocks: list[dict[str, str]]) -> int | None:
    # sysfs topology works on x86 and ARM alike; /proc/cpuinfo ids are the x86 fallback.
    cores = set()
    cpu_root = Path("/sys/devices/system/cpu")
    for topo in cpu_root.glob("cpu[0-9]*/topology"):
        package, core = _read(str(topo / "physical_package_id")).strip(), _read(str(topo / "core_id")).strip()
        if core:
            cores.add((package, core))
    if not cores:
        cores = {(b["physical id"], b["core id"]) for b in blocks if "physical id" in b and "core id" in b}
    return len(cores) or None


def host_fingerprint() -> dict:
    """CPU model, features, cores, OS, Python and runtime versions of this machine.

    `id` is the first 12 hex digits of the sha256 of the STABLE_FIELDS; the latency
    cache keys on it. Runtime versions come from package metadata, so nothing heavy
    is imported.
    """
    blocks = _cpuinfo_fields(_read("/proc/cpuinfo"))
    first = blocks[0] if blocks else {}
    model = first.get("model name") or first.get("Hardware") or platform.processor() or platform.machine()
    flags = set((first.get("flags") or first.get("Features") or "").split())
    logical = os.cpu_count() or 1
    fp = {
        "kind": "host",
        "cpu_model": model,
        "cpu_flags": sorted(f for f in FLAGS_OF_INTEREST if f in flags),
        "logical_cores": logical,
        "physical_cores": _physical_cores(blocks) or logical,
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical,
        "arch": platform.machine(),
        "os": platform.system(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "runtimes": {name: runtime_version(name) for name in RUNTIME_DISTRIBUTIONS},
    }
    stable = json.dumps({k: fp[k] for k in STABLE_FIELDS}, sort_keys=True)
    fp["id"] = hashlib.sha256(stable.encode()).hexdigest()[:12]
    return fp


def runtime_version(runtime: str) -> str | None:
    """Installed version of `runtime` ("onnxruntime" | "litert") or None, without importing it."""
    return next((v for v in map(installed_version, RUNTIME_DISTRIBUTIONS[runtime]) if v is not None), None)


def _tail(text: str, lines: int = 4, chars: int = 600) -> str:
    """The last lines of a worker's stderr, on one line (UserError messages are one line)."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    joined = " | ".join(kept) or "(no output)"
    return joined if len(joined) <= chars else "..." + joined[-chars:]


def host_round_to() -> int:
    """Channel multiple this CPU's runtimes are fast at: ONNX Runtime's NCHWc convolutions (MLAS) use
    blocks of 16 channels with AVX-512F and of 8 with AVX2; other channel counts fall back to slower
    kernels with layout reorders between them. Measured on an AVX-512 Xeon (the demo model pruned to
    ~half its MACs, ONNX Runtime 1 thread): unrounded 0.48x the dense speed, multiples of 8 1.54x,
    multiples of 16 2.19x."""
    flags = set()
    for block in _cpuinfo_fields(_read("/proc/cpuinfo"))[:1]:
        flags = set((block.get("flags") or block.get("Features") or "").split())
    return 16 if "avx512f" in flags else 8


class LocalDevice:
    """This machine's CPU ("host"); see the module docstring for how it measures."""

    name = "host"

    def __init__(self, timeout_s: float = 600.0, seed: int = 0) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 s, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.seed = int(seed)
        self._fingerprint: dict | None = None

    def __repr__(self) -> str:
        return f"LocalDevice(timeout_s={self.timeout_s}, seed={self.seed})"

    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = host_fingerprint()
        return dict(self._fingerprint)

    def round_to(self) -> int:
        """See `host_round_to`."""
        return host_round_to()

    def runtimes(self) -> list[str]:
        return [name for name in RUNTIME_DISTRIBUTIONS if runtime_version(name) is not None]

    def measure(
        self,
        artifact: Path,
        runtime: str | None = None,
        threads: int = 1,
        runs: int = 50,
        warmup: int = 10,
        trials: int = 3,
    ) -> LatencyResult:
        """Time `artifact` in `trials` fresh subprocesses of `warmup` + `runs` invocations.

        p50/p90/mean/std/min (ms) are over all runs * trials samples; each trial's p50
        is kept in `trial_p50s_ms`. Raises UserError for bad arguments, a runtime that is
        not installed, or a worker that fails or exceeds `timeout_s` (with its stderr).
        """
        check_measure_args(threads, runs, warmup, trials)
        path, runtime = resolve_runtime(artifact, runtime)
        if runtime not in self.runtimes():
            raise UserError(f"runtime {runtime!r} is not installed on this host; {RUNTIME_INSTALL_HINT[runtime]}")
        path = path.resolve()
        outputs = [self._trial(path, runtime, threads, runs, warmup) for _ in range(trials)]
        trial_samples = [out["samples_ms"] for out in outputs]
        pooled = [s for samples in trial_samples for s in samples]
        stats = summarize(pooled)
        return LatencyResult(
            p50_ms=stats["p50"],
            p90_ms=stats["p90"],
            mean_ms=stats["mean"],
            std_ms=stats["std"],
            min_ms=stats["min"],
            runs=runs,
            warmup=warmup,
            trials=trials,
            threads=threads,
            runtime=runtime,
            runtime_version=str(outputs[0]["runtime_version"]),
            artifact=str(path),
            artifact_sha256=sha256_file(path),
            device=self.name,
            fingerprint=self.fingerprint(),
            trial_p50s_ms=[percentile(s, 50) for s in trial_samples],
            samples_ms=pooled,
            runtime_info=dict(outputs[0].get("runtime_info", {})),
        )

    def _trial(self, path: Path, runtime: str, threads: int, runs: int, warmup: int) -> dict:
        argv = [
            sys.executable, "-m", "edgecompress.devices._bench_worker",
            "--artifact", str(path), "--runtime", runtime, "--threads", str(threads),
            "--runs", str(runs), "--warmup", str(warmup), "--seed", str(self.seed),
        ]  # fmt: skip
        env = dict(os.environ)
        env.update({var: str(threads) for var in THREAD_ENV_VARS})
        # The worker must import this same edgecompress, installed or not.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        where = f"{runtime} on {path.name} (threads={threads})"
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"benchmark of {where} took longer than {self.timeout_s:g} s; "
                f"lower --runs/--warmup or raise the device timeout"
            ) from None
        if proc.returncode != 0:
            raise UserError(f"benchmark of {where} failed (exit {proc.returncode}): {_tail(proc.stderr)}")
        try:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise UserError(f"benchmark of {where} printed no result: {_tail(proc.stderr)}") from None
        if len(out.get("samples_ms", [])) != runs:
            raise UserError(f"benchmark of {where} returned {len(out.get('samples_ms', []))} samples, expected {runs}")
        return out
