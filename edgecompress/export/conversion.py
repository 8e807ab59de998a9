"""What the ONNX and TFLite converters share: eval mode during export, and turning a
converter's exception into one line that names the failing op and module.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Op names as the converters spell them in their messages, most specific first.
_OP_PATTERNS = (
    re.compile(r"Exporting the operator '([\w:.]+)'"),  # legacy ONNX exporter
    re.compile(r"OpOverload\(op='([\w.]+)'"),  # dynamo ONNX exporter
    re.compile(r"Lowering not found: ([\w.]+)"),  # litert-torch
    re.compile(r"target=torch\.ops\.([\w.]+)"),  # any fx node printed in a message
)
_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for an export and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Send file descriptors 1 and 2 to a scratch file while a converter runs.

    The converters print from C++ and from torch internals straight to the process's
    stdout/stderr (absl logs such as "Estimated count of arithmetic ops", whole IR graph
    dumps on failure), which Python-level redirection cannot catch. What matters reaches
    the user through the return value or the UserError instead. Anything another thread
    prints meanwhile (e.g. a progress bar refresh) is dropped too; it resumes afterwards.
    """
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no usable fds (e.g. a daemon with closed stdio): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as sink:
        _flush_std_streams()
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            _flush_std_streams()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


@dataclass(frozen=True)
class FailureInfo:
    """What could be learned from a converter's exception (op, module, source line)."""

    op: str | None
    module: str | None
    source: str | None
    message: str

    def describe(self) -> str:
        """'op aten.linalg_eig in module head.1 (Inner) at net.py:6' or the first message line."""
        if self.op is None:
            where = f" (at {self.source})" if self.source else ""
            return f"{self.message}{where}"
        text = f"op {self.op}"
        if self.module is not None:
            text += f" in module {self.module}"
        if self.source is not None:
            text += f" at {self.source}"
        return text


def describe_failure(exc: BaseException) -> FailureInfo:
    """Extract the failing op, module and user source line from a converter exception.

    Both torch.export-based converters (dynamo ONNX, litert-torch) fail while visiting an
    fx node whose metadata records the module path (`nn_module_stack`) and the user's
    source line; the node is a local variable of the failing frame, so it is taken from
    the traceback. When that is not available the op name is parsed from the message.
    """
    chain = _exception_chain(exc)
    node = _failing_fx_node(chain)
    root = chain[-1]
    message = _first_line(root) or _first_line(exc) or type(exc).__name__
    texts = [_ANSI.sub("", str(e)) for e in chain]
    if node is not None:
        module = _module_of(node)
        source = _source_line(node.meta.get("stack_trace") or "")
        return FailureInfo(_op_name(node.target), module, source, message)
    op = next((m.group(1) for t in texts for p in _OP_PATTERNS if (m := p.search(t))), None)
    source = next((s for t in texts if (s := _source_line(t))), None)
    return FailureInfo(_op_name(op) if op else None, None, source, message)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not e for e in chain):
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def _failing_fx_node(chain: list[BaseException]):
    import torch.fx

    found = None
    for e in chain:
        tb = e.__traceback__
        while tb is not None:
            node = tb.tb_frame.f_locals.get("node")
            if isinstance(node, torch.fx.Node) and node.op == "call_function":
                found = node  # keep the deepest frame's node
            tb = tb.tb_next
    return found


def _module_of(node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return f"{path or '<root>'} ({cls_name})"


def _op_name(target) -> str:
    """'aten.linalg_eig' for OpOverload aten.linalg_eig.default, 'aten::fft_rfft2' -> 'aten.fft_rfft2'."""
    name = str(getattr(target, "_name", None) or target).replace("::", ".")
    return name.removesuffix(".default")


def _source_line(text: str) -> str | None:
    """'net.py:6' for the last frame in `text` that is not inside an installed package."""
    frames = [(f, n) for f, n in _USER_FRAME.findall(text) if "site-packages" not in f and "/torch/" not in f]
    if not frames:
        return None
    path, line = frames[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line}"


def _first_line(exc: BaseException, limit: int = 300) -> str:
    for line in _ANSI.sub("", str(exc)).splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def not_traceable_message(what: str, model: nn.Module, info: FailureInfo) -> str:
    """The message for an export that failed before reaching any one op ("ONNX", "TFLite")."""
    return (
        f"{what} export of {type(model).__name__} failed: {info.describe()}; make forward() traceable by torch.export "
        f"(no Python control flow on tensor values, no custom Python ops) and retry"
    )
