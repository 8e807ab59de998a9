"""Choose the int8 scheme by measurement: build each candidate, time it against the fp32
file on the target device (interleaved), evaluate it, keep the fastest within budget.

Which scheme is fastest depends on the CPU and runtime build (uint8 activations run
1.5x faster than fp32 on one x86 host where int8 activations gained nothing; ARM cores
with dot-product instructions prefer int8): no table answers it, the device does. And
int8 can lose to fp32 outright, in which case the answer is the fp32 file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgecompress.errors import UserError, suggest
from edgecompress.quantize.base import QuantizedArtifact
from edgecompress.quantize.onnx_quant import DYNAMIC_SCHEME, STATIC_SCHEMES, prepare_static, quantize_onnx_dynamic
from edgecompress.quantize.sensitivity import Evaluate, EvaluationCounter

#: schemes choose_scheme can build
SCHEMES = (*STATIC_SCHEMES, DYNAMIC_SCHEME)


@dataclass(frozen=True)
class CandidateResult:
    """One candidate file: top-1 (fraction) and its drop from fp32, p50 latency (ms) and
    speedup over the fp32 file (fp32 p50 / this p50) at each thread count."""

    scheme: str
    path: Path
    accuracy: float
    drop: float
    p50_ms: dict[int, float]
    speedup: dict[int, float]
    within_budget: bool
    artifact: QuantizedArtifact

    @property
    def mean_speedup(self) -> float:
        """Geometric mean of the speedups over the thread counts measured."""
        return math.exp(sum(math.log(s) for s in self.speedup.values()) / len(self.speedup))

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme, "path": str(self.path), "accuracy": self.accuracy, "drop": self.drop,
            "p50_ms": dict(self.p50_ms), "speedup": dict(self.speedup), "mean_speedup": self.mean_speedup,
            "within_budget": self.within_budget, "float_layers": dict(self.artifact.float_layers),
            "notes": list(self.artifact.notes),
        }


@dataclass(frozen=True)
class SchemeChoice:
    """The scheme to ship (None: ship the fp32 file) and the evidence.

    path: the chosen file, or the fp32 file when no candidate qualifies. reason: one line.
    """

    scheme: str | None
    path: Path
    reason: str
    device: str
    budget: float
    fp32_path: Path
    fp32_accuracy: float
    fp32_p50_ms: dict[int, float]
    candidates: tuple[CandidateResult, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme, "path": str(self.path), "reason": self.reason, "device": self.device,
            "budget": self.budget, "fp32": {"path": str(self.fp32_path), "accuracy": self.fp32_accuracy,
                                            "p50_ms": dict(self.fp32_p50_ms)},
            "candidates": [c.to_dict() for c in self.candidates],
        }


def _check_candidates(candidates: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(candidates))
    if not chosen:
        raise UserError(f"no candidate schemes given; choose from {', '.join(SCHEMES)}")
    for scheme in chosen:
        if scheme not in SCHEMES:
            raise UserError(f"unknown quantization scheme {scheme!r}{suggest(scheme, SCHEMES)}; choose from {', '.join(SCHEMES)}")
    return chosen


def _threads_text(threads: Sequence[int]) -> str:
    return f"{'/'.join(str(t) for t in threads)} thread{'s' if list(threads) != [1] else ''}"


def choose_scheme(
    fp32_onnx: str | Path,
    calib,
    evaluate: Evaluate,
    device,
    out_dir: str | Path,
    *,
    input_shape: Sequence[int],
    threads: Sequence[int] = (1,),
    budget: float = 0.005,
    candidates: Sequence[str] = ("qdq-u8s8-per-channel", "qdq-s8s8-per-channel"),
    method: str = "minmax",
    runs: int = 50,
    warmup: int = 10,
    trials: int = 3,
    min_speedup: float = 1.0,
) -> SchemeChoice:
    """Build each candidate scheme of `fp32_onnx` in `out_dir`, measure and pick one.

    Every candidate and the fp32 file are timed on `device` at each of `threads`,
    trial by trial interleaved (`latency.interleave.measure_interleaved`), and
    evaluated with `evaluate(path) -> top-1 in [0, 1]`. The choice is the candidate
    with the highest speedup (geometric mean over `threads`) among those whose top-1
    drop is within `budget` (fraction) and whose speedup exceeds `min_speedup`; when
    none qualifies the choice is None and the fp32 file is the answer. Files are named
    model.<scheme>.onnx; runs/warmup/trials are per measurement (see Device.measure).
    """
    from edgecompress.latency.interleave import measure_interleaved

    schemes = _check_candidates(candidates)
    threads = list(dict.fromkeys(int(t) for t in threads))
    if not threads or min(threads) < 1:
        raise UserError(f"threads {threads} must be one or more counts >= 1")
    if not 0.0 <= float(budget) < 1.0:
        raise UserError(f"accuracy budget {budget} must be a fraction in [0, 1), e.g. 0.005 for half a point")
    fp32 = Path(fp32_onnx)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, QuantizedArtifact] = {}
    static = [s for s in schemes if s in STATIC_SCHEMES]
    if static:
        with prepare_static(fp32, calib, input_shape=input_shape, method=method) as prepared:
            for scheme in static:
                activations, per_channel = STATIC_SCHEMES[scheme]
                artifacts[scheme] = prepared.quantize(out_dir / f"model.{scheme}.onnx", activations=activations,
                                                      per_channel=per_channel, check_host=True)
    if DYNAMIC_SCHEME in schemes:
        artifacts[DYNAMIC_SCHEME] = quantize_onnx_dynamic(fp32, out_dir / f"model.{DYNAMIC_SCHEME}.onnx")

    evaluations = EvaluationCounter(evaluate)
    fp32_accuracy = evaluations(fp32)
    accuracy = {scheme: evaluations(artifact.path) for scheme, artifact in artifacts.items()}
    paths = [fp32, *(artifacts[s].path for s in schemes)]
    latency = measure_interleaved(device, paths, threads, runs=runs, warmup=warmup, trials=trials)
    fp32_p50 = {t: latency[(fp32, t)].p50_ms for t in threads}

    results = []
    for scheme in schemes:
        artifact = artifacts[scheme]
        p50 = {t: latency[(artifact.path, t)].p50_ms for t in threads}
        drop = fp32_accuracy - accuracy[scheme]
        results.append(CandidateResult(
            scheme=scheme, path=artifact.path, accuracy=accuracy[scheme], drop=drop, p50_ms=p50,
            speedup={t: fp32_p50[t] / p50[t] for t in threads}, within_budget=drop <= budget, artifact=artifact,
        ))
    name = getattr(device, "name", str(device))
    where = f"on {name} at {_threads_text(threads)}"
    accurate = [r for r in results if r.within_budget]
    qualifying = sorted((r for r in accurate if r.mean_speedup > min_speedup), key=lambda r: -r.mean_speedup)
    if qualifying:
        best = qualifying[0]
        reason = (f"{best.scheme}: {best.mean_speedup:.2f}x the speed of fp32 {where}, top-1 {best.accuracy:.2%} "
                  f"(drop {best.drop * 100:.2f} points, budget {budget * 100:.2f})"
                  + (f"; fastest of {len(qualifying)} within budget" if len(qualifying) > 1 else ""))
        scheme, path = best.scheme, best.path
    elif not accurate:
        least = min(results, key=lambda r: r.drop)
        reason = (f"no int8 scheme keeps top-1 within {budget * 100:.2f} points (least drop: {least.scheme}, "
                  f"{least.drop * 100:.2f} points): ship the fp32 file")
        scheme, path = None, fp32
    else:
        fastest = max(accurate, key=lambda r: r.mean_speedup)
        reason = (f"int8 is not faster than fp32 {where} (best within budget: {fastest.scheme} at "
                  f"{fastest.mean_speedup:.2f}x, needs > {min_speedup:.2f}x): ship the fp32 file")
        scheme, path = None, fp32
    return SchemeChoice(
        scheme=scheme, path=path, reason=reason, device=name, budget=float(budget), fp32_path=fp32,
        fp32_accuracy=fp32_accuracy, fp32_p50_ms=fp32_p50, candidates=tuple(results),
    )
