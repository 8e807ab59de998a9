"""The persistent latency cache (edgecompress/latency/cache.py) and its CLI (cache_cli.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompress.devices.base import Device, LatencyResult
from edgecompress.errors import UserError
from edgecompress.fsutil import sha256_file
from edgecompress.latency.cache import CacheKey, CachedDevice, LatencyCache, default_cache_path, key_for
from edgecompress.latency.cache_cli import cache as cache_group

SHA = "ab" * 32
BASE = dict(artifact_sha256=SHA, fingerprint_id="fp0123456789", runtime="onnxruntime", runtime_version="1.32.0",
            threads=1, runs=50, warmup=10, trials=3, flags={"cpu_mask": "f0", "use_xnnpack": True})  # fmt: skip


def make_result(sha: str = SHA, threads: int = 1, runs: int = 50, warmup: int = 10, trials: int = 3,
                p50: float = 1.25, device: str = "fake", runtime: str = "onnxruntime") -> LatencyResult:  # fmt: skip
    samples = [p50 + 0.01 * i for i in range(runs * trials)]
    return LatencyResult(
        p50_ms=p50, p90_ms=p50 + 1.0, mean_ms=p50 + 0.2, std_ms=0.1, min_ms=p50 - 0.1, runs=runs, warmup=warmup,
        trials=trials, threads=threads, runtime=runtime, runtime_version="1.32.0", artifact="/tmp/gone/m.onnx",
        artifact_sha256=sha, device=device, fingerprint={"id": "fp0123456789"}, trial_p50s_ms=[p50] * trials,
        samples_ms=samples, runtime_info={"providers": ["CPUExecutionProvider"]},
    )  # fmt: skip


def key_of(result: LatencyResult, device_id: str = "fp0123456789", flags: dict | None = None) -> CacheKey:
    return key_for(result.artifact_sha256, device_id, result.runtime, "1.32.0", result.threads, result.runs,
                   result.warmup, result.trials, flags)  # fmt: skip


# -- the key -------------------------------------------------------------------------


def test_key_digest_is_stable_and_flag_order_does_not_matter() -> None:
    a = key_for(**BASE)
    b = key_for(**{**BASE, "flags": {"use_xnnpack": True, "cpu_mask": "f0"}})
    assert a == b and a.digest == b.digest
    assert len(a.digest) == 64 and int(a.digest, 16) >= 0
    assert a.flags == '{"cpu_mask":"f0","use_xnnpack":true}'
    assert a.flags_dict() == {"cpu_mask": "f0", "use_xnnpack": True}
    # The same key built in another process gives the same digest (no hash() randomisation).
    code = (
        "from edgecompress.latency.cache import key_for\n"
        f"print(key_for(**{BASE!r}).digest)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == a.digest


@pytest.mark.parametrize(
    "part, value",
    [("artifact_sha256", "cd" * 32), ("fingerprint_id", "fp999999"), ("runtime", "litert"),
     ("runtime_version", "1.33.0"), ("threads", 2), ("runs", 51), ("warmup", 0), ("trials", 1),
     ("flags", {"cpu_mask": "0f", "use_xnnpack": True}), ("flags", {"cpu_mask": "f0"}), ("flags", None)],
)  # fmt: skip
def test_every_key_part_changes_the_digest(part: str, value) -> None:
    assert key_for(**{**BASE, part: value}).digest != key_for(**BASE).digest


def test_bad_key_parts_are_rejected() -> None:
    with pytest.raises(ValueError, match="artifact_sha256"):
        key_for(**{**BASE, "artifact_sha256": "xyz"})
    with pytest.raises(ValueError, match="threads"):
        key_for(**{**BASE, "threads": 0})
    with pytest.raises(ValueError, match="flags must hold only JSON"):
        key_for(**{**BASE, "flags": {"mask": object()}})
    with pytest.raises(ValueError, match="canonical"):
        CacheKey(SHA, "d", "onnxruntime", "1", 1, 1, 0, 1, flags='{"b": 1, "a": 2}')
    assert key_for(**{**BASE, "runtime_version": None}).runtime_version == "unknown"


def test_default_path_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("EDGECOMPRESS_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_path() == tmp_path / "mine" / "latency.sqlite"
    monkeypatch.delenv("EDGECOMPRESS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "edgecompress" / "latency.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / ".cache" / "edgecompress" / "latency.sqlite"
    with LatencyCache() as db:
        assert db.path == tmp_path / "home" / ".cache" / "edgecompress" / "latency.sqlite"
    assert db.path.is_file()


# -- storing and reading -------------------------------------------------------------


def test_round_trip_hits_misses_and_stats(tmp_path) -> None:
    path = tmp_path / "latency.sqlite"
    result = make_result()
    key = key_of(result)
    with LatencyCache(path) as db:
        assert db.get(key) is None
        db.put(key, result)
        got = db.get(key)
        assert got == result  # every field, samples and nested dicts included
        assert got.samples_ms == result.samples_ms and got.runtime_info == {"providers": ["CPUExecutionProvider"]}
        assert db.get(key) == result
        assert db.get(key_of(make_result(threads=2))) is None
        stats = db.stats()
        assert (stats["hits"], stats["misses"], stats["entries"], stats["total_hits"], stats["total_misses"]) == (2, 2, 1, 2, 2)
        assert stats["size_bytes"] > 4096
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # A new instance starts its own counts at zero; the file keeps the totals.
    with LatencyCache(path) as db:
        assert db.get(key) == result
        stats = db.stats()
        assert (stats["hits"], stats["misses"], stats["total_hits"], stats["total_misses"]) == (1, 0, 3, 2)
        (entry,) = db.entries()
        assert entry["hits"] == 3 and entry["last_hit"] >= entry["created"]
        assert entry["artifact_name"] == "m.onnx" and entry["p50_ms"] == 1.25 and entry["p90_ms"] == 2.25
        assert entry["flags"] == {} and entry["device_id"] == "fp0123456789" and entry["device_name"] == "fake"


def test_put_upserts_and_rejects_a_result_that_does_not_fit_the_key(tmp_path) -> None:
    with LatencyCache(tmp_path / "c.sqlite") as db:
        key = key_of(make_result())
        db.put(key, make_result(p50=1.0))
        db.get(key)
        db.put(key, make_result(p50=3.0))
        assert db.get(key).p50_ms == 3.0
        (entry,) = db.entries()
        assert entry["p50_ms"] == 3.0 and entry["hits"] == 2  # replaced, hit count kept
        with pytest.raises(ValueError, match="threads 2 does not match the cache key's 1"):
            db.put(key, make_result(threads=2))
        with pytest.raises(ValueError, match="artifact_sha256"):
            db.put(key, make_result(sha="cd" * 32))


def test_entries_filters_and_clear_by_device(tmp_path) -> None:
    with LatencyCache(tmp_path / "c.sqlite") as db:
        for i in range(3):
            r = make_result(sha=f"{i:064x}", device="host")
            db.put(key_of(r, device_id="hostid000001"), r)
        for i in range(2):
            r = make_result(sha=f"{i:064x}", device="adb:PIXEL", runtime="litert")
            db.put(key_for(r.artifact_sha256, "phoneid00001", "litert", "2.3", 1, 50, 10, 3), r)
        assert len(db.entries()) == 5
        assert len(db.entries(device="hostid000001")) == 3
        assert len(db.entries(device="adb:PIXEL")) == 2  # by name too
        assert len(db.entries(runtime="litert")) == 2
        assert db.entries(device="hostid000001", runtime="litert") == []
        created = [e["created"] for e in db.entries()]
        assert created == sorted(created, reverse=True)
        assert db.clear(device="phoneid00001") == 2
        assert db.clear(device="nope") == 0
        assert {e["device_name"] for e in db.entries()} == {"host"}
        assert db.clear() == 3
        assert db.stats()["entries"] == 0


def test_closed_cache_says_so(tmp_path) -> None:
    db = LatencyCache(tmp_path / "c.sqlite")
    db.close()
    db.close()  # idempotent
    with pytest.raises(ValueError, match="is closed"):
        db.get(key_of(make_result()))


# -- broken files and folders --------------------------------------------------------


def _filled_cache(path: Path, n: int = 200) -> None:
    with LatencyCache(path) as db:
        for i in range(n):
            r = make_result(sha=f"{i:064x}")
            db.put(key_of(r), r)


@pytest.mark.parametrize("damage", ["random_bytes", "truncated", "text_file", "foreign_sqlite"])
def test_corrupt_file_is_moved_aside_and_rebuilt(tmp_path, damage) -> None:
    path = tmp_path / "latency.sqlite"
    if damage == "random_bytes":
        path.write_bytes(os.urandom(10_000))
    elif damage == "truncated":
        _filled_cache(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "text_file":
        path.write_text("this is not a database\n" * 100)
    else:
        with sqlite3.connect(path) as other:
            other.execute("CREATE TABLE songs (title TEXT)")
    before = path.read_bytes()
    with pytest.warns(UserWarning, match=r"latency cache '.*latency\.sqlite' was unreadable .* moved it to '.*latency\.sqlite\.corrupt-\d{8}-\d{6}'"):
        db = LatencyCache(path)
    with db:
        (aside,) = tmp_path.glob("latency.sqlite.corrupt-*[0-9]")
        assert aside.read_bytes() == before  # kept for a post-mortem, byte for byte
        assert db.stats()["entries"] == 0
        r = make_result()
        db.put(key_of(r), r)
        assert db.get(key_of(r)) == r
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file opens cleanly
        with LatencyCache(path) as again:
            assert again.stats()["entries"] == 1


def test_empty_file_is_a_valid_new_cache(tmp_path) -> None:
    path = tmp_path / "latency.sqlite"
    path.touch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with LatencyCache(path) as db:
            assert db.stats()["entries"] == 0
    assert list(tmp_path.glob("*corrupt*")) == []


def test_unwritable_cache_directory_is_a_user_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the cache folder should be: mkdir fails even for root
    target = blocker / "cache" / "latency.sqlite"
    with pytest.raises(UserError, match=r"latency cache '.*file/cache/latency\.sqlite' cannot be written .*EDGECOMPRESS_CACHE_DIR"):
        LatencyCache(target)
    with pytest.raises(UserError, match="it is a directory"):
        LatencyCache(tmp_path)


def test_read_only_cache_directory_is_a_user_error(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes into read-only folders: make access() answer as for a user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    try:
        with pytest.raises(UserError, match=r"ro' is not writable.*EDGECOMPRESS_CACHE_DIR"):
            LatencyCache(folder / "latency.sqlite")
    finally:
        folder.chmod(0o755)


def test_newer_schema_is_a_user_error(tmp_path) -> None:
    path = tmp_path / "latency.sqlite"
    LatencyCache(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(UserError, match="has schema 99, newer than"):
        LatencyCache(path)


# -- several processes at once -------------------------------------------------------

WORKER = r"""
import json, sys, time
from edgecompress.devices.base import LatencyResult
from edgecompress.latency.cache import LatencyCache, key_for

