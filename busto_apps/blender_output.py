"""Blender's harmless start-up noise kept off the terminal.

In background mode Blender probes EGL configurations for its GPU context (Workbench renders need one) and prints
``EGL Error (0x3009): EGL_BAD_MATCH ...`` from C for every configuration it rejects before one works. The lines
are written to file descriptor 2 directly, so :func:`hidden_lines` filters at that level: it puts a pipe in place
of the descriptor and forwards every other line unchanged.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EGL_PROBE_LINES", "hidden_lines"]

#: Lines (substrings) of Blender's GPU probing in background mode
EGL_PROBE_LINES = ("EGL Error (0x3009)", "EGL_BAD_MATCH")


@contextmanager
def hidden_lines(patterns: tuple[str, ...] = EGL_PROBE_LINES, fd: int = 2) -> Iterator[dict[str, int]]:
    """Drop the lines of ``fd`` (C output included) that contain one of ``patterns``; yields ``{"hidden": n}``,
    the number dropped so far. Other lines reach the original descriptor unchanged, in order."""
    wanted = tuple(p.encode() for p in patterns)
    counts = {"hidden": 0}
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as src, os.fdopen(os.dup(saved), "wb", buffering=0) as dst:
            pending = b""
            while chunk := src.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if any(p in line for p in wanted):
                        counts["hidden"] += 1
                    else:
                        dst.write(line + b"\n")
            if pending and not any(p in pending for p in wanted):
                dst.write(pending)

    thread = threading.Thread(target=pump, name="busto-stderr-filter", daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved, fd)  # the pipe's last write end here closes: the pump reads to the end and stops
        thread.join(timeout=5)  # a child process still holding the pipe keeps it open; do not wait for it
        os.close(saved)
