"""Frames per second of the viewport's low-resolution path with the shipped model: N consecutive requests issued
through ViewportPreview exactly as view_draw issues them while the timeline plays (a new pose and expression each
frame, a 960x540 region -> 64x36 rays, rendered by the preview's worker thread), each waited for. Interleaved with
the same request made on the main thread, in rounds. Not a test (pytest does not collect it); run it from the
repository root: ``.venv/bin/python tests/blender_addon/bench_viewport_fps.py [N] [ROUNDS]``."""

import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bpy  # noqa: E402, F401  (the engine module needs it)

from blender_addon import backend, convert, engine  # noqa: E402
from blender_addon import constants as K  # noqa: E402

N, ROUNDS = (int(a) for a in (sys.argv[1:3] if len(sys.argv) > 2 else (10, 3)))
settings = backend.Settings(checkpoint="", backend="INPROCESS")
cam_world = convert.cv_to_blender_camera(convert.orbit_camera_cv(math.pi / 2, math.pi / 2, K.PORTRAIT_RADIUS,
                                                                 K.PORTRAIT_LOOK_AT))
W, H = 960, 540
Kn = convert.blender_intrinsics(convert.lens_for_fov(12.0), 36, 24, "AUTO", W, H)
rng = np.random.default_rng(0)


def items(f):
    return [{"rig": "rig", "settings": settings, "spec": backend.AvatarSpec(seed=3), "distance": 1.0,
             "pose": 0.15 * np.sin(0.2 * f + np.arange(18).reshape(6, 3)), "expression": 0.5 * rng.standard_normal(64),
             "cam2world": convert.blender_camera_to_cv(cam_world, np.eye(4)), "intrinsics": Kn}]


t0 = time.perf_counter()
engine.composite(items(0), 64, 36)
print(f"load + bake + first frame: {time.perf_counter() - t0:.1f} s", flush=True)
res = {"viewport worker": [], "main thread": []}
f = 1
for _round in range(ROUNDS):
    vp = engine.ViewportPreview()
    t = time.perf_counter()
    for _ in range(N):
        req = vp.update(items(f), W, H)
        f += 1
        assert req["level"] == "low" and req["size"] == (64, 36)
        vp.thread.join()
        assert vp.shown["seq"] == req["seq"] and not vp.error
    res["viewport worker"].append((time.perf_counter() - t) / N)
    t = time.perf_counter()
    for _ in range(N):
        engine.composite(items(f), 64, 36)
        f += 1
    res["main thread"].append((time.perf_counter() - t) / N)
for k, v in res.items():
    print(f"{k:16} per-round mean ms/frame {[round(1e3 * x) for x in v]} -> median {1 / np.median(v):.1f} fps", flush=True)
