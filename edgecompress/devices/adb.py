"""An Android phone on adb as a `Device`: push the artifact, run the benchmark program on the
big cores, parse its output.

Everything goes through the `adb` executable (argv lists, a timeout on every call, `-s
SERIAL`). Two facts about the real client shape this module:

- `adb shell A B C` joins its arguments with spaces and the device's shell parses the
  result again. So every device command is built here as ONE string in which every path
  and argument is single-quoted (`shlex.quote`); an artifact named `a b;reboot.tflite`
  is a file name on the phone, never a command.
- when the connection drops in the middle of a command's output, the client prints what
  it had and exits 0, and phones without the shell protocol v2 always exit 0. So every
  command ends with an explicit end marker carrying the exit code (`@@EC_END <rc>`);
  output without it is a failed run (retried, since adb drops are usually transient),
  never a short result.

The phone side is `android_bench/run_bench.sh` (pin with taskset, repeat rounds, print
thermal zones and round markers) plus the benchmark binaries that `edgecompress devices
setup` pushes to `/data/local/tmp/edgecompress/bin/`.

Statistics: `benchmark_model` prints per-invocation aggregates (count, avg, std, min, max),
not single runs, so each trial runs it `rounds` times with `ceil(runs / rounds)` timed runs
and p50/p90 are over those round means (recorded in `runtime_info["percentiles_over"]`);
mean and std are the exact pooled figures of all timed runs. `onnxruntime_perf_test`
prints its own P50/P90 per round; the result takes the median over rounds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from edgecompress.devices.base import DeviceUnavailableError, LatencyResult, check_measure_args, resolve_runtime
from edgecompress.devices.parsers import (
    BenchmarkModelRun, DeviceOutputError, OpTime, OrtPerfRun, parse_benchmark_model, parse_ort_perf_test, quote_output,
)
from edgecompress.errors import UserError
from edgecompress.fsutil import sha256_file

DEVICE_ROOT = "/data/local/tmp/edgecompress"
BIN_DIR = f"{DEVICE_ROOT}/bin"
RUN_DIR = f"{DEVICE_ROOT}/run"
RUNNER = f"{BIN_DIR}/run_bench.sh"
RUNNER_SOURCE = Path(__file__).resolve().parents[2] / "android_bench" / "run_bench.sh"
#: runtime -> benchmark program's file name under BIN_DIR
PROGRAMS = {"litert": "benchmark_model", "onnxruntime": "onnxruntime_perf_test"}
END_MARK = "@@EC_END"
ADB_INSTALL_HINT = ("install Android platform-tools: `apt-get install adb` (Debian/Ubuntu package adb) or the SDK's "
                    "platform-tools, or pass --adb PATH")
SUPPORTED_ABIS = ("arm64-v8a", "x86_64")
#: adb client messages that mean "try again": the phone or the USB link hiccuped
_TRANSIENT = re.compile(r"device offline|connection reset|closed|protocol fault|no devices/emulators found|"
                        r"device still (?:connecting|authorizing)|broken pipe|transport", re.IGNORECASE)
#: thermal zone types that measure the CPU / SoC (others: battery, skin, modem ...)
_CPU_ZONE = re.compile(r"cpu|soc|tsens|cluster|big|little|mtktscpu|^ap", re.IGNORECASE)


class AdbError(UserError):
    """adb or the phone failed in a way the user must act on."""


class TransientAdbError(AdbError):
    """The link dropped or the phone was briefly offline: worth a retry."""


class AdbDeviceGoneError(AdbError, DeviceUnavailableError):
    """The phone is no longer attached, or stayed offline through every retry."""


def find_adb(explicit: str | os.PathLike | None = None) -> str:
    """Path of the adb executable: `explicit` (--adb), else $ADB, else the first `adb` on PATH."""
    candidate = str(explicit) if explicit else os.environ.get("ADB")
    if candidate:
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            raise AdbError(f"adb executable {candidate!r} does not exist or is not executable; {ADB_INSTALL_HINT}")
        return candidate
    found = shutil.which("adb")
    if not found:
        raise AdbError(f"the adb executable was not found on PATH; {ADB_INSTALL_HINT}")
    return found


def q(value: object) -> str:
    """One shell word for the device's shell."""
    return shlex.quote(str(value))


