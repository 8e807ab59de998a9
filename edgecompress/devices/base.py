"""What a device is (`Device`), what a measurement returns (`LatencyResult`), and the
argument checks every device shares.

Search and reporting code only see these two types, never which device produced them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edgecompress.errors import UserError, suggest

#: runtime name -> artifact suffix it runs
RUNTIME_SUFFIX = {"onnxruntime": ".onnx", "litert": ".tflite"}
SUFFIX_RUNTIME = {suffix: runtime for runtime, suffix in RUNTIME_SUFFIX.items()}
#: short names a user may type for a runtime
RUNTIME_ALIASES = {"ort": "onnxruntime", "tflite": "litert"}
#: thread-count variables of the math libraries a runtime may link; a benchmark
#: process gets all of them set to its thread count
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class DeviceUnavailableError(UserError):
    """The device stopped answering (unplugged, offline, rebooting) in the middle of work.

    Long jobs (a search, a sweep) catch this one to stop at their last checkpoint and say
    how to continue once the device is back, instead of failing like bad input. The CLI
    exits with 75 (EX_TEMPFAIL: try again later) rather than 2.
    """

    exit_code = 75


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one artifact on one device at one thread count.

    Times are in ms. `runs` is the number of timed invocations per trial, so the pooled
    samples number `runs * trials`; p50/p90/mean/std/min are over the pooled samples and
    `trial_p50s_ms` keeps each trial's own p50 to show drift between trials.
    `runtime_info` records how the runtime ran (e.g. whether XNNPACK was applied).
    """

    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    runs: int
    warmup: int
    trials: int
    threads: int
    runtime: str
    runtime_version: str
    artifact: str
    artifact_sha256: str
    device: str
    fingerprint: dict = field(default_factory=dict)
    trial_p50s_ms: list = field(default_factory=list)
    samples_ms: list | None = None
    runtime_info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIME_SUFFIX:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIME_SUFFIX)}, got {self.runtime!r}")
        for name in ("p50_ms", "p90_ms", "mean_ms", "std_ms", "min_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ValueError(f"{name} must be a number >= 0 ms, got {value!r}")
        if self.p50_ms > self.p90_ms:
            raise ValueError(f"p50_ms ({self.p50_ms}) must not exceed p90_ms ({self.p90_ms})")
        for name, low in (("runs", 1), ("warmup", 0), ("trials", 1), ("threads", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if len(self.trial_p50s_ms) != self.trials:
            raise ValueError(f"trial_p50s_ms must hold one p50 per trial ({self.trials}), got {len(self.trial_p50s_ms)}")
        if self.samples_ms is not None and len(self.samples_ms) != self.runs * self.trials:
            raise ValueError(
                f"samples_ms must hold runs * trials = {self.runs * self.trials} samples, got {len(self.samples_ms)}"
            )

    def to_dict(self) -> dict:
        """A JSON-ready dict (deep copy); `from_dict` reverses it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        """Rebuild from `to_dict()` output; unknown keys (from a newer version) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - data.keys())
        if missing:
            raise ValueError(f"latency result is missing {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in names}
        # JSON has no tuples and YAML may give ints for floats: normalise both.
        for key in ("trial_p50s_ms", "samples_ms"):
            if kwargs.get(key) is not None:
                kwargs[key] = [float(v) for v in kwargs[key]]
        return cls(**kwargs)


@runtime_checkable
class Device(Protocol):
    """A place to run an artifact and time it (this CPU, a phone over adb, ...)."""

    name: str

    def fingerprint(self) -> dict:
        """What identifies the hardware + software stack; has a short stable `id`."""
        ...

    def measure(
        self,
        artifact: Path,
        runtime: str | None = None,
        threads: int = 1,
        runs: int = 50,
        warmup: int = 10,
        trials: int = 3,
    ) -> LatencyResult:
        """Time `artifact` (.onnx or .tflite); runtime None = chosen by the file suffix."""
        ...

    def runtimes(self) -> list[str]:
        """Runtimes this device can measure with, e.g. ["onnxruntime", "litert"]."""
        ...


def check_measure_args(threads: int, runs: int, warmup: int, trials: int) -> None:
    """UserError naming the first bad count (threads, runs, warmup, trials)."""
    for name, value, low in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0), ("trials", trials, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            kind = "a positive integer" if low == 1 else "an integer >= 0"
            raise UserError(f"{name} must be {kind}, got {value!r}")


def resolve_runtime(artifact: str | Path, runtime: str | None) -> tuple[Path, str]:
    """Check the artifact exists and fits the runtime; returns (path, runtime name).

    `runtime` None picks the runtime from the suffix (.onnx -> onnxruntime,
    .tflite -> litert); aliases "ort" and "tflite" are accepted.
    """
    path = Path(artifact)
    suffixes = ", ".join(f"{s} ({r})" for s, r in SUFFIX_RUNTIME.items())
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"artifact {str(path)!r} {what}; pass the path of a model file: {suffixes}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIX_RUNTIME:
        raise UserError(f"artifact {str(path)!r} has suffix {suffix or '(none)'!r}; latency is measured on {suffixes} files")
    if runtime is None:
        return path, SUFFIX_RUNTIME[suffix]
    name = RUNTIME_ALIASES.get(runtime.lower(), runtime.lower())
    if name not in RUNTIME_SUFFIX:
        raise UserError(
            f"unknown runtime {runtime!r}{suggest(runtime, [*RUNTIME_SUFFIX, *RUNTIME_ALIASES])}; "
            f"valid: {', '.join(RUNTIME_SUFFIX)}"
        )
    if RUNTIME_SUFFIX[name] != suffix:
        raise UserError(
            f"runtime {name!r} cannot run {str(path)!r}: it takes {RUNTIME_SUFFIX[name]} files; "
            f"use --runtime {SUFFIX_RUNTIME[suffix]} or leave --runtime out"
        )
    return path, name
