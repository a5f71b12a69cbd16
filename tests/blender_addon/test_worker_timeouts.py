"""The worker-process backend against real stuck workers (issue 19, item 4): per-request timeouts, a cancel that
works while waiting, the worker stopped and restarted cleanly, and a clear error in Blender.

The stuck workers are real Python processes started through a 'Worker Python' shell script, as the add-on starts
the real one: one reads a request and never answers; one answers ``load``, then stops reading and only sends
progress messages.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blender_addon import backend as be
from blender_addon import protocol

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)  # a regression hangs: fail it in minutes, not at the suite limit

SILENT = """
import sys, time
sys.stdin.buffer.read(8)  # reads the request, never answers
time.sleep(300)
"""
STOPS_READING = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from blender_addon import protocol
protocol.read_message(sys.stdin.buffer)
protocol.write_message(sys.stdout.buffer, {{"ok": True, "preset": "fake", "device": "cpu"}})
while True:  # never reads the next request; reports progress forever
    protocol.write_message(sys.stdout.buffer, {{"progress": 0.5, "label": "thinking"}})
    time.sleep(0.1)
"""


def fake_worker(tmp_path: Path, code: str) -> tuple[str, Path]:
    """A 'Worker Python' that runs ``code`` (whatever arguments it gets) and records its process id."""
    (tmp_path / "worker.py").write_text(textwrap.dedent(code))
    pid_file = tmp_path / "pid"
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec {sys.executable} {tmp_path / 'worker.py'}\n")
    script.chmod(0o755)
    return str(script), pid_file


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_silent_worker_times_out_is_stopped_and_restarts(tmp_path):
    python, pid_file = fake_worker(tmp_path, SILENT)
    worker = be.SubprocessBackend(be.Settings(python=python, load_timeout=1.0))
    pids = []
    for _ in range(2):  # the second request starts a fresh worker, which times out too
        t0 = time.monotonic()
        with pytest.raises(be.WorkerTimeout, match=r"load: the worker process did not answer within 1 s, so it was "
                                                   r"stopped .* BUSTO_TIMEOUT_LOAD"):
            worker.load()
        assert 1.0 <= time.monotonic() - t0 < 6.0
        pids.append(int(pid_file.read_text()))
        assert worker._proc is None and gone(pids[-1])
    assert pids[0] != pids[1]


def test_cancel_works_while_waiting_on_a_silent_worker(tmp_path):
    python, pid_file = fake_worker(tmp_path, SILENT)
    worker = be.SubprocessBackend(be.Settings(python=python, load_timeout=120.0))
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(be.Cancelled):
        worker.load(should_stop=stop.is_set)
    assert time.monotonic() - t0 < 5.0  # not the 120 s timeout: the flag is polled while waiting
    assert worker._proc is None and gone(int(pid_file.read_text()))


def test_a_worker_that_stops_reading_cannot_block_a_request(tmp_path):
    """A 16 MB request to a worker that reads nothing (the write blocks) and only sends progress still times out
    at the request's own timeout; the same with a cancel instead."""
    python, _ = fake_worker(tmp_path, STOPS_READING)
    worker = be.SubprocessBackend(be.Settings(python=python, render_timeout=1.5))
    big = {"pose": np.zeros((4_000_000,), np.float32)}
    seen = []
    t0 = time.monotonic()
    with pytest.raises(be.WorkerTimeout, match="render: the worker process did not answer within 1.5 s"):
        worker.request("render", big, progress=lambda x, label: seen.append(label))
    assert 1.5 <= time.monotonic() - t0 < 8.0 and "thinking" in seen and worker._proc is None
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(be.Cancelled):
        worker.request("extract", big, should_stop=stop.is_set)  # extract's timeout is 30 minutes
    assert time.monotonic() - t0 < 8.0 and worker._proc is None
    worker.close()


def test_timeouts_per_request_kind():
    s = be.Settings(load_timeout=5, render_timeout=7, extract_timeout=9)
    assert [s.timeout_for(op) for op in ("load", "sample", "render", "extract", "hello", "shutdown")] == \
        [5, 7, 7, 9, be.DEFAULT_TIMEOUTS["hello"], be.DEFAULT_TIMEOUTS["shutdown"]]
    bad = be.Settings(load_timeout=0, render_timeout=float("nan"), extract_timeout=-1)
    assert [bad.timeout_for(op) for op in ("load", "render", "extract")] == \
        [be.DEFAULT_TIMEOUTS[k] for k in ("load", "render", "extract")]


def test_blender_reports_a_timeout_and_the_job_cancels(addon, bpy_module, tmp_path, monkeypatch):
    """In Blender: the operator fails with the timeout message (no hang, as in a headless farm render), the
    preferences' timeouts are overridden by the environment, and a background job's cancel ends the wait."""
    bpy = bpy_module
    python, _ = fake_worker(tmp_path, SILENT)
    monkeypatch.setenv("BUSTO_BACKEND", "subprocess")
    monkeypatch.setenv("BUSTO_PYTHON", python)
    monkeypatch.setenv("BUSTO_TIMEOUT_LOAD", "1")
    monkeypatch.setenv("BUSTO_TIMEOUT_RENDER", "not a number")
    settings = addon.prefs.resolve(bpy.context)
    assert settings.load_timeout == 1.0 and settings.render_timeout == be.DEFAULT_TIMEOUTS["render"]
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="Loading model failed: load: the worker process did not answer "
                                               "within 1 s"):
            bpy.ops.busto.load_model()
        assert time.monotonic() - t0 < 6.0
        monkeypatch.setenv("BUSTO_TIMEOUT_LOAD", "120")
        job = addon.jobs.Job("Loading model", lambda j: be.load(addon.prefs.resolve(bpy.context), j.report_progress,
                                                                 j.should_stop))
        job.start()
        time.sleep(0.5)
        job.cancel()
        assert job.done.wait(5.0) and isinstance(job.error, be.Cancelled)
    finally:
        be.get_backend(addon.prefs.resolve(bpy.context)).close()


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 0xFFFFFFFF) | st.none())
def test_the_addon_reads_any_worker_output_without_a_traceback(data, length):
    """Whatever a broken worker writes, the add-on's reader raises EOFError or ProtocolError (which the backend turns
    into 'the worker stopped unexpectedly'), never anything else, and allocates nothing it was not sent."""
    if length is not None:
        data = protocol.MAGIC + struct.pack("<I", length) + data
    stream = io.BytesIO(data)
    try:
        while True:
            protocol.read_message(stream)
    except (EOFError, protocol.ProtocolError):
        pass
    with pytest.raises(protocol.ProtocolError, match="announced a 4294967295-byte header"):
        protocol.read_message(io.BytesIO(protocol.MAGIC + struct.pack("<I", 0xFFFFFFFF)))
