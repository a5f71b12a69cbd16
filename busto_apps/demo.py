"""``python -m busto_apps demo --out DIR`` (alias ``python -m portrait_core demo``): the end-to-end headless
Blender demo.

Runs Blender as the ``bpy`` module, with the Busto add-on registered from source, through every step an artist
takes in the Busto panel: load the model, sample an avatar (the rig), extract its geometry (mesh, skin weights,
expression shape keys), key a head turn, a nod, a shoulder shrug and a smile with the add-on's animation presets,
add the portrait camera, render the animation with the **Busto Neural** engine, and render the extracted mesh with
Workbench from the same camera to check that the geometry lines up with the neural image. With a 360° checkpoint
(``--mode 360``, or a checkpoint whose ``render.mode`` is ``"360"``) it also keys a full camera turn around the
avatar with the add-on's orbit operator and renders it: back views included.

Outputs in DIR (see docs/demo.md)::

    frames/0001.png ...     the neural frames (Busto Neural engine, 8-bit sRGB)
    orbit/0001.png ...      360 mode only: one full camera turn (busto.orbit_camera), the front view first
    orbit.mp4               360 mode only: the turn as H.264 video
    demo.mp4                the frames as H.264 video (imageio-ffmpeg)
    contact-sheet.png       frames in a grid + Workbench mesh / neural / overlay comparisons (+ an orbit row)
    compare/                the comparison renders (mesh_FFFF.png Workbench RGBA, neural_FFFF.png RGBA)
    demo.blend              the scene (rig, mesh, keyframes, camera, render settings): ``blender -b demo.blend -a``
    avatar.glb              rig + skinned mesh + shape keys + the animation (Blender's glTF exporter)
    summary.json            timings per step, files, settings, alignment scores
    demo.log                everything Blender printed

An application of both ``portrait_core`` and the add-on (package ``busto_apps``, above both): it reaches them
through public names only. ``bpy`` and ``blender_addon`` are imported inside :func:`run` so that ``--help`` stays
light.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The add-on presets in the order they are played, the label shown on the frames and the preset amplitude.
#: The turn plays at 0.6 (about 20 degrees of head yaw): the neural frames of the shipped model are clean at the
#: preset's full 34 degrees, but its frontal-mode mesh keeps up to 10 cm of depth behind the head, which a full turn
#: swings into view beside the face. The smile plays at 2 (smile slider 3, jaw 0.6) to show.
SEGMENTS = (("TURN", "head turn", 0.6), ("NOD", "nod", 1.0), ("SHRUG", "shoulder shrug", 1.0), ("SMILE", "smile", 2.0))
#: Generator preset used when no trained checkpoint is available (random init, saved next to the outputs).
FALLBACK_PRESET = "small"
RANDOM_INIT_NAME = "random-init-small.safetensors"
#: The shipped 360° model, in portrait_core/assets when it exists (the recipe ``default360`` of docs/training.md).
DEFAULT_360_NAME = "default360.safetensors"
#: The orbit row of the contact sheet: this many evenly spaced yaws of the turn (45° apart, the back at 180°).
ORBIT_SHEET_VIEWS = 8
#: Magenta: the colour the Busto Neural engine writes when a frame fails.
_FAILED_RGB = (255, 0, 255)


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


# --------------------------------------------------------------------------------------------------- options
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m busto_apps demo",
        description="End-to-end headless Blender demo: sample an avatar, extract and rig its mesh, key a head "
                    "turn, a nod, a shrug and a smile, render them with the Busto Neural engine, write "
                    "demo.blend, avatar.glb, frames/*.png, demo.mp4 and a contact sheet.")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    p.add_argument("--frames", type=int, default=48, help="number of frames (default: 48)")
    p.add_argument("--resolution", type=int, default=256, help="square render size in pixels (default: 256)")
    p.add_argument("--mesh-resolution", type=int, default=192,
                   help="marching-cubes grid size of the extracted mesh (default: 192)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="generator checkpoint (.safetensors); default: the model shipped in portrait_core/assets, "
                        f"or a random-init '{FALLBACK_PRESET}' generator when none is shipped")
    p.add_argument("--seed", type=int, default=7, help="avatar seed (default: 7)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi in [0, 1] (default: 0.7)")
    p.add_argument("--no-sr", action="store_true", help="render without the super-resolution network")
    p.add_argument("--fps", type=int, default=24, help="video frame rate (default: 24)")
    p.add_argument("--mesh-level", type=float, default=None,
                   help="density threshold of the mesh (default: 0.5 for a trained model, half the density "
                        "maximum for an untrained one)")
    p.add_argument("--morphs", type=int, default=8, help="expression shape keys on the mesh (default: 8)")
    p.add_argument("--mode", choices=("frontal", "360"), default=None,
                   help="frontal: the head turn, nod, shrug and smile; 360: also a full camera turn around the "
                        "avatar (back views), with --checkpoint or portrait_core/assets/"
                        f"{DEFAULT_360_NAME} (default: the checkpoint's render mode)")
    p.add_argument("--orbit-frames", type=int, default=24,
                   help="360 mode: frames of the camera turn (default: 24, 15 degrees apart)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (the summary is still printed)")
    return p


def _check_args(a: argparse.Namespace) -> None:
    problems = []
    if a.frames < 1:
        problems.append(f"--frames must be >= 1, got {a.frames}")
    if not 16 <= a.resolution <= 2048:
        problems.append(f"--resolution must be in [16, 2048], got {a.resolution}")
    if not 16 <= a.mesh_resolution <= 512:
        problems.append(f"--mesh-resolution must be in [16, 512], got {a.mesh_resolution}")
    if a.fps < 1:
        problems.append(f"--fps must be >= 1, got {a.fps}")
    if a.seed < 0:
        problems.append(f"--seed must be >= 0, got {a.seed}")
    if not 0.0 <= a.truncation <= 1.0:
        problems.append(f"--truncation must be in [0, 1], got {a.truncation}")
    if a.mesh_level is not None and not 0.0 < a.mesh_level < 1.0:
        problems.append(f"--mesh-level must be in (0, 1), got {a.mesh_level}")
    if not 0 <= a.morphs <= 64:
        problems.append(f"--morphs must be in [0, 64], got {a.morphs}")
    if not ORBIT_SHEET_VIEWS <= a.orbit_frames <= 720:
        problems.append(f"--orbit-frames must be in [{ORBIT_SHEET_VIEWS}, 720], got {a.orbit_frames}")
    if a.checkpoint is not None and not a.checkpoint.is_file():
        problems.append(f"--checkpoint {a.checkpoint}: no such file")
    if problems:
        raise DemoError("; ".join(problems))


# --------------------------------------------------------------------------------------------------- schedule
@dataclass
class Segment:
    preset: str
    label: str
    start: int
    interval: int
    keys: list[int]  # key indices of the preset (multiples of ``interval`` after ``start``)
    amplitude: float = 1.0

    @property
    def frames(self) -> list[int]:
        return [self.start + k * self.interval for k in self.keys]

    @property
    def peak(self) -> int:
        """The frame of the preset's first extreme key (head turned, head down, shoulders up, smiling)."""
        return self.start + self.keys[1] * self.interval


