"""Devices that measure latency: the host CPU now, phones over adb later.

`get_device("host")` returns a `Device`; `list_devices()` says what is available.
Importing this package never imports onnxruntime or LiteRT (the host measures in a
subprocess), so `edgecompress --help` stays fast.
"""

from __future__ import annotations

from edgecompress.devices.base import Device, LatencyResult
from edgecompress.devices.local import LocalDevice
from edgecompress.devices.profiles import DeviceProfile, list_profiles, load_profile
from edgecompress.errors import UserError, suggest

__all__ = [
    "Device", "DeviceProfile", "LatencyResult", "LocalDevice",
    "get_device", "list_devices", "list_profiles", "load_profile",
]  # fmt: skip


def _no_android(spec: str) -> UserError:
    return UserError(f"device {spec!r} needs the Android support, which this build does not have yet; use --device host")


def get_device(spec: str) -> Device:
    """`host` -> LocalDevice; `adb:SERIAL` or a profile name -> that device.

    Raises UserError for an unknown name (with suggestions) and, in this build,
    for phones (adb), whose support is not included yet.
    """
    spec = str(spec).strip()
    if spec in ("host", "local"):
        return LocalDevice()
    if spec == "adb" or spec.startswith("adb:"):
        raise _no_android(spec)
    profiles = list_profiles()
    if spec in profiles:
        profile = load_profile(spec)
        if profile.connection == "host":
            return LocalDevice()
        raise _no_android(spec)
    choices = ["host", *[p for p in profiles if p != "host"]]
    raise UserError(
        f"unknown device {spec!r}{suggest(spec, choices)}; valid: {', '.join(choices)}, or adb:SERIAL for a phone"
    )


def list_devices() -> list[dict]:
    """Every device this build can measure on, each with its name, runtimes and fingerprint."""
    host = LocalDevice()
    return [{"name": host.name, "kind": "host", "runtimes": host.runtimes(), "fingerprint": host.fingerprint()}]