@dataclass
class AdbClient:
    """Runs adb commands for one serial, with timeouts, retries and the end-of-output marker."""

    adb: str
    serial: str | None = None
    timeout_s: float = 600.0
    retries: int = 3
    backoff_s: float = 1.0

    def run(self, args: list[str], timeout_s: float | None = None, serial: bool = True) -> subprocess.CompletedProcess:
        """`adb [-s SERIAL] ARGS...`; AdbError on timeout (the process is killed)."""
        argv = [self.adb, *(["-s", self.serial] if serial and self.serial else []), *args]
        limit = timeout_s or self.timeout_s
        try:
            return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=limit,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise AdbError(f"`{' '.join(argv[:4])} ...` did not finish within {limit:g} s and was killed; "
                           "the phone may be hung, raise the timeout for long benchmarks") from None
        except OSError as exc:
            raise AdbError(f"cannot run {self.adb!r} ({exc}); {ADB_INSTALL_HINT}") from None

    def _checked(self, proc: subprocess.CompletedProcess, what: str) -> None:
        if proc.returncode == 0:
            return
        text = proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}"
        message = text.splitlines()[0]
        if "not found" in message and "device" in message:
            raise AdbDeviceGoneError(f"device {self.serial!r} is not attached ({message}); `edgecompress devices` lists the "
                           "phones adb sees")
        if "unauthorized" in text:
            raise AdbError(f"device {self.serial!r} is unauthorized: unlock the phone and accept the "
                           "'Allow USB debugging' prompt for this computer, then retry")
        cls = TransientAdbError if _TRANSIENT.search(message) else AdbError
        raise cls(f"adb {what} on {self.serial or 'the device'} failed (exit {proc.returncode}): {message}")

    def _retrying(self, fn, what: str):
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except TransientAdbError as exc:
                if attempt == self.retries:
                    raise AdbDeviceGoneError(f"{exc} (gave up after {self.retries + 1} attempts; check the cable and "
                                   "`adb devices`)") from None
                time.sleep(self.backoff_s * (2 ** attempt))
        raise AssertionError("unreachable")

    def shell(self, command: str, timeout_s: float | None = None) -> tuple[int, str]:
        """Run `command` (already quoted) on the device; (exit code, stdout+stderr).

        The exit code comes from the end marker, so it is right on phones without the
        shell protocol v2 too. Output without the marker (a dropped link) is retried,
        then an AdbError.
        """
        wrapped = f"( {command} ) 2>&1; ec=$?; echo; echo {END_MARK} $ec"

        def once() -> tuple[int, str]:
            proc = self.run(["shell", wrapped], timeout_s)
            text = proc.stdout
            m = None
            for m in re.finditer(rf"^{END_MARK} (\d+)\s*$", text, re.MULTILINE):
                pass
            if m is None:
                self._checked(proc, "shell")
                raise TransientAdbError(
                    f"the output of `{command[:80]}` ended without its end marker (the connection dropped "
                    f"mid-run); it was:\n{quote_output(text, 8)}")
            body = text[:m.start()]
            return int(m.group(1)), body[:-1] if body.endswith("\n") else body

        return self._retrying(once, "shell")

    def push(self, local: Path, remote: str, timeout_s: float | None = None) -> None:
        def once() -> None:
            self._checked(self.run(["push", str(local), remote], timeout_s), f"push of {local.name}")
        self._retrying(once, "push")