def schedule(n_frames: int) -> list[Segment]:
    """Play the four presets one after the other over frames 1..n_frames, each over about a quarter of the range.

    Each preset keys ``start + key * interval``; segments never overlap (a preset's last key, the rest pose, is
    the next one's first). With fewer frames than keys (a quick test), every interval is 1 and the animation runs
    past the rendered range.
    """
    from blender_addon import presets

    out, start = [], 1
    span = max(0, n_frames - 1)
    for k, (name, label, amplitude) in enumerate(SEGMENTS):
        keys = list(presets.build_preset(name).frames)
        target_end = 1 + int(math.floor((k + 1) * span / len(SEGMENTS) + 0.5))
        interval = max(1, (target_end - start) // keys[-1])
        out.append(Segment(name, label, start, interval, keys, amplitude))
        start += interval * keys[-1]
    return out


def segment_of(frame: int, segments: list[Segment]) -> str:
    for s in segments:
        if s.frames[0] <= frame < s.frames[-1]:
            return s.label
    return "rest"


def comparison_frames(n_frames: int, segments: list[Segment], limit: int = 4) -> list[int]:
    """The frames where the mesh and the neural render are compared: each preset's extreme, within range."""
    frames = [s.peak for s in segments if s.peak <= n_frames]
    for f in (1, n_frames):
        if len(frames) < 2 and f not in frames:
            frames.append(f)
    return sorted(set(frames))[:limit]


def grid_frames(n_frames: int, segments: list[Segment], count: int = 12) -> list[int]:
    """The frames shown on the contact sheet: the first, the last, every preset's extreme, then evenly spaced
    frames up to ``count``."""
    chosen = {1, n_frames} | {s.peak for s in segments if s.peak <= n_frames}
    for f in np.linspace(1, n_frames, num=max(count, 2)).round().astype(int).tolist():
        if len(chosen) >= min(count, n_frames):
            break
        chosen.add(int(f))
    for f in range(1, n_frames + 1):  # linspace collided on a few frames: fill in order
        if len(chosen) >= min(count, n_frames):
            break
        chosen.add(f)
    return sorted(chosen)


# --------------------------------------------------------------------------------------------------- checkpoint
def default_checkpoint() -> Path | None:
    """The trained model shipped with Busto, or None when there is none yet."""
    from portrait_core.assets import default_checkpoint_path

    try:
        p = Path(default_checkpoint_path())
        if p.is_file():
            return p
    except (FileNotFoundError, OSError, ValueError, RuntimeError):
        pass
    try:
        from portrait_core.serve import ServeError
        from portrait_core.serve import default_checkpoint as shipped
    except ImportError:
        return None
    try:
        return Path(shipped())
    except ServeError:
        return None


def random_init_checkpoint(path: Path, seed: int) -> Path:
    """A random-init generator of the fallback preset saved with ``save_generator`` (deterministic per seed)."""
    import torch

    from portrait_core.generator import Generator, generator_config, save_generator

    torch.manual_seed(seed)
    save_generator(path, Generator(generator_config(FALLBACK_PRESET)),
                   info={"note": "random init (no trained default checkpoint available); made by the demo",
                         "seed": seed})
    return path


def default_360_checkpoint() -> Path:
    """Where the shipped 360° model lies (``portrait_core/assets/default360.safetensors``); it may not exist."""
    from portrait_core.assets import ASSETS_DIR

    return Path(ASSETS_DIR) / DEFAULT_360_NAME


def checkpoint_render_mode(path: Path) -> str:
    """``render.mode`` (``"frontal"`` or ``"360"``) of a generator checkpoint's config: the ``G.cfg`` that
    ``load_generator`` would build, read from the file's header without loading its tensors."""
    from portrait_core.generator import CheckpointError
    from portrait_core.generator.checkpoint import read_metadata
    from portrait_core.generator.config import config_from_json

    try:
        return str(config_from_json(read_metadata(path)["config"]).render.mode)
    except (CheckpointError, KeyError, ValueError, TypeError) as exc:
        raise DemoError(f"{path}: cannot read the generator config of this checkpoint ({exc})") from exc


def resolve_mode(a: argparse.Namespace) -> None:
    """Set ``a.mode`` (and, for 360, ``a.checkpoint``). ``--mode 360`` takes ``--checkpoint`` or the shipped 360°
    model and refuses a checkpoint not trained in 360 mode; ``--mode frontal`` changes nothing; no ``--mode``
    follows the checkpoint (a 360° checkpoint gives the 360 demo). Raises DemoError (one line)."""
    if a.mode == "frontal":
        return
    if a.mode == "360":
        ckpt = a.checkpoint
        if ckpt is None:
            ckpt = default_360_checkpoint()
            if not ckpt.is_file():
                raise DemoError(f"--mode 360 needs a 360° checkpoint: {ckpt} does not exist; pass one with "
                                f"--checkpoint PATH (a generator trained with render.mode = '360')")
        mode = checkpoint_render_mode(ckpt)
        if mode != "360":
            raise DemoError(f"--mode 360: {ckpt} is a {mode}-mode checkpoint (render.mode = {mode!r}); pass a "
                            f"360° checkpoint with --checkpoint PATH, or drop --mode 360")
        a.checkpoint = ckpt
        return
    ckpt = a.checkpoint if a.checkpoint is not None else default_checkpoint()
    try:
        a.mode = checkpoint_render_mode(ckpt) if ckpt is not None else "frontal"
    except DemoError:  # unreadable: the frontal demo, whose model load reports it
        a.mode = "frontal"
    if a.mode == "360":
        a.checkpoint = ckpt


def checkpoint_is_trained(path: Path) -> bool:
    """False for checkpoints the demo (or a test) made from a random init: their density never reaches 0.5."""
    try:
        from portrait_core.generator.checkpoint import read_metadata

        info = json.loads(read_metadata(path).get("info", "{}") or "{}")
    except Exception:  # unreadable metadata: let loading report it
        return True
    note = str(info.get("note", "")).lower()
    return "random init" not in note and "random-init" not in note


# --------------------------------------------------------------------------------------------------- output
@contextlib.contextmanager
def _redirect_fds(log_path: Path, enabled: bool = True):
    """Send everything written to file descriptors 1 and 2 (Blender's C-level prints, library noise) to
    ``log_path``; the caller keeps the original terminal through a duplicate."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time (all threads): wall time on a busy machine overstates the work
    detail: str = ""


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> what it is
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB"))


def _human(size: int) -> str:
    n = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# --------------------------------------------------------------------------------------------------- images
def silhouette_iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    union = np.logical_or(mask_a, mask_b).sum()
    return float(np.logical_and(mask_a, mask_b).sum() / union) if union else 1.0


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (a 1-pixel contour)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def overlay(neural_rgb: np.ndarray, mesh_mask: np.ndarray) -> np.ndarray:
    """The neural frame with the mesh's silhouette contour drawn on it (thickened for small images)."""
    out = neural_rgb[..., :3].copy()
    edge = _outline(mesh_mask)
    if max(mesh_mask.shape) >= 192:
        e = np.pad(edge, 1)
        edge = edge | e[:-2, 1:-1] | e[2:, 1:-1] | e[1:-1, :-2] | e[1:-1, 2:]
    out[edge] = (0, 200, 255)
    return out


def contact_sheet(frames: list[dict], comparisons: list[dict], title: str, subtitle: str, path: Path,
                  columns: int = 6, tile: int = 192, orbit: list[dict] | None = None) -> Path:
    """The contact sheet (PNG, white background).

    ``frames``: ``{frame, neural, mesh, label}`` images; they fill rows of ``columns`` neural frames, each row
    followed by the Workbench renders of the mesh at the same frames (so every mesh sits under its neural frame).
    ``comparisons``: ``{frame, overlay, iou}``; one row of the mesh outline drawn on the neural frame.
    ``orbit``: ``{neural, label}`` views of the camera turn (360 mode), one last row; the sheet widens to hold it.
    """
    from PIL import Image, ImageDraw, ImageFont

    try:
        font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: bitmap font only
        font = small = ImageFont.load_default()
    label_h, pad, head_h, section_h = 18, 6, 52, 24
    orbit = orbit or []
    rows = math.ceil(len(frames) / columns)
    cmp_rows = math.ceil(len(comparisons) / columns)
    wide = max(columns, len(orbit))
    width = wide * tile + (wide + 1) * pad
    row_h = tile + label_h + pad
    height = (head_h + rows * (2 * row_h + section_h) + (section_h + cmp_rows * row_h if comparisons else 0)
              + (section_h + row_h if orbit else 0) + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), title, fill=(0, 0, 0), font=font)
    draw.text((pad, 28), subtitle, fill=(90, 90, 90), font=small)

    def put(img: np.ndarray, x: int, y: int, label: str) -> None:
        im = Image.fromarray(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
        if im.size != (tile, tile):
            im = im.resize((tile, tile), Image.Resampling.LANCZOS if im.size[0] > tile else Image.Resampling.NEAREST)
        sheet.paste(im, (x, y))
        draw.rectangle([x - 1, y - 1, x + tile, y + tile], outline=(200, 200, 200))
        draw.text((x + 2, y + tile + 3), label, fill=(0, 0, 0), font=small)

    def section(y: int, text: str) -> None:
        draw.text((pad, y + 5), text, fill=(40, 40, 120), font=small)

    y = head_h
    for r in range(rows):
        chunk = frames[r * columns:(r + 1) * columns]
        section(y, "Busto Neural frames, and below each the extracted mesh rendered by Workbench from the same "
                   "camera" if r == 0 else "")
        y += section_h
        for c, fr in enumerate(chunk):
            short = fr["label"].split()[-1]  # turn, nod, shrug, smile, rest: fits under a 128 px tile
            put(fr["neural"], pad + c * (tile + pad), y, f"frame {fr['frame']}: {short}")
        y += row_h
        for c, fr in enumerate(chunk):
            put(fr["mesh"], pad + c * (tile + pad), y, f"mesh, frame {fr['frame']}")
        y += row_h
    if comparisons:
        section(y, "Outline of the mesh on the neural frame at each motion's extreme (silhouette IoU, mesh vs "
                   "neural alpha)")
        y += section_h
        for i, cmp in enumerate(comparisons):
            r, c = divmod(i, columns)
            put(cmp["overlay"], pad + c * (tile + pad), y + r * row_h,
                f"frame {cmp['frame']}: IoU {cmp['iou']:.2f}")
        y += cmp_rows * row_h
    if orbit:
        section(y, "Orbit camera (busto.orbit_camera): one full turn around the avatar, Busto Neural, the back "
                   "at 180°")
        y += section_h
        for c, view in enumerate(orbit):
            put(view["neural"], pad + c * (tile + pad), y, view["label"])
    sheet.save(path, optimize=True)
    return path


def write_video(frame_paths: list[Path], path: Path, fps: int) -> int:
    """H.264 MP4 (yuv420p) of the frames with imageio-ffmpeg; returns the number of frames written."""
    import imageio.v2 as imageio

    writer = imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, pixelformat="yuv420p",
                                macro_block_size=2, ffmpeg_log_level="error")
    try:
        for p in frame_paths:
            writer.append_data(_read_png(p)[..., :3])
    finally:
        writer.close()
    return len(frame_paths)


