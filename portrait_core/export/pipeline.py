"""Avatar -> rigged, coloured, expressive glTF in one call; keyframe animation; timings for ``bench``.

Conventions: canonical frame, metres, SMPL axes (+Y up, facing +Z), origin at the canonical neck joint J12 — which is
also glTF's frame (Y-up, +Z front, metres). See docs/export.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portrait_core.export.extract import AVATAR_LEVEL, Mesh, extract_mesh
from portrait_core.export.gltf import Animation, write_glb, write_mesh
from portrait_core.export.rig import MORPH_SCALE, Rig, build_rig, expression_morphs, morph_basis, morph_weights

#: Frames between two evenly spaced keyframes (official folders carry no frame numbers); the same default as
#: ``python -m portrait_core video --key-interval``, so an exported animation plays at the video's pace.
DEFAULT_KEY_INTERVAL = 8
DEFAULT_FPS = 30.0
#: Baked colour texture size of .glb exports (texels per side).
DEFAULT_TEXTURE_SIZE = 1024


def animation_from_track(track, basis: np.ndarray, *, name: str = "keyframes",
                         key_interval: int = DEFAULT_KEY_INTERVAL) -> Animation:
    """A ``KeyframeTrack`` (portrait_core.geometry.keyframes) -> :class:`Animation`.

    Keyframe times are ``frames / fps`` when the track has frame numbers, else ``i · key_interval / fps``. The
    pose becomes per-joint rotation keys (glTF LINEAR = slerp); the expression becomes morph weights by least
    squares on the morph basis [K,64] (:func:`portrait_core.export.rig.morph_weights`).
    """
    n = len(track)
    frames = np.asarray(track.frames, np.float64) if track.frames is not None else np.arange(n) * float(key_interval)
    times = (frames - frames[0]) / float(track.fps)
    weights = morph_weights(track.expression, basis) if len(basis) else None
    return Animation(times=times, pose=np.asarray(track.pose), morph_weights=weights, name=name)


def load_animations(paths: Sequence[str | os.PathLike], basis: np.ndarray, *,
                    key_interval: int = DEFAULT_KEY_INTERVAL, fps: float | None = None) -> list[Animation]:
    """One :class:`Animation` per keyframe source (an official keyframe folder or a Busto keyframe .json)."""
    from portrait_core.geometry.keyframes import load_keyframes

    out = []
    for p in paths:
        p = Path(p)
        track = load_keyframes(p, fps=fps or DEFAULT_FPS) if p.is_dir() else load_keyframes(p)
        if fps is not None and not p.is_dir():
            track.fps = float(fps)
        out.append(animation_from_track(track, basis, name=p.stem or p.name, key_interval=key_interval))
    return out


@dataclass
class ExportResult:
    """What :func:`export_avatar` made: the file, the canonical mesh, rig, morphs, animations, timings (s)."""

    path: Path
    mesh: Mesh
    rig: Rig | None
    morphs: dict[str, np.ndarray]
    animations: list[Animation]
    timings: dict[str, float] = field(default_factory=dict)


def export_avatar(
    avatar,
    path: str | os.PathLike,
    *,
    resolution: int = 256,
    morphs: int | Sequence[int | str] = 8,
    morph_scale: float = MORPH_SCALE,
    keyframes: Sequence[str | os.PathLike] = (),
    key_interval: int = DEFAULT_KEY_INTERVAL,
    fps: float | None = None,
    decimate: int | None = None,
    level: float = AVATAR_LEVEL,
    texture: int | None = DEFAULT_TEXTURE_SIZE,
    **extract_kw,
) -> ExportResult:
    """Extract, rig, add expression morphs and keyframe animations, write ``path``.

    ``.glb``: UV-unwrapped mesh with a ``texture``² colour texture baked from the neural renderer (``None``: vertex
    colours) + skin (SMPL upper-body joints of the avatar's betas) + ``morphs`` morph targets + one animation
    per keyframe source. ``.obj``/``.ply``: the static canonical mesh with vertex colours only.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".glb", ".obj", ".ply"):
        raise ValueError(f"unsupported output {path.name!r}: use .glb, .obj or .ply")
    t = {}
    t0 = time.perf_counter()
    mesh = extract_mesh(avatar, resolution, decimate=decimate, level=level,
                        texture=texture if suffix == ".glb" else None, **extract_kw)
    t["extract"] = time.perf_counter() - t0
    for k in ("t_field", "t_mcubes", "t_clean", "t_color", "t_texture"):
        t[k[2:]] = float(mesh.info.get(k, 0.0))
    if suffix != ".glb":
        t1 = time.perf_counter()
        write_mesh(path, mesh)
        t["write"] = time.perf_counter() - t1
        t["total"] = time.perf_counter() - t0
        return ExportResult(path, mesh, None, {}, [], t)
    t1 = time.perf_counter()
    rig = build_rig(mesh, avatar.generator.body, avatar.body_shape.detach().cpu())
    t["rig"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    names, basis = morph_basis(morphs, morph_scale)
    morph_dict = expression_morphs(avatar, mesh, names, morph_scale) if names else {}
    t["morphs"] = time.perf_counter() - t1
    animations = load_animations(keyframes, basis, key_interval=key_interval, fps=fps) if keyframes else []
    t1 = time.perf_counter()
    extras = {"morph_scale": morph_scale, "morph_expressions": {n: basis[i].nonzero()[0].tolist()
                                                                for i, n in enumerate(names)},
              "resolution": mesh.info.get("resolution"), "level": level, "body_shape":
                  avatar.body_shape.detach().cpu().numpy().reshape(-1).tolist()}
    write_glb(path, mesh, rig, morph_dict, animations, extras=extras)
    t["write"] = time.perf_counter() - t1
    t["total"] = time.perf_counter() - t0
    return ExportResult(path, mesh, rig, morph_dict, animations, t)


def benchmark_export(avatar, resolution: int = 256, *, morphs: int = 8, path: str | os.PathLike | None = None,
                     **kw) -> dict[str, float]:
    """Wall-clock seconds per stage of :func:`export_avatar` to a temporary (or given) ``.glb``: field, mcubes, clean,
    color, texture, extract, rig, morphs, write, total; ``cpu_total`` (process CPU seconds, all threads: a load-independent
    figure on a shared machine); vertices/faces/bytes. For ``python -m portrait_core bench``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(path) if path is not None else Path(tmp) / "bench.glb"
        cpu0 = time.process_time()
        res = export_avatar(avatar, out, resolution=resolution, morphs=morphs, **kw)
        timings = dict(res.timings)
        timings["cpu_total"] = time.process_time() - cpu0  # process CPU seconds (all threads)
        timings["vertices"] = float(res.mesh.num_vertices)
        timings["faces"] = float(res.mesh.num_faces)
        timings["bytes"] = float(out.stat().st_size)
    return timings