def list_adb_devices(adb: str | None = None) -> list[dict]:
    """Every device `adb devices -l` reports: serial, state (device, unauthorized, offline, ...)
    and its -l fields (model, product, device, transport_id). AdbError if adb is absent or fails."""
    client = AdbClient(find_adb(adb), timeout_s=30.0)
    proc = client.run(["devices", "-l"], serial=False)
    client._checked(proc, "devices")
    found = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith(("List of devices", "*")):
            continue
        info = {"serial": parts[0], "state": parts[1]}
        info.update(p.split(":", 1) for p in parts[2:] if ":" in p)
        found.append(info)
    return found


STATE_HELP = {
    "unauthorized": "unlock the phone and accept the 'Allow USB debugging' prompt",
    "offline": "the phone is not responding to adb: reconnect the cable or run `adb reconnect`",
    "no permissions": "the USB device is not accessible: add a udev rule for it or run adb as root",
    "recovery": "the phone is in recovery mode: boot it normally",
    "bootloader": "the phone is in the bootloader: boot it normally",
}


def big_core_mask(max_freqs_khz: dict[int, int]) -> str:
    """Hex taskset mask of the cores with the highest max frequency ('f0' for 4 big of 8)."""
    if not max_freqs_khz:
        raise ValueError("no CPU frequencies to choose big cores from")
    top = max(max_freqs_khz.values())
    return format(sum(1 << cpu for cpu, f in max_freqs_khz.items() if f == top), "x")


_PROPS = ("ro.product.manufacturer", "ro.product.model", "ro.build.fingerprint", "ro.soc.manufacturer", "ro.soc.model",
          "ro.board.platform", "ro.hardware", "ro.product.cpu.abi", "ro.build.version.release", "ro.build.version.sdk")