# --------------------------------------------------------------------------------------------------- Blender
class _Blender:
    """The Blender side of the demo: every step goes through the add-on's operators (``bpy.ops.busto.*``)."""

    def __init__(self):
        import bpy

        self.bpy = bpy

    def op(self, idname: str, **kw) -> None:
        """Run an add-on operator; its ERROR report becomes a DemoError naming the operator."""
        cat, name = idname.split(".")
        fn = getattr(getattr(self.bpy.ops, cat), name)
        try:
            result = fn(**kw)
        except RuntimeError as exc:  # background mode: an operator's ERROR report is raised
            raise DemoError(f"bpy.ops.{idname}({_kw(kw)}) failed: {str(exc).strip()}") from exc
        if result != {"FINISHED"}:
            raise DemoError(f"bpy.ops.{idname}({_kw(kw)}) returned {sorted(result)} (see demo.log)")


def _kw(kw: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())


def _engine_failed(png: np.ndarray) -> bool:
    rgb = png[..., :3].reshape(-1, 3)
    return bool(len(rgb)) and bool(np.all(rgb == np.array(_FAILED_RGB, dtype=rgb.dtype)))


# --------------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace, console=None, progress=None) -> Report:
    """The demo. ``console``/``progress``: rich objects (or None); returns the report of what was made."""
    if getattr(args, "mode", None) not in ("frontal", "360"):
        resolve_mode(args)
    orbiting = args.mode == "360"
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("frames", "compare", "orbit"):  # no stale images from an earlier run
        if sub != "orbit" or orbiting:
            (out / sub).mkdir(exist_ok=True)
        for old in (out / sub).glob("*.png"):
            old.unlink()
    (out / "orbit.mp4").unlink(missing_ok=True)
    log_path = out / "demo.log"
    log_path.write_text("")
    report = Report()
    n = int(args.frames)

    steps_total = 11 if orbiting else 10
    overall = progress.add_task("demo", total=steps_total) if progress is not None else None

    def say(text: str) -> None:
        if progress is not None:
            progress.update(overall, description=text)

    @contextlib.contextmanager
    def step(name: str):
        say(name)
        s = Step(name)
        t0, c0 = time.perf_counter(), time.process_time()
        with _redirect_fds(log_path):
            yield s
        s.seconds = time.perf_counter() - t0
        s.cpu_seconds = time.process_time() - c0
        report.steps.append(s)
        if progress is not None:
            progress.advance(overall)

    # 1. Blender + add-on ----------------------------------------------------------------------------
    with step("Start Blender, register the add-on") as s:
        if "BLENDER_USER_RESOURCES" not in os.environ:  # keep the user's Blender config out of it
            user = tempfile.mkdtemp(prefix="busto-demo-blender-")
            os.environ["BLENDER_USER_RESOURCES"] = user
            atexit.register(shutil.rmtree, user, ignore_errors=True)
        import bpy

        import blender_addon

        ckpt = args.checkpoint.resolve() if args.checkpoint is not None else default_checkpoint()
        if ckpt is None:
            ckpt = random_init_checkpoint(out / RANDOM_INIT_NAME, seed=0)
            report.files[RANDOM_INIT_NAME] = f"random-init '{FALLBACK_PRESET}' generator (no shipped checkpoint)"
            report.notes.append(f"No trained checkpoint is shipped in portrait_core/assets yet: the demo uses a "
                                f"random-init '{FALLBACK_PRESET}' generator ({RANDOM_INIT_NAME}); its avatar is a "
                                f"blurry blob, not a face, and expressions do not change it.")
        trained = checkpoint_is_trained(ckpt)
        bpy.ops.wm.read_factory_settings(use_empty=True)
        blender_addon.register()
        registered = True
        B = _Blender()
        sc = bpy.context.scene
        sc.busto.checkpoint = str(ckpt)
        sc.busto.super_resolve = not args.no_sr
        s.detail = f"bpy {bpy.app.version_string}, add-on from {Path(blender_addon.__file__).parent.name}/"
    report.info.update({"mode": args.mode, "checkpoint": str(ckpt), "trained": trained, "seed": args.seed,
                        "frames": n,
                        "resolution": args.resolution, "mesh_resolution": args.mesh_resolution,
                        "super_resolution": not args.no_sr, "fps": args.fps})
    try:
        _run_blender(args, B, sc, out, n, ckpt, trained, report, step, progress, say)
    finally:
        if registered:
            with _redirect_fds(log_path):
                with contextlib.suppress(Exception):
                    blender_addon.unregister()
    # summary.json
    summary = {"steps": [{"name": s.name, "seconds": round(s.seconds, 3), "cpu_seconds": round(s.cpu_seconds, 3),
                          "detail": s.detail} for s in report.steps],
               "total_seconds": round(sum(s.seconds for s in report.steps), 3),
               "total_cpu_seconds": round(sum(s.cpu_seconds for s in report.steps), 3),
               "threads": _threads(),
               "files": {k: {"what": v, "bytes": (out / k).stat().st_size if (out / k).is_file() else None}
                         for k, v in report.files.items()},
               "notes": report.notes, **report.info}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    report.files["summary.json"] = "timings, files, settings and alignment scores"
    return report