path, proc, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

def result(sha, p50):
    return LatencyResult(p50_ms=p50, p90_ms=p50 + 1, mean_ms=p50, std_ms=0.0, min_ms=p50, runs=5, warmup=1, trials=1,
                         threads=1, runtime="onnxruntime", runtime_version="1", artifact="m.onnx",
                         artifact_sha256=sha, device="host", trial_p50s_ms=[p50])

while time.time() < start:  # all processes create and hammer the file at the same moment
    time.sleep(0.001)
db = LatencyCache(path)
found = 0
for i in range(40):
    shared = f"{i:064x}"
    own = f"{proc + 1:08x}{i:056x}"
    for sha, p50 in ((own, float(proc * 1000 + i)), (shared, float(i))):
        key = key_for(sha, "dev", "onnxruntime", "1", 1, 5, 1, 1)
        if db.get(key) is None:
            db.put(key, result(sha, p50))
        else:
            found += 1
    db.entries(device="dev")
stats = db.stats()
db.close()
print(json.dumps({"proc": proc, "found": found, "hits": stats["hits"], "misses": stats["misses"]}))
"""


def test_concurrent_writers_lose_nothing(tmp_path) -> None:
    path = tmp_path / "latency.sqlite"
    n_procs, n_keys = 4, 40
    start = time.time() + 3.0  # after every interpreter has started
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(p), str(start)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for p in range(n_procs)
    ]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "Traceback" not in err and "locked" not in err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    with LatencyCache(path) as db:
        entries = db.entries()
        assert len(entries) == n_procs * n_keys + n_keys  # every own key + each shared key once
        for i in range(n_keys):
            got = db.get(key_for(f"{i:064x}", "dev", "onnxruntime", "1", 1, 5, 1, 1))
            assert got is not None and got.p50_ms == float(i)
            for p in range(n_procs):
                got = db.get(key_for(f"{p + 1:08x}{i:056x}", "dev", "onnxruntime", "1", 1, 5, 1, 1))
                assert got is not None and got.p50_ms == float(p * 1000 + i)
        stats = db.stats()
    # Each get in a worker was counted once, in the process and in the file.
    assert sum(o["hits"] + o["misses"] for o in outputs) == n_procs * 2 * n_keys
    assert stats["total_hits"] - (n_procs + 1) * n_keys == sum(o["hits"] for o in outputs)
    assert stats["total_misses"] == sum(o["misses"] for o in outputs)


OPENER = r"""
import sys, time, warnings
from edgecompress.latency.cache import LatencyCache
path, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    db = LatencyCache(path)
print(len(caught), db.stats()["entries"])
"""


def test_processes_opening_a_corrupt_file_at_once_rebuild_it_once(tmp_path) -> None:
    path = tmp_path / "latency.sqlite"
    path.write_bytes(os.urandom(20_000))
    start = time.time() + 2.5
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(path), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]  # fmt: skip
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outputs.append(out.split())
    assert sorted(outputs) == [["0", "0"]] * 3 + [["1", "0"]]  # one process warned, all opened the new file
    assert len(list(tmp_path.glob("latency.sqlite.corrupt-*"))) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_reconnects_instead_of_sharing_the_connection(tmp_path) -> None:
    with LatencyCache(tmp_path / "c.sqlite") as db:
        parent = make_result(sha="01" * 32)
        db.put(key_of(parent), parent)
        pid = os.fork()
        if pid == 0:  # child: write through the inherited instance, report by exit code
            ok = False
            try:
                child = make_result(sha="02" * 32)
                db.put(key_of(child), child)
                ok = db.get(key_of(parent)) == parent
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert db.get(key_of(make_result(sha="02" * 32))) is not None
        assert db.get(key_of(parent)) == parent


# -- CachedDevice --------------------------------------------------------------------


class FakeDevice:
    """A device that 'measures' instantly and counts its calls."""

    name = "fake"

    def __init__(self, runtimes: dict | None = None, flags: dict | None = None) -> None:
        self.calls = 0
        self.versions = {"onnxruntime": "1.32.0", "litert": "2.3.0"} if runtimes is None else runtimes
        self.flags = flags

    def fingerprint(self) -> dict:
        fp = {"id": "fake00000001", "kind": "fake"}
        if self.versions:
            fp["runtimes"] = dict(self.versions)
        return fp

    def runtimes(self) -> list[str]:
        return ["onnxruntime", "litert"]

    def round_to(self) -> int:
        return 8

    def measure(self, artifact, runtime=None, threads=1, runs=50, warmup=10, trials=3) -> LatencyResult:
        self.calls += 1
        r = make_result(sha=sha256_file(artifact), threads=threads, runs=runs, warmup=warmup, trials=trials,
                        p50=float(self.calls), runtime=runtime or "onnxruntime")  # fmt: skip
        return dataclasses.replace(r, artifact=str(artifact), runtime_version=self.versions.get(runtime or "onnxruntime") or "0.1")


class FlaggedDevice(FakeDevice):
    def measure_flags(self) -> dict:
        return dict(self.flags)


@pytest.fixture
def artifact(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07" + bytes(range(256)) * 8)  # contents only matter for the sha256
    return path


def test_cached_device_hits_and_misses(tmp_path, artifact) -> None:
    fake = FakeDevice()
    with LatencyCache(tmp_path / "c.sqlite") as db:
        dev = CachedDevice(fake, db)
        assert isinstance(dev, Device)
        assert dev.name == "fake" and dev.fingerprint() == fake.fingerprint() and dev.runtimes() == fake.runtimes()
        assert dev.round_to() == 8  # other device attributes pass through

        first = dev.measure(artifact, threads=1, runs=20, warmup=2, trials=2)
        assert fake.calls == 1 and first.runtime_info["cache"] == "miss" and first.p50_ms == 1.0
        second = dev.measure(artifact, threads=1, runs=20, warmup=2, trials=2)
        assert fake.calls == 1  # no measurement
        assert second.runtime_info["cache"] == "hit" and second.runtime_info["providers"] == ["CPUExecutionProvider"]
        assert len(second.runtime_info["cache_key"]) == 16
        assert second.p50_ms == 1.0 and second.samples_ms == first.samples_ms

        # Different threads, runs or runtime alias resolved to the same runtime.
        dev.measure(artifact, threads=2, runs=20, warmup=2, trials=2)
        assert fake.calls == 2
        dev.measure(artifact, runtime="ort", threads=2, runs=20, warmup=2, trials=2)
        assert fake.calls == 2  # "ort" is onnxruntime: same key
        dev.measure(artifact, threads=1, runs=21, warmup=2, trials=2)
        assert fake.calls == 3

        # The same bytes under another name hit, and report the path asked for.
        copy = tmp_path / "renamed.onnx"
        copy.write_bytes(artifact.read_bytes())
        renamed = dev.measure(copy, threads=1, runs=20, warmup=2, trials=2)
        assert fake.calls == 3 and renamed.artifact == str(copy.resolve())

        # Changed bytes: a miss.
        artifact.write_bytes(artifact.read_bytes() + b"\x00")
        changed = dev.measure(artifact, threads=1, runs=20, warmup=2, trials=2)
        assert fake.calls == 4 and changed.runtime_info["cache"] == "miss"
        assert db.stats()["hits"] == 3 and db.stats()["entries"] == 4


def test_cached_device_key_follows_runtime_version_and_flags(tmp_path, artifact) -> None:
    with LatencyCache(tmp_path / "c.sqlite") as db:
        old = FakeDevice(runtimes={"onnxruntime": "1.31.0"})
        CachedDevice(old, db).measure(artifact, runs=5, warmup=1, trials=1)
        new = FakeDevice(runtimes={"onnxruntime": "1.32.0"})  # same fingerprint id, runtime upgraded
        CachedDevice(new, db).measure(artifact, runs=5, warmup=1, trials=1)
        assert (old.calls, new.calls) == (1, 1)

        bare = FakeDevice(runtimes={})  # no fingerprint()["runtimes"]: keyed as "unknown"
        cached = CachedDevice(bare, db)
        assert cached.key_for(artifact, "onnxruntime", 1, 5, 1, 1).runtime_version == "unknown"
        cached.measure(artifact, runs=5, warmup=1, trials=1)
        cached.measure(artifact, runs=5, warmup=1, trials=1)
        assert bare.calls == 1

        big = FlaggedDevice(flags={"cpu_mask": "f0"})
        little = FlaggedDevice(flags={"cpu_mask": "0f"})
        for d in (big, little, big):
            CachedDevice(d, db).measure(artifact, runs=5, warmup=1, trials=1)
        assert (big.calls, little.calls) == (1, 1)
        CachedDevice(big, db, flags={"use_xnnpack": False}).measure(artifact, runs=5, warmup=1, trials=1)
        assert big.calls == 2
        flags = sorted(json.dumps(e["flags"], sort_keys=True) for e in db.entries())
        assert flags == ['{"cpu_mask": "0f"}', '{"cpu_mask": "f0", "use_xnnpack": false}', '{"cpu_mask": "f0"}', "{}", "{}", "{}"]


def test_cached_device_disabled_neither_reads_nor_writes(tmp_path, artifact) -> None:
    fake = FakeDevice()
    with LatencyCache(tmp_path / "c.sqlite") as db:
        CachedDevice(fake, db).measure(artifact, runs=5, warmup=1, trials=1)  # stored
        off = CachedDevice(fake, db, enabled=False)
        for _ in range(2):
            r = off.measure(artifact, runs=5, warmup=1, trials=1)
            assert r.runtime_info["cache"] == "off"
        off.measure(artifact, threads=3, runs=5, warmup=1, trials=1)
        assert fake.calls == 4
        assert db.stats()["entries"] == 1 and db.stats()["hits"] == 0 and db.stats()["misses"] == 1


def test_cached_device_checks_arguments_before_any_lookup(tmp_path, artifact) -> None:
    fake = FakeDevice()
    with LatencyCache(tmp_path / "c.sqlite") as db:
        dev = CachedDevice(fake, db)
        with pytest.raises(UserError, match="threads must be a positive integer"):
            dev.measure(artifact, threads=0)
        with pytest.raises(UserError, match="does not exist"):
            dev.measure(tmp_path / "missing.onnx")
        with pytest.raises(UserError, match="cannot run"):
            dev.measure(artifact, runtime="litert")
        assert fake.calls == 0 and db.stats()["misses"] == 0


def test_cached_host_device_measures_once(tmp_path) -> None:
    """The real LocalDevice: its fingerprint holds runtimes, so the second call is a hit."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecompress.devices.local import LocalDevice

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w],
    )  # fmt: skip
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    host = LocalDevice()
    assert host.fingerprint()["runtimes"]["onnxruntime"]  # the contract CachedDevice relies on
    with LatencyCache(tmp_path / "c.sqlite") as db:
        dev = CachedDevice(host, db)
        first = dev.measure(path, runs=5, warmup=1, trials=1)
        t0 = time.perf_counter()
        second = dev.measure(path, runs=5, warmup=1, trials=1)
        assert time.perf_counter() - t0 < 0.5  # no subprocess was started
        assert (first.runtime_info["cache"], second.runtime_info["cache"]) == ("miss", "hit")
        assert second.p50_ms == first.p50_ms and second.runtime_version == first.runtime_version
        (entry,) = db.entries(device="host")
        assert entry["device_id"] == host.fingerprint()["id"]
        assert entry["runtime_version"] == host.fingerprint()["runtimes"]["onnxruntime"]