class AdbDevice:
    """One phone on adb; see the module docstring for how it measures.

    `cpu_mask` None pins to the big cores found in the fingerprint; "-" does not pin.
    `thermal_limit_c`: before each trial, wait (up to `max_cooldown_s`) until the hottest
    CPU thermal zone is below it. `canary`: an artifact re-measured before and after each
    `measure` to detect drift (clock or thermal changes); a change above
    `canary_tolerance` is warned about and recorded.
    """

    def __init__(self, serial: str, adb: str | os.PathLike | None = None, *, cpu_mask: str | None = None,
                 rounds: int = 5, cooldown_s: float = 0.0, thermal_limit_c: float = 45.0,
                 max_cooldown_s: float = 120.0, timeout_s: float = 600.0, retries: int = 3,
                 flags: dict | None = None, binaries: dict | None = None, canary: Path | None = None,
                 canary_tolerance: float = 0.10) -> None:
        if not serial:
            raise UserError("an adb device needs a serial: use --device adb:SERIAL (see `edgecompress devices`)")
        if not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        self.serial = serial
        self.name = f"adb:{serial}"
        self.client = AdbClient(find_adb(adb), serial, timeout_s=timeout_s, retries=retries)
        self.cpu_mask = cpu_mask
        self.rounds = rounds
        self.cooldown_s = float(cooldown_s)
        self.thermal_limit_c = float(thermal_limit_c)
        self.max_cooldown_s = float(max_cooldown_s)
        self.flags = {k: list(v) for k, v in (flags or {}).items()}
        #: runtime -> benchmark program's path on the phone
        self.binaries = {rt: (binaries or {}).get(rt, f"{BIN_DIR}/{name}") for rt, name in PROGRAMS.items()}
        self.canary = Path(canary) if canary else None
        self.canary_tolerance = float(canary_tolerance)
        self._fingerprint: dict | None = None

    def __repr__(self) -> str:
        return f"AdbDevice({self.serial!r})"

    # --- identity ---------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """Model, build fingerprint, SoC, ABI, Android version, per-core max frequency (kHz),
        the big-core mask and the benchmark binaries' hashes (their "version")."""
        if self._fingerprint is None:
            self._fingerprint = self._read_fingerprint()
        return dict(self._fingerprint)

    def _read_fingerprint(self) -> dict:
        props = "; ".join(f"echo {q(p)}=\"$(getprop {q(p)})\"" for p in _PROPS)
        freqs = ("for c in /sys/devices/system/cpu/cpu[0-9]*; do "
                 "echo \"freq ${c##*/} $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null)\"; done")
        sums = "; ".join(f"[ -f {q(path)} ] && echo \"bin {rt} $(sha256sum {q(path)} | cut -d' ' -f1)\""
                         for rt, path in self.binaries.items()) + "; true"
        rc, out = self.client.shell(f"{props}; {freqs}; {sums}", timeout_s=60)
        if rc != 0:
            raise AdbError(f"reading the fingerprint of {self.name} failed (exit {rc}):\n{quote_output(out)}")
        prop, cpus, binaries = {}, {}, {}
        for line in out.splitlines():
            if line.startswith("freq "):
                parts = line.split()
                if len(parts) == 3 and parts[2].isdigit():
                    cpus[int(parts[1][3:])] = int(parts[2])
            elif line.startswith("bin "):
                _, name, digest = (line.split() + ["", ""])[:3]
                binaries[name] = digest
            elif "=" in line:
                key, _, value = line.partition("=")
                prop[key.strip()] = value.strip()
        abi = prop.get("ro.product.cpu.abi", "")
        fp = {
            "kind": "android",
            "serial": self.serial,
            "manufacturer": prop.get("ro.product.manufacturer", ""),
            "model": prop.get("ro.product.model", ""),
            "build_fingerprint": prop.get("ro.build.fingerprint", ""),
            "soc": prop.get("ro.soc.model") or prop.get("ro.board.platform") or prop.get("ro.hardware", ""),
            "abi": abi,
            "android": prop.get("ro.build.version.release", ""),
            "sdk": prop.get("ro.build.version.sdk", ""),
            "cpu_max_khz": {str(k): v for k, v in sorted(cpus.items())},
            "big_core_mask": big_core_mask(cpus) if cpus else None,
            "runtimes": {rt: f"{PROGRAMS[rt]}@sha256:{binaries[rt][:12]}" for rt in PROGRAMS if binaries.get(rt)},
        }
        stable = {k: fp[k] for k in ("model", "build_fingerprint", "soc", "abi", "sdk", "cpu_max_khz", "runtimes")}
        fp["id"] = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]
        return fp

    def check_abi(self) -> None:
        abi = self.fingerprint()["abi"]
        if abi not in SUPPORTED_ABIS:
            raise AdbError(f"{self.name} reports ABI {abi!r}; the benchmark binaries are built for "
                           f"{' or '.join(SUPPORTED_ABIS)} (64-bit) — a 32-bit phone is not supported")

    def measure_flags(self) -> dict:
        """Settings that change timings but are not in the fingerprint (part of the latency cache key)."""
        return {"cpu_mask": self._mask(), "rounds": self.rounds, "flags": self.flags,
                "thermal_limit_c": self.thermal_limit_c}

    def runtimes(self) -> list[str]:
        """Runtimes whose benchmark program is installed on the phone (`devices setup`)."""
        return sorted(self.fingerprint()["runtimes"])

    def round_to(self) -> int:
        """Channel multiple XNNPACK/NEON kernels like on ARM (4 floats per 128-bit register, tiles of 8)."""
        return 8

    # --- set-up ------------------------------------------------------------------------
    def setup(self, benchmark_model: Path | None = None, ort_perf_test: Path | None = None) -> dict:
        """Push the runner script and the given benchmark binaries to BIN_DIR and check each
        starts on the phone. Returns {program: device path}."""
        self.check_abi()
        wanted = {"litert": benchmark_model, "onnxruntime": ort_perf_test}
        for rt, path in wanted.items():
            name = PROGRAMS[rt]
            if path is not None and not Path(path).is_file():
                raise UserError(f"{name} binary {str(path)!r} does not exist; see android_bench/README.md for "
                                "how to get it")
        self._ok(f"mkdir -p {q(BIN_DIR)} {q(RUN_DIR)}", "creating the work folders")
        self.client.push(RUNNER_SOURCE, RUNNER)
        installed = {"run_bench.sh": RUNNER}
        for rt, path in wanted.items():
            if path is None:
                continue
            name, target = PROGRAMS[rt], self.binaries[rt]
            self._ok(f"mkdir -p {q(target.rsplit('/', 1)[0])}", "creating the binaries' folder")
            self.client.push(Path(path), target)
            self._ok(f"chmod 755 {q(target)}", f"making {name} executable")
            rc, out = self.client.shell(f"{q(target)} --help", timeout_s=60)
            if rc in (126, 127) or re.search(r"not found|exec format error|cannot execute|linker", out, re.I):
                raise AdbError(f"{name} does not run on {self.name} (exit {rc}); is it an "
                               f"{self.fingerprint()['abi']} build?\n{quote_output(out)}")
            installed[name] = target
        self._fingerprint = None  # binaries changed: their hashes are part of the fingerprint
        return installed

    def _ok(self, command: str, what: str, timeout_s: float | None = 60) -> str:
        rc, out = self.client.shell(command, timeout_s=timeout_s)
        if rc != 0:
            raise AdbError(f"{what} on {self.name} failed (exit {rc}):\n{quote_output(out)}")
        return out

    # --- measuring ---------------------------------------------------------------------
    def measure(self, artifact: Path, runtime: str | None = None, threads: int = 1, runs: int = 50,
                warmup: int = 10, trials: int = 3) -> LatencyResult:
        """Time `artifact` on the phone: `trials` runner invocations of `rounds` rounds each,
        pinned to the big cores, with a thermal wait and `cooldown_s` between trials."""
        check_measure_args(threads, runs, warmup, trials)
        path, runtime = resolve_runtime(artifact, runtime)
        self._require(runtime)
        canary_before = self._canary_ms(runtime, threads)
        per_round = max(1, math.ceil(runs / self.rounds))
        remote = self._push_artifact(path)
        trials_out, thermal = [], []
        try:
            for t in range(trials):
                if t and self.cooldown_s:
                    time.sleep(self.cooldown_s)
                thermal.append(self.wait_until_cool())
                trials_out.append(self._trial(remote, runtime, threads, per_round, warmup, path.name))
        finally:
            self._cleanup(remote)
        info = {"rounds": self.rounds, "runs_per_round": per_round, "cpu_mask": self._mask(),
                "thermal_c_before_trials": thermal, "program": PROGRAMS[runtime]}
        if canary_before is not None:
            after = self._canary_ms(runtime, threads)
            drift = after / canary_before - 1.0
            info["canary_ms"] = [canary_before, after]
            if abs(drift) > self.canary_tolerance:
                info["canary_drift"] = drift
                warnings.warn(f"{self.name}: the canary model took {canary_before:.3f} ms before and {after:.3f} ms "
                              f"after measuring {path.name} ({drift:+.0%}); the phone's speed drifted (thermal "
                              "throttling or a background task): treat these figures with care", stacklevel=2)
        fp = self.fingerprint()
        return _combine(runtime, trials_out, runs=runs, warmup=warmup, threads=threads, info=info,
                        artifact=str(path), sha=sha256_file(path), device=self.name, fingerprint=fp,
                        version=fp["runtimes"][runtime])

    def profile_ops(self, artifact: Path, threads: int = 1, runs: int = 50, warmup: int = 10) -> list[OpTime]:
        """Per-operator times (ms per invocation) from benchmark_model --enable_op_profiling=true."""
        path, runtime = resolve_runtime(artifact, "litert")
        self._require(runtime)
        remote = self._push_artifact(path)
        try:
            self.wait_until_cool()
            args = self._program_args(runtime, remote, threads, runs, warmup) + ["--enable_op_profiling=true"]
            (run,) = self._run_rounds(args, 1, path.name)
        finally:
            self._cleanup(remote)
        if not run.ops:
            raise DeviceOutputError(f"benchmark_model printed no operator profile for {path.name}; "
                                    "is --enable_op_profiling supported by this build?")
        return list(run.ops)

    def _require(self, runtime: str) -> None:
        if runtime not in self.runtimes():
            raise AdbError(f"{PROGRAMS[runtime]} is not installed on {self.name}; run `edgecompress devices setup "
                           f"{self.name} --{'benchmark-model' if runtime == 'litert' else 'ort-perf-test'} PATH` "
                           "(android_bench/README.md says where to get it)")

    def _mask(self) -> str:
        return self.cpu_mask or self.fingerprint().get("big_core_mask") or "-"

    def _push_artifact(self, path: Path) -> str:
        remote = f"{RUN_DIR}/{path.name}"
        self._ok(f"mkdir -p {q(RUN_DIR)}", "creating the run folder")
        self.client.push(path, remote)
        return remote

    def _cleanup(self, remote: str) -> None:
        try:
            self.client.shell(f"rm -f {q(remote)}", timeout_s=30)
        except AdbError as exc:  # cleanup must not hide the real result or error
            warnings.warn(f"could not remove {remote} from {self.name}: {exc}", stacklevel=3)

    def _program_args(self, runtime: str, remote: str, threads: int, runs: int, warmup: int) -> list[str]:
        program = self.binaries[runtime]
        extra = self.flags.get(runtime, [])
        if runtime == "litert":
            return [program, f"--graph={remote}", f"--num_threads={threads}", f"--num_runs={runs}",
                    f"--warmup_runs={warmup}", "--min_secs=0", "--warmup_min_secs=0", *extra]
        # onnxruntime_perf_test has no warm-up count: it makes one untimed first inference.
        return [program, "-m", "times", "-r", str(runs), "-x", str(threads), "-I", "-e", "cpu", *extra, remote]

    def _trial(self, remote: str, runtime: str, threads: int, per_round: int, warmup: int, label: str) -> list:
        return self._run_rounds(self._program_args(runtime, remote, threads, per_round, warmup), self.rounds, label)

    def _run_rounds(self, args: list[str], rounds: int, label: str) -> list:
        command = " ".join(q(a) for a in ["sh", RUNNER, rounds, self._mask(), *args])
        rc, out = self.client.shell(command)
        if "@@EC_SUMMARY" not in out:
            raise AdbError(f"the runner on {self.name} did not finish for {label} (exit {rc}); is it installed? "
                           f"run `edgecompress devices setup {self.name}`:\n{quote_output(out)}")
        parse = parse_benchmark_model if args[0] == self.binaries["litert"] else parse_ort_perf_test
        results = []
        for m in re.finditer(r"^@@EC_ROUND (\d+)\n(.*?)^@@EC_ROUND_END \1 (\d+)$", out, re.MULTILINE | re.DOTALL):
            if int(m.group(3)) != 0:
                raise DeviceOutputError(f"{args[0].rsplit('/', 1)[-1]} failed on {self.name} for {label} "
                                        f"(exit {m.group(3)}):\n{quote_output(m.group(2))}")
            results.append(parse(m.group(2)))
        if len(results) != rounds:
            raise DeviceOutputError(f"expected {rounds} rounds from the runner on {self.name}, got {len(results)}:"
                                    f"\n{quote_output(out)}")
        return results

    def thermal_c(self) -> float | None:
        """Hottest CPU/SoC thermal zone in °C (all zones if none is named like a CPU), or None."""
        rc, out = self.client.shell("for z in /sys/class/thermal/thermal_zone*; do "
                                    "echo \"$(cat $z/type 2>/dev/null) $(cat $z/temp 2>/dev/null)\"; done", 30)
        readings = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and re.fullmatch(r"-?\d+", parts[-1]):
                value = int(parts[-1])
                readings.append((" ".join(parts[:-1]), value / 1000.0 if abs(value) > 200 else float(value)))
        cpu = [t for name, t in readings if _CPU_ZONE.search(name)]
        temps = cpu or [t for _, t in readings]
        return max(temps) if temps else None

    def wait_until_cool(self) -> float | None:
        """Wait until `thermal_c()` <= thermal_limit_c (polling, at most max_cooldown_s); the last reading."""
        deadline = time.monotonic() + self.max_cooldown_s
        temp = self.thermal_c()
        while temp is not None and temp > self.thermal_limit_c and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
            temp = self.thermal_c()
        if temp is not None and temp > self.thermal_limit_c:
            warnings.warn(f"{self.name} is still at {temp:.1f} °C after {self.max_cooldown_s:g} s of cool-down "
                          f"(limit {self.thermal_limit_c:g} °C); measuring anyway", stacklevel=3)
        return temp

    def _canary_ms(self, runtime: str, threads: int) -> float | None:
        if self.canary is None or resolve_runtime(self.canary, None)[1] != runtime:
            return None
        remote = self._push_artifact(self.canary)
        try:
            runs = self._run_rounds(self._program_args(runtime, remote, threads, 20, 5), 1, self.canary.name)
        finally:
            self._cleanup(remote)
        return _round_mean_ms(runs[0])


