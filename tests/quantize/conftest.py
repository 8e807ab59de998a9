"""The quantization tests run with one torch thread."""

from support import one_torch_thread  # noqa: F401  (an autouse fixture)