def _run_blender(args, B: _Blender, sc, out: Path, n: int, ckpt: Path, trained: bool, report: Report, step,
                 progress, say) -> None:
    bpy = B.bpy
    from blender_addon import backend, prefs

    # 2. model -------------------------------------------------------------------------------------------
    with step("Load the model (busto.load_model)") as s:
        B.op("busto.load_model")
        rt = bpy.context.window_manager.busto
        s.detail = f"{ckpt.name}: {rt.model_status}" + ("" if trained else " (random init)")
        loaded = backend.load(prefs.resolve(bpy.context, sc))  # cached: the operator loaded it
    report.info["model"] = bpy.context.window_manager.busto.model_status
    report.info["preset"] = loaded.get("preset")

    # 3. avatar + rig --------------------------------------------------------------------------------------
    with step("Sample the avatar and its rig (busto.sample_avatar)") as s:
        sp = sc.busto
        sp.new_seed, sp.new_truncation = int(args.seed), float(args.truncation)
        sp.new_full_360 = args.mode == "360"
        B.op("busto.sample_avatar", new_avatar=True)
        rig = bpy.context.view_layer.objects.active
        if rig is None or rig.type != "ARMATURE" or not rig.busto.is_avatar:
            raise DemoError("busto.sample_avatar finished but left no Busto rig active")
        s.detail = f"{rig.name}: {len(rig.data.bones)} bones"

    # 4. geometry -----------------------------------------------------------------------------------------
    with step("Extract the mesh, skin it to the rig (busto.extract_mesh)") as s:
        sp.mesh_resolution = int(args.mesh_resolution)
        sp.mesh_colors, sp.mesh_decimate, sp.mesh_morphs = True, 0, int(args.morphs)
        # an untrained model's diffuse occupancy never reaches the trained level 0.5: the add-on's automatic
        # threshold (half the avatar's density maximum, ``level='auto'`` of portrait_core.export)
        sp.mesh_auto_level = args.mesh_level is None and not trained
        sp.mesh_level = float(args.mesh_level if args.mesh_level is not None else 0.5)
        try:
            B.op("busto.extract_mesh")
        except DemoError as exc:
            if args.mesh_level is not None or sp.mesh_auto_level or "density threshold" not in str(exc):
                raise
            # a checkpoint whose occupancy never reaches the trained level: retry at half its maximum
            report.notes.append(f"The density never reached {sp.mesh_level:g}: extracted at the automatic "
                                f"threshold (half the density maximum) instead.")
            sp.mesh_auto_level = True
            B.op("busto.extract_mesh")
        level = "auto" if sp.mesh_auto_level else round(float(sp.mesh_level), 5)
        mesh = rig.busto.mesh
        if mesh is None:
            raise DemoError("busto.extract_mesh finished but the rig has no mesh")
        keys = len(mesh.data.shape_keys.key_blocks) - 1 if mesh.data.shape_keys else 0
        s.detail = (f"{len(mesh.data.vertices):,} vertices, {len(mesh.data.polygons):,} faces, "
                    f"{len(mesh.vertex_groups)} bone groups, {keys} shape keys, level {level}")
    report.info.update({"mesh_vertices": len(mesh.data.vertices), "mesh_faces": len(mesh.data.polygons),
                        "shape_keys": keys, "mesh_level": level})

    # 5. animation, camera, render settings ----------------------------------------------------------------
    segments = schedule(n)
    with step("Key turn, nod, shrug, smile (busto.animation_preset)") as s:
        bpy.context.view_layer.objects.active = rig
        for seg in segments:
            sp.anim_start, sp.anim_interval, sp.anim_amplitude = seg.start, seg.interval, seg.amplitude
            B.op("busto.animation_preset", preset=seg.preset)
        B.op("busto.add_camera", kind="PORTRAIT", make_active=True)
        B.op("busto.setup_render", resolution=int(args.resolution))
        sc.frame_start, sc.frame_end = 1, n
        sc.render.fps = int(args.fps)
        sc.render.fps_base = 1.0
        img = sc.render.image_settings
        img.file_format, img.color_mode, img.color_depth = "PNG", "RGB", "8"
        sc.render.film_transparent = False
        sc.busto.transparent_background = False
        sc.render.filepath = str(out / "frames" / "####")
        sc.render.use_file_extension = True
        shown = [f"{g.label} {g.frames[0]}-{g.frames[-1]}" for g in segments]
        s.detail = "; ".join(shown)
        past = [g.label for g in segments if g.frames[-1] > n]
        if past:
            report.notes.append(f"{n} frames are too few for the whole animation (it needs "
                                f"{segments[-1].frames[-1]}): {', '.join(past)} run past the rendered range.")
    report.info["segments"] = [{"preset": g.preset, "frames": g.frames, "amplitude": g.amplitude} for g in segments]

    # 6. neural render -------------------------------------------------------------------------------------
    with step(f"Render {n} frames with Busto Neural") as s:
        task = progress.add_task("  frames", total=n) if progress is not None else None

        def on_write(*_a):
            if task is not None:
                progress.advance(task)

        bpy.app.handlers.render_write.append(on_write)
        try:
            t0 = time.perf_counter()
            bpy.ops.render.render(animation=True)
            dt = time.perf_counter() - t0
        finally:
            bpy.app.handlers.render_write.remove(on_write)
            if task is not None:
                progress.remove_task(task)
        frame_paths = [out / "frames" / f"{f:04d}.png" for f in range(1, n + 1)]
        missing = [p.name for p in frame_paths if not p.is_file()]
        if missing:
            raise DemoError(f"the Busto Neural engine wrote no {', '.join(missing[:5])} (see {out / 'demo.log'})")
        failed = [p.name for p in frame_paths if _engine_failed(_read_png(p))]
        if failed:
            raise DemoError(f"the Busto Neural engine failed on {', '.join(failed[:5])} (magenta frames; the error "
                            f"is in {out / 'demo.log'})")
        s.detail = f"{args.resolution}x{args.resolution}, {dt / n:.2f} s/frame"
    report.files["frames/"] = f"{n} PNG frames {args.resolution}x{args.resolution} (Busto Neural)"
    report.info["seconds_per_frame"] = round(dt / n, 3)

    # 7. comparisons: Workbench mesh vs neural RGBA from the same camera ------------------------------------
    cmp_frames = comparison_frames(n, segments)
    sheet_frames = grid_frames(n, segments)
    with step("Render the mesh with Workbench, compare silhouettes") as s:
        mesh_images, comparisons = _compare(bpy, sc, out, sheet_frames, cmp_frames, trained)
        ious = [c["iou"] for c in comparisons]
        s.detail = (f"{len(mesh_images)} mesh frames; silhouette IoU "
                    + ", ".join(f"f{c['frame']} {c['iou']:.2f}" for c in comparisons))
    report.files["compare/"] = (f"Workbench renders of the mesh (mesh_*.png) and neural RGBA frames "
                                f"{cmp_frames} (neural_*.png)")
    report.info["comparisons"] = [{"frame": c["frame"], "iou": round(c["iou"], 4),
                                   "centroid_px": round(c["centroid_px"], 2)} for c in comparisons]
    report.info["min_iou"] = round(min(ious), 4) if ious else None

    # 7b. 360 mode: one full camera turn around the avatar ------------------------------------------------------
    orbit_paths: list[Path] = []
    if args.mode == "360":
        orbit_paths = _orbit(args, B, sc, out, n, rig, segments, report, step, progress)

    # 8. .blend + .glb ----------------------------------------------------------------------------------------
    with step("Save demo.blend, export avatar.glb") as s:
        # paths relative to the .blend (//...), so that the saved scene renders the same frames wherever the folder
        # (with the checkpoint beside it, or the project tree) is moved or mounted
        sc.render.filepath = "//frames/####"
        relative_checkpoints(bpy, out)
        sc.frame_set(1)
        blend = out / "demo.blend"
        for old in (blend, out / "demo.blend1"):  # no Blender backup copy of an earlier run
            old.unlink(missing_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(blend), compress=True, relative_remap=False)
        glb = out / "avatar.glb"
        from blender_addon.export import export_gltf

        try:
            export_gltf(bpy, rig, mesh, glb)
        except RuntimeError as exc:
            raise DemoError(str(exc)) from exc
        s.detail = f"demo.blend {_human(blend.stat().st_size)}, avatar.glb {_human(glb.stat().st_size)}"
    report.files["demo.blend"] = "the scene: rig, mesh, keyframes, camera, Busto Neural settings"
    report.files["avatar.glb"] = "rig + skinned mesh + expression shape keys + animation (glTF 2.0)"

    # 9. video ------------------------------------------------------------------------------------------------
    with step("Encode demo.mp4") as s:
        count = write_video(frame_paths, out / "demo.mp4", int(args.fps))
        s.detail = f"{count} frames at {args.fps} fps, H.264"
    report.files["demo.mp4"] = f"{n} frames, {args.fps} fps"

    # 10. contact sheet -----------------------------------------------------------------------------------------
    with step("Contact sheet") as s:
        frames = [{"frame": f, "neural": _read_png(out / "frames" / f"{f:04d}.png"), "mesh": mesh_images[f],
                   "label": segment_of(f, segments)} for f in sheet_frames]
        preset = report.info.get("preset", "?")
        model = f"random-init '{preset}' generator (untrained)" if not trained else f"{ckpt.name} ('{preset}')"
        title = f"Busto demo: seed {args.seed}, {model}, {n} frames at {args.resolution} px"
        subtitle = (f"{report.info.get('model', '')}; mesh {report.info['mesh_vertices']:,} vertices (grid "
                    f"{args.mesh_resolution}), {report.info['shape_keys']} shape keys; "
                    + "; ".join(f"{g.label} {g.frames[0]}-{g.frames[-1]}" for g in segments))
        orbit_views = []
        if orbit_paths:
            title += ", 360° model"
            subtitle += f"; orbit {len(orbit_paths)} frames"
            yaws = report.info["orbit"]["yaws_deg"]
            orbit_views = [{"neural": _read_png(orbit_paths[i]), "label": f"orbit {yaws[i]:.0f}°"}
                           for i in orbit_sheet_views(len(orbit_paths))]
        contact_sheet(frames, comparisons, title, subtitle, out / "contact-sheet.png",
                      tile=min(192, max(128, int(args.resolution))), orbit=orbit_views)
        s.detail = f"{len(frames)} neural + mesh frames, {len(comparisons)} outline overlays" + (
            f", {len(orbit_views)} orbit views" if orbit_views else "")
    report.files["contact-sheet.png"] = "neural frames, the mesh under each, mesh outlines on the neural frames"
    backend.shutdown_all()