def _round_mean_ms(run: BenchmarkModelRun | OrtPerfRun) -> float:
    return run.avg_us / 1000.0 if isinstance(run, BenchmarkModelRun) else run.avg_ms


def _combine(runtime: str, trials: list[list], *, runs: int, warmup: int, threads: int, info: dict, **meta) -> LatencyResult:
    """One LatencyResult from per-trial lists of parsed rounds (see the module docstring)."""
    import numpy as np

    rounds = [r for trial in trials for r in trial]
    means = [_round_mean_ms(r) for r in rounds]
    if runtime == "litert":
        counts = np.array([r.count for r in rounds], dtype=float)
        mu = np.array(means)
        sd = np.array([r.std_us / 1000.0 for r in rounds])
        mean = float((counts * mu).sum() / counts.sum())
        std = float(math.sqrt(max(0.0, (counts * (sd ** 2 + mu ** 2)).sum() / counts.sum() - mean ** 2)))
        p50, p90 = (float(v) for v in np.percentile(mu, [50, 90]))
        low = min(r.min_us for r in rounds) / 1000.0
        trial_p50s = [float(np.median([_round_mean_ms(r) for r in trial])) for trial in trials]
        info = {**info, "percentiles_over": f"round means ({rounds[0].count} timed runs each)",
                "xnnpack": rounds[0].xnnpack}
    else:
        p50 = float(np.median([r.p50_ms for r in rounds]))
        p90 = max(p50, float(np.median([r.p90_ms for r in rounds])))
        mean = float(np.mean(means))
        std = float(np.std(means))
        low = min(r.min_ms for r in rounds)
        trial_p50s = [float(np.median([r.p50_ms for r in trial])) for trial in trials]
        info = {**info, "percentiles_over": "median over rounds of onnxruntime_perf_test's own P50/P90",
                "std_over": "round means"}
    return LatencyResult(p50_ms=p50, p90_ms=max(p50, p90), mean_ms=mean, std_ms=std, min_ms=min(low, p50),
                         runs=runs, warmup=warmup, trials=len(trials), threads=threads, runtime=runtime,
                         runtime_version=meta["version"], artifact=meta["artifact"], artifact_sha256=meta["sha"],
                         device=meta["device"], fingerprint=meta["fingerprint"], trial_p50s_ms=trial_p50s,
                         runtime_info=info)
