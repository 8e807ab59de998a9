"""Device profiles: `device_profiles/<name>.yaml`, one per phone, board or the host.

A profile says how to measure on a device: which runtimes, which thread counts,
how many runs / warm-up runs / trials, and for phones the ABI, the big-core mask,
the benchmark binaries on the device and their known-good flags.
The folder is `$EDGECOMPRESS_PROFILES` if set, else `device_profiles/` at the repo root.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgecompress.devices.base import RUNTIME_SUFFIX
from edgecompress.errors import UserError, suggest

CONNECTIONS = ("host", "adb")


@dataclass(frozen=True)
class DeviceProfile:
    """How to measure on one device; counts as in `Device.measure`."""

    name: str
    connection: str  # "host" (this CPU) or "adb" (a phone)
    runtimes: tuple[str, ...]
    threads: tuple[int, ...]  # thread counts to measure, e.g. (1, 4)
    runs: int = 50
    warmup: int = 10
    trials: int = 3
    description: str = ""
    abi: str | None = None  # e.g. "arm64-v8a"
    cpu_mask: str | None = None  # hex taskset mask of the big cores, e.g. "f0"
    cooldown_s: float = 0.0  # pause between trials (s), lets a phone's clocks recover
    round_to: int | str = 8  # channel multiple its runtimes are fast at, or "auto" (host: from the CPU's vector width)
    serial: str | None = None  # adb serial of this phone; None = the one phone attached
    rounds: int = 5  # benchmark_model invocations per trial (p50/p90 are over their means)
    thermal_limit_c: float = 45.0  # wait before a trial until the hottest CPU zone is below this
    max_cooldown_s: float = 120.0  # ... but no longer than this
    binaries: dict = field(default_factory=dict)  # runtime -> benchmark binary path on the device
    flags: dict = field(default_factory=dict)  # runtime -> list of extra known-good flags
    # What int8 scheme is known to be fastest here: {onnx: an ONNX scheme name, tflite: a TFLite
    # scheme name or "fp32" (int8 known to be slower), why: the source}. `quantize --scheme profile`
    # takes the onnx answer without timing; the report quotes the tflite one as an expectation.
    int8: dict = field(default_factory=dict)
    path: str = ""  # file it was loaded from

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.connection not in CONNECTIONS:
            raise ValueError(f"connection must be one of {', '.join(CONNECTIONS)}, got {self.connection!r}")
        bad = [r for r in self.runtimes if r not in RUNTIME_SUFFIX]
        if not self.runtimes or bad:
            raise ValueError(f"runtimes must be a non-empty list of {', '.join(RUNTIME_SUFFIX)}, got {list(self.runtimes)!r}")
        if not self.threads or any(not _is_int(t) or t < 1 for t in self.threads):
            raise ValueError(f"threads must be a non-empty list of positive integers, got {list(self.threads)!r}")
        for name, low in (("runs", 1), ("warmup", 0), ("trials", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.round_to != "auto" and (not isinstance(self.round_to, int) or isinstance(self.round_to, bool)
                                        or self.round_to < 1):
            raise ValueError(f"round_to must be an integer >= 1 (channels) or auto, got {self.round_to!r}")
        if not _is_int(self.rounds) or self.rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        for name in ("thermal_limit_c", "max_cooldown_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.connection == "adb" and self.abi is not None and self.abi not in ("arm64-v8a", "x86_64"):
            raise ValueError(f"abi must be arm64-v8a or x86_64 (64-bit) for an adb phone, got {self.abi!r}")
        if not isinstance(self.cooldown_s, (int, float)) or self.cooldown_s < 0:
            raise ValueError(f"cooldown_s must be a number >= 0 s, got {self.cooldown_s!r}")
        if self.cpu_mask is not None:
            try:
                int(str(self.cpu_mask), 16)
            except ValueError:
                raise ValueError(f"cpu_mask must be a hex taskset mask such as 'f0', got {self.cpu_mask!r}") from None
        for name in ("binaries", "flags"):
            unknown = [k for k in getattr(self, name) if k not in RUNTIME_SUFFIX]
            if unknown:
                raise ValueError(f"{name} keys must be runtimes ({', '.join(RUNTIME_SUFFIX)}), got {unknown[0]!r}")

        if self.int8:
            _check_int8(self.int8)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["runtimes"], data["threads"] = list(self.runtimes), list(self.threads)
        data.pop("path")
        return data


INT8_KEYS = ("onnx", "tflite", "why")


def _check_int8(int8: dict) -> None:
    """ValueError naming the bad `int8` entry (scheme names are the quantizers' own)."""
    from edgecompress.quantize.schemes import STATIC_SCHEMES, TFLITE_SCHEMES

    unknown = [k for k in int8 if k not in INT8_KEYS]
    if unknown:
        raise ValueError(f"int8 keys must be {', '.join(INT8_KEYS)}, got {unknown[0]!r}")
    allowed = {"onnx": tuple(STATIC_SCHEMES), "tflite": (*dict.fromkeys(TFLITE_SCHEMES.values()), "fp32")}
    for key, names in allowed.items():
        if key in int8 and int8[key] not in names:
            raise ValueError(f"int8.{key} {int8[key]!r} must be one of {', '.join(names)}{suggest(str(int8[key]), names)}")
    if not isinstance(int8.get("why", ""), str) or not int8.get("why"):
        raise ValueError("int8.why must say where the answer comes from (a measurement on this device, or a publication)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def profiles_dir() -> Path:
    """`$EDGECOMPRESS_PROFILES`, else `device_profiles/` next to the package's folder."""
    env = os.environ.get("EDGECOMPRESS_PROFILES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "device_profiles"


def list_profiles() -> list[str]:
    """Names of the profiles in `profiles_dir()` (file stems), sorted."""
    folder = profiles_dir()
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml")})


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """Read a profile by name (`host`) or by path (`my/phone.yaml`); UserError if bad."""
    import yaml

    text = str(name_or_path)
    as_path = Path(text)
    if as_path.suffix in (".yaml", ".yml") or os.sep in text or "/" in text:
        if not as_path.is_file():
            raise UserError(f"device profile file {text!r} does not exist; pass a .yaml path or a profile name")
        path = as_path
    else:
        folder = profiles_dir()
        names = list_profiles()
        if text not in names:
            known = ", ".join(names) or "none"
            raise UserError(f"unknown device profile {text!r}{suggest(text, names)}; known in {str(folder)!r}: {known}")
        path = next(p for p in (folder / f"{text}.yaml", folder / f"{text}.yml") if p.is_file())
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"device profile {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"device profile {str(path)!r} must be a YAML mapping, got {type(data).__name__}")
    return _from_mapping(data, path)


def device_profile(device: object) -> DeviceProfile | None:
    """The profile `device` was made from (`get_device(NAME)` records it), or the profile named like
    the device (`host`); None for a device without one (`adb:SERIAL`)."""
    profile = getattr(device, "profile", None)
    if isinstance(profile, DeviceProfile):
        return profile
    name = getattr(device, "name", None)
    return load_profile(name) if name in list_profiles() else None


def preferred_round_to(device: object) -> int | None:
    """The channel multiple `device`'s runtimes are fast at: its profile's `round_to`, or, for
    "auto" or a device without a profile, the device's own answer (`device.round_to()`);
    None when neither says."""
    profile = device_profile(device)
    value = profile.round_to if profile is not None else "auto"
    if value == "auto":
        ask = getattr(device, "round_to", None)
        return ask() if callable(ask) else None
    return value


def _from_mapping(data: dict, path: Path) -> DeviceProfile:
    fields = [f.name for f in dataclasses.fields(DeviceProfile) if f.name != "path"]
    for key in data:
        if key not in fields:
            raise UserError(
                f"device profile {str(path)!r} has unknown key {key!r}{suggest(str(key), fields)}; "
                f"valid keys: {', '.join(fields)}"
            )
    missing = [k for k in ("connection", "runtimes", "threads") if k not in data]
    if missing:
        raise UserError(f"device profile {str(path)!r} is missing {', '.join(missing)}; add it to the file")
    kwargs = dict(data)
    kwargs.setdefault("name", path.stem)
    for key in ("runtimes", "threads"):
        if isinstance(kwargs[key], (str, int)):
            kwargs[key] = [kwargs[key]]
        kwargs[key] = tuple(kwargs[key] or ())
    for key in ("binaries", "flags", "int8"):
        if not isinstance(kwargs.get(key) or {}, dict):
            raise UserError(f"device profile {str(path)!r}: {key} must be a mapping, got {kwargs[key]!r}")
        kwargs[key] = dict(kwargs.get(key) or {})
    try:
        return DeviceProfile(**kwargs, path=str(path))
    except ValueError as exc:
        raise UserError(f"device profile {str(path)!r}: {exc}") from None
