"""The live viewport preview of the Busto Neural engine: the pure decisions (which resolution, which result to
show, when to refine), the per-region request/refine state machine, the texture data, and one real low → full
sequence through the backend with the tiny model. ``view_draw`` itself cannot run headless (the ``gpu`` module
refuses to draw in background mode), so its parts are tested here."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def eng(bpy_module):
    from blender_addon import engine

    return engine


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _items(pose=0.0):
    """Plain inputs as rig_inputs makes them (only what inputs_key reads)."""
    return [{"rig": "rig", "spec": "spec", "settings": "settings", "pose": np.full((6, 3), pose),
             "expression": np.zeros(64), "cam2world": np.eye(4), "intrinsics": np.eye(3)}]


class GatedRender:
    """A render function that records its requests and waits for the test to release each one."""

    def __init__(self):
        self.calls: list[tuple[float, int, int]] = []
        self.gate = threading.Semaphore(0)
        self.started = threading.Semaphore(0)

    def __call__(self, items, w, h):
        self.calls.append((float(items[0]["pose"][0, 0]), w, h))
        self.started.release()
        assert self.gate.acquire(timeout=10)
        rgb = np.full((h, w, 3), 0.25, np.float32)
        return rgb, np.full((h, w, 1), 0.5, np.float32)

    def finish(self, _state):
        self.gate.release()


def _settle(state):
    state.thread.join(timeout=10)
    assert not state.busy()


def test_resolution_and_staleness_decisions(eng):
    settle = eng.VIEWPORT_SETTLE_SECONDS
    assert eng.viewport_level(0.0) == "low" and eng.viewport_level(settle * 0.99) == "low"
    assert eng.viewport_level(settle) == "full" and eng.viewport_level(10.0) == "full"
    assert eng.viewport_level(0.5, settle=1.0) == "low"
    assert eng.viewport_cap("low") == eng.VIEWPORT_LOW_SIZE < eng.viewport_cap("full") == eng.VIEWPORT_MAX_SIZE
    assert eng.result_is_newer(5, 4) and not eng.result_is_newer(4, 4) and not eng.result_is_newer(3, 4)
    assert eng.refine_due("low", settle) and eng.refine_due(None, settle)
    assert not eng.refine_due("low", 0.0) and not eng.refine_due("full", 100.0)
    assert eng.viewport_size(1920, 1080) == (160, 90)
    assert eng.viewport_size(1920, 1080, eng.VIEWPORT_LOW_SIZE) == (64, 36)
    assert eng.viewport_size(40, 30) == (40, 30)  # never upscaled


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4000), st.integers(1, 4000), st.integers(8, 512))
def test_viewport_size_keeps_the_aspect_under_the_cap(eng, w, h, cap):
    rw, rh = eng.viewport_size(w, h, cap)
    assert rw >= 8 and rh >= 8
    assert max(rw, rh) <= max(cap, 8)
    assert (rw >= rh) == (w >= h) or rw == rh  # the long side stays the long side
    if max(w, h) <= cap:
        assert (rw, rh) == (max(w, 8), max(h, 8))  # never upscaled beyond the 8-ray minimum


def test_texture_data_is_bottom_up_float32(eng):
    img = np.zeros((3, 2, 4), np.float64)
    img[0, :, 0] = 1.0  # top row red
    img[..., 3] = 1.0
    data = eng.texture_data(img)
    assert data.dtype == np.float32 and data.shape == (24,) and data.flags.c_contiguous
    rows = data.reshape(3, 2, 4)
    assert (rows[-1, :, 0] == 1).all() and (rows[0, :, 0] == 0).all()  # the top row comes last
    with pytest.raises(ValueError, match="RGBA"):
        eng.texture_data(np.zeros((3, 2, 3)))
    out = eng.preview_image(np.full((2, 2, 3), 0.25, np.float32), np.full((2, 2, 1), 0.5, np.float32))
    assert np.allclose(out[..., :3], 0.75) and (out[..., 3] == 1).all()  # over white, opaque


def test_moving_previews_grow_where_they_render_within_the_budget(eng):
    budget = eng.VIEWPORT_FRAME_BUDGET
    # fast: at most 1.25x per preview, up to the low maximum
    sizes = [64]
    for _ in range(6):
        sizes.append(eng.adapt_low_cap(sizes[-1], 0.001))
    assert sizes == [64, 80, 100, 125, 128, 128, 128]
    # where a preview takes the budget the size stays; slower shrinks it, never below the low size
    assert eng.adapt_low_cap(100, budget) == 100
    assert eng.adapt_low_cap(100, 4 * budget) == 80 and eng.adapt_low_cap(100, 1.3 * budget) == round(100 / 1.3 ** 0.5)
    assert eng.adapt_low_cap(64, 10.0) == eng.VIEWPORT_LOW_SIZE == 64
    # the render time grows with the ray count: a model of t = a + b * side^2 settles at the budget
    side = 64
    for _ in range(40):
        side = eng.adapt_low_cap(side, 0.005 + 0.03 * (side / 100) ** 2)
    assert abs(0.005 + 0.03 * (side / 100) ** 2 - budget) < 0.003 and 64 < side < 128
    assert eng.VIEWPORT_LOW_MAX < eng.VIEWPORT_MAX_SIZE  # a refined preview is always larger than a moving one


def test_viewport_previews_adapt_to_the_render_time(eng):
    import time

    def fast(items, w, h):
        return np.full((h, w, 3), 0.25, np.float32), np.full((h, w, 1), 0.5, np.float32)

    def slow(items, w, h):
        time.sleep(0.1)
        return fast(items, w, h)

    for render, expected in ((fast, [(64, 36), (80, 45), (100, 56), (125, 70)]), (slow, [(64, 36)] * 3)):
        state = eng.ViewportPreview(render=render, clock=Clock())
        sizes = []
        for i in range(len(expected)):
            sizes.append(state.update(_items(float(i)), 960, 540)["size"])  # a new pose each time: moving
            _settle(state)
        assert sizes == expected


def test_moving_view_gets_low_resolution_then_refines_when_still(eng):
    clock, render = Clock(), GatedRender()
    state = eng.ViewportPreview(render=render, clock=clock)
    views = {1: state}
    req = state.update(_items(0.0), 960, 540)
    assert req["level"] == "low" and req["size"] == (64, 36)
    render.finish(state)
    _settle(state)
    assert state.shown["level"] == "low" and state.needs_redraw()  # a new image to draw
    assert state.frame().shape == (36, 64, 4) and not state.needs_redraw()  # drawn; not still long enough yet
    assert state.update(_items(0.0), 960, 540) is None  # same picture, same level: nothing to do
    assert state.waiting() and eng.viewport_tick(views) == eng.VIEWPORT_POLL_SECONDS  # keeps polling to refine
    clock.t += eng.VIEWPORT_SETTLE_SECONDS + 0.01
    assert state.needs_redraw()  # still long enough: the redraw asks for the refined picture
    req = state.update(_items(0.0), 960, 540)
    assert req["level"] == "full" and req["size"] == (160, 90)
    assert not state.needs_redraw()  # asked for: no more redraws until it is ready
    render.finish(state)
    _settle(state)
    assert state.frame().shape == (90, 160, 4) and state.shown["level"] == "full"
    assert state.update(_items(0.0), 960, 540) is None and not state.waiting()
    assert eng.viewport_tick(views) is None  # nothing left to wait for: the timer stops
    clock.t += 1.0
    req = state.update(_items(0.0), 800, 540)  # the region resized: a change like any other
    assert req["level"] == "low"
    render.finish(state)
    _settle(state)


def test_only_the_newest_request_renders_and_old_results_never_replace_new_ones(eng):
    clock, render = Clock(), GatedRender()
    state = eng.ViewportPreview(render=render, clock=clock)
    first = state.update(_items(0.0), 64, 64)
    assert render.started.acquire(timeout=10)  # the worker renders frame 0 now
    for f in range(1, 6):  # scrubbing: frames 1..5 arrive while it is busy
        clock.t += 0.04
        assert state.update(_items(float(f)), 64, 64) is not None
    assert state.pending["seq"] == first["seq"] + 5  # one request waits: the newest
    render.finish(state)  # frame 0 done; the worker goes on with frame 5, skipping 1..4
    assert render.started.acquire(timeout=10)
    render.finish(state)
    _settle(state)
    assert [c[0] for c in render.calls] == [0.0, 5.0]
    assert state.shown["seq"] == first["seq"] + 5
    assert state.update(_items(5.0), 64, 64) is None  # its picture is on screen
    state.shown["seq"] += 100  # pretend a later request is on screen: an older result must not replace it
    shown, image = dict(state.shown), state.image
    state.update(_items(6.0), 64, 64)
    render.finish(state)
    _settle(state)
    assert state.shown == shown and state.image is image


def test_a_failing_render_keeps_the_last_image_and_stops_polling(eng, capsys):
    clock = Clock()
    calls = []

    def render(items, w, h):
        calls.append(w)
        if len(calls) > 1:
            raise ValueError("the model broke")
        return np.zeros((h, w, 3), np.float32), np.ones((h, w, 1), np.float32)

    state = eng.ViewportPreview(render=render, clock=clock)
    state.update(_items(0.0), 32, 32)
    _settle(state)
    good = state.image
    state.update(_items(1.0), 32, 32)
    _settle(state)
    assert state.image is good and state.error == "the model broke"
    assert "the model broke" in capsys.readouterr().out
    assert not state.waiting()


def test_real_backend_low_then_refined_preview(addon, bpy_module):
    """The tiny model through the real backend: a low-resolution preview, then the refined one once still."""
    bpy = bpy_module
    cv, K = addon.convert, addon.constants
    sp = bpy.context.scene.busto
    sp.new_seed, sp.new_truncation = 3, 0.7
    assert bpy.ops.busto.sample_avatar(new_avatar=True) == {"FINISHED"}
    dg = bpy.context.evaluated_depsgraph_get()
    cam_world = cv.cv_to_blender_camera(cv.orbit_camera_cv(math.pi / 2, math.pi / 2, K.PORTRAIT_RADIUS,
                                                           K.PORTRAIT_LOOK_AT))
    Kn = cv.blender_intrinsics(cv.lens_for_fov(12.0), 36, 24, "AUTO", 300, 200)
    items = addon.engine.rig_inputs(dg, cam_world, Kn)
    clock = Clock()
    state = addon.engine.ViewportPreview(clock=clock)
    assert state.update(items, 300, 200)["size"] == (64, 43)
    _settle(state)
    assert state.error == "" and state.frame().shape == (43, 64, 4)
    clock.t += addon.engine.VIEWPORT_SETTLE_SECONDS + 0.01
    assert state.update(items, 300, 200)["size"] == (160, 107)
    _settle(state)
    full = state.frame()
    assert state.error == "" and full.shape == (107, 160, 4) and state.shown["level"] == "full"
    assert full[..., :3].min() < 0.9  # the avatar, not just the white background
    assert [lvl for lvl, _ in state.timings] == ["low", "full"]