def orbit_sheet_views(count: int, views: int = ORBIT_SHEET_VIEWS) -> list[int]:
    """Indices of the ``views`` orbit frames (of ``count``, a full turn from the front) shown on the contact sheet:
    evenly spaced yaws all round (exactly 360/views degrees apart when ``views`` divides ``count``)."""
    return sorted({int(round(j * count / views)) % count for j in range(views)})


def _orbit(args, B: _Blender, sc, out: Path, n: int, rig, segments: list[Segment], report: Report, step,
           progress) -> list[Path]:
    """Key one full camera turn around the avatar with the add-on's orbit operator, after every pose key (the
    avatar at rest), render it with Busto Neural to ``orbit/0001.png`` ... (the front view first) and
    ``orbit.mp4``; the scene's camera, frame range and output path are restored for the .blend."""
    bpy = B.bpy
    k = int(args.orbit_frames)
    first = max(n, segments[-1].frames[-1]) + 1
    last = first + k - 1
    paths = [out / "orbit" / f"{i + 1:04d}.png" for i in range(k)]
    with step(f"Orbit: key a full camera turn (busto.orbit_camera), render {k} frames") as s:
        saved = (sc.camera, sc.frame_start, sc.frame_end, sc.render.filepath)
        task = progress.add_task("  orbit", total=k) if progress is not None else None

        def on_write(*_a):
            if task is not None:
                progress.advance(task)

        try:
            bpy.context.view_layer.objects.active = rig
            B.op("busto.orbit_camera", frame_start=first, frame_end=last, make_active=True, set_range=True)
            sc.render.filepath = str(out / "orbit" / "render-####")
            bpy.app.handlers.render_write.append(on_write)
            t0 = time.perf_counter()
            bpy.ops.render.render(animation=True)
            dt = time.perf_counter() - t0
        finally:
            if on_write in bpy.app.handlers.render_write:
                bpy.app.handlers.render_write.remove(on_write)
            if task is not None:
                progress.remove_task(task)
            sc.camera, sc.frame_start, sc.frame_end, sc.render.filepath = saved
        for i, f in enumerate(range(first, last + 1)):
            rendered = out / "orbit" / f"render-{f:04d}.png"
            if not rendered.is_file():
                raise DemoError(f"the Busto Neural engine wrote no orbit frame {f} (see {out / 'demo.log'})")
            rendered.replace(paths[i])
        failed = [p.name for p in paths if _engine_failed(_read_png(p))]
        if failed:
            raise DemoError(f"the Busto Neural engine failed on orbit/{', orbit/'.join(failed[:5])} (magenta "
                            f"frames; the error is in {out / 'demo.log'})")
        write_video(paths, out / "orbit.mp4", int(args.fps))
        s.detail = f"frames {first}-{last}, {360 / k:.3g}° a frame, {dt / k:.2f} s/frame; orbit.mp4"
    report.files["orbit/"] = f"{k} PNG frames of one camera turn (Busto Neural), the front view first"
    report.files["orbit.mp4"] = f"the turn, {k} frames, {args.fps} fps"
    report.info["orbit"] = {"scene_frames": [first, last], "yaws_deg": [round(360.0 * i / k, 3) for i in range(k)],
                            "sheet_views": [i + 1 for i in orbit_sheet_views(k)],
                            "seconds_per_frame": round(dt / k, 3)}
    return paths


