"""A persistent latency cache: never time the same file on the same device twice.

A measurement on a phone costs minutes (push, warm-up, 3 trials with cool-down), and a
search asks for the same candidate again and again, so results are kept in one SQLite
file shared by every process of the user (`default_cache_path()`).

The key (`CacheKey`) holds everything that changes a timing: the artifact's sha256, the
device fingerprint id, the runtime and its version, threads, runs/warmup/trials, and
any extra measurement flags (CPU mask, delegate) as canonical JSON. Its `digest` is the
row's primary key.

Device contract used by `CachedDevice` (so that a lookup never needs a measurement):
  - `device.fingerprint()["id"]`: short, stable id of the hardware + software stack;
  - `device.fingerprint()["runtimes"][runtime]`: version string of that runtime on the
    device. When a device does not report it, the key holds "unknown" and the
    fingerprint id alone must change when the runtime is updated;
  - optional `device.measure_flags() -> dict`: settings of the device object that change
    timings but are not in its fingerprint (e.g. {"cpu_mask": "f0", "use_xnnpack": True}).

Concurrency: WAL mode (readers never block the writer), a busy timeout, one short
`BEGIN IMMEDIATE` transaction per write, and retries with backoff when SQLite still
says "database is locked". A file that is not a readable cache is moved aside to
`<name>.corrupt-<timestamp>` (with a warning) and rebuilt.

Import-light on purpose (stdlib only here; LatencyResult is imported where used).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.errors import UserError

if TYPE_CHECKING:
    from edgecompress.devices.base import Device, LatencyResult

#: bump when the table layout changes; stored as PRAGMA user_version
SCHEMA_VERSION = 1
CACHE_FILENAME = "latency.sqlite"
ENV_CACHE_DIR = "EDGECOMPRESS_CACHE_DIR"
#: runtime version stored when a device's fingerprint does not report one
UNKNOWN_VERSION = "unknown"

#: how long one SQLite call waits for a lock before returning "database is locked" (s)
BUSY_TIMEOUT_S = 10.0
#: further attempts after that, with exponential backoff starting at RETRY_BASE_S
RETRIES = 6
RETRY_BASE_S = 0.05

_SCHEMA = """
CREATE TABLE latency (
    digest          TEXT PRIMARY KEY,
    artifact_sha256 TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    runtime         TEXT NOT NULL,
    runtime_version TEXT NOT NULL,
    threads         INTEGER NOT NULL,
    runs            INTEGER NOT NULL,
    warmup          INTEGER NOT NULL,
    trials          INTEGER NOT NULL,
    flags           TEXT NOT NULL,
    device_name     TEXT NOT NULL,
    artifact_name   TEXT NOT NULL,
    p50_ms          REAL NOT NULL,
    p90_ms          REAL NOT NULL,
    result          TEXT NOT NULL,
    created         REAL NOT NULL,
    hits            INTEGER NOT NULL DEFAULT 0,
    last_hit        REAL
);
CREATE INDEX latency_device ON latency (device_id);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_TABLES = {"latency", "counters"}


def canonical_flags(flags: dict | str | None) -> str:
    """Extra measurement flags as canonical JSON (sorted keys, no spaces); None -> "{}"."""
    if flags is None:
        return "{}"
    if isinstance(flags, str):
        try:
            flags = json.loads(flags)
        except json.JSONDecodeError:
            raise ValueError(f"flags must be a JSON object, got {flags!r}") from None
    if not isinstance(flags, dict):
        raise ValueError(f"flags must be a dict of measurement settings, got {type(flags).__name__}")
    try:
        return json.dumps(flags, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"flags must hold only JSON values (str, number, bool, None, list, dict): {e}") from None


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes a latency figure; `digest` (sha256 hex) identifies it.

    `flags` is canonical JSON (see `canonical_flags`); build keys with `key_for`.
    """

    artifact_sha256: str
    device: str
    runtime: str
    runtime_version: str
    threads: int
    runs: int
    warmup: int
    trials: int
    flags: str = "{}"

    def __post_init__(self) -> None:
        sha = self.artifact_sha256
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"artifact_sha256 must be 64 lowercase hex digits, got {sha!r}")
        for name in ("device", "runtime", "runtime_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        for name, low in (("threads", 1), ("runs", 1), ("warmup", 0), ("trials", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if canonical_flags(self.flags) != self.flags:
            raise ValueError(f"flags must be canonical JSON (use key_for or canonical_flags), got {self.flags!r}")

    @property
    def digest(self) -> str:
        """sha256 hex of the canonical JSON of every field."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def flags_dict(self) -> dict:
        return json.loads(self.flags)


