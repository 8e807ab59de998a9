"""Progress bars that switch themselves off in logs and CI."""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ProgressMode = bool | str  # True: bars when interactive; False: silent; "always": bars even in logs


def progress_enabled(progress: ProgressMode) -> bool:
    """Whether to draw bars: `"always"` forces them; `True` draws them only on a terminal
    (stderr is a TTY) outside CI (`CI` unset, empty, "0" or "false"); `False` never."""
    if progress == "always":
        return True
    if progress not in (True, False):
        raise ValueError(f"progress {progress!r} must be True, False or 'always'")
    if not progress:
        return False
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return sys.stderr.isatty()


def make_console(progress: ProgressMode) -> Console:
    """A stderr console (stdout stays clean for results); forced to draw for "always"."""
    return Console(stderr=True, force_terminal=True if progress == "always" else None)


def make_progress(console: Console) -> Progress:
    """Bars with count, elapsed/remaining time and a free-text `info` field (loss, accuracy)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


class TrainReporter:
    """What `train` shows: bars on a terminal, a few plain lines in logs, nothing for False.

    Use as a context manager around the epoch loop.
    """

    def __init__(self, progress: ProgressMode, epochs: int, steps: int, epochs_done: int):
        self.console = make_console(progress)
        self.quiet = progress is False
        self.bars = make_progress(self.console) if progress_enabled(progress) else None
        self.epochs, self.steps = epochs, steps
        self.epoch = epochs_done
        self._t0 = time.perf_counter()
        self._epoch_task = self._batch_task = None
        if self.bars is not None:
            self._epoch_task = self.bars.add_task("epochs", total=epochs, completed=epochs_done, info="")

    def __enter__(self) -> TrainReporter:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()

    def print(self, line: str) -> None:
        if not self.quiet:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def start_epoch(self, epoch: int) -> None:
        """`epoch` is 1-based."""
        self.epoch, self._t0 = epoch, time.perf_counter()
        if self.bars is not None:
            self._batch_task = self.bars.add_task(f"epoch {epoch}", total=self.steps, info="")

    def train_batch(self, done: int, info: str) -> None:
        if self.bars is not None:
            self.bars.update(self._batch_task, completed=done, info=info)
        elif done % max(1, self.steps // 4) == 0 and done < self.steps:  # logs: a line per quarter epoch
            self.print(f"epoch {self.epoch}/{self.epochs}  step {done}/{self.steps}  {info}  {time.perf_counter() - self._t0:.0f} s")

    def start_val(self, batches: int | None) -> None:
        if self.bars is not None:
            self.bars.update(self._batch_task, description=f"epoch {self.epoch} val", total=batches, completed=0)

    def val_batch(self, done: int, top1: float) -> None:
        if self.bars is not None:
            self.bars.update(self._batch_task, completed=done, info=f"val top1 {top1:.2%}")

    def end_epoch(self, line: str, best_top1: float | None) -> None:
        if self.bars is not None:
            self.bars.remove_task(self._batch_task)
            self.bars.update(self._epoch_task, completed=self.epoch, info=f"best val {best_top1:.2%}" if best_top1 is not None else "")
        self.print(line)
