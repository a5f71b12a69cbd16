"""Long model calls without freezing the UI.

An operator splits its work in three: ``prepare`` (main thread: read bpy data into plain values), ``work``
(any thread: backend calls only, never bpy) and ``finish`` (main thread: create bpy data). ``execute`` runs the
three synchronously (scripts, ``bpy.ops`` calls, background mode); ``invoke`` in the interactive UI runs ``work``
in a thread and polls it from a modal timer, with progress in the panel and Esc to cancel. ``work`` passes
``job.should_stop`` to the backend, which polls it while it waits for the worker (and stops the worker when set),
and every worker request has a timeout, so neither the UI nor a background render waits forever.
"""

from __future__ import annotations

import threading
import traceback

import bpy

from .backend import BackendError, Cancelled


class Job:
    """One unit of background work with progress and cancellation (no bpy inside ``run``)."""

    def __init__(self, label: str, work):
        self.label = label
        self.work = work
        self.progress = 0.0
        self.stage = ""
        self.result = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.cancel_event = threading.Event()
        self.thread: threading.Thread | None = None

    def report_progress(self, fraction: float, stage: str = "") -> None:
        self.progress = max(0.0, min(1.0, float(fraction)))
        if stage:
            self.stage = stage

    def should_stop(self) -> bool:
        return self.cancel_event.is_set()

    def run(self) -> None:
        try:
            self.result = self.work(self)
        except BaseException as exc:  # handed to the main thread, reported there
            self.error = exc
        finally:
            self.done.set()

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name=f"busto-{self.label}", daemon=True)
        self.thread.start()

    def cancel(self) -> None:
        self.cancel_event.set()


_CURRENT: Job | None = None


def current_job() -> Job | None:
    return _CURRENT


def error_message(exc: BaseException) -> str:
    """A one-paragraph message for the user; tracebacks go to the console only."""
    if isinstance(exc, (BackendError, Cancelled, ValueError, FileNotFoundError, OSError)):
        return str(exc)
    traceback.print_exception(exc)
    return f"{type(exc).__name__}: {exc} (details in the system console)"


class BackgroundJobOperator:
    """Mixin for operators built from ``prepare``/``work``/``finish`` (see the module docstring)."""

    job_label = "Busto"
    _job: Job | None = None
    _timer = None

    # subclasses implement these three
    def prepare(self, context):  # -> state passed to work and finish, or None to abort (after self.report)
        return {}

    def work(self, job: Job, state):
        return None

    def finish(self, context, state, result) -> None:
        pass

    # ---------------------------------------------------------------- synchronous path
    def execute(self, context):
        if _CURRENT is not None and not _CURRENT.done.is_set():
            self.report({"ERROR"}, f"Busto is busy ({_CURRENT.label}); wait or press Esc to cancel it")
            return {"CANCELLED"}
        state = self._prepare(context)
        if state is None:
            return {"CANCELLED"}
        job = Job(self.job_label, lambda j: self.work(j, state))
        job.run()
        return self._complete(context, job, state)

    def _prepare(self, context):
        try:
            return self.prepare(context)
        except Exception as exc:
            self.report({"ERROR"}, error_message(exc))
            return None

    def _complete(self, context, job: Job, state):
        if job.error is not None:
            if isinstance(job.error, Cancelled):
                self.report({"WARNING"}, f"{self.job_label}: cancelled")
            else:
                self.report({"ERROR"}, f"{self.job_label} failed: {error_message(job.error)}")
            return {"CANCELLED"}
        try:
            self.finish(context, state, job.result)
        except Exception as exc:
            self.report({"ERROR"}, f"{self.job_label} failed: {error_message(exc)}")
            return {"CANCELLED"}
        return {"FINISHED"}

    # ---------------------------------------------------------------- interactive path
    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        global _CURRENT
        if _CURRENT is not None and not _CURRENT.done.is_set():
            self.report({"ERROR"}, f"Busto is busy ({_CURRENT.label}); wait or press Esc to cancel it")
            return {"CANCELLED"}
        state = self._prepare(context)
        if state is None:
            return {"CANCELLED"}
        self._state = state
        self._job = _CURRENT = Job(self.job_label, lambda j: self.work(j, state))
        self._set_status(context, True)
        self._job.start()
        self._timer = context.window_manager.event_timer_add(0.1, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        return self.modal_step(context)

    def modal_step(self, context):
        """One poll of the running job (called from the modal timer; tests call it directly)."""
        job = self._job
        rt = context.window_manager.busto
        rt.job_progress = 100.0 * job.progress
        rt.job_label = f"{job.label}: cancelling" if job.should_stop() else \
            f"{job.label}: {job.stage}" if job.stage else job.label
        for area in (context.screen.areas if context.screen else ()):
            if area.type == "VIEW_3D":
                area.tag_redraw()
        if not job.done.is_set():
            return {"RUNNING_MODAL"}
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        self._set_status(context, False)
        global _CURRENT
        _CURRENT = None
        return self._complete(context, job, self._state)

    def _set_status(self, context, running: bool) -> None:
        rt = context.window_manager.busto
        rt.job_running = running
        rt.job_progress = 0.0
        rt.job_label = self.job_label if running else ""


class BUSTO_OT_cancel_job(bpy.types.Operator):
    """Cancel the running Busto job"""

    bl_idname = "busto.cancel_job"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        if _CURRENT is None or _CURRENT.done.is_set():
            self.report({"INFO"}, "No Busto job is running")
            return {"CANCELLED"}
        _CURRENT.cancel()
        self.report({"INFO"}, f"Cancelling {_CURRENT.label}")
        return {"FINISHED"}


CLASSES = (BUSTO_OT_cancel_job,)
