"""Helpers several test folders share (tests/ is on sys.path: `from support import ...`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def zoo_checkpoint(directory: Path, name: str, **arch) -> str:
    """A seeded, untrained zoo model saved as an edgecompress checkpoint (1x28x28 input) in `directory`."""
    from edgecompress.models import create_model
    from edgecompress.models.loading import save_checkpoint

    torch.manual_seed(0)
    path = Path(directory) / f"{name}.pt"
    save_checkpoint(create_model(name, **arch), path, arch_spec=f"zoo:{name}", arch_kwargs=arch, input_shape=(1, 28, 28))
    return str(path)


#: a two-stage mobile search space small enough for unit tests (16x16 inputs)
TINY_SPACE = """
name: tiny
stem: {channels: 8, stride: 2}
stages:
  - {channels: 8, blocks: 2, stride: 1}
  - {channels: 16, blocks: 2, stride: 2}
head: {channels: 32}
choices: [mb_k3_e3, mb_k5_e3_se, shuffle, skip]
"""


def interrupted_on_call(n: int, accuracy: float = 0.5):
    """An accuracy function that raises KeyboardInterrupt on its n-th call (Ctrl-C while a
    search scores that candidate or epoch's child) and returns `accuracy` otherwise."""
    calls = []

    def evaluate(model) -> float:
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return accuracy
    return evaluate


def load_tool(name: str) -> ModuleType:
    """tools/NAME.py imported as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread for a folder's tests (import it into that folder's conftest.py):
    2 cores, shared, and conversions are single-threaded work anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