def key_for(
    artifact_sha256: str,
    fingerprint_id: str,
    runtime: str,
    runtime_version: str | None,
    threads: int,
    runs: int,
    warmup: int,
    trials: int,
    flags: dict | None = None,
) -> CacheKey:
    """The `CacheKey` of one measurement; `runtime_version` None -> "unknown"."""
    return CacheKey(
        artifact_sha256=str(artifact_sha256).lower(),
        device=fingerprint_id,
        runtime=runtime,
        runtime_version=str(runtime_version) if runtime_version else UNKNOWN_VERSION,
        threads=threads,
        runs=runs,
        warmup=warmup,
        trials=trials,
        flags=canonical_flags(flags),
    )


def default_cache_path() -> Path:
    """$EDGECOMPRESS_CACHE_DIR/latency.sqlite, else $XDG_CACHE_HOME/edgecompress/..., else ~/.cache/edgecompress/..."""
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(override).expanduser() / CACHE_FILENAME
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgecompress" / CACHE_FILENAME


def _is_lock_error(e: sqlite3.OperationalError) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def _retry(fn, *args):
    """fn(*args), retried with exponential backoff while SQLite reports a lock."""
    for attempt in range(RETRIES + 1):
        try:
            return fn(*args)
        except sqlite3.OperationalError as e:
            if not _is_lock_error(e) or attempt == RETRIES:
                raise
            # Jitter so that processes that collided do not collide again in step.
            time.sleep(RETRY_BASE_S * (2**attempt) * (1 + (os.getpid() % 7) / 7))
    raise AssertionError("unreachable")


def _unwritable(path: Path, why: str) -> UserError:
    return UserError(
        f"latency cache {str(path)!r} cannot be written ({why}); "
        f"set {ENV_CACHE_DIR} to a writable folder, or measure without the cache (--no-cache)"
    )


class _NotACache(Exception):
    """The file opened but is not a readable cache of ours."""