def test_import_is_light() -> None:
    code = (
        "import sys, edgecompress.latency.cache, edgecompress.latency.cache_cli\n"
        "print([m for m in ('numpy', 'torch', 'onnxruntime', 'rich', 'edgecompress.devices') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -- the CLI -------------------------------------------------------------------------


def _populate(path: Path) -> None:
    with LatencyCache(path) as db:
        for i, (dev_id, name) in enumerate([("hostid000001", "host"), ("hostid000001", "host"), ("phoneid00001", "adb:PIXEL")]):
            r = make_result(sha=f"{i + 10:064x}", device=name, p50=1.5 + i)
            db.put(key_of(r, device_id=dev_id, flags={"cpu_mask": "f0"} if name != "host" else None), r)


def test_cli_ls_table_and_json(tmp_path) -> None:
    path = tmp_path / "c.sqlite"
    _populate(path)
    runner = CliRunner()
    res = runner.invoke(cache_group, ["ls", "--path", str(path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for text in ("host (hostid000001)", "adb:PIXEL (phoneid00001)", "cpu_mask=f0", "1.500", "3.500",
                 "m.onnx 0000000000", "3 of 3 entries shown", "0 hits"):  # fmt: skip
        assert text in res.output
    res = runner.invoke(cache_group, ["ls", "--path", str(path), "--json", "--device", "host"])
    assert res.exit_code == 0
    rows = json.loads(res.output)
    assert len(rows) == 2 and {r["device_name"] for r in rows} == {"host"} and {r["p50_ms"] for r in rows} == {1.5, 2.5}


def test_cli_clear_by_device_then_all(tmp_path) -> None:
    path = tmp_path / "c.sqlite"
    _populate(path)
    runner = CliRunner()
    res = runner.invoke(cache_group, ["clear", "--path", str(path), "--device", "phoneid00001"])
    assert res.exit_code == 0 and "removed 1 entry of device phoneid00001" in res.output
    res = runner.invoke(cache_group, ["clear", "--path", str(path)])
    assert res.exit_code == 0 and "removed 2 entries from" in res.output
    assert json.loads(runner.invoke(cache_group, ["ls", "--path", str(path), "--json"]).output) == []


def test_cli_on_a_missing_cache_creates_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGECOMPRESS_CACHE_DIR", str(tmp_path / "none"))
    runner = CliRunner()
    res = runner.invoke(cache_group, ["ls"])
    assert res.exit_code == 0 and "no latency cache at" in res.output and "none" in res.output
    res = runner.invoke(cache_group, ["clear"])
    assert res.exit_code == 0 and "removed 0 entries" in res.output
    assert not (tmp_path / "none").exists()


def test_cli_refuses_a_path_that_is_not_a_cache(tmp_path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07 not sqlite")
    res = CliRunner().invoke(cache_group, ["clear", "--path", str(model)])
    assert isinstance(res.exception, UserError) and "is not an SQLite file" in str(res.exception)
    assert model.read_bytes() == b"\x08\x07 not sqlite" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    res = CliRunner().invoke(cache_group, ["ls", "--path", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output


def test_cli_unwritable_cache_folder_is_a_user_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(cache_group, ["clear", "--path", str(blocker / "sub" / "latency.sqlite")])
    assert res.exit_code == 0 and "removed 0 entries" in res.output  # nothing there: nothing to open
    path = blocker / "latency.sqlite"
    with pytest.raises(UserError, match="EDGECOMPRESS_CACHE_DIR"):
        LatencyCache(path)
