"""Suite-wide settings."""

import os

# Tests never talk to a real adb server: the adb client would start one on port 5037 and
# leave it running. Tests that need a phone start the fake one and pass its adb path
# explicitly; `-m device` tests on a real phone set ANDROID_SERIAL and keep adb usable.
if not os.environ.get("ANDROID_SERIAL"):
    os.environ["ADB"] = os.path.join(os.sep, "nonexistent", "adb-disabled-in-tests")

# The latency cache of a test run lives in a fresh folder, never in the user's cache.
if not os.environ.get("EDGECOMPRESS_CACHE_DIR"):
    import tempfile

    os.environ["EDGECOMPRESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgecompress-test-cache-")