class LatencyCache:
    """Latency results keyed by `CacheKey`, in one SQLite file (see the module docstring).

    `path` None -> `default_cache_path()`. Safe to share between processes; one instance
    per process (a forked child reconnects by itself). Use as a context manager or
    call `close()`.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._open()

    def __repr__(self) -> str:
        return f"LatencyCache({str(self.path)!r})"

    def __enter__(self) -> LatencyCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening, schema, recovery -------------------------------------------------

    def _open(self) -> None:
        self._check_writable()
        try:
            self._conn = self._connect()
        except _NotACache:
            self._conn = self._recover()

    def _recover(self) -> sqlite3.Connection:
        """Move an unreadable file aside and start afresh; one process at a time."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no inter-process lock, the race is only a lost cache
            fcntl = None
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                # Another process may have rebuilt it while we waited for the lock.
                return self._connect()
            except _NotACache as e:
                self._move_aside(str(e))
                return self._connect()

    def _check_writable(self) -> None:
        directory = self.path.parent
        if self.path.is_dir():
            raise _unwritable(self.path, "it is a directory")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _unwritable(self.path, f"cannot create {str(directory)!r}: {e.strerror or e}") from None
        # WAL needs to create latency.sqlite-wal/-shm beside the file, so the folder must be writable too.
        if not os.access(directory, os.W_OK | os.X_OK):
            raise _unwritable(self.path, f"folder {str(directory)!r} is not writable")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise _unwritable(self.path, "the file is not readable and writable")

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as e:
            raise _unwritable(self.path, str(e)) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            _retry(self._init_schema, conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            if isinstance(e, sqlite3.OperationalError) and _is_lock_error(e):
                raise
            if isinstance(e, sqlite3.OperationalError) and "readonly" in str(e).lower():
                raise _unwritable(self.path, str(e)) from None
            # "file is not a database", "database disk image is malformed", ...
            raise _NotACache(str(e)) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        # Reading the header is what fails first on random bytes ("file is not a database");
        # quick_check finds truncated or damaged pages (milliseconds for a cache of MBs).
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise _NotACache(f"integrity check failed: {check}")
        # Checked before anything is written, so that another program's database is left as it was.
        state = self._schema_state(conn)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if state == "empty":
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self._schema_state(conn) == "empty":  # else another process created it meanwhile
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if mode.lower() != "wal":
            # e.g. a file system without shared memory: still correct, only more lock waits
            warnings.warn(f"latency cache {str(self.path)!r} runs in journal mode {mode!r}, not WAL", stacklevel=2)
        conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a power cut loses at most the last writes

    def _schema_state(self, conn: sqlite3.Connection) -> str:
        """Say "empty" (a new file) or "ours" (this schema); raise for anything else."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables:
            return "empty"
        if version > SCHEMA_VERSION:
            raise UserError(
                f"latency cache {str(self.path)!r} has schema {version}, newer than this edgecompress's "
                f"({SCHEMA_VERSION}); upgrade edgecompress or set {ENV_CACHE_DIR} to another folder"
            )
        if version != SCHEMA_VERSION or not _TABLES <= tables:
            raise _NotACache(f"an SQLite file that is not a latency cache (user_version {version}, tables {sorted(tables)})")
        return "ours"

    def _move_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return  # another process moved it aside first; it will rebuild or already has
        except OSError as e:
            raise _unwritable(self.path, f"it is corrupt ({why}) and cannot be moved aside: {e.strerror or e}") from None
        # A stale WAL must not be replayed into the new file, so its sidecars go with it.
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                try:
                    os.replace(side, aside.with_name(aside.name + suffix))
                except OSError:
                    pass
        warnings.warn(
            f"latency cache {str(self.path)!r} was unreadable ({why}); moved it to {str(aside)!r} "
            f"and started an empty cache",
            stacklevel=5,  # _move_aside < _recover < _open < __init__ < caller
        )

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"latency cache {str(self.path)!r} is closed")
        if os.getpid() != self._pid:
            # A forked child must not use its parent's connection (SQLite forbids it).
            self._pid = os.getpid()
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if self._conn is not None and os.getpid() == self._pid:
                self._conn.close()
            self._conn = None

    # -- reading and writing -----------------------------------------------------

    def _write(self, statements: list[tuple[str, tuple]]) -> int:
        """Run `statements` in one short write transaction (retried on lock); rows changed."""

        def txn() -> int:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                changed = 0
                for sql, params in statements:
                    changed += conn.execute(sql, params).rowcount
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return changed

        with self._lock:
            return _retry(txn)

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return _retry(lambda: self._db().execute(sql, params).fetchall())

    def _count(self, statements: list[tuple[str, tuple]]) -> None:
        # Hit/miss bookkeeping must never fail a lookup: a lost count is harmless.
        try:
            self._write(statements)
        except sqlite3.OperationalError as e:
            if not _is_lock_error(e):
                raise

    def get(self, key: CacheKey) -> LatencyResult | None:
        """The stored result for `key`, or None; counts a hit or a miss (here and in the file)."""
        from edgecompress.devices.base import LatencyResult

        digest = key.digest
        rows = self._read("SELECT result FROM latency WHERE digest = ?", (digest,))
        result = None
        if rows:
            try:
                result = LatencyResult.from_dict(json.loads(rows[0][0]))
            except (ValueError, TypeError):
                # A row an older build wrote wrongly: forget it, it will be measured again.
                self._write([("DELETE FROM latency WHERE digest = ?", (digest,))])
        if result is None:
            self.misses += 1
            self._count([(
                "INSERT INTO counters (name, value) VALUES ('misses', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1", (),
            )])
        else:
            self.hits += 1
            self._count([("UPDATE latency SET hits = hits + 1, last_hit = ? WHERE digest = ?", (time.time(), digest))])
        return result

    def put(self, key: CacheKey, result: LatencyResult) -> None:
        """Store `result` under `key` (replacing an older result; the hit count is kept).

        ValueError when the result's runtime, threads, runs, warmup, trials or artifact
        sha256 differ from the key's: that would be a wrong answer for later lookups.
        """
        for name in ("runtime", "threads", "runs", "warmup", "trials", "artifact_sha256"):
            if getattr(result, name) != getattr(key, name):
                raise ValueError(f"result {name} {getattr(result, name)!r} does not match the cache key's {getattr(key, name)!r}")
        row = (
            key.digest, key.artifact_sha256, key.device, key.runtime, key.runtime_version, key.threads, key.runs,
            key.warmup, key.trials, key.flags, result.device, Path(result.artifact).name, float(result.p50_ms),
            float(result.p90_ms), json.dumps(result.to_dict(), allow_nan=False), time.time(),
        )  # fmt: skip
        self._write([(
            "INSERT INTO latency (digest, artifact_sha256, device_id, runtime, runtime_version, threads, runs, "
            "warmup, trials, flags, device_name, artifact_name, p50_ms, p90_ms, result, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (digest) DO UPDATE SET device_name = excluded.device_name, "
            "artifact_name = excluded.artifact_name, p50_ms = excluded.p50_ms, p90_ms = excluded.p90_ms, "
            "result = excluded.result, created = excluded.created",
            row,
        )])

    @staticmethod
    def _where(device: str | None, runtime: str | None) -> tuple[str, tuple]:
        clauses, params = [], []
        if device is not None:
            clauses.append("(device_id = ? OR device_name = ?)")
            params += [device, device]
        if runtime is not None:
            clauses.append("runtime = ?")
            params.append(runtime)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params)

    def entries(self, device: str | None = None, runtime: str | None = None) -> list[dict]:
        """Stored entries, newest first, optionally for one device (fingerprint id or name) / runtime.

        Each dict: digest, device_id, device_name, runtime, runtime_version, threads, runs,
        warmup, trials, flags (dict), artifact_name, artifact_sha256, p50_ms, p90_ms,
        created and last_hit (Unix time, s; last_hit None if never hit), hits.
        """
        where, params = self._where(device, runtime)
        columns = (
            "digest", "device_id", "device_name", "runtime", "runtime_version", "threads", "runs", "warmup", "trials",
            "flags", "artifact_name", "artifact_sha256", "p50_ms", "p90_ms", "created", "last_hit", "hits",
        )  # fmt: skip
        rows = self._read(f"SELECT {', '.join(columns)} FROM latency{where} ORDER BY created DESC, digest", params)
        out = []
        for row in rows:
            entry = dict(zip(columns, row))
            entry["flags"] = json.loads(entry["flags"])
            out.append(entry)
        return out

    def clear(self, device: str | None = None) -> int:
        """Remove every entry, or those of one device (fingerprint id or name); returns how many."""
        where, params = self._where(device, None)
        return self._write([(f"DELETE FROM latency{where}", params)])

    def stats(self) -> dict:
        """hits / misses of this instance, and entries, total_hits, total_misses, size_bytes of the file.

        size_bytes counts the database and its WAL (bytes on disk now).
        """
        entries, total_hits = self._read("SELECT count(*), coalesce(sum(hits), 0) FROM latency")[0]
        misses = self._read("SELECT value FROM counters WHERE name = 'misses'")
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += os.path.getsize(str(self.path) + suffix)
            except OSError:
                pass
        return {
            "path": str(self.path),
            "hits": self.hits,
            "misses": self.misses,
            "entries": int(entries),
            "total_hits": int(total_hits),
            "total_misses": int(misses[0][0]) if misses else 0,
            "size_bytes": size,
        }


class CachedDevice:
    """Any `Device`, with measurements looked up in / stored to a `LatencyCache`.

    Same `name`, `fingerprint()`, `runtimes()` (other attributes, e.g. `round_to`, are
    passed through). `measure()` returns the stored result on a hit, with
    `runtime_info["cache"] == "hit"` and `artifact` set to the path asked for; on a miss
    it measures, stores, and returns the result with `runtime_info["cache"] == "miss"`.

    `enabled=False` (the CLI's --no-cache) neither reads nor writes the cache: every call
    measures, and results are marked `"cache": "off"`. A fresh measurement is never
    lost to the cache: if storing fails, a warning is given and the result returned.
    `flags` are extra measurement settings added to the key, on top of the device's
    own `measure_flags()` if it has one (see the module docstring).
    """

    def __init__(self, device: Device, cache: LatencyCache, enabled: bool = True, flags: dict | None = None) -> None:
        self.device = device
        self.cache = cache
        self.enabled = bool(enabled)
        self.flags = dict(flags or {})
        canonical_flags(self.flags)  # ValueError now, not at the first measurement
        self.name = device.name

    def __repr__(self) -> str:
        return f"CachedDevice({self.device!r}, {self.cache!r}, enabled={self.enabled})"

    def __getattr__(self, attr: str) -> Any:
        # Only called for attributes not found on the wrapper itself.
        if attr in ("device", "cache"):
            raise AttributeError(attr)
        return getattr(self.device, attr)

    def fingerprint(self) -> dict:
        return self.device.fingerprint()

    def runtimes(self) -> list[str]:
        return self.device.runtimes()

    def key_for(self, artifact: str | os.PathLike, runtime: str, threads: int, runs: int, warmup: int, trials: int) -> CacheKey:
        """The cache key of measuring `artifact` with these settings (reads the file, measures nothing)."""
        from edgecompress.fsutil import sha256_file

        fp = self.device.fingerprint()
        if not fp.get("id"):
            raise ValueError(f"device {self.name!r} has a fingerprint without an 'id'; it cannot be cached")
        versions = fp.get("runtimes")
        version = versions.get(runtime) if isinstance(versions, dict) else None
        device_flags = getattr(self.device, "measure_flags", None)
        flags = {**(device_flags() if callable(device_flags) else {}), **self.flags}
        return key_for(sha256_file(artifact), str(fp["id"]), runtime, version, threads, runs, warmup, trials, flags)

    def measure(
        self,
        artifact: Path,
        runtime: str | None = None,
        threads: int = 1,
        runs: int = 50,
        warmup: int = 10,
        trials: int = 3,
    ) -> LatencyResult:
        """`device.measure(...)` unless the cache holds the same measurement (see the class docstring)."""
        from edgecompress.devices.base import check_measure_args, resolve_runtime

        if not self.enabled:
            result = self.device.measure(artifact, runtime=runtime, threads=threads, runs=runs, warmup=warmup, trials=trials)
            return dataclasses.replace(result, runtime_info={**result.runtime_info, "cache": "off"})
        check_measure_args(threads, runs, warmup, trials)
        path, runtime = resolve_runtime(artifact, runtime)
        key = self.key_for(path, runtime, threads, runs, warmup, trials)
        try:
            cached = self.cache.get(key)
        except sqlite3.OperationalError as e:
            # Still locked after every retry (a stuck process?): measuring is slower, not wrong.
            warnings.warn(f"latency cache lookup for {path.name} failed ({e}); measuring instead", stacklevel=2)
            cached = None
        if cached is not None:
            info = {**cached.runtime_info, "cache": "hit", "cache_key": key.digest[:16]}
            return dataclasses.replace(cached, artifact=str(path.resolve()), runtime_info=info)
        result = self.device.measure(path, runtime=runtime, threads=threads, runs=runs, warmup=warmup, trials=trials)
        try:
            self.cache.put(key, result)
        except (sqlite3.Error, ValueError) as e:
            warnings.warn(f"latency of {path.name} on {self.name} was measured but not cached: {e}", stacklevel=2)
        return dataclasses.replace(result, runtime_info={**result.runtime_info, "cache": "miss"})
