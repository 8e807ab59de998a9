"""A fake Android phone: an adb *server* double on loopback that the real `adb` client talks to.

There is no phone on CI, so the tests run the real `adb` executable (Debian's adb 29.0.6)
against this server. It speaks the smart-socket protocol of the adb server (client -> server:
4 hex digits of length + request; server -> client: ``OKAY`` or ``FAIL`` + 4 hex length +
message) and, once a request has picked a device, the services of adbd: ``shell`` (shell
protocol v2 and the legacy raw stream), ``exec`` and ``sync`` (push, pull, stat, ls).
Shell commands really run, under ``/bin/sh -c`` in a sandbox directory on the host.

Import it as ``fakes.phone`` with ``tests/`` on ``sys.path`` (``tests/fakes`` is a package;
pytest puts ``tests/`` on the path for the tests in this folder, other folders' conftest
adds it)::

    from fakes.phone import FakePhone, Failures

    with FakePhone(tmp_path) as phone:
        subprocess.run(["adb", "-s", phone.serial, "shell", "getprop ro.product.model"],
                       env=phone.env(), stdin=subprocess.DEVNULL, timeout=20)

Constructor ``FakePhone(root, *, serial, shell_v2, props, cpu_max_khz, thermal_zones,
others, failures)``:

- ``root``: a directory owned by the test (``tmp_path``); everything goes below it:
  ``root/device`` is the phone's file system (``phone.sandbox``), ``root/state`` the fake
  tools' state, ``root/home`` the HOME that ``phone.env()`` gives the client, and
  ``root/phone.rebooted`` the marker that the fake ``reboot`` writes (it must never exist).
- ``serial``: the serial of the phone (state ``device``, transport id 1).
- ``shell_v2``: whether the phone advertises the ``shell_v2`` feature. With it the client
  sends ``shell,v2,TERM=xterm,raw:CMD`` and gets stdout, stderr and the exit code as
  separate packets; without it the client sends the legacy ``shell:CMD``, gets stdout and
  stderr merged in one raw stream and always exits 0.
- ``props``: overrides of the system properties that ``getprop`` prints (defaults below).
- ``cpu_max_khz``: ``cpuinfo_max_freq`` of each core; the default 4 x 1.8 GHz little +
  4 x 2.4 GHz big cores makes the big-core mask ``f0``.
- ``thermal_zones``: ``{type: millidegrees C}``, one ``thermal_zoneN`` per entry, in order.
- ``others``: more devices listed by ``adb devices``, ``{serial: state}`` with state
  ``unauthorized``, ``offline`` or ``authorizing``; they refuse every service with the
  server's own texts. Default: one unauthorized and one offline device; pass ``{}`` for a
  single phone (needed by ``adb shell`` without ``-s``, as with a real server).
- ``failures``: a :class:`Failures` (fault injection, below). ``phone.failures`` may be
  reassigned during a test; the ``offline_for_first`` count restarts then.

Fault injection (:class:`Failures`), all keyed by regular expressions searched in the shell
command as the client sent it (before any path rewriting):

- ``drop_after_bytes={pattern: n}``: the command runs, and the connection is closed after
  n bytes of its output (stdout + stderr payload); the command is killed.
- ``hang=(pattern, ...)``: the command never runs and never answers; the connection stays
  open until the client goes away (killed by its caller's timeout) or the phone stops.
- ``exit_code={pattern: rc}``: the command does not run; the shell prints
  ``sh: injected failure (exit rc)`` on stderr and exits rc (v2: exit packet; legacy: the
  stream ends, so an exit-code echo the caller appended never appears).
- ``offline_for_first=k``: the first k requests that need the phone (features, get-state,
  transport) fail with ``device offline``, as a phone that is re-enumerating does.

Helpers: ``phone.port``, ``phone.serial``, ``phone.sandbox``, ``phone.env()`` (os.environ
with ``ANDROID_ADB_SERVER_PORT``, and HOME etc. in ``root/home``), ``phone.adb(*args)``
(runs ``adb -s SERIAL ARGS`` with that env and stdin from /dev/null),
``phone.device_path(p)`` (host Path of a device path), ``phone.commands`` (shell commands
received, in order), ``phone.requests`` (every smart-socket request), ``phone.sync_ops``
([(op, device path)] of STAT/LIST/SEND/RECV), ``phone.taskset_calls()`` ([(mask, argv)] of the fake ``taskset``),
``phone.set_temperature(zone, mC)``, ``phone.set_thermal_status(n)``, ``phone.set_prop(k,v)``,
``phone.set_state(state)``, ``phone.rebooted``, ``phone.live_shells`` (shells still
running). Leaving the ``with`` block closes the sockets and kills every shell still
running, also when the test failed.

Path rewriting (a test double's shortcut, not a chroot): in each shell command, absolute
paths that start with ``/data``, ``/sdcard``, ``/storage``, ``/sys``, ``/proc``, ``/system``
or ``/vendor`` (at the start of a word, after a quote, ``=`` or ``:``) get the sandbox path
prefixed. The shell's cwd is the sandbox and PATH starts with ``/system/bin`` of the sandbox,
where the fake ``getprop``, ``taskset``, ``dumpsys`` and ``reboot`` live; the rest (cat, ls,
rm, mkdir, sleep...) is the host's. Sync requests map every absolute path into the sandbox.
Shell output shows device paths: the sandbox prefix is taken out of stdout and stderr.

What the real client (adb 1.0.41 / 29.0.6) does, observed against this server:

- Every client process first sends ``host:version`` and expects ``0029`` (server version
  41). Any other version makes it send ``host:kill`` and then start a real server on the
  same port (which fails here, as the port is taken: "could not install *smartsocket*
  listener"), so the version reply must be exact.
- ``adb -s S shell CMD``: ``host:version``, ``host-serial:S:features`` on a new connection,
  then ``host:tport:serial:S`` (reply OKAY + 8-byte little-endian transport id) and the
  shell service on the same connection. Without ``-s``: ``host:features`` and
  ``host:tport:any``.
  ``-t ID`` uses ``host-transport-id:ID:features`` and the older ``host:transport-id:ID``
  (plain OKAY). ``push``/``pull`` open ``sync:`` after the same transport switch; with no
  ``stat_v2`` feature they use STAT (and LIST for a directory) before SEND/RECV.
- Exit codes: shell v2 -> the command's exit code (stderr separate); legacy -> always 0
  (stderr merged into stdout). Errors before the shell starts exit 1: ``error: device
  'X' not found``, ``error: device unauthorized.`` (+ 3 hint lines), ``error: device offline``,
  ``error: more than one device/emulator`` on stderr for ``shell``; ``push`` prints
  ``adb: error: failed to get feature set: ...`` on *stdout*.
- Connection closed in the middle of the output (``drop_after_bytes``, or the phone
  stopping): in both v2 and legacy modes the client prints the bytes it got and exits 0,
  without any message. A v2 client that gets no exit packet does not report an error, so
  a caller must detect truncation itself (e.g. an ``echo EXIT:$?`` marker at the end).
- A client killed by its caller (timeout) closes its socket; with v2 the fake then kills
  the shell's process group (adbd does the same); a legacy client may only half-close, so
  there the shell runs on until it ends or the phone stops.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ADB = shutil.which("adb")
"""The real adb client, or None when it is not installed (tests skip then)."""

ADB_SERVER_VERSION = 41  # what adb 29.0.6 expects from `host:version`; sent as "0029"
FAKES_DIR = Path(__file__).resolve().parent
SYSTEM_TOOLS = ("getprop", "taskset", "dumpsys", "reboot")  # in tests/fakes/bin/system

DEFAULT_PROPS: Mapping[str, str] = {
    "ro.product.model": "Fake Phone 8",
    "ro.product.name": "fakephone",
    "ro.product.device": "fakephone",
    "ro.product.manufacturer": "Fakecorp",
    "ro.product.brand": "fakecorp",
    "ro.build.fingerprint": "fakecorp/fakephone/fakephone:14/UQ1A.240205.004/11269751:user/release-keys",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.build.type": "user",
    "ro.soc.manufacturer": "QTI",
    "ro.soc.model": "SM8150",
    "ro.board.platform": "msmnile",
    "ro.hardware": "qcom",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
}
DEFAULT_THERMAL_ZONES: Mapping[str, int] = {"cpu-0-0": 36500, "cpu-1-0": 38200, "battery": 31000, "skin": 33400}
DEFAULT_OTHERS: Mapping[str, str] = {"FAKEUNAUTH02": "unauthorized", "FAKEOFFLINE3": "offline"}

# Features of a phone with Android 10-14's adbd, minus stat_v2/ls_v2 (so the client uses the
# v1 STAT/LIST of the sync protocol) and abb (only `adb install` needs it).
_FEATURES = ("cmd", "fixed_push_mkdir", "fixed_push_symlink_timestamp", "apex")
_STATES = ("device", "unauthorized", "offline", "authorizing")
_UNAUTHORIZED = (
    "device unauthorized.\n"
    "This adb server's $ADB_VENDOR_KEYS is not set\n"
    "Try 'adb kill-server' if that seems wrong.\n"
    "Otherwise check for a confirmation dialog on your device."
)
_STATE_ERRORS = {"unauthorized": _UNAUTHORIZED, "offline": "device offline", "authorizing": "device still authorizing"}
# Device directories that shell commands see inside the sandbox (see the module docstring).
_DEVICE_ROOT_RE = re.compile(r"(?<![\w.~/$-])(/(?:data|sdcard|storage|sys|proc|system|vendor))(?=$|[/\s'\";&|()<>`,:])")
_SAFE_ROOT_RE = re.compile(r"^[A-Za-z0-9_./+-]+$")
_SYNC_DATA_MAX = 64 * 1024
# Shell protocol v2 packet ids (shell_protocol.h).
_STDIN, _STDOUT, _STDERR, _EXIT, _CLOSE_STDIN, _WINDOW_SIZE = range(6)


@dataclass(frozen=True)
class Failures:
    """Faults the fake phone injects; patterns are regexes searched in the shell command."""

    drop_after_bytes: Mapping[str, int] = field(default_factory=dict)
    hang: Sequence[str] = ()
    exit_code: Mapping[str, int] = field(default_factory=dict)
    offline_for_first: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "drop_after_bytes", dict(self.drop_after_bytes))
        object.__setattr__(self, "exit_code", dict(self.exit_code))
        object.__setattr__(self, "hang", tuple(self.hang))
        rules = {"drop_after_bytes": self.drop_after_bytes, "hang": self.hang, "exit_code": self.exit_code}
        for name, patterns in rules.items():
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"Failures.{name}: bad regex {pattern!r}: {e}") from None
        for pattern, n in self.drop_after_bytes.items():
            if n < 0:
                raise ValueError(f"Failures.drop_after_bytes[{pattern!r}] = {n} must be >= 0")
        for pattern, rc in self.exit_code.items():
            if not 0 <= rc <= 255:
                raise ValueError(f"Failures.exit_code[{pattern!r}] = {rc} must be in [0, 255]")
        if self.offline_for_first < 0:
            raise ValueError(f"Failures.offline_for_first = {self.offline_for_first} must be >= 0")

    def hangs(self, command: str) -> bool:
        return any(re.search(p, command) for p in self.hang)

    def forced_exit(self, command: str) -> int | None:
        return next((rc for p, rc in self.exit_code.items() if re.search(p, command)), None)

    def drop_budget(self, command: str) -> int | None:
        return next((n for p, n in self.drop_after_bytes.items() if re.search(p, command)), None)


@dataclass
class _Device:
    serial: str
    state: str
    transport_id: int
    usb: str


class _Closed(Exception):
    """The client closed the connection."""


class FakePhone:
    """An adb server double with one phone (and optional other devices); see the module doc."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        serial: str = "FAKE0001",
        shell_v2: bool = True,
        props: Mapping[str, str] | None = None,
        cpu_max_khz: Sequence[int] = (1800000,) * 4 + (2400000,) * 4,
        thermal_zones: Mapping[str, int] | None = None,
        others: Mapping[str, str] | None = None,
        failures: Failures | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        if not _SAFE_ROOT_RE.match(str(self.root)):  # the sandbox path goes into shell commands unquoted
            raise ValueError(f"FakePhone root {str(self.root)!r}: only [A-Za-z0-9_./+-] allowed (use tmp_path)")
        if not cpu_max_khz or any(f <= 0 for f in cpu_max_khz):
            raise ValueError(f"cpu_max_khz {tuple(cpu_max_khz)} must be a non-empty list of positive kHz")
        others = dict(DEFAULT_OTHERS if others is None else others)
        for s, state in others.items():
            if state not in _STATES or state == "device":
                raise ValueError(f"others[{s!r}] = {state!r} must be one of unauthorized, offline, authorizing")
        if serial in others or not re.fullmatch(r"[\w.-]+", serial):
            raise ValueError(f"serial {serial!r} must be [A-Za-z0-9_.-]+ and not among others")
        self.serial = serial
        self.shell_v2 = shell_v2
        self.props = {**DEFAULT_PROPS, "ro.serialno": serial, **(props or {})}
        self.cpu_max_khz = tuple(cpu_max_khz)
        self.thermal_zones = dict(DEFAULT_THERMAL_ZONES if thermal_zones is None else thermal_zones)
        self._devices = [_Device(serial, "device", 1, "1-1")]
        self._devices += [_Device(s, st, i + 2, f"1-{i + 2}") for i, (s, st) in enumerate(others.items())]
        self.sandbox = self.root / "device"
        self.state_dir = self.root / "state"
        self.home = self.root / "home"
        self.reboot_marker = self.root / "phone.rebooted"
        self.commands: list[str] = []
        self.requests: list[str] = []
        self.sync_ops: list[tuple[str, str]] = []
        self.port = 0
        self._failures = failures or Failures()
        self._offline_left = self._failures.offline_for_first
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._procs: set[subprocess.Popen[bytes]] = set()

    # ---- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> FakePhone:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Build the sandbox and start serving on a free loopback port."""
        self._build_sandbox()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(32)
        listener.settimeout(0.2)  # accept() polls the stop flag
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        """Close every socket, kill every shell still running, wait for the threads."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns, procs = list(self._conns), list(self._procs)
        for conn in conns:
            _shutdown(conn)
        for proc in procs:
            _kill_group(proc)
        for t in list(self._threads):
            t.join(timeout=5)

    def _spawn(self, target, *args) -> threading.Thread:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return t

    # ---- helpers for tests -------------------------------------------------------------
    @property
    def failures(self) -> Failures:
        return self._failures

    @failures.setter
    def failures(self, value: Failures) -> None:
        with self._lock:
            self._failures = value
            self._offline_left = value.offline_for_first

    def env(self) -> dict[str, str]:
        """os.environ for the adb client: this phone's port, HOME and keys under root/home."""
        env = dict(os.environ)
        for var in ("ANDROID_SERIAL", "ADB_SERVER_SOCKET", "ANDROID_ADB_SERVER_ADDRESS"):
            env.pop(var, None)  # they would point the client elsewhere
        env.update(
            ANDROID_ADB_SERVER_PORT=str(self.port),
            HOME=str(self.home),
            ANDROID_SDK_HOME=str(self.home),
            ANDROID_USER_HOME=str(self.home / ".android"),
            ADB_VENDOR_KEYS=str(self.home / ".android"),
            TMPDIR=str(self.home),  # the client writes adb.UID.log there if it ever starts a server
        )
        return env

    def adb(self, *args: str, serial: str | None = "", timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run the real client against this phone: `adb -s SERIAL ARGS` (serial=None: no -s)."""
        if ADB is None:
            raise RuntimeError("the adb client is not installed (apt-get install adb)")
        sel = [] if serial is None else ["-s", serial or self.serial]
        argv = [ADB, *sel, *args]  # the port comes from env(): ANDROID_ADB_SERVER_PORT
        return subprocess.run(
            argv, env=self.env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )

    def device_path(self, path: str) -> Path:
        """Host path of an absolute device path (every device path lives in the sandbox)."""
        if not path.startswith("/"):
            raise ValueError(f"device path {path!r} must be absolute")
        return self.sandbox / posixpath.normpath(path).lstrip("/")

    def taskset_calls(self) -> list[tuple[str, list[str]]]:
        """(mask, argv) of each `taskset MASK CMD...` the phone ran, in order."""
        log = self.state_dir / "taskset.jsonl"
        if not log.exists():
            return []
        return [(d["mask"], d["argv"]) for d in map(json.loads, log.read_text().splitlines())]

    @property
    def live_shells(self) -> int:
        """Shell processes still running (0 once every client has finished or gone)."""
        with self._lock:
            return sum(1 for p in self._procs if p.poll() is None)

    @property
    def rebooted(self) -> bool:
        return self.reboot_marker.exists()

    def set_prop(self, key: str, value: str) -> None:
        self.props[key] = value
        self._write_props()

    def set_temperature(self, zone: int | str, millidegrees: int) -> None:
        """Set thermal_zoneN/temp (zone index or type name) in millidegrees C."""
        index = zone if isinstance(zone, int) else list(self.thermal_zones).index(zone)
        (self.sandbox / f"sys/class/thermal/thermal_zone{index}/temp").write_text(f"{int(millidegrees)}\n")

    def set_thermal_status(self, status: int) -> None:
        """The `Thermal Status:` that `dumpsys thermalservice` prints (0 none .. 6 shutdown)."""
        if not 0 <= status <= 6:
            raise ValueError(f"thermal status {status} must be in [0, 6]")
        (self.state_dir / "thermal_status").write_text(f"{status}\n")

    def set_state(self, state: str, serial: str | None = None) -> None:
        """Change a device's state (e.g. the phone going offline in the middle of a test)."""
        if state not in _STATES:
            raise ValueError(f"state {state!r} must be one of {', '.join(_STATES)}")
        self._find(serial or self.serial).state = state

    # ---- sandbox -----------------------------------------------------------------------
    def _build_sandbox(self) -> None:
        for d in ("data/local/tmp", "sdcard", "system/bin", "proc"):
            (self.sandbox / d).mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.home / ".android").mkdir(parents=True, exist_ok=True)
        for tool in SYSTEM_TOOLS:
            dst = self.sandbox / "system/bin" / tool
            shutil.copyfile(FAKES_DIR / "bin/system" / tool, dst)
            dst.chmod(0o755)
        sh = self.sandbox / "system/bin/sh"
        if not sh.exists():
            sh.symlink_to("/bin/sh")  # `/system/bin/sh -c ...` is rewritten to this path
        self._write_props()
        self.set_thermal_status(0)
        n = len(self.cpu_max_khz)
        cpu = self.sandbox / "sys/devices/system/cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present", "online"):
            (cpu / name).write_text(f"0-{n - 1}\n" if n > 1 else "0\n")
        top = max(self.cpu_max_khz)
        cpuinfo = []
        for i, khz in enumerate(self.cpu_max_khz):
            freq = cpu / f"cpu{i}/cpufreq"
            freq.mkdir(parents=True, exist_ok=True)
            files = {"cpuinfo_max_freq": khz, "cpuinfo_min_freq": 300000, "scaling_max_freq": khz,
                     "scaling_min_freq": 300000, "scaling_cur_freq": khz, "scaling_governor": "schedutil"}
            for name, value in files.items():
                (freq / name).write_text(f"{value}\n")
            (cpu / f"cpu{i}/online").write_text("1\n")
            part = "0xd0d" if khz == top and min(self.cpu_max_khz) != top else "0xd05"  # Cortex-A77 big, A55 little
            cpuinfo.append(
                f"processor\t: {i}\nBogoMIPS\t: 38.40\n"
                "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc"
                " dcpop asimddp\n"
                "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\n"
                f"CPU part\t: {part}\nCPU revision\t: 0\n"
            )
        hardware = f"Hardware\t: Qualcomm Technologies, Inc {self.props.get('ro.soc.model', '')}\n"
        (self.sandbox / "proc/cpuinfo").write_text("\n".join(cpuinfo) + "\n" + hardware)
        meminfo = "MemTotal:        7665616 kB\nMemFree:          412332 kB\nMemAvailable:    3311904 kB\n"
        (self.sandbox / "proc/meminfo").write_text(meminfo)
        for i, (kind, millideg) in enumerate(self.thermal_zones.items()):
            zone = self.sandbox / f"sys/class/thermal/thermal_zone{i}"
            zone.mkdir(parents=True, exist_ok=True)
            (zone / "type").write_text(f"{kind}\n")
            (zone / "temp").write_text(f"{int(millideg)}\n")

    def _write_props(self) -> None:
        (self.state_dir / "props.json").write_text(json.dumps(self.props, indent=1, sort_keys=True))

    def _rewrite(self, command: str) -> str:
        return _DEVICE_ROOT_RE.sub(lambda m: str(self.sandbox) + m.group(1), command)

    def _shell_env(self) -> dict[str, str]:
        bin_dir = self.sandbox / "system/bin"
        return {
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.sandbox),
            "TMPDIR": str(self.sandbox / "data/local/tmp"),
            "LANG": "C.UTF-8",
            "ANDROID_DATA": "/data",
            "FAKEPHONE_PYTHON": sys.executable,  # interpreter of the fake tools (#!/bin/sh polyglot)
            "FAKEPHONE_SANDBOX": str(self.sandbox),
            "FAKEPHONE_STATE": str(self.state_dir),
            "FAKEPHONE_REBOOT_MARKER": str(self.reboot_marker),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    # ---- smart-socket server -----------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed by stop()
            conn.settimeout(None)
            with self._lock:
                self._conns.add(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            request = _read_request(conn)
            self.requests.append(request)
            device = self._host_request(conn, request)
            if device is None:
                return
            request = _read_request(conn)  # after a transport switch: the device's service
            self.requests.append(request)
            self._device_service(conn, device, request)
        except (_Closed, OSError):
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            _shutdown(conn)

    def _find(self, serial: str) -> _Device:
        return next(d for d in self._devices if d.serial == serial)

    def _acquire(self, kind: str, value: str = "") -> tuple[_Device | None, str]:
        """The device a selector names, or the server's error text (transport.cpp's)."""
        if kind == "serial":
            found = [d for d in self._devices if d.serial == value]
            if not found:
                return None, f"device '{value}' not found"
        elif kind == "transport-id":
            found = [d for d in self._devices if str(d.transport_id) == value]
            if not found:
                return None, f"no device with transport id '{value}'"
        elif kind == "local":
            return None, "no emulators found"
        else:  # any or usb: every device counts, whatever its state
            found = list(self._devices)
            if not found:
                return None, "no devices/emulators found"
            if len(found) > 1:
                return None, "more than one device/emulator"
        device = found[0]
        if device.state != "device":
            return None, _STATE_ERRORS[device.state]
        with self._lock:
            if device.serial == self.serial and self._offline_left > 0:
                self._offline_left -= 1
                return None, "device offline"
        return device, ""

    def _host_request(self, conn: socket.socket, request: str) -> _Device | None:
        """Answer a host request. Returns the device a transport switch selected (the same
        connection then carries a device service), None when the connection is done."""
        if request == "host:version":
            _send(conn, b"OKAY" + _msg(f"{ADB_SERVER_VERSION:04x}"))
            return None
        if request == "host:kill":  # acknowledged; the fake keeps serving until the test ends
            _send(conn, b"OKAY")
            return None
        if request in ("host:devices", "host:devices-l"):
            _send(conn, b"OKAY" + _msg(self._device_list(long=request.endswith("-l"))))
            return None
        selector = _parse_transport(request)
        if selector is not None:
            device, error = self._acquire(*selector)
            if device is None:
                _send(conn, b"FAIL" + _msg(error))
                return None
            # the newer `host:tport:` form also returns the transport id (8 bytes, LE)
            tport = request.startswith("host:tport:")
            _send(conn, b"OKAY" + (struct.pack("<Q", device.transport_id) if tport else b""))
            return device
        query = _parse_query(request)
        if query is None:
            _send(conn, b"FAIL" + _msg(f"unknown host service '{request}'"))
            return None
        kind, value, what = query
        if what.startswith("wait-for-"):
            self._wait_for(conn, kind, value, what)
            return None
        device, error = self._acquire(kind, value)
        if device is None:
            _send(conn, b"FAIL" + _msg(error))
        elif what == "features":
            _send(conn, b"OKAY" + _msg(",".join(self._features())))
        elif what == "get-state":
            _send(conn, b"OKAY" + _msg(device.state))
        elif what == "get-serialno":
            _send(conn, b"OKAY" + _msg(device.serial))
        elif what == "get-devpath":
            _send(conn, b"OKAY" + _msg(f"usb:{device.usb}"))
        else:
            _send(conn, b"FAIL" + _msg(f"unknown host service '{request}'"))
        return None

    def _wait_for(self, conn: socket.socket, kind: str, value: str, what: str) -> None:
        """`wait-for-TRANSPORT-STATE`: OKAY when the service starts, OKAY again when the
        state is reached; a phone that is offline (injected) comes back meanwhile."""
        _send(conn, b"OKAY")
        wanted = what.rsplit("-", 1)[-1]
        while not self._stopping.is_set():
            with self._lock:
                self._offline_left = 0
            device, _ = self._acquire(kind, value)
            if (device is not None and wanted in ("device", "any")) or (device is None and wanted == "disconnect"):
                _send(conn, b"OKAY")
                return
            if _peer_closed(conn, 0.1):
                return

    def _features(self) -> list[str]:
        return (["shell_v2"] if self.shell_v2 else []) + list(_FEATURES)

    def _device_list(self, long: bool) -> str:
        lines = []
        for d in self._devices:
            if not long:
                lines.append(f"{d.serial}\t{d.state}\n")
                continue
            line = f"{d.serial:<22} {d.state} usb:{d.usb}"
            if d.state == "device":  # the others have not sent their banner: no product/model
                model = re.sub(r"[^\w.-]", "_", self.props.get("ro.product.model", ""))
                product, name = self.props.get("ro.product.name", ""), self.props.get("ro.product.device", "")
                line += f" product:{product} model:{model} device:{name}"
            lines.append(f"{line} transport_id:{d.transport_id}\n")
        return "".join(lines)

    # ---- device services ---------------------------------------------------------------
    def _device_service(self, conn: socket.socket, device: _Device, request: str) -> None:
        if request.startswith("shell"):
            head, _, command = request.partition(":")
            args = head.split(",")[1:]
            if "v2" in args and not self.shell_v2:
                _send(conn, b"FAIL" + _msg("closed"))  # an old adbd does not know the service
                return
            self._shell(conn, command, v2="v2" in args)
        elif request.startswith("exec:"):
            self._shell(conn, request[len("exec:"):], v2=False)
        elif request == "sync:":
            _send(conn, b"OKAY")
            self._sync(conn)
        else:
            _send(conn, b"FAIL" + _msg("closed"))

    def _shell(self, conn: socket.socket, command: str, v2: bool) -> None:
        self.commands.append(command)
        failures = self.failures
        _send(conn, b"OKAY")
        if failures.hangs(command):
            while not self._stopping.is_set() and not _peer_closed(conn, 0.2):
                pass
            return
        forced = failures.forced_exit(command)
        if forced is not None:
            text = f"sh: injected failure (exit {forced})\n".encode()
            _send(conn, _packet(_STDERR, text) + _packet(_EXIT, bytes([forced])) if v2 else text)
            _finish(conn)
            return
        proc = subprocess.Popen(
            ["/bin/sh", "-c", self._rewrite(command)], cwd=self.sandbox, env=self._shell_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
            start_new_session=True,  # one process group, killed whole on disconnect or stop()
        )
        with self._lock:
            self._procs.add(proc)
        session = _ShellSession(conn, proc, v2, failures.drop_budget(command), str(self.sandbox).encode())
        try:
            pumps = [self._spawn(session.pump, proc.stdout, _STDOUT)]
            if v2:
                pumps.append(self._spawn(session.pump, proc.stderr, _STDERR))
            self._spawn(session.read_client)
            for t in pumps:
                t.join()
            rc = proc.wait()
            if not session.dropped and not session.client_gone:
                if v2:
                    session.send(_packet(_EXIT, bytes([rc if rc >= 0 else 128 - rc])))
                _finish(conn)
        finally:
            _kill_group(proc)
            with self._lock:
                self._procs.discard(proc)

    def _sync(self, conn: socket.socket) -> None:
        """The sync protocol (SYNC.TXT): STAT, LIST, SEND, RECV, QUIT, v1 only."""
        while True:
            try:
                ident, length = _read_sync_header(conn)
            except _Closed:
                return
            if ident == b"QUIT":
                return
            if ident not in (b"STAT", b"LIST", b"SEND", b"RECV"):
                _sync_fail(conn, f"unknown sync command {ident!r}")
                return
            path = _recv_exact(conn, length).decode("utf-8", "surrogateescape")
            self.sync_ops.append((ident.decode(), path.rpartition(",")[0] if ident == b"SEND" else path))
            if ident == b"STAT":
                _send(conn, b"STAT" + struct.pack("<III", *_stat_fields(self._sync_path(path))))
            elif ident == b"LIST":
                self._sync_list(conn, path)
            elif not (self._sync_send(conn, path) if ident == b"SEND" else self._sync_recv(conn, path)):
                return  # adbd ends the sync service after a failed transfer

    def _sync_path(self, path: str) -> Path:
        return self.device_path(path if path.startswith("/") else "/" + path)

    def _sync_list(self, conn: socket.socket, path: str) -> None:
        host = self._sync_path(path)
        out = []
        if host.is_dir():
            for name in [".", "..", *sorted(os.listdir(host))]:
                raw = name.encode("utf-8", "surrogateescape")
                out.append(b"DENT" + struct.pack("<IIII", *_stat_fields(host / name), len(raw)) + raw)
        _send(conn, b"".join(out) + b"DONE" + bytes(16))

    def _sync_send(self, conn: socket.socket, spec: str) -> bool:
        path, _, mode_text = spec.rpartition(",")
        mode = int(mode_text) if mode_text.isdigit() else 0o644
        host = self._sync_path(path)
        error, chunks, fh, mtime = "", [], None, 0
        try:
            host.parent.mkdir(parents=True, exist_ok=True)
            if not stat.S_ISLNK(mode):
                fh = open(host, "wb")
        except OSError as e:
            error = f"couldn't create file: {e.strerror}"
        try:
            while True:  # read every DATA until DONE even after an error, as adbd does
                ident, length = _read_sync_header(conn)
                if ident == b"DONE":
                    mtime = length
                    break
                if ident != b"DATA":
                    error = error or f"invalid data message '{ident.decode('ascii', 'replace')}'"
                    break
                data = _recv_exact(conn, length)
                if fh is not None and not error:
                    fh.write(data)
                elif stat.S_ISLNK(mode):
                    chunks.append(data)
        finally:
            if fh is not None:
                fh.close()
        if not error:
            try:
                if stat.S_ISLNK(mode):
                    host.unlink(missing_ok=True)
                    os.symlink(b"".join(chunks).rstrip(b"\0").decode(), host)
                else:
                    host.chmod(stat.S_IMODE(mode))
                    os.utime(host, (mtime, mtime))
            except OSError as e:
                error = f"couldn't finish file: {e.strerror}"
        if error:
            _sync_fail(conn, error)
            return False
        _send(conn, b"OKAY" + bytes(4))
        return True

    def _sync_recv(self, conn: socket.socket, path: str) -> bool:
        try:
            with open(self._sync_path(path), "rb") as fh:
                while chunk := fh.read(_SYNC_DATA_MAX):
                    _send(conn, b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        except OSError as e:
            _sync_fail(conn, f"open failed: {e.strerror}")
            return False
        _send(conn, b"DONE" + bytes(4))
        return True


class _ShellSession:
    """Moves bytes between one shell subprocess and the client's socket."""

    def __init__(
        self, conn: socket.socket, proc: subprocess.Popen[bytes], v2: bool, budget: int | None, sandbox: bytes
    ) -> None:
        self.conn, self.proc, self.v2, self.budget, self.sandbox = conn, proc, v2, budget, sandbox
        self.sent = 0  # output payload bytes, counted against the drop budget
        self.dropped = False
        self.client_gone = False
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._lock:
            if not self.dropped and not self.client_gone:
                try:
                    _send(self.conn, data)
                except OSError:
                    self.client_gone = True

    def pump(self, stream, ident: int) -> None:
        fd, unmap = stream.fileno(), _Unmapper(self.sandbox)
        while True:
            raw = os.read(fd, 4096)
            data = unmap.feed(raw, final=not raw)
            if not raw and not data:
                return
            with self._lock:
                if self.dropped or self.client_gone:
                    continue  # keep draining so the child does not block on a full pipe
                if self.budget is not None and self.sent + len(data) >= self.budget:
                    data = data[: self.budget - self.sent]
                    self.dropped = True
                self.sent += len(data)
                try:
                    if data:
                        _send(self.conn, _packet(ident, data) if self.v2 else data)
                except OSError:
                    self.client_gone = True
                if self.dropped:
                    _shutdown(self.conn)  # the transport died in the middle of the output
                    _kill_group(self.proc)

    def read_client(self) -> None:
        """Client -> shell: v2 stdin packets, or the raw stream of the legacy protocol."""
        stdin = self.proc.stdin
        try:
            while True:
                if self.v2:
                    ident, length = struct.unpack("<BI", _recv_exact(self.conn, 5))
                    data = _recv_exact(self.conn, length)
                else:
                    ident, data = _STDIN, self.conn.recv(4096)
                    if not data:
                        break  # a legacy client may only have half-closed: leave the shell running
                if ident == _STDIN and stdin is not None and not stdin.closed:
                    try:
                        stdin.write(data)
                        stdin.flush()
                    except OSError:
                        pass
                elif ident == _CLOSE_STDIN and stdin is not None:
                    stdin.close()
        except (_Closed, OSError):
            if self.v2:  # a v2 client never closes before the exit packet: it is gone
                with self._lock:
                    self.client_gone = True
                _kill_group(self.proc)
        finally:
            if stdin is not None and not stdin.closed:
                try:
                    stdin.close()
                except OSError:
                    pass


class _Unmapper:
    """Turns host paths back into device paths in a byte stream (`SANDBOX/data/x` ->
    `/data/x`, a bare `SANDBOX` -> `/`), holding back a tail that may be a split match."""

    def __init__(self, sandbox: bytes) -> None:
        self.pattern, self.tail = sandbox, b""

    def feed(self, data: bytes, final: bool = False) -> bytes:
        buf, hold = self.tail + data, 0
        if not final:
            if buf.endswith(self.pattern):
                hold = len(self.pattern)  # the next byte decides between "/x" and "/"
            else:
                longest = min(len(self.pattern) - 1, len(buf))
                hold = next((k for k in range(longest, 0, -1) if buf.endswith(self.pattern[:k])), 0)
        out, self.tail = buf[: len(buf) - hold], buf[len(buf) - hold:]
        return out.replace(self.pattern + b"/", b"/").replace(self.pattern, b"/")


# ---- wire helpers ----------------------------------------------------------------------
def _msg(text: str) -> bytes:
    raw = text.encode()
    return b"%04x" % len(raw) + raw


def _packet(ident: int, data: bytes) -> bytes:
    return struct.pack("<BI", ident, len(data)) + data


def _send(conn: socket.socket, data: bytes) -> None:
    conn.sendall(data)


def _sync_fail(conn: socket.socket, text: str) -> None:
    raw = text.encode()
    _send(conn, b"FAIL" + struct.pack("<I", len(raw)) + raw)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 16))
        if not chunk:
            raise _Closed
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_request(conn: socket.socket) -> str:
    length = int(_recv_exact(conn, 4), 16)
    return _recv_exact(conn, length).decode("utf-8", "surrogateescape")


