"""`edgecompress --help` must start without the heavy runtimes."""

import json
import subprocess
import sys

HEAVY = ["onnxruntime", "ai_edge_litert", "litert_torch", "torchvision", "tflite_runtime", "onnxscript"]


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys, json\n"
        "from edgecompress.cli import main\n"
        "rc = main(['--help'])\n"
        f"print(json.dumps({{'rc': rc, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "loaded": []}


def test_console_script_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "edgecompress.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in ("analyze", "export", "bench", "devices", "compress", "models"):
        assert cmd in out.stdout
