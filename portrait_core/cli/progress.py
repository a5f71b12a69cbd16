"""Progress bars on stderr for the long CLI loops (``video``, ``sample``, ``train.evaluate``) and a CPU thread count
that does not oversubscribe a busy machine.

``progress(label, total)`` is a context manager yielding ``advance(n=1)``; it draws a rich bar (done/total,
seconds per item, elapsed, time left) when stderr is a terminal and stays silent otherwise, so logs and pipes get
only the commands' summary lines. ``BUSTO_PROGRESS=1`` forces the bar, ``BUSTO_PROGRESS=0`` turns it off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["auto_threads", "progress", "progress_enabled"]


def progress_enabled(stream=None) -> bool:
    """Whether to draw a bar: ``BUSTO_PROGRESS`` (1/0) if set, else whether ``stream`` (stderr) is a terminal."""
    env = os.environ.get("BUSTO_PROGRESS", "").strip()
    if env in ("0", "1"):
        return env == "1"
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def _no_progress(n: int = 1) -> None:
    """``advance`` when no bar is drawn."""


@contextmanager
def progress(label: str, total: int, unit: str = "frame", enabled: bool | None = None,
             stream=None) -> Iterator[Callable[[int], None]]:
    """A bar for ``total`` items of ``unit``; yields ``advance(n=1)``. ``enabled`` None: :func:`progress_enabled`."""
    if enabled is None:
        enabled = progress_enabled(stream)
    if not enabled:
        yield _no_progress
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr if stream is None else stream, force_terminal=True)
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=total, rate="")

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
            t = bar.tasks[task]
            if t.completed and t.elapsed:
                bar.update(task, rate=f"{t.elapsed / t.completed:.3f} s/{unit}")

        yield advance


def auto_threads(requested: int | None = None) -> int:
    """CPU threads for torch: ``requested`` if given, else the cores not busy with other work (the CPUs this process
    may use minus the 1-minute load average, at least 1, at most torch's default). torch's default (one thread per
    core) oversubscribes a loaded machine: on a 2-core machine at load 5, 2 threads rendered a video frame in 1.2 s
    and 1 thread in 0.14 s."""
    import torch

    if requested:
        return max(1, int(requested))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(torch.get_num_threads(), int(cpus - load + 0.5)))