def blend_relative(path: str, blend_dir: str | os.PathLike) -> str:
    """``path`` as Blender's ``//``-relative form for a .blend saved in ``blend_dir`` (what ``bpy.path.relpath``
    gives); empty and already relative paths are kept, and so is a path on another drive (Windows)."""
    if not path or path.startswith("//"):
        return path
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(blend_dir))
    except ValueError:
        return path
    return "//" + rel.replace(os.sep, "/")


def relative_checkpoints(bpy, blend_dir: Path) -> None:
    """Store the Busto checkpoint paths of every scene and object (rigs keep the one their avatar was sampled from)
    relative to the .blend that is about to be saved in ``blend_dir``."""
    for owner in (*bpy.data.scenes, *bpy.data.objects):
        props = getattr(owner, "busto", None)
        if props is not None and getattr(props, "checkpoint", None):
            props.checkpoint = blend_relative(bpy.path.abspath(props.checkpoint), blend_dir)


def _threads() -> int:
    try:
        import torch

        return int(torch.get_num_threads())
    except ImportError:
        return 1


def _over_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    return (rgba[..., :3] * a + 255.0 * (1.0 - a)).round().astype(np.uint8)


def neural_mask(alpha: np.ndarray, trained: bool) -> np.ndarray:
    """The neural frame's silhouette: alpha >= 0.5, or, for an untrained model whose alpha stays diffuse, alpha
    >= half its maximum (the image-space counterpart of the mesh's automatic density level)."""
    a = alpha.astype(np.float64) / 255.0
    return a >= (0.5 if trained else 0.5 * max(float(a.max()), 1e-6))