def _read_sync_header(conn: socket.socket) -> tuple[bytes, int]:
    raw = _recv_exact(conn, 8)
    return raw[:4], struct.unpack("<I", raw[4:])[0]


def _parse_transport(request: str) -> tuple[str, str] | None:
    """Selector of a transport switch: `host:transport:S`, `host:transport-any|usb|local`,
    `host:transport-id:N` and the newer `host:tport:serial:S|any|usb|local|transport-id:N`."""
    for prefix, kind in (("host:transport:", "serial"), ("host:tport:serial:", "serial"),
                         ("host:transport-id:", "transport-id"), ("host:tport:transport-id:", "transport-id")):
        if request.startswith(prefix):
            return kind, request[len(prefix):]
    for prefix in ("host:transport-", "host:tport:"):
        if request.startswith(prefix) and request[len(prefix):] in ("any", "usb", "local"):
            return request[len(prefix):], ""
    return None


def _parse_query(request: str) -> tuple[str, str, str] | None:
    """`host-serial:S:what`, `host-transport-id:N:what`, `host[-usb|-local]:what`."""
    whats = r"(features|get-state|get-serialno|get-devpath|wait-for-[\w-]+)"
    if m := re.fullmatch(rf"host-serial:(.+):{whats}", request):
        return "serial", m.group(1), m.group(2)
    if m := re.fullmatch(rf"host-transport-id:(\d+):{whats}", request):
        return "transport-id", m.group(1), m.group(2)
    if m := re.fullmatch(rf"host(|-usb|-local):{whats}", request):
        return {"": "any", "-usb": "usb", "-local": "local"}[m.group(1)], "", m.group(2)
    return None


def _stat_fields(host: Path) -> tuple[int, int, int]:
    """(mode, size, mtime) as v1 STAT/DENT carry them (u32), zeros when missing (lstat)."""
    try:
        st = os.lstat(host)
    except OSError:
        return 0, 0, 0
    return st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def _finish(conn: socket.socket) -> None:
    """End a service the way adbd does: FIN, then wait (briefly) for the client to close,
    so that closing with unread client bytes cannot turn into a RST that loses our tail."""
    try:
        conn.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _peer_closed(conn, 0.2):
            pass
    except OSError:
        pass


def _peer_closed(conn: socket.socket, timeout: float) -> bool:
    """Wait up to `timeout` s for client bytes; discard them. True once the client closed."""
    try:
        ready, _, _ = select.select([conn], [], [], timeout)
        return bool(ready) and not conn.recv(65536)
    except (OSError, ValueError):
        return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
