"""Parsers for what the phone-side benchmark programs print.

`benchmark_model` (LiteRT/TFLite) and `onnxruntime_perf_test` (ONNX Runtime) print
human-readable logs whose details vary between releases: an `INFO: ` prefix or none,
extra lines, numbers in scientific notation, warnings for unknown flags. The parsers
key on the stable parts (the `count=... avg=...` statistics line that follows "Running
benchmark for at least N iterations", the `P50 Latency: x s` lines) and raise
`DeviceOutputError` quoting the output when a figure they need is missing, so a short
or garbled log is never read as a result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgecompress.errors import UserError

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STAT_LINE = re.compile(rf"count=(\d+)\s+first=({_NUMBER})\s+curr=({_NUMBER})\s+min=({_NUMBER})\s+max=({_NUMBER})"
                        rf"\s+avg=({_NUMBER})\s+std=({_NUMBER})")
_RUNNING = re.compile(r"Running benchmark for at least (\d+) iterations")


class DeviceOutputError(UserError):
    """A device program's output lacks the figures asked for; the message quotes the output."""


def quote_output(text: str, lines: int = 25, chars: int = 3000) -> str:
    """The last `lines` lines of `text`, indented, for an error message."""
    kept = text.rstrip().splitlines()[-lines:]
    body = "\n".join(f"    | {line}" for line in kept) or "    | (no output)"
    return body if len(body) <= chars else "    | ..." + body[-chars:]


def _fail(what: str, text: str) -> DeviceOutputError:
    return DeviceOutputError(f"{what}; the device printed:\n{quote_output(text)}")


@dataclass(frozen=True)
class OpTime:
    """One operator of a TFLite graph, from benchmark_model's op profile (ms per invocation)."""

    node_type: str  # e.g. CONV_2D, DEPTHWISE_CONV_2D, or a delegate kernel name
    name: str  # the node's name in the graph, e.g. "[features.0.conv]:0"
    first_ms: float
    avg_ms: float
    percent: float
    times_called: int


@dataclass(frozen=True)
class BenchmarkModelRun:
    """One `benchmark_model` invocation: the timed runs' statistics (microseconds)."""

    count: int
    avg_us: float
    std_us: float
    min_us: float
    max_us: float
    first_us: float
    init_us: float | None = None
    warmup_avg_us: float | None = None
    ops: tuple[OpTime, ...] = field(default_factory=tuple)
    xnnpack: bool | None = None  # the log says the graph ran on the XNNPACK delegate


def parse_benchmark_model(text: str) -> BenchmarkModelRun:
    """Statistics of the timed runs from a benchmark_model log (modern or legacy format).

    The timed runs' `count=... avg=... std=...` line is the one after the last "Running
    benchmark for at least N iterations" line (the first such block is the warm-up).
    Raises DeviceOutputError (quoting the log) if the tool reported an error or the line
    is missing.
    """
    lines = text.splitlines()
    errors = [line for line in lines if "ERROR" in line or line.lstrip().startswith(("Failed", "Error"))]
    stats = [(i, m) for i, line in enumerate(lines) if (m := _STAT_LINE.search(line))]
    running = [i for i, line in enumerate(lines) if _RUNNING.search(line)]
    if not stats:
        why = f"benchmark_model failed ({errors[0].strip()})" if errors else "benchmark_model printed no timing statistics"
        raise _fail(why, text)
    # The timed block: the first stat line after the last "Running benchmark" line; with
    # no such line (a trimmed log), the last stat line before any op-profile table.
    after = [m for i, m in stats if running and i > running[-1]]
    m = after[0] if after else stats[-1][1]
    count, first, _curr, lo, hi, avg, std = m.groups()
    init = re.search(rf"Init:\s*({_NUMBER})", text)
    warm = re.search(rf"Warmup(?: \(avg\))?:\s*({_NUMBER})", text)
    xnn = None
    if re.search(r"XNNPACK delegate", text):
        xnn = bool(re.search(r"completely executed by the delegate|XNNPACK delegate created", text))
    return BenchmarkModelRun(
        count=int(count), avg_us=float(avg), std_us=float(std), min_us=float(lo), max_us=float(hi),
        first_us=float(first), init_us=float(init.group(1)) if init else None,
        warmup_avg_us=float(warm.group(1)) if warm else None, ops=_op_profile(lines), xnnpack=xnn,
    )


def _op_profile(lines: list[str]) -> tuple[OpTime, ...]:
    """The "Run Order" table of "Operator-wise Profiling Info for Regular Benchmark Runs", if present."""
    try:
        start = next(i for i, line in enumerate(lines) if "Operator-wise Profiling Info for Regular Benchmark Runs" in line)
    except StopIteration:
        return ()
    ops: list[OpTime] = []
    in_table = False
    for line in lines[start + 1:]:
        cells = [c.strip() for c in line.strip().split("\t") if c.strip()]
        if "Run Order" in line:
            in_table = True
            continue
        if not in_table or (cells and cells[0].startswith("[node type]")):
            continue
        if not cells or line.startswith("="):
            if ops:
                break
            continue
        if len(cells) < 8:
            if ops:
                break
            continue
        try:
            ops.append(OpTime(node_type=cells[0], first_ms=float(cells[1]), avg_ms=float(cells[2]),
                              percent=float(cells[3].rstrip("%")), times_called=int(float(cells[6])),
                              name=cells[7]))
        except ValueError:
            break
    return tuple(ops)


@dataclass(frozen=True)
class OrtPerfRun:
    """One `onnxruntime_perf_test` invocation (ms)."""

    runs: int
    avg_ms: float
    p50_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    p95_ms: float | None = None
    p99_ms: float | None = None
    session_s: float | None = None


def parse_ort_perf_test(text: str) -> OrtPerfRun:
    """Figures of an `onnxruntime_perf_test -m times -r N ... -I` log (latencies in s → ms).

    Raises DeviceOutputError (quoting the log) when the run count, average or P50/P90 lines
    are missing.
    """
    def grab(pattern: str) -> float | None:
        m = re.search(pattern + rf"\s*:?\s*({_NUMBER})", text)
        return float(m.group(1)) if m else None

    runs = grab(r"Runs:") or grab(r"Total inference requests:")
    avg = grab(r"Average inference time cost:")
    latencies = {q: grab(rf"{q} Latency:") for q in ("Min", "Max", "P50", "P90", "P95", "P99")}
    missing = [name for name, v in (("runs", runs), ("average", avg), ("P50", latencies["P50"]),
                                    ("P90", latencies["P90"])) if v is None]
    if missing:
        raise _fail(f"onnxruntime_perf_test output lacks {', '.join(missing)}", text)
    ms = {q: v * 1000.0 if v is not None else None for q, v in latencies.items()}
    return OrtPerfRun(
        runs=int(runs), avg_ms=float(avg), p50_ms=ms["P50"], p90_ms=ms["P90"],
        min_ms=ms["Min"] if ms["Min"] is not None else ms["P50"], max_ms=ms["Max"] if ms["Max"] is not None else ms["P90"],
        p95_ms=ms["P95"], p99_ms=ms["P99"], session_s=grab(r"Session creation time cost:"),
    )
