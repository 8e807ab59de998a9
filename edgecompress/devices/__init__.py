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


def get_device(spec: str, adb: str | None = None) -> Device:
    """`host` -> LocalDevice; `adb:SERIAL` -> that phone; a profile name -> the device it describes.

    `adb` is the adb executable (default: $ADB or PATH). Raises UserError for an unknown
    name (with suggestions), a phone that is not attached, or adb missing.
    """
    spec = str(spec).strip()
    if spec in ("host", "local"):
        return LocalDevice()
    if spec == "adb" or spec.startswith("adb:"):
        from edgecompress.devices.adb import AdbDevice

        serial = spec.partition(":")[2] or _only_phone(adb)
        return AdbDevice(serial, adb)
    profiles = list_profiles()
    if spec in profiles:
        profile = load_profile(spec)
        if profile.connection == "host":
            device = LocalDevice()
        else:
            from edgecompress.devices.adb import AdbDevice

            device = AdbDevice(profile.serial or _only_phone(adb), adb, cpu_mask=profile.cpu_mask, rounds=profile.rounds,
                               cooldown_s=profile.cooldown_s, thermal_limit_c=profile.thermal_limit_c,
                               max_cooldown_s=profile.max_cooldown_s, flags=profile.flags, binaries=profile.binaries)
        device.profile = profile  # what profiles.device_profile answers: round_to, the known int8 scheme
        return device
    choices = ["host", *[p for p in profiles if p != "host"]]
    raise UserError(
        f"unknown device {spec!r}{suggest(spec, choices)}; valid: {', '.join(choices)}, or adb:SERIAL for a phone"
    )


def _only_phone(adb: str | None) -> str:
    from edgecompress.devices.adb import list_adb_devices

    ready = [d["serial"] for d in list_adb_devices(adb) if d["state"] == "device"]
    if len(ready) != 1:
        listing = ", ".join(ready) or "none"
        raise UserError(f"{len(ready)} phones are ready on adb ({listing}); name one with --device adb:SERIAL")
    return ready[0]


def list_devices(adb: str | None = None) -> list[dict]:
    """The host and every phone adb reports (with its state; ready phones with their fingerprint).

    Without adb on this machine only the host is listed, with a note saying why.
    """
    host = LocalDevice()
    found = [{"name": host.name, "kind": "host", "state": "device", "runtimes": host.runtimes(),
              "fingerprint": host.fingerprint()}]
    from edgecompress.devices.adb import STATE_HELP, AdbDevice, list_adb_devices

    try:
        phones = list_adb_devices(adb)
    except UserError as exc:
        found[0]["note"] = f"no phones listed: {exc}"
        return found
    for info in phones:
        entry = {"name": f"adb:{info['serial']}", "kind": "android", "state": info["state"],
                 "model": info.get("model", "")}
        if info["state"] == "device":
            try:
                phone = AdbDevice(info["serial"], adb, retries=1, timeout_s=60)
                entry["fingerprint"] = phone.fingerprint()
                entry["runtimes"] = phone.runtimes()
            except UserError as exc:
                entry["note"] = str(exc)
        else:
            entry["note"] = STATE_HELP.get(info["state"], f"adb reports state {info['state']!r}")
        found.append(entry)
    return found
