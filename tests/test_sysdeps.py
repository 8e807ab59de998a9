"""tools/ensure_sysdeps.sh: as a non-root user with packages missing, stop with the exact command."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "ensure_sysdeps.sh"


def _fake_bin(tmp_path, uid: str, dpkg_rc: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("id", f"echo {uid}"), ("dpkg", f"exit {dpkg_rc}"), ("apt-get", "echo apt-get \"$@\" >> \"${0%/*}/apt.log\"")):
        p = bin_dir / name
        p.write_text(f"#!/bin/bash\n{body}\n")
        p.chmod(0o755)
    return bin_dir


def test_non_root_gets_the_exact_command(tmp_path):
    bin_dir = _fake_bin(tmp_path, "1000", 1)
    res = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, env={"PATH": str(bin_dir)}, timeout=30)
    assert res.returncode == 1
    assert "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist adb" in res.stderr
    assert not (bin_dir / "apt.log").exists()


def test_root_installs_what_is_missing(tmp_path):
    bin_dir = _fake_bin(tmp_path, "0", 1)
    res = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, env={"PATH": str(bin_dir)}, timeout=30)
    assert res.returncode == 0, res.stderr
    assert (bin_dir / "apt.log").read_text().splitlines() == [
        "apt-get update -qq", "apt-get install -y -qq dataset-fashion-mnist adb"]