def mask_centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.array([np.nan, np.nan])


def _compare(bpy, sc, out: Path, mesh_frames: list[int], neural_frames: list[int],
             trained: bool) -> tuple[dict, list[dict]]:
    """Workbench renders of the extracted mesh (RGBA, from the scene camera) at ``mesh_frames``; at
    ``neural_frames`` also the neural frame with alpha, the silhouette IoU of the mesh and neural masks and the
    distance between their centroids (pixels). Returns ({frame: mesh rgb}, comparisons). Restores the Busto
    Neural settings afterwards."""
    img = sc.render.image_settings
    shading = sc.display.shading
    saved = (sc.render.engine, sc.render.film_transparent, sc.busto.transparent_background, img.color_mode,
             sc.render.filepath)
    meshes, masks, results = {}, {}, []
    try:
        img.color_mode = "RGBA"
        sc.render.film_transparent = True
        sc.render.engine = "BLENDER_WORKBENCH"  # mesh: vertex colours, studio light
        # the baked texture, unlit (it holds the neural renderer's shading); vertex colours under studio light
        # for a mesh extracted without a texture
        textured = any(o.type == "MESH" and o.data.uv_layers for o in sc.objects)
        shading.light, shading.color_type = ("FLAT", "TEXTURE") if textured else ("STUDIO", "VERTEX")
        shading.show_cavity = False
        for f in sorted(set(mesh_frames) | set(neural_frames)):
            sc.frame_set(f)
            path = out / "compare" / f"mesh_{f:04d}.png"
            sc.render.filepath = str(path)
            bpy.ops.render.render(write_still=True)
            rgba = _read_png(path)
            meshes[f], masks[f] = _over_white(rgba), rgba[..., 3] >= 128
        sc.render.engine = saved[0]
        sc.busto.transparent_background = True
        for f in neural_frames:
            sc.frame_set(f)
            path = out / "compare" / f"neural_{f:04d}.png"
            sc.render.filepath = str(path)
            bpy.ops.render.render(write_still=True)
            rgba = _read_png(path)
            if _engine_failed(rgba):
                raise DemoError(f"the Busto Neural engine failed on frame {f} (see {out / 'demo.log'})")
            nm = neural_mask(rgba[..., 3], trained)
            results.append({"frame": f, "iou": silhouette_iou(nm, masks[f]),
                            "centroid_px": float(np.linalg.norm(mask_centroid(nm) - mask_centroid(masks[f]))),
                            "overlay": overlay(_over_white(rgba), masks[f])})
    finally:
        (sc.render.engine, sc.render.film_transparent, sc.busto.transparent_background, img.color_mode,
         sc.render.filepath) = saved
    return meshes, results


def _print_summary(console, report: Report, out: Path, total: float) -> None:
    from rich.table import Table

    t = Table(title="Busto demo: steps", show_lines=False)
    t.add_column("step")
    t.add_column("seconds", justify="right")
    t.add_column("CPU s", justify="right")
    t.add_column("result", overflow="fold")
    for s in report.steps:
        t.add_row(s.name, f"{s.seconds:.1f}", f"{s.cpu_seconds:.1f}", s.detail)
    t.add_row("[bold]total[/bold]", f"[bold]{total:.1f}[/bold]", f"{sum(s.cpu_seconds for s in report.steps):.1f}",
              "")
    console.print(t)
    f = Table(title=f"Written to {out}")
    f.add_column("file")
    f.add_column("size", justify="right")
    f.add_column("what", overflow="fold")
    for name, what in report.files.items():
        p = out / name.rstrip("/")
        size = sum(q.stat().st_size for q in p.glob("*") if q.is_file()) if p.is_dir() else (
            p.stat().st_size if p.is_file() else 0)
        f.add_row(name, _human(size), what)
    console.print(f)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    # the progress bar and the summary go to the real terminal; Blender's prints go to demo.log
    stream = os.fdopen(os.dup(1), "w", buffering=1)
    try:
        return _main(args, Console(file=stream))
    finally:
        stream.close()


def _main(args: argparse.Namespace, console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    try:
        _check_args(args)
        resolve_mode(args)
    except DemoError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)  # one line, whatever the terminal's width
        return 2
    t0 = time.perf_counter()
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True, disable=args.quiet,
                        redirect_stdout=False, redirect_stderr=False)  # Python prints go to demo.log too
    try:
        with progress:
            report = run(args, console, progress)
    except DemoError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    except Exception as exc:  # unexpected: the traceback helps, and so does the log
        import traceback

        console.print(f"[red]demo failed:[/red] {type(exc).__name__}: {exc}")
        console.print("".join(traceback.format_exception(exc)), markup=False, highlight=False)
        console.print(f"Blender's output: {args.out.resolve() / 'demo.log'}")
        return 1
    _print_summary(console, report, args.out.resolve(), time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
